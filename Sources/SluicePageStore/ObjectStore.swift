// Path: Sources/SluicePageStore/ObjectStore.swift — file-store objects over pages, with the OSN
// contract: every read says at which OSN it was ordered and when its page last changed; a write
// carrying an OSN is applied only if the page has not changed since, else rejected with the current OSN.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// A page as read: its bytes, the OSN of the write that last changed it (for an absent page, of the
/// truncate or delete that may have removed it; 0: nothing ever did) and the OSN at which the read
/// was ordered (every write up to it is visible).
public struct PageVersion: Sendable, Equatable {
    public var payload: [UInt8]
    public var pageOSN: UInt64
    public var readOSN: UInt64
}

/// When a page write may be applied.
public enum WriteCondition: Sendable, Equatable {
    case unconditional
    /// Only if the page has not been modified after this OSN (the `pageOSN` a read returned).
    case unmodifiedSince(UInt64)
    /// Only if the page was never written (create-if-absent).
    case absent
}

public enum ObjectStoreError: Error, Equatable, CustomStringConvertible {
    /// The page changed after the write's OSN (or exists, for `.absent`): nothing was written.
    case conflict(objectID: UInt64, pageIndex: UInt64, currentOSN: UInt64)
    case payloadTooLarge(Int, max: Int)
    case tooManyPages(Int, max: Int)
    /// `create` of an object that exists.
    case objectExists(UInt64)
    /// `delete`, `truncate` or `stat` of an object that does not exist.
    case noSuchObject(UInt64)
    case page(PageStoreError)
    case log(LogError)
    /// The checkpoint file at `path` is unreadable, corrupt or does not fit the log.
    case checkpoint(path: String, CheckpointProblem)
    /// A page index (or page count) beyond `ObjectStore.pageIndexMax`.
    case pageIndexOutOfRange(UInt64, max: UInt64)
    /// An earlier page write or log flush failed: the map may be ahead of the disk, so the store takes
    /// no more writes or checkpoints until it is reopened (reopening redoes the pages from the log).
    case failed(StoreFailure)
    /// Another open store (this process or another, `holderPID` as the lock file records it, nil when
    /// unreadable) holds the exclusive lock on `lockPath`: two writers would hand out the same OSNs.
    case locked(lockPath: String, holderPID: Int32?)
    /// The lock file could not be opened, locked or written.
    case lockFile(SyscallError)
    /// The store's recorded format (at `path`) does not match how it is being opened.
    case format(path: String, FormatProblem)
    /// The shared (replicated) log refused, lost or has not yet settled the operation (see `ReplicationProblem`).
    case replication(ReplicationProblem)
    /// The device under the node is isolated (its firmware check failed): writes are refused until an
    /// operator readmits it.
    case isolated(reason: String)

    public var description: String {
        switch self {
        case .conflict(let objectID, let pageIndex, let currentOSN):
            "object \(objectID) page \(pageIndex) changed at OSN \(currentOSN)"
        case .payloadTooLarge(let size, let max): "payload of \(size) bytes is above the page payload of \(max)"
        case .tooManyPages(let count, let max): "\(count) pages in one operation, at most \(max)"
        case .objectExists(let objectID): "object \(objectID) exists"
        case .noSuchObject(let objectID): "no object \(objectID)"
        case .page(let error): "\(error)"
        case .log(let error): "log: \(error)"
        case .checkpoint(let path, let problem): "checkpoint \(path): \(problem)"
        case .pageIndexOutOfRange(let index, let max): "page index \(index) is not below \(max)"
        case .failed(let failure): "store failed (reopen to recover): \(failure)"
        case .locked(let lockPath, let holderPID):
            "data directory is in use: \(lockPath) is locked by "
                + (holderPID.map { "process \($0)" } ?? "another process (pid not recorded)")
        case .lockFile(let error): "lock file: \(error)"
        case .format(let path, let problem): "\(path): \(problem)"
        case .replication(let problem): "replicated log: \(problem)"
        case .isolated(let reason): "storage device isolated, writes refused: \(reason)"
        }
    }
}

/// What is wrong with a checkpoint file.
public enum CheckpointProblem: Sendable, Equatable {
    case shortRead(sizeBytes: Int, readBytes: Int)
    /// Magic, length or CRC-32C do not check out.
    case badFrame
    /// The content ends before the counts it declares.
    case cutShort
    /// A page map entry points at or past the file's end as the checkpoint itself records it.
    case pageBeyondFile(physicalPage: UInt64, nextPhysical: UInt64)
    /// The log holds no records after the checkpoint but ends elsewhere: records are missing.
    case logMismatch(checkpointOSN: UInt64, logOSN: UInt64)
}

/// Why a store took no more writes: the underlying error of the write or flush that failed.
public enum StoreFailure: Sendable, Equatable {
    case logAppend(LogError)
    case pageWrite(PageStoreError)
    case pageSync(PageStoreError)
}

/// What `stat` and `list` say about an object.
public struct ObjectInfo: Sendable, Equatable {
    public var objectID: UInt64
    /// One past the highest page index written, or the count set by the last truncate.
    public var pageCount: UInt64
    /// OSN of the last operation on the object (create, write or truncate).
    public var lastOSN: UInt64

    public init(objectID: UInt64, pageCount: UInt64, lastOSN: UInt64) {
        self.objectID = objectID
        self.pageCount = pageCount
        self.lastOSN = lastOSN
    }
}

/// Objects made of pages in one `PageFile`, ordered by an `OperationLog`. An operation goes to the log
/// first (durable, OSN assigned), then to its pages; opening replays the log and redoes any page the
/// crash left behind. Objects are created explicitly or by their first write. One thread at a time
/// (the page file's ring is not shared).
///
/// A page's OSN for conditions is the OSN of the write that last changed it; a page that is absent
/// because a truncate removed it has its object's last truncate OSN, and one whose object was
/// deleted has the store's last delete OSN (bounded state, and never a false "unchanged").
public final class ObjectStore {
    public static let pagesPerWriteMax = 64
    /// Page indices are below this (2^40 pages: 4 PiB of 4 KiB pages per object).
    public static let pageIndexMax: UInt64 = 1 << 40
    /// Set when a page write or checkpoint failed after the log accepted the write.
    private var failure: ObjectStoreError?
    /// Held for the store's life: no other store opens these files meanwhile.
    private let lock: StoreLock

    /// Why the store refuses every operation (a log or page write failed; reopen to recover), or nil.
    public var poisoned: ObjectStoreError? { failure }
    /// Checkpoints that failed after a write (the writes stayed durable in the log; the next write
    /// due for a checkpoint tries again).
    public private(set) var checkpointFailureCount = 0
    private var file: PageFile
    /// The store's own log, or nil for a replica, whose OSNs come from a shared log (`applyOrdered`).
    private let log: OperationLog?
    /// A replica's last applied OSN (a store with a log of its own asks the log).
    private var appliedOSN: UInt64 = 0
    private var objects: [UInt64: ObjectState] = [:]
    /// Physical pages freed by delete and truncate, reused before the file grows.
    private var freePhysical: [UInt64] = []
    private var nextPhysical: UInt64 = 0
    private var lastDeleteOSN: UInt64 = 0
    /// Where the page map is saved; the log is compacted after each save.
    public let checkpointPath: String
    /// A checkpoint is taken once this many records were logged since the last one.
    public let checkpointEveryRecords: UInt64
    public private(set) var checkpointOSN: UInt64 = 0

    private struct ObjectState {
        /// Page index -> physical page and the OSN that last wrote it.
        var pages: [UInt64: (physical: UInt64, osn: UInt64)] = [:]
        var pageCount: UInt64 = 0
        var lastOSN: UInt64
        var truncateOSN: UInt64 = 0
    }

    private struct PageKey: Hashable {
        var object: UInt64
        var index: UInt64
    }

    public var payloadSizeBytes: Int { file.payloadSizeBytes }
    /// The OSN every read is ordered at: the log's last record, or a replica's last applied one.
    public var lastOSN: UInt64 { log?.lastOSN ?? appliedOSN }
    /// True for a replica (OSNs from a shared log, applied through `applyOrdered`).
    public var isReplica: Bool { log == nil }

    /// The lock every open store holds: the page file's path with ".lock".
    public static func lockPath(pages: String) -> String { pages + ".lock" }
    /// The format record (page size, format version): the page file's path with ".format".
    public static func formatPath(pages: String) -> String { pages + ".format" }

    /// Takes the store's lock (`lock`, else one on `lockPath(pages:)`; a store open elsewhere is
    /// `.locked`), opens the page file and checks its size against the format record (written when
    /// missing), loads the last checkpoint (default path: the page file's with ".checkpoint"), replays
    /// the log after it and redoes pages whose on-disk OSN is older than the log's (a write
    /// acknowledged by the log, cut off before its pages). The lock is held until the store is freed.
    public convenience init(pages: PageFileConfiguration, log: OperationLog, checkpointPath: String? = nil,
                            checkpointEveryRecords: UInt64 = 4_096, lock: StoreLock? = nil) throws(ObjectStoreError) {
        try self.init(pages: pages, ownLog: log, checkpointPath: checkpointPath,
                      checkpointEveryRecords: checkpointEveryRecords, lock: lock)
    }

    /// A replica's store: the lock, page file, format check and checkpoint as above, but no log of its
    /// own. `lastOSN` starts at the checkpoint's OSN; the caller applies the shared log's records after it
    /// with `applyOrdered` (which rewrites every page written since, so a crash leaves nothing to redo
    /// here), and serves reads only once it has (a page written after the checkpoint reads as changed).
    public convenience init(replicaPages pages: PageFileConfiguration, checkpointPath: String? = nil,
                            checkpointEveryRecords: UInt64 = 4_096, lock: StoreLock? = nil) throws(ObjectStoreError) {
        try self.init(pages: pages, ownLog: nil, checkpointPath: checkpointPath,
                      checkpointEveryRecords: checkpointEveryRecords, lock: lock)
    }

    private init(pages: PageFileConfiguration, ownLog log: OperationLog?, checkpointPath: String?,
                 checkpointEveryRecords: UInt64, lock: StoreLock?) throws(ObjectStoreError) {
        precondition(checkpointEveryRecords > 0, "checkpoints need a positive interval")
        if let lock { self.lock = lock } else { self.lock = try StoreLock(path: Self.lockPath(pages: pages.path)) }
        do { file = try PageFile(configuration: pages) } catch { throw .page(error) }
        self.log = log
        self.checkpointPath = checkpointPath ?? pages.path + ".checkpoint"
        self.checkpointEveryRecords = checkpointEveryRecords
        // Before anything is read or redone: pages of another size would be rewritten as garbage.
        try checkFormat(path: Self.formatPath(pages: pages.path))
        try loadCheckpoint()
        guard let log else {
            appliedOSN = checkpointOSN
            return
        }
        let records: [(osn: UInt64, record: LogRecord)]
        do { records = try log.records(after: checkpointOSN) } catch { throw .log(error) }
        if let first = records.first, first.osn != checkpointOSN + 1 {
            throw .log(.gap(expected: checkpointOSN + 1, found: first.osn))
        }
        if records.isEmpty, log.lastOSN != checkpointOSN {
            throw .checkpoint(path: self.checkpointPath, .logMismatch(checkpointOSN: checkpointOSN, logOSN: log.lastOSN))
        }
        var latest: [PageKey: (osn: UInt64, payload: [UInt8])] = [:]
        for (osn, record) in records {
            let removed = apply(record, osn: osn)
            for key in removed { latest[key] = nil }
            for page in record.pages { latest[PageKey(object: record.objectID, index: page.index)] = (osn, page.payload) }
        }
        try redo(latest)
    }

    /// Checks the page size against the format record, or writes the record when there is none (a
    /// new store; or one older than format records, whose first page must check out at this size).
    private func checkFormat(path: String) throws(ObjectStoreError) {
        let pageSizeBytes = file.configuration.pageSizeBytes
        if let recorded = try FormatRecord.read(path: path) {
            guard recorded == pageSizeBytes else { throw .format(path: path, .pageSizeMismatch(recorded: recorded, opened: pageSizeBytes)) }
            return
        }
        guard let sizeBytes = fileSizeBytes(file.configuration.path) else {
            throw .format(path: path, .io(SyscallError("stat(\(file.configuration.path))", Errno(rawValue: errno))))
        }
        if sizeBytes > 0 {
            guard sizeBytes % pageSizeBytes == 0, (try? file.read(physicalPages: [0])) != nil else {
                throw .format(path: path, .unrecordedPageSizeMismatch(opened: pageSizeBytes))
            }
        }
        try FormatRecord.write(path: path, pageSizeBytes: pageSizeBytes)
        try syncDirectory(of: path)
    }

    /// Applies a logged operation to the page map (live and during replay, so physical pages are
    /// allocated the same way both times). Returns the pages it removed.
    @discardableResult
    private func apply(_ record: LogRecord, osn: UInt64) -> [PageKey] {
        let id = record.objectID
        switch record.kind {
        case .create:
            // A page of an earlier incarnation (deleted by `lastDeleteOSN` at the latest) must not look
            // unchanged to a write carrying an OSN read before that delete.
            objects[id] = ObjectState(lastOSN: osn, truncateOSN: lastDeleteOSN)
            return []
        case .write:
            var object = objects[id] ?? ObjectState(lastOSN: osn, truncateOSN: lastDeleteOSN)
            for page in record.pages {
                if object.pages[page.index] == nil {
                    object.pages[page.index] = (allocatePhysical(), osn)
                }
                object.pages[page.index]!.osn = osn
                object.pageCount = max(object.pageCount, page.index + 1)
            }
            object.lastOSN = osn
            objects[id] = object
            return []
        case .delete:
            guard let object = objects.removeValue(forKey: id) else { return [] }
            lastDeleteOSN = osn
            freePhysical += object.pages.values.map(\.physical).sorted()
            return object.pages.keys.map { PageKey(object: id, index: $0) }
        case .truncate(let count):
            guard var object = objects[id] else { return [] }
            let cut = object.pages.keys.filter { $0 >= count }.sorted()
            for index in cut { freePhysical.append(object.pages.removeValue(forKey: index)!.physical) }
            object.pageCount = count
            object.lastOSN = osn
            object.truncateOSN = osn
            objects[id] = object
            return cut.map { PageKey(object: id, index: $0) }
        }
    }

    private func allocatePhysical() -> UInt64 {
        if let physical = freePhysical.popLast() { return physical }
        defer { nextPhysical += 1 }
        return nextPhysical
    }

    private func physical(_ key: PageKey) -> UInt64 { objects[key.object]!.pages[key.index]!.physical }

    private func redo(_ latest: [PageKey: (osn: UInt64, payload: [UInt8])]) throws(ObjectStoreError) {
        let keys = Array(latest.keys)
        var start = 0
        while start < keys.count {
            let batch = Array(keys[start..<min(start + file.configuration.queueDepth, keys.count)])
            let onDisk: [PageFile.PageRead]
            do { onDisk = try file.read(physicalPages: batch.map(physical)) } catch {
                // A torn page is expected after a crash mid-write: the log has its content.
                guard case .corruptPage = error else { throw .page(error) }
                try rewrite(batch.map { ($0, latest[$0]!) })
                start += batch.count
                continue
            }
            let stale = batch.indices.filter {
                let header = onDisk[$0].header
                return header?.osn != latest[batch[$0]]!.osn || header?.objectID != batch[$0].object
                    || header?.pageIndex != batch[$0].index
            }
            if !stale.isEmpty { try rewrite(stale.map { (batch[$0], latest[batch[$0]]!) }) }
            start += batch.count
        }
        do { try file.sync() } catch { throw .page(error) }
    }

    private func rewrite(_ pages: [(PageKey, (osn: UInt64, payload: [UInt8]))]) throws(ObjectStoreError) {
        do { try rewritePages(pages) } catch { throw .page(error) }
    }

    private func rewritePages(_ pages: [(PageKey, (osn: UInt64, payload: [UInt8]))]) throws(PageStoreError) {
        try file.write(physicalPages: pages.map { physical($0.0) },
                       headers: pages.map { PageHeader(osn: $0.1.osn, objectID: $0.0.object, pageIndex: $0.0.index) },
                       payloads: pages.map { $0.1.payload })
    }

    /// The OSN a condition compares against: the page's last write, else what last removed it.
    private func currentOSN(objectID: UInt64, pageIndex: UInt64) -> UInt64 {
        guard let object = objects[objectID] else { return lastDeleteOSN }
        return object.pages[pageIndex]?.osn ?? object.truncateOSN
    }

    /// Where a single-page read stands after looking at the page map only (no I/O).
    public enum ResolvedRead: Sendable {
        /// Absent (never written, removed): the answer, complete.
        case absent(PageVersion)
        /// On `physicalPage` with version `osn`, as of `readOSN`: read it and check its header.
        case present(physicalPage: UInt64, osn: UInt64, readOSN: UInt64)
        /// The store is poisoned: read under its lock only, where its own state decides the answer.
        case underLock
    }

    /// What a read of the page would return, from the page map alone; the caller does the I/O (on a
    /// `PageFile` of its own, without the store's lock) and must check the page's header against
    /// `osn`, object and index: a mismatch means the page changed since, and the read is redone here.
    public func resolve(objectID: UInt64, pageIndex: UInt64) -> ResolvedRead {
        if failure != nil { return .underLock }
        let readOSN = lastOSN
        guard let entry = objects[objectID]?.pages[pageIndex] else {
            return .absent(PageVersion(payload: [], pageOSN: currentOSN(objectID: objectID, pageIndex: pageIndex),
                                       readOSN: readOSN))
        }
        return .present(physicalPage: entry.physical, osn: entry.osn, readOSN: readOSN)
    }

    /// The page file's configuration (for readers that open the file themselves).
    public var pageFileConfiguration: PageFileConfiguration { file.configuration }

    /// Reads one page. An absent page reads as empty, with the OSN that removed it (0: never
    /// written). A corrupt page throws; it is never returned as data.
    public func read(objectID: UInt64, pageIndex: UInt64) throws(ObjectStoreError) -> PageVersion {
        guard pageIndex < Self.pageIndexMax else { throw .pageIndexOutOfRange(pageIndex, max: Self.pageIndexMax) }
        let readOSN = lastOSN
        guard let entry = objects[objectID]?.pages[pageIndex] else {
            return PageVersion(payload: [], pageOSN: currentOSN(objectID: objectID, pageIndex: pageIndex), readOSN: readOSN)
        }
        let pages: [PageFile.PageRead]
        do { pages = try file.read(physicalPages: [entry.physical]) } catch { throw .page(error) }
        guard let header = pages[0].header, header.osn == entry.osn, header.objectID == objectID,
              header.pageIndex == pageIndex
        else {
            // The checksum held but the page is not the one the map says: a lost or misdirected write.
            throw .page(.corruptPage(physicalPage: entry.physical, reason: "header does not match the page map"))
        }
        return PageVersion(payload: pages[0].payload, pageOSN: header.osn, readOSN: readOSN)
    }

    /// Several single-page reads in one io_uring batch per `queueDepth` pages, all ordered at the
    /// same OSN. A corrupt page fails only its own read.
    public func read(batch requests: [(objectID: UInt64, pageIndex: UInt64)]) -> [Result<PageVersion, ObjectStoreError>] {
        let readOSN = lastOSN
        var results = requests.map { request -> Result<PageVersion, ObjectStoreError> in
            guard request.pageIndex < Self.pageIndexMax else {
                return .failure(.pageIndexOutOfRange(request.pageIndex, max: Self.pageIndexMax))
            }
            return .success(PageVersion(payload: [], pageOSN: currentOSN(objectID: request.objectID, pageIndex: request.pageIndex),
                                 readOSN: readOSN))
        }
        let present = requests.indices.filter {
            requests[$0].pageIndex < Self.pageIndexMax && objects[requests[$0].objectID]?.pages[requests[$0].pageIndex] != nil
        }
        var start = 0
        while start < present.count {
            let slots = Array(present[start..<min(start + file.configuration.queueDepth, present.count)])
            start += slots.count
            let entries = slots.map { objects[requests[$0].objectID]!.pages[requests[$0].pageIndex]! }
            let pages: [PageFile.PageRead]
            do { pages = try file.read(physicalPages: entries.map(\.physical)) } catch {
                // Find whose page it was: read them one by one.
                for slot in slots { results[slot] = Result { () throws(ObjectStoreError) in try read(objectID: requests[slot].objectID, pageIndex: requests[slot].pageIndex) } }
                continue
            }
            for (position, slot) in slots.enumerated() {
                let request = requests[slot]
                guard let header = pages[position].header, header.osn == entries[position].osn,
                      header.objectID == request.objectID, header.pageIndex == request.pageIndex
                else {
                    results[slot] = .failure(.page(.corruptPage(physicalPage: entries[position].physical,
                                                                reason: "header does not match the page map")))
                    continue
                }
                results[slot] = .success(PageVersion(payload: pages[position].payload, pageOSN: header.osn, readOSN: readOSN))
            }
        }
        return results
    }

    /// Pages read per range read at most.
    public static let pagesPerReadMax = 1_024

    /// Reads a range of pages, all ordered at one OSN (the same `readOSN` in each): one io_uring
    /// batch per `queueDepth` pages. Absent pages read as empty, as in `read`. A corrupt page throws.
    public func read(objectID: UInt64, pageRange: Range<UInt64>) throws(ObjectStoreError) -> [PageVersion] {
        guard pageRange.upperBound <= Self.pageIndexMax else { throw .pageIndexOutOfRange(pageRange.upperBound, max: Self.pageIndexMax) }
        guard pageRange.count <= Self.pagesPerReadMax else { throw .tooManyPages(pageRange.count, max: Self.pagesPerReadMax) }
        let readOSN = lastOSN
        var versions = pageRange.map {
            PageVersion(payload: [], pageOSN: currentOSN(objectID: objectID, pageIndex: $0), readOSN: readOSN)
        }
        let present = pageRange.filter { objects[objectID]?.pages[$0] != nil }
        var start = 0
        while start < present.count {
            let batch = Array(present[start..<min(start + file.configuration.queueDepth, present.count)])
            let entries = batch.map { objects[objectID]!.pages[$0]! }
            let pages: [PageFile.PageRead]
            do { pages = try file.read(physicalPages: entries.map(\.physical)) } catch { throw .page(error) }
            for (slot, index) in batch.enumerated() {
                guard let header = pages[slot].header, header.osn == entries[slot].osn, header.objectID == objectID,
                      header.pageIndex == index
                else { throw .page(.corruptPage(physicalPage: entries[slot].physical, reason: "header does not match the page map")) }
                versions[Int(index - pageRange.lowerBound)] = PageVersion(payload: pages[slot].payload, pageOSN: header.osn,
                                                                          readOSN: readOSN)
            }
            start += batch.count
        }
        return versions
    }

    /// One object's page writes, as `write` and `write(batch:)` take them.
    public typealias PageWrites = [(index: UInt64, payload: [UInt8], condition: WriteCondition)]

    /// Writes pages of one object, all or nothing: every condition is checked first; if any fails,
    /// nothing is written and the first conflict is thrown with the page's current OSN. Returns the
    /// write's OSN once it is durable in the log (and on its pages). Creates the object if absent.
    public func write(objectID: UInt64, pages: PageWrites) throws(ObjectStoreError) -> UInt64 {
        try write(batch: [(objectID, pages)])[0].get()
    }

    /// Several writes as one group commit: each is checked in order against the state the earlier
    /// accepted ones left (so two conditional writes of one page in a batch cannot both win), the
    /// accepted ones go to the log in one append (one flush), then to their pages. Results are in
    /// request order; a failure of the log or the pages fails every accepted write of the batch.
    public func write(batch requests: [(objectID: UInt64, pages: PageWrites)]) -> [Result<UInt64, ObjectStoreError>] {
        var results = [Result<UInt64, ObjectStoreError>](repeating: .failure(.tooManyPages(0, max: 0)), count: requests.count)
        var accepted: [Int] = []
        var records: [LogRecord] = []
        // Pages written earlier in this batch: their OSN is not assigned yet, any later condition on
        // them but `.unconditional` conflicts (it was read before this batch's write).
        var touched: [PageKey: Int] = [:]  // page -> position of its last record in `records`
        let pagesMax = min(Self.pagesPerWriteMax, file.configuration.queueDepth)
        if let failure { return requests.map { _ in .failure(failure) } }
        requestLoop: for (slot, request) in requests.enumerated() {
            guard request.pages.count <= pagesMax else {
                results[slot] = .failure(.tooManyPages(request.pages.count, max: pagesMax))
                continue
            }
            for page in request.pages {
                guard page.index < Self.pageIndexMax else {
                    results[slot] = .failure(.pageIndexOutOfRange(page.index, max: Self.pageIndexMax))
                    continue requestLoop
                }
                guard page.payload.count <= file.payloadSizeBytes else {
                    results[slot] = .failure(.payloadTooLarge(page.payload.count, max: file.payloadSizeBytes))
                    continue requestLoop
                }
                let key = PageKey(object: request.objectID, index: page.index)
                let current = currentOSN(objectID: request.objectID, pageIndex: page.index)
                let pending = touched[key] != nil
                let exists = pending || objects[request.objectID]?.pages[page.index] != nil
                switch page.condition {
                case .unconditional: continue
                case .unmodifiedSince(let osn) where pending || current > osn: break
                case .absent where exists: break
                default: continue
                }
                // Conflict with a write earlier in the batch: report the OSN it is about to get.
                let currentOSN = touched[key].map { lastOSN + 1 + UInt64($0) } ?? current
                results[slot] = .failure(.conflict(objectID: request.objectID, pageIndex: page.index, currentOSN: currentOSN))
                continue requestLoop
            }
            for page in request.pages { touched[PageKey(object: request.objectID, index: page.index)] = records.count }
            accepted.append(slot)
            records.append(LogRecord(objectID: request.objectID, pages: request.pages.map { ($0.index, $0.payload) }))
        }
        guard !records.isEmpty else { return results }
        guard let log else { preconditionFailure("a replica's writes are proposed to its shared log, then applied with applyOrdered") }
        let first: UInt64
        do { first = try log.append(batch: records) } catch {
            for slot in accepted { results[slot] = .failure(.log(error)) }
            failure = .failed(.logAppend(error))
            return results
        }
        var pages: [(PageKey, (osn: UInt64, payload: [UInt8]))] = []
        for (offset, record) in records.enumerated() {
            let osn = first + UInt64(offset)
            apply(record, osn: osn)
            for page in record.pages { pages.append((PageKey(object: record.objectID, index: page.index), (osn, page.payload))) }
        }
        // A page written twice in the batch: only its last version goes to disk.
        var last: [PageKey: Int] = [:]
        for (position, page) in pages.enumerated() { last[page.0] = position }
        let unique = pages.indices.filter { last[pages[$0].0] == $0 }.map { pages[$0] }
        var start = 0
        while start < unique.count {
            let end = min(start + file.configuration.queueDepth, unique.count)
            do { try rewritePages(Array(unique[start..<end])) } catch {
                // The log has these writes; the disk may not. Stop here: a reopen redoes them.
                self.failure = .failed(.pageWrite(error))
                break
            }
            start = end
        }
        if self.failure == nil {
            do { try checkpointIfDue() } catch { checkpointFailureCount += 1 }
        }
        for (offset, slot) in accepted.enumerated() {
            // Durable in the log at this OSN, so applied, whatever the page or checkpoint I/O did: a
            // reopen redoes the pages from the log, and a failed checkpoint only lengthens the replay.
            // Reporting an error here would make an applied write look failed (a client retrying its
            // transform would apply it twice). A failed page write still poisons the store for the
            // writes after these.
            results[slot] = .success(first + UInt64(offset))
        }
        return results
    }

    /// Applies records of a shared log, in its order, to a replica (`init(replicaPages:)`); OSNs are
    /// `lastOSN + 1`, `+ 2`, ... (the caller's order is the log's, gap-free). Each record's outcome is
    /// decided here, against the state the records before it left, by checks that depend only on that
    /// state and the record, so every replica decides the same: a write whose condition fails is a
    /// conflict with the page's current OSN and changes nothing, but its OSN is spent like any other.
    /// Then the changed pages are written (a page written twice: its last version) and a checkpoint is
    /// taken when due. A poisoned replica applies nothing (every outcome is its failure, `lastOSN` stays):
    /// reopening recovers it from its checkpoint and the shared log.
    public func applyOrdered(_ records: [(osn: UInt64, record: LogRecord)]) -> [Result<UInt64, ObjectStoreError>] {
        precondition(log == nil, "only a replica applies a shared log's records")
        if let failure { return records.map { _ in .failure(failure) } }
        var outcomes: [Result<UInt64, ObjectStoreError>] = []
        outcomes.reserveCapacity(records.count)
        var pending: [PageKey: (osn: UInt64, payload: [UInt8])] = [:]
        var order: [PageKey] = []
        for (osn, record) in records {
            precondition(osn == appliedOSN + 1, "shared log records apply in order without gaps")
            if let refusal = decide(record) {
                outcomes.append(.failure(refusal))
            } else {
                for key in apply(record, osn: osn) { pending[key] = nil }
                for page in record.pages {
                    let key = PageKey(object: record.objectID, index: page.index)
                    if pending.updateValue((osn, page.payload), forKey: key) == nil { order.append(key) }
                }
                outcomes.append(.success(osn))
            }
            appliedOSN = osn
        }
        let writes = order.compactMap { key in pending[key].map { (key, $0) } }
        var start = 0
        while start < writes.count {
            let end = min(start + file.configuration.queueDepth, writes.count)
            do { try rewritePages(Array(writes[start..<end])) } catch {
                // The map is ahead of the disk: stop here; a reopen re-applies from the checkpoint.
                failure = .failed(.pageWrite(error))
                return outcomes
            }
            start = end
        }
        do { try checkpointIfDue() } catch { checkpointFailureCount += 1 }
        return outcomes
    }

    /// Why a shared log's record is refused at apply time, or nil to apply it. Depends only on the
    /// replica's state and the record (never on local settings but the page size, which every replica
    /// of one log shares), so every replica decides the same.
    private func decide(_ record: LogRecord) -> ObjectStoreError? {
        let id = record.objectID
        switch record.kind {
        case .create:
            return objects[id] == nil ? nil : .objectExists(id)
        case .delete:
            return objects[id] == nil ? .noSuchObject(id) : nil
        case .truncate(let count):
            guard objects[id] != nil else { return .noSuchObject(id) }
            return count <= Self.pageIndexMax ? nil : .pageIndexOutOfRange(count, max: Self.pageIndexMax)
        case .write:
            guard record.pages.count <= Self.pagesPerWriteMax else {
                return .tooManyPages(record.pages.count, max: Self.pagesPerWriteMax)
            }
            guard record.conditions.isEmpty || record.conditions.count == record.pages.count else {
                return .tooManyPages(record.conditions.count, max: record.pages.count)
            }
            var seen = Set<UInt64>()
            for (position, page) in record.pages.enumerated() {
                guard page.index < Self.pageIndexMax else { return .pageIndexOutOfRange(page.index, max: Self.pageIndexMax) }
                guard page.payload.count <= file.payloadSizeBytes else {
                    return .payloadTooLarge(page.payload.count, max: file.payloadSizeBytes)
                }
                let current = currentOSN(objectID: id, pageIndex: page.index)
                // A page twice in one write: its second condition was read before the first was applied.
                let exists = !seen.insert(page.index).inserted || objects[id]?.pages[page.index] != nil
                switch record.conditions.isEmpty ? .unconditional : record.conditions[position] {
                case .unconditional: continue
                case .unmodifiedSince(let osn) where current > osn: break
                case .absent where exists: break
                default: continue
                }
                return .conflict(objectID: id, pageIndex: page.index, currentOSN: current)
            }
            return nil
        }
    }

    /// Saves the page map at `lastOSN` (pages synced first, file written aside, fsynced, renamed),
    /// then compacts the log: a reopen replays only what came after. Blocks for three flushes.
    public func checkpoint() throws(ObjectStoreError) {
        if let failure { throw failure }
        do { try file.sync() } catch {
            failure = .failed(.pageSync(error))
            throw .page(error)
        }
        var out = CheckpointBytes()
        out.put(lastOSN)
        out.put(nextPhysical)
        out.put(lastDeleteOSN)
        out.put(UInt64(freePhysical.count))
        for physical in freePhysical { out.put(physical) }
        out.put(UInt64(objects.count))
        for (id, object) in objects {
            out.put(id)
            out.put(object.pageCount)
            out.put(object.lastOSN)
            out.put(object.truncateOSN)
            out.put(UInt64(object.pages.count))
            for (index, page) in object.pages {
                out.put(index)
                out.put(page.physical)
                out.put(page.osn)
            }
        }
        var framed = CheckpointBytes()
        framed.put(CheckpointBytes.magic)
        framed.put(sluice_crc32c(0, out.bytes, out.bytes.count))
        framed.put(UInt64(out.bytes.count))
        framed.bytes += out.bytes
        let temporary = checkpointPath + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .page(.syscall(SyscallError("open(\(temporary))", Errno(rawValue: errno)))) }
        let written = framed.bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        let saved = errno
        close(fd)
        guard written == framed.bytes.count, synced else {
            throw .page(.syscall(SyscallError("write(\(temporary))", Errno(rawValue: written < 0 || !synced ? saved : EIO))))
        }
        guard rename(temporary, checkpointPath) == 0 else {
            throw .page(.syscall(SyscallError("rename(\(checkpointPath))", Errno(rawValue: errno))))
        }
        try syncDirectory(of: checkpointPath)
        checkpointOSN = lastOSN
        do { try log?.compact() } catch { throw .log(error) }
    }

    private func checkpointIfDue() throws(ObjectStoreError) {
        if lastOSN - checkpointOSN >= checkpointEveryRecords { try checkpoint() }
    }

    private func syncDirectory(of path: String) throws(ObjectStoreError) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let fd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .page(.syscall(SyscallError("open(\(directory))", Errno(rawValue: errno)))) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .page(.syscall(SyscallError("fsync(\(directory))", Errno(rawValue: errno)))) }
    }

    private func loadCheckpoint() throws(ObjectStoreError) {
        let fd = open(checkpointPath, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            guard errno == ENOENT else { throw .page(.syscall(SyscallError("open(\(checkpointPath))", Errno(rawValue: errno)))) }
            return
        }
        defer { close(fd) }
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0 else { throw .page(.syscall(SyscallError("fstat(\(checkpointPath))", Errno(rawValue: errno)))) }
        var data = [UInt8](repeating: 0, count: Int(info.st_size))
        let got = data.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard got == data.count else { throw .checkpoint(path: checkpointPath, .shortRead(sizeBytes: data.count, readBytes: got)) }
        var input = CheckpointReader(bytes: data)
        guard let magic = input.u32(), magic == CheckpointBytes.magic, let crc = input.u32(), let length = input.u64(),
              length == UInt64(data.count - 16),
              sluice_crc32c(0, Array(data[16...]), data.count - 16) == crc
        else { throw .checkpoint(path: checkpointPath, .badFrame) }
        guard let osn = input.u64(), let next = input.u64(), let deleted = input.u64(), let freeCount = input.u64()
        else { throw .checkpoint(path: checkpointPath, .cutShort) }
        var free: [UInt64] = []
        for _ in 0..<freeCount {
            guard let physical = input.u64() else { throw .checkpoint(path: checkpointPath, .cutShort) }
            free.append(physical)
        }
        guard let objectCount = input.u64() else { throw .checkpoint(path: checkpointPath, .cutShort) }
        var loaded: [UInt64: ObjectState] = [:]
        for _ in 0..<objectCount {
            guard let id = input.u64(), let pageCount = input.u64(), let lastOSN = input.u64(),
                  let truncateOSN = input.u64(), let pages = input.u64()
            else { throw .checkpoint(path: checkpointPath, .cutShort) }
            var object = ObjectState(pageCount: pageCount, lastOSN: lastOSN, truncateOSN: truncateOSN)
            for _ in 0..<pages {
                guard let index = input.u64(), let physical = input.u64(), let pageOSN = input.u64()
                else { throw .checkpoint(path: checkpointPath, .cutShort) }
                guard physical < next
                else { throw .checkpoint(path: checkpointPath, .pageBeyondFile(physicalPage: physical, nextPhysical: next)) }
                object.pages[index] = (physical, pageOSN)
            }
            loaded[id] = object
        }
        checkpointOSN = osn
        nextPhysical = next
        lastDeleteOSN = deleted
        freePhysical = free
        objects = loaded
    }

    /// A create, delete or truncate: logged, applied, and a checkpoint if one is due.
    private func logAndApply(_ record: LogRecord) throws(ObjectStoreError) -> UInt64 {
        if let failure { throw failure }
        guard let log else { preconditionFailure("a replica's operations are proposed to its shared log, then applied with applyOrdered") }
        let osn: UInt64
        do { osn = try log.append(record) } catch {
            failure = .failed(.logAppend(error))
            throw .log(error)
        }
        apply(record, osn: osn)
        try checkpointIfDue()
        return osn
    }

    /// Creates an empty object. Throws `objectExists` if it exists.
    public func create(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        guard objects[objectID] == nil else { throw .objectExists(objectID) }
        return try logAndApply(LogRecord(.create, objectID: objectID))
    }

    /// Deletes an object and frees its pages. Throws `noSuchObject` if it does not exist.
    public func delete(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        guard objects[objectID] != nil else { throw .noSuchObject(objectID) }
        return try logAndApply(LogRecord(.delete, objectID: objectID))
    }

    /// Sets the object's page count; pages at or beyond it are removed and freed.
    public func truncate(objectID: UInt64, pageCount: UInt64) throws(ObjectStoreError) -> UInt64 {
        guard objects[objectID] != nil else { throw .noSuchObject(objectID) }
        guard pageCount <= Self.pageIndexMax else { throw .pageIndexOutOfRange(pageCount, max: Self.pageIndexMax) }
        return try logAndApply(LogRecord(.truncate(pageCount: pageCount), objectID: objectID))
    }

    public func stat(objectID: UInt64) throws(ObjectStoreError) -> ObjectInfo {
        guard let object = objects[objectID] else { throw .noSuchObject(objectID) }
        return ObjectInfo(objectID: objectID, pageCount: object.pageCount, lastOSN: object.lastOSN)
    }

    /// Every object, by id.
    public func list() -> [ObjectInfo] {
        objects.map { ObjectInfo(objectID: $0.key, pageCount: $0.value.pageCount, lastOSN: $0.value.lastOSN) }
            .sorted { $0.objectID < $1.objectID }
    }

    /// Page indices written (and not removed) in `objectID`, ascending.
    public func pages(of objectID: UInt64) -> [UInt64] {
        objects[objectID].map { $0.pages.keys.sorted() } ?? []
    }
}

/// Little-endian encoding of a checkpoint.
private struct CheckpointBytes {
    static let magic: UInt32 = 0x534C_434B  // "SLCK"
    var bytes: [UInt8] = []
    mutating func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
}

private struct CheckpointReader {
    let bytes: [UInt8]
    var offset = 0
    mutating func u32() -> UInt32? { take() }
    mutating func u64() -> UInt64? { take() }
    private mutating func take<T: FixedWidthInteger>() -> T? {
        guard offset + MemoryLayout<T>.size <= bytes.count else { return nil }
        defer { offset += MemoryLayout<T>.size }
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
