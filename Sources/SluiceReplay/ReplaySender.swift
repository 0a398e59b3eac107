// Path: Sources/SluiceReplay/ReplaySender.swift — `sluice replay`'s tcpreplay-style sender: one
// thread reads one or more captures (streamed, or preloaded into memory), paces them on an absolute
// schedule and sends them to one interface, file or nowhere, or split by client/server onto two.
import CShims
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO

/// How the sender spaces packets (tcpreplay's rate flags).
public enum SenderPacing: Sendable, Equatable {
    /// As fast as the outputs take them (`--topspeed`).
    case topSpeed
    /// The capture's own gaps divided by the multiplier (`--multiplier`, 2 = twice as fast).
    case multiplier(Double)
    /// Packet i due at start + i / rate (`--pps`).
    case packetsPerSecond(Double)
    /// Packet i due when the frames before it, at 8 bits a byte of captured frame, have filled the
    /// rate (`--mbps`, 10^6 bits per second).
    case megabitsPerSecond(Double)

    public static let multiplierRange = ReplayPacing.speedMin...ReplayPacing.speedMax
    public static let packetsPerSecondRange = ReplayPacing.packetsPerSecondMin...ReplayPacing.packetsPerSecondMax
    /// 1 kbit/s to 1 Tbit/s.
    public static let megabitsPerSecondRange = 1e-3...1e6
}

/// Where the sender puts packets of one side.
public enum SenderOutput: Sendable, Equatable {
    /// An AF_PACKET TX ring on the interface.
    case interface(String)
    /// An AF_XDP socket on the interface's queue 0 (copy mode, TX only: no XDP program).
    case afXDP(String)
    case pcapFile(String)
    case discard

    public var name: String {
        switch self {
        case .interface(let name), .afXDP(let name): name
        case .pcapFile(let path): path
        case .discard: "discard"
        }
    }
}

/// How packets are split over two outputs.
public enum SenderSplit: Sendable, Equatable {
    /// Classify each packet as it is read.
    case rule(ReplaySplitRule)
    /// Use a `sluice replay --write-cachefile` cache file (one capture only).
    case cacheFile(String)
}

/// Everything the sender needs; checked by `ReplaySender.init`.
public struct SenderConfiguration: Sendable {
    /// Captures, sent in this order, each in full, once per loop.
    public var captures: [String]
    /// One output, or two with `split` (primary, secondary).
    public var outputs: [SenderOutput]
    public var pacing: SenderPacing = .multiplier(1)
    /// Loops over all captures; 0 runs until `packetLimit` or `durationNs` stops it.
    public var loopCount = 1
    /// Pause between loops (tcpreplay's --loopdelay-ms), kept in the schedule.
    public var loopDelayNs: UInt64 = 0
    /// Stop after this many packets over all loops (tcpreplay's --limit).
    public var packetLimit: UInt64?
    /// Stop this long after the first packet (tcpreplay's --duration).
    public var durationNs: UInt64?
    /// Read every capture into memory before sending the first packet (tcpreplay's --preload-pcap).
    public var preload = false
    /// The memory `preload` may use: frame bytes plus 24 bytes a record.
    public var preloadBytesMax: UInt64 = 1 << 30
    public var split: SenderSplit?
    /// The core the sending thread is pinned to, if any.
    public var core: Int?
    /// Frames released together at most (one kick per output).
    public var burstCount = 32
    /// Frames whose due times lie within this of the burst's first go out together, when the last is
    /// due: at most this early for a frame, one kick for the lot.
    public var burstWindowNs: UInt64 = 20_000
    /// The last stretch of every wait is spent spinning on the clock, not sleeping.
    public var spinNs: UInt64 = 50_000

    public static let loopDelayNsMax: UInt64 = 3_600_000_000_000
    public static let preloadBytesMaxLimit: UInt64 = 1 << 36

    public init(captures: [String], outputs: [SenderOutput]) {
        self.captures = captures
        self.outputs = outputs
    }
}

/// One output's counters, as tcpreplay's "Statistics for network device".
public struct SenderPortSummary: Sendable, Equatable {
    public var name: String
    public var kind: String
    /// Frames the output took: sent by the kernel (interface), written (file), freed (discard).
    public var successfulPackets: UInt64
    public var successfulBytes: UInt64
    /// Frames not sent: longer than the interface's MTU or the ring's slot, shorter than an Ethernet
    /// header, longer than the capture's snapshot length allows, refused by the kernel, or still
    /// unsent 2 s after the end.
    public var failedPackets: UInt64
    /// Always 0: the sender never cuts a frame.
    public var truncatedPackets: UInt64
    /// Kicks (`sendto`) the device pushed back with ENOBUFS or EAGAIN; the frames stayed queued
    /// and were retried.
    public var retriedPackets: UInt64
}

/// What a sender run did.
public struct SenderSummary: Sendable {
    public var packets: UInt64
    public var bytes: UInt64
    /// From the first packet's release to the end of the last one's slot in the schedule (its
    /// interval at `--pps`, its bits at `--mbps`), or to the last release if that was later.
    public var elapsedNs: UInt64
    /// Unique IP 5-tuples seen (direction kept), over all loops.
    public var flows: UInt64
    /// True when the flow table (`ReplaySender.flowTableCapacity`) filled: `flows` is a lower bound.
    public var flowTableFull: Bool
    /// Packets with an IP 5-tuple, and the rest.
    public var flowPackets: UInt64
    public var nonFlowPackets: UInt64
    public var loopsCompleted: Int
    /// "end", "limit" or "duration".
    public var stoppedBy: String
    /// CPU time (user + system) of the whole process from the first packet to the end.
    public var processCpuNs: UInt64
    /// Most a release was late against its schedule (0 at top speed).
    public var lateNsMax: UInt64
    public var ports: [SenderPortSummary]
    public var failure: String?

    public var seconds: Double { Double(elapsedNs) / 1e9 }
    public var bytesPerSecond: Double { Double(bytes) / max(seconds, 1e-9) }
    public var megabitsPerSecond: Double { bytesPerSecond * 8 / 1e6 }
    public var packetsPerSecond: Double { Double(packets) / max(seconds, 1e-9) }
    public var flowsPerSecond: Double { Double(flows) / max(seconds, 1e-9) }
}

/// An output of the sender: takes pool buffers (and frees them).
protocol SenderSink: AnyObject {
    /// Sends or writes every item, in order; frees each buffer. Blocks while the device pushes back.
    func send(_ items: UnsafeBufferPointer<UInt64>)
    /// Flushes; returns a failure for people, nil when clean.
    func finish() -> String?
    func summary() -> SenderPortSummary
}

/// Sends `items` in order through `transmit` (how many of the items it took), calling `wait` while it
/// takes none (the ring is full: the device is behind; tcpreplay retries too), for at most
/// `InterfaceSenderSink.stallTimeoutNs`; then frees the rest. Returns how many were freed unsent.
@inline(__always)
func sendBounded(_ items: UnsafeBufferPointer<UInt64>, pool: BufferPool,
                 transmit: (UnsafeBufferPointer<UInt64>) -> Int, wait: () -> Void) -> UInt64 {
    var done = 0
    var stallStart: UInt64 = 0
    while done < items.count {
        let taken = transmit(UnsafeBufferPointer(rebasing: items[done...]))
        done += taken
        if taken > 0 {
            stallStart = 0
            continue
        }
        let now = sluice_monotonic_ns()
        if stallStart == 0 { stallStart = now }
        if now - stallStart > InterfaceSenderSink.stallTimeoutNs {
            for item in items[done...] { pool.freeIndex(UInt32(truncatingIfNeeded: item)) }
            return UInt64(items.count - done)
        }
        wait()
    }
    return 0
}

final class InterfaceSenderSink: SenderSink {
    let name: String
    private let pool: BufferPool
    private var transmitter: AFPacketTransmitter
    private var stalledDrops: UInt64 = 0
    private var unsentAtFinish: UInt64 = 0
    static let stallTimeoutNs: UInt64 = 2_000_000_000

    init(interface: String, frameSizeBytes: Int, pool: BufferPool) throws(ReplayError) {
        name = interface
        self.pool = pool
        let frameCount = max(64, min(4096, (32 << 20) / frameSizeBytes))
        do {
            transmitter = try AFPacketTransmitter(
                configuration: AFPacketTXConfiguration(interface: interface, frameSizeBytes: frameSizeBytes,
                                                       frameCount: frameCount), pool: pool)
        } catch { throw .output(interface: interface, error) }
    }

    func send(_ items: UnsafeBufferPointer<UInt64>) {
        stalledDrops += sendBounded(items, pool: pool, transmit: { transmitter.transmitBurst($0).taken }, wait: { sched_yield() })
    }

    func finish() -> String? {
        if !transmitter.flush(timeoutNs: Self.stallTimeoutNs) {
            unsentAtFinish = UInt64(transmitter.pendingCount)
            return "\(name): \(unsentAtFinish) frames still queued on the TX ring 2 s after the last"
        }
        if stalledDrops > 0 { return "\(name): the TX ring stayed full for 2 s; \(stalledDrops) frames not sent" }
        return nil
    }

    func summary() -> SenderPortSummary {
        let c = transmitter.counters
        return SenderPortSummary(name: name, kind: "interface", successfulPackets: c.packets, successfulBytes: c.bytes,
                                 failedPackets: c.wrongFormat + c.frameTooShort + c.frameTooLong + c.ringFull
                                    + stalledDrops + unsentAtFinish,
                                 truncatedPackets: 0, retriedPackets: c.kickRetries)
    }
}

/// The AF_XDP twin of `InterfaceSenderSink`: frames copied into the UMEM, one kick per burst, the
/// completion ring freeing them; same stall bound and failure accounting.
final class XDPSenderSink: SenderSink {
    let name: String
    private let pool: BufferPool
    private var transmitter: AFXDPTransmitter
    private var stalledDrops: UInt64 = 0

    init(interface: String, pool: BufferPool) throws(ReplayError) {
        name = interface
        self.pool = pool
        var configuration = AFXDPConfiguration(interface: interface)
        configuration.frameSizeBytes = 4096  // the largest UMEM chunk: frames up to 4 KiB
        do {
            try configuration.validate()
            transmitter = try AFXDPTransmitter(configuration: configuration, pool: pool)
        } catch { throw .afXDPOutput(interface: interface, error) }
    }

    func send(_ items: UnsafeBufferPointer<UInt64>) {
        // No free UMEM frame or TX slot even after a completion scan: kick, then wait.
        stalledDrops += sendBounded(items, pool: pool, transmit: { transmitter.transmitBurst($0).taken },
                                    wait: { transmitter.kickIfNeeded(); sched_yield() })
    }

    func finish() -> String? {
        var failures: [String] = []
        if !transmitter.flush(timeoutNs: InterfaceSenderSink.stallTimeoutNs) {
            failures.append("\(transmitter.pendingCount) frames still on the AF_XDP TX ring 2 s after the last")
        }
        if stalledDrops > 0 { failures.append("the AF_XDP TX ring stayed full for 2 s; \(stalledDrops) frames not sent") }
        let tooLong = transmitter.counters.frameTooLong
        if tooLong > 0 {
            failures.append("\(tooLong) frames longer than an AF_XDP frame (\(transmitter.configuration.frameSizeBytes) bytes) not sent")
        }
        return failures.isEmpty ? nil : "\(name): " + failures.joined(separator: "; ")
    }

    func summary() -> SenderPortSummary {
        let c = transmitter.counters
        return SenderPortSummary(name: name, kind: "af_xdp", successfulPackets: c.packets, successfulBytes: c.bytes,
                                 failedPackets: c.drops.reduce(0) { $0 + $1.count } + stalledDrops,
                                 truncatedPackets: 0, retriedPackets: c.kickRetries)
    }
}

final class FileSenderSink: SenderSink {
    let name: String
    private let pool: BufferPool
    private var writer: PcapWriter
    private var written: UInt64 = 0
    private var writtenBytes: UInt64 = 0
    private var failed: UInt64 = 0
    private var failure: PcapError?

    init(path: String, pool: BufferPool, linkType: Int, linkTypeField: UInt32?, snapshotLength: Int,
         nanosecond: Bool) throws(ReplayError) {
        name = path
        self.pool = pool
        do {
            writer = try PcapWriter(path: path, linkType: linkType, linkTypeField: linkTypeField,
                                    snapshotLength: snapshotLength, nanosecond: nanosecond)
        } catch { throw .capture(error) }
    }

    func send(_ items: UnsafeBufferPointer<UInt64>) {
        for item in items {
            let index = UInt32(truncatingIfNeeded: item)
            if failure == nil {
                let metadata = pool.metadata(at: index).pointee
                let length = Int(metadata.length)
                do {
                    try writer.write(timestampNs: metadata.timestampNs, wireLength: Int(metadata.wireLength),
                                     bytes: UnsafeRawBufferPointer(rebasing: pool.bytes(at: index)[0..<length]))
                    written += 1
                    writtenBytes += UInt64(length)
                } catch {
                    failure = error
                    failed += 1
                }
            } else {
                failed += 1
            }
            pool.freeIndex(index)
        }
    }

    func finish() -> String? {
        do { try writer.close() } catch { failure = failure ?? error }
        return failure.map { "\($0)" }
    }

    func summary() -> SenderPortSummary {
        SenderPortSummary(name: name, kind: "file", successfulPackets: written, successfulBytes: writtenBytes,
                          failedPackets: failed, truncatedPackets: 0, retriedPackets: 0)
    }
}

final class DiscardSenderSink: SenderSink {
    private let pool: BufferPool
    private var packets: UInt64 = 0
    private var bytes: UInt64 = 0

    init(pool: BufferPool) { self.pool = pool }

    func send(_ items: UnsafeBufferPointer<UInt64>) {
        for item in items {
            let index = UInt32(truncatingIfNeeded: item)
            bytes += UInt64(pool.metadata(at: index).pointee.length)
            pool.freeIndex(index)
        }
        packets += UInt64(items.count)
    }

    func finish() -> String? { nil }

    func summary() -> SenderPortSummary {
        SenderPortSummary(name: "discard", kind: "discard", successfulPackets: packets, successfulBytes: bytes,
                          failedPackets: 0, truncatedPackets: 0, retriedPackets: 0)
    }
}

/// A capture opened at start (so a missing file fails before anything is sent, and standard input
/// is read once), handed to the first loop; later loops reopen the path.
final class OpenedCapture {
    let path: String
    var reader: PcapReader?
    init(path: String, reader: consuming PcapReader) {
        self.path = path
        self.reader = .some(reader)
    }
}

/// Every capture in memory: frame bytes in one arena, records by capture.
final class PreloadedCaptures {
    struct Record {
        var offset: Int
        var length: UInt32
        var wireLength: UInt32
        var timestampNs: UInt64
    }

    private(set) var arena: UnsafeMutableRawPointer
    private var capacity: Int
    private var used = 0
    private var recordCount = 0
    /// The longest frame loaded.
    private(set) var longestRecord = 0
    private(set) var records: [[Record]] = []

    init() {
        capacity = 1 << 20
        arena = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
    }

    deinit { arena.deallocate() }

    /// Reads all of `reader`; fails once frames plus records pass `bytesMax`.
    func load(_ reader: inout PcapReader, bytesMax: UInt64) throws(ReplayError) {
        var list: [Record] = []
        while true {
            let next: PcapRecord?
            do { next = try reader.next() } catch { throw .capture(error) }
            guard let record = next else { break }
            let length = record.capturedLength
            recordCount += 1
            longestRecord = max(longestRecord, length)
            let total = UInt64(used + length) + UInt64(recordCount) * 24
            guard total <= bytesMax else { throw .preloadTooLarge(bytes: total, max: bytesMax) }
            if used + length > capacity {
                var grown = capacity * 2
                while used + length > grown { grown *= 2 }
                let bigger = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 64)
                bigger.copyMemory(from: arena, byteCount: used)
                arena.deallocate()
                arena = bigger
                capacity = grown
            }
            (arena + used).copyMemory(from: record.bytes.baseAddress!, byteCount: length)
            list.append(Record(offset: used, length: UInt32(length), wireLength: UInt32(max(record.wireLength, length)),
                               timestampNs: record.timestampNs))
            used += length
        }
        records.append(list)
    }
}

/// tcpreplay's job: captures in order, paced on an absolute schedule (a late packet catches up
/// instead of pushing every later one back), one thread, sent through AF_PACKET TX rings.
public final class ReplaySender {
    public let configuration: SenderConfiguration
    /// Slots of the flow table (unique 5-tuples counted at most 3/4 of this).
    public static let flowTableCapacity = 1 << 20

    private let pool: BufferPool
    private let sinks: [SenderSink]
    private let opened: [OpenedCapture]
    private let preloaded: PreloadedCaptures?
    private let linkType: Int
    private let cacheSides: [ReplaySide]?
    private let cachePath: String?
    private let splitRule: ReplaySplitRule?

    // Run state (the sending thread only).
    private var burst: [UnsafeMutableBufferPointer<UInt64>]
    private var burstCounts: [Int]
    private var burstTotal = 0
    private var burstFirstDueNs: UInt64 = 0
    private var burstLastDueNs: UInt64 = 0
    private var startNs: UInt64 = 0
    private var realOffsetNs: UInt64 = 0
    private var timelineNs: UInt64 = 0
    private var sequence: UInt64 = 0
    private var bytesScheduled: UInt64 = 0
    private var lastDueNs: UInt64 = 0
    private var lastSlotNs: UInt64 = 0
    private var lastReleaseNs: UInt64 = 0
    private var lateNsMax: UInt64 = 0
    private var deadlineNs = UInt64.max
    private var stoppedBy = "end"
    private var failure: String?
    private var oversize: [UInt64] = [0, 0]
    private var flowSlots: UnsafeMutableBufferPointer<UInt64>
    private var flowCount: UInt64 = 0
    private var flowPackets: UInt64 = 0
    private var nonFlowPackets: UInt64 = 0

    public init(_ configuration: SenderConfiguration) throws(ReplayError) {
        precondition(!configuration.captures.isEmpty, "at least one capture")
        precondition((1...2).contains(configuration.outputs.count), "one or two outputs")
        precondition(configuration.outputs.count == 2 || configuration.split == nil, "a split needs two outputs")
        precondition(configuration.burstCount >= 1 && configuration.burstCount <= Limits.burstCountMax)
        self.configuration = configuration
        var opened: [OpenedCapture] = []
        var snapshotMax = 0
        var first: (linkType: Int, field: UInt32?, nanosecond: Bool)?
        for path in configuration.captures {
            let reader: PcapReader
            do { reader = try PcapReader(path: path) } catch { throw .capture(error) }
            if let first, first.linkType != reader.linkType {
                throw .linkTypesDiffer(path: path, linkType: reader.linkType, first: first.linkType)
            }
            if first == nil { first = (reader.linkType, reader.linkTypeField, reader.format.nanosecond) }
            let loops = configuration.loopCount
            if !configuration.preload, loops != 1, !reader.isRegularFile {
                throw .invalidConfiguration(.loopOnStream(path: path))
            }
            for case .pcapFile(let output) in configuration.outputs {
                var status = stat()
                if stat(output, &status) == 0, UInt64(status.st_dev) == reader.device, UInt64(status.st_ino) == reader.inode {
                    throw .outputIsInput(path: output)
                }
            }
            snapshotMax = max(snapshotMax, reader.snapshotLength)
            opened.append(OpenedCapture(path: path, reader: reader))
        }
        linkType = first!.linkType
        if configuration.preload {
            let store = PreloadedCaptures()
            for capture in opened {
                guard var reader = capture.reader.take() else { preconditionFailure("opened above") }
                try store.load(&reader, bytesMax: configuration.preloadBytesMax)
            }
            preloaded = store
        } else {
            preloaded = nil
        }
        self.opened = opened
        switch configuration.split {
        case .cacheFile(let path):
            let cache = try ReplayCacheFile.read(path: path)
            try cache.check(capture: configuration.captures[0], cachePath: path)
            cacheSides = cache.sides
            cachePath = path
            splitRule = nil
        case .rule(let rule):
            cacheSides = nil
            cachePath = nil
            splitRule = rule
        case nil:
            cacheSides = nil
            cachePath = nil
            splitRule = nil
        }
        // Buffers (and TX slots) hold a frame up to the captures' snapshot length, at most 9216 bytes
        // as in the pipeline; preloaded, up to the longest record (at most a 64 KiB slot). Longer
        // frames are not sent and count as failed.
        let bufferSize = min(max(preloaded?.longestRecord ?? min(snapshotMax, PacketPathConfiguration.captureBufferSizeBytesMax), 64),
                             65_536 - AFPacketLimits.txDataOffsetBytes)
        do { pool = try BufferPool(bufferCount: 2 * configuration.burstCount + 64, bufferSizeBytes: bufferSize) }
        catch { throw .pool(error) }
        var frameSize = 2048
        while frameSize - AFPacketLimits.txDataOffsetBytes < bufferSize, frameSize < 65_536 { frameSize *= 2 }
        var sinks: [SenderSink] = []
        for output in configuration.outputs {
            switch output {
            case .interface(let name):
                sinks.append(try InterfaceSenderSink(interface: name, frameSizeBytes: frameSize, pool: pool))
            case .afXDP(let name):
                sinks.append(try XDPSenderSink(interface: name, pool: pool))
            case .pcapFile(let path):
                sinks.append(try FileSenderSink(path: path, pool: pool, linkType: first!.linkType,
                                                linkTypeField: first!.field, snapshotLength: max(snapshotMax, 1),
                                                nanosecond: first!.nanosecond))
            case .discard:
                sinks.append(DiscardSenderSink(pool: pool))
            }
        }
        self.sinks = sinks
        burst = sinks.map { _ in .allocate(capacity: configuration.burstCount) }
        burstCounts = sinks.map { _ in 0 }
        flowSlots = .allocate(capacity: Self.flowTableCapacity)
        flowSlots.initialize(repeating: 0)
    }

    deinit {
        for buffer in burst { buffer.deallocate() }
        flowSlots.deallocate()
    }

    /// Sends everything (all loops, or until the limit or duration), then flushes the outputs.
    /// Blocks the calling thread, which it pins to `configuration.core` if set.
    public func run() -> SenderSummary {
        if let core = configuration.core { try? CPU.pinCurrentThread(to: core) }
        _ = sluice_thread_set_timer_slack_ns(1)
        let cpuStart = processCPUTimeNs()
        var loopsCompleted = 0
        var loop = 0
        outer: while configuration.loopCount == 0 || loop < configuration.loopCount {
            if loop > 0 { realOffsetNs &+= configuration.loopDelayNs }
            let sequenceBefore = sequence
            for index in opened.indices {
                if !sendCapture(index) { break outer }
            }
            loopsCompleted += 1
            loop += 1
            // Captures without a frame: `--loop 0` would reopen them for ever (no limit or deadline is reached).
            if configuration.loopCount == 0, sequence == sequenceBefore {
                let tooLong = oversize.reduce(0, +)
                if failure == nil {
                    failure = tooLong > 0 ? "every frame of the captures is longer than \(pool.bufferSizeBytes) bytes (\(tooLong) frames)"
                        : "the captures hold no frame to send"
                }
                break
            }
        }
        release()
        // Nothing released (every frame too long, or none at all): no span, not a negative one.
        let endNs = max(lastReleaseNs, lastDueNs, startNs)
        var failures: [String] = []
        if let failure { failures.append(failure) }
        for sink in sinks { if let failure = sink.finish() { failures.append(failure) } }
        let cpuNs = processCPUTimeNs() &- cpuStart
        var ports = sinks.map { $0.summary() }
        for index in ports.indices { ports[index].failedPackets += oversize[index] }
        let elapsed = startNs == 0 ? 0 : (endNs - startNs) &+ lastSlotNs
        return SenderSummary(
            packets: ports.reduce(0) { $0 + $1.successfulPackets }, bytes: ports.reduce(0) { $0 + $1.successfulBytes },
            elapsedNs: elapsed, flows: flowCount, flowTableFull: flowCount >= UInt64(Self.flowTableCapacity * 3 / 4),
            flowPackets: flowPackets, nonFlowPackets: nonFlowPackets, loopsCompleted: loopsCompleted,
            stoppedBy: stoppedBy, processCpuNs: cpuNs, lateNsMax: lateNsMax, ports: ports,
            failure: failures.isEmpty ? nil : failures.joined(separator: "; "))
    }

    /// One capture, once. False when the run must stop (limit, duration, error).
    private func sendCapture(_ index: Int) -> Bool {
        var firstTs: UInt64?
        var lastTs: UInt64 = 0
        var packetIndex = 0
        defer {
            if let firstTs { timelineNs &+= lastTs - firstTs &+ 1_000 }
        }
        func handle(_ bytes: UnsafeRawBufferPointer, wire: Int, ts: UInt64) -> Bool {
            let first = firstTs ?? ts
            if firstTs == nil { firstTs = ts }
            lastTs = max(lastTs, ts)
            let side: ReplaySide
            if let cacheSides {
                guard packetIndex < cacheSides.count else {
                    failure = "\(ReplayCacheError.packetBeyondCache(cache: cachePath!, packets: UInt64(cacheSides.count)))"
                    return false
                }
                side = cacheSides[packetIndex]
            } else if let splitRule {
                side = splitRule.side(of: bytes, linkType: linkType)
            } else {
                side = .primary
            }
            packetIndex += 1
            return enqueue(bytes, wire: wire, timestampNs: ts, offsetNs: ts > first ? ts - first : 0,
                           side: Int(side.rawValue))
        }
        if let preloaded {
            let arena = preloaded.arena
            for record in preloaded.records[index] {
                let bytes = UnsafeRawBufferPointer(start: arena + record.offset, count: Int(record.length))
                if !handle(bytes, wire: Int(record.wireLength), ts: record.timestampNs) { return false }
            }
            return true
        }
        var reader: PcapReader
        if let first = opened[index].reader.take() {
            reader = first
        } else {
            do { reader = try PcapReader(path: opened[index].path) } catch {
                failure = "\(error)"
                return false
            }
        }
        while true {
            let next: PcapRecord?
            do { next = try reader.next() } catch {
                failure = "\(error)"
                return false
            }
            guard let record = next else { return true }
            let bytes = UnsafeRawBufferPointer(rebasing: record.bytes[0..<record.capturedLength])
            if !handle(bytes, wire: max(record.wireLength, record.capturedLength), ts: record.timestampNs) { return false }
        }
    }

    /// Schedules one packet: copies it into a buffer and adds it to the burst, releasing the burst
    /// first when this packet falls outside it. False when the run must stop.
    @inline(__always)
    private func enqueue(_ bytes: UnsafeRawBufferPointer, wire: Int, timestampNs: UInt64, offsetNs: UInt64,
                         side: Int) -> Bool {
        // Longer than the snapshot length said: a failed packet, as tcpreplay counts one it could not send.
        // It takes no schedule time (`--pps`/`--mbps` pace what is sent) and no part of `--limit`.
        guard bytes.count <= pool.bufferSizeBytes else {
            oversize[side] += 1
            return true
        }
        let due: UInt64
        var slot: UInt64 = 0
        switch configuration.pacing {
        case .topSpeed:
            due = 0
        case .packetsPerSecond(let rate):
            due = DueTimeNs.saturating(Double(sequence) * 1e9 / rate)
            slot = DueTimeNs.saturating(1e9 / rate)
        case .megabitsPerSecond(let rate):
            due = DueTimeNs.saturating(Double(bytesScheduled) * 8_000 / rate)
            slot = DueTimeNs.saturating(Double(bytes.count) * 8_000 / rate)
        case .multiplier(let multiplier):
            due = DueTimeNs.saturating(Double(timelineNs &+ offsetNs) / multiplier)
        }
        if startNs == 0 {
            startNs = sluice_monotonic_ns()
            if let duration = configuration.durationNs { deadlineNs = startNs &+ duration }
        }
        let dueNs = configuration.pacing == .topSpeed ? 0 : DueTimeNs.adding(startNs, DueTimeNs.adding(realOffsetNs, due))
        if dueNs >= deadlineNs {
            stoppedBy = "duration"
            return false
        }
        if burstTotal > 0, burstTotal == configuration.burstCount || dueNs > burstFirstDueNs &+ configuration.burstWindowNs {
            release()
            if stoppedBy == "duration" { return false }
        }
        sequence &+= 1
        bytesScheduled &+= UInt64(bytes.count)
        guard let buffer = pool.allocate() else {
            oversize[side] += 1  // not expected: the pool holds two bursts and more, each released before the next fills
            return checkLimit()
        }
        let index = buffer.releaseIndex()
        pool.bytes(at: index).baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        let metadata = pool.metadata(at: index)
        metadata.pointee = PacketMetadata()
        metadata.pointee.length = UInt32(bytes.count)
        metadata.pointee.wireLength = UInt32(max(wire, bytes.count))
        metadata.pointee.timestampNs = timestampNs
        countFlow(bytes)
        if burstTotal == 0 { burstFirstDueNs = dueNs }
        burstLastDueNs = dueNs
        lastDueNs = dueNs
        lastSlotNs = slot
        burst[side][burstCounts[side]] = UInt64(index)
        burstCounts[side] += 1
        burstTotal += 1
        return checkLimit()
    }

    private func checkLimit() -> Bool {
        if let limit = configuration.packetLimit, sequence >= limit {
            stoppedBy = "limit"
            return false
        }
        return true
    }

    /// Waits until the burst's last frame is due, then hands each output its part.
    private func release() {
        guard burstTotal > 0 else { return }
        var now = sluice_monotonic_ns()
        if configuration.pacing != .topSpeed {
            if burstLastDueNs > now {
                wait(until: burstLastDueNs)
                now = sluice_monotonic_ns()
            }
            lateNsMax = max(lateNsMax, now - min(now, burstLastDueNs))
        }
        for side in sinks.indices where burstCounts[side] > 0 {
            sinks[side].send(UnsafeBufferPointer(rebasing: burst[side][0..<burstCounts[side]]))
            burstCounts[side] = 0
        }
        burstTotal = 0
        lastReleaseNs = now
        if configuration.pacing == .topSpeed, lastReleaseNs >= deadlineNs { stoppedBy = "duration" }
    }

    /// Sleeps (absolute CLOCK_MONOTONIC, 1 ns timer slack) to `spinNs` before `dueNs`, then spins.
    private func wait(until dueNs: UInt64) {
        let now = sluice_monotonic_ns()
        if dueNs > now &+ configuration.spinNs {
            let wake = dueNs - configuration.spinNs
            var time = timespec(tv_sec: Int(wake / 1_000_000_000), tv_nsec: Int(wake % 1_000_000_000))
            while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &time, nil) == EINTR {}
        }
        while sluice_monotonic_ns() < dueNs {}
    }

    private func countFlow(_ bytes: UnsafeRawBufferPointer) {
        guard let tuple = FiveTuple(frame: bytes, linkType: linkType) else {
            nonFlowPackets &+= 1
            return
        }
        flowPackets &+= 1
        let hash = tuple.hash
        let mask = UInt64(Self.flowTableCapacity - 1)
        var slot = Int(hash & mask)
        while true {
            let value = flowSlots[slot]
            if value == hash { return }
            if value == 0 {
                guard flowCount < UInt64(Self.flowTableCapacity * 3 / 4) else { return }
                flowSlots[slot] = hash
                flowCount += 1
                return
            }
            slot = (slot + 1) & Int(mask)
        }
    }
}

/// Saturating due-time arithmetic (as `DueTime` in SluicePacketIO).
enum DueTimeNs {
    @inline(__always) static func saturating(_ nanoseconds: Double) -> UInt64 {
        guard nanoseconds > 0 else { return nanoseconds.isNaN ? .max : 0 }
        return nanoseconds >= 18_446_744_073_709_551_615.0 ? .max : UInt64(nanoseconds)
    }

    @inline(__always) static func adding(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }
}
