// Path: Tests/SluiceReplicationTestSupport/StorageBackend.swift — one storage node on either log: the
// embedded log (a file), or a shared etcd log on a 1- or 3-member cluster, for tests that run the same
// node behaviour on every backend (issue 10: "every storage-node test that runs on the embedded log also
// runs on a 1-member and a 3-member etcd cluster").
//
// Parameterized over `StorageBackend.allCases` (what goes through a StorageNode):
//   SluicePageStoreTests/ConcurrencyTests: recordedHistoryIsLinearizable, noLostUpdatesUnderSixteenClients,
//     concurrentWritesShareLogFlushes (one log flush per group on the embedded log, one etcd batch per
//     several proposals on etcd).
//   SluiceStorageServerTests: StorageServerTests (every test that serves a node), ReadPagesTests,
//     BackPressureTests' in-process tests.
// Embedded-only, and why:
//   ConcurrencyTests.concurrentReadsShareSubmissionsAndFailAlone: writes through the ObjectStore (no node,
//     no log) then corrupts a page in the page file on disk: a data-directory file test.
//   ConcurrencyTests.aWriteDurableInTheLogIsAcknowledgedWhenItsCheckpointFails: about the embedded log's
//     durability against a failing checkpoint file (store.checkpointFailureCount).
//   ObjectStoreTests, PageFileTests: the store, its page file and the embedded log file themselves.
//   CrashRecoveryTests: kill -9 of a `sluice storage serve` process and recovery of the embedded log.
//   DataDirectoryTests: the data directory's lock and format files, and the serve process.
//   BackPressureTests.aClientThatNeverReadsLeavesTheServerBoundedAndIsClosed: a `sluice storage serve`
//     process (CLI tests of the etcd mode are another helper's).
//   StorageServerTests.requestDecodingErrorsAreTyped: no node at all.
// Shared etcd clusters (`sharedEtcdCluster`): one per member count per test process, each test on a log
// prefix of its own, so the parameterized tests do not pay a cluster start each.
import Foundation
import Glibc
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplication
import Synchronization

/// Which operation log a node under test orders its writes with.
public enum StorageBackend: String, CaseIterable, Sendable, CustomStringConvertible {
    case embedded
    /// A shared etcd log on a 1-member cluster.
    case etcd1
    /// A shared etcd log on a 3-member cluster.
    case etcd3

    public var description: String { rawValue }

    /// Members of the etcd cluster (nil: the embedded log).
    public var etcdMembers: Int? {
        switch self {
        case .embedded: nil
        case .etcd1: 1
        case .etcd3: 3
        }
    }

    public var replicated: Bool { etcdMembers != nil }

    /// Why this backend's cases are skipped here, or nil when they run.
    public var skipReason: String? {
        replicated && !etcdTestsEnabled ? "etcd not installed (\(etcdBinary)); `make deps` installs it" : nil
    }
}

/// A node opened by `withStorageNode`. (unchecked: `embeddedLog` is read only once the writers are done.)
public struct OpenedNode: @unchecked Sendable {
    public let backend: StorageBackend
    public let node: StorageNode
    public let payloadSizeBytes: Int
    /// The page file (its checkpoint is this path + ".checkpoint").
    public let pagesPath: String
    /// The embedded log (nil on etcd).
    public let embeddedLog: EmbeddedLog?
    /// The replicated storage (nil on the embedded log).
    public let replicated: ReplicatedStorage?
}

private let nodeCounter = Atomic<Int>(0)

/// The proposal deadline of nodes on the shared clusters: long, as the whole test suite runs beside
/// them on two cores (in a full run etcd has taken seconds to answer a first call). These tests are
/// about a node's behaviour, not fail-over: an outcome left unknown at 3 s there is load, not a finding
/// (the fail-over tests use short deadlines on clusters of their own).
public let sharedProposalTimeoutMs: Int64 = 10_000

/// Opens a node on `backend` in a fresh data directory under /var/tmp (O_DIRECT needs a real
/// filesystem), runs `body`, and closes the node (and its log) and removes its files, whatever `body`
/// did. On etcd, the node's log is a new prefix of the process' shared cluster. When the backend is
/// skipped here (etcd not installed), prints why and returns nil without calling `body`.
@discardableResult
public func withStorageNode<R: Sendable>(
    _ backend: StorageBackend, parallelReadersMax: Int = 0, checkpointEveryRecords: UInt64 = 4_096,
    _ body: (OpenedNode) async throws -> R
) async throws -> R? {
    if let reason = backend.skipReason {
        print("skipped on \(backend): \(reason)")
        return nil
    }
    let directory = "/var/tmp/sluice-backend-\(getpid())-\(nodeCounter.add(1, ordering: .relaxed).newValue)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    guard let members = backend.etcdMembers else {
        let log = try EmbeddedLog(path: directory + "/log")
        let store = try ObjectStore(pages: PageFileConfiguration(path: directory + "/pages"), log: log,
                                    checkpointEveryRecords: checkpointEveryRecords)
        let node = StorageNode(store: store, parallelReadersMax: parallelReadersMax)
        return try await body(OpenedNode(backend: backend, node: node, payloadSizeBytes: store.payloadSizeBytes,
                                         pagesPath: directory + "/pages", embeddedLog: log, replicated: nil))
    }
    let cluster = try sharedEtcdCluster(members: members)
    let configuration = logConfiguration(cluster, prefix: "t\(getpid())-\(UUID().uuidString.prefix(8))",
                                         proposalTimeoutMs: sharedProposalTimeoutMs)
    let storage = try await ReplicatedStorage.open(dataDirectory: directory + "/node", configuration: configuration,
                                                   directIO: true, parallelReadersMax: parallelReadersMax,
                                                   checkpointEveryRecords: checkpointEveryRecords,
                                                   catchUpTimeoutMs: 5_000)
    let result: R
    do {
        result = try await body(OpenedNode(backend: backend, node: storage.node, payloadSizeBytes: storage.payloadSizeBytes,
                                           pagesPath: directory + "/node/pages", embeddedLog: nil, replicated: storage))
    } catch {
        await storage.close(checkpoint: false)
        throw error
    }
    await storage.close(checkpoint: false)
    return result
}

/// The ID of the member leading `cluster` now, as its members see it (nil: no agreed leader yet), and
/// which member index it is.
public func etcdLeader(_ cluster: EtcdCluster, timeoutMs: Int64 = 500) async -> Int? {
    let urls = cluster.clientURLs
    for (index, url) in urls.enumerated() where cluster.isRunning(member: index) {
        guard let client = try? EtcdClient(EtcdClientConfiguration(endpoints: [url], callTimeoutMs: timeoutMs,
                                                                   connectTimeoutMs: 200)) else { continue }
        let status = try? await client.status()
        await client.shutdown()
        if let status, status.leaderID == status.memberID { return index }
    }
    return nil
}

/// An etcd client on every member of `cluster`, for looking at a log's keys; shut down after `body`.
public func withEtcdClient<R: Sendable>(_ cluster: EtcdCluster, _ body: (EtcdClient) async throws -> R) async throws -> R {
    let client = try EtcdClient(EtcdClientConfiguration(endpoints: cluster.clientURLs, callTimeoutMs: 2_000, connectTimeoutMs: 300))
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}

/// Runs `body` in the calling task but on a thread of its own (a task executor on a serial dispatch
/// queue, not one of Swift concurrency's cooperative threads: node and client calls block, and the
/// etcd log's tasks need those threads). Unlike `blocking`, the task's locals go along, so `#expect`
/// inside `body` is recorded against the running test.
public func onOwnThread<T: Sendable>(_ body: () throws -> T) async throws -> T {
    let executor = QueueExecutor()
    return try await withTaskExecutorPreference(executor) { try body() }
}

/// A task executor running each job on one serial dispatch queue (dispatch's own threads).
final class QueueExecutor: TaskExecutor, @unchecked Sendable {  // unchecked: `queue` is thread-safe
    private let queue = DispatchQueue(label: "sluice.test.own-thread")

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}

/// Runs `body(i)` for i in 0..<count, each on a pthread of its own (not Swift concurrency's: node calls
/// block), and waits for all. Blocks its caller: call it inside `blocking {}` in async tests.
public func runClientThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Context: @unchecked Sendable {  // handed to exactly one thread
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    var threads: [pthread_t] = []
    for index in 0..<count {
        var thread = pthread_t()
        let context = Context { body(index) }
        let result = pthread_create(&thread, nil, { raw in
            Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(context).toOpaque())
        precondition(result == 0, "pthread_create")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}

/// Monotonic nanoseconds (CLOCK_MONOTONIC), for recorded histories.
public func monotonicNs() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
