// Path: Tests/SluiceGatewayTests/UploadProtocolTests.swift — the upload opcodes of the last-hop protocol:
// codec round trips and malformed bodies, and the intermediate's upload rules over TCP (order, re-sends,
// CRCs on arrival, bounds, unknown uploads, the frame bound of the data opcode only).
import Glibc
import NIOCore
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(1))) struct UploadProtocolTests {
    let units = GatewayUnits.standard

    func roundTrip(_ request: GatewayRequest) throws -> GatewayRequest {
        var buffer = ByteBuffer()
        request.encodeBody(into: &buffer)
        return try GatewayRequest.decode(opcode: request.opcode, body: &buffer, units: units)
    }

    @Test func codecRoundTripsAndRefusals() throws {
        let bytes = objectBytes(10_000, seed: 1)
        let piece = UploadDataRequest(uploadID: 7, offset: 8192, crcs: sectorCRCs(bytes, sectorBytes: 4096), bytes: bytes)
        for request in [GatewayRequest.uploadBegin(key: "dir/k", size: 1 << 40), .uploadData(piece), .uploadComplete(uploadID: 9), .uploadAbort(uploadID: 9)] {
            #expect(try roundTrip(request) == request)
        }
        for reply in [GatewayReply.uploadBegun(uploadID: 3), .uploadReceived(bytes: 12), .uploadCompleted(size: 5, etag: "e"), .uploadAborted,
                      .failure(.corrupt, message: "again"), .failure(.noSuchUpload, message: "gone")] {
            var buffer = ByteBuffer()
            reply.encodeBody(into: &buffer)
            let opcode: GatewayOpcode = switch reply {
            case .uploadBegun: .uploadBegin
            case .uploadReceived: .uploadData
            case .uploadCompleted: .uploadComplete
            default: .uploadAbort
            }
            #expect(try GatewayReply.decode(opcode: opcode, status: reply.status, body: &buffer, units: units) == reply)
        }
        // One CRC too few; an offset off a sector boundary; an empty piece.
        var short = piece
        short.crcs.removeLast()
        #expect(throws: GatewayDecodeError.self) { try roundTrip(.uploadData(short)) }
        var unaligned = piece
        unaligned.offset = 100
        #expect(throws: GatewayDecodeError.self) { try roundTrip(.uploadData(unaligned)) }
        #expect(throws: GatewayDecodeError.self) { try roundTrip(.uploadData(UploadDataRequest(uploadID: 1, offset: 0, crcs: [], bytes: []))) }
    }

    @Test func intermediateUploadRules() async throws {
        let store = TemporaryDirectory("sluice-upp-store")
        let cacheDirectory = TemporaryDirectory("sluice-upp-cache")
        let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: 16 << 20))
        var configuration = IntermediateConfiguration(units: units)
        configuration.upload.uploadsMax = 2
        configuration.upload.bufferedBytesMax = 1 << 20
        configuration.upload.partBytes = 1 << 20
        let server = try IntermediateServer.bind(host: "127.0.0.1", port: 0, store: DirectoryObjectStore(root: store.path), cache: cache,
                                                 configuration: configuration)
        defer { server.close() }
        let client = try await GatewayClient.connect(host: "127.0.0.1", port: server.port)
        func piece(_ id: UInt64, _ offset: Int, _ bytes: [UInt8]) -> UploadDataRequest {
            UploadDataRequest(uploadID: id, offset: UInt64(offset), crcs: sectorCRCs(bytes, sectorBytes: 4096), bytes: bytes)
        }
        let object = objectBytes(300_000, seed: 2)
        let id = try await client.uploadBegin(key: "obj", size: UInt64(object.count))
        #expect(try await client.uploadData(piece(id, 0, Array(object[0..<131_072]))) == 131_072)
        // A piece already held is acknowledged again; one past what is held is refused.
        #expect(try await client.uploadData(piece(id, 0, Array(object[0..<131_072]))) == 131_072)
        await #expect(throws: GatewayClientError.self) { try await client.uploadData(piece(id, 262_144, Array(object[262_144...]))) }
        // A flipped byte after the CRCs: refused corrupt, nothing kept; the good piece then goes in.
        var bad = piece(id, 131_072, Array(object[131_072...]))
        bad.bytes[5] ^= 1
        do throws(GatewayClientError) {
            _ = try await client.uploadData(bad)
            Issue.record("a corrupt piece was taken")
        } catch {
            guard case .status(.corrupt, _) = error else { Issue.record("expected corrupt, got \(error)"); return }
        }
        await #expect(throws: GatewayClientError.self) { try await client.uploadComplete(uploadID: id) }  // not all bytes yet
        #expect(try await client.uploadData(piece(id, 131_072, Array(object[131_072...]))) == UInt64(object.count))
        let done = try await client.uploadComplete(uploadID: id)
        #expect(done.size == UInt64(object.count))
        #expect(try await client.stat(key: "obj") == (UInt64(object.count), done.etag))
        await #expect(throws: GatewayClientError.status(.noSuchUpload, message: "no upload \(id)")) { try await client.uploadComplete(uploadID: id) }

        // Bounds: two uploads open at most; 1 MiB buffered over all of them.
        let a = try await client.uploadBegin(key: "a", size: 4 << 20)
        let b = try await client.uploadBegin(key: "b", size: 4 << 20)
        await #expect(throws: GatewayClientError.self) { try await client.uploadBegin(key: "c", size: 1) }
        let big = objectBytes(1 << 20, seed: 3)
        // `a` holds 768 KiB (below its 1 MiB part: buffered); `b` may add 256 KiB, not 512.
        #expect(try await client.uploadData(piece(a, 0, Array(big[0..<(768 << 10)]))) == 768 << 10)
        do throws(GatewayClientError) {
            _ = try await client.uploadData(piece(b, 0, Array(big[0..<(512 << 10)])))
            Issue.record("the buffered bound was passed")
        } catch {
            guard case .status(.overloaded, _) = error else { Issue.record("expected overloaded, got \(error)"); return }
        }
        #expect(try await client.uploadData(piece(b, 0, Array(big[0..<(256 << 10)]))) == 256 << 10)
        try await client.uploadAbort(uploadID: a)
        try await client.uploadAbort(uploadID: b)
        // A key that leaves the store's root is refused before any byte.
        await #expect(throws: GatewayClientError.self) { try await client.uploadBegin(key: "../x", size: 1) }
        let counters = server.counters.snapshot()
        #expect(counters.uploadCorruptRefused == 1 && counters.uploadsCompleted == 1 && counters.uploadsOverloaded == 2)
        // Above the data opcode's own bound: refused, the connection closed (a 70 KiB stat: IntermediateServerTests).
        let oversized = try await client.sendRaw(opcode: GatewayOpcode.uploadData.rawValue,
                                                 body: [UInt8](repeating: 0, count: GatewayProtocol.uploadFrameBytesMax))
        #expect(oversized.status == GatewayStatus.frameTooLarge.rawValue)
        await client.close()
    }
}
