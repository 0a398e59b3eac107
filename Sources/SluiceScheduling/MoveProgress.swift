// Path: Sources/SluiceScheduling/MoveProgress.swift — one move, minute by minute, by QEMU's rules: the
// duration model runs it on predicted bandwidth and the reported dirty rate; the simulator runs it on
// the bandwidth the move really gets and the guest's actual dirty rate.

/// A running move's state. Pre-copy: round 1 sends all memory (its non-zero pages in full, a header per
/// zero page: `MigrationDemand.firstPassBytes`); each next round sends what the guest
/// dirtied during the one before (at most its working set); the guest stops when the rest fits in the
/// downtime limit at the current rate. With auto-converge, a round that leaves more than half of what
/// it sent dirty raises the vCPU throttle (QEMU: 20 % first, then +10 %, up to the maximum). Post-copy:
/// one pass, the switch, then the pages dirtied meanwhile are fetched on demand.
public struct MoveProgress: Sendable, Equatable {
    public let method: ConvergenceMethod
    public let autoConverge: Bool
    public let maxThrottle: Double
    public let dirtyBytesPerSecond: Double
    public let workingSetBytes: Double
    public let downtimeLimitSeconds: Double
    public private(set) var throttle = 0.0
    public private(set) var rounds = 1
    public private(set) var bytesSent = 0.0
    public private(set) var downtimeSeconds = 0.0
    /// Rounds stopped shrinking and nothing allowed can change that: pre-copy alone will not finish.
    public private(set) var diverged = false
    private var remaining: Double
    private var roundBytes: Double
    private var roundSeconds = 0.0
    private var fetching = false

    public init(demand: MigrationDemand, method: ConvergenceMethod, autoConverge: Bool, maxThrottle: Double = 0.99,
                dirtyBytesPerSecond: Double) {
        precondition(dirtyBytesPerSecond >= 0 && maxThrottle >= 0 && maxThrottle <= 0.99, "move progress parameters")
        self.method = method
        self.autoConverge = autoConverge && method != .postcopy
        self.maxThrottle = maxThrottle
        self.dirtyBytesPerSecond = dirtyBytesPerSecond
        workingSetBytes = demand.workingSetBytes
        downtimeLimitSeconds = demand.downtimeLimitSeconds
        remaining = demand.firstPassBytes
        roundBytes = demand.firstPassBytes
    }

    /// Runs `seconds` at `rate` bytes/s. Returns the seconds into this span at which the guest resumed on
    /// the destination (the move is done), or nil while it goes on.
    public mutating func advance(rate: Double, seconds: Double) -> Double? {
        guard rate > 0 else {
            roundSeconds += seconds
            return nil
        }
        var t = 0.0
        while t < seconds {
            let need = remaining / rate
            if t + need > seconds {
                remaining -= rate * (seconds - t)
                bytesSent += rate * (seconds - t)
                roundSeconds += seconds - t
                return nil
            }
            t += need
            bytesSent += remaining
            roundSeconds += need
            if fetching { return t }
            let dirty = min(workingSetBytes, dirtyBytesPerSecond * (1 - throttle) * roundSeconds)
            if method == .postcopy {
                t += DurationModel.postcopySwitchSeconds
                downtimeSeconds = DurationModel.postcopySwitchSeconds
                fetching = true
                remaining = dirty
                roundSeconds = 0
                if remaining <= 0 { return t }
                continue
            }
            if dirty / rate <= downtimeLimitSeconds {
                bytesSent += dirty
                downtimeSeconds = dirty / rate
                return t + dirty / rate
            }
            if autoConverge, dirty > 0.5 * roundBytes, throttle < maxThrottle {
                throttle = throttle == 0 ? min(0.2, maxThrottle) : min(maxThrottle, throttle + 0.1)
            } else if (rounds > 1 && dirty >= 0.9 * roundBytes) || rounds >= ScheduleLimits.precopyRoundsMax {
                diverged = true
            }
            // QEMU keeps iterating, converging or not.
            remaining = dirty
            roundBytes = dirty
            roundSeconds = 0
            rounds += 1
        }
        return nil
    }
}
