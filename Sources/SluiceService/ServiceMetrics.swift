// Path: Sources/SluiceService/ServiceMetrics.swift — the service's counters as swift-metrics
// counters and gauges in a Prometheus registry, refreshed from the dataplane and the storage node
// at each scrape (the hot paths keep their own atomics; nothing here runs on a worker).
import CoreMetrics
import Prometheus
import SluiceCore
import SluicePageStore
import SluiceReplication
import SluiceStorageServer
import SluiceTraffic
import SluiceWAN
import Synchronization

/// Turns snapshots of the running parts into Prometheus text. `render` may be called from any
/// thread; calls are serialised (one scrape refreshes and emits at a time).
public final class ServiceMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let startNs = Clock.monotonicNs()
    private let state: Mutex<State>

    /// What the registry holds, so each scrape only sets values. Counters remember the value they
    /// were last advanced to (swift-metrics counters only increment).
    private struct State: ~Copyable {
        var counters: [String: (counter: CoreMetrics.Counter, value: UInt64)] = [:]
        var secondCounters: [String: (counter: FloatingPointCounter, ns: UInt64)] = [:]
        var gauges: [String: CoreMetrics.Gauge] = [:]
        var traffic: [Int: TrafficMetrics] = [:]
    }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        self.factory = PrometheusMetricsFactory(registry: registry)
        self.state = Mutex(State())
    }

    /// Refreshes every metric from `dataplane`, `storage` and `wan` (each may be absent) and returns
    /// the registry in the Prometheus text format (0.0.4).
    public func render(dataplane: Dataplane?, storage: StorageRuntime?, wan: WANRuntime? = nil,
                       firmware: FirmwareRuntime? = nil) -> String {
        state.withLock { state in
            set(&state, gauge: "sluice_up", [], 1)
            set(&state, gauge: "sluice_uptime_seconds", [], Double(Clock.monotonicNs() &- startNs) / 1e9)
            if let available = NodeMemory.availableBytes() { set(&state, gauge: "sluice_node_memory_available_bytes", [], available) }
            if let dataplane { refresh(&state, dataplane) }
            if let storage { refresh(&state, storage) }
            if let wan { refresh(&state, wan) }
            if let firmware { refresh(&state, firmware) }
            return registry.emitToString()
        }
    }

    /// Per device: isolated (1) or not (0), the attempt counter's value;
    /// and how long the boot check took.
    private func refresh(_ state: inout State, _ firmware: FirmwareRuntime) {
        for check in firmware.checks {
            let labels = [("device", check.device), ("counter", firmware.counterKind)]
            // The reason is in /healthz and the log, not a label: one series per device, whatever happens.
            set(&state, gauge: "sluice_firmware_device_isolated", labels, check.isolated ? 1 : 0)
            if let counter = check.counter { set(&state, gauge: "sluice_firmware_attempt_counter", labels, Double(counter)) }
        }
        set(&state, gauge: "sluice_firmware_boot_check_seconds", [], Double(firmware.checkNs) / 1e9)
    }

    private func refresh(_ state: inout State, _ dataplane: Dataplane) {
        for worker in dataplane.runtime.workers {
            let snapshot = worker.counters.snapshot()
            let labels = [("worker", "\(worker.index)"), ("core", "\(worker.cpu)")]
            advance(&state, "sluice_worker_busy_polls_total", labels, snapshot.busyPolls)
            advance(&state, "sluice_worker_empty_polls_total", labels, snapshot.emptyPolls)
            advance(&state, "sluice_worker_items_total", labels, snapshot.items)
            advance(&state, "sluice_worker_busy_cycles_total", labels, snapshot.busyCycles)
            advance(&state, "sluice_worker_idle_cycles_total", labels, snapshot.idleCycles)
            advance(&state, "sluice_worker_sleeps_total", labels, snapshot.sleeps)
            advance(&state, "sluice_worker_lost_wakeups_total", labels, snapshot.lostWakeups)
            advance(&state, seconds: "sluice_worker_sleep_seconds_total", labels, ns: snapshot.sleepNs)
            advance(&state, seconds: "sluice_worker_cpu_seconds_total", labels, ns: snapshot.cpuNs)
            set(&state, gauge: "sluice_worker_utilisation", labels, snapshot.utilisation)
        }
        advance(&state, "sluice_stage_moves_total", [], dataplane.stageMoves.load(ordering: .relaxed))
        advance(&state, "sluice_ring_resizes_total", [], dataplane.ringResizes.load(ordering: .relaxed))
        advance(&state, "sluice_pool_growths_total", [], dataplane.poolGrowths.load(ordering: .relaxed))
        advance(&state, "sluice_pool_shrinks_total", [], dataplane.poolShrinks.load(ordering: .relaxed))
        // Why each core moved between pipelines: the reason label (`demand` or `weight`); the numbers
        // behind each move are in the log ("core moved between pipelines").
        for (key, count) in dataplane.coreMoveCounts {
            advance(&state, "sluice_core_moves_total", [("from", key.from), ("to", key.to), ("reason", key.reason.rawValue)], count)
        }
        let traffic = dataplane.trafficSnapshot
        for (index, path) in dataplane.paths.enumerated() {
            let pipeline = path.pipeline
            let name = path.configuration.name
            for stage in pipeline.stages {
                let labels = [("pipeline", name), ("stage", stage.name), ("worker", "\(stage.owner.load(ordering: .relaxed))")]
                let counters = stage.counters
                let calls = counters.calls.load(ordering: .relaxed)
                let items = counters.items.load(ordering: .relaxed)
                let cycles = counters.cycles.load(ordering: .relaxed)
                advance(&state, "sluice_stage_calls_total", labels, calls)
                advance(&state, "sluice_stage_items_total", labels, items)
                advance(&state, "sluice_stage_filtered_total", labels, counters.filtered.load(ordering: .relaxed))
                advance(&state, "sluice_stage_cycles_total", labels, cycles)
                advance(&state, "sluice_stage_blocked_total", labels, counters.blockedTurns.load(ordering: .relaxed))
                advance(&state, "sluice_stage_wakeups_total", labels, counters.wakeups.load(ordering: .relaxed))
                set(&state, gauge: "sluice_stage_items_per_call", labels, calls > 0 ? Double(items) / Double(calls) : 0)
                set(&state, gauge: "sluice_stage_cycles_per_item", labels, items > 0 ? Double(cycles) / Double(items) : 0)
            }
            // Pipeline rings push back (a full ring blocks its producer) and never drop; `full` counts
            // the producer's blocked turns.
            for (link, observer) in pipeline.ringObservers.enumerated() {
                let labels = [("pipeline", name), ("ring", "\(pipeline.stages[link].name)->\(pipeline.stages[link + 1].name)")]
                set(&state, gauge: "sluice_ring_occupancy", labels, Double(observer.count))
                set(&state, gauge: "sluice_ring_capacity", labels, Double(observer.capacity))
                advance(&state, "sluice_ring_full_total", labels,
                        pipeline.stages[link].counters.blockedTurns.load(ordering: .relaxed))
                advance(&state, "sluice_ring_drops_total", labels, 0)
            }
            let labels = [("pipeline", name)]
            if let placement = dataplane.placement(ofPipeline: index) {
                refresh(&state, placement: placement, pipeline: name)
            }
            if let cores = dataplane.cores(ofPipeline: index) {  // rebalanced services: cores follow demand
                set(&state, gauge: "sluice_pipeline_cores", labels, Double(cores.cores.count))
                set(&state, gauge: "sluice_pipeline_weight", labels, cores.weight)
                set(&state, gauge: "sluice_pipeline_demand_cores", labels, cores.demandCores)
            }
            advance(&state, "sluice_pipeline_packets_in_total", labels, path.packetsIn)
            advance(&state, "sluice_pipeline_bytes_in_total", labels, path.bytesIn)
            advance(&state, "sluice_pipeline_packets_out_total", labels, pipeline.delivered)
            advance(&state, "sluice_pipeline_filtered_total", labels, pipeline.filtered)
            advance(&state, "sluice_pipeline_pool_waits_total", labels, path.poolWaits)
            set(&state, gauge: "sluice_pipeline_pool_buffers", labels, Double(path.poolBufferCount))
            for drop in path.dropCounts() {
                advance(&state, "sluice_pipeline_drops_total", [("pipeline", name), ("reason", drop.reason)], drop.count)
            }
            for hit in RulesConfiguration.hits(path.configuration.rules) {  // per rule, then "(no match)"
                advance(&state, "sluice_rule_hits_total", [("pipeline", name), ("rule", hit.rule)], hit.packets)
                advance(&state, "sluice_rule_bytes_total", [("pipeline", name), ("rule", hit.rule)], hit.bytes)
            }
            for output in path.outputCounts() {  // with named outputs: the sink as "default", then each
                let labels = [("pipeline", name), ("output", output.name)]
                advance(&state, "sluice_output_packets_total", labels, output.packets)
                advance(&state, "sluice_output_bytes_total", labels, output.bytes)
                advance(&state, "sluice_output_drops_total", labels, output.drops)
            }
            if index < traffic.count, let snapshot = traffic[index] {
                if state.traffic[index] == nil {
                    state.traffic[index] = TrafficMetrics(sourceCount: max(snapshot.sources.count, 1), port: name,
                                                          factory: factory)
                }
                state.traffic[index]!.record(snapshot)
            }
        }
    }

    /// A measured placement: moves so far, the hand-off cost, the cores the placement in force uses,
    /// and the best predicted rate per core count: the reason for each move, as numbers.
    private func refresh(_ state: inout State, placement: PlacementStatus, pipeline name: String) {
        let labels = [("pipeline", name)]
        advance(&state, "sluice_placement_changes_total", labels, UInt64(placement.changes))
        if let handoff = placement.handoffNsPerItem { set(&state, gauge: "sluice_placement_handoff_ns_per_item", labels, handoff) }
        guard let decision = placement.decision else { return }
        set(&state, gauge: "sluice_placement_cores_used", labels, Double(Set(placement.cores).count))
        for choice in [decision.chosen] + decision.alternatives {
            let shape = [("pipeline", name), ("cores_used", "\(choice.coresUsed)")]
            set(&state, gauge: "sluice_placement_predicted_items_per_second", shape,
                choice.predictedItemsPerSecond.isFinite ? choice.predictedItemsPerSecond : 0)
        }
        for (stage, ns) in decision.costs.stageNsPerItem.enumerated() {
            set(&state, gauge: "sluice_placement_stage_ns_per_item", [("pipeline", name), ("stage", "\(stage)")], ns)
        }
    }

    private func refresh(_ state: inout State, _ storage: StorageRuntime) {
        for entry in storage.stats.snapshot() {
            let op = "\(entry.opcode)"
            for (status, count) in entry.statusCounts {
                advance(&state, "sluice_storage_requests_total", [("op", op), ("status", "\(status)")], count)
            }
            advance(&state, "sluice_storage_conflicts_total", [("op", op)], entry.statusCounts[.conflict] ?? 0)
            for (quantile, percentile) in [("0.5", 50.0), ("0.9", 90.0), ("0.99", 99.0), ("0.999", 99.9), ("1", 100.0)] {
                let ns = percentile == 100 ? entry.latency.max : entry.latency.valueAtPercentile(percentile)
                set(&state, gauge: "sluice_storage_latency_seconds", [("op", op), ("quantile", quantile)], Double(ns) / 1e9)
            }
            set(&state, gauge: "sluice_storage_latency_samples", [("op", op)], Double(entry.latency.totalCount))
        }
        for (status, count) in storage.stats.rejected {
            advance(&state, "sluice_storage_rejected_requests_total", [("status", "\(status)")], count)
        }
        set(&state, gauge: "sluice_storage_last_osn", [], Double(storage.node.lastOSN))
        let commits = storage.node.commitStats
        advance(&state, "sluice_storage_group_commits_total", [], commits.groupCommits)
        advance(&state, "sluice_storage_commit_writes_total", [], commits.writes)
        let reads = storage.node.readStats
        advance(&state, "sluice_storage_read_groups_total", [], reads.groups)
        advance(&state, "sluice_storage_grouped_reads_total", [], reads.reads)
        advance(&state, "sluice_storage_parallel_reads_total", [], storage.node.parallelReads)
        if let replicated = storage.replicated { refresh(&state, replication: replicated.log) }
    }

    /// Each WAN link direction's counters (`link`, `direction` labels): frames and bytes received and
    /// forwarded, drops by reason (every reason, zeros included), what is held and queued, departure
    /// lateness as a cumulative histogram (`le` in seconds), and the settings as gauges.
    private func refresh(_ state: inout State, _ wan: WANRuntime) {
        for link in wan.links {
            for snapshot in link.snapshot() {
                let labels = [("link", link.configuration.name), ("direction", "\(snapshot.direction)")]
                let c = snapshot.counters
                advance(&state, "sluice_wan_received_packets_total", labels, c.receivedPackets)
                advance(&state, "sluice_wan_received_bytes_total", labels, c.receivedBytes)
                advance(&state, "sluice_wan_forwarded_packets_total", labels, c.forwardedPackets)
                advance(&state, "sluice_wan_forwarded_bytes_total", labels, c.forwardedBytes)
                advance(&state, "sluice_wan_corrupted_packets_total", labels, c.corruptedPackets)
                for drop in snapshot.drops(includingZero: true) {
                    advance(&state, "sluice_wan_drops_total", labels + [("reason", drop.reason)], drop.count)
                }
                set(&state, gauge: "sluice_wan_held_bytes", labels, Double(c.heldBytes))
                set(&state, gauge: "sluice_wan_held_frames", labels, Double(c.heldFrames))
                set(&state, gauge: "sluice_wan_held_bytes_max", labels, Double(c.heldBytesMax))
                set(&state, gauge: "sluice_wan_queue_bytes", labels, Double(c.queueBytes))
                set(&state, gauge: "sluice_wan_queue_bytes_max", labels, Double(c.queueBytesMax))
                var cumulative: UInt64 = 0
                for (slot, count) in c.lateBucketCounts.enumerated() {
                    cumulative += count
                    let bound = slot < WANLimits.latenessBucketBoundsNs.count
                        ? "\(Double(WANLimits.latenessBucketBoundsNs[slot]) / 1e9)" : "+Inf"
                    advance(&state, "sluice_wan_departure_lateness_seconds_bucket", labels + [("le", bound)], cumulative)
                }
                advance(&state, "sluice_wan_departure_lateness_seconds_count", labels, c.departures)
                advance(&state, seconds: "sluice_wan_departure_lateness_seconds_sum", labels, ns: c.lateNsTotal)
                set(&state, gauge: "sluice_wan_departure_lateness_seconds_max", labels, Double(c.lateNsMax) / 1e9)
                let settings = link.configuration.settings(snapshot.direction)
                set(&state, gauge: "sluice_wan_delay_seconds", labels, Double(settings.delayNs) / 1e9)
                set(&state, gauge: "sluice_wan_jitter_seconds", labels, Double(settings.jitterNs) / 1e9)
                set(&state, gauge: "sluice_wan_rate_bits_per_second", labels, Double(settings.rateBitsPerSecond))
                set(&state, gauge: "sluice_wan_loss_ratio", labels, settings.loss)
                set(&state, gauge: "sluice_wan_corrupt_ratio", labels, settings.corrupt)
                set(&state, gauge: "sluice_wan_queue_limit_bytes", labels, Double(settings.queueBytes))
            }
        }
    }

    /// The shared log's counters, its etcd round trips as a cumulative histogram (`le` in seconds),
    /// and where the node stands (`_state`: 1 following, 2 catching up, 3 disconnected, 4 failed).
    private func refresh(_ state: inout State, replication log: EtcdLog) {
        let stats = log.stats
        let counters: [(String, UInt64)] = [
            ("proposals", stats.proposals.load(ordering: .relaxed)), ("batches", stats.batches.load(ordering: .relaxed)),
            ("batched_records", stats.batchedRecords.load(ordering: .relaxed)),
            ("claims_lost", stats.claimsLost.load(ordering: .relaxed)),
            ("unknown_outcomes", stats.unknownOutcomes.load(ordering: .relaxed)),
            ("settled_applied", stats.settledApplied.load(ordering: .relaxed)),
            ("settled_not_applied", stats.settledNotApplied.load(ordering: .relaxed)),
            ("refused", stats.refused.load(ordering: .relaxed)), ("applied_records", stats.appliedRecords.load(ordering: .relaxed)),
            ("watch_restarts", stats.watchRestarts.load(ordering: .relaxed)), ("compactions", stats.compactions.load(ordering: .relaxed)),
        ]
        for (name, value) in counters { advance(&state, "sluice_replication_\(name)_total", [], value) }
        var cumulative: UInt64 = 0
        for (slot, count) in stats.roundTripBuckets.enumerated() {
            cumulative += count
            let bound = slot < ReplicationStats.roundTripBucketsMs.count
                ? "\(ReplicationStats.roundTripBucketsMs[slot] / 1_000)" : "+Inf"
            advance(&state, "sluice_replication_round_trip_seconds_bucket", [("le", bound)], cumulative)
        }
        advance(&state, "sluice_replication_round_trip_seconds_count", [], stats.roundTrips.load(ordering: .relaxed))
        advance(&state, seconds: "sluice_replication_round_trip_seconds_sum", [], ns: stats.roundTripNsTotal.load(ordering: .relaxed))
        let status = log.status
        set(&state, gauge: "sluice_replication_applied_osn", [], Double(status.appliedOSN))
        set(&state, gauge: "sluice_replication_log_osn", [], Double(status.logOSN))
        set(&state, gauge: "sluice_replication_apply_lag", [], Double(status.logOSN &- min(status.appliedOSN, status.logOSN)))
        // Never contacted: -1 (a gauge has no "none").
        set(&state, gauge: "sluice_replication_contact_age_ms", [], status.contactAgeMs.map { Double($0) } ?? -1)
        set(&state, gauge: "sluice_replication_state", [], Double(status.state.rawValue))
    }

    private static func key(_ label: String, _ labels: [(String, String)]) -> String {
        labels.reduce(label) { "\($0)|\($1.0)=\($1.1)" }
    }

    /// Moves a mirrored counter up to `value` (a total kept elsewhere).
    private func advance(_ state: inout State, _ label: String, _ labels: [(String, String)], _ value: UInt64) {
        let key = Self.key(label, labels)
        if state.counters[key] == nil {
            state.counters[key] = (CoreMetrics.Counter(label: label, dimensions: labels, factory: factory), 0)
        }
        let last = state.counters[key]!.value
        guard value > last else { return }
        state.counters[key]!.counter.increment(by: Int64(clamping: value - last))
        state.counters[key]!.value = value
    }

    /// Moves a mirrored seconds counter up to `ns` nanoseconds.
    private func advance(_ state: inout State, seconds label: String, _ labels: [(String, String)], ns: UInt64) {
        let key = Self.key(label, labels)
        if state.secondCounters[key] == nil {
            state.secondCounters[key] = (FloatingPointCounter(label: label, dimensions: labels, factory: factory), 0)
        }
        let last = state.secondCounters[key]!.ns
        guard ns > last else { return }
        state.secondCounters[key]!.counter.increment(by: Double(ns - last) / 1e9)
        state.secondCounters[key]!.ns = ns
    }

    private func set(_ state: inout State, gauge label: String, _ labels: [(String, String)], _ value: Double) {
        let key = Self.key(label, labels)
        if state.gauges[key] == nil { state.gauges[key] = CoreMetrics.Gauge(label: label, dimensions: labels, factory: factory) }
        state.gauges[key]!.record(value)
    }
}
