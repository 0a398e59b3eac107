// Path: Sources/SluiceScheduling/Forecaster.swift — a per-resource forecast from its own history: a
// weekly profile (with a daily one while a week is not yet seen), a recent trend, an uncertainty band.

#if canImport(Glibc)
import Glibc
#endif

/// A forecast of one value at one minute: the expected value and the spread around it.
public struct ForecastPoint: Sendable, Equatable {
    public var mean: Double
    /// Standard deviation of the error the forecaster expects at this point.
    public var sigma: Double

    public init(mean: Double, sigma: Double) {
        self.mean = mean
        self.sigma = sigma
    }

    /// The value exceeded with probability `1 - confidence` (one-sided, normal errors): the high side
    /// of the band. `confidence` 0.5 gives the mean.
    public func upper(confidence: Double) -> Double { mean + NormalQuantile.z(confidence) * sigma }
    /// The value undershot with probability `1 - confidence`: the low side of the band.
    public func lower(confidence: Double) -> Double { mean - NormalQuantile.z(confidence) * sigma }
}

/// Forecasts one resource (e.g. a link's production traffic in bytes/s) from the one-minute samples it
/// is given, in minute order.
///
/// Model: value(m) = profile(slot of m) + trend(now) * decay(m - now) + noise. The profile is kept per
/// 15-minute slot of the week (each week's visit of a slot moves it by `weeklyWeight`), and per slot of
/// the day for days of the week not seen yet. The trend is an
/// exponentially weighted mean of the recent residuals (value minus profile), decaying over
/// `trendDecayMinutes` into the future. The band comes from each slot's variance and, as the trend fades,
/// the profile's recent misfit (the mean square of recent residuals).
/// The seasons are `Parameters.seasonMinutes` (a day by default) and 7 of them (a week).
/// Memory is fixed: at most 8 x 191 slots (672 + 96 with the default season).
public struct SeasonalForecaster: Sendable {
    public struct Parameters: Sendable, Equatable {
        /// Weight of the newest week's visit in a weekly slot (0...1).
        public var weeklyWeight = 0.35
        /// Weight of the newest day's visit in a daily slot (0...1).
        public var dailyWeight = 0.35
        /// Per-minute weight of the newest residual in the trend (0...1).
        public var trendWeight = 0.15
        /// How fast the trend fades into the future (e-folding time, minutes).
        public var trendDecayMinutes = 90.0
        /// Smallest sigma reported, as a fraction of the profile's mean (no band is ever zero-width).
        public var sigmaFloorFraction = 0.02
        /// The short season ("day") in minutes (ticks); the long one ("week") is 7 of them. 1440 by
        /// default; a live manager on compressed time may learn a pattern of a few dozen ticks.
        /// 4...1440, and a whole number of profile slots (see `slotMinutes`).
        public var seasonMinutes = ScheduleLimits.minutesPerDay {
            didSet { precondition(Self.seasonRange.contains(seasonMinutes) && seasonMinutes % slotMinutes == 0,
                                  "season of \(seasonMinutes) minutes") }
        }
        /// Profile slot length: 15 minutes for a 1440-minute season (96 slots), 1 minute for a season
        /// shorter than 192 minutes, else the season / 96 (rounded down).
        public var slotMinutes: Int { max(1, seasonMinutes / 96) }
        public static let seasonRange = 4...ScheduleLimits.minutesPerDay

        public init() {}
        /// The default parameters with a season of `seasonMinutes` (4...1440, a multiple of its slot length).
        public init(seasonMinutes: Int) { self.seasonMinutes = seasonMinutes }
    }

    private struct Slot: Sendable {
        var mean = 0.0
        var variance = 0.0
        var visits = 0
        // the visit in progress
        var sum = 0.0
        var sumSquares = 0.0
        var samples = 0
    }

    public let parameters: Parameters
    private let slotMinutes: Int
    private let dayMinutes: Int
    private var weekly: [Slot]
    private var daily: [Slot]
    private var overallMean = 0.0
    private var overallSamples = 0
    private var trend = 0.0
    /// Exponentially weighted mean square of recent residuals: how wrong the profile has lately been.
    private var residualVariance = 0.0
    private var openWeekly = -1
    private var openDaily = -1
    public private(set) var lastMinute = Int.min
    public var samples: Int { overallSamples }

    public init(parameters: Parameters = .init()) {
        self.parameters = parameters
        precondition(Parameters.seasonRange.contains(parameters.seasonMinutes)
                     && parameters.seasonMinutes % parameters.slotMinutes == 0, "season of \(parameters.seasonMinutes) minutes")
        slotMinutes = parameters.slotMinutes
        dayMinutes = parameters.seasonMinutes
        weekly = Array(repeating: Slot(), count: 7 * parameters.seasonMinutes / parameters.slotMinutes)
        daily = Array(repeating: Slot(), count: parameters.seasonMinutes / parameters.slotMinutes)
    }

    /// Takes the sample of `minute`. Minutes must increase; an older or repeated one is ignored (false).
    @discardableResult
    public mutating func observe(minute: Int, value: Double) -> Bool {
        precondition(value.isFinite, "forecaster sample \(value)")
        guard minute > lastMinute else { return false }
        if overallSamples > 0 {
            let residual = value - profile(at: minute)
            trend += parameters.trendWeight * (residual - trend)
            residualVariance += parameters.trendWeight * (residual * residual - residualVariance)
        }
        overallSamples += 1
        overallMean += (value - overallMean) / Double(min(overallSamples, 10_080))
        let w = weeklySlot(minute)
        let d = dailySlot(minute)
        if w != openWeekly { if openWeekly >= 0 { close(&weekly[openWeekly], weight: parameters.weeklyWeight) }; openWeekly = w }
        if d != openDaily { if openDaily >= 0 { close(&daily[openDaily], weight: parameters.dailyWeight) }; openDaily = d }
        weekly[w].sum += value; weekly[w].sumSquares += value * value; weekly[w].samples += 1
        daily[d].sum += value; daily[d].sumSquares += value * value; daily[d].samples += 1
        lastMinute = minute
        return true
    }

    /// The forecast for `minute`, made now (after the last sample). Before any sample: mean 0, sigma 0.
    public func forecast(at minute: Int) -> ForecastPoint {
        guard overallSamples > 0 else { return ForecastPoint(mean: 0, sigma: 0) }
        let ahead = Double(max(0, minute - lastMinute))
        let base = profile(at: minute)
        let mean = base + trend * exp(-ahead / parameters.trendDecayMinutes)
        let (variance, known) = spread(at: minute)
        // Near now the trend carries the recent residuals; as it fades, the profile's recent misfit comes back
        // into the band. A profile from days, not weeks, is less sure.
        let trendShare = 1 - exp(-ahead / parameters.trendDecayMinutes)
        let sigma = (variance + residualVariance * trendShare).squareRoot() * (known ? 1 : 1.5)
        return ForecastPoint(mean: mean, sigma: max(sigma, parameters.sigmaFloorFraction * abs(base)))
    }

    /// The profile's value at `minute` without the trend: its slot's mean.
    public func profile(at minute: Int) -> Double { slotValue(weeklySlot(minute)) }

    private func slotValue(_ index: Int) -> Double {
        let count = weekly.count
        let w = ((index % count) + count) % count
        if weekly[w].visits > 0 { return weekly[w].mean }
        let d = w % daily.count
        if daily[d].visits > 0 { return daily[d].mean }
        if weekly[w].samples > 0 { return weekly[w].sum / Double(weekly[w].samples) }
        return overallMean
    }

    private func spread(at minute: Int) -> (variance: Double, weekKnown: Bool) {
        let w = weeklySlot(minute)
        if weekly[w].visits > 0 { return (weekly[w].variance, true) }
        let d = dailySlot(minute)
        if daily[d].visits > 0 { return (daily[d].variance, false) }
        return (overallMean * overallMean * 0.25, false)
    }

    private func close(_ slot: inout Slot, weight: Double) {
        guard slot.samples > 0 else { return }
        let n = Double(slot.samples)
        let visitMean = slot.sum / n
        let within = max(0, slot.sumSquares / n - visitMean * visitMean)
        if slot.visits == 0 {
            slot.mean = visitMean
            slot.variance = within
        } else {
            let shift = visitMean - slot.mean
            slot.mean += weight * shift
            slot.variance += weight * (within + shift * shift - slot.variance)
        }
        slot.visits += 1
        slot.sum = 0; slot.sumSquares = 0; slot.samples = 0
    }

    func minuteOfWeek(_ minute: Int) -> Int {
        let week = 7 * dayMinutes
        return ((minute % week) + week) % week
    }
    func weeklySlot(_ minute: Int) -> Int { minuteOfWeek(minute) / slotMinutes }
    func dailySlot(_ minute: Int) -> Int { (minuteOfWeek(minute) % dayMinutes) / slotMinutes }
}

/// Forecast error of one series at one lead time, as MAPE: each forecast made `leadMinutes` ahead is
/// compared with the sample that later arrives for its minute. The mean covers about the last
/// `memory` scores (a plain mean until then, exponentially weighted after), so the learning phase
/// fades out. Fixed memory (one slot per minute of lead).
public struct ForecastErrorTracker: Sendable, Equatable {
    public let leadMinutes: Int
    /// Samples smaller than this are compared against it instead (no division by ~0 at idle).
    public let floor: Double
    private var pending: [Double]
    private var pendingMinute: [Int]
    public let memory: Int
    public private(set) var count = 0
    private var meanAbsolutePercent = 0.0

    public init(leadMinutes: Int, floor: Double, memory: Int = ScheduleLimits.minutesPerDay) {
        precondition(leadMinutes > 0 && leadMinutes <= ScheduleLimits.horizonMinutesMax, "lead \(leadMinutes)")
        precondition(floor > 0 && memory > 0, "MAPE floor \(floor), memory \(memory)")
        self.leadMinutes = leadMinutes
        self.memory = memory
        self.floor = floor
        pending = Array(repeating: 0, count: leadMinutes + 1)
        pendingMinute = Array(repeating: Int.min, count: leadMinutes + 1)
    }

    /// Keeps the forecast made for `minute` (normally now + lead).
    public mutating func expect(minute: Int, forecast: Double) {
        let slot = ((minute % pending.count) + pending.count) % pending.count
        pending[slot] = forecast
        pendingMinute[slot] = minute
    }

    /// Scores the forecast kept for `minute`, if any, against what happened.
    public mutating func observe(minute: Int, actual: Double) {
        let slot = ((minute % pending.count) + pending.count) % pending.count
        guard pendingMinute[slot] == minute else { return }
        count += 1
        let score = abs(actual - pending[slot]) / max(abs(actual), floor)
        meanAbsolutePercent += (score - meanAbsolutePercent) / Double(min(count, memory))
        pendingMinute[slot] = Int.min
    }

    /// Mean absolute percentage error over about the last `memory` scores, 0...; nil before the first.
    public var mape: Double? { count == 0 ? nil : meanAbsolutePercent }
}

/// The standard normal's quantile function (Acklam's rational approximation, relative error < 1.2e-9).
public enum NormalQuantile {
    public static func z(_ p: Double) -> Double {
        precondition(p > 0 && p < 1, "probability \(p) outside (0, 1)")
        let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
        let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                 6.680131188771972e+01, -1.328068155288572e+01]
        let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                 -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
        let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
        let low = 0.02425
        if p < low {
            let q = (-2 * log(p)).squareRoot()
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
                / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        }
        if p > 1 - low { return -z(1 - p) }
        let q = p - 0.5
        let r = q * q
        return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    }
}
