import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import SluiceScheduling

@Suite struct ForecasterTests {
    /// A daily pattern with noise: after eight days the forecast an hour ahead is within 10 % (MAPE), and
    /// the 90 % band holds between 80 and 97 % of what happens.
    @Test func learnsADailyPatternWithAnHonestBand() {
        var random = SplitMix64(seed: 5)
        var forecaster = SeasonalForecaster()
        var tracker = ForecastErrorTracker(leadMinutes: 60, floor: 10)
        var covered = 0, scored = 0
        func truth(_ minute: Int) -> Double {
            let day = Double(minute % ScheduleLimits.minutesPerDay) / Double(ScheduleLimits.minutesPerDay)
            return 500 + 300 * sin(2 * Double.pi * day)
        }
        for minute in 0..<(10 * ScheduleLimits.minutesPerDay) {
            let value = truth(minute) + 20 * random.normal()
            if minute >= 8 * ScheduleLimits.minutesPerDay {
                tracker.observe(minute: minute, actual: value)
            }
            if minute >= 8 * ScheduleLimits.minutesPerDay, minute % 7 == 0 {
                let point = forecaster.forecast(at: minute)
                scored += 1
                if value <= point.upper(confidence: 0.9) { covered += 1 }
            }
            forecaster.observe(minute: minute, value: value)
            tracker.expect(minute: minute + 60, forecast: forecaster.forecast(at: minute + 60).mean)
        }
        let mape = tracker.mape ?? 1
        let coverage = Double(covered) / Double(scored)
        print("forecaster: MAPE \(mape), 90 % upper band covers \(coverage)")
        #expect(mape < 0.1)
        #expect(coverage > 0.8 && coverage < 0.97)
    }

    @Test func theTrendFollowsAStepAndFades() {
        var forecaster = SeasonalForecaster()
        for minute in 0..<(2 * ScheduleLimits.minutesPerDay) { forecaster.observe(minute: minute, value: 100) }
        let start = 2 * ScheduleLimits.minutesPerDay
        for minute in start..<(start + 30) { forecaster.observe(minute: minute, value: 160) }
        let soon = forecaster.forecast(at: start + 31).mean
        let later = forecaster.forecast(at: start + 30 + 600).mean
        #expect(soon > 150, "soon \(soon)")
        #expect(later < 105, "ten hours on \(later)")
    }

    @Test func refusesOldMinutesAndStartsEmpty() {
        var forecaster = SeasonalForecaster()
        #expect(forecaster.forecast(at: 10) == ForecastPoint(mean: 0, sigma: 0))
        let first = forecaster.observe(minute: 5, value: 1)
        let repeated = forecaster.observe(minute: 5, value: 2)
        let older = forecaster.observe(minute: 4, value: 2)
        #expect(first && !repeated && !older)
        #expect(forecaster.samples == 1)
    }

    @Test func normalQuantiles() {
        #expect(abs(NormalQuantile.z(0.5)) < 1e-9)
        #expect(abs(NormalQuantile.z(0.9) - 1.281551566) < 1e-6)
        #expect(abs(NormalQuantile.z(0.975) - 1.959963985) < 1e-6)
        #expect(abs(NormalQuantile.z(0.01) + 2.326347874) < 1e-6)
    }

    @Test func timeSeriesIsBoundedAndFillsGaps() {
        var series = TimeSeries(capacity: 4)
        let appended = series.append(minute: 10, value: 1) && series.append(minute: 13, value: 4)  // 11 and 12 take the last value
        #expect(appended)
        #expect(series.value(at: 11) == 1)
        #expect(series.value(at: 13) == 4)
        let backwards = series.append(minute: 12, value: 9)
        let next = series.append(minute: 14, value: 5)
        #expect(!backwards && next)
        #expect(series.count == 4)
        #expect(series.value(at: 10) == nil)  // the oldest went
        #expect(series.mean(lastMinutes: 2) == 4.5)
    }
}

@Suite struct ResourceMonitorTests {
    @Test func keepsBoundedSeriesAndPlansOnTheBand() {
        let hosts = [HostResources(linkBytesPerSecond: 1000, migrationSlots: 2, memoryBytes: 1e9)]
        var monitor = ResourceMonitor(hosts: hosts, seriesCapacity: 30)
        let days = 4
        for minute in 0..<(days * ScheduleLimits.minutesPerDay) {
            let busy = minute % ScheduleLimits.minutesPerDay < 600
            let recorded = monitor.record(host: 0, minute: minute, productionBytesPerSecond: busy ? 900 : 100,
                                          freeMemoryBytes: 5e8, slotsInUse: 1)
            #expect(recorded)
        }
        let stale = monitor.record(host: 0, minute: 10, productionBytesPerSecond: 0, freeMemoryBytes: 0, slotsInUse: 0)
        #expect(!stale)
        let tomorrow = days * ScheduleLimits.minutesPerDay
        #expect(monitor.production[0].count == 30 && monitor.freeMemory[0].value(at: tomorrow - 1) == 5e8)
        // Busy mornings: planned production near 900 in the morning, near 100 in the evening; never above the link.
        #expect(monitor.plannedProduction(host: 0, minute: tomorrow + 300, confidence: 0.9) > 850)
        #expect(monitor.plannedProduction(host: 0, minute: tomorrow + 1200, confidence: 0.9) < 200)
        #expect(monitor.plannedProduction(host: 0, minute: tomorrow + 300, confidence: 0.999) <= 1000)
        // The first day's forecasts (nothing learnt yet) fade out of the error over the next days.
        #expect((monitor.forecastError(host: 0) ?? 1) < 0.2)
    }

    /// A season of 20 ticks (slots of one tick): busy for ticks 0-7 of each season. After two seasons the
    /// third's busy ticks are forecast busy and its quiet ticks quiet, from the daily profile (wider band).
    @Test func learnsAShortSeasonInTicks() {
        let parameters = SeasonalForecaster.Parameters(seasonMinutes: 20)
        #expect(parameters.slotMinutes == 1)
        #expect(SeasonalForecaster.Parameters(seasonMinutes: 480).slotMinutes == 5)
        #expect(SeasonalForecaster.Parameters().slotMinutes == 15)
        var forecaster = SeasonalForecaster(parameters: parameters)
        var random = SplitMix64(seed: 9)
        let start = 1_000_000  // any tick: seasons count from tick 0
        for tick in start..<(start + 40) {
            let busy = tick % 20 < 8
            forecaster.observe(minute: tick, value: (busy ? 1000 : 50) * (0.97 + 0.06 * random.unit()))
        }
        for tick in (start + 40)..<(start + 60) {
            let point = forecaster.forecast(at: tick)
            if tick % 20 < 8 { #expect(point.mean > 900, "tick \(tick % 20): \(point)") } else if tick % 20 > 8 {
                #expect(point.upper(confidence: 0.9) < 200, "tick \(tick % 20): \(point)")
            }
        }
    }
}
