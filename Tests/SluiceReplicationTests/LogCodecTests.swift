// The etcd log's batch encoding (LogCodec): every record kind and condition round-trips, and every
// way a value can be wrong decodes to a typed LogDecodeProblem, never a crash.
import SluicePageStore
import Testing

@testable import SluiceReplication

@Suite struct LogCodecTests {
    /// One record of every kind, writes with every condition, empty and full payloads.
    static func everyKind() -> LogBatch {
        let full = [UInt8](repeating: 0xC3, count: 4096)
        return LogBatch(records: [
            (ProposalID(node: 1, sequence: 1), LogRecord(objectID: 7, pages: [(0, [1, 2, 3])], conditions: [.unconditional])),
            (ProposalID(node: 1, sequence: 2),
             LogRecord(objectID: 7, pages: [(1, []), (2, full), (UInt64.max - 1, [9])],
                       conditions: [.unconditional, .unmodifiedSince(42), .absent])),
            (ProposalID(node: .max, sequence: .max), LogRecord(.create, objectID: 0)),
            (ProposalID(node: 2, sequence: 0), LogRecord(.delete, objectID: .max)),
            (ProposalID(node: 3, sequence: 9), LogRecord(.truncate(pageCount: 0), objectID: 8)),
            (ProposalID(node: 3, sequence: 10), LogRecord(.truncate(pageCount: 1 << 40), objectID: 8)),
            (ProposalID(node: 4, sequence: 1), LogRecord(objectID: 9, pages: [(5, [0])], conditions: [.unmodifiedSince(0)])),
        ])
    }

    /// Puts a fresh CRC-32C on `bytes` (the last 4 bytes), so a mutated body reaches the record decoder.
    static func resealed(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 4 else { return bytes }
        var out = Array(bytes.dropLast(4))
        let crc = Self.crc32c(out)
        withUnsafeBytes(of: crc.littleEndian) { out += $0 }
        return out
    }

    /// CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: the test's own, not the codec's.
    static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }

    @Test func everyRecordKindAndConditionRoundTrips() throws {
        let batch = Self.everyKind()
        let bytes = LogCodec.encode(batch)
        let recordBytes = batch.records.reduce(0) { $0 + LogCodec.encodedSize($1.record) }
        #expect(bytes.count == LogCodec.batchSize(recordBytes: recordBytes))
        #expect(Array(bytes.suffix(4)) == withUnsafeBytes(of: Self.crc32c(Array(bytes.dropLast(4))).littleEndian) { Array($0) },
                "the checksum is CRC-32C of everything before it")
        let decoded = try LogCodec.decode(bytes)
        let same = decoded == batch  // a Bool: a failing comparison of 4 KiB payloads is not printed
        #expect(same)
        #expect(decoded.records.map(\.id) == batch.records.map(\.id))
        // One record at a time too, and the empty batch.
        for (position, record) in batch.records.enumerated() {
            let alone = try LogCodec.decode(LogCodec.encode(LogBatch(records: [record]))) == LogBatch(records: [record])
            #expect(alone, "record \(position)")
        }
        // A record logged without conditions (the embedded log's form) reads back as unconditional.
        let bare = LogBatch(records: [(ProposalID(node: 1, sequence: 1), LogRecord(objectID: 1, pages: [(0, [1])]))])
        #expect(try LogCodec.decode(LogCodec.encode(bare)).records[0].record.conditions == [.unconditional])
        #expect(try LogCodec.decode(LogCodec.encode(LogBatch(records: []))).records.isEmpty)
    }

    @Test func decodeErrorsAreTyped() throws {
        let good = LogCodec.encode(Self.everyKind())
        // Shorter than a header and a checksum.
        for count in 0..<13 {
            #expect(throws: LogDecodeProblem.tooShort(bytes: count)) { try LogCodec.decode(Array(good.prefix(count))) }
        }
        // Bad magic, with its checksum fixed or not.
        var magic = good
        magic[0] ^= 0xFF
        #expect(throws: LogDecodeProblem.badMagic(0x534C_5242 ^ 0xFF)) { try LogCodec.decode(magic) }
        #expect(throws: LogDecodeProblem.badMagic(0x534C_5242 ^ 0xFF)) { try LogCodec.decode(Self.resealed(magic)) }
        // Bad CRC: a flipped payload bit, or a flipped checksum bit.
        var flipped = good
        flipped[good.count / 2] ^= 0x10
        #expect(throws: LogDecodeProblem.badChecksum) { try LogCodec.decode(flipped) }
        var crc = good
        crc[crc.count - 1] ^= 1
        #expect(throws: LogDecodeProblem.badChecksum) { try LogCodec.decode(crc) }
        // Unsupported version.
        var version = good
        version[4] = 9
        #expect(throws: LogDecodeProblem.unsupportedVersion(9)) { try LogCodec.decode(Self.resealed(version)) }
        // Bad kind: the first record's kind byte (header 9, then node, sequence, object: offset 33).
        var kind = good
        kind[9 + 24] = 7
        #expect(throws: LogDecodeProblem.badKind(7, offset: 33)) { try LogCodec.decode(Self.resealed(kind)) }
        // A create that carries pages is a bad kind too (only writes carry pages).
        var create = LogCodec.encode(LogBatch(records: [(ProposalID(node: 1, sequence: 1), LogRecord(objectID: 1, pages: [(0, [1])]))]))
        create[9 + 24] = 1
        #expect(throws: LogDecodeProblem.badKind(1, offset: 33)) { try LogCodec.decode(Self.resealed(create)) }
        // Bad condition: the first page's condition byte (record header 37 bytes, then the index).
        var condition = good
        condition[9 + 37 + 8] = 5
        #expect(throws: LogDecodeProblem.badCondition(5, offset: 9 + 37 + 8)) { try LogCodec.decode(Self.resealed(condition)) }
        // Cut short: fewer bytes than the records say, resealed so the checksum passes.
        for cut in [1, 3, 10, 100, good.count - 20] {
            let short = Self.resealed(Array(good.prefix(good.count - 4 - cut)) + [0, 0, 0, 0])
            #expect(throws: LogDecodeProblem.self) { try LogCodec.decode(short) }
            do throws(LogDecodeProblem) {
                _ = try LogCodec.decode(short)
            } catch {
                guard case .cutShort = error else {
                    Issue.record("cut of \(cut) bytes: \(error), not cutShort")
                    continue
                }
            }
        }
        // A record count above what the bytes hold.
        var count = good
        count[5] &+= 1
        #expect(throws: LogDecodeProblem.cutShort(offset: good.count - 4)) { try LogCodec.decode(Self.resealed(count)) }
        // Trailing bytes after the last record.
        let trailing = Self.resealed(Array(good.dropLast(4)) + [1, 2, 3] + [0, 0, 0, 0])
        #expect(throws: LogDecodeProblem.trailingBytes(3)) { try LogCodec.decode(trailing) }
        // A page length past the end (the first page's length field: u32 max).
        var length = good
        for offset in (9 + 37 + 17)..<(9 + 37 + 21) { length[offset] = 0xFF }
        #expect(throws: LogDecodeProblem.cutShort(offset: 9 + 37 + 21)) { try LogCodec.decode(Self.resealed(length)) }
        // A huge record or page count is bounded by the bytes, not trusted.
        var pages = good
        for offset in (9 + 33)..<(9 + 37) { pages[offset] = 0xFF }
        #expect(throws: LogDecodeProblem.self) { try LogCodec.decode(Self.resealed(pages)) }
        var records = good
        for offset in 5..<9 { records[offset] = 0xFF }
        #expect(throws: LogDecodeProblem.self) { try LogCodec.decode(Self.resealed(records)) }
    }

    /// 2,000 random mutations (bit flips, byte sets, cuts, insertions; half of them resealed so the
    /// checksum passes and the record decoder sees them): each decodes to a batch or throws a typed
    /// LogDecodeProblem (the function's typed throws), and never traps.
    @Test func randomMutationsNeverCrash() {
        let good = LogCodec.encode(Self.everyKind())
        let small = LogCodec.encode(LogBatch(records: [
            (ProposalID(node: 1, sequence: 1), LogRecord(objectID: 7, pages: [(0, [1, 2, 3]), (1, [4])],
                                                         conditions: [.absent, .unmodifiedSince(3)])),
            (ProposalID(node: 1, sequence: 2), LogRecord(.truncate(pageCount: 2), objectID: 7)),
        ]))
        var generator = SystemRandomNumberGenerator()
        var decoded = 0
        var problems: [String: Int] = [:]
        for round in 0..<2_000 {
            var bytes = round % 3 == 0 ? good : small
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where !bytes.isEmpty:
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] ^= UInt8(1 << Int.random(in: 0..<8, using: &generator))
                case 1 where !bytes.isEmpty:
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                case 2 where !bytes.isEmpty:
                    bytes.removeLast(Int.random(in: 1...min(bytes.count, 64), using: &generator))
                default:
                    bytes.insert(UInt8.random(in: 0...255, using: &generator), at: Int.random(in: 0...bytes.count, using: &generator))
                }
            }
            if round % 2 == 0 { bytes = Self.resealed(bytes) }
            do throws(LogDecodeProblem) {
                _ = try LogCodec.decode(bytes)
                decoded += 1
            } catch {
                problems[Self.name(error), default: 0] += 1
            }
        }
        #expect(problems.values.reduce(0, +) + decoded == 2_000)
        #expect((problems["badChecksum"] ?? 0) > 0)
        #expect(problems.count >= 4, "mutations reach several decode checks: \(problems)")
    }

    static func name(_ problem: LogDecodeProblem) -> String {
        switch problem {
        case .tooShort: "tooShort"
        case .badMagic: "badMagic"
        case .unsupportedVersion: "unsupportedVersion"
        case .badChecksum: "badChecksum"
        case .cutShort: "cutShort"
        case .badKind: "badKind"
        case .badCondition: "badCondition"
        case .trailingBytes: "trailingBytes"
        }
    }

    @Test func keysAreOrderedByOSN() {
        let keys = LogKeys(prefix: "p")
        #expect(keys.batch(1) == Array("p/log/0000000000000001".utf8))
        #expect(keys.firstOSN(ofBatchKey: keys.batch(0xABCDEF)) == 0xABCDEF)
        #expect(keys.firstOSN(ofBatchKey: keys.batch(.max)) == .max)
        #expect(keys.firstOSN(ofBatchKey: Array("p/log/xyz".utf8)) == nil)
        #expect(keys.firstOSN(ofBatchKey: Array("q/log/0000000000000001".utf8)) == nil)
        let osns: [UInt64] = [1, 15, 16, 255, 4096, 1 << 40, .max]
        let encoded = osns.map { keys.batch($0) }
        #expect(encoded == encoded.sorted { $0.lexicographicallyPrecedes($1) }, "byte order is OSN order")
        #expect(keys.floor == Array("p/floor".utf8) && keys.meta == Array("p/meta".utf8))
        #expect(keys.node("n1") == Array("p/nodes/n1".utf8))
    }
}
