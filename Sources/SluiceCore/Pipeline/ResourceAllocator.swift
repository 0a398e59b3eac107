// Path: Sources/SluiceCore/Pipeline/ResourceAllocator.swift — cores, rings and pools for pipelines.

/// What one pipeline asks for: a weight (its share when nothing is measured yet) and, once running,
/// the measured load of each stage.
public struct PipelineDemand: Sendable, Equatable {
    public var name: String
    public var weight: Double
    public var stages: [StageLoad]

    public init(name: String, weight: Double = 1, stages: [StageLoad]) {
        self.name = name
        self.weight = weight
        self.stages = stages
    }
}

/// Measured load of one stage. Zeros mean "not measured yet": the weight decides.
public struct StageLoad: Sendable, Equatable {
    /// Service time per item, in nanoseconds.
    public var serviceNsPerItem: Double
    /// Items per second arriving at the stage.
    public var arrivalPerSecond: Double
    /// Growth of the stage's input queue, in items per second (positive: falling behind).
    public var queueGrowthPerSecond: Double

    public init(serviceNsPerItem: Double = 0, arrivalPerSecond: Double = 0, queueGrowthPerSecond: Double = 0) {
        self.serviceNsPerItem = serviceNsPerItem
        self.arrivalPerSecond = arrivalPerSecond
        self.queueGrowthPerSecond = queueGrowthPerSecond
    }

    /// Share of one core the stage needs (service time times arrival rate).
    public var coreShare: Double { serviceNsPerItem * arrivalPerSecond / 1e9 }
}

/// Where each pipeline's stages run and how big its rings and pool are.
public struct Allocation: Sendable, Equatable {
    /// placement[p][s]: worker index for stage s of pipeline p.
    public var placement: [[Int]]
    /// ringCapacities[p][l]: capacity of link l (into stage l+1) of pipeline p; powers of two.
    public var ringCapacities: [[Int]]
    /// poolBufferCounts[p]: buffers for pipeline p (everything its rings and bursts can hold).
    public var poolBufferCounts: [Int]
    /// Estimated load of each worker, in core shares.
    public var workerLoad: [Double]

    public init(placement: [[Int]], ringCapacities: [[Int]], poolBufferCounts: [Int], workerLoad: [Double] = []) {
        self.placement = placement
        self.ringCapacities = ringCapacities
        self.poolBufferCounts = poolBufferCounts
        self.workerLoad = workerLoad
    }
}

/// A stage to move to rebalance load.
public struct StageMove: Sendable, Equatable {
    public var pipeline: Int
    public var stage: Int
    public var fromWorker: Int
    public var toWorker: Int
}

/// Assigns workers, ring capacities and pool sizes to pipelines from weights and measured load,
/// and proposes stage moves when load shifts. Pure: no threads, no I/O, so it is tested alone and
/// the `Runtime` applies its answers (`Runtime.move`).
public struct ResourceAllocator: Sendable {
    public struct Configuration: Sendable {
        public var workerCount: Int
        public var ringCapacityMin = 256
        public var ringCapacityMax = 65_536
        /// Ring capacity when nothing is measured, for a pipeline of average weight.
        public var ringCapacityDefault = 1_024
        /// Rings are sized to hold this much time of arrivals (absorbs a stall of this length).
        public var bufferingNs: Double = 1_000_000
        public var burstCount = 32
        /// Rebalance only when the busiest worker exceeds the idlest by more than this share of a core.
        public var imbalanceThreshold = 0.2

        public init(workerCount: Int) { self.workerCount = workerCount }
    }

    public let configuration: Configuration

    public init(configuration: Configuration) {
        precondition(configuration.workerCount > 0, "an allocation needs at least one worker")
        precondition(configuration.ringCapacityMin > 0 && configuration.ringCapacityMin.nonzeroBitCount == 1,
                     "ringCapacityMin must be a power of two")
        precondition(configuration.ringCapacityMax <= Limits.ringCapacityMax, "ringCapacityMax above Limits")
        self.configuration = configuration
    }

    /// A fresh allocation. Stages are placed heaviest first on the least-loaded worker (LPT), preferring
    /// the worker of the previous stage of the same pipeline on ties, so light pipelines run to
    /// completion on one core.
    public func plan(_ demands: [PipelineDemand]) -> Allocation {
        let loads = estimatedLoads(demands)
        var workerLoad = [Double](repeating: 0, count: configuration.workerCount)
        var placement = demands.map { [Int](repeating: 0, count: $0.stages.count) }
        let order = loads.indices.flatMap { p in loads[p].indices.map { (p, $0) } }
            .sorted { loads[$0.0][$0.1] > loads[$1.0][$1.1] }
        var placed = demands.map { [Bool](repeating: false, count: $0.stages.count) }
        for (p, s) in order {
            let neighbour = s > 0 && placed[p][s - 1] ? placement[p][s - 1] : nil
            let best = workerLoad.indices.min { a, b in
                let (la, lb) = (workerLoad[a], workerLoad[b])
                if abs(la - lb) > 1e-9 { return la < lb }
                if a == neighbour { return true }
                if b == neighbour { return false }
                return a < b
            }!
            placement[p][s] = best
            placed[p][s] = true
            workerLoad[best] += loads[p][s]
        }
        let rings = demands.indices.map { ringCapacities(for: demands[$0], totalWeight: totalWeight(demands)) }
        let pools = rings.map { capacities in
            capacities.reduce(0, +) + configuration.burstCount * (capacities.count + 1)
        }
        return Allocation(placement: placement, ringCapacities: rings, poolBufferCounts: pools,
                          workerLoad: workerLoad)
    }

    /// Moves that bring the busiest worker closer to the idlest, given fresh measurements, applied
    /// greedily one stage at a time while each move lowers the load of the worker it leaves below
    /// where it was, by more than the imbalance threshold. Few moves, never a reshuffle.
    /// Only measured load counts (a stage that did nothing in the interval weighs nothing, so a quiet
    /// pause moves nothing). `allowedWorkers[p]` limits where pipeline p's stages may go (nil: any);
    /// stages of pipelines in `frozen` stay where they are but their load counts.
    public func rebalance(_ current: Allocation, measured demands: [PipelineDemand],
                          allowedWorkers: [Set<Int>]? = nil, frozen: Set<Int> = []) -> [StageMove] {
        let loads = demands.map { $0.stages.map(\.coreShare) }
        var placement = current.placement
        var moves: [StageMove] = []
        let everyWorker = Set(0..<configuration.workerCount)
        for _ in 0..<(demands.reduce(0) { $0 + $1.stages.count }) {
            var workerLoad = [Double](repeating: 0, count: configuration.workerCount)
            for p in placement.indices { for s in placement[p].indices { workerLoad[placement[p][s]] += loads[p][s] } }
            // The busiest worker that has a stage worth moving; its stage whose move leaves the lowest
            // maximum of the two workers, to the idlest worker that stage may use.
            var best: (p: Int, s: Int, to: Int, newMax: Double)?
            for from in workerLoad.indices.sorted(by: { workerLoad[$0] > workerLoad[$1] }) {
                for p in placement.indices where !frozen.contains(p) {
                    let targets = (allowedWorkers?[p] ?? everyWorker).subtracting([from])
                    // Sorted: among equally idle workers the lowest index, the same every run.
                    guard let to = targets.sorted().min(by: { workerLoad[$0] < workerLoad[$1] }),
                          workerLoad[from] - workerLoad[to] > configuration.imbalanceThreshold else { continue }
                    for s in placement[p].indices where placement[p][s] == from && loads[p][s] > 0 {
                        let newMax = max(workerLoad[from] - loads[p][s], workerLoad[to] + loads[p][s])
                        if newMax < workerLoad[from] - 1e-9, newMax < best?.newMax ?? .infinity { best = (p, s, to, newMax) }
                    }
                }
                if best != nil { break }
            }
            guard let best else { break }
            moves.append(StageMove(pipeline: best.p, stage: best.s, fromWorker: placement[best.p][best.s], toWorker: best.to))
            placement[best.p][best.s] = best.to
        }
        return moves
    }

    private func totalWeight(_ demands: [PipelineDemand]) -> Double {
        max(demands.reduce(0) { $0 + max($1.weight, 0) }, .leastNonzeroMagnitude)
    }

    /// Core share per stage: measured where available, else the pipeline's weight share of all
    /// workers, split evenly over its stages.
    private func estimatedLoads(_ demands: [PipelineDemand]) -> [[Double]] {
        let total = totalWeight(demands)
        return demands.map { demand in
            let share = Double(configuration.workerCount) * max(demand.weight, 0) / total / Double(max(demand.stages.count, 1))
            return demand.stages.map { $0.coreShare > 0 ? $0.coreShare : share }
        }
    }

    /// Each link holds `bufferingNs` of arrivals (doubled if its queue is growing), as a power of two
    /// within bounds; unmeasured links get the default scaled by the pipeline's weight.
    private func ringCapacities(for demand: PipelineDemand, totalWeight: Double) -> [Int] {
        let c = configuration
        let averageWeight = totalWeight / Double(max(1, c.workerCount))
        return demand.stages.dropFirst().map { stage in
            var wanted: Double
            if stage.arrivalPerSecond > 0 {
                wanted = stage.arrivalPerSecond * c.bufferingNs / 1e9
                if stage.queueGrowthPerSecond > 0 { wanted *= 2 }
            } else {
                wanted = Double(c.ringCapacityDefault) * max(demand.weight, 0) / max(averageWeight, 1e-9)
            }
            let clamped = min(max(Int(wanted.rounded(.up)), c.ringCapacityMin), c.ringCapacityMax)
            return clamped.nonzeroBitCount == 1 ? clamped : 1 << (Int.bitWidth - clamped.leadingZeroBitCount)
        }
    }
}

extension StageLoad {
    /// Measured load of each stage between two `Pipeline.snapshot()`s taken `intervalNs` apart.
    public static func between(_ before: [StageSnapshot], _ after: [StageSnapshot],
                               intervalNs: UInt64) -> [StageLoad] {
        zip(before, after).map { earlier, later in
            let items = Double(later.items &- earlier.items)
            let seconds = Double(max(intervalNs, 1)) / 1e9
            let serviceNs = items > 0 ? Double(later.cycles &- earlier.cycles) / Clock.cyclesPerNs / items : 0
            return StageLoad(serviceNsPerItem: serviceNs, arrivalPerSecond: items / seconds,
                             queueGrowthPerSecond: (Double(later.queued) - Double(earlier.queued)) / seconds)
        }
    }
}

/// Plain copy of a stage's counters and its input queue.
public struct StageSnapshot: Sendable, Equatable {
    public var calls, items, filtered, cycles, blockedTurns, wakeups: UInt64
    public var queued: Int

    /// The same stage of another instance added in (fanned-out instances' totals).
    public func adding(_ other: StageSnapshot) -> StageSnapshot {
        StageSnapshot(calls: calls &+ other.calls, items: items &+ other.items, filtered: filtered &+ other.filtered,
                      cycles: cycles &+ other.cycles, blockedTurns: blockedTurns &+ other.blockedTurns,
                      wakeups: wakeups &+ other.wakeups, queued: queued + other.queued)
    }
}

extension Pipeline {
    /// Counters of every stage, source first.
    public func snapshot() -> [StageSnapshot] {
        stages.map { stage in
            StageSnapshot(calls: stage.counters.calls.load(ordering: .relaxed),
                          items: stage.counters.items.load(ordering: .relaxed),
                          filtered: stage.counters.filtered.load(ordering: .relaxed),
                          cycles: stage.counters.cycles.load(ordering: .relaxed),
                          blockedTurns: stage.counters.blockedTurns.load(ordering: .relaxed),
                          wakeups: stage.counters.wakeups.load(ordering: .relaxed),
                          queued: stage.inputLink?.observer.count ?? 0)
        }
    }
}
