// Path: Sources/SluiceCore/Idle/IdlePredictor.swift — the adaptive mode's learned spin budget.

/// Learns the busy periods and idle gaps of one worker and decides, when the worker is idle and
/// nothing is in flight towards it, how long to keep spinning and how long it may then sleep.
/// The rule: while the worker is busy at least `spinUtilisationMin` of the time, spin through the
/// gaps it has seen (sleeping there would add a wake-up to most bursts for little saving); below
/// that, spin only `spinNsMin` and sleep, so a lightly loaded core is mostly asleep.
/// Owned by its worker thread; plain arithmetic, no allocation, no atomics.
public struct IdlePredictor: Sendable {
    /// Tuning bounds. Defaults suit a futex wake-up costing tens of microseconds.
    public struct Configuration: Sendable {
        /// Shortest spin before sleeping, even when gaps are long (in-flight items are polled for anyway).
        public var spinNsMin: UInt64 = 0
        /// Longest spin before sleeping, however short the gaps.
        public var spinNsMax: UInt64 = 200_000
        /// Busy share of time (0...1) at and above which gaps are spun through.
        public var spinUtilisationMin = 0.5
        /// How early to wake before a predicted arrival: the wake-up latency of an idle core plus
        /// slack, so the worker is polling when the items come.
        public var wakeMarginNs: UInt64 = 20_000
        /// Weight of a new gap in the moving average, as 1/2^shift.
        public var ewmaShift: UInt64 = 3

        public init() {}
    }

    public let configuration: Configuration
    /// Moving average of the gap between the ends of busy periods and the next arrival, in ns.
    public private(set) var gapNsAverage: UInt64
    /// Moving average of the absolute deviation of that gap, in ns (how regular arrivals are).
    public private(set) var gapNsDeviation: UInt64 = 0
    /// Moving average of the busy periods between idle gaps, in ns.
    public private(set) var busyNsAverage: UInt64 = 0
    private var lastArrivalNs: UInt64 = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.gapNsAverage = configuration.spinNsMin
    }

    /// Records that work arrived at `nowNs` after the worker had been idle since `idleSinceNs`.
    public mutating func recordArrival(nowNs: UInt64, idleSinceNs: UInt64) {
        let shift = configuration.ewmaShift
        if lastArrivalNs != 0, idleSinceNs > lastArrivalNs {
            let busy = idleSinceNs - lastArrivalNs
            busyNsAverage = busyNsAverage &- (busyNsAverage >> shift) &+ (busy >> shift)
        }
        let gap = nowNs &- idleSinceNs
        let deviation = gap > gapNsAverage ? gap - gapNsAverage : gapNsAverage - gap
        gapNsAverage = gapNsAverage &- (gapNsAverage >> shift) &+ (gap >> shift)
        gapNsDeviation = gapNsDeviation &- (gapNsDeviation >> shift) &+ (deviation >> shift)
        lastArrivalNs = nowNs
    }

    /// Busy share of the worker's recent time (0...1).
    public var utilisation: Double {
        let total = busyNsAverage &+ gapNsAverage
        return total == 0 ? 0 : Double(busyNsAverage) / Double(total)
    }

    /// How long to spin, from the start of an idle period, before sleeping: through the usual gap
    /// while the worker is busy enough, else the minimum.
    public var spinBudgetNs: UInt64 {
        let c = configuration
        guard utilisation >= c.spinUtilisationMin else { return c.spinNsMin }
        return min(max(gapNsAverage + 2 * gapNsDeviation, c.spinNsMin), c.spinNsMax)
    }

    /// How long to sleep from `nowNs` in an idle period that began at `idleSinceNs`: until shortly
    /// before the predicted next arrival when arrivals are regular, else `fallbackNs`. A producer
    /// wakes the sleeper earlier when work comes first.
    public func sleepNs(nowNs: UInt64, idleSinceNs: UInt64, fallbackNs: UInt64) -> UInt64 {
        let c = configuration
        guard gapNsDeviation < gapNsAverage / 2 else { return fallbackNs }  // irregular: no prediction
        // A timed wake pays the same wake-up latency as a producer's; it only helps when the sleep
        // before it is at least as long as that latency.
        guard gapNsAverage >= 2 * c.wakeMarginNs else { return fallbackNs }
        let predicted = idleSinceNs &+ gapNsAverage
        let wake = predicted > c.wakeMarginNs ? predicted - c.wakeMarginNs : 0
        guard wake > nowNs else { return fallbackNs }  // late: wait to be woken
        return min(wake - nowNs, fallbackNs)
    }
}
