// Path: Sources/SluiceCore/Pipeline/StageTask.swift — a stage with its rings, as a worker runs it.
import CShims
import Synchronization

/// Counters of one stage, VPP `show runtime` style. Written only by the worker running the stage
/// (load + store, no read-modify-write: one writer at a time), read by anyone.
public final class StageCounters: Sendable {
    /// Turns that moved at least one item.
    public let calls = Atomic<UInt64>(0)
    /// Items taken in (for a source: produced).
    public let items = Atomic<UInt64>(0)
    /// Items the stage's body chose not to pass on.
    public let filtered = Atomic<UInt64>(0)
    /// Cycle-counter ticks spent in turns that moved items.
    public let cycles = Atomic<UInt64>(0)
    /// Turns that could not run because the output ring was full (backpressure, nothing lost).
    public let blockedTurns = Atomic<UInt64>(0)
    /// Futex wakes this stage made for a sleeping downstream worker (the only system call on the
    /// data path; zero while the consumer polls).
    public let wakeups = Atomic<UInt64>(0)

    init() {}

    @inline(__always) static func bump(_ counter: borrowing Atomic<UInt64>, by amount: UInt64) {
        counter.store(counter.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }
}

/// The ring between two adjacent stages, plus what the producer needs to wake the consumer.
/// The ring can be replaced while the pipeline runs (`Runtime.resizeRing`): control threads read the
/// observer under a lock; worker-side readers use the raw pointers their stage owns instead.
final class Link: Sendable {
    private let current: Mutex<RingObserver>
    /// Address of the consuming worker's `sluice_waiter`; 0 while no worker runs the consumer.
    let consumerWaiter = Atomic<UInt>(0)

    init(observer: RingObserver) { current = Mutex(observer) }

    /// The ring's observer now. Any thread; takes a lock (control plane, metrics). The copy keeps
    /// its ring's memory alive, so it stays readable after a resize replaced it.
    var observer: RingObserver { current.withLock { $0 } }

    /// Installs a new ring's observer. `Runtime.resizeRing` only, with both ring ends' stages parked.
    func replaceObserver(_ observer: RingObserver) { current.withLock { $0 = observer } }

    /// Wakes the consuming worker if it announced sleep. Called after every enqueue that added items.
    /// Returns true if it made the futex wake call.
    @inline(__always) func notifyConsumer(from own: OpaquePointer) -> Bool {
        let ownBits = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(own)))
        // Run-to-completion hand-off: the consumer is on this worker, which is awake. Only this worker
        // sets or clears its own waiter here, so the relaxed load cannot be stale in this direction.
        if consumerWaiter.load(ordering: .relaxed) == ownBits { return false }
        // F_w before reading who the consumer is: a consumer that just arrived on another worker
        // (adopt: store waiter, announce, fence, re-check rings) then either sees our items or is seen.
        sluice_fence_seq_cst()
        let waiter = consumerWaiter.load(ordering: .relaxed)
        guard waiter != 0, waiter != ownBits else { return false }
        return sluice_waiter_notify_fenced(OpaquePointer(bitPattern: waiter)) == 1
    }
}

/// A stage placed in a pipeline: its body, its ring ends and its counters. One worker runs it at a
/// time; moving it between workers goes through both workers' mailboxes, so its state (and the
/// order of its items) moves with it. Subclasses are the source, relay and sink shapes.
public class StageTask: @unchecked Sendable {  // unchecked: one worker at a time, handed over by mailbox
    public let name: String
    /// Position in the pipeline, 0 for the source.
    public let position: Int
    public let counters = StageCounters()
    /// Index of the worker running this stage, or -1 while it is between workers.
    public let owner = Atomic<Int>(-1)
    unowned(unsafe) let pipeline: Pipeline
    let inputLink: Link?
    let outputLink: Link?
    let burst: UnsafeMutableBufferPointer<UInt64>
    /// Rings upstream of this stage (its input and every one before it): idle prediction polls while
    /// any holds items.
    let upstreamRings: UnsafeMutableBufferPointer<OpaquePointer>
    /// Counters of every stage before this one: their filtered items count as resolved here.
    let upstreamCounters: [StageCounters]
    /// The input ring (nil for the source), for `hasInput`. Like `upstreamRings`, rewritten only while
    /// the stage is parked (`replaceRing`); the ring's memory is kept alive by the stage's input end.
    @exclusivity(unchecked) final var inputRing: OpaquePointer?
    /// While the output ring is full: the cycle count before which the stage does not look at it
    /// again (0: not blocked). Polling a full ring at full speed keeps pulling the consumer's index
    /// line away from the consumer, slowing the very stage everything waits for.
    @exclusivity(unchecked) final var retryAtCycles: UInt64 = 0
    static let blockedBackoffCycles: UInt64 = 2_048

    init(name: String, position: Int, pipeline: Pipeline, inputLink: Link?, outputLink: Link?,
         burstCount: Int, upstreamRings: [OpaquePointer], upstreamCounters: [StageCounters]) {
        precondition(burstCount > 0 && burstCount <= Limits.burstCountMax, "burst outside 1...burstCountMax")
        self.name = name
        self.position = position
        self.pipeline = pipeline
        self.inputLink = inputLink
        self.outputLink = outputLink
        self.burst = .allocate(capacity: burstCount)
        self.burst.initialize(repeating: 0)
        self.upstreamRings = .allocate(capacity: max(upstreamRings.count, 1))
        _ = self.upstreamRings.initialize(from: upstreamRings)
        self.upstreamCounters = upstreamCounters
        self.inputRing = upstreamRings.last
    }

    deinit {
        burst.deallocate()
        upstreamRings.deallocate()
    }

    /// Runs one burst. Returns the items moved (0: no work or blocked). Worker thread only.
    func runOnce(waiter: OpaquePointer) -> Int { preconditionFailure("StageTask is abstract") }

    // Run to completion, fused: when one worker runs every stage of the pipeline and its rings are
    // empty, a burst goes from the source through every stage in one call chain, in the source's
    // burst buffer, without touching a ring (`Worker.runFused`). Same counters, same order.

    /// Source only: produces a burst into `burst` (no ring, so no room check) and counts it as
    /// entered. `now` is the cycle count at the call and is advanced past the body. Worker thread only.
    func fusedProduce(now: inout UInt64) -> Int { preconditionFailure("only a source produces") }

    /// Relay or sink: runs the body on `items` in place and returns the kept count, compacted to the
    /// front. `now` as above. Worker thread only.
    func fusedProcess(_ items: UnsafeMutableBufferPointer<UInt64>, now: inout UInt64) -> Int {
        preconditionFailure("a source takes no input")
    }

    /// True if this stage's input ring holds items. The worker running the stage only (the pointer
    /// changes while the stage is parked).
    func hasInput() -> Bool {
        guard let inputRing else { return false }
        return sluice_spsc_is_empty(inputRing) == 0
    }

    // Ring replacement (`Runtime.resizeRing`). Control thread only, while this stage is parked (owner
    // -1, seen with acquire after the worker's release): no worker runs it, and the mailbox hand-back
    // publishes the new state to the next worker that adopts it.

    /// Replaces this stage's output end. The old ring must be empty and its consumer parked.
    func replaceOutput(_ end: consuming RingProducer) { preconditionFailure("\(name) has no output ring") }

    /// Replaces this stage's input end (and `inputRing`). The old ring must be empty.
    func replaceInput(_ end: consuming RingConsumer) { preconditionFailure("\(name) has no input ring") }

    /// Rewrites every `upstreamRings` entry equal to `old` to `new` (idle prediction, fused check).
    final func replaceUpstreamRing(_ old: OpaquePointer, with new: OpaquePointer) {
        for index in upstreamRings.indices where upstreamRings[index] == old { upstreamRings[index] = new }
    }

    /// For sources: how long the worker may sleep (nil: must poll). Others: no limit.
    func sleepHintNs(nowNs: UInt64) -> UInt64? { UInt64.max }

    /// Idle prediction: items that entered the pipeline are still on their way to this stage, or an
    /// upstream ring holds items. Reads counters before `entered` so the answer errs towards polling.
    func isInFlight() -> Bool {
        guard position > 0 else { return false }
        var resolved = counters.items.load(ordering: .relaxed)
        for upstream in upstreamCounters { resolved &+= upstream.filtered.load(ordering: .relaxed) }
        if pipeline.entered.load(ordering: .acquiring) > resolved { return true }
        for ring in upstreamRings where sluice_spsc_is_empty(ring) == 0 { return true }
        return false
    }

    /// True when every ring upstream of this stage is empty (for the last stage: every ring of the
    /// pipeline). Worker thread; exact only when one worker runs every stage of the pipeline.
    @inline(__always) final func upstreamRingsEmpty() -> Bool {
        for ring in upstreamRings where sluice_spsc_is_empty(ring) == 0 { return false }
        return true
    }

    /// True while a blocked stage should leave its full output ring alone.
    @inline(__always) final func backingOff() -> Bool {
        guard retryAtCycles != 0 else { return false }
        if sluice_cycles() < retryAtCycles { return true }
        retryAtCycles = 0
        return false
    }

    /// Records a turn that found the output ring full, and starts a back-off.
    @inline(__always) final func recordBlocked() {
        StageCounters.bump(counters.blockedTurns, by: 1)
        retryAtCycles = sluice_cycles() &+ Self.blockedBackoffCycles
    }

    /// Records one turn that moved `items` items and spent `cycles` ticks.
    @inline(__always) final func recordTurn(items: Int, filtered: Int, cycles: UInt64) {
        StageCounters.bump(counters.calls, by: 1)
        StageCounters.bump(counters.items, by: UInt64(items))
        // Release (a plain store on x86): `Pipeline.isDrained` acquire-loads it, so a thread that finds the
        // pipeline drained also sees what this stage's body wrote before (a named output's file buffer).
        if filtered > 0 {
            counters.filtered.store(counters.filtered.load(ordering: .relaxed) &+ UInt64(filtered), ordering: .releasing)
        }
        StageCounters.bump(counters.cycles, by: cycles)
    }
}

/// Stage 1: asks its body for new items and puts them on the first ring. Produces only what fits,
/// so a slow pipeline pushes back on the source instead of losing items.
final class SourceTask<Body: SourceBody>: StageTask, @unchecked Sendable {
    // Only the owning worker touches these: skip the dynamic exclusivity checks a class var costs.
    @exclusivity(unchecked) var body: Body
    @exclusivity(unchecked) var output: RingProducer

    init(body: Body, output: consuming RingProducer, name: String, pipeline: Pipeline, outputLink: Link,
         burstCount: Int) {
        self.body = body
        self.output = output
        super.init(name: name, position: 0, pipeline: pipeline, inputLink: nil, outputLink: outputLink,
                   burstCount: burstCount, upstreamRings: [], upstreamCounters: [])
    }

    override func runOnce(waiter: OpaquePointer) -> Int {
        if backingOff() { return 0 }
        let room = min(burst.count, output.freeCount(wanting: burst.count))
        guard room > 0 else {
            recordBlocked()
            return 0
        }
        let start = sluice_cycles()
        let produced = body.produce(into: UnsafeMutableBufferPointer(rebasing: burst[0..<room]))
        guard produced > 0 else {
            if body.isExhausted { pipeline.sourceExhausted.store(true, ordering: .releasing) }
            return 0
        }
        precondition(produced <= room, "source produced more than it was given room for")
        // Count before publishing: the ring's release then orders `entered` before the items, so no
        // one sees an item that `entered` does not include (drain relies on it).
        StageCounters.bump(pipeline.entered, by: UInt64(produced))
        let (added, _) = output.enqueueBulk(UnsafeBufferPointer(rebasing: burst[0..<produced]))
        precondition(added == produced, "output ring lost room only its producer can take")
        // Only a short burst can be the last: a full one's end is seen on the next turn. (In this
        // unspecialised generic code the getter copies the body, retaining its references.)
        if produced < room, body.isExhausted { pipeline.sourceExhausted.store(true, ordering: .releasing) }
        if outputLink!.notifyConsumer(from: waiter) { StageCounters.bump(counters.wakeups, by: 1) }
        recordTurn(items: produced, filtered: 0, cycles: sluice_cycles() &- start)
        return produced
    }

    override func sleepHintNs(nowNs: UInt64) -> UInt64? {
        guard body.isExhausted else { return body.sleepHintNs(nowNs: nowNs) }
        // A source that ran out on a full burst, then found its ring full, has not said so yet: say it
        // before its worker sleeps, or the drain would wait for the sleep's timeout.
        pipeline.sourceExhausted.store(true, ordering: .releasing)
        return UInt64.max
    }

    override func replaceOutput(_ end: consuming RingProducer) {
        var end = end
        swap(&output, &end)
        retryAtCycles = 0
    }

    override func fusedProduce(now: inout UInt64) -> Int {
        let start = now
        let produced = body.produce(into: burst)
        guard produced > 0 else {
            if body.isExhausted { pipeline.sourceExhausted.store(true, ordering: .releasing) }
            return 0
        }
        precondition(produced <= burst.count, "source produced more than it was given room for")
        // Counted before any stage sees the items, so `entered` is never behind what was delivered.
        StageCounters.bump(pipeline.entered, by: UInt64(produced))
        if produced < burst.count, body.isExhausted { pipeline.sourceExhausted.store(true, ordering: .releasing) }  // as `runOnce`
        now = sluice_cycles()
        recordTurn(items: produced, filtered: 0, cycles: now &- start)
        return produced
    }
}

/// A middle stage: takes a burst from its input ring, runs its body, passes the survivors on.
/// Takes only as many items as its output has room for: backpressure, never a drop.
final class RelayTask<Body: StageBody>: StageTask, @unchecked Sendable {
    @exclusivity(unchecked) var body: Body
    @exclusivity(unchecked) var input: RingConsumer
    @exclusivity(unchecked) var output: RingProducer

    init(body: Body, input: consuming RingConsumer, output: consuming RingProducer, name: String,
         position: Int, pipeline: Pipeline, inputLink: Link, outputLink: Link, burstCount: Int,
         upstreamRings: [OpaquePointer], upstreamCounters: [StageCounters]) {
        self.body = body
        self.input = input
        self.output = output
        super.init(name: name, position: position, pipeline: pipeline, inputLink: inputLink,
                   outputLink: outputLink, burstCount: burstCount, upstreamRings: upstreamRings,
                   upstreamCounters: upstreamCounters)
    }

    override func replaceOutput(_ end: consuming RingProducer) {
        var end = end
        swap(&output, &end)
        retryAtCycles = 0
    }

    override func replaceInput(_ end: consuming RingConsumer) {
        inputRing = end.ring
        var end = end
        swap(&input, &end)
    }

    override func runOnce(waiter: OpaquePointer) -> Int {
        if backingOff() { return 0 }
        let room = min(burst.count, output.freeCount(wanting: burst.count))
        guard room > 0 else {
            recordBlocked()
            return 0
        }
        let (taken, _) = input.dequeueBurst(into: UnsafeMutableBufferPointer(rebasing: burst[0..<room]))
        guard taken > 0 else { return 0 }
        let start = sluice_cycles()
        let kept = body.process(UnsafeMutableBufferPointer(rebasing: burst[0..<taken]))
        precondition(kept >= 0 && kept <= taken, "stage kept more items than it was given")
        if kept > 0 {
            let (added, _) = output.enqueueBulk(UnsafeBufferPointer(rebasing: burst[0..<kept]))
            precondition(added == kept, "output ring lost room only its producer can take")
            if outputLink!.notifyConsumer(from: waiter) { StageCounters.bump(counters.wakeups, by: 1) }
        }
        recordTurn(items: taken, filtered: taken - kept, cycles: sluice_cycles() &- start)
        return taken
    }

    override func fusedProcess(_ items: UnsafeMutableBufferPointer<UInt64>, now: inout UInt64) -> Int {
        let start = now
        let kept = body.process(items)
        precondition(kept >= 0 && kept <= items.count, "stage kept more items than it was given")
        now = sluice_cycles()
        recordTurn(items: items.count, filtered: items.count - kept, cycles: now &- start)
        return kept
    }
}

/// The last stage: takes a burst from its input ring and runs its body; the body's kept count is
/// what the pipeline delivered.
final class SinkTask<Body: StageBody>: StageTask, @unchecked Sendable {
    @exclusivity(unchecked) var body: Body
    @exclusivity(unchecked) var input: RingConsumer
    /// Items the body kept (delivered out of the pipeline).
    let delivered = Atomic<UInt64>(0)

    init(body: Body, input: consuming RingConsumer, name: String, position: Int, pipeline: Pipeline,
         inputLink: Link, burstCount: Int, upstreamRings: [OpaquePointer], upstreamCounters: [StageCounters]) {
        self.body = body
        self.input = input
        super.init(name: name, position: position, pipeline: pipeline, inputLink: inputLink, outputLink: nil,
                   burstCount: burstCount, upstreamRings: upstreamRings, upstreamCounters: upstreamCounters)
    }

    override func replaceInput(_ end: consuming RingConsumer) {
        inputRing = end.ring
        var end = end
        swap(&input, &end)
    }

    /// A stage holding work back asks to be woken in time for it; others let the worker sleep
    /// until a producer wakes it.
    override func sleepHintNs(nowNs: UInt64) -> UInt64? {
        guard Body.hasIdleWork else { return UInt64.max }
        return body.idleHintNs(nowNs: nowNs) ?? UInt64.max
    }

    override func runOnce(waiter: OpaquePointer) -> Int {
        let (taken, _) = input.dequeueBurst(into: burst)
        guard taken > 0 else {
            // Constant-folded per body type: only a stage that holds work back pays for the call.
            return Body.hasIdleWork ? body.idle() : 0
        }
        let start = sluice_cycles()
        let kept = body.process(UnsafeMutableBufferPointer(rebasing: burst[0..<taken]))
        precondition(kept >= 0 && kept <= taken, "stage kept more items than it was given")
        recordTurn(items: taken, filtered: 0, cycles: sluice_cycles() &- start)
        // Release stores (plain stores on x86): a thread that acquire-loads these and finds the
        // pipeline drained also sees everything the body wrote, e.g. a file buffer it then flushes.
        if taken > kept {
            counters.filtered.store(counters.filtered.load(ordering: .relaxed) &+ UInt64(taken - kept), ordering: .releasing)
        }
        delivered.store(delivered.load(ordering: .relaxed) &+ UInt64(kept), ordering: .releasing)
        return taken
    }

    override func fusedProcess(_ items: UnsafeMutableBufferPointer<UInt64>, now: inout UInt64) -> Int {
        let start = now
        let kept = body.process(items)
        precondition(kept >= 0 && kept <= items.count, "stage kept more items than it was given")
        now = sluice_cycles()
        recordTurn(items: items.count, filtered: 0, cycles: now &- start)
        if items.count > kept {
            counters.filtered.store(counters.filtered.load(ordering: .relaxed) &+ UInt64(items.count - kept),
                                    ordering: .releasing)
        }
        delivered.store(delivered.load(ordering: .relaxed) &+ UInt64(kept), ordering: .releasing)
        return kept
    }
}
