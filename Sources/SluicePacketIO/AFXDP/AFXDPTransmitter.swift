// Path: Sources/SluicePacketIO/AFXDP/AFXDPTransmitter.swift — TX: pool buffers copied into free UMEM
// frames and put on the TX ring, a sendto() kick per burst, and the completion-ring scan that frees the
// frames and tells the traffic controller's hook what left.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// Sends on one interface queue through an AF_XDP socket (copy mode, no XDP program). Owns its socket,
/// UMEM and frame bookkeeping: one thread at a time transmits; move it there, never share it. Bursts
/// never block or allocate. The completion scan calls the same `AFPacketTXCompletionHook` the
/// AF_PACKET TX ring calls (slot = UMEM frame, tag = the frame's `sourceID`, status `statusSent`):
/// every frame the kernel reports sent reaches the hook exactly once. A frame whose descriptor the
/// kernel refused (it consumes it, counts it in XDP_STATISTICS tx_invalid_descs and never completes
/// it) is taken back by `reclaimRejected()`, reaches the hook with `statusRejected` and is counted.
public struct AFXDPTransmitter: ~Copyable {
    public let configuration: AFXDPConfiguration
    public let statistics: AFXDPTXStatistics
    let pool: BufferPool
    private let socket: AFXDPSocket
    /// UMEM frames not on the TX ring nor in flight: a stack of frame numbers, `freeCount` deep.
    private let freeFrames: UnsafeMutablePointer<UInt32>
    private var freeCount: Int
    /// Per UMEM frame: the tag (source id) and length of the frame it carries, for the hook.
    private let tags: UnsafeMutablePointer<UInt32>
    private let lengths: UnsafeMutablePointer<UInt32>
    /// Per UMEM frame: 1 while it is on the TX ring or in flight. A completion is honoured only for a
    /// frame marked here (and clears the mark), so a bad or repeated address cannot free a frame twice.
    private let inFlight: UnsafeMutablePointer<UInt8>
    /// Per UMEM frame: flow hash, length and enqueue time of the frame it carries, for a completion
    /// hook that reports events (the AF_PACKET ring's `slotRecords`, by UMEM frame). Owner thread.
    public let frameRecords: UnsafeMutablePointer<AFPacketTXSlotRecord>
    /// XDP_STATISTICS tx_invalid_descs already accounted for by `reclaimRejected()`.
    private var rejectedSeen: UInt64 = 0
    /// Learnt from the counts: this kernel puts refused frames on the completion ring after all
    /// (6.18 does), so nothing is ever taken back. nil until a count tells.
    public private(set) var refusedFramesComplete: Bool?
    private let completionHook: AFPacketTXCompletionHook?
    /// Frames were put on the TX ring since the last kick the kernel took.
    private var needsKick = false
    public private(set) var counters: AFXDPTXCounters
    /// The most completion entries one scan takes: the completion ring's size.
    private let scanMax: UInt32
    #if DEBUG
    /// Test seam (debug builds only): option words for the next descriptors, front first, instead of
    /// 0, so a test can make the kernel refuse a descriptor on purpose (unknown option bits).
    var injectedDescriptorOptions: [UInt32] = []
    #endif

    /// Opens a TX-only socket on `configuration.interface` / `queue` in the calling thread's
    /// namespace (no XDP program is attached for it). Buffers given to it return to `pool`.
    public init(configuration: AFXDPConfiguration, pool: BufferPool,
                completionHook: AFPacketTXCompletionHook? = nil) throws(AFXDPError) {
        let socket = try AFXDPSocket(configuration: configuration, receive: false)
        let frames = configuration.frameCount
        self.statistics = AFXDPTXStatistics(fd: socket.fd)
        self.configuration = configuration
        self.pool = pool
        self.socket = socket
        self.freeFrames = .allocate(capacity: frames)
        for frame in 0..<frames { freeFrames[frame] = UInt32(frames - 1 - frame) }  // frame 0 on top
        self.freeCount = frames
        self.tags = .allocate(capacity: frames)
        self.tags.initialize(repeating: 0, count: frames)
        self.lengths = .allocate(capacity: frames)
        self.lengths.initialize(repeating: 0, count: frames)
        self.inFlight = .allocate(capacity: frames)
        self.inFlight.initialize(repeating: 0, count: frames)
        self.frameRecords = .allocate(capacity: frames)
        self.frameRecords.initialize(repeating: AFPacketTXSlotRecord(flowHash: 0, length: 0, enqueueNs: 0), count: frames)
        self.completionHook = completionHook
        self.counters = AFXDPTXCounters()
        self.scanMax = UInt32(configuration.ringSize)
    }

    deinit {
        statistics.detach()
        freeFrames.deallocate()
        tags.deallocate()
        lengths.deallocate()
        inFlight.deallocate()
        frameRecords.deallocate()
    }

    /// Frames on the TX ring or in flight (not yet seen on the completion ring).
    public var pendingCount: Int { configuration.frameCount - freeCount }

    /// Copies the buffers in `items` (pool indices, in order) into free UMEM frames, puts them on the
    /// TX ring, frees each buffer once copied, and kicks once. Stops at the first buffer that finds no
    /// free frame or TX slot even after a completion scan: it and the rest stay the caller's. Malformed
    /// lengths are dropped, freed and counted. Owner thread only; at most `Limits.burstCountMax` items.
    public mutating func transmitBurst(_ items: UnsafeBufferPointer<UInt64>) -> AFPacketTXBurst {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        let state = socket.state
        // Short of frames or slots: reclaim; still short, kick what waits (copy mode completes frames
        // inside sendto) and reclaim once more.
        for _ in 0..<2 where freeCount < items.count
            || sluice_xdp_prod_free(&state.pointee.tx, UInt32(items.count)) < UInt32(items.count) {
            if reapCompletions() == 0 && pendingCount > 0 { kick() }
        }
        // Still no free frame: perhaps every one left went to descriptors the kernel refused. One
        // getsockopt, only on this starved path.
        if freeCount == 0 { reclaimRejected() }
        let slots = Int(min(sluice_xdp_prod_free(&state.pointee.tx, UInt32(items.count)), UInt32(freeCount)))
        var burst = AFPacketTXBurst(taken: 0, queued: 0)
        let first = state.pointee.tx.cached_prod
        let area = socket.area
        let frameSize = configuration.frameSizeBytes
        let enqueueNs = completionHook == nil ? 0 : Clock.monotonicNs()
        while burst.taken < items.count {
            let index = UInt32(truncatingIfNeeded: items[burst.taken])
            let length = Int(pool.metadata(at: index).pointee.length)
            let bytes = pool.bytes(at: index)
            if length < AFXDPLimits.ethernetHeaderBytes {
                counters.frameTooShort &+= 1
            } else if length > min(bytes.count, frameSize) {
                counters.frameTooLong &+= 1
            } else {
                guard burst.queued < slots else { break }
                freeCount -= 1
                let frame = freeFrames[freeCount]
                let address = Int(frame) * frameSize
                (area + address).copyMemory(from: bytes.baseAddress!, byteCount: length)
                let metadata = pool.metadata(at: index)
                tags[Int(frame)] = UInt32(metadata.pointee.sourceID)
                lengths[Int(frame)] = UInt32(length)
                inFlight[Int(frame)] = 1
                frameRecords[Int(frame)] = AFPacketTXSlotRecord(flowHash: metadata.pointee.flowHash,
                                                                length: UInt32(length), enqueueNs: enqueueNs)
                var options: UInt32 = 0
                #if DEBUG
                if !injectedDescriptorOptions.isEmpty { options = injectedDescriptorOptions.removeFirst() }
                #endif
                let descriptor = sluice_xdp_desc_at(&state.pointee.tx, first &+ UInt32(burst.queued))!
                descriptor.pointee = sluice_xdp_desc(addr: UInt64(address), len: UInt32(length), options: options)
                burst.queued += 1
            }
            burst.taken += 1
            pool.freeIndex(index)
        }
        if burst.queued > 0 {
            state.pointee.tx.cached_prod &+= UInt32(burst.queued)
            sluice_xdp_prod_submit(&state.pointee.tx, UInt32(burst.queued))
            counters.queued &+= UInt64(burst.queued)
            needsKick = true
        }
        kickIfNeeded()
        statistics.publish(counters)
        return burst
    }

    /// Transmits what fits and drops the rest as `ringFull` (freed): the last stage of a pipeline
    /// cannot push back. Returns how many frames were queued. Owner thread only; never blocks.
    public mutating func transmitOrDrop(_ items: UnsafeBufferPointer<UInt64>) -> Int {
        let burst = transmitBurst(items)
        if burst.taken < items.count {
            for position in burst.taken..<items.count { pool.freeIndex(UInt32(truncatingIfNeeded: items[position])) }
            counters.ringFull &+= UInt64(items.count - burst.taken)
            statistics.publish(counters)
        }
        return burst.queued
    }

    /// Kicks when frames wait and the kernel asks for it (copy mode always does). Owner thread only.
    public mutating func kickIfNeeded() {
        guard needsKick || pendingCount > 0 else { return }
        if sluice_xdp_needs_wakeup(&socket.state.pointee.tx) != 0 { kick() } else { needsKick = false }
    }

    /// `sendto(MSG_DONTWAIT)`: the kernel sends a bounded batch from the TX ring. EAGAIN, EBUSY and
    /// ENOBUFS leave frames queued for the next kick (`kickRetries`). Returns true if the kick took.
    @discardableResult
    public mutating func kick() -> Bool {
        counters.kicks &+= 1
        let rc = sluice_xdp_kick_tx(socket.fd)
        if rc == 0 {
            needsKick = false
            return true
        }
        if rc == -Errno.resourceTemporarilyUnavailable.rawValue || rc == -Errno.noBufferSpace.rawValue
            || rc == -Errno.resourceBusy.rawValue
        {
            counters.kickRetries &+= 1
        } else {
            counters.kickErrors &+= 1
            counters.lastKickErrno = -rc
        }
        return false
    }

    /// The completion scan: takes every entry of the completion ring (at most its size), calls the
    /// completion hook once per frame, oldest first, and puts the frames back on the free stack.
    /// Returns how many. Owner thread only; never blocks.
    @discardableResult
    public mutating func reapCompletions() -> Int {
        let state = socket.state
        guard pendingCount > 0 else { return 0 }
        var bytes: UInt64 = 0
        var completed: UInt32 = 0
        // The free stack has room for every frame: only frames marked in flight come back to it.
        let taken = sluice_xdp_tx_complete(&state.pointee.completion, UInt32(configuration.frameSizeBytes),
                                           UInt32(configuration.frameCount), scanMax, tags, lengths, inFlight,
                                           completionHook?.function, completionHook?.context,
                                           freeFrames + freeCount, &completed, &bytes)
        guard taken > 0 else { return 0 }
        counters.invalidCompletions &+= UInt64(taken - completed)
        freeCount += Int(completed)
        precondition(freeCount <= configuration.frameCount, "the in-flight marks let no frame complete twice")
        counters.packets &+= UInt64(completed)
        counters.bytes &+= bytes
        statistics.publish(counters)
        return Int(completed)
    }

    /// Takes back the frames whose descriptors the kernel refused, on kernels that never complete
    /// them. Such a kernel consumes the descriptor, counts it in XDP_STATISTICS tx_invalid_descs and
    /// never puts its frame on the completion ring, so which frames they were cannot be told while
    /// others are still in flight. Only when the kernel has consumed every descriptor submitted and
    /// the frames still pending are exactly the newly refused ones are they known: then each goes
    /// back to the free stack, reaches the hook with `statusRejected` and counts as `rejected`.
    /// Fewer pending than refused shows a kernel that completes refused frames (6.18): from then on
    /// nothing is taken back (`refusedFramesComplete`). Copy mode copies a frame out of the UMEM when
    /// it consumes the descriptor, so a consumed frame's UMEM is never read again. Returns how many.
    /// Owner thread only; one getsockopt when the TX ring is empty and refusals are in question.
    @discardableResult
    public mutating func reclaimRejected() -> Int {
        let state = socket.state
        guard refusedFramesComplete != true, sluice_xdp_prod_outstanding(&state.pointee.tx) == 0 else { return 0 }
        reapCompletions()
        guard let stats = try? AFXDPSocket.statistics(fd: socket.fd) else { return 0 }
        counters.kernelInvalid = stats.tx_invalid_descs
        let refused = stats.tx_invalid_descs &- rejectedSeen
        guard refused > 0 else { return 0 }
        // Every descriptor was consumed: on a kernel that keeps refused frames, at least `refused`
        // frames are still pending. Fewer: the kernel completed some of them.
        guard UInt64(pendingCount) >= refused else {
            refusedFramesComplete = true
            return 0
        }
        guard UInt64(pendingCount) == refused else { return 0 }
        var reclaimed = 0
        for frame in 0..<configuration.frameCount where inFlight[frame] != 0 {
            inFlight[frame] = 0
            if let hook = completionHook {
                hook.function(hook.context, UInt32(frame), tags[frame], lengths[frame], AFPacketTXCompletionHook.statusRejected)
            }
            freeFrames[freeCount] = UInt32(frame)
            freeCount += 1
            reclaimed += 1
        }
        precondition(UInt64(reclaimed) == refused, "pending frames are the in-flight marks")
        refusedFramesComplete = false
        rejectedSeen = stats.tx_invalid_descs
        counters.rejected &+= UInt64(reclaimed)
        statistics.publish(counters)
        return reclaimed
    }

    /// Kicks and scans until every queued frame is complete or `timeoutNs` passes, sleeping 50 µs
    /// between rounds. Returns true if nothing is pending. Blocks: for shutdown, not a hot loop.
    public mutating func flush(timeoutNs: UInt64) -> Bool {
        let deadline = sluice_monotonic_ns() &+ timeoutNs
        while true {
            reapCompletions()
            if pendingCount == 0 { return true }
            kick()
            reapCompletions()
            reclaimRejected()
            if pendingCount == 0 { return true }
            if sluice_monotonic_ns() >= deadline {
                counters.unsentAtFinish = UInt64(pendingCount)
                statistics.publish(counters)
                return false
            }
            usleep(50)
        }
    }
}
