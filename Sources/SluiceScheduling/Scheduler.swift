// Path: Sources/SluiceScheduling/Scheduler.swift — books each requested move at the earliest start whose
// predicted run, on the predicted free bandwidth, finishes inside its window; answers why not now.

/// What one host offers to moves: its link, its concurrent-migration slots, its memory.
public struct HostResources: Sendable, Equatable {
    public var linkBytesPerSecond: Double
    public var migrationSlots: Int
    public var memoryBytes: Double

    public init(linkBytesPerSecond: Double, migrationSlots: Int, memoryBytes: Double) {
        precondition(linkBytesPerSecond > 0 && memoryBytes >= 0, "host resources \(linkBytesPerSecond) \(memoryBytes)")
        precondition(migrationSlots > 0 && migrationSlots <= ScheduleLimits.migrationSlotsMax, "slots \(migrationSlots)")
        self.linkBytesPerSecond = linkBytesPerSecond
        self.migrationSlots = migrationSlots
        self.memoryBytes = memoryBytes
    }
}

/// Where the scheduler's view of production traffic comes from: a forecast at a confidence (the
/// service, the simulator's Sluice run) or the future itself (the simulator's oracle).
public protocol ProductionOutlook {
    /// Production traffic (bytes/s) on `host`'s link at `minute`, as the scheduler must plan for it:
    /// the forecast's high side at `confidence` (one-sided, 0.5 is the forecast's mean).
    func plannedProduction(host: Int, minute: Int, confidence: Double) -> Double
}

/// A request to move one VM: where from, where it may go, the window it must finish in.
public struct MigrationRequest: Sendable, Equatable {
    public var id: Int
    public var vm: String
    public var source: Int
    public var candidates: [Int]
    /// First minute the move may start, and the minute by which it must have finished.
    public var earliestStart: Int
    public var deadline: Int
    /// Higher goes first when requests are planned together.
    public var priority: Int
    public var demand: MigrationDemand
    public var allowance: ConvergenceAllowance

    public init(id: Int, vm: String, source: Int, candidates: [Int], earliestStart: Int, deadline: Int, priority: Int = 0,
                demand: MigrationDemand, allowance: ConvergenceAllowance = .init()) {
        self.id = id
        self.vm = vm
        self.source = source
        self.candidates = candidates
        self.earliestStart = earliestStart
        self.deadline = deadline
        self.priority = priority
        self.demand = demand
        self.allowance = allowance
    }
}

/// A move the scheduler has reserved resources for.
public struct Booking: Sendable, Equatable {
    public var requestID: Int
    public var source: Int
    public var destination: Int
    public var start: Int
    /// The bandwidth cap per minute from `start` (QEMU's max-bandwidth, changed minute by minute), one
    /// entry per minute the move is predicted to run.
    public var rates: [Double]
    public var prediction: DurationPrediction
    public var memoryBytes: Double
    /// The forecast confidence the booking was planned at.
    public var confidence: Double

    /// Predicted finish, in seconds from the minute epoch.
    public var predictedFinishSecond: Double { Double(start) * 60 + prediction.totalSeconds }
}

/// Why a start does not work for one destination.
public enum StartVerdict: Sendable, Equatable, CustomStringConvertible {
    case feasible(finishSecond: Double, method: ConvergenceMethod)
    case notACandidate(host: Int)
    case beforeWindow(opens: Int)
    case windowClosed(deadline: Int)
    case destinationMemory(host: Int, free: Double, needed: Double)
    case slotsTaken(host: Int, minute: Int)
    case linkBusy(source: Int, destination: Int, minute: Int, free: Double)
    case wontConverge(String)
    case finishesLate(finishSecond: Double, deadline: Int)

    /// A short label for metrics: `feasible`, `not_a_candidate`, `before_window`, `window_closed`,
    /// `destination_memory`, `slots_taken`, `link_busy`, `wont_converge`, `finishes_late`.
    public var reason: String {
        switch self {
        case .feasible: "feasible"
        case .notACandidate: "not_a_candidate"
        case .beforeWindow: "before_window"
        case .windowClosed: "window_closed"
        case .destinationMemory: "destination_memory"
        case .slotsTaken: "slots_taken"
        case .linkBusy: "link_busy"
        case .wontConverge: "wont_converge"
        case .finishesLate: "finishes_late"
        }
    }

    public var description: String {
        switch self {
        case .feasible(let finish, let method): "feasible: \(method.rawValue), finishes at minute \(Int(finish / 60))"
        case .notACandidate(let host): "host \(host) is the source or not a host"
        case .beforeWindow(let opens): "the window opens at minute \(opens)"
        case .windowClosed(let deadline): "the window closed at minute \(deadline)"
        case .destinationMemory(let host, let free, let needed):
            "host \(host) has \(Int(free / 1_073_741_824)) GiB free, the VM needs \(Int(needed / 1_073_741_824)) GiB"
        case .slotsTaken(let host, let minute): "host \(host) has no free migration slot at minute \(minute)"
        case .linkBusy(let source, let destination, let minute, let free):
            "the links of hosts \(source) and \(destination) are predicted to have \(Int(free / 1_048_576)) MiB/s free at minute \(minute)"
        case .wontConverge(let why): why
        case .finishesLate(let finish, let deadline):
            "predicted to finish at minute \(Int((finish / 60).rounded(.up))), after the deadline \(deadline)"
        }
    }
}

/// What the scheduler says about a request: booked, or refused with the reasons.
public enum PlanOutcome: Sendable, Equatable {
    case booked(Booking)
    /// No start in the window works; the verdicts are for the window's first start, per destination.
    case refused([StartVerdict])
}

/// Why not now, and the earliest start that works.
public struct Explanation: Sendable, Equatable {
    public var requestID: Int
    public var now: Int
    /// Per candidate destination at `now` (a `.feasible` one means it could start now).
    public var atNow: [StartVerdict]
    public var earliest: (start: Int, destination: Int, finishSecond: Double)?

    public static func == (a: Explanation, b: Explanation) -> Bool {
        a.requestID == b.requestID && a.now == b.now && a.atNow == b.atNow
            && a.earliest?.start == b.earliest?.start && a.earliest?.destination == b.earliest?.destination
    }
}

/// Books moves on the bandwidth, slots and memory predicted free. One owner (an actor or one task);
/// planning allocates per request (availability arrays), never per minute of a data path.
public struct MigrationScheduler: Sendable {
    public struct Parameters: Sendable, Equatable {
        /// Starts tried are this far apart.
        public var stepMinutes = 5
        /// Below this a move is not run (QEMU cannot be held at 0 bytes/s): such a minute is busy.
        public var minimumRate: Double = 8 * 1_048_576
        /// Confidences tried in turn: a request that fits nowhere at the first is planned at the next
        /// (its booking says which), and refused only when it fits at none.
        public var confidences: [Double] = [0.9, 0.5]
        public init() {}
    }

    public let hosts: [HostResources]
    public let parameters: Parameters
    public private(set) var table: BookingTable
    /// Free memory per host as last observed (a move's memory is reserved on top until it ends).
    public private(set) var freeMemory: [Double]
    public private(set) var bookings: [Int: Booking] = [:]

    public init(hosts: [HostResources], now: Int, parameters: Parameters = .init(),
                horizonMinutes: Int = ScheduleLimits.horizonMinutesMax) {
        precondition(!hosts.isEmpty && hosts.count <= ScheduleLimits.hostCountMax, "hosts \(hosts.count)")
        precondition(parameters.stepMinutes > 0 && parameters.minimumRate > 0, "scheduler parameters")
        precondition(!parameters.confidences.isEmpty && parameters.confidences.allSatisfy { $0 > 0 && $0 < 1 },
                     "confidences \(parameters.confidences)")
        self.hosts = hosts
        self.parameters = parameters
        table = BookingTable(hostCount: hosts.count, horizonMinutes: horizonMinutes, origin: now)
        freeMemory = hosts.map(\.memoryBytes)
    }

    public mutating func advance(to minute: Int) { table.advance(to: minute) }

    public mutating func observeFreeMemory(host: Int, bytes: Double) {
        precondition(host >= 0 && host < hosts.count, "host \(host)")
        freeMemory[host] = max(0, bytes)
    }

    /// Plans `request` at the earliest feasible start from `now` and books it; or refuses, with why (the
    /// reasons at the first confidence).
    public mutating func plan<Outlook: ProductionOutlook>(_ request: MigrationRequest, now: Int, outlook: Outlook) -> PlanOutcome {
        precondition(bookings.count < ScheduleLimits.requestCountMax, "booking table full (\(bookings.count))")
        precondition(bookings[request.id] == nil, "request \(request.id) is booked already")
        var firstVerdicts: [StartVerdict]?
        for confidence in parameters.confidences {
            let search = earliest(request, now: now, outlook: outlook, confidence: confidence)
            guard let found = search.found else {
                if firstVerdicts == nil { firstVerdicts = search.firstVerdicts }
                continue
            }
            table.book(source: request.source, destination: found.destination, start: found.start,
                       rates: found.rates[...], memory: request.demand.memoryBytes)
            let booking = Booking(requestID: request.id, source: request.source, destination: found.destination,
                                  start: found.start, rates: found.rates, prediction: found.prediction,
                                  memoryBytes: request.demand.memoryBytes, confidence: confidence)
            bookings[request.id] = booking
            return .booked(booking)
        }
        return .refused(firstVerdicts ?? [])
    }

    /// Why `request` cannot start at `now` (per destination) and the earliest start that works, booking nothing.
    public func explain<Outlook: ProductionOutlook>(_ request: MigrationRequest, now: Int, outlook: Outlook) -> Explanation {
        let confidence = parameters.confidences[0]
        let atNow = request.candidates.map {
            verdict(request, start: now, destination: $0, outlook: outlook, confidence: confidence).verdict
        }
        let search = earliest(request, now: now, outlook: outlook, confidence: confidence)
        return Explanation(requestID: request.id, now: now, atNow: atNow,
                           earliest: search.found.map { ($0.start, $0.destination, Double($0.start) * 60 + $0.prediction.totalSeconds) })
    }

    /// Puts back a booking made earlier (read from the state file): it holds what it held, for the
    /// minutes still in the horizon.
    public mutating func restore(_ booking: Booking) {
        precondition(bookings[booking.requestID] == nil, "request \(booking.requestID) is booked already")
        precondition(bookings.count < ScheduleLimits.requestCountMax, "booking table full (\(bookings.count))")
        var start = booking.start
        var rates = booking.rates[...]
        if start < table.origin {
            rates = rates.dropFirst(table.origin - start)
            start = table.origin
        }
        if start + rates.count > table.origin + table.horizonMinutes {
            rates = rates.prefix(max(0, table.origin + table.horizonMinutes - start))
        }
        table.book(source: booking.source, destination: booking.destination, start: start, rates: rates, memory: booking.memoryBytes)
        bookings[booking.requestID] = booking
    }

    /// Drops a booking (the move ran, or was cancelled), giving back what it held.
    @discardableResult
    public mutating func release(_ requestID: Int) -> Booking? {
        guard let booking = bookings.removeValue(forKey: requestID) else { return nil }
        table.release(source: booking.source, destination: booking.destination, start: booking.start,
                      rates: booking.rates[...], memory: booking.memoryBytes)
        return booking
    }

    /// Bandwidth the outlook leaves free on `host`'s link at `minute`, after every booking.
    public func freeBandwidth<Outlook: ProductionOutlook>(host: Int, minute: Int, outlook: Outlook) -> Double {
        max(0, hosts[host].linkBytesPerSecond - outlook.plannedProduction(host: host, minute: minute, confidence: parameters.confidences[0])
            - table.bandwidth(host: host, minute: minute))
    }

    /// A running move fell behind: hold `rate` for it at `minute` too (past its booked span).
    public mutating func extend(_ requestID: Int, minute: Int, rate: Double) {
        guard var booking = bookings[requestID], table.contains(minute) else { return }
        let index = minute - booking.start
        guard index >= booking.rates.count else { return }
        let filler = Array(repeating: 0.0, count: index - booking.rates.count)
        table.book(source: booking.source, destination: booking.destination, start: booking.start + booking.rates.count,
                   rates: (filler + [rate])[...], memory: 0)
        booking.rates += filler + [rate]
        bookings[requestID] = booking
    }

    /// Re-checks every booking that has not started by `now` against the current outlook; one that no
    /// longer fits (its minutes, on the new forecast, lack the bandwidth or slots it holds) is planned
    /// again from `now`. Returns the ids whose booking changed or that no longer fit anywhere (those keep
    /// their old booking, and the caller reports them).
    public mutating func replan<Outlook: ProductionOutlook>(now: Int, requests: [Int: MigrationRequest], outlook: Outlook) -> [Int] {
        var changed: [Int] = []
        let pending = bookings.values.filter { $0.start > now }.sorted { ($0.start, $0.requestID) < ($1.start, $1.requestID) }
        for old in pending {
            guard let request = requests[old.requestID] else { continue }
            release(old.requestID)
            let still = verdict(request, start: old.start, destination: old.destination, outlook: outlook,
                                confidence: old.confidence, spanMinutes: old.rates.count + 30)
            if let found = still.found, found.start == old.start {
                table.book(source: old.source, destination: old.destination, start: found.start, rates: found.rates[...],
                           memory: old.memoryBytes)
                bookings[old.requestID] = Booking(requestID: old.requestID, source: old.source, destination: old.destination,
                                                  start: found.start, rates: found.rates, prediction: found.prediction,
                                                  memoryBytes: old.memoryBytes, confidence: old.confidence)
                continue
            }
            changed.append(old.requestID)
            if case .refused = plan(request, now: now, outlook: outlook) {
                table.book(source: old.source, destination: old.destination, start: old.start,
                           rates: old.rates[...], memory: old.memoryBytes)
                bookings[old.requestID] = old
            }
        }
        return changed
    }

    // MARK: - Search

    private struct Found {
        var start: Int
        var destination: Int
        var rates: [Double]
        var prediction: DurationPrediction
    }

    private func earliest<Outlook: ProductionOutlook>(_ request: MigrationRequest, now: Int, outlook: Outlook, confidence: Double)
        -> (found: Found?, firstVerdicts: [StartVerdict]) {
        let first = max(now, request.earliestStart, table.origin)
        let last = min(request.deadline, table.origin + table.horizonMinutes)
        guard first < last else {
            return (nil, request.candidates.map { _ in .windowClosed(deadline: request.deadline) })
        }
        // Free bandwidth per minute of the window: the source's, then each destination's joined with it.
        let sourceFree = free(request.source, from: first, to: last, outlook: outlook, confidence: confidence)
        var joined: [Int: [Double]] = [:]
        for destination in request.candidates where destination != request.source && destination >= 0 && destination < hosts.count {
            let destinationFree = free(destination, from: first, to: last, outlook: outlook, confidence: confidence)
            joined[destination] = zip(sourceFree, destinationFree).map { min($0, $1) }
        }
        var firstVerdicts: [StartVerdict] = []
        var start = first
        while start < last {
            var best: Found?
            for destination in request.candidates {
                let (verdict, found) = evaluate(request, start: start, destination: destination, windowStart: first,
                                                free: joined[destination])
                if start == first { firstVerdicts.append(verdict) }
                if let found, best == nil || found.prediction.totalSeconds < best!.prediction.totalSeconds { best = found }
            }
            if let best { return (best, firstVerdicts) }
            start += parameters.stepMinutes
        }
        return (nil, firstVerdicts)
    }

    /// One start and destination, on free bandwidth looked up for at most `spanMinutes` from `start`
    /// (the whole window when nil).
    private func verdict<Outlook: ProductionOutlook>(_ request: MigrationRequest, start: Int, destination: Int,
                                                     outlook: Outlook, confidence: Double, spanMinutes: Int? = nil)
        -> (verdict: StartVerdict, found: Found?) {
        if start < request.earliestStart { return (.beforeWindow(opens: request.earliestStart), nil) }
        let last = min(request.deadline, table.origin + table.horizonMinutes, spanMinutes.map { start + $0 } ?? Int.max)
        guard start < last, start >= table.origin else { return (.windowClosed(deadline: request.deadline), nil) }
        guard destination != request.source, destination >= 0, destination < hosts.count else {
            return (.notACandidate(host: destination), nil)
        }
        let joined = zip(free(request.source, from: start, to: last, outlook: outlook, confidence: confidence),
                         free(destination, from: start, to: last, outlook: outlook, confidence: confidence)).map { min($0, $1) }
        return evaluate(request, start: start, destination: destination, windowStart: start, free: joined)
    }

    private func evaluate(_ request: MigrationRequest, start: Int, destination: Int, windowStart: Int,
                          free: [Double]?) -> (StartVerdict, Found?) {
        guard let free, destination != request.source else { return (.notACandidate(host: destination), nil) }
        let memoryFree = freeMemory[destination] - table.reservedMemory[destination]
        guard memoryFree >= request.demand.memoryBytes else {
            return (.destinationMemory(host: destination, free: memoryFree, needed: request.demand.memoryBytes), nil)
        }
        let offset = start - windowStart
        let profile = BandwidthProfile(rates: free, start: offset, count: free.count - offset, cap: request.demand.maxBandwidth)
        guard profile.rate(minute: 0) >= parameters.minimumRate else {
            return (.linkBusy(source: request.source, destination: destination, minute: start, free: profile.rate(minute: 0)), nil)
        }
        let prediction: DurationPrediction
        switch DurationModel.predict(request.demand, allowance: request.allowance, bandwidth: profile) {
        case .success(let p): prediction = p
        case .failure(.beyondHorizon): return (.finishesLate(finishSecond: Double(request.deadline + 1) * 60, deadline: request.deadline), nil)
        case .failure(let refusal): return (.wontConverge(refusal.description), nil)
        }
        let finishSecond = Double(start) * 60 + prediction.totalSeconds
        guard finishSecond <= Double(request.deadline) * 60 else {
            return (.finishesLate(finishSecond: finishSecond, deadline: request.deadline), nil)
        }
        let minutes = Int((prediction.totalSeconds / 60).rounded(.down)) + 1
        var rates: [Double] = []
        rates.reserveCapacity(minutes)
        for minute in 0..<minutes {
            let rate = profile.rate(minute: minute)
            let absolute = start + minute
            guard rate >= parameters.minimumRate else {
                return (.linkBusy(source: request.source, destination: destination, minute: absolute, free: rate), nil)
            }
            if table.slots(host: request.source, minute: absolute) >= hosts[request.source].migrationSlots {
                return (.slotsTaken(host: request.source, minute: absolute), nil)
            }
            if table.slots(host: destination, minute: absolute) >= hosts[destination].migrationSlots {
                return (.slotsTaken(host: destination, minute: absolute), nil)
            }
            rates.append(rate)
        }
        return (.feasible(finishSecond: finishSecond, method: prediction.method),
                Found(start: start, destination: destination, rates: rates, prediction: prediction))
    }

    private func free<Outlook: ProductionOutlook>(_ host: Int, from first: Int, to last: Int, outlook: Outlook,
                                                  confidence: Double) -> [Double] {
        var result: [Double] = []
        result.reserveCapacity(max(0, last - first))
        let capacity = hosts[host].linkBytesPerSecond
        for minute in first..<last {
            result.append(max(0, capacity - outlook.plannedProduction(host: host, minute: minute, confidence: confidence)
                                 - table.bandwidth(host: host, minute: minute)))
        }
        return result
    }
}
