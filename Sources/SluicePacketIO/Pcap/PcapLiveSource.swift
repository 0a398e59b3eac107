// Path: Sources/SluicePacketIO/Pcap/PcapLiveSource.swift — live capture through libpcap in immediate
// mode: the second RX option beside the AF_PACKET ring (any interface libpcap can open).
import CShims
import SluiceCore
import Synchronization

/// Counters of a live capture, readable from any thread.
public final class PcapLiveCounters: Sendable {
    public let packets = Atomic<UInt64>(0)
    public let bytes = Atomic<UInt64>(0)
    /// Packets skipped because no pool buffer was free (counted, never waited for: the kernel would
    /// drop meanwhile anyway).
    public let poolExhausted = Atomic<UInt64>(0)
    /// libpcap's `pcap_stats`: dropped by the kernel buffer, and by the interface.
    public let kernelDrops = Atomic<UInt64>(0)
    public let interfaceDrops = Atomic<UInt64>(0)
    init() {}
}

/// Stage 1 reading a live interface with libpcap (`pcap_create`, immediate mode, non-blocking, nanosecond
/// timestamps when offered): each packet copied into a pool buffer. Open it on a thread in the
/// interface's network namespace; any worker may run it afterwards, one at a time.
public final class PcapLiveSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    public let device: String
    public let linkType: Int
    public let port: UInt16
    /// Stop after this many packets (tests, bounded captures); nil runs until the pipeline stops.
    public let packetCountMax: UInt64?
    public let counters = PcapLiveCounters()
    private let handle: OpaquePointer
    private let pool: BufferPool
    private let poolRef: Unmanaged<BufferPool>  // uncounted view of `pool` for the hot path
    private let cache = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
    @exclusivity(unchecked) private var cacheCount = 0
    @exclusivity(unchecked) private var captured: UInt64 = 0
    @exclusivity(unchecked) private var turns: UInt64 = 0

    /// Opens `device`. `incomingOnly` leaves out what the host itself sends (`pcap_setdirection`).
    public init(device: String, pool: BufferPool, snapshotLength: Int = 262_144, promiscuous: Bool = true,
                incomingOnly: Bool = false, port: UInt16 = 0, packetCountMax: UInt64? = nil) throws(PcapError) {
        var errbuf = [CChar](repeating: 0, count: Int(SLUICE_PCAP_ERRBUF_SIZE))
        guard let handle = sluice_pcap_open_live(device, Int32(snapshotLength), promiscuous ? 1 : 0, 1, &errbuf) else {
            throw .liveCaptureFailed(device: device, reason: String(cString: errbuf))
        }
        guard pcap_setnonblock(handle, 1, &errbuf) == 0 else {
            pcap_close(handle)
            throw .liveCaptureFailed(device: device, reason: String(cString: errbuf))
        }
        if incomingOnly, pcap_setdirection(handle, PCAP_D_IN) != 0 {
            let message = String(cString: pcap_geterr(handle))
            pcap_close(handle)
            throw .liveCaptureFailed(device: device, reason: message)
        }
        self.device = device
        self.handle = handle
        self.linkType = Int(pcap_datalink(handle))
        self.pool = pool
        self.poolRef = Unmanaged.passUnretained(pool)
        self.port = port
        self.packetCountMax = packetCountMax
    }

    deinit {
        for slot in 0..<cacheCount { pool.freeIndex(UInt32(truncatingIfNeeded: cache[slot])) }
        cache.deallocate()
        pcap_close(handle)
    }

    public var isExhausted: Bool { packetCountMax.map { captured >= $0 } ?? false }

    /// Live packets can come at any time: the worker polls.
    public func sleepHintNs(nowNs: UInt64) -> UInt64? { isExhausted ? UInt64.max : nil }

    public func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        turns &+= 1
        if turns & 0x3FFF == 0 { refreshKernelCounters() }
        return poolRef._withUnsafeGuaranteedRef { pool in
            var count = 0
            var record = sluice_pcap_record()
            while count < items.count, !isExhausted, sluice_pcap_next(handle, &record) == 1 {
                captured &+= 1
                if cacheCount == 0 { cacheCount = pool.takeFree(into: cache) }
                guard cacheCount > 0 else {
                    counters.poolExhausted.add(1, ordering: .relaxed)
                    continue
                }
                cacheCount -= 1
                let index = UInt32(truncatingIfNeeded: cache[cacheCount])
                let bytes = pool.bytes(at: index)
                let length = min(Int(record.captured_length), bytes.count)
                bytes.baseAddress!.copyMemory(from: record.data, byteCount: length)
                var metadata = PacketMetadata()
                metadata.length = UInt32(length)
                metadata.wireLength = max(record.wire_length, UInt32(length))
                metadata.timestampNs = record.timestamp_ns
                metadata.enqueueNs = sluice_monotonic_ns()
                metadata.linkType = UInt16(truncatingIfNeeded: linkType)
                metadata.port = port
                pool.metadata(at: index).pointee = metadata
                counters.packets.store(counters.packets.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
                counters.bytes.store(counters.bytes.load(ordering: .relaxed) &+ UInt64(length), ordering: .relaxed)
                items[count] = UInt64(index)
                count += 1
            }
            return count
        }
    }

    /// Reads libpcap's drop counters into `counters` (the running worker calls it now and then).
    public func refreshKernelCounters() {
        var stats = pcap_stat()
        guard pcap_stats(handle, &stats) == 0 else { return }
        counters.kernelDrops.store(UInt64(stats.ps_drop), ordering: .relaxed)
        counters.interfaceDrops.store(UInt64(stats.ps_ifdrop), ordering: .relaxed)
    }
}
