// Path: Benchmarks/Sources/pipeline-load/Report.swift — prints a load test's result: a `show runtime`
// style table or JSON.
import PipelineLoad
import SluiceCore

/// Right-aligned columns: the first cell 10 wide, the others 13; an overlong cell gets a space.
enum TextTable {
    static func row(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            let width = index == 0 ? 10 : 13
            return cell.count >= width ? cell + " " : String(repeating: " ", count: width - cell.count) + cell
        }.joined()
    }
}

enum Report {
    static func table(_ result: LoadTestResult) -> String {
        let c = result.configuration
        var lines: [String] = []
        lines.append("pipeline: \(result.delivered) items in \(format(Double(result.elapsedNs) / 1e6)) ms, "
            + "\(format(result.itemsPerSecond / 1e6)) M items/s, wait mode \(c.waitMode), cores \(c.cores)")
        lines.append("latency: p50 \(format(Double(result.latencyP50Ns) / 1e3)) us, "
            + "p99 \(format(Double(result.latencyP99Ns) / 1e3)) us, max \(format(Double(result.latencyMaxNs) / 1e3)) us; "
            + "CPU of stages 2-3: \(format(result.pipelineCPUShare * 100))%")
        lines.append("")
        lines.append(TextTable.row(["stage", "worker", "calls", "items", "items/call", "cycles/item", "blocked", "wakeups"]))
        for (index, stage) in result.stages.enumerated() {
            let perCall = stage.calls > 0 ? Double(stage.items) / Double(stage.calls) : 0
            let perItem = stage.items > 0 ? Double(stage.cycles) / Double(stage.items) : 0
            lines.append(TextTable.row([result.stageNames[index], "\(c.placement[index])", "\(stage.calls)", "\(stage.items)",
                              format(perCall), format(perItem), "\(stage.blockedTurns)", "\(stage.wakeups)"]))
        }
        lines.append("")
        lines.append(TextTable.row(["worker", "core", "busy polls", "empty polls", "sleeps", "util %", "cpu ms", "lost wakeups"]))
        for (index, worker) in result.workers.enumerated() {
            lines.append(TextTable.row(["\(index)", "\(c.cores[index])", "\(worker.busyPolls)", "\(worker.emptyPolls)",
                              "\(worker.sleeps)", format(worker.utilisation * 100),
                              format(Double(worker.cpuNs) / 1e6), "\(worker.lostWakeups)"]))
        }
        return lines.joined(separator: "\n")
    }

    static func json(_ result: LoadTestResult) -> String {
        let c = result.configuration
        let workers = result.workers.enumerated().map { index, w in
            "{\"core\":\(c.cores[index]),\"busyPolls\":\(w.busyPolls),\"emptyPolls\":\(w.emptyPolls),"
                + "\"sleeps\":\(w.sleeps),\"cpuNs\":\(w.cpuNs),\"utilisation\":\(w.utilisation),"
                + "\"lostWakeups\":\(w.lostWakeups)}"
        }
        let stages = result.stages.enumerated().map { index, s in
            "{\"name\":\"\(result.stageNames[index])\",\"calls\":\(s.calls),\"items\":\(s.items),"
                + "\"cycles\":\(s.cycles),\"blockedTurns\":\(s.blockedTurns),\"wakeups\":\(s.wakeups)}"
        }
        return "{\"waitMode\":\"\(c.waitMode)\",\"ratePerSecond\":\(c.ratePerSecond),\"items\":\(result.delivered),"
            + "\"elapsedNs\":\(result.elapsedNs),\"itemsPerSecond\":\(result.itemsPerSecond),"
            + "\"latencyP50Ns\":\(result.latencyP50Ns),\"latencyP99Ns\":\(result.latencyP99Ns),"
            + "\"latencyMaxNs\":\(result.latencyMaxNs),\"pipelineCPUShare\":\(result.pipelineCPUShare),"
            + "\"workers\":[\(workers.joined(separator: ","))],\"stages\":[\(stages.joined(separator: ","))]}"
    }


    private static func format(_ value: Double) -> String {
        let rounded = (value * 100).rounded() / 100
        return "\(rounded)"
    }
}
