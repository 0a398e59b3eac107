// Path: Tests/SluiceS3TestSupport/HTTPRelay.swift — a TCP relay on 127.0.0.1 in front of an HTTP
// server (rclone's S3) that counts the connections it relays and, when asked, deletes the `Range`
// header from every request, so the server answers 200 with the whole object: how a server that
// ignores ranges behaves, made from a real one. The rest of each request and every answer pass
// unchanged (HTTP/1.1 keep-alive, Content-Length bodies only).
import Foundation
import Glibc
import Synchronization

public final class HTTPRelay: @unchecked Sendable {  // unchecked: mutable state under `lock`
    /// Connections relayed at once; more are closed at accept.
    public static let connectionsMax = 64
    /// Largest request head read (a longer one closes the connection).
    public static let headBytesMax = 64 << 10

    public let port: Int
    public var endpoint: String { "http://127.0.0.1:\(port)" }
    private let upstreamPort: Int
    private let dropRangeHeaders: Bool
    private let listener: Int32
    private let lock = NSLock()
    private var sockets: Set<Int32> = []
    private var stopped = false
    private let dropped = Atomic<Int>(0)
    private let accepted = Atomic<Int>(0)
    private let threads = Atomic<Int>(0)

    /// Range headers deleted so far.
    public var rangeHeadersDropped: Int { dropped.load(ordering: .relaxed) }
    /// Client connections relayed so far (refused ones not counted).
    public var connectionsAccepted: Int { accepted.load(ordering: .relaxed) }

    /// Listens on a free port of 127.0.0.1 and relays to 127.0.0.1:`upstreamPort` until `stop()`,
    /// deleting Range headers when `dropRangeHeaders`.
    public init(upstreamPort: Int, dropRangeHeaders: Bool) throws {
        self.upstreamPort = upstreamPort
        self.dropRangeHeaders = dropRangeHeaders
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RcloneServerError("proxy socket: errno \(errno)") }
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 64) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else {
            close(fd)
            throw RcloneServerError("proxy bind/listen: errno \(errno)")
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        spawn { [self] in acceptLoop() }
    }

    deinit { stop() }

    /// Closes the listener and every relayed connection, and waits (up to 2 s) for the relay threads.
    public func stop() {
        let open: Set<Int32> = lock.withLock {
            if stopped { return [] }
            stopped = true
            return sockets
        }
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
        let deadline = Date().addingTimeInterval(2)
        while threads.load(ordering: .acquiring) > 0 && Date() < deadline { usleep(1_000) }
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        threads.add(1, ordering: .relaxed)
        let thread = Thread { [self] in
            body()
            threads.subtract(1, ordering: .releasing)
        }
        thread.start()
    }

    private func acceptLoop() {
        defer { close(listener) }
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else {
                if errno == EINTR { continue }
                return
            }
            let upstream = connectLoopback(port: upstreamPort)
            let admitted = lock.withLock {
                guard !stopped, upstream >= 0, sockets.count + 2 <= 2 * Self.connectionsMax else { return false }
                sockets.insert(client)
                sockets.insert(upstream)
                return true
            }
            guard admitted else {
                close(client)
                if upstream >= 0 { close(upstream) }
                continue
            }
            accepted.add(1, ordering: .relaxed)
            // The upstream socket had 1 s timeouts for the health check: relays wait as long as needed.
            var none = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(upstream, SOL_SOCKET, SO_RCVTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(upstream, SOL_SOCKET, SO_SNDTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
            let finished = PumpCount()
            let closeBoth: @Sendable () -> Void = { [self] in
                shutdown(client, Int32(SHUT_RDWR))
                shutdown(upstream, Int32(SHUT_RDWR))
                // The second pump to end closes both sockets.
                if finished.ended.add(1, ordering: .acquiringAndReleasing).newValue == 2 {
                    lock.withLock {
                        sockets.remove(client)
                        sockets.remove(upstream)
                    }
                    close(client)
                    close(upstream)
                }
            }
            spawn { [self] in
                relayRequests(from: client, to: upstream)
                closeBoth()
            }
            spawn {
                relayBytes(from: upstream, to: client)
                closeBoth()
            }
        }
    }

    /// Request heads are rewritten without `Range` (when asked); each body (Content-Length bytes) is
    /// copied as is.
    private func relayRequests(from client: Int32, to upstream: Int32) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        func fill() -> Bool {
            let count = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress!, $0.count, 0) }
            guard count > 0 else { return false }
            pending.append(contentsOf: chunk[..<count])
            return true
        }
        while true {
            var headEnd: Int?
            while headEnd == nil {
                headEnd = findHeadEnd(pending)
                if headEnd == nil {
                    guard pending.count <= Self.headBytesMax, fill() else { return }
                }
            }
            let head = String(decoding: pending[..<headEnd!], as: UTF8.self)
            pending.removeFirst(headEnd! + 4)
            var lines = head.components(separatedBy: "\r\n")
            let before = lines.count
            if dropRangeHeaders { lines.removeAll { $0.lowercased().hasPrefix("range:") } }
            dropped.add(before - lines.count, ordering: .relaxed)
            let lower = lines.map { $0.lowercased() }
            guard !lower.contains(where: { $0.hasPrefix("transfer-encoding:") }) else { return }
            let length = lower.first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            guard sendAll(upstream, Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8)) else { return }
            var remaining = length
            while remaining > 0 {
                if pending.isEmpty { guard fill() else { return } }
                let take = min(remaining, pending.count)
                guard sendAll(upstream, Array(pending[..<take])) else { return }
                pending.removeFirst(take)
                remaining -= take
            }
        }
    }
}

/// How many of a connection's two pumps have ended.
private final class PumpCount: Sendable {
    let ended = Atomic<Int>(0)
}

private func findHeadEnd(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= 4 else { return nil }
    for index in 0...(bytes.count - 4)
    where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
        return index
    }
    return nil
}

private func relayBytes(from source: Int32, to target: Int32) {
    var chunk = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let count = chunk.withUnsafeMutableBytes { recv(source, $0.baseAddress!, $0.count, 0) }
        guard count > 0, sendAll(target, Array(chunk[..<count])) else { return }
    }
}

private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
        if sent < 0 && errno == EINTR { continue }
        guard sent > 0 else { return false }
        offset += sent
    }
    return true
}
