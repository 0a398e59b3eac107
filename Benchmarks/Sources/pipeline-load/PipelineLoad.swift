// Path: Benchmarks/Sources/pipeline-load/PipelineLoad.swift — the core runtime under a set load
// (what `sluice pipeline` was): scripts/bench-pipeline.sh runs it once per mode and load.
import ArgumentParser
import Glibc
import PipelineLoad
import SluiceCore

@main
struct PipelineLoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline-load",
        abstract: "Run a 3-stage pipeline (generator -> relay -> latency sink) of 8-byte items on pinned workers.")

    @Option(help: "Cores for the workers, e.g. 0,1 or 0-3. Default: up to two allowed CPUs.")
    var cores: String?

    @Option(help: "How idle workers wait: busy-poll, adaptive or interrupt.")
    var waitMode: WaitMode = .adaptive

    @Option(help: "Items per second offered; 0 offers as many as the pipeline takes.")
    var rate: UInt64 = 0

    @Option(help: "Items to send.")
    var count: UInt64 = 10_000_000

    @Option(help: "Capacity of each ring (a power of two).")
    var ringCapacity: Int = 1024

    @Option(help: "Items per burst (1...\(Limits.burstCountMax)).")
    var burst: Int = 32

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard (1...Limits.burstCountMax).contains(burst) else {
            throw ValidationError("--burst must be 1...\(Limits.burstCountMax), got \(burst)")
        }
        guard ringCapacity > 0, ringCapacity.nonzeroBitCount == 1, ringCapacity <= Limits.ringCapacityMax else {
            throw ValidationError("--ring-capacity must be a power of two up to \(Limits.ringCapacityMax), got \(ringCapacity)")
        }
        guard count > 0 else { throw ValidationError("--count must be positive") }
    }

    func run() throws {
        let coreList = try cores.map(parseCores) ?? Array(CPU.allowedCPUs().prefix(2))
        var configuration = LoadTestConfiguration(cores: coreList, waitMode: waitMode, ratePerSecond: rate,
                                                  itemCount: count)
        configuration.burstCount = burst
        configuration.ringCapacity = ringCapacity
        let result: LoadTestResult
        do { result = try runLoadTest(configuration) } catch {
            throw ValidationError("pipeline failed: \(describe(error))")
        }
        print(json ? Report.json(result) : Report.table(result))
    }

    private func describe(_ error: LoadTestError) -> String {
        switch error {
        case .runtime(.coreUnavailable(let core)): "core \(core) does not exist or is not allowed for this process"
        case .runtime(.tooManyWorkers(let requested, let available)):
            "\(requested) workers asked, this process may use \(available) CPUs"
        case .runtime(let error): "\(error)"
        case .pipeline(let error): "\(error)"
        case .didNotDrain(let delivered, let expected): "only \(delivered) of \(expected) items arrived in time"
        }
    }
}

/// Parses a core list: "0,1", "0-3", "0-1,4".
func parseCores(_ text: String) throws(ValidationError) -> [Int] {
    var cores: [Int] = []
    for part in text.split(separator: ",") {
        let bounds = part.split(separator: "-", maxSplits: 1).map { Int($0.filter { $0 != " " }) }
        guard let low = bounds.first ?? nil, low >= 0, bounds.count <= 2 else {
            throw ValidationError("--cores: '\(part)' is not a core id or a range like 0-3")
        }
        let high = bounds.count == 2 ? bounds[1] : low
        guard let high, high >= low else { throw ValidationError("--cores: range '\(part)' is empty or malformed") }
        cores.append(contentsOf: low...high)
    }
    guard !cores.isEmpty else { throw ValidationError("--cores: no cores given") }
    return cores
}

extension WaitMode: @retroactive ExpressibleByArgument {}
