// Storage nodes on one shared etcd log (real etcd, 1 or 3 members, started per test).
import Foundation
import SluiceEtcdTestSupport
import SluiceReplicationTestSupport
import SluicePageStore
import Testing

@testable import SluiceReplication

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct ReplicatedStorageTests {
    @Test func writeThroughOneNodeReadsWithSameOSNThroughAnother() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withTempDirectories(2) { paths in
                let configuration = logConfiguration(cluster, proposalTimeoutMs: sharedProposalTimeoutMs)  // the full suite loads 2 cores
                let a = try await openNode(paths[0], configuration)
                let b = try await openNode(paths[1], configuration)
                let payload = Array(repeating: UInt8(7), count: 100)
                let osn = try await blocking { try a.node.write(objectID: 1, pages: [(0, payload, .absent)]) }
                #expect(osn == 1)
                let status = try await blocking { try b.node.catchUp(to: osn, timeoutMs: 10_000) }
                #expect(status.appliedOSN >= osn)
                let read = try await blocking { try b.node.read(objectID: 1, pageIndex: 0) }
                #expect(Array(read.payload.prefix(payload.count)) == payload && read.payload.dropFirst(payload.count).allSatisfy { $0 == 0 })
                #expect(read.pageOSN == osn)
                // A stale conditional write through B conflicts, decided at apply time on both nodes.
                let second = try await blocking { try b.node.write(objectID: 1, pages: [(0, [1], .unmodifiedSince(osn))]) }
                let stale = await #expect(throws: ObjectStoreError.self) {
                    try await blocking { try a.node.write(objectID: 1, pages: [(0, [2], .unmodifiedSince(osn))]) }
                }
                #expect(stale == .conflict(objectID: 1, pageIndex: 0, currentOSN: second))
                // The refused write spent OSN second + 1: both nodes apply up to it before their reads
                // (whose read OSNs are then equal) are compared.
                _ = try await blocking { try a.node.catchUp(to: second + 1, timeoutMs: 10_000) }
                _ = try await blocking { try b.node.catchUp(to: second + 1, timeoutMs: 10_000) }
                #expect(try await blocking { try a.node.read(objectID: 1, pageIndex: 0) } ==
                        (try await blocking { try b.node.read(objectID: 1, pageIndex: 0) }))
                await a.close()
                await b.close()
            }
        }
    }
}
