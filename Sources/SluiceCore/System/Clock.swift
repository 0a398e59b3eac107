// Path: Sources/SluiceCore/System/Clock.swift — monotonic time, thread CPU time and the cycle counter.
import CShims

/// Clocks used for accounting. `monotonicNs` and `cycles` are vDSO or instruction reads, safe in hot
/// loops; `threadCPUNs` is a system call (about 0.5 µs), for reports only.
public enum Clock {
    /// CLOCK_MONOTONIC in nanoseconds.
    @inlinable public static func monotonicNs() -> UInt64 { sluice_monotonic_ns() }
    /// CPU time the calling thread has used, in nanoseconds.
    @inlinable public static func threadCPUNs() -> UInt64 { sluice_thread_cpu_ns() }
    /// The CPU's timestamp counter, for cycle accounting.
    @inlinable public static func cycles() -> UInt64 { sluice_cycles() }

    /// Cycle-counter ticks per nanosecond, measured once over about 2 ms.
    public static let cyclesPerNs: Double = {
        // Each clock read bracketed by two counter reads, retried if something came between them
        // (a preemption there would skew the rate for good: it is measured once).
        func pair() -> (cycles: UInt64, ns: UInt64) {
            var best = (cycles: UInt64(0), ns: UInt64(0), width: UInt64.max)
            for _ in 0..<16 {
                let before = sluice_cycles()
                let ns = sluice_monotonic_ns()
                let after = sluice_cycles()
                if after &- before < best.width { best = (before / 2 &+ after / 2, ns, after &- before) }
                if best.width < 4_096 { break }
            }
            return (best.cycles, best.ns)
        }
        let start = pair()
        // 2 ms: the bracketed reads are good to about a microsecond, so the rate is good to 0.05%; a
        // longer spin only delays whoever asks first (a replay's placement probe, before its first packet).
        while sluice_monotonic_ns() &- start.ns < 2_000_000 {}
        let end = pair()
        return Double(end.cycles &- start.cycles) / Double(end.ns &- start.ns)
    }()
}
