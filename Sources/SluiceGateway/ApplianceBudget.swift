// Path: Sources/SluiceGateway/ApplianceBudget.swift — the last-hop budget of one share: a token bucket
// in bytes/s and/or a cap on bytes fetched over bytes served, and the share's access pattern.
import Glibc
import Synchronization

/// How many predicted bytes a share may pull over the last hop. Requested bytes are always fetched
/// (and charged); predicted bytes (the intermediate's predictions and the appliance's read-ahead) only
/// within what both bounds allow. Both nil: predictions bounded by `ApplianceConfiguration.readAheadBytes` only.
public struct ApplianceBudget: Sendable, Equatable {
    /// Refill rate of the share's token bucket in bytes per second (0: no predicted bytes at all).
    public var bytesPerSecond: UInt64?
    /// Bytes fetched (requested + predicted) over bytes served that the share may reach (>= 1 useful).
    public var ratio: Double?
    /// Depth of the token bucket in bytes (what an idle share may spend at once). Starts full.
    public var burstBytes: UInt64 = 4 << 20

    public init(bytesPerSecond: UInt64? = nil, ratio: Double? = nil) {
        self.bytesPerSecond = bytesPerSecond
        self.ratio = ratio
    }
}

/// A share's budget use (for counters and tests).
public struct ShareSnapshot: Sendable, Equatable {
    public var name: String
    public var servedBytes: UInt64
    /// Last-hop payload bytes fetched for this share: requested and predicted.
    public var requestedBytes: UInt64
    public var predictedBytes: UInt64
    /// Predicted bytes the budget allowed (granted), whether or not they came.
    public var grantedBytes: UInt64
    /// Grants asked for and refused in full (budget exhausted).
    public var refusedGrants: UInt64
}

func monotonicNs() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// One share: its budget account and, per object, where its last read ended (sequential detection).
/// Thread-safe. The pattern table holds at most `patternEntriesMax` objects.
final class ApplianceShare: Sendable {
    let name: String
    let budget: ApplianceBudget
    private let patternEntriesMax: Int
    private let account: Mutex<Account>

    private struct Account {
        var tokens: Double
        var refilledNs: UInt64
        /// Bytes of reads that succeeded.
        var served: UInt64 = 0
        /// Bytes of reads observed and not yet finished: the ratio cap counts them (a read's own
        /// predictions are allowed against it), `servedBytes` only once they succeeded.
        var serving: UInt64 = 0
        var requested: UInt64 = 0
        var predicted: UInt64 = 0
        /// Granted and not yet settled.
        var reserved: UInt64 = 0
        var granted: UInt64 = 0
        var refused: UInt64 = 0
        var lastEnd: [String: (end: UInt64, streak: Int)] = [:]
    }

    init(name: String, budget: ApplianceBudget, patternEntriesMax: Int) {
        self.name = name
        self.budget = budget
        self.patternEntriesMax = patternEntriesMax
        account = Mutex(Account(tokens: Double(budget.burstBytes), refilledNs: monotonicNs()))
    }

    /// Records a read of `length` bytes at `offset` of `key` (to be served). Returns the number of
    /// contiguous reads before it (0: not sequential). The caller finishes it once with `finish`.
    func observe(key: String, offset: UInt64, length: Int) -> Int {
        account.withLock { a in
            a.serving += UInt64(length)
            let previous = a.lastEnd[key]
            let streak = previous.map { $0.end == offset ? $0.streak + 1 : 0 } ?? 0
            if previous == nil, a.lastEnd.count >= patternEntriesMax, let victim = a.lastEnd.keys.first {
                a.lastEnd[victim] = nil  // bounded: forget one object's pattern
            }
            a.lastEnd[key] = (offset + UInt64(length), streak)
            return streak
        }
    }

    /// Ends a read `observe` recorded: its bytes count as served only when it succeeded.
    func finish(length: Int, succeeded: Bool) {
        account.withLock { a in
            precondition(a.serving >= UInt64(length), "each observed read finishes once")
            a.serving -= UInt64(length)
            if succeeded { a.served += UInt64(length) }
        }
    }

    /// Reserves up to `wanted` predicted bytes: what the token bucket and the ratio cap allow now.
    /// The caller settles every grant (even 0) with `settle`.
    func grant(_ wanted: Int) -> Int {
        guard wanted > 0 else { return 0 }
        return account.withLock { a in
            var allowed = Double(wanted)
            if let rate = budget.bytesPerSecond {
                let now = monotonicNs()
                let elapsed = Double(now &- a.refilledNs) / 1e9
                a.refilledNs = now
                a.tokens = min(Double(budget.burstBytes), a.tokens + elapsed * Double(rate))
                allowed = min(allowed, max(0, a.tokens))
                if rate == 0 { allowed = 0 }
            }
            if let ratio = budget.ratio {
                let spent = Double(a.requested + a.predicted + a.reserved)
                allowed = min(allowed, max(0, ratio * Double(a.served + a.serving) - spent))
            }
            let granted = Int(allowed)
            if granted == 0 { a.refused += 1 }
            if budget.bytesPerSecond != nil { a.tokens -= Double(granted) }
            a.reserved += UInt64(granted)
            a.granted += UInt64(granted)
            return granted
        }
    }

    /// Settles a request: `granted` as returned by `grant`, `requested` and `predicted` bytes that came.
    /// Unused grant goes back to the bucket; requested bytes are charged to it (down to minus one burst).
    func settle(granted: Int, requested: Int, predicted: Int) {
        account.withLock { a in
            a.reserved -= UInt64(granted)
            a.requested += UInt64(requested)
            a.predicted += UInt64(predicted)
            if budget.bytesPerSecond != nil {
                a.tokens += Double(granted - predicted) - Double(requested)
                a.tokens = max(a.tokens, -Double(budget.burstBytes))
            }
        }
    }

    var snapshot: ShareSnapshot {
        account.withLock { a in
            ShareSnapshot(name: name, servedBytes: a.served, requestedBytes: a.requested, predictedBytes: a.predicted,
                          grantedBytes: a.granted, refusedGrants: a.refused)
        }
    }
}
