// Path: Sources/SluiceMigration/QEMUProcess.swift — one `qemu-system-x86_64` child process with its QMP
// socket, stdout and stderr in a run directory: start, wait until QMP answers, stop (quit, SIGTERM, SIGKILL).
//
// Spawned with posix_spawn rather than Foundation.Process: the child gets its stdout/stderr files and
// /dev/null as stdin set up before exec with no pipes to drain, its own process group, default
// signal dispositions (a test runner's ignored SIGPIPE is not inherited), and the exit status is read with waitpid, signal included, with no monitor
// thread of Foundation's in between.
import Foundation
import SluiceCore
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// How a QEMU process ended.
public enum QEMUExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(code: Int32)
    case signaled(signal: Int32)

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let signal): return "killed by signal \(signal)"
        }
    }
}

/// Why a QEMU process could not be started or did not become ready.
public enum QEMUProcessError: Error, Sendable, CustomStringConvertible {
    /// Making the run directory or opening its files failed.
    case runDirectory(path: String, SyscallError)
    /// posix_spawn failed (binary missing, not executable, ...).
    case spawn(binary: String, SyscallError)
    /// The QMP socket path is longer than a Unix socket address holds (107 bytes).
    case socketPathTooLong(String)
    /// QEMU exited before QMP answered: `stderrTail` says why in QEMU's words (e.g. a CPU model's
    /// missing features under `enforce`).
    case exitedBeforeReady(status: QEMUExitStatus, stderrTail: String)
    /// QMP did not answer within the deadline; the process was killed. `lastError` is the last
    /// connection attempt's failure.
    case notReady(afterMs: Int64, lastError: QMPError?, stderrTail: String)

    public var description: String {
        switch self {
        case .runDirectory(let path, let error): return "run directory \(path): \(error)"
        case .spawn(let binary, let error): return "spawn \(binary): \(error)"
        case .socketPathTooLong(let path): return "QMP socket path too long for a Unix socket: \(path)"
        case .exitedBeforeReady(let status, let tail): return "QEMU \(status) before QMP answered: \(tail)"
        case .notReady(let ms, let last, let tail):
            return "QEMU's QMP did not answer within \(ms) ms (last: \(last.map { "\($0)" } ?? "no socket")): \(tail)"
        }
    }
}

/// A running `qemu-system-x86_64` with its QMP connection.
///
/// Contract: `launch` returns only once QMP has answered (greeting and capabilities); the process is
/// then alive (until it is not: check `exitStatus`). Files in `runDirectory`: `qmp.sock`, `stdout.log`,
/// `stderr.log`. The process runs in its own process group. `terminate`, `kill` and `waitForExit` may be
/// called from any task; the child is reaped exactly once, and never signalled after it was reaped (its
/// pid may have been reused). Dropping the last reference to a process not yet reaped SIGKILLs and reaps it.
public final class QEMUProcess: Sendable {
    public struct Configuration: Sendable {
        public var binary: String
        /// QEMU's arguments, without `-qmp` (added) and without `-accel` (added from `accel` unless present).
        public var arguments: [String]
        /// Made if missing; holds the socket and the output files.
        public var runDirectory: String
        /// The accelerator: "tcg" unless told otherwise (KVM does not boot guests on these machines).
        public var accel: String
        /// How long QMP may take to answer after the spawn.
        public var readyTimeout: Duration

        public init(
            binary: String = "/usr/bin/qemu-system-x86_64", arguments: [String], runDirectory: String,
            accel: String = "tcg", readyTimeout: Duration = .seconds(15)
        ) {
            self.binary = binary
            self.arguments = arguments
            self.runDirectory = runDirectory
            self.accel = accel
            self.readyTimeout = readyTimeout
        }
    }

    public let pid: pid_t
    public let qmp: QMPClient
    public let runDirectory: String
    public let qmpSocketPath: String
    public let stdoutPath: String
    public let stderrPath: String
    /// The full argument vector QEMU was started with (binary first).
    public let commandLine: [String]
    /// Milliseconds from the spawn until QMP answered (greeting and capabilities).
    public let readyAfterMs: Int64

    private let reaped: Mutex<QEMUExitStatus?>

    private init(
        pid: pid_t, qmp: QMPClient, runDirectory: String, commandLine: [String], readyAfterMs: Int64
    ) {
        self.pid = pid
        self.qmp = qmp
        self.runDirectory = runDirectory
        self.qmpSocketPath = runDirectory + "/qmp.sock"
        self.stdoutPath = runDirectory + "/stdout.log"
        self.stderrPath = runDirectory + "/stderr.log"
        self.commandLine = commandLine
        self.readyAfterMs = readyAfterMs
        self.reaped = Mutex(nil)
    }

    deinit {
        let alreadyReaped = reaped.withLock { $0 != nil }
        if !alreadyReaped {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }

    /// Starts QEMU and waits until its QMP answers (within `readyTimeout`). On failure nothing is left
    /// running: a process that did not become ready is killed and reaped.
    public static func launch(_ configuration: Configuration) async throws(QEMUProcessError) -> QEMUProcess {
        let directory = configuration.runDirectory
        let socketPath = directory + "/qmp.sock"
        guard socketPath.utf8.count < 108 else { throw .socketPathTooLong(socketPath) }
        if mkdir(directory, 0o755) != 0, errno != EEXIST {
            throw .runDirectory(path: directory, SyscallError("mkdir", Errno(rawValue: errno)))
        }
        unlink(socketPath)
        var argv = [configuration.binary] + configuration.arguments
        if !configuration.arguments.contains("-accel") { argv += ["-accel", configuration.accel] }
        argv += ["-qmp", "unix:\(socketPath),server=on,wait=off"]

        let start = ContinuousClock.now
        let pid = try spawn(argv: argv, stdoutPath: directory + "/stdout.log", stderrPath: directory + "/stderr.log")
        let deadline = start.advanced(by: configuration.readyTimeout)
        var lastError: QMPError?
        while true {
            if let status = Self.poll(pid: pid) {
                throw .exitedBeforeReady(status: status, stderrTail: Self.tail(of: directory + "/stderr.log", maxBytes: 2048))
            }
            let now = ContinuousClock.now
            if now >= deadline {
                Glibc.kill(pid, SIGKILL)
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                throw .notReady(
                    afterMs: QMPClient.milliseconds(configuration.readyTimeout), lastError: lastError,
                    stderrTail: Self.tail(of: directory + "/stderr.log", maxBytes: 2048))
            }
            if access(socketPath, F_OK) == 0 {
                do {
                    let client = try await QMPClient.connect(path: socketPath, timeout: min(.seconds(5), deadline - now))
                    let readyMs = QMPClient.milliseconds(ContinuousClock.now - start)
                    return QEMUProcess(
                        pid: pid, qmp: client, runDirectory: directory, commandLine: argv, readyAfterMs: readyMs)
                } catch {
                    lastError = error
                }
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    private static func spawn(argv: [String], stdoutPath: String, stderrPath: String) throws(QEMUProcessError) -> pid_t {
        let outFD = open(stdoutPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard outFD >= 0 else { throw .runDirectory(path: stdoutPath, SyscallError("open", Errno(rawValue: errno))) }
        defer { close(outFD) }
        let errFD = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard errFD >= 0 else { throw .runDirectory(path: stderrPath, SyscallError("open", Errno(rawValue: errno))) }
        defer { close(errFD) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outFD, 1)
        posix_spawn_file_actions_adddup2(&actions, errFD, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArguments.append(nil)
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, &attributes, cArguments, environ)
        guard rc == 0 else { throw .spawn(binary: argv[0], SyscallError("posix_spawn", Errno(rawValue: rc))) }
        return pid
    }

    /// waitpid(WNOHANG) for a child not wrapped yet in a `QEMUProcess`.
    private static func poll(pid: pid_t) -> QEMUExitStatus? {
        var status: Int32 = 0
        let rc = waitpid(pid, &status, WNOHANG)
        guard rc == pid else { return nil }
        return decode(status)
    }

    private static func decode(_ status: Int32) -> QEMUExitStatus {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
        let signal = status & 0x7f
        if signal == 0 { return .exited(code: (status >> 8) & 0xff) }
        return .signaled(signal: signal)
    }

    /// The exit status once the process has ended and been reaped; nil while it runs.
    public var exitStatus: QEMUExitStatus? {
        reaped.withLock { reaped in
            if let status = reaped { return status }
            var status: Int32 = 0
            let rc = waitpid(pid, &status, WNOHANG)
            guard rc == pid else { return nil }
            reaped = Self.decode(status)
            return reaped
        }
    }

    /// Sends `signal` to the process unless it was already reaped (e.g. SIGSTOP/SIGCONT in tests).
    public func send(signal: Int32) {
        reaped.withLock { reaped in
            if reaped == nil { _ = Glibc.kill(pid, signal) }
        }
    }

    /// SIGKILL now (for tests and last resorts); reap it with `waitForExit`.
    public func kill() {
        send(signal: SIGKILL)
    }

    /// Waits up to `timeout` for the process to end; its exit status, nil if it still runs.
    public func waitForExit(timeout: Duration) async -> QEMUExitStatus? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            if let status = exitStatus { return status }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Stops QEMU: QMP `quit`, then SIGTERM after `grace`, then SIGKILL after another `grace`. Returns
    /// how it ended. The QMP connection is closed.
    @discardableResult
    public func terminate(grace: Duration = .seconds(3)) async -> QEMUExitStatus {
        if let status = exitStatus { return status }
        if !qmp.isClosed {
            try? await qmp.quit(timeout: grace)
        }
        if let status = await waitForExit(timeout: grace) {
            await qmp.close()
            return status
        }
        send(signal: SIGTERM)
        if let status = await waitForExit(timeout: grace) {
            await qmp.close()
            return status
        }
        send(signal: SIGKILL)
        await qmp.close()
        while true {
            if let status = await waitForExit(timeout: .seconds(5)) { return status }
        }
    }

    /// At most the last `maxBytes` of QEMU's stderr (what the migration's failure reports quote).
    public func stderrTail(maxBytes: Int = 4096) -> String {
        Self.tail(of: stderrPath, maxBytes: maxBytes)
    }

    /// At most the last `maxBytes` of QEMU's stdout.
    public func stdoutTail(maxBytes: Int = 4096) -> String {
        Self.tail(of: stdoutPath, maxBytes: maxBytes)
    }

    static func tail(of path: String, maxBytes: Int) -> String {
        precondition(maxBytes > 0)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return "" }
        let start = max(0, size - off_t(maxBytes))
        var bytes = [UInt8](repeating: 0, count: Int(size - start))
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, start) }
        guard count > 0 else { return "" }
        return String(decoding: bytes.prefix(count), as: UTF8.self)
    }
}
