// Path: Sources/SluicePageStore/StorageNode.swift — the object store shared by many clients, and the
// client's retry helper (read, modify, conditional write, retry on conflict with backoff).
import Dispatch
import Glibc
import SluiceCore
import Synchronization

/// An `ObjectStore` any thread may use: operations are serialised (the store's io_uring and page map
/// have one owner). Writes are group-committed: while one caller (the leader) flushes a batch, the
/// writes that arrive queue up and go together in the next batch, one log flush for all of them.
/// Single-page reads are grouped the same way: one io_uring submission for every read waiting.
/// Every call blocks its thread until its operation is durable (or read).
public final class StorageNode: Sendable {
    private let store: Mutex<ObjectStoreBox>
    private let writes: Batcher<(objectID: UInt64, pages: ObjectStore.PageWrites), UInt64>
    private let reads: Batcher<(objectID: UInt64, pageIndex: UInt64), PageVersion>
    private let readers: ReaderPool
    /// Writes per group commit (and reads per read group) at most.
    public let groupCommitMax: Int
    /// The shared log a replica's writes are proposed to; nil when the store has a log of its own.
    public let sequencer: (any WriteSequencer)?
    /// Set while the device under the node is isolated (firmware check): writes are refused with it.
    private let isolation = Mutex<String?>(nil)
    private let isolated = Atomic(false)
    /// Checked before a proposal leaves this node (the store checks again when the record is applied).
    private let payloadBytesMax: Int
    private let pagesPerWriteMax: Int

    /// Wraps the store (the box exists because Mutex needs a Sendable, non-copyable-friendly value).
    private struct ObjectStoreBox: @unchecked Sendable {  // unchecked: only touched under the mutex
        let store: ObjectStore
    }

    /// `parallelReadersMax` 0 (the default) groups single-page reads: one io_uring submission per group
    /// under the mutex. N > 0 reads outside the mutex on up to N pooled readers; measured slower than
    /// grouping at 16 loopback clients (0.80x, docs/BENCHMARKS.md), so it is opt-in.
    /// `sequencer` makes the node a replica of a shared log (the store must be one, `init(replicaPages:)`):
    /// writes, creates, deletes and truncates are proposed to it, and the log's records come back
    /// through `applyOrdered`.
    public init(store: ObjectStore, groupCommitMax: Int = 64, parallelReadersMax: Int = 0,
                sequencer: (any WriteSequencer)? = nil) {
        precondition(groupCommitMax >= 1, "a group commit takes at least one write")
        precondition(parallelReadersMax >= 0, "a reader count is not negative")
        precondition(store.isReplica == (sequencer != nil), "a replica store goes with a sequencer, an own-log store without")
        self.sequencer = sequencer
        self.payloadBytesMax = store.payloadSizeBytes
        self.pagesPerWriteMax = min(ObjectStore.pagesPerWriteMax, store.pageFileConfiguration.queueDepth)
        var readerConfiguration = store.pageFileConfiguration
        readerConfiguration.queueDepth = 1
        self.readers = ReaderPool(configuration: readerConfiguration, countMax: parallelReadersMax)
        self.store = Mutex(ObjectStoreBox(store: store))
        self.writes = Batcher(batchMax: groupCommitMax)
        self.reads = Batcher(batchMax: groupCommitMax)
        self.groupCommitMax = groupCommitMax
    }

    /// Reads one page (see `ObjectStore.read`). With `parallelReadersMax` 0 every read goes straight
    /// into the grouped path: reads arriving while one group's submission runs form the next group,
    /// one io_uring submission under the mutex for all of them. Otherwise the page map is looked up
    /// under the node's mutex (so the lookup waits for a group commit in progress) and the I/O runs
    /// outside it, on a page file of the caller's own from a pool (its own io_uring), so reads do
    /// their I/O and CRC checks in parallel. A page that changed between the lookup and the I/O
    /// (rewritten, freed) fails its header check and is read again in the grouped path, as is every
    /// read when no pooled reader is free or the store is poisoned.
    public func read(objectID: UInt64, pageIndex: UInt64) throws(ObjectStoreError) -> PageVersion {
        guard pageIndex < ObjectStore.pageIndexMax else { throw .pageIndexOutOfRange(pageIndex, max: ObjectStore.pageIndexMax) }
        // Grouped reads must not take the mutex before joining the batch: a lookup under the mutex
        // per read serialises the callers and leaves each group with one read.
        guard readers.countMax > 0 else { return try readGrouped(objectID: objectID, pageIndex: pageIndex) }
        let resolved = store.withLock { box in box.store.resolve(objectID: objectID, pageIndex: pageIndex) }
        switch resolved {
        case .absent(let version):
            return version
        case .present(let physicalPage, let osn, let readOSN):
            if let reader = readers.take() {
                let page = reader.read(physicalPage)
                readers.give(reader)  // or drops it, when its ring failed
                if let page, let header = page.header, header.osn == osn,
                   header.objectID == objectID, header.pageIndex == pageIndex {
                    readers.parallelReads.add(1, ordering: .relaxed)
                    return PageVersion(payload: page.payload, pageOSN: osn, readOSN: readOSN)
                }
            }
        case .underLock:
            break
        }
        return try readGrouped(objectID: objectID, pageIndex: pageIndex)
    }

    /// One read in the leader/follower read batch: one io_uring submission under the mutex per group.
    private func readGrouped(objectID: UInt64, pageIndex: UInt64) throws(ObjectStoreError) -> PageVersion {
        try reads.submit((objectID, pageIndex)) { batch in
            store.withLock { box in box.store.read(batch: batch) }
        }.get()
    }

    /// Reads done outside the node's mutex, on pooled readers.
    public var parallelReads: UInt64 { readers.parallelReads.load(ordering: .relaxed) }

    /// Writes pages of one object (all or nothing, see `ObjectStore.write`), group-committed with
    /// whatever other callers write meanwhile. Returns once durable.
    public func write(objectID: UInt64, pages: ObjectStore.PageWrites) throws(ObjectStoreError) -> UInt64 {
        try refuseIfIsolated()
        if let sequencer {
            // Refused here, not in the log: a record every replica would refuse only spends an OSN.
            guard pages.count <= pagesPerWriteMax else { throw .tooManyPages(pages.count, max: pagesPerWriteMax) }
            for page in pages {
                guard page.index < ObjectStore.pageIndexMax else { throw .pageIndexOutOfRange(page.index, max: ObjectStore.pageIndexMax) }
                guard page.payload.count <= payloadBytesMax else { throw .payloadTooLarge(page.payload.count, max: payloadBytesMax) }
            }
            let record = LogRecord(objectID: objectID, pages: pages.map { ($0.index, $0.payload) },
                                   conditions: pages.map(\.condition))
            return try sequencer.propose(record).get()
        }
        return try writes.submit((objectID, pages)) { batch in
            store.withLock { box in box.store.write(batch: batch) }
        }.get()
    }

    /// Group commits done and the writes they carried (a ratio above 1 means batching happened).
    public var commitStats: (groupCommits: UInt64, writes: UInt64) { writes.stats }

    /// Read groups done and the reads they carried.
    public var readStats: (groups: UInt64, reads: UInt64) { reads.stats }

    /// A range of pages ordered at one OSN (see `ObjectStore.read(objectID:pageRange:)`).
    public func read(objectID: UInt64, pageRange: Range<UInt64>) throws(ObjectStoreError) -> [PageVersion] {
        try store.withLock { box throws(ObjectStoreError) in try box.store.read(objectID: objectID, pageRange: pageRange) }
    }

    public func create(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        try refuseIfIsolated()
        if let sequencer { return try sequencer.propose(LogRecord(.create, objectID: objectID)).get() }
        return try store.withLock { box throws(ObjectStoreError) in try box.store.create(objectID: objectID) }
    }

    public func delete(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        try refuseIfIsolated()
        if let sequencer { return try sequencer.propose(LogRecord(.delete, objectID: objectID)).get() }
        return try store.withLock { box throws(ObjectStoreError) in try box.store.delete(objectID: objectID) }
    }

    public func truncate(objectID: UInt64, pageCount: UInt64) throws(ObjectStoreError) -> UInt64 {
        try refuseIfIsolated()
        if let sequencer {
            guard pageCount <= ObjectStore.pageIndexMax else { throw .pageIndexOutOfRange(pageCount, max: ObjectStore.pageIndexMax) }
            return try sequencer.propose(LogRecord(.truncate(pageCount: pageCount), objectID: objectID)).get()
        }
        return try store.withLock { box throws(ObjectStoreError) in try box.store.truncate(objectID: objectID, pageCount: pageCount) }
    }

    /// Applies a shared log's records in order (see `ObjectStore.applyOrdered`): for the replica's
    /// sequencer only, one caller at a time. Blocks for the page writes.
    public func applyOrdered(_ records: [(osn: UInt64, record: LogRecord)]) -> [Result<UInt64, ObjectStoreError>] {
        store.withLock { box in box.store.applyOrdered(records) }
    }

    /// The checkpoint the store last wrote (a replica's sequencer publishes it, for log compaction).
    public var checkpointOSN: UInt64 { store.withLock { $0.store.checkpointOSN } }

    /// Where the node stands against its log: a node with its own log is always up to date.
    public var replicaStatus: ReplicaStatus {
        if let sequencer { return sequencer.status }
        let osn = lastOSN
        return ReplicaStatus(state: .following, appliedOSN: osn, logOSN: osn, contactAgeMs: 0)
    }

    /// Waits (at most `timeoutMs`) until the node has applied through `osn`, for reads that must see
    /// a write acknowledged by another node. A node with its own log has every acknowledged write.
    public func catchUp(to osn: UInt64, timeoutMs: Int) throws(ObjectStoreError) -> ReplicaStatus {
        if let sequencer { return try sequencer.catchUp(to: osn, timeoutMs: timeoutMs).get() }
        let status = replicaStatus
        guard status.appliedOSN >= osn else { throw .replication(.behind(appliedOSN: status.appliedOSN, wantedOSN: osn)) }
        return status
    }

    public func stat(objectID: UInt64) throws(ObjectStoreError) -> ObjectInfo {
        try store.withLock { box throws(ObjectStoreError) in try box.store.stat(objectID: objectID) }
    }

    public func list() -> [ObjectInfo] { store.withLock { $0.store.list() } }

    public var lastOSN: UInt64 { store.withLock { $0.store.lastOSN } }

    /// Why the node refuses every operation (see `ObjectStore.poisoned`), or nil when healthy.
    public var poisoned: ObjectStoreError? { store.withLock { $0.store.poisoned } }

    /// Refuses every client write (write, create, delete, truncate) with `isolated(reason)` from now on,
    /// or takes writes again (nil). Reads go on. With a shared log, records of other nodes are still
    /// applied (the log is the state machine's input); this node proposes nothing.
    public func isolate(reason: String?) {
        isolation.withLock { $0 = reason }
        isolated.store(reason != nil, ordering: .releasing)
    }

    /// Why writes are refused, or nil.
    public var isolationReason: String? { isolation.withLock { $0 } }

    private func refuseIfIsolated() throws(ObjectStoreError) {
        guard isolated.load(ordering: .acquiring), let reason = isolationReason else { return }
        throw .isolated(reason: reason)
    }

    /// Writes a checkpoint now (page map aside, then log compaction), so a restart replays nothing.
    /// Blocks other calls for its duration; for shutdown and maintenance.
    public func checkpoint() throws(ObjectStoreError) {
        try store.withLock { box throws(ObjectStoreError) in try box.store.checkpoint() }
    }

    public var payloadSizeBytes: Int { store.withLock { $0.store.payloadSizeBytes } }
}

/// Page files for reads outside the node's mutex: made on demand up to `countMax` (each its own
/// io_uring with one registered page buffer and the file opened again), kept for reuse. Any thread.
final class ReaderPool: Sendable {
    /// One page file, used by one thread at a time (taken from the pool, given back).
    final class Reader: @unchecked Sendable {  // unchecked: one thread at a time, by the pool's hand-off
        var file: PageFile
        init(file: consuming PageFile) { self.file = file }

        /// The page, checked (magic, CRC-32C); nil when the read or the check failed.
        func read(_ physicalPage: UInt64) -> PageFile.PageRead? {
            (try? file.read(physicalPages: [physicalPage]))?.first
        }
    }

    let configuration: PageFileConfiguration
    let countMax: Int
    let parallelReads = Atomic<UInt64>(0)
    /// After a reader could not be made, none is tried again for this long (a transient EMFILE,
    /// ENOMEM or io_uring limit must not turn pooled reads off for good).
    static let retryAfterFailureNs: UInt64 = 1_000_000_000
    private let state = Mutex<(idle: [Reader], made: Int, failedAtNs: UInt64?)>(([], 0, nil))

    init(configuration: PageFileConfiguration, countMax: Int) {
        self.configuration = configuration
        self.countMax = countMax
    }

    /// An idle reader, a new one while fewer than `countMax` exist, else nil (the caller reads under
    /// the node's mutex). After a reader cannot be made (no memory, io_uring limits) none is tried again.
    func take() -> Reader? {
        let now = Clock.monotonicNs()
        let decision: Reader?? = state.withLock { state in
            if let reader = state.idle.popLast() { return .some(reader) }
            if let failedAt = state.failedAtNs, now &- failedAt < Self.retryAfterFailureNs { return .some(nil) }
            guard state.made < countMax else { return .some(nil) }
            state.made += 1
            return nil  // make one, outside the lock
        }
        if let decision { return decision }
        do {
            let reader = Reader(file: try PageFile(configuration: configuration))
            state.withLock { $0.failedAtNs = nil }
            return reader
        } catch {
            state.withLock { state in
                state.made -= 1
                state.failedAtNs = now
            }
            return nil
        }
    }

    /// Back to the pool; a reader whose ring failed is dropped instead (a new one is made when needed).
    func give(_ reader: Reader) {
        let failed = reader.file.isFailed
        state.withLock { state in
            if failed { state.made -= 1 } else { state.idle.append(reader) }
        }
    }
}

/// Leader/follower batching: the first caller to find no leader becomes it and runs every request
/// queued meanwhile (up to `batchMax`) as one batch, again until its own is done, then hands
/// leadership to the oldest waiter. Followers block on a semaphore. Waiting requests are bounded by
/// the number of calling threads (each blocks until done).
final class Batcher<Request, Response>: Sendable {
    /// One caller's request. `result` is set by the leader before `done` is signalled and read by
    /// the caller after it waits: the semaphore orders them.
    private final class Pending: @unchecked Sendable {
        let request: Request
        var result: Result<Response, ObjectStoreError>?
        let done = DispatchSemaphore(value: 0)
        init(_ request: Request) { self.request = request }
    }

    private struct Queue: ~Copyable {
        var pending: [Pending] = []
        var leaderActive = false
        var batches: UInt64 = 0
        var requests: UInt64 = 0
    }

    private let queue = Mutex(Queue())
    let batchMax: Int

    init(batchMax: Int) {
        precondition(batchMax >= 1, "a batch takes at least one request")
        self.batchMax = batchMax
    }

    var stats: (UInt64, UInt64) { queue.withLock { ($0.batches, $0.requests) } }

    /// Runs `request` in some leader's batch; `execute` gets the requests in arrival order and returns
    /// one result each.
    func submit(_ request: Request,
                execute: ([Request]) -> [Result<Response, ObjectStoreError>]) -> Result<Response, ObjectStoreError> {
        let mine = Pending(request)
        let lead = queue.withLock { queue in
            queue.pending.append(mine)
            if queue.leaderActive { return false }
            queue.leaderActive = true
            return true
        }
        if !lead {
            mine.done.wait()
            // Woken without a result: the previous leader handed leadership on.
            if let result = mine.result { return result }
        }
        while mine.result == nil {
            let batch = queue.withLock { queue in
                let batch = Array(queue.pending.prefix(batchMax))
                queue.pending.removeFirst(batch.count)
                queue.batches += 1
                queue.requests += UInt64(batch.count)
                return batch
            }
            precondition(!batch.isEmpty, "the leader's own request is pending until done")
            let results = execute(batch.map(\.request))
            precondition(results.count == batch.count, "one result per request")
            for (pending, result) in zip(batch, results) {
                pending.result = result
                if pending !== mine { pending.done.signal() }
            }
        }
        let successor = queue.withLock { queue -> Pending? in
            guard let next = queue.pending.first else {
                queue.leaderActive = false
                return nil
            }
            return next
        }
        successor?.done.signal()
        return mine.result!
    }
}

/// Why an update gave up.
public enum UpdateError: Error, Equatable {
    case store(ObjectStoreError)
    /// Every attempt met a newer version (the last conflict's OSN).
    case tooManyConflicts(attempts: Int, lastOSN: UInt64)
}

/// Read-modify-write of one page with optimistic concurrency: read the page and its OSN, compute the
/// new bytes, write them on condition the page is unmodified since that OSN, and on a conflict wait
/// (exponential backoff with jitter, bounded) and start again. Returns the write's OSN and the value
/// written. `transform` may run several times; it must not have side effects. A write durable in the
/// log is returned with its OSN even when its page write or checkpoint failed after; any error but a
/// conflict (a failed log append, an unknown outcome; a refusal by a poisoned store) is thrown,
/// never retried: retrying the transform could apply it twice.
public func updatePage(
    _ node: StorageNode, objectID: UInt64, pageIndex: UInt64, attemptsMax: Int = 64,
    backoffNsMin: UInt64 = 10_000, backoffNsMax: UInt64 = 5_000_000,
    _ transform: ([UInt8]) -> [UInt8]
) throws(UpdateError) -> (osn: UInt64, payload: [UInt8]) {
    precondition(attemptsMax > 0, "at least one attempt")
    var backoff = backoffNsMin
    var lastOSN: UInt64 = 0
    for _ in 0..<attemptsMax {
        let current: PageVersion
        do { current = try node.read(objectID: objectID, pageIndex: pageIndex) } catch { throw .store(error) }
        let next = transform(current.payload)
        let condition: WriteCondition = current.pageOSN == 0 ? .absent : .unmodifiedSince(current.pageOSN)
        do {
            let osn = try node.write(objectID: objectID, pages: [(pageIndex, next, condition)])
            return (osn, next)
        } catch {
            // Anything but a conflict is thrown, never retried: a log error is an unknown outcome (the
            // write may be applied after a reopen) and a refusal of a poisoned store is not applied; only
            // the caller can settle the first, after the restart, by the write's effect it knows.
            guard case .conflict(_, _, let osn) = error else { throw .store(error) }
            lastOSN = osn
        }
        usleep(useconds_t((backoff / 2 + UInt64.random(in: 0...backoff / 2)) / 1_000))
        backoff = min(backoff * 2, backoffNsMax)
    }
    throw .tooManyConflicts(attempts: attemptsMax, lastOSN: lastOSN)
}
