// Path: Tests/SluiceMigrationTestSupport/TestGuest.swift — one QEMU process (tcg) booting the test guest
// with the agent's virtio-serial port and a QMP socket in a temporary directory; killed at the end.
import Foundation
import Glibc
import SluiceMigration

/// A test guest: `qemu-system-x86_64 -accel tcg` on the `GuestImage`, its serial console in a log file,
/// the agent's chardev and QMP as Unix sockets. `stop()` (also run by `deinit`) kills QEMU with SIGKILL
/// and removes the directory. Keep each guest short-lived; CI runs at most 4 at once.
public final class TestGuest: @unchecked Sendable {  // unchecked: the Process is only read after start
    public struct Configuration: Sendable {
        public var vcpus = 1
        public var maxVcpus = 4
        public var memoryMiB = 256
        public var maxMemoryMiB = 1024
        public var memorySlots = 4
        public var machine = "q35"
        /// `-cpu MODEL`; nil keeps QEMU's default (qemu64).
        public var cpuModel: String? = nil
        /// The guest workload's required CPU flags (`sluice.requires=a,b,c`).
        public var requiredFlags: [String] = []
        /// Starts `agent --dirty MIB` in the guest (`sluice.dirty=MIB`).
        public var dirtyMiB: Int? = nil
        public var extraKernelArguments: [String] = []

        public init() {}
    }

    public enum Failure: Error, CustomStringConvertible {
        case qemuExited(status: Int32, stderr: String, serialTail: String)
        case notReady(afterSeconds: Int, lastError: String, serialTail: String)
        case qmp(command: String, reply: String)

        public var description: String {
            switch self {
            case .qemuExited(let status, let stderr, let serialTail):
                return "QEMU exited (\(status)): \(stderr)\n--- serial ---\n\(serialTail)"
            case .notReady(let afterSeconds, let lastError, let serialTail):
                return "agent not ready after \(afterSeconds) s (\(lastError))\n--- serial ---\n\(serialTail)"
            case .qmp(let command, let reply):
                return "QMP \(command): \(reply)"
            }
        }
    }

    public let configuration: Configuration
    public let directory: URL
    public var agentSocketPath: String { directory.appendingPathComponent("agent.sock").path }
    public var qmpSocketPath: String { directory.appendingPathComponent("qmp.sock").path }
    public var serialLogPath: String { directory.appendingPathComponent("serial.log").path }
    public var stderrPath: String { directory.appendingPathComponent("qemu.stderr").path }
    /// When QEMU was started, for the boot time.
    public let startedAt = ContinuousClock.now
    private let process = Process()
    private let stopped = NSLock()
    private var isStopped = false

    /// Starts QEMU; returns at once (see `waitForAgent`). The directory is short (/tmp) for sockaddr_un.
    public init(_ configuration: Configuration = Configuration(), image: GuestImage) throws {
        guard let qemu = MigrationTestEnvironment.qemuBinary else {
            throw Failure.qemuExited(status: -1, stderr: "qemu-system-x86_64 not installed", serialTail: "")
        }
        self.configuration = configuration
        var template = Array("/tmp/sluice-guest.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        self.directory = URL(fileURLWithPath: String(cString: made))
        FileManager.default.createFile(atPath: stderrPath, contents: nil)

        var append = ["console=ttyS0", "panic=-1"]
        if !configuration.requiredFlags.isEmpty { append.append("sluice.requires=\(configuration.requiredFlags.joined(separator: ","))") }
        if let mib = configuration.dirtyMiB { append.append("sluice.dirty=\(mib)") }
        append += configuration.extraKernelArguments
        var arguments = [
            "-accel", "tcg", "-machine", configuration.machine,
            "-m", "\(configuration.memoryMiB)M,slots=\(configuration.memorySlots),maxmem=\(configuration.maxMemoryMiB)M",
            "-smp", "\(configuration.vcpus),maxcpus=\(configuration.maxVcpus)",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "file:\(serialLogPath)",
            "-kernel", image.kernel.path, "-initrd", image.initramfs.path, "-append", append.joined(separator: " "),
            "-device", "virtio-serial-pci",
            "-chardev", "socket,id=agent0,path=\(agentSocketPath),server=on,wait=off",
            "-device", "virtserialport,chardev=agent0,name=org.sluice.agent.0",
            "-qmp", "unix:\(qmpSocketPath),server=on,wait=off",
        ]
        if let model = configuration.cpuModel { arguments += ["-cpu", model] }
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let log = FileHandle(forWritingAtPath: stderrPath)  // one handle: stdout and stderr share its offset
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    deinit { stop() }

    /// The serial console so far (kernel log, `sluice-guest:` and `sluice-agent:` lines).
    public var serialLog: String { (try? String(contentsOfFile: serialLogPath, encoding: .utf8)) ?? "" }
    public var qemuStderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { process.isRunning }

    /// Waits until the agent answers a ping and returns the channel; fails early if QEMU exits.
    public func waitForAgent(timeout: Duration = .seconds(120)) throws -> AgentChannel {
        let deadline = ContinuousClock.now + timeout
        var lastError = "no attempt"
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                throw Failure.qemuExited(status: process.terminationStatus, stderr: qemuStderr, serialTail: String(serialLog.suffix(3000)))
            }
            do {
                return try AgentChannel.waitUntilReady(socketPath: agentSocketPath, deadline: min(deadline, ContinuousClock.now + .seconds(5)))
            } catch {
                lastError = error.description
            }
        }
        throw Failure.notReady(afterSeconds: Int(timeout.components.seconds), lastError: lastError, serialTail: String(serialLog.suffix(3000)))
    }

    /// Sends raw QMP commands (one JSON object each, after `qmp_capabilities`) on a fresh connection and
    /// returns each `return` value's JSON line. A QMP error fails with `Failure.qmp`. Blocks up to 30 s each.
    @discardableResult
    public func qmp(_ commands: [String]) throws -> [String] {
        let socket = try LineSocket(path: qmpSocketPath, timeoutSeconds: 30)
        _ = try socket.readLine()  // greeting
        var replies: [String] = []
        for command in [#"{"execute":"qmp_capabilities"}"#] + commands {
            try socket.writeLine(command)
            while true {
                let line = try socket.readLine()
                if line.contains(#""event""#) && !line.contains(#""return""#) { continue }
                guard line.hasPrefix(#"{"return""#) else { throw Failure.qmp(command: command, reply: line) }
                replies.append(line)
                break
            }
        }
        return Array(replies.dropFirst())
    }

    /// Kills QEMU (SIGKILL) and removes the directory. Idempotent.
    public func stop() {
        stopped.lock()
        defer { stopped.unlock() }
        guard !isStopped else { return }
        isStopped = true
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if ProcessInfo.processInfo.environment["SLUICE_KEEP_GUEST"] == nil {
            try? FileManager.default.removeItem(at: directory)
        }
    }
}

/// A blocking line-oriented Unix socket with a receive timeout, for raw QMP in tests.
final class LineSocket {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let fd: Int32
    private var pending: [UInt8] = []

    init(path: String, timeoutSeconds: Int) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        precondition(bytes.count < MemoryLayout.size(ofValue: address.sun_path), "socket path too long")
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw Failure(description: "connect(\(path)): errno \(code)")
        }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func writeLine(_ line: String) throws {
        let bytes = Array((line + "\n").utf8)
        let rc = bytes.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        guard rc == bytes.count else { throw Failure(description: "send: errno \(errno)") }
    }

    func readLine() throws -> String {
        while true {
            if let newline = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                return line
            }
            precondition(pending.count < 4 << 20, "QMP line over 4 MiB")
            var chunk = [UInt8](repeating: 0, count: 4096)
            let rc = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if rc > 0 { pending += chunk[..<rc]; continue }
            if rc < 0 && errno == EINTR { continue }
            throw Failure(description: rc == 0 ? "closed" : "read: errno \(errno) (timeout is EAGAIN)")
        }
    }
}
