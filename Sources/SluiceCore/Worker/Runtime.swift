// Path: Sources/SluiceCore/Worker/Runtime.swift — starts workers on cores and places stages on them.
import CShims
import Glibc
import SystemPackage

/// Why the runtime refused a configuration or an operation.
public enum RuntimeError: Error, Equatable {
    case noCores
    /// The core does not exist or this process may not run on it (affinity mask, cgroup).
    case coreUnavailable(Int)
    case duplicateCore(Int)
    /// More workers than CPUs this process may use.
    case tooManyWorkers(requested: Int, available: Int)
    case threadCreateFailed(SyscallError)
    case pinFailed(core: Int, SyscallError)
    /// A placement names a worker that does not exist, or has the wrong number of entries.
    case invalidPlacement(String)
    case tooManyStages(worker: Int, max: Int)
    /// A stage did not arrive on its new worker in time (that worker is stuck or stopped).
    case moveTimedOut(stage: String, toWorker: Int)
    case notRunning
}

/// Runtime settings: which cores get a worker and how idle workers wait.
public struct RuntimeConfiguration: Sendable {
    /// One worker per listed core, in order (worker i runs on cores[i]).
    public var cores: [Int]
    public var waitMode: WaitMode
    public var predictor: IdlePredictor.Configuration

    public init(cores: [Int], waitMode: WaitMode = .adaptive,
                predictor: IdlePredictor.Configuration = IdlePredictor.Configuration()) {
        self.cores = cores
        self.waitMode = waitMode
        self.predictor = predictor
    }
}

/// Owns the workers: starts them pinned, places pipeline stages on them, moves stages between them
/// at runtime, and stops them. Control-plane object: its methods may block briefly and allocate.
public final class Runtime: @unchecked Sendable {  // unchecked: control calls come from one thread
    public let workers: [Worker]
    private var pipelines: [Pipeline] = []
    private var running = false

    /// Validates the core list against this process's CPUs and makes (but does not start) workers.
    public init(configuration: RuntimeConfiguration) throws(RuntimeError) {
        let cores = configuration.cores
        guard !cores.isEmpty else { throw .noCores }
        guard cores.count <= Limits.workerCountMax else {
            throw .tooManyWorkers(requested: cores.count, available: Limits.workerCountMax)
        }
        let allowed: Int
        do { allowed = try CPU.allowedCount() } catch { throw .pinFailed(core: -1, error) }
        guard cores.count <= allowed else { throw .tooManyWorkers(requested: cores.count, available: allowed) }
        var seen = Set<Int>()
        for core in cores {
            guard seen.insert(core).inserted else { throw .duplicateCore(core) }
            let isAllowed: Bool
            do { isAllowed = try CPU.isAllowed(core) } catch { throw .pinFailed(core: core, error) }
            guard isAllowed else { throw .coreUnavailable(core) }
        }
        workers = cores.enumerated().map { index, core in
            Worker(index: index, cpu: core, waitMode: configuration.waitMode, predictor: configuration.predictor)
        }
    }

    deinit { stop() }

    /// Starts every worker thread and waits until each is pinned. On failure, stops those started.
    public func start() throws(RuntimeError) {
        precondition(!running, "runtime started twice")
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
                stopStarted()
                throw .threadCreateFailed(SyscallError("pthread_create", Errno(rawValue: rc)))
            }
            worker.thread = thread
        }
        for worker in workers {
            while worker.state.load(ordering: .acquiring) == 0 { usleep(100) }
            if worker.state.load(ordering: .acquiring) == 2 {
                let errno = Errno(rawValue: worker.pinErrno.load(ordering: .relaxed))
                stopStarted()
                throw .pinFailed(core: worker.cpu, SyscallError("pthread_setaffinity_np", errno))
            }
        }
        running = true
    }

    /// Places each stage of `pipeline` on a worker: `placement[i]` is the worker index for stage i.
    public func launch(_ pipeline: Pipeline, placement: [Int]) throws(RuntimeError) {
        guard running else { throw .notRunning }
        guard placement.count == pipeline.stages.count else {
            throw .invalidPlacement("\(placement.count) entries for \(pipeline.stages.count) stages")
        }
        var perWorker = [Int](repeating: 0, count: workers.count)
        for case let (stage, worker) in zip(pipeline.stages, placement) {
            guard worker >= 0, worker < workers.count else {
                throw .invalidPlacement("stage \(stage.name) on worker \(worker) of \(workers.count)")
            }
            perWorker[worker] += 1
        }
        for (worker, added) in perWorker.enumerated() where added + stageCount(on: worker) > Limits.stagesPerWorkerMax {
            throw .tooManyStages(worker: worker, max: Limits.stagesPerWorkerMax)
        }
        pipelines.append(pipeline)
        // Downstream first: each consumer is in place (its waiter published) before items flow.
        for (stage, worker) in zip(pipeline.stages, placement).reversed() { workers[worker].post(.add(stage)) }
    }

    /// Moves a running stage to another worker between bursts. Items are neither lost nor reordered:
    /// the stage (with its ring ends) runs on exactly one worker at any time. Blocks until the stage
    /// runs on `target` or `timeoutNs` passes.
    public func move(_ stage: StageTask, toWorker target: Int, timeoutNs: UInt64 = 2_000_000_000) throws(RuntimeError) {
        guard running else { throw .notRunning }
        guard target >= 0, target < workers.count else { throw .invalidPlacement("no worker \(target)") }
        let deadline = Clock.monotonicNs() &+ timeoutNs
        var source = stage.owner.load(ordering: .acquiring)
        while source == -1 {  // still arriving from a previous move or launch
            guard Clock.monotonicNs() < deadline else { throw .moveTimedOut(stage: stage.name, toWorker: target) }
            usleep(50)
            source = stage.owner.load(ordering: .acquiring)
        }
        if source == target { return }
        guard stageCount(on: target) < Limits.stagesPerWorkerMax else {
            throw .tooManyStages(worker: target, max: Limits.stagesPerWorkerMax)
        }
        workers[source].post(.remove(stage, then: workers[target]))
        while stage.owner.load(ordering: .acquiring) != target {
            guard Clock.monotonicNs() < deadline else { throw .moveTimedOut(stage: stage.name, toWorker: target) }
            usleep(50)
        }
    }

    /// Sets every worker's wait mode; workers pick it up on their next idle turn.
    public func setWaitMode(_ mode: WaitMode) {
        for worker in workers { worker.waitMode = mode }
    }

    /// Waits until every launched pipeline whose source is exhausted has delivered or filtered all
    /// it took in. Returns false on timeout.
    public func drain(timeoutNs: UInt64) -> Bool {
        let deadline = Clock.monotonicNs() &+ timeoutNs
        while !pipelines.allSatisfy(\.isDrained) {
            if Clock.monotonicNs() >= deadline { return false }
            usleep(200)
        }
        return true
    }

    /// Stops every worker and joins its thread. Items still on rings stay there (drain first).
    public func stop() {
        guard running else { return }
        stopStarted()
        running = false
    }

    private func stopStarted() {
        for worker in workers where worker.thread != nil { worker.requestStop() }
        for worker in workers {
            guard let thread = worker.thread else { continue }
            pthread_join(thread, nil)
            worker.thread = nil
        }
    }

    /// Stages on `worker`, counted from the stages' owners (a control-thread view).
    private func stageCount(on worker: Int) -> Int {
        pipelines.reduce(0) { count, pipeline in
            count + pipeline.stages.filter { $0.owner.load(ordering: .relaxed) == worker }.count
        }
    }
}

extension Runtime {
    /// Applies a rebalance: moves each stage in `moves` (indices into `pipelines`), in order.
    public func apply(_ moves: [StageMove], to pipelines: [Pipeline]) throws(RuntimeError) {
        for move in moves {
            guard pipelines.indices.contains(move.pipeline),
                  pipelines[move.pipeline].stages.indices.contains(move.stage)
            else { throw .invalidPlacement("move names pipeline \(move.pipeline) stage \(move.stage)") }
            try self.move(pipelines[move.pipeline].stages[move.stage], toWorker: move.toWorker)
        }
    }
}
