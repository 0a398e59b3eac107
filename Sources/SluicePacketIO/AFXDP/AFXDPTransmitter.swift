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
/// every frame the kernel puts on the completion ring reaches the hook exactly once. Descriptors the
/// kernel refuses (XDP_STATISTICS tx_invalid_descs) count as `xdp-tx-invalid` drops, once. Whether the
/// kernel completes their frames is learnt when the socket opens (`refusedFramesComplete`): if it does
/// (6.18), they reach the hook as sent and `packets` leaves them out; if it never does, they are taken
/// back by `reclaimRejected()` and reach the hook with `statusRejected`; unknown: never taken back.
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
    /// XDP_STATISTICS tx_invalid_descs at open, after the probe's own refused descriptor: counts start here.
    private let invalidBaseline: UInt64
    /// Refused descriptors (since open) already accounted for by `reclaimRejected()`.
    private var rejectedSeen: UInt64 = 0
    /// UMEM frames never used: frame 0 when the open-time probe left it possibly still in flight.
    private let reservedCount: Int
    /// `reclaimRejected()` from a starved burst not before this time (one getsockopt per 100 µs at most).
    private var reclaimNotBeforeNs: UInt64 = 0
    /// Learnt when the socket opened (`sluice_xdp_tx_learn_refused`): whether this kernel puts the
    /// frames of refused descriptors on the completion ring (true: 6.18) or never does (false). nil:
    /// the probe could not tell; then nothing is ever taken back (a frame taken back that completes
    /// later would free the frame's next use).
    public var refusedFramesComplete: Bool? { counters.refusedFramesComplete }
    private let completionHook: AFPacketTXCompletionHook?
    /// Frames were put on the TX ring since the last kick the kernel took.
    private var needsKick = false
    public private(set) var counters: AFXDPTXCounters
    /// The most completion entries one scan takes: the completion ring's size.
    private let scanMax: UInt32
    #if DEBUG
    /// Test seam (debug builds only): of the first `injectedOptionLimit` descriptors queued, those whose
    /// sequence number (from 0) is `injectedOptionPeriod - 1` modulo the period get `injectedOption`
    /// instead of 0, so a test can make the kernel refuse descriptors on purpose (unknown option bits).
    var injectedOptionPeriod = 0
    var injectedOptionLimit: UInt64 = 0
    var injectedOption: UInt32 = 0
    #endif
    /// An option bit no kernel defines: a descriptor carrying it is refused (the open-time probe's).
    static let undefinedOption: UInt32 = 0x80
    /// Rounds of 100 µs the open-time probe waits for its refused frame to complete.
    static let learnRoundsMax: UInt32 = 100

    /// Opens a TX-only socket on `configuration.interface` / `queue` in the calling thread's
    /// namespace (no XDP program is attached for it). Buffers given to it return to `pool`.
    public init(configuration: AFXDPConfiguration, pool: BufferPool,
                completionHook: AFPacketTXCompletionHook? = nil) throws(AFXDPError) {
        let socket = try AFXDPSocket(configuration: configuration, receive: false)
        let frames = configuration.frameCount
        // One refused descriptor tells whether this kernel completes refused frames; it is never sent.
        var invalid: UInt64 = 0
        let learnt = sluice_xdp_tx_learn_refused(socket.state, Self.undefinedOption, Self.learnRoundsMax, &invalid)
        // -EPROTO: frame 0 may still complete; it is never used, so no completion can free a later use.
        let reserved = learnt == -Errno.protocolError.rawValue ? 1 : 0
        var counters = AFXDPTXCounters()
        counters.refusedFramesComplete = learnt == 1 ? true : learnt == 0 ? false : nil
        self.invalidBaseline = invalid
        self.reservedCount = reserved
        let statistics = AFXDPTXStatistics(fd: socket.fd, invalidBaseline: invalid)
        statistics.publish(counters)
        self.statistics = statistics
        self.configuration = configuration
        self.pool = pool
        self.socket = socket
        self.freeFrames = .allocate(capacity: frames)
        for frame in 0..<frames { freeFrames[frame] = UInt32(frames - 1 - frame) }  // frame 0 on top
        self.freeCount = frames - reserved
        self.tags = .allocate(capacity: frames)
        self.tags.initialize(repeating: 0, count: frames)
        self.lengths = .allocate(capacity: frames)
        self.lengths.initialize(repeating: 0, count: frames)
        self.inFlight = .allocate(capacity: frames)
        self.inFlight.initialize(repeating: 0, count: frames)
        self.frameRecords = .allocate(capacity: frames)
        self.frameRecords.initialize(repeating: AFPacketTXSlotRecord(flowHash: 0, length: 0, enqueueNs: 0), count: frames)
        self.completionHook = completionHook
        self.counters = counters
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
    public var pendingCount: Int { configuration.frameCount - reservedCount - freeCount }

    /// Copies the buffers in `items` (pool indices, in order) into free UMEM frames, puts them on the
    /// TX ring, frees each buffer once copied, and kicks once. Stops at the first buffer that finds no
    /// free frame or TX slot even after a completion scan: it and the rest stay the caller's. Malformed
    /// lengths are dropped, freed and counted. Owner thread only; at most `Limits.burstCountMax` items.
    public mutating func transmitBurst(_ items: UnsafeBufferPointer<UInt64>) -> AFPacketTXBurst {
        let burst = queue(items)
        statistics.publish(counters)
        return burst
    }

    /// `transmitBurst` without publishing the counters (the caller publishes once per turn).
    private mutating func queue(_ items: UnsafeBufferPointer<UInt64>) -> AFPacketTXBurst {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        let state = socket.state
        // Short of frames or slots: reclaim; still short, kick what waits (copy mode completes frames
        // inside sendto) and reclaim once more.
        for _ in 0..<2 where freeCount < items.count
            || sluice_xdp_prod_free(&state.pointee.tx, UInt32(items.count)) < UInt32(items.count) {
            if reap() == 0 && pendingCount > 0 { kick() }
        }
        // Still no free frame: perhaps every one left went to descriptors the kernel refused and will
        // never complete. One getsockopt, only on this starved path and at most once per 100 µs.
        if freeCount == 0, refusedFramesComplete == false {
            let now = Clock.monotonicNs()
            if now >= reclaimNotBeforeNs {
                reclaimNotBeforeNs = now &+ 100_000
                reclaimRejected()
            }
        }
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
                let sequence = counters.queued &+ UInt64(burst.queued)
                if injectedOptionPeriod > 0, sequence < injectedOptionLimit,
                   sequence % UInt64(injectedOptionPeriod) == UInt64(injectedOptionPeriod - 1) {
                    options = injectedOption
                }
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
        return burst
    }

    /// Transmits what fits and drops the rest as `ringFull` (freed): the last stage of a pipeline
    /// cannot push back. Returns how many frames were queued. Owner thread only; never blocks.
    /// With `reaping`, the completion ring is scanned after the kick (copy mode completes frames inside
    /// it). Publishes the counters once.
    public mutating func transmitOrDrop(_ items: UnsafeBufferPointer<UInt64>, reaping: Bool = false) -> Int {
        let burst = queue(items)
        if burst.taken < items.count {
            for position in burst.taken..<items.count { pool.freeIndex(UInt32(truncatingIfNeeded: items[position])) }
            counters.ringFull &+= UInt64(items.count - burst.taken)
        }
        if reaping { reap() }
        statistics.publish(counters)
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
        let completed = reap()
        if completed > 0 { statistics.publish(counters) }
        return completed
    }

    /// `reapCompletions` without publishing the counters.
    @discardableResult
    private mutating func reap() -> Int {
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
        counters.completions &+= UInt64(completed)
        counters.bytes &+= bytes
        return Int(completed)
    }

    /// Takes back the frames whose descriptors the kernel refused, only on a kernel known (from the
    /// open-time probe) never to complete them: it consumes the descriptor, counts it in
    /// XDP_STATISTICS tx_invalid_descs and never puts its frame on the completion ring, so which frames
    /// they were cannot be told while others are still in flight. Only when the kernel has consumed
    /// every descriptor submitted and the frames still pending are exactly the newly refused ones are
    /// they known: then each goes back to the free stack, reaches the hook with `statusRejected` and
    /// counts as `rejected`. Copy mode copies a frame out of the UMEM when it consumes the descriptor,
    /// so a consumed frame's UMEM is never read again. Returns how many. Owner thread only; one
    /// getsockopt when the TX ring is empty.
    @discardableResult
    public mutating func reclaimRejected() -> Int {
        let state = socket.state
        guard refusedFramesComplete == false, sluice_xdp_prod_outstanding(&state.pointee.tx) == 0 else { return 0 }
        reap()
        guard let stats = try? AFXDPSocket.statistics(fd: socket.fd) else { return 0 }
        counters.kernelInvalid = stats.tx_invalid_descs &- invalidBaseline
        let refused = counters.kernelInvalid &- rejectedSeen
        // Not exactly the refused ones pending (more: some valid frames still in flight; fewer: the
        // kernel contradicts the probe): which frames they are cannot be told, so none is taken.
        guard refused > 0, UInt64(pendingCount) == refused else { return 0 }
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
        rejectedSeen = counters.kernelInvalid
        counters.rejected &+= UInt64(reclaimed)
        statistics.publish(counters)
        return reclaimed
    }

    /// Kicks and scans until every queued frame is complete or `timeoutNs` passes, sleeping 50 µs
    /// between rounds. Returns true if nothing is pending. Blocks: for shutdown, not a hot loop.
    public mutating func flush(timeoutNs: UInt64) -> Bool {
        let deadline = sluice_monotonic_ns() &+ timeoutNs
        while true {
            reap()
            if pendingCount == 0 { break }
            kick()
            reap()
            reclaimRejected()
            if pendingCount == 0 { break }
            if sluice_monotonic_ns() >= deadline {
                // Refused frames not taken back are still pending but already count as xdp-tx-invalid:
                // only the rest are unsent. (On a kernel that completes refused frames none is pending.)
                if let stats = try? AFXDPSocket.statistics(fd: socket.fd) {
                    counters.kernelInvalid = stats.tx_invalid_descs &- invalidBaseline
                }
                let refusedPending = refusedFramesComplete == true ? 0 : counters.kernelInvalid &- counters.rejected
                counters.unsentAtFinish = UInt64(pendingCount) &- min(UInt64(pendingCount), refusedPending)
                statistics.publish(counters)
                return false
            }
            usleep(50)
        }
        statistics.publish(counters)
        return true
    }
}
