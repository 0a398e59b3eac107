// Path: Tests/SluiceTestSupport/ChildProcess.swift — the built `sluice` binary run as a child of a
// test: stdout read line by line with timeouts, stderr kept in a file, signals, bounded waits.
import Glibc

/// The built `sluice` next to the test bundle (`swift build --build-tests` builds both), or nil.
public func sluiceBinary() -> String? { builtProduct("sluice") }

/// `<build>/<configuration>/<name>` found from this test runner, which runs from `<build>/debug/`
/// (`<Package>PackageTests.xctest`, or a binary inside a bundle): the runner's own configuration when
/// `configuration` is nil. Nil when no such file exists.
public func builtProduct(_ name: String, configuration: String? = nil) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard count > 0 else { return nil }
    var path = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    for _ in 0..<4 {
        guard let slash = path.lastIndex(of: "/") else { return nil }
        path = String(path[..<slash])
        let directory: String
        if let configuration {
            guard let configurationSlash = path.lastIndex(of: "/"), path.hasSuffix("/debug") else { continue }
            directory = String(path[..<configurationSlash]) + "/" + configuration
        } else {
            directory = path
        }
        let candidate = directory + "/" + name
        if access(candidate, F_OK) == 0 { return candidate }
        if configuration != nil { return nil }
    }
    return nil
}

public struct SpawnError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A running child. Its stdout is a pipe read by `readLine`; its stderr goes to `stderrPath`.
/// `deinit` kills (SIGKILL) and reaps a child still running, so a failed test leaves nothing behind.
public final class ChildProcess {
    public let pid: pid_t
    public let stderrPath: String
    private let stdoutFD: Int32
    private var buffered: [UInt8] = []
    private var exitStatus: Int32?

    /// Starts `arguments[0]` with `arguments`.
    public init(_ arguments: [String]) throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw SpawnError("pipe: errno \(errno)") }
        // Close-on-exec on every descriptor here, so a child spawned meanwhile by another test holds
        // none of them (the dup2 onto 0-2 in this child clears the flag on its copies).
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        var template = Array("/tmp/sluice-child-stderr-XXXXXX".utf8CString)
        let stderrFD = mkstemp(&template)
        guard stderrFD >= 0 else { throw SpawnError("mkstemp: errno \(errno)") }
        _ = fcntl(stderrFD, F_SETFD, FD_CLOEXEC)
        stderrPath = String(cString: template)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, ends[1], STDOUT_FILENO)
        posix_spawn_file_actions_adddup2(&actions, stderrFD, STDERR_FILENO)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
        close(ends[1])
        close(stderrFD)
        guard result == 0 else {
            close(ends[0])
            throw SpawnError("posix_spawn \(arguments[0]): \(result)")
        }
        self.pid = pid
        stdoutFD = ends[0]
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        close(stdoutFD)
        unlink(stderrPath)
    }

    /// The next stdout line, or nil at end of output or after `timeoutMs`.
    public func readLine(timeoutMs: Int) -> String? {
        let deadline = Self.nowMs() + timeoutMs
        while true {
            if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                return line
            }
            let left = deadline - Self.nowMs()
            guard left > 0 else { return nil }
            var descriptor = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, Int32(left)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(stdoutFD, &chunk, chunk.count)
            guard count > 0 else { return nil }
            buffered += chunk[0..<count]
            precondition(buffered.count < 1 << 20, "child wrote over 1 MiB without a newline")
        }
    }

    /// Every stdout line until the child closes its stdout or `timeoutMs` passes.
    public func remainingLines(timeoutMs: Int) -> [String] {
        var lines: [String] = []
        let deadline = Self.nowMs() + timeoutMs
        while let line = readLine(timeoutMs: max(deadline - Self.nowMs(), 0)) { lines.append(line) }
        return lines
    }

    public func signal(_ number: Int32) { kill(pid, number) }

    /// Waits up to `timeoutMs` for the child to exit; its exit code (128 + n for signal n), or nil.
    public func wait(timeoutMs: Int) -> Int32? {
        if let exitStatus { return exitStatus }
        let deadline = Self.nowMs() + timeoutMs
        repeat {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let signalled = status & 0x7F
                exitStatus = signalled == 0 ? (status >> 8) & 0xFF : 128 + signalled
                return exitStatus
            }
            usleep(10_000)
        } while Self.nowMs() < deadline
        return nil
    }

    /// What the child wrote to stderr so far.
    public var stderrText: String {
        guard let file = fopen(stderrPath, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            bytes += chunk[0..<count]
            if count < chunk.count || bytes.count > 4 << 20 { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func nowMs() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1000 + now.tv_nsec / 1_000_000
    }
}

/// Runs a command to completion (bounded by `timeoutMs`); its exit code and stdout lines.
public func runCommand(_ arguments: [String], timeoutMs: Int = 60_000) throws -> (status: Int32, lines: [String], stderr: String) {
    let child = try ChildProcess(arguments)
    let lines = child.remainingLines(timeoutMs: timeoutMs)
    guard let status = child.wait(timeoutMs: 5_000) else { throw SpawnError("\(arguments.joined(separator: " ")) did not exit in time") }
    return (status, lines, child.stderrText)
}
