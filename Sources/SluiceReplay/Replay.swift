// Path: Sources/SluiceReplay/Replay.swift — `sluice replay`: a capture through the packet
// pipeline (RX -> parse/classify -> action -> TX) on pinned workers, with progress and a summary.
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO
import SluiceTraffic

/// Where replayed packets go.
public enum ReplayOutput: Sendable, Equatable {
    /// A pcap savefile, with the input's link type, snapshot length and timestamp precision.
    case pcapFile(String)
    /// An interface, through an AF_PACKET TX ring.
    case interface(String)
    /// Nowhere: buffers are freed (benchmarks).
    case discard
}

/// Everything a replay needs; validated by `Replay.init`.
public struct ReplayConfiguration: Sendable {
    public var capturePath: String
    public var output: ReplayOutput
    public var pacing: ReplayPacing
    public var loopCount: Int
    public var cores: [Int]
    public var waitMode: WaitMode
    public var burstCount = 32
    public var ringCapacity = 1024
    public var poolBufferCount = 8192
    public var bufferSizeBytes = 2048
    /// Which stages run between RX and TX.
    public var stages = ReplayStages.classifyAndAct
    /// Record each packet's time from release to the discard sink (reads every packet's metadata line
    /// on the sink's core: a cross-core line per packet, so off for throughput runs).
    public var measuresLatency = false
    /// How packets get their source id and flow hash.
    public var classifier: ClassifierConfiguration
    /// What happens to each packet after classification.
    public var rules: RuleTable
    /// Divide the output among sources (`PacketMetadata.sourceID` 0..<sources.count) by this policy: a
    /// traffic controller learns from the TX free path and, on an interface, the TX stage enforces
    /// its grants (packets of other source ids are dropped, counted). nil: no controller.
    public var traffic: TrafficPolicy?

    public init(capturePath: String, output: ReplayOutput, pacing: ReplayPacing = .topSpeed, loopCount: Int = 1,
                cores: [Int], waitMode: WaitMode = .adaptive) {
        self.capturePath = capturePath
        self.output = output
        self.pacing = pacing
        self.loopCount = loopCount
        self.cores = cores
        self.waitMode = waitMode
        // Valid by construction: no entries, every packet is source 0, the flow hash still computed.
        self.classifier = try! ClassifierConfiguration(key: .sourceMAC)
        self.rules = try! RuleTable(rules: [])
    }
}

/// The stages between RX and TX.
public enum ReplayStages: Int, Sendable, CaseIterable {
    /// RX -> TX.
    case none = 2
    /// RX -> parse/classify -> TX (the benchmark's 3-stage pipeline).
    case classify = 3
    /// RX -> parse/classify -> action -> TX.
    case classifyAndAct = 4
}

/// Why a replay could not start or did not finish cleanly.
public enum ReplayError: Error, Equatable, CustomStringConvertible {
    case invalidConfiguration(String)
    case capture(PcapError)
    case pool(PoolError)
    case runtime(RuntimeError)
    case pipeline(PipelineError)
    case output(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let message): "invalid replay: \(message)"
        case .capture(let error): "\(error)"
        case .pool(let error): "buffer pool: \(error)"
        case .runtime(let error): "runtime: \(error)"
        case .pipeline(let error): "pipeline: \(error)"
        case .output(let message): "output: \(message)"
        }
    }
}

/// Progress, reported about five times a second while a replay runs.
public struct ReplayProgress: Sendable {
    public var packets: UInt64
    public var bytes: UInt64
    public var elapsedNs: UInt64
    /// Packets the capture holds times the loop count, when known (nil for an unknown total).
    public var expectedPackets: UInt64?
}

/// What a replay did.
public struct ReplaySummary: Sendable {
    public var packets: UInt64
    public var bytes: UInt64
    public var delivered: UInt64
    public var elapsedNs: UInt64
    /// Drops by reason (name, count), only reasons that occurred.
    public var drops: [(reason: String, count: UInt64)]
    /// Times the source found no free pool buffer and waited (not a drop: nothing was lost).
    public var poolWaits: UInt64
    public var stageNames: [String]
    public var stages: [StageSnapshot]
    public var stagePlacement: [Int]
    public var workers: [WorkerSnapshot]
    public var cores: [Int]
    /// The error that ended the replay early (a bad record, a failed write), if any.
    public var failure: String?
    /// Time in the pipeline, source release to sink, in ns (discard output with `measuresLatency` only).
    public var latencyP50Ns: UInt64?
    public var latencyP99Ns: UInt64?
    /// The traffic controller's view at the end (per source: share target and achieved, pending,
    /// delay), when the replay had one.
    public var traffic: TrafficSnapshot?

    public var packetsPerSecond: Double { Double(delivered) / max(Double(elapsedNs) / 1e9, 1e-9) }
    public var bitsPerSecond: Double { Double(bytes) * 8 / max(Double(elapsedNs) / 1e9, 1e-9) }
}

/// A replay ready to run: the capture opened, the pool allocated, the pipeline built.
/// Control-plane object: `run` blocks the calling thread until the capture has gone through.
public final class Replay {
    public let configuration: ReplayConfiguration
    private let pool: BufferPool
    private let source: PcapSource
    private let sink: ReplaySink
    private let drops = DropCounterTable()
    /// Time from release by the source to the discard sink, per packet (discard output only).
    private let latency = LatencyHistogram()
    private let pipeline: Pipeline
    private let placement: [Int]

    private let controller: TrafficController?
    /// The controller's state as swift-metrics gauges, refreshed with each progress report.
    private let trafficMetrics: TrafficMetrics?
    /// Keeps the pcap sink's completion tap alive (the sink holds it unretained).
    private let writtenTap: WrittenRecordTap?

    private enum ReplaySink {
        case pcap(PcapSink)
        case interface(AFPacketSink)
        case shaped(ShapedTXSink)
        case discard
    }

    public init(_ configuration: ReplayConfiguration) throws(ReplayError) {
        try Self.validate(configuration)
        self.configuration = configuration
        let numaNode = CPU.numaNode(of: configuration.cores[0])
        do {
            pool = try BufferPool(bufferCount: configuration.poolBufferCount,
                                  bufferSizeBytes: configuration.bufferSizeBytes, numaNode: numaNode)
        } catch { throw .pool(error) }
        // Buffers come back from the last stage to the source on a ring of their own (one line per 8
        // buffers) instead of through the shared free list (a contended cell per buffer).
        let returnEnds: RingEnds
        do { returnEnds = try makeRing(capacity: Self.returnRingCapacity(configuration.poolBufferCount), numaNode: numaNode) }
        catch { throw .pipeline(.ring(error)) }
        var returnsIn: RingProducer? = returnEnds.producer
        do {
            source = try PcapSource(path: configuration.capturePath, pool: pool, pacing: configuration.pacing,
                                    loopCount: configuration.loopCount, returns: returnEnds.consumer)
        } catch { throw .capture(error) }
        var reporter: CompletionReporter?
        if let policy = configuration.traffic {
            do {
                let channel = try makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: max(policy.sources.count, 1))
                reporter = .some(channel.reporter)
                controller = try TrafficController(policy: policy, receiver: channel.receiver)
            } catch { throw .invalidConfiguration("traffic policy: \(error)") }
        } else {
            controller = nil
        }
        trafficMetrics = configuration.traffic.map { TrafficMetrics(sourceCount: max($0.sources.count, 1)) }
        let sourceCount = max(configuration.traffic?.sources.count ?? 1, 1)
        var builder = PipelineBuilder(name: "replay", burstCount: configuration.burstCount)
        builder.source(source, name: "pcap-rx")
        if configuration.stages != .none {
            builder.stage(ParseClassifyStage(pool: pool, classifier: Classifier(configuration.classifier),
                                             drops: drops), name: "classify")
        }
        if configuration.stages == .classifyAndAct {
            builder.stage(ActionStage(pool: pool, rules: configuration.rules, drops: drops), name: "action")
        }
        switch configuration.output {
        case .pcapFile(let path):
            let input: PcapReader
            do { input = try PcapReader(path: configuration.capturePath) } catch { throw .capture(error) }
            var tap: WrittenRecordTap?
            if let completions = reporter.take() {
                tap = WrittenRecordTap(pool: pool, reporter: completions, sourceCount: sourceCount)
            }
            writtenTap = tap
            do {
                let pcapSink = try PcapSink(path: path, pool: pool, linkType: input.linkType,
                                            snapshotLength: input.snapshotLength,
                                            nanosecond: input.format.nanosecond, returns: returnsIn.take(),
                                            writtenHook: tap?.hook)
                sink = .pcap(pcapSink)
                builder.stage(pcapSink, name: "pcap-tx")
            } catch { throw .capture(error) }
        case .discard:
            writtenTap = nil
            sink = .discard
            builder.stage(DiscardSink(pool: pool, returns: returnsIn.take(),
                                      latency: configuration.measuresLatency ? latency : nil), name: "discard")
        case .interface(let name):
            writtenTap = nil
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
            } catch { throw .output("\(name): \(error)") }
        }
        let links = builder.stageCount - 1
        do {
            pipeline = try builder.build(ringCapacities: Array(repeating: configuration.ringCapacity, count: links),
                                         numaNode: numaNode)
        } catch { throw .pipeline(error) }
        placement = Self.placement(stageCount: builder.stageCount, workerCount: configuration.cores.count)
    }

    /// A power of two that holds every buffer of the pool, so recycling never overflows to the free list.
    static func returnRingCapacity(_ bufferCount: Int) -> Int {
        min(1 << (Int.bitWidth - (bufferCount - 1).leadingZeroBitCount), Limits.ringCapacityMax)
    }

    /// Checks what the CLI could not: sizes against bounds. Bad values are typed errors, never traps.
    static func validate(_ c: ReplayConfiguration) throws(ReplayError) {
        guard !c.cores.isEmpty else { throw .invalidConfiguration("no cores") }
        guard c.loopCount >= 1 else { throw .invalidConfiguration("--loop must be at least 1, got \(c.loopCount)") }
        guard (1...Limits.burstCountMax).contains(c.burstCount) else {
            throw .invalidConfiguration("burst must be 1...\(Limits.burstCountMax), got \(c.burstCount)")
        }
        switch c.pacing {
        case .capture(let speed) where !(speed > 0 && speed.isFinite):
            throw .invalidConfiguration("--speed must be positive, got \(speed)")
        case .rate(let rate) where !(rate > 0 && rate.isFinite):
            throw .invalidConfiguration("--rate must be positive, got \(rate)")
        default: break
        }
        let inFlightMax = c.ringCapacity * 3 + c.burstCount * 4
        guard c.poolBufferCount <= Limits.ringCapacityMax else {
            throw .invalidConfiguration("pool of \(c.poolBufferCount) buffers is above \(Limits.ringCapacityMax)")
        }
        guard c.poolBufferCount > inFlightMax else {
            throw .invalidConfiguration("pool of \(c.poolBufferCount) buffers cannot fill rings holding \(inFlightMax)")
        }
    }

    /// Source on the first worker, the rest spread over the others (all on one when there is one).
    static func placement(stageCount: Int, workerCount: Int) -> [Int] {
        (0..<stageCount).map { stage in
            workerCount == 1 || stage == 0 ? 0 : 1 + (stage - 1) * (workerCount - 1) / max(stageCount - 1, 1)
        }
    }

    /// Runs the replay to the end of the capture (all loops), calling `progress` about every 200 ms
    /// on this thread. A bad record or failed write ends it early: the summary's `failure` says why.
    public func run(progress: ((ReplayProgress) -> Void)? = nil) throws(ReplayError) -> ReplaySummary {
        let runtime: Runtime
        do {
            runtime = try Runtime(configuration: RuntimeConfiguration(cores: configuration.cores,
                                                                      waitMode: configuration.waitMode))
            try runtime.start()
        } catch { throw .runtime(error) }
        defer { runtime.stop() }
        let before = runtime.workers.map { $0.counters.snapshot() }
        let start = Clock.monotonicNs()
        do { try runtime.launch(pipeline, placement: placement) } catch { throw .runtime(error) }
        // With a traffic controller this thread runs it, polling every 100 µs between drain checks.
        var lastProgressNs = start
        while !runtime.drain(timeoutNs: controller == nil ? 200_000_000 : 100_000) {
            controller?.poll(nowNs: Clock.monotonicNs())
            let now = Clock.monotonicNs()
            if now - lastProgressNs >= 200_000_000 {
                lastProgressNs = now
                if let controller { trafficMetrics?.record(controller.snapshot()) }
                progress?(ReplayProgress(packets: source.counters.packets.load(ordering: .relaxed),
                                         bytes: source.counters.bytes.load(ordering: .relaxed),
                                         elapsedNs: now - start, expectedPackets: nil))
            }
        }
        let elapsed = Clock.monotonicNs() - start
        runtime.stop()
        var failure = source.failure.map { "\($0)" }
        switch sink {
        case .pcap(let pcapSink):
            do { try pcapSink.finish() } catch { failure = failure ?? "\(error)" }
        case .interface(let afSink):
            if !afSink.finish() { failure = failure ?? "frames still queued on the TX ring after 1 s" }
        case .shaped(let shaped):
            if !shaped.finish() { failure = failure ?? "frames still waiting to be sent after 2 s" }
        case .discard:
            break
        }
        controller?.poll(nowNs: Clock.monotonicNs())
        if let controller { trafficMetrics?.record(controller.snapshot()) }
        return ReplaySummary(
            packets: source.counters.packets.load(ordering: .relaxed),
            bytes: source.counters.bytes.load(ordering: .relaxed), delivered: pipeline.delivered,
            elapsedNs: elapsed, drops: dropCounts(), poolWaits: source.counters.poolWaits.load(ordering: .relaxed),
            stageNames: pipeline.stages.map(\.name),
            stages: pipeline.snapshot(), stagePlacement: placement,
            workers: zip(runtime.workers, before).map { $0.counters.snapshot().since($1) },
            cores: configuration.cores, failure: failure,
            latencyP50Ns: measuresLatency ? latency.value(atPercentile: 50) : nil,
            latencyP99Ns: measuresLatency ? latency.value(atPercentile: 99) : nil,
            traffic: controller?.snapshot())
    }

    private var measuresLatency: Bool {
        if case .discard = sink { return configuration.measuresLatency }
        return false
    }

    /// Every drop, by reason: parse and action drops, TX drops, write errors.
    private func dropCounts() -> [(reason: String, count: UInt64)] {
        let counted = drops.snapshot()
        var result = DropReason.allCases.compactMap { reason in
            counted[reason] > 0 ? (reason: reason.description, count: counted[reason]) : nil
        }
        switch sink {
        case .pcap(let pcapSink):
            let errors = pcapSink.writeErrors.load(ordering: .relaxed)
            if errors > 0 { result.append(("write-error", errors)) }
        case .interface(let afSink):
            result += afSink.statistics.snapshot().drops
        case .shaped(let shaped):
            result += shaped.statistics.snapshot().drops
            let backlog = shaped.counters.backlogDrops.load(ordering: .relaxed)
            if backlog > 0 { result.append(("source-backlog-full", backlog)) }
            let unknown = shaped.counters.unknownSourceDrops.load(ordering: .relaxed)
            if unknown > 0 { result.append(("source-not-in-policy", unknown)) }
        case .discard:
            break
        }
        return result
    }
}
