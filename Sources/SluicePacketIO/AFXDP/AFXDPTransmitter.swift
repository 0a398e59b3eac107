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
/// every frame the kernel reports sent reaches the hook exactly once.
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
    private let completionHook: AFPacketTXCompletionHook?
    /// Frames were put on the TX ring since the last kick the kernel took.
    private var needsKick = false
    public private(set) var counters: AFXDPTXCounters
    /// The most completion entries one scan takes: the completion ring's size.
    private let scanMax: UInt32

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
        self.completionHook = completionHook
        self.counters = AFXDPTXCounters()
        self.scanMax = UInt32(configuration.ringSize)
    }

    deinit {
        statistics.detach()
        freeFrames.deallocate()
        tags.deallocate()
        lengths.deallocate()
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
        let slots = Int(min(sluice_xdp_prod_free(&state.pointee.tx, UInt32(items.count)), UInt32(freeCount)))
        var burst = AFPacketTXBurst(taken: 0, queued: 0)
        let first = state.pointee.tx.cached_prod
        let area = socket.area
        let frameSize = configuration.frameSizeBytes
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
                tags[Int(frame)] = UInt32(pool.metadata(at: index).pointee.sourceID)
                lengths[Int(frame)] = UInt32(length)
                let descriptor = sluice_xdp_desc_at(&state.pointee.tx, first &+ UInt32(burst.queued))!
                descriptor.pointee = sluice_xdp_desc(addr: UInt64(address), len: UInt32(length), options: 0)
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
        var bytes: UInt64 = 0
        // The free stack has room for every frame: completions return frames taken from it.
        let completed = sluice_xdp_tx_complete(&state.pointee.completion, UInt32(configuration.frameSizeBytes),
                                               min(scanMax, UInt32(pendingCount)), tags, lengths,
                                               completionHook?.function, completionHook?.context,
                                               freeFrames + freeCount, &bytes)
        guard completed > 0 else { return 0 }
        freeCount += Int(completed)
        precondition(freeCount <= configuration.frameCount, "more completions than frames sent")
        counters.packets &+= UInt64(completed)
        counters.bytes &+= bytes
        statistics.publish(counters)
        return Int(completed)
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
            if pendingCount == 0 { return true }
            if sluice_monotonic_ns() >= deadline {
                statistics.publish(counters)
                return false
            }
            usleep(50)
        }
    }
}
