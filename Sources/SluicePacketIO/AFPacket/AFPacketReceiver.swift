// Path: Sources/SluicePacketIO/AFPacket/AFPacketReceiver.swift — RX: a TPACKET_V3 ring on one
// interface, its frames copied into pool buffers a burst at a time.
import CShims
import SluiceCore
import SystemPackage

/// Receives from one interface through a TPACKET_V3 mmap ring (optionally one member of a fanout
/// group). Owns its socket and mapping: one thread at a time receives; move it there, never share it.
/// `receiveBurst` never blocks or allocates: it walks retired blocks, copies each frame into a pool
/// buffer and fills the buffer's metadata. `receive(into:timeoutMs:)` adds a poll() for callers that
/// are not pipeline stages.
public struct AFPacketReceiver: ~Copyable {
    public let configuration: AFPacketRXConfiguration
    /// The interface's index in the namespace the receiver was opened in.
    public let interfaceIndex: Int32
    /// Counters for other threads, and the kernel's drop counters on request.
    public let statistics: AFPacketRXStatistics
    let pool: BufferPool
    /// `configuration.port`, kept apart so the copy loop reads a plain field.
    private let port: UInt16
    private let socket: AFPacketSocket
    private let mapping: AFPacketMapping
    private var cursor: sluice_afpacket_rx_cursor
    /// The owning thread's counters, published to `statistics` after each burst that did work.
    public private(set) var counters: AFPacketRXCounters

    /// Opens the ring on `configuration.interface`, in the calling thread's network namespace, and
    /// starts receiving: socket, PACKET_VERSION 3, PACKET_RX_RING, mmap, bind (ETH_P_ALL), then the
    /// fanout group if one is set. Allocates; may block briefly. Buffers come from `pool`.
    public init(configuration: AFPacketRXConfiguration, pool: BufferPool) throws(AFPacketError) {
        try configuration.validate()
        let index = try AFPacketSocket.interfaceIndex(configuration.interface)
        let socket = try AFPacketSocket()
        try socket.check(sluice_afpacket_set_version(socket.fd, SLUICE_AFPACKET_TPACKET_V3), "setsockopt(PACKET_VERSION)")
        try socket.check(
            sluice_afpacket_set_rx_ring(socket.fd, UInt32(configuration.blockSizeBytes), UInt32(configuration.blockCount),
                                        UInt32(configuration.frameSizeBytes), UInt32(configuration.blockTimeoutMs)),
            "setsockopt(PACKET_RX_RING)")
        if configuration.ignoreOutgoing {
            try socket.check(sluice_afpacket_set_ignore_outgoing(socket.fd, 1), "setsockopt(PACKET_IGNORE_OUTGOING)")
        }
        let mapping = try AFPacketMapping(socket: socket, sizeBytes: configuration.ringSizeBytes)
        try socket.check(sluice_afpacket_bind(socket.fd, index, 0x0003 /* ETH_P_ALL */), "bind(AF_PACKET)")
        if let fanout = configuration.fanout {
            let flags = fanout.defragment ? UInt16(SLUICE_AFPACKET_FANOUT_FLAG_DEFRAG) : 0
            try socket.check(sluice_afpacket_join_fanout(socket.fd, fanout.group, UInt16(SLUICE_AFPACKET_FANOUT_HASH), flags),
                             "setsockopt(PACKET_FANOUT)")
        }
        var cursor = sluice_afpacket_rx_cursor()
        cursor.ring = mapping.base.assumingMemoryBound(to: UInt8.self)
        cursor.block_size = UInt32(configuration.blockSizeBytes)
        cursor.block_count = UInt32(configuration.blockCount)
        self.statistics = AFPacketRXStatistics(fd: socket.fd)
        self.configuration = configuration
        self.interfaceIndex = index
        self.pool = pool
        self.port = configuration.port
        self.socket = socket
        self.mapping = mapping
        self.cursor = cursor
        self.counters = AFPacketRXCounters()
    }

    deinit {
        // Last kernel counters first: after this the statistics object never touches the fd again.
        statistics.detach()
    }

    /// Takes up to `items.count` frames (at most `Limits.burstCountMax`), each copied into a fresh
    /// pool buffer whose index goes into `items`; returns how many. Frames that find the pool empty
    /// are skipped and counted (`poolExhausted`). Owner thread only; never blocks, never allocates.
    public mutating func receiveBurst(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        var frame = sluice_afpacket_frame()
        var received = 0
        var skipped: UInt64 = 0
        var enqueueNs: UInt64 = 0
        while received < items.count, sluice_afpacket_rx_next(&cursor, &frame) == 1 {
            guard let buffer = pool.allocate() else {
                skipped &+= 1
                continue
            }
            if enqueueNs == 0 { enqueueNs = sluice_monotonic_ns() }
            let index = buffer.releaseIndex()
            copy(frame, into: index, enqueueNs: enqueueNs)
            items[received] = UInt64(index)
            received += 1
        }
        sluice_afpacket_rx_finish(&cursor)
        if received > 0 || skipped > 0 {
            counters.packets &+= UInt64(received)
            counters.poolExhausted &+= skipped
            counters.blocks = cursor.blocks_taken
            statistics.publish(counters)
        }
        return received
    }

    /// Copies one frame into the buffer at `index` and writes its metadata.
    @inline(__always)
    private mutating func copy(_ frame: sluice_afpacket_frame, into index: UInt32, enqueueNs: UInt64) {
        let bytes = pool.bytes(at: index)
        let snapLength = Int(frame.snap_length)
        var length: Int
        var wireLength = frame.wire_length
        if frame.has_vlan != 0 && snapLength >= 12 && bytes.count >= 16 {
            // The kernel took the outer tag off (VLAN offload): put it back after the MAC addresses,
            // so the frame reads as it was on the wire (as libpcap does).
            length = min(snapLength + 4, bytes.count)
            if length < snapLength + 4 { counters.truncated &+= 1 }
            let base = bytes.baseAddress!
            base.copyMemory(from: frame.data, byteCount: 12)
            base.storeBytes(of: frame.vlan_tpid.bigEndian, toByteOffset: 12, as: UInt16.self)
            base.storeBytes(of: frame.vlan_tci.bigEndian, toByteOffset: 14, as: UInt16.self)
            (base + 16).copyMemory(from: frame.data + 12, byteCount: length - 16)
            wireLength &+= 4
        } else {
            length = min(snapLength, bytes.count)
            if length < snapLength { counters.truncated &+= 1 }
            bytes.baseAddress!.copyMemory(from: frame.data, byteCount: length)
        }
        var metadata = PacketMetadata()
        metadata.length = UInt32(truncatingIfNeeded: length)
        metadata.wireLength = wireLength
        metadata.timestampNs = frame.timestamp_ns
        metadata.enqueueNs = enqueueNs
        metadata.linkType = 1  // DLT_EN10MB: AF_PACKET SOCK_RAW on Ethernet
        metadata.port = port
        pool.metadata(at: index).pointee = metadata
        counters.bytes &+= UInt64(length)
    }

    /// True if a frame can be taken now without a system call. Owner thread only.
    public var hasFrames: Bool {
        var cursor = self.cursor
        return sluice_afpacket_rx_ready(&cursor) != 0
    }

    /// Waits up to `timeoutMs` (negative: without limit) for the kernel to retire a block. Returns
    /// true if frames are ready; false on timeout or a signal. Owner thread only. Wraps `poll(2)`.
    public mutating func waitForFrames(timeoutMs: Int32) throws(SyscallError) -> Bool {
        if hasFrames { return true }
        let rc = sluice_afpacket_poll(socket.fd, 0x001 /* POLLIN */, timeoutMs)
        if rc == -Errno.interrupted.rawValue { return false }
        guard rc >= 0 else { throw SyscallError("poll(AF_PACKET)", negatedErrno: rc) }
        return hasFrames
    }

    /// Blocking receive for callers outside a pipeline: a burst if frames are ready, otherwise waits
    /// up to `timeoutMs` for a block and takes a burst then. Returns 0 on timeout. Owner thread only.
    public mutating func receive(into items: UnsafeMutableBufferPointer<UInt64>, timeoutMs: Int32)
        throws(SyscallError) -> Int
    {
        let received = receiveBurst(into: items)
        if received > 0 { return received }
        guard try waitForFrames(timeoutMs: timeoutMs) else { return 0 }
        return receiveBurst(into: items)
    }

    /// Reads PACKET_STATISTICS into the counters (tp_packets, tp_drops, tp_freeze_q_cnt, summed: the
    /// kernel resets them on every read) and returns them. One system call; any thread may do the
    /// same through `statistics.refreshKernelCounters()`.
    public mutating func refreshKernelCounters() throws(SyscallError) -> AFPacketRXCounters {
        try statistics.refreshKernelCounters()
        let published = statistics.snapshot()
        counters.kernelPackets = published.kernelPackets
        counters.kernelDrops = published.kernelDrops
        counters.kernelFreezeQueueCount = published.kernelFreezeQueueCount
        return counters
    }
}
