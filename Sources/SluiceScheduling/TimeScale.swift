// Path: Sources/SluiceScheduling/TimeScale.swift — the live manager's clock: how many real seconds one
// scheduler minute lasts, and the conversion of rates and durations between the two.

/// The scheduler, forecaster and duration model count in minutes of 60 seconds (one sample, one booking
/// step per minute). A live manager may compress time: with `tickSeconds` 2, one scheduler minute is
/// 2 real seconds, a 15-minute profile slot 30 s, a scheduler day 48 real minutes. Bytes are bytes in
/// both; a real rate is scaled into scheduler seconds (`modelRate`) so that a move of B bytes at R real
/// bytes/s takes B/R real seconds, which the model then counts as (B/R) * 60 / tickSeconds seconds.
/// With `tickSeconds` 60 the conversions are the identity and ticks are Unix minutes.
public struct TimeScale: Sendable, Equatable {
    /// Real seconds per scheduler minute, 0.5...60.
    public let tickSeconds: Double

    /// Shortest and longest tick: below half a second QMP round trips are a large part of a tick.
    public static let tickSecondsRange = 0.5...60.0

    public init(tickSeconds: Double = 60) {
        precondition(Self.tickSecondsRange.contains(tickSeconds), "tick of \(tickSeconds) s")
        self.tickSeconds = tickSeconds
    }

    /// Scheduler seconds per real second (1 when a tick is a real minute).
    public var factor: Double { 60 / tickSeconds }

    /// The tick (scheduler minute) a real instant falls in, from seconds since the Unix epoch.
    public func tick(atUnixSeconds seconds: Double) -> Int { Int((seconds / tickSeconds).rounded(.down)) }
    /// The real instant (seconds since the Unix epoch) a tick begins.
    public func unixSeconds(ofTick tick: Int) -> Double { Double(tick) * tickSeconds }

    /// A real rate (bytes per real second) in bytes per scheduler second.
    public func modelRate(_ realBytesPerSecond: Double) -> Double { realBytesPerSecond / factor }
    /// A scheduler rate in bytes per real second (what QEMU's max-bandwidth is set to).
    public func realRate(_ modelBytesPerSecond: Double) -> Double { modelBytesPerSecond * factor }
    /// A real duration in scheduler seconds.
    public func modelSeconds(_ realSeconds: Double) -> Double { realSeconds * factor }
    /// A scheduler duration in real seconds.
    public func realSeconds(_ modelSeconds: Double) -> Double { modelSeconds / factor }

    /// A host's resources with its link in scheduler units.
    public func model(_ host: HostResources) -> HostResources {
        HostResources(linkBytesPerSecond: modelRate(host.linkBytesPerSecond), migrationSlots: host.migrationSlots,
                      memoryBytes: host.memoryBytes)
    }

    /// A move's demand (dirty rate, max bandwidth, downtime limit) in scheduler units.
    public func model(_ demand: MigrationDemand) -> MigrationDemand {
        MigrationDemand(memoryBytes: demand.memoryBytes, firstPassBytes: demand.firstPassBytes, dirtyBytesPerSecond: modelRate(demand.dirtyBytesPerSecond),
                        workingSetBytes: demand.workingSetBytes, downtimeLimitSeconds: modelSeconds(demand.downtimeLimitSeconds),
                        maxBandwidth: modelRate(demand.maxBandwidth))
    }
}
