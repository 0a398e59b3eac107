// Path: Sources/SluiceMigration/MigrationCounters.swift — what an executor has done, as atomics, and its
// Prometheus text (served by `sluice vm migrate --metrics`).
import Synchronization

/// Counters of one `MigrationExecutor`. Any thread may read them; only the executor writes them.
public final class MigrationCounters: Sendable {
    /// Why moves failed, in the order of their metric labels.
    public static let failureReasons = ["refused", "source_agent_silent", "destination_did_not_start", "qmp",
                                        "migration_failed", "no_convergence", "not_confirmed", "postcopy_lost",
                                        "source_not_resumed"]

    let running = Atomic<Int>(0)
    let started = Atomic<UInt64>(0)
    let completed = Atomic<UInt64>(0)
    let transferredBytes = Atomic<UInt64>(0)
    let downtimeMsSum = Atomic<UInt64>(0)
    let downtimeMsLast = Atomic<UInt64>(0)
    let totalTimeMsSum = Atomic<UInt64>(0)
    /// By reason, in the order of `failureReasons` (failures are rare: a lock is fine).
    let failures = Mutex<[UInt64]>([UInt64](repeating: 0, count: MigrationCounters.failureReasons.count))

    public init() {}

    func failed(_ reason: String) {
        let index = Self.failureReasons.firstIndex(of: reason)
        precondition(index != nil, "failure reason \(reason) has no counter")
        failures.withLock { $0[index!] += 1 }
    }

    func completed(_ outcome: MigrationOutcome) {
        completed.add(1, ordering: .relaxed)
        transferredBytes.add(outcome.transferredBytes, ordering: .relaxed)
        downtimeMsSum.add(outcome.downtimeMs, ordering: .relaxed)
        downtimeMsLast.store(outcome.downtimeMs, ordering: .relaxed)
        totalTimeMsSum.add(outcome.totalTimeMs, ordering: .relaxed)
    }

    /// Moves in progress now.
    public var runningNow: Int { running.load(ordering: .relaxed) }
    /// Failed moves with `reason` (one of `failureReasons`).
    public func failures(_ reason: String) -> UInt64 {
        Self.failureReasons.firstIndex(of: reason).map { index in failures.withLock { $0[index] } } ?? 0
    }

    /// The Prometheus text format (0.0.4) of every counter.
    public func prometheusText() -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: UInt64) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        metric("sluice_migration_running", "gauge", "Moves in progress.", UInt64(max(0, running.load(ordering: .relaxed))))
        metric("sluice_migration_started_total", "counter", "Moves started (refused ones included).", started.load(ordering: .relaxed))
        metric("sluice_migration_completed_total", "counter", "Moves confirmed on the destination.", completed.load(ordering: .relaxed))
        metric("sluice_migration_transferred_bytes_total", "counter", "Bytes QEMU sent in completed moves.",
               transferredBytes.load(ordering: .relaxed))
        metric("sluice_migration_downtime_ms_sum", "counter", "Downtime of completed moves, ms (QEMU's figure).",
               downtimeMsSum.load(ordering: .relaxed))
        metric("sluice_migration_last_downtime_ms", "gauge", "Downtime of the last completed move, ms.", downtimeMsLast.load(ordering: .relaxed))
        metric("sluice_migration_total_time_ms_sum", "counter", "Total time of completed moves, ms (QEMU's figure).",
               totalTimeMsSum.load(ordering: .relaxed))
        out += "# HELP sluice_migration_failures_total Failed moves by reason.\n# TYPE sluice_migration_failures_total counter\n"
        let failed = failures.withLock { $0 }
        for (index, reason) in Self.failureReasons.enumerated() {
            out += "sluice_migration_failures_total{reason=\"\(reason)\"} \(failed[index])\n"
        }
        return out
    }
}
