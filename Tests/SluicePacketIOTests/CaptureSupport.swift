import Glibc
import SluiceCore
import SluiceTestSupport
import Testing

/// Captures written by tools other than Sluice (scapy, via scripts/make-captures.py), made once per
/// test process in a temporary directory. CI installs python3-scapy (make deps), so there a missing
/// scapy is a failure; elsewhere the tests that need it skip.
enum Captures {
    static let packageRoot: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    static let sample = packageRoot + "/Tests/Fixtures/sample.pcap"

    static let directory: String? = {
        guard access("/usr/bin/python3", X_OK) == 0 else { return nil }
        var template = Array("/tmp/sluice-captures-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { return nil }
        let directory = String(cString: template)
        let status = run(["/usr/bin/python3", packageRoot + "/scripts/make-captures.py", directory])
        return status == 0 ? directory : nil
    }()

    static var available: Bool { directory != nil }
    static let inCI = getenv("CI").map { String(cString: $0) == "true" } ?? false

    static func path(_ name: String) -> String { (directory ?? "/nonexistent") + "/" + name }

    /// A fresh path in the capture directory for test output.
    static func output(_ name: String) -> String { path("out-\(getpid())-\(name)") }
}

/// Runs a program and waits; returns its exit status (-1 if it could not start). Output is discarded
/// unless `capture` is given, which then receives stdout.
@discardableResult
func run(_ arguments: [String], capture: UnsafeMutablePointer<String>? = nil) -> Int32 {
    var pipe: [Int32] = [-1, -1]
    if capture != nil { guard Glibc.pipe(&pipe) == 0 else { return -1 } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if capture != nil {
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipe[0])
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    var argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
    if capture != nil { close(pipe[1]) }
    guard rc == 0 else {
        if capture != nil { close(pipe[0]) }
        return -1
    }
    if let capture {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(pipe[0], &chunk, chunk.count)
            if count <= 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        close(pipe[0])
        capture.pointee = String(decoding: bytes, as: UTF8.self)
    }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

/// A trait for tests that need the tool-made captures: they run when scapy is there and must run in CI.
let needsCaptures = Testing.ConditionTrait.enabled(if: Captures.available || Captures.inCI,
                                                   "needs /usr/bin/python3 with scapy (python3-scapy) to make captures")

/// A classic pcap file written byte by byte, for headers and records no tool writes (a snapshot
/// length below the records, reserved link-type bits, 2^32 s timestamp jumps, jumbo frames).
struct RawCapture {
    struct Record {
        var seconds: UInt32
        var fraction: UInt32
        var bytes: [UInt8]
        var wireLength: UInt32? = nil
    }

    var snapshotLength: UInt32 = 65_535
    var linkTypeField: UInt32 = 1
    var magic: UInt32 = 0xA1B2_C3D4
    var records: [Record] = []

    /// An Ethernet/IPv4/UDP frame of `length` bytes (198.18.0.1:9 to 198.18.0.2:9, payload counting up).
    static func frame(length: Int, seed: Int = 0) -> [UInt8] {
        precondition(length >= 42, "Ethernet, IPv4 and UDP headers")
        var bytes: [UInt8] = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]
        let ipLength = UInt16(truncatingIfNeeded: length - 14)  // wraps above 64 KiB: bytes for the reader only
        let udpLength = ipLength &- 20
        bytes += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xFF), 0, 0, 0, 0, 64, 17, 0, 0,
                  198, 18, 0, 1, 198, 18, 0, 2]
        bytes += [0, 9, 0, 9, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), 0, 0]
        while bytes.count < length { bytes.append(UInt8(truncatingIfNeeded: bytes.count &+ seed)) }
        return Array(bytes.prefix(length))
    }

    var bytes: [UInt8] {
        var out: [UInt8] = []
        func put32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        func put16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        put32(magic); put16(2); put16(4); put32(0); put32(0); put32(snapshotLength); put32(linkTypeField)
        for record in records {
            put32(record.seconds); put32(record.fraction); put32(UInt32(record.bytes.count))
            put32(record.wireLength ?? UInt32(record.bytes.count))
            out += record.bytes
        }
        return out
    }

    func write(to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SpawnFailure("open \(path): errno \(errno)") }
        defer { close(fd) }
        let data = bytes
        let written = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == data.count else { throw SpawnFailure("short write to \(path)") }
    }
}

struct SpawnFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A fresh path under /tmp for this test process.
func temporaryPath(_ name: String) -> String { "/tmp/sluice-test-\(getpid())-\(name)" }

/// The whole contents of a file, or nil.
func fileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count <= 0 { break }
        bytes += chunk[0..<count]
    }
    return bytes
}


/// Runs `sluice` with `arguments`; returns its exit status, stdout and stderr. Bounded by the
/// commands the tests give it (short replays of small captures).
func runSluice(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let binary = try #require(sluiceBinary(), "build with `swift build --build-tests` first")
    let errorPath = temporaryPath("stderr-\(UInt64.random(in: 0...UInt64.max))")
    defer { unlink(errorPath) }
    var stdout = ""
    let status = run(["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>\"\(errorPath)\"", binary] + arguments, capture: &stdout)
    let stderr = String(decoding: fileBytes(errorPath) ?? [], as: UTF8.self)
    return (status, stdout, stderr)
}

extension BufferPool {
    /// The frame in the buffer `item` names (as long as its metadata says), copied out; the buffer is freed.
    func takeFrame(_ item: UInt64) -> [UInt8] {
        let index = UInt32(item)
        let length = Int(metadata(at: index).pointee.length)
        let frame = Array(UnsafeRawBufferPointer(rebasing: bytes(at: index)[0..<length]))
        freeIndex(index)
        return frame
    }
}
