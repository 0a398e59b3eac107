// Path: Sources/SluicePageStore/OperationLog.swift — the replicated-state-machine interface that orders
// writes (each accepted one gets the next OSN), and its embedded single-node implementation: a
// write-ahead log file, records checksummed, a torn tail dropped on recovery.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// One logged operation on one object: page writes (applied all together or not at all), or a
/// create, delete or truncate of the object.
public struct LogRecord: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case write
        case create
        case delete
        /// Pages at or beyond `pageCount` are removed.
        case truncate(pageCount: UInt64)
    }

    public var kind: Kind
    public var objectID: UInt64
    public var pages: [(index: UInt64, payload: [UInt8])]

    public init(objectID: UInt64, pages: [(index: UInt64, payload: [UInt8])]) {
        self.kind = .write
        self.objectID = objectID
        self.pages = pages
    }

    public init(_ kind: Kind, objectID: UInt64) {
        precondition(kind != .write, "a write carries pages")
        self.kind = kind
        self.objectID = objectID
        self.pages = []
    }

    public static func == (a: LogRecord, b: LogRecord) -> Bool {
        a.kind == b.kind && a.objectID == b.objectID && a.pages.count == b.pages.count
            && zip(a.pages, b.pages).allSatisfy { $0.index == $1.index && $0.payload == $1.payload }
    }
}

public enum LogError: Error, Equatable {
    case syscall(SyscallError)
    case recordTooLarge(Int, max: Int)
}

/// Orders writes. `append` returns only once the record is durable (or throws: then it was not
/// accepted), with an OSN one above the previous: monotonic and gap-free. A replicated implementation
/// (a later issue: etcd) has the same contract, with network round trips in `append`.
public protocol OperationLog: AnyObject {
    /// OSN of the last accepted record (0: none): the point at which a read is ordered.
    var lastOSN: UInt64 { get }
    func append(_ record: LogRecord) throws(LogError) -> UInt64
    /// Every accepted record after `osn`, in order (recovery).
    func records(after osn: UInt64) throws(LogError) -> [(osn: UInt64, record: LogRecord)]
}

/// The embedded log: one file of records [length u32][crc32c u32][osn u64][object u64][kind u8]
/// [argument u64][page count u32] then per page [index u64][length u32][bytes]. `append` writes and fdatasyncs. Opening reads the
/// file back and stops at the first record that is cut short or fails its checksum (a crash mid-
/// append): everything before it was acknowledged, that one was not.
public final class EmbeddedLog: OperationLog {
    public static let recordSizeMax = 1 << 24
    /// osn, object, kind, argument, page count.
    static let bodyHeaderBytes = 8 + 8 + 1 + 8 + 4
    public let path: String
    public private(set) var lastOSN: UInt64 = 0
    private let fd: Int32
    private var endOffset: off_t = 0
    private var recovered: [(osn: UInt64, record: LogRecord)] = []

    public init(path: String) throws(LogError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .syscall(SyscallError("open(\(path))", Errno(rawValue: errno))) }
        self.path = path
        self.fd = fd
        try recover()
    }

    deinit { close(fd) }

    public func append(_ record: LogRecord) throws(LogError) -> UInt64 {
        let osn = lastOSN + 1
        var body: [UInt8] = []
        Self.put(osn, &body)
        Self.put(record.objectID, &body)
        switch record.kind {
        case .write: body.append(0); Self.put(UInt64(0), &body)
        case .create: body.append(1); Self.put(UInt64(0), &body)
        case .delete: body.append(2); Self.put(UInt64(0), &body)
        case .truncate(let count): body.append(3); Self.put(count, &body)
        }
        Self.put(UInt32(record.pages.count), &body)
        for page in record.pages {
            Self.put(page.index, &body)
            Self.put(UInt32(page.payload.count), &body)
            body += page.payload
        }
        guard body.count <= Self.recordSizeMax else { throw .recordTooLarge(body.count, max: Self.recordSizeMax) }
        var frame: [UInt8] = []
        Self.put(UInt32(body.count), &frame)
        Self.put(sluice_crc32c(0, body, body.count), &frame)
        frame += body
        let written = frame.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, endOffset) }
        guard written == frame.count else {
            throw .syscall(SyscallError("pwrite(\(path))", Errno(rawValue: written < 0 ? errno : EIO)))
        }
        guard fdatasync(fd) == 0 else { throw .syscall(SyscallError("fdatasync(\(path))", Errno(rawValue: errno))) }
        endOffset += off_t(frame.count)
        lastOSN = osn
        return osn
    }

    public func records(after osn: UInt64) throws(LogError) -> [(osn: UInt64, record: LogRecord)] {
        recovered.filter { $0.osn > osn }
    }

    /// Reads every whole record; truncates a torn tail so the next append starts clean.
    private func recover() throws(LogError) {
        var stat = stat()
        guard fstat(fd, &stat) == 0 else { throw .syscall(SyscallError("fstat(\(path))", Errno(rawValue: errno))) }
        var data = [UInt8](repeating: 0, count: Int(stat.st_size))
        let got = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard got == data.count else { throw .syscall(SyscallError("pread(\(path))", Errno(rawValue: errno))) }
        var offset = 0
        while offset + 8 <= data.count {
            let length = Int(Self.get(UInt32.self, data, offset))
            let crc = Self.get(UInt32.self, data, offset + 4)
            guard length >= Self.bodyHeaderBytes, offset + 8 + length <= data.count else { break }
            let body = Array(data[(offset + 8)..<(offset + 8 + length)])
            guard sluice_crc32c(0, body, body.count) == crc, let record = Self.decode(body) else { break }
            guard record.osn == lastOSN + 1 else { break }  // gap-free, or it is not ours
            recovered.append(record)
            lastOSN = record.osn
            offset += 8 + length
        }
        endOffset = off_t(offset)
        if offset < data.count, ftruncate(fd, endOffset) != 0 {
            throw .syscall(SyscallError("ftruncate(\(path))", Errno(rawValue: errno)))
        }
    }

    private static func decode(_ body: [UInt8]) -> (osn: UInt64, record: LogRecord)? {
        let osn = get(UInt64.self, body, 0)
        let object = get(UInt64.self, body, 8)
        let argument = get(UInt64.self, body, 17)
        let kind: LogRecord.Kind
        switch body[16] {
        case 0: kind = .write
        case 1: kind = .create
        case 2: kind = .delete
        case 3: kind = .truncate(pageCount: argument)
        default: return nil
        }
        let count = Int(get(UInt32.self, body, 25))
        guard kind == .write || count == 0 else { return nil }
        var offset = bodyHeaderBytes
        var pages: [(index: UInt64, payload: [UInt8])] = []
        for _ in 0..<count {
            guard offset + 12 <= body.count else { return nil }
            let index = get(UInt64.self, body, offset)
            let length = Int(get(UInt32.self, body, offset + 8))
            offset += 12
            guard offset + length <= body.count else { return nil }
            pages.append((index, Array(body[offset..<(offset + length)])))
            offset += length
        }
        guard offset == body.count else { return nil }
        return (osn, kind == .write ? LogRecord(objectID: object, pages: pages) : LogRecord(kind, objectID: object))
    }

    private static func put<T: FixedWidthInteger>(_ value: T, _ bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    private static func get<T: FixedWidthInteger>(_ type: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
