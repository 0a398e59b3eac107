// Path: Benchmarks/Sources/replication-bench/ReplicationBench.swift — conditional writes through a
// storage node on the embedded log or on a shared etcd log, and the anchor a user of etcd would write by
// hand (range the key, then one transaction comparing its mod_revision and putting the value), on the
// same etcd cluster through the same client stack; and the fail-over time after a kill -9 of the etcd
// leader. scripts/bench-replication.sh starts the etcd clusters and runs it for docs/BENCHMARKS.md.
import ArgumentParser
import Foundation
import Glibc
import SluicePageStore
import SluiceReplication
import SluiceStorageServer
import Synchronization

/// A line on stderr.
func printError(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

func nowNs() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// CPU time (user + system, ns) of this process.
func processCPUNs() -> UInt64 {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    let micros = (Int64(usage.ru_utime.tv_sec) + Int64(usage.ru_stime.tv_sec)) * 1_000_000
        + Int64(usage.ru_utime.tv_usec) + Int64(usage.ru_stime.tv_usec)
    return UInt64(micros) * 1_000
}

/// CPU time (utime + stime of /proc/PID/stat, ns) of other processes: the etcd members. A process
/// that is gone counts 0.
func processesCPUNs(_ pids: [Int32]) -> UInt64 {
    let ticks = UInt64(sysconf(Int32(_SC_CLK_TCK)))
    var total: UInt64 = 0
    for pid in pids {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { continue }
        // Fields after "(comm) ": state is field 3; utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { continue }
        total += (user + system) * 1_000_000_000 / ticks
    }
    return total
}

/// Lowers `atomic` to `value` when that is smaller. (`Atomic<UInt64>.min` compares as signed in Swift
/// 6.3.1 on x86-64: `min(5)` leaves `UInt64.max`, which reads as -1, so it is not used here.)
func lowerTo(_ atomic: borrowing Atomic<UInt64>, _ value: UInt64) {
    var current = atomic.load(ordering: .relaxed)
    while value < current {
        let (exchanged, original) = atomic.compareExchange(expected: current, desired: value, ordering: .relaxed)
        if exchanged { return }
        current = original
    }
}

/// Runs `body` on a thread of its own (never on a cooperative thread: StorageNode calls block).
func blocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// What a client saw: acknowledged writes, write latencies (a bounded reservoir), failures by kind.
struct ClientTally: Sendable {
    static let samplesMax = 50_000
    var ops = 0
    var conflicts = 0
    var samples: [UInt64] = []
    var seen = 0
    var errors: [String: Int] = [:]

    mutating func record(_ latencyNs: UInt64, _ generator: inout SystemRandomNumberGenerator) {
        ops += 1
        seen += 1
        if samples.count < Self.samplesMax {
            samples.append(latencyNs)
        } else {
            let slot = Int.random(in: 0..<seen, using: &generator)
            if slot < Self.samplesMax { samples[slot] = latencyNs }
        }
    }
}

/// The kind of a failed storage call, for counts: replication problems arrive as `ioError` messages.
func kind(of error: StorageClientError) -> String {
    switch error {
    case .ioError(let message):
        if message.contains("log unavailable") { return "logUnavailable" }
        if message.contains("outcome unknown") { return "outcomeUnknown" }
        if message.contains("proposals already wait") { return "overloaded" }
        if message.contains("stopped following") { return "stopped" }
        return "ioError"
    case .conflict: return "conflict"
    case .timedOut: return "clientTimeout"
    case .connectionClosed: return "connectionClosed"
    default:
        // The case's name (a wire mapping with statuses of their own for replication problems gives
        // logUnavailable, outcomeUnknown, overloaded, replicaFailed here).
        return Mirror(reflecting: error).children.first?.label ?? "other"
    }
}

func kind(of error: EtcdError) -> String {
    let text = "\(error)"
    if let space = text.firstIndex(where: { $0 == "(" || $0 == ":" || $0 == " " }) { return String(text[..<space]) }
    return text
}

@main
struct ReplicationBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replication-bench",
        abstract: "Conditional writes/s through a storage node (embedded or etcd log) vs etcd transactions by hand; fail-over time.")

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        /// A storage node on its embedded log, served on loopback; read-then-conditional-write cycles.
        case embedded
        /// A storage node on a shared etcd log (ReplicatedStorage), served on loopback; same cycles.
        case etcd
        /// No node: per cycle, range the key (value + mod_revision), then a txn comparing mod_revision.
        case anchor
        /// etcd mode with 16 clients; the etcd leader is killed (-9) and the time to the next acknowledged write measured.
        case failover
        /// No node: what etcd itself costs per record when records come in batches. Each concurrent task
        /// loops one put-if-absent of a fresh key whose value holds `--batch-records` records of a page's
        /// payload (as the log's batch keys do); a write is one record.
        case batchcost
    }

    @Option(help: "Mode: \(Mode.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mode: Mode = .embedded

    @Option(help: "Data directory of the node (emptied first).")
    var data = ""

    @Option(help: "etcd client URLs, comma-separated (etcd, anchor, failover).")
    var endpoints = ""

    @Option(help: "PIDs of the etcd members, comma-separated, in the order of --endpoints (CPU accounting, fail-over kill).")
    var etcdPids = ""

    @Option(help: "Clients: threads with one connection each (node modes) or concurrent tasks (anchor), 1...256.")
    var clients = 1

    @Option(help: "Seconds to measure (after a warm-up of a tenth of that, 0.3 s at least).")
    var seconds = 3.0

    @Option(help: "Open the page file with O_DIRECT (needs a file system that has it; not tmpfs).")
    var directIO = true

    @Option(help: "Deadline of each etcd call of the node's log, ms (the log's default: \(EtcdLogConfiguration.callTimeoutMsDefault)).")
    var callTimeoutMs = EtcdLogConfiguration.callTimeoutMsDefault

    /// How the anchor learns the mod_revision it compares: the read half of its read-then-write cycle.
    enum AnchorRead: String, ExpressibleByArgument, CaseIterable {
        /// A linearizable range per cycle (a quorum round trip through the leader).
        case linearizable
        /// A serializable range per cycle: the answering member's copy, like a node's local read; a stale
        /// copy makes the txn fail its compare (counted as a conflict, and the cycle goes again).
        case serializable
        /// No read after the first: the txn's revision is the key's new mod_revision (one call per write;
        /// a range only after a conflict). The strongest form a user of etcd can write by hand.
        case cached
    }

    @Option(help: "Anchor: how each cycle learns the mod_revision: \(AnchorRead.allCases.map(\.rawValue).joined(separator: ", ")).")
    var anchorRead: AnchorRead = .linearizable

    @Option(help: "batchcost: records per batch key (each a page payload), 1...64.")
    var batchRecords = 8

    @Option(help: "Fail-over: seconds of writes before the kill.")
    var killAfter = 1.5

    @Option(help: "Fail-over: seconds to wait for the first acknowledged write after the kill.")
    var failoverWait = 15.0

    func validate() throws {
        guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1...256") }
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
        guard (1...64).contains(batchRecords) else { throw ValidationError("--batch-records must be 1...64") }
        if mode != .anchor, mode != .batchcost, data.isEmpty { throw ValidationError("--data is needed for \(mode.rawValue)") }
        if mode != .embedded, endpointList.isEmpty { throw ValidationError("--endpoints is needed for \(mode.rawValue)") }
        if mode == .failover, pidList.count != endpointList.count {
            throw ValidationError("--etcd-pids must name one PID per endpoint for failover")
        }
    }

    var endpointList: [String] { endpoints.split(separator: ",").map { String($0) } }
    var pidList: [Int32] { etcdPids.split(separator: ",").compactMap { Int32($0) } }

    func run() async throws {
        switch mode {
        case .anchor: try await runAnchor()
        case .embedded, .etcd: try await runNode()
        case .failover: try await runFailover()
        case .batchcost: try await runBatchCost()
        }
    }

    // MARK: Node modes

    /// A served node and what closes it.
    struct Served: Sendable {
        let node: StorageNode
        let server: StorageServer
        let payloadSizeBytes: Int
        let replicated: ReplicatedStorage?
    }

    func openServed(prefix: String) async throws -> Served {
        for name in ["pages", "log", "pages.checkpoint", "pages.format", "replica", "pages.lock"] { unlink(data + "/" + name) }
        let node: StorageNode
        let payloadSizeBytes: Int
        var replicated: ReplicatedStorage?
        if mode == .embedded {
            do {
                (node, payloadSizeBytes) = try openStorageNode(dataDirectory: data, directIO: directIO)
            } catch {
                printError("replication-bench: cannot open \(data): \(error)\n")
                throw ExitCode(1)
            }
        } else {
            let log = EtcdLogConfiguration(client: EtcdClientConfiguration(endpoints: endpointList, callTimeoutMs: callTimeoutMs), prefix: prefix)
            do {
                let opened = try await ReplicatedStorage.open(dataDirectory: data, configuration: log, directIO: directIO)
                let status = opened.log.status
                guard status.state == .following else {
                    printError("replication-bench: node not following the log after open: \(status)\n")
                    throw ExitCode(1)
                }
                (node, payloadSizeBytes, replicated) = (opened.node, opened.payloadSizeBytes, opened)
            } catch let error as ReplicatedStorageError {
                printError("replication-bench: cannot open \(data) on \(endpoints): \(error)\n")
                throw ExitCode(1)
            }
        }
        var configuration = StorageServerConfiguration()
        configuration.blockingThreadCount = max(16, clients)
        do {
            let server = try StorageServer.bind(host: "127.0.0.1", port: 0, node: node,
                                                payloadSizeBytes: payloadSizeBytes, configuration: configuration)
            return Served(node: node, server: server, payloadSizeBytes: payloadSizeBytes, replicated: replicated)
        } catch {
            printError("replication-bench: cannot serve: \(error)\n")
            throw ExitCode(1)
        }
    }

    func close(_ served: Served) async {
        served.server.close()
        if let replicated = served.replicated { await replicated.close() }
    }

    /// One client's read-then-conditional-write cycles on its own page (object `client`, page 0) until
    /// `end`; latencies counted for writes that began at `measureFrom` or later. `onAck(begin, done)` is
    /// told of every acknowledged write.
    static func cycles(port: Int, client: Int, payload: [UInt8], measureFrom: UInt64, end: @escaping @Sendable () -> UInt64,
                       onAck: @escaping @Sendable (UInt64, UInt64) -> Void = { _, _ in },
                       onError: @escaping @Sendable (UInt64, String) -> Void = { _, _ in }) -> ClientTally {
        var tally = ClientTally()
        var generator = SystemRandomNumberGenerator()
        var connection: StorageClient?
        while nowNs() < end() {
            if connection == nil {
                do { connection = try StorageClient(host: "127.0.0.1", port: port, receiveTimeoutMs: 30_000) } catch {
                    tally.errors["connect", default: 0] += 1
                    usleep(10_000)
                    continue
                }
            }
            let object = UInt64(client)
            let seen: UInt64
            do { seen = try connection!.read(objectID: object, pageIndex: 0).pageOSN } catch {
                tally.errors["read." + kind(of: error), default: 0] += 1
                connection = nil
                continue
            }
            let begin = nowNs()
            do {
                _ = try connection!.write(objectID: object, pageIndex: 0, payload: payload, condition: .unmodifiedSince(seen))
            } catch {
                let what = kind(of: error)
                if what == "conflict" {
                    tally.conflicts += 1
                } else {
                    tally.errors[what, default: 0] += 1
                    onError(begin, what)
                }
                if case .timedOut = error { connection = nil }
                if case .connectionClosed = error { connection = nil }
                continue
            }
            let done = nowNs()
            onAck(begin, done)
            if begin >= measureFrom { tally.record(done - begin, &generator) }
        }
        return tally
    }

    func runNode() async throws {
        let served = try await openServed(prefix: "bench/\(String(UInt64.random(in: 1...UInt64.max), radix: 16))")
        let payload = [UInt8](repeating: 0xA5, count: served.payloadSizeBytes)
        let clients = self.clients, seconds = self.seconds, pids = pidList
        let node = served.node
        let port = served.server.port
        let prefilled = await blocking { () -> String? in
            for client in 0..<clients {
                do { _ = try node.write(objectID: UInt64(client), pages: [(0, payload, .unconditional)]) } catch {
                    return "\(error)"
                }
            }
            return nil
        }
        if let failure = prefilled {
            printError("replication-bench: prefill: \(failure)\n")
            await close(served)
            throw ExitCode(1)
        }
        let batchesBefore = served.replicated?.log.stats.batches.load(ordering: .relaxed) ?? 0
        let recordsBefore = served.replicated?.log.stats.batchedRecords.load(ordering: .relaxed) ?? 0
        let (tallies, window) = await blocking { () -> ([ClientTally], Window) in
            let start = nowNs()
            let warmEnd = start + UInt64(max(0.3, seconds / 10) * 1e9)
            let end = warmEnd + UInt64(seconds * 1e9)
            let results = Mutex<[ClientTally]>([])
            var threads: [Thread] = []
            for client in 0..<clients {
                let thread = Thread {
                    let tally = Self.cycles(port: port, client: client, payload: payload, measureFrom: warmEnd, end: { end })
                    results.withLock { $0.append(tally) }
                }
                thread.stackSize = 1 << 20
                threads.append(thread)
                thread.start()
            }
            let window = Window.measure(from: warmEnd, to: end, pids: pids)
            while results.withLock({ $0.count }) < clients { usleep(1_000) }
            return (results.withLock { $0 }, window)
        }
        let batches = (served.replicated?.log.stats.batches.load(ordering: .relaxed) ?? 0) - batchesBefore
        let records = (served.replicated?.log.stats.batchedRecords.load(ordering: .relaxed) ?? 0) - recordsBefore
        await close(served)
        if mode == .etcd { await compactHistory() }
        report(tallies: tallies, window: window, extra: "records_per_batch=\(batches == 0 ? 0 : Double(records) / Double(batches))")
        if tallies.contains(where: { !$0.errors.isEmpty }) { throw ExitCode(2) }
    }

    /// Drops etcd's history of the run (etcd keeps every revision until compacted), so rounds do not
    /// fill the backend.
    func compactHistory() async {
        _ = try? await EtcdClient.with(EtcdClientConfiguration(endpoints: endpointList)) { client in
            let revision = try await client.status().revision
            try await client.compact(revision: revision)
        }
    }

    /// CPU clocks of the measured window: this process and the etcd members.
    struct Window: Sendable {
        var seconds: Double
        var selfCPUNs: UInt64
        var etcdCPUNs: UInt64

        /// Sleeps until `from`, samples, sleeps until `to`, samples.
        static func measure(from: UInt64, to: UInt64, pids: [Int32]) -> Window {
            let now = nowNs()
            if from > now { usleep(UInt32((from - now) / 1_000)) }
            let self0 = processCPUNs(), etcd0 = processesCPUNs(pids), t0 = nowNs()
            let later = nowNs()
            if to > later { usleep(UInt32((to - later) / 1_000)) }
            let self1 = processCPUNs(), etcd1 = processesCPUNs(pids), t1 = nowNs()
            return Window(seconds: Double(t1 - t0) / 1e9, selfCPUNs: self1 - self0, etcdCPUNs: etcd1 &- etcd0)
        }
    }

    func report(tallies: [ClientTally], window: Window, extra: String) {
        let ops = tallies.reduce(0) { $0 + $1.ops }
        let conflicts = tallies.reduce(0) { $0 + $1.conflicts }
        let sorted = tallies.flatMap(\.samples).sorted()
        let percentile = { (p: Double) -> Double in
            sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
        }
        var errors: [String: Int] = [:]
        for tally in tallies { errors.merge(tally.errors, uniquingKeysWith: +) }
        let perWrite = { (ns: UInt64) -> Double in ops == 0 ? 0 : Double(ns) / Double(ops) / 1000 }
        print("mode=\(mode.rawValue) clients=\(clients) ops=\(ops) conflicts=\(conflicts) "
              + "errors=\(errors.values.reduce(0, +)) ops_per_s=\(Double(ops) / window.seconds) "
              + "p50_us=\(percentile(0.5)) p99_us=\(percentile(0.99)) "
              + "self_cpu_us_per_write=\(perWrite(window.selfCPUNs)) etcd_cpu_us_per_write=\(perWrite(window.etcdCPUNs)) "
              + extra)
        if !errors.isEmpty { printError("replication-bench: errors: \(errors.sorted { $0.key < $1.key })\n") }
    }

    // MARK: Anchor

    /// Per cycle: learn the key's mod_revision (`--anchor-read`: a linearizable or serializable range, or
    /// the revision of the task's own last put), then one transaction: if the key's mod_revision is still
    /// the one seen, put the new value. Clients are concurrent tasks on one
    /// client (pooled keep-alive connections), as a user of the same client stack would write it.
    func runAnchor() async throws {
        let client: EtcdClient
        do { client = try EtcdClient(EtcdClientConfiguration(endpoints: endpointList)) } catch {
            printError("replication-bench: \(error)\n")
            throw ExitCode(1)
        }
        let prefix = "anchor/\(String(UInt64.random(in: 1...UInt64.max), radix: 16))/"
        let payload = [UInt8](repeating: 0xA5, count: 4096 - PageHeader.sizeBytes)  // what a node page carries
        let keys = (0..<clients).map { Array((prefix + String($0)).utf8) }
        let read = anchorRead
        do {
            for key in keys { _ = try await client.put(key, payload) }
        } catch {
            printError("replication-bench: anchor prefill: \(error)\n")
            await client.shutdown()
            throw ExitCode(1)
        }
        let start = nowNs()
        let warmEnd = start + UInt64(max(0.3, seconds / 10) * 1e9)
        let end = warmEnd + UInt64(seconds * 1e9)
        let pids = pidList
        async let window = blocking { Window.measure(from: warmEnd, to: end, pids: pids) }
        let tallies = await withTaskGroup(of: ClientTally.self) { group in
            for key in keys {
                group.addTask {
                    var tally = ClientTally()
                    var generator = SystemRandomNumberGenerator()
                    var known: Int64? = nil  // .cached: the revision of this task's own last put
                    while nowNs() < end {
                        let seen: Int64
                        if read == .cached, let known {
                            seen = known
                        } else {
                            do {
                                guard let kv = try await client.range(.key(key), serializable: read == .serializable).kvs.first else {
                                    tally.errors["missingKey", default: 0] += 1
                                    continue
                                }
                                seen = kv.modRevision
                            } catch {
                                tally.errors["range." + ((error as? EtcdError).map { kind(of: $0) } ?? "\(error)"), default: 0] += 1
                                continue
                            }
                        }
                        let begin = nowNs()
                        do {
                            let result = try await client.txn(compare: [EtcdCompare(key: key, .modRevision(seen))],
                                                              success: [.put(key: key, value: payload)])
                            if !result.succeeded { tally.conflicts += 1; known = nil; continue }
                            known = result.revision  // the only put of its revision: the key's new mod_revision
                        } catch {
                            known = nil
                            tally.errors["txn." + ((error as? EtcdError).map { kind(of: $0) } ?? "\(error)"), default: 0] += 1
                            continue
                        }
                        let done = nowNs()
                        if begin >= warmEnd { tally.record(done - begin, &generator) }
                    }
                    return tally
                }
            }
            var all: [ClientTally] = []
            for await tally in group { all.append(tally) }
            return all
        }
        let measured = await window
        await client.shutdown()
        await compactHistory()
        report(tallies: tallies, window: measured, extra: "records_per_batch=1 anchor_read=\(read.rawValue)")
        if tallies.contains(where: { !$0.errors.isEmpty }) { throw ExitCode(2) }
    }

    // MARK: etcd's cost per record

    /// Concurrent tasks, each looping a put-if-absent of a fresh key holding `batchRecords` page payloads.
    /// Counts records (not transactions) so CPU per write compares with the node's and the anchor's.
    func runBatchCost() async throws {
        let client: EtcdClient
        do { client = try EtcdClient(EtcdClientConfiguration(endpoints: endpointList)) } catch {
            printError("replication-bench: \(error)\n")
            throw ExitCode(1)
        }
        let prefix = "batchcost/\(String(UInt64.random(in: 1...UInt64.max), radix: 16))/"
        let value = [UInt8](repeating: 0xA5, count: batchRecords * (4096 - PageHeader.sizeBytes))
        let records = batchRecords
        let start = nowNs()
        let warmEnd = start + UInt64(max(0.3, seconds / 10) * 1e9)
        let end = warmEnd + UInt64(seconds * 1e9)
        let pids = pidList
        async let window = blocking { Window.measure(from: warmEnd, to: end, pids: pids) }
        let tallies = await withTaskGroup(of: ClientTally.self) { group in
            for task in 0..<clients {
                group.addTask {
                    var tally = ClientTally()
                    var generator = SystemRandomNumberGenerator()
                    var sequence = 0
                    while nowNs() < end {
                        sequence += 1
                        let key = Array("\(prefix)\(task)/\(sequence)".utf8)
                        let begin = nowNs()
                        do {
                            let result = try await client.txn(compare: [.absent(key)], success: [.put(key: key, value: value)])
                            if !result.succeeded { tally.conflicts += 1; continue }
                        } catch {
                            tally.errors["txn." + ((error as? EtcdError).map { kind(of: $0) } ?? "\(error)"), default: 0] += 1
                            continue
                        }
                        let done = nowNs()
                        if begin >= warmEnd {
                            for _ in 0..<records { tally.record(done - begin, &generator) }
                        }
                    }
                    return tally
                }
            }
            var all: [ClientTally] = []
            for await tally in group { all.append(tally) }
            return all
        }
        let measured = await window
        // Keep etcd's history small for the next rounds: delete the keys, then compact.
        _ = try? await client.delete(.prefix(Array(prefix.utf8)))
        await client.shutdown()
        await compactHistory()
        report(tallies: tallies, window: measured, extra: "records_per_batch=\(records)")
        if tallies.contains(where: { !$0.errors.isEmpty }) { throw ExitCode(2) }
    }

    // MARK: Fail-over

    /// The etcd member that is the leader now: index in --endpoints.
    func findLeader() async -> Int? {
        for (index, endpoint) in endpointList.enumerated() {
            let status: EtcdStatus? = try? await EtcdClient.with(EtcdClientConfiguration(endpoints: [endpoint])) { client in
                try await client.status(timeoutMs: 1_000)
            }
            if let status, status.memberID == status.leaderID { return index }
        }
        return nil
    }

    func runFailover() async throws {
        let served = try await openServed(prefix: "bench/failover-\(String(UInt64.random(in: 1...UInt64.max), radix: 16))")
        let payload = [UInt8](repeating: 0xA5, count: served.payloadSizeBytes)
        let clients = self.clients, node = served.node, port = served.server.port
        let prefilled = await blocking { () -> String? in
            for client in 0..<clients {
                do { _ = try node.write(objectID: UInt64(client), pages: [(0, payload, .unconditional)]) } catch { return "\(error)" }
            }
            return nil
        }
        if let failure = prefilled {
            printError("replication-bench: prefill: \(failure)\n")
            await close(served)
            throw ExitCode(1)
        }
        let killNs = Atomic<UInt64>(UInt64.max)
        let stopNs = Atomic<UInt64>(UInt64.max)
        let firstAckDone = Atomic<UInt64>(UInt64.max)         // any ack completing after the kill
        let firstIssuedAckDone = Atomic<UInt64>(UInt64.max)   // an ack of a write begun after the kill
        let acksBeforeKill = Atomic<Int>(0)
        let afterKillErrors = Mutex<[String: Int]>([:])
        let results = Mutex<[ClientTally]>([])
        for client in 0..<clients {
            let thread = Thread {
                let tally = Self.cycles(
                    port: port, client: client, payload: payload, measureFrom: 0,
                    end: { stopNs.load(ordering: .relaxed) },
                    onAck: { begin, done in
                        let kill = killNs.load(ordering: .relaxed)
                        guard done > kill else { acksBeforeKill.add(1, ordering: .relaxed); return }
                        lowerTo(firstAckDone, done)
                        if begin > kill { lowerTo(firstIssuedAckDone, done) }
                    },
                    onError: { _, what in afterKillErrors.withLock { $0[what, default: 0] += 1 } })
                results.withLock { $0.append(tally) }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        try? await Task.sleep(nanoseconds: UInt64(killAfter * 1e9))
                guard let leader = await findLeader() else {
            printError("replication-bench: no etcd leader found\n")
            stopNs.store(0, ordering: .relaxed)
            await close(served)
            throw ExitCode(1)
        }
        let killed = nowNs()
        killNs.store(killed, ordering: .relaxed)
        kill(pidList[leader], SIGKILL)
        let waitEnd = killed + UInt64(failoverWait * 1e9)
        while firstIssuedAckDone.load(ordering: .relaxed) == UInt64.max, nowNs() < waitEnd {
            try? await Task.sleep(nanoseconds: 1_000_000)
        }
        try? await Task.sleep(nanoseconds: 500_000_000)  // writes go on after recovery
        stopNs.store(nowNs(), ordering: .relaxed)
        while results.withLock({ $0.count }) < clients { try? await Task.sleep(nanoseconds: 5_000_000) }
        let stats = served.replicated!.log.stats
        let unknown = stats.unknownOutcomes.load(ordering: .relaxed)
        let settledApplied = stats.settledApplied.load(ordering: .relaxed)
        let settledNot = stats.settledNotApplied.load(ordering: .relaxed)
        await close(served)
        let ms = { (ns: UInt64) -> String in ns == UInt64.max ? "none" : String(Double(ns - killed) / 1e6) }
        let errors = afterKillErrors.withLock { $0 }
        let tallies = results.withLock { $0 }
        print("mode=failover clients=\(clients) call_timeout_ms=\(callTimeoutMs) leader=\(leader) writes_before_kill=\(acksBeforeKill.load(ordering: .relaxed)) "
              + "first_ack_ms=\(ms(firstAckDone.load(ordering: .relaxed))) "
              + "first_new_write_ack_ms=\(ms(firstIssuedAckDone.load(ordering: .relaxed))) "
              + "acked=\(tallies.reduce(0) { $0 + $1.ops }) conflicts=\(tallies.reduce(0) { $0 + $1.conflicts }) "
              + "errors=\(errors.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")) "
              + "log_unknown_outcomes=\(unknown) settled_applied=\(settledApplied) settled_not_applied=\(settledNot)")
        if firstIssuedAckDone.load(ordering: .relaxed) == UInt64.max { throw ExitCode(2) }
    }
}
