// Path: Sources/SluiceScheduling/Simulator.swift — a discrete-event simulation (one-minute steps) of
// hosts, production traffic and migration requests, run under Sluice's scheduler and its anchors.

#if canImport(Glibc)
import Glibc
#endif

/// Everything a simulation is made from; the same config and seed give the same run.
public struct SimulationConfig: Sendable, Equatable {
    public var hosts = 1000
    public var vms = 20_000
    /// History the forecasters learn from before the measured span (no requests then).
    public var warmupMinutes = ScheduleLimits.minutesPerWeek
    public var measuredMinutes = ScheduleLimits.minutesPerWeek
    public var requests = 5000
    public var linkBytesPerSecond = 1.25e9  // 10 Gbit/s
    public var migrationSlots = 2
    public var hostMemoryBytes = 1024.0 * 1_073_741_824
    /// QEMU's max-bandwidth for the anchors, and the most Sluice books for one move.
    public var maxMigrationBandwidth = 625e6
    /// The share of a link a migration stream keeps against production (TCP fairness): when production
    /// leaves less, the move takes this much and production waits.
    public var fairShare = 0.1
    /// Sluice plans for production at this one-sided confidence of its forecast (then at 0.5 for a
    /// request that fits nowhere at it).
    public var confidence = 0.9
    /// Window lengths of requests, minutes.
    public var windowMinutes: ClosedRange<Int> = 120...2160
    public var candidatesPerRequest = 3
    public var replanEveryMinutes = 60
    /// Refused requests are planned again this often while their window is open.
    public var retryEveryMinutes = 15
    /// The off-peak anchor starts every move at this minute of the day (02:00).
    public var offPeakMinuteOfDay = 120
    /// How far a VM's actual dirty rate strays from what its agent reported (log-normal sigma).
    public var dirtyRateError = 0.1
    public var pattern = TracePattern()
    public var seed: UInt64 = 1

    public init() {}
}

/// Who decides when moves start.
public enum SimulationPolicy: String, Sendable, CaseIterable {
    /// Sluice: forecasts, the duration model, bookings.
    case sluice
    /// The same scheduler with perfect knowledge of traffic and dirty rates.
    case oracle
    /// Anchor: start each move when it arrives (FIFO behind the slot limit), at QEMU's max-bandwidth.
    case startAtOnce = "start-at-once"
    /// Anchor: start every move at the next off-peak hour (FIFO behind the slot limit).
    case offPeak = "off-peak"
}

/// What happened to one request.
public struct RequestOutcome: Sendable, Equatable {
    public var requestID: Int
    public var met: Bool
    public var refused: Bool
    public var start: Int?
    /// Seconds from the epoch.
    public var finishSecond: Double?
    public var predictedSeconds: Double?
    public var actualSeconds: Double?
    public var method: ConvergenceMethod?
    /// Why the scheduler refused it (per candidate destination at the window's first start).
    public var refusal: [String] = []
}

public struct SimulationResult: Sendable {
    public var policy: SimulationPolicy
    public var outcomes: [RequestOutcome]
    /// Production bytes that waited because a migration held the link (summed over hosts).
    public var productionDelayedBytes: Double
    public var replans: Int
    /// Per host, MAPE of the production forecast made 60 minutes ahead (Sluice only).
    public var forecastMAPE: [Double]
    public var wallSeconds: Double

    public var met: Int { outcomes.filter(\.met).count }
    public var refused: Int { outcomes.filter(\.refused).count }
    /// Completed moves whose actual duration was within 10 % of the prediction, as a fraction.
    public var predictedWithin10Percent: Double? {
        let timed = outcomes.compactMap { o -> Double? in
            guard let p = o.predictedSeconds, let a = o.actualSeconds, p > 0 else { return nil }
            return abs(a - p) / p
        }
        return timed.isEmpty ? nil : Double(timed.filter { $0 <= 0.1 }.count) / Double(timed.count)
    }
}

/// The world a simulation runs in: traces, VMs and requests, generated once from the config so that
/// every policy sees the same.
public struct SimulationWorld: Sendable {
    public struct VM: Sendable {
        public var host: Int
        public var demand: MigrationDemand
        public var actualDirtyBytesPerSecond: Double
    }

    public let config: SimulationConfig
    public let traces: ProductionTraces
    public let vms: [VM]
    /// Requests by arrival minute (ascending); `id` indexes this array.
    public let requests: [MigrationRequest]
    public let arrivals: [Int]
    public let initialFreeMemory: [Double]

    public init(config: SimulationConfig) {
        precondition(config.hosts >= 2 && config.hosts <= ScheduleLimits.hostCountMax, "hosts \(config.hosts)")
        precondition(config.requests <= config.vms && config.requests <= ScheduleLimits.requestCountMax, "requests \(config.requests)")
        precondition(config.candidatesPerRequest >= 1 && config.candidatesPerRequest < config.hosts, "candidates")
        self.config = config
        let total = config.warmupMinutes + config.measuredMinutes
        traces = ProductionTraces.generate(capacities: Array(repeating: config.linkBytesPerSecond, count: config.hosts),
                                           minutes: total + ScheduleLimits.horizonMinutesMax, pattern: config.pattern,
                                           seed: config.seed)
        var random = SplitMix64(seed: config.seed &+ 0x5EED)
        var free = Array(repeating: config.hostMemoryBytes, count: config.hosts)
        var vms: [VM] = []
        vms.reserveCapacity(config.vms)
        let gib = 1_073_741_824.0
        for index in 0..<config.vms {
            let memory = (4 * pow(2, random.uniform(0...5))).rounded() * gib  // 4...128 GiB, log-uniform
            var host = index % config.hosts
            if free[host] < memory { host = free.indices.max { free[$0] < free[$1] }! }
            free[host] -= memory
            let busy = random.unit() < 0.1
            let reported = busy ? random.uniform(100e6...400e6) : random.uniform(1e6...30e6)
            let demand = MigrationDemand(memoryBytes: memory, dirtyBytesPerSecond: reported,
                                         workingSetBytes: memory * random.uniform(0.1...0.5),
                                         downtimeLimitSeconds: 0.3, maxBandwidth: config.maxMigrationBandwidth)
            vms.append(VM(host: host, demand: demand,
                          actualDirtyBytesPerSecond: reported * exp(config.dirtyRateError * random.normal())))
        }
        self.vms = vms
        initialFreeMemory = free
        var arrivals = (0..<config.requests).map { _ in config.warmupMinutes + random.int(0..<config.measuredMinutes) }
        arrivals.sort()
        var chosen = Set<Int>()
        var requests: [MigrationRequest] = []
        for (id, arrival) in arrivals.enumerated() {
            var vm = random.int(0..<config.vms)
            while chosen.contains(vm) { vm = random.int(0..<config.vms) }
            chosen.insert(vm)
            let source = vms[vm].host
            var candidates: [Int] = []
            while candidates.count < config.candidatesPerRequest {
                let host = random.int(0..<config.hosts)
                if host != source && !candidates.contains(host) { candidates.append(host) }
            }
            let window = random.int(config.windowMinutes.lowerBound..<(config.windowMinutes.upperBound + 1))
            requests.append(MigrationRequest(id: id, vm: "vm\(vm)", source: source, candidates: candidates,
                                             earliestStart: arrival, deadline: arrival + window, priority: 0,
                                             demand: vms[vm].demand,
                                             allowance: ConvergenceAllowance(autoConverge: true, postcopy: random.unit() < 0.5)))
        }
        self.requests = requests
        self.arrivals = arrivals
    }

    public func vmIndex(_ request: MigrationRequest) -> Int { Int(request.vm.dropFirst(2))! }
}

/// Production as it will be: the oracle's outlook.
public struct TraceOutlook: ProductionOutlook, Sendable {
    public let traces: ProductionTraces
    public func plannedProduction(host: Int, minute: Int, confidence: Double) -> Double {
        minute < traces.minutes ? traces.value(host: host, minute: minute) : 0
    }
}

public enum Simulator {
    /// Runs `world` under `policy`. Single-threaded; allocation per request and per move, not per minute.
    public static func run(_ world: SimulationWorld, policy: SimulationPolicy) -> SimulationResult {
        let config = world.config
        let began = monotonicSeconds()
        let hostResources = Array(repeating: HostResources(linkBytesPerSecond: config.linkBytesPerSecond,
                                                           migrationSlots: config.migrationSlots,
                                                           memoryBytes: config.hostMemoryBytes), count: config.hosts)
        var parameters = MigrationScheduler.Parameters()
        parameters.confidences = config.confidence > 0.5 ? [config.confidence, 0.5] : [config.confidence]
        var scheduler = MigrationScheduler(hosts: hostResources, now: config.warmupMinutes, parameters: parameters)
        // Sluice's view: a monitor per host (short series: the simulator needs only the forecasts).
        var outlook = ResourceMonitor(hosts: hostResources, seriesCapacity: 60)
        let oracle = TraceOutlook(traces: world.traces)
        var free = world.initialFreeMemory
        var outcomes = world.requests.map { RequestOutcome(requestID: $0.id, met: false, refused: false) }
        var requestsByID: [Int: MigrationRequest] = [:]

        struct Running {
            var requestID: Int
            var source: Int
            var destination: Int
            var start: Int
            var progress: MoveProgress
            var booking: Booking?
        }
        var running: [Running] = []
        var queue: [Int] = []  // anchors: FIFO of request ids, each with its earliest start
        var retry: [Int] = []  // Sluice and the oracle: refused requests tried again while their window is open
        var slotsInUse = Array(repeating: 0, count: config.hosts)
        var used = Array(repeating: 0.0, count: config.hosts)
        var delayed = 0.0
        var replans = 0
        var nextArrival = 0
        let end = config.warmupMinutes + config.measuredMinutes

        for minute in 0..<end {
            if policy == .sluice {
                for host in 0..<config.hosts {
                    outlook.record(host: host, minute: minute, productionBytesPerSecond: world.traces.value(host: host, minute: minute),
                                   freeMemoryBytes: free[host], slotsInUse: scheduler.table.slots(host: host, minute: minute))
                }
            }
            guard minute >= config.warmupMinutes else { continue }
            scheduler.advance(to: minute)
            for host in 0..<config.hosts { scheduler.observeFreeMemory(host: host, bytes: free[host]) }

            // Arrivals.
            while nextArrival < world.requests.count && world.arrivals[nextArrival] <= minute {
                var request = world.requests[nextArrival]
                nextArrival += 1
                switch policy {
                case .sluice, .oracle:
                    if policy == .oracle {
                        request.demand.dirtyBytesPerSecond = world.vms[world.vmIndex(request)].actualDirtyBytesPerSecond
                    }
                    requestsByID[request.id] = request
                    let outcome = policy == .oracle
                        ? scheduler.plan(request, now: minute, outlook: oracle)
                        : scheduler.plan(request, now: minute, outlook: outlook)
                    if case .refused(let verdicts) = outcome {
                        outcomes[request.id].refused = true
                        outcomes[request.id].refusal = verdicts.map(\.description)
                        retry.append(request.id)
                    }
                case .startAtOnce:
                    queue.append(request.id)
                case .offPeak:
                    queue.append(request.id)
                }
            }
            if policy == .sluice, (minute - config.warmupMinutes) % config.replanEveryMinutes == 0 {
                replans += scheduler.replan(now: minute, requests: requestsByID, outlook: outlook).count
            }
            // A request refused for what may free up (memory, slots, a busy link) is tried again.
            if (policy == .sluice || policy == .oracle), (minute - config.warmupMinutes) % config.retryEveryMinutes == 0 {
                var still: [Int] = []
                for id in retry where world.requests[id].deadline > minute {
                    let request = requestsByID[id]!
                    let outcome = policy == .oracle
                        ? scheduler.plan(request, now: minute, outlook: oracle)
                        : scheduler.plan(request, now: minute, outlook: outlook)
                    if case .booked = outcome { outcomes[id].refused = false; outcomes[id].refusal = [] } else { still.append(id) }
                }
                retry = still
            }

            // Starts.
            switch policy {
            case .sluice, .oracle:
                // In request order: the order of `running` decides which move takes what production leaves first.
                for booking in scheduler.bookings.values.filter({ $0.start == minute }).sorted(by: { $0.requestID < $1.requestID }) {
                    let request = world.requests[booking.requestID]
                    let vm = world.vms[world.vmIndex(request)]
                    // Sluice turns auto-converge on whenever the VM allows it: a guest that dirties faster than
                    // reported is throttled instead of missing its window.
                    let progress = MoveProgress(demand: request.demand,
                                                method: booking.prediction.method == .postcopy ? .postcopy : .precopy,
                                                autoConverge: request.allowance.autoConverge,
                                                maxThrottle: request.allowance.maxThrottle,
                                                dirtyBytesPerSecond: vm.actualDirtyBytesPerSecond)
                    running.append(Running(requestID: booking.requestID, source: booking.source, destination: booking.destination,
                                           start: minute, progress: progress, booking: booking))
                    free[booking.destination] -= request.demand.memoryBytes
                    outcomes[booking.requestID].start = minute
                    outcomes[booking.requestID].predictedSeconds = booking.prediction.totalSeconds
                    outcomes[booking.requestID].method = booking.prediction.method
                }
            case .startAtOnce, .offPeak:
                var waiting: [Int] = []
                for id in queue {
                    let request = world.requests[id]
                    let opens = policy == .offPeak ? nextOffPeak(after: request.earliestStart, config: config) : request.earliestStart
                    guard minute >= opens, minute < request.deadline, slotsInUse[request.source] < config.migrationSlots,
                          let destination = request.candidates.first(where: {
                              slotsInUse[$0] < config.migrationSlots && free[$0] >= request.demand.memoryBytes }) else {
                        if minute < request.deadline { waiting.append(id) }
                        continue
                    }
                    let vm = world.vms[world.vmIndex(request)]
                    running.append(Running(requestID: id, source: request.source, destination: destination, start: minute,
                                           progress: MoveProgress(demand: request.demand, method: .precopy, autoConverge: false,
                                                                  dirtyBytesPerSecond: vm.actualDirtyBytesPerSecond),
                                           booking: nil))
                    slotsInUse[request.source] += 1
                    slotsInUse[destination] += 1
                    free[destination] -= request.demand.memoryBytes
                    outcomes[id].start = minute
                    outcomes[id].method = .precopy
                }
                queue = waiting
            }

            // One minute of every running move, in start order; production keeps what the moves leave.
            for host in used.indices { used[host] = 0 }
            var index = 0
            while index < running.count {
                var move = running[index]
                let request = world.requests[move.requestID]
                var cap = config.maxMigrationBandwidth
                if let booking = move.booking {
                    let offset = minute - booking.start
                    if offset < booking.rates.count {
                        cap = booking.rates[offset]
                    } else {
                        // Behind its booking: it gets what the outlook leaves free now (at least the minimum),
                        // and the scheduler holds that for it.
                        let free = policy == .oracle
                            ? min(scheduler.freeBandwidth(host: move.source, minute: minute, outlook: oracle),
                                  scheduler.freeBandwidth(host: move.destination, minute: minute, outlook: oracle))
                            : min(scheduler.freeBandwidth(host: move.source, minute: minute, outlook: outlook),
                                  scheduler.freeBandwidth(host: move.destination, minute: minute, outlook: outlook))
                        cap = min(config.maxMigrationBandwidth, max(scheduler.parameters.minimumRate, free))
                    }
                }
                var rate = cap
                for host in [move.source, move.destination] {
                    let left = config.linkBytesPerSecond - world.traces.value(host: host, minute: minute) - used[host]
                    rate = min(rate, max(left, config.fairShare * config.linkBytesPerSecond))
                }
                used[move.source] += rate
                used[move.destination] += rate
                if let booking = move.booking, minute - booking.start >= booking.rates.count {
                    scheduler.extend(move.requestID, minute: minute, rate: rate)
                }
                let done = move.progress.advance(rate: rate, seconds: 60)
                // A move still running at its deadline has missed its window: it is cancelled (QEMU would go on;
                // the window is lost either way) and the source keeps the VM.
                let overdue = minute + 1 >= request.deadline
                if let done {
                    let finish = Double(minute) * 60 + done
                    outcomes[move.requestID].finishSecond = finish
                    outcomes[move.requestID].actualSeconds = finish - Double(move.start) * 60
                    outcomes[move.requestID].met = finish <= Double(request.deadline) * 60
                    free[move.source] += request.demand.memoryBytes
                } else if overdue {
                    free[move.destination] += request.demand.memoryBytes
                }
                if done != nil || overdue {
                    if move.booking != nil { scheduler.release(move.requestID) } else {
                        slotsInUse[move.source] -= 1
                        slotsInUse[move.destination] -= 1
                    }
                    running.remove(at: index)
                } else {
                    running[index] = move
                    index += 1
                }
            }
            for host in used.indices where used[host] > 0 {
                let production = world.traces.value(host: host, minute: minute)
                delayed += min(used[host], max(0, production + used[host] - config.linkBytesPerSecond)) * 60
            }
        }
        let mape = policy == .sluice ? (0..<config.hosts).compactMap { outlook.forecastError(host: $0) } : []
        return SimulationResult(policy: policy, outcomes: outcomes, productionDelayedBytes: delayed, replans: replans,
                                forecastMAPE: mape, wallSeconds: monotonicSeconds() - began)
    }

    static func nextOffPeak(after minute: Int, config: SimulationConfig) -> Int {
        let day = minute / ScheduleLimits.minutesPerDay
        let candidate = day * ScheduleLimits.minutesPerDay + config.offPeakMinuteOfDay
        return candidate >= minute ? candidate : candidate + ScheduleLimits.minutesPerDay
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
