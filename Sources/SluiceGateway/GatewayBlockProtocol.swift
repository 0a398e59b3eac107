// Path: Sources/SluiceGateway/GatewayBlockProtocol.swift — the gateway block protocol v1 (docs/GATEWAY.md,
// "Intermediate device and last-hop protocol"): units, bounds, requests and replies, and their codec.
import CShims
import NIOCore

/// The units of the gateway, fixed for a connection by `hello`. All powers of two:
/// a chunk (the intermediate's fetch and cache unit) holds `blocksPerChunk` blocks (the appliance's
/// cache unit), a block holds `sectorsPerBlock` sectors (the integrity and transfer unit, one CRC-32C each).
public struct GatewayUnits: Sendable, Equatable, CustomStringConvertible {
    public let chunkBytes: Int
    public let blockBytes: Int
    public let sectorBytes: Int

    public static let sectorBytesRange = 512...(1 << 20)
    /// A held block is a u16 sector mask on the wire: at most 16 sectors per block.
    public static let sectorsPerBlockMax = 16
    /// A reply carries a whole chunk at most, so the chunk bounds the frame.
    public static let chunkBytesMax = 64 << 20
    /// Block indices travel as u16.
    public static let blocksPerChunkMax = 1 << 16

    /// Checks every bound; throws naming the first value outside it.
    public init(chunkBytes: Int = 4 << 20, blockBytes: Int = 64 << 10, sectorBytes: Int = 4 << 10) throws(GatewaySettingError) {
        guard Self.sectorBytesRange.contains(sectorBytes), sectorBytes.nonzeroBitCount == 1 else {
            throw .invalid(setting: "sectorBytes", value: sectorBytes, rule: "a power of two in \(Self.sectorBytesRange)")
        }
        guard blockBytes >= sectorBytes, blockBytes.nonzeroBitCount == 1,
              blockBytes / sectorBytes <= Self.sectorsPerBlockMax else {
            throw .invalid(setting: "blockBytes", value: blockBytes,
                           rule: "a power of two, 1...\(Self.sectorsPerBlockMax) sectors of \(sectorBytes) bytes")
        }
        guard chunkBytes >= blockBytes, chunkBytes.nonzeroBitCount == 1, chunkBytes <= Self.chunkBytesMax,
              chunkBytes / blockBytes <= Self.blocksPerChunkMax else {
            throw .invalid(setting: "chunkBytes", value: chunkBytes,
                           rule: "a power of two, at least one block (\(blockBytes)), at most \(Self.chunkBytesMax) and \(Self.blocksPerChunkMax) blocks")
        }
        self.chunkBytes = chunkBytes
        self.blockBytes = blockBytes
        self.sectorBytes = sectorBytes
    }

    /// The defaults: 4 MiB chunks, 64 KiB blocks, 4 KiB sectors.
    public static let standard = try! GatewayUnits()

    public var sectorsPerBlock: Int { blockBytes / sectorBytes }
    public var blocksPerChunk: Int { chunkBytes / blockBytes }
    public var sectorsPerChunk: Int { chunkBytes / sectorBytes }

    /// Bytes of chunk `chunk` of an object of `size` bytes (the last chunk is short; 0 past the end).
    public func chunkLength(_ chunk: UInt64, objectSize size: UInt64) -> Int {
        let start = chunk.multipliedReportingOverflow(by: UInt64(chunkBytes))
        guard !start.overflow, start.partialValue < size else { return 0 }
        return Int(min(UInt64(chunkBytes), size - start.partialValue))
    }

    /// The smallest frame bound that carries any valid reply (a whole chunk in the most extents).
    public var frameBytesNeeded: Int {
        GatewayProtocol.replyHeaderBytes + 8 + 2 + GatewayProtocol.etagBytesMax + 8 + 4 + 2
            + GatewayProtocol.replyExtentsMax * GatewayProtocol.replyExtentHeaderBytes
            + sectorsPerChunk * 4 + chunkBytes
    }

    public var description: String { "chunk \(chunkBytes) B, block \(blockBytes) B, sector \(sectorBytes) B" }
}

/// A setting outside its bounds: which one, its value, and the rule it breaks.
public enum GatewaySettingError: Error, Equatable, CustomStringConvertible {
    case invalid(setting: String, value: Int, rule: String)

    public var description: String {
        switch self {
        case .invalid(let setting, let value, let rule): "\(setting) \(value) is not \(rule)"
        }
    }
}

/// Constants and bounds of protocol v1. A frame is `u32 length` (of everything after it), `u8 version`,
/// `u8 opcode`, `u64 request id`, body; a reply adds `u8 status` before its body. Big-endian.
public enum GatewayProtocol {
    public static let version: UInt8 = 1
    /// Version, opcode, request id.
    public static let requestHeaderBytes = 10
    /// Version, opcode, request id, status.
    public static let replyHeaderBytes = 11
    /// Object keys are 1...1024 bytes of UTF-8 (S3's bound).
    public static let keyBytesMax = 1024
    public static let etagBytesMax = 256
    /// Wanted extents in one `readSectors`.
    public static let wantedExtentsMax = 1024
    /// Held-bitmap entries in one `readSectors`.
    public static let heldEntriesMax = 4096
    /// Extents in one `readSectors` reply (wanted plus predicted).
    public static let replyExtentsMax = 4096
    /// Per reply extent: reason, block, first sector, sector count, byte count.
    public static let replyExtentHeaderBytes = 1 + 2 + 2 + 2 + 4
    /// Error text carried in a reply (longer text is cut at a character boundary).
    public static let messageBytesMax = 512
    /// Largest frame bound a server or client accepts.
    public static let frameBytesMaxLimit = 256 << 20
    /// Requests are small: a request frame above this is refused whatever the reply bound.
    public static let requestFrameBytesMax = 64 << 10
    /// Payload of one `uploadData` (the appliance's upload pieces; the intermediate assembles parts).
    public static let uploadDataBytesMax = 1 << 20
    /// `uploadData` frames only: the payload, one CRC per sector of 512 B at the smallest, headers.
    public static let uploadFrameBytesMax = uploadDataBytesMax + uploadDataBytesMax / 512 * 4 + 64
}

public enum GatewayOpcode: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case stat = 0x02
    case readSectors = 0x03
    case invalidate = 0x04
    /// Writes (docs/GATEWAY.md, "Writes"). A server without them answers `unknownOpcode`.
    case uploadBegin = 0x05
    case uploadData = 0x06
    case uploadComplete = 0x07
    case uploadAbort = 0x08
}

/// A reply's outcome. Every status but `ok` carries `u16 n, n bytes UTF-8 message`.
public enum GatewayStatus: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    /// The remote store has no such object.
    case notFound = 1
    /// The chunk or a wanted sector lies past the object's end.
    case rangeNotSatisfiable = 2
    /// The remote store did not answer (down, unreachable): nothing stale or unverified was served.
    case remoteUnavailable = 3
    /// The remote store answered with an error (or with bytes of the wrong length).
    case remoteError = 4
    /// The request broke a rule of the protocol (the message says which field, where).
    case badRequest = 5
    /// A bound of the server was reached (fetches in flight); retry later.
    case overloaded = 6
    case `internal` = 7
    /// The frame's length word is above the server's bound: the server closes the connection after this.
    case frameTooLarge = 8
    case unsupportedVersion = 9
    case unknownOpcode = 10
    /// An `uploadData` sector failed its CRC-32C on arrival: nothing of the piece was kept; send it again.
    case corrupt = 11
    /// No upload of this ID (it expired, failed, or the intermediate restarted): begin again.
    case noSuchUpload = 12

    public var description: String {
        switch self {
        case .ok: "ok"
        case .notFound: "notFound"
        case .rangeNotSatisfiable: "rangeNotSatisfiable"
        case .remoteUnavailable: "remoteUnavailable"
        case .remoteError: "remoteError"
        case .badRequest: "badRequest"
        case .overloaded: "overloaded"
        case .internal: "internal"
        case .frameTooLarge: "frameTooLarge"
        case .unsupportedVersion: "unsupportedVersion"
        case .unknownOpcode: "unknownOpcode"
        case .corrupt: "corrupt"
        case .noSuchUpload: "noSuchUpload"
        }
    }
}

/// `uploadData`: `bytes` at `offset` of upload `uploadID`, one CRC-32C per sector (`sectorBytes` of
/// the connection's units, the last one short). Pieces arrive in order: `offset` is what the
/// intermediate holds so far (a piece it already holds is acknowledged again, for a lost reply).
public struct UploadDataRequest: Sendable, Equatable {
    public var uploadID: UInt64
    public var offset: UInt64
    public var crcs: [UInt32]
    public var bytes: [UInt8]
    public init(uploadID: UInt64, offset: UInt64, crcs: [UInt32], bytes: [UInt8]) {
        self.uploadID = uploadID
        self.offset = offset
        self.crcs = crcs
        self.bytes = bytes
    }
}

/// Sectors of one chunk: `sectorCount` sectors from sector `firstSector` of block `block`. May run on
/// across blocks, never past the chunk. On the wire `firstSector < sectorsPerBlock`.
public struct SectorExtent: Hashable, Sendable, CustomStringConvertible {
    public var block: UInt16
    public var firstSector: UInt16
    public var sectorCount: UInt16

    public init(block: UInt16, firstSector: UInt16, sectorCount: UInt16) {
        self.block = block
        self.firstSector = firstSector
        self.sectorCount = sectorCount
    }

    /// The extent of chunk sectors `range` (chunk-relative sector indices).
    public init(sectors range: Range<Int>, units: GatewayUnits) {
        precondition(!range.isEmpty, "an extent holds a sector")
        precondition(range.lowerBound >= 0, "sector indices are not negative")
        precondition(range.upperBound <= units.sectorsPerChunk, "an extent ends within its chunk")
        precondition(range.count <= Int(UInt16.max), "a sector count fits u16")
        self.init(block: UInt16(range.lowerBound / units.sectorsPerBlock),
                  firstSector: UInt16(range.lowerBound % units.sectorsPerBlock), sectorCount: UInt16(range.count))
    }

    /// Chunk-relative sector indices.
    public func sectors(_ units: GatewayUnits) -> Range<Int> {
        let start = Int(block) * units.sectorsPerBlock + Int(firstSector)
        return start..<(start + Int(sectorCount))
    }

    public var description: String { "block \(block) sector \(firstSector) +\(sectorCount)" }
}

/// The sectors of one block the appliance already holds (bit i: sector i of the block).
public struct HeldBlock: Hashable, Sendable {
    public var block: UInt16
    public var sectorMask: UInt16
    public init(block: UInt16, sectorMask: UInt16) {
        self.block = block
        self.sectorMask = sectorMask
    }
}

/// `readSectors`: the wanted extents (ascending, not overlapping, never empty), what the appliance holds
/// in this chunk, and how many bytes of predicted sectors it accepts besides.
public struct ReadSectorsRequest: Sendable, Equatable {
    public var key: String
    public var chunk: UInt64
    public var extraBudgetBytes: UInt32
    public var wanted: [SectorExtent]
    public var held: [HeldBlock]

    public init(key: String, chunk: UInt64, extraBudgetBytes: UInt32, wanted: [SectorExtent], held: [HeldBlock] = []) {
        self.key = key
        self.chunk = chunk
        self.extraBudgetBytes = extraBudgetBytes
        self.wanted = wanted
        self.held = held
    }
}

public enum GatewayRequest: Sendable, Equatable {
    case hello
    case stat(key: String)
    case readSectors(ReadSectorsRequest)
    case invalidate(key: String)
    /// {key, u64 size} -> {u64 uploadID}
    case uploadBegin(key: String, size: UInt64)
    /// {u64 uploadID, u64 offset, u32 sectorCount, sectorCount x u32 crc32c, u32 byteCount, bytes} -> {u64 received}
    case uploadData(UploadDataRequest)
    /// {u64 uploadID} -> {u64 size, etag}: the object is in the remote store.
    case uploadComplete(uploadID: UInt64)
    /// {u64 uploadID} -> {}
    case uploadAbort(uploadID: UInt64)

    public var opcode: GatewayOpcode {
        switch self {
        case .hello: .hello
        case .stat: .stat
        case .readSectors: .readSectors
        case .invalidate: .invalidate
        case .uploadBegin: .uploadBegin
        case .uploadData: .uploadData
        case .uploadComplete: .uploadComplete
        case .uploadAbort: .uploadAbort
        }
    }
}

/// Why an extent crossed the last hop.
public enum ExtentReason: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The appliance asked for it.
    case requested = 0
    /// The appliance's recent reads of the object on this connection were contiguous: the sectors ahead.
    case sequential = 1
    /// Its recent reads kept a constant stride: the next strided extents.
    case stride = 2

    public var description: String {
        switch self {
        case .requested: "requested"
        case .sequential: "sequential"
        case .stride: "stride"
        }
    }
}

/// One extent of a `readSectors` reply: its sectors' CRC-32Cs and bytes. `bytes` is `sectorCount`
/// sectors, the last one short when the extent ends at the object's end.
public struct ExtentPayload: Sendable, Equatable {
    public var reason: ExtentReason
    public var extent: SectorExtent
    public var crcs: [UInt32]
    public var bytes: [UInt8]

    public init(reason: ExtentReason, extent: SectorExtent, crcs: [UInt32], bytes: [UInt8]) {
        self.reason = reason
        self.extent = extent
        self.crcs = crcs
        self.bytes = bytes
    }
}

/// The `ok` body of `readSectors`: the object's size and etag as served (so the appliance never mixes
/// sectors of two versions), the requested extents first and in full, then the predicted ones.
public struct SectorsReply: Sendable, Equatable {
    public var size: UInt64
    public var etag: String
    /// The request this answers, as the server read it: its chunk and the CRC-32C of its key. A request
    /// corrupted on the wire (another chunk or key) is answered with valid sectors of the wrong place;
    /// the client compares these with what it asked and refuses the reply as corrupt.
    public var chunk: UInt64
    public var keyCRC: UInt32
    public var extents: [ExtentPayload]

    public init(size: UInt64, etag: String, chunk: UInt64 = 0, keyCRC: UInt32 = 0, extents: [ExtentPayload]) {
        self.size = size
        self.etag = etag
        self.chunk = chunk
        self.keyCRC = keyCRC
        self.extents = extents
    }
}

/// CRC-32C of a key's UTF-8 bytes: how a `sectors` reply names the key it answers.
public func gatewayKeyCRC(_ key: String) -> UInt32 {
    var copy = key
    return copy.withUTF8 { bytes in bytes.isEmpty ? 0 : sluice_crc32c(0, bytes.baseAddress!, bytes.count) }
}

/// `hello`'s answer: the server's units and its frame bound.
public struct GatewayHello: Sendable, Equatable {
    public var units: GatewayUnits
    public var frameBytesMax: Int
    public init(units: GatewayUnits, frameBytesMax: Int) {
        self.units = units
        self.frameBytesMax = frameBytesMax
    }
}

public enum GatewayReply: Sendable, Equatable {
    case hello(GatewayHello)
    case stat(size: UInt64, etag: String)
    case sectors(SectorsReply)
    case invalidated
    case uploadBegun(uploadID: UInt64)
    /// The bytes of the upload the intermediate holds after the piece.
    case uploadReceived(bytes: UInt64)
    case uploadCompleted(size: UInt64, etag: String)
    case uploadAborted
    /// Any status but `ok`, with its message.
    case failure(GatewayStatus, message: String)

    public var status: GatewayStatus {
        if case .failure(let status, _) = self { return status }
        return .ok
    }
}

/// Why a body or frame did not decode: the field and, for lists, the index. The frame boundary is intact.
public enum GatewayDecodeError: Error, Equatable, CustomStringConvertible {
    /// The body ends before this field.
    case missing(field: String)
    /// A length-prefixed field runs past the body's end.
    case cutShort(field: String, length: Int, bytesLeft: Int)
    case emptyKey
    case keyTooLong(bytes: Int, max: Int)
    /// A key the store would read as another path: a NUL, or an empty (`//`, leading or trailing `/`),
    /// `.` or `..` segment. Refused before any store sees it.
    case invalidKey(key: String, reason: String)
    case notUTF8(field: String)
    case etagTooLong(bytes: Int, max: Int)
    /// A list count of zero where one item at least is required.
    case emptyList(field: String)
    /// A list count above its bound.
    case tooMany(field: String, count: Int, max: Int)
    /// Extent `index` of `field` is empty, starts past its block, or ends past the chunk.
    case extentOutOfChunk(field: String, index: Int, extent: SectorExtent, sectorsPerChunk: Int)
    /// Wanted extent `index` starts before the end of the one before it (extents ascend, never overlap).
    case extentsOverlap(index: Int, extent: SectorExtent)
    case heldBlockOutOfChunk(index: Int, block: UInt16, blocksPerChunk: Int)
    /// A chunk number whose byte offset is past any object (2^63 bytes).
    case chunkOutOfRange(chunk: UInt64, chunksMax: UInt64)
    case badReason(index: Int, value: UInt8)
    /// Reply extent `index` carries `byteCount` bytes for `sectorCount` sectors (not within the last sector).
    case byteCountMismatch(index: Int, byteCount: Int, sectorCount: Int, sectorBytes: Int)
    case badUnits(GatewaySettingError)
    case trailingBytes(Int)
    case unknownStatus(UInt8)
    /// A frame length below the header: the frame was skipped.
    case frameBelowHeader(length: UInt32, header: Int)

    public var description: String {
        switch self {
        case .missing(let field): "\(field) missing"
        case .cutShort(let field, let length, let left): "\(field) of \(length) bytes runs past the \(left) bytes left"
        case .emptyKey: "key is empty"
        case .keyTooLong(let bytes, let max): "key of \(bytes) bytes is above \(max)"
        case .invalidKey(let key, let reason): "key \(key): \(reason)"
        case .notUTF8(let field): "\(field) is not UTF-8"
        case .etagTooLong(let bytes, let max): "etag of \(bytes) bytes is above \(max)"
        case .emptyList(let field): "\(field) is empty"
        case .tooMany(let field, let count, let max): "\(count) \(field) above \(max)"
        case .extentOutOfChunk(let field, let index, let extent, let sectors):
            "\(field)[\(index)] (\(extent)) is empty or not within a chunk of \(sectors) sectors"
        case .extentsOverlap(let index, let extent): "wanted[\(index)] (\(extent)) starts before the end of wanted[\(index - 1)]"
        case .heldBlockOutOfChunk(let index, let block, let blocks): "held[\(index)] block \(block) is not below \(blocks)"
        case .chunkOutOfRange(let chunk, let max): "chunk \(chunk) is not below \(max) (objects end below 2^63 bytes)"
        case .badReason(let index, let value): "extents[\(index)] reason \(value) is not 0...2"
        case .byteCountMismatch(let index, let bytes, let sectors, let sectorBytes):
            "extents[\(index)] carries \(bytes) bytes for \(sectors) sectors of \(sectorBytes)"
        case .badUnits(let error): "hello units: \(error)"
        case .trailingBytes(let count): "\(count) trailing bytes after the body"
        case .unknownStatus(let value): "status \(value) is unknown"
        case .frameBelowHeader(let length, let header): "frame length \(length) is below the \(header)-byte header"
        }
    }
}

// MARK: - Requests

extension GatewayRequest {
    /// Appends the body (not the frame header). Keys and extents must already be within the bounds
    /// (`GatewayClient` checks a caller's arguments before it encodes).
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello:
            break
        case .stat(let key), .invalidate(let key):
            buffer.writeKey(key)
        case .uploadBegin(let key, let size):
            buffer.writeKey(key)
            buffer.writeInteger(size)
        case .uploadData(let data):
            precondition(data.bytes.count <= GatewayProtocol.uploadDataBytesMax, "upload pieces bounded")
            buffer.writeInteger(data.uploadID)
            buffer.writeInteger(data.offset)
            buffer.writeInteger(UInt32(data.crcs.count))
            for crc in data.crcs { buffer.writeInteger(crc) }
            buffer.writeInteger(UInt32(data.bytes.count))
            buffer.writeBytes(data.bytes)
        case .uploadComplete(let id), .uploadAbort(let id):
            buffer.writeInteger(id)
        case .readSectors(let request):
            precondition(request.wanted.count <= Int(UInt16.max), "wanted count fits u16")
            precondition(request.held.count <= Int(UInt16.max), "held count fits u16")
            buffer.writeKey(request.key)
            buffer.writeInteger(request.chunk)
            buffer.writeInteger(request.extraBudgetBytes)
            buffer.writeInteger(UInt16(request.wanted.count))
            for extent in request.wanted {
                buffer.writeInteger(extent.block)
                buffer.writeInteger(extent.firstSector)
                buffer.writeInteger(extent.sectorCount)
            }
            buffer.writeInteger(UInt16(request.held.count))
            for held in request.held {
                buffer.writeInteger(held.block)
                buffer.writeInteger(held.sectorMask)
            }
        }
    }

    /// Decodes a body of a known opcode against `units` (extents must lie within one chunk). Consumes
    /// the whole body: trailing bytes are an error. Counts are checked against the bytes left before
    /// anything is allocated.
    public static func decode(opcode: GatewayOpcode, body: inout ByteBuffer,
                              units: GatewayUnits) throws(GatewayDecodeError) -> GatewayRequest {
        let request: GatewayRequest
        switch opcode {
        case .hello: request = .hello
        case .stat: request = .stat(key: try body.readKey())
        case .invalidate: request = .invalidate(key: try body.readKey())
        case .readSectors: request = .readSectors(try decodeReadSectors(&body, units: units))
        case .uploadBegin: request = .uploadBegin(key: try body.readKey(), size: try body.readField(UInt64.self, "size"))
        case .uploadData: request = .uploadData(try decodeUploadData(&body, units: units))
        case .uploadComplete: request = .uploadComplete(uploadID: try body.readField(UInt64.self, "uploadID"))
        case .uploadAbort: request = .uploadAbort(uploadID: try body.readField(UInt64.self, "uploadID"))
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes) }
        return request
    }

    /// CRC count as the byte count implies (one per sector, the last short), payload within the bound.
    static func decodeUploadData(_ body: inout ByteBuffer, units: GatewayUnits) throws(GatewayDecodeError) -> UploadDataRequest {
        let id = try body.readField(UInt64.self, "uploadID")
        let offset = try body.readField(UInt64.self, "offset")
        guard offset % UInt64(units.sectorBytes) == 0, offset < UInt64(Int64.max) else {
            throw .missing(field: "offset \(offset) on a sector boundary")
        }
        let crcCount = Int(try body.readField(UInt32.self, "sector count"))
        let sectorsMax = GatewayProtocol.uploadDataBytesMax / units.sectorBytes
        guard crcCount <= sectorsMax else { throw .tooMany(field: "upload sectors", count: crcCount, max: sectorsMax) }
        guard crcCount * 4 <= body.readableBytes else { throw .cutShort(field: "crcs", length: crcCount * 4, bytesLeft: body.readableBytes) }
        var crcs: [UInt32] = []
        crcs.reserveCapacity(crcCount)
        for _ in 0..<crcCount { crcs.append(body.readInteger()!) }
        let byteCount = Int(try body.readField(UInt32.self, "byte count"))
        guard byteCount > 0, byteCount <= GatewayProtocol.uploadDataBytesMax,
              crcCount == (byteCount + units.sectorBytes - 1) / units.sectorBytes else {
            throw .byteCountMismatch(index: 0, byteCount: byteCount, sectorCount: crcCount, sectorBytes: units.sectorBytes)
        }
        guard let bytes = body.readBytes(length: byteCount) else {
            throw .cutShort(field: "bytes", length: byteCount, bytesLeft: body.readableBytes)
        }
        return UploadDataRequest(uploadID: id, offset: offset, crcs: crcs, bytes: bytes)
    }

    static func decodeReadSectors(_ body: inout ByteBuffer, units: GatewayUnits) throws(GatewayDecodeError) -> ReadSectorsRequest {
        let key = try body.readKey()
        let chunk = try body.readField(UInt64.self, "chunk")
        // Objects end below 2^63 bytes: a chunk past that is refused here, before any offset is computed.
        guard chunk < UInt64(Int64.max) / UInt64(units.chunkBytes) else {
            throw .chunkOutOfRange(chunk: chunk, chunksMax: UInt64(Int64.max) / UInt64(units.chunkBytes))
        }
        let budget = try body.readField(UInt32.self, "extraBudgetBytes")
        let wantedCount = Int(try body.readField(UInt16.self, "wanted count"))
        guard wantedCount > 0 else { throw .emptyList(field: "wanted") }
        guard wantedCount <= GatewayProtocol.wantedExtentsMax else {
            throw .tooMany(field: "wanted extents", count: wantedCount, max: GatewayProtocol.wantedExtentsMax)
        }
        guard wantedCount * 6 <= body.readableBytes else { throw .missing(field: "wanted[\(body.readableBytes / 6)]") }
        var wanted: [SectorExtent] = []
        wanted.reserveCapacity(wantedCount)
        var previousEnd = 0
        for index in 0..<wantedCount {
            let extent = SectorExtent(block: body.readInteger()!, firstSector: body.readInteger()!, sectorCount: body.readInteger()!)
            guard extent.fits(units) else {
                throw .extentOutOfChunk(field: "wanted", index: index, extent: extent, sectorsPerChunk: units.sectorsPerChunk)
            }
            let sectors = extent.sectors(units)
            guard index == 0 || sectors.lowerBound >= previousEnd else { throw .extentsOverlap(index: index, extent: extent) }
            previousEnd = sectors.upperBound
            wanted.append(extent)
        }
        let heldCount = Int(try body.readField(UInt16.self, "held count"))
        guard heldCount <= GatewayProtocol.heldEntriesMax else {
            throw .tooMany(field: "held entries", count: heldCount, max: GatewayProtocol.heldEntriesMax)
        }
        guard heldCount * 4 <= body.readableBytes else { throw .missing(field: "held[\(body.readableBytes / 4)]") }
        var held: [HeldBlock] = []
        held.reserveCapacity(heldCount)
        for index in 0..<heldCount {
            let entry = HeldBlock(block: body.readInteger()!, sectorMask: body.readInteger()!)
            guard Int(entry.block) < units.blocksPerChunk else {
                throw .heldBlockOutOfChunk(index: index, block: entry.block, blocksPerChunk: units.blocksPerChunk)
            }
            held.append(entry)
        }
        return ReadSectorsRequest(key: key, chunk: chunk, extraBudgetBytes: budget, wanted: wanted, held: held)
    }
}

extension SectorExtent {
    /// Non-empty, starting inside its block, ending within the chunk.
    func fits(_ units: GatewayUnits) -> Bool {
        guard sectorCount > 0, Int(firstSector) < units.sectorsPerBlock, Int(block) < units.blocksPerChunk else { return false }
        return sectors(units).upperBound <= units.sectorsPerChunk
    }
}

// MARK: - Replies

extension GatewayReply {
    /// Appends the body after the status byte. Messages are cut to `messageBytesMax` bytes.
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let hello):
            buffer.writeInteger(UInt32(hello.units.chunkBytes))
            buffer.writeInteger(UInt32(hello.units.blockBytes))
            buffer.writeInteger(UInt32(hello.units.sectorBytes))
            buffer.writeInteger(UInt32(hello.frameBytesMax))
        case .stat(let size, let etag):
            buffer.writeInteger(size)
            buffer.writeEtag(etag)
        case .sectors(let reply):
            precondition(reply.extents.count <= GatewayProtocol.replyExtentsMax, "reply extents bounded by replyExtentsMax")
            buffer.writeInteger(reply.size)
            buffer.writeEtag(reply.etag)
            buffer.writeInteger(reply.chunk)
            buffer.writeInteger(reply.keyCRC)
            buffer.writeInteger(UInt16(reply.extents.count))
            for payload in reply.extents {
                precondition(payload.crcs.count == Int(payload.extent.sectorCount), "one CRC per sector")
                buffer.writeInteger(payload.reason.rawValue)
                buffer.writeInteger(payload.extent.block)
                buffer.writeInteger(payload.extent.firstSector)
                buffer.writeInteger(payload.extent.sectorCount)
                buffer.writeInteger(UInt32(payload.bytes.count))
                for (k, crc) in payload.crcs.enumerated() { buffer.writeInteger(crc ^ sectorPositionTag(payload.extent, k)) }
                buffer.writeBytes(payload.bytes)
            }
        case .invalidated, .uploadAborted:
            break
        case .uploadBegun(let id):
            buffer.writeInteger(id)
        case .uploadReceived(let bytes):
            buffer.writeInteger(bytes)
        case .uploadCompleted(let size, let etag):
            buffer.writeInteger(size)
            buffer.writeEtag(etag)
        case .failure(_, let message):
            let bytes = Array(message.utf8)
            // Cut at a character boundary so the text stays UTF-8: never before a continuation byte.
            var count = min(bytes.count, GatewayProtocol.messageBytesMax)
            while count > 0, count < bytes.count, bytes[count] & 0xC0 == 0x80 { count -= 1 }
            buffer.writeInteger(UInt16(count))
            buffer.writeBytes(bytes[0..<count])
        }
    }

    /// Decodes a reply body. The `ok` shape depends on the request's opcode; `units` (from `hello`)
    /// bound the extents of a `readSectors` reply (not needed for other opcodes).
    public static func decode(opcode: GatewayOpcode, status: GatewayStatus, body: inout ByteBuffer,
                              units: GatewayUnits?) throws(GatewayDecodeError) -> GatewayReply {
        let reply: GatewayReply
        if status != .ok {
            guard let length = body.readInteger(as: UInt16.self) else { throw .missing(field: "message length") }
            guard let text = body.readBytes(length: Int(length)) else {
                throw .cutShort(field: "message", length: Int(length), bytesLeft: body.readableBytes)
            }
            reply = .failure(status, message: String(decoding: text, as: UTF8.self))
        } else {
            switch opcode {
            case .hello:
                let chunk = Int(try body.readField(UInt32.self, "chunkBytes"))
                let block = Int(try body.readField(UInt32.self, "blockBytes"))
                let sector = Int(try body.readField(UInt32.self, "sectorBytes"))
                let frame = Int(try body.readField(UInt32.self, "frameBytesMax"))
                let units: GatewayUnits
                do { units = try GatewayUnits(chunkBytes: chunk, blockBytes: block, sectorBytes: sector) } catch {
                    throw .badUnits(error)
                }
                reply = .hello(GatewayHello(units: units, frameBytesMax: frame))
            case .stat:
                reply = .stat(size: try body.readField(UInt64.self, "size"), etag: try body.readEtag())
            case .invalidate:
                reply = .invalidated
            case .uploadBegin:
                reply = .uploadBegun(uploadID: try body.readField(UInt64.self, "uploadID"))
            case .uploadData:
                reply = .uploadReceived(bytes: try body.readField(UInt64.self, "received"))
            case .uploadComplete:
                reply = .uploadCompleted(size: try body.readField(UInt64.self, "size"), etag: try body.readEtag())
            case .uploadAbort:
                reply = .uploadAborted
            case .readSectors:
                guard let units else { throw .missing(field: "units (no hello before readSectors)") }
                reply = .sectors(try decodeSectors(&body, units: units))
            }
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes) }
        return reply
    }

    static func decodeSectors(_ body: inout ByteBuffer, units: GatewayUnits) throws(GatewayDecodeError) -> SectorsReply {
        let size = try body.readField(UInt64.self, "size")
        let etag = try body.readEtag()
        let chunk = try body.readField(UInt64.self, "chunk")
        let keyCRC = try body.readField(UInt32.self, "key CRC")
        let count = Int(try body.readField(UInt16.self, "extent count"))
        guard count <= GatewayProtocol.replyExtentsMax else {
            throw .tooMany(field: "reply extents", count: count, max: GatewayProtocol.replyExtentsMax)
        }
        guard count * GatewayProtocol.replyExtentHeaderBytes <= body.readableBytes else {
            throw .missing(field: "extents[\(body.readableBytes / GatewayProtocol.replyExtentHeaderBytes)]")
        }
        var extents: [ExtentPayload] = []
        extents.reserveCapacity(count)
        for index in 0..<count {
            guard body.readableBytes >= GatewayProtocol.replyExtentHeaderBytes else { throw .missing(field: "extents[\(index)]") }
            let rawReason = body.readInteger(as: UInt8.self)!
            guard let reason = ExtentReason(rawValue: rawReason) else { throw .badReason(index: index, value: rawReason) }
            let extent = SectorExtent(block: body.readInteger()!, firstSector: body.readInteger()!, sectorCount: body.readInteger()!)
            guard extent.fits(units) else {
                throw .extentOutOfChunk(field: "extents", index: index, extent: extent, sectorsPerChunk: units.sectorsPerChunk)
            }
            let byteCount = Int(body.readInteger(as: UInt32.self)!)
            let sectors = Int(extent.sectorCount)
            guard byteCount > (sectors - 1) * units.sectorBytes, byteCount <= sectors * units.sectorBytes else {
                throw .byteCountMismatch(index: index, byteCount: byteCount, sectorCount: sectors, sectorBytes: units.sectorBytes)
            }
            guard sectors * 4 + byteCount <= body.readableBytes else {
                throw .cutShort(field: "extents[\(index)] sectors", length: sectors * 4 + byteCount, bytesLeft: body.readableBytes)
            }
            var crcs: [UInt32] = []
            crcs.reserveCapacity(sectors)
            for k in 0..<sectors { crcs.append(body.readInteger(as: UInt32.self)! ^ sectorPositionTag(extent, k)) }
            extents.append(ExtentPayload(reason: reason, extent: extent, crcs: crcs, bytes: body.readBytes(length: byteCount)!))
        }
        return SectorsReply(size: size, etag: etag, chunk: chunk, keyCRC: keyCRC, extents: extents)
    }
}

/// Writes a whole frame: length word, version, opcode, request id, (status,) then `body`.
public func encodeGatewayFrame(version: UInt8 = GatewayProtocol.version, opcode: UInt8, requestID: UInt64,
                               status: GatewayStatus? = nil, into buffer: inout ByteBuffer,
                               body: (inout ByteBuffer) -> Void) {
    let lengthIndex = buffer.writerIndex
    buffer.writeInteger(UInt32(0))
    buffer.writeInteger(version)
    buffer.writeInteger(opcode)
    buffer.writeInteger(requestID)
    if let status { buffer.writeInteger(status.rawValue) }
    body(&buffer)
    let length = buffer.writerIndex - lengthIndex - 4
    precondition(length <= Int(UInt32.max), "frame length fits the u32 length word")
    buffer.setInteger(UInt32(length), at: lengthIndex)
}

extension ByteBuffer {
    mutating func readField<T: FixedWidthInteger>(_ type: T.Type, _ field: String) throws(GatewayDecodeError) -> T {
        guard let value = readInteger(as: T.self) else { throw .missing(field: field) }
        return value
    }

    /// `u16 length, key`: 1...keyBytesMax bytes of UTF-8.
    mutating func readKey() throws(GatewayDecodeError) -> String {
        let length = Int(try readField(UInt16.self, "key length"))
        guard length > 0 else { throw .emptyKey }
        guard length <= GatewayProtocol.keyBytesMax else { throw .keyTooLong(bytes: length, max: GatewayProtocol.keyBytesMax) }
        guard let bytes = readBytes(length: length) else { throw .cutShort(field: "key", length: length, bytesLeft: readableBytes) }
        guard let key = String(validating: bytes, as: UTF8.self) else { throw .notUTF8(field: "key") }
        if let reason = gatewayKeyPathProblem(key) { throw .invalidKey(key: key, reason: reason) }
        return key
    }

    mutating func readEtag() throws(GatewayDecodeError) -> String {
        let length = Int(try readField(UInt16.self, "etag length"))
        guard length <= GatewayProtocol.etagBytesMax else { throw .etagTooLong(bytes: length, max: GatewayProtocol.etagBytesMax) }
        guard let bytes = readBytes(length: length) else { throw .cutShort(field: "etag", length: length, bytesLeft: readableBytes) }
        guard let etag = String(validating: bytes, as: UTF8.self) else { throw .notUTF8(field: "etag") }
        return etag
    }

    mutating func writeKey(_ key: String) {
        precondition(!key.utf8.isEmpty && key.utf8.count <= GatewayProtocol.keyBytesMax, "key within 1...keyBytesMax bytes")
        writeInteger(UInt16(key.utf8.count))
        writeString(key)
    }

    mutating func writeEtag(_ etag: String) {
        precondition(etag.utf8.count <= GatewayProtocol.etagBytesMax, "etag within etagBytesMax bytes")
        writeInteger(UInt16(etag.utf8.count))
        writeString(etag)
    }
}

/// Why `key` is not a plain path of segments (nil: it is): a NUL, or an empty, `.` or `..` segment
/// (`//`, a leading or trailing `/`). Servers refuse such keys (`badRequest`) when decoding: S3 would
/// take them raw and a directory store would leave its root.
public func gatewayKeyPathProblem(_ key: String) -> String? {
    if key.utf8.contains(0) { return "contains NUL" }
    for segment in key.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
        if segment.isEmpty || segment.elementsEqual(".".utf8) || segment.elementsEqual("..".utf8) {
            return "has an empty, . or .. path component"
        }
    }
    return nil
}

/// The key check `GatewayClient` and the server share: 1...keyBytesMax bytes.
public func gatewayKeyIsValid(_ key: String) -> Bool {
    !key.utf8.isEmpty && key.utf8.count <= GatewayProtocol.keyBytesMax
}

/// What a `sectors` reply XORs into the CRC-32C of the `k`-th sector of `extent` on the wire (and the
/// decoder XORs out again with the extent it parsed): (block << 16 + firstSector + k) times an odd
/// constant, a bijection of the sector's position. The CRC then binds the bytes to where the reply
/// says they go: a header corrupted on the wire that moves a (predicted) extent elsewhere makes every
/// sector of it fail its CRC, so right bytes are never stored at the wrong place. In memory
/// (`ExtentPayload.crcs`) CRCs stay plain CRC-32C.
@inline(__always)
func sectorPositionTag(_ extent: SectorExtent, _ k: Int) -> UInt32 {
    let position = UInt32(extent.block) << 16 &+ UInt32(extent.firstSector) &+ UInt32(truncatingIfNeeded: k)
    return position &* 0x9E37_79B1
}
