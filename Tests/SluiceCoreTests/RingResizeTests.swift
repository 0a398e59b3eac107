import Glibc
import Synchronization
import Testing

@testable import SluiceCore

/// Checks, per flow (item % flows), that each flow's items arrive in increasing order; counts them.
struct FlowOrderSink: StageBody, @unchecked Sendable {  // unchecked: one worker writes, the test reads after draining
    static let flows = 4
    /// slots[0]: received, slots[1]: out of order, slots[2 + f]: last item of flow f plus one (0: none yet).
    let slots: UnsafeMutablePointer<UInt64>

    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        for item in items {
            let flow = 2 + Int(item % UInt64(Self.flows))
            if item &+ 1 <= slots[flow] { slots[1] &+= 1 }
            slots[flow] = item &+ 1
            slots[0] &+= 1
        }
        return items.count
    }
}

/// Drops items whose mixed bits say so (about one in seven), so each flow's sequence has gaps.
struct ScatterFilter: StageBody {
    static func keeps(_ item: UInt64) -> Bool { (item &* 0x9E37_79B9_7F4A_7C15) >> 61 != 0 }
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var kept = 0
        for index in items.indices where Self.keeps(items[index]) {
            items[kept] = items[index]
            kept += 1
        }
        return kept
    }
}

/// A gate a test opens from its own thread.
final class Gate: Sendable {
    let open = Atomic<Bool>(false)
}

/// Passes items on, but blocks its worker while the gate is shut (a stuck stage).
struct GatedRelay: StageBody {
    let gate: Gate
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        while !gate.open.load(ordering: .acquiring) { usleep(100) }
        return items.count
    }
}

@Suite(.serialized) struct RingResizeTests {
    static let total: UInt64 = 2_000_000

    /// Grows, shrinks while full-ish and grows again every ring of a 4-stage pipeline at full speed.
    /// Spread: [0, 1, 1, 1]; fused: all four stages on worker 0, with fusing on.
    @Test(.enabled(if: twoCPUsOrCI), arguments: [false, true])
    func ringsResizedMidStreamDeliverEveryItemOnceInOrder(fused: Bool) throws {
        guard requireTwoCPUs() else { return }
        try withRuntime(.adaptive) { runtime, _ in
            let tracker = SinkTracker()
            let pipeline = try makeCountingPipeline(
                "resize", source: GeneratorSource(ratePerSecond: 0, totalCount: Self.total, payload: .sequence),
                relays: [PassThrough(), PassThrough()], tracker: tracker, ringCapacity: 1024)
            try runtime.launch(pipeline, placement: fused ? [0, 0, 0, 0] : [0, 1, 1, 1])
            // Rounds of the schedule until the pipeline drains (at least one, at most 200), every link
            // each step; the last step of a round is 4096.
            let schedule = [8192, 64, 16_384, 128, 4096]
            var resizesBeforeDrain = 0
            var rounds = 0
            repeat {
                for capacity in schedule {
                    for link in 0..<3 {
                        if !pipeline.isDrained { resizesBeforeDrain += 1 }
                        try runtime.resizeRing(pipeline, link: link, capacity: capacity)
                        #expect(pipeline.ringCapacities[link] == capacity)
                        #expect(pipeline.ringObservers[link].capacity == capacity)
                    }
                }
                rounds += 1
            } while !pipeline.isDrained && rounds < 200
            #expect(resizesBeforeDrain > 0, "every resize came after the drain: nothing was tested mid-stream")
            print("RingResizeTests: \(resizesBeforeDrain) resizes mid-stream (fused: \(fused))")
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == Self.total)
            #expect(tracker.outOfOrder == 0)
            #expect(pipeline.delivered == Self.total)
            #expect(pipeline.queued == 0)
            #expect(pipeline.ringCapacities == [4096, 4096, 4096])
            #expect(pipeline.ringObservers.map(\.capacity) == [4096, 4096, 4096])
            if fused { #expect(pipeline.fusedBursts.load(ordering: .relaxed) > 0) }
            // Every stage is back where it was launched.
            #expect(pipeline.stages.map { $0.owner.load(ordering: .relaxed) } == (fused ? [0, 0, 0, 0] : [0, 1, 1, 1]))
        }
    }

    /// Interleaved flows with gaps (a filter drops some items) stay in order per flow across resizes,
    /// including `resizeRings` changing several rings at once.
    @Test(.enabled(if: twoCPUsOrCI)) func flowsStayInOrderAcrossResizes() throws {
        guard requireTwoCPUs() else { return }
        try withRuntime(.adaptive) { runtime, _ in
            let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: 2 + FlowOrderSink.flows)
            slots.initialize(repeating: 0, count: 2 + FlowOrderSink.flows)
            defer { slots.deallocate() }
            var builder = PipelineBuilder(name: "flows", burstCount: 32)
            builder.source(GeneratorSource(ratePerSecond: 0, totalCount: Self.total, payload: .sequence))
            builder.stage(ScatterFilter())
            builder.stage(PassThrough())
            builder.stage(FlowOrderSink(slots: slots), name: "sink")
            let pipeline = try builder.build(ringCapacities: [512, 512, 512])
            try runtime.launch(pipeline, placement: [0, 0, 1, 1])
            let rounds: [[Int]] = [[4096, 64, 2048], [64, 8192, 64], [1024, 1024, 256], [2048, 128, 8192]]
            for capacities in rounds {
                try runtime.resizeRings(pipeline, capacities: capacities)
                #expect(pipeline.ringCapacities == capacities)
            }
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            let kept = (0..<Self.total).reduce(UInt64(0)) { $0 + (ScatterFilter.keeps($1) ? 1 : 0) }
            #expect(slots[0] == kept)
            #expect(slots[1] == 0)
            #expect(pipeline.filtered == Self.total - kept)
            #expect(pipeline.ringObservers.map(\.capacity) == [2048, 128, 8192])
        }
    }

    /// A consumer that never empties the ring: the resize times out with the typed error, changes
    /// nothing, and the producer runs again. A producer whose worker is stuck: the same.
    @Test(.enabled(if: twoCPUsOrCI)) func resizeWithAStuckStageTimesOutAndLosesNothing() throws {
        guard requireTwoCPUs() else { return }
        try withRuntime(.adaptive) { runtime, _ in
            let tracker = SinkTracker()
            let gate = Gate()
            let total: UInt64 = 200_000
            let pipeline = try makeCountingPipeline(
                "stuck", source: GeneratorSource(ratePerSecond: 0, totalCount: total, payload: .sequence),
                relays: [GatedRelay(gate: gate)], tracker: tracker, ringCapacity: 1024)
            try runtime.launch(pipeline, placement: [0, 1, 1])
            // The gate blocks worker 1 inside its first burst; the source fills ring 0 and waits.
            let fillDeadline = Clock.monotonicNs() &+ 10_000_000_000
            while pipeline.ringObservers[0].count < 1024 - 32, Clock.monotonicNs() < fillDeadline { usleep(100) }
            let queuedBefore = pipeline.queued
            #expect(queuedBefore > 0)

            // Ring 0: the producer parks, its consumer (the gate) never drains it.
            #expect(throws: RuntimeError.resizeTimedOut(pipeline: "stuck", link: 0)) {
                try runtime.resizeRing(pipeline, link: 0, capacity: 4096, timeoutNs: 200_000_000)
            }
            #expect(pipeline.ringCapacities == [1024, 1024])
            #expect(pipeline.ringObservers[0].capacity == 1024)
            #expect(pipeline.stages[0].owner.load(ordering: .acquiring) == 0, "the source is back on its worker")
            #expect(pipeline.queued == queuedBefore)

            // Ring 1: its producer (the gate) is on the stuck worker, so it cannot even be parked.
            #expect(throws: RuntimeError.resizeTimedOut(pipeline: "stuck", link: 1)) {
                try runtime.resizeRing(pipeline, link: 1, capacity: 4096, timeoutNs: 200_000_000)
            }
            #expect(pipeline.ringCapacities == [1024, 1024])

            gate.open.store(true, ordering: .releasing)
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == total, "the source ran again after the failed resize")
            #expect(tracker.outOfOrder == 0)
            // The runtime still works: the same resizes now succeed.
            try runtime.resizeRings(pipeline, capacities: [4096, 4096])
            #expect(pipeline.ringObservers.map(\.capacity) == [4096, 4096])
            #expect(pipeline.stages.map { $0.owner.load(ordering: .acquiring) } == [0, 1, 1])
        }
    }

    @Test func badArgumentsAreTypedErrors() throws {
        let runtime = try Runtime(configuration: .init(cores: try testCores(1)))
        let tracker = SinkTracker()
        let pipeline = try makeCountingPipeline(
            "args", source: GeneratorSource(ratePerSecond: 0, totalCount: 1000, payload: .sequence), tracker: tracker)
        #expect(throws: RuntimeError.notRunning) { try runtime.resizeRing(pipeline, link: 0, capacity: 64) }
        try runtime.start()
        defer { runtime.stop() }
        #expect(throws: RuntimeError.notLaunched(pipeline: "args")) {
            try runtime.resizeRing(pipeline, link: 0, capacity: 64)
        }
        try runtime.launch(pipeline, placement: [0, 0, 0])
        #expect(throws: RuntimeError.noSuchLink(pipeline: "args", link: 2, links: 2)) {
            try runtime.resizeRing(pipeline, link: 2, capacity: 64)
        }
        #expect(throws: RuntimeError.noSuchLink(pipeline: "args", link: -1, links: 2)) {
            try runtime.resizeRing(pipeline, link: -1, capacity: 64)
        }
        let max = Limits.ringCapacityMax
        for capacity in [0, 1, 100, -64, max * 2] {
            #expect(throws: RuntimeError.invalidRingCapacity(capacity, max: max)) {
                try runtime.resizeRing(pipeline, link: 0, capacity: capacity)
            }
        }
        #expect(throws: RuntimeError.ringCapacityCount(given: 3, links: 2)) {
            try runtime.resizeRings(pipeline, capacities: [64, 64, 64])
        }
        // One bad capacity: checked before any ring changes.
        #expect(throws: RuntimeError.invalidRingCapacity(100, max: max)) {
            try runtime.resizeRings(pipeline, capacities: [64, 100])
        }
        #expect(pipeline.ringCapacities == [1024, 1024])
        #expect(runtime.drain(timeoutNs: drainTimeoutNs))
        // A drained pipeline still resizes; a launched pipeline of another runtime does not.
        try runtime.resizeRing(pipeline, link: 1, capacity: max)
        #expect(pipeline.ringObservers[1].capacity == max)
        #expect(tracker.received == 1000 && tracker.outOfOrder == 0)
        runtime.stop()
        #expect(throws: RuntimeError.notRunning) { try runtime.resizeRing(pipeline, link: 0, capacity: 64) }
    }

    @Test func resizedRingsKeepTheBuildersNUMANode() throws {
        let tracker = SinkTracker()
        var builder = PipelineBuilder(name: "numa", burstCount: 32)
        builder.source(GeneratorSource(ratePerSecond: 0, totalCount: 10_000, payload: .sequence))
        builder.stage(OrderCheckSink(tracker), name: "sink")
        let pipeline = try builder.build(ringCapacities: [64], numaNode: 0)
        #expect(pipeline.numaNode == 0)
        let runtime = try Runtime(configuration: .init(cores: try testCores(1)))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: [0, 0])
        try runtime.resizeRing(pipeline, link: 0, capacity: 256)
        #expect(runtime.drain(timeoutNs: drainTimeoutNs))
        #expect(tracker.received == 10_000 && tracker.outOfOrder == 0)
        #expect(pipeline.ringObservers[0].capacity == 256)
    }
}
