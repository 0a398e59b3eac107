// Path: Sources/SluicePacketIO/AFPacket/AFPacketTransmitter.swift — TX: pool buffers copied into a
// PACKET_TX_RING, one sendto() per burst, and the completion scan that frees ring slots.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// Called by the completion scan once per ring slot the kernel is done with, oldest first, on the
/// transmitting thread: the TX free-buffer path, where a traffic controller learns what left the
/// host. Arguments: context, slot, tag (the frame's `PacketMetadata.sourceID`), length in bytes, and
/// status (`statusSent` or `statusRejected`). A C function pointer and context: no closure, no
/// reference counting on the completion path.
public struct AFPacketTXCompletionHook: @unchecked Sendable {  // unchecked: the context's owner guarantees it
    public typealias Function = @convention(c) (UnsafeMutableRawPointer?, UInt32, UInt32, UInt32, UInt32) -> Void
    public let function: Function
    public let context: UnsafeMutableRawPointer?

    /// The frame went out (TP_STATUS_AVAILABLE).
    public static let statusSent = UInt32(SLUICE_AFPACKET_STATUS_AVAILABLE)
    /// The kernel refused the frame (TP_STATUS_WRONG_FORMAT).
    public static let statusRejected = UInt32(SLUICE_AFPACKET_STATUS_WRONG_FORMAT)

    public init(_ function: Function, context: UnsafeMutableRawPointer?) {
        self.function = function
        self.context = context
    }
}

/// What the transmitter remembers of the frame in a TX slot, for the completion hook: the slot's
/// tag is the source id; this holds the rest of a completion event (`enqueueNs`: when the frame
/// was put on the ring).
@frozen
public struct AFPacketTXSlotRecord: Sendable {
    public var flowHash: UInt32
    public var length: UInt32
    public var enqueueNs: UInt64
}

/// What one `transmitBurst` did with the front of its input.
public struct AFPacketTXBurst: Sendable, Equatable {
    /// Buffers consumed from the front of the input (queued or dropped as malformed); all freed.
    public var taken: Int
    /// Of those, frames queued in the ring.
    public var queued: Int
}

/// Sends on one interface through a TPACKET_V2 TX ring. Owns its socket, mapping and slot tags: one
/// thread at a time transmits; move it there, never share it. Bursts never block or allocate.
public struct AFPacketTransmitter: ~Copyable {
    public let configuration: AFPacketTXConfiguration
    public let interfaceIndex: Int32
    /// The interface's MTU when the transmitter opened; frames longer than MTU + 14 (+ 4 with a VLAN
    /// tag) are dropped as `frameTooLong` instead of being handed to a kernel that would refuse them.
    public let mtu: Int
    /// Counters for other threads.
    public let statistics: AFPacketTXStatistics
    let pool: BufferPool
    private let socket: AFPacketSocket
    private let mapping: AFPacketMapping
    private let tags: UnsafeMutablePointer<UInt32>
    /// One record per slot, written when the slot is filled; read by the completion hook by slot.
    public let slotRecords: UnsafeMutablePointer<AFPacketTXSlotRecord>
    private var ring: sluice_afpacket_tx_ring
    private let completionHook: AFPacketTXCompletionHook?
    /// Frames were queued since the last kick that the kernel took in full.
    private var needsKick = false
    /// When the current burst started filling slots (CLOCK_MONOTONIC ns), recorded per slot.
    private var burstStartNs: UInt64 = 0
    /// The owning thread's counters, published to `statistics` after each call that did work.
    public private(set) var counters: AFPacketTXCounters
    #if DEBUG
    /// Test seam (debug builds only): return values the next kicks report instead of calling
    /// `sendto`, front first (`-ENOBUFS`, `-EAGAIN`, ...), so pushback paths are tested on purpose.
    var injectedKickResults: [Int32] = []
    #endif

    /// Opens the ring on `configuration.interface`, in the calling thread's network namespace:
    /// socket, PACKET_VERSION 2, PACKET_QDISC_BYPASS and PACKET_LOSS as configured, PACKET_TX_RING,
    /// mmap, bind (protocol 0: the socket receives nothing). Buffers given to it return to `pool`.
    public init(configuration: AFPacketTXConfiguration, pool: BufferPool,
                completionHook: AFPacketTXCompletionHook? = nil) throws(AFPacketError) {
        try configuration.validate()
        let index = try AFPacketSocket.interfaceIndex(configuration.interface)
        let socket = try AFPacketSocket()
        let mtu = sluice_afpacket_interface_mtu(socket.fd, configuration.interface)
        try socket.check(mtu, "ioctl(SIOCGIFMTU)")
        try socket.check(sluice_afpacket_set_version(socket.fd, SLUICE_AFPACKET_TPACKET_V2), "setsockopt(PACKET_VERSION)")
        if configuration.qdiscBypass {
            try socket.check(sluice_afpacket_set_qdisc_bypass(socket.fd, 1), "setsockopt(PACKET_QDISC_BYPASS)")
        }
        if configuration.discardMalformed {
            try socket.check(sluice_afpacket_set_loss(socket.fd, 1), "setsockopt(PACKET_LOSS)")
        }
        let blockSize = configuration.blockSizeBytes
        try socket.check(
            sluice_afpacket_set_tx_ring(socket.fd, UInt32(blockSize), UInt32(configuration.ringSizeBytes / blockSize),
                                        UInt32(configuration.frameSizeBytes)),
            "setsockopt(PACKET_TX_RING)")
        let mapping = try AFPacketMapping(socket: socket, sizeBytes: configuration.ringSizeBytes)
        try socket.check(sluice_afpacket_bind(socket.fd, index, 0), "bind(AF_PACKET)")
        let tags = UnsafeMutablePointer<UInt32>.allocate(capacity: configuration.frameCount)
        tags.initialize(repeating: 0, count: configuration.frameCount)
        var ring = sluice_afpacket_tx_ring()
        ring.ring = mapping.base.assumingMemoryBound(to: UInt8.self)
        ring.tags = tags
        ring.frame_size = UInt32(configuration.frameSizeBytes)
        ring.frame_count = UInt32(configuration.frameCount)
        ring.mask = UInt32(configuration.frameCount - 1)
        ring.data_size_max = UInt32(configuration.frameLengthMax)
        self.configuration = configuration
        self.interfaceIndex = index
        self.mtu = Int(mtu)
        self.statistics = AFPacketTXStatistics()
        self.pool = pool
        self.socket = socket
        self.mapping = mapping
        self.tags = tags
        self.slotRecords = .allocate(capacity: configuration.frameCount)
        self.slotRecords.initialize(repeating: AFPacketTXSlotRecord(flowHash: 0, length: 0, enqueueNs: 0),
                                    count: configuration.frameCount)
        self.ring = ring
        self.completionHook = completionHook
        self.counters = AFPacketTXCounters()
    }

    deinit {
        tags.deallocate()
        slotRecords.deallocate()
    }

    /// Whether the buffer at `index` is a frame this port takes (long enough for an Ethernet header,
    /// no longer than the MTU allows): the test `transmitBurst` applies before queueing it.
    public func canCarry(_ index: UInt32) -> Bool {
        let length = Int(pool.metadata(at: index).pointee.length)
        let bytes = pool.bytes(at: index)
        return length >= AFPacketLimits.ethernetHeaderBytes && length <= min(bytes.count, frameLengthMax(bytes))
    }

    /// Kicks the kernel if frames wait for it: queued since the last kick, or left by a kick that met
    /// a full socket buffer part-way (it reports success for what it took). Owner thread only.
    public mutating func kickIfNeeded() {
        if needsKick || sluice_afpacket_tx_has_untaken(&ring) != 0 { kick() }
    }

    /// Slots free for new frames now, after reclaiming what the kernel finished. Owner thread only.
    public mutating func freeSlotCount() -> Int {
        reapCompletions()
        return Int(sluice_afpacket_tx_free_count(&ring))
    }

    /// Frames queued or in flight (not yet seen complete).
    public var pendingCount: Int {
        var ring = self.ring
        return Int(sluice_afpacket_tx_pending_count(&ring))
    }

    /// Copies the buffers in `items` (pool indices, in order) into free ring slots, frees each buffer
    /// once copied, and kicks the kernel once (`sendto(MSG_DONTWAIT)`). Stops at the first buffer
    /// that finds the ring full even after a completion scan and a kick: that buffer and the rest
    /// stay the caller's. Malformed lengths are dropped, freed and counted. Owner thread only;
    /// never blocks, never allocates. At most `Limits.burstCountMax` items.
    public mutating func transmitBurst(_ items: UnsafeBufferPointer<UInt64>) -> AFPacketTXBurst {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        if sluice_afpacket_tx_free_count(&ring) < UInt32(items.count) { reapCompletions() }
        burstStartNs = sluice_monotonic_ns()  // the frames' time of entry on the ring
        var burst = AFPacketTXBurst(taken: 0, queued: 0)
        var retried = false
        while burst.taken < items.count {
            let index = UInt32(truncatingIfNeeded: items[burst.taken])
            switch fill(index) {
            case .queued:
                burst.queued += 1
            case .dropped:
                break
            case .ringFull:
                // The ring may only look full: kick what is queued, reclaim, and try once more.
                guard !retried else { return finishBurst(burst) }
                retried = true
                kick()
                reapCompletions()
                continue
            }
            burst.taken += 1
            pool.freeIndex(index)
        }
        return finishBurst(burst)
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

    private enum FillResult { case queued, dropped, ringFull }

    /// Copies the buffer at `index` into the next slot. Leaves the buffer to the caller.
    @inline(__always)
    private mutating func fill(_ index: UInt32) -> FillResult {
        let metadata = pool.metadata(at: index)
        let length = Int(metadata.pointee.length)
        let bytes = pool.bytes(at: index)
        guard length >= AFPacketLimits.ethernetHeaderBytes else {
            counters.frameTooShort &+= 1
            return .dropped
        }
        guard length <= min(bytes.count, frameLengthMax(bytes)) else {
            counters.frameTooLong &+= 1
            return .dropped
        }
        let slot = Int(ring.head & ring.mask)
        let rc = sluice_afpacket_tx_fill(&ring, bytes.baseAddress!, UInt32(length), UInt32(metadata.pointee.sourceID))
        if rc == 1 {
            slotRecords[slot] = AFPacketTXSlotRecord(flowHash: metadata.pointee.flowHash, length: UInt32(length),
                                                     enqueueNs: burstStartNs)
            counters.queued &+= 1
            needsKick = true
            return .queued
        }
        precondition(rc == 0, "tx_fill refused a length the transmitter checked")
        return .ringFull
    }

    /// The longest frame the device takes: MTU + Ethernet header, 4 more for a VLAN-tagged frame.
    @inline(__always)
    private func frameLengthMax(_ bytes: UnsafeMutableRawBufferPointer) -> Int {
        let untagged = mtu + AFPacketLimits.ethernetHeaderBytes
        let etherType = UInt16(bytes[12]) << 8 | UInt16(bytes[13])
        let tagged = etherType == 0x8100 || etherType == 0x88A8
        return min(Int(ring.data_size_max), tagged ? untagged + 4 : untagged)
    }

    private mutating func finishBurst(_ burst: AFPacketTXBurst) -> AFPacketTXBurst {
        if needsKick { kick() }
        statistics.publish(counters)
        return burst
    }

    /// Asks the kernel to send every queued frame (`sendto(fd, NULL, 0, MSG_DONTWAIT)`). EAGAIN and
    /// ENOBUFS leave the frames queued for the next kick and count as `kickRetries`. Owner thread only.
    /// Returns true if the kernel took everything queued.
    @discardableResult
    public mutating func kick() -> Bool {
        counters.kicks &+= 1
        let rc = kickOnce()
        if rc >= 0 {
            needsKick = false
            return true
        }
        if rc == -Errno.resourceTemporarilyUnavailable.rawValue || rc == -Errno.noBufferSpace.rawValue {
            counters.kickRetries &+= 1
        } else {
            counters.kickErrors &+= 1
            counters.lastKickErrno = -rc
        }
        return false
    }

    @inline(__always)
    private mutating func kickOnce() -> Int32 {
        #if DEBUG
        if !injectedKickResults.isEmpty { return injectedKickResults.removeFirst() }
        #endif
        return sluice_afpacket_kick(socket.fd)
    }

    /// The completion scan: reclaims every slot the kernel has finished with, oldest first, calling
    /// the completion hook for each, and counts sent and rejected frames. Returns how many slots it
    /// reclaimed. Owner thread only; never blocks.
    @discardableResult
    public mutating func reapCompletions() -> Int {
        var scan = sluice_afpacket_tx_scan()
        let completed = sluice_afpacket_tx_complete(&ring, ring.frame_count, completionHook?.function,
                                                     completionHook?.context, &scan)
        guard completed > 0 else { return 0 }
        counters.packets &+= UInt64(scan.completed - scan.wrong_format)
        counters.wrongFormat &+= UInt64(scan.wrong_format)
        counters.bytes &+= scan.bytes
        statistics.publish(counters)
        return Int(completed)
    }

    /// Kicks and scans until every queued frame is complete or `timeoutNs` passes, sleeping 50 µs
    /// between rounds. Returns true if nothing is pending. Blocks: for shutdown, not for a hot loop.
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
