// Path: Tests/SluiceWANTests/ScheduleTests.swift — the schedule's arithmetic with made-up arrival
// times: delay, jitter without reordering, rate (exact over long runs), queue limit, loss.
import Testing

@testable import SluiceWAN

@Suite struct ScheduleTests {
    private func settings(delay: UInt64 = 0, jitter: UInt64 = 0, rate: UInt64 = 0, loss: Double = 0,
                          queue: Int = 1 << 20) -> WANDirectionSettings {
        WANDirectionSettings(delayNs: delay, jitterNs: jitter, rateBitsPerSecond: rate, loss: loss, queueBytes: queue)
    }

    private func departure(_ admission: WANAdmission) -> UInt64? {
        if case .depart(let ns) = admission { return ns }
        return nil
    }

    @Test func delayOnlyShiftsEveryFrame() {
        var schedule = WANSchedule(settings: settings(delay: 20_000_000), seed: 1)
        for arrival: UInt64 in [1_000, 5_000_000, 5_000_001, 90_000_000] {
            #expect(schedule.admit(arrivalNs: arrival, bytes: 100, heldBytes: 0) == .depart(atNs: arrival + 20_000_000))
        }
    }

    @Test func jitterStaysInItsBandAndNeverReorders() throws {
        let delay: UInt64 = 10_000_000
        let jitter: UInt64 = 2_000_000
        var schedule = WANSchedule(settings: settings(delay: delay, jitter: jitter), seed: 42)
        var previous: UInt64 = 0
        var early = 0
        var late = 0
        var shifted = 0
        for index in 0..<10_000 {
            // Arrivals 1 ms apart: closer than the jitter band, so without the max() frames would overtake.
            let arrival = UInt64(index) * 1_000_000 + 1_000_000
            let depart = try #require(departure(schedule.admit(arrivalNs: arrival, bytes: 64, heldBytes: 0)))
            #expect(depart >= previous)
            #expect(depart >= arrival + delay - jitter)
            #expect(depart <= arrival + delay + jitter)
            if depart < arrival + delay { early += 1 }
            if depart > arrival + delay { late += 1 }
            if depart == previous { shifted += 1 }
            previous = depart
        }
        // Both halves of the band are used, and some frames had to wait for the one before.
        #expect(early > 2_000 && late > 4_000 && shifted > 1_000)
    }

    @Test func jitterWiderThanTheDelayClampsAtZero() throws {
        var schedule = WANSchedule(settings: settings(delay: 1_000, jitter: 1_000_000), seed: 7)
        var zeroDelay = 0
        for index in 0..<1_000 {
            let arrival = UInt64(index) * 10_000_000
            let depart = try #require(departure(schedule.admit(arrivalNs: arrival, bytes: 64, heldBytes: 0)))
            #expect(depart >= arrival && depart <= arrival + 1_001_000)
            if depart == arrival { zeroDelay += 1 }
        }
        #expect(zeroDelay > 400)  // about half the samples fall below -delay
    }

    @Test func rateSpacesBackToBackFrames() {
        // 8 Mbit/s: 1000 bytes take exactly 1 ms.
        var schedule = WANSchedule(settings: settings(delay: 5_000_000, rate: 8_000_000), seed: 1)
        for index in 0..<5 {
            let expected = 5_000_000 + UInt64(index + 1) * 1_000_000
            #expect(schedule.admit(arrivalNs: 0, bytes: 1_000, heldBytes: 0) == .depart(atNs: expected))
        }
        // A frame arriving after the link went idle starts at its own exit.
        #expect(schedule.admit(arrivalNs: 100_000_000, bytes: 500, heldBytes: 0) == .depart(atNs: 105_500_000))
    }

    @Test(arguments: [UInt64(7_000_003), 20_000_000, 99_999_989, 1_000_000_007])
    func longRunsKeepTheExactRate(rate: UInt64) throws {
        var schedule = WANSchedule(settings: settings(rate: rate, queue: 1 << 30), seed: 1)
        let frames = 20_000
        var last: UInt64 = 0
        for _ in 0..<frames {
            last = try #require(departure(schedule.admit(arrivalNs: 0, bytes: 1_514, heldBytes: 0)))
        }
        let bitNs = UInt64(frames) * 1_514 * 8 * 1_000_000_000
        #expect(last == bitNs / rate)  // the carried fractions add up: no drift at all
    }

    @Test func queueLimitTailDropsWhatWouldExceedIt() {
        // 8 Mbit/s, 1000-byte frames (1 ms each), queue 10 000 bytes: a burst of 25 at once keeps 10.
        var schedule = WANSchedule(settings: settings(delay: 20_000_000, rate: 8_000_000, queue: 10_000), seed: 1)
        var admitted = 0
        var dropped = 0
        for _ in 0..<25 {
            switch schedule.admit(arrivalNs: 0, bytes: 1_000, heldBytes: 0) {
            case .depart: admitted += 1
            case .drop(let reason):
                #expect(reason == .queueFull)
                dropped += 1
            }
        }
        #expect(admitted == 10 && dropped == 15)
        #expect(schedule.lastQueueBytes == 10_000)
        // 2.5 ms later two and a half frames have left: two more fit (a partly sent frame counts by
        // what is left of it, rounded up to a byte).
        #expect(departure(schedule.admit(arrivalNs: 2_500_000, bytes: 1_000, heldBytes: 0)) != nil)
        #expect(departure(schedule.admit(arrivalNs: 2_500_000, bytes: 1_000, heldBytes: 0)) != nil)
        #expect(schedule.admit(arrivalNs: 2_500_000, bytes: 1_000, heldBytes: 0) == .drop(.queueFull))
        #expect(schedule.backlogBytes(atNs: 22_500_000) == 9_500)
    }

    @Test func theDelayLineIsNotTheQueue() {
        // 100 ms of delay at 8 Mbit/s: 100 frames in flight, yet each exits to an empty queue.
        var schedule = WANSchedule(settings: settings(delay: 100_000_000, rate: 8_000_000, queue: 2_048), seed: 1)
        for index in 0..<100 {
            let arrival = UInt64(index) * 1_000_000
            #expect(schedule.admit(arrivalNs: arrival, bytes: 1_000, heldBytes: 0) == .depart(atNs: arrival + 101_000_000))
        }
    }

    @Test func withoutARateTheQueueBoundsWhatIsHeld() {
        var schedule = WANSchedule(settings: settings(delay: 50_000_000, queue: 4_096), seed: 1)
        #expect(schedule.admit(arrivalNs: 0, bytes: 1_500, heldBytes: 2_500) == .depart(atNs: 50_000_000))
        #expect(schedule.admit(arrivalNs: 0, bytes: 1_500, heldBytes: 4_000) == .drop(.queueFull))
        #expect(schedule.lastQueueBytes == 4_000)
    }

    @Test func aFrameTheStoreCannotTakeIsTakenBack() {
        var schedule = WANSchedule(settings: settings(delay: 1_000_000, rate: 8_000_000), seed: 1)
        #expect(schedule.admit(arrivalNs: 0, bytes: 1_000, heldBytes: 0) == .depart(atNs: 2_000_000))
        #expect(schedule.admit(arrivalNs: 0, bytes: 1_000, heldBytes: 0) == .depart(atNs: 3_000_000))
        schedule.revertLastAdmission()  // as if the second frame had been dropped
        #expect(schedule.lastQueueBytes == 1_000)
        #expect(schedule.admit(arrivalNs: 0, bytes: 500, heldBytes: 0) == .depart(atNs: 2_500_000))
    }

    @Test func takingBackWithoutAnAdmissionTraps() async {
        await #expect(processExitsWith: .failure) {
            var schedule = WANSchedule(settings: WANDirectionSettings(delayNs: 1), seed: 1)
            schedule.revertLastAdmission()
        }
    }

    @Test func lossDropsAboutTheSetShareAndIsSeeded() {
        func losses(_ loss: Double, seed: UInt64, count: Int = 100_000) -> [Int] {
            var schedule = WANSchedule(settings: settings(loss: loss), seed: seed)
            return (0..<count).filter { schedule.admit(arrivalNs: UInt64($0), bytes: 64, heldBytes: 0) == .drop(.emulatedLoss) }
        }
        let onePercent = losses(0.01, seed: 9)
        // Binomial(100 000, 0.01): sd ~31; +-5 sd.
        #expect(onePercent.count > 845 && onePercent.count < 1_155)
        #expect(losses(0.01, seed: 9) == onePercent)
        #expect(losses(0.01, seed: 10) != onePercent)
        #expect(losses(0, seed: 1).isEmpty)
        #expect(losses(1, seed: 1, count: 1_000).count == 1_000)
        let tenth = losses(0.001, seed: 3)
        #expect(tenth.count > 50 && tenth.count < 150)
    }

    @Test func lostFramesTakeNoQueue() {
        var schedule = WANSchedule(settings: settings(rate: 8_000_000, loss: 0.5, queue: 2_048), seed: 5)
        var admitted = 0
        for _ in 0..<1_000 {
            if case .depart = schedule.admit(arrivalNs: 0, bytes: 1_000, heldBytes: 0) { admitted += 1 }
        }
        #expect(admitted == 2)  // only the queue bounds what got through; the lost ones did not count
    }

    @Test func generatorIsUniformEnough() {
        var random = WANRandom(seed: 0)
        var buckets = [Int](repeating: 0, count: 10)
        for _ in 0..<100_000 { buckets[Int(random.next(below: 10))] += 1 }
        #expect(buckets.allSatisfy { $0 > 9_500 && $0 < 10_500 })
    }
}
