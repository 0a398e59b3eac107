// Path: Sources/SluiceCore/Worker/Worker.swift — one pinned thread running stages in a poll loop.
import CShims
import Glibc
import Synchronization

/// One worker (a DPDK lcore): a thread pinned to one CPU that runs its stages in turn, one burst
/// each per turn, and waits according to its `WaitMode` when a turn finds nothing. Stages arrive and
/// leave only through its mailbox, handled between turns, so a stage never runs on two workers.
public final class Worker: @unchecked Sendable {  // unchecked: `stages` is touched by its thread only
    enum Request {
        case add(StageTask)
        case remove(StageTask, then: Worker?)
    }

    public let index: Int
    /// The CPU the worker is pinned to.
    public let cpu: Int
    public let counters = WorkerCounters()
    /// Current wait mode; any thread may change it, the worker reads it every idle turn.
    public let waitModeRaw: Atomic<UInt8>
    let waiter: OpaquePointer
    let stopRequested = Atomic<Bool>(false)
    let hasMail = Atomic<Bool>(false)
    /// Queued requests, and how many were ever posted (the last one's ticket).
    let mailbox = Mutex<(requests: [Request], posted: UInt64)>(([], 0))
    /// Requests applied so far, in posting order: request `ticket` (from `post`) has been applied once
    /// this is at least `ticket`. Stored with release after each request, by the worker thread only.
    let mailHandled = Atomic<UInt64>(0)
    private var handledCount: UInt64 = 0
    /// Where the worker thread is in its life (a `ThreadState` raw value).
    let state = Atomic<Int>(ThreadState.starting.rawValue)

    enum ThreadState: Int {
        case starting, running, pinFailed, stopped
    }
    let pinErrno = Atomic<Int32>(0)
    let predictorConfiguration: IdlePredictor.Configuration
    private var wakeMarginNs: UInt64 { predictorConfiguration.wakeMarginNs }
    /// Stages this worker runs, in (pipeline, position) order. Worker thread only once started.
    private let stages: UnsafeMutableBufferPointer<Unmanaged<StageTask>>
    private var stageCount = 0
    /// fusedSpan[slot] = n > 0: the slot holds a pipeline's source and the next n slots the rest of
    /// that pipeline, in order, so the worker may run it fused (`runFused`). Recomputed with the mail.
    private let fusedSpan: UnsafeMutableBufferPointer<Int>
    private let fuses: Bool
    var thread: pthread_t?

    init(index: Int, cpu: Int, waitMode: WaitMode, predictor: IdlePredictor.Configuration, fuses: Bool = true) {
        guard let waiter = sluice_waiter_new() else { fatalError("out of memory for a 64-byte waiter") }
        self.index = index
        self.cpu = cpu
        self.waitModeRaw = Atomic(waitMode.rawValue)
        self.waiter = waiter
        self.predictorConfiguration = predictor
        self.stages = .allocate(capacity: Limits.stagesPerWorkerMax)
        self.fusedSpan = .allocate(capacity: Limits.stagesPerWorkerMax)
        self.fusedSpan.initialize(repeating: 0)
        self.fuses = fuses
    }

    deinit {
        for slot in 0..<stageCount { stages[slot].release() }
        stages.deallocate()
        fusedSpan.deallocate()
        sluice_waiter_delete(waiter)
    }

    /// The wait mode used from the next idle turn on.
    public var waitMode: WaitMode {
        get { WaitMode(rawValue: waitModeRaw.load(ordering: .relaxed)) ?? .busyPoll }
        set {
            waitModeRaw.store(newValue.rawValue, ordering: .relaxed)
            sluice_waiter_notify(waiter)  // a sleeper picks the new mode up now
        }
    }

    /// Queues a control request and wakes the worker. Returns its ticket (see `mailHandled`).
    /// Control threads (and a worker handing a stage on); takes a lock.
    @discardableResult
    func post(_ request: Request) -> UInt64 {
        let ticket = mailbox.withLock { box in
            precondition(box.requests.count < Limits.workerMailboxCountMax, "worker mailbox over its bound")
            box.requests.append(request)
            box.posted += 1
            return box.posted
        }
        hasMail.store(true, ordering: .releasing)
        sluice_waiter_notify(waiter)
        return ticket
    }

    /// Asks the worker to leave its loop; `Runtime.stop` joins the thread.
    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        sluice_waiter_notify(waiter)
    }

    // MARK: - The worker thread

    /// Thread entry: pin, then loop until stopped.
    func threadMain() {
        let rc = sluice_thread_pin_self(Int32(cpu))
        guard rc == 0 else {
            pinErrno.store(-rc, ordering: .relaxed)
            state.store(ThreadState.pinFailed.rawValue, ordering: .releasing)
            return
        }
        _ = sluice_thread_set_name("sluice-w\(index)")
        _ = sluice_thread_set_timer_slack_ns(1)
        state.store(ThreadState.running.rawValue, ordering: .releasing)
        runLoop()
        state.store(ThreadState.stopped.rawValue, ordering: .releasing)
    }

    /// The poll loop: one burst per stage per turn; on an empty turn, wait as the mode says.
    private func runLoop() {
        var tally = WorkerTally()
        var predictor = IdlePredictor(configuration: predictorConfiguration)
        var idleSinceNs: UInt64 = 0  // 0: the last turn did work
        var turns: UInt64 = 0
        while true {
            if hasMail.load(ordering: .acquiring) { handleMail() }
            if stopRequested.load(ordering: .relaxed) { break }
            let start = sluice_cycles()
            var moved = 0
            var slot = 0
            while slot < stageCount {
                let span = fusedSpan[slot]
                if span > 0 {
                    moved &+= runFused(from: slot, span: span)
                    slot &+= span &+ 1
                } else {
                    moved &+= stages[slot]._withUnsafeGuaranteedRef { $0.runOnce(waiter: waiter) }
                    slot &+= 1
                }
            }
            let elapsed = sluice_cycles() &- start
            turns &+= 1
            if turns & 255 == 0 { tally.publish(to: counters, withCPUTime: turns & 0xFFFF == 0) }
            if moved > 0 {
                tally.busyPolls &+= 1
                tally.items &+= UInt64(moved)
                tally.busyCycles &+= elapsed
                if idleSinceNs != 0 {
                    predictor.recordArrival(nowNs: sluice_monotonic_ns(), idleSinceNs: idleSinceNs)
                    idleSinceNs = 0
                }
                continue
            }
            tally.emptyPolls &+= 1
            tally.idleCycles &+= elapsed
            switch waitMode {
            case .busyPoll where stageCount == 0:
                // Nothing to poll: sleep until mail (a launch, a stage moved here) or stop, and leave
                // the core to the control thread meanwhile (starting a runtime, setting up a pipeline).
                sleep(timeoutNs: UInt64(Limits.sleepTimeoutNsMax), tally: &tally)
            case .busyPoll:
                sluice_cpu_relax()
            case .interrupt:
                sleep(timeoutNs: UInt64(Limits.sleepTimeoutNsMax), tally: &tally)
            case .adaptive:
                // Only this mode learns from time, so only it reads the clock on an empty turn.
                let now = sluice_monotonic_ns()
                if idleSinceNs == 0 { idleSinceNs = now }
                if anyInFlight() || now &- idleSinceNs < predictor.spinBudgetNs {
                    sluice_cpu_relax()
                } else {
                    let timeout = predictor.sleepNs(nowNs: now, idleSinceNs: idleSinceNs,
                                                    fallbackNs: UInt64(Limits.sleepTimeoutNsMax))
                    sleep(timeoutNs: timeout, tally: &tally)
                }
            }
        }
        tally.publish(to: counters, withCPUTime: true)
    }

    /// One turn of a pipeline whose every stage this worker runs (slots `slot...slot + span`). While
    /// its rings hold items (it just arrived here, or was spread before) the source waits and the
    /// other stages take their staged turns until the rings are empty (a few turns: they only take);
    /// then a burst goes from the source through every stage in the source's burst buffer: no ring,
    /// no wake-up, one cycle-counter read per stage. Order and counters are those of the staged turn;
    /// a stage that keeps nothing ends the chain, and a last stage with idle work then still gets its
    /// idle turn.
    @inline(__always)
    private func runFused(from slot: Int, span: Int) -> Int {
        let last = slot &+ span
        let ringsEmpty = stages[last]._withUnsafeGuaranteedRef { $0.upstreamRingsEmpty() }
        var now = sluice_cycles()
        let produced = ringsEmpty ? stages[slot]._withUnsafeGuaranteedRef { $0.fusedProduce(now: &now) } : 0
        guard produced > 0 else {
            // Rings to drain (the source waits, or it would keep them as full as they are), or
            // nothing new: the staged turn of the others (which also gives a sink its idle work).
            var moved = 0
            for other in (slot &+ 1)...last {
                moved &+= stages[other]._withUnsafeGuaranteedRef { $0.runOnce(waiter: waiter) }
            }
            return moved
        }
        var moved = produced
        var count = produced
        var next = slot &+ 1
        stages[slot]._withUnsafeGuaranteedRef { source in
            let burst = source.burst
            while next <= last, count > 0 {
                moved &+= count  // what the stage takes, as the staged turn counts it
                count = stages[next]._withUnsafeGuaranteedRef {
                    $0.fusedProcess(UnsafeMutableBufferPointer(rebasing: burst[0..<count]), now: &now)
                }
                next &+= 1
            }
            StageCounters.bump(source.pipeline.fusedBursts, by: 1)
        }
        // The chain ended early (everything filtered): the last stage's staged turn finds its ring
        // empty and does its idle work, if it has any.
        if next <= last { moved &+= stages[last]._withUnsafeGuaranteedRef { $0.runOnce(waiter: waiter) } }
        return moved
    }

    /// Marks each pipeline whose every stage this worker runs, for `runFused`. After mail only.
    private func recomputeFusedSpans() {
        for slot in 0..<stageCount { fusedSpan[slot] = 0 }
        guard fuses else { return }
        var slot = 0
        while slot < stageCount {
            let first = stages[slot].takeUnretainedValue()
            let length = first.pipeline.stages.count
            let whole = first.position == 0 && slot + length <= stageCount && (1..<length).allSatisfy { offset in
                let stage = stages[slot + offset].takeUnretainedValue()
                return stage.pipeline === first.pipeline && stage.position == offset
            }
            if whole {
                fusedSpan[slot] = length - 1
                slot += length
            } else {
                slot += 1
            }
        }
    }

    /// Idle prediction: items are on their way to one of this worker's stages.
    private func anyInFlight() -> Bool {
        for slot in 0..<stageCount where stages[slot]._withUnsafeGuaranteedRef({ $0.isInFlight() }) {
            return true
        }
        return false
    }

    /// Announces sleep, re-checks for work, then sleeps until a producer, the mailbox, a source's
    /// next item or the timeout wakes it. A safety-net timeout that finds input waiting is a lost
    /// wake-up and is counted.
    @inline(never)
    private func sleep(timeoutNs: UInt64, tally: inout WorkerTally) {
        sluice_waiter_announce(waiter)
        var timeout = min(timeoutNs, UInt64(Limits.sleepTimeoutNsMax))
        let now = sluice_monotonic_ns()
        // After announcing, re-check everything that can wake us: mail, stop, a switch to busy-poll
        // (whose notify may have come before the announcement), and input.
        var workWaiting = hasMail.load(ordering: .relaxed) || stopRequested.load(ordering: .relaxed)
            || (waitMode == .busyPoll && stageCount > 0)
        for slot in 0..<stageCount where !workWaiting {
            stages[slot]._withUnsafeGuaranteedRef { stage in
                // A source's next item is due in `hint`: sleep only if waking early enough is possible,
                // else keep polling (a late wake would make the source fall behind and then burst).
                guard let hint = stage.sleepHintNs(nowNs: now), hint > wakeMarginNs else {
                    workWaiting = true
                    return
                }
                timeout = min(timeout, hint == UInt64.max ? hint : hint - wakeMarginNs)
                workWaiting = stage.hasInput()
            }
        }
        if workWaiting {
            sluice_waiter_cancel(waiter)
            return
        }
        tally.publish(to: counters, withCPUTime: false)
        let rc = sluice_waiter_sleep(waiter, Int64(timeout))
        tally.sleeps &+= 1
        tally.sleepNs &+= sluice_monotonic_ns() &- now
        guard rc == -ETIMEDOUT else { return }
        tally.timeoutWakeups &+= 1
        if timeout == UInt64(Limits.sleepTimeoutNsMax), inputWaiting() { tally.lostWakeups &+= 1 }
    }

    private func inputWaiting() -> Bool {
        for slot in 0..<stageCount where stages[slot]._withUnsafeGuaranteedRef({ $0.hasInput() }) { return true }
        return false
    }

    /// Applies queued requests between turns. Cold: control plane only.
    @inline(never)
    private func handleMail() {
        hasMail.store(false, ordering: .relaxed)
        let requests = mailbox.withLock { box in
            defer { box.requests.removeAll(keepingCapacity: true) }
            return box.requests
        }
        for request in requests {
            switch request {
            case .add(let stage): adopt(stage)
            case .remove(let stage, let target): release(stage, to: target)
            }
            handledCount += 1
            mailHandled.store(handledCount, ordering: .releasing)
        }
        recomputeFusedSpans()
    }

    private func adopt(_ stage: StageTask) {
        precondition(stageCount < Limits.stagesPerWorkerMax, "worker over Limits.stagesPerWorkerMax stages")
        // Claim first: the runtime never hands one stage to two workers, and this makes sure of it.
        let claimed = stage.owner.compareExchange(expected: -1, desired: index, ordering: .acquiringAndReleasing)
        precondition(claimed.exchanged, "stage still owned by another worker")
        // Producers read this to wake us; set it before the first run so none of their wakes is lost.
        stage.inputLink?.consumerWaiter.store(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(waiter))),
                                              ordering: .sequentiallyConsistent)
        var slot = stageCount
        while slot > 0, Self.runsBefore(stage, stages[slot - 1].takeUnretainedValue()) {
            stages[slot] = stages[slot - 1]
            slot -= 1
        }
        stages[slot] = Unmanaged.passRetained(stage)
        stageCount += 1
    }

    private func release(_ stage: StageTask, to target: Worker?) {
        guard let found = (0..<stageCount).first(where: { stages[$0].takeUnretainedValue() === stage }) else {
            preconditionFailure("asked to release a stage this worker does not run")
        }
        for slot in found..<(stageCount - 1) { stages[slot] = stages[slot + 1] }
        stageCount -= 1
        // No waiter while the stage travels: producers then fence and find nobody to wake, and the
        // new worker publishes its own waiter before it first looks at the ring.
        stage.inputLink?.consumerWaiter.store(0, ordering: .sequentiallyConsistent)
        stage.owner.store(-1, ordering: .releasing)
        target?.post(.add(stage))
        Unmanaged.passUnretained(stage).release()
    }

    /// Run-to-completion order on a shared core: by pipeline, then by position.
    private static func runsBefore(_ a: StageTask, _ b: StageTask) -> Bool {
        (a.pipeline.id, a.position) < (b.pipeline.id, b.position)
    }
}
