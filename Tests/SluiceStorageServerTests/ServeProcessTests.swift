// Path: Tests/SluiceStorageServerTests/ServeProcessTests.swift — `sluice storage serve --log etcd://...`
// as child processes on one real etcd: reads on one node see writes acknowledged by another after
// `get --min-osn`; a node killed with SIGKILL mid-stream restarts from its checkpoint and the log and
// serves what the other node serves; with etcd gone writes are `logUnavailable` within the proposal
// timeout while reads still answer and syncNode says how stale they are.
// (Here, not in SluiceReplicationTests: that target does not depend on SluiceStorageServer.)
import Foundation
import Glibc
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplicationTestSupport
import SluiceTestSupport
import Synchronization
import Testing

@testable import SluiceStorageServer

/// A `sluice storage serve --log` child; `port` and the replica state from its first stdout line.
final class LogServe {
    let child: ChildProcess
    let port: Int
    let line: String

    init(binary: String, data: String, etcdURL: String, prefix: String, extra: [String] = []) throws {
        child = try ChildProcess([binary, "storage", "serve", "--data", data, "--port", "0", "--log", etcdURL,
                                  "--log-prefix", prefix] + extra)
        guard let line = child.readLine(timeoutMs: 30_000) else {
            throw SpawnError("serve printed no line; stderr: \(child.stderrText)")
        }
        // listening on 127.0.0.1:PORT lastOSN N log etcd applied N logOSN M state S
        let words = line.split(separator: " ")
        guard words.count >= 12, words[0] == "listening", words[5] == "log", words[6] == "etcd",
              let port = words[2].split(separator: ":").last.flatMap({ Int($0) }) else {
            throw SpawnError("unexpected line '\(line)'; stderr: \(child.stderrText)")
        }
        self.port = port
        self.line = line
    }

    func client(receiveTimeoutMs: Int = 20_000) throws -> StorageClient {
        try StorageClient(host: "127.0.0.1", port: port, receiveTimeoutMs: receiveTimeoutMs)
    }

    /// SIGTERM, and the exit code (0: checkpointed and stopped following the log).
    func stop() -> Int32? {
        child.signal(SIGTERM)
        return child.wait(timeoutMs: 20_000)
    }
}

/// `etcd://HOST:PORT,...` for `cluster`.
func etcdURL(_ cluster: EtcdCluster) -> String {
    "etcd://" + cluster.clientURLs.map { $0.replacingOccurrences(of: "http://", with: "") }.joined(separator: ",")
}

private let counter = Atomic<Int>(0)

/// Failed checks of a test body that runs on a plain thread (where #expect has no test to report to).
final class Problems: Sendable {
    private let list = Mutex<[String]>([])
    func note(_ problem: String) { list.withLock { $0.append(problem) } }
    /// Notes `message` when `condition` is false.
    func check(_ condition: Bool, _ message: @autoclosure () -> String = "") { if !condition { note(message()) } }
    var all: [String] { list.withLock { $0 } }
}

/// Writes the writer thread had acknowledged: (page, OSN).
final class Acknowledged: Sendable {
    let list = Mutex<[(page: UInt64, osn: UInt64)]>([])
}

/// Data directories on /var/tmp (O_DIRECT: not tmpfs), removed after `body`.
func withServeDirectories<T>(_ count: Int, _ body: ([String]) throws -> T) throws -> T {
    let base = "/var/tmp/sluice-serve-\(getpid())-\(counter.add(1, ordering: .relaxed).newValue)"
    let paths = (0..<count).map { "\(base)-\($0)" }
    defer { for path in paths { try? FileManager.default.removeItem(atPath: path) } }
    return try body(paths)
}

@Suite(.serialized, .enabled(if: etcdTestsEnabled, "etcd not installed (make deps)")) struct ServeProcessTests {
    static let objectID: UInt64 = 2
    static let pageCount: UInt64 = 16

    @Test func readYourWritesAcrossNodesAndKill9CatchUp() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        try await withEtcdCluster(members: 1) { cluster in
            let url = etcdURL(cluster)
            let problems = Problems()
            try await blocking {
                try withServeDirectories(2) { data in
                    var a = try LogServe(binary: binary, data: data[0], etcdURL: url, prefix: "serve-ryw")
                    let b = try LogServe(binary: binary, data: data[1], etcdURL: url, prefix: "serve-ryw")
                    problems.check(a.line.hasSuffix("state following"), "\(a.line)")

                    // Read-your-writes across nodes: a write acknowledged by A, read through B after --min-osn.
                    let osn = try a.client().write(objectID: 1, pageIndex: 0, payload: Array("hello".utf8))
                    let got = try runCommand([binary, "storage", "get", "--port", "\(b.port)", "--min-osn", "\(osn)", "1", "0"])
                    problems.check(got.status == 0, "\(got.stderr)")
                    problems.check(got.lines.count >= 3 && got.lines[1].hasPrefix("object 1 page 0 pageOSN \(osn) "), "\(got.lines)")
                    problems.check(got.lines.last == "68656c6c6f")
                    let status = try runCommand([binary, "storage", "status", "--port", "\(b.port)", "--min-osn", "\(osn)"])
                    problems.check(status.lines.first?.hasPrefix("state following appliedOSN ") == true, "\(status.lines)")

                    // A stream of conditional writes through A, killed with SIGKILL in the middle of it.
                    let acknowledged = Acknowledged()
                    let writerDone = DispatchSemaphore(value: 0)
                    let writerClient = try a.client()
                    Thread.detachNewThread {
                        defer { writerDone.signal() }
                        var sequence: UInt64 = 0
                        while true {
                            let page = sequence % Self.pageCount
                            sequence += 1
                            do {
                                let current = try writerClient.read(objectID: Self.objectID, pageIndex: page)
                                let osn = try writerClient.write(objectID: Self.objectID, pageIndex: page,
                                                                 payload: patternPayload(sequence),
                                                                 condition: .unmodifiedSince(current.pageOSN))
                                acknowledged.list.withLock { $0.append((page, osn)) }
                            } catch { return }  // the node is gone
                        }
                    }
                    let deadline = Date().addingTimeInterval(20)
                    while acknowledged.list.withLock({ $0.count }) < 400 && Date() < deadline { usleep(10_000) }
                    a.child.signal(SIGKILL)
                    _ = a.child.wait(timeoutMs: 10_000)
                    writerDone.wait()
                    let acks = acknowledged.list.withLock { $0 }
                    problems.check(acks.count >= 400, "only \(acks.count) writes acknowledged before the kill")

                    // A restarts on its data directory: checkpoint + log; then both nodes serve the same pages.
                    a = try LogServe(binary: binary, data: data[0], etcdURL: url, prefix: "serve-ryw")
                    let clientA = try a.client()
                    let clientB = try b.client()
                    let logOSN = max(try clientA.sync().logOSN, try clientB.sync().logOSN)
                    let statusA = try clientA.sync(minOSN: logOSN, timeoutMs: 15_000)
                    let statusB = try clientB.sync(minOSN: logOSN, timeoutMs: 15_000)
                    problems.check(statusA.appliedOSN >= logOSN && statusB.appliedOSN >= logOSN)
                    let rangeA = try clientA.read(objectID: Self.objectID, pageRange: 0..<Self.pageCount)
                    let rangeB = try clientB.read(objectID: Self.objectID, pageRange: 0..<Self.pageCount)
                    for page in 0..<Int(Self.pageCount) {
                        let onA = rangeA.pages[page], onB = rangeB.pages[page]
                        problems.check(onA.pageOSN == onB.pageOSN, "page \(page): A \(onA.pageOSN) B \(onB.pageOSN)")
                        problems.check(onA.payload == onB.payload, "page \(page) payloads differ")
                        // Every acknowledged write is there (or a later one over it).
                        let lastAck = acks.filter { $0.page == UInt64(page) }.map(\.osn).max() ?? 0
                        problems.check(onA.pageOSN >= lastAck, "page \(page): pageOSN \(onA.pageOSN) below acknowledged \(lastAck)")
                    }
                    problems.check(a.stop() == 0, "A stderr: \(a.child.stderrText)")
                    problems.check(b.stop() == 0, "B stderr: \(b.child.stderrText)")
                }
            }
            #expect(problems.all.isEmpty, "\(problems.all)")
        }
    }

    /// etcd gone: writes refused (`logUnavailable`) within the proposal timeout, reads still served,
    /// syncNode says disconnected with a growing contact age. (EtcdCluster cannot restart a member,
    /// so the recovery half is not tested here.)
    @Test func etcdKilledWhileServing() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        try await withEtcdCluster(members: 1) { cluster in
            let url = etcdURL(cluster)
            let problems = Problems()
            try await blocking {
                try withServeDirectories(1) { data in
                    let node = try LogServe(binary: binary, data: data[0], etcdURL: url, prefix: "serve-down",
                                            extra: ["--proposal-timeout-ms", "1000", "--etcd-timeout-ms", "300"])
                    let client = try node.client()
                    let osn = try client.write(objectID: 1, pageIndex: 3, payload: [7, 7, 7])
                    cluster.kill(member: 0)
                    // The first write may go out on a keep-alive connection to the dead member: that
                    // claim may have reached etcd, so it is in doubt (`outcomeUnknown`) and the node keeps
                    // settling it. A write after it was never sent: refused, `logUnavailable`.
                    var first: StorageClientError?
                    do throws(StorageClientError) { _ = try client.write(objectID: 1, pageIndex: 4, payload: [8]) } catch { first = error }
                    switch first {
                    case .logUnavailable?, .outcomeUnknown?: break
                    default: problems.note("first write with etcd down: \(String(describing: first))")
                    }
                    let start = Date()
                    var refusal: StorageClientError?
                    do throws(StorageClientError) { _ = try client.write(objectID: 1, pageIndex: 5, payload: [9]) } catch { refusal = error }
                    let elapsedMs = Date().timeIntervalSince(start) * 1000
                    guard case .logUnavailable? = refusal else {
                        problems.note("write with etcd down: \(String(describing: refusal))")
                        return
                    }
                    problems.check(elapsedMs < 3_000, "refused after \(elapsedMs) ms")
                    // Disconnected, and the contact age grows.
                    var status = try client.sync()
                    let deadline = Date().addingTimeInterval(10)
                    while status.state != .disconnected && Date() < deadline {
                        usleep(50_000)
                        status = try client.sync()
                    }
                    problems.check(status.state == .disconnected, "\(status)")
                    usleep(400_000)
                    let later = try client.sync()
                    problems.check(later.state == .disconnected)
                    if let first = status.contactAgeMs, let second = later.contactAgeMs {
                        problems.check(second >= first + 300, "contact age \(first) then \(second)")
                    } else {
                        problems.note("no contact age: \(status) \(later)")
                    }
                    // Reads still answer, as of the applied OSN.
                    let read = try client.read(objectID: 1, pageIndex: 3)
                    problems.check(read.pageOSN == osn && Array(read.payload.prefix(3)) == [7, 7, 7])
                    let cli = try runCommand([binary, "storage", "status", "--port", "\(node.port)"])
                    problems.check(cli.lines.first?.hasPrefix("state disconnected ") == true, "\(cli.lines)")
                    problems.check(node.stop() == 0, "stderr: \(node.child.stderrText)")
                }
            }
            #expect(problems.all.isEmpty, "\(problems.all)")
        }
    }
}

/// `serve --log` with a value out of bounds exits 64 naming it, before anything is created.
@Suite struct ServeLogFlagTests {
    @Test(arguments: [
        (["--proposal-timeout-ms", "0"], "proposal_timeout_ms"),
        (["--batch-bytes-max", "10"], "batch_bytes_max"),
        (["--batch-records-max", "0"], "batch_records_max"),
        (["--batch-wait-us=-1"], "batch_wait_us"),
        (["--etcd-timeout-ms", "0"], "--etcd-timeout-ms"),
        (["--batch-records-max", "99999999999999999999"], "--batch-records-max"),
        (["--log-prefix", "x/"], "prefix"),
        (["--log", "http://127.0.0.1:1"], "etcd://"),
        (["--log", "etcd://127.0.0.1:99999"], "HOST:PORT"),
    ])
    func outOfBoundsExitsNamingTheFlag(extra: [String], named: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        let data = "/var/tmp/sluice-flags-\(getpid())-\(counter.add(1, ordering: .relaxed).newValue)"
        var arguments = [binary, "storage", "serve", "--data", data, "--port", "0", "--log", "etcd://127.0.0.1:1"]
        arguments += extra
        let result = try runCommand(arguments, timeoutMs: 10_000)
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains(named), "\(result.stderr)")
        #expect(access(data, F_OK) != 0, "the data directory was created")
    }
}
