// Path: Sources/SluiceTraffic/TrafficController.swift — infers what each source sent from completion
// events and re-divides the port among sources, as BQL/DQL does per queue, but per source.
import SluiceCore

/// What the controller knows of one source.
public struct SourceState: Sendable, Equatable {
    public var source: Int
    public var completedPackets: UInt64 = 0
    public var completedBytes: UInt64 = 0
    public var enqueuedPackets: UInt64 = 0
    public var enqueuedBytes: UInt64 = 0
    /// Frames enqueued and not yet completed.
    public var pendingPackets: UInt64 = 0
    /// Time on the TX ring (enqueue to completion), moving average, ns.
    public var delayNs: UInt64 = 0
    /// Bytes per second completed in the last division window.
    public var rateBytesPerSecond: Double = 0
    /// Share of the port granted and share achieved in the last window (0...1).
    public var shareTarget: Double = 0
    public var shareAchieved: Double = 0
    public var active = false
}

/// The controller's view of the port and every source it has seen.
public struct TrafficSnapshot: Sendable, Equatable {
    public var sources: [SourceState]
    public var portCapacityBytesPerSecond: Double
    public var portLimitBytes: UInt64
    public var stalled: Bool
    public var redivisions: UInt64
}

/// Runs on its own thread (or a control stage): `poll` drains completion events, keeps per-source
/// accounts, watches for a stalled port and, every N completions or T ns, re-divides the port by
/// the policy, publishing rates and quotas to the `TrafficBoard` the TX stage enforces.
/// Per event it never allocates (accounts are preallocated for `TrafficLimits.sourceCountMax`); a
/// re-division (about once a millisecond) builds its small demand list.
public final class TrafficController: @unchecked Sendable {  // unchecked: one owner thread
    public let policy: TrafficPolicy
    public let board: TrafficBoard
    private var receiver: CompletionReceiver
    /// The receiver's overflow totals, read while `receiver` is busy draining.
    private let overflow: CompletionOverflow
    private var accounts: [SourceState]
    private var windowBytes: [UInt64]
    private var windowRefused: [UInt64]
    private var lastRefused: [UInt64]
    private var windowStartNs: UInt64 = 0
    private var completionsSinceDivision = 0
    /// Last completion, or when frames started pending after none were: the watchdog's clock.
    private var lastProgressNs: UInt64 = 0
    private var capacityEstimate: Double = 0
    private var portLimit: UInt64
    private var minInFlightInWindow = UInt64.max
    private var starvedInWindow = false
    private var redivisions: UInt64 = 0
    private var stalled = false
    private var admissionHandedOut = false
    /// Sources the controller accounts for: every id the channel carries (ids beyond the policy's
    /// list get `defaultSource`).
    private let sourceCount: Int
    /// Events taken per `poll` at most, so re-division and the watchdog keep running under load.
    static let eventsPerPollMax = 8_192

    public init(policy: TrafficPolicy, receiver: consuming CompletionReceiver) throws(TrafficError) {
        try policy.validate()
        self.policy = policy
        self.overflow = receiver.overflow
        self.sourceCount = receiver.sourceCountMax
        self.receiver = receiver
        self.portLimit = UInt64(policy.portInFlightBytesInitial)
        // Until the first division nothing is known: let every source send, bounded by the port limit.
        self.board = TrafficBoard(initialRate: UInt64(1) << 40, initialQuota: UInt64(policy.portInFlightBytesInitial),
                                  portLimit: UInt64(policy.portInFlightBytesInitial))
        accounts = (0..<TrafficLimits.sourceCountMax).map { SourceState(source: $0) }
        windowBytes = Array(repeating: 0, count: TrafficLimits.sourceCountMax)
        windowRefused = Array(repeating: 0, count: TrafficLimits.sourceCountMax)
        lastRefused = Array(repeating: 0, count: TrafficLimits.sourceCountMax)
    }

    /// The TX stage's enforcement point. Exactly one per controller (each board field has one writer).
    public func makeAdmission() -> TxAdmission {
        precondition(!admissionHandedOut, "a controller has one TX admission")
        admissionHandedOut = true
        return TxAdmission(board: board)
    }

    /// Drains pending completion events, runs the watchdog and re-divides when due. Returns the
    /// number of events taken. Call often (every turn of the controller's loop).
    @discardableResult
    public func poll(nowNs: UInt64) -> Int {
        if windowStartNs == 0 {
            windowStartNs = nowNs
            lastProgressNs = nowNs
        }
        var taken = 0
        while taken < Self.eventsPerPollMax {
            let count = receiver.drain { event in observe(event) }
            taken += count
            if count == 0 { break }
            // DQL: how low did the bytes in flight get while sources wanted more? Once per batch.
            let inFlight = portInFlightBytes()
            minInFlightInWindow = min(minInFlightInWindow, inFlight)
            if inFlight == 0 { starvedInWindow = true }
        }
        watch(nowNs: nowNs)
        if completionsSinceDivision >= policy.redivideEveryCompletions || nowNs &- windowStartNs >= policy.redivideEveryNs {
            redivide(nowNs: nowNs)
        }
        return taken
    }

    private func observe(_ event: CompletionEvent) {
        let source = Int(event.sourceID)
        accounts[source].completedPackets &+= 1
        accounts[source].completedBytes &+= UInt64(event.bytes)
        let delay = event.completionNs &- event.enqueueNs
        let previous = accounts[source].delayNs
        accounts[source].delayNs = previous == 0 ? delay : previous &- (previous >> 3) &+ (delay >> 3)
        windowBytes[source] &+= UInt64(event.bytes)
        completionsSinceDivision += 1
        lastProgressNs = max(lastProgressNs, event.completionNs)
        if stalled {
            stalled = false
            board.stalled.store(false, ordering: .relaxed)
        }
    }

    /// Bytes enqueued and not completed, over all sources (overflowed completions included).
    private func portInFlightBytes() -> UInt64 {
        var inFlight: UInt64 = 0
        for source in 0..<sourceCount {
            let enqueued = board.enqueuedBytes[source].load(ordering: .relaxed)
            let completed = accounts[source].completedBytes &+ overflow.bytes(source)
            if enqueued > completed { inFlight &+= enqueued - completed }
        }
        return inFlight
    }

    /// The watchdog: frames pending and no completion for `watchdogNs` means the port is stalled.
    private func watch(nowNs: UInt64) {
        var pending: UInt64 = 0
        for source in 0..<sourceCount {
            let enqueued = board.enqueuedPackets[source].load(ordering: .relaxed)
            let completed = accounts[source].completedPackets &+ overflow.packets(source)
            if enqueued > completed { pending &+= enqueued - completed }
        }
        guard pending > 0 else {
            lastProgressNs = nowNs  // nothing owed: the clock starts when something is
            if stalled {  // what was owed completed (perhaps through the overflow totals)
                stalled = false
                board.stalled.store(false, ordering: .relaxed)
            }
            return
        }
        // Silence counts only if the TX stage kept scanning its ring and found nothing: a stage that
        // simply had no input to run on is not a stalled port.
        let scanned = board.lastScanNs.load(ordering: .relaxed)
        if !stalled, scanned > lastProgressNs, scanned - lastProgressNs > policy.watchdogNs {
            stalled = true
            board.stalled.store(true, ordering: .relaxed)
        }
    }

    /// Whether the port is stalled now (the watchdog fired and no completion has come since).
    public var isStalled: Bool { stalled }

    /// New rates and quotas from the last window's completions.
    private func redivide(nowNs: UInt64) {
        let elapsedNs = max(nowNs &- windowStartNs, 1)
        let seconds = Double(elapsedNs) / 1e9
        var total: UInt64 = 0
        var backlogged = false
        var demands: [(source: Int, policy: SourcePolicy)] = []
        demands.reserveCapacity(sourceCount)
        for source in 0..<sourceCount {
            let refused = board.refusedPackets[source].load(ordering: .relaxed)
            windowRefused[source] = refused &- lastRefused[source]
            lastRefused[source] = refused
            let enqueued = board.enqueuedPackets[source].load(ordering: .relaxed)
            let completed = accounts[source].completedPackets &+ overflow.packets(source)
            accounts[source].enqueuedPackets = enqueued
            accounts[source].enqueuedBytes = board.enqueuedBytes[source].load(ordering: .relaxed)
            accounts[source].pendingPackets = enqueued > completed ? enqueued - completed : 0
            accounts[source].rateBytesPerSecond = Double(windowBytes[source]) / seconds
            total &+= windowBytes[source]
            if windowRefused[source] > 0 { backlogged = true }
            // Active: something in flight, or it asked to send lately (the TX thread's clock may be
            // a little ahead of ours).
            let lastEnqueue = board.lastEnqueueNs[source].load(ordering: .relaxed)
            let recentlyAsked = lastEnqueue != 0 && (lastEnqueue >= nowNs || nowNs - lastEnqueue < policy.quietAfterNs)
            accounts[source].active = recentlyAsked || accounts[source].pendingPackets > 0
            if accounts[source].active { demands.append((source, policy.policy(of: source))) }
        }
        let achieved = Double(total) / seconds
        // When sources were refused the port ran at capacity: track it; otherwise demand was the
        // limit, and the estimate only rises.
        // A window without completions says nothing about capacity (the watchdog handles a stall).
        if achieved > 0 {
            capacityEstimate = backlogged
                ? (capacityEstimate == 0 ? achieved : 0.75 * capacityEstimate + 0.25 * achieved)
                : max(capacityEstimate, achieved)
        }
        adjustPortLimit(completedBytes: total)
        publish(demands: demands, achievedTotal: achieved)
        for source in 0..<sourceCount { windowBytes[source] = 0 }
        windowStartNs = nowNs
        completionsSinceDivision = 0
        redivisions &+= 1
    }

    /// DQL: a port that ran dry while sources waited gets a higher in-flight limit; one that never
    /// came near empty gives back the slack.
    private func adjustPortLimit(completedBytes: UInt64) {
        let minimum = UInt64(policy.portInFlightBytesMin)
        let maximum = UInt64(policy.portInFlightBytesMax)
        if starvedInWindow {
            portLimit = min(maximum, portLimit &+ max(completedBytes / 4, minimum))
        } else if minInFlightInWindow != UInt64.max, minInFlightInWindow > 0 {
            portLimit = max(minimum, portLimit - min(portLimit, minInFlightInWindow) / 2)
        }
        starvedInWindow = false
        minInFlightInWindow = UInt64.max
        board.portLimitBytes.store(portLimit, ordering: .relaxed)
    }

    private func publish(demands: [(source: Int, policy: SourcePolicy)], achievedTotal: Double) {
        guard capacityEstimate > 0 else { return }
        let targets = divide(capacity: capacityEstimate * policy.probeHeadroom, among: demands)
        let granted = targets.values.reduce(0, +)
        for source in 0..<sourceCount {
            let target = targets[source] ?? 0
            accounts[source].shareTarget = granted > 0 ? target / granted : 0
            accounts[source].shareAchieved = achievedTotal > 0 ? accounts[source].rateBytesPerSecond / achievedTotal : 0
            // An inactive source keeps a trickle, so its first frames can go and wake it up again.
            let rate = max(target, capacityEstimate * 0.01)
            board.rateBytesPerSecond[source].store(Self.saturatingBytes(rate), ordering: .relaxed)
            let quota = granted > 0 ? Double(portLimit) * target / granted : Double(portLimit)
            board.quotaBytes[source].store(Self.saturatingBytes(max(quota, Double(TxAdmission.bucketFloorBytes))), ordering: .relaxed)
        }
    }

    /// A byte count or rate computed in Double as the board stores it: NaN and negatives are 0, values
    /// past UInt64's range saturate. Policy values and estimates must never trap the controller.
    static func saturatingBytes(_ value: Double) -> UInt64 {
        guard value > 0 else { return 0 }  // NaN compares false: 0
        return value >= 18_446_744_073_709_551_615.0 ? .max : UInt64(value)  // 2^64 as a Double
    }

    /// The controller's state (for the replay summary and metrics). Allocates: call from the
    /// controller's thread, outside its hot loop.
    /// Completed counts include events that overflowed the channel (counted, not lost).
    public func snapshot() -> TrafficSnapshot {
        var sources = Array(accounts[0..<sourceCount])
        for index in sources.indices {
            sources[index].completedPackets &+= overflow.packets(index)
            sources[index].completedBytes &+= overflow.bytes(index)
        }
        return TrafficSnapshot(sources: sources, portCapacityBytesPerSecond: capacityEstimate,
                               portLimitBytes: portLimit, stalled: stalled, redivisions: redivisions)
    }
}
