// Path: Sources/SluiceScheduling/ResourceMonitor.swift — per host, the resources a move needs over
// time (bounded series), their forecasts and the forecasts' error: what the scheduler plans with.

/// Per host: production traffic on the link (bytes/s), free memory and migration slots in use, one
/// sample per minute, each kept as a bounded `TimeSeries`; production also feeds a `SeasonalForecaster`
/// and a `ForecastErrorTracker` (MAPE of the forecast made `errorLeadMinutes` ahead). The samples come
/// from whoever can see them: the dataplane's port counters or `/proc/net/dev` (LinkMonitor in
/// SluiceMigration), the host's memory, the executor's running moves. Value type, one owner.
public struct ResourceMonitor: ProductionOutlook, Sendable {
    public let hosts: [HostResources]
    public let errorLeadMinutes: Int
    public private(set) var production: [TimeSeries]
    public private(set) var freeMemory: [TimeSeries]
    public private(set) var slotsInUse: [TimeSeries]
    private var forecasters: [SeasonalForecaster]
    private var errors: [ForecastErrorTracker]

    /// `seriesCapacity` samples are kept per series (a week by default; the simulator keeps fewer).
    public init(hosts: [HostResources], seriesCapacity: Int = ScheduleLimits.seriesSamplesMax, errorLeadMinutes: Int = 60,
                forecaster: SeasonalForecaster.Parameters = .init()) {
        precondition(!hosts.isEmpty && hosts.count <= ScheduleLimits.hostCountMax, "hosts \(hosts.count)")
        self.hosts = hosts
        self.errorLeadMinutes = errorLeadMinutes
        production = Array(repeating: TimeSeries(capacity: seriesCapacity), count: hosts.count)
        freeMemory = production
        slotsInUse = production
        forecasters = Array(repeating: SeasonalForecaster(parameters: forecaster), count: hosts.count)
        errors = hosts.map { ForecastErrorTracker(leadMinutes: errorLeadMinutes, floor: 0.05 * $0.linkBytesPerSecond) }
    }

    /// Takes one minute's samples of `host`. Minutes must increase per host; an older one is ignored (false).
    @discardableResult
    public mutating func record(host: Int, minute: Int, productionBytesPerSecond: Double, freeMemoryBytes: Double,
                                slotsInUse slots: Int) -> Bool {
        precondition(host >= 0 && host < hosts.count, "host \(host)")
        let value = min(max(0, productionBytesPerSecond), 2 * hosts[host].linkBytesPerSecond)
        guard forecasters[host].observe(minute: minute, value: value) else { return false }
        errors[host].observe(minute: minute, actual: value)
        errors[host].expect(minute: minute + errorLeadMinutes, forecast: forecasters[host].forecast(at: minute + errorLeadMinutes).mean)
        production[host].append(minute: minute, value: value)
        freeMemory[host].append(minute: minute, value: max(0, freeMemoryBytes))
        slotsInUse[host].append(minute: minute, value: Double(max(0, slots)))
        return true
    }

    public func plannedProduction(host: Int, minute: Int, confidence: Double) -> Double {
        let point = forecasters[host].forecast(at: minute)
        return min(hosts[host].linkBytesPerSecond, max(0, point.upper(confidence: confidence)))
    }

    /// The production forecast for `host` at `minute` (mean and sigma).
    public func forecast(host: Int, minute: Int) -> ForecastPoint { forecasters[host].forecast(at: minute) }

    /// MAPE of `host`'s production forecast `errorLeadMinutes` ahead; nil before the first score.
    public func forecastError(host: Int) -> Double? { errors[host].mape }
}
