// Path: Tests/SluiceGatewayTests/IntermediateTestSupport.swift — what the intermediate-device tests share:
// temporary directories, objects with known bytes, byte flips on disk.
import Glibc
@testable import SluiceGateway

/// A fresh directory under /tmp, removed with everything in it on deinit.
final class TemporaryDirectory: Sendable {
    let path: String

    init(_ prefix: String = "sluice-gw") {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        precondition(mkdtemp(&template) != nil, "mkdtemp: errno \(errno)")
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { removeTree(path) }
}

/// Removes `path` and, for a directory, everything below it. Missing paths are fine.
func removeTree(_ path: String) {
    if let handle = opendir(path) {
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(handle)
        for name in names { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}

/// `count` bytes that differ from object to object (`seed`) and from offset to offset. Eight bytes per
/// step: a byte-by-byte loop is slow in debug builds, and objects here are up to 16 MiB.
func objectBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            var word = state.littleEndian
            let take = min(8, count - offset)
            withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: take) }
            offset += take
        }
    }
    return bytes
}

/// Writes `bytes` to `root/key` (creating the file, replacing its content).
func writeObject(_ root: String, _ key: String, _ bytes: [UInt8]) {
    let path = root + "/" + key
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    precondition(fd >= 0, "open \(path): errno \(errno)")
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    precondition(written == bytes.count, "write \(path)")
    close(fd)
}

/// Inverts the byte at `offset` (negative: from the end) of the file at `path`.
func flipByte(_ path: String, at offset: Int) {
    let fd = open(path, O_RDWR | O_CLOEXEC)
    precondition(fd >= 0, "open \(path): errno \(errno)")
    defer { close(fd) }
    var info = stat()
    precondition(fstat(fd, &info) == 0, "fstat")
    let at = off_t(offset >= 0 ? offset : Int(info.st_size) + offset)
    var byte: UInt8 = 0
    precondition(pread(fd, &byte, 1, at) == 1, "pread")
    byte ^= 0xFF
    precondition(pwrite(fd, &byte, 1, at) == 1, "pwrite")
}

func fileSize(_ path: String) -> Int {
    var info = stat()
    return fstatat(AT_FDCWD, path, &info, 0) == 0 ? Int(info.st_size) : -1
}

/// Small units so cache tests move little data: 64 KiB chunks of 4 blocks of 4 sectors of 4 KiB.
let smallUnits = try! GatewayUnits(chunkBytes: 64 << 10, blockBytes: 16 << 10, sectorBytes: 4 << 10)

/// The expected bytes of sectors `run` of chunk `chunk` of `object`.
func expectedBytes(_ object: [UInt8], chunk: UInt64, run: Range<Int>, units: GatewayUnits) -> [UInt8] {
    let base = Int(chunk) * units.chunkBytes
    let start = base + run.lowerBound * units.sectorBytes
    let end = min(base + run.upperBound * units.sectorBytes, object.count)
    return Array(object[start..<end])
}
