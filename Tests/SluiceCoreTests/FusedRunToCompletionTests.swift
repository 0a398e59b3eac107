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

    /// A burst the middle stage filters whole ends the chain, and the last stage, which holds work
    /// back, still gets its idle turn (as it would find its ring empty when staged). The source never
    /// runs dry, so no turn without input gives the sink its idle turn instead.
    @Test func aSinkWithIdleWorkGetsItsIdleTurnWhenEverythingIsFiltered() throws {
        let idleCalls = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        idleCalls.initialize(to: 0)
        defer { idleCalls.deallocate() }
        var builder = PipelineBuilder(name: "filtered", burstCount: 32)
        builder.source(GeneratorSource(ratePerSecond: 0, totalCount: .max, payload: .sequence))
        builder.stage(DropAll())
        builder.stage(IdleCountingSink(idleCalls: idleCalls), name: "sink")
        let pipeline = try builder.build(ringCapacities: [1024, 1024])
        let runtime = try Runtime(configuration: .init(cores: [try testCores(1)[0]], waitMode: .busyPoll))
        try runtime.start()
        try runtime.launch(pipeline, placement: [0, 0, 0])
        usleep(50_000)
        runtime.stop()
        let fused = pipeline.fusedBursts.load(ordering: .relaxed)
        #expect(fused > 0 && pipeline.filtered == pipeline.entered.load(ordering: .relaxed))
        #expect(idleCalls.pointee >= fused, "one idle turn per filtered burst: \(idleCalls.pointee) for \(fused)")
    }

    @Test func withoutFusionTheSameItemsGoThroughTheRings() throws {
        let (pipeline, tracker) = try runOnOneWorker(fuses: false)
        #expect(tracker.received == 100_000 && tracker.outOfOrder == 0)
        #expect(pipeline.fusedBursts.load(ordering: .relaxed) == 0)
        #expect(pipeline.snapshot().map(\.items) == [200_000, 200_000, 100_000, 100_000])
    }

    /// Spreading a fused pipeline and gathering it back, again and again while items flow: each
    /// gather finds items on the rings, drains them with the source waiting, then fuses again.
    @Test(.enabled(if: twoCPUsOrCI, "needs two CPUs"))
    func movesInAndOutOfFusionLoseAndReorderNothing() throws {
        guard requireTwoCPUs() else { return }
        let tracker = SinkTracker()
        let total: UInt64 = 1_000_000
        // Paced at 2M items/s: the source still produces after the last gather below.
        let pipeline = try makeCountingPipeline(
            "fused-moves", source: GeneratorSource(ratePerSecond: 2_000_000, totalCount: total, payload: .sequence),
            relays: [PassThrough(), PassThrough()], tracker: tracker)
        var fusedAtLastGather: UInt64 = 0
        try withRuntime(.busyPoll) { runtime, _ in
            try runtime.launch(pipeline, placement: [0, 0, 0, 0])
            for round in 0..<10 {
                let target = round % 2 == 0 ? 1 : 0
                for stage in pipeline.stages.dropFirst() { try runtime.move(stage, toWorker: target) }
                usleep(5_000)
            }
            for stage in pipeline.stages.dropFirst() { try runtime.move(stage, toWorker: 0) }
            fusedAtLastGather = pipeline.fusedBursts.load(ordering: .relaxed)
            let exhausted = pipeline.sourceExhausted.load(ordering: .relaxed)
            #expect(!exhausted, "the source outlives the moves")
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
        }
        #expect(tracker.received == total)
        #expect(tracker.outOfOrder == 0)
        #expect(pipeline.fusedBursts.load(ordering: .relaxed) > fusedAtLastGather, "fused again after the last gather")
    }
}

/// Keeps nothing.
private struct DropAll: StageBody {
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int { 0 }
}

/// A last stage that holds work back (as a shaped TX stage does) and counts its idle turns.
private struct IdleCountingSink: StageBody, @unchecked Sendable {  // unchecked: one worker writes, read after the drain
    let idleCalls: UnsafeMutablePointer<UInt64>
    static var hasIdleWork: Bool { true }
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int { items.count }
    mutating func idle() -> Int {
        idleCalls.pointee &+= 1
        return 0
    }
}
