// Grants retried at another agent (one request ID, one slot) and agent connections that go idle or never
// read their answers (closed after the idle timeout; the agent keeps serving everyone else).
import Foundation
import Glibc
import SluiceEtcd
import SluiceEtcdTestSupport
import SluiceOverlay
import Testing

@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: etcdTestsEnabled, "etcd not installed (/usr/bin/etcd); `make deps` installs it"))
struct OverlayLeasingRetryTests {
    let cluster: EtcdCluster
    init() throws { cluster = try sharedEtcdCluster(members: 1) }

    @Test func aGrantRetriedAtAnotherAgentHoldsOneSlot() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs, timeoutMs: 10_000)
        defer { Task { await etcd.shutdown() } }
        _ = try await OverlayRegistration.start(etcd, keys: keys, endpoints: [producer("web", "p1", capacity: 4)], ttlSeconds: 10)
        let etcdA = try client(cluster.clientURLs, timeoutMs: 10_000)
        let etcdB = try client(cluster.clientURLs, timeoutMs: 10_000)
        defer { Task { await etcdA.shutdown(); await etcdB.shutdown() } }
        let agents = [
            try OverlayLeasingAgent(client: etcdA, configuration: .init(name: "a", keys: keys, ttlSeconds: 10)),
            try OverlayLeasingAgent(client: etcdB, configuration: .init(name: "b", keys: keys, ttlSeconds: 10)),
        ]
        // The first agent grants (its client timed out, say); the retry at the second finds that grant.
        let first = try await agents[0].grant(service: "web", consumerHost: "ch1", consumerVM: "c1", requestID: "r1")
        let retried = try await agents[1].grant(service: "web", consumerHost: "ch1", consumerVM: "c1", requestID: "r1")
        #expect(retried == first)
        #expect(agents[1].counters.grantsRepeated.load(ordering: .relaxed) == 1)
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "web") == ["p1": 1])
        // Both agents working on one request at once, 8 times over: one grant each time.
        for round in 0..<8 {
            let outcomes = await withTaskGroup(of: OverlayGrant?.self) { group in
                for index in 0..<2 {
                    group.addTask {
                        try? await agents[index].grant(service: "web", consumerHost: "ch2", consumerVM: "c\(round)",
                                                       requestID: "race\(round)")
                    }
                }
                var all: [OverlayGrant?] = []
                for await outcome in group { all.append(outcome) }
                return all
            }
            #expect(outcomes.count == 2 && outcomes[0] != nil && outcomes[0] == outcomes[1], "round \(round): \(outcomes)")
            // One record for ch2: this round's (the last round's was revoked).
            let records = try await etcd.range(.prefix(keys.leases(consumerHost: "ch2")))
            #expect(records.kvs.count == 1)
            // Free the slot again (capacity 4).
            if let grant = outcomes[0] { try await agents[0].revoke(consumerHost: "ch2", leaseID: grant.record.leaseID) }
        }
        // Another request ID is another grant.
        let other = try await agents[1].grant(service: "web", consumerHost: "ch1", consumerVM: "c1", requestID: "r2")
        #expect(other.record.leaseID != first.record.leaseID)
        #expect(try await OverlayRegistry.slotsInUse(etcd, keys: keys, service: "web") == ["p1": 2])
        // A bad request ID is refused like a bad name.
        await #expect(throws: OverlayLeasingError.self) {
            _ = try await agents[0].grant(service: "web", consumerHost: "ch1", consumerVM: "c1", requestID: "a/b")
        }
    }

    @Test func idleAndNeverReadingConnectionsAreClosedWhileOthersAreServed() async throws {
        let keys = try testKeys()
        let etcd = try client(cluster.clientURLs, timeoutMs: 10_000)
        defer { Task { await etcd.shutdown() } }
        let agent = try OverlayLeasingAgent(client: etcd, configuration: .init(name: "a1", keys: keys, ttlSeconds: 10))
        let server = try await OverlayAgentServer.bind(agent: agent, host: "127.0.0.1", port: 0, idleTimeoutMs: 1_000)
        let serving = Task { await server.run() }
        defer { serving.cancel() }
        // One connection that sends requests without end and never reads an answer, one that only idles.
        let greedy = try rawConnect(port: server.port)
        defer { close(greedy) }
        // A fixed send buffer on our side (no autotuning): what the agent took is then what the agent bounds.
        var sendBufferBytes: Int32 = 16_384
        #expect(setsockopt(greedy, SOL_SOCKET, SO_SNDBUF, &sendBufferBytes, socklen_t(MemoryLayout<Int32>.size)) == 0)
        let quiet = try rawConnect(port: server.port)
        defer { close(quiet) }
        let request = Array("{\"v\":1,\"op\":\"stats\"}\n".utf8)
        var sent = 0
        var blocked = false
        for _ in 0..<200_000 where !blocked {  // at most ~4 MB; stops when the agent stops taking them
            let written = request.withUnsafeBytes { send(greedy, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if written < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    usleep(20_000)
                    let again = request.withUnsafeBytes { send(greedy, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                    if again < 0 { blocked = true } else { sent += 1 }
                } else {
                    blocked = true
                }
            } else {
                sent += 1
            }
        }
        #expect(blocked, "the agent took \(sent) requests without its answers being read")
        // Bounded (22-byte requests): answers (~400 B each) fill at most NIO's 64 KiB, the agent socket's send
        // buffer (64 KiB, doubled by the kernel) and ours; requests wait in NIO's 4 x 16 KiB inbound, the agent
        // socket's receive buffer (64 KiB, doubled) and our send buffer. Unbounded it took 23,000-35,000.
        #expect(sent < 12_000, "the agent took \(sent) requests")
        // Meanwhile everyone else is served.
        let others = try OverlayAgentClient(agents: ["127.0.0.1:\(server.port)"], callTimeoutMs: 2_000)
        let stats = try await others.call(.init(op: "stats"))
        #expect(stats.ok && stats.stats?.contains("grants 0") == true)
        #expect(server.openConnections >= 2)
        // Both are closed by the idle timeout (nothing read, nothing written for 1 s).
        let deadline = ContinuousClock.now + .seconds(5)
        while server.openConnections > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(server.openConnections == 0, "\(server.openConnections) connections still open")
        var byte: UInt8 = 0
        #expect(recv(quiet, &byte, 1, 0) == 0, "the idle connection was not closed")
        print("overlay agent: a client sent \(sent) requests without reading before the agent stopped taking them; "
              + "both idle connections closed")
    }
}

/// A blocking TCP socket connected to 127.0.0.1:`port`, with small socket buffers (4 KiB each way: a client
/// that does not read fills them soon).
func rawConnect(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    var size: Int32 = 4096
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        close(fd)
        throw POSIXError(.ECONNREFUSED)
    }
    return fd
}
