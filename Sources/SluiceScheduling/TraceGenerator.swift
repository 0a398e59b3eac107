// Path: Sources/SluiceScheduling/TraceGenerator.swift — reproducible host load traces and migration
// requests for the simulator and the tests: stated daily and weekly patterns, bursts, noise, a seed.

#if canImport(Glibc)
import Glibc
#endif

/// SplitMix64: small, fast, reproducible from a seed on every platform.
public struct SplitMix64: Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
    public mutating func uniform(_ range: ClosedRange<Double>) -> Double { range.lowerBound + unit() * (range.upperBound - range.lowerBound) }
    public mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
    /// Standard normal (Box-Muller).
    public mutating func normal() -> Double {
        let u = max(unit(), 1e-300)
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * unit())
    }
}

/// The shape of production traffic on a host's link, as fractions of the link's capacity.
///
/// Weekdays: `night` from `dayEndHour` to `dayStartHour`, rising as a raised cosine to the host's peak
/// (drawn from `peak`) midway through the day. Weekends (days 5 and 6 of the week, the epoch being a
/// Monday 00:00) scale the day's rise by `weekendFactor`. Each host's day is shifted by up to
/// ±`phaseJitterMinutes`. On top: AR(1) noise (`noise` standard deviation, coefficient `noiseMemory`)
/// and bursts (Poisson, `burstsPerDay` per host, each `burstMinutes` long adding `burstSize`).
public struct TracePattern: Sendable, Equatable {
    public var night = 0.15
    public var peak: ClosedRange<Double> = 0.6...0.95
    public var dayStartHour = 7.0
    public var dayEndHour = 23.0
    public var weekendFactor = 0.5
    public var phaseJitterMinutes = 60.0
    public var noise = 0.03
    public var noiseMemory = 0.9
    public var burstsPerDay = 0.5
    public var burstMinutes: ClosedRange<Double> = 10...60
    public var burstSize: ClosedRange<Double> = 0.1...0.3

    public init() {}
}

/// Production traffic per host and minute (bytes/s), generated once; host-major, Float to halve memory.
public struct ProductionTraces: Sendable {
    public let hostCount: Int
    public let minutes: Int
    private let values: [Float]

    @inline(__always) public func value(host: Int, minute: Int) -> Double {
        precondition(host >= 0 && host < hostCount && minute >= 0 && minute < minutes, "trace index \(host) \(minute)")
        return Double(values[host * minutes + minute])
    }

    /// Traces for `capacities.count` hosts over `minutes`, reproducible from `seed`.
    public static func generate(capacities: [Double], minutes: Int, pattern: TracePattern, seed: UInt64) -> ProductionTraces {
        precondition(!capacities.isEmpty && capacities.count <= ScheduleLimits.hostCountMax, "hosts \(capacities.count)")
        precondition(minutes > 0 && minutes <= 8 * ScheduleLimits.minutesPerWeek, "trace of \(minutes) minutes")
        var values = [Float](repeating: 0, count: capacities.count * minutes)
        let dayStart = pattern.dayStartHour * 60
        let dayLength = (pattern.dayEndHour - pattern.dayStartHour) * 60
        for host in capacities.indices {
            var random = SplitMix64(seed: seed ^ (UInt64(host) &* 0xA24B_AED4_963E_E407))
            let peak = random.uniform(pattern.peak)
            let phase = random.uniform(-pattern.phaseJitterMinutes...pattern.phaseJitterMinutes)
            let innovation = pattern.noise * (1 - pattern.noiseMemory * pattern.noiseMemory).squareRoot()
            var noise = 0.0
            var burstLeft = 0.0
            var burstLevel = 0.0
            let burstChance = pattern.burstsPerDay / Double(ScheduleLimits.minutesPerDay)
            for minute in 0..<minutes {
                let local = Double(minute) - phase
                let day = Int((local / Double(ScheduleLimits.minutesPerDay)).rounded(.down))
                let weekday = ((day % 7) + 7) % 7
                let timeOfDay = local - Double(day) * Double(ScheduleLimits.minutesPerDay)
                var shape = 0.0
                if timeOfDay >= dayStart && timeOfDay < dayStart + dayLength {
                    shape = 0.5 - 0.5 * cos(2 * Double.pi * (timeOfDay - dayStart) / dayLength)
                }
                if weekday >= 5 { shape *= pattern.weekendFactor }
                noise = pattern.noiseMemory * noise + innovation * random.normal()
                if burstLeft <= 0, random.unit() < burstChance {
                    burstLeft = random.uniform(pattern.burstMinutes)
                    burstLevel = random.uniform(pattern.burstSize)
                }
                var fraction = pattern.night + (peak - pattern.night) * shape + noise
                if burstLeft > 0 { fraction += burstLevel; burstLeft -= 1 }
                values[host * minutes + minute] = Float(capacities[host] * min(1.1, max(0, fraction)))
            }
        }
        return ProductionTraces(hostCount: capacities.count, minutes: minutes, values: values)
    }
}
