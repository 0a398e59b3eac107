// Path: Sources/SluiceScheduling/DurationModel.swift — how long a move takes and how long the guest
// stops, from its memory, its dirty rate and the bandwidth it will get minute by minute.

/// What one VM's move needs: sizes and rates as the guest's agent reports them.
public struct MigrationDemand: Sendable, Equatable {
    public var memoryBytes: Double
    /// What the first pass sends: the guest's non-zero pages in full and a header per zero page
    /// (`GuestMemoryScan.firstPassBytes`); `memoryBytes` when not measured. At most `memoryBytes`.
    public var firstPassBytes: Double
    /// Bytes the guest dirties per second (the agent's dirty-page rate).
    public var dirtyBytesPerSecond: Double
    /// Most bytes a round can find dirty (the guest's writable working set); at most `memoryBytes`.
    public var workingSetBytes: Double
    /// The longest pause the move may cause.
    public var downtimeLimitSeconds: Double
    /// The most bandwidth the move may take (QEMU's max-bandwidth).
    public var maxBandwidth: Double

    public init(memoryBytes: Double, firstPassBytes: Double? = nil, dirtyBytesPerSecond: Double, workingSetBytes: Double? = nil,
                downtimeLimitSeconds: Double = 0.3, maxBandwidth: Double) {
        precondition(memoryBytes > 0 && dirtyBytesPerSecond >= 0 && downtimeLimitSeconds > 0 && maxBandwidth > 0
                     && (firstPassBytes ?? 1) > 0,
                     "migration demand \(memoryBytes) \(dirtyBytesPerSecond) \(downtimeLimitSeconds) \(maxBandwidth) \(firstPassBytes ?? 0)")
        self.memoryBytes = memoryBytes
        self.firstPassBytes = min(firstPassBytes ?? memoryBytes, memoryBytes)
        self.dirtyBytesPerSecond = dirtyBytesPerSecond
        self.workingSetBytes = min(workingSetBytes ?? memoryBytes, memoryBytes)
        self.downtimeLimitSeconds = downtimeLimitSeconds
        self.maxBandwidth = maxBandwidth
    }
}

/// How a move is made to converge (as in MigrationTemplate's policy: QEMU capabilities).
public enum ConvergenceMethod: String, Sendable, Equatable {
    case precopy
    case autoConverge = "auto-converge"
    case postcopy
}

/// Which methods beyond plain pre-copy the operator allows for a VM.
public struct ConvergenceAllowance: Sendable, Equatable {
    public var autoConverge: Bool
    public var postcopy: Bool
    /// Highest vCPU throttle auto-converge may reach (QEMU's max-cpu-throttle, 0...0.99).
    public var maxThrottle: Double

    public init(autoConverge: Bool = true, postcopy: Bool = false, maxThrottle: Double = 0.99) {
        precondition(maxThrottle >= 0 && maxThrottle <= 0.99, "max throttle \(maxThrottle)")
        self.autoConverge = autoConverge
        self.postcopy = postcopy
        self.maxThrottle = maxThrottle
    }
}

/// Bandwidth a move gets, per minute from its start (bytes/s): a window of a shared per-minute array
/// (no copy per prediction), capped at the move's own limit. Past the window there is none: a move that
/// needs more is not predicted to finish in it.
public struct BandwidthProfile: Sendable, Equatable {
    public let rates: [Double]
    /// Index in `rates` of the move's first minute.
    public let start: Int
    /// Minutes from `start` the window covers.
    public let count: Int
    public let cap: Double

    public init(rates: [Double], start: Int = 0, count: Int? = nil, cap: Double = .infinity) {
        let count = count ?? rates.count - start
        precondition(start >= 0 && count >= 0 && start + count <= rates.count, "profile window \(start)+\(count) of \(rates.count)")
        precondition(cap > 0, "profile cap \(cap)")
        self.rates = rates
        self.start = start
        self.count = count
        self.cap = cap
    }

    @inline(__always) public func rate(minute: Int) -> Double {
        minute < count ? min(cap, max(0, rates[start + minute])) : 0
    }

    public func rate(atSecond second: Double) -> Double { rate(minute: Int(second / 60)) }

    /// Seconds from `second` until `bytes` are sent, or nil past the window's end.
    public func secondsToSend(_ bytes: Double, from second: Double) -> Double? {
        var left = bytes
        var t = second
        var minute = Int(t / 60)
        while left > 0 {
            guard minute < count else { return nil }
            let rate = rate(minute: minute)
            let span = Double(minute + 1) * 60 - t
            if rate * span >= left { return t + left / rate - second }
            left -= rate * span
            t = Double(minute + 1) * 60
            minute += 1
        }
        return t - second
    }
}

/// The predicted course of one move.
public struct DurationPrediction: Sendable, Equatable {
    public var method: ConvergenceMethod
    /// Pre-copy passes over memory (the first one sends everything).
    public var rounds: Int
    /// Start to resumed-on-destination (post-copy: to the last page fetched).
    public var totalSeconds: Double
    public var downtimeSeconds: Double
    public var bytes: Double
    /// The vCPU throttle auto-converge needs (0 without it).
    public var throttle: Double
}

/// Why no method converges.
public enum DurationRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// Dirtying outruns the bandwidth and no allowed method helps.
    case wontConverge(dirtyBytesPerSecond: Double, bandwidth: Double)
    /// It would converge, but not within the bandwidth profile's span.
    case beyondHorizon(minutes: Int)

    public var description: String {
        switch self {
        case .wontConverge(let dirty, let bandwidth):
            "dirties \(Int(dirty / 1_048_576)) MiB/s against \(Int(bandwidth / 1_048_576)) MiB/s of bandwidth; no allowed method converges"
        case .beyondHorizon(let minutes): "does not finish within the \(minutes) minutes forecast"
        }
    }
}

/// Predictions run `MoveProgress` (QEMU's rules) on the predicted bandwidth with the reported dirty
/// rate, trying plain pre-copy first, then auto-converge, then post-copy, as the allowance permits.
public enum DurationModel {
    /// Fixed cost of a post-copy switch-over (device state, page-request round trips).
    public static let postcopySwitchSeconds = 0.05

    public static func predict(_ demand: MigrationDemand, allowance: ConvergenceAllowance,
                               bandwidth: BandwidthProfile) -> Result<DurationPrediction, DurationRefusal> {
        let capped = BandwidthProfile(rates: bandwidth.rates, start: bandwidth.start, count: bandwidth.count,
                                      cap: min(bandwidth.cap, demand.maxBandwidth))
        var attempts: [(ConvergenceMethod, Bool)] = [(.precopy, false)]
        if allowance.autoConverge && demand.dirtyBytesPerSecond > 0 { attempts.append((.autoConverge, true)) }
        if allowance.postcopy { attempts.append((.postcopy, false)) }
        var beyond = false
        for (method, autoConverge) in attempts {
            var move = MoveProgress(demand: demand, method: method == .postcopy ? .postcopy : .precopy,
                                    autoConverge: autoConverge, maxThrottle: allowance.maxThrottle,
                                    dirtyBytesPerSecond: demand.dirtyBytesPerSecond)
            var minute = 0
            while minute < capped.count && !move.diverged {
                if let done = move.advance(rate: capped.rate(minute: minute), seconds: 60) {
                    return .success(DurationPrediction(method: method, rounds: move.rounds,
                                                       totalSeconds: Double(minute) * 60 + done,
                                                       downtimeSeconds: move.downtimeSeconds, bytes: move.bytesSent,
                                                       throttle: move.throttle))
                }
                minute += 1
            }
            if !move.diverged { beyond = true }
        }
        if beyond { return .failure(.beyondHorizon(minutes: capped.count)) }
        var typical = 0.0
        for minute in 0..<capped.count { typical += capped.rate(minute: minute) / Double(max(1, capped.count)) }
        return .failure(.wontConverge(dirtyBytesPerSecond: demand.dirtyBytesPerSecond, bandwidth: typical))
    }
}
