import Glibc
import Testing

@testable import SluiceCore

@Suite(.serialized) struct PipelineTests {
    @Test(arguments: WaitMode.allCases, [false, true])
    func threeStagesDeliverEveryItemInOrder(mode: WaitMode, shareOneWorker: Bool) throws {
        try withRuntime(mode) { runtime, cores in
            let tracker = SinkTracker()
            let total: UInt64 = 500_000
            let pipeline = try makeCountingPipeline(
                "order", source: GeneratorSource(ratePerSecond: 0, totalCount: total, payload: .sequence),
                tracker: tracker, ringCapacity: 256)
            let last = shareOneWorker ? 0 : cores.count - 1
            try runtime.launch(pipeline, placement: [0, last, last])
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == total)
            #expect(tracker.outOfOrder == 0)
            #expect(pipeline.delivered == total)
            #expect(pipeline.entered.load(ordering: .relaxed) == total)
            #expect(pipeline.queued == 0)
            let wakeups = pipeline.snapshot().reduce(0) { $0 + $1.wakeups }
            if mode == .busyPoll { #expect(wakeups == 0, "nobody sleeps, so producers make no system call") }
        }
    }

    @Test func filteredItemsCountAndTheStageSleepsAfterwards() throws {
        try withRuntime(.adaptive) { runtime, cores in
            let tracker = SinkTracker()
            let total: UInt64 = 100_000
            let pipeline = try makeCountingPipeline(
                "filter", source: GeneratorSource(ratePerSecond: 0, totalCount: total, payload: .sequence),
                relays: [EvenFilter()], tracker: tracker, stride: 2)
            try runtime.launch(pipeline, placement: [0, cores.count - 1, cores.count - 1])
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == total / 2)
            #expect(tracker.outOfOrder == 0)
            #expect(pipeline.filtered == total / 2)
            // Nothing is in flight any more, so idle prediction must let the sink's worker sleep.
            #expect(pipeline.stages[2].isInFlight() == false)
            let sink = runtime.workers[cores.count - 1].counters
            let sleepsBefore = sink.sleeps.load(ordering: .relaxed)
            let deadline = Clock.monotonicNs() + 5_000_000_000
            while sink.sleeps.load(ordering: .relaxed) == sleepsBefore, Clock.monotonicNs() < deadline {
                usleep(1_000)
            }
            #expect(sink.sleeps.load(ordering: .relaxed) > sleepsBefore, "an idle adaptive worker must sleep")
        }
    }

    /// Random pauses make workers sleep and wake thousands of times; every item must still arrive,
    /// in order, and no wake-up may be lost (a lost one shows up as a safety-net timeout with input).
    @Test(arguments: [WaitMode.interrupt, .adaptive])
    func noLostWakeupsUnderRandomPauses(mode: WaitMode) throws {
        try withRuntime(mode) { runtime, cores in
            let tracker = SinkTracker()
            let total: UInt64 = 200_000
            let pipeline = try makeCountingPipeline(
                "pauses", source: PausingSource(total: total, maxPauseNs: 60_000), tracker: tracker, ringCapacity: 64)
            let last = cores.count - 1
            try runtime.launch(pipeline, placement: [0, last, last])
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            runtime.stop()  // final counters are published at stop
            #expect(tracker.received == total)
            #expect(tracker.outOfOrder == 0)
            let counters = runtime.workers.map { $0.counters.snapshot() }
            #expect(counters.allSatisfy { $0.lostWakeups == 0 })
            #expect(counters[last].sleeps > 100, "the consumer's worker must actually have slept")
            #expect(pipeline.stages[0].counters.wakeups.load(ordering: .relaxed) > 0, "and been woken by its producer")
        }
    }

    /// Moves the middle and last stages back and forth between workers while items flow, in every
    /// wait mode (interrupt: the consumer sleeps while its waiter changes hands).
    @Test(.enabled(if: twoCPUsOrCI, "needs two CPUs (CI=true: fails without them) to move stages between"),
          arguments: WaitMode.allCases)
    func movingStagesUnderLoadLosesAndReordersNothing(mode: WaitMode) throws {
        guard requireTwoCPUs() else { return }
        try withRuntime(mode) { runtime, cores in
            let tracker = SinkTracker()
            let total: UInt64 = 2_000_000
            let pipeline = try makeCountingPipeline(
                "move", source: GeneratorSource(ratePerSecond: 20_000_000, totalCount: total, payload: .sequence),
                relays: [PassThrough(), PassThrough()], tracker: tracker, ringCapacity: 128)
            try runtime.launch(pipeline, placement: [0, 0, 0, 0])
            var moves = 0
            while !pipeline.isDrained, moves < 200 {
                let stage = pipeline.stages[1 + moves % 3]
                let target = (stage.owner.load(ordering: .relaxed) + 1) % cores.count
                try runtime.move(stage, toWorker: target)
                #expect(stage.owner.load(ordering: .relaxed) == target)
                moves += 1
            }
            #expect(moves > 10, "moves must happen while items flow")
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == total)
            #expect(tracker.outOfOrder == 0)
        }
    }

    /// A source that ran out on a full burst and then found its ring full has not marked the
    /// pipeline exhausted in a turn; its worker asking how long to sleep marks it, so a drain does
    /// not wait for the sleep's timeout.
    @Test func anExhaustedSourceAskedForASleepMarksThePipelineExhausted() throws {
        let pipeline = try makeCountingPipeline(
            "exhausted", source: GeneratorSource(ratePerSecond: 0, totalCount: 0), tracker: SinkTracker())
        let before = pipeline.sourceExhausted.load(ordering: .acquiring)
        #expect(!before)
        #expect(pipeline.stages[0].sleepHintNs(nowNs: 0) == UInt64.max)
        let after = pipeline.sourceExhausted.load(ordering: .acquiring)
        #expect(after)
    }

    @Test func waitModeSwitchesWhileRunning() throws {
        try withRuntime(.busyPoll) { runtime, cores in
            let tracker = SinkTracker()
            let total: UInt64 = 300_000
            let pipeline = try makeCountingPipeline(
                "switch", source: GeneratorSource(ratePerSecond: 1_000_000, totalCount: total, payload: .sequence),
                tracker: tracker)
            try runtime.launch(pipeline, placement: [0, cores.count - 1, cores.count - 1])
            let consumer = runtime.workers[cores.count - 1].counters
            for mode in [WaitMode.interrupt, .adaptive, .busyPoll, .interrupt] {
                runtime.setWaitMode(mode)
                let sleepsBefore = consumer.sleeps.load(ordering: .relaxed)
                usleep(50_000)
                let slept = consumer.sleeps.load(ordering: .relaxed) > sleepsBefore
                // 1 M items/s in bursts of 32 leaves ~30 µs gaps: interrupt mode must sleep in them,
                // busy-poll must not.
                if mode == .interrupt { #expect(slept, "interrupt mode took effect") }
                if mode == .busyPoll {
                    let before = consumer.sleeps.load(ordering: .relaxed)
                    usleep(20_000)
                    #expect(consumer.sleeps.load(ordering: .relaxed) == before, "busy-poll took effect")
                }
            }
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == total)
            #expect(tracker.outOfOrder == 0)
        }
    }

    @Test func builderRejectsBadShapes() throws {
        var builder = PipelineBuilder(name: "bad")
        #expect(throws: PipelineError.invalidStageCount(0, max: Limits.pipelineStageCountMax)) {
            _ = try builder.build(ringCapacities: [])
        }
        builder.source(GeneratorSource(ratePerSecond: 0, totalCount: 1))
        builder.stage(PassThrough())
        #expect(throws: PipelineError.ringCapacityCount(given: 2, links: 1)) {
            _ = try builder.build(ringCapacities: [64, 64])
        }
        #expect(throws: PipelineError.ring(.invalidCapacity(100, max: Limits.ringCapacityMax))) {
            _ = try builder.build(ringCapacities: [100])
        }
        var wide = PipelineBuilder(name: "wide", burstCount: Limits.burstCountMax + 1)
        wide.source(GeneratorSource(ratePerSecond: 0, totalCount: 1))
        wide.stage(PassThrough())
        #expect(throws: PipelineError.invalidBurstCount(Limits.burstCountMax + 1, max: Limits.burstCountMax)) {
            _ = try wide.build(ringCapacities: [64])
        }
    }
}
