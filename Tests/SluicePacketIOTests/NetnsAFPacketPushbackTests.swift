// Path: Tests/SluicePacketIOTests/NetnsAFPacketPushbackTests.swift — TX pushback and malformed frames
// on a real ring: kicks that fail (injected through the transmitter's debug seam) leave frames queued
// for the next kick, and lengths the kernel would refuse never reach it.
import Glibc
import SluiceCore
@testable import SluicePacketIO
import Synchronization
import Testing

/// The test's two threads' handshake.
private final class Handshake: Sendable {
    let receiverReady = Atomic<Bool>(false)
    let senderDone = Atomic<Bool>(false)
}

@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NetnsAFPacketPushbackTests {
    @Test func failedKicksAreCountedAndRetriedAndBadLengthsAreDropped() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let sequences = Outcome<[UInt64]>()
        let steps = Outcome<[AFPacketTXCounters]>()
        let pendingAfterFailures = Outcome<Int>()
        let handshake = Handshake()

        let receiverThread = try NamespaceThread.start(namespace: lab.pathB) {
            var receiver = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, ignoreOutgoing: true), pool: rxPool)
            handshake.receiverReady.store(true, ordering: .releasing)
            for _ in 0..<20_000 where !handshake.senderDone.load(ordering: .acquiring) { usleep(500) }
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            var seen: [UInt64] = []
            for _ in 0..<20 {
                let count = try receiver.receive(into: items, timeoutMs: 20)
                for item in items[0..<count] {
                    let index = UInt32(item)
                    let bytes = UnsafeRawBufferPointer(rxPool.bytes(at: index))
                    if let sequence = TestFrames.sequence(of: bytes, length: Int(rxPool.metadata(at: index).pointee.length)) {
                        seen.append(sequence)
                    }
                    rxPool.freeIndex(index)
                }
            }
            sequences.value = seen
        }
        let senderThread = try NamespaceThread.start(namespace: lab.pathA) {
            defer { handshake.senderDone.store(true, ordering: .releasing) }
            var transmitter = try AFPacketTransmitter(configuration: AFPacketTXConfiguration(interface: lab.interfaceA),
                                                      pool: txPool)
            for _ in 0..<10_000 where !handshake.receiverReady.load(ordering: .acquiring) { usleep(500) }
            transmitter.injectedKickResults = [-ENOBUFS, -EAGAIN, -ENETDOWN]
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 4)
            defer { items.deallocate() }
            var sequence: UInt64 = 0
            var recorded: [AFPacketTXCounters] = []
            func frame(length: Int) -> UInt64 {
                let index = txPool.allocate()!.releaseIndex()
                TestFrames.write(sequence: sequence, flowCount: 1, lab: lab, into: txPool.bytes(at: index))
                txPool.metadata(at: index).pointee = PacketMetadata()
                txPool.metadata(at: index).pointee.length = UInt32(length)
                if length == TestFrames.lengthBytes { sequence += 1 }
                return UInt64(index)
            }
            // Two bursts of four whose kicks the device "refuses" (ENOBUFS, then EAGAIN).
            for _ in 0..<2 {
                for slot in 0..<4 { items[slot] = frame(length: TestFrames.lengthBytes) }
                let burst = transmitter.transmitBurst(UnsafeBufferPointer(items))
                #expect(burst == AFPacketTXBurst(taken: 4, queued: 4))
                recorded.append(transmitter.counters)
            }
            transmitter.reapCompletions()
            pendingAfterFailures.value = transmitter.pendingCount
            // Too short, too long for a 1500-byte MTU, then two good frames; this kick fails outright.
            items[0] = frame(length: 10)
            items[1] = frame(length: 1500 + 14 + 1)
            items[2] = frame(length: TestFrames.lengthBytes)
            items[3] = frame(length: TestFrames.lengthBytes)
            let burst = transmitter.transmitBurst(UnsafeBufferPointer(items))
            #expect(burst == AFPacketTXBurst(taken: 4, queued: 2))
            recorded.append(transmitter.counters)
            let flushed = transmitter.flush(timeoutNs: 2_000_000_000)
            #expect(flushed)
            recorded.append(transmitter.counters)
            steps.value = recorded
        }
        #expect(senderThread.join() == nil)
        #expect(receiverThread.join() == nil)
        let counters = try #require(steps.value)
        try #require(counters.count == 4)
        #expect(counters[0].kickRetries == 1 && counters[0].kicks == 1, "ENOBUFS: counted, frames stay queued")
        #expect(counters[1].kickRetries == 2 && counters[1].kickErrors == 0, "EAGAIN: counted the same way")
        #expect(pendingAfterFailures.value == 8, "nothing completed: the kernel never took the frames")
        #expect(counters[2].frameTooShort == 1)
        #expect(counters[2].frameTooLong == 1)
        #expect(counters[2].kickErrors == 1)
        #expect(counters[2].lastKickErrno == ENETDOWN)
        #expect(counters[2].queued == 10)
        #expect(counters[3].packets == 10, "the next real kick sent everything queued")
        #expect(counters[3].drops.map(\.reason) == ["tx-frame-too-short", "tx-frame-too-long"])
        #expect(txPool.freeCount == txPool.bufferCount)
        #expect(sequences.value == Array(0..<10), "every frame arrived once, in order")
        #expect(rxPool.freeCount == rxPool.bufferCount)
    }
}
