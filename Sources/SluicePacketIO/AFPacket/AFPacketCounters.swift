// Path: Sources/SluicePacketIO/AFPacket/AFPacketCounters.swift — what the AF_PACKET port counts:
// plain values for the owning thread, atomics for everyone else, and the kernel's drop counters.
import CShims
import SluiceCore
import Synchronization
import SystemPackage

/// Why the AF_PACKET port let a packet go without delivering or sending it.
public enum AFPacketDropReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// RX: the buffer pool had no free buffer for a received frame; the frame was skipped.
    case poolExhausted
    /// TX: every ring slot was still queued or in flight.
    case ringFull
    /// TX: shorter than an Ethernet header, which the kernel would reject.
    case frameTooShort
    /// TX: longer than a ring slot or the interface's MTU allows, which the kernel would reject.
    case frameTooLong

    public var description: String {
        switch self {
        case .poolExhausted: "pool-exhausted"
        case .ringFull: "tx-ring-full"
        case .frameTooShort: "tx-frame-too-short"
        case .frameTooLong: "tx-frame-too-long"
        }
    }
}

/// A receiver's counters at one moment.
public struct AFPacketRXCounters: Sendable, Equatable {
    /// Frames copied into pool buffers and handed on.
    public var packets: UInt64 = 0
    /// Bytes copied (after truncation).
    public var bytes: UInt64 = 0
    /// Frames longer than a pool buffer, handed on cut to the buffer's size.
    public var truncated: UInt64 = 0
    /// Frames skipped because the pool was empty (`AFPacketDropReason.poolExhausted`).
    public var poolExhausted: UInt64 = 0
    /// Blocks taken from the kernel and given back.
    public var blocks: UInt64 = 0
    /// PACKET_STATISTICS tp_packets, summed over reads: frames the socket accepted, drops included.
    public var kernelPackets: UInt64 = 0
    /// PACKET_STATISTICS tp_drops: frames lost because the ring was full.
    public var kernelDrops: UInt64 = 0
    /// PACKET_STATISTICS tp_freeze_q_cnt: times the ring froze (every block held by user space).
    public var kernelFreezeQueueCount: UInt64 = 0

    public init() {}

    /// Drops by reason, kernel drops included as "kernel-ring-full"; only reasons that occurred.
    public var drops: [(reason: String, count: UInt64)] {
        var drops: [(reason: String, count: UInt64)] = []
        if poolExhausted > 0 { drops.append((AFPacketDropReason.poolExhausted.description, poolExhausted)) }
        if kernelDrops > 0 { drops.append(("kernel-ring-full", kernelDrops)) }
        return drops
    }
}

/// A transmitter's counters at one moment.
public struct AFPacketTXCounters: Sendable, Equatable {
    /// Frames copied into the ring and marked for sending.
    public var queued: UInt64 = 0
    /// Frames the kernel finished sending (seen back as TP_STATUS_AVAILABLE by the completion scan).
    public var packets: UInt64 = 0
    /// Bytes of those.
    public var bytes: UInt64 = 0
    /// Frames the kernel rejected (TP_STATUS_WRONG_FORMAT).
    public var wrongFormat: UInt64 = 0
    /// Kicks (`sendto`) made, and those the device pushed back with EAGAIN or ENOBUFS (the frames stay
    /// queued and the next kick retries them), and those that failed otherwise.
    public var kicks: UInt64 = 0
    public var kickRetries: UInt64 = 0
    public var kickErrors: UInt64 = 0
    /// errno of the last failed kick, 0 if none.
    public var lastKickErrno: Int32 = 0
    /// Frames dropped before queueing, by reason.
    public var ringFull: UInt64 = 0
    public var frameTooShort: UInt64 = 0
    public var frameTooLong: UInt64 = 0

    public init() {}

    public func count(_ reason: AFPacketDropReason) -> UInt64 {
        switch reason {
        case .poolExhausted: 0
        case .ringFull: ringFull
        case .frameTooShort: frameTooShort
        case .frameTooLong: frameTooLong
        }
    }

    /// Drops by reason, rejected frames included as "tx-wrong-format"; only reasons that occurred.
    public var drops: [(reason: String, count: UInt64)] {
        var drops: [(reason: String, count: UInt64)] = []
        for reason in AFPacketDropReason.allCases where count(reason) > 0 {
            drops.append((reason.description, count(reason)))
        }
        if wrongFormat > 0 { drops.append(("tx-wrong-format", wrongFormat)) }
        return drops
    }
}

/// A receiver's counters for other threads. The receiving thread publishes its plain counters here
/// after every burst that did work (relaxed stores, one writer); the kernel's counters are read from
/// the socket on request by any thread, under a lock, and summed (each read resets the kernel's).
public final class AFPacketRXStatistics: Sendable {
    let packets = Atomic<UInt64>(0)
    let bytes = Atomic<UInt64>(0)
    let truncated = Atomic<UInt64>(0)
    let poolExhausted = Atomic<UInt64>(0)
    let blocks = Atomic<UInt64>(0)
    let kernelPackets = Atomic<UInt64>(0)
    let kernelDrops = Atomic<UInt64>(0)
    let kernelFreezeQueueCount = Atomic<UInt64>(0)
    /// The socket to read PACKET_STATISTICS from; -1 once the receiver has closed it.
    private let socket: Mutex<Int32>

    init(fd: Int32) { socket = Mutex(fd) }

    /// Everything counted so far. Kernel counters are as of the last `refreshKernelCounters()`.
    public func snapshot() -> AFPacketRXCounters {
        var counters = AFPacketRXCounters()
        counters.packets = packets.load(ordering: .relaxed)
        counters.bytes = bytes.load(ordering: .relaxed)
        counters.truncated = truncated.load(ordering: .relaxed)
        counters.poolExhausted = poolExhausted.load(ordering: .relaxed)
        counters.blocks = blocks.load(ordering: .relaxed)
        counters.kernelPackets = kernelPackets.load(ordering: .relaxed)
        counters.kernelDrops = kernelDrops.load(ordering: .relaxed)
        counters.kernelFreezeQueueCount = kernelFreezeQueueCount.load(ordering: .relaxed)
        return counters
    }

    /// Reads PACKET_STATISTICS and adds it to the kernel counters. Any thread; one system call.
    /// After the receiver is gone this does nothing (its last read happened as it closed).
    public func refreshKernelCounters() throws(SyscallError) {
        let rc: Int32 = socket.withLock { fd in
            guard fd >= 0 else { return 0 }
            var stats = sluice_afpacket_rx_stats()
            let rc = sluice_afpacket_rx_statistics(fd, &stats)
            guard rc == 0 else { return rc }
            Self.add(kernelPackets, UInt64(stats.packets))
            Self.add(kernelDrops, UInt64(stats.drops))
            Self.add(kernelFreezeQueueCount, UInt64(stats.freeze_queue_count))
            return 0
        }
        guard rc == 0 else { throw SyscallError("getsockopt(PACKET_STATISTICS)", negatedErrno: rc) }
    }

    /// Takes the last kernel counters and forgets the socket, before the receiver closes it.
    func detach() {
        try? refreshKernelCounters()
        socket.withLock { $0 = -1 }
    }

    /// Publishes the owning thread's counters. Owner only: load + store, no read-modify-write.
    @inline(__always) func publish(_ counters: AFPacketRXCounters) {
        packets.store(counters.packets, ordering: .relaxed)
        bytes.store(counters.bytes, ordering: .relaxed)
        truncated.store(counters.truncated, ordering: .relaxed)
        poolExhausted.store(counters.poolExhausted, ordering: .relaxed)
        blocks.store(counters.blocks, ordering: .relaxed)
    }

    private static func add(_ counter: borrowing Atomic<UInt64>, _ amount: UInt64) {
        counter.add(amount, ordering: .relaxed)
    }
}

/// A transmitter's counters for other threads: the transmitting thread publishes after every burst
/// and completion scan that did work (relaxed stores, one writer).
public final class AFPacketTXStatistics: Sendable {
    let queued = Atomic<UInt64>(0)
    let packets = Atomic<UInt64>(0)
    let bytes = Atomic<UInt64>(0)
    let wrongFormat = Atomic<UInt64>(0)
    let kicks = Atomic<UInt64>(0)
    let kickRetries = Atomic<UInt64>(0)
    let kickErrors = Atomic<UInt64>(0)
    let lastKickErrno = Atomic<Int32>(0)
    let ringFull = Atomic<UInt64>(0)
    let frameTooShort = Atomic<UInt64>(0)
    let frameTooLong = Atomic<UInt64>(0)

    init() {}

    /// Everything counted so far, as of the transmitting thread's last publication.
    public func snapshot() -> AFPacketTXCounters {
        var counters = AFPacketTXCounters()
        counters.queued = queued.load(ordering: .relaxed)
        counters.packets = packets.load(ordering: .relaxed)
        counters.bytes = bytes.load(ordering: .relaxed)
        counters.wrongFormat = wrongFormat.load(ordering: .relaxed)
        counters.kicks = kicks.load(ordering: .relaxed)
        counters.kickRetries = kickRetries.load(ordering: .relaxed)
        counters.kickErrors = kickErrors.load(ordering: .relaxed)
        counters.lastKickErrno = lastKickErrno.load(ordering: .relaxed)
        counters.ringFull = ringFull.load(ordering: .relaxed)
        counters.frameTooShort = frameTooShort.load(ordering: .relaxed)
        counters.frameTooLong = frameTooLong.load(ordering: .relaxed)
        return counters
    }

    /// Publishes the owning thread's counters. Owner only.
    @inline(__always) func publish(_ counters: AFPacketTXCounters) {
        queued.store(counters.queued, ordering: .relaxed)
        packets.store(counters.packets, ordering: .relaxed)
        bytes.store(counters.bytes, ordering: .relaxed)
        wrongFormat.store(counters.wrongFormat, ordering: .relaxed)
        kicks.store(counters.kicks, ordering: .relaxed)
        kickRetries.store(counters.kickRetries, ordering: .relaxed)
        kickErrors.store(counters.kickErrors, ordering: .relaxed)
        lastKickErrno.store(counters.lastKickErrno, ordering: .relaxed)
        ringFull.store(counters.ringFull, ordering: .relaxed)
        frameTooShort.store(counters.frameTooShort, ordering: .relaxed)
        frameTooLong.store(counters.frameTooLong, ordering: .relaxed)
    }
}
