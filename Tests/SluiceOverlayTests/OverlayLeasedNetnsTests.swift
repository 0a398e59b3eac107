// Path: Tests/SluiceOverlayTests/OverlayLeasedNetnsTests.swift — the whole overlay as one system (root and
// CI=true, with etcd): consumer host and producer host in namespaces, leases from real etcd through
// `sluice overlay agent` processes, HTTP from the consumer VM through the redirect. Grant -> first redirected
// packet; revoke -> producer 1 sees no packet after, new flows reach producer 2; the agent killed -9 -> its
// lease expires after the TTL and the redirect goes with it; the etcd leader killed -> lease and redirect stay.
import Foundation
import Glibc
import SluiceCore
import SluiceEtcd
import SluiceEtcdTestSupport
import SluiceTestSupport
import Synchronization
import Testing

@testable import SluiceOverlay

/// The lab's producer VMs as registered endpoints of service "web" (port 8000, VNI 42).
func labProducer(_ number: Int, capacity: Int) -> OverlayProducer {
    OverlayProducer(service: "web", producerVM: "p\(number)", producerHost: "producer-host", underlayIPv4: 0xC612_0002,
                    overlayIPv4: number == 1 ? 0xC613_0202 : 0xC613_0302, port: 8000, vni: 42, capacity: capacity)
}

/// The shared 1-member etcd's URL, a key prefix of the test's own, and a client (shut it down after).
func labEtcd(_ name: String = #function) throws -> (url: String, keys: OverlayKeys, etcd: EtcdClient) {
    let cluster = try sharedEtcdCluster(members: 1)
    let url = cluster.clientURLs[0]
    return (url, try testKeys(name), try client([url], timeoutMs: 10_000))
}

/// Waits up to `timeoutMs` (10 ms steps) for `condition`.
func waitUntil(timeoutMs: Int, _ condition: () -> Bool) -> Bool {
    for _ in 0..<(timeoutMs / 10) {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Starts a `sluice overlay agent` child; its port.
func startAgentProcess(_ sluice: String, url: String, keys: OverlayKeys, name: String, ttl: Int) async throws -> (Child, Int) {
    let agent = try Child([sluice, "overlay", "agent", "--etcd", url, "--prefix", keys.prefix, "--name", name,
                           "--listen", "127.0.0.1:0", "--ttl", "\(ttl)"])
    let started = try #require(try await agent.readLine(timeoutMs: 20_000), "agent did not start: \(agent.process.stderrText)")
    let port = try #require(started.split(separator: ":").last.flatMap { Int($0) }, "start line: \(started)")
    return (agent, port)
}

@Suite(.serialized, .enabled(if: OverlayNetnsEnvironment.enabled && etcdTestsEnabled,
                             "needs root, namespaces, AF_PACKET and etcd (CI=true runs it)"),
       .timeLimit(.minutes(2)))
struct OverlayLeasedNetnsTests {
    @Test func leasesFromAgentsDriveTheRedirect() async throws {
        try #require(OverlayNetnsEnvironment.isRoot, "CI=true: the overlay namespace test needs root")
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let served = try ServedLab(variant: "L")
        defer { served.close() }
        let lab = served.lab
        let (url, keys, etcd) = try labEtcd()
        defer { Task { await etcd.shutdown() } }
        // Producer 1 only, at first: the first grant goes there.
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [labProducer(1, capacity: 1)], ttlSeconds: 60)
        let (agent, port) = try await startAgentProcess(sluice, url: url, keys: keys, name: "a1", ttl: 2)
        defer { agent.process.signal(SIGKILL) }

        let producerHost = try OverlayHost(configuration: lab.producerHost())
        let consumerHost = try OverlayHost(configuration: lab.consumerHost())
        let leasing = try OverlayHostLeasing(
            host: consumerHost, etcd: etcd,
            configuration: .init(consumerHost: "consumer-host", keys: keys, agents: ["127.0.0.1:\(port)"],
                                 agentCallTimeoutMs: 2_000, retryPauseMs: 200))
        try producerHost.start()
        defer { producerHost.stop() }
        try consumerHost.start()
        defer { consumerHost.stop() }
        let joined = Task { try await leasing.run() }
        defer { joined.cancel() }

        // 1. No lease: the first SYN is held, the host asks the agent, the grant comes back through the etcd
        // watch, the held SYN goes on (no TCP retransmit needed).
        let getStartNs = Clock.monotonicNs()
        let first = await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 8)
        let getNs = Clock.monotonicNs() &- getStartNs
        #expect(first == "producer-1", "first GET: \(first ?? "failed")")
        var snapshot = consumerHost.snapshot()
        #expect(waitUntil(timeoutMs: 1_000) {
            snapshot = consumerHost.snapshot()
            return snapshot.leases.first?.firstPacketNs ?? 0 > 0
        })
        let lease1 = try #require(snapshot.leases.first, "no lease in \(snapshot)")
        #expect(lease1.producerVM == "p1")
        #expect(snapshot.heldPackets >= 1 && snapshot.releasedPackets >= 1, "\(snapshot)")
        #expect(snapshot.drops["awaitingLease"] == nil, "\(snapshot.drops)")
        let answered = try #require(leasing.grantAnsweredNs(leaseID: lease1.leaseID))
        let grantToApplied = Double(Int64(bitPattern: lease1.appliedNs &- answered)) / 1e6
        let appliedToFirst = Double(lease1.firstPacketNs &- lease1.appliedNs) / 1e6
        let answeredToFirst = Double(Int64(bitPattern: lease1.firstPacketNs &- answered)) / 1e6
        print(String(format: "overlay leased: grant answered -> applied in the data plane %.2f ms, applied -> first "
                     + "redirected packet %.3f ms, answered -> first redirected packet %.2f ms, first GET (no lease "
                     + "-> reply) %.1f ms, held %llu", grantToApplied, appliedToFirst, answeredToFirst,
                     Double(getNs) / 1e6, snapshot.heldPackets))
        #expect(appliedToFirst < 500, "the held SYN goes on with the grant, not TCP's 1 s retransmit")
        #expect(grantToApplied < 1_000)

        // 2. Producer 2 registered with more free slots; lease 1 revoked through the agent: producer 1 gets
        // no packet after the end is applied, new GETs reach producer 2 (a new grant on the first miss).
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [labProducer(2, capacity: 2)], ttlSeconds: 60)
        let agents = try OverlayAgentClient(agents: ["127.0.0.1:\(port)"])
        let drainsBefore = consumerHost.lastEventsApplied.count
        let revokedAt = Clock.monotonicNs()
        try await agents.revoke(consumerHost: "consumer-host", leaseID: lease1.leaseID)
        #expect(waitUntil(timeoutMs: 3_000) { consumerHost.snapshot().leases.isEmpty })
        let cut = consumerHost.lastEventsApplied
        #expect(cut.count > drainsBefore)
        print(String(format: "overlay leased: revoke call -> cut applied %.2f ms", Double(cut.atNs &- revokedAt) / 1e6))
        usleep(50_000)
        let producer1AtEnd = try #require(producerHost.snapshot().port("p1"))
        let second = await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 8)
        #expect(second == "producer-2", "after the revoke: \(second ?? "failed")")
        for _ in 0..<2 { #expect(await offThreadGet(lab, "http://198.19.100.1/name.txt") == "producer-2") }
        usleep(100_000)
        let producer1Later = try #require(producerHost.snapshot().port("p1"))
        #expect(producer1Later.sentPackets == producer1AtEnd.sentPackets,
                "producer 1 got \(producer1Later.sentPackets - producer1AtEnd.sentPackets) packets after its revoke")
        snapshot = consumerHost.snapshot()
        let lease2 = try #require(snapshot.leases.first)
        #expect(lease2.producerVM == "p2" && lease2.flows >= 3)

        // Revoke timing, `revokeRounds` times: a grant of service "timing" (registered here, unknown to the
        // consumer host, so its events change nothing in the data plane but go the whole way: etcd, the
        // watch, the inbox, a loop turn's drain), then its revoke. Split: revoke call -> end event in the
        // inbox (etcd and the watch), inbox -> applied by the forwarding thread (the hand-off).
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [
            OverlayProducer(service: "timing", producerVM: "t1", producerHost: "producer-host", underlayIPv4: 0xC612_0002,
                            overlayIPv4: 0xC613_0402, port: 9, vni: 42, capacity: 1)], ttlSeconds: 60)
        let revokeRounds = Int(ProcessInfo.processInfo.environment["SLUICE_OVERLAY_REVOKE_ROUNDS"] ?? "") ?? 12
        let timing = try await OverlayRevokeTiming.measure(leasing: leasing, agents: agents, service: "timing",
                                                           consumerVM: "c1", rounds: revokeRounds)
        print("overlay leased: \(timing.summary)")
        #expect(timing.totalMs.count == revokeRounds && timing.totalMs.allSatisfy { $0 > 0 && $0 < 3_000 })

        // 3. The agent killed -9: nobody renews lease 2, etcd expires it after the TTL (2 s), the watch ends
        // it, and the redirect goes with it.
        agent.process.signal(SIGKILL)
        _ = try await offThread { agent.process.wait(timeoutMs: 5_000) }
        let killed = ContinuousClock.now
        let expired = await offThreadWait(timeoutMs: 8_000) { consumerHost.snapshot().leases.isEmpty }
        let took = ContinuousClock.now - killed
        #expect(expired, "lease 2 still in the data plane \(took) after the agent's kill")
        #expect(took < .seconds(6))
        #expect(leasing.counters.eventsEnded.load(ordering: .relaxed) == 2 + UInt64(revokeRounds))
        #expect(leasing.counters.grants.load(ordering: .relaxed) == 2)
        // No agent left: a new GET misses, its request fails (counted), nothing reaches a producer.
        let producer2AtExpiry = try #require(producerHost.snapshot().port("p2"))
        #expect(await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 2) == nil)
        #expect(await offThreadWait(timeoutMs: 3_000) { leasing.counters.requestFailures.load(ordering: .relaxed) >= 1 })
        #expect(producerHost.snapshot().port("p2")?.sentPackets == producer2AtExpiry.sentPackets)
        print("overlay leased: agent killed, redirect gone \(took) later (TTL 2 s); consumer drops \(consumerHost.snapshot().drops)")
    }

    /// Grants the consumer host does not use are given back, so no producer slot is held for nothing: one
    /// refused for want of a lease slot (the host has one) is revoked through the agents at once; one for
    /// a service the host does not serve (ignored by the data plane) is given back by the reconcile after
    /// its grace. The lease in use stays, until a revoke that stopped after its end marker leaves its slot
    /// held: the reconcile revokes it again.
    @Test func unusedGrantsAreGivenBack() async throws {
        try #require(OverlayNetnsEnvironment.isRoot, "CI=true: the overlay namespace test needs root")
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let lab = try OverlayLab(variant: "G")
        defer { lab.destroy() }
        let (url, keys, etcd) = try labEtcd()
        defer { Task { await etcd.shutdown() } }
        let endpoints = [labProducer(1, capacity: 1),
                         OverlayProducer(service: "db", producerVM: "d1", producerHost: "producer-host", underlayIPv4: 0xC612_0002,
                                         overlayIPv4: 0xC613_0502, port: 5432, vni: 42, capacity: 1),
                         OverlayProducer(service: "ghost", producerVM: "g1", producerHost: "producer-host", underlayIPv4: 0xC612_0002,
                                         overlayIPv4: 0xC613_0602, port: 9, vni: 42, capacity: 1)]
        let registration = try await OverlayRegistration.start(etcd, keys: keys, endpoints: endpoints, ttlSeconds: 60)
        let (agent, port) = try await startAgentProcess(sluice, url: url, keys: keys, name: "a1", ttl: 10)
        defer { agent.process.signal(SIGKILL) }
        var configuration = lab.consumerHost()
        configuration.dataplane.leaseSlotCount = 1
        configuration.dataplane.services.append(OverlayService(name: "db", ipv4: 0xC613_6402, port: 5432))
        let consumerHost = try OverlayHost(configuration: configuration)
        let leasing = try OverlayHostLeasing(
            host: consumerHost, etcd: etcd,
            configuration: .init(consumerHost: "consumer-host", keys: keys, agents: ["127.0.0.1:\(port)"],
                                 agentCallTimeoutMs: 2_000, retryPauseMs: 100, reconcileGraceMs: 300))
        try consumerHost.start()
        defer { consumerHost.stop() }
        let joined = Task { try await leasing.run() }
        defer { joined.cancel() }
        let agents = try OverlayAgentClient(agents: ["127.0.0.1:\(port)"])
        func inUse(_ service: String) async throws -> Int {
            try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: service).values.reduce(0, +)
        }

        let web = try await agents.grant(service: "web", consumerHost: "consumer-host", consumerVM: "c1")
        #expect(await offThreadWait(timeoutMs: 3_000) { consumerHost.snapshot().leases.count == 1 })
        // The one lease slot is taken: the db grant is refused and given back.
        _ = try await agents.grant(service: "db", consumerHost: "consumer-host", consumerVM: "c1")
        #expect(await offThreadWait(timeoutMs: 5_000) { leasing.counters.grantsReturned.load(ordering: .relaxed) == 1 })
        #expect(leasing.counters.grantsRefused.load(ordering: .relaxed) == 1)
        #expect(try await inUse("db") == 0)
        // A service the host does not serve: the data plane ignores the grant, the reconcile gives it back.
        _ = try await agents.grant(service: "ghost", consumerHost: "consumer-host", consumerVM: "c1")
        #expect(await offThreadWait(timeoutMs: 5_000) { leasing.counters.leasesReconciled.load(ordering: .relaxed) == 1 })
        #expect(await offThreadWait(timeoutMs: 3_000) { leasing.counters.grantsReturned.load(ordering: .relaxed) == 2 })
        #expect(try await inUse("ghost") == 0)
        // The lease in use is untouched, and nothing else was given back.
        try await Task.sleep(for: .milliseconds(700))
        #expect(consumerHost.snapshot().leases.map(\.leaseID) == [web.record.leaseID])
        #expect(try await inUse("web") == 1)
        #expect(leasing.counters.leasesReconciled.load(ordering: .relaxed) == 1)
        #expect(leasing.counters.grantsReturnFailed.load(ordering: .relaxed) == 0)
        // A revoke that stopped after its first step (the end marker, by hand here): the host cuts at the
        // marker; the record and slot stay (the granting agent renews them) until the reconcile, a grace
        // later, finds the record still there and revokes it again.
        let endKey = keys.leaseEnd(consumerHost: "consumer-host", leaseID: web.record.leaseID)
        _ = try await etcd.put(endKey, Array(try JSONEncoder().encode(OverlayLeaseEndRecord(leaseID: web.record.leaseID, reason: .revoked))),
                               lease: web.record.leaseID)
        #expect(await offThreadWait(timeoutMs: 3_000) { consumerHost.snapshot().leases.isEmpty })
        #expect(await offThreadWait(timeoutMs: 5_000) { leasing.counters.leasesReconciled.load(ordering: .relaxed) == 2 })
        #expect(await offThreadWait(timeoutMs: 3_000) { leasing.counters.grantsReturned.load(ordering: .relaxed) == 3 })
        #expect(try await inUse("web") == 0)
        try await registration.stop()
    }

    @Test func redirectsStayWhenTheEtcdLeaderDies() async throws {
        try #require(OverlayNetnsEnvironment.isRoot, "CI=true: the overlay namespace test needs root")
        let served = try ServedLab(variant: "E")
        defer { served.close() }
        let lab = served.lab
        try await withEtcdCluster(members: 3) { cluster in
            let urls = cluster.clientURLs
            var leader = -1
            for (index, url) in urls.enumerated() {
                let one = try client([url])
                let status = try await one.status()
                await one.shutdown()
                if status.memberID == status.leaderID { leader = index }
            }
            try #require(leader >= 0)
            let ordered = [urls[leader]] + urls.enumerated().filter { $0.offset != leader }.map(\.element)
            let keys = try testKeys()
            let etcd = try client(ordered, timeoutMs: 2_000)
            let agentClient = try client(ordered, timeoutMs: 2_000)
            let registration = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [labProducer(1, capacity: 1)],
                                                                   ttlSeconds: 5)
            let registered = Task { try? await registration.run() }
            let agent = try OverlayLeasingAgent(client: agentClient, configuration: .init(name: "a1", keys: keys, ttlSeconds: 3))
            let renewing = Task { await agent.run() }
            let server = try await OverlayAgentServer.bind(agent: agent, host: "127.0.0.1", port: 0)
            let serving = Task { await server.run() }
            let producerHost = try OverlayHost(configuration: lab.producerHost())
            let consumerHost = try OverlayHost(configuration: lab.consumerHost())
            let leasing = try OverlayHostLeasing(
                host: consumerHost, etcd: etcd,
                configuration: .init(consumerHost: "consumer-host", keys: keys, agents: ["127.0.0.1:\(server.port)"]))
            try producerHost.start()
            try consumerHost.start()
            let joined = Task { try await leasing.run() }
            defer {
                joined.cancel()
                consumerHost.stop()
                producerHost.stop()
            }
            #expect(await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 8) == "producer-1")
            // The host publishes its snapshot on its own thread's turn: the lease may show a moment
            // after the first answer came back through it.
            var published = consumerHost.snapshot().leases.first
            for _ in 0..<100 where published == nil {
                try await Task.sleep(for: .milliseconds(20))
                published = consumerHost.snapshot().leases.first
            }
            let lease = try #require(published)
            cluster.kill(member: leader)
            // 7 s (over twice the 3 s TTL): a new connection every 500 ms, each through the same lease.
            var ok = 0
            var failed = 0
            let deadline = ContinuousClock.now + .seconds(7)
            while ContinuousClock.now < deadline {
                if await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 3) == "producer-1" { ok += 1 } else { failed += 1 }
                try await Task.sleep(for: .milliseconds(500))
            }
            let after = consumerHost.snapshot()
            #expect(failed == 0 && ok >= 5, "GETs ok \(ok) failed \(failed)")
            #expect(after.leases.map(\.leaseID) == [lease.leaseID])
            #expect(leasing.counters.eventsEnded.load(ordering: .relaxed) == 0)
            #expect(agent.counters.expiries.load(ordering: .relaxed) == 0)
            print("overlay leased: etcd leader killed, \(ok) GETs through lease \(lease.leaseID) over 7 s, none failed")
            serving.cancel()
            renewing.cancel()
            registered.cancel()
            await renewing.value
            await registered.value
            await etcd.shutdown()
            await agentClient.shutdown()
        }
    }
}

extension OverlayLeasedNetnsTests {
    /// `sluice run` with an `overlay:` section as the consumer host (leases from etcd and an agent), HTTP
    /// through it, and its metrics endpoint scraped: per service, per lease, drops by reason.
    @Test func sluiceRunServesTheOverlayAndItsMetrics() async throws {
        try #require(OverlayNetnsEnvironment.isRoot, "CI=true: the overlay namespace test needs root")
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let served = try ServedLab(variant: "R")
        defer { served.close() }
        let lab = served.lab
        let (url, keys, etcd) = try labEtcd()
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [labProducer(1, capacity: 1)], ttlSeconds: 60)
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let renewing = Task { await agent.run() }
        defer { renewing.cancel() }
        let server = try await OverlayAgentServer.bind(agent: agent, host: "127.0.0.1", port: 0)
        let serving = Task { await server.run() }
        defer { serving.cancel() }
        let producerHost = try OverlayHost(configuration: lab.producerHost())
        try producerHost.start()
        defer { producerHost.stop() }
        let yaml = """
            cores: [0]
            metrics: { listen: "127.0.0.1:0" }
            overlay:
              name: consumer-host
              namespace: \(lab.path("ch"))
              vni: 42
              underlay:
                interface: \(lab.dev("chu"))
                ipv4: 198.18.0.1
                mac: "\(OverlayLab.consumerUnderlayMAC)"
                neighbors:
                  - { ipv4: 198.18.0.2, mac: "\(OverlayLab.producerUnderlayMAC)" }
              vms:
                - { name: c1, interface: \(lab.dev("chv")), role: consumer, host_mac: "\(OverlayLab.consumerPortMAC)" }
              services:
                - { name: web, ipv4: 198.19.100.1, port: 80, protocol: tcp }
              leasing:
                etcd: ["\(url)"]
                agents: ["127.0.0.1:\(server.port)"]
                prefix: "\(keys.prefix)"
            """
        try FileManager.default.createDirectory(at: served.root, withIntermediateDirectories: true)
        let configPath = served.root.appendingPathComponent("overlay.yaml").path
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        let check = try await offThread { try runCommand([sluice, "run", "--config", configPath, "--check"], timeoutMs: 20_000) }
        #expect(check.status == 0, "\(check.stderr)")
        let run = try Child([sluice, "run", "--config", configPath])
        defer {
            run.process.signal(SIGKILL)
            _ = run.process.wait(timeoutMs: 2_000)
        }
        var metricsPort = 0
        for _ in 0..<20 where metricsPort == 0 {
            guard let line = try await run.readLine(timeoutMs: 20_000) else { break }
            if line.hasPrefix("sluice: ready"), let range = line.range(of: "metrics=127.0.0.1:") {
                metricsPort = Int(line[range.upperBound...].prefix(while: \.isNumber)) ?? 0
            }
        }
        try #require(metricsPort > 0, "no ready line: \(run.process.stderrText)")
        let scrapeURL = "http://127.0.0.1:\(metricsPort)/metrics"
        let body = await offThreadGet(lab, "http://198.19.100.1/name.txt", timeoutSeconds: 8)
        #expect(body == "producer-1", "GET through sluice run: \(body ?? "failed")")
        for _ in 0..<2 { #expect(await offThreadGet(lab, "http://198.19.100.1/name.txt") == "producer-1") }
        try await Task.sleep(for: .milliseconds(100))
        let scrape = try await offThread {
            try runCommand(["/usr/bin/curl", "-s", "--max-time", "5", scrapeURL], timeoutMs: 10_000)
        }
        #expect(scrape.status == 0)
        func value(_ prefix: String) -> UInt64? {
            scrape.lines.first { $0.hasPrefix(prefix) }.flatMap { UInt64($0.split(separator: " ").last ?? "") }
        }
        let host = "host=\"consumer-host\""
        #expect(value("sluice_overlay_service_flows_total{\(host),service=\"web\"}") ?? 0 >= 3, "\(scrape.lines.filter { $0.contains("overlay") })")
        #expect(value("sluice_overlay_service_redirect_misses_total{\(host),service=\"web\"}") ?? 0 >= 1)
        #expect(value("sluice_overlay_held_packets_total{\(host)}") ?? 0 >= 1)
        let leaseLine = scrape.lines.first { $0.hasPrefix("sluice_overlay_lease_packets_total{") }
        #expect(leaseLine?.contains("producer_vm=\"p1\"") == true, "\(leaseLine ?? "no lease series")")
        #expect(leaseLine.flatMap { UInt64($0.split(separator: " ").last ?? "") } ?? 0 > 0)
        #expect(value("sluice_overlay_grants_total{\(host)}") == 1)
        run.process.signal(SIGTERM)
        #expect(try await offThread { run.process.wait(timeoutMs: 10_000) } == 0, "\(run.process.stderrText)")
        print("overlay leased: sluice run served \(value("sluice_overlay_service_packets_total{\(host),service=\"web\"}") ?? 0) "
              + "packets of web, metrics scraped")
    }
}

/// `lab.get` on a thread of its own (it blocks on curl).
func offThreadGet(_ lab: OverlayLab, _ url: String, timeoutSeconds: Int = 4) async -> String? {
    let box = UncheckedBox(lab)
    return (try? await offThread { box.value.get(url, timeoutSeconds: timeoutSeconds) }) ?? nil
}

/// Polls `condition` every 10 ms for up to `timeoutMs` without blocking a concurrency thread.
func offThreadWait(timeoutMs: Int, _ condition: @escaping @Sendable () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(timeoutMs)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

struct UncheckedBox<T>: @unchecked Sendable {  // unchecked: the lab is only read (names), one test at a time
    let value: T
    init(_ value: T) { self.value = value }
}
