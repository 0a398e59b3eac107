// A replicated node's life: restart from its checkpoint and the log, compaction of the log once every
// node checkpointed, a node too far behind a compaction, and etcd unreachable at start or lost mid-run.
import Foundation
import Glibc
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplicationTestSupport
import Testing

@testable import SluiceReplication

/// Every page of object 1 in 0..<count on `node`: (payload prefix byte, page OSN).
func pageSummary(_ node: StorageNode, count: Int) throws -> [String] {
    try (0..<UInt64(count)).map { index in
        let page = try node.read(objectID: 1, pageIndex: index)
        return "\(page.payload.first ?? 0)@\(page.pageOSN)"
    }
}

/// A TCP port on 127.0.0.1 with nothing listening on it (bound, never listened: connects are refused),
/// held until `body` returns.
func withRefusingPort<R>(_ body: (Int) async throws -> R) async throws -> R {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0, "socket")
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    precondition(bound, "bind")
    return try await body(Int(UInt16(bigEndian: address.sin_port)))
}

/// Polls `condition` every 50 ms for up to `timeoutMs`; whether it became true.
func eventually(timeoutMs: Int, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = monotonicNs() + UInt64(timeoutMs) * 1_000_000
    while true {
        if try await condition() { return true }
        if monotonicNs() >= deadline { return false }
        try? await Task.sleep(nanoseconds: 50_000_000)
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct ReplicaLifecycleTests {
    /// Node B closed without a checkpoint while A writes on, reopened: it catches up from its
    /// checkpoint and the log and serves A's pages. Once both checkpointed, the batches below both
    /// checkpoints are gone from etcd (`P/log/`) and `P/floor` says where. A node with an empty data
    /// directory joining after that reports `compactedPast`: status failed, writes refused.
    @Test func restartCatchesUpAndCompactionLeavesLateJoinersClearlyFailed() async throws {
        let cluster = try sharedEtcdCluster(members: 1)
        let configuration = logConfiguration(cluster, prefix: freshPrefix(), proposalTimeoutMs: sharedProposalTimeoutMs)
        try await withTempDirectories(3) { paths in
            let a = try await openNode(paths[0], configuration, checkpointEveryRecords: 4)
            // B is reopened in this process: the closed one must be dropped first (it holds the lock).
            var b: ReplicatedStorage! = try await openNode(paths[1], configuration, checkpointEveryRecords: 4)
            func write(_ node: ReplicatedStorage, _ range: Range<Int>) async throws -> UInt64 {
                try await blocking {
                    var last: UInt64 = 0
                    for round in range {
                        last = try node.node.write(objectID: 1, pages: [(UInt64(round % 8), [UInt8(truncatingIfNeeded: round)], .unconditional)])
                    }
                    return last
                }
            }
            var last = try await write(a, 0..<10)
            _ = try await blocking { [b, last] in try b!.node.catchUp(to: last, timeoutMs: 3_000) }
            #expect(b.node.checkpointOSN >= 4, "B checkpointed every 4 records while following")
            // B goes away without a final checkpoint; A writes on (mixing writes through B first).
            last = try await write(b, 10..<13)
            await b.close(checkpoint: false)
            last = try await write(a, 13..<40)
            b = nil
            b = try await openNode(paths[1], configuration, checkpointEveryRecords: 4)
            let bStatus = try await blocking { [b, last] in try b!.node.catchUp(to: last, timeoutMs: 10_000) }
            #expect(bStatus.appliedOSN == last && bStatus.state == .following)
            let expected = try await blocking { try pageSummary(a.node, count: 8) }
            let bPages = try await blocking { [b] in try pageSummary(b!.node, count: 8) }
            #expect(bPages == expected)
            #expect(b.node.lastOSN == a.node.lastOSN)

            // Both checkpoint at the same OSN; the heartbeat publishes it and compacts below it.
            try await blocking { [b] in
                try a.node.checkpoint()
                try b!.node.checkpoint()
            }
            let checkpoint = min(a.node.checkpointOSN, b.node.checkpointOSN)
            #expect(checkpoint == last)
            let keys = LogKeys(prefix: configuration.prefix)
            let compacted = try await eventually(timeoutMs: 10_000) {
                try await withEtcdClient(cluster) { client in
                    let floor = try await client.get(keys.floor).flatMap { LogKeys.parseHex($0.value) } ?? 0
                    let batches = try await client.range(keys.logRange)
                    let firsts = batches.kvs.compactMap { keys.firstOSN(ofBatchKey: $0.key) }
                    return floor == checkpoint && firsts.allSatisfy { $0 > floor }
                }
            }
            #expect(compacted, "P/floor at \(checkpoint) and no P/log/ batch at or below it, within 5 s")
            #expect(a.log.stats.compactions.load(ordering: .relaxed) + b.log.stats.compactions.load(ordering: .relaxed) >= 1)
            // An empty data directory cannot follow a log whose start was deleted: here every batch is
            // deleted (nothing was written since), so only the floor tells.
            let late = try await ReplicatedStorage.open(dataDirectory: paths[2], configuration: configuration, directIO: false,
                                                        catchUpTimeoutMs: 5_000)
            let failedClearly = await eventually(timeoutMs: 10_000) { late.node.replicaStatus.state == .failed }
            #expect(failedClearly, "status \(late.node.replicaStatus)")
            #expect(late.log.failure == .compactedPast(appliedOSN: 0, floorOSN: checkpoint))
            let refused = try await blocking { () -> ObjectStoreError? in
                do { _ = try late.node.write(objectID: 9, pages: [(0, [1], .absent)]) } catch { return error as? ObjectStoreError }
                return nil
            }
            #expect(refused == .replication(.compactedPast(appliedOSN: 0, floorOSN: checkpoint)), "refused with \(String(describing: refused))")
            if let refused { #expect("\(refused)".contains("compacted")) }
            await late.close(checkpoint: false)
            // After compaction, B restarted from its checkpoint still follows (it needs nothing deleted).
            await b.close(checkpoint: false)
            last = try await write(a, 40..<45)
            b = nil
            b = try await openNode(paths[1], configuration, checkpointEveryRecords: 4)
            let reopened = try await blocking { [b, last] in try b!.node.catchUp(to: last, timeoutMs: 10_000) }
            #expect(reopened.appliedOSN == last)
            let bAfter = try await blocking { [b] in try pageSummary(b!.node, count: 8) }
            let aAfter = try await blocking { try pageSummary(a.node, count: 8) }
            #expect(bAfter == aAfter)

            await a.close()
            await b.close()
        }
    }

    /// etcd not there at all: open returns (after its catch-up wait), the node is disconnected, a
    /// write is refused as logUnavailable within the proposal deadline (nothing was sent), and reads
    /// answer at the node's applied OSN.
    @Test func etcdUnreachableAtStart() async throws {
        try await withRefusingPort { port in
            try await withTempDirectories(1) { paths in
                var configuration = EtcdLogConfiguration(
                    client: EtcdClientConfiguration(endpoints: ["http://127.0.0.1:\(port)"], callTimeoutMs: 300, connectTimeoutMs: 200),
                    prefix: freshPrefix())
                configuration.proposalTimeoutMs = 1_000
                configuration.heartbeatMs = 100
                let opened = monotonicNs()
                let storage = try await ReplicatedStorage.open(dataDirectory: paths[0], configuration: configuration,
                                                               directIO: false, catchUpTimeoutMs: 500)
                #expect(monotonicNs() - opened < 3_000_000_000, "open returns without etcd")
                let disconnected = await eventually(timeoutMs: 2_000) { storage.node.replicaStatus.state == .disconnected }
                #expect(disconnected, "status \(storage.node.replicaStatus)")
                let started = monotonicNs()
                let refused = try await blocking { () -> ObjectStoreError? in
                    do { _ = try storage.node.write(objectID: 1, pages: [(0, [1], .absent)]) } catch { return error as? ObjectStoreError }
                    return nil
                }
                let elapsedMs = (monotonicNs() - started) / 1_000_000
                guard case .replication(.logUnavailable(let reason))? = refused else {
                    Issue.record("refused with \(String(describing: refused)), not logUnavailable")
                    return
                }
                #expect(!reason.isEmpty)
                #expect(elapsedMs <= 1_000 + 500, "refused within the proposal deadline: \(elapsedMs) ms")
                let page = try await blocking { try storage.node.read(objectID: 1, pageIndex: 0) }
                #expect(page.pageOSN == 0 && page.readOSN == storage.node.replicaStatus.appliedOSN)
                #expect(storage.node.replicaStatus.contactAgeMs == nil, "never in contact")
                await storage.close(checkpoint: false)
            }
        }
    }

    /// Every etcd member killed mid-run: writes refused, status disconnected with a growing contact
    /// age, reads still answer with their OSN; once the cluster is back on its data dirs, a write
    /// succeeds and the node follows again.
    @Test func etcdLostMidRunAndBack() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            var configuration = logConfiguration(cluster, prefix: freshPrefix(), proposalTimeoutMs: 1_000)
            configuration.client.callTimeoutMs = 300
            try await withTempDirectories(1) { paths in
                let storage = try await openNode(paths[0], configuration)
                let first = try await blocking { try storage.node.write(objectID: 1, pages: [(0, [1], .absent)]) }
                cluster.killAll()
                let refused = try await blocking { () -> ObjectStoreError? in
                    do { _ = try storage.node.write(objectID: 1, pages: [(0, [2], .unmodifiedSince(first))]) } catch {
                        return error as? ObjectStoreError
                    }
                    return nil
                }
                switch refused {
                case .replication(.logUnavailable)?, .replication(.outcomeUnknown)?: break
                default: Issue.record("write with etcd gone: \(String(describing: refused))")
                }
                let disconnected = await eventually(timeoutMs: 3_000) { storage.node.replicaStatus.state == .disconnected }
                #expect(disconnected, "status \(storage.node.replicaStatus)")
                let age1 = storage.node.replicaStatus.contactAgeMs ?? 0
                try? await Task.sleep(nanoseconds: 300_000_000)
                let age2 = storage.node.replicaStatus.contactAgeMs ?? 0
                #expect(age2 >= age1 + 250, "contact age grows: \(age1) then \(age2) ms")
                let page = try await blocking { try storage.node.read(objectID: 1, pageIndex: 0) }
                #expect(page.payload.first == 1 || page.payload.first == 2)
                #expect(page.readOSN == storage.node.replicaStatus.appliedOSN)

                try await blocking { try cluster.restartAll() }
                // Whatever the refused write became, an unconditional write goes through once etcd is back.
                var written: UInt64?
                let back = monotonicNs()
                while written == nil && monotonicNs() - back < 15_000_000_000 {
                    written = try? await blocking { try storage.node.write(objectID: 1, pages: [(1, [3], .unconditional)]) }
                    if written == nil { try? await Task.sleep(nanoseconds: 100_000_000) }
                }
                #expect(written != nil, "a write succeeds once etcd is back: \(storage.node.replicaStatus)")
                print("etcd back: first write acknowledged after \((monotonicNs() - back) / 1_000_000) ms")
                let following = await eventually(timeoutMs: 3_000) { storage.node.replicaStatus.state == .following }
                #expect(following, "status \(storage.node.replicaStatus)")
                #expect((storage.node.replicaStatus.contactAgeMs ?? .max) < 1_000)
                await storage.close()
            }
        }
    }
}
