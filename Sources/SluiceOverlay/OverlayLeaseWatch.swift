// Path: Sources/SluiceOverlay/OverlayLeaseWatch.swift — a consumer host's view of its leases: a snapshot of
// its lease records, then an etcd watch from the snapshot's revision, as `OverlayLeaseEvent`s in revision order.
import SluiceEtcd

/// The lease events of one consumer host, in etcd revision order, starting with a `granted` for every lease
/// it holds now (from one consistent range). A record created is `granted`; a record deleted is `ended`,
/// `revoked` (or the reason recorded) when a revoke marked it first, `expired` otherwise. A revoke writes
/// the end marker (`P/leases/<host>/<id>/end`) and then revokes the etcd lease: the lease is reported
/// ended at the marker (one etcd commit earlier), and its delete is not reported again. An earlier
/// version's revoke wrote the reason into the record itself: read the same way.
///
/// It survives an etcd member or leader loss: the watch is opened again (any member) from the last
/// revision seen, and an event is reported once (a lease is granted once and ended once; epochs of
/// grants only grow). If etcd compacted the revisions it missed, it reads a fresh snapshot and reports the
/// difference (a lease gone meanwhile ends as `expired` unless its reason was seen).
/// Back-pressure: events are taken from etcd only as `next()` is called (the etcd watch buffers at most
/// `EtcdLimits.watchEventsBufferedMax` events and then holds etcd back). One task iterates it.
public struct OverlayLeaseWatch: AsyncSequence, AsyncIteratorProtocol {
    public typealias Element = OverlayLeaseEvent
    public typealias Failure = OverlayLeasingError

    /// How long `next()` keeps trying to watch again before it throws (etcd without quorum that long).
    public static let reconnectDeadlineMsDefault: Int64 = 30_000
    static let reconnectPauseMs = 100

    public let consumerHost: String
    private let client: EtcdClient
    private let keys: OverlayKeys
    private let reconnectDeadlineMs: Int64
    /// End a lease when its record gets an end reason (a revoke's first step), not only when the record
    /// goes (default true; false: the older behaviour, kept to measure the difference).
    let endsOnReasonWrite: Bool
    /// Leases reported granted and not yet ended: etcd lease -> (epoch, end reason recorded so far).
    private var live: [Int64: (epoch: Int64, reason: OverlayLeaseEndReason?)] = [:]
    /// Events decided and not yet returned (a snapshot's, at most `OverlayLimits.leaseCountMax`, or a
    /// resync's difference).
    private var queued: [OverlayLeaseEvent] = []
    private var queuedNext = 0
    private var watch: EtcdWatch?
    private var iterator: EtcdWatch.AsyncIterator?
    /// The last revision whose events were all taken in.
    private var revision: Int64 = 0
    /// Times the watch was opened again after a failure (tests, reports).
    public private(set) var reconnects = 0
    /// Records that did not decode (skipped: they grant nothing).
    public private(set) var malformed = 0

    /// Reads the snapshot and opens the watch. Nothing is reported before the first `next()`.
    public static func start(_ client: EtcdClient, keys: OverlayKeys, consumerHost: String,
                             reconnectDeadlineMs: Int64 = reconnectDeadlineMsDefault,
                             endsOnReasonWrite: Bool = true) async throws(OverlayLeasingError) -> OverlayLeaseWatch {
        try OverlayNames.check(consumerHost, "consumer host")
        var watch = OverlayLeaseWatch(consumerHost: consumerHost, client: client, keys: keys, reconnectDeadlineMs: reconnectDeadlineMs,
                                      endsOnReasonWrite: endsOnReasonWrite)
        do {
            try await watch.resync()
            try await watch.open()
        } catch {
            throw .from(error)
        }
        return watch
    }

    private init(consumerHost: String, client: EtcdClient, keys: OverlayKeys, reconnectDeadlineMs: Int64,
                 endsOnReasonWrite: Bool) {
        self.endsOnReasonWrite = endsOnReasonWrite
        self.consumerHost = consumerHost
        self.client = client
        self.keys = keys
        self.reconnectDeadlineMs = reconnectDeadlineMs
    }

    public func makeAsyncIterator() -> OverlayLeaseWatch { self }

    /// Leases granted and not ended, as reported so far.
    public var liveLeaseIDs: Set<Int64> { Set(live.keys) }

    /// Stops the etcd watch; `next()` then returns nil.
    public mutating func cancel() {
        watch?.cancel()
        watch = nil
        iterator = nil
        queued.removeAll()
        queuedNext = 0
    }

    /// Ranges the host's records at one revision: queues `granted` for new ones, `ended` for known
    /// ones gone, and sets `revision` to the range's.
    private mutating func resync() async throws(EtcdError) {
        // Each lease has its record and, while being revoked, its end marker: at most two keys.
        let result = try await client.range(.prefix(keys.leases(consumerHost: consumerHost)),
                                            limit: Int64(2 * OverlayLimits.leaseCountMax))
        // The redirect table holds at most `leaseCountMax` leases: more records is a bug of the agents.
        guard !result.more else {
            throw .invalidArgument("consumer host \(consumerHost) has over \(OverlayLimits.leaseCountMax) lease records")
        }
        var marked: [Int64: OverlayLeaseEndReason] = [:]
        for kv in result.kvs {
            guard let (id, isEnd) = keys.leaseKey(kv.key, consumerHost: consumerHost), isEnd else { continue }
            guard let reason = try? OverlayJSON.decodeLeaseEnd(kv) else { malformed += 1; continue }
            marked[id] = reason
        }
        var present = Set<Int64>()
        var revoking: [Int64: OverlayLeaseEndReason] = [:]
        var granted: [(Int64, OverlayLeaseEvent)] = []
        for kv in result.kvs {
            guard let (id, isEnd) = keys.leaseKey(kv.key, consumerHost: consumerHost) else { malformed += 1; continue }
            if isEnd { continue }
            guard let record = try? OverlayJSON.decodeLease(kv), record.leaseID == id else { malformed += 1; continue }
            let reason = marked[id] ?? record.endReason.flatMap(OverlayLeaseEndReason.init(rawValue:))
            if endsOnReasonWrite, let reason {
                // Being revoked: ends now if it was live (below, as not present), is never granted.
                revoking[id] = reason
                remember(ended: id)
                continue
            }
            if live[id] != nil {
                if let reason { live[id]?.reason = reason }
                present.insert(id)
                continue
            }
            present.insert(id)
            live[id] = (kv.createRevision, reason)
            granted.append((kv.createRevision, .granted(record.lease(epoch: kv.createRevision))))
        }
        for (id, state) in live.sorted(by: { $0.value.epoch < $1.value.epoch }) where !present.contains(id) {
            queued.append(.ended(leaseID: id, epoch: state.epoch, reason: state.reason ?? revoking[id] ?? .expired))
            live[id] = nil
        }
        queued.append(contentsOf: granted.sorted { $0.0 < $1.0 }.map { $0.1 })
        revision = result.revision
    }

    private mutating func open() async throws(EtcdError) {
        // From `revision` itself, not +1: events at it taken already are recognised and skipped, and none
        // at it is lost if a watch broke within one revision's events.
        let watch = try await client.watch(.prefix(keys.leases(consumerHost: consumerHost)), fromRevision: revision)
        self.watch = watch
        self.iterator = watch.makeAsyncIterator()
    }

    /// The next event, waiting for one; nil after `cancel()`. Throws when etcd could not be watched again
    /// within the reconnect deadline.
    public mutating func next() async throws(OverlayLeasingError) -> OverlayLeaseEvent? {
        while true {
            if queuedNext < queued.count {
                let event = queued[queuedNext]
                queuedNext += 1
                if queuedNext == queued.count {
                    queued.removeAll()
                    queuedNext = 0
                }
                return event
            }
            guard iterator != nil else { return nil }
            let event: EtcdWatchEvent?
            do {
                event = try await iterator!.next()
            } catch {
                try await reopen(after: error)
                continue
            }
            guard let event else {
                // Ended without an error: cancelled, or the client shut down.
                if Task.isCancelled || watch == nil { return nil }
                try await reopen(after: .watchCanceled(reason: "watch ended"))
                continue
            }
            if let translated = take(event) { return translated }
        }
    }

    /// One etcd event into at most one lease event (updating what is known).
    private mutating func take(_ event: EtcdWatchEvent) -> OverlayLeaseEvent? {
        revision = Swift.max(revision, event.kv.modRevision)
        guard let (id, isEnd) = keys.leaseKey(event.kv.key, consumerHost: consumerHost) else {
            if event.kind == .put { malformed += 1 }
            return nil
        }
        switch (event.kind, isEnd) {
        case (.put, true):
            guard let reason = try? OverlayJSON.decodeLeaseEnd(event.kv) else { malformed += 1; return nil }
            return marked(id, reason)
        case (.put, false):
            guard let record = try? OverlayJSON.decodeLease(event.kv), record.leaseID == id else { malformed += 1; return nil }
            if live[id] != nil {
                // An earlier version's revoke: the reason written into the record.
                guard let reason = record.endReason.flatMap(OverlayLeaseEndReason.init(rawValue:)) else { return nil }
                return marked(id, reason)
            }
            // A record not live: new (its first version), or one that ended already (seen again on a re-watch).
            guard event.kv.version == 1, !ended.contains(id) else { return nil }
            live[id] = (event.kv.createRevision, record.endReason.flatMap(OverlayLeaseEndReason.init(rawValue:)))
            return .granted(record.lease(epoch: event.kv.createRevision))
        case (.delete, true):
            return nil
        case (.delete, false):
            guard let state = live.removeValue(forKey: id) else { return nil }
            remember(ended: id)
            return .ended(leaseID: id, epoch: state.epoch, reason: state.reason ?? .expired)
        }
    }

    /// A revoke's first commit for lease `id`: it ends here, one etcd commit (and watch delivery) earlier
    /// than at the delete, which is then skipped (not live any more). A marker for a lease not live (ended,
    /// or never seen) only keeps it from being granted again.
    private mutating func marked(_ id: Int64, _ reason: OverlayLeaseEndReason) -> OverlayLeaseEvent? {
        guard let state = live[id] else {
            remember(ended: id)
            return nil
        }
        guard endsOnReasonWrite else {
            live[id]?.reason = reason
            return nil
        }
        live[id] = nil
        remember(ended: id)
        return .ended(leaseID: id, epoch: state.epoch, reason: reason)
    }

    /// Leases ended recently (bounded), so a re-watch from an older revision does not grant them again.
    private var ended = Set<Int64>()
    /// `ended` in insertion order, a ring of `endedRememberedMax` (the oldest is forgotten first).
    private var endedOrder: [Int64] = []
    private var endedNext = 0
    static let endedRememberedMax = 4 * OverlayLimits.leaseCountMax

    private mutating func remember(ended id: Int64) {
        guard ended.insert(id).inserted else { return }
        if endedOrder.count < Self.endedRememberedMax {
            endedOrder.append(id)
            return
        }
        ended.remove(endedOrder[endedNext])
        endedOrder[endedNext] = id
        endedNext = (endedNext + 1) % Self.endedRememberedMax
    }

    /// Opens the watch again from `revision` (a fresh snapshot when etcd compacted past it), pausing
    /// `reconnectPauseMs` between tries, until the deadline.
    private mutating func reopen(after error: EtcdError) async throws(OverlayLeasingError) {
        watch?.cancel()
        watch = nil
        iterator = nil
        let deadline = ContinuousClock.now + .milliseconds(reconnectDeadlineMs)
        var last: EtcdError = error
        var compacted = false
        if case .compacted = error { compacted = true }
        while ContinuousClock.now < deadline {
            if Task.isCancelled { throw .etcd("watch of \(consumerHost) cancelled while reconnecting") }
            do {
                if compacted {
                    try await resync()
                    compacted = false
                }
                try await open()
                reconnects += 1
                return
            } catch {
                last = error
                if case .compacted = error { compacted = true }
            }
            try? await Task.sleep(for: .milliseconds(Self.reconnectPauseMs))
        }
        throw .etcd("watch of \(consumerHost) lost and not reopened in \(reconnectDeadlineMs) ms: \(last)")
    }
}
