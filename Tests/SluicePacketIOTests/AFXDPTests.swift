// Path: Tests/SluicePacketIOTests/AFXDPTests.swift — the AF_XDP port between two network namespaces
// joined by a veth pair: TX socket in one, RX socket (XDP program attached) in the other, every frame
// received exactly once and in order per flow, every completion seen by the TX hook.
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization
import Testing

/// What the TX completion hook counts (called on the sending thread only).
private final class CompletionTally: @unchecked Sendable {  // unchecked: one thread calls the hook
    var completed = 0
    var bytes = 0
    var notSent = 0
}

/// The hook the AF_PACKET TX ring also takes: counts each completion into the tally behind `context`.
private let countingHook: AFPacketTXCompletionHook.Function = { context, _, _, length, status in
    let tally = Unmanaged<CompletionTally>.fromOpaque(context!).takeUnretainedValue()
    tally.completed += 1
    tally.bytes += Int(length)
    if status != AFPacketTXCompletionHook.statusSent { tally.notSent += 1 }
}

/// Shared by the two threads: the receiver's progress (the sender's credit) and readiness.
private final class Progress: Sendable {
    let receiverReady = Atomic<Bool>(false)
    let received = Atomic<Int>(0)
    let senderDone = Atomic<Bool>(false)
}

/// Which flows' sequence numbers came out of order: the UDP source port names the flow.
private struct FlowOrder {
    var last: [UInt16: UInt64] = [:]
    var outOfOrder = 0
    mutating func record(_ bytes: UnsafeRawBufferPointer, sequence: UInt64) {
        let flow = UInt16(bytes[34]) << 8 | UInt16(bytes[35])
        if let previous = last[flow], sequence <= previous { outOfOrder += 1 }
        last[flow] = sequence
    }
}

@Suite(.serialized, .enabled(if: NetnsEnvironment.inCI,
                             "AF_XDP tests run with CI=true only (root, namespaces, an XDP program attached to a veth)"))
struct AFXDPNamespaceTests {
    static let total = 100_000
    static let flowCount = 4
    /// Frames the sender may be ahead of the receiver: below the RX ring (2048) and the fill ring, so
    /// a slow receiver holds the sender back instead of losing frames to a full ring.
    static let creditMax = 1024

    @Test(.timeLimit(.minutes(1)))
    func hundredThousandFramesArriveOnceInOrderAndEveryCompletionReachesTheHook() throws {
        try NetnsEnvironment.requireRoot()
        let startNs = Clock.monotonicNs()
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 1024, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let progress = Progress()
        let deadline = startNs + 18_000_000_000  // the whole test under 20 s on a loaded 2-core machine
        let tally = Outcome<(SequenceTally, FlowOrder, AFXDPRXCounters, AFXDPMode)>()
        let receiverThread = try NamespaceThread.start(namespace: lab.pathB) {
            var receiver = try AFXDPReceiver(configuration: AFXDPConfiguration(interface: lab.interfaceB), pool: rxPool)
            progress.receiverReady.store(true, ordering: .releasing)
            var sequences = SequenceTally(total: Self.total)
            var order = FlowOrder()
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
            defer { items.deallocate() }
            var quietSince = Clock.monotonicNs()
            while sequences.matched < Self.total, Clock.monotonicNs() < deadline {
                let count = try receiver.receive(into: items, timeoutMs: 10)
                for item in items[0..<count] {
                    let index = UInt32(item)
                    let bytes = UnsafeRawBufferPointer(rxPool.bytes(at: index))
                    let length = Int(rxPool.metadata(at: index).pointee.length)
                    sequences.record(bytes, length: length)
                    if let sequence = TestFrames.sequence(of: bytes, length: length) {
                        order.record(bytes, sequence: sequence)
                    }
                    rxPool.freeIndex(index)
                }
                if count > 0 {
                    quietSince = Clock.monotonicNs()
                    progress.received.store(sequences.matched, ordering: .releasing)
                }
                if progress.senderDone.load(ordering: .acquiring), Clock.monotonicNs() - quietSince > 300_000_000 { break }
            }
            tally.value = (sequences, order, try receiver.refreshKernelCounters(), receiver.mode)
        }
        let completions = CompletionTally()
        let sent = Outcome<(Int, AFXDPTXCounters, Bool)>()
        let senderThread = try NamespaceThread.start(namespace: lab.pathA) {
            defer { progress.senderDone.store(true, ordering: .releasing) }
            let hook = AFPacketTXCompletionHook(countingHook, context: Unmanaged.passUnretained(completions).toOpaque())
            var transmitter = try AFXDPTransmitter(configuration: AFXDPConfiguration(interface: lab.interfaceA),
                                                   pool: txPool, completionHook: hook)
            while !progress.receiverReady.load(ordering: .acquiring), Clock.monotonicNs() < deadline { usleep(200) }
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            var count = 0
            while count < Self.total, Clock.monotonicNs() < deadline {
                let room = Self.creditMax - (count - progress.received.load(ordering: .acquiring))
                let burstCount = min(32, Self.total - count, room)
                guard burstCount > 0 else {
                    transmitter.reapCompletions()
                    transmitter.kickIfNeeded()
                    continue
                }
                var filled = 0
                while filled < burstCount, let buffer = txPool.allocate() {
                    let index = buffer.releaseIndex()
                    TestFrames.write(sequence: UInt64(count + filled), flowCount: Self.flowCount, lab: lab,
                                     into: txPool.bytes(at: index))
                    txPool.metadata(at: index).pointee = PacketMetadata()
                    txPool.metadata(at: index).pointee.length = UInt32(TestFrames.lengthBytes)
                    items[filled] = UInt64(index)
                    filled += 1
                }
                var offset = 0
                while offset < filled, Clock.monotonicNs() < deadline {
                    let burst = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[offset..<filled]))
                    offset += burst.taken
                }
                for position in offset..<filled { txPool.freeIndex(UInt32(items[position])) }
                count += offset
            }
            let flushed = transmitter.flush(timeoutNs: 2_000_000_000)
            try transmitter.statistics.refreshKernelCounters()
            sent.value = (count, transmitter.statistics.snapshot(), flushed)
        }
        let senderFailure = senderThread.join()
        let receiverFailure = receiverThread.join()
        #expect(senderFailure == nil, "sender: \(senderFailure ?? "")")
        #expect(receiverFailure == nil, "receiver: \(receiverFailure ?? "")")
        let (sentCount, txCounters, flushed) = try #require(sent.value)
        let (sequences, order, rxCounters, mode) = try #require(tally.value)
        print("AF_XDP test: RX program in \(mode) mode on \(lab.interfaceB); \(sentCount) sent, \(sequences.matched) received in \((Clock.monotonicNs() - startNs) / 1_000_000) ms; RX \(rxCounters); TX \(txCounters)")
        #expect(sentCount == Self.total)
        #expect(flushed)
        #expect(sequences.matched == Self.total)
        #expect(sequences.duplicates == 0)
        #expect(sequences.missing == 0)
        #expect(order.outOfOrder == 0)
        #expect(order.last.count == Self.flowCount)
        #expect(rxCounters.packets >= UInt64(Self.total))
        #expect(rxCounters.kernelDropped == 0)
        // Every transmitted frame reached the hook once, as sent.
        #expect(completions.completed == sentCount)
        #expect(completions.notSent == 0)
        #expect(completions.bytes == sentCount * TestFrames.lengthBytes)
        #expect(txCounters.packets == UInt64(sentCount))
        #expect(txCounters.queued == UInt64(sentCount))
        #expect(txCounters.kernelInvalid == 0)
        #expect(txPool.freeCount == txPool.bufferCount)
        #expect(rxPool.freeCount == rxPool.bufferCount)
        // The socket's program is gone with the socket.
        try NamespaceThread.run(namespace: lab.pathB) {
            let attached = try AFXDPInterface.attachedMode(lab.interfaceB)
            if attached != nil { throw NetnsError(description: "an XDP program is still attached in \(attached!) mode") }
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [AFXDPMode.native, .generic])
    func eachModeAttachesOnVethAndSaysWhich(mode: AFXDPMode) throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
        try NamespaceThread.run(namespace: lab.pathB) {
            var configuration = AFXDPConfiguration(interface: lab.interfaceB)
            configuration.mode = mode
            let receiver = try AFXDPReceiver(configuration: configuration, pool: pool)
            if receiver.mode != mode { throw NetnsError(description: "asked for \(mode), attached \(receiver.mode)") }
            if try AFXDPInterface.attachedMode(lab.interfaceB) != mode {
                throw NetnsError(description: "the kernel reports another mode than \(mode)")
            }
        }
    }
}

/// Set-up errors: no root, namespace or XDP needed (the interface lookup fails first).
@Suite struct AFXDPErrorTests {
    @Test func aMissingInterfaceIsATypedErrorNamingIt() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let name = "sluicenoif0"
        #expect(throws: AFXDPError.interfaceNotFound(name)) {
            _ = try AFXDPReceiver(configuration: AFXDPConfiguration(interface: name), pool: pool)
        }
        #expect(throws: AFXDPError.interfaceNotFound(name)) {
            _ = try AFXDPTransmitter(configuration: AFXDPConfiguration(interface: name), pool: pool)
        }
    }

    @Test func badSettingsAreTypedErrorsBeforeAnySystemCall() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        var configuration = AFXDPConfiguration(interface: "lo")
        configuration.frameSizeBytes = 3000
        #expect(throws: AFXDPError.invalidFrameSize(3000, min: 2048, max: 4096)) {
            _ = try AFXDPReceiver(configuration: configuration, pool: pool)
        }
        configuration = AFXDPConfiguration(interface: "lo")
        configuration.ringSize = 1000
        #expect(throws: AFXDPError.invalidRingSize(1000, min: AFXDPLimits.ringSizeMin, max: AFXDPLimits.ringSizeMax)) {
            _ = try AFXDPTransmitter(configuration: configuration, pool: pool)
        }
        #expect(throws: AFXDPError.invalidInterfaceName("a/b")) {
            _ = try AFXDPTransmitter(configuration: AFXDPConfiguration(interface: "a/b"), pool: pool)
        }
    }
}
