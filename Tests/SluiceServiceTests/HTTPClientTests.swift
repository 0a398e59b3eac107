// Path: Tests/SluiceServiceTests/HTTPClientTests.swift — SluiceService.HTTPClient (what `sluice stats`
// and these tests scrape with) against the metrics endpoint and against servers that misbehave:
// silent, refusing, oversized, cut short, not HTTP. Every failure is a typed error, in bounded time.
import Foundation
import Glibc
import SluiceService
import SluiceTestSupport
import SystemPackage
import Testing

/// A loopback TCP listener that accepts one connection, writes `reply` (if any) and closes it; or,
/// with `accepts: false`, never accepts (the kernel completes connects into its backlog).
final class RawServer {
    let fd: Int32
    let port: Int

    init(reply: [UInt8]?, accepts: Bool = true) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HTTPTestError("socket: errno \(errno)") }
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7F00_0001).bigEndian)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 4) == 0 else { throw HTTPTestError("bind/listen: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        guard accepts, let reply else { return }
        let listener = fd
        Thread.detachNewThread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            var request = [UInt8](repeating: 0, count: 4096)
            _ = read(connection, &request, request.count)  // the GET; its content does not matter here
            _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(connection)
        }
    }

    deinit { close(fd) }
}

struct HTTPTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

@Suite struct HTTPClientTests {
    @Test func statusAndBodyFromTheMetricsEndpoint() throws {
        let endpoint = try MetricsEndpoint.bind(ListenAddress(host: "127.0.0.1", port: 0),
                                                render: { "m 1\n" }, health: { "storage node: poisoned" })
        defer { endpoint.close() }
        #expect(try HTTPClient.get(host: "127.0.0.1", port: endpoint.port, path: "/metrics")
            == HTTPClientResponse(status: 200, body: "m 1\n"))
        #expect(try HTTPClient.get(host: "localhost", port: endpoint.port, path: "/healthz")
            == HTTPClientResponse(status: 503, body: "unhealthy: storage node: poisoned\n"))
        #expect(try HTTPClient.get(host: "127.0.0.1", port: endpoint.port, path: "/other").status == 404)
    }

    @Test func refusedConnectIsTypedWithItsErrno() throws {
        let port = try RawServer(reply: nil, accepts: false).port  // closed again: nothing listens there
        #expect(throws: HTTPClientError.connect(endpoint: "127.0.0.1:\(port)", errno: .connectionRefused)) {
            try HTTPClient.get(host: "127.0.0.1", port: port, path: "/metrics")
        }
    }

    @Test func silentServerTimesOutAtTheDeadline() throws {
        let server = try RawServer(reply: nil, accepts: false)
        let start = ContinuousClock.now
        #expect(throws: HTTPClientError.timeout(endpoint: "127.0.0.1:\(server.port)", deadlineMs: 300)) {
            try HTTPClient.get(host: "127.0.0.1", port: server.port, path: "/metrics", deadlineMs: 300)
        }
        #expect(ContinuousClock.now - start < .seconds(3))
    }

    @Test func responseOverTheBoundIsRefused() throws {
        let big = String(repeating: "m 1\n", count: 50_000)  // 200 kB
        let endpoint = try MetricsEndpoint.bind(ListenAddress(host: "127.0.0.1", port: 0), render: { big })
        defer { endpoint.close() }
        #expect(throws: HTTPClientError.responseTooLarge(endpoint: "127.0.0.1:\(endpoint.port)", responseBytesMax: 65_536)) {
            try HTTPClient.get(host: "127.0.0.1", port: endpoint.port, path: "/metrics", responseBytesMax: 65_536)
        }
        #expect(try HTTPClient.get(host: "127.0.0.1", port: endpoint.port, path: "/metrics").body.utf8.count == 200_000)
    }

    @Test func chunkedBodyIsJoined() throws {
        let server = try RawServer(reply: Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nm 1\r\n2\r\n\nn\r\n0\r\n\r\n".utf8))
        #expect(try HTTPClient.get(host: "127.0.0.1", port: server.port, path: "/metrics")
            == HTTPClientResponse(status: 200, body: "m 1\nn"))
    }

    @Test func responseCutShortIsTyped() throws {
        let server = try RawServer(reply: Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".utf8))
        let endpoint = "127.0.0.1:\(server.port)"
        do {
            _ = try HTTPClient.get(host: "127.0.0.1", port: server.port, path: "/metrics")
            Issue.record("a body 91 bytes short was taken")
        } catch {
            // The decoder reports the early end itself (invalidEOFState) or the close comes first.
            #expect(error == .closedEarly(endpoint: endpoint) || error == .malformed(endpoint: endpoint, .invalidEOFState), "\(error)")
        }
    }

    @Test func notHTTPIsMalformed() throws {
        let server = try RawServer(reply: Array("SSH-2.0-OpenSSH_9.6\r\n\r\n".utf8))
        do {
            _ = try HTTPClient.get(host: "127.0.0.1", port: server.port, path: "/metrics")
            Issue.record("an SSH banner was taken for a response")
        } catch {
            guard case .malformed(let endpoint, _) = error else {
                Issue.record("not .malformed: \(error)")
                return
            }
            #expect(endpoint == "127.0.0.1:\(server.port)")
        }
    }

    /// `sluice stats` scrapes through this client: 1 when nothing answers, 2 when the answer is not HTTP.
    @Test func statsCommandExitStatusFollowsTheTypedError() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let closedPort = try RawServer(reply: nil, accepts: false).port
        let refused = try runCommand([binary, "stats", "--port", "\(closedPort)"], timeoutMs: 30_000)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("cannot connect to 127.0.0.1:\(closedPort)"), "\(refused.stderr)")
        let server = try RawServer(reply: Array("SSH-2.0-OpenSSH_9.6\r\n\r\n".utf8))
        let garbage = try runCommand([binary, "stats", "--port", "\(server.port)"], timeoutMs: 30_000)
        #expect(garbage.status == 2, "\(garbage.stderr)")
    }
}
