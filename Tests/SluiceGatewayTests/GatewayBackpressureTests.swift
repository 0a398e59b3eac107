// Path: Tests/SluiceGatewayTests/GatewayBackpressureTests.swift — clients that send many large reads and
// read nothing: each server keeps a connection to `outstandingRequestsMax` requests and every connection
// together to its `RequestBudget`, keeps serving others, and answers everything in order once read.
import Glibc
import NIOCore
import NIOPosix
import Testing
@testable import SluiceGateway

/// A blocking TCP client on 127.0.0.1 with a small receive buffer: what a client that stops reading
/// looks like to a server.
final class RawSocket: @unchecked Sendable {  // unchecked: used by one thread at a time
    let fd: Int32

    init(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0, "socket: errno \(errno)")
        var size: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(connected == 0, "connect: errno \(errno)")
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, 0) }
            precondition(count > 0, "send: errno \(errno)")
            sent += count
        }
    }

    func receive(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, count - received, 0) }
            precondition(got > 0, "recv: \(got), errno \(errno)")
            received += got
        }
        return bytes
    }

    /// One reply frame: request id, status, body.
    func receiveReply() -> (requestID: UInt64, status: UInt8, body: ByteBuffer) {
        var length = ByteBuffer(bytes: receive(4))
        var frame = ByteBuffer(bytes: receive(Int(length.readInteger(as: UInt32.self)!)))
        frame.moveReaderIndex(forwardBy: 2)  // version, opcode
        let requestID = frame.readInteger(as: UInt64.self)!
        let status = frame.readInteger(as: UInt8.self)!
        return (requestID, status, frame)
    }
}

/// `count` frames of opcode `opcode`, request ids 0..<count, bodies from `body`.
func requestFrames(version: UInt8, opcode: UInt8, count: Int, body: (Int, inout ByteBuffer) -> Void) -> [UInt8] {
    var buffer = ByteBuffer()
    for index in 0..<count {
        encodeGatewayFrame(version: version, opcode: opcode, requestID: UInt64(index), into: &buffer) { body(index, &$0) }
    }
    return Array(buffer.readableBytesView)
}

/// Runs blocking socket work on a thread of its own: blocked on the cooperative pool it would starve
/// the servers' request tasks.
func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async throws -> T {
    let pool = NIOThreadPool(numberOfThreads: 1)
    pool.start()
    let result: Result<T, any Error>
    do { result = .success(try await pool.runIfActive(work)) } catch { result = .failure(error) }
    try await pool.shutdownGracefully()
    return try result.get()
}

/// Polls `condition` every 10 ms for up to 10 s.
func eventually(_ condition: () -> Bool) async throws -> Bool {
    for _ in 0..<1000 {
        if condition() { return true }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
    return condition()
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct GatewayBackpressureTests {
    static let requests = 400

    /// Whole-chunk reads (64 KiB each) of a 1 MiB object.
    static func chunkReads(_ fixture: ServerFixture, count: Int = requests) -> [UInt8] {
        requestFrames(version: GatewayProtocol.version, opcode: GatewayOpcode.readSectors.rawValue, count: count) { index, body in
            GatewayRequest.readSectors(ReadSectorsRequest(key: fixture.key, chunk: UInt64(index % 16), extraBudgetBytes: 0,
                               wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 16)])).encodeBody(into: &body)
        }
    }

    /// Reads `count` replies (off the cooperative pool); returns what was wrong with them.
    static func checkChunkReplies(_ socket: RawSocket, _ fixture: ServerFixture, count: Int = requests) async throws -> [String] {
        try await offPool {
            var wrong: [String] = []
            for index in 0..<count {
                var (requestID, status, body) = socket.receiveReply()
                if requestID != UInt64(index) || status != GatewayStatus.ok.rawValue { wrong.append("reply \(index): id \(requestID), status \(status)") }
                guard case .sectors(let sectors)? = try? GatewayReply.decode(opcode: .readSectors, status: .ok, body: &body, units: fixture.units) else {
                    wrong.append("reply \(index) is not sectors")
                    continue
                }
                if sectors.extents[0].bytes != fixture.expected(chunk: UInt64(index % 16), SectorExtent(block: 0, firstSector: 0, sectorCount: 16)) {
                    wrong.append("reply \(index): wrong bytes")
                }
            }
            return wrong
        }
    }

    /// A client that reads nothing: the connection stops at `outstandingRequestsMax`, others are served,
    /// then every reply arrives in order.
    @Test func intermediateStopsAtTheOutstandingBound() async throws {
        let fixture = try ServerFixture(units: smallUnits, objectBytes: 1 << 20, statTTLNs: 60_000_000_000)
        let budget = fixture.server.budget
        let socket = RawSocket(port: fixture.server.port)
        socket.send(Self.chunkReads(fixture))
        #expect(try await eventually { budget.outstandingHighWater == 64 })
        let other = try await fixture.client()
        #expect(try await other.stat(key: fixture.key).size == 1 << 20)
        let reply = try await other.readSectors(ReadSectorsRequest(key: fixture.key, chunk: 3, extraBudgetBytes: 0,
                                                                   wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 16)]))
        #expect(reply.extents[0].bytes == fixture.expected(chunk: 3, SectorExtent(block: 0, firstSector: 0, sectorCount: 16)))
        #expect(budget.outstandingHighWater == 64)
        #expect(try await Self.checkChunkReplies(socket, fixture) == [])
        #expect(budget.outstandingHighWater == 64)
        #expect(try await eventually { budget.bytesInFlight == 0 })
        await other.close()
    }

    /// Two clients that read nothing, under a 256 KiB budget: the bytes held by requests in progress
    /// never pass it (about three whole-chunk reads), a stat (no bytes) on a third connection is still
    /// answered, and once read every reply arrives in order.
    @Test func intermediateKeepsAllConnectionsWithinTheByteBudget() async throws {
        let fixture = try ServerFixture(units: smallUnits, objectBytes: 1 << 20, statTTLNs: 60_000_000_000, requestBytesInFlightMax: 256 << 10)
        let budget = fixture.server.budget
        let first = RawSocket(port: fixture.server.port)
        let second = RawSocket(port: fixture.server.port)
        first.send(Self.chunkReads(fixture, count: 100))
        second.send(Self.chunkReads(fixture, count: 100))
        #expect(try await eventually { budget.bytesInFlight > 128 << 10 })
        let other = try await fixture.client()
        #expect(try await other.stat(key: fixture.key).size == 1 << 20)
        #expect(budget.bytesInFlightHighWater <= 256 << 10)
        #expect(try await Self.checkChunkReplies(first, fixture, count: 100) == [])
        #expect(try await Self.checkChunkReplies(second, fixture, count: 100) == [])
        #expect(budget.bytesInFlightHighWater <= 256 << 10 && budget.bytesInFlightHighWater > 128 << 10)
        #expect(try await eventually { budget.bytesInFlight == 0 })
        await other.close()
    }

    /// 64 KiB reads of the appliance.
    static func applianceReads(_ fixture: ApplianceFixture, count: Int) -> [UInt8] {
        requestFrames(version: ApplianceProtocol.version, opcode: ApplianceOpcode.read.rawValue, count: count) { index, body in
            ApplianceRequest.read(key: fixture.key, offset: UInt64(index % 16) << 16, length: 1 << 16).encodeBody(into: &body)
        }
    }

    static func checkApplianceReplies(_ socket: RawSocket, _ fixture: ApplianceFixture, count: Int) async throws -> [String] {
        let expected = (0..<16).map { fixture.expected(UInt64($0) << 16, 1 << 16) }
        return try await offPool {
            var wrong: [String] = []
            for index in 0..<count {
                var (requestID, status, body) = socket.receiveReply()
                if requestID != UInt64(index) || status != ApplianceStatus.ok.rawValue { wrong.append("reply \(index): id \(requestID), status \(status)") }
                guard case .read(let result)? = try? ApplianceReply.decode(opcode: .read, status: .ok, body: &body) else {
                    wrong.append("reply \(index) is not a read")
                    continue
                }
                if result.bytes != expected[index % 16] { wrong.append("reply \(index): wrong bytes") }
            }
            return wrong
        }
    }

    @Test func applianceStopsAtTheOutstandingBound() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 1 << 20)
        let appliance = try await fixture.appliance()
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance)
        defer { server.close() }
        let socket = RawSocket(port: server.port)
        socket.send(Self.applianceReads(fixture, count: Self.requests))
        #expect(try await eventually { server.budget.outstandingHighWater == ApplianceServer.outstandingRequestsMax })
        let other = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port, share: "other")
        #expect(try await other.read(key: fixture.key, offset: 5, length: 1000).bytes == fixture.expected(5, 1000))
        #expect(try await Self.checkApplianceReplies(socket, fixture, count: Self.requests) == [])
        #expect(server.budget.outstandingHighWater == ApplianceServer.outstandingRequestsMax)
        await other.close()
        await appliance.close()
    }

    @Test func applianceKeepsAllConnectionsWithinTheByteBudget() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 1 << 20)
        let appliance = try await fixture.appliance()
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance, requestBytesInFlightMax: 256 << 10)
        defer { server.close() }
        let first = RawSocket(port: server.port)
        let second = RawSocket(port: server.port)
        first.send(Self.applianceReads(fixture, count: 100))
        second.send(Self.applianceReads(fixture, count: 100))
        #expect(try await eventually { server.budget.bytesInFlight > 128 << 10 })
        let other = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port, share: "other")
        #expect(try await other.stat(key: fixture.key).size == 1 << 20)
        #expect(try await Self.checkApplianceReplies(first, fixture, count: 100) == [])
        #expect(try await Self.checkApplianceReplies(second, fixture, count: 100) == [])
        #expect(server.budget.bytesInFlightHighWater <= 256 << 10 && server.budget.bytesInFlightHighWater > 128 << 10)
        #expect(try await eventually { server.budget.bytesInFlight == 0 })
        #expect(throws: ApplianceServerError.self) {
            try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance, requestBytesInFlightMax: 1000)
        }
        await other.close()
        await appliance.close()
    }
}
