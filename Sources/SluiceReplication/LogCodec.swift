// Path: Sources/SluiceReplication/LogCodec.swift — how the shared operation log sits in etcd: its keys
// (one per batch, named by the batch's first OSN) and the binary value of a batch of proposals.
import CShims
import SluicePageStore

/// The etcd keys of one shared log, under a prefix: `P/log/<first OSN, 16 hex digits>` per batch (so key
/// order is OSN order), `P/floor` (the OSN through which batches were deleted), `P/meta` (what every
/// node of the log must agree on) and `P/nodes/<name>` (each node's last checkpoint OSN).
public struct LogKeys: Sendable, Equatable {
    public let prefix: String

    public init(prefix: String) {
        precondition(!prefix.isEmpty && !prefix.hasSuffix("/"), "a log prefix is a non-empty path without a trailing /")
        self.prefix = prefix
    }

    public var logPrefix: [UInt8] { Array((prefix + "/log/").utf8) }
    /// Every batch key: `[P/log/, P/log0)` ('0' follows '/').
    public var logRange: EtcdKeyRange { .prefix(logPrefix) }
    public var floor: [UInt8] { Array((prefix + "/floor").utf8) }
    public var meta: [UInt8] { Array((prefix + "/meta").utf8) }
    public var nodesPrefix: [UInt8] { Array((prefix + "/nodes/").utf8) }
    public func node(_ name: String) -> [UInt8] { nodesPrefix + Array(name.utf8) }

    /// The key of the batch whose first record has `osn`.
    public func batch(_ osn: UInt64) -> [UInt8] { logPrefix + Self.hex(osn) }
    /// Keys of the batches starting at `osn` and after.
    public func batches(from osn: UInt64) -> EtcdKeyRange {
        .range(start: batch(osn), end: EtcdKeyRange.prefixEnd(logPrefix))
    }

    /// The first OSN a batch key names, or nil when it is not a batch key of this log.
    public func firstOSN(ofBatchKey key: [UInt8]) -> UInt64? {
        let prefix = logPrefix
        guard key.count == prefix.count + 16, key.starts(with: prefix) else { return nil }
        return Self.parseHex(key[prefix.count...])
    }

    /// 16 lower-case hex digits, so byte order is numeric order.
    public static func hex(_ value: UInt64) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return (0..<16).map { digits[Int((value >> UInt64(60 - 4 * $0)) & 0xf)] }
    }

    public static func parseHex(_ bytes: some Collection<UInt8>) -> UInt64? {
        guard bytes.count == 16 else { return nil }
        var value: UInt64 = 0
        for byte in bytes {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}

/// Which node proposed a record, and its place among that node's proposals: unique across the log,
/// so a proposal whose outcome is unknown is recognised when the log is read back.
public struct ProposalID: Sendable, Hashable, CustomStringConvertible {
    /// Random per process start of the proposing node.
    public var node: UInt64
    /// 1, 2, ... per node process.
    public var sequence: UInt64

    public var description: String { "\(String(node, radix: 16))-\(sequence)" }
}

/// One batch: the records one transaction put under one key, each with its proposal id.
public struct LogBatch: Sendable, Equatable {
    public var records: [(id: ProposalID, record: LogRecord)]

    public init(records: [(id: ProposalID, record: LogRecord)]) { self.records = records }

    public static func == (a: LogBatch, b: LogBatch) -> Bool {
        a.records.count == b.records.count && zip(a.records, b.records).allSatisfy { $0.id == $1.id && $0.record == $1.record }
    }
}

/// Why a batch value does not decode.
public enum LogDecodeProblem: Error, Sendable, Equatable, CustomStringConvertible {
    case tooShort(bytes: Int)
    case badMagic(UInt32)
    case unsupportedVersion(UInt8)
    case badChecksum
    case cutShort(offset: Int)
    case badKind(UInt8, offset: Int)
    case badCondition(UInt8, offset: Int)
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case .tooShort(let bytes): "\(bytes) bytes, shorter than a batch header"
        case .badMagic(let magic): "magic \(String(magic, radix: 16)) is not a Sluice log batch"
        case .unsupportedVersion(let version): "batch format version \(version) is not supported"
        case .badChecksum: "CRC-32C does not match"
        case .cutShort(let offset): "record cut short at byte \(offset)"
        case .badKind(let kind, let offset): "unknown record kind \(kind) at byte \(offset)"
        case .badCondition(let condition, let offset): "unknown write condition \(condition) at byte \(offset)"
        case .trailingBytes(let count): "\(count) bytes after the last record"
        }
    }
}

/// A batch as bytes, little-endian: [magic u32 "SLRB"][version u8][record count u32], per record
/// [node u64][sequence u64][object u64][kind u8][argument u64][page count u32], per page [index u64]
/// [condition u8 (0 none, 1 unmodified since, 2 absent)][condition OSN u64][length u32][payload],
/// then [CRC-32C u32] of everything before it.
public enum LogCodec {
    static let magic: UInt32 = 0x534C_5242  // "SLRB"
    static let version: UInt8 = 1
    static let headerBytes = 4 + 1 + 4
    static let recordHeaderBytes = 8 + 8 + 1 + 8 + 8 + 4
    static let pageHeaderBytes = 8 + 1 + 8 + 4

    /// Bytes one record adds to a batch (what batch and record bounds are checked against).
    public static func encodedSize(_ record: LogRecord) -> Int {
        recordHeaderBytes + record.pages.reduce(0) { $0 + pageHeaderBytes + $1.payload.count }
    }

    /// Bytes of a batch holding records of these encoded sizes.
    public static func batchSize(recordBytes: Int) -> Int { headerBytes + recordBytes + 4 }

    public static func encode(_ batch: LogBatch) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(batchSize(recordBytes: batch.records.reduce(0) { $0 + encodedSize($1.record) }))
        put(magic, &out)
        out.append(version)
        put(UInt32(batch.records.count), &out)
        for (id, record) in batch.records {
            put(id.node, &out)
            put(id.sequence, &out)
            put(record.objectID, &out)
            switch record.kind {
            case .write: out.append(0); put(UInt64(0), &out)
            case .create: out.append(1); put(UInt64(0), &out)
            case .delete: out.append(2); put(UInt64(0), &out)
            case .truncate(let count): out.append(3); put(count, &out)
            }
            put(UInt32(record.pages.count), &out)
            for (position, page) in record.pages.enumerated() {
                put(page.index, &out)
                switch record.conditions.isEmpty ? .unconditional : record.conditions[position] {
                case .unconditional: out.append(0); put(UInt64(0), &out)
                case .unmodifiedSince(let osn): out.append(1); put(osn, &out)
                case .absent: out.append(2); put(UInt64(0), &out)
                }
                put(UInt32(page.payload.count), &out)
                out += page.payload
            }
        }
        put(sluice_crc32c(0, out, out.count), &out)
        return out
    }

    public static func decode(_ bytes: [UInt8]) throws(LogDecodeProblem) -> LogBatch {
        guard bytes.count >= headerBytes + 4 else { throw .tooShort(bytes: bytes.count) }
        let body = bytes.count - 4
        guard sluice_crc32c(0, bytes, body) == get(UInt32.self, bytes, body) else {
            let magic = get(UInt32.self, bytes, 0)
            if magic != Self.magic { throw .badMagic(magic) }
            throw .badChecksum
        }
        let magic = get(UInt32.self, bytes, 0)
        guard magic == Self.magic else { throw .badMagic(magic) }
        guard bytes[4] == version else { throw .unsupportedVersion(bytes[4]) }
        let count = Int(get(UInt32.self, bytes, 5))
        var offset = headerBytes
        var records: [(id: ProposalID, record: LogRecord)] = []
        records.reserveCapacity(min(count, body / recordHeaderBytes))
        for _ in 0..<count {
            guard offset + recordHeaderBytes <= body else { throw .cutShort(offset: offset) }
            let id = ProposalID(node: get(UInt64.self, bytes, offset), sequence: get(UInt64.self, bytes, offset + 8))
            let object = get(UInt64.self, bytes, offset + 16)
            let kindByte = bytes[offset + 24]
            let argument = get(UInt64.self, bytes, offset + 25)
            let pageCount = Int(get(UInt32.self, bytes, offset + 33))
            let kindOffset = offset + 24
            offset += recordHeaderBytes
            var pages: [(index: UInt64, payload: [UInt8])] = []
            var conditions: [WriteCondition] = []
            for _ in 0..<pageCount {
                guard offset + pageHeaderBytes <= body else { throw .cutShort(offset: offset) }
                let index = get(UInt64.self, bytes, offset)
                let conditionByte = bytes[offset + 8]
                let conditionOSN = get(UInt64.self, bytes, offset + 9)
                let length = Int(get(UInt32.self, bytes, offset + 17))
                let conditionOffset = offset + 8
                offset += pageHeaderBytes
                guard length <= body - offset else { throw .cutShort(offset: offset) }
                switch conditionByte {
                case 0: conditions.append(.unconditional)
                case 1: conditions.append(.unmodifiedSince(conditionOSN))
                case 2: conditions.append(.absent)
                default: throw .badCondition(conditionByte, offset: conditionOffset)
                }
                pages.append((index, Array(bytes[offset..<(offset + length)])))
                offset += length
            }
            let record: LogRecord
            switch kindByte {
            case 0: record = LogRecord(objectID: object, pages: pages, conditions: conditions)
            case 1 where pageCount == 0: record = LogRecord(.create, objectID: object)
            case 2 where pageCount == 0: record = LogRecord(.delete, objectID: object)
            case 3 where pageCount == 0: record = LogRecord(.truncate(pageCount: argument), objectID: object)
            default: throw .badKind(kindByte, offset: kindOffset)
            }
            records.append((id, record))
        }
        guard offset == body else { throw .trailingBytes(body - offset) }
        return LogBatch(records: records)
    }

    private static func put<T: FixedWidthInteger>(_ value: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out += $0 }
    }

    private static func get<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
