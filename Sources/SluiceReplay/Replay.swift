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
    /// An interface queue, through an AF_XDP TX socket (`sluice run`'s `kind: af_xdp` sink).
    case afXDP(AFXDPConfiguration)
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
    /// Pool buffers; nil sizes the pool to what the rings hold (`PacketPathConfiguration.poolBufferCount`).
    public var poolBufferCount: Int?
    /// Pool buffer size (see `PacketPathConfiguration`): nil follows the capture's snapshot length up
    /// to `PacketPathConfiguration.captureBufferSizeBytesMax`.
    public var bufferSizeBytes: Int?
    /// Which stages run between RX and TX.
    public var stages = ReplayStages.classifyAndAct
    /// Record each packet's time from release to the discard sink (reads every packet's metadata line
    /// on the sink's core: a cross-core line per packet, so off for throughput runs).
    public var measuresLatency = false
    /// How packets get their source id and flow hash.
    public var classifier: ClassifierConfiguration
    /// What happens to each packet after classification.
    public var rules: RuleTable
    /// Named outputs besides `output` that rules send to (`Rule.output`); their names must be the
    /// table's `outputs`, in order. At most `OutputLimits.outputCountMax`.
    public var outputs: [NamedOutput] = []
    /// Divide the output among sources (`PacketMetadata.sourceID` 0..<sources.count) by this policy: a
    /// traffic controller learns from the TX free path and, on an interface, the TX stage enforces
    /// its grants (packets of other source ids are dropped, counted). nil: no controller.
    public var traffic: TrafficPolicy?
    /// How stages are placed on `cores`: measured (the default), the fixed spread, or fanned out.
    public var placement = ReplayPlacement.auto
    /// Auto: predictions of fanning out and of the best single instance closer than this factor are
    /// a close call, tried on the cores before the run (`Replay.trial`); further apart they decide.
    /// At least 1 (1: never tried; `.infinity`: always).
    public var trialsWithin = 1.4
    /// A worker running every stage runs each burst through them in one call chain, skipping the
    /// rings (`RuntimeConfiguration.fusesRunToCompletion`); false keeps the rings (benchmarks).
    public var fusesRunToCompletion = true
    /// How fanned-out instances share the capture: by flow (the default: each flow through one
    /// instance, in order) or by blocks of the file (each record read once; order kept within a block only).
    public var split = ReplaySplit.flows
    /// Auto, one instance after trials that measured the instances fanned out by flow: whether it
    /// may fan out mid-run when its own pace falls below theirs (`MidRunFanOut`).
    public var fansOutMidRun = MidRunFanOut.whenFaster
    /// Test seam: auto starts one instance whatever its trials say (so a test can fan it out mid-run).
    var startsSingleInstance = false

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

/// How a replay's stages are placed on its cores.
public enum ReplayPlacement: String, Sendable, Equatable, CaseIterable {
    /// Measured: calibrate the hand-off between the first two cores, start run to completion on the
    /// first, and move stages when measured costs predict a clear gain (`PlacementPlanner`), without
    /// losing or reordering packets (`Runtime.move`).
    case auto
    /// Fixed: the source on the first core, the other stages spread in order over the rest.
    case spread
    /// Fixed: one instance of the whole pipeline per core, each run to completion on its core, the
    /// capture read by every instance and split between them by flow (`CaptureSplit`): no hand-off
    /// between cores, each flow through one instance in order. Needs a splittable run
    /// (`Replay.splitRefusal`).
    case fanout
}

/// How fanned-out instances (`ReplayPlacement.fanout`, or auto fanning out) share one capture.
public enum ReplaySplit: String, Sendable, Equatable, CaseIterable {
    /// Every instance reads every record and takes its share of the flows (`CaptureSplit`, as RSS
    /// splits a NIC's input): each flow goes through one instance, in capture order. Each instance
    /// pays a read and a hash for every record of the others' flows.
    case flows
    /// Instances read the file's blocks in turn (`CaptureBlocks`, 256 KiB each): every record is read
    /// once, by one instance, and no hash is taken; records keep capture order within a block, not
    /// across instances, so a flow's packets may leave out of order. For load and throughput runs
    /// where order within a flow does not matter. Classic pcap files (version 2.4) only.
    case blocks
}

/// When a single instance that `--placement auto` started (after trials that measured the instances
/// fanned out by flow) fans out mid-run: its source stops between two records, its pipeline drains
/// (every record read before delivered or filtered), and one instance per core takes the capture
/// over from the next record, each with its share of the flows, so no flow is reordered.
public enum MidRunFanOut: Sendable, Equatable {
    /// Never: the shape chosen before the run holds.
    case never
    /// When the run's own pace, measured over windows of `Replay.midRunRecords` records and
    /// `Replay.midRunWindowNs`, is below the fanned-out trial's by the 5% margin in two windows in a
    /// row, and the records left would take `Replay.midRunSwitchCostNs` (or twice the run's path
    /// set-up) longer at that pace than fanned out (the instances' paths are made while the single
    /// one runs).
    case whenFaster
    /// Once this many records went out, whatever was measured (tests).
    case afterRecords(UInt64)
}

/// A single instance fanned out mid-run (`MidRunFanOut`): when, from where, and why.
public struct MidRunFanOutRecord: Sendable, Equatable, CustomStringConvertible {
    /// From the run's start to the single instance's stop, and to the instances' launch.
    public var stoppedAtNs: UInt64
    public var launchedAtNs: UInt64
    /// Where the instances took the capture over.
    public var position: CapturePosition
    /// The single instance's records out per second over the last window, and the fanned-out trial's
    /// (nil: forced, `afterRecords`).
    public var singleRecordsPerSecond: Double?
    public var trialRecordsPerSecond: Double?
    /// Records the single instance delivered before it stopped.
    public var deliveredBefore: UInt64
    /// Making the instances' paths (while the single instance ran).
    public var setUpNs: UInt64

    public var description: String {
        let why = singleRecordsPerSecond.flatMap { pace in
            trialRecordsPerSecond.map { ": the run went \(Self.mpps(pace)) Mpps, the instances' trial \(Self.mpps($0))" }
        } ?? ": forced"
        return "fanned out mid-run at \(Self.ms(stoppedAtNs)) ms from \(position)\(why); the single instance delivered "
            + "\(deliveredBefore) before, the instances' paths took \(Self.ms(setUpNs)) ms to make, launched at \(Self.ms(launchedAtNs)) ms"
    }

    private static func mpps(_ rate: Double) -> String { "\(Int((rate / 1e5).rounded()) / 10).\(Int((rate / 1e5).rounded()) % 10)" }
    private static func ms(_ ns: UInt64) -> String { "\(ns / 1_000_000).\((ns / 100_000) % 10)" }
}

/// What `--placement auto` weighed before fanning out over its cores, and what it chose. Fanning out
/// costs each instance a record read and a flow hash for every record another instance takes
/// (`othersNsPerRecord`, measured on a sample of the capture, which also gives the busiest
/// instance's share); it never hands a packet to another core. A trial runs the stages on one core
/// over the capture's first records (`stageNsPerItem`); from those costs the fanned-out rate is
/// predicted and compared with `PlacementPlanner`'s best single-instance shape (one core, or
/// pipelined with the calibrated hand-off). On a close call (`ReplayConfiguration.trialsWithin`) the
/// shapes are tried for real on the run's cores (`Replay.trial`): the planner's best pipelined split
/// and the instances fanned out, both cores busy at once. The trials then decide: fanned out for at
/// least 5% more than one core (pipelined counting only for 5% more than one core); between fanned
/// out and a pipelined split on as many cores, the one predicted faster unless the other measured 5%
/// faster. On a clear call the predictions decide (a predicted pipelined start is still tried).
public struct FanoutDecision: Sendable, Equatable, CustomStringConvertible {
    public var instances: Int
    /// Measured before the run: reading a record and hashing its flow, per record.
    public var othersNsPerRecord: Double
    /// The hand-off per item and side between the first two cores, when calibrated.
    public var handoffNsPerItem: Double?
    /// The largest share of the sampled records one instance would take (1/instances when even).
    public var largestShare: Double
    /// Each stage's ns per packet run to completion, from a probe run before the instances start.
    public var stageNsPerItem: [Double]?
    /// Fanned out: packets per second the busiest instance allows (nil without a probe).
    public var predictedItemsPerSecond: Double?
    /// The planner's best shape on the same costs: one core or pipelined (nil without a probe).
    public var planner: PlacementDecision?
    /// Trials (`Replay.trial`): capture records a second each shape went through over the capture's
    /// first records before the run, on the run's cores. These decide when they ran: the predictions
    /// above leave out what both cores busy at once cost each other. nil: not run or measured nothing.
    public var trialOneCore: Double?
    /// Measured on the one-core trial's path and runtime after its window, the stages moved live.
    public var trialPipelined: Double?
    /// The pipelined shape tried: the planner's best over two or more cores (worker per stage).
    public var trialPipelinedPlacement: [Int]?
    public var trialFannedOut: Double?
    /// Whether the predictions were close enough (`ReplayConfiguration.trialsWithin`) for the pipelined
    /// and fanned-out shapes to be tried.
    public var closeCall = true
    /// Where the single instance starts when not fanned out (worker per stage); nil: the planner's.
    public var startPlacement: [Int]?
    /// Placements a trial measured slower than the start: the measured placement does not move to them.
    public var refuted: [[Int]] = []
    public var chosen: Bool
    /// How the instances would share the capture; with `.blocks`, `blockCount` blocks a loop.
    public var split = ReplaySplit.flows
    public var blockCount = 0
    /// Why the run cannot be split (then nothing was measured and `chosen` is false).
    public var notSplittable: String?
    /// Wall time auto spent measuring (calibration, sample, trials) before the run's paths were made,
    /// inside the run's clock and CPU span.
    public var measuringNs: UInt64 = 0

    public var description: String {
        if let notSplittable { return "not fanned out: \(notSplittable)" }
        if split == .blocks {
            return "fanned out over \(instances) instances reading the capture's \(blockCount) blocks in turn, each run to "
                + "completion: every record read once, no flow hash, no hand-off (order kept within a block)"
        }
        let others = "passing over a record of another instance's flows costs \(Self.ns(othersNsPerRecord)) ns, no hand-off"
        let handoff = handoffNsPerItem.map { "pipelining would hand off at \(Self.ns($0)) ns/item a side" }
            ?? "the hand-off was not measured"
        let share = "the busiest instance takes \(Self.ns(largestShare * 100))% of the sampled records"
        if let fanned = trialFannedOut, let one = trialOneCore {
            let pipelined = trialPipelined.flatMap { rate in
                trialPipelinedPlacement.map { ", pipelined \($0) \(Self.ns(rate / 1e6))" }
            } ?? ""
            let tried = "in trials over the capture's first records \(instances) instances ran \(Self.ns(fanned / 1e6)) Mpps, "
                + "one core \(Self.ns(one / 1e6))\(pipelined) (\(others); \(share))"
            return chosen ? "fanned out: \(tried)"
                          : "not fanned out: \(startPlacement.map { "starts at \($0): " } ?? "")\(tried)"
        }
        var clear = closeCall ? "" : "; clear enough without the fanned-out trial"
        if let one = trialOneCore, let rate = trialPipelined, let split = trialPipelinedPlacement {
            clear += "; the split \(split) tried at \(Self.ns(rate / 1e6)) Mpps against one core \(Self.ns(one / 1e6))"
                + (startPlacement.map { ": starts at \($0)" } ?? "")
        }
        guard let predicted = predictedItemsPerSecond, let planner else {
            return chosen
                ? "fanned out over \(instances) instances, each run to completion: \(others); \(share); \(handoff) (no probe)"
                : "not fanned out: \(share) (at most \(Self.ns(150 / Double(instances)))%: too few flows to share)"
        }
        let fanned = "\(instances) instances predicted \(Self.ns(predicted / 1e6)) Mpps (\(others); \(share))"
        let best = "\(planner.chosen) (stages \(planner.costs.stageNsPerItem.map { Self.ns($0) }.joined(separator: "/")) ns, hand-off \(Self.ns(planner.costs.handoffNsPerItem)) ns)"
        return chosen ? "fanned out: \(fanned), against the best single instance: \(best)\(clear)"
                      : "not fanned out: \(best), against \(fanned)\(clear)"
    }

    private static func ns(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
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

/// Why a replay could not start or did not finish cleanly. Each case keeps the error underneath.
public enum ReplayError: Error, Equatable, CustomStringConvertible {
    case invalidConfiguration(ReplayConfigurationError)
    case capture(PcapError)
    case pool(PoolError)
    case runtime(RuntimeError)
    case pipeline(PipelineError)
    /// The input interface's RX ring could not be set up.
    case input(interface: String, AFPacketError)
    /// The output interface's TX ring could not be set up.
    case output(interface: String, AFPacketError)
    /// The AF_XDP input's socket (and XDP program) could not be set up.
    case afXDPInput(interface: String, AFXDPError)
    /// The AF_XDP output's socket could not be set up.
    case afXDPOutput(interface: String, AFXDPError)
    /// The traffic policy or its completion channel was refused.
    case traffic(TrafficError)
    /// The output file is the capture itself (same device and inode): writing would destroy it.
    case outputIsInput(path: String)
    /// A split cache file could not be made, read or used.
    case cache(ReplayCacheError)
    /// `--preload`: the captures hold more than the memory cap allows.
    case preloadTooLarge(bytes: UInt64, max: UInt64)
    /// Captures replayed in one run must share a link type.
    case linkTypesDiffer(path: String, linkType: Int, first: Int)

    public var description: String {
        switch self {
        case .invalidConfiguration(let error): "invalid replay: \(error)"
        case .capture(let error): "\(error)"
        case .pool(let error): "buffer pool: \(error)"
        case .runtime(let error): "runtime: \(error)"
        case .pipeline(let error): "pipeline: \(error)"
        case .input(let interface, let error): "input \(interface): \(error)"
        case .output(let interface, let error): "output \(interface): \(error)"
        case .afXDPInput(let interface, let error): "AF_XDP input \(interface): \(error)"
        case .afXDPOutput(let interface, let error): "AF_XDP output \(interface): \(error)"
        case .traffic(let error): "traffic policy: \(error)"
        case .outputIsInput(let path): "\(path): the output is the capture being replayed; refusing to overwrite it"
        case .cache(let error): "\(error)"
        case .preloadTooLarge(let bytes, let max):
            "--preload: the captures need more than \(max / (1 << 20)) MiB in memory (\(bytes) bytes read so far); raise --preload-max-mb or drop --preload"
        case .linkTypesDiffer(let path, let linkType, let first):
            "\(path) has link type \(linkType), the first capture \(first): captures of one run share a link type"
        }
    }
}

/// A replay or packet path configuration that cannot run (`ReplayError.invalidConfiguration`).
public enum ReplayConfigurationError: Error, Equatable, CustomStringConvertible {
    case noCores
    case loopCount(Int)
    /// More than one loop over a pipe or FIFO, which can be read only once.
    case loopOnStream(path: String)
    case pacing(PacingError)
    case burstCount(Int, max: Int)
    case ringCapacity(Int, max: Int)
    case poolAboveMax(Int, max: Int)
    case poolBelowInFlight(Int, inFlight: Int)
    /// A core the pipeline is placed on is not one of the cores it may use.
    case coreNotAvailable(Int)
    /// A placement naming `named` stages for a pipeline of `stageCount`.
    case placementCount(named: Int, stageCount: Int)
    /// Named outputs that do not fit: too many, not the rule table's, of a kind not supported, or
    /// without the action stage.
    case outputs(String)
    /// `--placement fanout` on a run that cannot be split over instances, and why.
    case fanout(String)
    /// `poolBufferCountMax` below `poolBufferCount`.
    case poolMaxBelowCount(max: Int, count: Int)

    public var description: String {
        switch self {
        case .noCores: "no cores"
        case .loopCount(let count): "loop count must be at least 1, got \(count)"
        case .loopOnStream(let path): "\(path) is a pipe or FIFO, read once: it cannot be looped"
        case .pacing(let error): "\(error)"
        case .burstCount(let count, let max): "burst must be 1...\(max), got \(count)"
        case .ringCapacity(let capacity, let max): "ring size must be a power of two in 2...\(max), got \(capacity)"
        case .poolAboveMax(let count, let max): "pool of \(count) buffers is above \(max)"
        case .poolBelowInFlight(let count, let inFlight):
            "pool of \(count) buffers cannot fill rings holding \(inFlight): more buffers or smaller rings"
        case .coreNotAvailable(let core): "core \(core) is not a service core"
        case .placementCount(let named, let stageCount): "stage_cores names \(named) of \(stageCount) stages"
        case .outputs(let reason): "outputs: \(reason)"
        case .fanout(let reason): "--placement fanout: \(reason)"
        case .poolMaxBelowCount(let max, let count): "buffers_max \(max) is below buffers \(count)"
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
    /// Nanoseconds from just before the capture was opened (`Replay.init`, before any worker
    /// started) to the last packet delivered: `elapsedNs` plus opening, pool and thread set-up.
    public var wallNsFromOpen: UInt64
    /// CPU time of all the process's threads over the same span (`getrusage(RUSAGE_SELF)`, user
    /// plus system, difference), in nanoseconds.
    public var processCpuNs: UInt64
    /// Drops by reason (name, count), only reasons that occurred.
    public var drops: [(reason: String, count: UInt64)]
    /// Times the source found no free pool buffer and waited (not a drop: nothing was lost).
    public var poolWaits: UInt64
    public var stageNames: [String]
    public var stages: [StageSnapshot]
    /// Worker index of each stage at the end (see `placementChanges` for how it got there).
    public var stagePlacement: [Int]
    /// Placements the measured allocator moved to, in order (empty: the first one held).
    public var placementChanges: [PlacementChange]
    /// The first decision the measured allocator made, moved or not (nil: fixed placement, one core,
    /// or too few packets to measure).
    public var firstDecision: PlacementDecision?
    /// Hand-off cost between the first two cores, measured before the run (auto placement, 2+ cores).
    public var handoff: HandoffCost?
    /// Why the measured allocator could not calibrate (it then kept the first placement).
    public var calibrationFailure: String?
    /// A stage move that failed (the replay ran on where its stages were; nothing lost).
    public var placementFailure: String?
    public var workers: [WorkerSnapshot]
    public var cores: [Int]
    /// The error that ended the replay early (a bad record, a failed write), if any, for people.
    public var failure: String?
    /// The same, typed: the capture's bad record, the output file's failed write.
    public var inputError: PcapError?
    public var outputError: PcapError?
    /// Time in the pipeline, source release to sink, in ns (discard output with `measuresLatency` only).
    public var latencyP50Ns: UInt64?
    public var latencyP99Ns: UInt64?
    /// The traffic controller's view at the end (per source: share target and achieved, pending,
    /// delay), when the replay had one.
    public var traffic: TrafficSnapshot?
    /// Per output (the sink as "default", then the named outputs): packets, bytes, drops. Empty
    /// without named outputs.
    public var outputs: [OutputCount] = []
    /// Instances of the pipeline (more than one: fanned out, instance i on worker i; the counters
    /// above are their sums and `stagePlacement` is the first instance's, or after a mid-run fan-out
    /// the single instance's).
    public var instances = 1
    /// Packets each instance delivered (one entry per instance).
    public var instanceDelivered: [UInt64] = []
    /// How the instances shared the capture (nil: one instance).
    public var split: ReplaySplit?
    /// What `--placement auto` weighed about fanning out (nil: one core, or a fixed placement).
    public var fanout: FanoutDecision?
    /// Bursts that ran through every stage in one call chain, skipping the rings (run to completion).
    public var fusedBursts: UInt64 = 0
    /// A single instance fanned out mid-run (`MidRunFanOut`): then `instances` and `instanceDelivered`
    /// are the instances', and the totals include what the single instance did before.
    public var fannedOutMidRun: MidRunFanOutRecord?
    /// Why a single instance due to fan out mid-run did not (its instances' paths could not be made,
    /// the file was replaced): it ran on to the end, nothing lost.
    public var fannedOutMidRunRefusal: String?

    public var packetsPerSecond: Double { Double(delivered) / max(Double(elapsedNs) / 1e9, 1e-9) }
    public var bitsPerSecond: Double { Double(bytes) * 8 / max(Double(elapsedNs) / 1e9, 1e-9) }
}

/// A replay ready to run: the capture opened, the pool allocated, the pipeline built (one per
/// instance when fanned out). Control-plane object: `run` blocks the calling thread until the
/// capture has gone through.
public final class Replay {
    public let configuration: ReplayConfiguration
    /// One path, or one per core when fanned out (path i on worker i, taking flows i of n).
    private let paths: [PacketPath]
    /// Where each stage of a single path starts (worker indices).
    private let initialPlacement: [Int]
    /// The controller's state as swift-metrics gauges, refreshed with each progress report.
    private let trafficMetrics: TrafficMetrics?
    /// Monotonic time and process CPU time just before the capture was opened.
    private let openedAtNs: UInt64
    private let openedCpuNs: UInt64
    /// The hand-off between the first two cores (auto placement on two or more cores).
    private let handoff: Result<HandoffCost, HandoffCalibrationError>?
    private let fanout: FanoutDecision?
    /// One instance that may fan out mid-run (`MidRunFanOut`): the instances' path configurations.
    private let fanOutLater: [PacketPathConfiguration]?
    /// The capture file's size when opened (what the records left are estimated from).
    private let captureFileBytes: UInt64
    /// Making the run's paths took this long (a mid-run fan-out's cost is weighed against it).
    private let pathSetUpNs: UInt64

    public init(_ configuration: ReplayConfiguration) throws(ReplayError) {
        try Self.validate(configuration)
        // The cycle counter's rate is measured once a process (a 2 ms spin), as DPDK's EAL init
        // measures its TSC: here, before the replay's clock starts, not in its first stage-cost read.
        _ = Clock.cyclesPerNs
        openedCpuNs = processCPUTimeNs()
        openedAtNs = Clock.monotonicNs()
        self.configuration = configuration
        let cores = configuration.cores
        var instances = 1
        switch configuration.placement {
        case .fanout:
            if let reason = Self.splitRefusal(configuration) { throw .invalidConfiguration(.fanout(reason)) }
            instances = cores.count
            (handoff, fanout) = (nil, nil)
        case .auto where cores.count > 1 && configuration.split == .blocks:
            // Instances reading blocks in turn share the work with no pass-over and no hand-off: nothing
            // to weigh but whether the capture is large enough to share (two blocks an instance, all loops).
            let refusal = Self.splitRefusal(configuration)
            var reason = refusal
            let blockCount = (try? CaptureBlocks(path: configuration.capturePath, readerCount: cores.count,
                                                 loopCount: 1))?.blockCount ?? 0
            if reason == nil, blockCount * configuration.loopCount < 2 * cores.count {
                reason = "the capture has \(blockCount) blocks of \(CaptureBlocks.blockSizeBytesDefault / 1024) KiB "
                    + "(\(configuration.loopCount) loops), fewer than 2 an instance"
            }
            var decision = FanoutDecision(instances: cores.count, othersNsPerRecord: 0, handoffNsPerItem: nil,
                                          largestShare: 1 / Double(cores.count), chosen: reason == nil,
                                          notSplittable: reason)
            decision.split = .blocks
            decision.blockCount = blockCount
            if decision.chosen {
                instances = cores.count
                handoff = nil
            } else {
                let calibrated = MeasuredPlacement.calibrate(cores: cores, itemCount: 1 << 13)
                handoff = calibrated
                let handoffNs = try? calibrated.get().handoffNsPerItem
                decision.handoffNsPerItem = handoffNs
                // Too small to share: start where the planner puts the stages, as without blocks.
                if refusal == nil, let handoffNs, let stageNs = Self.trial(configuration)?.stageNsPerItem {
                    decision.stageNsPerItem = stageNs
                    decision.planner = PlacementPlanner().plan(
                        costs: PlacementCosts(stageNsPerItem: stageNs, handoffNsPerItem: handoffNs), workerCount: cores.count)
                }
            }
            decision.measuringNs = Clock.monotonicNs() &- openedAtNs
            fanout = decision
        case .auto where cores.count > 1:
            // Measured before any worker starts, inside the run's clock and CPU span: kept short (8k
            // items a round, a sample of 8k records, one trial of about 9k records; on a close call the
            // pipelined split on the same path after a move, and the fanned-out trial): about 6 ms,
            // 10-13 ms on a close call (`FanoutDecision.measuringNs`).
            let calibrated = MeasuredPlacement.calibrate(cores: cores, itemCount: 1 << 13)
            handoff = calibrated
            let handoffNs = try? calibrated.get().handoffNsPerItem
            if let reason = Self.splitRefusal(configuration) {
                var decision = FanoutDecision(instances: cores.count, othersNsPerRecord: 0, handoffNsPerItem: handoffNs,
                                              largestShare: 0, chosen: false, notSplittable: reason)
                decision.measuringNs = Clock.monotonicNs() &- openedAtNs
                fanout = decision
            } else {
                let sample = Self.sampleSplit(configuration.capturePath, instances: cores.count)
                let recordBytes = sample.largestRecordBytes
                var decision = FanoutDecision(instances: cores.count, othersNsPerRecord: sample.othersNsPerRecord,
                                              handoffNsPerItem: handoffNs, largestShare: sample.largestShare,
                                              chosen: false, notSplittable: nil)
                let planner = PlacementPlanner()
                let margin = 1 + planner.moreCoresMargin
                let within = configuration.trialsWithin
                var single: PlacementDecision?
                var spread: PlacementChoice?
                var close = false
                let undecided = decision
                // The one-core trial; then, on the same path and runtime, the pipelined split its costs
                // call for (a move and a window: no second path or runtime).
                let shapes = Self.trials(configuration, recordBytes: recordBytes) { one in
                    let stageNs = one.stageNsPerItem
                    decision.stageNsPerItem = stageNs
                    if let handoffNs {
                        // Fanned out, the busiest instance takes `largestShare` of the records and reads all.
                        let own = stageNs.reduce(0, +)
                        let busiest = sample.largestShare * own + (1 - sample.largestShare) * sample.othersNsPerRecord
                        let predicted = busiest > 0 ? 1e9 / busiest : .infinity
                        let plan = planner.plan(costs: PlacementCosts(stageNsPerItem: stageNs, handoffNsPerItem: handoffNs),
                                                workerCount: cores.count)
                        (single, decision.predictedItemsPerSecond, decision.planner) = (plan, predicted, plan)
                        // Fan out only for a clear gain over the planner's best shape (one core or pipelined).
                        decision.chosen = predicted >= plan.chosen.predictedItemsPerSecond * margin
                    } else {
                        decision.chosen = sample.largestShare <= 1.5 / Double(cores.count)  // nothing to compare: spread
                    }
                    // A close call is tried on the cores (both busy at once where the shape has them so),
                    // and what the trials measure decides over what was predicted. Not a clear one: with both
                    // cores busy each instance's stages ran up to 30% slower, and fanning out needs 5% more,
                    // so no gap wider than 1.3 x 1.05 (about 1.37; the default is 1.4) can flip; each trial
                    // costs milliseconds of the span.
                    close = within > 1 && (within.isInfinite || decision.predictedItemsPerSecond.flatMap { fanned in
                        single.map { max(fanned, $0.chosen.predictedItemsPerSecond) < within * min(fanned, $0.chosen.predictedItemsPerSecond) }
                    } ?? true)
                    spread = single.flatMap { plan in
                        ([plan.chosen] + plan.alternatives).filter { Set($0.placement).count > 1 }
                            .max { $0.predictedItemsPerSecond < $1.predictedItemsPerSecond }
                    }
                    // The pipelined split is tried on a close call, and on a clear call for one instance whose
                    // predicted best shape is that split: against the one-core trial, it sets where it starts.
                    let triesSpread = close || (!decision.chosen && single.map { Set($0.chosen.placement).count > 1 } == true)
                    decision.trialPipelinedPlacement = triesSpread ? spread?.placement : nil
                    return decision.trialPipelinedPlacement
                }
                let one = shapes.first
                var pipelined = shapes.count > 1 ? shapes[1] : nil
                if one == nil {
                    // Nothing measured (or a trial that would not drain): nothing the closure decided stands.
                    (decision, single, spread, close) = (undecided, nil, nil, false)
                    decision.chosen = sample.largestShare <= 1.5 / Double(cores.count)
                } else if pipelined == nil, let split = decision.trialPipelinedPlacement {
                    // The same path could not take the second shape (the capture drained in the first
                    // window, or a record too large for its buffers fell in the second): a trial of its
                    // own, from the capture's first records, as the one-core trial read them.
                    pipelined = Self.trial(configuration, placement: split, recordBytes: recordBytes)
                }
                decision.closeCall = close
                let fanned = close ? Self.trial(configuration, instances: cores.count, recordBytes: recordBytes) : nil
                (decision.trialOneCore, decision.trialFannedOut) = (one?.recordsPerSecond, fanned?.recordsPerSecond)
                decision.trialPipelined = pipelined?.recordsPerSecond
                if let one, fanned != nil || pipelined != nil {
                    // More cores must run clearly faster: pipelined than one core, fanned out than either.
                    var best = (placement: Array(repeating: 0, count: one.stageNsPerItem.count), rate: one.recordsPerSecond)
                    if let pipelined, let spread, pipelined.recordsPerSecond >= one.recordsPerSecond * margin {
                        best = (spread.placement, pipelined.recordsPerSecond)
                    }
                    var fannedRate = fanned?.recordsPerSecond
                    // A clear call made against a predicted pipelined rate the trial did not bear out: weigh
                    // fanning out against what was measured, trying it too when that is a close call.
                    if fannedRate == nil, let predicted = decision.predictedItemsPerSecond,
                       let planned = single?.chosen.predictedItemsPerSecond, best.rate < planned {
                        if within.isInfinite || max(predicted, best.rate) < within * min(predicted, best.rate) {
                            fannedRate = Self.trial(configuration, instances: cores.count, recordBytes: recordBytes)?.recordsPerSecond
                            (decision.trialFannedOut, decision.closeCall) = (fannedRate, true)
                        } else {
                            decision.chosen = predicted >= best.rate * margin
                        }
                    }
                    if let fannedRate {
                        let bestIsSplit = Set(best.placement).count > 1
                        decision.chosen = Self.fansOut(
                            fanned: fannedRate, best: best.rate, bestUsesEveryCore: Set(best.placement).count >= cores.count,
                            predictedFanned: decision.predictedItemsPerSecond,
                            predictedBest: bestIsSplit ? spread?.predictedItemsPerSecond : nil, margin: margin)
                    }
                    decision.startPlacement = best.placement
                    // The pipelined shape tried and measured no faster than one core is not moved to later.
                    if let pipelined, let spread, best.rate > pipelined.recordsPerSecond { decision.refuted = [spread.placement] }
                }
                if configuration.startsSingleInstance { decision.chosen = false }
                decision.measuringNs = Clock.monotonicNs() &- openedAtNs
                fanout = decision
                if decision.chosen { instances = cores.count }
            }
        case .auto, .spread:
            (handoff, fanout) = (nil, nil)
        }
        var blocks: CaptureBlocks?
        if instances > 1, configuration.split == .blocks {
            do { blocks = try CaptureBlocks(path: configuration.capturePath, readerCount: instances,
                                            loopCount: configuration.loopCount) }
            catch { throw .capture(error) }
        }
        let configurations = (0..<instances).map {
            Self.pathConfiguration(configuration, instance: $0, of: instances, blocks: blocks)
        }
        // One instance after trials that measured the instances fanned out by flow may fan out mid-run:
        // a regular classic pcap file (read from a record in the middle) on a run that can be split,
        // to a discard output (an interface's TX ring may still hold the single instance's last
        // frames when the instances start sending later ones of the same flows).
        var later: [PacketPathConfiguration]?
        if instances == 1, configuration.placement == .auto, cores.count > 1, configuration.split == .flows,
           fanout != nil, fanout?.notSplittable == nil, configuration.output == .discard, configuration.fansOutMidRun != .never,
           fanout?.trialFannedOut != nil || configuration.fansOutMidRun != .whenFaster,
           (try? PcapReader(path: configuration.capturePath))?.readsInBlocks == true {
            later = cores.indices.map { Self.pathConfiguration(configuration, instance: $0, of: cores.count, blocks: nil) }
        }
        fanOutLater = later
        var status = stat()
        captureFileBytes = stat(configuration.capturePath, &status) == 0 ? UInt64(status.st_size) : 0
        // Fanned out, each instance's path (its pool faulting in is most of it) is made on its own
        // core, all at once: the pages fault in where they will be used, the pools together.
        let madeAtNs = Clock.monotonicNs()
        let built = instances == 1 ? [try PacketPath(configurations[0])] : try Self.makePaths(configurations, cores: cores)
        pathSetUpNs = Clock.monotonicNs() &- madeAtNs
        paths = built
        trafficMetrics = configuration.traffic.map { TrafficMetrics(sourceCount: max($0.sources.count, 1)) }
        let stageCount = built[0].pipeline.stages.count
        // Auto with a probe's costs starts where its trials (or, without them, the planner) put the
        // stages; the measured placement then re-decides from live costs.
        if configuration.placement == .spread {
            initialPlacement = spreadPlacement(stageCount: stageCount, workers: Array(cores.indices))
        } else if instances == 1, let planned = fanout?.startPlacement ?? fanout?.planner?.chosen.placement,
                  planned.count == stageCount {
            initialPlacement = planned
        } else {
            initialPlacement = Array(repeating: 0, count: stageCount)
        }
    }

    /// Instance `instance` of `instances`' path (one: the whole capture; more: its share of the flows,
    /// or of `blocks`).
    private static func pathConfiguration(_ configuration: ReplayConfiguration, instance: Int, of instances: Int,
                                          blocks: CaptureBlocks?) -> PacketPathConfiguration {
        var path = PacketPathConfiguration(
            name: instances == 1 ? "replay" : "replay-\(instance)",
            input: .capture(path: configuration.capturePath, pacing: configuration.pacing, loopCount: configuration.loopCount),
            output: configuration.output, numaNode: CPU.numaNode(of: configuration.cores[instance]))
        path.burstCount = configuration.burstCount
        path.ringCapacity = configuration.ringCapacity
        if let count = configuration.poolBufferCount { path.poolBufferCount = count }
        if let size = configuration.bufferSizeBytes {
            path.bufferSizeBytes = size
            path.bufferSizeFollowsCapture = false
        }
        path.stages = configuration.stages
        path.measuresLatency = configuration.measuresLatency
        path.classifier = configuration.classifier
        path.rules = configuration.rules
        path.outputs = configuration.outputs
        path.traffic = configuration.traffic
        if let blocks {
            path.captureBlocks = CaptureBlockShare(blocks: blocks, index: instance)
        } else if instances > 1 {
            path.captureSplit = CaptureSplit(index: instance, count: instances)
        }
        return path
    }

    /// Makes one path per configuration, each on a thread pinned to its core (`cores[i]` for the
    /// i-th), all at once: the pools fault in where they will be used, together.
    private static func makePaths(_ configurations: [PacketPathConfiguration], cores: [Int]) throws(ReplayError) -> [PacketPath] {
        let made: [Result<PacketPath, ReplayError>] = CPU.runPinned(on: Array(cores.prefix(configurations.count))) { instance in
            Result { () throws(ReplayError) in try PacketPath(configurations[instance]) }
        }
        var built: [PacketPath] = []
        for result in made { built.append(try result.get()) }
        return built
    }

    /// A close call's last step, from the trials: whether the instances fan out against the best
    /// single-instance shape measured (`best`). Against one core, or a split on fewer cores than the
    /// instances take, fanning out must measure `margin` times faster (a core saved is worth a little
    /// rate). Against a split on every core, both shapes take the cores, and each trial is one short
    /// window: a near tie between them is noise (a fanned-out window read 8.8-11.3 M records/s over
    /// ten runs, the pipelined 8.9-11.0). The shape the one-core costs predict faster (steadier: that
    /// window read 7.2-7.8) stands unless the other measured `margin` times faster. Pure.
    static func fansOut(fanned: Double, best: Double, bestUsesEveryCore: Bool, predictedFanned: Double?,
                        predictedBest: Double?, margin: Double) -> Bool {
        if bestUsesEveryCore, let predictedFanned, let predictedBest {
            return predictedFanned >= predictedBest ? fanned * margin > best : fanned >= best * margin
        }
        return fanned >= best * margin
    }

    /// Checks what the CLI could not and `PacketPath` does not: the cores, the loop count's flag name.
    static func validate(_ c: ReplayConfiguration) throws(ReplayError) {
        guard !c.cores.isEmpty else { throw .invalidConfiguration(.noCores) }
        guard c.loopCount >= 1 else { throw .invalidConfiguration(.loopCount(c.loopCount)) }
        guard c.trialsWithin >= 1 else {  // NaN fails too
            throw .invalidConfiguration(.fanout("trialsWithin is a factor of at least 1 (1: no trials), got \(c.trialsWithin)"))
        }
        if c.split == .blocks, c.placement == .spread {
            throw .invalidConfiguration(.fanout("--fanout-by blocks is for fanned-out instances (fanout or auto), not spread"))
        }
    }

    /// Why the run cannot be fanned out over instances, or nil when it can: instances each read the
    /// whole capture (a regular file of a link type `CaptureSplit` hashes) at top speed (a paced
    /// replay is one schedule), and each has its own output (discard, or its own socket on the
    /// interface) and nothing shared. Each instance has its own pool: n times the memory.
    public static func splitRefusal(_ c: ReplayConfiguration) -> String? {
        guard c.cores.count >= 2, c.cores.count <= CaptureSplit.countMax else {
            return "needs 2...\(CaptureSplit.countMax) cores, one per instance"
        }
        var status = stat()
        guard stat(c.capturePath, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            return "the capture is not a regular file every instance can read"
        }
        guard c.pacing == .topSpeed else {
            return "a paced replay is one schedule over all packets (fanning out is for --topspeed)"
        }
        if let reader = try? PcapReader(path: c.capturePath) {
            switch c.split {
            case .flows where !CaptureSplit.splits(linkType: reader.linkType):
                return "link type \(reader.linkType) is not one whose flows Sluice hashes (Ethernet, raw IP, Linux cooked)"
            case .blocks where !reader.readsInBlocks:
                return "only a classic pcap file (version 2.4) is read in blocks (--fanout-by flows reads pcapng)"
            default: break
            }
        }
        switch c.output {
        case .discard, .interface: break
        case .pcapFile: return "instances cannot write one pcap file in order"
        case .afXDP: return "an AF_XDP queue has one socket"
        }
        if !c.outputs.isEmpty { return "named outputs are one set of files and sockets" }
        if c.traffic != nil { return "one traffic controller divides one TX ring" }
        if c.measuresLatency { return "latency is measured on one instance's sink" }
        return nil
    }

    /// Records the sample reads (after `sampleWarmUpRecords` untimed ones).
    static let sampleRecords = 8_192
    static let sampleWarmUpRecords = 1_024

    /// The capture's first records read and split as the instances will: what an instance pays per
    /// record of another's flows (reading it and hashing its flow; timed after `sampleWarmUpRecords`,
    /// over `sampleRecords`), and the largest share of records one instance would take. Under a
    /// millisecond. Zeros when nothing could be read (the instances then report why). Also the
    /// largest record it read (bytes captured): what the trials' buffers hold.
    static func sampleSplit(_ path: String, instances: Int)
        -> (othersNsPerRecord: Double, largestShare: Double, largestRecordBytes: Int) {
        guard var reader = try? PcapReader(path: path) else { return (0, 0, 0) }
        let linkType = reader.linkType
        var perInstance = [Int](repeating: 0, count: instances)
        var records = 0
        var timed = 0
        var start = Clock.monotonicNs()
        var largest = 0
        while records < Self.sampleWarmUpRecords + Self.sampleRecords, let record = try? reader.next() {
            if records == Self.sampleWarmUpRecords { start = Clock.monotonicNs() }
            largest = max(largest, record.capturedLength)
            let hash = CaptureSplit.flowHash(record.bytes, linkType: linkType)
            perInstance[Int(truncatingIfNeeded: ((hash >> 32) &* UInt64(instances)) >> 32)] += 1
            records += 1
            if records > Self.sampleWarmUpRecords { timed += 1 }
        }
        let elapsed = Clock.monotonicNs() &- start
        guard records > 0 else { return (0, 0, 0) }
        // A capture shorter than the warm-up: every record timed.
        let ns = timed > 0 ? Double(elapsed) / Double(timed) : Double(elapsed) / Double(records)
        return (ns, Double(perInstance.max()!) / Double(records), largest)
    }

    /// Fanning out mid-run (`MidRunFanOut.whenFaster`): the single instance's pace is measured from
    /// when this many records went out...
    static let midRunWarmUpRecords: UInt64 = 8_192
    /// ...over windows of at least this many more records and `midRunWindowNs` (the hand-off on a VM
    /// can turn dear at any moment of a run of a few hundred milliseconds); two windows in a row
    /// must read slow...
    static let midRunRecords: UInt64 = 50_000
    static let midRunWindowNs: UInt64 = 20_000_000
    /// ...and it fans out when the fanned-out trial ran at least 5% faster and the records left would
    /// take at least this much longer at its pace than at the trial's, or twice what making the run's
    /// path took if more (the instances' paths are made on cores busy with the single instance).
    static let midRunSwitchCostNs: UInt64 = 10_000_000

    /// Runs the replay to the end of the capture (all loops), calling `progress` about every 200 ms
    /// on this thread. A bad record or failed write ends it early: the summary's `failure` says why.
    public func run(progress: ((ReplayProgress) -> Void)? = nil) throws(ReplayError) -> ReplaySummary {
        var paths = self.paths
        let fannedOut = paths.count > 1
        var allocator = !fannedOut && configuration.placement == .auto && configuration.cores.count > 1
            ? MeasuredPlacement(workers: Array(configuration.cores.indices), initial: initialPlacement,
                                handoff: handoff ?? MeasuredPlacement.calibrate(cores: configuration.cores),
                                avoiding: fanout?.refuted ?? []) : nil
        let runtime: Runtime
        do {
            runtime = try Runtime(configuration: RuntimeConfiguration(
                cores: configuration.cores, waitMode: configuration.waitMode,
                fusesRunToCompletion: configuration.fusesRunToCompletion))
            try runtime.start()
        } catch { throw .runtime(error) }
        defer { runtime.stop() }
        let before = runtime.workers.map { $0.counters.snapshot() }
        let captureIdentity = paths[0].captureFileIdentity  // before the launch: no worker reads it yet
        let start = Clock.monotonicNs()
        let pipeline = paths[0].pipeline
        let controller = paths[0].controller
        do {
            for (instance, path) in paths.enumerated() {
                try runtime.launch(path.pipeline, placement: fannedOut
                    ? Array(repeating: instance, count: path.pipeline.stages.count) : initialPlacement)
            }
        } catch { throw .runtime(error) }
        allocator?.begin(pipeline, nowNs: Clock.monotonicNs())
        var watch = fanOutLater.map { MidRunWatch(instances: $0, rule: configuration.fansOutMidRun,
                                                  trialRecordsPerSecond: fanout?.trialFannedOut,
                                                  switchCostNs: max(Self.midRunSwitchCostNs, 2 * pathSetUpNs)) }
        // The single instance stopped for the instances in `paths`, waiting for its drain.
        var stopped: (instances: [PacketPath], record: MidRunFanOutRecord)?
        var midRun: MidRunFanOutRecord?
        var midRunRefusal: String?
        var midRunFailure: String?
        // With a traffic controller this thread runs it, polling every 100 µs between drain checks; a
        // fan-out after a count of records (tests) polls every millisecond.
        var lastProgressNs = start
        while true {
            let forced = watch.map { if case .afterRecords = $0.rule { true } else { false } } ?? false
            let pollNs: UInt64 = controller != nil ? 100_000
                : forced ? 1_000_000 : (allocator == nil && watch == nil ? 200_000_000 : 10_000_000)
            if runtime.drain(timeoutNs: pollNs) {
                guard let (instances, record) = stopped else { break }
                stopped = nil
                // Every record the single instance read went out: the instances take over from the next.
                guard let position = paths[0].capturePosition else { break }  // it reached the end first
                // Only a seek can fail here (the files were checked to be the same before the stop).
                do {
                    for path in instances { try path.takeOver(at: position) }
                } catch {
                    midRunFailure = "fanning out mid-run: the instances could not take the capture over at \(position), "
                        + "so the records from there on were not replayed: \(error)"
                    break
                }
                var launched: [PacketPath] = []
                for (instance, path) in instances.enumerated() {
                    do {
                        try runtime.launch(path.pipeline, placement: Array(repeating: instance, count: path.pipeline.stages.count))
                        launched.append(path)
                    } catch {
                        midRunFailure = "fanning out mid-run: instance \(instance) could not be launched, so its flows from "
                            + "\(position) on were not replayed: \(error)"
                    }
                }
                midRun = record
                midRun!.position = position
                midRun!.deliveredBefore = pipeline.delivered
                midRun!.launchedAtNs = Clock.monotonicNs() &- start
                paths += launched
                continue
            }
            controller?.poll(nowNs: Clock.monotonicNs())
            let now = Clock.monotonicNs()
            if stopped == nil, midRun == nil, let changes = allocator?.changeCount {
                allocator!.step(pipeline, runtime: runtime, nowNs: now)
                // A window across a move measures the move's stall, not a shape: start it again.
                if allocator!.changeCount != changes { watch?.restart() }
            }
            if var current = watch, stopped == nil {
                let out = pipeline.delivered &+ pipeline.filtered &+ paths[0].oversizeRecords
                if let pace = current.due(out: out, packets: paths[0].packetsIn, bytes: paths[0].bytesIn, nowNs: Clock.monotonicNs(),
                                          captureBytes: captureFileBytes, loopCount: configuration.loopCount) {
                    watch = nil
                    let madeAt = Clock.monotonicNs()
                    do {
                        let instances = try Self.makePaths(current.instances, cores: configuration.cores)
                        let made = Clock.monotonicNs()
                        // The instances must read the file the single instance read (not one put in its place).
                        guard let identity = captureIdentity,
                              instances.allSatisfy({ $0.captureFileIdentity.map { $0 == identity } == true }) else {
                            midRunRefusal = "the capture file was replaced since the run opened it"
                            continue
                        }
                        paths[0].stopSignal.stop()
                        runtime.wakeAll()
                        stopped = (instances, MidRunFanOutRecord(
                            stoppedAtNs: made &- start, launchedAtNs: 0,
                            position: CapturePosition(loop: 0, recordIndex: 0, fileOffset: 0),
                            singleRecordsPerSecond: pace > 0 ? pace : nil, trialRecordsPerSecond: fanout?.trialFannedOut,
                            deliveredBefore: 0, setUpNs: made &- madeAt))
                    } catch {
                        midRunRefusal = "the instances' paths could not be made: \(error)"
                    }
                } else {
                    watch = current
                }
            }
            if now - lastProgressNs >= 200_000_000 {
                lastProgressNs = now
                if let controller { trafficMetrics?.record(controller.snapshot()) }
                progress?(ReplayProgress(packets: paths.reduce(0) { $0 &+ $1.packetsIn },
                                         bytes: paths.reduce(0) { $0 &+ $1.bytesIn },
                                         elapsedNs: now - start, expectedPackets: nil))
            }
        }
        let end = Clock.monotonicNs()
        let endCpuNs = processCPUTimeNs()
        let elapsed = end - start
        runtime.stop()
        let failures = paths.map { $0.finish() }
        controller?.poll(nowNs: Clock.monotonicNs())
        if let controller { trafficMetrics?.record(controller.snapshot()) }
        var summary = ReplaySummary(
            packets: paths.reduce(0) { $0 &+ $1.packetsIn }, bytes: paths.reduce(0) { $0 &+ $1.bytesIn },
            delivered: paths.reduce(0) { $0 &+ $1.pipeline.delivered },
            elapsedNs: elapsed, wallNsFromOpen: end - openedAtNs, processCpuNs: endCpuNs &- openedCpuNs,
            drops: Self.mergedDrops(paths), poolWaits: paths.reduce(0) { $0 &+ $1.poolWaits },
            stageNames: pipeline.stages.map(\.name),
            stages: paths.dropFirst().reduce(pipeline.snapshot()) { zip($0, $1.pipeline.snapshot()).map { $0.adding($1) } },
            stagePlacement: allocator?.placement ?? initialPlacement,
            placementChanges: allocator?.changes ?? [], firstDecision: allocator?.firstDecision,
            handoff: allocator?.handoff ?? (try? handoff?.get()),
            calibrationFailure: allocator?.calibrationFailure ?? handoff.flatMap { result in
                if case .failure(let error) = result { return "\(error)" } else { return nil }
            },
            placementFailure: allocator?.moveFailure.map { "\($0)" },
            workers: zip(runtime.workers, before).map { $0.counters.snapshot().since($1) },
            cores: configuration.cores, failure: failures.lazy.compactMap { $0 }.first ?? midRunFailure,
            inputError: paths.lazy.compactMap(\.inputError).first, outputError: paths.lazy.compactMap(\.outputError).first,
            latencyP50Ns: paths[0].latencyPercentile(50), latencyP99Ns: paths[0].latencyPercentile(99),
            traffic: controller?.snapshot(), outputs: paths[0].outputCounts())
        // Fanned out mid-run: the instances are the paths after the single one.
        let instancePaths = midRun != nil ? Array(paths.dropFirst()) : paths
        summary.instances = instancePaths.count
        summary.instanceDelivered = instancePaths.map(\.pipeline.delivered)
        summary.fanout = fanout
        summary.split = instancePaths.count > 1 ? configuration.split : nil
        summary.fusedBursts = paths.reduce(0) { $0 &+ $1.pipeline.fusedBursts.load(ordering: .relaxed) }
        summary.fannedOutMidRun = midRun
        summary.fannedOutMidRunRefusal = midRunRefusal
        return summary
    }

    /// Every instance's drops, summed by reason, in the order reasons first appear.
    private static func mergedDrops(_ paths: [PacketPath]) -> [(reason: String, count: UInt64)] {
        var merged: [(reason: String, count: UInt64)] = []
        for path in paths {
            for drop in path.dropCounts() {
                if let slot = merged.firstIndex(where: { $0.reason == drop.reason }) {
                    merged[slot].count &+= drop.count
                } else {
                    merged.append(drop)
                }
            }
        }
        return merged
    }
}

/// User plus system CPU time of every thread of this process so far (`getrusage(RUSAGE_SELF)`).
func processCPUTimeNs() -> UInt64 {
    var usage = rusage()
    let rc = getrusage(RUSAGE_SELF.rawValue, &usage)
    precondition(rc == 0, "getrusage(RUSAGE_SELF) fails only on a bad argument")
    func ns(_ time: timeval) -> UInt64 { UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_usec) * 1_000 }
    return ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// When a single instance fans out mid-run (`MidRunFanOut`): its pace over windows of its records
/// out, against the fanned-out trial's. Control thread.
struct MidRunWatch {
    /// The instances' path configurations (each takes the capture over where the single one stops).
    let instances: [PacketPathConfiguration]
    let rule: MidRunFanOut
    let trialRecordsPerSecond: Double?
    /// What fanning out costs: the time saved over the records left must be at least this.
    let switchCostNs: UInt64
    /// Where the current window began (nil: still warming up).
    private var mark: (ns: UInt64, out: UInt64)?
    /// Set by `restart`: the next call starts a window.
    private var restarting = false
    /// Windows in a row whose pace was below the trial's by the margin (two fan out: one short
    /// window can read low, a pipelined one just after its start above all).
    private var slowWindows = 0

    init(instances: [PacketPathConfiguration], rule: MidRunFanOut, trialRecordsPerSecond: Double?,
         switchCostNs: UInt64 = Replay.midRunSwitchCostNs) {
        precondition(rule != .never && instances.count >= 2, "a watch fans out over two or more instances")
        self.instances = instances
        self.rule = rule
        self.trialRecordsPerSecond = trialRecordsPerSecond
        self.switchCostNs = switchCostNs
    }

    /// Drops the current window (a stage move stalled it): the next call starts another.
    mutating func restart() {
        if mark != nil { (restarting, slowWindows) = (true, 0) }
    }

    /// nil while not due; when it is time to fan out, the last window's pace (records out a second;
    /// 0 when forced before a window). `out`: records out of the single instance (delivered,
    /// filtered, too large); `packets`, `bytes`: read so far; `captureBytes`: the file's size.
    mutating func due(out: UInt64, packets: UInt64, bytes: UInt64, nowNs: UInt64, captureBytes: UInt64,
                      loopCount: Int) -> Double? {
        if case .afterRecords(let records) = rule { return out >= records ? 0 : nil }
        guard let trial = trialRecordsPerSecond else { return nil }
        guard let mark, !restarting else {
            if out >= Replay.midRunWarmUpRecords { (self.mark, restarting) = ((nowNs, out), false) }
            return nil
        }
        guard out &- mark.out >= Replay.midRunRecords, nowNs &- mark.ns >= Replay.midRunWindowNs else { return nil }
        let pace = Double(out &- mark.out) / (Double(nowNs &- mark.ns) / 1e9)
        self.mark = (nowNs, out)
        slowWindows = pace * 1.05 < trial ? slowWindows + 1 : 0
        guard slowWindows >= 2, packets > 0 else { return nil }
        // Records left, from the file's size and the mean record so far (its bytes and a 16-byte header).
        let fileBytesPerRecord = Double(bytes) / Double(packets) + 16
        let total = Double(captureBytes &- min(captureBytes, 24)) * Double(loopCount) / fileBytesPerRecord
        let left = max(total - Double(packets), 0)
        let saved = left / pace - left / trial
        return saved * 1e9 >= Double(switchCostNs) ? pace : nil
    }
}
