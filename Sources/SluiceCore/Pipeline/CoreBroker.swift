// Path: Sources/SluiceCore/Pipeline/CoreBroker.swift — moving cores between pipelines by weight and
// measured demand.

/// One pipeline as the core broker sees it over one measurement interval.
public struct PipelineCoreDemand: Sendable, Equatable {
    public var name: String
    /// Its share of the cores when pipelines contend (relative to the others' weights); positive.
    public var weight: Double
    /// Worker indices the pipeline may run on now.
    public var workers: Set<Int>
    /// Measured work in cores over the interval: each stage's service time times its arrival rate
    /// (`StageLoad.coreShare`), summed.
    public var demandCores: Double
    /// Its input piles up: its source was pushed back by a full ring, or one of its rings grew.
    public var backlogged: Bool
    /// Its measured load on each of its workers, in cores (which worker it can best give away).
    public var loadByWorker: [Int: Double]
    /// False for a pipeline whose cores are fixed (stage cores given, placed by measured cost, drained).
    public var movable: Bool
    /// Most cores it can use: its stage count (a stage runs on one core at a time), or what its
    /// planner can use when placed by measured cost.
    public var usableWorkers: Int
    /// Placed by measured cost: its planner takes the cores it holds as its own, so it is given no core
    /// another such pipeline holds.
    public var measured: Bool

    public init(name: String, weight: Double, workers: Set<Int>, demandCores: Double, backlogged: Bool,
                loadByWorker: [Int: Double] = [:], movable: Bool = true, usableWorkers: Int = .max,
                measured: Bool = false) {
        precondition(weight > 0 && weight.isFinite, "a pipeline's weight is positive")
        self.name = name
        self.weight = weight
        self.workers = workers
        self.demandCores = demandCores
        self.backlogged = backlogged
        self.loadByWorker = loadByWorker
        self.movable = movable
        self.usableWorkers = usableWorkers
        self.measured = measured
    }

    /// Demand per core it holds: 1 means every core it has is busy.
    public var pressure: Double { demandCores / Double(max(workers.count, 1)) }
}

/// A worker (core) taken from one pipeline and given to another, and why.
public struct CoreMove: Sendable, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable, Equatable {
        /// The receiver needs more and the giver has slack (it stays under its low-water mark).
        case demand
        /// Both are busy: the receiver holds fewer cores than its weight's share, the giver more.
        case weight
    }

    public var worker: Int
    /// Pipeline indices (into the list given to `CoreBroker.propose`).
    public var from: Int
    public var to: Int
    public var reason: Reason
    /// The numbers behind it, for logs and `sluice stats`.
    public var detail: String

    public var description: String { detail }
}

/// Decides which core, if any, moves from a pipeline with slack to one that needs it, by measured
/// demand first and by weight when every pipeline is busy. Pure (no threads, no I/O), so it is tested
/// alone; the service applies its answer (the giver's stages leave the core, the receiver's rebalance
/// onto it, both through `Runtime.move`: nothing lost or reordered). One move per call at most: the
/// caller measures again before the next.
public struct CoreBroker: Sendable {
    public struct Configuration: Sendable, Equatable {
        /// A pipeline whose demand per held core reaches this needs another core.
        public var highWater = 0.85
        /// A pipeline may give a core only if its demand fits its other cores at this utilisation.
        public var lowWater = 0.6

        public init() {}
    }

    public let configuration: Configuration

    public init(configuration: Configuration = Configuration()) {
        precondition(configuration.lowWater > 0 && configuration.lowWater < configuration.highWater
                     && configuration.highWater <= 1, "0 < lowWater < highWater <= 1")
        self.configuration = configuration
    }

    /// The one move to make now, or nil. `workerCount`: all workers the pipelines share.
    public func propose(_ pipelines: [PipelineCoreDemand], workerCount: Int) -> CoreMove? {
        precondition(workerCount > 0, "at least one worker")
        let totalWeight = pipelines.reduce(0) { $0 + $1.weight }
        func share(_ p: Int) -> Double { Double(workerCount) * pipelines[p].weight / totalWeight }
        // Only a pipeline that can use another core asks for one: fewer cores than stages.
        func needs(_ p: Int) -> Bool {
            let pipeline = pipelines[p]
            return pipeline.movable && pipeline.workers.count < pipeline.usableWorkers
                && (pipeline.backlogged || pipeline.pressure >= configuration.highWater)
        }
        // Cores beyond its stage count are slack whatever its load.
        func hasSlack(_ p: Int) -> Bool {
            let pipeline = pipelines[p]
            guard pipeline.movable, pipeline.workers.count >= 2 else { return false }
            if pipeline.workers.count > pipeline.usableWorkers { return true }
            return !pipeline.backlogged && pipeline.demandCores <= Double(pipeline.workers.count - 1) * configuration.lowWater
        }
        // Furthest below its weighted share first; then the busiest.
        let receivers = pipelines.indices.filter(needs).sorted { a, b in
            let (ra, rb) = (Double(pipelines[a].workers.count) / share(a), Double(pipelines[b].workers.count) / share(b))
            return ra != rb ? ra < rb : pipelines[a].pressure > pipelines[b].pressure
        }
        for to in receivers {
            // A worker the giver holds and the receiver does not (nor, for a measured receiver, another
            // measured pipeline): the giver's least loaded one (on ties the highest index, so a
            // pipeline keeps its first core, where its source started).
            func spare(_ from: Int) -> Int? {
                let giver = pipelines[from]
                var taken = pipelines[to].workers
                if pipelines[to].measured {
                    for other in pipelines.indices where other != to && pipelines[other].measured {
                        taken.formUnion(pipelines[other].workers)
                    }
                }
                return giver.workers.subtracting(taken).sorted(by: >)
                    .min { (giver.loadByWorker[$0] ?? 0) < (giver.loadByWorker[$1] ?? 0) }
            }
            let slack = pipelines.indices.filter { $0 != to && hasSlack($0) && spare($0) != nil }
                .sorted { Double(pipelines[$0].workers.count) / share($0) > Double(pipelines[$1].workers.count) / share($1) }
            if let from = slack.first, let worker = spare(from) {
                return CoreMove(worker: worker, from: from, to: to, reason: .demand,
                                detail: "\(describe(to, pipelines, share: share(to))) needs a core; "
                                    + "\(describe(from, pipelines, share: share(from))) has slack")
            }
            // Everyone busy: cores follow the weights. A move must bring the two pipelines' core counts
            // closer to their weighted shares by at least half a core in all (so counts that straddle a
            // fractional share stay put instead of swapping back and forth).
            func distance(_ p: Int, _ count: Int) -> Double { abs(Double(count) - share(p)) }
            let have = pipelines[to].workers.count
            let over = pipelines.indices.filter { from in
                let give = pipelines[from].workers.count
                return from != to && pipelines[from].movable && give >= 2 && spare(from) != nil
                    && distance(from, give - 1) + distance(to, have + 1) <= distance(from, give) + distance(to, have) - 0.5
            }.sorted { Double(pipelines[$0].workers.count) - share($0) > Double(pipelines[$1].workers.count) - share($1) }
            if let from = over.first, let worker = spare(from) {
                return CoreMove(worker: worker, from: from, to: to, reason: .weight,
                                detail: "\(describe(to, pipelines, share: share(to))) needs a core and holds less than "
                                    + "its weighted share; \(describe(from, pipelines, share: share(from))) holds more")
            }
        }
        return nil
    }

    private func describe(_ p: Int, _ pipelines: [PipelineCoreDemand], share: Double) -> String {
        let pipeline = pipelines[p]
        let state = pipeline.backlogged ? ", input backing up" : ""
        return "\(pipeline.name) (demand \(Self.fixed(pipeline.demandCores)) cores on \(pipeline.workers.count)\(state), "
            + "weight \(Self.fixed(pipeline.weight)), weighted share \(Self.fixed(share)) cores)"
    }

    private static func fixed(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        let fraction = abs(hundredths % 100)
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
