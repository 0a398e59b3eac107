// Path: Benchmarks/Sources/PipelineLoad/LoadTest.swift — a 3-stage pipeline of 8-byte items under a
// set load: what `pipeline-load` (scripts/bench-pipeline.sh) and PipelineBench run.
import Glibc
import SluiceCore

/// A load test: generator -> pass-through -> latency sink, each stage on the worker `placement` names.
public struct LoadTestConfiguration: Sendable {
    public var cores: [Int]
    public var waitMode: WaitMode
    /// Items per second offered by the generator; 0 offers as many as the pipeline takes.
    public var ratePerSecond: UInt64
    public var itemCount: UInt64
    public var burstCount: Int = 32
    public var ringCapacity: Int = 1024
    /// Worker index of the source, relay and sink. Default: source alone on worker 0, the other
    /// two run-to-completion on the last worker (the system under test on a 2-core machine).
    public var placement: [Int]

    public init(cores: [Int], waitMode: WaitMode, ratePerSecond: UInt64, itemCount: UInt64) {
        self.cores = cores
        self.waitMode = waitMode
        self.ratePerSecond = ratePerSecond
        self.itemCount = itemCount
        self.placement = [0, cores.count - 1, cores.count - 1]
    }
}

/// What a load test measured.
public struct LoadTestResult: Sendable {
    public var configuration: LoadTestConfiguration
    public var elapsedNs: UInt64
    public var delivered: UInt64
    public var latencyP50Ns: UInt64
    public var latencyP99Ns: UInt64
    public var latencyMaxNs: UInt64
    public var workers: [WorkerSnapshot]
    public var stages: [StageSnapshot]
    public var stageNames: [String]

    public var itemsPerSecond: Double { Double(delivered) / (Double(max(elapsedNs, 1)) / 1e9) }

    /// CPU time of the workers that run stages 2 and 3 (not the generator's, unless shared), as a
    /// share of the elapsed time: the cost of the wait mode.
    public var pipelineCPUShare: Double {
        let workersUnderTest = Set(configuration.placement.dropFirst())
        let cpu = workersUnderTest.reduce(UInt64(0)) { $0 + workers[$1].cpuNs }
        return Double(cpu) / Double(max(elapsedNs, 1))
    }
}

public enum LoadTestError: Error, Equatable {
    case runtime(RuntimeError)
    case pipeline(PipelineError)
    case didNotDrain(delivered: UInt64, expected: UInt64)
}

/// Runs one load test to completion and stops its workers. Blocks the caller for the run's length
/// (bounded by `timeoutNs`).
public func runLoadTest(_ configuration: LoadTestConfiguration,
                        timeoutNs: UInt64 = 120_000_000_000) throws(LoadTestError) -> LoadTestResult {
    let runtime: Runtime
    do {
        runtime = try Runtime(configuration: RuntimeConfiguration(cores: configuration.cores,
                                                                  waitMode: configuration.waitMode))
        try runtime.start()
    } catch { throw .runtime(error) }
    defer { runtime.stop() }
    let histogram = LatencyHistogram()
    var builder = PipelineBuilder(name: "load", burstCount: configuration.burstCount)
    builder.source(GeneratorSource(ratePerSecond: configuration.ratePerSecond, totalCount: configuration.itemCount,
                                   burstCount: configuration.burstCount), name: "generator")
    builder.stage(PassThrough(), name: "relay")
    builder.stage(LatencySink(histogram: histogram), name: "sink")
    let pipeline: Pipeline
    do {
        pipeline = try builder.build(ringCapacities: [configuration.ringCapacity, configuration.ringCapacity],
                                     numaNode: CPU.numaNode(of: configuration.cores[0]))
    } catch { throw .pipeline(error) }
    let workersBefore = runtime.workers.map { $0.counters.snapshot() }
    let start = Clock.monotonicNs()
    do { try runtime.launch(pipeline, placement: configuration.placement) } catch { throw .runtime(error) }
    let drained = runtime.drain(timeoutNs: timeoutNs)
    let elapsed = Clock.monotonicNs() - start
    runtime.stop()  // publishes final counters, CPU time included
    guard drained else { throw .didNotDrain(delivered: pipeline.delivered, expected: configuration.itemCount) }
    return LoadTestResult(
        configuration: configuration, elapsedNs: elapsed, delivered: pipeline.delivered,
        latencyP50Ns: histogram.value(atPercentile: 50), latencyP99Ns: histogram.value(atPercentile: 99),
        latencyMaxNs: histogram.value(atPercentile: 100),
        workers: zip(runtime.workers, workersBefore).map { $0.counters.snapshot().since($1) },
        stages: pipeline.snapshot(), stageNames: pipeline.stages.map(\.name))
}
