// Path: Sources/SluiceTraffic/TrafficPolicy.swift — what each source is entitled to on a port.

/// One source's entitlement: a weight, a guaranteed minimum and an optional cap, in bytes per second.
public struct SourcePolicy: Sendable, Equatable {
    public var weight: Double
    public var minimumBytesPerSecond: Double
    public var maximumBytesPerSecond: Double?

    public init(weight: Double = 1, minimumBytesPerSecond: Double = 0, maximumBytesPerSecond: Double? = nil) {
        self.weight = weight
        self.minimumBytesPerSecond = minimumBytesPerSecond
        self.maximumBytesPerSecond = maximumBytesPerSecond
    }
}

/// How a port is divided and how the controller watches it. Validated by `TrafficController.init`.
public struct TrafficPolicy: Sendable, Equatable {
    /// Entitlements by source id (index); sources beyond the array get `defaultSource`.
    public var sources: [SourcePolicy]
    public var defaultSource = SourcePolicy()
    /// Re-divide after this many completions, or this long, whichever comes first.
    public var redivideEveryCompletions = 256
    public var redivideEveryNs: UInt64 = 1_000_000
    /// A source with nothing in flight, nothing refused and nothing completed for this long is quiet:
    /// its share goes to the others.
    public var quietAfterNs: UInt64 = 2_000_000
    /// Frames pending and no completion for this long: the port is stalled and gets no more frames.
    public var watchdogNs: UInt64 = 100_000_000
    /// Bounds of the DQL-style limit on bytes in flight on the port.
    public var portInFlightBytesMin = 16 * 1024
    public var portInFlightBytesMax = 16 * 1024 * 1024
    public var portInFlightBytesInitial = 256 * 1024
    /// Grants total this much more than the estimated capacity, so the port stays busy and the
    /// estimate can grow (1.02: shares stay within a few percent of their targets).
    public var probeHeadroom = 1.02

    public init(sources: [SourcePolicy]) { self.sources = sources }

    func policy(of source: Int) -> SourcePolicy { source < sources.count ? sources[source] : defaultSource }

    public func validate() throws(TrafficError) {
        guard sources.count <= TrafficLimits.sourceCountMax else {
            throw .invalidPolicy("\(sources.count) sources, at most \(TrafficLimits.sourceCountMax)")
        }
        for (index, source) in (sources + [defaultSource]).enumerated() {
            guard source.weight > 0, source.weight.isFinite else {
                throw .invalidPolicy("source \(index): weight must be positive, got \(source.weight)")
            }
            guard source.minimumBytesPerSecond >= 0, source.minimumBytesPerSecond.isFinite else {
                throw .invalidPolicy("source \(index): minimum must be 0 or more, got \(source.minimumBytesPerSecond)")
            }
            if let cap = source.maximumBytesPerSecond, !(cap > 0 && cap >= source.minimumBytesPerSecond) {
                throw .invalidPolicy("source \(index): cap \(cap) must be positive and at least the minimum")
            }
        }
        guard redivideEveryCompletions > 0, redivideEveryNs > 0, watchdogNs > 0, quietAfterNs > 0 else {
            throw .invalidPolicy("intervals must be positive")
        }
        guard probeHeadroom >= 1, probeHeadroom.isFinite else { throw .invalidPolicy("probe headroom must be at least 1") }
        guard portInFlightBytesMin > 0, portInFlightBytesMin <= portInFlightBytesInitial,
              portInFlightBytesInitial <= portInFlightBytesMax else {
            throw .invalidPolicy("port in-flight bounds must satisfy 0 < min <= initial <= max")
        }
    }
}

/// Division of `capacity` among `demands` (sources that want to send): each first gets its minimum
/// (scaled down together when the minimums do not fit), then the rest is spread by weight, water-
/// filling: no source above its cap, what a capped source leaves going to the others by weight.
/// Pure: tested on its own.
public func divide(capacity: Double, among demands: [(source: Int, policy: SourcePolicy)]) -> [Int: Double] {
    var result: [Int: Double] = [:]
    guard capacity > 0, !demands.isEmpty else { return result }
    let minimums = demands.reduce(0) { $0 + $1.policy.minimumBytesPerSecond }
    let minimumScale = minimums > capacity ? capacity / minimums : 1
    var open = demands
    var left = capacity
    for demand in demands { result[demand.source] = demand.policy.minimumBytesPerSecond * minimumScale }
    left -= minimums * minimumScale
    // Water-filling: at most one round per source, since each round fixes at least one at its cap.
    for _ in 0...demands.count where left > 1e-9 && !open.isEmpty {
        let weights = open.reduce(0) { $0 + $1.policy.weight }
        var capped: [Int] = []
        var spent = 0.0
        for demand in open {
            let current = result[demand.source]!
            var target = current + left * demand.policy.weight / weights
            if let cap = demand.policy.maximumBytesPerSecond, target >= cap {
                target = cap
                capped.append(demand.source)
            }
            spent += target - current
            result[demand.source] = target
        }
        left -= spent
        if capped.isEmpty { break }
        open.removeAll { capped.contains($0.source) }
    }
    return result
}
