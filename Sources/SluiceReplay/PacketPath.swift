// Path: Sources/SluiceReplay/PacketPath.swift — one packet pipeline, assembled but not running:
// input (a capture or an interface) -> parse/classify -> action -> output (a file, an interface,
// nowhere), its buffer pool, and the traffic controller that learns from its TX free path.
// `Replay` runs one on its own runtime; `sluice run` runs several on one.
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO
import SluiceTraffic
import Synchronization

/// Where a packet path's packets come from.
public enum PacketInput: Sendable, Equatable {
    /// A pcap or pcapng savefile, paced, read `loopCount` times.
    case capture(path: String, pacing: ReplayPacing, loopCount: Int)
    /// An interface, through an AF_PACKET TPACKET_V3 RX ring (never exhausted: stop it). Pipelines
    /// whose configurations name the same fanout group share the interface's frames by flow hash.
    case interface(AFPacketRXConfiguration)
    /// An interface queue, through an AF_XDP socket and the XDP program libxdp attaches for it
    /// (native, else generic, as `mode` allows; never exhausted: stop it).
    case afXDP(AFXDPConfiguration)
}

/// Everything one packet path needs; checked by `PacketPath.init`.
public struct PacketPathConfiguration: Sendable {
    public var name: String
    public var input: PacketInput
    public var output: ReplayOutput
    /// NUMA node for the pool and rings (the node of the path's first core), nil for any.
    public var numaNode: Int?
    public var burstCount = 32
    public var ringCapacity = 1024
    /// Buffers in the pipeline's pool. Unless set, sized to what the rings and bursts can hold: the
    /// power of two above `inFlightMax` (4096 for rings of 1024 and bursts of 32). A larger pool only
    /// costs set-up (the kernel zeroes it as it faults in) and cache and TLB reach.
    public var poolBufferCount: Int {
        get { poolBufferCountSet ?? Self.poolBufferCountFitting(ringCapacity: ringCapacity, burstCount: burstCount, links: linkCount) }
        set { poolBufferCountSet = newValue }
    }
    private var poolBufferCountSet: Int?
    /// Items the rings, bursts and stage caches of a path with `links` rings (at least 3 counted) can
    /// hold at once; the pool must exceed it.
    public static func inFlightMax(ringCapacity: Int, burstCount: Int, links: Int = 3) -> Int {
        let rings = max(3, links)
        return ringCapacity * rings + burstCount * (rings + 1)
    }
    /// `inFlightMax` for rings of different sizes (a resized pipeline): every ring full, every burst
    /// and the source's cache (`sourceCacheReserve`) held at once. The pool must exceed it. As the
    /// fixed-ring formula does, a pipeline of fewer than 3 rings is counted as 3 (the missing ones
    /// at its largest ring): the same bound at every size.
    public static func inFlightMax(ringCapacities: [Int], burstCount: Int) -> Int {
        let rings = max(3, ringCapacities.count)
        let missing = (rings - ringCapacities.count) * (ringCapacities.max() ?? 0)
        return ringCapacities.reduce(0, +) + missing + burstCount * (rings + 1) + sourceCacheReserve
    }
    /// Buffers a source may hold in its cache besides the rings and bursts.
    public static let sourceCacheReserve = 256
    /// The pool may grow to this many buffers while running (`PacketPath.growPool`, the service's
    /// `buffers_max`); nil: it stays at `poolBufferCount`. Any input: interface and AF_XDP sources copy
    /// each frame out of the kernel's ring into a pool buffer, so no socket holds a pool buffer.
    public var poolBufferCountMax: Int?
    /// The default pool: the power of two above `inFlightMax` (at least 256 more, for the source's cache).
    public static func poolBufferCountFitting(ringCapacity: Int, burstCount: Int, links: Int = 3) -> Int {
        let needed = inFlightMax(ringCapacity: ringCapacity, burstCount: burstCount, links: links) + sourceCacheReserve
        return min(1 << (Int.bitWidth - (needed - 1).leadingZeroBitCount), Limits.ringCapacityMax)
    }
    /// Pool buffer size; with `bufferSizeFollowsCapture`, a capture input raises it to the capture's
    /// snapshot length, up to `captureBufferSizeBytesMax`. Longer frames are dropped, counted
    /// (`frame-larger-than-buffer`), never cut.
    public var bufferSizeBytes = 2048
    /// Raise `bufferSizeBytes` to fit the capture's snapshot length (false: exactly `bufferSizeBytes`).
    public var bufferSizeFollowsCapture = true
    /// Largest buffer a capture's snapshot length can ask for: a 9216-byte jumbo frame.
    public static let captureBufferSizeBytesMax = 9216
    public var stages = ReplayStages.classifyAndAct
    /// Record each packet's release-to-sink time (discard output only; a cross-core line per packet).
    public var measuresLatency = false
    public var classifier: ClassifierConfiguration
    public var rules: RuleTable
    /// Named outputs besides `output` (pcap file, interface or discard; at most
    /// `OutputLimits.outputCountMax`), in the order of `rules.outputs`, whose names they carry.
    /// Packets a rule sends to one go there instead of `output`. Needs the action stage.
    public var outputs: [NamedOutput] = []
    /// Stages of the built pipeline, source and sink included: `stages`' count, plus the dispatch
    /// stage ("outputs") when there are named outputs.
    public var stageCount: Int { stages.rawValue + (outputs.isEmpty ? 0 : 1) }
    /// Rings between the stages (the outputs stage adds one).
    public var linkCount: Int { stageCount - 1 }
    /// Divide the output among source ids by this policy (see `ReplayConfiguration.traffic`).
    public var traffic: TrafficPolicy?
    /// A capture input read by several paths: this one takes only its share of the flows.
    public var captureSplit: CaptureSplit?
    /// With a capture input at top speed: read only these blocks of the capture (several paths read
    /// the others), every loop of `CaptureBlocks.loopCount`. Not with `captureSplit`.
    public var captureBlocks: CaptureBlockShare?

    public init(name: String, input: PacketInput, output: ReplayOutput, numaNode: Int? = nil) {
        self.name = name
        self.input = input
        self.output = output
        self.numaNode = numaNode
        // Valid by construction: no entries, every packet is source 0, the flow hash still computed.
        self.classifier = try! ClassifierConfiguration(key: .sourceMAC)
        self.rules = try! RuleTable(rules: [])
    }
}

/// Lets a control thread end a source early: from `stop()` on the source produces nothing and
/// reports itself exhausted, so its pipeline drains what already entered. Any thread.
public final class StopSignal: Sendable {
    private let stopped = Atomic<Bool>(false)
    public init() {}
    public func stop() { stopped.store(true, ordering: .releasing) }
    public var isStopped: Bool { stopped.load(ordering: .acquiring) }
}

/// A source that ends at its body's end or when its `StopSignal` fires, whichever is first. A live
/// source (`drainsOnStop`) first takes what already arrived: bursts until one comes back empty, at
/// most `drainBurstsMax`, so frames the kernel queued before the stop are not left unread.
struct StoppableSource<Body: SourceBody>: SourceBody {
    static var drainBurstsMax: Int { 256 }

    var body: Body
    let signal: StopSignal
    let drainsOnStop: Bool
    private var drainBurstsLeft: Int

    init(body: Body, signal: StopSignal, drainsOnStop: Bool) {
        self.body = body
        self.signal = signal
        self.drainsOnStop = drainsOnStop
        self.drainBurstsLeft = drainsOnStop ? Self.drainBurstsMax : 0
    }

    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        guard signal.isStopped else { return body.produce(into: items) }
        guard drainBurstsLeft > 0 else { return 0 }
        let produced = body.produce(into: items)
        drainBurstsLeft = produced == 0 ? 0 : drainBurstsLeft - 1
        return produced
    }

    func sleepHintNs(nowNs: UInt64) -> UInt64? {
        guard signal.isStopped else { return body.sleepHintNs(nowNs: nowNs) }
        return drainBurstsLeft > 0 ? nil : UInt64.max
    }

    var isExhausted: Bool { body.isExhausted || (signal.isStopped && drainBurstsLeft == 0) }
}

/// Where each stage of a pipeline runs: the source on the first of `workers`, the other stages
/// spread in order over the rest (all on the one when there is one). Worker indices.
public func spreadPlacement(stageCount: Int, workers: [Int]) -> [Int] {
    precondition(!workers.isEmpty, "a placement needs a worker")
    return (0..<stageCount).map { stage in
        workers.count == 1 || stage == 0 ? workers[0]
            : workers[1 + (stage - 1) * (workers.count - 1) / max(stageCount - 1, 1)]
    }
}

/// A built packet path: pool, source, stages, sink and (with a policy) traffic controller. Hand
/// `pipeline` to a `Runtime`; after it drains (or after `stop` and a drain), call `finish` once to
/// flush the sink. Control-plane object: counters and snapshots may be read from any thread, but
/// `controller` belongs to the one thread that polls it.
public final class PacketPath: @unchecked Sendable {  // unchecked: `controller` has one polling thread
    public let configuration: PacketPathConfiguration
    public let pipeline: Pipeline
    public let stopSignal = StopSignal()
    /// The traffic controller, when the configuration has a policy. Poll it from one thread only.
    public let controller: TrafficController?
    let pool: BufferPool
    let drops = DropCounterTable()
    /// Time from release by the source to the discard sink, per packet (discard output only).
    let latency = LatencyHistogram()
    private let input: Input
    private let sink: Sink
    /// Keeps the pcap sink's completion tap alive (the sink holds it unretained).
    private let writtenTap: WrittenRecordTap?
    /// Keeps the AF_XDP sink's completion tap alive (its transmitter holds it unretained).
    private let xdpTap: XDPCompletionTap?
    private let finished = Mutex<String??>(nil)
    /// The named outputs' sinks and the per-output counters; nil without named outputs.
    private let namedOutputs: NamedOutputSinks?

    private enum Input {
        case capture(PcapSource)
        case interface(AFPacketSource)
        case afXDP(AFXDPSource)
    }

    private enum Sink {
        case pcap(PcapSink)
        case interface(AFPacketSink)
        case shaped(ShapedTXSink)
        case afXDP(AFXDPSink)
        case discard
    }

    public init(_ configuration: PacketPathConfiguration) throws(ReplayError) {
        try Self.validate(configuration)
        self.configuration = configuration
        let numaNode = configuration.numaNode
        // A capture's buffers come back from the last stage to the source on a ring of their own (one
        // line per 8 buffers) instead of through the shared free list (a contended cell per buffer).
        var returnsIn: RingProducer?
        var builder = PipelineBuilder(name: configuration.name, burstCount: configuration.burstCount)
        // What the pcap output records: the capture's own format, or Ethernet in nanoseconds.
        var outputFormat: (linkType: Int, linkTypeField: UInt32?, snapshotLength: Int, nanosecond: Bool) =
            (1, nil, 262_144, true)
        var source: PcapSource?
        var afSource: AFPacketSource?
        var xdpSource: AFXDPSource?
        switch configuration.input {
        case .capture(let path, let pacing, let loopCount):
            let reader = try Self.openCapture(path)
            guard loopCount == 1 || reader.isRegularFile else {
                throw .invalidConfiguration(.loopOnStream(path: path))
            }
            for case .pcapFile(let output) in [configuration.output] + configuration.outputs.map(\.output) {
                var status = stat()
                if stat(output, &status) == 0, UInt64(status.st_dev) == reader.device,
                   UInt64(status.st_ino) == reader.inode {
                    throw .outputIsInput(path: output)
                }
            }
            let bufferSizeBytes = configuration.bufferSizeFollowsCapture
                ? Self.bufferSizeBytes(configured: configuration.bufferSizeBytes, snapshotLength: reader.snapshotLength)
                : configuration.bufferSizeBytes
            do {
                pool = try BufferPool(bufferCount: configuration.poolBufferCount, bufferSizeBytes: bufferSizeBytes,
                                      numaNode: numaNode, bufferCountMax: configuration.poolBufferCountMax)
            } catch { throw .pool(error) }
            let returnEnds: RingEnds
            // Holds every buffer the pool may ever have, grown or not.
            let returnCapacity = Self.returnRingCapacity(configuration.poolBufferCountMax ?? configuration.poolBufferCount)
            do { returnEnds = try makeRing(capacity: returnCapacity, numaNode: numaNode) }
            catch { throw .pipeline(.ring(error)) }
            returnsIn = .some(returnEnds.producer)
            let capture: PcapSource
            if let share = configuration.captureBlocks {
                precondition(configuration.captureSplit == nil && pacing == .topSpeed
                             && share.blocks.loopCount == loopCount, "blocks are read at top speed, by themselves")
                do { capture = try PcapSource(reader: reader, pool: pool, blocks: share, returns: returnEnds.consumer) }
                catch { throw .capture(error) }
            } else {
                capture = PcapSource(reader: reader, pool: pool, pacing: pacing, loopCount: loopCount,
                                     returns: returnEnds.consumer, split: configuration.captureSplit)
            }
            outputFormat = (capture.linkType, capture.linkTypeField, capture.snapshotLength, capture.format.nanosecond)
            source = capture
        case .interface(let rx):
            do {
                pool = try BufferPool(bufferCount: configuration.poolBufferCount, bufferSizeBytes: configuration.bufferSizeBytes,
                                      numaNode: numaNode, bufferCountMax: configuration.poolBufferCountMax)
            } catch { throw .pool(error) }
            do { afSource = try AFPacketSource(configuration: rx, pool: pool) }
            catch { throw .input(interface: rx.interface, error) }
        case .afXDP(let rx):
            do {
                pool = try BufferPool(bufferCount: configuration.poolBufferCount, bufferSizeBytes: configuration.bufferSizeBytes,
                                      numaNode: numaNode, bufferCountMax: configuration.poolBufferCountMax)
            } catch { throw .pool(error) }
            var settings = rx
            settings.numaNode = settings.numaNode ?? numaNode
            do { xdpSource = try AFXDPSource(configuration: settings, pool: pool) }
            catch { throw .afXDPInput(interface: rx.interface, error) }
        }
        builder.carriesBuffers(of: pool)  // debug builds: every buffer back or in flight at teardown
        if let source {
            input = .capture(source)
            builder.source(StoppableSource(body: source, signal: stopSignal, drainsOnStop: false), name: "pcap-rx")
        } else if let xdpSource {
            input = .afXDP(xdpSource)
            builder.source(StoppableSource(body: xdpSource, signal: stopSignal, drainsOnStop: true), name: "afxdp-rx")
        } else {
            let afSource = afSource!
            input = .interface(afSource)
            builder.source(StoppableSource(body: afSource, signal: stopSignal, drainsOnStop: true), name: "afpacket-rx")
        }
        var reporter: CompletionReporter?
        if let policy = configuration.traffic {
            do {
                let channel = try makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: max(policy.sources.count, 1))
                reporter = .some(channel.reporter)
                controller = try TrafficController(policy: policy, receiver: channel.receiver)
            } catch { throw .traffic(error) }
        } else {
            controller = nil
        }
        let sourceCount = max(configuration.traffic?.sources.count ?? 1, 1)
        if configuration.stages != .none {
            builder.stage(ParseClassifyStage(pool: pool, classifier: Classifier(configuration.classifier),
                                             drops: drops), name: "classify")
        }
        if configuration.stages == .classifyAndAct {
            builder.stage(ActionStage(pool: pool, rules: configuration.rules, drops: drops), name: "action")
        }
        if configuration.outputs.isEmpty {
            namedOutputs = nil
        } else {
            let sinks = try NamedOutputSinks(configuration.outputs, pool: pool, burstCount: configuration.burstCount,
                                             format: outputFormat)
            namedOutputs = sinks
            builder.stage(OutputDispatchStage(pool: pool, sinks: sinks), name: "outputs")
        }
        switch configuration.output {
        case .pcapFile(let path):
            var tap: WrittenRecordTap?
            if let completions = reporter.take() {
                tap = WrittenRecordTap(pool: pool, reporter: completions, sourceCount: sourceCount)
            }
            writtenTap = tap
            xdpTap = nil
            do {
                let pcapSink = try PcapSink(path: path, pool: pool, linkType: outputFormat.linkType,
                                            linkTypeField: outputFormat.linkTypeField,
                                            snapshotLength: outputFormat.snapshotLength,
                                            nanosecond: outputFormat.nanosecond, returns: returnsIn.take(),
                                            writtenHook: tap?.hook)
                sink = .pcap(pcapSink)
                builder.stage(pcapSink, name: "pcap-tx")
            } catch { throw .capture(error) }
        case .discard:
            writtenTap = nil
            xdpTap = nil
            sink = .discard
            builder.stage(DiscardSink(pool: pool, returns: returnsIn.take(),
                                      latency: configuration.measuresLatency ? latency : nil), name: "discard")
        case .interface(let name):
            writtenTap = nil
            xdpTap = nil
            do {
                if let controller, let completions = reporter.take() {
                    let shaped = try ShapedTXSink(configuration: AFPacketTXConfiguration(interface: name), pool: pool,
                                                  controller: controller, reporter: completions, sourceCount: sourceCount)
                    sink = .shaped(shaped)
                    builder.stage(shaped, name: "shaped-tx")
                } else {
                    let afSink = try AFPacketSink(configuration: AFPacketTXConfiguration(interface: name), pool: pool)
                    sink = .interface(afSink)
                    builder.stage(afSink, name: "afpacket-tx")
                }
            } catch { throw .output(interface: name, error) }
        case .afXDP(let tx):
            writtenTap = nil
            // With a policy, the completion ring feeds the controller as the AF_PACKET TX ring's free
            // path does: one event per frame the kernel finished (or refused), on the sink's worker.
            var tap: XDPCompletionTap?
            if let completions = reporter.take() {
                tap = XDPCompletionTap(reporter: completions, sourceCount: sourceCount)
            }
            xdpTap = tap
            var settings = tx
            settings.numaNode = settings.numaNode ?? numaNode
            do {
                let xdpSink = try AFXDPSink(configuration: settings, pool: pool, completionHook: tap?.hook)
                tap?.records = xdpSink.frameRecords
                sink = .afXDP(xdpSink)
                builder.stage(xdpSink, name: "afxdp-tx")
            } catch { throw .afXDPOutput(interface: tx.interface, error) }
        }
        let links = builder.stageCount - 1
        do {
            pipeline = try builder.build(ringCapacities: Array(repeating: configuration.ringCapacity, count: links),
                                         numaNode: numaNode)
        } catch { throw .pipeline(error) }
    }

    private static func openCapture(_ path: String) throws(ReplayError) -> PcapReader {
        do { return try PcapReader(path: path) } catch { throw .capture(error) }
    }

    /// The pool's buffer size for a capture: the configured size, raised to the capture's snapshot
    /// length up to `captureBufferSizeBytesMax`, so frames up to that size are carried whole.
    public static func bufferSizeBytes(configured: Int, snapshotLength: Int) -> Int {
        max(configured, min(snapshotLength, PacketPathConfiguration.captureBufferSizeBytesMax))
    }

    /// A power of two that holds every buffer of the pool, so recycling never overflows to the free list.
    static func returnRingCapacity(_ bufferCount: Int) -> Int {
        min(1 << (Int.bitWidth - (bufferCount - 1).leadingZeroBitCount), Limits.ringCapacityMax)
    }

    /// Sizes against bounds and pacing against sense. Bad values are typed errors, never traps.
    public static func validate(_ c: PacketPathConfiguration) throws(ReplayError) {
        if case .capture(_, let pacing, let loopCount) = c.input {
            guard loopCount >= 1 else { throw .invalidConfiguration(.loopCount(loopCount)) }
            do { try pacing.validate() } catch { throw .invalidConfiguration(.pacing(error)) }
        }
        guard (1...Limits.burstCountMax).contains(c.burstCount) else {
            throw .invalidConfiguration(.burstCount(c.burstCount, max: Limits.burstCountMax))
        }
        guard c.ringCapacity >= 2, c.ringCapacity <= Limits.ringCapacityMax, c.ringCapacity & (c.ringCapacity - 1) == 0 else {
            throw .invalidConfiguration(.ringCapacity(c.ringCapacity, max: Limits.ringCapacityMax))
        }
        try validateOutputs(c)
        let inFlightMax = PacketPathConfiguration.inFlightMax(ringCapacity: c.ringCapacity, burstCount: c.burstCount, links: c.linkCount)
        guard c.poolBufferCount <= Limits.ringCapacityMax else {
            throw .invalidConfiguration(.poolAboveMax(c.poolBufferCount, max: Limits.ringCapacityMax))
        }
        guard c.poolBufferCount > inFlightMax else {
            throw .invalidConfiguration(.poolBelowInFlight(c.poolBufferCount, inFlight: inFlightMax))
        }
        if let max = c.poolBufferCountMax {
            guard max >= c.poolBufferCount else {
                throw .invalidConfiguration(.poolMaxBelowCount(max: max, count: c.poolBufferCount))
            }
            guard max <= Limits.ringCapacityMax else {
                throw .invalidConfiguration(.poolAboveMax(max, max: Limits.ringCapacityMax))
            }
        }
    }

    /// Named outputs: within the bound, the rule table's names in its order, pcap, interface or
    /// discard, only with the action stage, and no file written twice.
    static func validateOutputs(_ c: PacketPathConfiguration) throws(ReplayError) {
        guard !c.outputs.isEmpty || !c.rules.hasOutputs else {
            throw .invalidConfiguration(.outputs("the rules name outputs \(c.rules.outputs) the pipeline does not declare"))
        }
        guard !c.outputs.isEmpty else { return }
        guard c.outputs.count <= OutputLimits.outputCountMax else {
            throw .invalidConfiguration(.outputs("\(c.outputs.count) named outputs, at most \(OutputLimits.outputCountMax)"))
        }
        guard c.stages == .classifyAndAct else {
            throw .invalidConfiguration(.outputs("rules pick the output in the action stage: needs all stages"))
        }
        guard c.rules.outputs == c.outputs.map(\.name) else {
            throw .invalidConfiguration(.outputs("the rule table was built for outputs \(c.rules.outputs), the pipeline declares \(c.outputs.map(\.name))"))
        }
        var files: Set<String> = []
        if case .pcapFile(let path) = c.output { files.insert(path) }
        for named in c.outputs {
            switch named.output {
            case .pcapFile(let path):
                guard files.insert(path).inserted else {
                    throw .invalidConfiguration(.outputs("output '\(named.name)': '\(path)' is written by another output"))
                }
            case .interface, .discard: break
            case .afXDP:
                throw .invalidConfiguration(.outputs("output '\(named.name)': AF_XDP named outputs are not supported (pcap, interface, discard)"))
            }
        }
    }

    /// True when the sink keeps working on its worker after the pipeline drained (a shaped TX stage
    /// serving its backlogs on idle turns): `finish` it only once the runtime has stopped.
    public var sinkWorksWhenIdle: Bool {
        if case .shaped = sink { return true }
        if case .afXDP = sink { return true }  // kicks and completion scans while frames are pending
        return false
    }

    /// Frames such a sink still holds (backlogs, and on the ring unconfirmed), as of its last turn;
    /// 0 for other sinks.
    public var sinkHeldFrames: Int {
        if case .shaped(let shaped) = sink { return shaped.heldFrames.load(ordering: .relaxed) }
        if case .afXDP(let xdpSink) = sink { return xdpSink.heldFrames.load(ordering: .relaxed) }
        return 0
    }

    /// Packets that entered the pipeline (a paced capture's next record, read but not yet due when
    /// the source stopped, did not).
    public var packetsIn: UInt64 { pipeline.entered.load(ordering: .acquiring) }

    /// Bytes the source read (for a paced capture, including a record read but not yet released).
    public var bytesIn: UInt64 {
        switch input {
        case .capture(let source): source.counters.bytes.load(ordering: .relaxed)
        case .interface(let source): source.statistics.snapshot().bytes
        case .afXDP(let source): source.statistics.snapshot().bytes
        }
    }

    /// Buffers in the pool now, and the most it may grow to (`PacketPathConfiguration.poolBufferCountMax`).
    public var poolBufferCount: Int { pool.bufferCount }
    public var poolBufferCountMax: Int { pool.bufferCountMax }

    /// Grows the pool to `count` buffers while the path runs (control plane; see `BufferPool.grow`).
    public func growPool(to count: Int) throws(PoolError) { try pool.grow(to: count) }

    /// The fewest buffers the pool may shrink to now: its configured `poolBufferCount`, and more than
    /// its rings (at their current capacities), bursts and the source's cache can hold at once
    /// (`PacketPathConfiguration.inFlightMax`).
    public var poolBufferCountFloor: Int {
        let needed = PacketPathConfiguration.inFlightMax(ringCapacities: pipeline.ringCapacities,
                                                         burstCount: configuration.burstCount)
        return max(configuration.poolBufferCount, needed + 1)
    }

    /// Shrinks the pool towards `count` buffers while the path runs, retiring only free ones, waiting
    /// up to `waitNs` for recycled ones (control plane; see `BufferPool.shrink`); returns how many it retired. Throws `cannotShrink` when `count`
    /// is below `poolBufferCountFloor`. Call it after shrinking the rings, never before.
    @discardableResult
    public func shrinkPool(to count: Int, waitNs: UInt64 = 0) throws(PoolError) -> Int {
        let floor = poolBufferCountFloor
        guard count >= floor else { throw .cannotShrink(from: pool.bufferCount, to: count, min: floor) }
        return try pool.shrink(to: count, waitNs: waitNs)
    }

    /// True when the input is a capture file (its source waits for buffers and ring room; an
    /// interface's kernel ring does not wait).
    public var isCaptureInput: Bool {
        if case .capture = input { return true }
        return false
    }

    /// Records of a split capture that other paths took (`captureSplit`); 0 otherwise.
    public var othersRecords: UInt64 {
        if case .capture(let source) = input { return source.counters.othersRecords.load(ordering: .relaxed) }
        return 0
    }

    /// Records of a capture too large for the pool's buffers, skipped (and counted as drops).
    public var oversizeRecords: UInt64 {
        if case .capture(let source) = input { return source.counters.oversizeDrops.load(ordering: .relaxed) }
        return 0
    }

    /// Allocations that found the pool empty: for an interface or AF_XDP input, frames dropped
    /// (`pool-exhausted`); for a capture, the source waited (`poolWaits`). Any thread.
    public var poolExhaustions: UInt64 { pool.exhaustedCount.load(ordering: .relaxed) }

    /// Times a capture source found no free buffer and waited (not a drop).
    public var poolWaits: UInt64 {
        if case .capture(let source) = input { return source.counters.poolWaits.load(ordering: .relaxed) }
        return 0
    }

    /// The mode the AF_XDP input's XDP program was attached in (native or generic); nil for other inputs.
    public var afXDPInputMode: AFXDPMode? {
        if case .afXDP(let source) = input { return source.mode }
        return nil
    }

    /// Where a capture input's reading stands (`PcapSource.position`): after the path was stopped
    /// (`stopSignal`) and its pipeline drained, the record the paths taking over start at. nil for
    /// other inputs, and when the capture cannot be taken over from there.
    public var capturePosition: CapturePosition? {
        if case .capture(let source) = input { return source.position }
        return nil
    }

    /// Makes a capture input start at `position` instead of the first record: another path replayed
    /// everything before it (`PcapSource.takeOver`). Before the launch only, on a capture input.
    /// Throws `notResumable` when the file cannot be read from there.
    public func takeOver(at position: CapturePosition) throws(PcapError) {
        guard case .capture(let source) = input else { preconditionFailure("only a capture input is taken over at a record") }
        try source.takeOver(at: position)
    }

    /// Device and inode of the capture file the input reads now; nil for other inputs.
    public var captureFileIdentity: (device: UInt64, inode: UInt64)? {
        if case .capture(let source) = input { return source.fileIdentity }
        return nil
    }

    /// The input's error that ended it early (a bad record), if any.
    public var inputFailure: String? { inputError.map { "\($0)" } }

    /// The capture's error that ended it early (a bad record), typed; nil for an interface input.
    public var inputError: PcapError? {
        if case .capture(let source) = input { return source.failure }
        return nil
    }

    /// The pcap output's first write error, typed; nil for other outputs.
    public var outputError: PcapError? {
        if case .pcap(let pcapSink) = sink { return pcapSink.failure }
        return nil
    }

    /// Flushes the sink. Call once the pipeline has drained and, for a sink that `sinkWorksWhenIdle`,
    /// only after the runtime has stopped (its worker would race this thread on the TX ring): the pcap
    /// file's buffer to disk, the TX ring's queued frames onto the wire (bounded waits). Returns the
    /// first failure (input or output), nil when clean. Later calls return the first call's answer.
    @discardableResult
    public func finish() -> String? {
        finished.withLock { done in
            if let result = done { return result }
            var failure = inputFailure
            switch sink {
            case .pcap(let pcapSink):
                do { try pcapSink.finish() } catch { failure = failure ?? "\(error)" }
            case .interface(let afSink):
                if !afSink.finish() { failure = failure ?? "frames still queued on the TX ring after 1 s" }
            case .shaped(let shaped):
                if !shaped.finish() { failure = failure ?? "frames still waiting to be sent after 2 s" }
            case .afXDP(let xdpSink):
                if !xdpSink.finish() { failure = failure ?? "frames still queued on the AF_XDP TX ring after 1 s" }
            case .discard:
                break
            }
            if let namedOutputs, let named = namedOutputs.finish() { failure = failure ?? named }
            done = .some(failure)
            return failure
        }
    }

    /// Every drop, by reason: input drops, parse and action drops, TX drops, write errors.
    public func dropCounts() -> [(reason: String, count: UInt64)] {
        let counted = drops.snapshot()
        var result: [(reason: String, count: UInt64)] = []
        switch input {
        case .interface(let source):
            result += source.statistics.snapshot().drops
        case .afXDP(let source):
            try? source.statistics.refreshKernelCounters()  // the kernel's RX drops: one getsockopt
            result += source.statistics.snapshot().drops
        case .capture(let source):
            let oversize = source.counters.oversizeDrops.load(ordering: .relaxed)
            if oversize > 0 { result.append(("frame-larger-than-buffer", oversize)) }
        }
        result += DropReason.allCases.compactMap { reason in
            counted[reason] > 0 ? (reason: reason.description, count: counted[reason]) : nil
        }
        result += sinkDropCounts()
        if let namedOutputs { result += namedOutputs.dropCounts() }
        return result
    }

    /// The sink's drops by reason: write errors, TX drops.
    private func sinkDropCounts() -> [(reason: String, count: UInt64)] {
        var result: [(reason: String, count: UInt64)] = []
        switch sink {
        case .pcap(let pcapSink):
            let errors = pcapSink.writeErrors.load(ordering: .relaxed)
            if errors > 0 { result.append(("write-error", errors)) }
        case .interface(let afSink):
            result += afSink.statistics.snapshot().drops
        case .afXDP(let xdpSink):
            try? xdpSink.statistics.refreshKernelCounters()  // tx_invalid_descs: one getsockopt
            result += xdpSink.statistics.snapshot().drops
        case .shaped(let shaped):
            result += shaped.statistics.snapshot().drops
            let backlog = shaped.counters.backlogDrops.load(ordering: .relaxed)
            if backlog > 0 { result.append(("source-backlog-full", backlog)) }
            let unknown = shaped.counters.unknownSourceDrops.load(ordering: .relaxed)
            if unknown > 0 { result.append(("source-not-in-policy", unknown)) }
            let malformed = shaped.counters.malformedDrops.load(ordering: .relaxed)
            if malformed > 0 { result.append(("frame-size-not-for-port", malformed)) }
            let ringFull = shaped.counters.ringFullDrops.load(ordering: .relaxed)
            if ringFull > 0 { result.append(("tx-ring-full-after-admission", ringFull)) }
            let unsent = shaped.counters.unsentAtFinish.load(ordering: .relaxed)
            if unsent > 0 { result.append(("unsent-at-finish", unsent)) }
        case .discard:
            break
        }
        return result
    }

    /// Packets, bytes and drops per output: the sink as "default", then each named output. Empty
    /// without named outputs. The sink's drops are its own, as in `dropCounts`.
    public func outputCounts() -> [OutputCount] {
        guard let namedOutputs else { return [] }
        let sinkCounts = namedOutputs.counters.counts(output: 0)
        let sinkDrops = sinkDropCounts()
        var result = [OutputCount(name: OutputLimits.sinkName, packets: sinkCounts.packets, bytes: sinkCounts.bytes,
                                  drops: sinkDrops.reduce(0) { $0 + $1.count })]
        for (index, output) in configuration.outputs.enumerated() {
            let counts = namedOutputs.counters.counts(output: index + 1)
            result.append(OutputCount(name: output.name, packets: counts.packets, bytes: counts.bytes,
                                      drops: namedOutputs.drops(output: index)))
        }
        return result
    }

    /// Release-to-sink latency percentiles, when measured (discard output with `measuresLatency`).
    public func latencyPercentile(_ percentile: Double) -> UInt64? {
        guard case .discard = sink, configuration.measuresLatency else { return nil }
        return latency.value(atPercentile: percentile)
    }
}

/// The AF_XDP sink's completion scan as a completion source for the traffic controller, the way
/// `ShapedTXSink`'s tap serves the AF_PACKET TX ring: per frame the kernel finished (or refused),
/// one event with the frame's source id, flow hash, length and enqueue time. Runs on the sink's
/// worker (or `finish`'s thread). Not shaped: the sink does not wait for the controller's grants.
final class XDPCompletionTap: @unchecked Sendable {  // unchecked: used only on the TX stage's thread
    @exclusivity(unchecked) var reporter: CompletionReporter
    /// The transmitter's per-frame records; set once the sink exists, before any frame is sent.
    var records: UnsafeMutablePointer<AFPacketTXSlotRecord>?
    let sourceCount: Int

    init(reporter: consuming CompletionReporter, sourceCount: Int) {
        precondition(sourceCount > 0, "a tap reports for at least one source")
        self.reporter = reporter
        self.sourceCount = sourceCount
    }

    /// The hook to give the transmitter. Holds the tap unretained: keep the tap as long as the sink.
    var hook: AFPacketTXCompletionHook {
        AFPacketTXCompletionHook(Self.function, context: Unmanaged.passUnretained(self).toOpaque())
    }

    static let function: AFPacketTXCompletionHook.Function = { context, slot, tag, length, _ in
        Unmanaged<XDPCompletionTap>.fromOpaque(context!)._withUnsafeGuaranteedRef { tap in
            // A refused frame also left the queue: report it, as the AF_PACKET tap does.
            guard let records = tap.records else { return }
            let record = records[Int(slot)]
            let source = min(Int(tag), tap.sourceCount - 1)
            tap.reporter.report(CompletionEvent(sourceID: UInt16(source), flowHash: record.flowHash, bytes: length,
                                                enqueueNs: record.enqueueNs,
                                                completionNs: max(Clock.monotonicNs(), record.enqueueNs)))
        }
    }
}

/// A named extra output of a packet path: packets whose rule names `name` go to `output`.
public struct NamedOutput: Sendable, Equatable {
    public var name: String
    /// A pcap file, an interface (AF_PACKET TX ring) or discard; not AF_XDP.
    public var output: ReplayOutput

    public init(name: String, output: ReplayOutput) {
        self.name = name
        self.output = output
    }
}

/// What one output took: packets and bytes handed to it, and what it dropped (failed writes,
/// a full TX ring).
public struct OutputCount: Sendable, Equatable {
    public var name: String
    public var packets: UInt64
    public var bytes: UInt64
    public var drops: UInt64
}

/// The sinks of a path's named outputs, made with the path and kept as long as it: the dispatch
/// stage reaches them unretained, through `kinds` and `references`, and stages bursts for them in
/// `staged` (`burstCount` slots per output). Counters readable from any thread; the rest belongs to
/// the dispatch stage's worker (and `finish`, once the pipeline has drained).
final class NamedOutputSinks: @unchecked Sendable {  // unchecked: staging touched by one worker at a time
    enum Sink {
        case pcap(PcapSink)
        case interface(AFPacketSink)
        case discard
    }

    static let kindPcap: UInt8 = 0
    static let kindInterface: UInt8 = 1
    static let kindDiscard: UInt8 = 2

    let names: [String]
    let sinks: [Sink]
    let counters: OutputCounters
    let burstCount: Int
    let count: Int
    let kinds: UnsafeMutablePointer<UInt8>
    let references: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Buffer indices waiting for output n at n * burstCount ..< + stagedCounts[n].
    let staged: UnsafeMutablePointer<UInt64>
    let stagedCounts: UnsafeMutablePointer<Int>
    let stagedBytes: UnsafeMutablePointer<UInt64>
    /// Packets each discard output freed (its drops: sent nowhere, on purpose, so counted apart).
    let discarded: UnsafeMutablePointer<Atomic<UInt64>>

    init(_ outputs: [NamedOutput], pool: BufferPool, burstCount: Int,
         format: (linkType: Int, linkTypeField: UInt32?, snapshotLength: Int, nanosecond: Bool)) throws(ReplayError) {
        precondition(!outputs.isEmpty, "no named outputs: no dispatch")
        precondition(outputs.count <= OutputLimits.outputCountMax, "more named outputs than the bound")
        var sinks: [Sink] = []
        for output in outputs {
            switch output.output {
            case .pcapFile(let path):
                do {
                    sinks.append(.pcap(try PcapSink(path: path, pool: pool, linkType: format.linkType,
                                                    linkTypeField: format.linkTypeField,
                                                    snapshotLength: format.snapshotLength,
                                                    nanosecond: format.nanosecond)))
                } catch { throw .capture(error) }
            case .interface(let name):
                do {
                    sinks.append(.interface(try AFPacketSink(configuration: AFPacketTXConfiguration(interface: name),
                                                             pool: pool)))
                } catch { throw .output(interface: name, error) }
            case .discard:
                sinks.append(.discard)
            case .afXDP:
                preconditionFailure("validated: no AF_XDP named output")
            }
        }
        names = outputs.map(\.name)
        self.sinks = sinks
        self.burstCount = burstCount
        count = outputs.count
        counters = OutputCounters(outputCount: outputs.count + 1)
        kinds = .allocate(capacity: count)
        references = .allocate(capacity: count)
        for (index, sink) in sinks.enumerated() {
            switch sink {
            case .pcap(let pcap):
                kinds[index] = Self.kindPcap
                references[index] = Unmanaged.passUnretained(pcap).toOpaque()
            case .interface(let interface):
                kinds[index] = Self.kindInterface
                references[index] = Unmanaged.passUnretained(interface).toOpaque()
            case .discard:
                kinds[index] = Self.kindDiscard
                references[index] = nil
            }
        }
        staged = .allocate(capacity: count * burstCount)
        stagedCounts = .allocate(capacity: count)
        stagedCounts.initialize(repeating: 0, count: count)
        stagedBytes = .allocate(capacity: count)
        stagedBytes.initialize(repeating: 0, count: count)
        discarded = .allocate(capacity: count)
        for index in 0..<count { (discarded + index).initialize(to: Atomic<UInt64>(0)) }
    }

    deinit {
        kinds.deallocate()
        references.deallocate()
        staged.deallocate()
        stagedCounts.deallocate()
        stagedBytes.deallocate()
        discarded.deinitialize(count: count)
        discarded.deallocate()
    }

    /// Hands output `index`'s staged burst to its sink (which frees every buffer) and counts it.
    @inline(__always)
    func flush(_ index: Int, pool: Unmanaged<BufferPool>) {
        let filled = stagedCounts[index]
        guard filled > 0 else { return }
        let burst = UnsafeMutableBufferPointer(start: staged + index * burstCount, count: filled)
        switch kinds[index] {
        case Self.kindPcap:
            _ = Unmanaged<PcapSink>.fromOpaque(references[index]!)._withUnsafeGuaranteedRef { $0.process(burst) }
        case Self.kindInterface:
            _ = Unmanaged<AFPacketSink>.fromOpaque(references[index]!)._withUnsafeGuaranteedRef { $0.process(burst) }
        default:
            pool._withUnsafeGuaranteedRef { $0.freeBurst(UnsafeBufferPointer(burst)) }
            discarded[index].wrappingAdd(UInt64(filled), ordering: .relaxed)
        }
        counters.add(output: index + 1, packets: UInt64(filled), bytes: stagedBytes[index])
        stagedCounts[index] = 0
        stagedBytes[index] = 0
    }

    /// Closes the files and sends what the TX rings hold. Call once the pipeline has drained.
    /// Returns the first failure, naming the output.
    func finish() -> String? {
        var failure: String?
        for (index, sink) in sinks.enumerated() {
            switch sink {
            case .pcap(let pcap):
                do { try pcap.finish() } catch { failure = failure ?? "output '\(names[index])': \(error)" }
            case .interface(let interface):
                if !interface.finish() { failure = failure ?? "output '\(names[index])': frames still queued on the TX ring after 1 s" }
            case .discard:
                break
            }
        }
        return failure
    }

    /// Drops of output `index`: failed writes, TX ring drops (a discard output drops nothing: it
    /// frees what it is sent, counted in its packets).
    func drops(output index: Int) -> UInt64 {
        switch sinks[index] {
        case .pcap(let pcap): pcapDrops(index, pcap)
        case .interface(let interface): interface.statistics.snapshot().drops.reduce(0) { $0 + $1.count }
        case .discard: 0
        }
    }

    /// A pcap output's drops: what it was handed and did not write (after a write error it writes
    /// nothing more), at least its write errors.
    private func pcapDrops(_ index: Int, _ pcap: PcapSink) -> UInt64 {
        let handed = counters.counts(output: index + 1).packets
        let written = pcap.written.load(ordering: .relaxed)
        return max(pcap.writeErrors.load(ordering: .relaxed), handed > written ? handed - written : 0)
    }

    /// Each named output's drops by reason, as "REASON:NAME".
    func dropCounts() -> [(reason: String, count: UInt64)] {
        var result: [(reason: String, count: UInt64)] = []
        for (index, sink) in sinks.enumerated() {
            switch sink {
            case .pcap(let pcap):
                let errors = pcapDrops(index, pcap)
                if errors > 0 { result.append(("write-error:\(names[index])", errors)) }
            case .interface(let interface):
                result += interface.statistics.snapshot().drops.map { ("\($0.reason):\(names[index])", $0.count) }
            case .discard:
                break
            }
        }
        return result
    }
}

/// The stage after the action stage when a path has named outputs: each packet whose
/// `PacketMetadata.outputIndex` is n > 0 is staged for named output n - 1 and handed to its sink a
/// burst at a time (at the end of each burst, or when `burstCount` are staged); packets of output 0
/// are passed on, in order, to the path's sink. Order is kept within each output. Never allocates,
/// locks or retains: pool and sinks must outlive the pipeline.
struct OutputDispatchStage: StageBody, @unchecked Sendable {  // unchecked: unmanaged pool and sinks
    let pool: Unmanaged<BufferPool>
    let sinks: Unmanaged<NamedOutputSinks>

    init(pool: BufferPool, sinks: NamedOutputSinks) {
        self.pool = Unmanaged.passUnretained(pool)
        self.sinks = Unmanaged.passUnretained(sinks)
    }

    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        sinks._withUnsafeGuaranteedRef { sinks in
            var kept = 0
            var keptBytes: UInt64 = 0
            for position in 0..<items.count {
                let item = items[position]
                precondition(item <= UInt64(UInt32.max), "item is not a buffer index")
                let metadata = pool._withUnsafeGuaranteedRef { $0.metadata(at: UInt32(truncatingIfNeeded: item)) }
                let output = Int(metadata.pointee.outputIndex)
                let length = UInt64(metadata.pointee.length)
                if output == 0 {
                    items[kept] = item
                    kept += 1
                    keptBytes &+= length
                    continue
                }
                precondition(output <= sinks.count, "output index past the named outputs")
                let slot = output - 1
                sinks.staged[slot * sinks.burstCount + sinks.stagedCounts[slot]] = item
                sinks.stagedCounts[slot] += 1
                sinks.stagedBytes[slot] &+= length
                if sinks.stagedCounts[slot] == sinks.burstCount { sinks.flush(slot, pool: pool) }
            }
            for slot in 0..<sinks.count { sinks.flush(slot, pool: pool) }
            if kept > 0 { sinks.counters.add(output: 0, packets: UInt64(kept), bytes: keptBytes) }
            return kept
        }
    }
}
