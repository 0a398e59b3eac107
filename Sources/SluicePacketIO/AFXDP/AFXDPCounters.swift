// Path: Sources/SluicePacketIO/AFXDP/AFXDPCounters.swift — what the AF_XDP port counts: plain values for
// the owning thread, atomics for everyone else, and the kernel's XDP_STATISTICS.
import CShims
import SluiceCore
import Synchronization

/// A receiver's counters at one moment.
public struct AFXDPRXCounters: Sendable, Equatable {
    /// Frames copied into pool buffers and handed on.
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    /// Frames longer than a pool buffer, handed on cut to the buffer's size.
    public var truncated: UInt64 = 0
    /// Frames skipped because the pool was empty (their UMEM frame went straight back to the fill ring).
    public var poolExhausted: UInt64 = 0
    /// RX descriptors pointing outside the UMEM or longer than a frame: skipped, never read.
    public var invalidDescriptors: UInt64 = 0
    /// UMEM frames that found the fill ring without room (its consumer index not yet advanced by the
    /// kernel): kept and given back at the next burst.
    public var refillsDeferred: UInt64 = 0
    /// Times the fill ring asked for a wakeup (recvfrom) after a refill.
    public var fillWakeups: UInt64 = 0
    /// XDP_STATISTICS rx_dropped: frames the kernel dropped for the socket (RX ring full among them).
    public var kernelDropped: UInt64 = 0
    /// XDP_STATISTICS rx_ring_full: dropped because the RX ring was full.
    public var kernelRingFull: UInt64 = 0
    /// XDP_STATISTICS rx_fill_ring_empty_descs: times a frame found no UMEM frame in the fill ring.
    public var fillRingEmpty: UInt64 = 0
    /// XDP_STATISTICS rx_invalid_descs.
    public var kernelInvalid: UInt64 = 0

    public init() {}

    /// Drops by reason, only reasons that occurred.
    public var drops: [(reason: String, count: UInt64)] {
        var drops: [(reason: String, count: UInt64)] = []
        if poolExhausted > 0 { drops.append(("pool-exhausted", poolExhausted)) }
        if kernelDropped > 0 { drops.append(("xdp-rx-dropped", kernelDropped)) }
        return drops
    }
}

/// A transmitter's counters at one moment.
public struct AFXDPTXCounters: Sendable, Equatable {
    /// Frames copied into the UMEM and put on the TX ring.
    public var queued: UInt64 = 0
    /// Frames seen on the completion ring: those sent and, on a kernel that completes refused
    /// descriptors' frames (`refusedFramesComplete`), the refused ones too.
    public var completions: UInt64 = 0
    /// Bytes of the frames seen on the completion ring (refused ones included where they complete).
    public var bytes: UInt64 = 0
    /// Learnt when the socket opened: the kernel completes refused descriptors' frames (true), never
    /// does (false), or could not be told (nil).
    public var refusedFramesComplete: Bool?
    /// Kicks (`sendto`), those the kernel pushed back (EAGAIN, EBUSY, ENOBUFS: frames stay queued),
    /// and those that failed otherwise, with the last such errno.
    public var kicks: UInt64 = 0
    public var kickRetries: UInt64 = 0
    public var kickErrors: UInt64 = 0
    public var lastKickErrno: Int32 = 0
    /// Frames dropped before queueing: no free UMEM frame or TX slot (last stage only), too short, too long.
    public var ringFull: UInt64 = 0
    public var frameTooShort: UInt64 = 0
    public var frameTooLong: UInt64 = 0
    /// XDP_STATISTICS tx_invalid_descs since the socket opened (the open-time probe's own refusal
    /// left out): descriptors the kernel refused.
    public var kernelInvalid: UInt64 = 0
    /// Frames whose descriptor the kernel refused, taken back into the free frames (dropped: not sent).
    public var rejected: UInt64 = 0
    /// Completion entries naming no frame in flight (outside the UMEM, or already complete): skipped.
    public var invalidCompletions: UInt64 = 0
    /// Frames still on the TX ring or in flight when `flush` gave up (at its last call).
    public var unsentAtFinish: UInt64 = 0

    public init() {}

    /// Frames the kernel sent: the completions, less the refused descriptors where their frames
    /// complete too. So `packets` + the drops of `drops` = `queued` + the drops before queueing, once
    /// nothing is pending.
    public var packets: UInt64 {
        guard refusedFramesComplete == true else { return completions }
        return completions &- min(kernelInvalid, completions)
    }

    /// Drops by reason, only reasons that occurred. Refused descriptors count once (`xdp-tx-invalid`),
    /// whether their frames complete, are taken back (`rejected`) or are still pending at finish.
    public var drops: [(reason: String, count: UInt64)] {
        var drops: [(reason: String, count: UInt64)] = []
        if ringFull > 0 { drops.append(("tx-ring-full", ringFull)) }
        if frameTooShort > 0 { drops.append(("tx-frame-too-short", frameTooShort)) }
        if frameTooLong > 0 { drops.append(("tx-frame-too-long", frameTooLong)) }
        let refused = max(kernelInvalid, rejected)
        if refused > 0 { drops.append(("xdp-tx-invalid", refused)) }
        if unsentAtFinish > 0 { drops.append(("tx-unsent-at-finish", unsentAtFinish)) }
        return drops
    }
}

/// A receiver's counters for other threads: the receiving thread publishes after each burst that did
/// work (relaxed stores, one writer); the kernel's counters are read on request, under a lock that
/// also guards the fd against the receiver's close.
public final class AFXDPRXStatistics: Sendable {
    private let published = Mutex(AFXDPRXCounters())
    private let socket: Mutex<Int32>

    init(fd: Int32) { socket = Mutex(fd) }

    /// Everything counted so far; kernel counters as of the last `refreshKernelCounters()`.
    public func snapshot() -> AFXDPRXCounters { published.withLock { $0 } }

    /// Reads XDP_STATISTICS (running totals). Any thread; one system call; nothing after close.
    public func refreshKernelCounters() throws(SyscallError) {
        // Under the lock, so the receiver cannot close (and the fd be reused) mid-read.
        var stats = sluice_xdp_stats()
        let rc: Int32 = socket.withLock { fd in fd >= 0 ? sluice_xdp_statistics(fd, &stats) : 1 }
        guard rc <= 0 else { return }
        guard rc == 0 else { throw SyscallError("getsockopt(XDP_STATISTICS)", negatedErrno: rc) }
        published.withLock {
            $0.kernelDropped = stats.rx_dropped
            $0.kernelRingFull = stats.rx_ring_full
            $0.fillRingEmpty = stats.rx_fill_ring_empty_descs
            $0.kernelInvalid = stats.rx_invalid_descs
        }
    }

    func detach() {
        try? refreshKernelCounters()
        socket.withLock { $0 = -1 }
    }

    /// Publishes the owner's counters, keeping the kernel's. Owner only; an uncontended lock per burst
    /// that did work (readers are rare: metrics scrapes).
    func publish(_ counters: AFXDPRXCounters) {
        published.withLock {
            let kernel = $0
            $0 = counters
            $0.kernelDropped = kernel.kernelDropped
            $0.kernelRingFull = kernel.kernelRingFull
            $0.fillRingEmpty = kernel.fillRingEmpty
            $0.kernelInvalid = kernel.kernelInvalid
        }
    }
}

/// A transmitter's counters for other threads, published by the transmitting thread.
public final class AFXDPTXStatistics: Sendable {
    private let published = Mutex(AFXDPTXCounters())
    private let socket: Mutex<Int32>
    /// tx_invalid_descs when the socket opened (the open-time probe's refusal included).
    private let invalidBaseline: UInt64

    init(fd: Int32, invalidBaseline: UInt64) {
        socket = Mutex(fd)
        self.invalidBaseline = invalidBaseline
    }

    public func snapshot() -> AFXDPTXCounters { published.withLock { $0 } }

    /// Reads XDP_STATISTICS tx_invalid_descs. Any thread; nothing after close.
    public func refreshKernelCounters() throws(SyscallError) {
        var stats = sluice_xdp_stats()
        let rc: Int32 = socket.withLock { fd in fd >= 0 ? sluice_xdp_statistics(fd, &stats) : 1 }
        guard rc <= 0 else { return }
        guard rc == 0 else { throw SyscallError("getsockopt(XDP_STATISTICS)", negatedErrno: rc) }
        published.withLock { $0.kernelInvalid = stats.tx_invalid_descs &- invalidBaseline }
    }

    func detach() {
        try? refreshKernelCounters()
        socket.withLock { $0 = -1 }
    }

    func publish(_ counters: AFXDPTXCounters) {
        published.withLock {
            let invalid = max($0.kernelInvalid, counters.kernelInvalid)  // running totals: the later is larger
            $0 = counters
            $0.kernelInvalid = invalid
        }
    }
}
