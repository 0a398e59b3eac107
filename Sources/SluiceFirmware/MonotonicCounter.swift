// Path: Sources/SluiceFirmware/MonotonicCounter.swift — the firmware-update attempt counter: what a
// counter must do, and the software counter for machines without a TPM (weaker: see docs/FIRMWARE.md).
import Crypto
import Foundation
import SluiceCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A counter that only goes up. One per device. Callers serialise increments of one device (the
/// update flow holds the device's lock); reads may run any time.
public protocol MonotonicCounter: Sendable {
    /// "tpm" or "software": what the guarantee rests on (logged and reported).
    var kind: String { get }
    /// The value, or nil while the counter is defined but was never incremented (a TPM counter reads
    /// "uninitialised" until its first increment).
    func read() throws(FirmwareError) -> UInt64?
    /// Adds one (defining the counter first if it does not exist yet) and returns the new value.
    func increment() throws(FirmwareError) -> UInt64
}

/// A file-backed counter: `value` and an HMAC-SHA256 of its path and value under the node's key (a
/// copy from another device's file does not verify), replaced by write +
/// fsync + rename + directory fsync. It detects edits and corruption, not a rollback to an older valid
/// copy of the file (a TPM counter does): labelled weaker wherever it is reported.
public struct SoftwareCounter: MonotonicCounter {
    public let path: String
    private let key: SymmetricKey
    public var kind: String { "software" }

    /// `key`: the MAC key (derived from the node's signing key by `FirmwareKeys`).
    public init(path: String, key: SymmetricKey) {
        self.path = path
        self.key = key
    }

    public func read() throws(FirmwareError) -> UInt64? {
        guard let bytes = try FileIO.readIfExists(path) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let fields = text.split(separator: "\n")
        guard fields.count == 2, fields[0].hasPrefix("value "), fields[1].hasPrefix("hmac "),
              let value = UInt64(fields[0].dropFirst(6)) else {
            throw .counterTampered(path: path, reason: "not a counter file")
        }
        let expected = Self.hex(Array(HMAC<SHA256>.authenticationCode(for: Array((path + "\n" + fields[0]).utf8), using: key)))
        guard expected == String(fields[1].dropFirst(5)) else { throw .counterTampered(path: path, reason: "MAC mismatch") }
        return value
    }

    public func increment() throws(FirmwareError) -> UInt64 {
        let next = (try read() ?? 0) + 1
        let line = "value \(next)"
        let mac = Self.hex(Array(HMAC<SHA256>.authenticationCode(for: Array((path + "\n" + line).utf8), using: key)))
        try FileIO.replace(path, with: Array("\(line)\nhmac \(mac)\n".utf8))
        return next
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
}

/// Durable file operations of the store: whole-file reads, replace by rename with fsyncs, appends.
enum FileIO {
    static func readIfExists(_ path: String) throws(FirmwareError) -> [UInt8]? {
        var status = stat()
        if lstat(path, &status) != 0 {
            if errno == ENOENT { return nil }
            throw .system(SyscallError("lstat", Errno(rawValue: errno)), path: path)
        }
        return try read(path)
    }

    /// `path` is a directory itself, not a symlink to one (nil when absent).
    static func isRealDirectory(_ path: String) throws(FirmwareError) -> Bool? {
        var status = stat()
        if lstat(path, &status) != 0 {
            if errno == ENOENT { return nil }
            throw .system(SyscallError("lstat", Errno(rawValue: errno)), path: path)
        }
        return (status.st_mode & S_IFMT) == S_IFDIR
    }

    static func read(_ path: String) throws(FirmwareError) -> [UInt8] {
        do {
            let fd = try FileDescriptor.open(path, .readOnly, options: [.noFollow])
            defer { try? fd.close() }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
                if count == 0 { break }
                bytes += chunk[0..<count]
                guard bytes.count <= FirmwareLimits.fileBytesMax else {
                    throw FirmwareError.invalid("\(path) is over \(FirmwareLimits.fileBytesMax) bytes")
                }
            }
            return bytes
        } catch let error as Errno {
            throw .system(SyscallError("read", error), path: path)
        } catch let error as FirmwareError {
            throw error
        } catch {
            throw .invalid("\(path): \(error)")
        }
    }

    /// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
    /// the directory: after a crash the file is the old or the new content, whole.
    static func replace(_ path: String, with bytes: [UInt8]) throws(FirmwareError) {
        let temporary = path + ".tmp"
        do {
            // A stale temporary (a crash) or anything planted there (a symlink to another file) is
            // removed, never written through: the new one is created exclusively, not following links.
            if unlink(temporary) != 0, errno != ENOENT { throw Errno(rawValue: errno) }
            let fd = try FileDescriptor.open(temporary, .writeOnly, options: [.create, .exclusiveCreate, .noFollow],
                                             permissions: [.ownerReadWrite])
            do {
                _ = try fd.writeAll(bytes)
                try sync(fd)
                try fd.close()
            } catch {
                try? fd.close()
                throw error
            }
            guard rename(temporary, path) == 0 else { throw Errno(rawValue: errno) }
            try syncDirectory(of: path)
        } catch let error as Errno {
            throw .system(SyscallError("write", error), path: path)
        } catch {
            throw .invalid("\(path): \(error)")
        }
    }

    /// Appends one line and fsyncs (the update journal).
    static func appendLine(_ path: String, _ line: String) throws(FirmwareError) {
        do {
            let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .append, .noFollow], permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            // Bounded: past `journalBytesMax` the journal starts again with a line saying so.
            var status = stat()
            if fstat(fd.rawValue, &status) == 0, Int(status.st_size) > FirmwareLimits.journalBytesMax {
                guard ftruncate(fd.rawValue, 0) == 0 else { throw Errno(rawValue: errno) }
                _ = try fd.writeAll(Array("(journal restarted: it passed \(FirmwareLimits.journalBytesMax) bytes)\n".utf8))
            }
            _ = try fd.writeAll(Array((line + "\n").utf8))
            try sync(fd)
        } catch let error as Errno {
            throw .system(SyscallError("append", error), path: path)
        } catch {
            throw .invalid("\(path): \(error)")
        }
    }

    static func syncDirectory(of path: String) throws(Errno) {
        let directory = (path as NSString).deletingLastPathComponent
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(directory.isEmpty ? "." : directory, .readOnly) } catch { throw error as? Errno ?? .ioError }
        defer { try? fd.close() }
        try sync(fd)
    }

    static func sync(_ fd: FileDescriptor) throws(Errno) {
        guard fsync(fd.rawValue) == 0 else { throw Errno(rawValue: errno) }
    }
}

/// Bounds of the firmware store.
public enum FirmwareLimits {
    /// Largest file read whole (an image, a record).
    public static let fileBytesMax = 256 << 20
    /// Devices one node checks.
    public static let devicesMax = 64
    /// The update journal of a device starts again past this size.
    public static let journalBytesMax = 1 << 20
    /// Longest device name (a directory name: letters, digits, `-`, `_`, `.`).
    public static let deviceNameBytesMax = 64
}
