// Path: Tests/SluiceGatewayTests/GatewayProtocolTests.swift — the block protocol codec: units, round trips
// of every request and reply, and malformed bodies refused with what and where.
import NIOCore
import Testing
@testable import SluiceGateway

@Suite struct GatewayProtocolTests {
    let units = GatewayUnits.standard

    @Test func standardUnits() {
        #expect(units.chunkBytes == 4 << 20)
        #expect(units.sectorsPerBlock == 16)
        #expect(units.blocksPerChunk == 64)
        #expect(units.sectorsPerChunk == 1024)
        #expect(units.chunkLength(0, objectSize: 5 << 20) == 4 << 20)
        #expect(units.chunkLength(1, objectSize: 5 << 20) == 1 << 20)
        #expect(units.chunkLength(2, objectSize: 5 << 20) == 0)
        #expect(units.chunkLength(UInt64.max, objectSize: UInt64.max) == 0)
        // The default reply bound carries a whole chunk with every extent header.
        #expect(IntermediateConfiguration(units: units).frameBytesMax >= units.frameBytesNeeded)
    }

    @Test func unitsOutOfBoundsAreTypedErrors() {
        #expect(throws: GatewaySettingError.self) { try GatewayUnits(chunkBytes: 4 << 20, blockBytes: 64 << 10, sectorBytes: 3000) }
        // 32 sectors per block do not fit the u16 held mask.
        #expect(throws: GatewaySettingError.invalid(setting: "blockBytes", value: 128 << 10,
                                                    rule: "a power of two, 1...16 sectors of 4096 bytes")) {
            try GatewayUnits(chunkBytes: 4 << 20, blockBytes: 128 << 10, sectorBytes: 4 << 10)
        }
        #expect(throws: GatewaySettingError.self) { try GatewayUnits(chunkBytes: 32 << 10, blockBytes: 64 << 10, sectorBytes: 4 << 10) }
        #expect(throws: GatewaySettingError.self) { try GatewayUnits(chunkBytes: 128 << 20, blockBytes: 64 << 10, sectorBytes: 4 << 10) }
        // 131072 blocks of 512 bytes do not fit the u16 block index.
        #expect(throws: GatewaySettingError.self) { try GatewayUnits(chunkBytes: 64 << 20, blockBytes: 512, sectorBytes: 512) }
        #expect(throws: Never.self) { try GatewayUnits(chunkBytes: 32 << 20, blockBytes: 512, sectorBytes: 512) }
    }

    static let requests: [GatewayRequest] = [
        .hello,
        .stat(key: "bucket/object-ä"),
        .invalidate(key: "k"),
        .readSectors(ReadSectorsRequest(key: "a/b", chunk: 7, extraBudgetBytes: 262_144,
                                        wanted: [SectorExtent(block: 0, firstSector: 3, sectorCount: 1),
                                                 SectorExtent(block: 2, firstSector: 15, sectorCount: 40)],
                                        held: [HeldBlock(block: 1, sectorMask: 0xFFFF), HeldBlock(block: 63, sectorMask: 1)])),
        // The last chunk an object can have (objects end below 2^63 bytes).
        .readSectors(ReadSectorsRequest(key: "x", chunk: UInt64(Int64.max) / (4 << 20) - 1, extraBudgetBytes: 0,
                                        wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1024)])),
    ]

    @Test(arguments: requests) func requestRoundTrip(request: GatewayRequest) throws {
        var buffer = ByteBuffer()
        request.encodeBody(into: &buffer)
        #expect(try GatewayRequest.decode(opcode: request.opcode, body: &buffer, units: units) == request)
    }

    static let replies: [(GatewayOpcode, GatewayReply)] = [
        (.hello, .hello(GatewayHello(units: .standard, frameBytesMax: 5 << 20))),
        (.stat, .stat(size: 64 << 20, etag: "\"abc-1\"")),
        (.invalidate, .invalidated),
        (.readSectors, .sectors(SectorsReply(size: 4096 + 100, etag: "e", chunk: 7, keyCRC: 0xDEAD_BEEF, extents: [
            ExtentPayload(reason: .requested, extent: SectorExtent(block: 0, firstSector: 0, sectorCount: 1),
                          crcs: sectorCRCs(objectBytes(4096, seed: 1), sectorBytes: 4096), bytes: objectBytes(4096, seed: 1)),
            // The object's last sector is short.
            ExtentPayload(reason: .sequential, extent: SectorExtent(block: 0, firstSector: 1, sectorCount: 1),
                          crcs: sectorCRCs(objectBytes(100, seed: 2), sectorBytes: 4096), bytes: objectBytes(100, seed: 2)),
        ]))),
        (.readSectors, .failure(.remoteUnavailable, message: "remote store unavailable: down")),
        (.stat, .failure(.notFound, message: "")),
    ]

    @Test(arguments: 0..<replies.count) func replyRoundTrip(index: Int) throws {
        let (opcode, reply) = Self.replies[index]
        var buffer = ByteBuffer()
        reply.encodeBody(into: &buffer)
        #expect(try GatewayReply.decode(opcode: opcode, status: reply.status, body: &buffer, units: units) == reply)
    }

    @Test func messagesAreCutAtACharacterBoundary() throws {
        let message = String(repeating: "a", count: 511) + "ä" + "tail"  // "ä" is 2 bytes, at 511...512
        var buffer = ByteBuffer()
        GatewayReply.failure(.internal, message: message).encodeBody(into: &buffer)
        let decoded = try GatewayReply.decode(opcode: .stat, status: .internal, body: &buffer, units: nil)
        #expect(decoded == .failure(.internal, message: String(repeating: "a", count: 511)))
    }

    /// A readSectors body built field by field, so each test breaks one field.
    struct Body {
        var keyLength: UInt16?
        var key: [UInt8] = Array("key".utf8)
        var chunk: UInt64? = 0
        var budget: UInt32? = 0
        var wantedCount: UInt16?
        var wanted: [(UInt16, UInt16, UInt16)] = [(0, 0, 1)]
        var heldCount: UInt16?
        var held: [(UInt16, UInt16)] = []
        var trailing: [UInt8] = []

        var buffer: ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(keyLength ?? UInt16(key.count))
            buffer.writeBytes(key)
            guard let chunk else { return buffer }
            buffer.writeInteger(chunk)
            guard let budget else { return buffer }
            buffer.writeInteger(budget)
            buffer.writeInteger(wantedCount ?? UInt16(wanted.count))
            for (block, first, count) in wanted {
                buffer.writeInteger(block)
                buffer.writeInteger(first)
                buffer.writeInteger(count)
            }
            buffer.writeInteger(heldCount ?? UInt16(held.count))
            for (block, mask) in held {
                buffer.writeInteger(block)
                buffer.writeInteger(mask)
            }
            buffer.writeBytes(trailing)
            return buffer
        }
    }

    static let malformed: [(String, Body, GatewayDecodeError)] = [
        ("empty key", Body(key: []), .emptyKey),
        ("key too long", Body(key: [UInt8](repeating: 0x61, count: 1025)), .keyTooLong(bytes: 1025, max: 1024)),
        ("key cut short", Body(keyLength: 10, key: [0x61], chunk: nil), .cutShort(field: "key", length: 10, bytesLeft: 1)),
        ("key not UTF-8", Body(key: [0xFF, 0xFE]), .notUTF8(field: "key")),
        ("key with ..", Body(key: Array("a/../b".utf8)), .invalidKey(key: "a/../b", reason: "has an empty, . or .. path component")),
        ("key with .", Body(key: Array("./b".utf8)), .invalidKey(key: "./b", reason: "has an empty, . or .. path component")),
        ("key with //", Body(key: Array("a//b".utf8)), .invalidKey(key: "a//b", reason: "has an empty, . or .. path component")),
        ("key with leading /", Body(key: Array("/etc".utf8)), .invalidKey(key: "/etc", reason: "has an empty, . or .. path component")),
        ("key with NUL", Body(key: [0x61, 0, 0x62]), .invalidKey(key: "a\0b", reason: "contains NUL")),
        ("chunk missing", Body(chunk: nil), .missing(field: "chunk")),
        ("chunk past any object", Body(chunk: UInt64.max), .chunkOutOfRange(chunk: UInt64.max, chunksMax: UInt64(Int64.max) / (4 << 20))),
        ("chunk offset at 2^63", Body(chunk: UInt64(Int64.max) / (4 << 20)),
         .chunkOutOfRange(chunk: UInt64(Int64.max) / (4 << 20), chunksMax: UInt64(Int64.max) / (4 << 20))),
        ("budget missing", Body(budget: nil), .missing(field: "extraBudgetBytes")),
        ("no wanted extent", Body(wanted: []), .emptyList(field: "wanted")),
        ("too many wanted", Body(wantedCount: 1025), .tooMany(field: "wanted extents", count: 1025, max: 1024)),
        ("wanted count past the body", Body(wantedCount: 3), .missing(field: "wanted[1]")),
        ("empty extent", Body(wanted: [(0, 0, 0)]),
         .extentOutOfChunk(field: "wanted", index: 0, extent: SectorExtent(block: 0, firstSector: 0, sectorCount: 0), sectorsPerChunk: 1024)),
        ("first sector past its block", Body(wanted: [(0, 0, 1), (1, 16, 1)]),
         .extentOutOfChunk(field: "wanted", index: 1, extent: SectorExtent(block: 1, firstSector: 16, sectorCount: 1), sectorsPerChunk: 1024)),
        ("extent past the chunk", Body(wanted: [(63, 15, 2)]),
         .extentOutOfChunk(field: "wanted", index: 0, extent: SectorExtent(block: 63, firstSector: 15, sectorCount: 2), sectorsPerChunk: 1024)),
        ("block past the chunk", Body(wanted: [(64, 0, 1)]),
         .extentOutOfChunk(field: "wanted", index: 0, extent: SectorExtent(block: 64, firstSector: 0, sectorCount: 1), sectorsPerChunk: 1024)),
        ("overlapping extents", Body(wanted: [(0, 0, 17), (1, 0, 1)]),
         .extentsOverlap(index: 1, extent: SectorExtent(block: 1, firstSector: 0, sectorCount: 1))),
        ("descending extents", Body(wanted: [(2, 0, 1), (1, 0, 1)]),
         .extentsOverlap(index: 1, extent: SectorExtent(block: 1, firstSector: 0, sectorCount: 1))),
        ("held block past the chunk", Body(held: [(3, 1), (64, 1)]), .heldBlockOutOfChunk(index: 1, block: 64, blocksPerChunk: 64)),
        ("too many held", Body(heldCount: 4097), .tooMany(field: "held entries", count: 4097, max: 4096)),
        ("held count past the body", Body(heldCount: 2, held: [(0, 1)]), .missing(field: "held[1]")),
        ("trailing bytes", Body(trailing: [0, 0, 0]), .trailingBytes(3)),
    ]

    @Test(arguments: 0..<malformed.count) func malformedReadSectorsNamesTheField(index: Int) {
        let (name, body, expected) = Self.malformed[index]
        var buffer = body.buffer
        #expect(throws: expected, "\(name)") { try GatewayRequest.decode(opcode: .readSectors, body: &buffer, units: units) }
    }

    /// Keys a store would read as another path are refused when decoded, by every opcode that takes a
    /// key, in both protocols; plain keys with dots inside a segment pass.
    @Test func keysWithPathSegmentsAreRefusedAtDecode() throws {
        for key in ["..", "a/..", "a/./b", "a//b", "/a", "a/"] {
            var body = ByteBuffer()
            body.writeInteger(UInt16(key.utf8.count))
            body.writeString(key)
            let expected = GatewayDecodeError.invalidKey(key: key, reason: "has an empty, . or .. path component")
            for opcode in [GatewayOpcode.stat, .invalidate] {
                var copy = body
                #expect(throws: expected) { try GatewayRequest.decode(opcode: opcode, body: &copy, units: units) }
            }
            for opcode in [ApplianceOpcode.stat, .beginWrite] {
                var copy = body
                #expect(throws: expected) { try ApplianceRequest.decode(opcode: opcode, body: &copy) }
            }
        }
        for key in ["a.b/..c/d..", "...", "x"] {
            var body = ByteBuffer()
            body.writeInteger(UInt16(key.utf8.count))
            body.writeString(key)
            #expect(try GatewayRequest.decode(opcode: .stat, body: &body, units: units) == .stat(key: key))
        }
    }

    @Test func malformedRepliesNameTheExtent() {
        func sectorsBody(reason: UInt8 = 0, sectorCount: UInt16 = 1, byteCount: UInt32 = 4096, bytes: Int = 4096, extra: [UInt8] = []) -> ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt64(1 << 20))
            buffer.writeInteger(UInt16(1))
            buffer.writeString("e")
            buffer.writeInteger(UInt64(0))  // chunk
            buffer.writeInteger(UInt32(0))  // key CRC
            buffer.writeInteger(UInt16(1))
            buffer.writeInteger(reason)
            buffer.writeInteger(UInt16(0))
            buffer.writeInteger(UInt16(0))
            buffer.writeInteger(sectorCount)
            buffer.writeInteger(byteCount)
            for _ in 0..<sectorCount { buffer.writeInteger(UInt32(0)) }
            buffer.writeBytes([UInt8](repeating: 0, count: bytes))
            buffer.writeBytes(extra)
            return buffer
        }
        var good = sectorsBody()
        #expect(throws: Never.self) { try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &good, units: units) }
        var badReason = sectorsBody(reason: 9)
        #expect(throws: GatewayDecodeError.badReason(index: 0, value: 9)) {
            try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &badReason, units: units)
        }
        var tooFew = sectorsBody(sectorCount: 2, byteCount: 4096, bytes: 4096)
        #expect(throws: GatewayDecodeError.byteCountMismatch(index: 0, byteCount: 4096, sectorCount: 2, sectorBytes: 4096)) {
            try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &tooFew, units: units)
        }
        var cut = sectorsBody(bytes: 100)
        #expect(throws: GatewayDecodeError.cutShort(field: "extents[0] sectors", length: 4100, bytesLeft: 104)) {
            try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &cut, units: units)
        }
        var trailing = sectorsBody(extra: [1])
        #expect(throws: GatewayDecodeError.trailingBytes(1)) {
            try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &trailing, units: units)
        }
        var noUnits = sectorsBody()
        #expect(throws: GatewayDecodeError.self) { try GatewayReply.decode(opcode: .readSectors, status: .ok, body: &noUnits, units: nil) }
        var badHello = ByteBuffer()
        for value: UInt32 in [4 << 20, 64 << 10, 1000, 1 << 20] { badHello.writeInteger(value) }
        #expect(throws: GatewayDecodeError.self) { try GatewayReply.decode(opcode: .hello, status: .ok, body: &badHello, units: nil) }
    }

    @Test func extentsCanonicalForm() {
        let extent = SectorExtent(sectors: 35..<70, units: units)
        #expect(extent == SectorExtent(block: 2, firstSector: 3, sectorCount: 35))
        #expect(extent.sectors(units) == 35..<70)
    }

    @Test func clientRejectsCorruptSectorNamingIt() throws {
        let bytes = objectBytes(3 * 4096, seed: 9)
        let request = ReadSectorsRequest(key: "obj", chunk: 2, extraBudgetBytes: 0,
                                         wanted: [SectorExtent(block: 1, firstSector: 14, sectorCount: 3)])
        var reply = SectorsReply(size: 64 << 20, etag: "e", chunk: 2, keyCRC: gatewayKeyCRC("obj"), extents: [
            ExtentPayload(reason: .requested, extent: request.wanted[0], crcs: sectorCRCs(bytes, sectorBytes: 4096), bytes: bytes),
        ])
        try GatewayClient.verify(reply, for: request, units: units)
        // A reply to a request corrupted on its way (another chunk, another key): valid sectors, wrong place.
        for (chunk, key) in [(UInt64(3), "obj"), (2, "obk")] {
            var other = reply
            other.chunk = chunk
            other.keyCRC = gatewayKeyCRC(key)
            #expect(throws: GatewayClientError.corruptSector(key: "obj", chunk: 2, block: 1, sector: 14)) {
                try GatewayClient.verify(other, for: request, units: units)
            }
        }
        reply.extents[0].bytes[4096 + 7] ^= 1  // second sector: block 1 sector 15
        #expect(throws: GatewayClientError.corruptSector(key: "obj", chunk: 2, block: 1, sector: 15)) {
            try GatewayClient.verify(reply, for: request, units: units)
        }
        reply.extents[0].bytes[4096 + 7] ^= 1
        reply.extents[0].bytes[2 * 4096] ^= 0x80  // third sector: block 2 sector 0
        #expect(throws: GatewayClientError.corruptSector(key: "obj", chunk: 2, block: 2, sector: 0)) {
            try GatewayClient.verify(reply, for: request, units: units)
        }
    }

    @Test func clientRejectsPredictionsOfHeldSectors() {
        let request = ReadSectorsRequest(key: "obj", chunk: 0, extraBudgetBytes: 1 << 20,
                                         wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1)],
                                         held: [HeldBlock(block: 0, sectorMask: 0b10)])
        let one = objectBytes(4096, seed: 3)
        let reply = SectorsReply(size: 64 << 20, etag: "e", chunk: 0, keyCRC: gatewayKeyCRC("obj"), extents: [
            ExtentPayload(reason: .requested, extent: request.wanted[0], crcs: sectorCRCs(one, sectorBytes: 4096), bytes: one),
            ExtentPayload(reason: .sequential, extent: SectorExtent(block: 0, firstSector: 1, sectorCount: 1),
                          crcs: sectorCRCs(one, sectorBytes: 4096), bytes: one),
        ])
        #expect(throws: GatewayClientError.self) { try GatewayClient.verify(reply, for: request, units: units) }
    }
}

extension GatewayRequest: CustomTestStringConvertible {
    public var testDescription: String { "\(opcode)" }
}
