// Path: Tests/SluiceCoreTests/PlacementPlannerTests.swift — placement chosen from measured costs, and
// the hand-off calibration that feeds it.
import Glibc
import Synchronization
import SluiceCore
import Testing

@Suite struct PlacementPlannerTests {
    let planner = PlacementPlanner()

    @Test func cheapStagesRunToCompletionOnOneCore() {
        // 3 stages of 20 ns, hand-off 30 ns a side: pipelining makes the busiest core 50-70 ns, worse than 60.
        let costs = PlacementCosts(stageNsPerItem: [20, 20, 20], handoffNsPerItem: 30)
        let decision = planner.plan(costs: costs, workerCount: 2)
        #expect(decision.chosen.placement == [0, 0, 0])
        #expect(decision.chosen.coresUsed == 1)
        #expect(abs(decision.chosen.predictedItemsPerSecond - 1e9 / 60) < 1)
        #expect(decision.alternatives.map(\.coresUsed) == [2])
        #expect("\(decision)".contains("run to completion on 1 core"))
    }

    @Test func expensiveStagesSpreadOut() {
        // A 100 ns source and a 100 ns middle stage: one core needs 220 ns an item, [0,1,1] 135.
        let costs = PlacementCosts(stageNsPerItem: [100, 100, 20], handoffNsPerItem: 15)
        let two = planner.plan(costs: costs, workerCount: 2)
        #expect(two.chosen.coresUsed == 2)
        #expect(two.chosen.placement == [0, 1, 1])
        let three = planner.plan(costs: costs, workerCount: 3)
        // [0,1,2] predicts 130 ns against 135: under the 5% a third core must earn.
        #expect(three.chosen.placement == [0, 1, 1])
        #expect(three.chosen.predictedItemsPerSecond >= two.chosen.predictedItemsPerSecond)
    }

    @Test func moreCoresOnlyForAClearGain() {
        // Pipelining predicts 2% more: within the 5% margin, so one core stays.
        let costs = PlacementCosts(stageNsPerItem: [51, 51], handoffNsPerItem: 49)
        #expect(planner.plan(costs: costs, workerCount: 2).chosen.coresUsed == 1)
        // One worker: nothing to choose.
        #expect(planner.plan(costs: PlacementCosts(stageNsPerItem: [10, 500, 10], handoffNsPerItem: 0),
                             workerCount: 1).chosen.placement == [0, 0, 0])
    }

    /// A pipeline asks for a core only for a shape it would move to (the 10% a move needs, not the
    /// 5% that picks more cores), and the cores its stages do not use are slack.
    @Test func aCoreIsWantedOnlyWhenItWouldBeUsed() {
        // Two 60 ns stages, 5 ns hand-off: one more core, 85% more.
        let clear = PlacementCosts(stageNsPerItem: [60, 60], handoffNsPerItem: 5)
        #expect(planner.workersWanted(costs: clear, current: [0, 0], holding: 1) == 2)
        // Using both of two: a third cannot split two stages further; nothing beyond what it uses.
        #expect(planner.workersWanted(costs: clear, current: [0, 1], holding: 2) == 2)
        // 108 ns on one core against 101 split: the planner would pick 2 cores (6.9% > 5%), but a
        // move needs 10%, so the second core would sit idle: not asked for.
        let close = PlacementCosts(stageNsPerItem: [100, 8], handoffNsPerItem: 1)
        #expect(planner.plan(costs: close, workerCount: 2).chosen.coresUsed == 2)
        #expect(planner.workersWanted(costs: close, current: [0, 0], holding: 1) == 1)
        // Cheap stages on one of two held cores: one is wanted, the other is slack.
        let cheap = PlacementCosts(stageNsPerItem: [5, 5, 5, 5], handoffNsPerItem: 50)
        #expect(planner.workersWanted(costs: cheap, current: [0, 0, 0, 0], holding: 2) == 1)
    }

    @Test func loadsCountBothSidesOfEveryCrossing() {
        let costs = PlacementCosts(stageNsPerItem: [10, 20, 30, 40], handoffNsPerItem: 5)
        let interleaved: [Double] = [55, 75]  // 10 + 30 and 20 + 40, plus three crossings of 5 each
        #expect(PlacementPlanner.workerLoads([0, 1, 0, 1], costs: costs, workerCount: 2) == interleaved)
        #expect(PlacementPlanner.workerLoads([0, 0, 0, 0], costs: costs, workerCount: 2) == [100, 0])
    }

    @Test func measuredCostsUnderASplitAreCorrectedToLocal() {
        let local = PlacementPlanner.localCosts(measured: [45, 60, 20], placement: [0, 1, 1], handoffNsPerItem: 25)
        #expect(local == [20, 35, 20])
        #expect(PlacementPlanner.localCosts(measured: [5], placement: [0], handoffNsPerItem: 25) == [5])
    }

    @Test func changesOnlyForAGainAboveTheMargin() {
        let costs = PlacementCosts(stageNsPerItem: [60, 60], handoffNsPerItem: 5)
        let decision = planner.plan(costs: costs, workerCount: 2)
        #expect(decision.chosen.placement == [0, 1])
        // 120 ns on one core against 65: an 85% gain.
        #expect(planner.shouldChange(from: [0, 0], to: decision, workerCount: 2))
        #expect(!planner.shouldChange(from: [0, 1], to: decision, workerCount: 2))
        #expect(!PlacementPlanner(changeMargin: 1.0).shouldChange(from: [0, 0], to: decision, workerCount: 2))
    }

    @Test func calibrationMeasuresBothWaysOfRunning() throws {
        let cpus = try CPU.allowedCPUs()
        guard cpus.count >= 2 else { return }
        let cost = try HandoffCalibration.measure(fromCore: cpus[0], toCore: cpus[1], itemCount: 1 << 16, rounds: 1)
        #expect(cost.localNsPerItem > 0 && cost.localNsPerItem < 10_000)
        #expect(cost.crossNsPerItem > 0 && cost.crossNsPerItem < 100_000)
        #expect(cost.handoffNsPerItem >= 0)
        #expect("\(cost)".contains("hand-off"))
    }

    @Test func calibrationRefusesBadRequests() throws {
        #expect(throws: HandoffCalibrationError.sameCore(0)) { try HandoffCalibration.measure(fromCore: 0, toCore: 0) }
        #expect(throws: HandoffCalibrationError.coreUnavailable(100_000)) {
            try HandoffCalibration.measure(fromCore: 0, toCore: 100_000)
        }
        let cpus = try CPU.allowedCPUs()
        guard cpus.count >= 2 else { return }
        #expect(throws: HandoffCalibrationError.itemCount(10, max: HandoffCalibration.itemCountMax)) {
            try HandoffCalibration.measure(fromCore: cpus[0], toCore: cpus[1], itemCount: 10)
        }
    }

    /// A trial's polling thread keeps off the trial's cores and gets its set back after.
    @Test func aThreadConfinedToCPUsGetsItsSetBack() throws {
        let before = try CPU.allowedCPUs()
        let last = try #require(before.last)
        let restore = try #require(CPU.confineCurrentThread(to: [last]))
        defer { _ = CPU.confineCurrentThread(to: restore) }
        #expect(restore == before)
        #expect(try CPU.allowedCPUs() == [last])
        #expect(CPU.current() == last)
        #expect(CPU.confineCurrentThread(to: []) == nil, "an empty set is refused, the thread keeps its set")
        #expect(try CPU.allowedCPUs() == [last])
        _ = CPU.confineCurrentThread(to: restore)
        #expect(try CPU.allowedCPUs() == before)
    }
}

/// Spins about `nsPerItem` per item: a stage as expensive as a heavy parser.
private struct SpinStage: StageBody {
    let nsPerItem: UInt64
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let until = Clock.monotonicNs() &+ nsPerItem &* UInt64(items.count)
        while Clock.monotonicNs() < until {}
        return items.count
    }
}

/// Spins `nsPerItem` per item on every core but `slowCore`, and `slowFactor` times that on it: a
/// core the planner cannot know is slower (a busy sibling thread, a host that moves the vCPU).
private struct CoreSensitiveSpinStage: StageBody {
    let nsPerItem: UInt64
    let slowCore: Int
    let slowFactor: UInt64
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let perItem = CPU.current() == slowCore ? nsPerItem &* slowFactor : nsPerItem
        let until = Clock.monotonicNs() &+ perItem &* UInt64(items.count)
        while Clock.monotonicNs() < until {}
        return items.count
    }
}

/// What a `TunableSpinStage` spins per item, and how much slower on its slow core; a test changes
/// them while the pipeline runs (a load whose cost changes).
private final class SpinKnobs: Sendable {
    let nsPerItem: Atomic<UInt64>
    let slowFactor: Atomic<UInt64>
    init(nsPerItem: UInt64, slowFactor: UInt64) {
        self.nsPerItem = Atomic(nsPerItem)
        self.slowFactor = Atomic(slowFactor)
    }
}

/// `CoreSensitiveSpinStage` with its cost and slow factor read from `knobs` every burst.
private struct TunableSpinStage: StageBody {
    let knobs: SpinKnobs
    let slowCore: Int
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let base = knobs.nsPerItem.load(ordering: .relaxed)
        let perItem = CPU.current() == slowCore ? base &* knobs.slowFactor.load(ordering: .relaxed) : base
        let until = Clock.monotonicNs() &+ perItem &* UInt64(items.count)
        while Clock.monotonicNs() < until {}
        return items.count
    }
}

@Suite(.serialized, .enabled(if: twoCPUsOrCI, "needs two CPUs"))
struct MeasuredPlacementTests {
    /// Runs `relays` between a sequence source and an order-checking sink with a measured placement
    /// that starts run to completion; returns the allocator and what the sink saw. The hand-off cost
    /// is given, not calibrated: a debug build's loops say nothing about a release build's, and a
    /// loaded test machine less; `calibrationMeasuresBothWaysOfRunning` covers the calibration.
    private func run(relays: [any StageBody], items: UInt64, handoffNs: Double,
                     avoiding: [[Int]] = []) throws -> (MeasuredPlacement, SinkTracker) {
        let tracker = SinkTracker()
        let pipeline = try makeCountingPipeline("measured", source: GeneratorSource(ratePerSecond: 0, totalCount: items,
                                                                                    payload: .sequence),
                                                relays: relays, tracker: tracker)
        let cores = try testCores()
        let handoff = HandoffCost(fromCore: cores[0], toCore: cores[1], localNsPerItem: 20, crossNsPerItem: 10 + handoffNs)
        var allocator = MeasuredPlacement(workers: [0, 1], initial: Array(repeating: 0, count: pipeline.stages.count),
                                          handoff: .success(handoff), avoiding: avoiding)
        let runtime = try Runtime(configuration: .init(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: allocator.placement)
        allocator.begin(pipeline, nowNs: Clock.monotonicNs())
        let deadline = Clock.monotonicNs() + drainTimeoutNs
        while !runtime.drain(timeoutNs: 5_000_000), Clock.monotonicNs() < deadline {
            allocator.step(pipeline, runtime: runtime, nowNs: Clock.monotonicNs())
        }
        #expect(allocator.moveFailure == nil)
        #expect(pipeline.isDrained)
        return (allocator, tracker)
    }

    @Test func twoExpensiveStagesSpreadOverTwoCoresWithoutLossOrReordering() throws {
        guard requireTwoCPUs() else { return }
        // Two stages of ~2 µs per item and a 50 ns hand-off: one on each core nearly doubles the rate.
        let (allocator, tracker) = try run(relays: [SpinStage(nsPerItem: 2_000), SpinStage(nsPerItem: 2_000)],
                                           items: 120_000, handoffNs: 50)
        let first = try #require(allocator.firstDecision)
        #expect(first.chosen.coresUsed == 2, "\(first) \(allocator.handoff.map { "\($0)" } ?? "")")
        #expect(allocator.changes.count >= 1)
        // (A move is undone only when measured no faster: a machine loaded enough to steal the second core.)
        #expect(Set(allocator.placement).count == 2, "\(allocator.changes.map { "\($0.from) -> \($0.to): \($0.why)" })")
        #expect(tracker.received == 120_000)
        #expect(tracker.outOfOrder == 0)
    }

    /// The planner predicts spreading two 2 µs stages nearly doubles the rate, but on the second
    /// core they take 8 µs: the interval after the move measures the busiest worker slower than the
    /// one core was, so the stages go back, nothing lost or reordered, and nothing more is decided.
    @Test func aMoveMeasuredNoFasterIsUndone() throws {
        guard requireTwoCPUs() else { return }
        let slowCore = try testCores()[1]
        let relays: [any StageBody] = [CoreSensitiveSpinStage(nsPerItem: 2_000, slowCore: slowCore, slowFactor: 4),
                                       CoreSensitiveSpinStage(nsPerItem: 2_000, slowCore: slowCore, slowFactor: 4)]
        let (allocator, tracker) = try run(relays: relays, items: 150_000, handoffNs: 50)
        #expect(allocator.changes.count == 2, "\(allocator.changes.map(\.why))")
        let moved = try #require(allocator.changes.first)
        #expect(moved.from == [0, 0, 0, 0] && Set(moved.to).count == 2 && moved.undone == nil)
        let back = try #require(allocator.changes.last)
        let undo = try #require(back.undone, "\(back.why)")
        #expect(back.from == moved.to && back.to == [0, 0, 0, 0] && allocator.placement == [0, 0, 0, 0])
        #expect(undo.afterNsPerItem > undo.beforeNsPerItem * 1.5, "\(undo)")
        #expect(back.why.contains("moved back") && allocator.settled)
        #expect(tracker.received == 150_000)
        #expect(tracker.outOfOrder == 0)
    }

    /// The same two stages, with the split the planner picks already measured slower (a replay's
    /// trial): the planner still predicts it best, and the stages stay where they are.
    @Test func aPlacementMeasuredSlowerIsNotMovedTo() throws {
        guard requireTwoCPUs() else { return }
        let (allocator, tracker) = try run(relays: [SpinStage(nsPerItem: 2_000), SpinStage(nsPerItem: 2_000)],
                                           items: 60_000, handoffNs: 50, avoiding: [[0, 0, 1, 1]])
        let first = try #require(allocator.firstDecision)
        #expect(first.chosen.placement == [0, 0, 1, 1], "\(first)")
        #expect(allocator.changes.isEmpty && allocator.placement == [0, 0, 0, 0], "\(allocator.changes.map(\.why))")
        #expect(tracker.received == 60_000 && tracker.outOfOrder == 0)
    }

    @Test func cheapStagesStayRunToCompletion() throws {
        guard requireTwoCPUs() else { return }
        // Pass-through stages cost little (even in a debug build) against a 5 µs hand-off.
        let (allocator, tracker) = try run(relays: [PassThrough(), PassThrough()], items: 1_000_000, handoffNs: 5_000)
        let first = try #require(allocator.firstDecision)
        #expect(first.chosen.coresUsed == 1, "\(first); hand-off \(allocator.handoff.map { "\($0)" } ?? "-")")
        #expect(allocator.changes.isEmpty)
        #expect(tracker.received == 1_000_000)
        #expect(tracker.outOfOrder == 0)
    }

    /// Its workers change as cores move between pipelines. On one worker it only measures, and wants
    /// a second for two 2 µs stages; given one, it spreads at once; losing it, its stages come back to
    /// the worker it keeps; moved wholly to the other worker, they all go there. Nothing is lost or
    /// reordered, and each change names the workers it followed.
    @Test func itsStagesFollowItsWorkersAsCoresMove() throws {
        guard requireTwoCPUs() else { return }
        let tracker = SinkTracker()
        let items: UInt64 = 300_000
        let pipeline = try makeCountingPipeline("moving", source: GeneratorSource(ratePerSecond: 0, totalCount: items,
                                                                                  payload: .sequence),
                                                relays: [SpinStage(nsPerItem: 2_000), SpinStage(nsPerItem: 2_000)],
                                                tracker: tracker)
        let cores = try testCores()
        let handoff = HandoffCost(fromCore: cores[0], toCore: cores[1], localNsPerItem: 20, crossNsPerItem: 60)
        var allocator = MeasuredPlacement(workers: [0], initial: [0, 0, 0, 0], handoff: .success(handoff))
        #expect(allocator.workersWanted() == nil, "nothing measured yet")
        let runtime = try Runtime(configuration: .init(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: allocator.placement)
        allocator.begin(pipeline, nowNs: Clock.monotonicNs())
        var phase = 0
        var phaseStart: UInt64 = 0
        let deadline = Clock.monotonicNs() + drainTimeoutNs
        while !runtime.drain(timeoutNs: 2_000_000), Clock.monotonicNs() < deadline {
            let now = Clock.monotonicNs()
            allocator.step(pipeline, runtime: runtime, nowNs: now)
            let entered = pipeline.stages[0].counters.items.load(ordering: .relaxed)
            switch phase {
            case 0 where allocator.lastCosts != nil:
                #expect(allocator.changes.isEmpty && allocator.firstDecision == nil, "one worker: nothing to decide")
                #expect(allocator.workersWanted() == 2, "\(allocator.lastCosts.map { "\($0)" } ?? "-")")
                allocator.setWorkers([0, 1], pipeline: pipeline, runtime: runtime, nowNs: now)
                #expect(Set(allocator.placement) == [0, 1] && allocator.changes.last?.workersNow == [0, 1],
                        "\(allocator.changes.map(\.why))")
                #expect(allocator.changes.last?.why.hasPrefix("its workers changed to [0, 1]: pipelined") == true)
            case 1 where entered >= phaseStart + 40_000:
                allocator.setWorkers([0], pipeline: pipeline, runtime: runtime, nowNs: now)
                #expect(allocator.placement == [0, 0, 0, 0] && allocator.changes.last?.workersNow == [0])
            case 2 where entered >= phaseStart + 40_000:
                allocator.setWorkers([1], pipeline: pipeline, runtime: runtime, nowNs: now)
                #expect(allocator.placement == [1, 1, 1, 1] && allocator.workers == [1])
            default:
                continue
            }
            phase += 1
            phaseStart = entered
        }
        #expect(phase == 3, "only \(phase) of 3 worker changes before the pipeline drained")
        #expect(allocator.moveFailure == nil && pipeline.isDrained)
        #expect(tracker.received == items && tracker.outOfOrder == 0)
    }

    /// Given a second worker, it splits two 2 µs stages, but they take 8 µs on that core: the split,
    /// made because its workers changed, is checked after 20 ms and 10,000 items (not 250 ms and
    /// 50,000), measured slower, and undone; nothing lost or reordered.
    @Test func aSplitOntoASlowGainedCoreIsUndoneSoon() throws {
        guard requireTwoCPUs() else { return }
        let tracker = SinkTracker()
        let items: UInt64 = 150_000
        let slowCore = try testCores()[1]
        let pipeline = try makeCountingPipeline("slow-gain", source: GeneratorSource(ratePerSecond: 0, totalCount: items,
                                                                                     payload: .sequence),
                                                relays: [CoreSensitiveSpinStage(nsPerItem: 2_000, slowCore: slowCore, slowFactor: 4),
                                                         CoreSensitiveSpinStage(nsPerItem: 2_000, slowCore: slowCore, slowFactor: 4)],
                                                tracker: tracker)
        let cores = try testCores()
        let handoff = HandoffCost(fromCore: cores[0], toCore: cores[1], localNsPerItem: 20, crossNsPerItem: 60)
        var allocator = MeasuredPlacement(workers: [0], initial: [0, 0, 0, 0], handoff: .success(handoff))
        let runtime = try Runtime(configuration: .init(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: allocator.placement)
        allocator.begin(pipeline, nowNs: Clock.monotonicNs())
        var gained = false
        let deadline = Clock.monotonicNs() + drainTimeoutNs
        while !runtime.drain(timeoutNs: 2_000_000), Clock.monotonicNs() < deadline {
            let now = Clock.monotonicNs()
            allocator.step(pipeline, runtime: runtime, nowNs: now)
            if !gained, allocator.lastCosts != nil {
                allocator.setWorkers([0, 1], pipeline: pipeline, runtime: runtime, nowNs: now)
                gained = true
            }
        }
        #expect(allocator.changeCount == 2, "\(allocator.changes.map(\.why))")
        let split = try #require(allocator.changes.first)
        let back = try #require(allocator.changes.last)
        #expect(Set(split.to).count == 2 && split.workersNow == [0, 1])
        #expect(back.undone != nil && allocator.placement == [0, 0, 0, 0] && allocator.settled, "\(back.why)")
        // 10,000 items at 8 µs is 80 ms: well under the 250 ms a check of the planner's own moves waits.
        #expect(back.atNs - split.atNs < MeasuredPlacement.intervalNs, "checked \(back.atNs - split.atNs) ns after the split")
        #expect(allocator.workersWanted() == 1, "settled: it wants only the core its stages use")
        #expect(tracker.received == items && tracker.outOfOrder == 0)
    }

    /// A settled placement is re-decided when its costs change. The split is measured slower (the
    /// second core runs the stages 4x slower) and undone: settled. While nothing changes it stays
    /// settled; once the stages cost twice as much and the second core is no longer slow, it re-opens
    /// (after `reopenAfterNs`), splits again, and this time the check keeps the split. Nothing is
    /// lost or reordered. The allocator's clock runs 10x real time, so 250 ms intervals take 25 ms.
    @Test func aSettledPlacementIsReDecidedWhenItsCostsChange() throws {
        guard requireTwoCPUs() else { return }
        let cores = try testCores()
        let knobs = SpinKnobs(nsPerItem: 300, slowFactor: 6)
        let tracker = SinkTracker()
        let items: UInt64 = 3_000_000
        let pipeline = try makeCountingPipeline(
            "reopen", source: GeneratorSource(ratePerSecond: 0, totalCount: items, payload: .sequence),
            relays: [TunableSpinStage(knobs: knobs, slowCore: cores[1]), TunableSpinStage(knobs: knobs, slowCore: cores[1])],
            tracker: tracker)
        let handoff = HandoffCost(fromCore: cores[0], toCore: cores[1], localNsPerItem: 20, crossNsPerItem: 40)
        let origin = Clock.monotonicNs()
        let fastNs: @Sendable () -> UInt64 = { origin &+ (Clock.monotonicNs() &- origin) &* 10 }
        var allocator = MeasuredPlacement(workers: [0, 1], initial: [0, 0, 0, 0], handoff: .success(handoff),
                                          reopenAfterNs: 500_000_000, clock: fastNs)
        let runtime = try Runtime(configuration: .init(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: allocator.placement)
        allocator.begin(pipeline, nowNs: fastNs())
        let deadline = Clock.monotonicNs() + drainTimeoutNs
        /// Steps until `done` or the pipeline drained; false if it drained (or the deadline passed) first.
        func stepUntil(_ done: (MeasuredPlacement) -> Bool) -> Bool {
            while !done(allocator) {
                if runtime.drain(timeoutNs: 1_000_000) || Clock.monotonicNs() > deadline { return false }
                allocator.step(pipeline, runtime: runtime, nowNs: fastNs())
            }
            return true
        }
        #expect(stepUntil { $0.settled }, "the split onto the slow core was never undone: \(allocator.changes.map(\.why))")
        #expect(allocator.changeCount == 2 && allocator.placement == [0, 0, 0, 0], "\(allocator.changes.map(\.why))")
        // Nothing changed: settled through 2 s of its clock (about four intervals of 50,000 items).
        let quietUntil = fastNs() + 2_000_000_000
        #expect(stepUntil { _ in fastNs() >= quietUntil }, "drained while settled")
        #expect(allocator.settled && allocator.reopenCount == 0 && allocator.changeCount == 2,
                "re-opened with nothing changed: \(allocator.lastReopenWhy ?? "")")
        knobs.nsPerItem.store(600, ordering: .relaxed)
        knobs.slowFactor.store(1, ordering: .relaxed)
        #expect(stepUntil { $0.reopenCount == 1 }, "never re-opened after the costs doubled")
        #expect(allocator.lastReopenWhy?.contains("measured at stages") == true, "\(allocator.lastReopenWhy ?? "")")
        // Re-opened, it splits again, and the split, no longer slow, is checked and kept.
        #expect(stepUntil { $0.changeCount >= 3 }, "no move after re-opening")
        let split = try #require(allocator.changes.last)
        #expect(Set(split.to).count == 2 && split.undone == nil, "\(split.why)")
        // The check needs an interval of time and of items; two of each have passed here.
        let checkedBy = fastNs() + 2 * MeasuredPlacement.intervalNs
        let itemsBy = pipeline.stages[0].counters.items.load(ordering: .relaxed) + 2 * MeasuredPlacement.itemsPerDecision
        #expect(stepUntil { _ in fastNs() >= checkedBy && pipeline.stages[0].counters.items.load(ordering: .relaxed) >= itemsBy },
                "drained before the split was checked")
        #expect(allocator.changeCount == 3 && Set(allocator.placement).count == 2 && !allocator.settled,
                "\(allocator.changes.map(\.why))")
        while !runtime.drain(timeoutNs: 5_000_000), Clock.monotonicNs() < deadline {}
        #expect(tracker.received == items && tracker.outOfOrder == 0)
    }

    /// A move that cannot happen (here: the runtime was stopped) is recorded, not thrown; the
    /// placement stays where the stages are and nothing more is decided.
    @Test func aFailedMoveIsRecordedAndTheStagesStayPut() throws {
        guard requireTwoCPUs() else { return }
        let tracker = SinkTracker()
        let pipeline = try makeCountingPipeline("measured", source: GeneratorSource(ratePerSecond: 0, totalCount: 200_000,
                                                                                    payload: .sequence),
                                                relays: [SpinStage(nsPerItem: 2_000), SpinStage(nsPerItem: 2_000)],
                                                tracker: tracker)
        let cores = try testCores()
        let handoff = HandoffCost(fromCore: cores[0], toCore: cores[1], localNsPerItem: 20, crossNsPerItem: 60)
        var allocator = MeasuredPlacement(workers: [0, 1], initial: [0, 0, 0, 0], handoff: .success(handoff))
        let runtime = try Runtime(configuration: .init(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        try runtime.launch(pipeline, placement: allocator.placement)
        allocator.begin(pipeline, nowNs: Clock.monotonicNs())
        let deadline = Clock.monotonicNs() + drainTimeoutNs
        while pipeline.stages[0].counters.items.load(ordering: .relaxed) < 60_000, Clock.monotonicNs() < deadline {
            usleep(1_000)
        }
        runtime.stop()
        allocator.step(pipeline, runtime: runtime, nowNs: Clock.monotonicNs() + MeasuredPlacement.firstIntervalNs)
        #expect(allocator.moveFailure == .notRunning)
        #expect(allocator.placement == [0, 0, 0, 0])
        #expect(allocator.changes.count == 1 && allocator.changes[0].to == [0, 0, 0, 0])
        allocator.step(pipeline, runtime: runtime, nowNs: Clock.monotonicNs() + 10 * MeasuredPlacement.intervalNs)
        #expect(allocator.changes.count == 1, "nothing more is decided after a failed move")
    }
}
