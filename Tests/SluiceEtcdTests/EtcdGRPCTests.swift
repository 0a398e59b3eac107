// What the gRPC transport adds to the etcd client, against real etcd: many calls on one HTTP/2 connection
// (etcd's PINGs), "never sent" told from "in doubt", keep-alive on the lease stream, shutdown with watches.
import Foundation
import SluiceEtcdTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import SluiceEtcd

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A loopback port nothing listens on: bound once by the kernel's choice, then closed (connects to it
/// are refused).
private func refusedPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw EtcdClusterError("socket: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw EtcdClusterError("bind: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}

@Suite(.serialized, .timeLimit(.minutes(1)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct EtcdGRPCTests {
    @Test func thousandsOfSequentialCallsKeepOneConnection() async throws {
        // etcd 3.4 sends an HTTP/2 PING for nearly every call; swift-nio-http2 alone closes a connection
        // after 200 inbound PINGs in 30 s. With PingAnswerer in front, one connection carries them all.
        let calls = 1_200
        try await withEtcdCluster(members: 1) { cluster async throws in
            let configuration = EtcdClientConfiguration(endpoints: cluster.clientURLs, callTimeoutMs: 5_000)
            try await EtcdClient.with(configuration) { client async throws in
                let start = ContinuousClock.now
                for index in 0..<calls / 2 {
                    let key = bytes("many/\(index)")
                    #expect(try await client.putIfAbsent(key, [UInt8(truncatingIfNeeded: index)]))
                    #expect(try await client.get(key)?.value == [UInt8(truncatingIfNeeded: index)])
                }
                let elapsed = ContinuousClock.now - start
                #expect(elapsed < .seconds(30), "\(calls) calls took \(elapsed): not over 200 in 30 s")
                #expect(client.connectionsOpened == 1, "the connection broke and was made again")
                // The test only proves something when etcd did send its PINGs.
                #expect(client.pingsAnswered >= 200, "etcd sent \(client.pingsAnswered) PINGs for \(calls) calls")
            }
        }
    }

    @Test func writeToARefusedEndpointGoesToTheNextKnownNotApplied() async throws {
        try await withEtcdCluster(members: 1) { cluster async throws in
            let refused = "http://127.0.0.1:\(try refusedPort())"
            // Connection refused: nothing was sent, so even a write may go to the next endpoint.
            let configuration = EtcdClientConfiguration(endpoints: [refused] + cluster.clientURLs, callTimeoutMs: 3_000)
            try await EtcdClient.with(configuration) { client async throws in
                let start = ContinuousClock.now
                #expect(try await client.putIfAbsent(bytes("refused/a"), [1]))
                #expect(ContinuousClock.now - start < .seconds(2), "a refused endpoint cost \(ContinuousClock.now - start)")
                #expect(try await client.status().endpoint == cluster.clientURLs[0])
                #expect(try await client.get(bytes("refused/a"))?.value == [1])
            }
            // Only the refused endpoint: the write is unreachable and known not applied.
            try await EtcdClient.with(EtcdClientConfiguration(endpoints: [refused], callTimeoutMs: 3_000)) { client async throws in
                do {
                    _ = try await client.put(bytes("refused/b"), [2])
                    Issue.record("put to a refused endpoint succeeded")
                } catch let error as EtcdError {
                    guard case .unreachable(let endpoints, let underlying) = error else {
                        Issue.record("expected unreachable, got \(error)")
                        return
                    }
                    #expect(endpoints == [refused])
                    #expect(underlying.count == 1)
                    #expect(!error.outcomeUnknown)
                }
            }
            try await EtcdClient.with(EtcdClientConfiguration(endpoints: cluster.clientURLs)) { client async throws in
                #expect(try await client.get(bytes("refused/b")) == nil)
            }
        }
    }

    @Test func memberKilledMidWriteLeavesTheOutcomeUnknown() async throws {
        try await withEtcdCluster(members: 1) { cluster async throws in
            let configuration = EtcdClientConfiguration(endpoints: cluster.clientURLs, callTimeoutMs: 10_000)
            try await EtcdClient.with(configuration) { client async throws in
                _ = try await client.put(bytes("mid"), [1])  // the connection is up
                // Stopped, the member takes the request into its socket and answers nothing: the write is
                // under way when kill -9 resets the connection.
                cluster.pause(member: 0)
                let write = Task { () async -> EtcdError? in
                    do {
                        _ = try await client.put(bytes("mid"), [2])
                        return nil
                    } catch let error as EtcdError {
                        return error
                    } catch {
                        return nil
                    }
                }
                try await Task.sleep(for: .milliseconds(300))
                let start = ContinuousClock.now
                cluster.kill(member: 0)
                let error = await write.value
                guard case .connectionLost(.put, outcomeUnknown: true, _)? = error else {
                    Issue.record("expected connectionLost(put, outcomeUnknown: true), got \(String(describing: error))")
                    return
                }
                #expect(error?.outcomeUnknown == true)
                #expect(ContinuousClock.now - start < .seconds(3), "the broken connection was noticed late")
                // A read on the dead member is refused now: known, nothing to settle.
                do {
                    _ = try await client.get(bytes("mid"))
                    Issue.record("get from a killed member succeeded")
                } catch let error as EtcdError {
                    guard case .unreachable = error else { Issue.record("expected unreachable, got \(error)"); return }
                }
            }
        }
    }

    @Test func leaseKeepAliveHoldsTheLeaseAndRevokedLeasesAreNotFound() async throws {
        try await withEtcdCluster(members: 1) { cluster async throws in
            try await EtcdClient.with(EtcdClientConfiguration(endpoints: cluster.clientURLs)) { client async throws in
                let lease = try await client.grantLease(ttlSeconds: 2)
                _ = try await client.put(bytes("held"), [1], lease: lease.id)
                // Renewed every 500 ms for 4 s, twice its TTL: the key stays.
                let start = ContinuousClock.now
                while ContinuousClock.now - start < .seconds(4) {
                    let ttl = try await client.keepAlive(lease: lease.id)
                    #expect(ttl >= 1 && ttl <= lease.ttlSeconds)
                    try await Task.sleep(for: .milliseconds(500))
                }
                #expect(try await client.get(bytes("held"))?.lease == lease.id)
                try await client.revokeLease(lease.id)
                #expect(try await client.get(bytes("held")) == nil)
                for attempt in 0..<2 {
                    do {
                        if attempt == 0 { _ = try await client.keepAlive(lease: lease.id) } else { try await client.revokeLease(lease.id) }
                        Issue.record("a revoked lease answered (attempt \(attempt))")
                    } catch let error as EtcdError {
                        guard case .leaseNotFound(let id) = error else { Issue.record("expected leaseNotFound, got \(error)"); continue }
                        #expect(id == lease.id)
                        #expect(!error.outcomeUnknown)
                    }
                }
            }
        }
    }

    @Test func shutdownEndsOpenWatchesWithoutAnError() async throws {
        try await withEtcdCluster(members: 1) { cluster async throws in
            let client = try EtcdClient(EtcdClientConfiguration(endpoints: cluster.clientURLs))
            let put = try await client.put(bytes("s"), [1])
            let watches = try await (0..<3).asyncMap { _ in try await client.watch(.key(bytes("s")), fromRevision: put.revision) }
            var iterators = watches.map { $0.makeAsyncIterator() }
            for index in iterators.indices { #expect(try await iterators[index].next()?.kv.value == [1]) }
            let start = ContinuousClock.now
            await client.shutdown()
            #expect(ContinuousClock.now - start < .milliseconds(Int(EtcdLimits.shutdownGraceMs)), "shutdown waited for its grace")
            for index in iterators.indices { #expect(try await iterators[index].next() == nil) }
            // After shutdown nothing is sent: each call says so, known not applied.
            for operation in [EtcdOperation.watch, .put, .range] {
                do {
                    switch operation {
                    case .watch: _ = try await client.watch(.key(bytes("s")), fromRevision: 0)
                    case .put: _ = try await client.put(bytes("s"), [2])
                    default: _ = try await client.get(bytes("s"))
                    }
                    Issue.record("\(operation) after shutdown succeeded")
                } catch let error as EtcdError {
                    guard case .shutDown(let failed) = error, failed == operation else {
                        Issue.record("expected shutDown(\(operation)), got \(error)")
                        continue
                    }
                    #expect(!error.outcomeUnknown)
                }
            }
        }
    }

    /// A consumer that stops iterating (its iterator goes away) ends the watch's stream, though the
    /// `EtcdWatch` value is still held.
    @Test func droppingTheIteratorCancelsTheWatch() async throws {
        try await withEtcdCluster(members: 1) { cluster async throws in
            try await EtcdClient.with(EtcdClientConfiguration(endpoints: cluster.clientURLs)) { client async throws in
                let put = try await client.put(bytes("d"), [1])
                let watch = try await client.watch(.key(bytes("d")), fromRevision: put.revision)
                do {
                    var iterator = watch.makeAsyncIterator()
                    #expect(try await iterator.next()?.kv.value == [1])
                }
                let start = ContinuousClock.now
                while !watch.readerFinished && ContinuousClock.now - start < .seconds(5) {
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(watch.readerFinished, "the reader still runs after its iterator was dropped")
            }
        }
    }

    /// The watch asks etcd to require a leader (`hasleader`): a member whose peers are gone (stopped)
    /// ends the watch with an error once it has no leader, rather than staying silent while the rest
    /// of the cluster may move on.
    @Test func watchOnAMemberThatLostItsLeaderEnds() async throws {
        try await withEtcdCluster(members: 3) { cluster async throws in
            let configuration = EtcdClientConfiguration(endpoints: [cluster.clientURLs[0]], callTimeoutMs: 5_000)
            try await EtcdClient.with(configuration) { client async throws in
                let put = try await client.put(bytes("w"), [1])
                let watch = try await client.watch(.key(bytes("w")), fromRevision: put.revision)
                var iterator = watch.makeAsyncIterator()
                #expect(try await iterator.next()?.kv.value == [1])
                cluster.pause(member: 1)
                cluster.pause(member: 2)
                defer {
                    cluster.resume(member: 1)
                    cluster.resume(member: 2)
                }
                let start = ContinuousClock.now
                let ended = Task { () async -> String in
                    var iterator = iterator
                    do {
                        while try await iterator.next() != nil {}
                        return "ended without an error"
                    } catch {
                        return "\(error)"
                    }
                }
                // Election timeout 500 ms: the member notices within a few; bounded wait.
                let watchdog = Task {
                    try await Task.sleep(for: .seconds(20))
                    watch.cancel()
                }
                let outcome = await ended.value
                watchdog.cancel()
                #expect(ContinuousClock.now - start < .seconds(20), "the watch stayed open without a leader")
                #expect(outcome.contains("leader"), "the watch ended with: \(outcome)")
            }
        }
    }
}

/// What needs no etcd: endpoint URLs.
@Suite struct EtcdEndpointTests {
    @Test func endpointURLsAreHTTPHostPort() {
        for good in ["http://127.0.0.1:2379", "http://127.0.0.1:2379/", "http://localhost:1", "http://[::1]:2379"] {
            #expect(throws: Never.self, "\(good)") { _ = try EtcdEndpoint.target(good) }
        }
        for bad in ["127.0.0.1:2379", "https://127.0.0.1:2379", "http://127.0.0.1", "http://127.0.0.1:0",
                    "http://127.0.0.1:65536", "http://:2379", "http://a/b:1"] {
            #expect(throws: EtcdError.self, "\(bad)") { _ = try EtcdEndpoint.target(bad) }
        }
    }
}

extension Sequence {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
