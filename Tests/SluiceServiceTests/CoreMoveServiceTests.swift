// Path: Tests/SluiceServiceTests/CoreMoveServiceTests.swift — a rebalanced service moves a core from a
// pipeline with slack to a busy one, says why (log, metrics, `sluice stats`), and loses nothing.
import Foundation
import Logging
import SluiceCore
import SluiceTestSupport
import Testing
@testable import SluiceService

@Suite(.serialized) struct CoreMoveServiceTests {
    /// "quiet" (2000 packets/s, spread over both cores) and "busy" (top speed, on the first core only,
    /// which it shares with quiet's source; placed by measured cost, the default with `move_cores`):
    /// the load sits on busy and its planner predicts a gain from a second core, so the second core
    /// moves to it, quiet's stages leave that core, and busy's measured placement spreads onto it.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func aLoadShiftMovesACoreToTheBusyPipeline() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let busyLoops = 200
        let yaml = """
            cores: [\(cpus[0]), \(cpus[1])]
            rebalance: {interval_ms: 50, move_cores: true}
            pipelines:
              - name: quiet
                source: {pcap: "\(samplePcap)", rate: 2000, loop: 100}
                sink: {discard: true}
                cores: [\(cpus[0]), \(cpus[1])]
                placement: spread
              - name: busy
                source: {pcap: "\(samplePcap)", top_speed: true, loop: \(busyLoops)}
                sink: {discard: true}
                cores: [\(cpus[0])]
                weight: 2
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: cpus)
        #expect(configuration.pipelines.map(\.weight) == [1, 2] && configuration.rebalance?.movesCores == true)
        let logs = CollectingLogHandler()
        let dataplane = try Dataplane(configuration: configuration, logger: Logger(label: "core-move-test") { _ in logs })
        try dataplane.start()
        var stopped = false
        defer { if !stopped { _ = dataplane.stop(drainTimeoutNs: 2_000_000_000) } }
        let deadline = Date().addingTimeInterval(60)
        while dataplane.coreMoves.isEmpty || !dataplane.paths[1].pipeline.isDrained, Date() < deadline { usleep(20_000) }
        let move = try #require(dataplane.coreMoves.first, "no core moved: \(dataplane.cores(ofPipeline: 1).map { "\($0)" } ?? "-")")
        #expect(move.from == "quiet" && move.to == "busy" && move.core == cpus[1] && move.reason == .demand, "\(move)")
        #expect(move.detail.contains("busy (demand") && move.detail.contains("has slack"), "\(move.detail)")
        let logged = logs.messages.withLock { $0.filter { $0.1.contains("core moved between pipelines") } }
        #expect(!logged.isEmpty)
        #expect(dataplane.cores(ofPipeline: 0)?.cores == [cpus[0]] || dataplane.coreMoves.count > 1)
        #expect(dataplane.cores(ofPipeline: 1)?.cores == [cpus[0], cpus[1]] || dataplane.coreMoves.count > 1)
        #expect(dataplane.coreMoveCounts[CoreMoveKey(from: "quiet", to: "busy", reason: .demand)] ?? 0 >= 1)
        #expect(dataplane.paths[1].pipeline.isDrained, "busy did not finish in 60 s")
        // Busy's own placement, by measured cost, used the core (a debug build's stages cost far more
        // than a hand-off): moved onto both cores (and possibly back, when measured no faster).
        #expect(configuration.isMeasured(configuration.pipelines[1]) && !configuration.isMeasured(configuration.pipelines[0]))
        let placed = try #require(dataplane.placement(ofPipeline: 1), "busy's placement was never published")
        #expect(placed.changes >= 1 && placed.decision?.chosen.coresUsed == 2,
                "\(placed.cores) after \(placed.changes) changes: \(placed.decision.map { "\($0)" } ?? "no decision")")
        #expect(logs.messages.withLock { $0.contains { $0.1.contains("stages placed by measured cost") } })

        stopped = true
        let outcomes = dataplane.stop(drainTimeoutNs: 5_000_000_000)
        // Busy delivered every packet of every loop; quiet, stopped early, delivered all that entered.
        let busy = try #require(outcomes.first { $0.name == "busy" })
        #expect(busy.packetsIn == UInt64(2000 * busyLoops) && busy.delivered == busy.packetsIn && busy.drops.isEmpty,
                "\(busy.packetsIn) in, \(busy.delivered) delivered, drops \(busy.drops)")
        let quiet = try #require(outcomes.first { $0.name == "quiet" })
        #expect(quiet.delivered == quiet.packetsIn && quiet.leftOnRings == 0 && quiet.failure == nil)
    }

    @Test func statsShowCoresWeightsAndWhyCoresMoved() throws {
        let scrape = """
            # TYPE sluice_pipeline_cores gauge
            sluice_pipeline_cores{pipeline="busy"} 2.0
            sluice_pipeline_cores{pipeline="quiet"} 1.0
            # TYPE sluice_pipeline_weight gauge
            sluice_pipeline_weight{pipeline="busy"} 2.0
            sluice_pipeline_weight{pipeline="quiet"} 1.0
            # TYPE sluice_pipeline_demand_cores gauge
            sluice_pipeline_demand_cores{pipeline="busy"} 1.93
            sluice_pipeline_demand_cores{pipeline="quiet"} 0.04
            # TYPE sluice_core_moves_total counter
            sluice_core_moves_total{from="quiet",to="busy",reason="demand"} 1
            """
        let text = StatsTable.render(try MetricsText.parse(scrape))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("Cores") } && lines.contains { $0.hasPrefix("Core moves") }, "\(text)")
        let busy = try #require(lines.first { $0.hasPrefix("busy") }, "\(text)")
        #expect(busy.split(separator: " ").map(String.init) == ["busy", "2", "2.00", "1.93"], "\(busy)")
        let moved = try #require(lines.first { $0.hasPrefix("quiet") && $0.contains("demand") }, "\(text)")
        #expect(moved.split(separator: " ").map(String.init) == ["quiet", "busy", "demand", "1"], "\(moved)")
    }

    /// With `move_cores`, an `auto` pipeline is placed by measured cost on any cores no other `auto`
    /// pipeline shares (from one core up); two `auto` pipelines on shared cores keep the spread rule.
    @Test func whichPipelinesArePlacedByMeasuredCost() throws {
        func measured(_ pipelines: String, rebalance: String?) throws -> [Bool] {
            let yaml = "cores: [0, 1]\n" + (rebalance.map { "rebalance: \($0)\n" } ?? "") + "pipelines:\n" + pipelines
            let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
            return configuration.pipelines.map(configuration.isMeasured)
        }
        func pipeline(_ name: String, _ extra: String) -> String {
            "  - name: \(name)\n    source: {pcap: \"\(samplePcap)\"}\n    sink: {discard: true}\n" + extra
        }
        let busyAndSpread = pipeline("quiet", "    cores: [0, 1]\n    placement: spread\n") + pipeline("busy", "    cores: [0]\n")
        #expect(try measured(busyAndSpread, rebalance: "{move_cores: true}") == [false, true])
        #expect(try measured(busyAndSpread, rebalance: "{move_cores: false}") == [false, false])
        #expect(try measured(busyAndSpread, rebalance: nil) == [false, false])
        let twoAutoShared = pipeline("a", "") + pipeline("b", "")
        #expect(try measured(twoAutoShared, rebalance: "{interval_ms: 100}") == [false, false])
        let twoAutoApart = pipeline("a", "    cores: [0]\n") + pipeline("b", "    cores: [1]\n")
        #expect(try measured(twoAutoApart, rebalance: "{interval_ms: 100}") == [true, true])
        #expect(try measured(twoAutoApart, rebalance: nil) == [false, false])
        #expect(try measured(pipeline("alone", ""), rebalance: nil) == [true])
        #expect(try measured(pipeline("pinned", "    stage_cores: [0, 1, 1, 1]\n"), rebalance: "{}") == [false])
    }

    @Test func weightAndMoveCoresAreCheckedAtStart() throws {
        func decode(_ yaml: String) throws -> ServiceConfiguration {
            try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
        }
        let base = "pipelines:\n  - name: p\n    source: {pcap: \"\(samplePcap)\"}\n    sink: {discard: true}\n"
        for bad in ["    weight: 0\n", "    weight: -1\n", "    weight: 2000000\n", "    weight: lots\n"] {
            #expect(throws: ConfigError.self, "\(bad)") { _ = try decode(base + bad) }
        }
        #expect(try decode(base + "    weight: 0.5\n").pipelines[0].weight == 0.5)
        #expect(try decode(base + "rebalance: {move_cores: false}\n").rebalance?.movesCores == false)
        #expect(throws: ConfigError.self) { _ = try decode(base + "rebalance: {move_cores: 3}\n") }
    }
}

extension CoreMoveServiceTests {
    /// One capture pipeline spread over both CPUs, rebalanced every 20 ms with ring sizing on.
    private func resizingYAML(cpus: [Int], rate: Int, loops: Int, ringSize: Int, buffers: Int, buffersMax: Int? = nil) -> String {
        """
        cores: [\(cpus[0]), \(cpus[1])]
        rebalance: {interval_ms: 20, move_cores: false, resize_rings: true}
        pipelines:
          - name: p
            source: {pcap: "\(samplePcap)", rate: \(rate), loop: \(loops)}
            sink: {discard: true}
            placement: spread
            ring_size: \(ringSize)
            buffers: \(buffers)
        """ + (buffersMax.map { "\n    buffers_max: \($0)\n" } ?? "\n")
    }

    /// Runs `yaml`'s one pipeline until `done` holds or it drains (30 s at most), then stops it.
    private func runUntil(_ yaml: String, cpus: [Int], _ done: (Dataplane) -> Bool) throws
        -> (Dataplane, PipelineOutcome, CollectingLogHandler) {
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: cpus)
        let logs = CollectingLogHandler()
        let dataplane = try Dataplane(configuration: configuration, logger: Logger(label: "resize-test") { _ in logs })
        try dataplane.start()
        let deadline = Date().addingTimeInterval(30)
        while !done(dataplane), !dataplane.paths[0].pipeline.isDrained, Date() < deadline { usleep(5_000) }
        let outcome = dataplane.stop(drainTimeoutNs: 5_000_000_000)[0]
        return (dataplane, outcome, logs)
    }

    /// A paced pipeline spread over two cores, its source's ring 64 slots and its pool too small for
    /// more, allowed to grow (`buffers_max`): the pool grows, then the ring, and nothing is lost.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func thePoolGrowsSoTheRingCan() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let yaml = resizingYAML(cpus: cpus, rate: 400_000, loops: 2000, ringSize: 64, buffers: 512, buffersMax: 16_384)
        let (dataplane, outcome, logs) = try runUntil(yaml, cpus: cpus) { $0.ringResizes.load(ordering: .relaxed) >= 1 }
        let path = dataplane.paths[0]
        #expect(path.poolBufferCount > 512 && dataplane.poolGrowths.load(ordering: .relaxed) >= 1, "\(path.poolBufferCount)")
        // The ring between the two cores (the rebalancer may have spread the stages after it too).
        #expect(path.pipeline.ringCapacities[0] >= 256, "\(path.pipeline.ringCapacities)")
        #expect(logs.messages.withLock { $0.contains { $0.1.contains("pool grown for larger rings") } })
        #expect(outcome.delivered == outcome.packetsIn && outcome.leftOnRings == 0 && outcome.drops.isEmpty,
                "\(outcome.packetsIn) in, \(outcome.delivered) delivered")
        // An interface's pool may grow too (LivePoolResizeTests); below `buffers` is refused, naming the key.
        let live = "pipelines:\n  - name: p\n    source: {interface: lo}\n    sink: {discard: true}\n    buffers_max: 8192\n"
        let decoded = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: live), defaultCores: cpus)
        #expect(decoded.pipelines[0].path.poolBufferCountMax == 8192)
        let bad = live.replacingOccurrences(of: "buffers_max: 8192", with: "buffers: 4096\n    buffers_max: 2048")
        #expect {
            _ = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: bad), defaultCores: cpus)
        } throws: { "\($0)".contains("buffers_max") }
    }

    /// The same pipeline, its pool grown by hand far beyond what its rings need (as it would be after
    /// its rings grew and shrank back): the rebalancer shrinks the pool back to the rings' need
    /// (never below `buffers`), says so, and nothing is lost.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func aPoolGrownBeyondTheRingsNeedShrinksBack() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let yaml = resizingYAML(cpus: cpus, rate: 400_000, loops: 2000, ringSize: 64, buffers: 512, buffersMax: 16_384)
        var grown = false
        let (dataplane, outcome, logs) = try runUntil(yaml, cpus: cpus) { running in
            if !grown, let path = running.paths.first {
                grown = (try? path.growPool(to: 16_384)) != nil
            }
            return running.poolShrinks.load(ordering: .relaxed) >= 1
        }
        let path = dataplane.paths[0]
        #expect(grown && dataplane.poolShrinks.load(ordering: .relaxed) >= 1)
        #expect(path.poolBufferCount < 16_384 && path.poolBufferCount >= 512, "\(path.poolBufferCount)")
        #expect(logs.messages.withLock { $0.contains { $0.1.contains("pool shrunk to the rings' need") } })
        #expect(outcome.delivered == outcome.packetsIn && outcome.leftOnRings == 0 && outcome.drops.isEmpty,
                "\(outcome.packetsIn) in, \(outcome.delivered) delivered, drops \(outcome.drops)")
    }

    /// Mid-stream, by hand (no rebalancer): the pool grows, the rings grow, the rings shrink, the
    /// pool shrinks, three times; never below what the rings need; every packet delivered, none dropped.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func ringsAndPoolGrowAndShrinkMidStreamWithoutLoss() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let yaml = resizingYAML(cpus: cpus, rate: 400_000, loops: 2000, ringSize: 64, buffers: 512, buffersMax: 16_384)
            .replacingOccurrences(of: "resize_rings: true", with: "resize_rings: false")
        var rounds = 0
        var retired: [Int] = []
        var failure: String?
        var midStream = 0
        let (_, outcome, _) = try runUntil(yaml, cpus: cpus) { running in
            let path = running.paths[0]
            if !path.pipeline.isDrained { midStream += 1 }
            let small = path.pipeline.ringCapacities
            do {
                try path.growPool(to: 16_384)
                try running.runtime.resizeRings(path.pipeline, capacities: small.map { _ in 2048 })
                usleep(50_000)
                try running.runtime.resizeRings(path.pipeline, capacities: small)
                let floor = path.poolBufferCountFloor
                #expect(throws: PoolError.cannotShrink(from: 16_384, to: floor - 1, min: floor)) {
                    try path.shrinkPool(to: floor - 1)
                }
                let count = try path.shrinkPool(to: floor)
                retired.append(count)
                #expect(path.poolBufferCount >= floor, "\(path.poolBufferCount) below \(floor)")
            } catch {
                failure = "\(error)"
                return true
            }
            rounds += 1
            return rounds == 3
        }
        #expect(failure == nil && rounds == 3, "\(failure ?? "") after \(rounds) rounds")
        #expect(retired.count == 3 && retired.allSatisfy { $0 > 0 }, "\(retired)")
        #expect(midStream == 3, "only \(midStream) rounds began before the pipeline drained")
        #expect(outcome.packetsIn > 0 && outcome.delivered == outcome.packetsIn && outcome.leftOnRings == 0
                && outcome.drops.isEmpty, "\(outcome.packetsIn) in, \(outcome.delivered) delivered, drops \(outcome.drops)")
    }

    /// The same shape with a large pool: the ring grows to hold 1 ms of arrivals (at least 256 slots).
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func theRingGrowsToTheMeasuredArrivalsWithoutLoss() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let yaml = resizingYAML(cpus: cpus, rate: 400_000, loops: 2000, ringSize: 64, buffers: 65_536)
        let (dataplane, outcome, logs) = try runUntil(yaml, cpus: cpus) { $0.ringResizes.load(ordering: .relaxed) >= 1 }
        let rings = dataplane.paths[0].pipeline.ringCapacities
        #expect(rings[0] >= 256 && dataplane.poolGrowths.load(ordering: .relaxed) == 0, "\(rings)")
        #expect(logs.messages.withLock { $0.contains { $0.1.contains("rings resized to the measured arrivals") } })
        #expect(outcome.delivered == outcome.packetsIn && outcome.leftOnRings == 0 && outcome.drops.isEmpty)
    }

    /// Slow arrivals want small rings, but never below `ring_size`: a 16384-slot ring stays.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func ringsNeverShrinkBelowTheConfiguredSize() throws {
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let yaml = resizingYAML(cpus: cpus, rate: 4_000, loops: 1, ringSize: 16_384, buffers: 65_536)
        var sizings = 0
        let (dataplane, outcome, _) = try runUntil(yaml, cpus: cpus) { _ in
            sizings += 1
            return sizings > 100  // 0.5 s: five sizing passes
        }
        #expect(dataplane.paths[0].pipeline.ringCapacities.allSatisfy { $0 == 16_384 })
        #expect(dataplane.ringResizes.load(ordering: .relaxed) == 0)
        #expect(outcome.delivered == outcome.packetsIn && outcome.drops.isEmpty)
    }
}
