// Path: Tests/SluiceCoreTests/FusedRunToCompletionTests.swift — a worker that runs every stage of a
// pipeline runs each burst through them in one call chain, skipping the rings; the result is the
// staged run's, item for item, and moves in and out of it lose and reorder nothing.
import Glibc
import Testing
@testable import SluiceCore

@Suite(.serialized) struct FusedRunToCompletionTests {
    /// Runs 200,000 sequence numbers through source -> even filter -> pass -> order check on one worker.
    private func runOnOneWorker(fuses: Bool) throws -> (pipeline: Pipeline, tracker: SinkTracker) {
        let tracker = SinkTracker()
        let pipeline = try makeCountingPipeline(
            "fused", source: GeneratorSource(ratePerSecond: 0, totalCount: 200_000, payload: .sequence),
            relays: [EvenFilter(), PassThrough()], tracker: tracker, stride: 2)
        let runtime = try Runtime(configuration: .init(cores: [try testCores(1)[0]], waitMode: .busyPoll,
                                                       fusesRunToCompletion: fuses))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: [0, 0, 0, 0])
        #expect(runtime.drain(timeoutNs: drainTimeoutNs))
        return (pipeline, tracker)
    }

    @Test func oneWorkerRunsTheWholePipelineWithoutItsRings() throws {
        let (pipeline, tracker) = try runOnOneWorker(fuses: true)
        #expect(tracker.received == 100_000 && tracker.outOfOrder == 0)
        #expect(pipeline.delivered == 100_000 && pipeline.filtered == 100_000 && pipeline.isDrained)
        #expect(pipeline.fusedBursts.load(ordering: .relaxed) > 0)
        // Counters as a staged run keeps them: every stage saw what reached it.
        let stages = pipeline.snapshot()
        #expect(stages.map(\.items) == [200_000, 200_000, 100_000, 100_000])
        #expect(stages[1].filtered == 100_000 && stages.allSatisfy { $0.cycles > 0 })
        // The source arrives last (launch posts downstream first), so every burst went straight through.
        #expect(stages[0].calls == pipeline.fusedBursts.load(ordering: .relaxed))
    }

    @Test func withoutFusionTheSameItemsGoThroughTheRings() throws {
        let (pipeline, tracker) = try runOnOneWorker(fuses: false)
        #expect(tracker.received == 100_000 && tracker.outOfOrder == 0)
        #expect(pipeline.fusedBursts.load(ordering: .relaxed) == 0)
        #expect(pipeline.snapshot().map(\.items) == [200_000, 200_000, 100_000, 100_000])
    }

    /// Spreading a fused pipeline and gathering it back, again and again while items flow: each
    /// gather finds items on the rings, drains them staged first, then fuses again.
    @Test(.enabled(if: twoCPUsOrCI, "needs two CPUs"))
    func movesInAndOutOfFusionLoseAndReorderNothing() throws {
        guard requireTwoCPUs() else { return }
        let tracker = SinkTracker()
        let total: UInt64 = 2_000_000
        let pipeline = try makeCountingPipeline(
            "fused-moves", source: GeneratorSource(ratePerSecond: 0, totalCount: total, payload: .sequence),
            relays: [PassThrough(), PassThrough()], tracker: tracker)
        try withRuntime(.busyPoll) { runtime, _ in
            try runtime.launch(pipeline, placement: [0, 0, 0, 0])
            var round = 0
            while !pipeline.isDrained, round < 40 {
                let target = round % 2 == 0 ? 1 : 0
                for stage in pipeline.stages.dropFirst() { try runtime.move(stage, toWorker: target) }
                usleep(2_000)
                round += 1
            }
            for stage in pipeline.stages.dropFirst() { try runtime.move(stage, toWorker: 0) }
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
        }
        #expect(tracker.received == total)
        #expect(tracker.outOfOrder == 0)
        #expect(pipeline.fusedBursts.load(ordering: .relaxed) > 0)
    }
}
