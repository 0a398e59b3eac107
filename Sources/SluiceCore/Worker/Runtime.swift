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
    /// A ring resize names link `link` of a pipeline with `links` rings (link i joins stage i to i+1).
    case noSuchLink(pipeline: String, link: Int, links: Int)
    /// A ring capacity that is not a power of two in 2...`max`.
    case invalidRingCapacity(Int, max: Int)
    /// `resizeRings` got `given` capacities for a pipeline with `links` rings.
    case ringCapacityCount(given: Int, links: Int)
    /// The pipeline was never launched on this runtime.
    case notLaunched(pipeline: String)
    /// The new ring could not be made (memory, NUMA node). Nothing changed.
    case ringAllocationFailed(RingError)
    /// A ring resize did not finish in time: a stage did not leave its worker, or the old ring's
    /// consumer did not empty it. Nothing changed: every parked stage was sent back to its worker.
    case resizeTimedOut(pipeline: String, link: Int)
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

    /// Replaces ring `link` (stage `link` to stage `link + 1`) of a launched, running pipeline with a
    /// new ring of `capacity` items (a power of two, 2...`Limits.ringCapacityMax`, on the pipeline's
    /// NUMA node) while items flow: every item is delivered once and in order. Control plane: blocks
    /// (at most about `timeoutNs` per phase) and holds the control lock, so no move or other resize runs
    /// meanwhile. Items keep flowing upstream of the producer and downstream of the consumer throughout;
    /// the producer stands still from the start, the consumer and everything after it only for the swap.
    ///
    /// Protocol, and why nothing is lost, duplicated or reordered:
    /// 1. Validate and allocate first: any failure before step 2 changes nothing.
    /// 2. Park the producer (mailbox remove, no target; owner -1, loaded with acquire after the worker's
    ///    release). Stages move only between turns, so from here nothing is enqueued on the old ring.
    /// 3. Wait until the old ring is empty: its consumer keeps running and takes every item, in order.
    ///    With no producer the ring cannot refill, so empty stays empty. On timeout the producer goes
    ///    back to its worker (`.resizeTimedOut`): the old ring and its items are untouched.
    /// 4. Park the consumer and every stage after it: the only stages holding the old ring's raw
    ///    pointer (`upstreamRings`, `inputRing`); stages before the producer never look at it.
    /// 5. Swap, with every stage that touches the ring parked: the producer's output end, the consumer's
    ///    input end, the parked stages' raw pointers, the Link's observer (under its lock, for metrics
    ///    readers) and `ringCapacities`. The old ring was empty, so the new one starts with exactly the
    ///    items not yet sent: none. The old ring's memory lives while any observer copy holds it.
    /// 6. Send the parked stages back to their workers, downstream first as `launch` does (each
    ///    consumer's waiter is in place before its producer runs); the mailbox lock and the worker's
    ///    acquire of `hasMail` publish the swapped fields to the worker that adopts each stage.
    /// A fused pipeline (all stages on one worker) runs staged while any of its stages is parked (its
    /// worker recomputes fused spans with the mail) and fuses again once all are back.
    /// Throws `.moveTimedOut` if the swap is done but a stage has not reached its worker by the deadline
    /// (that worker is stuck or stopped; the stage is posted and lands there).
    public func resizeRing(_ pipeline: Pipeline, link: Int, capacity: Int,
                           timeoutNs: UInt64 = 2_000_000_000) throws(RuntimeError) {
        try control.withLock { state throws(RuntimeError) in
            guard state.phase == .running else { throw .notRunning }
            guard state.pipelines.contains(where: { $0 === pipeline }) else {
                throw .notLaunched(pipeline: pipeline.name)
            }
            let links = pipeline.links.count
            guard link >= 0, link < links else { throw .noSuchLink(pipeline: pipeline.name, link: link, links: links) }
            try Self.checkRingCapacity(capacity)
            let ends: RingEnds
            do throws(RingError) { ends = try makeRing(capacity: capacity, numaNode: pipeline.numaNode) } catch {
                throw .ringAllocationFailed(error)
            }
            let producer = pipeline.stages[link]
            let downstream = Array(pipeline.stages[(link + 1)...])  // the consumer first
            var home: [ObjectIdentifier: Int] = [:]
            for stage in pipeline.stages[link...] {
                guard let worker = state.placement[ObjectIdentifier(stage)] else {
                    preconditionFailure("a launched pipeline's stage has no placement")
                }
                home[ObjectIdentifier(stage)] = worker
            }
            let timedOut = RuntimeError.resizeTimedOut(pipeline: pipeline.name, link: link)
            let deadline = Clock.monotonicNs() &+ timeoutNs
            // A move or the launch may still be under way: every stage involved must run where the
            // control state put it, so each remove below goes to the worker that runs the stage.
            for stage in pipeline.stages[link...] {
                guard waitForOwner(stage, home[ObjectIdentifier(stage)]!, deadlineNs: deadline) else { throw timedOut }
            }

            // 2. Park the producer.
            guard park([producer], home: home, deadlineNs: deadline) else {
                sendBack([producer], home: home, timeoutNs: timeoutNs)
                throw timedOut
            }
            // 3. The consumer drains the old ring; nothing refills it.
            let old = pipeline.links[link].observer
            while !old.isEmpty {
                guard Clock.monotonicNs() < deadline else {
                    sendBack([producer], home: home, timeoutNs: timeoutNs)
                    throw timedOut
                }
                usleep(20)
            }
            // 4. Park the consumer and every stage after it.
            guard park(downstream, home: home, deadlineNs: deadline) else {
                sendBack(downstream + [producer], home: home, timeoutNs: timeoutNs)
                throw timedOut
            }
            precondition(old.isEmpty, "a ring refilled with its producer parked")

            // 5. Swap, every stage touching the old ring parked.
            let newObserver = ends.producer.observer
            producer.replaceOutput(ends.producer)
            downstream[0].replaceInput(ends.consumer)
            for stage in downstream { stage.replaceUpstreamRing(old.ring, with: newObserver.ring) }
            pipeline.links[link].replaceObserver(newObserver)
            pipeline.ringCapacities[link] = capacity
            withExtendedLifetime(old) {}  // the old ring's memory outlives every pointer compared above

            // 6. Back to their workers, downstream first.
            for stage in ([producer] + downstream).reversed() {
                workers[home[ObjectIdentifier(stage)]!].post(.add(stage))
            }
            let arrival = Clock.monotonicNs() &+ timeoutNs
            for stage in [producer] + downstream where !waitForArrival(stage, deadlineNs: arrival) {
                throw .moveTimedOut(stage: stage.name, toWorker: home[ObjectIdentifier(stage)]!)
            }
        }
    }

    /// Resizes each ring of `pipeline` whose capacity differs from `capacities[link]`, in link order
    /// (`resizeRing`). Every capacity is checked before any ring changes; a later failure leaves the
    /// earlier rings resized (`ringCapacities` says which).
    public func resizeRings(_ pipeline: Pipeline, capacities: [Int],
                            timeoutNs: UInt64 = 2_000_000_000) throws(RuntimeError) {
        let current = pipeline.ringCapacities
        guard capacities.count == current.count else {
            throw .ringCapacityCount(given: capacities.count, links: current.count)
        }
        for capacity in capacities { try Self.checkRingCapacity(capacity) }
        for (link, capacity) in capacities.enumerated() where capacity != current[link] {
            try resizeRing(pipeline, link: link, capacity: capacity, timeoutNs: timeoutNs)
        }
    }

    private static func checkRingCapacity(_ capacity: Int) throws(RuntimeError) {
        guard capacity >= 2, capacity <= Limits.ringCapacityMax, capacity.nonzeroBitCount == 1 else {
            throw .invalidRingCapacity(capacity, max: Limits.ringCapacityMax)
        }
    }

    /// Posts each of `stages` back to its `home` worker, downstream first, and waits (up to
    /// `timeoutNs`) for them to land. A stage whose remove is still queued is removed, then re-added.
    private func sendBack(_ stages: [StageTask], home: [ObjectIdentifier: Int], timeoutNs: UInt64) {
        let ordered = stages.sorted { $0.position > $1.position }
        for stage in ordered { workers[home[ObjectIdentifier(stage)]!].post(.add(stage)) }
        let deadline = Clock.monotonicNs() &+ timeoutNs
        for stage in ordered { _ = waitForArrival(stage, deadlineNs: deadline) }
    }

    /// Posts a remove without target for each of `stages` to its `home` worker and waits until each
    /// worker has applied it (its ticket, acquire: pairs with the worker's release, so the stage's state
    /// is this thread's to read and change until it is posted again). False at the deadline: a remove
    /// may then still be queued, and `sendBack` (FIFO mailboxes) undoes it after it is applied.
    private func park(_ stages: [StageTask], home: [ObjectIdentifier: Int], deadlineNs: UInt64) -> Bool {
        let tickets = stages.map { stage in
            (stage, workers[home[ObjectIdentifier(stage)]!].post(.remove(stage, then: nil)))
        }
        for (stage, ticket) in tickets {
            let worker = workers[home[ObjectIdentifier(stage)]!]
            while worker.mailHandled.load(ordering: .acquiring) < ticket {
                if Clock.monotonicNs() >= deadlineNs { return false }
                usleep(20)
            }
            precondition(stage.owner.load(ordering: .acquiring) == -1, "a parked stage still has an owner")
        }
        return true
    }

    /// Waits until `stage` runs on worker `index`. False at the deadline.
    private func waitForOwner(_ stage: StageTask, _ index: Int, deadlineNs: UInt64) -> Bool {
        while stage.owner.load(ordering: .acquiring) != index {
            if Clock.monotonicNs() >= deadlineNs { return false }
            usleep(50)
        }
        return true
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
        // Checked every 200 us at first, backing off to 800 us: on cores all busy-polling, each wake-up
        // of this thread takes a worker's core for a context switch.
        var pauseUs: UInt32 = 200
        while !pipelines.allSatisfy(\.isDrained) {
            if Clock.monotonicNs() >= deadline { return false }
            usleep(pauseUs)
            pauseUs = min(pauseUs * 2, 800)
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
