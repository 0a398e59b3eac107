// A replica's data directory refuses what would mix two owners or two logs: a second open while one
// is open, a directory served with the embedded log, a directory of another log prefix, and
// configuration values out of bounds. Nothing in the directory is changed by a refused open.
import Foundation
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplicationTestSupport
import Testing

@testable import SluiceReplication

@Suite(.serialized, .timeLimit(.minutes(1)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct DataDirectoryGuardTests {
    @Test func secondOpenOfOneDirectoryIsLockedOut() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withTempDirectories(1) { paths in
                let configuration = logConfiguration(cluster, prefix: "guard-lock", proposalTimeoutMs: 10_000)
                let first = try await openNode(paths[0], configuration)
                let osn = try await blocking { try first.node.write(objectID: 1, pages: [(0, [1], .absent)]) }
                do {
                    _ = try await openNode(paths[0], configuration)
                    Issue.record("a second open of a directory in use succeeded")
                } catch let error as ReplicatedStorageError {
                    guard case .store(.locked(_, let holder)) = error else {
                        Issue.record("expected locked, got \(error)")
                        return
                    }
                    #expect(holder == getpid())
                }
                // The first owner is unharmed.
                #expect(try await blocking { try first.node.read(objectID: 1, pageIndex: 0) }.pageOSN == osn)
                await first.close()
            }
        }
    }

    @Test func embeddedDirectoryAndOtherPrefixAreRefused() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            try await withTempDirectories(2) { paths in
                // A directory whose embedded log holds a record: its write was never in a shared log.
                try FileManager.default.createDirectory(atPath: paths[0], withIntermediateDirectories: true)
                do {
                    let log = try EmbeddedLog(path: paths[0] + "/log")
                    _ = try log.append(LogRecord(.create, objectID: 9))
                }
                do {
                    _ = try await openNode(paths[0], logConfiguration(cluster, prefix: "guard-a"))
                    Issue.record("an embedded directory joined a shared log")
                } catch let error as ReplicatedStorageError {
                    guard case .embeddedLogPresent = error else {
                        Issue.record("expected embeddedLogPresent, got \(error)")
                        return
                    }
                }
                // A replica of prefix A does not join prefix B.
                do {
                    let a = try await openNode(paths[1], logConfiguration(cluster, prefix: "guard-a"))
                    await a.close()
                }  // released here: its store's lock with it
                do {
                    _ = try await openNode(paths[1], logConfiguration(cluster, prefix: "guard-b"))
                    Issue.record("a replica of one prefix joined another")
                } catch let error as ReplicatedStorageError {
                    guard case .otherLog(_, let recorded, let requested) = error else {
                        Issue.record("expected otherLog, got \(error)")
                        return
                    }
                    #expect(recorded == "guard-a" && requested == "guard-b")
                }
            }
        }
    }

    /// A setting with a value outside its bound: the setting's config name and the value.
    enum Extreme: String, CaseIterable, Sendable {
        case proposalTimeoutZero, proposalTimeoutHuge, batchRecordsZero, batchRecordsHuge, batchBytesTiny,
             batchBytesHuge, batchWaitNegative, pendingHuge, heartbeatZero, prefixTrailingSlash

        var name: String {
            switch self {
            case .proposalTimeoutZero, .proposalTimeoutHuge: "proposal_timeout_ms"
            case .batchRecordsZero, .batchRecordsHuge: "batch_records_max"
            case .batchBytesTiny, .batchBytesHuge: "batch_bytes_max"
            case .batchWaitNegative: "batch_wait_us"
            case .pendingHuge: "pending_proposals_max"
            case .heartbeatZero: "heartbeat_ms"
            case .prefixTrailingSlash: "prefix"
            }
        }

        func apply(to c: inout EtcdLogConfiguration) {
            switch self {
            case .proposalTimeoutZero: c.proposalTimeoutMs = 0
            case .proposalTimeoutHuge: c.proposalTimeoutMs = Int64.max
            case .batchRecordsZero: c.batchRecordsMax = 0
            case .batchRecordsHuge: c.batchRecordsMax = Int.max
            case .batchBytesTiny: c.batchBytesMax = 10
            case .batchBytesHuge: c.batchBytesMax = 1 << 30
            case .batchWaitNegative: c.batchWaitUs = -1
            case .pendingHuge: c.pendingProposalsMax = Int.max
            case .heartbeatZero: c.heartbeatMs = 0
            case .prefixTrailingSlash: c.prefix = "trailing/"
            }
        }
    }

    @Test(arguments: Extreme.allCases)
    func extremeSettingsAreRefusedNamingTheSetting(_ extreme: Extreme) throws {
        var configuration = EtcdLogConfiguration(client: EtcdClientConfiguration(endpoints: ["http://127.0.0.1:1"]))
        extreme.apply(to: &configuration)
        do {
            try configuration.validate()
            Issue.record("\(extreme.name) out of bounds was accepted")
        } catch {
            guard case .invalidArgument(let text) = error else {
                Issue.record("expected invalidArgument, got \(error)")
                return
            }
            #expect(text.contains(extreme.name), "\(text)")
        }
    }

    @Test(arguments: ["127.0.0.1:2379", "etcd://", "etcd://host", "etcd://host:0", "etcd://host:65536", "etcd://:2379",
                      "etcd://a:1,,b:2", "etcd://" + Array(repeating: "h:1", count: EtcdLimits.endpointCountMax + 1).joined(separator: ",")])
    func malformedLogURLsAreRefused(url: String) {
        #expect(throws: EtcdError.self) { _ = try EtcdLogConfiguration.endpoints(fromURL: url) }
    }
}
