import Glibc
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
