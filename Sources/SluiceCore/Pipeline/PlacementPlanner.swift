// Path: Sources/SluiceCore/Pipeline/PlacementPlanner.swift — chooses where a pipeline's stages run
// from what they measurably cost, instead of a fixed rule.

/// What a placement decision is made from: each stage's cost when its neighbours share its core,
/// and what handing an item to another core costs each side.
public struct PlacementCosts: Sendable, Equatable {
    /// Nanoseconds per item that entered the pipeline, per stage (source first), measured with the
    /// stage's neighbours on its own core (or corrected to that, `PlacementPlanner.localCosts`).
    public var stageNsPerItem: [Double]
    /// Extra nanoseconds each side pays per item that crosses between two cores (`HandoffCost`).
    public var handoffNsPerItem: Double

    public init(stageNsPerItem: [Double], handoffNsPerItem: Double) {
        self.stageNsPerItem = stageNsPerItem
        self.handoffNsPerItem = handoffNsPerItem
    }
}

/// A placement the planner considered, with its predicted rate.
public struct PlacementChoice: Sendable, Equatable, CustomStringConvertible {
    /// placement[s]: worker index of stage s. Stages keep their order: each worker runs one
    /// contiguous run of stages.
    public var placement: [Int]
    /// Items per second the busiest worker allows.
    public var predictedItemsPerSecond: Double
    /// Predicted nanoseconds per item on each worker used.
    public var workerNsPerItem: [Double]

    public var coresUsed: Int { Set(placement).count }

    /// "run to completion on 1 core" or "pipelined over 2 cores [0,1,1]", and the predicted rate.
    public var description: String {
        let shape = coresUsed == 1 ? "run to completion on 1 core" : "pipelined over \(coresUsed) cores \(placement)"
        return "\(shape), predicted \(formatRate(predictedItemsPerSecond))"
    }
}

/// Why the planner chose what it chose: the winner, the best of every other shape, and the costs.
public struct PlacementDecision: Sendable, Equatable, CustomStringConvertible {
    public var chosen: PlacementChoice
    /// The best candidate of each core count other than the chosen one.
    public var alternatives: [PlacementChoice]
    public var costs: PlacementCosts

    public var description: String {
        let stages = costs.stageNsPerItem.map { fixed($0, 1) }.joined(separator: "/")
        let others = alternatives.map(\.description).joined(separator: "; ")
        return "\(chosen) (stages \(stages) ns/item, hand-off \(fixed(costs.handoffNsPerItem, 1)) ns/item"
            + (others.isEmpty ? ")" : "; not: \(others))")
    }
}

/// Picks, for one pipeline and a set of workers, the contiguous split of its stages over at most
/// that many workers whose busiest worker is cheapest per item: all stages on one worker (run to
/// completion) when hand-offs cost more than they spread, pipelined when a stage is heavy enough.
/// Pure: no threads, no I/O.
public struct PlacementPlanner: Sendable {
    /// A split that uses more cores must predict at least this much more throughput (0.05: 5%):
    /// a core saved is worth a little rate, and measurements wobble.
    public var moreCoresMargin: Double
    /// A new decision replaces the running placement only if it predicts this much more (0.1: 10%).
    public var changeMargin: Double

    public init(moreCoresMargin: Double = 0.05, changeMargin: Double = 0.10) {
        precondition(moreCoresMargin >= 0 && changeMargin >= 0, "margins are fractions >= 0")
        self.moreCoresMargin = moreCoresMargin
        self.changeMargin = changeMargin
    }

    /// Predicted per-item cost on each worker of `placement` (worker indices `0..<workerCount`).
    public static func workerLoads(_ placement: [Int], costs: PlacementCosts, workerCount: Int) -> [Double] {
        precondition(placement.count == costs.stageNsPerItem.count, "one worker per stage")
        var load = [Double](repeating: 0, count: workerCount)
        for (stage, worker) in placement.enumerated() {
            precondition(worker >= 0 && worker < workerCount, "placement names a worker that does not exist")
            load[worker] += max(costs.stageNsPerItem[stage], 0)
            if stage > 0, placement[stage - 1] != worker {
                load[worker] += costs.handoffNsPerItem
                load[placement[stage - 1]] += costs.handoffNsPerItem
            }
        }
        return load
    }

    /// The choice `placement` amounts to under `costs`.
    public static func evaluate(_ placement: [Int], costs: PlacementCosts, workerCount: Int) -> PlacementChoice {
        let loads = workerLoads(placement, costs: costs, workerCount: workerCount)
        let busiest = loads.max() ?? 0
        let used = Set(placement).sorted().map { loads[$0] }
        return PlacementChoice(placement: placement, predictedItemsPerSecond: busiest > 0 ? 1e9 / busiest : .infinity,
                               workerNsPerItem: used)
    }

    /// The best contiguous split of the stages over at most `workerCount` workers. The source stays
    /// on worker 0 (it owns the input); further groups take workers 1, 2, ... in order.
    public func plan(costs: PlacementCosts, workerCount: Int) -> PlacementDecision {
        let stageCount = costs.stageNsPerItem.count
        precondition(stageCount >= 1 && workerCount >= 1, "a plan needs a stage and a worker")
        precondition(stageCount <= Limits.pipelineStageCountMax, "more stages than a pipeline may have")
        var bestByCores: [Int: PlacementChoice] = [:]
        // Each subset of the stageCount-1 boundaries is a split; cuts beyond the worker count are skipped.
        for cuts in 0..<(1 << (stageCount - 1)) where cuts.nonzeroBitCount < workerCount {
            var placement = [0]
            for boundary in 0..<(stageCount - 1) {
                placement.append(placement[boundary] + ((cuts >> boundary) & 1))
            }
            let choice = Self.evaluate(placement, costs: costs, workerCount: workerCount)
            let cores = choice.coresUsed
            if choice.predictedItemsPerSecond > bestByCores[cores]?.predictedItemsPerSecond ?? -1 {
                bestByCores[cores] = choice
            }
        }
        // Fewest cores first; take more only for a clear gain.
        let ordered = bestByCores.keys.sorted().map { bestByCores[$0]! }
        var chosen = ordered[0]
        for candidate in ordered.dropFirst()
        where candidate.predictedItemsPerSecond > chosen.predictedItemsPerSecond * (1 + moreCoresMargin) {
            chosen = candidate
        }
        return PlacementDecision(chosen: chosen, alternatives: ordered.filter { $0 != chosen }, costs: costs)
    }

    /// Whether to move from `current` to `decision.chosen`: only for a gain above `changeMargin`.
    public func shouldChange(from current: [Int], to decision: PlacementDecision, workerCount: Int) -> Bool {
        guard current != decision.chosen.placement else { return false }
        let now = Self.evaluate(current, costs: decision.costs, workerCount: workerCount)
        return decision.chosen.predictedItemsPerSecond > now.predictedItemsPerSecond * (1 + changeMargin)
    }

    /// How many workers a pipeline placed at `current` (indices among the `holding` workers it holds)
    /// can use under `costs`: `holding + 1` when the best plan over one more worker uses it and would
    /// be moved to (`shouldChange`: the same margin a move needs, so a core asked for is a core used),
    /// else the workers `current` uses (those it holds beyond them are slack).
    public func workersWanted(costs: PlacementCosts, current: [Int], holding: Int) -> Int {
        precondition(holding >= 1 && current.allSatisfy { $0 >= 0 && $0 < holding }, "current uses the workers held")
        let used = Set(current).count
        let decision = plan(costs: costs, workerCount: holding + 1)
        guard decision.chosen.coresUsed > holding, shouldChange(from: current, to: decision, workerCount: holding + 1)
        else { return used }
        return holding + 1
    }

    /// Per-stage costs as if each stage's neighbours shared its core, from costs measured under
    /// `placement`: a stage that handed items across cores paid `handoffNsPerItem` per crossing.
    public static func localCosts(measured: [Double], placement: [Int], handoffNsPerItem: Double) -> [Double] {
        precondition(measured.count == placement.count, "one measurement per stage")
        return measured.indices.map { stage in
            var crossings = 0
            if stage > 0, placement[stage - 1] != placement[stage] { crossings += 1 }
            if stage + 1 < placement.count, placement[stage + 1] != placement[stage] { crossings += 1 }
            return max(measured[stage] - Double(crossings) * handoffNsPerItem, 0)
        }
    }
}

/// "14.2 Mpps"-style rate for people.
func formatRate(_ itemsPerSecond: Double) -> String {
    guard itemsPerSecond.isFinite else { return "unbounded" }
    if itemsPerSecond >= 1e6 { return "\(fixed(itemsPerSecond / 1e6, 2)) M items/s" }
    if itemsPerSecond >= 1e3 { return "\(fixed(itemsPerSecond / 1e3, 1)) k items/s" }
    return "\(fixed(itemsPerSecond, 0)) items/s"
}

/// `value` with `digits` decimals (no Foundation in this module).
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int64((abs(value) * scale).rounded())
    let whole = scaled / Int64(scale)
    let fraction = String(scaled % Int64(scale))
    let padded = String(repeating: "0", count: max(digits - fraction.count, 0)) + fraction
    return (value < 0 && scaled != 0 ? "-" : "") + (digits == 0 ? "\(whole)" : "\(whole).\(padded)")
}
