// Path: Sources/SluiceService/StatsTable.swift — `sluice stats`: scraped samples as plain-text tables,
// in the manner of VPP's `show runtime`. Pure formatting; the metric names are `sluice run`'s.

/// Renders the samples `sluice run` exports as aligned plain-text tables (no ANSI codes).
public enum StatsTable {
    /// Sections in a fixed order: Workers, Stages, Rings, Pipelines, Placement, Cores, Rules, Traffic sources, Storage. A section
    /// with none of its samples is left out; a missing cell prints "-". Rows sort by their labels
    /// (numbers numerically), stages and rings in pipeline order as the ring names (`a->b`) give it.
    /// Unknown metric names are ignored. Pure: no I/O.
    public static func render(_ samples: [MetricSample]) -> String {
        let index = SampleIndex(samples)
        let sections = [
            service(index), workers(index), stages(index), rings(index), pipelines(index), placement(index),
            cores(index), rules(index),
            outputs(index), traffic(index), storage(index), replication(index),
        ].compactMap { $0 }
        return sections.joined(separator: "\n")
    }

    static func service(_ index: SampleIndex) -> String? {
        guard let uptime = index.single("sluice_uptime_seconds") else { return nil }
        let up = index.single("sluice_up") == 1 ? "up" : "not up"
        let moves = index.single("sluice_stage_moves_total").map { ", stage moves \(Cell.count($0))" } ?? ""
        let resizes = index.single("sluice_ring_resizes_total").map { ", ring resizes \(Cell.count($0))" } ?? ""
        return "Service: \(up), uptime \(Cell.duration(uptime))\(moves)\(resizes)\n"
    }

    static func workers(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["worker", "core"], prefix: "sluice_worker_")
        guard !rows.isEmpty else { return nil }
        var table = Table(["Worker", "Core", "Util %", "Busy polls", "Empty polls", "Items", "Sleeps", "Lost wakeups",
                           "CPU s"], leftColumns: 0)
        for row in rows {
            table.add(row.key + [
                Cell.fixed(row["sluice_worker_utilisation"].map { $0 * 100 }, digits: 1),
                Cell.count(row["sluice_worker_busy_polls_total"]),
                Cell.count(row["sluice_worker_empty_polls_total"]),
                Cell.count(row["sluice_worker_items_total"]),
                Cell.count(row["sluice_worker_sleeps_total"]),
                Cell.count(row["sluice_worker_lost_wakeups_total"]),
                Cell.fixed(row["sluice_worker_cpu_seconds_total"], digits: 2),
            ])
        }
        return table.render(title: "Workers")
    }

    static func stages(_ index: SampleIndex) -> String? {
        // The service-wide move count has no stage labels: it goes in the header, not here.
        let rows = index.rows(by: ["stage", "pipeline", "worker"], prefix: "sluice_stage_",
                              excluding: ["sluice_stage_moves_total"])
        guard !rows.isEmpty else { return nil }
        var table = Table(["Name", "Pipeline", "Worker", "Calls", "Vectors", "Filtered", "Blocked",
                           "Clocks/Vector", "Vectors/Call"], leftColumns: 2)
        let order = stageOrder(index)
        let sorted = rows.sorted { a, b in
            let (pa, pb) = (order[a.key[1]]?[a.key[0]] ?? Int.max, order[b.key[1]]?[b.key[0]] ?? Int.max)
            if a.key[1] != b.key[1] { return naturalLess([a.key[1]], [b.key[1]]) }
            return pa != pb ? pa < pb : naturalLess([a.key[0], a.key[2]], [b.key[0], b.key[2]])
        }
        for row in sorted {
            table.add(row.key + [
                Cell.count(row["sluice_stage_calls_total"]),
                Cell.count(row["sluice_stage_items_total"]),
                Cell.count(row["sluice_stage_filtered_total"]),
                Cell.count(row["sluice_stage_blocked_total"]),
                Cell.fixed(row["sluice_stage_cycles_per_item"], digits: 1),
                Cell.fixed(row["sluice_stage_items_per_call"], digits: 2),
            ])
        }
        return table.render(title: "Stages")
    }

    static func rings(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["pipeline", "ring"], prefix: "sluice_ring_", excluding: ["sluice_ring_resizes_total"])
        guard !rows.isEmpty else { return nil }
        var table = Table(["Pipeline", "Ring", "Occupancy", "Full", "Drops"], leftColumns: 2)
        let order = stageOrder(index)
        func position(_ row: Row) -> Int { order[row.key[0]]?[ringEnds(row.key[1]).source] ?? Int.max }
        let sorted = rows.sorted { a, b in
            if a.key[0] != b.key[0] { return naturalLess([a.key[0]], [b.key[0]]) }
            return position(a) != position(b) ? position(a) < position(b) : a.key[1] < b.key[1]
        }
        for row in sorted {
            let occupancy = Cell.count(row["sluice_ring_occupancy"]) + "/" + Cell.count(row["sluice_ring_capacity"])
            table.add(row.key + [occupancy, Cell.count(row["sluice_ring_full_total"]),
                                 Cell.count(row["sluice_ring_drops_total"])])
        }
        return table.render(title: "Rings")
    }

    /// Hits per pipeline and rule (`sluice_rule_hits_total`, `sluice_rule_bytes_total`).
    static func rules(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["pipeline", "rule"], names: ["sluice_rule_hits_total", "sluice_rule_bytes_total"])
        guard !rows.isEmpty else { return nil }
        var table = Table(["Pipeline", "Rule", "Packets", "Bytes"], leftColumns: 2)
        for row in rows {
            table.add(row.key + [Cell.count(row["sluice_rule_hits_total"]), Cell.count(row["sluice_rule_bytes_total"])])
        }
        return table.render(title: "Rules")
    }

    /// Packets, bytes and drops per pipeline and output, for pipelines with named outputs
    /// (`sluice_output_packets_total`, `sluice_output_bytes_total`, `sluice_output_drops_total`).
    static func outputs(_ index: SampleIndex) -> String? {
        let names = ["sluice_output_packets_total", "sluice_output_bytes_total", "sluice_output_drops_total"]
        let rows = index.rows(by: ["pipeline", "output"], names: names)
        guard !rows.isEmpty else { return nil }
        var table = Table(["Pipeline", "Output", "Packets", "Bytes", "Drops"], leftColumns: 2)
        for row in rows {
            table.add(row.key + names.map { Cell.count(row[$0]) })
        }
        return table.render(title: "Outputs")
    }

    /// Totals per pipeline, then a drop table with one row per nonzero reason.
    static func pipelines(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["pipeline"], prefix: "sluice_pipeline_", excluding: [
            "sluice_pipeline_drops_total", "sluice_pipeline_cores", "sluice_pipeline_weight", "sluice_pipeline_demand_cores",
            "sluice_pipeline_pool_buffers"])
        let drops = index.rows(by: ["pipeline", "reason"], names: ["sluice_pipeline_drops_total"])
        guard !rows.isEmpty || !drops.isEmpty else { return nil }
        var table = Table(["Pipeline", "Packets in", "Bytes in", "Packets out", "Filtered"], leftColumns: 1)
        for row in rows {
            table.add(row.key + [
                Cell.count(row["sluice_pipeline_packets_in_total"]),
                Cell.count(row["sluice_pipeline_bytes_in_total"]),
                Cell.count(row["sluice_pipeline_packets_out_total"]),
                Cell.count(row["sluice_pipeline_filtered_total"]),
            ])
        }
        var text = rows.isEmpty ? "" : table.render(title: "Pipelines")
        var dropTable = Table(["Pipeline", "Reason", "Drops"], leftColumns: 2)
        for row in drops where (row["sluice_pipeline_drops_total"] ?? 0) != 0 {
            dropTable.add(row.key + [Cell.count(row["sluice_pipeline_drops_total"])])
        }
        if !dropTable.rows.isEmpty {
            text += (text.isEmpty ? "" : "\n") + dropTable.render(title: "Pipeline drops")
        }
        return text.isEmpty ? nil : text
    }

    /// Measured placements: the cores in use, how often they changed, the hand-off cost, and the
    /// predicted rate of the shape in force against the best other one (why it is in force).
    static func placement(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["pipeline"], names: ["sluice_placement_changes_total", "sluice_placement_handoff_ns_per_item",
                                                        "sluice_placement_cores_used"])
        guard !rows.isEmpty else { return nil }
        let predicted = index.rows(by: ["pipeline", "cores_used"], names: ["sluice_placement_predicted_items_per_second"])
        var table = Table(["Pipeline", "Cores used", "Changes", "Hand-off ns", "Predicted/s", "Best other/s"], leftColumns: 1)
        for row in rows {
            let used = row["sluice_placement_cores_used"].map { "\(Int($0))" }
            let mine = predicted.filter { $0.key[0] == row.key[0] }
            let inForce = mine.first { $0.key[1] == used }?["sluice_placement_predicted_items_per_second"]
            let other = mine.filter { $0.key[1] != used }.compactMap { $0["sluice_placement_predicted_items_per_second"] }.max()
            table.add(row.key + [used ?? "-", Cell.count(row["sluice_placement_changes_total"]),
                                 Cell.fixed(row["sluice_placement_handoff_ns_per_item"], digits: 1),
                                 Cell.count(inForce), Cell.count(other)])
        }
        return table.render(title: "Placement")
    }

    /// Rebalanced services: each pipeline's cores, weight and measured demand, then the core moves
    /// between pipelines by giver, receiver and reason (`demand`: the receiver needed more and the
    /// giver had slack; `weight`: both busy, cores follow the weights).
    static func cores(_ index: SampleIndex) -> String? {
        let rows = index.rows(by: ["pipeline"], names: ["sluice_pipeline_cores", "sluice_pipeline_weight",
                                                        "sluice_pipeline_demand_cores"])
        guard !rows.isEmpty else { return nil }
        var table = Table(["Pipeline", "Cores", "Weight", "Demand (cores)"], leftColumns: 1)
        for row in rows {
            table.add(row.key + [Cell.count(row["sluice_pipeline_cores"]), Cell.fixed(row["sluice_pipeline_weight"], digits: 2),
                                 Cell.fixed(row["sluice_pipeline_demand_cores"], digits: 2)])
        }
        var text = table.render(title: "Cores")
        let moves = index.rows(by: ["from", "to", "reason"], names: ["sluice_core_moves_total"])
        if !moves.isEmpty {
            var moveTable = Table(["From", "To", "Reason", "Moves"], leftColumns: 3)
            for row in moves { moveTable.add(row.key + [Cell.count(row["sluice_core_moves_total"])]) }
            text += "\n" + moveTable.render(title: "Core moves")
        }
        return text
    }

    /// Per (port, source) shares and backlog, then per port capacity and stall state when exported.
    static func traffic(_ index: SampleIndex) -> String? {
        let sourceNames = ["sluice_traffic_share_target", "sluice_traffic_share_achieved",
                           "sluice_traffic_pending_packets", "sluice_traffic_delay_seconds", "sluice_traffic_sent_bytes"]
        let portNames = ["sluice_traffic_port_capacity_bytes_per_second", "sluice_traffic_port_in_flight_limit_bytes",
                         "sluice_traffic_port_stalled"]
        let rows = index.rows(by: ["port", "source"], names: sourceNames)
        let ports = index.rows(by: ["port"], names: portNames)
        guard !rows.isEmpty || !ports.isEmpty else { return nil }
        var table = Table(["Port", "Source", "Target %", "Achieved %", "Pending", "Delay us", "Sent bytes"],
                          leftColumns: 1)
        for row in rows {
            table.add(row.key + [
                Cell.fixed(row["sluice_traffic_share_target"].map { $0 * 100 }, digits: 1),
                Cell.fixed(row["sluice_traffic_share_achieved"].map { $0 * 100 }, digits: 1),
                Cell.count(row["sluice_traffic_pending_packets"]),
                Cell.fixed(row["sluice_traffic_delay_seconds"].map { $0 * 1e6 }, digits: 1),
                Cell.count(row["sluice_traffic_sent_bytes"]),
            ])
        }
        var text = rows.isEmpty ? "" : table.render(title: "Traffic sources")
        var portTable = Table(["Port", "Capacity B/s", "In-flight limit B", "Stalled"], leftColumns: 1)
        for row in ports {
            let stalled = row["sluice_traffic_port_stalled"].map { $0 != 0 ? "yes" : "no" } ?? "-"
            portTable.add(row.key + [Cell.count(row["sluice_traffic_port_capacity_bytes_per_second"]),
                                     Cell.count(row["sluice_traffic_port_in_flight_limit_bytes"]), stalled])
        }
        if !portTable.rows.isEmpty {
            text += (text.isEmpty ? "" : "\n") + portTable.render(title: "Traffic ports")
        }
        return text
    }

    /// Per op: requests by status (one column per status seen, `ok` first), conflicts and latency
    /// quantiles in µs; then the log's last OSN, group commits and writes per flush.
    static func storage(_ index: SampleIndex) -> String? {
        let requests = index.rows(by: ["op", "status"], names: ["sluice_storage_requests_total"])
        let perOp = index.rows(by: ["op"], names: ["sluice_storage_conflicts_total"])
        let latency = index.rows(by: ["op", "quantile"], names: ["sluice_storage_latency_seconds"])
        let osn = index.single("sluice_storage_last_osn")
        let commits = index.single("sluice_storage_group_commits_total")
        let writes = index.single("sluice_storage_commit_writes_total")
        var ops: [String] = []
        for key in requests.map({ $0.key[0] }) + perOp.map({ $0.key[0] }) + latency.map({ $0.key[0] }) where !ops.contains(key) {
            ops.append(key)
        }
        guard !ops.isEmpty || osn != nil || commits != nil else { return nil }
        ops.sort(by: opLess)
        var statuses: [String] = []
        for status in requests.map({ $0.key[1] }) where !statuses.contains(status) { statuses.append(status) }
        statuses.sort { ($0 == "ok" ? 0 : 1, $0) < ($1 == "ok" ? 0 : 1, $1) }
        let quantiles = [("p50 us", "0.5"), ("p99 us", "0.99"), ("p999 us", "0.999"), ("max us", "1")]
        var table = Table(["Op"] + statuses + ["Conflicts"] + quantiles.map(\.0), leftColumns: 1)
        for op in ops {
            var cells = [op]
            for status in statuses {
                cells.append(Cell.count(requests.first { $0.key == [op, status] }?["sluice_storage_requests_total"]))
            }
            cells.append(Cell.count(perOp.first { $0.key == [op] }?["sluice_storage_conflicts_total"]))
            for (_, quantile) in quantiles {
                let seconds = latency.first { $0.key == [op, quantile] }?["sluice_storage_latency_seconds"]
                cells.append(Cell.fixed(seconds.map { $0 * 1e6 }, digits: 1))
            }
            table.add(cells)
        }
        var text = ops.isEmpty ? "Storage\n" : table.render(title: "Storage")
        if osn != nil || commits != nil || writes != nil {
            let perFlush = commits.flatMap { c in c > 0 ? writes.map { $0 / c } : nil }
            text += "Last OSN \(Cell.count(osn))  group commits \(Cell.count(commits))"
                + "  writes/flush \(Cell.fixed(perFlush, digits: 2))\n"
        }
        return text
    }

    /// The shared log (a storage node on etcd): where the node stands, then proposals, batches and
    /// their mean size, unknown outcomes and how they settled, refusals and the etcd round trips' mean.
    static func replication(_ index: SampleIndex) -> String? {
        guard let stateValue = index.single("sluice_replication_state") else { return nil }
        let states = [1: "following", 2: "catching up", 3: "disconnected", 4: "failed"]
        let state = states[Int(stateValue)] ?? "state \(Cell.count(stateValue))"
        let age = index.single("sluice_replication_contact_age_ms")
        let ageText = age.map { $0 < 0 ? "never" : "\(Cell.count($0)) ms ago" } ?? "-"
        var text = "Replication: \(state), applied OSN \(Cell.count(index.single("sluice_replication_applied_osn")))"
            + "  log OSN \(Cell.count(index.single("sluice_replication_log_osn")))"
            + "  lag \(Cell.count(index.single("sluice_replication_apply_lag")))  etcd contact \(ageText)\n"
        let batches = index.single("sluice_replication_batches_total")
        let records = index.single("sluice_replication_batched_records_total")
        let perBatch = batches.flatMap { b in b > 0 ? records.map { $0 / b } : nil }
        text += "Proposals \(Cell.count(index.single("sluice_replication_proposals_total")))"
            + "  batches \(Cell.count(batches))  records/batch \(Cell.fixed(perBatch, digits: 2))"
            + "  applied records \(Cell.count(index.single("sluice_replication_applied_records_total")))\n"
        text += "Unknown outcomes \(Cell.count(index.single("sluice_replication_unknown_outcomes_total")))"
            + " (settled applied \(Cell.count(index.single("sluice_replication_settled_applied_total")))"
            + ", not applied \(Cell.count(index.single("sluice_replication_settled_not_applied_total"))))"
            + "  refused \(Cell.count(index.single("sluice_replication_refused_total")))"
            + "  claims lost \(Cell.count(index.single("sluice_replication_claims_lost_total")))\n"
        let trips = index.single("sluice_replication_round_trip_seconds_count")
        let tripSeconds = index.single("sluice_replication_round_trip_seconds_sum")
        let meanMs = trips.flatMap { t in t > 0 ? tripSeconds.map { $0 / t * 1e3 } : nil }
        text += "etcd round trips \(Cell.count(trips))  mean ms \(Cell.fixed(meanMs, digits: 2))"
            + "  watch restarts \(Cell.count(index.single("sluice_replication_watch_restarts_total")))"
            + "  compactions \(Cell.count(index.single("sluice_replication_compactions_total")))\n"
        return text
    }

    /// Each stage's place in its pipeline (pipeline -> stage -> 0, 1, ...), read off the ring names
    /// `source->target`: a walk from the stages no ring feeds. Stages on no ring are not listed.
    static func stageOrder(_ index: SampleIndex) -> [String: [String: Int]] {
        var next: [String: [String: [String]]] = [:]
        for row in index.rows(by: ["pipeline", "ring"], prefix: "sluice_ring_") {
            let (source, target) = ringEnds(row.key[1])
            guard let target else { continue }
            next[row.key[0], default: [:]][source, default: []].append(target)
        }
        var order: [String: [String: Int]] = [:]
        for (pipeline, edges) in next {
            let targets = Set(edges.values.joined())
            var queue = edges.keys.filter { !targets.contains($0) }.sorted()
            var positions: [String: Int] = [:]
            // Breadth first; each stage placed once, so a cycle in the names cannot loop.
            while !queue.isEmpty {
                let stage = queue.removeFirst()
                guard positions[stage] == nil else { continue }
                positions[stage] = positions.count
                queue += (edges[stage] ?? []).sorted()
            }
            order[pipeline] = positions
        }
        return order
    }

    /// "a->b" as ("a", "b"); a name without "->" as (name, nil).
    static func ringEnds(_ ring: String) -> (source: String, target: String?) {
        guard let arrow = ring.firstRange(of: "->") else { return (ring, nil) }
        return (String(ring[..<arrow.lowerBound]), String(ring[arrow.upperBound...]))
    }

    static let opOrder = ["readPage", "readPages", "writePages", "createObject", "deleteObject", "truncateObject",
                          "statObject", "listObjects", "statNode"]

    /// The storage ops in protocol order; ops not known here after them, by name.
    static func opLess(_ a: String, _ b: String) -> Bool {
        let ia = opOrder.firstIndex(of: a) ?? opOrder.count
        let ib = opOrder.firstIndex(of: b) ?? opOrder.count
        return ia != ib ? ia < ib : a < b
    }
}

/// The samples grouped by name, for building rows keyed by label values.
struct SampleIndex {
    var byName: [String: [MetricSample]] = [:]

    init(_ samples: [MetricSample]) {
        for sample in samples { byName[sample.name, default: []].append(sample) }
    }

    /// The value of an unlabelled (or only) sample of `name`.
    func single(_ name: String) -> Double? { byName[name]?.first?.value }

    /// One row per distinct value tuple of `labels` among the samples of `names` (or of every name
    /// starting with `prefix`, less `excluding`), sorted naturally. A later sample with the same name
    /// and key wins.
    func rows(by labels: [String], prefix: String? = nil, names: [String] = [], excluding: [String] = []) -> [Row] {
        let chosen = byName.keys.filter { name in
            (names.contains(name) || prefix.map { name.hasPrefix($0) } == true) && !excluding.contains(name)
        }
        var rows: [[String]: Row] = [:]
        for name in chosen {
            for sample in byName[name] ?? [] {
                let key = labels.map { sample.labels[$0] ?? "" }
                rows[key, default: Row(key: key)].values[name] = sample.value
            }
        }
        return rows.values.sorted { naturalLess($0.key, $1.key) }
    }
}

struct Row {
    var key: [String]
    var values: [String: Double] = [:]
    subscript(name: String) -> Double? { values[name] }
}

/// Element by element; two integers compare as numbers ("2" before "10"), anything else as text.
func naturalLess(_ a: [String], _ b: [String]) -> Bool {
    for (x, y) in zip(a, b) where x != y {
        if let i = Int(x), let j = Int(y) { return i < j }
        return x < y
    }
    return a.count < b.count
}

/// Cell formatting without Foundation.
enum Cell {
    /// An integer when the value is one (counters, byte counts); otherwise two decimals.
    static func count(_ value: Double?) -> String {
        guard let value else { return "-" }
        if let special = nonFinite(value) { return special }
        if value == value.rounded(), abs(value) < 9e18 { return String(Int64(value)) }
        return fixed(value, digits: 2)
    }

    /// `digits` places after the point, rounded half away from zero.
    static func fixed(_ value: Double?, digits: Int) -> String {
        guard let value else { return "-" }
        if let special = nonFinite(value) { return special }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let units = Int64(scaled)
        let whole = String(units / Int64(scale))
        var fraction = digits == 0 ? "" : String(units % Int64(scale))
        if digits > 0 { fraction = "." + String(repeating: "0", count: digits - fraction.count) + fraction }
        return (value < 0 && units != 0 ? "-" : "") + whole + fraction
    }

    /// "3d 04h05m06s", "1h02m03s", "2m05s", "42s"; whole seconds.
    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0, seconds < 9e18 else { return String(seconds) }
        let total = Int64(seconds)
        let (d, h, m, s) = (total / 86_400, total / 3600 % 24, total / 60 % 60, total % 60)
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        if d > 0 { return "\(d)d \(two(h))h\(two(m))m\(two(s))s" }
        if h > 0 { return "\(h)h\(two(m))m\(two(s))s" }
        if m > 0 { return "\(m)m\(two(s))s" }
        return "\(s)s"
    }

    static func nonFinite(_ value: Double) -> String? {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value < 0 ? "-Inf" : "+Inf" }
        return nil
    }
}

/// Columns as wide as their widest cell, two spaces apart; the first `leftColumns` are text and
/// left-aligned, the rest numbers and right-aligned. No trailing spaces.
struct Table {
    let headers: [String]
    let leftColumns: Int
    var rows: [[String]] = []

    init(_ headers: [String], leftColumns: Int) {
        self.headers = headers
        self.leftColumns = leftColumns
    }

    mutating func add(_ cells: [String]) {
        precondition(cells.count == headers.count, "a row has one cell per column")
        rows.append(cells)
    }

    /// A title line, the header line, then one line per row.
    func render(title: String) -> String {
        var widths = headers.map(\.count)
        for row in rows {
            for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        var text = title + "\n"
        for line in [headers] + rows {
            var out = ""
            for (column, cell) in line.enumerated() {
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                if column > 0 { out += "  " }
                out += column < leftColumns ? cell + pad : pad + cell
            }
            while out.last == " " { out.removeLast() }
            text += out + "\n"
        }
        return text
    }
}
