import Glibc
import Testing

@testable import SluiceCore

/// A source that takes a buffer from `pool` per item and sends its index; `total` items, then done.
struct PoolSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    let pool: BufferPool
    let total: Int
    var sent = 0

    var isExhausted: Bool { sent >= total }

    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var count = 0
        while count < items.count, sent < total, let buffer = pool.allocate() {
            items[count] = UInt64(buffer.releaseIndex())
            count += 1
            sent += 1
        }
        return count
    }
}

/// A last stage that frees every buffer it gets, except that it keeps (leaks) the first `leaking`.
struct FreeingSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    let pool: BufferPool
    var leaking: Int

    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        for item in items {
            if leaking > 0 {
                leaking -= 1
                continue
            }
            pool.freeIndex(UInt32(truncatingIfNeeded: item))
        }
        return items.count
    }
}

/// Debug builds account for every pool buffer: a double free traps at the free, and a buffer that a
/// pipeline's stages neither freed nor left in flight traps when its pool goes away.
@Suite struct BufferOwnershipTests {
    /// Runs `total` buffers through source -> sink on one worker, drains, stops and tears it all down.
    /// The sink leaks `leaking` buffers.
    static func runPipeline(total: Int, leaking: Int) throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 64)
        let runtime = try Runtime(configuration: .init(cores: try testCores(1), waitMode: .interrupt))
        try runtime.start()
        var builder = PipelineBuilder(name: "ownership", burstCount: 8)
        builder.carriesBuffers(of: pool)
        builder.source(PoolSource(pool: pool, total: total))
        builder.stage(FreeingSink(pool: pool, leaking: leaking), name: "sink")
        let pipeline = try builder.build(ringCapacities: [64])
        try runtime.launch(pipeline, placement: [0, 0])
        precondition(runtime.drain(timeoutNs: drainTimeoutNs), "pipeline did not drain")
        runtime.stop()
    }

    /// Runs only the source of a source -> sink pipeline, by hand, so `total` buffers are still on the
    /// ring (in flight) when the pipeline is torn down: what a stop without a drain leaves.
    static func tearDownWithBuffersInFlight(total: Int) throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 64)
        var builder = PipelineBuilder(name: "in-flight", burstCount: 8)
        builder.carriesBuffers(of: pool)
        builder.source(PoolSource(pool: pool, total: total))
        builder.stage(FreeingSink(pool: pool, leaking: 0), name: "sink")
        let pipeline = try builder.build(ringCapacities: [64])
        // No worker runs the consumer, so the source's wake-up check finds no waiter to call.
        let notAWaiter = OpaquePointer(bitPattern: 64)!
        while pipeline.entered.load(ordering: .relaxed) < UInt64(total) {
            precondition(pipeline.stages[0].runOnce(waiter: notAWaiter) > 0, "source stalled")
        }
        precondition(pipeline.queued == total && pool.freeCount == 64 - total, "buffers not on the ring")
    }

    #if DEBUG
    @Test func freeingABufferTwiceTrapsAtTheSecondFree() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 4, bufferSizeBytes: 64)
            let index = pool.allocate()!.releaseIndex()
            pool.freeIndex(index)
            pool.freeIndex(index)
        }
    }

    @Test func freeingABufferNeverTakenTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 4, bufferSizeBytes: 64)
            pool.freeIndex(2)
        }
    }

    @Test func recyclingAFreedBufferTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 4, bufferSizeBytes: 64)
            var ends = try! makeRing(capacity: 8)
            let index = UInt64(pool.allocate()!.releaseIndex())
            pool.freeIndex(UInt32(index))
            withUnsafePointer(to: index) { pool.recycle(UnsafeBufferPointer(start: $0, count: 1), through: &ends.producer) }
        }
    }

    @Test func aLeakedBufferTrapsWhenThePipelinesPoolGoesAway() async {
        await #expect(processExitsWith: .failure) {
            try! BufferOwnershipTests.runPipeline(total: 1_000, leaking: 1)
        }
    }

    /// The counterpart that makes the leak test mean something: the same pipeline without the leak,
    /// and one stopped with buffers still on its ring, end cleanly.
    @Test func everyBufferBackOrInFlightAtTeardownIsNoLeak() async {
        await #expect(processExitsWith: .success) {
            try! BufferOwnershipTests.runPipeline(total: 1_000, leaking: 0)
            try! BufferOwnershipTests.tearDownWithBuffersInFlight(total: 40)
        }
    }

    @Test func stateFollowsEveryWayInAndOut() throws {
        let pool = try BufferPool(bufferCount: 16, bufferSizeBytes: 64)
        var ends = try makeRing(capacity: 16)
        let raw = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 16)
        defer { raw.deallocate() }
        #expect(pool.takeFree(into: UnsafeMutableBufferPointer(rebasing: raw[0..<4])) == 4)
        #expect(pool.ownedCountForDebugging == 4)
        pool.recycle(UnsafeBufferPointer(rebasing: raw[0..<4]), through: &ends.producer)
        #expect(pool.ownedCountForDebugging == 0, "recycled buffers are free while on the returns ring")
        #expect(pool.takeReturned(into: UnsafeMutableBufferPointer(rebasing: raw[0..<8]), from: &ends.consumer) == 4)
        #expect(pool.ownedCountForDebugging == 4)
        pool.freeBurst(UnsafeBufferPointer(rebasing: raw[0..<4]))
        let indices = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 17)
        defer { indices.deallocate() }
        #expect(pool.allocateBulk(into: indices) == 0, "17 asked of 16: none taken")
        #expect(pool.ownedCountForDebugging == 0)
        #expect(pool.allocateBurst(into: UnsafeMutableBufferPointer(rebasing: indices[0..<3])) == 3)
        #expect(pool.ownedCountForDebugging == 3)
        for index in indices[0..<3] { pool.free(PacketBuffer(adopting: index)) }
        #expect(pool.ownedCountForDebugging == 0)
    }
    #endif
}
