// Path: Sources/SluiceCore/Idle/IdlePredictor.swift — the adaptive mode's learned spin budget.

/// Learns the gaps between arrivals on one worker and decides, when the worker is idle and nothing
/// is in flight towards it, whether to keep spinning and for how long it may sleep.
/// Owned by its worker thread; plain arithmetic, no allocation, no atomics.
public struct IdlePredictor: Sendable {
    /// Tuning bounds. Defaults suit a futex wake-up costing tens of microseconds.
    public struct Configuration: Sendable {
        /// Shortest spin before sleeping, even when gaps are long.
        public var spinNsMin: UInt64 = 2_000
        /// Longest spin before sleeping, however short the gaps.
        public var spinNsMax: UInt64 = 200_000
        /// CPU time a sleep and wake-up cost the sleeper (two context switches and a system call):
        /// idle gaps shorter than this are spun through, since sleeping would burn more than it saves.
        public var wakeCostNs: UInt64 = 2_000
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
    public private(set) var gapNsDeviation: UInt64
    private var lastArrivalNs: UInt64 = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.gapNsAverage = configuration.wakeCostNs
        self.gapNsDeviation = configuration.wakeCostNs
    }

    /// Records that work arrived at `nowNs` after the worker had been idle since `idleSinceNs`.
    public mutating func recordArrival(nowNs: UInt64, idleSinceNs: UInt64) {
        let gap = nowNs &- idleSinceNs
        let shift = configuration.ewmaShift
        let deviation = gap > gapNsAverage ? gap - gapNsAverage : gapNsAverage - gap
        gapNsAverage = gapNsAverage &- (gapNsAverage >> shift) &+ (gap >> shift)
        gapNsDeviation = gapNsDeviation &- (gapNsDeviation >> shift) &+ (deviation >> shift)
        lastArrivalNs = nowNs
    }

    /// How long to spin, from the start of an idle period, before sleeping.
    /// Gaps shorter than a sleep's CPU cost are spun through; longer ones get a short spin, then sleep.
    public var spinBudgetNs: UInt64 {
        let c = configuration
        if gapNsAverage <= c.wakeCostNs {
            return min(max(gapNsAverage + 2 * gapNsDeviation, c.spinNsMin), c.spinNsMax)
        }
        return c.spinNsMin
    }

    /// How long to sleep from `nowNs` in an idle period that began at `idleSinceNs`: until shortly
    /// before the predicted next arrival when arrivals are regular, else `fallbackNs`. A producer
    /// wakes the sleeper earlier when work comes first.
    public func sleepNs(nowNs: UInt64, idleSinceNs: UInt64, fallbackNs: UInt64) -> UInt64 {
        let c = configuration
        guard gapNsDeviation < gapNsAverage / 2 else { return fallbackNs }  // irregular: no prediction
        let predicted = idleSinceNs &+ gapNsAverage
        let wake = predicted > c.wakeMarginNs ? predicted - c.wakeMarginNs : 0
        guard wake > nowNs else { return fallbackNs }  // late: wait to be woken
        return min(wake - nowNs, fallbackNs)
    }
}
