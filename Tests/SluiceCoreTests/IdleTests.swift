import Testing

@testable import SluiceCore

@Suite struct IdleTests {
    @Test func shortGapsAreSpunThrough() {
        var predictor = IdlePredictor()
        var now: UInt64 = 1_000_000
        for _ in 0..<64 {
            predictor.recordArrival(nowNs: now + 1_000, idleSinceNs: now)
            now += 20_000
        }
        #expect(predictor.gapNsAverage < 1_200)
        #expect(predictor.utilisation > 0.9)
        #expect(predictor.spinBudgetNs >= 1_000, "a busy worker spins through a 1 µs gap rather than sleep")
    }

    @Test func lightLoadSleepsEvenThroughShortGaps() {
        var predictor = IdlePredictor()
        var now: UInt64 = 1_000_000
        for _ in 0..<64 {  // busy 0.5 µs, idle 4.5 µs: 10% load
            predictor.recordArrival(nowNs: now + 4_500, idleSinceNs: now)
            now += 5_000
        }
        #expect(predictor.utilisation < 0.2)
        #expect(predictor.spinBudgetNs == predictor.configuration.spinNsMin)
    }

    @Test func longRegularGapsSleepUntilJustBeforeTheNextArrival() {
        var predictor = IdlePredictor()
        var now: UInt64 = 1_000_000
        for _ in 0..<64 {
            predictor.recordArrival(nowNs: now + 900_000, idleSinceNs: now)
            now += 1_000_000
        }
        #expect(predictor.spinBudgetNs == predictor.configuration.spinNsMin)
        let sleep = predictor.sleepNs(nowNs: now + 10_000, idleSinceNs: now, fallbackNs: 1_000_000_000)
        let expected = 900_000 - predictor.configuration.wakeMarginNs - 10_000
        #expect(sleep > expected - 20_000 && sleep < expected + 20_000)
        #expect(predictor.sleepNs(nowNs: now + 950_000, idleSinceNs: now, fallbackNs: 7) == 7, "late: wait")
    }

    @Test func irregularGapsFallBack() {
        var predictor = IdlePredictor()
        var now: UInt64 = 1_000_000
        for round in 0..<64 {
            predictor.recordArrival(nowNs: now + (round % 2 == 0 ? 50_000 : 2_000_000), idleSinceNs: now)
            now += 3_000_000
        }
        #expect(predictor.sleepNs(nowNs: now, idleSinceNs: now, fallbackNs: 42) == 42)
    }

    @Test func waitModeParsesCLISpellings() {
        #expect(WaitMode(argument: "busy-poll") == .busyPoll)
        #expect(WaitMode(argument: "busyPoll") == .busyPoll)
        #expect(WaitMode(argument: "adaptive") == .adaptive)
        #expect(WaitMode(argument: "interrupt") == .interrupt)
        #expect(WaitMode(argument: "nap") == nil)
    }

    @Test func histogramPercentilesAreWithinItsResolution() {
        let histogram = LatencyHistogram()
        let recorder = histogram.recorder
        for value in 1...10_000 { recorder.record(UInt64(value) * 100) }
        #expect(histogram.count == 10_000)
        let p50 = Double(histogram.value(atPercentile: 50))
        let p99 = Double(histogram.value(atPercentile: 99))
        #expect(abs(p50 - 500_000) / 500_000 < 0.04)
        #expect(abs(p99 - 990_000) / 990_000 < 0.04)
        #expect(histogram.value(atPercentile: 0) <= 100)
        histogram.reset()
        #expect(histogram.value(atPercentile: 99) == 0)
    }

    @Test func generatorPacesFromTheFirstItem() {
        var generator = GeneratorSource(ratePerSecond: 1_000_000, totalCount: 1_000, burstCount: 10)
        let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { buffer.deallocate() }
        #expect(generator.produce(into: buffer) == 10, "one burst is due at once")
        let hint = generator.sleepHintNs(nowNs: Clock.monotonicNs())
        #expect(hint != nil && hint! <= 10_000, "the next burst is due within 10 µs")
        let start = Clock.monotonicNs()
        var produced = 10
        while !generator.isExhausted { produced += generator.produce(into: buffer) }
        let elapsed = Clock.monotonicNs() - start
        #expect(produced == 1_000)
        #expect(elapsed >= 900_000, "1000 items at 1 M/s take about 1 ms")
    }
}
