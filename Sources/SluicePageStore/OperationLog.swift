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
    /// One condition per page, decided when the record is applied (a shared log's proposals), or empty:
    /// the record was checked before it was logged (the embedded log, which never stores conditions).
    public var conditions: [WriteCondition]

    public init(objectID: UInt64, pages: [(index: UInt64, payload: [UInt8])], conditions: [WriteCondition] = []) {
        precondition(conditions.isEmpty || conditions.count == pages.count, "one condition per page, or none")
        self.kind = .write
        self.objectID = objectID
        self.pages = pages
        self.conditions = conditions
    }

    public init(_ kind: Kind, objectID: UInt64) {
        precondition(kind != .write, "a write carries pages")
        self.kind = kind
        self.objectID = objectID
        self.pages = []
        self.conditions = []
    }

    public static func == (a: LogRecord, b: LogRecord) -> Bool {
        a.kind == b.kind && a.objectID == b.objectID && a.pages.count == b.pages.count && a.conditions == b.conditions
            && zip(a.pages, b.pages).allSatisfy { $0.index == $1.index && $0.payload == $1.payload }
    }
}

public enum LogError: Error, Equatable {
    case syscall(SyscallError)
    /// The log's first record is not the one after the checkpoint: records are missing.
    case gap(expected: UInt64, found: UInt64)
    /// The file at `path` is not a log this code wrote (see `NotALogReason`); nothing was changed.
    case notALog(path: String, NotALogReason)
    case recordTooLarge(Int, max: Int)
    /// Another open log (this process or another) holds `path`: opening it would truncate or append
    /// under a live owner.
    case inUse(path: String)
}

/// Why a file is not a log: what was found where a log's header or records should be.
public enum NotALogReason: Sendable, Equatable {
    /// Non-zero bytes, fewer than a header.
    case shorterThanHeader(sizeBytes: Int)
    /// The first four bytes are not the log's magic.
    case badMagic(UInt32)
    /// The record at this file offset fails its CRC and valid records follow: corruption in the
    /// middle, so the tail is not truncated.
    case corruptRecordBeforeValidOnes(offset: Int)
}

/// Orders writes. `append` returns only once the record is durable (or throws: then it was not
/// accepted), with an OSN one above the previous: monotonic and gap-free. A replicated implementation
/// (a later issue: etcd) has the same contract, with network round trips in `append`.
public protocol OperationLog: AnyObject {
    /// OSN of the last accepted record (0: none): the point at which a read is ordered.
    var lastOSN: UInt64 { get }
    /// Appends records as one group commit: all durable, with consecutive OSNs, or none accepted.
    /// Returns the first record's OSN. Blocks for the durability round trip (a disk flush here).
    func append(batch records: [LogRecord]) throws(LogError) -> UInt64
    /// Every accepted record after `osn`, in order (recovery).
    func records(after osn: UInt64) throws(LogError) -> [(osn: UInt64, record: LogRecord)]
    /// Records up to and including `lastOSN` are covered by a durable checkpoint: the log may drop
    /// them (replay is bounded by what came after). OSNs continue from `lastOSN`.
    func compact() throws(LogError)
}

extension OperationLog {
    /// One record, durable before return: its OSN.
    public func append(_ record: LogRecord) throws(LogError) -> UInt64 { try append(batch: [record]) }
}

/// The embedded log: a 16-byte header [magic u32][zero u32][base OSN u64] (records up to the base
/// were compacted away), then records [length u32][crc32c u32][osn u64][object u64][kind u8]
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
    /// Holds the exclusive lock on `path + ".lock"` for the log's lifetime.
    private let lockFD: Int32
    private let ring: OpaquePointer
    private var endOffset: off_t = 0
    private var recovered: [(osn: UInt64, record: LogRecord)] = []

    public init(path: String) throws(LogError) {
        // Locked before anything is read or truncated, so a second opener (a store opened without its
        // StoreLock first) cannot cut a live owner's tail. A lock file of its own: the log's descriptor
        // is registered with io_uring, which keeps it (and a lock on it) alive past close.
        let lockPath = path + ".lock"
        let lockFD = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockFD >= 0 else { throw .syscall(SyscallError("open(\(lockPath))", Errno(rawValue: errno))) }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            let lockErrno = errno
            close(lockFD)
            if lockErrno == EWOULDBLOCK { throw .inUse(path: path) }
            throw .syscall(SyscallError("flock(\(lockPath))", Errno(rawValue: lockErrno)))
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let openErrno = errno
            close(lockFD)
            throw .syscall(SyscallError("open(\(path))", Errno(rawValue: openErrno)))
        }
        var error: Int32 = 0
        guard let ring = sluice_uring_new(4, &error) else {
            close(fd)
            close(lockFD)
            throw .syscall(SyscallError("io_uring_queue_init", Errno(rawValue: -error)))
        }
        var fds = [fd]
        let rc = sluice_uring_register_files(ring, &fds, 1)
        guard rc == 0 else {
            sluice_uring_delete(ring)
            close(fd)
            close(lockFD)
            throw .syscall(SyscallError("io_uring_register_files(\(path))", Errno(rawValue: -rc)))
        }
        self.path = path
        self.fd = fd
        self.lockFD = lockFD
        self.ring = ring
        try recover()
    }

    deinit {
        sluice_uring_delete(ring)
        close(fd)
        close(lockFD)  // last: the log is no longer touched
    }

    public func append(batch records: [LogRecord]) throws(LogError) -> UInt64 {
        precondition(!records.isEmpty, "a group commit has records")
        if let failure { throw failure }
        let first = lastOSN + 1
        var frames: [UInt8] = []
        for (offset, record) in records.enumerated() {
            let body = Self.encode(record, osn: first + UInt64(offset))
            guard body.count <= Self.recordSizeMax else { throw .recordTooLarge(body.count, max: Self.recordSizeMax) }
            Self.put(UInt32(body.count), &frames)
            Self.put(sluice_crc32c(0, body, body.count), &frames)
            frames += body
        }
        try writeAndSync(frames)
        endOffset += off_t(frames.count)
        lastOSN = first + UInt64(records.count - 1)
        groupCommits += 1
        return first
    }

    /// Set when the ring failed mid-append: every later append throws it.
    private var failure: LogError?

    /// Group commits done (each one write and one fdatasync), for tests and stats.
    public private(set) var groupCommits: UInt64 = 0

    /// The write, then (linked) the fdatasync, in one submission. Either failing fails the append;
    /// the records past `endOffset` are then garbage the next append overwrites.
    private func writeAndSync(_ frames: [UInt8]) throws(LogError) {
        var completions = [sluice_uring_completion](repeating: sluice_uring_completion(), count: 2)
        var reaped = 0
        // Prepare, submit and reap inside one borrow of `frames`: the kernel reads it until the
        // write completes.
        let submitted = frames.withUnsafeBytes { bytes -> Int32 in
            var rc = sluice_uring_prep_write(ring, 0, bytes.baseAddress, UInt32(bytes.count), UInt64(endOffset), 1, 1)
            precondition(rc == 0, "the log's ring has room for one write and one flush")
            rc = sluice_uring_prep_fsync(ring, 0, 1, 0, 2)
            precondition(rc == 0, "the log's ring has room for one write and one flush")
            rc = sluice_uring_submit(ring, 2)
            guard rc >= 0 else { return rc }
            while reaped < 2 {
                reaped += Int(completions.withUnsafeMutableBufferPointer {
                    sluice_uring_reap(ring, $0.baseAddress! + reaped, UInt32(2 - reaped))
                })
                if reaped < 2 {
                    let waited = sluice_uring_submit(ring, 1)
                    if waited < 0 { return waited }
                }
            }
            return rc
        }
        // Any failure poisons the log: after a failed submit the ring may hold our SQEs; after a
        // failed write or flush the file may hold records that were never acknowledged (and a later
        // append at the same offset could leave some of them readable). A reopen recovers what is
        // on disk and truncates the rest.
        var error: LogError?
        if submitted < 0 {
            error = .syscall(SyscallError("io_uring_submit(\(path))", Errno(rawValue: -submitted)))
        }
        for completion in completions where error == nil {
            if completion.user_data == 1, completion.result != Int32(frames.count) {
                error = .syscall(SyscallError("write(\(path))", Errno(rawValue: completion.result < 0 ? -completion.result : EIO)))
            }
            if completion.user_data == 2, completion.result < 0 {
                error = .syscall(SyscallError("fdatasync(\(path))", Errno(rawValue: -completion.result)))
            }
        }
        if let error {
            failure = error
            throw error
        }
    }

    private static func encode(_ record: LogRecord, osn: UInt64) -> [UInt8] {
        var body: [UInt8] = []
        put(osn, &body)
        put(record.objectID, &body)
        switch record.kind {
        case .write: body.append(0); put(UInt64(0), &body)
        case .create: body.append(1); put(UInt64(0), &body)
        case .delete: body.append(2); put(UInt64(0), &body)
        case .truncate(let count): body.append(3); put(count, &body)
        }
        put(UInt32(record.pages.count), &body)
        for page in record.pages {
            put(page.index, &body)
            put(UInt32(page.payload.count), &body)
            body += page.payload
        }
        return body
    }

    public func records(after osn: UInt64) throws(LogError) -> [(osn: UInt64, record: LogRecord)] {
        recovered.filter { $0.osn > osn }
    }

    /// Reads every whole record; truncates a torn tail so the next append starts clean.
    static let headerBytes = 16
    static let magic: UInt32 = 0x534C_4C47  // "SLLG"

    /// Reads every whole record after the header's base; truncates a torn tail so the next append
    /// starts clean. Records at or below the base (a compaction cut short) are skipped.
    private func recover() throws(LogError) {
        var stat = stat()
        guard fstat(fd, &stat) == 0 else { throw .syscall(SyscallError("fstat(\(path))", Errno(rawValue: errno))) }
        var data = [UInt8](repeating: 0, count: Int(stat.st_size))
        let got = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard got == data.count else { throw .syscall(SyscallError("pread(\(path))", Errno(rawValue: errno))) }
        if data.count < Self.headerBytes {
            guard data.allSatisfy({ $0 == 0 }) else { throw .notALog(path: path, .shorterThanHeader(sizeBytes: data.count)) }
            try writeHeader(base: 0)
            endOffset = off_t(Self.headerBytes)
            return
        }
        guard Self.get(UInt32.self, data, 0) == Self.magic else { throw .notALog(path: path, .badMagic(Self.get(UInt32.self, data, 0))) }
        let base = Self.get(UInt64.self, data, 8)
        lastOSN = base
        var offset = Self.headerBytes
        while offset + 8 <= data.count {
            let length = Int(Self.get(UInt32.self, data, offset))
            let crc = Self.get(UInt32.self, data, offset + 4)
            guard length >= Self.bodyHeaderBytes, offset + 8 + length <= data.count else { break }
            let body = Array(data[(offset + 8)..<(offset + 8 + length)])
            guard sluice_crc32c(0, body, body.count) == crc, let record = Self.decode(body) else {
                // A torn append is the last thing in the file. A bad record with a good one after it
                // is corruption in the middle: acknowledged records follow, so refuse to truncate.
                if Self.validRecord(data, at: offset + 8 + length) {
                    throw .notALog(path: path, .corruptRecordBeforeValidOnes(offset: offset))
                }
                break
            }
            if record.osn <= base {  // compacted, the truncate did not happen before a crash
                offset += 8 + length
                continue
            }
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

    private func writeHeader(base: UInt64) throws(LogError) {
        var header: [UInt8] = []
        Self.put(Self.magic, &header)
        Self.put(UInt32(0), &header)
        Self.put(base, &header)
        let written = header.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == header.count else {
            throw .syscall(SyscallError("pwrite(\(path) header)", Errno(rawValue: written < 0 ? errno : EIO)))
        }
        guard fdatasync(fd) == 0 else { throw .syscall(SyscallError("fdatasync(\(path))", Errno(rawValue: errno))) }
    }

    /// Header first (durable: from now on records up to `lastOSN` are skipped), then the records go.
    public func compact() throws(LogError) {
        if let failure { throw failure }
        try writeHeader(base: lastOSN)
        guard ftruncate(fd, off_t(Self.headerBytes)) == 0 else {
            throw .syscall(SyscallError("ftruncate(\(path))", Errno(rawValue: errno)))
        }
        guard fdatasync(fd) == 0 else { throw .syscall(SyscallError("fdatasync(\(path))", Errno(rawValue: errno))) }
        endOffset = off_t(Self.headerBytes)
        recovered = []
        compactions += 1
    }

    /// Compactions done (each after a checkpoint).
    public private(set) var compactions: UInt64 = 0

    /// Bytes of records in the file now (what a recovery would replay).
    public var recordBytes: Int { Int(endOffset) - Self.headerBytes }

    /// Whether a whole record with a good checksum starts at `offset`.
    private static func validRecord(_ data: [UInt8], at offset: Int) -> Bool {
        guard offset + 8 <= data.count else { return false }
        let length = Int(get(UInt32.self, data, offset))
        guard length >= bodyHeaderBytes, offset + 8 + length <= data.count else { return false }
        let body = Array(data[(offset + 8)..<(offset + 8 + length)])
        return sluice_crc32c(0, body, body.count) == get(UInt32.self, data, offset + 4) && decode(body) != nil
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
