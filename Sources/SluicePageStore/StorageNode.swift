// Path: Sources/SluicePageStore/StorageNode.swift — the object store shared by many clients, and the
// client's retry helper (read, modify, conditional write, retry on conflict with backoff).
import Glibc
import Synchronization

/// An `ObjectStore` any thread may use: operations are serialised (the store's io_uring and page map
/// have one owner). Control-plane speed, not the data plane's: each call takes a lock.
public final class StorageNode: Sendable {
    private let store: Mutex<ObjectStoreBox>

    /// Wraps the store (the box exists because Mutex needs a Sendable, non-copyable-friendly value).
    private struct ObjectStoreBox: @unchecked Sendable {  // unchecked: only touched under the mutex
        let store: ObjectStore
    }

    public init(store: ObjectStore) { self.store = Mutex(ObjectStoreBox(store: store)) }

    public func read(objectID: UInt64, pageIndex: UInt64) throws(ObjectStoreError) -> PageVersion {
        try store.withLock { box throws(ObjectStoreError) in try box.store.read(objectID: objectID, pageIndex: pageIndex) }
    }

    public func write(objectID: UInt64, pages: [(index: UInt64, payload: [UInt8], condition: WriteCondition)])
        throws(ObjectStoreError) -> UInt64
    {
        try store.withLock { box throws(ObjectStoreError) in try box.store.write(objectID: objectID, pages: pages) }
    }

    public func create(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        try store.withLock { box throws(ObjectStoreError) in try box.store.create(objectID: objectID) }
    }

    public func delete(objectID: UInt64) throws(ObjectStoreError) -> UInt64 {
        try store.withLock { box throws(ObjectStoreError) in try box.store.delete(objectID: objectID) }
    }

    public func truncate(objectID: UInt64, pageCount: UInt64) throws(ObjectStoreError) -> UInt64 {
        try store.withLock { box throws(ObjectStoreError) in try box.store.truncate(objectID: objectID, pageCount: pageCount) }
    }

    public func stat(objectID: UInt64) throws(ObjectStoreError) -> ObjectInfo {
        try store.withLock { box throws(ObjectStoreError) in try box.store.stat(objectID: objectID) }
    }

    public func list() -> [ObjectInfo] { store.withLock { $0.store.list() } }

    public var lastOSN: UInt64 { store.withLock { $0.store.lastOSN } }
    public var payloadSizeBytes: Int { store.withLock { $0.store.payloadSizeBytes } }
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
/// written. `transform` may run several times; it must not have side effects.
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
            guard case .conflict(_, _, let osn) = error else { throw .store(error) }
            lastOSN = osn
        }
        usleep(useconds_t((backoff / 2 + UInt64.random(in: 0...backoff / 2)) / 1_000))
        backoff = min(backoff * 2, backoffNsMax)
    }
    throw .tooManyConflicts(attempts: attemptsMax, lastOSN: lastOSN)
}
