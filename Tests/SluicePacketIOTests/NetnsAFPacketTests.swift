// Path: Tests/SluicePacketIOTests/NetnsAFPacketTests.swift — the AF_PACKET port between two network
// namespaces joined by a veth pair: TX ring in one, RX ring in the other, every frame accounted for.
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization
import Testing

/// Flags the test threads share.
private final class Signals: Sendable {
    let receiverReady = Atomic<Int>(0)
    let senderDone = Atomic<Bool>(false)

    /// Waits (bounded) until `count` receivers are ready.
    func waitForReceivers(_ count: Int, timeoutNs: UInt64 = 5_000_000_000) -> Bool {
        let deadline = Clock.monotonicNs() + timeoutNs
        while receiverReady.load(ordering: .acquiring) < count {
            if Clock.monotonicNs() >= deadline { return false }
            usleep(200)
        }
        return true
    }
}

/// What a receiving thread saw.
private struct Received {
    var tally: SequenceTally
    var counters: AFPacketRXCounters
    var badMetadata = 0
}

/// What a sending thread did.
private struct Sent {
    var count: Int
    var counters: AFPacketTXCounters
    var poolFree: Int
}

private func realtimeNs() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Checks one received buffer's metadata against what the test sent.
private func metadataIsRight(_ metadata: PacketMetadata, port: UInt16, startNs: UInt64) -> Bool {
    metadata.length == UInt32(TestFrames.lengthBytes) && metadata.wireLength == UInt32(TestFrames.lengthBytes)
        && metadata.linkType == 1 && metadata.port == port && metadata.timestampNs >= startNs
        && metadata.timestampNs <= realtimeNs() && metadata.enqueueNs != 0
}

/// Receives on `receiver` until `total` test frames arrived, or the sender is done and the link has
/// been quiet for 300 ms, or 30 s pass. Frees every buffer.
private func receiveTestFrames(_ receiver: inout AFPacketReceiver, pool: BufferPool, total: Int, port: UInt16,
                               signals: Signals) throws -> Received {
    let startNs = realtimeNs()
    var received = Received(tally: SequenceTally(total: total), counters: AFPacketRXCounters())
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
    defer { items.deallocate() }
    let deadline = Clock.monotonicNs() + 30_000_000_000
    var quietSince = Clock.monotonicNs()
    while received.tally.matched < total, Clock.monotonicNs() < deadline {
        let count = try receiver.receive(into: items, timeoutMs: 20)
        for item in items[0..<count] {
            let index = UInt32(item)
            let metadata = pool.metadata(at: index).pointee
            if !metadataIsRight(metadata, port: port, startNs: startNs) { received.badMetadata += 1 }
            received.tally.record(UnsafeRawBufferPointer(pool.bytes(at: index)), length: Int(metadata.length))
            pool.freeIndex(index)
        }
        if count > 0 { quietSince = Clock.monotonicNs() }
        if signals.senderDone.load(ordering: .acquiring), Clock.monotonicNs() - quietSince > 300_000_000 { break }
    }
    received.counters = try receiver.refreshKernelCounters()
    return received
}

@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NetnsAFPacketTests {
    /// 100k 64-byte frames, TX ring in namespace A, RX ring in namespace B, at 250k packets/s: each
    /// arrives exactly once, the kernel drops none, and every counter agrees.
    @Test(arguments: [false, true])
    func everyFrameFromTheTXRingArrivesOnceOnTheRXRing(qdiscBypass: Bool) throws {
        try NetnsEnvironment.requireRoot()
        let total = 100_000
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 1024, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let signals = Signals()
        let received = Outcome<Received>()
        let sent = Outcome<Sent>()
        // 32 MiB of blocks holds the whole run, so even a receiver starved of CPU loses nothing.
        let rxConfiguration = AFPacketRXConfiguration(interface: lab.interfaceB, blockSizeBytes: 1 << 20, blockCount: 32,
                                                      ignoreOutgoing: true, port: 7)
        let receiverThread = try NamespaceThread.start(namespace: lab.pathB, cpu: 1) {
            var receiver = try AFPacketReceiver(configuration: rxConfiguration, pool: rxPool)
            signals.receiverReady.add(1, ordering: .releasing)
            received.value = try receiveTestFrames(&receiver, pool: rxPool, total: total, port: 7, signals: signals)
        }
        let senderThread = try NamespaceThread.start(namespace: lab.pathA, cpu: 0) {
            defer { signals.senderDone.store(true, ordering: .releasing) }
            var transmitter = try AFPacketTransmitter(
                configuration: AFPacketTXConfiguration(interface: lab.interfaceA, qdiscBypass: qdiscBypass), pool: txPool)
            guard signals.waitForReceivers(1) else { throw NetnsError(description: "receiver never became ready") }
            let count = sendTestFrames(&transmitter, pool: txPool, lab: lab, total: total, ratePerSecond: 250_000,
                                       deadlineNs: Clock.monotonicNs() + 30_000_000_000)
            sent.value = Sent(count: count, counters: transmitter.counters, poolFree: txPool.freeCount)
        }
        let senderFailure = senderThread.join()
        let receiverFailure = receiverThread.join()
        #expect(senderFailure == nil)
        #expect(receiverFailure == nil)
        let tx = try #require(sent.value)
        let rx = try #require(received.value)

        #expect(tx.count == total)
        #expect(tx.counters.queued == UInt64(total))
        #expect(tx.counters.packets == UInt64(total), "every frame seen complete by the completion scan")
        #expect(tx.counters.bytes == UInt64(total * TestFrames.lengthBytes))
        #expect(tx.counters.wrongFormat == 0)
        #expect(tx.counters.kickErrors == 0)
        #expect(tx.counters.drops.isEmpty)
        #expect(tx.poolFree == txPool.bufferCount, "the transmitter freed every buffer it took")

        #expect(rx.tally.matched == total)
        #expect(rx.tally.missing == 0)
        #expect(rx.tally.duplicates == 0)
        #expect(rx.tally.outOfRange == 0)
        #expect(rx.badMetadata == 0)
        #expect(rx.counters.kernelDrops == 0)
        #expect(rx.counters.poolExhausted == 0)
        #expect(rx.counters.packets == UInt64(rx.tally.matched + rx.tally.others))
        #expect(rx.counters.kernelPackets == rx.counters.packets, "every frame the socket accepted was received")
        #expect(rx.counters.bytes == rx.counters.packets * UInt64(TestFrames.lengthBytes))
        #expect(rx.counters.blocks > 0)
        #expect(rxPool.freeCount == rxPool.bufferCount)
    }

    /// Two RX rings in one PACKET_FANOUT_HASH group (with the defragment flag) split 64 flows between
    /// them: together they see every frame once, and each sees some.
    @Test func fanoutGroupSplitsOneInterfaceAcrossTwoReceivers() throws {
        try NetnsEnvironment.requireRoot()
        let total = 50_000
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 1024, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let signals = Signals()
        let perReceiver = Outcome<[AFPacketRXCounters]>()
        let received = Outcome<SequenceTally>()
        let sent = Outcome<Int>()
        let fanout = AFPacketFanout(group: UInt16(truncatingIfNeeded: getpid() & 0x7FFF), defragment: true)
        let receiverThread = try NamespaceThread.start(namespace: lab.pathB, cpu: 1) {
            var first = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, blockCount: 16, fanout: fanout, port: 1),
                pool: rxPool)
            var second = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, blockCount: 16, fanout: fanout, port: 2),
                pool: rxPool)
            signals.receiverReady.add(1, ordering: .releasing)
            var tally = SequenceTally(total: total)
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
            defer { items.deallocate() }
            let deadline = Clock.monotonicNs() + 30_000_000_000
            var quietSince = Clock.monotonicNs()
            while tally.matched < total, Clock.monotonicNs() < deadline {
                let fromFirst = first.receiveBurst(into: items)
                let count = fromFirst + second.receiveBurst(into: UnsafeMutableBufferPointer(rebasing: items[fromFirst...]))
                for item in items[0..<count] {
                    let index = UInt32(item)
                    tally.record(UnsafeRawBufferPointer(rxPool.bytes(at: index)), length: Int(rxPool.metadata(at: index).pointee.length))
                    rxPool.freeIndex(index)
                }
                if count > 0 {
                    quietSince = Clock.monotonicNs()
                } else {
                    usleep(100)
                }
                if signals.senderDone.load(ordering: .acquiring), Clock.monotonicNs() - quietSince > 300_000_000 { break }
            }
            perReceiver.value = [try first.refreshKernelCounters(), try second.refreshKernelCounters()]
            received.value = tally
        }
        let senderThread = try NamespaceThread.start(namespace: lab.pathA, cpu: 0) {
            defer { signals.senderDone.store(true, ordering: .releasing) }
            var transmitter = try AFPacketTransmitter(
                configuration: AFPacketTXConfiguration(interface: lab.interfaceA, qdiscBypass: true), pool: txPool)
            guard signals.waitForReceivers(1) else { throw NetnsError(description: "receivers never became ready") }
            sent.value = sendTestFrames(&transmitter, pool: txPool, lab: lab, total: total, ratePerSecond: 250_000,
                                        flowCount: 64, deadlineNs: Clock.monotonicNs() + 30_000_000_000)
        }
        #expect(senderThread.join() == nil)
        #expect(receiverThread.join() == nil)
        #expect(sent.value == total)
        let tally = try #require(received.value)
        let counters = try #require(perReceiver.value)
        #expect(tally.matched == total)
        #expect(tally.missing == 0)
        #expect(tally.duplicates == 0, "a frame delivered to both members would count twice")
        #expect(counters.allSatisfy { $0.kernelDrops == 0 && $0.poolExhausted == 0 })
        #expect(counters.allSatisfy { $0.packets > 0 }, "64 flows hash onto both members: \(counters.map(\.packets))")
        #expect(counters.reduce(0) { $0 + $1.packets } == UInt64(tally.matched + tally.others))
    }

    /// An empty pool never blocks the receiver: frames that find no buffer are skipped and counted.
    @Test func emptyPoolSkipsAndCountsFrames() throws {
        try NetnsEnvironment.requireRoot()
        let total = 1_000
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let signals = Signals()
        let counters = Outcome<AFPacketRXCounters>()
        let receiverThread = try NamespaceThread.start(namespace: lab.pathB) {
            // Blocks retire after 50 ms, not 1: the ring holds ~800 ms of frames even if this thread
            // is starved on a loaded machine, so every frame reaches the pool check.
            var receiver = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, blockTimeoutMs: 50), pool: rxPool)
            signals.receiverReady.add(1, ordering: .releasing)
            // Take everything while the sender sends, without freeing a buffer: after 64 the pool is empty.
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            var held: [UInt32] = []
            held.reserveCapacity(64)
            let deadline = Clock.monotonicNs() + 20_000_000_000
            while Clock.monotonicNs() < deadline {
                let count = try receiver.receive(into: items, timeoutMs: 50)
                held += items[0..<count].map { UInt32($0) }
                guard count == 0, signals.senderDone.load(ordering: .acquiring), !receiver.hasFrames else { continue }
                let seen = try receiver.refreshKernelCounters()
                if seen.packets + seen.poolExhausted + seen.kernelDrops >= UInt64(total) { break }
            }
            counters.value = try receiver.refreshKernelCounters()
            for index in held { rxPool.freeIndex(index) }
        }
        let senderThread = try NamespaceThread.start(namespace: lab.pathA) {
            defer { signals.senderDone.store(true, ordering: .releasing) }
            var transmitter = try AFPacketTransmitter(configuration: AFPacketTXConfiguration(interface: lab.interfaceA),
                                                      pool: txPool)
            guard signals.waitForReceivers(1) else { throw NetnsError(description: "receiver never became ready") }
            _ = sendTestFrames(&transmitter, pool: txPool, lab: lab, total: total, ratePerSecond: 100_000,
                               deadlineNs: Clock.monotonicNs() + 10_000_000_000)
        }
        #expect(senderThread.join() == nil)
        #expect(receiverThread.join() == nil)
        let rx = try #require(counters.value)
        #expect(rx.packets == 64)
        #expect(rx.poolExhausted == UInt64(total - 64))
        #expect(rx.kernelDrops == 0)
        #expect(rx.kernelPackets == UInt64(total))
        #expect(rxPool.freeCount == 64)
    }

    /// A ring too small for a burst nobody reads: the kernel's drops surface through
    /// PACKET_STATISTICS, and received + dropped is what was sent.
    @Test func kernelRingDropsAreCounted() throws {
        try NetnsEnvironment.requireRoot()
        let total = 2_000
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let signals = Signals()
        let counters = Outcome<AFPacketRXCounters>()
        let page = AFPacketLimits.pageSizeBytes
        let receiverThread = try NamespaceThread.start(namespace: lab.pathB) {
            var receiver = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, blockSizeBytes: page, blockCount: 2,
                                                       frameSizeBytes: 2048),
                pool: rxPool)
            signals.receiverReady.add(1, ordering: .releasing)
            while !signals.senderDone.load(ordering: .acquiring) { usleep(1_000) }
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            for _ in 0..<100 {
                let count = try receiver.receive(into: items, timeoutMs: 20)
                for item in items[0..<count] { rxPool.freeIndex(UInt32(item)) }
                if count == 0 { break }
            }
            counters.value = try receiver.refreshKernelCounters()
        }
        let senderThread = try NamespaceThread.start(namespace: lab.pathA) {
            defer { signals.senderDone.store(true, ordering: .releasing) }
            var transmitter = try AFPacketTransmitter(configuration: AFPacketTXConfiguration(interface: lab.interfaceA),
                                                      pool: txPool)
            guard signals.waitForReceivers(1) else { throw NetnsError(description: "receiver never became ready") }
            _ = sendTestFrames(&transmitter, pool: txPool, lab: lab, total: total, ratePerSecond: 0,
                               deadlineNs: Clock.monotonicNs() + 10_000_000_000)
            usleep(20_000)
        }
        #expect(senderThread.join() == nil)
        #expect(receiverThread.join() == nil)
        let rx = try #require(counters.value)
        #expect(rx.kernelDrops > 0, "two one-page blocks cannot hold 2000 frames")
        #expect(rx.kernelPackets == UInt64(total), "tp_packets counts accepted and dropped frames")
        #expect(rx.packets + rx.kernelDrops == UInt64(total))
        #expect(rx.drops.contains { $0.reason == "kernel-ring-full" })
    }

    /// Interfaces are looked up in the opening thread's namespace: B's veth end is not in A.
    @Test func interfaceOfAnotherNamespaceIsNotFound() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let pool = try BufferPool(bufferCount: 8, bufferSizeBytes: 2048)
        let outcome = Outcome<AFPacketError>()
        try NamespaceThread.run(namespace: lab.pathA) {
            do {
                _ = try AFPacketReceiver(configuration: AFPacketRXConfiguration(interface: lab.interfaceB), pool: pool)
            } catch let error as AFPacketError {
                outcome.value = error
            }
        }
        #expect(outcome.value == .interfaceNotFound(lab.interfaceB))
    }
}
