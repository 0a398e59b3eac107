// Path: Sources/SluiceCore/Worker/Runtime.swift — starts workers on cores and places stages on them.
import CShims
import Glibc
import Synchronization
import SystemPackage

/// Why the runtime refused a configuration or an operation.
public enum RuntimeError: Error, Equatable {
    case noCores
    /// The core does not exist or this process may not run on it (affinity mask, cgroup).
    case coreUnavailable(Int)
    case duplicateCore(Int)
    /// More workers than CPUs this process may use.
    case tooManyWorkers(requested: Int, available: Int)
    /// The process's own CPU affinity could not be read.
    case affinityUnavailable(SyscallError)
    case threadCreateFailed(SyscallError)
    case pinFailed(core: Int, SyscallError)
    /// A worker did not report in after its thread started.
    case workerDidNotStart(core: Int)
    /// A placement has `given` entries for a pipeline of `stages` stages (one worker index per stage).
    case placementCount(given: Int, stages: Int)
    /// A placement or move puts `stage` (nil: any stage of a move) on `worker`, which does not exist:
    /// the runtime has `workerCount` workers.
    case noSuchWorker(stage: String?, worker: Int, workerCount: Int)
    /// A rebalance move names pipeline `pipeline` stage `stage`, and the list given has no such stage.
    case noSuchStage(pipeline: Int, stage: Int)
    case tooManyStages(worker: Int, max: Int)
    /// The pipeline was launched before (a pipeline runs once), or the stage is not in this runtime.
    case alreadyLaunched(pipeline: String)
    /// The stage named `name` at `position` was never launched on this runtime.
    case unknownStage(name: String, position: Int)
    /// A stage did not arrive on its new worker in time (that worker is stuck or stopped).
    case moveTimedOut(stage: String, toWorker: Int)
    case notRunning
    /// A runtime starts once; make a new one to start again.
    case alreadyStarted
}

/// Runtime settings: which cores get a worker and how idle workers wait.
public struct RuntimeConfiguration: Sendable {
    /// One worker per listed core, in order (worker i runs on cores[i]).
    public var cores: [Int]
    public var waitMode: WaitMode
    public var predictor: IdlePredictor.Configuration
    /// A worker that runs every stage of a pipeline runs each burst through all of them in one call
    /// chain, without the rings between them, whenever those rings are empty (`Pipeline.fusedBursts`).
    /// Off: every stage takes its burst from its ring, as when the stages are spread (tests, benches).
    public var fusesRunToCompletion: Bool

    public init(cores: [Int], waitMode: WaitMode = .adaptive,
                predictor: IdlePredictor.Configuration = IdlePredictor.Configuration(),
                fusesRunToCompletion: Bool = true) {
        self.cores = cores
        self.waitMode = waitMode
        self.predictor = predictor
        self.fusesRunToCompletion = fusesRunToCompletion
    }
}

/// Owns the workers: starts them pinned, places pipeline stages on them, moves stages between them
/// at runtime, and stops them. Control plane: its methods may block briefly, allocate and take a
/// lock; any thread may call them, one operation at a time (they serialise on that lock).
public final class Runtime: @unchecked Sendable {  // unchecked: control state is behind `control`
    public let workers: [Worker]

    /// What the control plane knows: launched pipelines and where each stage was last sent.
    private struct ControlState {
        var phase = Phase.created
        var pipelines: [Pipeline] = []
        var placement: [ObjectIdentifier: Int] = [:]
        var stagesPerWorker: [Int]
    }

    private enum Phase { case created, running, stopped }

    private let control: Mutex<ControlState>

    /// Validates the core list against this process's CPUs and makes (but does not start) workers.
    public init(configuration: RuntimeConfiguration) throws(RuntimeError) {
        let cores = configuration.cores
        guard !cores.isEmpty else { throw .noCores }
        guard cores.count <= Limits.workerCountMax else {
            throw .tooManyWorkers(requested: cores.count, available: Limits.workerCountMax)
        }
        let allowed: Int
        do { allowed = try CPU.allowedCount() } catch { throw .affinityUnavailable(error) }
        guard cores.count <= allowed else { throw .tooManyWorkers(requested: cores.count, available: allowed) }
        var seen = Set<Int>()
        for core in cores {
            guard seen.insert(core).inserted else { throw .duplicateCore(core) }
            let isAllowed: Bool
            do { isAllowed = try CPU.isAllowed(core) } catch { throw .affinityUnavailable(error) }
            guard isAllowed else { throw .coreUnavailable(core) }
        }
        workers = cores.enumerated().map { index, core in
            Worker(index: index, cpu: core, waitMode: configuration.waitMode, predictor: configuration.predictor,
                   fuses: configuration.fusesRunToCompletion)
        }
        control = Mutex(ControlState(stagesPerWorker: Array(repeating: 0, count: cores.count)))
    }

    deinit { stop() }

    /// Starts every worker thread and waits (at most 10 s) until each is pinned. On failure, stops
    /// those started. A runtime starts once.
    public func start() throws(RuntimeError) {
        try control.withLock { state throws(RuntimeError) in
            guard state.phase == .created else { throw .alreadyStarted }
            state.phase = .stopped  // until every worker runs: a failure leaves it stopped
            for worker in workers {
                let context = Unmanaged.passRetained(worker).toOpaque()
                var thread = pthread_t()
                let rc = pthread_create(&thread, nil, { context in
                    let worker = Unmanaged<Worker>.fromOpaque(context!).takeRetainedValue()
                    worker.threadMain()
                    return nil
                }, context)
                guard rc == 0 else {
                    Unmanaged<Worker>.fromOpaque(context).release()
                    joinWorkers()
                    throw .threadCreateFailed(SyscallError("pthread_create", Errno(rawValue: rc)))
                }
                worker.thread = thread
            }
            for worker in workers {
                let deadline = Clock.monotonicNs() &+ 10_000_000_000
                while worker.state.load(ordering: .acquiring) == Worker.ThreadState.starting.rawValue {
                    guard Clock.monotonicNs() < deadline else {
                        joinWorkers()
                        throw .workerDidNotStart(core: worker.cpu)
                    }
                    usleep(100)
                }
                if worker.state.load(ordering: .acquiring) == Worker.ThreadState.pinFailed.rawValue {
                    let errno = Errno(rawValue: worker.pinErrno.load(ordering: .relaxed))
                    joinWorkers()
                    throw .pinFailed(core: worker.cpu, SyscallError("pthread_setaffinity_np", errno))
                }
            }
            state.phase = .running
        }
    }

    /// Places each stage of `pipeline` on a worker: `placement[i]` is the worker index for stage i.
    /// Downstream stages are posted first, and the call returns once every stage runs.
    public func launch(_ pipeline: Pipeline, placement: [Int]) throws(RuntimeError) {
        try control.withLock { state throws(RuntimeError) in
            guard state.phase == .running else { throw .notRunning }
            guard placement.count == pipeline.stages.count else {
                throw .placementCount(given: placement.count, stages: pipeline.stages.count)
            }
            var counts = state.stagesPerWorker
            for case let (stage, worker) in zip(pipeline.stages, placement) {
                guard worker >= 0, worker < workers.count else {
                    throw .noSuchWorker(stage: stage.name, worker: worker, workerCount: workers.count)
                }
                counts[worker] += 1
                guard counts[worker] <= Limits.stagesPerWorkerMax else {
                    throw .tooManyStages(worker: worker, max: Limits.stagesPerWorkerMax)
                }
            }
            guard pipeline.launched.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
            else { throw .alreadyLaunched(pipeline: pipeline.name) }
            state.stagesPerWorker = counts
            state.pipelines.append(pipeline)
            for case let (stage, worker) in zip(pipeline.stages, placement) {
                state.placement[ObjectIdentifier(stage)] = worker
            }
            // Downstream first: each consumer's waiter is in place before its producer runs.
            for (stage, worker) in zip(pipeline.stages, placement).reversed() { workers[worker].post(.add(stage)) }
        }
        for stage in pipeline.stages { _ = waitForArrival(stage, deadlineNs: Clock.monotonicNs() &+ 10_000_000_000) }
    }

    /// Moves a running stage to another worker between bursts. Items are neither lost nor reordered:
    /// the stage (with its ring ends) runs on exactly one worker at any time. Blocks until the stage
    /// runs on `target` or `timeoutNs` passes.
    public func move(_ stage: StageTask, toWorker target: Int, timeoutNs: UInt64 = 2_000_000_000) throws(RuntimeError) {
        try control.withLock { state throws(RuntimeError) in
            guard state.phase == .running else { throw .notRunning }
            guard target >= 0, target < workers.count else {
                throw .noSuchWorker(stage: stage.name, worker: target, workerCount: workers.count)
            }
            guard let source = state.placement[ObjectIdentifier(stage)] else {
                throw .unknownStage(name: stage.name, position: stage.position)
            }
            let deadline = Clock.monotonicNs() &+ timeoutNs
            // A previous move or the launch may still be under way: let it land first.
            guard waitForArrival(stage, deadlineNs: deadline) else {
                throw .moveTimedOut(stage: stage.name, toWorker: target)
            }
            if source == target { return }
            guard state.stagesPerWorker[target] < Limits.stagesPerWorkerMax else {
                throw .tooManyStages(worker: target, max: Limits.stagesPerWorkerMax)
            }
            state.placement[ObjectIdentifier(stage)] = target
            state.stagesPerWorker[source] -= 1
            state.stagesPerWorker[target] += 1
            workers[source].post(.remove(stage, then: workers[target]))
            while stage.owner.load(ordering: .acquiring) != target {
                guard Clock.monotonicNs() < deadline else { throw .moveTimedOut(stage: stage.name, toWorker: target) }
                usleep(50)
            }
        }
    }

    /// Waits until `stage` runs on some worker. False at the deadline.
    private func waitForArrival(_ stage: StageTask, deadlineNs: UInt64) -> Bool {
        while stage.owner.load(ordering: .acquiring) == -1 {
            if Clock.monotonicNs() >= deadlineNs { return false }
            usleep(50)
        }
        return true
    }

    /// Sets every worker's wait mode; workers pick it up on their next idle turn.
    public func setWaitMode(_ mode: WaitMode) {
        for worker in workers { worker.waitMode = mode }
    }

    /// Wakes every sleeping worker for one turn (after a change it cannot see by itself, such as a
    /// stopped source whose worker sleeps on a long pacing hint). Any thread.
    public func wakeAll() {
        for worker in workers { sluice_waiter_notify(worker.waiter) }
    }

    /// Waits until every launched pipeline is drained: its source exhausted and everything that
    /// entered delivered or filtered. Returns false on timeout (a live source never drains).
    public func drain(timeoutNs: UInt64) -> Bool {
        let pipelines = control.withLock { $0.pipelines }
        let deadline = Clock.monotonicNs() &+ timeoutNs
        while !pipelines.allSatisfy(\.isDrained) {
            if Clock.monotonicNs() >= deadline { return false }
            usleep(200)
        }
        return true
    }

    /// Stops every worker and joins its thread. Items still on rings stay there (drain first).
    /// Safe to call more than once.
    public func stop() {
        control.withLock { state in
            guard state.phase == .running else { return }
            state.phase = .stopped
            joinWorkers()
        }
    }

    private func joinWorkers() {
        for worker in workers where worker.thread != nil { worker.requestStop() }
        for worker in workers {
            guard let thread = worker.thread else { continue }
            pthread_join(thread, nil)
            worker.thread = nil
        }
    }
}

extension Runtime {
    /// Applies a rebalance: moves each stage in `moves` (indices into `pipelines`), in order.
    public func apply(_ moves: [StageMove], to pipelines: [Pipeline]) throws(RuntimeError) {
        for move in moves {
            guard pipelines.indices.contains(move.pipeline),
                  pipelines[move.pipeline].stages.indices.contains(move.stage)
            else { throw .noSuchStage(pipeline: move.pipeline, stage: move.stage) }
            try self.move(pipelines[move.pipeline].stages[move.stage], toWorker: move.toWorker)
        }
    }
}
