// Path: Sources/sluice/ReplayReport.swift — the replay summary: a VPP `show runtime` style table or JSON.
import SluiceCore
import SluicePacketIO
import SluiceReplay

enum ReplayReport {
    /// `value` with `digits` decimals (0...9), without Foundation.
    static func fixed(_ value: Double, _ digits: Int) -> String {
        guard value.isFinite else { return "0" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return "\(Int(value))" }
        let units = UInt64(scaled)
        let whole = units / UInt64(scale)
        var text = "\(value < 0 && units > 0 ? "-" : "")\(whole)"
        if digits > 0 {
            let fraction = String(units % UInt64(scale))
            text += "." + String(repeating: "0", count: digits - fraction.count) + fraction
        }
        return text
    }

    /// tcpreplay's first two lines for a pipeline replay: what was delivered, at what rate.
    static func tcpreplayLines(_ s: ReplaySummary, output: ReplayOutput) -> String {
        let seconds = Double(s.elapsedNs) / 1e9
        let bps = Double(s.bytes) / max(seconds, 1e-9)
        return "Actual: \(s.delivered) packets (\(s.bytes) bytes) sent in \(fixed(seconds, 6)) seconds\n"
            + "Rated: \(fixed(bps, 1)) Bps, \(fixed(bps * 8 / 1e6, 2)) Mbps, \(fixed(s.packetsPerSecond, 2)) pps"
    }

    /// The sender's summary, as tcpreplay prints it, then what Sluice adds.
    static func senderText(_ s: SenderSummary) -> String {
        var lines = [
            "Actual: \(s.packets) packets (\(s.bytes) bytes) sent in \(fixed(s.seconds, 6)) seconds",
            "Rated: \(fixed(s.bytesPerSecond, 1)) Bps, \(fixed(s.megabitsPerSecond, 2)) Mbps, \(fixed(s.packetsPerSecond, 2)) pps",
            "Flows: \(s.flowTableFull ? "at least " : "")\(s.flows) flows, \(fixed(s.flowsPerSecond, 2)) fps, "
                + "\(s.flowPackets) unique flow packets, \(s.nonFlowPackets) unique non-flow packets",
        ]
        for port in s.ports {
            lines.append("Statistics for network device: \(port.name)")
            lines.append("\tSuccessful packets:        \(port.successfulPackets)")
            lines.append("\tFailed packets:            \(port.failedPackets)")
            lines.append("\tTruncated packets:         \(port.truncatedPackets)")
            lines.append("\tRetried packets (ENOBUFS/EAGAIN): \(port.retriedPackets)")
        }
        let perPacket = s.packets > 0 ? Double(s.processCpuNs) / Double(s.packets) : 0
        lines.append("Loops completed: \(s.loopsCompleted), stopped by: \(s.stoppedBy), latest release: "
            + "\(fixed(Double(s.lateNsMax) / 1e3, 1)) us late, CPU: \(fixed(Double(s.processCpuNs) / 1e6, 1)) ms "
            + "(\(fixed(perPacket, 1)) ns/packet, this process)")
        return lines.joined(separator: "\n")
    }

    /// The sender's summary as one JSON object; keys documented in docs/REPLAY.md.
    static func senderJSON(_ s: SenderSummary) -> String {
        let ports = s.ports.map { p in
            "{\"name\":\"\(escaped(p.name))\",\"kind\":\"\(p.kind)\",\"successfulPackets\":\(p.successfulPackets),"
                + "\"successfulBytes\":\(p.successfulBytes),\"failedPackets\":\(p.failedPackets),"
                + "\"truncatedPackets\":\(p.truncatedPackets),\"retriedPackets\":\(p.retriedPackets)}"
        }
        return "{\"engine\":\"sender\",\"packets\":\(s.packets),\"bytes\":\(s.bytes),\"elapsedNs\":\(s.elapsedNs),"
            + "\"seconds\":\(s.seconds),\"bytesPerSecond\":\(s.bytesPerSecond),\"megabitsPerSecond\":\(s.megabitsPerSecond),"
            + "\"packetsPerSecond\":\(s.packetsPerSecond),\"flows\":\(s.flows),\"flowTableFull\":\(s.flowTableFull),"
            + "\"flowsPerSecond\":\(s.flowsPerSecond),\"flowPackets\":\(s.flowPackets),\"nonFlowPackets\":\(s.nonFlowPackets),"
            + "\"loopsCompleted\":\(s.loopsCompleted),\"stoppedBy\":\"\(s.stoppedBy)\",\"lateNsMax\":\(s.lateNsMax),"
            + "\"processCpuNs\":\(s.processCpuNs),\"ports\":[\(ports.joined(separator: ","))],"
            + "\"failure\":\(s.failure.map { "\"\(escaped($0))\"" } ?? "null")}"
    }

    static func table(_ s: ReplaySummary) -> String {
        var lines: [String] = []
        let seconds = Double(s.elapsedNs) / 1e9
        lines.append("replay: \(s.packets) packets, \(s.bytes) bytes read; \(s.delivered) delivered in "
            + "\(String(format1: seconds * 1000)) ms: \(Int(s.packetsPerSecond)) pps, "
            + "\(String(format1: s.bitsPerSecond / 1e6)) Mbit/s")
        lines.append("from opening the capture: \(String(format1: Double(s.wallNsFromOpen) / 1e6)) ms wall, "
            + "\(String(format1: Double(s.processCpuNs) / 1e6)) ms CPU (all threads)")
        if s.drops.isEmpty {
            lines.append("drops: none")
        } else {
            lines.append("drops: " + s.drops.map { "\($0.reason) \($0.count)" }.joined(separator: ", "))
        }
        if let p50 = s.latencyP50Ns, let p99 = s.latencyP99Ns {
            lines.append("latency (source to sink): p50 \(String(format1: Double(p50) / 1e3)) us, p99 \(String(format1: Double(p99) / 1e3)) us")
        }
        if s.poolWaits > 0 { lines.append("source waited for a free buffer \(s.poolWaits) times (nothing lost)") }
        if let traffic = s.traffic {
            lines.append("")
            lines.append("traffic: port \(String(format1: traffic.portCapacityBytesPerSecond * 8 / 1e6)) Mbit/s estimated, "
                + "in-flight limit \(traffic.portLimitBytes) bytes\(traffic.stalled ? ", STALLED" : "")")
            lines.append(TextTable.row(["source", "packets", "bytes", "pending", "share target", "achieved", "delay us"]))
            for source in traffic.sources {
                lines.append(TextTable.row(["\(source.source)", "\(source.completedPackets)", "\(source.completedBytes)",
                                            "\(source.pendingPackets)", String(format1: source.shareTarget * 100) + "%",
                                            String(format1: source.shareAchieved * 100) + "%",
                                            String(format1: Double(source.delayNs) / 1e3)]))
            }
        }
        if let handoff = s.handoff { lines.append("hand-off: \(handoff)") }
        if let fanout = s.fanout { lines.append("placement: \(fanout)") }
        if s.instances > 1 {
            lines.append("instances: \(s.instances), one per core, each run to completion, the capture shared by "
                + (s.split == .blocks ? "blocks" : "flow") + "; delivered "
                + s.instanceDelivered.map(String.init).joined(separator: " + "))
        }
        if let midRun = s.fannedOutMidRun { lines.append("placement: \(midRun)") }
        if let refusal = s.fannedOutMidRunRefusal { lines.append("placement: did not fan out mid-run (\(refusal)); ran on to the end") }
        if let failure = s.calibrationFailure { lines.append("placement: not measured (\(failure)); the first one held") }
        if let failure = s.placementFailure { lines.append("placement: a move failed (\(failure)); stages stayed where they were") }
        if let first = s.firstDecision, s.placementChanges.isEmpty, s.fannedOutMidRun == nil {
            lines.append("placement: stayed at \(s.stagePlacement) (a move must predict 10% more); the planner's best: \(first)")
        }
        for change in s.placementChanges {
            let moved = change.undone == nil ? "moved \(change.from) -> \(change.decision)" : "\(change.from) -> \(change.to) \(change.why)"
            lines.append("placement: at \(String(format1: Double(change.atNs) / 1e6)) ms \(moved)")
        }
        lines.append("")
        lines.append(TextTable.row(["stage", "worker", "calls", "items", "items/call", "cycles/item", "filtered", "blocked"]))
        for (index, stage) in s.stages.enumerated() {
            let perCall = stage.calls > 0 ? Double(stage.items) / Double(stage.calls) : 0
            let perItem = stage.items > 0 ? Double(stage.cycles) / Double(stage.items) : 0
            let worker = s.instances > 1 ? "all" : "\(s.stagePlacement[index])"  // fanned out: the instances' sums
            lines.append(TextTable.row([s.stageNames[index], worker, "\(stage.calls)", "\(stage.items)",
                              String(format1: perCall), String(format1: perItem), "\(stage.filtered)",
                              "\(stage.blockedTurns)"]))
        }
        lines.append("")
        lines.append(TextTable.row(["worker", "core", "busy polls", "empty polls", "sleeps", "util %", "cpu ms"]))
        for (index, worker) in s.workers.enumerated() {
            lines.append(TextTable.row(["\(index)", "\(s.cores[index])", "\(worker.busyPolls)", "\(worker.emptyPolls)",
                              "\(worker.sleeps)", String(format1: worker.utilisation * 100),
                              String(format1: Double(worker.cpuNs) / 1e6)]))
        }
        return lines.joined(separator: "\n")
    }

    static func json(_ s: ReplaySummary) -> String {
        let drops = s.drops.map { "{\"reason\":\"\(escaped($0.reason))\",\"count\":\($0.count)}" }
        let stages = s.stages.enumerated().map { index, stage in
            "{\"name\":\"\(s.stageNames[index])\",\"worker\":\(s.instances > 1 ? "null" : "\(s.stagePlacement[index])"),\"calls\":\(stage.calls),"
                + "\"items\":\(stage.items),\"cycles\":\(stage.cycles),\"filtered\":\(stage.filtered),"
                + "\"blockedTurns\":\(stage.blockedTurns)}"
        }
        let workers = s.workers.enumerated().map { index, w in
            "{\"core\":\(s.cores[index]),\"busyPolls\":\(w.busyPolls),\"emptyPolls\":\(w.emptyPolls),"
                + "\"sleeps\":\(w.sleeps),\"cpuNs\":\(w.cpuNs),\"utilisation\":\(w.utilisation)}"
        }
        let failure = s.failure.map { "\"\(escaped($0))\"" } ?? "null"
        let changes = s.placementChanges.map { change in
            "{\"atNs\":\(change.atNs),\"from\":\(change.from),\"to\":\(change.to),\"reason\":\"\(escaped(change.why))\",\"undone\":\(change.undone != nil)}"
        }
        let fanout = s.fanout.map { f in
            "{\"instances\":\(f.instances),\"othersNsPerRecord\":\(f.othersNsPerRecord),"
                + "\"handoffNsPerItem\":\(f.handoffNsPerItem.map { "\($0)" } ?? "null"),\"largestShare\":\(f.largestShare),"
                + "\"predictedItemsPerSecond\":\(number(f.predictedItemsPerSecond)),"
                + "\"plannerPredictedItemsPerSecond\":\(number(f.planner?.chosen.predictedItemsPerSecond)),"
                + "\"closeCall\":\(f.closeCall),\"trials\":{\"oneCore\":\(number(f.trialOneCore)),\"pipelined\":\(number(f.trialPipelined)),"
                + "\"pipelinedPlacement\":\(f.trialPipelinedPlacement.map { "\($0)" } ?? "null"),"
                + "\"fannedOut\":\(number(f.trialFannedOut)),"
                + "\"startPlacement\":\(f.startPlacement.map { "\($0)" } ?? "null"),\"refuted\":\(f.refuted)},"
                + "\"chosen\":\(f.chosen),\"split\":\"\(f.split.rawValue)\",\"blockCount\":\(f.blockCount),"
                + "\"measuringNs\":\(f.measuringNs),"
                + "\"reason\":\"\(escaped("\(f)"))\"}"
        } ?? "null"
        let midRun = s.fannedOutMidRun.map { m in
            "{\"stoppedAtNs\":\(m.stoppedAtNs),\"launchedAtNs\":\(m.launchedAtNs),\"loopIndex\":\(m.position.loop),"
                + "\"recordIndex\":\(m.position.recordIndex),\"fileOffset\":\(m.position.fileOffset),"
                + "\"singleRecordsPerSecond\":\(number(m.singleRecordsPerSecond)),"
                + "\"trialRecordsPerSecond\":\(number(m.trialRecordsPerSecond)),"
                + "\"deliveredBefore\":\(m.deliveredBefore),\"setUpNs\":\(m.setUpNs)}"
        } ?? "null"
        let handoff = s.handoff.map { "{\"localNsPerItem\":\($0.localNsPerItem),\"crossNsPerItem\":\($0.crossNsPerItem),\"handoffNsPerItem\":\($0.handoffNsPerItem)}" } ?? "null"
        return "{\"packets\":\(s.packets),\"bytes\":\(s.bytes),\"delivered\":\(s.delivered),"
            + "\"elapsedNs\":\(s.elapsedNs),\"wallNsFromOpen\":\(s.wallNsFromOpen),\"processCpuNs\":\(s.processCpuNs),"
            + "\"packetsPerSecond\":\(s.packetsPerSecond),"
            + "\"drops\":[\(drops.joined(separator: ","))],\"poolWaits\":\(s.poolWaits),\"stages\":[\(stages.joined(separator: ","))],"
            + "\"workers\":[\(workers.joined(separator: ","))],\"latencyP50Ns\":\(s.latencyP50Ns.map(String.init) ?? "null"),"
            + "\"latencyP99Ns\":\(s.latencyP99Ns.map(String.init) ?? "null"),\"failure\":\(failure),"
            + "\"placement\":\(s.instances > 1 ? "\"fanout\"" : "\(s.stagePlacement)"),"
            + "\"placementChanges\":[\(changes.joined(separator: ","))],\"handoff\":\(handoff),"
            + "\"instances\":\(s.instances),\"instanceDelivered\":\(s.instanceDelivered),"
            + "\"split\":\(s.split.map { "\"\($0.rawValue)\"" } ?? "null"),\"fusedBursts\":\(s.fusedBursts),"
            + "\"fannedOutMidRun\":\(midRun),"
            + "\"fannedOutMidRunRefusal\":\(s.fannedOutMidRunRefusal.map { "\"\(escaped($0))\"" } ?? "null"),\"fanout\":\(fanout)}"
    }

    /// A JSON number, or null for nil and for infinities and NaN (not JSON).
    private static func number(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "null" }
        return "\(value)"
    }

    private static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

}
