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
        let ns0 = sluice_monotonic_ns()
        let c0 = sluice_cycles()
        var ns1 = ns0
        // 2 ms: the clock reads are tens of ns, so the rate is good to 0.01%; a longer spin only
        // delays whoever asks first (a replay's placement probe, before its clock's first packet).
        while ns1 &- ns0 < 2_000_000 { ns1 = sluice_monotonic_ns() }
        let c1 = sluice_cycles()
        return Double(c1 &- c0) / Double(ns1 &- ns0)
    }()
}
