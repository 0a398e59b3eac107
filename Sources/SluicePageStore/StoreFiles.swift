// Path: Sources/SluicePageStore/StoreFiles.swift — the files beside a store's pages that make opening
// it safe: an exclusive lock (one open store per page file, across processes) and the format record
// (page size and format version, written at creation, checked at every open).
import Glibc
import SluiceCore
import SystemPackage

/// An exclusive `flock` on a lock file, holding the owner's pid as text (for the error a second
/// opener gets). Held until deinit closes the descriptor (or the process exits: the kernel drops it).
/// Take it before opening the log: recovery truncates a torn tail, which a live owner may be writing.
public final class StoreLock: Sendable {
    public let path: String
    private let fd: Int32
    /// Largest pid text read back from a lock file.
    static let pidBytesMax = 32

    /// Takes the lock on `path` (created if missing) without waiting. Throws `.locked` with the
    /// holder's pid when another open file description holds it, in this process or another.
    public init(path: String) throws(ObjectStoreError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .lockFile(SyscallError("open(\(path))", Errno(rawValue: errno))) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            let holder = Self.recordedPID(fd)
            close(fd)
            if code == EWOULDBLOCK { throw .locked(lockPath: path, holderPID: holder) }
            throw .lockFile(SyscallError("flock(\(path))", Errno(rawValue: code)))
        }
        let text = Array("\(getpid())\n".utf8)
        let written = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == text.count, ftruncate(fd, off_t(text.count)) == 0 else {
            let code = written < 0 ? errno : EIO
            close(fd)
            throw .lockFile(SyscallError("write(\(path))", Errno(rawValue: code)))
        }
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    /// The pid a lock file holds, or nil when it is empty or not a number (a holder between its
    /// `flock` and its write).
    static func recordedPID(_ fd: Int32) -> Int32? {
        var bytes = [UInt8](repeating: 0, count: pidBytesMax)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        let text = String(decoding: bytes.prefix(count), as: UTF8.self)
        return Int32(text.prefix { $0 != "\n" })
    }
}

/// What is wrong with a store's recorded format.
public enum FormatProblem: Sendable, Equatable, CustomStringConvertible {
    /// The store was created with `recorded` bytes per page and is opened with `opened`.
    case pageSizeMismatch(recorded: Int, opened: Int)
    /// A store older than format records: its first page does not check out at `opened` bytes.
    case unrecordedPageSizeMismatch(opened: Int)
    /// The record names a format version this code does not read.
    case unsupportedVersion(Int, supported: Int)
    /// The record is not one this code wrote.
    case unreadable
    /// Reading or writing the record failed.
    case io(SyscallError)

    public var description: String {
        switch self {
        case .pageSizeMismatch(let recorded, let opened):
            "the store was created with \(recorded)-byte pages, not \(opened): open it with its page size"
        case .unrecordedPageSizeMismatch(let opened):
            "the store has no format record and its pages do not check out at \(opened) bytes: open it with its page size"
        case .unsupportedVersion(let version, let supported): "format version \(version), this build reads \(supported)"
        case .unreadable: "not a store format record"
        case .io(let error): "\(error)"
        }
    }
}

/// The format record: `sluice-store format V page-size N`, one line, written when the store is
/// created (aside, fsynced, renamed), never rewritten.
enum FormatRecord {
    static let version = 1
    /// Largest record read back.
    static let bytesMax = 128

    static func text(pageSizeBytes: Int) -> String { "sluice-store format \(version) page-size \(pageSizeBytes)\n" }

    /// The recorded page size, nil when no record exists. Throws on a record this code cannot read.
    static func read(path: String) throws(ObjectStoreError) -> Int? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            guard errno == ENOENT else { throw .format(path: path, .io(SyscallError("open(\(path))", Errno(rawValue: errno)))) }
            return nil
        }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: bytesMax)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw .format(path: path, .io(SyscallError("read(\(path))", Errno(rawValue: errno)))) }
        let words = String(decoding: bytes.prefix(count), as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard words.count == 5, words[0] == "sluice-store", words[1] == "format", words[3] == "page-size",
              let version = Int(words[2]), let pageSizeBytes = Int(words[4])
        else { throw .format(path: path, .unreadable) }
        guard version == Self.version else { throw .format(path: path, .unsupportedVersion(version, supported: Self.version)) }
        return pageSizeBytes
    }

    /// Writes the record durably: aside, fsync, rename (the caller syncs the directory).
    static func write(path: String, pageSizeBytes: Int) throws(ObjectStoreError) {
        let temporary = path + ".tmp"
        let bytes = Array(text(pageSizeBytes: pageSizeBytes).utf8)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .format(path: path, .io(SyscallError("open(\(temporary))", Errno(rawValue: errno)))) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        let code = errno
        close(fd)
        guard written == bytes.count, synced else {
            throw .format(path: path, .io(SyscallError("write(\(temporary))", Errno(rawValue: written < 0 || !synced ? code : EIO))))
        }
        guard rename(temporary, path) == 0 else {
            throw .format(path: path, .io(SyscallError("rename(\(path))", Errno(rawValue: errno))))
        }
    }
}

/// The size of the file at `path`, nil when `stat` fails (errno set).
func fileSizeBytes(_ path: String) -> Int? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return Int(info.st_size)
}
