// Path: Tests/SluiceEtcdTestSupport/EtcdCluster.swift — real etcd clusters for tests: 1 or 3
// members of /usr/bin/etcd as child processes on 127.0.0.1, free ports, a temp data dir each.
import Foundation
import Glibc
import Synchronization

/// Where Debian's etcd-server puts etcd (`make deps` installs it).
public let etcdBinary = "/usr/bin/etcd"

/// True when etcd is installed. Tests skip without it, except under CI=true where they must run.
public var etcdInstalled: Bool { access(etcdBinary, X_OK) == 0 }
public var runningInCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
/// The condition of the etcd suites: run when etcd is there, and always in CI (where a missing etcd fails).
public var etcdTestsEnabled: Bool { etcdInstalled || runningInCI }

public struct EtcdClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A running etcd cluster. Start one with `withEtcdCluster`, which kills (SIGKILL) every member and
/// removes the data dirs afterwards, whether the body returned, threw or a check failed.
public final class EtcdCluster: @unchecked Sendable {  // unchecked: members change under `lock` only
    public struct Member {
        public let name: String
        public let clientURL: String
        public let peerURL: String
        public let dataDir: String
        public let logPath: String
        fileprivate(set) public var process: Process?
    }

    /// Wait for a new cluster to elect a leader and answer /health.
    public static let startTimeoutMs = 15_000
    public static let memberCountMax = 5

    public let root: String
    private let lock = NSLock()
    private var members: [Member]

    public var clientURLs: [String] { lock.withLock { members.map(\.clientURL) } }
    public var memberCount: Int { lock.withLock { members.count } }

    init(memberCount: Int) throws {
        precondition(memberCount >= 1)
        precondition(memberCount <= Self.memberCountMax)
        var template = Array("/tmp/sluice-etcd-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw EtcdClusterError("mkdtemp: errno \(errno)") }
        let root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.root = root
        let ports = try freePorts(count: memberCount * 2)
        members = (0..<memberCount).map { index in
            Member(name: "m\(index)", clientURL: "http://127.0.0.1:\(ports[2 * index])",
                   peerURL: "http://127.0.0.1:\(ports[2 * index + 1])", dataDir: "\(root)/m\(index).etcd",
                   logPath: "\(root)/m\(index).log", process: nil)
        }
    }

    deinit { stopAll() }

    /// Starts every member and waits until each answers /health (which needs an elected leader).
    func start() throws {
        for index in members.indices { try launch(index) }
        try waitHealthy(members.indices)
    }

    /// Starts member `index` (a new one, or one killed before: etcd then ignores the initial-cluster
    /// flags and resumes from its data dir). Appends to its log.
    private func launch(_ index: Int) throws {
        let initialCluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        let member = members[index]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: etcdBinary)
        process.arguments = [
            "--name", member.name, "--data-dir", member.dataDir,
            "--listen-client-urls", member.clientURL, "--advertise-client-urls", member.clientURL,
            "--listen-peer-urls", member.peerURL, "--initial-advertise-peer-urls", member.peerURL,
            "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "sluice-test-\(getpid())",
            "--election-timeout=500", "--heartbeat-interval=100", "--log-level", "warn",
        ]
        if !FileManager.default.fileExists(atPath: member.logPath) {
            guard FileManager.default.createFile(atPath: member.logPath, contents: nil) else {
                throw EtcdClusterError("cannot create \(member.logPath)")
            }
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: member.logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { throw EtcdClusterError("starting \(etcdBinary): \(error)") }
        try? log.close()
        members[index].process = process
    }

    private func waitHealthy(_ indices: some Sequence<Int>) throws {
        let deadline = Date().addingTimeInterval(Double(Self.startTimeoutMs) / 1000)
        for index in indices {
            let member = lock.withLock { members[index] }
            while !healthy(member.clientURL) {
                if let process = member.process, !process.isRunning {
                    throw EtcdClusterError("etcd \(member.name) exited at start:\n\(logTail(member))")
                }
                guard Date() < deadline else {
                    throw EtcdClusterError("etcd \(member.name) not healthy in \(Self.startTimeoutMs) ms:\n\(logTail(member))")
                }
                usleep(50_000)
            }
        }
    }

    /// Starts again member `index` after `kill(member:)`, on its data dir and ports, and waits until
    /// it answers /health. Blocks (up to `startTimeoutMs`): call it off Swift concurrency's threads.
    public func restart(member index: Int) throws {
        try lock.withLock {
            precondition(members[index].process == nil, "restart of a running member")
            try launch(index)
        }
        try waitHealthy([index])
    }

    /// Kills every member (kill -9): the whole cluster is gone, its data dirs stay. `restartAll` brings it back.
    public func killAll() {
        for index in lock.withLock({ members.indices }) { kill(member: index) }
    }

    /// Starts every killed member again on its data dir and waits until all answer /health (a quorum
    /// must meet first). Blocks: call it off Swift concurrency's threads.
    public func restartAll() throws {
        let indices = try lock.withLock {
            let stopped = members.indices.filter { members[$0].process == nil }
            for index in stopped { try launch(index) }
            return members.indices
        }
        try waitHealthy(indices)
    }

    /// Whether member `index` runs (not killed).
    public func isRunning(member index: Int) -> Bool { lock.withLock { members[index].process != nil } }

    /// SIGKILL to member `index` (kill -9), reaped before returning. Its port then refuses connections.
    public func kill(member index: Int) {
        lock.withLock {
            guard let process = members[index].process else { return }
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            members[index].process = nil
        }
    }

    /// SIGSTOP to member `index`: it keeps its sockets (connections are accepted by the kernel) but
    /// answers nothing, as a hung or partitioned member would. `resume` sends SIGCONT.
    /// Returns once every thread of the member is stopped (signal delivery to a busy multi-threaded
    /// process is not instant), or after `pauseWaitMs`.
    public func pause(member index: Int) {
        guard let pid = lock.withLock({ members[index].process?.processIdentifier }) else { return }
        Glibc.kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(Double(Self.pauseWaitMs) / 1000)
        while !allThreadsStopped(pid) && Date() < deadline { usleep(1_000) }
    }

    public static let pauseWaitMs = 2_000

    public func resume(member index: Int) {
        lock.withLock { if let process = members[index].process { Glibc.kill(process.processIdentifier, SIGCONT) } }
    }

    /// The last lines of a member's log, for failure messages.
    public func logTail(member index: Int) -> String { logTail(lock.withLock { members[index] }) }

    private func logTail(_ member: Member) -> String {
        let text = (try? String(contentsOfFile: member.logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    /// Kills every member still running and removes the data dirs and logs.
    func stopAll() {
        for index in lock.withLock({ members.indices }) { kill(member: index) }
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// True when every thread of `pid` is in state T (stopped), read from /proc/PID/task/*/stat.
private func allThreadsStopped(_ pid: pid_t) -> Bool {
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

/// Runs `body` with a fresh `memberCount`-member cluster, and always kills it and removes its files after.
public func withEtcdCluster<Result>(
    members memberCount: Int, _ body: (EtcdCluster) async throws -> Result
) async throws -> Result {
    guard etcdInstalled else {
        throw EtcdClusterError("\(etcdBinary) not installed: run `make deps` (apt-get install etcd-server etcd-client)")
    }
    // The free ports are only free until etcd binds them: a start that fails is tried again on new ones.
    var failures: [String] = []
    for _ in 0..<startAttemptsMax {
        let cluster = try EtcdCluster(memberCount: memberCount)
        defer { cluster.stopAll() }
        do {
            try cluster.start()
        } catch {
            failures.append("\(error)")
            continue
        }
        return try await body(cluster)
    }
    throw EtcdClusterError("etcd cluster of \(memberCount) did not start:\n" + failures.joined(separator: "\n"))
}

/// A cluster of `memberCount` members shared by every test of this process that asks for one (each
/// test keeps to a prefix of its own): started on first use, killed when the process exits. For
/// tests that never kill, pause or restart members (those start their own with `withEtcdCluster`).
public func sharedEtcdCluster(members memberCount: Int) throws -> EtcdCluster {
    try sharedClusters.withLock { clusters in
        if let cluster = clusters[memberCount] { return cluster }
        guard etcdInstalled else {
            throw EtcdClusterError("\(etcdBinary) not installed: run `make deps` (apt-get install etcd-server etcd-client)")
        }
        var failures: [String] = []
        for _ in 0..<startAttemptsMax {
            let cluster = try EtcdCluster(memberCount: memberCount)
            do {
                try cluster.start()
            } catch {
                cluster.stopAll()
                failures.append("\(error)")
                continue
            }
            if clusters.isEmpty { atexit { stopSharedClusters() } }
            clusters[memberCount] = cluster
            return cluster
        }
        throw EtcdClusterError("shared etcd cluster of \(memberCount) did not start:\n" + failures.joined(separator: "\n"))
    }
}

private let sharedClusters = Mutex<[Int: EtcdCluster]>([:])

private func stopSharedClusters() {
    for cluster in sharedClusters.withLock({ Array($0.values) }) { cluster.stopAll() }
}

/// Starts of a cluster tried before a test fails.
public let startAttemptsMax = 3

/// `count` distinct TCP ports that were free on 127.0.0.1 a moment ago (bound to port 0, then closed).
func freePorts(count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { for socket in sockets { close(socket) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw EtcdClusterError("socket: errno \(errno)") }
        sockets.append(fd)
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw EtcdClusterError("bind: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw EtcdClusterError("getsockname: errno \(errno)") }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}

private func loopback(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

/// True when `GET <clientURL>/health` answers `"health":"true"` within a second.
func healthy(_ clientURL: String) -> Bool {
    guard let colon = clientURL.lastIndex(of: ":"), let port = UInt16(clientURL[clientURL.index(after: colon)...]) else {
        return false
    }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = loopback(port: port)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return false }
    let request = Array("GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { return false }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1024)
    while response.count < 8192 {
        let count = recv(fd, &buffer, buffer.count, 0)
        guard count > 0 else { break }
        response.append(contentsOf: buffer[..<count])
    }
    return String(decoding: response, as: UTF8.self).contains("\"health\":\"true\"")
}
