import CShims
import Glibc
import Testing

@testable import SluiceCore

@Suite struct RingTests {
    @Test func limitsMatchTheCHeader() {
        #expect(Limits.ringCapacityMax == Int(SLUICE_SPSC_SIZE_MAX))
        #expect(Limits.burstCountMax == Int(SLUICE_BURST_MAX))
    }

    @Test(arguments: [0, 3, 1000, Limits.ringCapacityMax * 2, -4])
    func badCapacityIsATypedError(capacity: Int) {
        #expect(throws: RingError.invalidCapacity(capacity, max: Limits.ringCapacityMax)) {
            _ = try makeRing(capacity: capacity)
        }
    }

    @Test func missingNUMANodeIsATypedError() {
        #expect(throws: RingError.invalidNUMANode(4096, max: CPU.numaNodeMax)) {
            _ = try makeRing(capacity: 64, numaNode: 4096)
        }
    }

    @Test(arguments: [0, Limits.ringCapacityMax + 1])
    func badExactCapacityIsATypedError(capacity: Int) {
        #expect(throws: RingError.invalidCapacity(capacity, max: Limits.ringCapacityMax)) {
            _ = try makeRing(capacity: capacity, exact: true)
        }
    }

    @Test func exactCapacityHoldsExactlyThatMany() throws {
        let ends = try makeRing(capacity: 1000, exact: true)
        var producer = ends.producer
        var consumer = ends.consumer
        #expect(producer.capacity == 1000)
        for item in 0..<1000 { let r1 = producer.enqueue(UInt64(item)); #expect(r1) }
        let r2 = producer.enqueue(1000)
        #expect(!r2, "the 1001st item must not fit")
        let r3 = producer.freeCount()
        #expect(r3 == 0)
        let r4 = consumer.availableCount()
        #expect(r4 == 1000)
        for item in 0..<1000 { let r5 = consumer.dequeue(); #expect(r5 == UInt64(item)) }
        let r6 = consumer.dequeue()
        #expect(r6 == nil)
    }

    @Test func emptyAndFullAreReported() throws {
        let ends = try makeRing(capacity: 4)
        var producer = ends.producer
        var consumer = ends.consumer
        let r7 = consumer.dequeue()
        #expect(r7 == nil)
        let r8 = consumer.peek()
        #expect(r8 == nil)
        for item in 1...4 { let r9 = producer.enqueue(UInt64(item)); #expect(r9) }
        let r10 = producer.enqueue(5)
        #expect(!r10)
        #expect(producer.count == 4)
        let r11 = consumer.peek()
        #expect(r11 == 1)
        #expect(consumer.count == 4, "peek takes nothing")
        let r12 = consumer.dequeue()
        #expect(r12 == 1)
        let r13 = producer.enqueue(5)
        #expect(r13, "one slot freed")
        #expect(producer.observer.count == 4)
    }

    @Test func wraparoundKeepsOrderOverManyLaps() throws {
        let ends = try makeRing(capacity: 8)
        var producer = ends.producer
        var consumer = ends.consumer
        var next: UInt64 = 0
        var expected: UInt64 = 0
        withBurst(8) { buffer in
            for lap in 0..<10_000 {
                let count = lap % 7 + 1
                for i in 0..<count { buffer[i] = next + UInt64(i) }
                let (added, _) = producer.enqueueBurst(UnsafeBufferPointer(rebasing: buffer[0..<count]))
                next += UInt64(added)
                let (taken, _) = consumer.dequeueBurst(into: UnsafeMutableBufferPointer(rebasing: buffer[0..<(lap % 5 + 1)]))
                for i in 0..<taken {
                    #expect(buffer[i] == expected)
                    expected += 1
                }
            }
        }
        while let item = consumer.dequeue() {
            #expect(item == expected)
            expected += 1
        }
        #expect(expected == next)
    }

    /// Indices run free over UInt32: crossing 2^32 must not lose, duplicate or reorder items.
    @Test(arguments: [1, 7, 32])
    func indexWrapAt32BitsKeepsOrder(burst: Int) throws {
        let ends = try makeRing(capacity: 64)
        var producer = ends.producer
        var consumer = ends.consumer
        #expect(sluice_spsc_debug_set_index(producer.ring, UInt32.max - 100) == 0)
        var next: UInt64 = 0
        var expected: UInt64 = 0
        withBurst(burst) { buffer in
            for _ in 0..<1_000 {
                for i in 0..<burst { buffer[i] = next + UInt64(i) }
                let (added, _) = producer.enqueueBurst(UnsafeBufferPointer(buffer))
                next += UInt64(added)
                #expect(producer.count <= 64)
                let (taken, _) = consumer.dequeueBurst(into: buffer)
                for i in 0..<taken {
                    #expect(buffer[i] == expected)
                    expected += 1
                }
            }
        }
        #expect(expected == next)
        #expect(next > 200, "the run crossed the wrap")
    }

    @Test(arguments: [1, 8, 32, 256])
    func burstIsBestEffortAndReportsSpace(burst: Int) throws {
        let ends = try makeRing(capacity: 256)
        var producer = ends.producer
        var consumer = ends.consumer
        withBurst(burst) { buffer in
            for i in 0..<burst { buffer[i] = UInt64(i) }
            var total = 0
            while true {
                let (added, freeSpace) = producer.enqueueBurst(UnsafeBufferPointer(buffer))
                total += added
                #expect(freeSpace == 256 - total)
                if added < burst { break }
            }
            #expect(total == 256)
            let (taken, available) = consumer.dequeueBurst(into: buffer)
            #expect(taken == burst)
            #expect(available == 256 - burst)
        }
    }

    @Test func bulkIsAllOrNothing() throws {
        let ends = try makeRing(capacity: 16)
        var producer = ends.producer
        var consumer = ends.consumer
        withBurst(10) { buffer in
            for i in 0..<10 { buffer[i] = UInt64(i) }
            let r14 = producer.enqueueBulk(UnsafeBufferPointer(buffer))
            #expect(r14 == (10, 6))
            let r15 = producer.enqueueBulk(UnsafeBufferPointer(buffer))
            #expect(r15 == (0, 6), "10 do not fit in 6")
            #expect(producer.count == 10)
            let r16 = consumer.dequeueBulk(into: buffer)
            #expect(r16 == (10, 0))
            let r17 = consumer.dequeueBulk(into: buffer)
            #expect(r17 == (0, 0))
            let r18 = producer.enqueueBulk(UnsafeBufferPointer(rebasing: buffer[0..<3]))
            #expect(r18.count == 3)
            #expect(r18.freeSpace >= 3, "a lower bound: the cached tail may be stale")
            #expect(producer.freeCount() == 13, "freeCount refreshes the consumer's index")
            let r19 = consumer.dequeueBulk(into: buffer)
            #expect(r19 == (0, 3), "3 available, 10 asked")
            let r20 = consumer.peek(into: buffer)
            #expect(r20 == 3)
            let r21 = consumer.availableCount()
            #expect(r21 == 3)
        }
    }

    @Test func spanEnqueueMatchesPointerEnqueue() throws {
        let ends = try makeRing(capacity: 8)
        var producer = ends.producer
        var consumer = ends.consumer
        let items: [UInt64] = [7, 8, 9]
        let r22 = producer.enqueueBurst(items.span)
        #expect(r22 == (3, 5))
        let r23 = consumer.dequeue()
        #expect(r23 == 7)
    }

    /// Two threads, 10 million items in bursts of varied size: every item arrives once, in order.
    @Test func twoThreadStressDeliversEveryItemInOrder() throws {
        let total: UInt64 = 10_000_000
        let ends = try makeRing(capacity: 1024)
        let producer = ends.producer
        let consumer = ends.consumer
        let received = runPair(producer: producer, consumer: consumer, total: total)
        #expect(received.count == total)
        #expect(received.outOfOrder == 0)
    }

    @Test func oversizedBurstTraps() async {
        await #expect(processExitsWith: .failure) {
            let ends = try! makeRing(capacity: 1024)
            var producer = ends.producer
            let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: Limits.burstCountMax + 1)
            buffer.initialize(repeating: 0)
            _ = producer.enqueueBurst(UnsafeBufferPointer(buffer))
        }
    }
}

func withBurst(_ count: Int, _ body: (UnsafeMutableBufferPointer<UInt64>) -> Void) {
    let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: count)
    buffer.initialize(repeating: 0)
    defer { buffer.deallocate() }
    body(buffer)
}

/// Producer thread sends 0..<total in bursts of 1...32; the calling thread consumes and checks order.
func runPair(producer: consuming RingProducer, consumer: consuming RingConsumer, total: UInt64)
    -> (count: UInt64, outOfOrder: UInt64)
{
    final class Box: @unchecked Sendable {
        var producer: RingProducer?
        let total: UInt64
        init(_ producer: consuming RingProducer, total: UInt64) {
            self.producer = consume producer
            self.total = total
        }
    }
    let box = Box(producer, total: total)
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        var producer = box.producer.take()!
        let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { buffer.deallocate() }
        var next: UInt64 = 0
        var burst = 1
        while next < box.total {
            let count = Int(min(UInt64(burst), box.total - next))
            for i in 0..<count { buffer[i] = next + UInt64(i) }
            let (added, _) = producer.enqueueBurst(UnsafeBufferPointer(rebasing: buffer[0..<count]))
            next += UInt64(added)
            burst = burst % 32 + 1
        }
        return nil
    }, Unmanaged.passRetained(box).toOpaque())
    precondition(rc == 0)
    var consumer = consumer
    var expected: UInt64 = 0
    var outOfOrder: UInt64 = 0
    let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
    defer { buffer.deallocate() }
    let deadline = Clock.monotonicNs() + 60_000_000_000  // a broken ring fails the test, not hangs it
    while expected < total {
        precondition(Clock.monotonicNs() < deadline, "ring stress made no progress for 60 s")
        let (taken, _) = consumer.dequeueBurst(into: buffer)
        for i in 0..<taken {
            if buffer[i] != expected { outOfOrder += 1 }
            expected += 1
        }
    }
    pthread_join(thread, nil)
    return (expected, outOfOrder)
}
