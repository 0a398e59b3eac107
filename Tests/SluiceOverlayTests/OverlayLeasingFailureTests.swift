// The leasing side when things die: an agent process killed (kill -9: its grants expire after the TTL),
// the etcd leader killed (grants survive, the lease view stays consistent), and the CLI's flags and
// registration lifetime.
import Foundation
import Glibc
import SluiceEtcd
import SluiceEtcdTestSupport
import SluiceOverlay
import SluiceTestSupport
import Testing

/// Runs blocking `body` on a thread of its own (not one of Swift concurrency's few).
func offThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

final class Child: @unchecked Sendable {  // unchecked: used by one test at a time
    let process: ChildProcess
    init(_ arguments: [String]) throws { process = try ChildProcess(arguments) }
    func readLine(timeoutMs: Int) async throws -> String? {
        try await offThread { self.process.readLine(timeoutMs: timeoutMs) }
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct OverlayLeasingFailureTests {
    /// `sluice overlay agent --metrics`: its own counters (grants, renewals, revokes, races lost, refusals by
    /// reason) scraped as Prometheus text after a grant, a refusal, a renewal and a revoke.
    @Test func agentServesItsCountersToPrometheus() async throws {
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let cluster = try sharedEtcdCluster(members: 1)
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 1)], ttlSeconds: 30)
        let agent = try Child([sluice, "overlay", "agent", "--etcd", cluster.clientURLs[0], "--prefix", keys.prefix,
                               "--name", "scraped", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        defer {
            agent.process.signal(SIGKILL)
            _ = agent.process.wait(timeoutMs: 5_000)
        }
        let started = try #require(try await agent.readLine(timeoutMs: 20_000), "agent did not start: \(agent.process.stderrText)")
        let port = try #require(started.split(separator: ":").last.flatMap { Int($0) }, "start line: \(started)")
        let metricsLine = try #require(try await agent.readLine(timeoutMs: 5_000), "no metrics line: \(agent.process.stderrText)")
        #expect(metricsLine.contains("metrics on 127.0.0.1:"), "\(metricsLine)")
        let metricsPort = try #require(metricsLine.split(separator: ":").last.flatMap { Int($0) }, "metrics line: \(metricsLine)")
        let agents = try OverlayAgentClient(agents: ["127.0.0.1:\(port)"], callTimeoutMs: 5_000)
        let grant = try await agents.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
        await #expect(throws: OverlayLeasingError.self) {
            _ = try await agents.grant(service: "web", consumerHost: "ch1", consumerVM: "c2")
        }
        _ = try await agents.renew(leaseID: grant.record.leaseID)
        try await agents.revoke(consumerHost: "ch1", leaseID: grant.record.leaseID)
        let scrape = try await offThread {
            try runCommand(["/usr/bin/curl", "-s", "--max-time", "5", "http://127.0.0.1:\(metricsPort)/metrics"], timeoutMs: 10_000)
        }
        #expect(scrape.status == 0)
        func value(_ series: String) -> Int? {
            scrape.lines.first { $0.hasPrefix(series + " ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        }
        let label = "agent=\"scraped\""
        #expect(value("sluice_overlay_agent_grants_total{\(label)}") == 1, "\(scrape.lines)")
        #expect(value("sluice_overlay_agent_revokes_total{\(label)}") == 1)
        #expect(value("sluice_overlay_agent_renewals_total{\(label)}") ?? 0 >= 1)
        #expect(value("sluice_overlay_agent_slot_conflicts_total{\(label)}") == 0)
        #expect(value("sluice_overlay_agent_refusals_total{\(label),reason=\"no_capacity\"}") == 1)
        #expect(value("sluice_overlay_agent_refusals_total{\(label),reason=\"lease_not_found\"}") == 0)
        #expect(scrape.lines.contains("# TYPE sluice_overlay_agent_grants_total counter"))
    }

    @Test func killedAgentsLeasesExpireAfterTheTTL() async throws {
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let cluster = try sharedEtcdCluster(members: 1)
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 1)], ttlSeconds: 30)
        let agent = try Child([sluice, "overlay", "agent", "--etcd", cluster.clientURLs[0], "--prefix", keys.prefix,
                               "--name", "doomed", "--listen", "127.0.0.1:0", "--ttl", "2"])
        let started = try #require(try await agent.readLine(timeoutMs: 20_000), "agent did not start: \(agent.process.stderrText)")
        let port = try #require(started.split(separator: ":").last.flatMap { Int($0) }, "start line: \(started)")
        let watch = LeaseEvents(try await OverlayLeaseWatch.start(etcd, keys: keys, consumerHost: "ch1"))
        defer { watch.cancel() }
        let agents = try OverlayAgentClient(agents: ["127.0.0.1:\(port)"], callTimeoutMs: 5_000)
        let grant = try await agents.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
        #expect(grant.record.agent == "doomed")
        #expect(await watch.next() == .granted(grant.lease))
        // Alive, the agent keeps its grant past the TTL.
        try await Task.sleep(for: .seconds(3))
        #expect(try await etcd.get(keys.lease(consumerHost: "ch1", leaseID: grant.record.leaseID)) != nil)
        agent.process.signal(SIGKILL)
        _ = try await offThread { agent.process.wait(timeoutMs: 5_000) }
        let killed = ContinuousClock.now
        let ended = await watch.next(timeoutMs: 10_000)
        let took = ContinuousClock.now - killed
        #expect(ended == .ended(leaseID: grant.record.leaseID, epoch: grant.epoch, reason: .expired))
        #expect(took < .seconds(6), "expired \(took) after the kill (TTL 2 s)")
        print("overlay leasing: agent killed, lease ended(expired) \(took) later (TTL 2 s)")
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "web").isEmpty)
        // The capacity is free again for another agent.
        let other = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "heir", keys: keys, ttlSeconds: 10))
        let again = try await other.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
        #expect(await watch.next() == .granted(again.lease))
        #expect(again.epoch > grant.epoch)
    }

    @Test func leasesSurviveTheEtcdLeadersDeath() async throws {
        try await withEtcdCluster(members: 3) { cluster in
            let urls = cluster.clientURLs
            // Which member leads: ask each for its own ID.
            var leader = -1
            for (index, url) in urls.enumerated() {
                let one = try client([url])
                let status = try await one.status()
                await one.shutdown()
                if status.memberID == status.leaderID { leader = index }
            }
            try #require(leader >= 0)
            // Clients that talk to the leader first, so its death breaks their connections.
            let ordered = [urls[leader]] + urls.enumerated().filter { $0.offset != leader }.map(\.element)
            let keys = try testKeys()
            let etcd = try client(ordered, timeoutMs: 2_000)
            let watchClient = try client(ordered, timeoutMs: 2_000)
            let registration = try await OverlayRegistration.start(
                etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 5)
            let registered = Task { try? await registration.run() }
            let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 3))
            let renewing = Task { await agent.run() }
            let watch = LeaseEvents(try await OverlayLeaseWatch.start(watchClient, keys: keys, consumerHost: "ch1"))
            var grants: [OverlayGrant] = []
            for index in 0..<2 {
                grants.append(try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c\(index)"))
                #expect(await watch.next() == .granted(grants[index].lease))
            }
            let renewalsBefore = agent.counters.renewals.load(ordering: .relaxed)
            cluster.kill(member: leader)
            // Past twice the TTL: the grants are still there, nothing ended.
            try await Task.sleep(for: .seconds(7))
            #expect(await watch.next(timeoutMs: 100) == nil)
            #expect(watch.failure == nil)
            let records = try await etcd.range(.prefix(keys.leases(consumerHost: "ch1")))
            #expect(records.kvs.count == 2)
            #expect(agent.counters.expiries.load(ordering: .relaxed) == 0)
            // Renewed through the survivors (every TTL/3 = 1 s per lease).
            #expect(agent.counters.renewals.load(ordering: .relaxed) >= renewalsBefore + 4)
            // The view follows on the new leader: a revoke ends one, a new grant comes with a higher epoch.
            try await agent.revoke(consumerHost: "ch1", leaseID: grants[0].record.leaseID)
            #expect(await watch.next() == .ended(leaseID: grants[0].record.leaseID, epoch: grants[0].epoch, reason: .revoked))
            let third = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c2")
            #expect(third.epoch > grants[1].epoch)
            #expect(await watch.next() == .granted(third.lease))
            // The watch talked to the dead leader: it was opened again on a survivor, nothing lost or repeated.
            #expect(watch.reconnects >= 1)
            #expect(await watch.next(timeoutMs: 200) == nil)
            watch.cancel()
            renewing.cancel()
            registered.cancel()
            await renewing.value
            await registered.value
            await etcd.shutdown()
            await watchClient.shutdown()
        }
    }

    @Test func leaseViewCatchesUpAfterItsOnlyMemberRestartsPastACompaction() async throws {
        try await withEtcdCluster(members: 3) { cluster in
            let urls = cluster.clientURLs
            let keys = try testKeys()
            let etcd = try client(urls, timeoutMs: 2_000)
            // The view talks to member 0 only: its death stops the view until member 0 is back.
            let watchClient = try client([urls[0]], timeoutMs: 2_000)
            _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 30)
            let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
            let watch = LeaseEvents(try await OverlayLeaseWatch.start(watchClient, keys: keys, consumerHost: "ch1"))
            let first = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c1")
            #expect(await watch.next() == .granted(first.lease))
            cluster.kill(member: 0)
            // Meanwhile: the first lease revoked, a second granted, and the history compacted past both.
            var revoked = false
            let deadline = ContinuousClock.now + .seconds(10)
            while !revoked && ContinuousClock.now < deadline {
                do {
                    try await agent.revoke(consumerHost: "ch1", leaseID: first.record.leaseID)
                    revoked = true
                } catch {
                    try await Task.sleep(for: .milliseconds(200))  // a new leader is being elected
                }
            }
            try #require(revoked)
            let second = try await agent.grant(service: "web", consumerHost: "ch1", consumerVM: "c2")
            try await etcd.compact(revision: second.epoch)
            try await offThread { try cluster.restart(member: 0) }
            // The view reports the end of the first (revoked when it replays the history, expired when it
            // had to read a fresh snapshot) and the second grant, each once.
            let ended = await watch.next(timeoutMs: 20_000)
            guard case .ended(let id, let epoch, let reason)? = ended else {
                Issue.record("expected the first lease to end, got \(String(describing: ended)); failure \(String(describing: watch.failure))")
                return
            }
            #expect(id == first.record.leaseID && epoch == first.epoch && (reason == .revoked || reason == .expired))
            #expect(await watch.next() == .granted(second.lease))
            #expect(await watch.next(timeoutMs: 300) == nil)
            #expect(watch.reconnects >= 1)
            print("overlay leasing: view after member restart: ended(\(reason.rawValue)), reconnects \(watch.reconnects)")
            watch.cancel()
            await etcd.shutdown()
            await watchClient.shutdown()
        }
    }

    @Test func cliRegistersUntilSIGTERMAndRefusesBadFlags() async throws {
        let sluice = try #require(sluiceBinary(), "sluice not built: swift build --build-tests")
        let cluster = try sharedEtcdCluster(members: 1)
        let keys = try testKeys()
        let url = cluster.clientURLs[0]
        let register = try Child([sluice, "overlay", "register", "--etcd", url, "--prefix", keys.prefix, "--host", "ph1",
                                  "--underlay", "198.18.0.2", "--endpoint", "web,p1,198.19.1.2,8080,42,2",
                                  "--endpoint", "dns,p2,198.19.1.3,53,42,1", "--ttl", "5"])
        let line = try await register.readLine(timeoutMs: 20_000)
        #expect(line?.hasPrefix("registered 2 endpoints of ph1") == true, "\(register.process.stderrText)")
        let listed = try await offThread { try runCommand([sluice, "overlay", "producers", "--etcd", url, "--prefix", keys.prefix]) }
        #expect(listed.status == 0)
        #expect(listed.lines.count == 3, "\(listed.lines)")
        #expect(listed.lines.contains { $0.hasPrefix("web\tp1\tph1\t198.18.0.2\t198.19.1.2\t8080\t42\t2\t0") })
        // An agent child, then lease / leases / revoke through the CLI.
        let agent = try Child([sluice, "overlay", "agent", "--etcd", url, "--prefix", keys.prefix, "--name", "cli",
                               "--listen", "127.0.0.1:0", "--ttl", "5"])
        let started = try #require(try await agent.readLine(timeoutMs: 20_000), "agent did not start: \(agent.process.stderrText)")
        let port = try #require(started.split(separator: ":").last.flatMap { Int($0) }, "start line: \(started)")
        let leased = try await offThread {
            try runCommand([sluice, "overlay", "lease", "--agents", "127.0.0.1:\(port)", "--consumer", "c1", "--consumer-host", "h1",
                            "--service", "dns"], timeoutMs: 20_000)
        }
        #expect(leased.status == 0, "\(leased.stderr)")
        let words = leased.lines.first?.split(separator: " ").map(String.init) ?? []
        #expect(words.count > 2 && words[0] == "lease" && words.contains("h1/c1") && words.contains("ph1/p2"), "\(leased.lines)")
        let leaseID = words.count > 1 ? words[1] : "0"
        let table = try await offThread {
            try runCommand([sluice, "overlay", "leases", "--etcd", url, "--prefix", keys.prefix, "--consumer-host", "h1"])
        }
        #expect(table.lines.count == 2 && table.lines[1].hasPrefix("\(leaseID)\t"), "\(table.lines)")
        // dns has one slot: a second consumer is refused, exit 1 with the reason.
        let full = try await offThread {
            try runCommand([sluice, "overlay", "lease", "--agents", "127.0.0.1:\(port)", "--consumer", "c2", "--consumer-host", "h1",
                            "--service", "dns"], timeoutMs: 20_000)
        }
        #expect(full.status == 1)
        #expect(full.stderr.contains("no_capacity"), "\(full.stderr)")
        let revoked = try await offThread {
            try runCommand([sluice, "overlay", "revoke", "--agents", "127.0.0.1:\(port)", "--consumer-host", "h1", "--lease", leaseID],
                           timeoutMs: 20_000)
        }
        #expect(revoked.status == 0 && revoked.lines == ["revoked \(leaseID)"], "\(revoked.lines) \(revoked.stderr)")
        agent.process.signal(SIGTERM)
        #expect(try await offThread { agent.process.wait(timeoutMs: 10_000) } == 0)
        let report = agent.process.remainingLines(timeoutMs: 1_000)
        #expect(report.contains("grants 1") && report.contains("revokes 1") && report.contains("refusals{reason=\"no_capacity\"} 1"),
                "\(report)")

        register.process.signal(SIGTERM)
        let status = try await offThread { register.process.wait(timeoutMs: 10_000) }
        #expect(status == 0)
        let etcd = try client(cluster.clientURLs)
        #expect(try await OverlayRegistry.producers(etcd, keys: keys).producers.isEmpty)
        await etcd.shutdown()

        let long = String(repeating: "n", count: 65)
        let bad: [[String]] = [
            ["overlay", "lease", "--agents", "nohost", "--consumer", "c1", "--consumer-host", "h1", "--service", "web"],
            ["overlay", "lease", "--agents", "127.0.0.1:1", "--consumer", long, "--consumer-host", "h1", "--service", "web"],
            ["overlay", "agent", "--etcd", url, "--name", "a/b", "--listen", "127.0.0.1:0"],
            ["overlay", "agent", "--etcd", url, "--name", "a", "--listen", "127.0.0.1:0", "--ttl", "0"],
            ["overlay", "register", "--etcd", url, "--host", "h", "--underlay", "1.2.3", "--endpoint", "web,p1,1.1.1.1,80,1,1"],
            ["overlay", "register", "--etcd", url, "--host", "h", "--underlay", "1.2.3.4", "--endpoint", "web,p1,1.1.1.1,80,99999999,1"],
            ["overlay", "producers", "--etcd", "ftp://x"],
            ["overlay", "bench-revoke", "--config", "/nonexistent.json", "--rounds", "0"],
            ["overlay", "bench-revoke", "--config", "/nonexistent.json", "--rounds", "99999999999"],
            ["overlay", "bench-revoke", "--config", "/nonexistent.json"],
        ]
        for arguments in bad {
            let result = try await offThread { try runCommand([sluice] + arguments, timeoutMs: 20_000) }
            #expect(result.status == 64, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("Error"), "\(arguments): \(result.stderr)")
        }
        // An operating error (no agent answers): exit 1 with the reason.
        let noAgent = try await offThread {
            try runCommand([sluice, "overlay", "lease", "--agents", "127.0.0.1:1", "--consumer", "c1", "--consumer-host", "h1",
                            "--service", "web", "--timeout-ms", "500"], timeoutMs: 20_000)
        }
        #expect(noAgent.status == 1)
        #expect(noAgent.stderr.contains("no leasing agent answered"), "\(noAgent.stderr)")
    }
}
