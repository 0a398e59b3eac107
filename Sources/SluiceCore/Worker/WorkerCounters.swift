// Path: Sources/SluiceCore/Worker/WorkerCounters.swift — what a worker did with its core.
import Synchronization

/// Counters of one worker (an lcore), published by the worker every 256 turns, before it sleeps and
/// when it stops (CPU time: every 64k turns and at stop); read by anyone. Utilisation counts only turns that moved items as busy, so a busy-polling
/// worker at 10% load shows 10%, not 100%.
public final class WorkerCounters: Sendable {
    /// Turns that moved at least one item.
    public let busyPolls = Atomic<UInt64>(0)
    /// Turns that found nothing to do.
    public let emptyPolls = Atomic<UInt64>(0)
    /// Items moved by the worker's stages (each stage counts its input).
    public let items = Atomic<UInt64>(0)
    /// Cycle-counter ticks in busy turns.
    public let busyCycles = Atomic<UInt64>(0)
    /// Cycle-counter ticks in empty turns (polling, spinning).
    public let idleCycles = Atomic<UInt64>(0)
    /// Times the worker slept, and nanoseconds spent asleep.
    public let sleeps = Atomic<UInt64>(0)
    public let sleepNs = Atomic<UInt64>(0)
    /// Sleeps that ended by timeout: predicted arrivals plus the safety net.
    public let timeoutWakeups = Atomic<UInt64>(0)
    /// Safety-net timeouts that found input waiting: a wake-up was lost. Must stay 0.
    public let lostWakeups = Atomic<UInt64>(0)
    /// CPU time the worker thread used (CLOCK_THREAD_CPUTIME_ID), in nanoseconds.
    public let cpuNs = Atomic<UInt64>(0)

    init() {}

    /// A consistent-enough copy for reports.
    public func snapshot() -> WorkerSnapshot {
        WorkerSnapshot(
            busyPolls: busyPolls.load(ordering: .relaxed), emptyPolls: emptyPolls.load(ordering: .relaxed),
            items: items.load(ordering: .relaxed), busyCycles: busyCycles.load(ordering: .relaxed),
            idleCycles: idleCycles.load(ordering: .relaxed), sleeps: sleeps.load(ordering: .relaxed),
            sleepNs: sleepNs.load(ordering: .relaxed), timeoutWakeups: timeoutWakeups.load(ordering: .relaxed),
            lostWakeups: lostWakeups.load(ordering: .relaxed), cpuNs: cpuNs.load(ordering: .relaxed))
    }
}

/// Plain copy of a worker's counters.
public struct WorkerSnapshot: Sendable, Equatable {
    public var busyPolls, emptyPolls, items, busyCycles, idleCycles: UInt64
    public var sleeps, sleepNs, timeoutWakeups, lostWakeups, cpuNs: UInt64

    /// Busy share of the worker's time, busy-polling and sleep both counted as idle (0...1).
    public var utilisation: Double {
        let sleepCycles = Double(sleepNs) * Clock.cyclesPerNs
        let total = Double(busyCycles) + Double(idleCycles) + sleepCycles
        return total > 0 ? Double(busyCycles) / total : 0
    }

    /// Counter growth since `earlier`.
    public func since(_ earlier: WorkerSnapshot) -> WorkerSnapshot {
        WorkerSnapshot(
            busyPolls: busyPolls &- earlier.busyPolls, emptyPolls: emptyPolls &- earlier.emptyPolls,
            items: items &- earlier.items, busyCycles: busyCycles &- earlier.busyCycles,
            idleCycles: idleCycles &- earlier.idleCycles, sleeps: sleeps &- earlier.sleeps,
            sleepNs: sleepNs &- earlier.sleepNs, timeoutWakeups: timeoutWakeups &- earlier.timeoutWakeups,
            lostWakeups: lostWakeups &- earlier.lostWakeups, cpuNs: cpuNs &- earlier.cpuNs)
    }
}

/// The worker thread's private running totals, published into `WorkerCounters`.
struct WorkerTally {
    var busyPolls: UInt64 = 0
    var emptyPolls: UInt64 = 0
    var items: UInt64 = 0
    var busyCycles: UInt64 = 0
    var idleCycles: UInt64 = 0
    var sleeps: UInt64 = 0
    var sleepNs: UInt64 = 0
    var timeoutWakeups: UInt64 = 0
    var lostWakeups: UInt64 = 0

    /// Stores the totals (relaxed). `withCPUTime` also samples CLOCK_THREAD_CPUTIME_ID, which is a
    /// real system call (no vDSO): only every 64k turns and at stop.
    func publish(to counters: WorkerCounters, withCPUTime: Bool) {
        counters.busyPolls.store(busyPolls, ordering: .relaxed)
        counters.emptyPolls.store(emptyPolls, ordering: .relaxed)
        counters.items.store(items, ordering: .relaxed)
        counters.busyCycles.store(busyCycles, ordering: .relaxed)
        counters.idleCycles.store(idleCycles, ordering: .relaxed)
        counters.sleeps.store(sleeps, ordering: .relaxed)
        counters.sleepNs.store(sleepNs, ordering: .relaxed)
        counters.timeoutWakeups.store(timeoutWakeups, ordering: .relaxed)
        counters.lostWakeups.store(lostWakeups, ordering: .relaxed)
        if withCPUTime { counters.cpuNs.store(Clock.threadCPUNs(), ordering: .relaxed) }
    }
}
