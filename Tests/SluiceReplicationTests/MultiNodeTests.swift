// Several storage nodes on one shared etcd log (real etcd, 1 or 3 members): reads through one node of
// what another wrote, 16 clients incrementing shared counters through every node, and a leader kill -9
// during those writes.
import Foundation
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplicationTestSupport
import SluiceStorageTestSupport
import Synchronization
import Testing

@testable import SluiceReplication

/// Opens `count` nodes on `configuration` in fresh temp directories, runs `body`, closes them all.
func withNodes<R: Sendable>(_ count: Int, _ configuration: EtcdLogConfiguration, checkpointEveryRecords: UInt64 = 4_096,
                            _ body: ([ReplicatedStorage], [String]) async throws -> R) async throws -> R {
    try await withTempDirectories(count) { paths in
        var nodes: [ReplicatedStorage] = []
        do {
            for path in paths { nodes.append(try await openNode(path, configuration, checkpointEveryRecords: checkpointEveryRecords)) }
            let result = try await body(nodes, paths)
            for node in nodes { await node.close(checkpoint: false) }
            return result
        } catch {
            for node in nodes { await node.close(checkpoint: false) }
            throw error
        }
    }
}

/// A fresh log prefix on a shared cluster, so tests share clusters without sharing logs.
func freshPrefix() -> String { "m\(getpid())-\(UUID().uuidString.prefix(8))" }

func counterValue(_ bytes: [UInt8]) -> UInt64 {
    bytes.count >= 8 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } : 0
}

func counterBytes(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

/// What a run of incrementing clients saw, per page.
struct IncrementRun: Sendable {
    /// Conditional writes with a definite outcome (succeeded or conflicted), for the checker.
    var history: [UInt64: [RegisterOperation]] = [:]
    /// Values written by acknowledged increments.
    var acknowledged: [UInt64: [UInt64]] = [:]
    /// Values of increments whose outcome was unknown to the client (settled below from the pages).
    var unknown: [UInt64: [UInt64]] = [:]
    /// Reads that returned a page older than one this client had already seen (read-your-writes broken).
    var staleReads = 0
    /// Errors other than conflicts and the replication problems expected while etcd fails over.
    var unexpected: [String] = []
    /// Errors by kind (logUnavailable, outcomeUnknown, behind...): what the clients met.
    var problems: [String: Int] = [:]
}

/// `clients` threads, client i on node i % nodes.count and page i % pages, each doing `incrementsEach`
/// acknowledged increments (read, then write value+1 on condition of the page OSN read) or stopping
/// at `deadlineNs`. Before each read a client has its node catch up to the newest OSN it saw (its
/// writes and conflicts, through any node): read-your-writes. Replication problems (unavailable,
/// unknown outcome, behind) are retried; an unknown outcome is recorded for settling.
/// `onAcknowledged(total)` runs after each acknowledged increment (for fault injection).
func runIncrements(nodes: [StorageNode], clients: Int, pages: Int, incrementsEach: Int, deadlineNs: UInt64,
                   onAcknowledged: @escaping @Sendable (Int) -> Void = { _ in }) -> IncrementRun {
    let run = Mutex(IncrementRun())
    let total = Atomic<Int>(0)
    runClientThreads(clients) { client in
        let node = nodes[client % nodes.count]
        let page = UInt64(client % pages)
        var lastSeen: UInt64 = 0  // the newest OSN this client saw (its writes and conflicts)
        var pageSeen: UInt64 = 0  // the newest OSN of its page it saw: a read below it would be stale
        var done = 0
        func note(_ error: ObjectStoreError) {
            let name: String
            switch error {
            case .replication(let problem): name = "\(problem)".split(separator: ":").first.map(String.init) ?? "\(problem)"
            default: name = "\(error)"
            }
            run.withLock { $0.problems[name, default: 0] += 1 }
        }
        while done < incrementsEach && monotonicNs() < deadlineNs {
            let current: PageVersion
            do throws(ObjectStoreError) {
                _ = try node.catchUp(to: lastSeen, timeoutMs: 2_000)
                current = try node.read(objectID: 1, pageIndex: page)
            } catch {
                note(error)
                usleep(20_000)
                continue
            }
            if current.pageOSN < pageSeen { run.withLock { $0.staleReads += 1 } }
            let value = counterValue(current.payload)
            let start = monotonicNs()
            do throws(ObjectStoreError) {
                let osn = try node.write(objectID: 1, pages: [(page, counterBytes(value + 1), .unmodifiedSince(current.pageOSN))])
                let end = monotonicNs()
                lastSeen = max(lastSeen, osn)
                pageSeen = max(pageSeen, osn)
                done += 1
                run.withLock {
                    $0.history[page, default: []].append(RegisterOperation(
                        invokeNs: start, responseNs: end,
                        kind: .conditionalWrite(value: value + 1, expectedOSN: current.pageOSN, succeeded: true, osn: osn)))
                    $0.acknowledged[page, default: []].append(value + 1)
                }
                onAcknowledged(total.add(1, ordering: .relaxed).newValue)
            } catch {
                let end = monotonicNs()
                switch error {
                case .conflict(_, _, let osn):
                    lastSeen = max(lastSeen, osn)
                    pageSeen = max(pageSeen, osn)
                    run.withLock {
                        $0.history[page, default: []].append(RegisterOperation(
                            invokeNs: start, responseNs: end,
                            kind: .conditionalWrite(value: value + 1, expectedOSN: current.pageOSN, succeeded: false, osn: osn)))
                    }
                case .replication(.outcomeUnknown):
                    note(error)
                    run.withLock { $0.unknown[page, default: []].append(value + 1) }
                case .replication(.logUnavailable), .replication(.behind), .replication(.overloaded):
                    note(error)
                    usleep(20_000)
                default:
                    run.withLock { $0.unexpected.append("\(error)") }
                    return
                }
            }
        }
    }
    return run.withLock { $0 }
}

/// The checks every increment run passes, given each page's final (value, OSN) as read after all nodes
/// caught up: every acknowledged increment is in the value, none applied twice (values 1...final are
/// each written once: by an acknowledged increment or by a settled unknown one), and the history of
/// each page's conditional writes is linearizable. Reads are left out of the checker's history: a read
/// through a node is ordered at that node's applied OSN, which may be older than a write another
/// client saw acknowledged elsewhere (by design: reads say how stale they are); what a client is owed,
/// read-your-writes after catchUp, is checked as `staleReads`, and every read's value reaches the
/// checker through the conditional write made from it (value + 1 on condition of the OSN read).
func checkIncrements(_ run: IncrementRun, finals: [UInt64: (value: UInt64, osn: UInt64)]) -> (settledApplied: Int, settledNot: Int) {
    var settledApplied = 0
    var settledNot = 0
    #expect(run.unexpected == [], "unexpected errors: \(run.unexpected.prefix(5))")
    #expect(run.staleReads == 0)
    for (page, final) in finals.sorted(by: { $0.key < $1.key }) {
        let acknowledged = run.acknowledged[page] ?? []
        let unknown = run.unknown[page] ?? []
        #expect(Set(acknowledged).count == acknowledged.count, "page \(page): an acknowledged value written twice")
        #expect(acknowledged.allSatisfy { $0 >= 1 && $0 <= final.value }, "page \(page): an acknowledged increment is lost")
        let others = Set(1...max(final.value, 1)).subtracting(acknowledged).filter { $0 <= final.value }
        #expect(others.isSubset(of: Set(unknown)),
                "page \(page): values \(others.subtracting(unknown).sorted().prefix(5)) were written by no increment")
        #expect(UInt64(acknowledged.count + others.count) == final.value,
                "page \(page): final \(final.value) = \(acknowledged.count) acknowledged + \(others.count) settled applied")
        settledApplied += others.count
        settledNot += unknown.count - others.count
        let history = run.history[page] ?? []
        if unknown.isEmpty {
            #expect(isLinearizable(history, initial: (0, 0)), "page \(page): \(history.count) operations")
        }
    }
    return (settledApplied, settledNot)
}

/// Every node caught up to the newest OSN any of them applied; each page's (value, OSN) on every node,
/// which must agree; and the nodes' lastOSN, which must agree too.
func converge(_ nodes: [StorageNode], pages: Int) async throws -> [UInt64: (value: UInt64, osn: UInt64)] {
    try await blocking {
        let target = nodes.map(\.lastOSN).max() ?? 0
        for node in nodes { _ = try node.catchUp(to: target, timeoutMs: 10_000) }
        var finals: [UInt64: (value: UInt64, osn: UInt64)] = [:]
        var disagreements = 0
        for page in 0..<UInt64(pages) {
            let versions = try nodes.map { try $0.read(objectID: 1, pageIndex: page) }
            if !versions.allSatisfy({ $0.payload == versions[0].payload && $0.pageOSN == versions[0].pageOSN }) { disagreements += 1 }
            finals[page] = (counterValue(versions[0].payload), versions[0].pageOSN)
        }
        let last = nodes.map(\.lastOSN)
        guard disagreements == 0, last.allSatisfy({ $0 == last[0] }) else {
            throw EtcdClusterError("nodes disagree: \(disagreements) pages differ, lastOSN \(last)")
        }
        return finals
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct MultiNodeTests {
    /// A write through each node is read through every other with the same page OSN (after catchUp).
    @Test(arguments: [(1, 2), (1, 3), (3, 2), (3, 3)])
    func writeThroughOneReadThroughEveryOther(members: Int, nodeCount: Int) async throws {
        let cluster = try sharedEtcdCluster(members: members)
        let configuration = logConfiguration(cluster, prefix: freshPrefix(), proposalTimeoutMs: sharedProposalTimeoutMs)
        try await withNodes(nodeCount, configuration) { nodes, _ in
            for (writer, node) in nodes.enumerated() {
                let payload = [UInt8](repeating: UInt8(writer + 1), count: 64)
                let osn = try await blocking { try node.node.write(objectID: 2, pages: [(UInt64(writer), payload, .absent)]) }
                for reader in nodes {
                    let page = try await blocking { () throws -> PageVersion in
                        _ = try reader.node.catchUp(to: osn, timeoutMs: 10_000)
                        return try reader.node.read(objectID: 2, pageIndex: UInt64(writer))
                    }
                    #expect(page.pageOSN == osn)
                    #expect(page.readOSN >= osn)
                    #expect(page.payload.prefix(64).elementsEqual(payload) && page.payload.dropFirst(64).allSatisfy { $0 == 0 })
                }
            }
            let lasts = try await blocking { () throws -> [UInt64] in
                let target = nodes.map(\.node.lastOSN).max()!
                return try nodes.map { try $0.node.catchUp(to: target, timeoutMs: 10_000).appliedOSN }
            }
            #expect(lasts == Array(repeating: UInt64(nodeCount), count: nodeCount))
            #expect(nodes.allSatisfy { $0.node.replicaStatus.state == .following })
        }
    }

    /// 16 clients over 2 or 3 nodes increment 3 shared counters: no update lost, every node ends with
    /// the same pages and OSNs, and each counter's history of conditional writes is linearizable.
    @Test(arguments: [(1, 2), (3, 3)])
    func sixteenClientsOverNodesLoseNoUpdate(members: Int, nodeCount: Int) async throws {
        let cluster = try sharedEtcdCluster(members: members)
        let configuration = logConfiguration(cluster, prefix: freshPrefix(), proposalTimeoutMs: sharedProposalTimeoutMs)
        try await withNodes(nodeCount, configuration) { nodes, _ in
            let storage = nodes.map(\.node)
            let run = try await blocking {
                runIncrements(nodes: storage, clients: 16, pages: 3, incrementsEach: 6, deadlineNs: monotonicNs() + 40_000_000_000)
            }
            #expect(run.acknowledged.values.reduce(0) { $0 + $1.count } == 16 * 6)
            #expect(run.unknown.isEmpty, "a healthy cluster leaves no outcome unknown: \(run.problems)")
            let finals = try await converge(storage, pages: 3)
            _ = checkIncrements(run, finals: finals)
            #expect(finals.values.reduce(0) { $0 + $1.value } == 16 * 6)
        }
    }

    /// kill -9 of the etcd leader (3 members, 500 ms election timeout) while 16 clients increment
    /// through 3 nodes: no acknowledged increment lost, none applied twice, every unknown outcome
    /// settled by the final pages, and the nodes converge to identical pages and OSNs.
    @Test func leaderKillDuringWrites() async throws {
        try await withEtcdCluster(members: 3) { cluster in
            var configuration = logConfiguration(cluster, prefix: freshPrefix())
            // Shorter than a fail-over (election timeout 500 ms): some clients get outcomeUnknown and settle it.
            configuration.proposalTimeoutMs = 400
            try await withNodes(3, configuration) { nodes, _ in
                let storage = nodes.map(\.node)
                let leader = await etcdLeader(cluster)
                let victim = try #require(leader, "no leader among \(cluster.clientURLs)")
                let killedAt = Atomic<UInt64>(0)
                let run = try await blocking {
                    runIncrements(nodes: storage, clients: 16, pages: 4, incrementsEach: 12,
                                  deadlineNs: monotonicNs() + 60_000_000_000) { total in
                        if total == 40 {
                            cluster.kill(member: victim)
                            killedAt.store(monotonicNs(), ordering: .relaxed)
                        }
                    }
                }
                #expect(killedAt.load(ordering: .relaxed) > 0, "the leader was killed mid-run")
                #expect(!cluster.isRunning(member: victim))
                let acknowledged = run.acknowledged.values.reduce(0) { $0 + $1.count }
                #expect(acknowledged == 16 * 12, "every client finished after the fail-over: \(run.problems)")
                let finals = try await converge(storage, pages: 4)
                let settled = checkIncrements(run, finals: finals)
                let unknownOutcomes = nodes.reduce(0) { $0 + $1.log.stats.unknownOutcomes.load(ordering: .relaxed) }
                print("leader kill: \(acknowledged) acknowledged, \(run.unknown.values.reduce(0) { $0 + $1.count }) unknown to clients "
                      + "(\(settled.settledApplied) applied, \(settled.settledNot) not), log unknown outcomes \(unknownOutcomes), "
                      + "problems \(run.problems)")
                #expect(nodes.allSatisfy { $0.node.replicaStatus.state == .following })
            }
        }
    }
}
