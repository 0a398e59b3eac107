// Review of the shared etcd log (issue 10): scenarios found by reading the code, each a test that
// failed on main 717545e.
import Foundation
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplicationTestSupport
import Testing

@testable import SluiceReplication

@Suite(.serialized, .timeLimit(.minutes(3)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct ReviewTests {
    /// Writes `rounds` rounds of 4 concurrent 64-page writes through `node` (opened with queue depth
    /// 64 and a batch wait, so each round is one batch of about 1 MiB, the default `batchBytesMax`).
    /// Returns the last OSN.
    static func writeBigBatches(_ node: ReplicatedStorage, rounds: Int) async throws -> UInt64 {
        let payload = (0..<node.payloadSizeBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var last: UInt64 = 0
        for _ in 0..<rounds {
            let osns = try await withThrowingTaskGroup(of: UInt64.self) { group in
                for writer in 0..<4 {
                    group.addTask {
                        try await blocking {
                            try node.node.write(objectID: UInt64(1 + writer), pages: (0..<64).map {
                                (index: UInt64($0), payload: payload, condition: WriteCondition.unconditional)
                            })
                        }
                    }
                }
                var osns: [UInt64] = []
                for try await osn in group { osns.append(osn) }
                return osns
            }
            last = max(last, osns.max() ?? 0)
        }
        return last
    }

    /// One small write through `node`: "osn N", or the error's description.
    static func tryWrite(_ node: ReplicatedStorage, objectID: UInt64) async throws -> String {
        try await blocking { () -> String in
            do { return "osn \(try node.node.write(objectID: objectID, pages: [(0, [1], .unconditional)]))" } catch {
                return "\(error)"
            }
        }
    }

    /// Node A writes 16 batches of ~1 MiB. Node B starts from an empty directory and writes at once,
    /// before its follower has read the log: B's claim of OSN 1 is lost, and the failure branch of
    /// that transaction (`getFirst(..., limit: 8)`) brings back 8 batches, ~11 MiB of JSON, over the
    /// client's 8 MiB response bound: `responseTooLarge`, an unknown outcome for a txn. B repeats the
    /// claim "as is" forever (the same 8 batches follow OSN 1 for good), so B's proposer is wedged:
    /// even after B has caught up, every write through B is refused until B restarts.
    @Test func proposerBehindBigBatchesIsNotWedged() async throws {
        let cluster = try sharedEtcdCluster(members: 1)
        let prefix = freshPrefix()
        var writerConfiguration = logConfiguration(cluster, prefix: prefix, proposalTimeoutMs: 20_000)
        writerConfiguration.batchWaitUs = 100_000
        let configuration = logConfiguration(cluster, prefix: prefix, proposalTimeoutMs: 10_000)
        try await withTempDirectories(2) { paths in
            let a = try await ReplicatedStorage.open(dataDirectory: paths[0], configuration: writerConfiguration,
                                                     queueDepth: 64, directIO: false)
            let last = try await Self.writeBigBatches(a, rounds: 16)
            let batches = a.log.stats.batches.load(ordering: .relaxed)
            let records = a.log.stats.batchedRecords.load(ordering: .relaxed)
            try #require(records >= batches * 3, "batches of 3 or 4 records of 64 pages (\(records) records in \(batches) batches)")
            let b = try await ReplicatedStorage.open(dataDirectory: paths[1], configuration: configuration, directIO: false,
                                                     catchUpTimeoutMs: 0)
            let first = try await Self.tryWrite(b, objectID: 100)
            let caughtUp = try await blocking { try b.node.catchUp(to: last, timeoutMs: 60_000) }
            #expect(caughtUp.appliedOSN >= last)
            let second = try await Self.tryWrite(b, objectID: 101)
            #expect(second.hasPrefix("osn "), "B caught up, then wrote: \(second) (its first write: \(first))")
            await b.close(checkpoint: false)
            await a.close(checkpoint: false)
        }
    }

    /// `ReplicatedStorage.open` promises to wait (up to its catch-up timeout) until the node has
    /// applied what the log holds. The status says `following` as soon as the `P/meta` check answered
    /// (contact made, `logOSN` still the checkpoint's), before the first range read: open returns a
    /// node at OSN 0 that calls itself up to date while the log holds 64 records.
    @Test func openReturnsOnlyOnceTheLogIsApplied() async throws {
        let cluster = try sharedEtcdCluster(members: 1)
        let prefix = freshPrefix()
        var writerConfiguration = logConfiguration(cluster, prefix: prefix, proposalTimeoutMs: 20_000)
        writerConfiguration.batchWaitUs = 100_000
        let configuration = logConfiguration(cluster, prefix: prefix, proposalTimeoutMs: 10_000)
        try await withTempDirectories(2) { paths in
            let a = try await ReplicatedStorage.open(dataDirectory: paths[0], configuration: writerConfiguration,
                                                     queueDepth: 64, directIO: false)
            let last = try await Self.writeBigBatches(a, rounds: 16)
            let b = try await ReplicatedStorage.open(dataDirectory: paths[1], configuration: configuration, directIO: false,
                                                     catchUpTimeoutMs: 60_000)
            let status = b.log.status
            #expect(status.appliedOSN == last, "open returned at \(status); the log ends at \(last)")
            #expect(status.state != .following || status.appliedOSN == status.logOSN)
            await b.close(checkpoint: false)
            await a.close(checkpoint: false)
        }
    }

    /// etcd loses the log (a wiped data directory, a new cluster on the same endpoints, a
    /// `del --prefix`). A node that applied OSNs 1...3 finds `P/meta` absent, creates a new log and
    /// claims OSN 4 as if 1...3 were there: the log now starts with a gap, every new node stops on it
    /// (`corruptRecord`, "batches 1...3 are missing") and the nodes' OSNs no longer mean the same
    /// records. A node with state must refuse a log that is new.
    @Test func nodeWithStateRefusesANewEmptyLog() async throws {
        let cluster = try sharedEtcdCluster(members: 1)
        let configuration = logConfiguration(cluster, prefix: freshPrefix(), proposalTimeoutMs: 5_000)
        try await withTempDirectories(2) { paths in
            var a: ReplicatedStorage! = try await openNode(paths[0], configuration)
            for index in 0..<3 {
                _ = try await blocking { [a] in try a!.node.write(objectID: 1, pages: [(UInt64(index), [UInt8(index + 1)], .unconditional)]) }
            }
            await a.close()
            a = nil
            try await withEtcdClient(cluster) { client in
                _ = try await client.delete(.prefix(Array((configuration.prefix + "/").utf8)))
            }
            a = try await openNode(paths[0], configuration)
            let outcome = try await Self.tryWrite(a, objectID: 2)
            #expect(!outcome.hasPrefix("osn "), "a node at OSN 3 wrote on a new, empty log: \(outcome)")
            let b = try await openNode(paths[1], configuration)
            #expect(b.log.failure == nil, "a new node on that log: \(String(describing: b.log.failure))")
            await b.close(checkpoint: false)
            await a.close(checkpoint: false)
        }
    }
}
