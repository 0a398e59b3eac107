// Path: Tests/SluiceGatewayTests/ApplianceCorruptionTests.swift — corruption on the wire: a proxy between
// the appliance and the intermediate flips the last payload byte of chosen `readSectors` replies.
import Foundation
import Glibc
import Synchronization
import Testing
@testable import SluiceGateway

/// A TCP proxy on 127.0.0.1 in front of `upstreamPort`. Replies pass frame by frame; the next `flips`
/// successful `readSectors` replies get their last byte (payload) inverted; the next `breaks` ones are
/// replaced by a length word above any bound (a corrupted frame header), after which that connection
/// forwards nothing more. Blocking I/O on threads of its own (not Dispatch's pool: Swift concurrency
/// runs on it, and blocked pumps there starved every test of the process); `close` shuts every socket.
final class FlippingProxy: Sendable {
    let port: Int
    let flips = Atomic<Int>(0)
    let breaks = Atomic<Int>(0)
    private let listenFD: Int32
    private let sockets = Mutex<[Int32]>([])

    init(upstreamPort: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        listenFD = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        precondition(bound == 0 && listen(fd, 16) == 0, "proxy bind/listen: errno \(errno)")
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        Self.spawn { [self] in
            while true {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { return }
                let upstream = Self.connectLoopback(upstreamPort)
                guard upstream >= 0 else { Glibc.close(client); continue }
                sockets.withLock { $0 += [client, upstream] }
                Self.spawn { Self.pump(from: client, to: upstream) }
                Self.spawn { self.pumpReplies(from: upstream, to: client) }
            }
        }
    }

    func close() {
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
        for fd in sockets.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Runs `body` on a new thread.
    static func spawn(_ body: @escaping @Sendable () -> Void) {
        Thread(block: body).start()
    }

    static func connectLoopback(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 { Glibc.close(fd); return -1 }
        return fd
    }

    static func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            guard count > 0, writeAll(to, Array(buffer[0..<count])) else { break }
        }
        shutdown(to, Int32(SHUT_WR))
    }

    func pumpReplies(from: Int32, to: Int32) {
        while let head = Self.readExactly(from, 4) {
            let length = Int(UInt32(head[0]) << 24 | UInt32(head[1]) << 16 | UInt32(head[2]) << 8 | UInt32(head[3]))
            guard var frame = Self.readExactly(from, length) else { break }
            // version, opcode, request id (8), status
            if frame.count > 11, frame[1] == GatewayOpcode.readSectors.rawValue, frame[10] == 0,
               flips.load(ordering: .relaxed) > 0 {
                flips.subtract(1, ordering: .relaxed)
                frame[frame.count - 1] ^= 0xFF
            }
            if frame.count > 11, frame[1] == GatewayOpcode.readSectors.rawValue, breaks.load(ordering: .relaxed) > 0 {
                breaks.subtract(1, ordering: .relaxed)
                _ = Self.writeAll(to, [0xFF, 0xFF, 0xFF, 0xF0])
                break
            }
            guard Self.writeAll(to, head + frame) else { break }
        }
        shutdown(to, Int32(SHUT_WR))
    }

    static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, count - done) }
            guard got > 0 else { return nil }
            done += got
        }
        return bytes
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let wrote = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            guard wrote > 0 else { return false }
            done += wrote
        }
        return true
    }
}

@Suite(.timeLimit(.minutes(2))) struct ApplianceCorruptionTests {
    @Test func corruptSectorOnTheWireIsRefusedAndAskedForAgain() async throws {
        let fixture = try ApplianceFixture(objectBytes: 2 << 20, statTTLNs: 60_000_000_000)
        let proxy = FlippingProxy(upstreamPort: fixture.port)
        defer { proxy.close() }
        var configuration = ApplianceConfiguration()
        configuration.statTTLNs = 60_000_000_000
        configuration.cacheBytes = 16 << 20
        let appliance = try await Appliance.start(intermediateHost: "127.0.0.1", port: proxy.port, configuration: configuration)

        // One corrupt reply: refused, asked again, the right bytes served.
        proxy.flips.store(1, ordering: .relaxed)
        let first = try await appliance.read(key: fixture.key, offset: 8192, length: 4096)
        #expect(first.bytes == fixture.expected(8192, 4096))
        var counters = appliance.counters.snapshot()
        #expect(counters.corruptSectorsRefused == 1 && counters.fetches == 1)

        // Corrupt in every try: a clear error, nothing returned, nothing cached.
        proxy.flips.store(1 + Appliance.corruptRetriesMax, ordering: .relaxed)
        do {
            _ = try await appliance.read(key: fixture.key, offset: 1 << 20, length: 4096)
            Issue.record("a read of a sector corrupt twice succeeded")
        } catch {
            guard case .corrupt(let key, let chunk, _, _) = error else { Issue.record("unexpected \(error)"); return }
            #expect(key == fixture.key && chunk == 0)
            print("corrupt twice: \(error)")
        }
        #expect(appliance.cache.missing(key: fixture.key, etag: first.etag, range: (1 << 20)..<((1 << 20) + 4096)) == [256..<257])
        counters = appliance.counters.snapshot()
        #expect(counters.corruptSectorsRefused == UInt64(2 + Appliance.corruptRetriesMax))

        // And then served once the wire is clean.
        let again = try await appliance.read(key: fixture.key, offset: 1 << 20, length: 4096)
        #expect(again.bytes == fixture.expected(1 << 20, 4096))
        await appliance.close()
    }

    /// A reply header corrupted on the wire (its length word above every bound): that read fails
    /// clearly (`intermediateUnavailable`, saying what broke), the connection is dropped, and the next
    /// read connects again and is served.
    @Test func brokenReplyStreamFailsTheReadAndTheNextOneReconnects() async throws {
        let fixture = try ApplianceFixture(objectBytes: 2 << 20, statTTLNs: 60_000_000_000)
        let proxy = FlippingProxy(upstreamPort: fixture.port)
        defer { proxy.close() }
        var configuration = ApplianceConfiguration()
        configuration.statTTLNs = 60_000_000_000
        configuration.client.callTimeoutNs = 5_000_000_000
        let appliance = try await Appliance.start(intermediateHost: "127.0.0.1", port: proxy.port, configuration: configuration)
        _ = try await appliance.read(key: fixture.key, offset: 0, length: 4096)
        proxy.breaks.store(1, ordering: .relaxed)
        do {
            _ = try await appliance.read(key: fixture.key, offset: 1 << 20, length: 4096)
            Issue.record("a read whose reply stream broke succeeded")
        } catch {
            guard case .intermediateUnavailable(let text) = error else { Issue.record("unexpected \(error)"); return }
            #expect(text.contains("protocol violation"), "\(text)")
            print("broken reply stream: \(error)")
        }
        let again = try await appliance.read(key: fixture.key, offset: 1 << 20, length: 4096)
        #expect(again.bytes == fixture.expected(1 << 20, 4096))
        let counters = appliance.counters.snapshot()
        #expect(counters.intermediateConnects == 2 && counters.intermediateErrors == 1, "\(counters)")
        await appliance.close()
    }
}
