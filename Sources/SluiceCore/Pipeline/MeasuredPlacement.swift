// Path: Sources/SluiceCore/Pipeline/MeasuredPlacement.swift — one pipeline's placement, re-decided
// from its stages' measured costs while it runs.

/// A placement the pipeline moved to while it ran, and why.
public struct PlacementChange: Sendable, Equatable {
    /// Nanoseconds since the pipeline was launched.
    public var atNs: UInt64
    public var from: [Int]
    public var to: [Int]
    /// The planner's reasoning: the chosen and the other shapes' predicted rates, and the costs.
    /// For a move undone, the decision that made the move.
    public var decision: PlacementDecision
    /// Set when this change undid the move before it, which measured no faster than where it came from.
    public var undone: PlacementUndo?
    /// Set when the change followed a change of the pipeline's workers (a core moved between
    /// pipelines): the workers it holds from then on.
    public var workersNow: [Int]?

    /// Why the stages moved: the planner's decision, or why a move was undone.
    public var why: String {
        let reason = undone.map { "\($0)" } ?? "\(decision)"
        return workersNow.map { "its workers changed to \($0.sorted()): \(reason)" } ?? reason
    }
}

/// A move measured no faster than the placement it left, and so undone.
public struct PlacementUndo: Sendable, Equatable, CustomStringConvertible {
    /// The busiest worker's measured ns per item that entered the pipeline, before and after the move.
    public var beforeNsPerItem: Double
    public var afterNsPerItem: Double

    public var description: String {
        "moved back: the busiest worker measured \(Self.tenths(afterNsPerItem)) ns/item after the move against "
            + "\(Self.tenths(beforeNsPerItem)) before it (the planner predicted a gain; measured, there was none)"
    }

    private static func tenths(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// Runs `PlacementPlanner` on a live pipeline: calibrates the hand-off between the first two
/// workers' cores when made, measures each stage's cycles per entered item over intervals, and moves
/// stages (`Runtime.move`: nothing lost or reordered) when a placement predicts a clear gain. The
/// interval after a move checks it: when the busiest worker measures no fewer ns per item than it
/// did before the move, the stages go back and the placement is settled: not re-decided until
/// the stage costs it settled on change (`reopenCostChange`), and then not before `reopenAfterNs`
/// (so too after its moves count, `changesMax`, is spent). The workers
/// it may use can change while it runs (`setWorkers`: a core moved between pipelines); with one
/// worker it only measures, which tells the broker whether another core would help (`workersWanted`).
/// Control plane: one thread calls `begin`, then `step` and `setWorkers`; it allocates and may block in a move.
public struct MeasuredPlacement {
    /// The first decision waits for this many items (enough to measure), later ones for the same
    /// again, and at least `intervalNs` apart.
    public static let itemsPerDecision: UInt64 = 50_000
    public static let firstIntervalNs: UInt64 = 20_000_000
    public static let intervalNs: UInt64 = 250_000_000
    /// A move made because its workers changed is checked sooner: after `firstIntervalNs` and this
    /// many items (a split onto a core the host runs slowly costs one such interval, not 250 ms).
    public static let itemsPerSoonCheck: UInt64 = 10_000
    /// Most moves from the launch, or from a re-opening of a settled placement, to the next one:
    /// measurement noise cannot make it flap for ever. (The undo of the last one, when measured no
    /// faster, is made even at the cap.)
    public static let changesMax = 4
    /// A settled placement (or one whose moves count is spent) is re-decided again when one stage's
    /// local cost moved by at least this share of the pipeline's whole cost per item (0.25: a
    /// quarter), the same way, from what it settled on (the second interval measured after it
    /// settled)...
    public static let reopenCostChange = 0.25
    /// ...in this many intervals in a row (one noisy interval does not), and `reopenAfterNs` (an
    /// init argument, 10 s by default) after that interval at the earliest: a pipeline whose plan
    /// keeps being refuted tries at most one move (one check interval) that often. The load alone
    /// does not re-open it: the planner decides from costs per item, so the same costs would make
    /// the same refuted move (the load moves cores through the broker's demand instead).
    public static let reopenIntervals = 2

    /// Worker index (in the runtime) of each stage now.
    public private(set) var placement: [Int]
    /// The last `changesKept` placement changes, oldest first (`changeCount` counts them all).
    public private(set) var changes: [PlacementChange] = []
    /// Placement changes since the start, kept or not.
    public private(set) var changeCount = 0
    /// Changes kept in `changes`: core moves can change a long-running pipeline's placement without end.
    public static let changesKept = 16
    public private(set) var firstDecision: PlacementDecision?
    public let handoff: HandoffCost?
    public let calibrationFailure: String?
    /// The move that failed, if one did: from then on the placement is no longer re-decided (the
    /// pipeline keeps running where its stages are; `placement` says where that is).
    public private(set) var moveFailure: RuntimeError?
    /// Set when a move was undone: the placement is no longer re-decided, and it asks for no core
    /// (a change of its workers does not reset it: the measurement refuted its planner), until its
    /// stage costs change (`reopenCostChange`): then it is cleared, the moves count (`changesMax`)
    /// starts again and placements measured slower before are no longer avoided.
    public private(set) var settled = false
    /// Times a settled placement was re-decided again, and why the last time (the service logs it).
    public private(set) var reopenCount = 0
    public private(set) var lastReopenWhy: String?
    /// What it settled on: when, and each stage's local cost (nil until measured; `settleSkips`
    /// intervals after settling are passed over first).
    private var settledOn: (ns: UInt64, costs: [Double])?
    private var settleSkips = 0
    /// Consecutive intervals that differed from `settledOn` the same way: the stage and the sign.
    private var reopenStreak = 0
    private var reopenTrigger: (stage: Int, up: Bool)?
    private let reopenAfterNs: UInt64
    /// Its clock (`Clock.monotonicNs`; a test's runs faster): what `nowNs` arguments are on.
    private let clock: @Sendable () -> UInt64
    /// `changeCount` when the moves count last started (at the launch or a re-opening).
    private var changesAtReopen = 0
    /// The move being checked: the placement it left, the busiest worker's ns per item there, and
    /// the decision that made it.
    private var check: (from: [Int], bottleneckNs: Double, decision: PlacementDecision)?
    /// The pending check is of a move `setWorkers` made: due after `firstIntervalNs` and `itemsPerSoonCheck`.
    private var checkSoon = false
    /// Placements measured slower before the run: not moved to until a re-opening clears them (a
    /// placement moved to and undone is not moved to while settled).
    private var avoided: [[Int]]
    /// The runtime's worker indices this pipeline may use now (`setWorkers` changes them); the
    /// planner's worker i is `workers[i]`, and the source's worker comes first.
    public private(set) var workers: [Int]
    /// The last interval's costs, as if each stage's neighbours shared its core; nil before one was measured.
    public private(set) var lastCosts: PlacementCosts?
    /// The busiest worker's ns per item in the last interval (what a move is checked against).
    private var lastBottleneckNs: Double?
    private let planner: PlacementPlanner
    private var startNs: UInt64 = 0
    private var lastNs: UInt64 = 0
    private var last: [StageSnapshot] = []

    /// Measures the hand-off between the first two of `cores` (3 x `itemCount` items each way: 64k
    /// take a few ms in a release build, more in debug). Call before the workers start, so they do
    /// not compete.
    public static func calibrate(cores: [Int], itemCount: Int = 1 << 16) -> Result<HandoffCost, HandoffCalibrationError> {
        precondition(cores.count >= 2, "a hand-off needs two cores")
        do { return .success(try HandoffCalibration.measure(fromCore: cores[0], toCore: cores[1], itemCount: itemCount)) } catch {
            return .failure(error)
        }
    }

    /// `workers`: the runtime worker indices the pipeline may use (one or more); `initial`: where
    /// its stages start (indices among `workers`' values); `handoff`: from `calibrate`; `avoiding`:
    /// placements (like `initial`) already measured slower, which it does not move to (until a
    /// re-opening); `reopenAfterNs`: how soon after settling a change can re-open the placement;
    /// `clock`: the clock the callers' `nowNs` are read from.
    public init(workers: [Int], initial: [Int], handoff: Result<HandoffCost, HandoffCalibrationError>,
                avoiding: [[Int]] = [], planner: PlacementPlanner = PlacementPlanner(),
                reopenAfterNs: UInt64 = 10_000_000_000, clock: @escaping @Sendable () -> UInt64 = { Clock.monotonicNs() }) {
        precondition(!workers.isEmpty && Set(workers).count == workers.count, "one or more distinct workers")
        precondition(initial.allSatisfy(workers.contains), "the initial placement uses the pipeline's workers")
        placement = initial
        avoided = avoiding
        self.workers = workers
        self.planner = planner
        self.reopenAfterNs = reopenAfterNs
        self.clock = clock
        switch handoff {
        case .success(let cost): (self.handoff, calibrationFailure) = (cost, nil)
        case .failure(let error): (self.handoff, calibrationFailure) = (nil, "\(error)")
        }
    }

    /// Marks the launch: measurement starts here.
    public mutating func begin(_ pipeline: Pipeline, nowNs: UInt64) {
        startNs = nowNs
        lastNs = nowNs
        last = pipeline.snapshot()
    }

    /// Measures since the last decision and moves stages if the planner says so. Cheap when not due.
    /// A failed move is recorded in `moveFailure` (not thrown: the pipeline runs on), and `placement`
    /// follows the stages that did move, including one whose move timed out (it still lands).
    public mutating func step(_ pipeline: Pipeline, runtime: Runtime, nowNs: UInt64) {
        guard let handoff, moveFailure == nil else { return }
        let soon = check != nil && checkSoon
        let interval = lastCosts == nil || soon ? Self.firstIntervalNs : Self.intervalNs
        guard nowNs &- lastNs >= interval else { return }
        let now = pipeline.snapshot()
        let entered = now[0].items &- last[0].items
        guard entered >= (soon ? Self.itemsPerSoonCheck : Self.itemsPerDecision) else { return }
        let measured = zip(last, now).map { before, after in
            Double(after.cycles &- before.cycles) / Clock.cyclesPerNs / Double(entered)
        }
        last = now
        lastNs = nowNs
        // The busiest worker's measured ns per item: what bounds the rate where the stages are now.
        var load: [Int: Double] = [:]
        for (stage, worker) in placement.enumerated() { load[worker, default: 0] += measured[stage] }
        let bottleneck = load.values.max() ?? 0
        lastBottleneckNs = bottleneck
        let costs = PlacementCosts(
            stageNsPerItem: PlacementPlanner.localCosts(measured: measured, placement: placement,
                                                        handoffNsPerItem: handoff.handoffNsPerItem),
            handoffNsPerItem: handoff.handoffNsPerItem)
        lastCosts = costs
        if let check {
            self.check = nil
            checkSoon = false
            if bottleneck >= check.bottleneckNs {
                let undo = PlacementUndo(beforeNsPerItem: check.bottleneckNs, afterNsPerItem: bottleneck)
                move(pipeline, runtime: runtime, to: check.from, nowNs: nowNs, decision: check.decision, undone: undo)
                settled = true
                return
            }
        }
        let spent = changeCount &- changesAtReopen >= Self.changesMax
        if settled || spent { reopenIfChanged(costs: costs.stageNsPerItem, nowNs: nowNs) }
        // One worker: nothing to choose (the costs are kept for `workersWanted`).
        guard !settled, changeCount &- changesAtReopen < Self.changesMax, workers.count >= 2 else { return }
        let decision = planner.plan(costs: costs, workerCount: workers.count)
        if firstDecision == nil { firstDecision = decision }
        let local = placement.map { workers.firstIndex(of: $0)! }
        let target = decision.chosen.placement.map { workers[$0] }
        guard planner.shouldChange(from: local, to: decision, workerCount: workers.count), !avoided.contains(target)
        else { return }
        check = (placement, bottleneck, decision)
        move(pipeline, runtime: runtime, to: target, nowNs: nowNs, decision: decision, undone: nil)
    }

    /// Settled (or its moves count spent): passes over the first interval after settling (just
    /// after a move back), takes the next as what it settled on, and re-opens when `reopenIntervals`
    /// intervals in a row found one stage's cost moved the same way by `reopenCostChange` of the
    /// whole, `reopenAfterNs` after that at the earliest: clears `settled` and `avoided`, and starts
    /// the moves count again.
    private mutating func reopenIfChanged(costs: [Double], nowNs: UInt64) {
        guard let on = settledOn else {
            if settleSkips < 1 { settleSkips += 1 } else { (settledOn, settleSkips) = ((nowNs, costs), 0) }
            return
        }
        let whole = max(on.costs.reduce(0, +), 1e-9)
        let shifts = zip(costs, on.costs).map { ($0 - $1) / whole }
        // The stage that moved before still moving the same way continues the streak (several stages
        // moving alike trade places as the largest); otherwise the largest mover starts one.
        let largest = shifts.indices.max { abs(shifts[$0]) < abs(shifts[$1]) } ?? 0
        if let previous = reopenTrigger, abs(shifts[previous.stage]) >= Self.reopenCostChange,
           (shifts[previous.stage] > 0) == previous.up {
            reopenStreak += 1
        } else if abs(shifts[largest]) >= Self.reopenCostChange {
            (reopenStreak, reopenTrigger) = (1, (largest, shifts[largest] > 0))
        } else {
            (reopenStreak, reopenTrigger) = (0, nil)
        }
        let stage = reopenTrigger?.stage ?? largest
        let trigger = (stage: stage, up: shifts[stage] > 0)
        guard reopenStreak >= Self.reopenIntervals, nowNs >= on.ns &+ reopenAfterNs else { return }
        lastReopenWhy = "measured at stages \(on.costs.map { fixed($0, 1) }.joined(separator: "/")) ns/item; now "
            + "\(costs.map { fixed($0, 1) }.joined(separator: "/")): stage \(stage) \(trigger.up ? "rose" : "fell") by "
            + "\(fixed(abs(shifts[stage]) * 100, 0))% of the whole"
        (settled, settledOn, settleSkips, reopenStreak, reopenTrigger, avoided) = (false, nil, 0, 0, nil, [])
        changesAtReopen = changeCount
        reopenCount += 1
    }

    /// How many workers it can use now (`PlacementPlanner.workersWanted` on the last measured costs):
    /// one more than it holds only when the planner's best shape with one more would be moved to (its
    /// 10% margin), else the workers its stages use (any others it holds are slack). Settled, after a
    /// failed move or without a hand-off cost: the workers its stages use. nil before anything was measured.
    public func workersWanted() -> Int? {
        let used = Set(placement).count
        if settled || moveFailure != nil || handoff == nil { return used }
        guard let lastCosts else { return nil }
        return planner.workersWanted(costs: lastCosts, current: placement.map { workers.firstIndex(of: $0)! },
                                     holding: workers.count)
    }

    /// Gives the pipeline a new set of workers (a core moved between pipelines; control thread, may
    /// block in a move). Stages on a worker it no longer holds move now, to the planner's best
    /// placement over the new set by the last measured costs (all to the source's worker when none
    /// were measured). On a gained worker the planner decides now, and the stages move only for a
    /// gain above its margin; that move is checked after `firstIntervalNs` and `itemsPerSoonCheck`
    /// (undone when measured no faster), not a whole `intervalNs` later. Settled, it only leaves lost workers. Recorded in `changes` with the new workers,
    /// past `changesMax`; a move that fails leaves `workers` holding the workers its stages are on.
    public mutating func setWorkers(_ newWorkers: [Int], pipeline: Pipeline, runtime: Runtime, nowNs: UInt64) {
        precondition(!newWorkers.isEmpty && Set(newWorkers).count == newWorkers.count, "one or more distinct workers")
        var ordered = newWorkers.sorted()
        if let source = ordered.firstIndex(of: placement[0]) { ordered.insert(ordered.remove(at: source), at: 0) }
        workers = ordered
        (check, checkSoon) = (nil, false)
        guard moveFailure == nil else { return }
        let lost = placement.contains { !workers.contains($0) }
        let costs = lastCosts ?? PlacementCosts(stageNsPerItem: Array(repeating: 0, count: placement.count),
                                                handoffNsPerItem: handoff?.handoffNsPerItem ?? 0)
        let decision = planner.plan(costs: costs, workerCount: workers.count)
        let target = decision.chosen.placement.map { workers[$0] }
        if lost {
            move(pipeline, runtime: runtime, to: target, nowNs: nowNs, decision: decision, undone: nil, workersNow: workers)
            if moveFailure != nil { workers += Set(placement).subtracting(workers).sorted() }
            return
        }
        guard !settled, lastCosts != nil, handoff != nil, !avoided.contains(target),
              planner.shouldChange(from: placement.map { workers.firstIndex(of: $0)! }, to: decision, workerCount: workers.count)
        else { return }
        if let lastBottleneckNs { (check, checkSoon) = ((placement, lastBottleneckNs, decision), true) }
        move(pipeline, runtime: runtime, to: target, nowNs: nowNs, decision: decision, undone: nil, workersNow: workers)
    }

    /// Moves each stage not yet on its `target` worker and records the change; a failed move ends
    /// the re-deciding (`moveFailure`).
    private mutating func move(_ pipeline: Pipeline, runtime: Runtime, to target: [Int], nowNs: UInt64,
                               decision: PlacementDecision, undone: PlacementUndo?, workersNow: [Int]? = nil) {
        let from = placement
        for (stage, worker) in target.enumerated() where placement[stage] != worker {
            do throws(RuntimeError) {
                try runtime.move(pipeline.stages[stage], toWorker: worker)
                placement[stage] = worker
            } catch {
                if case .moveTimedOut = error { placement[stage] = worker }  // posted: it lands there
                moveFailure = error
                break
            }
        }
        if changes.count == Self.changesKept { changes.removeFirst() }
        changes.append(PlacementChange(atNs: nowNs &- startNs, from: from, to: placement, decision: decision,
                                       undone: undone, workersNow: workersNow))
        changeCount += 1
        // Costs measured across the move mix two placements: start the next interval afresh. What it
        // settled on was measured where the stages were: measure again (a core taken from it).
        last = pipeline.snapshot()
        lastNs = clock()
        (settledOn, settleSkips, reopenStreak, reopenTrigger) = (nil, 0, 0, nil)
    }
}
