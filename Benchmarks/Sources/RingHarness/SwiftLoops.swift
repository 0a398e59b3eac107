// Path: Benchmarks/Sources/RingHarness/SwiftLoops.swift — the benchmark loops over SluiceCore's ring ends.
//
// The loops of CRingHarness/loops.h, line for line, over RingProducer and RingConsumer: change both
// together. Each loop is a free function taking its end `inout`; the entry points below find the end
// behind a job's handle. Nothing here allocates or touches a reference count once a loop runs.
// Loops over a burst are `while` loops with wrapping arithmetic, not `for i in 0..<n`: the range's
// overflow trap is a second exit that kept LLVM from vectorizing the consumer's check (the C one is
// vectorized), which made the Swift consumer measurably slower than the C one for reasons that were
// the harness's, not the ring's.
import CRingHarness
import Glibc
import SluiceCore

/// Sends 0, 1, ... count-1, one item per call, spinning while the ring is full.
@inline(never)
func produceSingle(_ producer: inout RingProducer, count: UInt64) {
    var next: UInt64 = 0
    while next < count { next &+= producer.enqueue(next) ? 1 : 0 }
}

/// Takes `count` items one per call, spinning while the ring is empty. Returns items out of sequence.
@inline(never)
func consumeSingle(_ consumer: inout RingConsumer, count: UInt64) -> UInt64 {
    var expected: UInt64 = 0
    var mismatches: UInt64 = 0
    while expected < count {
        if let item = consumer.dequeue() {
            mismatches &+= item != expected ? 1 : 0
            expected &+= 1
        }
    }
    return mismatches
}

/// Sends 0, 1, ... count-1 in bursts of `items.count`, staged in `items`, spinning while the ring is full.
@inline(never)
func produceBurst(_ producer: inout RingProducer, count: UInt64, items: UnsafeMutableBufferPointer<UInt64>) {
    let burst = UInt64(items.count)
    var next: UInt64 = 0
    while next < count {
        let n = Int(min(count &- next, burst))
        var i = 0
        while i < n {
            items[i] = next &+ UInt64(i)
            i &+= 1
        }
        next &+= UInt64(producer.enqueueBurst(UnsafeBufferPointer(start: items.baseAddress, count: n)).count)
    }
}

/// Takes `count` items in bursts of up to `items.count`. Returns items out of sequence.
@inline(never)
func consumeBurst(_ consumer: inout RingConsumer, count: UInt64, items: UnsafeMutableBufferPointer<UInt64>) -> UInt64 {
    var expected: UInt64 = 0
    var mismatches: UInt64 = 0
    while expected < count {
        let n = consumer.dequeueBurst(into: items).count
        var i = 0
        while i < n {
            mismatches &+= items[i] != expected &+ UInt64(i) ? 1 : 0
            i &+= 1
        }
        expected &+= UInt64(n)
    }
    return mismatches
}

/// `samples.count` round trips: one item out on `tx`, back on `rx`; stores each one's TSC ticks.
/// Returns replies out of sequence.
@inline(never)
func ping(_ tx: inout RingProducer, _ rx: inout RingConsumer, samples: UnsafeMutableBufferPointer<UInt64>) -> UInt64 {
    var mismatches: UInt64 = 0
    for round in 0..<UInt64(samples.count) {
        let start = Clock.cycles()
        while !tx.enqueue(round) {}
        var reply = rx.dequeue()
        while reply == nil { reply = rx.dequeue() }
        samples[Int(round)] = Clock.cycles() &- start
        mismatches &+= reply != round ? 1 : 0
    }
    return mismatches
}

/// `count` rounds: echoes one item from `rx` to `tx`.
@inline(never)
func pong(_ tx: inout RingProducer, _ rx: inout RingConsumer, count: UInt64) {
    for _ in 0..<count {
        var item = rx.dequeue()
        while item == nil { item = rx.dequeue() }
        while !tx.enqueue(item!) {}
    }
}

/// The Swift wrapper as a harness variant. Its handles are one cell per end (see `endCell`).
func swiftVariant() -> ringh_variant {
    ringh_variant(
        create: swiftCreate,
        destroy: swiftDestroy,
        produce_single: { job in produceSingle(&producerEnd(job.pointee.tx).pointee, count: job.pointee.count) },
        consume_single: { job in
            job.pointee.mismatches = consumeSingle(&consumerEnd(job.pointee.rx).pointee, count: job.pointee.count)
        },
        produce_burst: { job in
            produceBurst(&producerEnd(job.pointee.tx).pointee, count: job.pointee.count, items: burstItems(job))
        },
        consume_burst: { job in
            job.pointee.mismatches = consumeBurst(
                &consumerEnd(job.pointee.rx).pointee, count: job.pointee.count, items: burstItems(job))
        },
        ping: { job in
            let samples = UnsafeMutableBufferPointer(start: job.pointee.buffer, count: Int(job.pointee.count))
            job.pointee.mismatches = ping(
                &producerEnd(job.pointee.tx).pointee, &consumerEnd(job.pointee.rx).pointee, samples: samples)
        },
        pong: { job in
            pong(&producerEnd(job.pointee.tx).pointee, &consumerEnd(job.pointee.rx).pointee, count: job.pointee.count)
        }
    )
}

private func producerEnd(_ handle: UnsafeMutableRawPointer?) -> UnsafeMutablePointer<RingProducer> {
    handle!.assumingMemoryBound(to: RingProducer.self)
}

private func consumerEnd(_ handle: UnsafeMutableRawPointer?) -> UnsafeMutablePointer<RingConsumer> {
    handle!.assumingMemoryBound(to: RingConsumer.self)
}

private func burstItems(_ job: UnsafeMutablePointer<ringh_job>) -> UnsafeMutableBufferPointer<UInt64> {
    UnsafeMutableBufferPointer(start: job.pointee.buffer, count: Int(job.pointee.burst))
}

/// Makes a ring with `makeRing` and moves each end into a cell of its own.
private func swiftCreate(
    _ capacity: UInt32, _ tx: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
    _ rx: UnsafeMutablePointer<UnsafeMutableRawPointer?>
) -> Int32 {
    do throws(RingError) {
        let ends = try makeRing(capacity: Int(capacity))
        tx.pointee = endCell(ends.producer)
        rx.pointee = endCell(ends.consumer)
        return 0
    } catch {
        switch error {
        case .invalidCapacity, .invalidNUMANode: return -EINVAL
        case .outOfMemory: return -ENOMEM
        }
    }
}

private func swiftDestroy(_ tx: UnsafeMutableRawPointer, _ rx: UnsafeMutableRawPointer) {
    tx.assumingMemoryBound(to: RingProducer.self).deinitialize(count: 1)
    rx.assumingMemoryBound(to: RingConsumer.self).deinitialize(count: 1)
    tx.deallocate()
    rx.deallocate()
}

/// Moves `end` into memory of its own lines, so the two threads' ends never share a cache line.
private func endCell<End: ~Copyable>(_ end: consuming End) -> UnsafeMutableRawPointer {
    let cell = UnsafeMutableRawPointer.allocate(byteCount: max(MemoryLayout<End>.size, lineBytes), alignment: lineBytes)
    cell.bindMemory(to: End.self, capacity: 1).initialize(to: end)
    return cell
}
