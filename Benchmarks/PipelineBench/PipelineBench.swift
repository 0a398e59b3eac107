// Path: Benchmarks/PipelineBench/PipelineBench.swift — package-benchmark suite for the core runtime's
// 3-stage pipeline (generator -> relay -> latency sink; stages 2-3 run-to-completion on worker 1).
//
// Per wait mode at full load: wall clock, items/s, CPU, and mallocCountTotal at two item counts. The
// allocation count is what building and starting the runtime costs; it must not grow with the item
// count (the data path allocates nothing). Load-level comparisons (10%, 50%, 100% of the busy-poll peak,
// CPU and p99 per mode) come from scripts/bench-pipeline.sh, which interleaves runs and takes medians.
// Run from Benchmarks/: `swift package benchmark --target PipelineBench`.
import Benchmark
import PipelineLoad
import SluiceCore

let itemsPerSecond = BenchmarkMetric.custom("items/s", polarity: .prefersLarger, useScalingFactor: false)
let p99Ns = BenchmarkMetric.custom("p99 ns", polarity: .prefersSmaller, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, itemsPerSecond, p99Ns],
        warmupIterations: 1,
        maxDuration: .seconds(3),
        maxIterations: 10
    )
    let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(2))
    for mode in WaitMode.allCases {
        for items: UInt64 in [2_000_000, 8_000_000] {
            Benchmark("Pipeline \(mode) full load \(items / 1_000_000)M items") { benchmark in
                let configuration = LoadTestConfiguration(cores: cores, waitMode: mode, ratePerSecond: 0,
                                                          itemCount: items)
                benchmark.startMeasurement()
                let result = try runLoadTest(configuration)
                benchmark.stopMeasurement()
                benchmark.measurement(itemsPerSecond, Int(result.itemsPerSecond))
                benchmark.measurement(p99Ns, Int(result.latencyP99Ns))
            }
        }
    }
}
