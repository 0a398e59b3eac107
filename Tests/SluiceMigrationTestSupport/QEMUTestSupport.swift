// Path: Tests/SluiceMigrationTestSupport/QEMUTestSupport.swift — QEMU processes for the QMP, inventory and
// migration tests: a guest with no kernel (SeaBIOS only, a valid VM to migrate) under tcg, always killed
// and reaped at the end of the test that started it, whatever happened.
import Foundation
import SluiceMigration

#if canImport(Glibc)
    import Glibc
#endif

public enum QEMUTestSupport {
    /// A machine with no devices and no display; with no kernel it sits in SeaBIOS.
    public static let baseArguments = ["-machine", "pc", "-nodefaults", "-display", "none"]

    private static let counter = Counter()

    /// A fresh run directory under /tmp, short enough for a Unix socket path.
    public static func makeRunDirectory(_ label: String) -> String {
        let path = "/tmp/sq-\(getpid())-\(counter.next())-\(label.prefix(24))"
        try? FileManager.default.removeItem(atPath: path)
        return path
    }

    /// Starts a no-kernel QEMU: `baseArguments`, `-m memory`, `-cpu cpu`, then `extra`.
    public static func launch(
        _ label: String, memory: String = "64M", cpu: String = "qemu64", extra: [String] = [],
        readyTimeout: Duration = .seconds(20)
    ) async throws -> QEMUProcess {
        let binary = MigrationTestEnvironment.qemuBinary ?? "/usr/bin/qemu-system-x86_64"
        let arguments = baseArguments + ["-m", memory, "-cpu", cpu] + extra
        return try await QEMUProcess.launch(
            .init(binary: binary, arguments: arguments, runDirectory: makeRunDirectory(label), readyTimeout: readyTimeout))
    }

    /// Runs `body` with a QEMU started by `launch`, then SIGKILLs and reaps it (also when `body` throws)
    /// and removes its run directory.
    public static func withQEMU<T>(
        _ label: String, memory: String = "64M", cpu: String = "qemu64", extra: [String] = [],
        _ body: (QEMUProcess) async throws -> T
    ) async throws -> T {
        let process = try await launch(label, memory: memory, cpu: cpu, extra: extra)
        do {
            let result = try await body(process)
            await dispose(process)
            return result
        } catch {
            await dispose(process)
            throw error
        }
    }

    /// SIGKILLs `process` (SIGCONT first, in case a test stopped it), reaps it, removes its run directory.
    public static func dispose(_ process: QEMUProcess) async {
        process.send(signal: SIGCONT)
        process.kill()
        _ = await process.waitForExit(timeout: .seconds(10))
        await process.qmp.close()
        try? FileManager.default.removeItem(atPath: process.runDirectory)
    }

    /// A TCP port on 127.0.0.1 free at the time of the call (bound to port 0, read back, closed).
    public static func freeLoopbackPort() -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0, "socket: errno \(errno)")
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(bound == 0, "bind: errno \(errno)")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        precondition(named == 0, "getsockname: errno \(errno)")
        return UInt16(bigEndian: address.sin_port)
    }

    private final class Counter: @unchecked Sendable {  // unchecked: guarded by `lock`
        private let lock = NSLock()
        private var value = 0
        func next() -> Int {
            lock.lock()
            defer { lock.unlock() }
            value += 1
            return value
        }
    }
}
