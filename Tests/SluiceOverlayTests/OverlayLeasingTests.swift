// The leasing side against real etcd (a shared 1-member cluster; each test keeps to a key prefix of its
// own): registry, grants and their events, revoke, two agents racing, the agent protocol's bad input.
import Foundation
import SluiceCore
import SluiceEtcd
import SluiceEtcdTestSupport
import SluiceOverlay
import Testing

/// A key prefix of its own for each test.
func testKeys(_ name: String = #function) throws -> OverlayKeys {
    let clean = name.filter { $0.isLetter || $0.isNumber }
    return try OverlayKeys(prefix: "/test/\(clean)-\(UInt32.random(in: 0...UInt32.max))/")
}

func producer(_ service: String, _ vm: String, host: String = "ph1", capacity: Int, last: UInt32 = 2) -> OverlayProducer {
    OverlayProducer(service: service, producerVM: vm, producerHost: host, underlayIPv4: 0xC612_0000 | last,
                    overlayIPv4: 0xC613_0100 | last, port: 8080, vni: 42, capacity: capacity)
}

/// A test client: 10 s per call (the first call also connects, which on a loaded 2-core machine took over 3 s).
func client(_ urls: [String], timeoutMs: Int64 = 10_000) throws -> EtcdClient {
    try EtcdClient(EtcdClientConfiguration(endpoints: urls, callTimeoutMs: timeoutMs))
}

/// A lease watch read by a task of its own; `next` takes its events in order, with a timeout.
final class LeaseEvents: @unchecked Sendable {  // unchecked: state under `lock` only
    private let lock = NSLock()
    private var events: [OverlayLeaseEvent] = []
    /// CLOCK_MONOTONIC ns at which each event came out of the watch.
    private var arrivals: [UInt64] = []
    private var taken = 0
    private(set) var failure: OverlayLeasingError?
    /// The watch's reconnects, as of its last event.
    var reconnects: Int { lock.withLock { reconnectsSeen } }
    private var reconnectsSeen = 0
    private var reader: Task<Void, Never>?

    init(_ watch: sending OverlayLeaseWatch) {
        reader = Task { [watch] in
            var watch = watch
            do throws(OverlayLeasingError) {
                while let event = try await watch.next() {
                    let reconnects = watch.reconnects
                    let now = Clock.monotonicNs()
                    self.lock.withLock {
                        self.arrivals.append(now)
                        self.events.append(event)
                        self.reconnectsSeen = reconnects
                    }
                }
            } catch {
                self.lock.withLock { self.failure = error }
            }
        }
    }

    /// The next event within `timeoutMs`, or nil.
    func next(timeoutMs: Int = 10_000) async -> OverlayLeaseEvent? {
        let deadline = ContinuousClock.now + .milliseconds(timeoutMs)
        while ContinuousClock.now < deadline {
            let event: OverlayLeaseEvent? = lock.withLock {
                guard taken < events.count else { return nil }
                taken += 1
                return events[taken - 1]
            }
            if let event { return event }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// When the last event `next` returned came out of the watch (CLOCK_MONOTONIC ns).
    var lastTakenArrivalNs: UInt64 { lock.withLock { taken > 0 ? arrivals[taken - 1] : 0 } }

    /// Like `next`, polling every 0.2 ms (for timings: the arrival time is taken in the reader anyway).
    func nextQuickly(timeoutMs: Int = 10_000) async -> OverlayLeaseEvent? {
        let deadline = ContinuousClock.now + .milliseconds(timeoutMs)
        while ContinuousClock.now < deadline {
            let event: OverlayLeaseEvent? = lock.withLock {
                guard taken < events.count else { return nil }
                taken += 1
                return events[taken - 1]
            }
            if let event { return event }
            try? await Task.sleep(for: .microseconds(200))
        }
        return nil
    }

    func cancel() { reader?.cancel() }
}

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct OverlayLeasingTests {
    let cluster: EtcdCluster
    init() throws { cluster = try sharedEtcdCluster(members: 1) }

    @Test func grantIsSeenAsAnEventWithTheProducer() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        let registration = try await OverlayRegistration.start(
            etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 2)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let watch = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        let grant = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
        #expect(grant.record.producerVM == "p1")
        #expect(grant.record.producerHost == "ph1")
        let event = await watch.next()
        #expect(event == .granted(grant.lease))
        guard case .granted(let lease)? = event else { return }
        #expect(lease.producerUnderlayIPv4 == 0xC612_0002)
        #expect(lease.producerOverlayIPv4 == 0xC613_0102)
        #expect(lease.producerPort == 8080)
        #expect(lease.vni == 42)
        #expect(lease.consumerVM == "c1")
        #expect(lease.epoch == grant.epoch)
        // A second watch starts from the snapshot: the same grant, same epoch.
        let later = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        #expect(await later.next() == .granted(grant.lease))
        let (producers, malformed) = try await OverlayRegistry.producers(etcd, keys: keys)
        #expect(producers == [producer("web", "p1", capacity: 2)])
        #expect(malformed.isEmpty)
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "web") == ["p1": 1])
        #expect(agent.counters.grants.load(ordering: .relaxed) == 1)
        try await registration.stop()
        watch.cancel()
        later.cancel()
    }

    @Test func revokeEndsTheLeaseAsRevokedAndFreesTheSlot() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("db", "p1", capacity: 1)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let watch = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        let first = try await agent.grant(service: "db", consumerHost: "ch1", consumerVM: "c1")
        #expect(await watch.next() == .granted(first.lease))
        // Full: the one slot is taken.
        await #expect(throws: OverlayLeasingError.self) {
            _ = try await agent.grant(service: "db", consumerHost: "ch1", consumerVM: "c2")
        }
        #expect(agent.counters.refusals(.noCapacity) == 1)
        try await agent.revoke(consumerHost: "ch1", leaseID: first.record.leaseID)
        #expect(await watch.next() == .ended(leaseID: first.record.leaseID, epoch: first.epoch, reason: .revoked))
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "db").isEmpty)
        let second = try await agent.grant(service: "db", consumerHost: "ch1", consumerVM: "c2")
        #expect(second.epoch > first.epoch)
        #expect(await watch.next() == .granted(second.lease))
        // Revoking it twice: lease_not_found, a clear refusal.
        try await agent.revoke(consumerHost: "ch1", leaseID: second.record.leaseID)
        do {
            try await agent.revoke(consumerHost: "ch1", leaseID: second.record.leaseID)
            Issue.record("second revoke succeeded")
        } catch OverlayLeasingError.refused(let reason, _) {
            #expect(reason == .leaseNotFound)
        }
        #expect(agent.counters.revokes.load(ordering: .relaxed) == 2)
        watch.cancel()
    }

    /// Revoke -> the consumer host's watch reports the end, for both ways of reading a revoke: at the
    /// reason write (the default) and at the delete (the older behaviour). Both watches see the same
    /// revokes. Prints medians and p90; checks the reason-write end is never later than the delete's.
    @Test func revokeEndsAtTheReasonWriteOneCommitEarlier() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        let registration = try await OverlayRegistration.start(
            etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let early = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        let late = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1", endsOnReasonWrite: false))
        let rounds = Int(ProcessInfo.processInfo.environment["SLUICE_OVERLAY_REVOKE_ROUNDS"] ?? "") ?? 12
        var earlyMs: [Double] = []
        var lateMs: [Double] = []
        var callMs: [Double] = []
        for _ in 0..<rounds {
            let grant = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
            #expect(await early.nextQuickly() == .granted(grant.lease))
            #expect(await late.nextQuickly() == .granted(grant.lease))
            try await Task.sleep(for: .milliseconds(20))
            let start = Clock.monotonicNs()
            try await agent.revoke(consumerHost: "ch1", leaseID: grant.record.leaseID)
            let returned = Clock.monotonicNs()
            let ended = OverlayLeaseEvent.ended(leaseID: grant.record.leaseID, epoch: grant.epoch, reason: .revoked)
            #expect(await early.nextQuickly() == ended)
            #expect(await late.nextQuickly() == ended)
            earlyMs.append(Double(early.lastTakenArrivalNs &- start) / 1e6)
            lateMs.append(Double(late.lastTakenArrivalNs &- start) / 1e6)
            callMs.append(Double(returned &- start) / 1e6)
        }
        // One end per lease: the delete after the reason write is not reported again.
        #expect(await early.next(timeoutMs: 300) == nil)
        func quantile(_ values: [Double], _ q: Double) -> String {
            String(format: "%.2f", values.sorted()[min(values.count - 1, Int(Double(values.count) * q))])
        }
        print("overlay revoke -> end event, \(rounds) revokes: at the reason write median \(quantile(earlyMs, 0.5)) ms "
              + "p90 \(quantile(earlyMs, 0.9)) ms; at the delete median \(quantile(lateMs, 0.5)) ms p90 \(quantile(lateMs, 0.9)) ms; "
              + "revoke call returned median \(quantile(callMs, 0.5)) ms")
        #expect(zip(earlyMs, lateMs).allSatisfy { $0 <= $1 + 0.5 }, "early \(earlyMs) late \(lateMs)")
        try await registration.stop()
        early.cancel()
        late.cancel()
    }

    /// A revoke between its two commits (end marker written, etcd lease not yet revoked): a watch started
    /// then does not grant the lease, and one running ends it at the marker, once. A record an earlier
    /// version's revoke wrote its reason into is read the same way. A marker for no record is refused.
    @Test func endMarkersEndLeasesForEveryWatch() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        let registration = try await OverlayRegistration.start(
            etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let running = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        let marked = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
        let older = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c2")
        let kept = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c3")
        for grant in [marked, older, kept] { #expect(await running.nextQuickly() == .granted(grant.lease)) }
        // The revoke's first commit only, by hand: the marker on the grant's own etcd lease.
        let endKey = keys.leaseEnd(consumerHost: "ch1", leaseID: marked.record.leaseID)
        _ = try await etcd.put(endKey, Array(try JSONEncoder().encode(OverlayLeaseEndRecord(leaseID: marked.record.leaseID, reason: .producerMoved))),
                               lease: marked.record.leaseID)
        #expect(await running.nextQuickly() == .ended(leaseID: marked.record.leaseID, epoch: marked.epoch, reason: .producerMoved))
        // An earlier version's revoke: the reason inside the record.
        var record = older.record
        record.endReason = OverlayLeaseEndReason.revoked.rawValue
        _ = try await etcd.put(keys.lease(consumerHost: "ch1", leaseID: older.record.leaseID), Array(try JSONEncoder().encode(record)),
                               lease: older.record.leaseID)
        #expect(await running.nextQuickly() == .ended(leaseID: older.record.leaseID, epoch: older.epoch, reason: .revoked))
        // A watch started now grants only the lease nobody is revoking.
        let late = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        #expect(await late.nextQuickly() == .granted(kept.lease))
        #expect(await late.next(timeoutMs: 300) == nil)
        // The etcd leases go: nothing more is reported by either (ended once).
        try await agent.revoke(consumerHost: "ch1", leaseID: marked.record.leaseID)
        try await agent.revoke(consumerHost: "ch1", leaseID: older.record.leaseID)
        #expect(await running.next(timeoutMs: 300) == nil)
        #expect(await late.next(timeoutMs: 100) == nil)
        // Revoking a lease with no record writes no marker: lease_not_found.
        do {
            try await agent.revoke(consumerHost: "ch2", leaseID: kept.record.leaseID)
            Issue.record("revoke of another host's lease succeeded")
        } catch OverlayLeasingError.refused(let reason, _) {
            #expect(reason == .leaseNotFound)
        }
        #expect(try await etcd.get(keys.leaseEnd(consumerHost: "ch2", leaseID: kept.record.leaseID)) == nil)
        try await agent.revoke(consumerHost: "ch1", leaseID: kept.record.leaseID)
        #expect(await running.nextQuickly() == .ended(leaseID: kept.record.leaseID, epoch: kept.epoch, reason: .revoked))
        #expect(await late.nextQuickly() == .ended(leaseID: kept.record.leaseID, epoch: kept.epoch, reason: .revoked))
        running.cancel()
        late.cancel()
        try await registration.stop()
    }

    @Test func grantsSpreadOverProducersAndSkipGoneRegistrations() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        let host1 = try await OverlayRegistration.start(
            etcd, keys: keys, endpoints: [producer("web", "p1", host: "ph1", capacity: 3)], ttlSeconds: 10)
        _ = try await OverlayRegistration.start(
            etcd, keys: keys, endpoints: [producer("web", "p2", host: "ph2", capacity: 3, last: 3)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        var byProducer: [String: Int] = [:]
        for index in 0..<4 {
            let grant = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c\(index)")
            byProducer[grant.record.producerVM, default: 0] += 1
        }
        #expect(byProducer == ["p1": 2, "p2": 2])
        // p1's host goes away: its endpoint vanishes, new grants only go to p2 (one slot left there).
        try await host1.stop()
        let next = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c9")
        #expect(next.record.producerVM == "p2")
        do {
            _ = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c10")
            Issue.record("a grant past p2's capacity")
        } catch OverlayLeasingError.refused(let reason, _) {
            #expect(reason == .noCapacity)
        }
    }

    @Test func twoAgentsRacingForTheLastSlotLeaseItOnce() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 3)], ttlSeconds: 10)
        // Two agents, each with a client (connection) of its own.
        let etcdA = try client(cluster.clientURLs)
        let etcdB = try client(cluster.clientURLs)
        defer { Task { await etcdA.shutdown(); await etcdB.shutdown() } }
        let agents = [
            try OverlayLeasingAgent(client: etcdA, configuration: .init(name: "a", keys: keys, ttlSeconds: 10)),
            try OverlayLeasingAgent(client: etcdB, configuration: .init(name: "b", keys: keys, ttlSeconds: 10)),
        ]
        // Two slots go first; then 40 tasks race for the last one.
        _ = try await agents[0].grant(service: "web", consumerHost: "ch0", consumerVM: "c0")
        _ = try await agents[1].grant(service: "web", consumerHost: "ch0", consumerVM: "c1")
        let outcomes = await withTaskGroup(of: Result<OverlayGrant, OverlayLeasingError>.self) { group in
            for index in 0..<40 {
                group.addTask {
                    do throws(OverlayLeasingError) {
                        return .success(try await agents[index % 2].grant(service: "web", consumerHost: "ch\(index % 3)", consumerVM: "r\(index)"))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            var all: [Result<OverlayGrant, OverlayLeasingError>] = []
            for await outcome in group { all.append(outcome) }
            return all
        }
        let granted = outcomes.compactMap { try? $0.get() }
        #expect(granted.count == 1)
        for outcome in outcomes {
            if case .failure(let error) = outcome {
                #expect(error == .refused(.noCapacity, message: "no producer of service web has a free slot"))
            }
        }
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "web") == ["p1": 3])
        let records = try await etcd.range(.prefix(keys.leasesAll))
        #expect(records.kvs.count == 3)
        let conflicts = agents.map { $0.counters.slotConflicts.load(ordering: .relaxed) }.reduce(0, +)
        #expect(conflicts >= 0)
    }

    @Test func badRequestsAreRefusedClearly() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let long = String(repeating: "x", count: OverlayLimits.nameLengthMax + 1)
        for (service, host, vm) in [("nope", "ch1", "c1"), (long, "ch1", "c1"), ("web", "ch/1", "c1"), ("web", "ch1", "")] {
            do {
                _ = try await agent.grant(service: service, consumerHost: host, consumerVM: vm)
                Issue.record("granted \(service) \(host) \(vm)")
            } catch OverlayLeasingError.refused(let reason, let message) {
                #expect(reason == (service == "nope" ? .unknownService : .invalidName), "\(message)")
            }
        }
        #expect(throws: OverlayLeasingError.self) { _ = try OverlayKeys(prefix: "no-slash") }
        var bad = producer("web", "p1", capacity: 0)
        #expect(throws: OverlayLeasingError.self) { try bad.validate() }
        bad = producer(long, "p1", capacity: 1)
        #expect(throws: OverlayLeasingError.self) { try bad.validate() }
        let badProducer = bad
        await #expect(throws: OverlayLeasingError.self) {
            _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [badProducer], ttlSeconds: 10)
        }
    }

    @Test func agentProtocolRefusesBadFramesAndKeepsServing() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 10)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let server = try await OverlayAgentServer.bind(agent: agent, host: "127.0.0.1", port: 0)
        let serving = Task { await server.run() }
        defer { serving.cancel() }

        func answers(_ text: String, lines: Int) async throws -> [OverlayAgentProtocol.Response] {
            try await OverlayAgentClient.exchange(host: "127.0.0.1", port: server.port, bytes: Array(text.utf8),
                                                  linesWanted: lines, timeoutMs: 5_000)
                .map { try JSONDecoder().decode(OverlayAgentProtocol.Response.self, from: Data($0)) }
        }
        // Garbage, a wrong version, an unknown op, a grant missing fields, a name too long, then a good
        // grant: all on one connection, each answered, the last granted.
        let long = String(repeating: "y", count: 65)
        let script = "not json\n{\"v\":2,\"op\":\"grant\"}\n{\"v\":1,\"op\":\"launch\"}\n{\"v\":1,\"op\":\"grant\",\"service\":\"web\"}\n"
            + "{\"v\":1,\"op\":\"grant\",\"service\":\"web\",\"consumerHost\":\"\(long)\",\"consumerVM\":\"c1\"}\n"
            + "{\"v\":1,\"op\":\"grant\",\"service\":\"nosuch\",\"consumerHost\":\"ch1\",\"consumerVM\":\"c1\"}\n"
            + "{\"v\":1,\"op\":\"grant\",\"service\":\"web\",\"consumerHost\":\"ch1\",\"consumerVM\":\"c1\"}\n"
        let replies = try await answers(script, lines: 7)
        #expect(replies.map(\.error) == [.malformedRequest, .unsupportedVersion, .malformedRequest, .malformedRequest,
                                         .invalidName, .unknownService, nil])
        #expect(replies.last?.ok == true)
        #expect(replies.last?.grant?.record.consumerVM == "c1")
        // A frame over the bound without a newline: frame_too_long, then the agent closes that connection.
        let tooLong = try await answers(String(repeating: "z", count: OverlayAgentProtocol.frameBytesMax + 10), lines: 1)
        #expect(tooLong.map(\.error) == [.frameTooLong])
        // And serves the next one; through the client with two agents, one of them dead.
        let agentsClient = try OverlayAgentClient(agents: ["127.0.0.1:1", "127.0.0.1:\(server.port)"], callTimeoutMs: 3_000)
        let grant = try await agentsClient.grant(service: "web", consumerHost: "ch1", consumerVM: "c2")
        #expect(grant.record.consumerVM == "c2")
        #expect(try await agentsClient.renew(leaseID: grant.record.leaseID) > 0)
        try await agentsClient.revoke(consumerHost: "ch1", leaseID: grant.record.leaseID)
        do {
            _ = try await agentsClient.renew(leaseID: grant.record.leaseID)
            Issue.record("renewed a revoked lease")
        } catch {
            #expect(error == .refused(.leaseNotFound, message: "lease \(grant.record.leaseID) expired or was revoked"))
        }
        #expect(agent.counters.refusals(.malformedRequest) == 3)
        #expect(agent.counters.refusals(.frameTooLong) == 1)
        #expect(agent.counters.refusals(.unsupportedVersion) == 1)
        // No agent answering at all: a typed error naming each.
        let dead = try OverlayAgentClient(agents: ["127.0.0.1:1"], callTimeoutMs: 1_000)
        do {
            _ = try await dead.grant(service: "web", consumerHost: "ch1", consumerVM: "c3")
            Issue.record("a grant from no agent")
        } catch {
            if case .agentsUnavailable(let failures) = error {
                #expect(failures.count == 2)
            } else {
                Issue.record("expected agentsUnavailable, got \(error)")
            }
        }
    }
}
