// Path: Tests/SluiceFirmwareTestSupport/Swtpm.swift — a real swtpm (TPM 2.0 simulator) as a child
// process on 127.0.0.1 with a temp state directory: started, killed with -9, restarted on its state.
import Foundation
import SluiceFirmware

#if canImport(Glibc)
import Glibc
#endif

public let swtpmBinary = "/usr/bin/swtpm"
public var runningInCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
/// swtpm tests run where swtpm is installed, and always in CI (where a missing swtpm is a failure).
public var swtpmTestsEnabled: Bool { access(swtpmBinary, X_OK) == 0 || runningInCI }

public struct SwtpmError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One swtpm process: `swtpm socket --tpm2 --flags not-need-init,startup-clear` on a free server port
/// and control port, state in its own temp directory (kept across `kill`/`start`, removed by `remove`).
public final class Swtpm: @unchecked Sendable {  // used from one test at a time
    public let stateDirectory: String
    public let port: Int
    public let controlPort: Int
    private var process: Process?

    public var tcti: String { TPMConnection.swtpm(host: "127.0.0.1", port: port) }

    public init() throws {
        stateDirectory = NSTemporaryDirectory() + "sluice-swtpm-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        // The swtpm TCTI talks to the control channel at the server port + 1.
        var chosen: Int?
        for _ in 0..<50 {
            let candidate = try Self.freePorts(1)[0]
            if candidate < 65535, !Self.accepts(candidate + 1), (try? Self.bindable(candidate + 1)) == true {
                chosen = candidate
                break
            }
        }
        guard let chosen else { throw SwtpmError("no free pair of adjacent ports") }
        (port, controlPort) = (chosen, chosen + 1)
    }

    /// Starts swtpm and waits (bounded) until its server port accepts connections.
    public func start() throws {
        precondition(process == nil, "swtpm already running")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: swtpmBinary)
        process.arguments = [
            "socket", "--tpm2",
            "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
            "--ctrl", "type=tcp,port=\(controlPort),bindaddr=127.0.0.1",
            "--tpmstate", "dir=\(stateDirectory)",
            "--flags", "not-need-init,startup-clear",
            "--log", "file=\(stateDirectory)/swtpm.log,level=1",
        ]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { throw SwtpmError("starting \(swtpmBinary): \(error)") }
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while !Self.accepts(port) {
            guard process.isRunning else { throw SwtpmError("swtpm exited at start (status \(process.terminationStatus))") }
            guard Date() < deadline else { throw SwtpmError("swtpm not listening on \(port) within 10 s") }
            usleep(20_000)
        }
    }

    /// kill -9, and waits for it to be gone.
    public func kill() {
        guard let process else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// Stops it and deletes its state.
    public func remove() {
        kill()
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    deinit { remove() }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withLoopback(port) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } == 0
    }

    /// `body` with 127.0.0.1:`port` as a `sockaddr`.
    static func withLoopback<T>(_ port: Int, _ body: (UnsafePointer<sockaddr>) -> T) -> T {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
    }

    static func bindable(_ port: Int) throws -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SwtpmError("socket: errno \(errno)") }
        defer { close(fd) }
        return withLoopback(port) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } == 0
    }

    /// `count` TCP ports free on 127.0.0.1 a moment ago.
    public static func freePorts(_ count: Int) throws -> [Int] {
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        var ports: [Int] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw SwtpmError("socket: errno \(errno)") }
            sockets.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
            }
            guard ok else { throw SwtpmError("bind: errno \(errno)") }
            ports.append(Int(UInt16(bigEndian: address.sin_port)))
        }
        return ports
    }
}

/// Runs `body` with a started swtpm, removed after.
public func withSwtpm<R>(_ body: (Swtpm) throws -> R) throws -> R {
    let swtpm = try Swtpm()
    defer { swtpm.remove() }
    try swtpm.start()
    return try body(swtpm)
}
