// Path: Tests/SluicePacketIOTests/AFXDPCompletionTests.swift — the AF_XDP TX free path: the completion
// scan checks each address the kernel hands back before using it, and descriptors the kernel refuses
// come back to the free frames, reach the completion hook as rejected and count as drops.
import CShims
import Glibc
import SluiceCore
import Synchronization
import Testing

@testable import SluicePacketIO

/// What the completion hook saw (one thread calls it).
private final class HookTally: @unchecked Sendable {  // unchecked: one thread calls the hook
    var slots: [UInt32] = []
    var sent = 0
    var rejected = 0
}

private let tallyHook: AFPacketTXCompletionHook.Function = { context, slot, _, _, status in
    let tally = Unmanaged<HookTally>.fromOpaque(context!).takeUnretainedValue()
    tally.slots.append(slot)
    if status == AFPacketTXCompletionHook.statusSent { tally.sent += 1 } else { tally.rejected += 1 }
}

/// Hand-offs between a test and the worker thread running a sink's idle turns.
private final class IdleRaceFlags: Sendable {
    let processed = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    let idleAfterFinish = Atomic<Int>(0)
}

/// A completion ring laid out in memory as the kernel lays out its own (producer and consumer words,
/// eight address slots), written here as the kernel would write it.
private final class CompletionRing {
    let producer = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    let consumer = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    let flags = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: 8)
    var ring: sluice_xdp_ring

    init(addresses: [UInt64]) {
        producer.pointee = UInt32(addresses.count)
        consumer.pointee = 0
        flags.pointee = 0
        for (index, address) in addresses.enumerated() { slots[index] = address }
        ring = sluice_xdp_ring(cached_prod: 0, cached_cons: 0, mask: 7, size: 8, producer: producer,
                               consumer: consumer, ring: UnsafeMutableRawPointer(slots), flags: flags)
    }

    deinit {
        producer.deallocate()
        consumer.deallocate()
        flags.deallocate()
        slots.deallocate()
    }
}

@Suite struct AFXDPCompletionScanTests {
    static let frameSize: UInt64 = 2048
    static let frameCount = 8

    /// Addresses past the UMEM, and a frame completed twice, are skipped: they never index the
    /// per-frame arrays, never reach the hook, never come back as free frames; the ring still moves.
    @Test func addressesOutsideTheUMEMOrNotInFlightAreSkipped() {
        let frames = Self.frameSize
        let completion = CompletionRing(addresses: [
            2 * frames,                 // frame 2: in flight
            99 * frames,                // past the UMEM's 8 frames
            2 * frames,                 // frame 2 again: already complete
            5 * frames + 100,           // inside frame 5 (in flight)
            UInt64.max,                 // far past the UMEM
        ])
        var tags: [UInt32] = (0..<8).map { UInt32($0) + 10 }
        var lengths: [UInt32] = (0..<8).map { 60 + UInt32($0) }
        var inFlight: [UInt8] = [0, 0, 1, 0, 0, 1, 0, 0]
        var free = [UInt32](repeating: 0xFFFF, count: 8)
        var freed: UInt32 = 0
        var bytes: UInt64 = 0
        let tally = HookTally()
        let taken = sluice_xdp_tx_complete(&completion.ring, UInt32(frames), UInt32(Self.frameCount), 8, &tags, &lengths,
                                           &inFlight, tallyHook, Unmanaged.passUnretained(tally).toOpaque(),
                                           &free, &freed, &bytes)
        #expect(taken == 5)
        #expect(freed == 2)
        #expect(Array(free.prefix(2)) == [2, 5])
        #expect(bytes == UInt64(lengths[2] + lengths[5]))
        #expect(tally.slots == [2, 5] && tally.sent == 2)
        #expect(inFlight == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(completion.consumer.pointee == 5, "every entry taken off the ring, valid or not")
        _ = tags
    }

    /// Without in-flight marks (the benchmark driver's use), only the UMEM bound applies.
    @Test func withoutMarksOnlyTheBoundApplies() {
        let frames = Self.frameSize
        let completion = CompletionRing(addresses: [7 * frames, 8 * frames, 0])
        var tags = [UInt32](repeating: 0, count: 8)
        var lengths = [UInt32](repeating: 64, count: 8)
        var free = [UInt32](repeating: 0xFFFF, count: 8)
        var freed: UInt32 = 0
        var bytes: UInt64 = 0
        let taken = sluice_xdp_tx_complete(&completion.ring, UInt32(frames), UInt32(Self.frameCount), 8, &tags, &lengths,
                                           nil, nil, nil, &free, &freed, &bytes)
        #expect(taken == 3)
        #expect(freed == 2)
        #expect(Array(free.prefix(2)) == [7, 0])
        #expect(bytes == 128)
    }
}

@Suite(.serialized, .enabled(if: NetnsEnvironment.inCI,
                             "AF_XDP tests run with CI=true only (root, namespaces, an AF_XDP socket on a veth)"))
struct AFXDPRejectedDescriptorTests {
    static let total = 200
    /// An option bit no kernel defines: the kernel refuses the descriptor (XDP_STATISTICS
    /// tx_invalid_descs) and never sends it.
    static let unknownOption: UInt32 = 0x80

    /// Buffers of `TestFrames` for `count` frames from sequence `first`, as pool indices in `items`.
    static func fill(_ items: UnsafeMutableBufferPointer<UInt64>, count: Int, first: Int, pool: BufferPool,
                     lab: VethLab) -> Int {
        var filled = 0
        while filled < count, let buffer = pool.allocate() {
            let index = buffer.releaseIndex()
            TestFrames.write(sequence: UInt64(first + filled), flowCount: 1, lab: lab, into: pool.bytes(at: index))
            pool.metadata(at: index).pointee = PacketMetadata()
            pool.metadata(at: index).pointee.length = UInt32(TestFrames.lengthBytes)
            items[filled] = UInt64(index)
            filled += 1
        }
        return filled
    }

    /// The socket learns at open whether refused frames complete (one refused descriptor, never sent),
    /// and its counters start after that probe: nothing refused, queued or completed yet.
    @Test(.timeLimit(.minutes(1)))
    func whetherRefusedFramesCompleteIsLearntAtOpen() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let outcome = Outcome<(learnt: Bool?, pending: Int, counters: AFXDPTXCounters)>()
        try NamespaceThread.run(namespace: lab.pathA) {
            let transmitter = try AFXDPTransmitter(configuration: AFXDPConfiguration(interface: lab.interfaceA), pool: pool)
            try transmitter.statistics.refreshKernelCounters()
            outcome.value = (transmitter.refusedFramesComplete, transmitter.pendingCount, transmitter.statistics.snapshot())
        }
        let result = try #require(outcome.value)
        print("AF_XDP open-time probe: this kernel completes refused frames: \(String(describing: result.learnt))")
        #expect(result.learnt != nil, "the probe could not tell")
        #expect(result.counters.refusedFramesComplete == result.learnt)
        #expect(result.pending == 0)
        #expect(result.counters.kernelInvalid == 0, "the probe's own refusal is not counted")
        #expect(result.counters.completions == 0 && result.counters.queued == 0)
        #expect(result.counters.drops.isEmpty, "\(result.counters.drops)")
    }

    /// Every other descriptor refused, 200 frames through a UMEM of 64. A kernel that never completes
    /// refused frames would leave the transmitter without frames after 128 sends unless it takes them
    /// back; a kernel that completes them (6.18 does) must not make it take back anything. Either
    /// way, by what the socket learnt at open: all 200 taken, every frame back once, each reaching the
    /// hook once; 100 count as refused and 100 as sent, so sent + dropped = offered.
    @Test(.timeLimit(.minutes(1)))
    func refusedDescriptorsComeBackToThePoolCountedOnceAndReachTheHook() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
        let tally = HookTally()
        let outcome = Outcome<(sent: Int, counters: AFXDPTXCounters, flushed: Bool, pending: Int, drops: [String: UInt64],
                               refusedComplete: Bool?)>()
        try NamespaceThread.run(namespace: lab.pathA) {
            var configuration = AFXDPConfiguration(interface: lab.interfaceA)
            configuration.frameCount = 64
            configuration.ringSize = 64
            let hook = AFPacketTXCompletionHook(tallyHook, context: Unmanaged.passUnretained(tally).toOpaque())
            var transmitter = try AFXDPTransmitter(configuration: configuration, pool: pool, completionHook: hook)
            transmitter.injectedOptionPeriod = 2
            transmitter.injectedOptionLimit = UInt64(Self.total)
            transmitter.injectedOption = Self.unknownOption
            let deadline = Clock.monotonicNs() + 20_000_000_000
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 16)
            defer { items.deallocate() }
            var count = 0
            while count < Self.total, Clock.monotonicNs() < deadline {
                let filled = Self.fill(items, count: min(16, Self.total - count), first: count, pool: pool, lab: lab)
                var offset = 0
                while offset < filled, Clock.monotonicNs() < deadline {
                    offset += transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[offset..<filled])).taken
                }
                for position in offset..<filled { pool.freeIndex(UInt32(items[position])) }
                count += offset
            }
            let flushed = transmitter.flush(timeoutNs: 2_000_000_000)
            try transmitter.statistics.refreshKernelCounters()
            let counters = transmitter.statistics.snapshot()
            let drops = Dictionary(uniqueKeysWithValues: counters.drops.map { ($0.reason, $0.count) })
            outcome.value = (count, counters, flushed, transmitter.pendingCount, drops, transmitter.refusedFramesComplete)
        }
        let result = try #require(outcome.value)
        let half = UInt64(Self.total / 2)
        print("AF_XDP refused descriptors: kernel completes them: \(String(describing: result.refusedComplete)); \(result.counters)")
        #expect(result.sent == Self.total)
        #expect(result.flushed)
        #expect(result.pending == 0)
        #expect(result.counters.queued == UInt64(Self.total))
        #expect(result.counters.kernelInvalid == half)
        #expect(result.counters.invalidCompletions == 0)
        #expect(result.drops == ["xdp-tx-invalid": half], "\(result.drops)")
        // Delivered + dropped = offered: a refused frame is a drop, never also a packet sent.
        #expect(result.counters.packets == half)
        #expect(result.counters.packets + result.drops.values.reduce(0, +) == result.counters.queued)
        // Each frame back once: by the kernel's completion, or taken back as refused (never both).
        #expect(result.counters.completions + result.counters.rejected == UInt64(Self.total))
        #expect(tally.sent + tally.rejected == Self.total)
        #expect(UInt64(tally.rejected) == result.counters.rejected)
        let learnt = try #require(result.refusedComplete, "the open-time probe could not tell")
        // Frames are taken back only on a kernel known never to complete them.
        #expect(result.counters.rejected == (learnt ? 0 : half))
        #expect(result.counters.completions == (learnt ? UInt64(Self.total) : half))
        #expect(pool.freeCount == pool.bufferCount)
    }

    /// The AF_XDP sink has idle work: on turns without input it kicks and scans while frames are
    /// pending, and asks to be woken for that; once finished it does nothing more and asks nothing.
    @Test(.timeLimit(.minutes(1)))
    func theSinkDoesIdleWorkUntilFinished() throws {
        try NetnsEnvironment.requireRoot()
        #expect(AFXDPSink.hasIdleWork)
        let lab = try VethLab()
        defer { lab.destroy() }
        let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
        let outcome = Outcome<(held: Int, hint: UInt64?, packets: UInt64, flushed: Bool, idleAfter: Int,
                               hintAfter: UInt64?, again: Bool)>()
        try NamespaceThread.run(namespace: lab.pathA) {
            let sink = try AFXDPSink(configuration: AFXDPConfiguration(interface: lab.interfaceA), pool: pool)
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            let filled = Self.fill(items, count: 32, first: 0, pool: pool, lab: lab)
            let queued = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<filled]))
            if queued != filled { throw NetnsError(description: "queued \(queued) of \(filled)") }
            // Idle turns alone (no further input) bring every completion in; bounded.
            for _ in 0..<20_000 where sink.heldFrames.load(ordering: .relaxed) > 0 {
                _ = sink.idle()
                usleep(50)
            }
            let held = sink.heldFrames.load(ordering: .relaxed)
            let hint = sink.idleHintNs(nowNs: 0)
            let packets = sink.statistics.snapshot().packets
            let flushed = sink.finish()
            outcome.value = (held, hint, packets, flushed, sink.idle(), sink.idleHintNs(nowNs: 0), sink.finish())
        }
        let result = try #require(outcome.value)
        #expect(result.held == 0)
        #expect(result.hint == nil, "nothing pending: no wake-up asked")
        #expect(result.packets == 32)
        #expect(result.flushed)
        #expect(result.idleAfter == 0)
        #expect(result.hintAfter == nil)
        #expect(result.again, "a second finish returns the first one's answer")
        #expect(pool.freeCount == pool.bufferCount)
    }

    /// `finish` on another thread while the worker still runs idle turns (the service's flush thread
    /// at drain, before the runtime stops): it waits for the turn in progress, flushes, and the worker's
    /// later idle turns do nothing. 20 rounds, each with frames in flight.
    @Test(.timeLimit(.minutes(1)))
    func finishWhileTheWorkerStillIdlesTakesOverCleanly() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        for round in 0..<20 {
            let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
            let made = Outcome<AFXDPSink>()
            try NamespaceThread.run(namespace: lab.pathA) {
                made.value = try AFXDPSink(configuration: AFXDPConfiguration(interface: lab.interfaceA), pool: pool)
            }
            let sink = try #require(made.value)
            let flags = IdleRaceFlags()
            let worker = try NamespaceThread.start(namespace: lab.pathA) {
                let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
                defer { items.deallocate() }
                let filled = Self.fill(items, count: 64, first: 0, pool: pool, lab: lab)
                _ = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<filled]))
                flags.processed.store(true, ordering: .releasing)
                let deadline = Clock.monotonicNs() + 5_000_000_000
                while !flags.stop.load(ordering: .acquiring), Clock.monotonicNs() < deadline {
                    let finished = flags.finished.load(ordering: .acquiring)
                    let moved = sink.idle()
                    if finished { flags.idleAfterFinish.add(moved, ordering: .relaxed) }
                }
            }
            while !flags.processed.load(ordering: .acquiring) { usleep(10) }
            if round % 2 == 1 { usleep(UInt32(round) * 10) }  // vary where in the idle turns finish lands
            let flushed = sink.finish()
            flags.finished.store(true, ordering: .releasing)
            usleep(1_000)  // some idle turns after the finish
            flags.stop.store(true, ordering: .releasing)
            let failure = worker.join()
            #expect(failure == nil, "\(failure ?? "")")
            #expect(flushed, "round \(round)")
            #expect(flags.idleAfterFinish.load(ordering: .relaxed) == 0)
            #expect(sink.idle() == 0 && sink.heldFrames.load(ordering: .relaxed) == 0)
            let counters = sink.statistics.snapshot()
            #expect(counters.packets == 64 && counters.queued == 64, "round \(round): \(counters)")
            #expect(pool.freeCount == pool.bufferCount)
        }
    }
}
