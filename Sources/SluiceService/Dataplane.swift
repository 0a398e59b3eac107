// Path: Sources/SluiceService/Dataplane.swift — the service's packet pipelines on one runtime of
// pinned workers, the control thread that runs their traffic controllers, and a graceful stop:
// sources stop, rings drain, sinks flush.
import Foundation
import Logging
import SluiceCore
import SluiceFirmware
import SluicePacketIO
import SluiceReplay
import SluiceReplication
import SluiceStorageServer
import SluiceTraffic
import SluiceWAN
import Synchronization

/// Why the service could not start. Each case keeps the error underneath, for callers to match.
public enum ServiceError: Error, CustomStringConvertible {
    case pipeline(name: String, ReplayError)
    case runtime(RuntimeError)
    /// The storage data directory could not be opened (created, locked, its log replayed).
    case storageOpen(dataDirectory: String, DataDirectoryError)
    /// The storage data directory could not be opened as a replica of its shared etcd log.
    case storageReplicated(dataDirectory: String, ReplicatedStorageError)
    /// The storage node could not listen.
    case storageListen(StorageServerError)
    /// The metrics endpoint could not listen (the error is swift-nio's: `IOError`, `SocketAddressError`).
    case metricsListen(ListenAddress, BindFailure)
    /// The process's CPUs could not be read, or its threads not moved to the control cores.
    case affinity(SyscallError)
    /// A control core this process may not use.
    case controlCoreNotAllowed(core: Int, allowed: [Int])
    /// A WAN link (`wan:`) could not start.
    case wan(name: String, WANError)
    /// The firmware boot check could not run (its keys or settings), as opposed to a device failing it.
    case firmware(FirmwareError)
    /// The overlay host (`overlay:`) could not start (its ports, its etcd client).
    case overlay(String)
    /// An AF_XDP source or sink (`kind: af_xdp`) could not run and no fallback was allowed; `key` is
    /// the config key (`pipelines[N].source` or `.sink`), `reason` says why.
    case afXDP(pipeline: String, key: String, reason: String)

    public var description: String {
        switch self {
        case let .pipeline(name, error): "pipeline '\(name)': \(error)"
        case let .runtime(error): "runtime: \(error)"
        case let .storageOpen(directory, error): "storage: data directory \(directory): \(Self.describe(error))"
        case let .storageReplicated(directory, error): "storage: data directory \(directory) on its etcd log: \(error)"
        case let .storageListen(error): "storage: \(error)"
        case let .metricsListen(address, error): "metrics endpoint: cannot listen on \(address): \(error)"
        case let .affinity(error): "control cores: \(error)"
        case let .controlCoreNotAllowed(core, allowed): "control cores: core \(core) is not one this process may use (\(allowed))"
        case let .wan(name, error): "wan link '\(name)': \(error)"
        case let .firmware(error): "firmware: \(error)"
        case let .overlay(problem): "overlay: \(problem)"
        case let .afXDP(pipeline, key, reason): "pipeline '\(pipeline)': \(key) (kind: af_xdp): \(reason)"
        }
    }

    /// A data directory error in words: the errno's text, the store's or log's own description; any
    /// other case (a lock held by another process, say) as it describes itself.
    private static func describe(_ error: DataDirectoryError) -> String {
        if case let .cannotCreate(path, code) = error { return "cannot create or sync \(path): \(String(cString: strerror(code)))" }
        if case let .store(underlying) = error { return "\(underlying)" }
        if case let .log(underlying) = error { return "log: \(underlying)" }
        return "\(error)"
    }
}

/// Where a measured pipeline's stages run now and why (`Dataplane.placement(ofPipeline:)`).
public struct PlacementStatus: Sendable, Equatable {
    /// The core of each stage, source first.
    public var cores: [Int]
    /// Placements moved to since the start.
    public var changes: Int
    public var handoffNsPerItem: Double?
    /// The decision behind the current placement (the last move's, or the first kept one's).
    public var decision: PlacementDecision?
}

/// A core moved from one pipeline to another (`CoreBroker`, with `rebalance: move_cores`), and why.
public struct CoreMoveRecord: Sendable, Equatable {
    /// Nanoseconds since the pipelines started.
    public var atNs: UInt64
    public var core: Int
    public var from: String
    public var to: String
    public var reason: CoreMove.Reason
    /// The measured demands, weights and shares behind it.
    public var detail: String
}

/// Core moves counted by giver, receiver and reason (`Dataplane.coreMoveCounts`).
public struct CoreMoveKey: Sendable, Hashable {
    public var from: String
    public var to: String
    public var reason: CoreMove.Reason
}

/// The cores a pipeline may use now, its weight and its last measured demand (rebalanced services).
public struct PipelineCoreStatus: Sendable, Equatable {
    public var cores: [Int]
    public var weight: Double
    public var demandCores: Double
}

/// How a pipeline ended, for the shutdown log and the exit status.
public struct PipelineOutcome: Sendable {
    public var name: String
    public var packetsIn: UInt64
    /// From launch until the pipeline drained (or until the stop, for one that had not).
    public var elapsedNs: UInt64
    public var delivered: UInt64
    public var filtered: UInt64
    /// Items still on the pipeline's rings when the drain timed out (0 after a clean drain).
    public var leftOnRings: Int
    public var drops: [(reason: String, count: UInt64)]
    /// The input or output error that ended it early, if any.
    public var failure: String?

    public var packetsPerSecond: Double { Double(packetsIn) / max(Double(elapsedNs) / 1e9, 1e-9) }
}

/// The configured pipelines on one runtime. `start` launches them; the control thread then polls
/// their traffic controllers (100 µs) and flushes each sink when its pipeline drains; `stop` ends
/// it all. Control-plane object: any thread may read counters; start and stop from one thread.
public final class Dataplane: @unchecked Sendable {  // unchecked: controllers are polled by the control thread only
    public let configuration: ServiceConfiguration
    public let paths: [PacketPath]
    public let runtime: Runtime
    /// Worker index of each stage at start, per pipeline (the rebalancer may move stages later).
    public let placements: [[Int]]
    /// Stage moves the rebalancer and the measured placements made.
    public let stageMoves = Atomic<UInt64>(0)
    /// Rings the rebalancer resized (`rebalance.resize_rings`).
    public let ringResizes = Atomic<UInt64>(0)
    /// Pools the rebalancer grew so their pipeline's rings could (`buffers_max`).
    public let poolGrowths = Atomic<UInt64>(0)
    /// Pools the rebalancer shrank back to what their pipeline's smaller rings need.
    public let poolShrinks = Atomic<UInt64>(0)
    /// Measured placements by pipeline index (`ServiceConfiguration.isMeasured`). Made by `start`
    /// before the workers run, then stepped by the control thread only.
    private var measured: [Int: MeasuredPlacement] = [:]
    /// Hand-off costs by core pair, measured in `init`.
    private let handoffs: [[Int]: Result<HandoffCost, HandoffCalibrationError>]
    /// What the measured placements decided, published by the control thread for metrics and stats.
    private let placementStatus: Mutex<[Int: PlacementStatus]> = Mutex([:])
    /// The rebalancer's view of each pipeline's cores, and the last core moves (at most
    /// `coreMovesKept`), published by the control thread for metrics and stats.
    private let coreState: Mutex<(pipelines: [Int: PipelineCoreStatus], moves: [CoreMoveRecord], total: [CoreMoveKey: UInt64])> =
        Mutex(([:], [], [:]))
    static let coreMovesKept = 32
    /// Set when `stop` begins: the rebalancer moves nothing from then on.
    private let stopping = Atomic<Bool>(false)
    var isStopping: Bool { stopping.load(ordering: .acquiring) }
    let logger: Logger
    private let controlStop = Atomic<Bool>(false)
    private let controlThreadDone = DispatchSemaphore(value: 0)
    /// The controllers' last snapshots (index = pipeline), written by the control thread.
    private let trafficSnapshots: Mutex<[TrafficSnapshot?]>
    /// Pipelines seen drained (index -> when), each then flushed once on a thread of its own.
    private let drainedAt: Mutex<[Int: UInt64]> = Mutex([:])
    /// Pipelines whose sink the flush thread has finished (or, for a shaped TX stage, that holds nothing).
    private let flushedCount = Atomic<Int>(0)
    /// Shaped pipelines seen drained with nothing held. Control thread only.
    private var idleSinksEmptied: Set<Int> = []
    /// When `start` launched the pipelines (monotonic ns).
    private let startedNs = Atomic<UInt64>(0)

    public init(configuration: ServiceConfiguration, logger: Logger) throws(ServiceError) {
        self.configuration = configuration
        self.logger = logger
        var paths: [PacketPath] = []
        var placements: [[Int]] = []
        var claimed: [String: String] = [:]  // AF_XDP interface queues taken by earlier pipelines
        for (index, settings) in configuration.pipelines.enumerated() {
            var pathConfiguration = try Self.resolveAFXDP(settings, index: index, claimed: &claimed, logger: logger)
            pathConfiguration.numaNode = CPU.numaNode(of: settings.cores[0])
            // A port the probe opened can still fail here (another XDP program attached in between):
            // each retry puts one AF_XDP port back on its fallback, so at most two.
            var built: PacketPath?
            for _ in 0..<3 where built == nil {
                do { built = try PacketPath(pathConfiguration) } catch {
                    pathConfiguration = try Self.fallingBack(from: error, pathConfiguration, settings: settings,
                                                             index: index, logger: logger)
                }
            }
            paths.append(built!)
            if let mode = paths.last!.afXDPInputMode, let port = settings.afXDPSource {
                logger.info("af_xdp: source runs on AF_XDP", metadata: [
                    "pipeline": "\(settings.path.name)", "key": "pipelines[\(index)].source",
                    "interface": "\(port.configuration.interface)", "queue": "\(port.configuration.queue)",
                    "mode": "\(mode)"])
            }
            if case .afXDP(let port) = pathConfiguration.output {
                logger.info("af_xdp: sink runs on AF_XDP", metadata: [
                    "pipeline": "\(settings.path.name)", "key": "pipelines[\(index)].sink",
                    "interface": "\(port.interface)", "queue": "\(port.queue)"])
                if let warning = Self.unenforcedPolicyWarning(pathConfiguration, index: index) {
                    logger.warning("\(warning)", metadata: ["pipeline": "\(settings.path.name)",
                                                            "key": "pipelines[\(index)].traffic"])
                }
            }
            for core in settings.cores + (settings.stageCores ?? []) where !configuration.cores.contains(core) {
                throw .pipeline(name: settings.path.name, .invalidConfiguration(.coreNotAvailable(core)))
            }
            let stageCount = paths.last!.pipeline.stages.count
            let placement = configuration.placement(of: settings, stageCount: stageCount)
            guard placement.count == stageCount else {
                throw .pipeline(name: settings.path.name, .invalidConfiguration(.placementCount(named: placement.count, stageCount: stageCount)))
            }
            placements.append(placement)
        }
        self.paths = paths
        self.placements = placements
        // Calibrated here, not in `start`: the service confines its own threads to the control cores
        // between the two, and the calibration's threads must be able to run on the worker cores.
        var handoffs: [[Int]: Result<HandoffCost, HandoffCalibrationError>] = [:]
        for settings in configuration.pipelines where configuration.isMeasured(settings) {
            let pair = configuration.handoffCores(of: settings)
            if handoffs[pair] == nil { handoffs[pair] = MeasuredPlacement.calibrate(cores: pair) }
        }
        self.handoffs = handoffs
        trafficSnapshots = Mutex(Array(repeating: nil, count: paths.count))
        do {
            runtime = try Runtime(configuration: RuntimeConfiguration(cores: configuration.cores,
                                                                      waitMode: configuration.waitMode))
        } catch { throw .runtime(error) }
    }

    /// Decides what runs an `af_xdp` source or sink and returns the pipeline's path configuration
    /// with it. Each AF_XDP port is probed first, in the calling thread's namespace (the one the
    /// pipeline opens its sockets in): a receiver attaches the XDP program (and detaches it at once),
    /// so the log says which mode the kernel allows (native on veth and capable drivers, else
    /// generic), or why it refuses. A port that opens runs as AF_XDP. One that does not runs as
    /// AF_PACKET on the same interface only under `fallback: af_packet`, with a warning saying why;
    /// without it the service refuses to start, naming the key. docs/AFXDP.md.
    @discardableResult
    static func resolveAFXDP(_ settings: PipelineSettings, index: Int, logger: Logger) throws(ServiceError)
        -> PacketPathConfiguration
    {
        var claimed: [String: String] = [:]
        return try resolveAFXDP(settings, index: index, claimed: &claimed, logger: logger)
    }

    /// `resolveAFXDP` across pipelines: `claimed` maps "interface queue N" to the key of the AF_XDP port
    /// that took it. The kernel binds one AF_XDP socket (one UMEM) per interface queue, RX or TX, and
    /// the probe opens one port at a time, so a second port on a taken queue would pass its probe and
    /// fail when the pipelines open together: it counts as a failed probe instead. Ports that run as
    /// AF_XDP are added to `claimed`.
    static func resolveAFXDP(_ settings: PipelineSettings, index: Int, claimed: inout [String: String],
                             logger: Logger) throws(ServiceError) -> PacketPathConfiguration
    {
        let name = settings.path.name
        var path = settings.path
        for (role, port) in [("source", settings.afXDPSource), ("sink", settings.afXDPSink)] {
            guard let port else { continue }
            let key = "pipelines[\(index)].\(role)"
            let interface = port.configuration.interface
            let queueName = "\(interface) queue \(port.configuration.queue)"
            let reason: String
            do {
                if let owner = claimed[queueName] {
                    throw AFXDPQueueTaken(description: "\(queueName) is already taken by \(owner) (one AF_XDP socket per queue)")
                }
                let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
                if role == "source" {
                    let receiver = try AFXDPReceiver(configuration: port.configuration, pool: pool)
                    logger.info("af_xdp: XDP program attaches", metadata: [
                        "pipeline": "\(name)", "key": "\(key)", "interface": "\(interface)", "mode": "\(receiver.mode)",
                        "program": "libxdp xsk_def_xdp_prog from \(AFXDPInterface.objectPath)"])
                    path.input = .afXDP(port.configuration)
                } else {
                    _ = try AFXDPTransmitter(configuration: port.configuration, pool: pool)
                    logger.info("af_xdp: TX socket opens (no XDP program needed)", metadata: [
                        "pipeline": "\(name)", "key": "\(key)", "interface": "\(interface)"])
                    path.output = .afXDP(port.configuration)
                }
                claimed[queueName] = key
                continue
            } catch let error as AFXDPQueueTaken {
                reason = error.description
            } catch let error as AFXDPError {
                reason = "\(error)"
            } catch {
                reason = "probe pool: \(error)"
            }
            guard port.fallbackToAFPacket else { throw .afXDP(pipeline: name, key: key, reason: reason) }
            // `settings.path` already holds the AF_PACKET stand-in on the same interface.
            logger.warning("af_xdp: falling back to AF_PACKET (fallback: af_packet)", metadata: [
                "pipeline": "\(name)", "key": "\(key)", "interface": "\(interface)", "reason": "\(reason)"])
        }
        return path
    }

    /// The warning for a `traffic:` policy on a pipeline whose sink runs on AF_XDP: the controller
    /// hears every completion (it measures), but no shaped TX stage holds frames back (it does not
    /// enforce). nil when there is no policy or the sink is not AF_XDP.
    static func unenforcedPolicyWarning(_ path: PacketPathConfiguration, index: Int) -> String? {
        guard path.traffic != nil, case .afXDP(let port) = path.output else { return nil }
        return "traffic: policy measured, not enforced on an AF_XDP sink (pipelines[\(index)].traffic, sink "
            + "\(port.interface) queue \(port.queue)): frames leave as they come; use an AF_PACKET sink to enforce it"
    }

    /// A second AF_XDP port on an interface queue another port took (a failed probe).
    struct AFXDPQueueTaken: Error, CustomStringConvertible { let description: String }

    /// After `PacketPath` failed to open an AF_XDP port that the probe had opened: `configuration`
    /// with that port's AF_PACKET stand-in when its fallback is allowed (logged), else the error
    /// naming the port's key. Any other error is the pipeline's.
    static func fallingBack(from error: ReplayError, _ configuration: PacketPathConfiguration,
                            settings: PipelineSettings, index: Int, logger: Logger) throws(ServiceError)
        -> PacketPathConfiguration
    {
        var configuration = configuration
        let role: String
        let port: AFXDPPortSettings?
        let reason: String
        switch error {
        case .afXDPInput(_, let underlying):
            (role, port, reason) = ("source", settings.afXDPSource, "\(underlying)")
            configuration.input = settings.path.input
        case .afXDPOutput(_, let underlying):
            (role, port, reason) = ("sink", settings.afXDPSink, "\(underlying)")
            configuration.output = settings.path.output
        default:
            throw .pipeline(name: settings.path.name, error)
        }
        let key = "pipelines[\(index)].\(role)"
        guard let port, port.fallbackToAFPacket else {
            throw .afXDP(pipeline: settings.path.name, key: key, reason: reason)
        }
        logger.warning("af_xdp: falling back to AF_PACKET (fallback: af_packet)", metadata: [
            "pipeline": "\(settings.path.name)", "key": "\(key)", "interface": "\(port.configuration.interface)",
            "reason": "\(reason)"])
        return configuration
    }

    /// Pins the workers, launches every pipeline and starts the control thread. Pipelines placed by
    /// measured cost use the hand-off `init` calibrated between their `handoffCores`.
    public func start() throws(ServiceError) {
        for settings in configuration.pipelines
        where settings.placement == .auto && settings.stageCores == nil && settings.cores.count >= 2
            && !configuration.isMeasured(settings) {
            logger.info("placement: spread; measured placement needs cores no other pipeline uses (with rebalance.move_cores, no other auto pipeline)",
                        metadata: ["pipeline": "\(settings.path.name)", "cores": "\(settings.cores)"])
        }
        for (index, settings) in configuration.pipelines.enumerated() where configuration.isMeasured(settings) {
            let handoff = handoffs[configuration.handoffCores(of: settings)]!
            let workers = settings.cores.compactMap { configuration.cores.firstIndex(of: $0) }
            measured[index] = MeasuredPlacement(workers: workers, initial: placements[index], handoff: handoff)
            switch handoff {
            case .success(let cost):
                logger.info("hand-off measured", metadata: ["pipeline": "\(settings.path.name)", "cost": "\(cost)"])
            case .failure(let error):
                logger.warning("hand-off not measured: the pipeline keeps running to completion on its first core",
                               metadata: ["pipeline": "\(settings.path.name)", "error": "\(error)"])
            }
        }
        do {
            try runtime.start()
            for (path, placement) in zip(paths, placements) { try runtime.launch(path.pipeline, placement: placement) }
        } catch {
            runtime.stop()
            throw .runtime(error)
        }
        let launchedNs = Clock.monotonicNs()
        for index in measured.keys { measured[index]!.begin(paths[index].pipeline, nowNs: launchedNs) }
        startedNs.store(Clock.monotonicNs(), ordering: .relaxed)
        for (path, placement) in zip(paths, placements) {
            logger.info("pipeline started", metadata: [
                "pipeline": "\(path.configuration.name)",
                "stages": "\(path.pipeline.stages.map(\.name).joined(separator: " -> "))",
                "cores": "\(placement.map { configuration.cores[$0] })"])
        }
        Thread.detach(name: "sluice-control") { [self] in controlLoop() }
    }

    /// Polls the controllers, publishes their snapshots, flushes the sinks of drained pipelines.
    private func controlLoop() {
        defer { controlThreadDone.signal() }
        let hasControllers = paths.contains { $0.controller != nil }
        var lastSnapshotNs: UInt64 = 0
        var rebalancer = configuration.rebalance.map { Rebalancer(settings: $0, dataplane: self) }
        while !controlStop.load(ordering: .acquiring) {
            let now = Clock.monotonicNs()
            for path in paths { path.controller?.poll(nowNs: now) }
            if now &- lastSnapshotNs >= 100_000_000 {
                lastSnapshotNs = now
                publishTrafficSnapshots()
            }
            finishDrainedPipelines()
            stepMeasuredPlacements(nowNs: now)
            rebalancer?.step(nowNs: now, measured: measured.mapValues(\.placement))
            usleep(hasControllers ? 100 : 1_000)
        }
    }

    /// Re-decides each measured pipeline's placement when due; logs and publishes every move with its
    /// reason. A failed move stops measuring that pipeline (it keeps running where it is). Control thread.
    private func stepMeasuredPlacements(nowNs: UInt64) {
        guard !isStopping else { return }
        for index in measured.keys.sorted() {
            let path = paths[index]
            guard !path.pipeline.isDrained else { continue }
            let before = measured[index]!.changeCount
            let reopenedBefore = measured[index]!.reopenCount
            measured[index]!.step(path.pipeline, runtime: runtime, nowNs: nowNs)
            if measured[index]!.reopenCount != reopenedBefore, let why = measured[index]!.lastReopenWhy {
                logger.info("placement re-decided again: its stage costs changed",
                            metadata: ["pipeline": "\(path.configuration.name)", "why": "\(why)"])
            }
            publishMeasured(index, changesBefore: before)
        }
    }

    /// Logs measured pipeline `index`'s placement changes since the first `changesBefore` (and a
    /// failed move), counts its stage moves and publishes its placement. Control thread.
    private func publishMeasured(_ index: Int, changesBefore before: Int) {
        let path = paths[index]
        let allocator = measured[index]!
        let new = allocator.changeCount - before
        if new > 0, let failure = allocator.moveFailure {
            logger.warning("stage move failed; this pipeline's placement is no longer re-decided",
                           metadata: ["pipeline": "\(path.configuration.name)", "error": "\(failure)",
                                      "cores": "\(allocator.placement.map { configuration.cores[$0] })"])
        }
        for change in allocator.changes.suffix(new) {
            stageMoves.add(UInt64(zip(change.from, change.to).filter { $0 != $1 }.count), ordering: .relaxed)
            logger.info("stages placed by measured cost", metadata: [
                "pipeline": "\(path.configuration.name)",
                "fromCores": "\(change.from.map { configuration.cores[$0] })",
                "toCores": "\(change.to.map { configuration.cores[$0] })", "why": "\(change.why)"])
        }
        let status = PlacementStatus(cores: allocator.placement.map { configuration.cores[$0] },
                                     changes: allocator.changeCount, handoffNsPerItem: allocator.handoff?.handoffNsPerItem,
                                     decision: allocator.changes.last?.decision ?? allocator.firstDecision)
        placementStatus.withLock { $0[index] = status }
    }

    /// Pipelines placed by measured cost (their `MeasuredPlacement`), by index.
    var measuredPipelines: Set<Int> { Set(measured.keys) }

    /// False for a measured pipeline whose stage move failed: its placement is no longer re-decided,
    /// so its cores stay. Control thread.
    func measuredCanMove(_ index: Int) -> Bool { measured[index]?.moveFailure == nil }

    /// How many workers measured pipeline `index` can use now (`MeasuredPlacement.workersWanted`);
    /// nil when it is not measured or nothing was measured yet. Control thread.
    func measuredWorkersWanted(_ index: Int) -> Int? { measured[index]?.workersWanted() }

    /// Where measured pipeline `index`'s stages run now (runtime worker indices). Control thread.
    func measuredPlacement(_ index: Int) -> [Int]? { measured[index]?.placement }

    /// The workers measured pipeline `index` holds (`MeasuredPlacement.workers`). Control thread.
    func measuredWorkers(_ index: Int) -> [Int]? { measured[index]?.workers }

    /// Gives measured pipeline `index` the workers a core move left it (`MeasuredPlacement.setWorkers`:
    /// its stages leave a lost core, and may spread onto a gained one), logged and published as its
    /// other placement changes. False when a stage move failed. Control thread; blocks during moves.
    func setMeasuredWorkers(_ index: Int, _ workers: Set<Int>, nowNs: UInt64) -> Bool {
        guard measured[index] != nil else { return true }
        guard !isStopping else { return false }
        let before = measured[index]!.changeCount
        measured[index]!.setWorkers(Array(workers), pipeline: paths[index].pipeline, runtime: runtime, nowNs: nowNs)
        publishMeasured(index, changesBefore: before)
        return measured[index]!.moveFailure == nil
    }

    /// Cores, weight and demand of pipeline `index` as the rebalancer last measured (nil: no rebalancer).
    public func cores(ofPipeline index: Int) -> PipelineCoreStatus? {
        coreState.withLock { $0.pipelines[index] }
    }

    /// The last core moves between pipelines, oldest first (at most `coreMovesKept`).
    public var coreMoves: [CoreMoveRecord] { coreState.withLock { $0.moves } }

    /// Core moves so far by giver, receiver and reason (every one, not only those kept).
    public var coreMoveCounts: [CoreMoveKey: UInt64] { coreState.withLock { $0.total } }

    func publishCores(_ pipelines: [Int: PipelineCoreStatus], move: CoreMoveRecord?) {
        coreState.withLock { state in
            state.pipelines = pipelines
            guard let move else { return }
            if state.moves.count == Self.coreMovesKept { state.moves.removeFirst() }
            state.moves.append(move)
            state.total[CoreMoveKey(from: move.from, to: move.to, reason: move.reason), default: 0] += 1
        }
    }

    /// When the pipelines started (monotonic ns; 0 before `start`).
    var startedAtNs: UInt64 { startedNs.load(ordering: .relaxed) }

    /// The measured placement of pipeline `index` (nil: fixed placement, or nothing decided yet).
    public func placement(ofPipeline index: Int) -> PlacementStatus? {
        placementStatus.withLock { $0[index] }
    }

    private func publishTrafficSnapshots() {
        let snapshots = paths.map { $0.controller?.snapshot() }
        trafficSnapshots.withLock { $0 = snapshots }
    }

    /// A pipeline whose source ended and whose items all left: flush its sink now, on a thread of its
    /// own (a TX ring may take a second to empty; the controllers keep being polled), while the
    /// service goes on. A capture replayed into a file is complete on disk from here.
    /// How long a drained pipeline's idle-working sink (shaped TX, AF_XDP) may hold frames before the
    /// pipeline counts as flushed anyway.
    static let idleSinkFlushTimeoutNs: UInt64 = 2_000_000_000

    private func finishDrainedPipelines() {
        for (index, path) in paths.enumerated() where path.pipeline.isDrained {
            let drainedNs = Clock.monotonicNs()
            let isNew = drainedAt.withLock { drained in
                guard drained[index] == nil else { return false }
                drained[index] = drainedNs
                return true
            }
            if path.sinkWorksWhenIdle {
                // Its worker still serves the sink's backlogs and completions (the TX ring is that
                // worker's): done when it holds nothing more; `stop` finishes it.
                if isNew {
                    logger.info("pipeline drained; its shaped TX stage sends what it holds",
                                metadata: ["pipeline": "\(path.configuration.name)", "packets": "\(path.packetsIn)"])
                }
                // Bounded: a sink still holding frames 2 s after the drain (a wedged queue, frames the
                // kernel never completes) counts as flushed, saying how many it holds.
                let held = path.sinkHeldFrames
                let since = drainedAt.withLock { $0[index] } ?? drainedNs
                let givenUp = held > 0 && Clock.monotonicNs() &- since > Self.idleSinkFlushTimeoutNs
                if held == 0 || givenUp, idleSinksEmptied.insert(index).inserted {
                    if givenUp {
                        logger.warning("pipeline drained; its sink still holds frames 2 s later, not waiting for them",
                                       metadata: ["pipeline": "\(path.configuration.name)", "frames": "\(held)"])
                    } else {
                        logger.info("pipeline drained, every frame sent", metadata: ["pipeline": "\(path.configuration.name)"])
                    }
                    flushedCount.add(1, ordering: .releasing)
                }
                continue
            }
            guard isNew else { continue }
            Thread.detach(name: "sluice-flush") { [self] in
                let failure = path.finish()
                let seconds = Double(drainedNs &- startedNs.load(ordering: .relaxed)) / 1e9
                var metadata: Logger.Metadata = [
                    "pipeline": "\(path.configuration.name)", "packets": "\(path.packetsIn)",
                    "delivered": "\(path.pipeline.delivered)", "filtered": "\(path.pipeline.filtered)",
                    "seconds": "\(seconds)", "pps": "\(Int(Double(path.packetsIn) / max(seconds, 1e-9)))"]
                for drop in path.dropCounts() { metadata["drop.\(drop.reason)"] = "\(drop.count)" }
                if let failure {
                    metadata["failure"] = "\(failure)"
                    logger.error("pipeline ended early", metadata: metadata)
                } else {
                    logger.info("pipeline drained, sink flushed", metadata: metadata)
                }
                flushedCount.add(1, ordering: .releasing)
            }
        }
    }

    /// True once every pipeline has drained and had its sink flushed (a capture-only service is done).
    public var allDrained: Bool { flushedCount.load(ordering: .acquiring) == paths.count }

    /// The controllers' latest snapshots (about 100 ms old at most), by pipeline.
    public var trafficSnapshot: [TrafficSnapshot?] { trafficSnapshots.withLock { $0 } }

    /// Graceful stop: stops every source, lets the pipelines drain what entered (up to
    /// `drainTimeoutNs`), stops the workers, flushes every sink. Blocks; call once, after `start`.
    public func stop(drainTimeoutNs: UInt64) -> [PipelineOutcome] {
        stopping.store(true, ordering: .releasing)
        for path in paths { path.stopSignal.stop() }
        runtime.wakeAll()
        let drained = runtime.drain(timeoutNs: drainTimeoutNs)
        controlStop.store(true, ordering: .releasing)
        controlThreadDone.wait()
        runtime.stop()
        if !drained { logger.warning("drain timed out; items left on rings are counted below", metadata: ["timeoutMs": "\(drainTimeoutNs / 1_000_000)"]) }
        let now = Clock.monotonicNs()
        for path in paths { path.controller?.poll(nowNs: now) }
        publishTrafficSnapshots()
        return paths.enumerated().map { index, path in
            let failure = path.finish()
            let drainedNs = drainedAt.withLock { $0[index] } ?? Clock.monotonicNs()
            return PipelineOutcome(name: path.configuration.name, packetsIn: path.packetsIn,
                                   elapsedNs: drainedNs &- startedNs.load(ordering: .relaxed),
                                   delivered: path.pipeline.delivered, filtered: path.pipeline.filtered,
                                   leftOnRings: path.pipeline.queued, drops: path.dropCounts(), failure: failure)
        }
    }
}

/// Measures each stage's load every interval and moves the few stages `ResourceAllocator.rebalance`
/// proposes, within each pipeline's cores; with `movesCores`, first moves a core between pipelines
/// when `CoreBroker` says one needs it (the giver's stages leave that core, then the receiver's
/// rebalance onto it). Control thread only. A move blocks that thread until the stage runs on its
/// new worker (about a worker turn); the runtime loses and reorders nothing.
struct Rebalancer {
    let settings: RebalanceSettings
    unowned let dataplane: Dataplane
    private let allocator: ResourceAllocator
    /// Worker index of each stage now, per pipeline.
    private var placement: [[Int]]
    private var previous: [[StageSnapshot]]
    private var previousNs: UInt64
    /// Workers each pipeline may use (core moves change them).
    private var allowedWorkers: [Set<Int>]
    /// Intervals to skip after a failed move.
    private var pausedSteps = 0
    static let pauseAfterFailure = 30
    private let broker = CoreBroker()
    /// Intervals before the next core move may be considered (loads are measured afresh after one).
    private var coreMoveCooldown = 0
    static let coreMoveCooldownSteps = 3
    /// Intervals between ring sizings (each resize parks stages for a moment: not every interval).
    private var stepsToRingSizing = Self.ringSizingEverySteps
    static let ringSizingEverySteps = 5
    /// A ring is resized only when the wanted capacity is this many times larger or smaller.
    static let ringResizeFactor = 4
    /// How long a pool's shrink may wait for buffers its pipeline recycles (`BufferPool.shrink`).
    static let poolShrinkWaitNs: UInt64 = 20_000_000
    /// How long one ring's resize may wait for its consumer to drain it before it is undone.
    static let ringResizeTimeoutNs: UInt64 = 50_000_000
    /// Each live input's (interface, AF_XDP) pool allocations that found it empty, at the last interval.
    private var liveExhaustions: [UInt64]
    /// Intervals with arrivals in a row in which each live input's pool never ran empty.
    private var liveQuietSteps: [Int]
    /// Such intervals each live input's pool needs before it halves: `livePoolQuietSteps`, doubled
    /// (up to 16x) each time it runs empty again after a halving.
    private var liveQuietNeeded: [Int]
    /// Whether each live input's pool was halved since it last grew.
    private var liveHalved: [Bool]
    /// A live input's pool grown beyond its configured size halves (towards what its rings need) after
    /// this many intervals with arrivals in a row without running empty.
    static let livePoolQuietSteps = 30

    init(settings: RebalanceSettings, dataplane: Dataplane) {
        self.settings = settings
        self.dataplane = dataplane
        var allocatorConfiguration = ResourceAllocator.Configuration(workerCount: dataplane.runtime.workers.count)
        allocatorConfiguration.imbalanceThreshold = settings.imbalance
        allocator = ResourceAllocator(configuration: allocatorConfiguration)
        placement = dataplane.placements
        previous = dataplane.paths.map { $0.pipeline.snapshot() }
        previousNs = Clock.monotonicNs()
        liveExhaustions = dataplane.paths.map(\.poolExhaustions)
        liveQuietSteps = Array(repeating: 0, count: dataplane.paths.count)
        liveQuietNeeded = Array(repeating: Self.livePoolQuietSteps, count: dataplane.paths.count)
        liveHalved = Array(repeating: false, count: dataplane.paths.count)
        let cores = dataplane.configuration.cores
        allowedWorkers = dataplane.configuration.pipelines.map { pipeline in
            Set(pipeline.cores.compactMap { cores.firstIndex(of: $0) })
        }
    }

    /// `measured`: the current placement of pipelines whose placement is measured; the rebalancer
    /// counts their load where they are but leaves them alone.
    mutating func step(nowNs: UInt64, measured: [Int: [Int]] = [:]) {
        for (index, current) in measured { placement[index] = current }
        let intervalNs = UInt64(settings.intervalMs) * 1_000_000
        guard nowNs &- previousNs >= intervalNs, !dataplane.isStopping else { return }
        let paths = dataplane.paths
        let current = paths.map { $0.pipeline.snapshot() }
        let demands = paths.indices.map { index in
            PipelineDemand(name: paths[index].configuration.name,
                           stages: StageLoad.between(previous[index], current[index], intervalNs: nowNs &- previousNs))
        }
        // Pushed back: the source found its ring full during the interval.
        let backlogged = paths.indices.map { current[$0][0].blockedTurns > previous[$0][0].blockedTurns }
        previous = current
        previousNs = nowNs
        let finished = Set(paths.indices.filter { paths[$0].pipeline.isDrained })
        // Every interval, paused or not: a live source drops what finds its pool empty.
        sizeLivePools(skipping: finished, arriving: demands.map { $0.stages[0].arrivalPerSecond > 0 })
        if pausedSteps > 0 {
            pausedSteps -= 1
            return
        }
        if settings.movesCores {
            guard moveCoreIfNeeded(demands: demands, backlogged: backlogged, fixed: finished, nowNs: nowNs) else { return }
        }
        if settings.resizesRings {
            stepsToRingSizing -= 1
            if stepsToRingSizing <= 0 {
                stepsToRingSizing = Self.ringSizingEverySteps
                guard resizeRingsIfNeeded(demands: demands, skipping: finished) else { return }
            }
        }
        let drained = finished.union(measured.keys)
        let allocation = Allocation(placement: placement, ringCapacities: paths.map(\.pipeline.ringCapacities),
                                    poolBufferCounts: paths.map(\.configuration.poolBufferCount))
        for move in allocator.rebalance(allocation, measured: demands, allowedWorkers: allowedWorkers, frozen: drained) {
            guard !dataplane.isStopping else { return }
            let stage = paths[move.pipeline].pipeline.stages[move.stage]
            let cores = dataplane.configuration.cores
            do {
                try dataplane.runtime.move(stage, toWorker: move.toWorker)
                placement[move.pipeline][move.stage] = move.toWorker
                dataplane.stageMoves.add(1, ordering: .relaxed)
                dataplane.logger.info("stage moved to even out load", metadata: [
                    "pipeline": "\(paths[move.pipeline].configuration.name)", "stage": "\(stage.name)",
                    "fromCore": "\(cores[move.fromWorker])", "toCore": "\(cores[move.toWorker])"])
            } catch {
                // A timed-out move still lands on the target (the runtime recorded it). Either way,
                // stop moving for a while rather than retry every interval.
                if case .moveTimedOut = error { placement[move.pipeline][move.stage] = move.toWorker }
                pausedSteps = Self.pauseAfterFailure
                dataplane.logger.warning("stage move failed; rebalancing pauses", metadata: [
                    "stage": "\(stage.name)", "toCore": "\(cores[move.toWorker])", "error": "\(error)",
                    "pausedIntervals": "\(Self.pauseAfterFailure)"])
                return
            }
        }
    }

    /// Sizes each running pipeline's rings to hold `bufferingNs` of its measured arrivals
    /// (`ResourceAllocator.plan`): a ring grows when that is `ringResizeFactor` times its capacity,
    /// as far as the pool can still fill every ring, burst and the source's cache
    /// (`PacketPathConfiguration.inFlightMax`), and shrinks back when it is that much smaller, never
    /// below the configured `ring_size`. Links with no arrivals in the interval keep their size, and
    /// the first ring of a live source (interface, AF_XDP) is never resized (its producer would be
    /// parked while the ring drains). Each resize may take `ringResizeTimeoutNs`. False when one failed
    /// (rebalancing then pauses).
    private mutating func resizeRingsIfNeeded(demands: [PipelineDemand], skipping: Set<Int>) -> Bool {
        let wanted = allocator.plan(demands).ringCapacities
        for (index, path) in dataplane.paths.enumerated() where !skipping.contains(index) {
            guard !dataplane.isStopping else { return false }
            let pipeline = path.pipeline
            let current = pipeline.ringCapacities
            let floor = path.configuration.ringCapacity
            var target = current
            for link in current.indices where demands[index].stages[link + 1].arrivalPerSecond > 0 {
                if link == 0, !path.isCaptureInput { continue }
                // Both ends on one worker: the ring holds at most a burst (or none, fused).
                if placement[index][link] == placement[index][link + 1] { continue }
                let want = max(wanted[index][link], floor)
                if want >= current[link] * Self.ringResizeFactor || want * Self.ringResizeFactor <= current[link] {
                    target[link] = want
                }
            }
            // Growth stops where the pool could no longer fill every ring, burst and the source's cache
            // at once: the pool as it may grow (`buffers_max`), to the power of two above that need.
            let burst = path.configuration.burstCount
            func poolFor(_ capacities: [Int]) -> Int {
                let needed = PacketPathConfiguration.inFlightMax(ringCapacities: capacities, burstCount: burst)
                return min(max(1 << (Int.bitWidth - needed.leadingZeroBitCount), path.poolBufferCount),
                           path.poolBufferCountMax)
            }
            while PacketPathConfiguration.inFlightMax(ringCapacities: target, burstCount: burst) >= poolFor(target),
                  let link = target.indices.filter({ target[$0] > current[$0] }).max(by: { target[$0] < target[$1] }) {
                target[link] /= 2
                if target[link] < current[link] * Self.ringResizeFactor { target[link] = current[link] }
            }
            // Only a ring that grows makes the pool grow, and only as far as the rings need.
            let pool = poolFor(target)
            if zip(target, current).contains(where: { $0 > $1 }), pool > path.poolBufferCount {
                let before = path.poolBufferCount
                do throws(PoolError) {
                    try path.growPool(to: pool)
                    dataplane.poolGrowths.add(1, ordering: .relaxed)
                    dataplane.logger.info("pool grown for larger rings", metadata: [
                        "pipeline": "\(path.configuration.name)", "from": "\(before)", "to": "\(pool)",
                        "max": "\(path.poolBufferCountMax)"])
                } catch {
                    dataplane.logger.warning("pool could not grow; its rings stay as they are", metadata: [
                        "pipeline": "\(path.configuration.name)", "to": "\(pool)", "error": "\(error)"])
                    continue
                }
            }
            // A capture's pool shrinks here only while its pipeline runs (its recycled buffers are what a
            // shrink waits for); a live input's shrinks only after quiet intervals (`sizeLivePools`).
            let active = path.isCaptureInput && demands[index].stages[0].arrivalPerSecond > 0 && !dataplane.isStopping
            guard target != current else {
                if active { shrinkPoolIfNeeded(path) }
                continue
            }
            let arrivals = demands[index].stages.dropFirst().map { Int($0.arrivalPerSecond) }
            var failure: RuntimeError?
            do throws(RuntimeError) {
                try dataplane.runtime.resizeRings(pipeline, capacities: target, timeoutNs: Self.ringResizeTimeoutNs)
            } catch {
                failure = error
            }
            let now = pipeline.ringCapacities  // a partial failure leaves the earlier rings resized
            dataplane.ringResizes.add(UInt64(zip(current, now).filter { $0 != $1 }.count), ordering: .relaxed)
            if let failure {
                pausedSteps = Self.pauseAfterFailure
                dataplane.logger.warning("ring resize failed; rebalancing pauses", metadata: [
                    "pipeline": "\(path.configuration.name)", "to": "\(target)", "now": "\(now)", "error": "\(failure)"])
                return false
            }
            dataplane.logger.info("rings resized to the measured arrivals", metadata: [
                "pipeline": "\(path.configuration.name)", "from": "\(current)", "to": "\(target)",
                "why": "arrivals \(arrivals) items/s per link; rings hold 1 ms of them (at least ring_size), 4x off triggers"])
            if active { shrinkPoolIfNeeded(path) }
        }
        return true
    }

    /// A live input (interface, AF_XDP) drops each frame that finds its pool empty (`pool-exhausted`),
    /// where a capture waits: so with `buffers_max` its pool is sized every interval (paused or not),
    /// whether or not `resize_rings` is on. Doubled (up to `buffers_max`) after an interval in which
    /// it ran empty; halved towards what its rings need (never below `buffers`) after
    /// `liveQuietNeeded` intervals with arrivals in a row in which it did not (an interval without
    /// arrivals starts the count again, so an idle pool keeps its size). Each time it runs empty again after a
    /// halving, the intervals needed double (up to 16x): a load that needs the larger pool now and
    /// then makes it halve ever more rarely. Frames dropped before a growth are counted, never lost silently.
    private mutating func sizeLivePools(skipping: Set<Int>, arriving: [Bool]) {
        for (index, path) in dataplane.paths.enumerated() where !path.isCaptureInput {
            let exhaustions = path.poolExhaustions
            let emptied = exhaustions &- liveExhaustions[index]
            liveExhaustions[index] = exhaustions
            guard !skipping.contains(index), !dataplane.isStopping,
                  path.poolBufferCountMax > path.configuration.poolBufferCount else { continue }
            guard emptied > 0 else {
                // An idle interval says nothing about the next burst: the count starts again.
                guard arriving[index] else {
                    liveQuietSteps[index] = 0
                    continue
                }
                liveQuietSteps[index] += 1
                if liveQuietSteps[index] >= liveQuietNeeded[index] {
                    liveQuietSteps[index] = 0
                    if shrinkPoolIfNeeded(path, halving: true, quietSteps: liveQuietNeeded[index]) { liveHalved[index] = true }
                }
                continue
            }
            liveQuietSteps[index] = 0
            if liveHalved[index] {
                liveHalved[index] = false
                liveQuietNeeded[index] = min(liveQuietNeeded[index] * 2, 16 * Self.livePoolQuietSteps)
            }
            let before = path.poolBufferCount
            guard before < path.poolBufferCountMax else { continue }
            let target = min(before * 2, path.poolBufferCountMax)
            do throws(PoolError) {
                try path.growPool(to: target)
                // Frames dropped while it grew belong to the emptiness just answered: not counted again.
                liveExhaustions[index] = path.poolExhaustions
                dataplane.poolGrowths.add(1, ordering: .relaxed)
                dataplane.logger.info("pool grown: its source found it empty", metadata: [
                    "pipeline": "\(path.configuration.name)", "from": "\(before)", "to": "\(target)",
                    "max": "\(path.poolBufferCountMax)", "emptyAllocations": "\(emptied)"])
            } catch {
                dataplane.logger.warning("pool could not grow", metadata: [
                    "pipeline": "\(path.configuration.name)", "to": "\(target)", "error": "\(error)"])
            }
        }
    }

    /// After its rings shrank (or while they are small), gives back a pool grown beyond what they now
    /// need: the power of two above `inFlightMax`, never below the configured `buffers` (`halving`: at
    /// most half the pool at a time). Only free buffers are retired (`PacketPath.shrinkPool`), so it
    /// may retire fewer than asked; the next sizing tries again. It waits up to `poolShrinkWaitNs` for
    /// buffers the pipeline recycles.
    @discardableResult
    private func shrinkPoolIfNeeded(_ path: PacketPath, halving: Bool = false, quietSteps: Int = 0) -> Bool {
        guard path.poolBufferCountMax > path.configuration.poolBufferCount else { return false }
        let needed = PacketPathConfiguration.inFlightMax(ringCapacities: path.pipeline.ringCapacities,
                                                         burstCount: path.configuration.burstCount)
        let before = path.poolBufferCount
        var pool = max(1 << (Int.bitWidth - needed.leadingZeroBitCount), path.configuration.poolBufferCount)
        if halving { pool = max(pool, before / 2) }
        guard before > pool else { return false }
        do throws(PoolError) {
            let retired = try path.shrinkPool(to: pool, waitNs: Self.poolShrinkWaitNs)
            guard retired > 0 else { return false }
            dataplane.poolShrinks.add(1, ordering: .relaxed)
            dataplane.logger.info(halving ? "pool halved: its source found it never empty" : "pool shrunk to the rings' need", metadata: [
                "pipeline": "\(path.configuration.name)", "from": "\(before)", "to": "\(path.poolBufferCount)",
                "retired": "\(retired)", "target": "\(pool)",
                "why": "\(halving ? "\(quietSteps) intervals with arrivals in a row without running empty" : "rings need \(needed)")"])
            return true
        } catch {
            dataplane.logger.warning("pool could not shrink", metadata: [
                "pipeline": "\(path.configuration.name)", "to": "\(pool)", "error": "\(error)"])
            return false
        }
    }

    /// Publishes each pipeline's cores and demand and, when the broker proposes a move and none was
    /// made lately, moves the giver's stages off the core (to its least loaded remaining one) and
    /// hands the core to the receiver. A pipeline placed by measured cost says how many cores it can
    /// use (`MeasuredPlacement.workersWanted`: more than it holds only when its planner would move to
    /// a shape on one more, fewer when some it holds are slack), and its own placement moves its
    /// stages when its cores change (`Dataplane.setMeasuredWorkers`). False when a stage move failed
    /// (rebalancing then pauses). `fixed`: pipelines whose cores stay (drained); pipelines with
    /// `stage_cores` stay too.
    private mutating func moveCoreIfNeeded(demands: [PipelineDemand], backlogged: [Bool], fixed: Set<Int>,
                                           nowNs: UInt64) -> Bool {
        let pipelines = dataplane.configuration.pipelines
        let cores = dataplane.configuration.cores
        let loads = demands.map { $0.stages.map(\.coreShare) }
        let measured = dataplane.measuredPipelines
        let views = demands.indices.map { index in
            var byWorker: [Int: Double] = [:]
            for (stage, worker) in placement[index].enumerated() { byWorker[worker, default: 0] += loads[index][stage] }
            // A measured pipeline: what its planner can use (nothing measured yet: what it holds,
            // so it neither asks nor counts as slack beyond its load); others: their stage count.
            let usable = measured.contains(index)
                ? dataplane.measuredWorkersWanted(index) ?? allowedWorkers[index].count
                : placement[index].count
            return PipelineCoreDemand(name: demands[index].name, weight: pipelines[index].weight,
                                      workers: allowedWorkers[index], demandCores: loads[index].reduce(0, +),
                                      backlogged: backlogged[index], loadByWorker: byWorker,
                                      movable: !fixed.contains(index) && pipelines[index].stageCores == nil
                                          && dataplane.measuredCanMove(index),
                                      usableWorkers: usable, measured: measured.contains(index))
        }
        func status() -> [Int: PipelineCoreStatus] {
            Dictionary(uniqueKeysWithValues: views.indices.map { index in
                (index, PipelineCoreStatus(cores: allowedWorkers[index].sorted().map { cores[$0] },
                                           weight: views[index].weight, demandCores: views[index].demandCores))
            })
        }
        if coreMoveCooldown > 0 { coreMoveCooldown -= 1 }
        guard coreMoveCooldown == 0, let move = broker.propose(views, workerCount: dataplane.runtime.workers.count) else {
            dataplane.publishCores(status(), move: nil)
            return true
        }
        // The giver's stages leave the core first: a measured giver's placement moves them; others go
        // each to its least loaded remaining worker.
        var remaining = allowedWorkers[move.from]
        remaining.remove(move.worker)
        var workerLoad = views[move.from].loadByWorker
        if measured.contains(move.from), !dataplane.setMeasuredWorkers(move.from, remaining, nowNs: nowNs) {
            guard !dataplane.isStopping else { return false }
            // Its stages stay where they landed: the cores it may use are those its placement holds.
            if let held = dataplane.measuredWorkers(move.from) { allowedWorkers[move.from] = Set(held) }
            pausedSteps = Self.pauseAfterFailure
            dataplane.logger.warning("stage move for a core move failed; the core stays; rebalancing pauses", metadata: [
                "pipeline": "\(views[move.from].name)", "core": "\(cores[move.worker])"])
            dataplane.publishCores(status(), move: nil)
            return false
        }
        if let now = dataplane.measuredPlacement(move.from) { placement[move.from] = now }
        for (index, worker) in placement[move.from].enumerated() where worker == move.worker && !measured.contains(move.from) {
            guard !dataplane.isStopping else { return false }
            let target = remaining.sorted().min { (workerLoad[$0] ?? 0) < (workerLoad[$1] ?? 0) }!
            let stage = dataplane.paths[move.from].pipeline.stages[index]
            do {
                try dataplane.runtime.move(stage, toWorker: target)
            } catch {
                if case .moveTimedOut = error { placement[move.from][index] = target }
                pausedSteps = Self.pauseAfterFailure
                dataplane.logger.warning("stage move for a core move failed; the core stays; rebalancing pauses", metadata: [
                    "stage": "\(stage.name)", "toCore": "\(cores[target])", "error": "\(error)"])
                dataplane.publishCores(status(), move: nil)
                return false
            }
            placement[move.from][index] = target
            workerLoad[target, default: 0] += loads[move.from][index]
            dataplane.stageMoves.add(1, ordering: .relaxed)
        }
        allowedWorkers[move.from] = remaining
        allowedWorkers[move.to].insert(move.worker)
        coreMoveCooldown = Self.coreMoveCooldownSteps
        let record = CoreMoveRecord(atNs: nowNs &- dataplane.startedAtNs, core: cores[move.worker],
                                    from: views[move.from].name, to: views[move.to].name, reason: move.reason,
                                    detail: move.detail)
        dataplane.publishCores(status(), move: record)
        dataplane.logger.info("core moved between pipelines", metadata: [
            "core": "\(record.core)", "from": "\(record.from)", "to": "\(record.to)",
            "reason": "\(move.reason.rawValue)", "why": "\(move.detail)"])
        // A measured receiver decides now whether its stages spread onto the core.
        guard measured.contains(move.to) else { return true }
        let spread = dataplane.setMeasuredWorkers(move.to, allowedWorkers[move.to], nowNs: nowNs)
        if let now = dataplane.measuredPlacement(move.to) { placement[move.to] = now }
        guard spread else {
            guard !dataplane.isStopping else { return false }
            pausedSteps = Self.pauseAfterFailure
            dataplane.logger.warning("stage move onto a moved core failed; rebalancing pauses", metadata: [
                "pipeline": "\(views[move.to].name)", "core": "\(cores[move.worker])"])
            return false
        }
        return true
    }
}

extension Thread {
    /// Starts a named thread running `body` (blocking control work kept off the async pool).
    static func detach(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.start()
    }
}
