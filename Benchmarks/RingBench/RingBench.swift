// Path: Benchmarks/RingBench/RingBench.swift — package-benchmark suite for the SPSC ring.
//
// Two pinned threads move items through every ring variant (RingHarness), single and burst 32,
// capacity 1024 and 65536; each iteration is one run, with ring setup outside the measurement.
// `mallocCountTotal` there is what starting the run's two threads allocates: the same for every
// variant, C or Swift, and independent of the item count. The one-thread benchmark shows the Swift hot
// path itself allocates nothing. This suite runs one benchmark after another, so a machine whose speed
// drifts skews comparisons between them: ratios for docs come from ring-compare, which interleaves.
// Run from Benchmarks/: `swift package benchmark --target RingBench`.
import Benchmark
import Glibc
import RingHarness
import SluiceCore

/// Items per second over one run, the number the goals are stated in.
let itemsPerSecond = BenchmarkMetric.custom("items/s", polarity: .prefersLarger, useScalingFactor: false)

/// Items per run: long enough to swamp the thread starts, short enough for 20 iterations of each.
let itemsPerRun = 4_000_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, itemsPerSecond],
        warmupIterations: 1,
        maxDuration: .seconds(2),
        maxIterations: 20
    )
    let placement = ThreadPlacement.pinned(0, 1)

    for capacity in [1024, 65536] {
        for calls in [RingCalls.single, .burst(32)] {
            for variant in RingVariant.allCases {
                Benchmark("Two threads \(variant.rawValue) \(calls) capacity \(capacity)") { benchmark in
                    let rig = try ThroughputRig(variant, calls: calls, capacity: capacity, placement: placement)
                    benchmark.startMeasurement()
                    let rate = try rig.run(items: itemsPerRun)
                    benchmark.stopMeasurement()
                    benchmark.measurement(itemsPerSecond, Int(rate))
                    usleep(20_000)  // real-time threads stay well under the kernel's RT budget
                }
            }
        }
    }

    // One thread, burst 32 in and out of a capacity-1024 ring: counts are per burst pair (.kilo scaling).
    Benchmark(
        "One thread Swift enqueue+dequeue burst 32",
        configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal], scalingFactor: .kilo)
    ) { benchmark in
        let ends = try makeRing(capacity: 1024)
        var producer = ends.producer
        var consumer = ends.consumer
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { items.deallocate() }
        items.initialize(repeating: 7)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(producer.enqueueBurst(UnsafeBufferPointer(items)).count)
            blackHole(consumer.dequeueBurst(into: items).count)
        }
        benchmark.stopMeasurement()
    }
}
