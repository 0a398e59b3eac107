// Path: Sources/SluiceReplication/EtcdLog.swift — a storage node's operation log shared through etcd:
// proposals group-committed as one put-if-absent per batch, the log followed by range reads and a
// watch and applied in order, unknown outcomes settled by reading the log back, old batches deleted
// once every node has checkpointed past them.
import Dispatch
import SluiceCore
import SluicePageStore
import Synchronization
// The etcd client's types (EtcdError, EtcdLimits, EtcdClientConfiguration, ...) are part of this module's
// API (EtcdLogConfiguration and ReplicatedStorage's errors carry them): re-exported, so a user of the log
// needs no second import.
@_exported import SluiceEtcd

/// How a node uses its shared log. Validated by `validate()`; the bounds are `EtcdLogConfiguration.*Limit`.
public struct EtcdLogConfiguration: Sendable {
    /// etcd's client URLs and the deadline of each etcd call.
    public var client: EtcdClientConfiguration
    /// Key prefix of the log (`P/log/...`): nodes with the same prefix share one log.
    public var prefix: String = Self.prefixDefault
    /// How long a write waits for a definite outcome before it is answered `logUnavailable` (never
    /// sent) or `outcomeUnknown` (sent, not settled yet).
    public var proposalTimeoutMs: Int64 = Self.proposalTimeoutMsDefault
    /// Records per batch (one etcd transaction) at most.
    public var batchRecordsMax = Self.batchRecordsMaxDefault
    /// Encoded bytes per batch at most; one record must fit (its pages travel in it). Below etcd's
    /// request bound (1.5 MiB by default).
    public var batchBytesMax = Self.batchBytesMaxDefault
    /// Extra wait before a batch is taken, to let more proposals join (0: batch only what queued
    /// while the previous transaction was in flight).
    public var batchWaitUs: Int64 = 0
    /// Proposals without an outcome (queued, in flight, or being settled) at most; more are `overloaded`.
    public var pendingProposalsMax = 4_096
    /// How often the node checks the log's tail, publishes its checkpoint and tries compaction.
    public var heartbeatMs: Int64 = 250

    /// Deadline of the log's etcd calls unless set otherwise: a claim in flight on a member that lost its
    /// leader waits this long before it goes again to another member, so it bounds fail-over (about two
    /// election timeouts of a cluster run with `--election-timeout=500`). A timed-out claim is settled
    /// by repeating it, so a short deadline costs round trips, never correctness.
    public static let callTimeoutMsDefault: Int64 = 1_000
    public static let prefixDefault = "sluice/storage"
    public static let proposalTimeoutMsDefault: Int64 = 5_000
    public static let batchRecordsMaxDefault = 256
    public static let batchBytesMaxDefault = 1 << 20
    public static let proposalTimeoutMsLimit: ClosedRange<Int64> = 10...600_000
    public static let batchRecordsMaxLimit: ClosedRange<Int> = 1...4_096
    public static let batchBytesMaxLimit: ClosedRange<Int> = 4_096...1_400_000
    public static let batchWaitUsLimit: ClosedRange<Int64> = 0...100_000
    public static let pendingProposalsMaxLimit: ClosedRange<Int> = 1...65_536
    public static let heartbeatMsLimit: ClosedRange<Int64> = 10...60_000

    public init(client: EtcdClientConfiguration, prefix: String = Self.prefixDefault) {
        self.client = client
        self.prefix = prefix
    }

    /// `etcd://HOST:PORT[,HOST:PORT...]` (as `sluice storage serve --log` takes it): the endpoints.
    public static func endpoints(fromURL url: String) throws(EtcdError) -> [String] {
        guard url.hasPrefix("etcd://") else { throw .invalidArgument("log URL \(url) does not start with etcd://") }
        let hosts = url.dropFirst("etcd://".count).split(separator: ",", omittingEmptySubsequences: false)
        var endpoints: [String] = []
        for host in hosts {
            let parts = host.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, let port = Int(parts[1]), (1...65_535).contains(port) else {
                throw .invalidArgument("log URL \(url): \"\(host)\" is not HOST:PORT")
            }
            endpoints.append("http://\(host)")
        }
        guard (1...EtcdLimits.endpointCountMax).contains(endpoints.count) else {
            throw .invalidArgument("log URL \(url): \(endpoints.count) endpoints, at most \(EtcdLimits.endpointCountMax)")
        }
        return endpoints
    }

    /// The first value outside its bound, named.
    public func validate() throws(EtcdError) {
        func check<T: Comparable>(_ name: String, _ value: T, _ range: ClosedRange<T>) throws(EtcdError) {
            guard range.contains(value) else { throw .invalidArgument("\(name) \(value) not in \(range)") }
        }
        try check("proposal_timeout_ms", proposalTimeoutMs, Self.proposalTimeoutMsLimit)
        try check("batch_records_max", batchRecordsMax, Self.batchRecordsMaxLimit)
        try check("batch_bytes_max", batchBytesMax, Self.batchBytesMaxLimit)
        try check("batch_wait_us", batchWaitUs, Self.batchWaitUsLimit)
        try check("pending_proposals_max", pendingProposalsMax, Self.pendingProposalsMaxLimit)
        try check("heartbeat_ms", heartbeatMs, Self.heartbeatMsLimit)
        guard !prefix.isEmpty, !prefix.hasSuffix("/"), !prefix.utf8.contains(0) else {
            throw .invalidArgument("prefix \"\(prefix)\" must be non-empty, without a trailing /")
        }
    }
}

/// Counters of one node's shared log, for metrics. Any thread.
public final class ReplicationStats: Sendable {
    /// Proposals admitted (each waits for an outcome).
    public let proposals = Atomic<UInt64>(0)
    /// Batches this node put in the log, and the records they carried.
    public let batches = Atomic<UInt64>(0)
    public let batchedRecords = Atomic<UInt64>(0)
    /// Claims of a log key another node took first (the batch went again at the next key).
    public let claimsLost = Atomic<UInt64>(0)
    /// Transactions whose outcome was unknown (a timeout, a lost connection, etcd's 5xx).
    public let unknownOutcomes = Atomic<UInt64>(0)
    /// Proposals of such transactions later found in the log, or found not to be in it.
    public let settledApplied = Atomic<UInt64>(0)
    public let settledNotApplied = Atomic<UInt64>(0)
    /// Proposals answered without being in the log (`logUnavailable`, `overloaded`, `stopped`).
    public let refused = Atomic<UInt64>(0)
    /// Records applied (this node's and every other node's).
    public let appliedRecords = Atomic<UInt64>(0)
    /// Watches (re)started after the first.
    public let watchRestarts = Atomic<UInt64>(0)
    /// Batches deleted from the log by this node's compactions, and the compactions.
    public let compactions = Atomic<UInt64>(0)
    /// etcd calls made by the log and their total latency.
    public let roundTrips = Atomic<UInt64>(0)
    public let roundTripNsTotal = Atomic<UInt64>(0)
    /// Upper bounds (ms) of the round-trip histogram's buckets; the last bucket is everything above.
    public static let roundTripBucketsMs: [Double] = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000]
    private let buckets = Mutex([UInt64](repeating: 0, count: ReplicationStats.roundTripBucketsMs.count + 1))

    public init() {}

    func recordRoundTrip(_ ns: UInt64) {
        roundTrips.add(1, ordering: .relaxed)
        roundTripNsTotal.add(ns, ordering: .relaxed)
        let ms = Double(ns) / 1e6
        let slot = Self.roundTripBucketsMs.firstIndex { ms <= $0 } ?? Self.roundTripBucketsMs.count
        buckets.withLock { $0[slot] += 1 }
    }

    /// Calls per bucket (not cumulative), `roundTripBucketsMs.count + 1` of them.
    public var roundTripBuckets: [UInt64] { buckets.withLock { $0 } }
}

/// The shared log of one storage node (a `WriteSequencer`): made by `ReplicatedStorage.open`, which
/// attaches the node and starts it. Runs three tasks: the proposer (one transaction in flight at a
/// time), the follower (range reads, then a watch) and the heartbeat (tail check, checkpoint
/// publication, compaction). Any thread may propose; `propose` and `catchUp` block their caller and
/// must not be called from Swift concurrency's cooperative threads.
public final class EtcdLog: WriteSequencer {
    public let configuration: EtcdLogConfiguration
    public let keys: LogKeys
    /// This node's name in `P/nodes/` (kept in its data directory).
    public let nodeName: String
    /// Random per process start: the `node` of this process's proposal ids.
    public let proposerID: UInt64
    public let stats = ReplicationStats()
    /// What every node of the log must agree on (`P/meta`): the format and the page payload size.
    let meta: [UInt8]
    let client: EtcdClient

    /// A proposal waiting for its outcome. Mutable fields under `state`'s lock; `result` is set before
    /// `done` is signalled and read after the wait.
    final class Proposal: @unchecked Sendable {
        let id: ProposalID
        let record: LogRecord
        let encodedBytes: Int
        let done = DispatchSemaphore(value: 0)
        var result: Result<UInt64, ObjectStoreError>?
        /// Its waiter gave up (deadline): not sent again unless an attempt carrying it is in doubt.
        var abandoned = false
        /// A transaction carrying it may have put it in the log (in flight, or its outcome unknown).
        var mayBeInLog = false

        init(id: ProposalID, record: LogRecord, encodedBytes: Int) {
            self.id = id
            self.record = record
            self.encodedBytes = encodedBytes
        }
    }

    struct State: ~Copyable {
        var queue: [Proposal] = []
        /// Every proposal without an outcome, by sequence (bounded by `pendingProposalsMax`).
        var open: [UInt64: Proposal] = [:]
        var nextSequence: UInt64 = 0
        var appliedOSN: UInt64 = 0
        /// The newest OSN known to be in the log (at least `appliedOSN`): a lower bound, for status.
        var logOSN: UInt64 = 0
        /// The end of the newest batch whose extent is known (applied, put by this node, or decoded
        /// from a lost claim): the next claim is the key after it. Never a batch's first OSN seen
        /// without its length: a claim inside a batch would put an overlapping one beside it.
        var chainEnd: UInt64 = 0
        var lastContactNs: UInt64?
        var disconnected = true
        /// `P/meta` checked (or written): proposals may be sent.
        var metaChecked = false
        /// A range read found this node's applied OSN continuing the log (not compacted past): only then
        /// is its checkpoint published in `P/nodes/`, where it holds compaction back.
        var continuityChecked = false
        /// A range read reached the log's tail since the start (`logOSN` then bounds the log): before
        /// it, the node is catching up whatever `logOSN` says.
        var tailRead = false
        var lastError = "etcd not contacted yet"
        var failure: ReplicationProblem?
        var stopped = false
        var catchUpWaiters: [(osn: UInt64, done: DispatchSemaphore)] = []
        var watch: EtcdWatch?

        /// Nothing more will be applied (stopped, failed): every open proposal is answered with
        /// `problem` (`outcomeUnknown` where an attempt may have put it in the log), catch-up waiters
        /// are woken now rather than at their deadline. Returns the watch to cancel.
        mutating func answerEveryone(_ problem: ReplicationProblem) -> EtcdWatch? {
            for proposal in open.values where proposal.result == nil {
                proposal.result = .failure(.replication(proposal.mayBeInLog ? .outcomeUnknown(proposalID: "\(proposal.id)") : problem))
                proposal.done.signal()
            }
            open = [:]
            queue = []
            for waiter in catchUpWaiters { waiter.done.signal() }
            catchUpWaiters = []
            return watch
        }
    }

    /// The node applied to, and its applied OSN; held while applying (disk I/O), so one applier at a time.
    struct Applier: ~Copyable {
        var node: StorageNode?
        var appliedOSN: UInt64 = 0
    }

    private let state = Mutex(State())
    private let applier = Mutex(Applier())
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>
    private let tasks = Mutex<[Task<Void, Never>]>([])
    static let catchUpWaitersMax = 4_096
    /// Batches a lost claim's failure branch brings back at most. Their JSON (base64: 4/3 of the bytes)
    /// must fit the client's response bound even when every batch is as large as any node of the log
    /// may make it (`batchBytesMaxLimit`, not this node's setting): a larger answer is
    /// `responseTooLarge`, an unknown outcome, and the claim would be repeated as is for good.
    static let claimFailureBatchesMax = max(1, min(8, (EtcdLimits.responseBytesMax - 65_536)
        / (EtcdLogConfiguration.batchBytesMaxLimit.upperBound / 3 * 4 + 1_024)))

    /// Checks `configuration` and makes the etcd client; contacts nothing yet.
    public init(configuration: EtcdLogConfiguration, nodeName: String, payloadSizeBytes: Int) throws(EtcdError) {
        try configuration.validate()
        self.configuration = configuration
        self.keys = LogKeys(prefix: configuration.prefix)
        self.nodeName = nodeName
        self.proposerID = UInt64.random(in: 1...UInt64.max)
        self.meta = Array("sluice-log v1 payload=\(payloadSizeBytes)".utf8)
        self.client = try EtcdClient(configuration.client)
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Attaches the node (whose store is a replica at `appliedOSN`, its checkpoint) and starts the
    /// tasks. Call once.
    func start(node: StorageNode, appliedOSN: UInt64) {
        applier.withLock { applier in
            precondition(applier.node == nil, "an EtcdLog follows one node")
            applier.node = node
            applier.appliedOSN = appliedOSN
        }
        state.withLock { state in
            state.appliedOSN = appliedOSN
            state.logOSN = appliedOSN
            state.chainEnd = appliedOSN
        }
        let started = [
            Task { await self.runFollower() },
            Task { await self.runProposer() },
            Task { await self.runHeartbeat(checkpointOSN: appliedOSN) },
        ]
        tasks.withLock { $0 = started }
    }

    /// Stops the tasks, answers every waiting proposal (`stopped`, or `outcomeUnknown` for one that
    /// may be in the log), publishes the node's checkpoint once more and closes the client. The node
    /// takes no writes afterwards.
    public func shutdown() async {
        let watch = state.withLock { state -> EtcdWatch? in
            state.stopped = true
            return state.answerEveryone(.stopped)
        }
        wake.finish()
        watch?.cancel()
        let running = tasks.withLock { $0 }
        for task in running { task.cancel() }
        for task in running { await task.value }
        // A node that failed (compacted past, corrupt log) publishes nothing: its checkpoint would hold
        // compaction back for a node that cannot follow anyway.
        let publish = state.withLock { $0.continuityChecked && $0.failure == nil }
        if publish, let node = applier.withLock({ $0.node }) {
            _ = try? await client.put(keys.node(nodeName), LogKeys.hex(node.checkpointOSN))
        }
        // The node refers to this log (its sequencer) and the log to the node: let go of it, so the
        // store (and its data directory's lock) is released once its owner drops it.
        applier.withLock { $0.node = nil }
        await client.shutdown()
    }

    /// `shutdown()` for a caller outside Swift concurrency (a CLI's main thread, a server's stop path):
    /// blocks until it is done.
    public func shutdownBlocking() {
        let done = DispatchSemaphore(value: 0)
        Task {
            await self.shutdown()
            done.signal()
        }
        done.wait()
    }

    // MARK: WriteSequencer

    public func propose(_ record: LogRecord) -> Result<UInt64, ObjectStoreError> {
        let size = LogCodec.encodedSize(record)
        let recordMax = configuration.batchBytesMax - LogCodec.batchSize(recordBytes: 0)
        guard size <= recordMax else { return .failure(.replication(.recordTooLarge(bytes: size, max: recordMax))) }
        let admitted = state.withLock { state -> Result<Proposal, ReplicationProblem> in
            if state.stopped { return .failure(.stopped) }
            if let failure = state.failure { return .failure(failure) }
            guard state.open.count < configuration.pendingProposalsMax else {
                return .failure(.overloaded(pendingMax: configuration.pendingProposalsMax))
            }
            state.nextSequence += 1
            let proposal = Proposal(id: ProposalID(node: proposerID, sequence: state.nextSequence), record: record,
                                    encodedBytes: size)
            state.queue.append(proposal)
            state.open[proposal.id.sequence] = proposal
            return .success(proposal)
        }
        let proposal: Proposal
        switch admitted {
        case .success(let admitted): proposal = admitted
        case .failure(let problem):
            stats.refused.add(1, ordering: .relaxed)
            return .failure(.replication(problem))
        }
        stats.proposals.add(1, ordering: .relaxed)
        wake.yield()
        if proposal.done.wait(timeout: .now() + .milliseconds(Int(configuration.proposalTimeoutMs))) == .success {
            return proposal.result!
        }
        // The deadline: answer with what is known now. The proposal stays open while it may be in the
        // log, so applying it (or settling that it is not there) still finds it.
        return state.withLock { state -> Result<UInt64, ObjectStoreError> in
            if let result = proposal.result { return result }
            proposal.abandoned = true
            if proposal.mayBeInLog {
                return .failure(.replication(.outcomeUnknown(proposalID: "\(proposal.id)")))
            }
            state.open[proposal.id.sequence] = nil
            state.queue.removeAll { $0 === proposal }
            stats.refused.add(1, ordering: .relaxed)
            return .failure(.replication(.logUnavailable(reason: state.lastError)))
        }
    }

    public func catchUp(to osn: UInt64, timeoutMs: Int) -> Result<ReplicaStatus, ObjectStoreError> {
        let done = DispatchSemaphore(value: 0)
        let waiting = state.withLock { state -> Bool? in
            if state.appliedOSN >= osn { return false }
            guard !state.stopped, state.catchUpWaiters.count < Self.catchUpWaitersMax else { return nil }
            state.catchUpWaiters.append((osn, done))
            return true
        }
        if waiting == true, done.wait(timeout: .now() + .milliseconds(max(timeoutMs, 0))) == .timedOut {
            state.withLock { $0.catchUpWaiters.removeAll { $0.done === done } }
        }
        let status = self.status
        guard status.appliedOSN >= osn else {
            return .failure(.replication(.behind(appliedOSN: status.appliedOSN, wantedOSN: osn)))
        }
        return .success(status)
    }

    public var status: ReplicaStatus {
        let now = Clock.monotonicNs()
        return state.withLock { state in
            let phase: ReplicaStatus.State =
                if state.failure != nil || state.stopped { .failed }
                else if state.disconnected { .disconnected }
                // Until a range read reached the log's tail, `logOSN` is only what this node knew before.
                else if state.logOSN > state.appliedOSN || !state.tailRead { .catchingUp }
                else { .following }
            return ReplicaStatus(state: phase, appliedOSN: state.appliedOSN, logOSN: state.logOSN,
                                 contactAgeMs: state.lastContactNs.map { (now &- $0) / 1_000_000 })
        }
    }

    /// Why the node stopped following the log, or nil.
    public var failure: ReplicationProblem? { state.withLock { $0.failure } }

    /// Waits (polling every few ms, at most `timeoutMs`) until the node has contacted etcd and applied
    /// what the log held then, or the deadline passes; returns the status either way. For start-up.
    public func waitCaughtUp(timeoutMs: Int64) async -> ReplicaStatus {
        let deadline = Clock.monotonicNs() + UInt64(max(timeoutMs, 0)) * 1_000_000
        while true {
            let status = self.status
            if status.state == .following || status.state == .failed || Clock.monotonicNs() >= deadline { return status }
            try? await Task.sleep(nanoseconds: 5_000_000)
        }
    }

    // MARK: Applying

    /// Applies the batches of `kvs` (in key order) that continue what is applied; skips those already
    /// applied. Returns false when it met a gap (a later batch: the caller reads the log again).
    @discardableResult
    func apply(_ kvs: [EtcdKeyValue]) -> Bool {
        applier.withLock { applier in
            guard let node = applier.node else { return true }
            for kv in kvs {
                guard let first = keys.firstOSN(ofBatchKey: kv.key) else {
                    fail(.corruptRecord(key: String(decoding: kv.key, as: UTF8.self), reason: "not a batch key of this log"))
                    return true
                }
                if first <= applier.appliedOSN { continue }
                if first != applier.appliedOSN + 1 { return false }
                let batch: LogBatch
                do { batch = try LogCodec.decode(kv.value) } catch {
                    fail(.corruptRecord(key: String(decoding: kv.key, as: UTF8.self), reason: "\(error)"))
                    return true
                }
                guard !batch.records.isEmpty else {
                    fail(.corruptRecord(key: String(decoding: kv.key, as: UTF8.self), reason: "an empty batch"))
                    return true
                }
                let records = batch.records.enumerated().map { (osn: first + UInt64($0.offset), record: $0.element.record) }
                let outcomes = node.applyOrdered(records)
                if node.poisoned != nil {
                    // The page file failed: nothing more is applied; a restart re-applies from the checkpoint.
                    fail(.stopped)
                    return true
                }
                applier.appliedOSN = first + UInt64(records.count - 1)
                stats.appliedRecords.add(UInt64(records.count), ordering: .relaxed)
                resolve(batch, outcomes: outcomes, appliedOSN: applier.appliedOSN)
            }
            return true
        }
    }

    /// Hands this node's proposals in `batch` their outcomes and wakes catch-up waiters.
    private func resolve(_ batch: LogBatch, outcomes: [Result<UInt64, ObjectStoreError>], appliedOSN: UInt64) {
        state.withLock { state in
            state.appliedOSN = appliedOSN
            state.logOSN = max(state.logOSN, appliedOSN)
            state.chainEnd = max(state.chainEnd, appliedOSN)
            for (position, entry) in batch.records.enumerated() where entry.id.node == proposerID {
                guard let proposal = state.open.removeValue(forKey: entry.id.sequence) else { continue }
                if proposal.abandoned { stats.settledApplied.add(1, ordering: .relaxed) }
                proposal.result = outcomes[position]
                proposal.done.signal()
            }
            state.queue.removeAll { $0.result != nil }
            state.catchUpWaiters.removeAll { waiter in
                guard waiter.osn <= appliedOSN else { return false }
                waiter.done.signal()
                return true
            }
        }
    }

    /// Stops the node following the log for good (a corrupt record, a compaction past it): every
    /// waiting proposal is answered, later ones are refused.
    private func fail(_ problem: ReplicationProblem) {
        let watch = state.withLock { state -> EtcdWatch? in
            if state.failure == nil { state.failure = problem }
            return state.answerEveryone(problem)
        }
        watch?.cancel()
    }

    private var isDone: Bool { state.withLock { $0.stopped || $0.failure != nil } }

    private func contact() {
        let now = Clock.monotonicNs()
        state.withLock { state in
            state.lastContactNs = now
            state.disconnected = false
        }
    }

    private func noted(_ error: EtcdError) {
        state.withLock { state in
            state.lastError = "\(error)"
            switch error {
            case .unreachable, .timedOut, .connectionLost: state.disconnected = true
            case .status(_, let code, _) where EtcdStatusCode.inDoubt.contains(code): state.disconnected = true
            default: break
            }
        }
    }

    /// `osn` is in the log (a batch's first OSN seen, say): for status only.
    private func noteLogOSN(_ osn: UInt64) { state.withLock { $0.logOSN = max($0.logOSN, osn) } }

    /// A batch is known to end at `osn`: claims go after it.
    private func noteChainEnd(_ osn: UInt64) {
        state.withLock { state in
            state.chainEnd = max(state.chainEnd, osn)
            state.logOSN = max(state.logOSN, osn)
        }
    }

    /// One etcd call, timed for the round-trip stats; a success counts as contact.
    private func timed<T>(_ call: () async throws(EtcdError) -> T) async throws(EtcdError) -> T {
        let started = Clock.monotonicNs()
        do {
            let value = try await call()
            stats.recordRoundTrip(Clock.monotonicNs() &- started)
            contact()
            return value
        } catch {
            stats.recordRoundTrip(Clock.monotonicNs() &- started)
            noted(error)
            throw error
        }
    }

    private func sleep(ms: Int64) async { try? await Task.sleep(nanoseconds: UInt64(ms) * 1_000_000) }

    // MARK: Follower

    /// Checks `P/meta` (writing it and `P/floor` for a new log), then forever: range reads from the
    /// applied OSN to the tail, then a watch from the revision of the last read; on any error or gap,
    /// again after a backoff.
    private func runFollower() async {
        var backoffMs: Int64 = 20
        var watches = 0
        while !isDone {
            do throws(EtcdError) {
                if !state.withLock({ $0.metaChecked }) { try await checkMeta() }
                let revision = try await catchUpByRange()
                guard !isDone else { break }
                let from = applier.withLock { $0.appliedOSN } + 1
                let watch = try await timed { () async throws(EtcdError) -> EtcdWatch in
                    try await client.watch(keys.batches(from: from), fromRevision: revision + 1)
                }
                watches += 1
                if watches > 1 { stats.watchRestarts.add(1, ordering: .relaxed) }
                state.withLock { $0.watch = watch }
                backoffMs = 20
                for try await event in watch {
                    contact()
                    guard event.kind == .put else { continue }  // compaction deletes old batches
                    if let first = keys.firstOSN(ofBatchKey: event.kv.key) { noteLogOSN(first) }
                    if !apply([event.kv]) { break }  // a gap: read the log again
                    if isDone { break }
                }
                watch.cancel()
                state.withLock { $0.watch = nil }
            } catch {
                noted(error)
                state.withLock { $0.watch = nil }
                await sleep(ms: backoffMs)
                backoffMs = min(backoffMs * 2, 1_000)
            }
        }
    }

    /// `P/meta` absent: a new log (meta and floor written together), made only by a node that has
    /// applied nothing. Present: it must be ours.
    private func checkMeta() async throws(EtcdError) {
        // A node that applied records needs a log that holds them: finding none (etcd lost its data,
        // another cluster answers, the prefix was deleted), it must not start a new one and claim the
        // OSN after its own, which leaves a gap no other node can follow.
        let applied = applier.withLock { $0.appliedOSN }
        let create: [EtcdTxnOp] = applied > 0 ? [] : [.put(key: keys.meta, value: meta), .put(key: keys.floor, value: LogKeys.hex(0))]
        let result = try await timed { () async throws(EtcdError) -> EtcdTxnResult in
            try await client.txn(compare: [.absent(keys.meta)], success: create, failure: [.get(.key(keys.meta))])
        }
        if result.succeeded, applied > 0 {
            fail(.incompatibleLog(reason: "\(keys.prefix)/meta is absent (a new or deleted log) but this node applied through OSN \(applied): etcd lost the log, or this is another etcd"))
            return
        }
        if !result.succeeded {
            guard case .get(let got) = result.results.first, let found = got.kvs.first?.value else {
                throw .malformedResponse("txn on \(keys.prefix)/meta failed without returning it")
            }
            guard found == meta else {
                fail(.incompatibleLog(reason: "\(keys.prefix)/meta is \"\(String(decoding: found, as: UTF8.self))\", this node needs \"\(String(decoding: meta, as: UTF8.self))\""))
                return
            }
        }
        state.withLock { $0.metaChecked = true }
        wake.yield()  // proposals may have queued meanwhile
    }

    /// Applies every batch after the applied OSN, in range reads; returns the revision of the last
    /// read (the watch starts after it). A gap before the first batch found means the log was compacted
    /// past this node: it stops following.
    private func catchUpByRange() async throws(EtcdError) -> Int64 {
        var limit: Int64 = 64
        while true {
            let from = applier.withLock { $0.appliedOSN } + 1
            let result: EtcdRangeResult
            do {
                result = try await timed { () async throws(EtcdError) -> EtcdRangeResult in
                    try await client.range(keys.batches(from: from), limit: limit)
                }
            } catch .responseTooLarge(_, _) where limit > 1 {
                limit /= 2
                continue
            }
            if let last = result.kvs.last, let first = keys.firstOSN(ofBatchKey: last.key) { noteLogOSN(first) }
            if let head = result.kvs.first, let first = keys.firstOSN(ofBatchKey: head.key), first > from {
                let floor = try await readFloor()
                fail(floor >= from ? .compactedPast(appliedOSN: from - 1, floorOSN: floor)
                                   : .corruptRecord(key: String(decoding: head.key, as: UTF8.self),
                                                    reason: "batches \(from)...\(first - 1) are missing"))
                return result.revision
            }
            if result.kvs.isEmpty {
                // Nothing after the applied OSN: caught up, unless compaction deleted what follows it
                // (every batch, when nothing was written since).
                let floor = try await readFloor()
                if floor >= from {
                    fail(.compactedPast(appliedOSN: from - 1, floorOSN: floor))
                    return result.revision
                }
            }
            apply(result.kvs)
            if isDone { return result.revision }
            state.withLock { $0.continuityChecked = true }
            if !result.more {
                state.withLock { $0.tailRead = true }
                return result.revision
            }
            // More batches follow what was applied: the log holds at least the next OSN.
            noteLogOSN(applier.withLock { $0.appliedOSN } + 1)
        }
    }

    private func readFloor() async throws(EtcdError) -> UInt64 {
        let kv = try await timed { () async throws(EtcdError) -> EtcdKeyValue? in try await client.get(keys.floor) }
        return kv.flatMap { LogKeys.parseHex($0.value) } ?? 0
    }

    // MARK: Proposer

    private func runProposer() async {
        for await _ in wakes {
            while !isDone {
                if configuration.batchWaitUs > 0 { try? await Task.sleep(nanoseconds: UInt64(configuration.batchWaitUs) * 1_000) }
                guard state.withLock({ $0.metaChecked }) else {
                    // Not connected yet: proposals wait (until their deadline) for the follower's first contact.
                    await sleep(ms: 20)
                    if state.withLock({ $0.queue.isEmpty }) { break }
                    continue
                }
                guard let batch = takeBatch() else { break }
                await commit(batch)
            }
            if isDone { break }
        }
    }

    /// The oldest queued proposals, within the batch bounds (one at least), marked as possibly in the log.
    private func takeBatch() -> [Proposal]? {
        state.withLock { state -> [Proposal]? in
            var batch: [Proposal] = []
            var bytes = LogCodec.batchSize(recordBytes: 0)
            var taken = 0
            for proposal in state.queue {
                if proposal.abandoned || proposal.result != nil {
                    taken += 1
                    continue
                }
                guard batch.count < configuration.batchRecordsMax,
                      batch.isEmpty || bytes + proposal.encodedBytes <= configuration.batchBytesMax else { break }
                bytes += proposal.encodedBytes
                batch.append(proposal)
                taken += 1
            }
            state.queue.removeFirst(taken)
            return batch.isEmpty ? nil : batch
        }
    }

    /// Puts `batch` in the log under the next free batch key, as one transaction: the key absent and
    /// the floor below it. A lost race (another node's batch there) is learned from the failure branch
    /// and tried at the next key. An attempt with an unknown outcome is repeated as is (same key, same
    /// bytes) until it is definite: the key then holds our bytes (applied) or another batch (not; the
    /// batch goes again elsewhere unless its waiters gave up). Returns once the batch is in the log,
    /// or dropped (every waiter gave up and no attempt is in doubt), or the node stopped.
    private func commit(_ initial: [Proposal]) async {
        var members = initial
        var value: [UInt8] = []
        var encodedFor: [ObjectIdentifier] = []
        var inDoubtAt: UInt64?
        var backoffMs: Int64 = 10
        while !isDone {
            // Applied meanwhile (the follower found it, e.g. an attempt in doubt that landed): done.
            if state.withLock({ _ in members.allSatisfy { $0.result != nil } }) { return }
            if inDoubtAt == nil {
                members = state.withLock { state in
                    members.filter { proposal in
                        if proposal.abandoned || proposal.result != nil {
                            if proposal.result == nil {
                                state.open[proposal.id.sequence] = nil
                                proposal.result = .failure(.replication(.logUnavailable(reason: state.lastError)))
                            }
                            return false
                        }
                        proposal.mayBeInLog = true
                        return true
                    }
                }
                if members.isEmpty { return }
                let identities = members.map(ObjectIdentifier.init)
                if identities != encodedFor {
                    value = LogCodec.encode(LogBatch(records: members.map { ($0.id, $0.record) }))
                    encodedFor = identities
                }
            }
            let claim = inDoubtAt ?? state.withLock { $0.chainEnd } + 1
            let key = keys.batch(claim)
            let result: EtcdTxnResult
            do {
                let payload = value
                result = try await timed { () async throws(EtcdError) -> EtcdTxnResult in
                    try await client.txn(
                        compare: [.absent(key), EtcdCompare(key: keys.floor, .value(LogKeys.hex(claim)), .less)],
                        success: [.put(key: key, value: payload)],
                        failure: [.getFirst(keys.batches(from: claim), limit: Int64(Self.claimFailureBatchesMax)),
                                  .get(.key(keys.floor))])
                }
            } catch {
                // etcd answered, but not in a form this client reads: the claim may have been applied.
                var malformed = false
                if case .malformedResponse = error { malformed = true }  // read-back answers, not the claim's own
                if error.outcomeUnknown || malformed {
                    if inDoubtAt == nil { stats.unknownOutcomes.add(1, ordering: .relaxed) }
                    inDoubtAt = claim
                } else if inDoubtAt == nil {
                    // Definitely not in the log: a member whose waiter gives up now is refused, not unknown.
                    state.withLock { _ in for proposal in members { proposal.mayBeInLog = false } }
                }
                await sleep(ms: backoffMs)
                backoffMs = min(backoffMs * 2, 500)
                continue
            }
            backoffMs = 10
            if result.succeeded {
                if inDoubtAt != nil { state.withLock { _ in for proposal in members { proposal.abandoned = true } } }
                stats.batches.add(1, ordering: .relaxed)
                stats.batchedRecords.add(UInt64(members.count), ordering: .relaxed)
                noteChainEnd(claim + UInt64(members.count) - 1)
                apply([EtcdKeyValue(key: key, value: value, createRevision: result.revision, modRevision: result.revision,
                                    version: 1, lease: 0)])
                return
            }
            var found: [EtcdKeyValue] = []
            var floor: UInt64 = 0
            for op in result.results {
                guard case .get(let got) = op else { continue }
                if got.kvs.first?.key == keys.floor { floor = LogKeys.parseHex(got.kvs[0].value) ?? 0 } else { found = got.kvs }
            }
            if let head = found.first, head.key == key, head.value == value {
                // An earlier attempt in doubt put this very batch here: applied.
                stats.batches.add(1, ordering: .relaxed)
                stats.batchedRecords.add(UInt64(members.count), ordering: .relaxed)
                state.withLock { _ in for proposal in members { proposal.abandoned = true } }  // settled: counted when applied
                noteChainEnd(claim + UInt64(members.count) - 1)
                apply(found)
                return
            }
            if inDoubtAt != nil {
                // Another batch holds the key: ours never got in.
                let given = state.withLock { _ in members.filter(\.abandoned).count }
                stats.settledNotApplied.add(UInt64(given), ordering: .relaxed)
                state.withLock { _ in for proposal in members { proposal.mayBeInLog = false } }
                inDoubtAt = nil
            }
            if floor >= claim {
                fail(.compactedPast(appliedOSN: claim - 1, floorOSN: floor))
                return
            }
            stats.claimsLost.add(1, ordering: .relaxed)
            // Another batch holds the key: definitely not in the log (until the next attempt is sent).
            state.withLock { _ in for proposal in members { proposal.mayBeInLog = false } }
            // Learn the tail from what holds the keys from `claim` on (a chain: each batch starts where
            // the one before ends), and apply what continues this node's applied prefix.
            var next = claim
            for kv in found {
                guard keys.firstOSN(ofBatchKey: kv.key) == next, let batch = try? LogCodec.decode(kv.value),
                      !batch.records.isEmpty else { break }
                next += UInt64(batch.records.count)
            }
            noteChainEnd(next - 1)
            apply(found)
            if found.isEmpty { await sleep(ms: backoffMs) }
        }
        // Stopped or failed: `shutdown`/`fail` answered every open proposal.
    }

    // MARK: Heartbeat

    /// Every `heartbeatMs`: checks the log's tail (restarting a watch that stopped delivering while
    /// the log moved on), publishes the node's checkpoint in `P/nodes/` and deletes batches every node
    /// has checkpointed past.
    private func runHeartbeat(checkpointOSN: UInt64) async {
        var published: UInt64?
        /// A compaction that failed goes again at the next beat, not at the next checkpoint.
        var compactionDue = false
        var lastApplied = applier.withLock { $0.appliedOSN }
        var stalledBeats = 0
        while !isDone {
            await sleep(ms: configuration.heartbeatMs)
            guard !isDone else { break }
            do throws(EtcdError) {
                let applied = applier.withLock { $0.appliedOSN }
                let tail = try await timed { () async throws(EtcdError) -> EtcdRangeResult in
                    try await client.range(keys.batches(from: applied + 1), limit: 1)
                }
                if let head = tail.kvs.first, let first = keys.firstOSN(ofBatchKey: head.key) {
                    noteLogOSN(first)
                    stalledBeats = applied == lastApplied ? stalledBeats + 1 : 0
                    if stalledBeats >= 3 {
                        stalledBeats = 0
                        state.withLock { $0.watch }?.cancel()
                    }
                } else {
                    stalledBeats = 0
                }
                lastApplied = applied
                guard state.withLock({ $0.metaChecked && $0.continuityChecked && $0.failure == nil }) else { continue }
                let checkpoint = applier.withLock { $0.node?.checkpointOSN } ?? 0
                if published != checkpoint {
                    _ = try await timed { () async throws(EtcdError) -> EtcdPutResult in
                        try await client.put(keys.node(nodeName), LogKeys.hex(checkpoint))
                    }
                    published = checkpoint
                    compactionDue = true
                }
                if compactionDue {
                    try await compact()
                    compactionDue = false
                }
            } catch {
                noted(error)
            }
        }
    }

    /// Deletes the batches through the lowest checkpoint any registered node published, and moves the
    /// floor there, in one transaction conditional on the floor not having moved meanwhile.
    private func compact() async throws(EtcdError) {
        let nodes = try await timed { () async throws(EtcdError) -> EtcdRangeResult in
            try await client.range(.prefix(keys.nodesPrefix))
        }
        guard let lowest = nodes.kvs.compactMap({ LogKeys.parseHex($0.value) }).min() else { return }
        let floor = try await readFloor()
        guard lowest > floor else { return }
        let result = try await timed { () async throws(EtcdError) -> EtcdTxnResult in
            try await client.txn(compare: [EtcdCompare(key: keys.floor, .value(LogKeys.hex(floor)))],
                                 success: [.delete(.range(start: keys.batch(0), end: keys.batch(lowest + 1))),
                                           .put(key: keys.floor, value: LogKeys.hex(lowest))])
        }
        if result.succeeded { stats.compactions.add(1, ordering: .relaxed) }
    }
}
