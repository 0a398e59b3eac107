// Path: Benchmarks/Sources/wake-latency/WakeLatency.swift — prints the futex wake-up latency between
// two pinned CPUs, median of N runs: the floor under any sleeping wait mode on this machine.
// Usage: wake-latency [RUNS] [IDLE_GAP_US]
import CWakeHarness

@main
struct WakeLatency {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        let runs = arguments.first.flatMap { Int($0) } ?? 5
        // How long the sleeper's core stays idle before each wake, in µs (idle states deepen with it).
        let gapNs = UInt64(arguments.dropFirst().first.flatMap { Int($0) } ?? 50) * 1_000
        var p50s: [UInt64] = []
        var p99s: [UInt64] = []
        var maxes: [UInt64] = []
        for _ in 0..<runs {
            var p50: UInt64 = 0
            var p99: UInt64 = 0
            var max: UInt64 = 0
            let rc = wakeh_futex_latency(0, 1, 2_000, gapNs, &p50, &p99, &max)
            guard rc == 0 else {
                print("wake-latency: failed with errno \(-rc)")
                return
            }
            p50s.append(p50)
            p99s.append(p99)
            maxes.append(max)
        }
        func median(_ values: [UInt64]) -> UInt64 { values.sorted()[values.count / 2] }
        print("{\"wakeP50Ns\":\(median(p50s)),\"wakeP99Ns\":\(median(p99s)),\"wakeMaxNs\":\(median(maxes)),\"idleGapNs\":\(gapNs),\"runs\":\(runs)}")
    }
}
