// Path: Benchmarks/EtcdTransport/Sources/etcd-transport/main.swift — etcd v3 over its JSON gateway
// (GatewayClient: Sluice's former client, async-http-client, HTTP/1.1) against etcd v3 over gRPC (Sluice's
// client, SluiceEtcd.EtcdClient: grpc-swift-2, HTTP/2 plaintext), on one running etcd. Starts nothing:
// scripts/bench-etcd-transport.sh starts etcd.
//
// Each round runs, per transport (the order alternating between rounds): (a) `calls` sequential
// put-if-absent txns of a fresh key with a `valueBytes` value, (b) the same from `concurrency` tasks,
// `calls` in all, (c) `calls` sequential linearizable 1-key ranges of keys (a) wrote. It reports per
// transport and phase the median over rounds of calls/s, p50 and p99 latency, this process's CPU
// time per call (getrusage), and etcd's CPU time per call when `--etcd-pid` is given.
import Foundation
import SluiceEtcd

#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var host = "127.0.0.1"
    var port = 2379
    var rounds = 5
    var calls = 2000
    var concurrency = 16
    var valueBytes = 4096
    var warmupCalls = 300
    var etcdPID: Int32?
    /// Runs one transport only ("gateway" or "grpc"): for checking one alone; no ratio then.
    var only: String?

    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        var index = 1
        func value() -> String {
            index += 1
            guard index < arguments.count else { fail("\(arguments[index - 1]) needs a value") }
            return arguments[index]
        }
        func int(_ text: String, _ range: ClosedRange<Int>) -> Int {
            guard let number = Int(text), range.contains(number) else { fail("\(text) not in \(range)") }
            return number
        }
        while index < arguments.count {
            switch arguments[index] {
            case "--endpoint":
                let text = value()
                guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                      (1...65535).contains(port) else { fail("--endpoint wants HOST:PORT, got \(text)") }
                options.host = String(text[..<colon])
                options.port = port
            case "--rounds": options.rounds = int(value(), 1...100)
            case "--calls": options.calls = int(value(), 16...1_000_000)
            case "--concurrency": options.concurrency = int(value(), 1...256)
            case "--value-bytes": options.valueBytes = int(value(), 0...(1 << 20))
            case "--warmup": options.warmupCalls = int(value(), 0...100_000)
            case "--etcd-pid": options.etcdPID = Int32(int(value(), 1...Int(Int32.max)))
            case "--only":
                let name = value()
                guard ["gateway", "grpc"].contains(name) else { fail("--only wants gateway or grpc") }
                options.only = name
            default:
                fail("""
                    unknown argument \(arguments[index])
                    usage: etcd-transport --endpoint HOST:PORT [--rounds 5] [--calls 2000] [--concurrency 16] \
                    [--value-bytes 4096] [--warmup 300] [--etcd-pid PID] [--only gateway|grpc]
                    """)
            }
            index += 1
        }
        return options
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("etcd-transport: \(message)\n".utf8))
    exit(2)
}

// MARK: The two transports, behind the three operations measured

/// One etcd client under test. `putIfAbsent` must return whether the key was created; `get` the
/// length of the key's value, or nil when the key does not exist.
protocol Transport: Sendable {
    var name: String { get }
    func putIfAbsent(_ key: [UInt8]) async throws -> Bool
    func get(_ key: [UInt8]) async throws -> Int?
}

struct GatewayTransport: Transport {
    let client: GatewayClient
    let value: [UInt8]
    var name: String { "gateway" }

    func putIfAbsent(_ key: [UInt8]) async throws -> Bool {
        try await client.putIfAbsent(key, value)
    }

    func get(_ key: [UInt8]) async throws -> Int? {
        try await client.get(key)?.count
    }
}

struct GRPCTransport: Transport {
    let client: EtcdClient
    let value: [UInt8]
    var name: String { "grpc" }

    func putIfAbsent(_ key: [UInt8]) async throws -> Bool {
        try await client.putIfAbsent(key, value)
    }

    func get(_ key: [UInt8]) async throws -> Int? {
        try await client.get(key)?.value.count
    }
}

// MARK: Measurement

/// CPU time (user + system) of this process, in microseconds.
func processCPUMicroseconds() -> Int64 {
    var usage = rusage()
    precondition(getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0, "getrusage failed: errno \(errno)")
    func micros(_ time: timeval) -> Int64 { Int64(time.tv_sec) * 1_000_000 + Int64(time.tv_usec) }
    return micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// CPU time (user + system) of process `pid` from /proc/PID/stat, in microseconds (10 ms ticks).
func otherProcessCPUMicroseconds(_ pid: Int32) -> Int64 {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { fail("cannot read /proc/\(pid)/stat") }
    // Fields after the command's closing parenthesis start at field 3 (state); utime is 14, stime 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = Int64(fields[11]), let system = Int64(fields[12]) else {
        fail("unexpected /proc/\(pid)/stat")
    }
    let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
    return (user + system) * 1_000_000 / ticks
}

enum Phase: CaseIterable {
    case txnSequential, txnConcurrent, rangeSequential

    func label(_ options: Options) -> String {
        switch self {
        case .txnSequential: "(a) txn put-if-absent, 1 task"
        case .txnConcurrent: "(b) txn put-if-absent, \(options.concurrency) tasks"
        case .rangeSequential: "(c) range 1 key, 1 task"
        }
    }
}

struct Sample {
    var callsPerSecond: Double
    var p50Microseconds: Double
    var p99Microseconds: Double
    var cpuMicrosecondsPerCall: Double
    var etcdCPUMicrosecondsPerCall: Double?
}

func nanoseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
}

/// Fresh per run (process id and start time), so runs against one etcd never meet each other's keys.
let runID = "\(getpid())-\(Int(Date().timeIntervalSince1970))"

func key(_ transport: String, _ round: Int, _ phase: String, _ index: Int) -> [UInt8] {
    Array("/etcd-transport/\(runID)/\(transport)/\(round)/\(phase)/\(String(format: "%08d", index))".utf8)
}

/// Runs `calls` calls of `body` (given the call's index) from `tasks` tasks; returns the sample.
func measure(calls: Int, tasks: Int, etcdPID: Int32?,
             _ body: @escaping @Sendable (Int) async throws -> Void) async throws -> Sample {
    let clock = ContinuousClock()
    let etcdBefore = etcdPID.map(otherProcessCPUMicroseconds)
    let cpuBefore = processCPUMicroseconds()
    let start = clock.now
    var latencies: [Int64] = []
    latencies.reserveCapacity(calls)
    if tasks == 1 {
        for index in 0..<calls {
            let callStart = clock.now
            do { try await body(index) } catch { throw CallFailed(index: index, elapsed: clock.now - start, underlying: error) }
            latencies.append(nanoseconds(clock.now - callStart))
        }
    } else {
        try await withThrowingTaskGroup(of: [Int64].self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var mine: [Int64] = []
                    mine.reserveCapacity(calls / tasks + 1)
                    var index = task
                    while index < calls {
                        let callStart = clock.now
                        do { try await body(index) } catch {
                            throw CallFailed(index: index, elapsed: clock.now - start, underlying: error)
                        }
                        mine.append(nanoseconds(clock.now - callStart))
                        index += tasks
                    }
                    return mine
                }
            }
            for try await part in group { latencies += part }
        }
    }
    let wall = clock.now - start
    let cpu = processCPUMicroseconds() - cpuBefore
    let etcdCPU = etcdPID.map { otherProcessCPUMicroseconds($0) - etcdBefore! }
    precondition(latencies.count == calls, "\(latencies.count) latencies for \(calls) calls")
    latencies.sort()
    let seconds = Double(nanoseconds(wall)) / 1e9
    return Sample(
        callsPerSecond: Double(calls) / seconds,
        p50Microseconds: Double(latencies[calls / 2]) / 1000,
        p99Microseconds: Double(latencies[min(calls - 1, calls * 99 / 100)]) / 1000,
        cpuMicrosecondsPerCall: Double(cpu) / Double(calls),
        etcdCPUMicrosecondsPerCall: etcdCPU.map { Double($0) / Double(calls) })
}

/// A call that failed: which one, after how long into its phase.
struct CallFailed: Error, CustomStringConvertible {
    var index: Int
    var elapsed: Duration
    var underlying: any Error
    var description: String { "call \(index) failed \(elapsed) into its phase: \(underlying)" }
}

struct NotCreated: Error, CustomStringConvertible {
    var key: [UInt8]
    var description: String { "put-if-absent of fresh key \(String(decoding: key, as: UTF8.self)) did not create it" }
}

struct WrongRange: Error, CustomStringConvertible {
    var key: [UInt8]
    var length: Int?
    var description: String { "range of \(String(decoding: key, as: UTF8.self)) gave value length \(length.map(String.init) ?? "nil")" }
}

/// One round of the three phases on `transport`.
func runRound(_ transport: any Transport, round: Int, options: Options) async throws -> [Phase: Sample] {
    let name = transport.name
    var samples: [Phase: Sample] = [:]
    samples[.txnSequential] = try await measure(calls: options.calls, tasks: 1, etcdPID: options.etcdPID) { index in
        let k = key(name, round, "a", index)
        guard try await transport.putIfAbsent(k) else { throw NotCreated(key: k) }
    }
    samples[.txnConcurrent] = try await measure(calls: options.calls, tasks: options.concurrency,
                                                etcdPID: options.etcdPID) { index in
        let k = key(name, round, "b", index)
        guard try await transport.putIfAbsent(k) else { throw NotCreated(key: k) }
    }
    let valueBytes = options.valueBytes
    samples[.rangeSequential] = try await measure(calls: options.calls, tasks: 1, etcdPID: options.etcdPID) { index in
        let k = key(name, round, "a", index)
        let length = try await transport.get(k)
        guard length == valueBytes else { throw WrongRange(key: k, length: length) }
    }
    return samples
}

/// Connections open and code paths warm before the first measured round.
func warmUp(_ transport: any Transport, options: Options) async throws {
    guard options.warmupCalls > 0 else { return }
    let name = transport.name
    _ = try await measure(calls: options.warmupCalls, tasks: options.concurrency, etcdPID: nil) { index in
        let k = key(name, 0, "warm", index)
        guard try await transport.putIfAbsent(k) else { throw NotCreated(key: k) }
        _ = try await transport.get(k)
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2]
        : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func format(_ value: Double, _ digits: Int = 0) -> String { String(format: "%.\(digits)f", value) }

// MARK: Main

let options = Options.parse(CommandLine.arguments)
let value = (0..<options.valueBytes).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
let endpoint = "http://\(options.host):\(options.port)"
let gatewayClient = GatewayClient(endpoint: endpoint)
let gateway = GatewayTransport(client: gatewayClient, value: value)

try await EtcdClient.with(EtcdClientConfiguration(endpoints: [endpoint])) { grpcClient in
    let grpc = GRPCTransport(client: grpcClient, value: value)
    let transports: [any Transport] = [gateway, grpc].filter { options.only == nil || $0.name == options.only }
    // Both warmed before the first measured round (connections open, code paths hot).
    for transport in transports.reversed() { try await warmUp(transport, options: options) }

    var samples: [String: [Phase: [Sample]]] = [:]
    for round in 1...options.rounds {
        // Alternating order, so neither transport always runs on the fresher (smaller) store.
        let order = round % 2 == 1 ? transports : transports.reversed()
        for transport in order {
            let result = try await runRound(transport, round: round, options: options)
            for (phase, sample) in result { samples[transport.name, default: [:]][phase, default: []].append(sample) }
            let line = Phase.allCases.map { "\($0.label(options)): \(format(result[$0]!.callsPerSecond))/s" }.joined(separator: ", ")
            print("round \(round) \(transport.name): \(line)")
        }
    }

    let etcdColumn = options.etcdPID != nil
    print("")
    print("Medians over \(options.rounds) rounds; \(options.calls) calls per phase, \(options.valueBytes)-byte values, "
        + "\(options.concurrency) tasks in the concurrent phase; etcd at \(options.host):\(options.port).")
    print("")
    print("| phase | transport | calls/s | p50 µs | p99 µs | client CPU µs/call |" + (etcdColumn ? " etcd CPU µs/call |" : ""))
    print("|---|---|---:|---:|---:|---:|" + (etcdColumn ? "---:|" : ""))
    var medians: [String: [Phase: Sample]] = [:]
    for phase in Phase.allCases {
        for transport in transports {
            let runs = samples[transport.name]![phase]!
            let sample = Sample(
                callsPerSecond: median(runs.map(\.callsPerSecond)),
                p50Microseconds: median(runs.map(\.p50Microseconds)),
                p99Microseconds: median(runs.map(\.p99Microseconds)),
                cpuMicrosecondsPerCall: median(runs.map(\.cpuMicrosecondsPerCall)),
                etcdCPUMicrosecondsPerCall: etcdColumn ? median(runs.map { $0.etcdCPUMicrosecondsPerCall! }) : nil)
            medians[transport.name, default: [:]][phase] = sample
            print("| \(phase.label(options)) | \(transport.name) | \(format(sample.callsPerSecond)) | \(format(sample.p50Microseconds)) | "
                + "\(format(sample.p99Microseconds)) | \(format(sample.cpuMicrosecondsPerCall, 1)) |"
                + (sample.etcdCPUMicrosecondsPerCall.map { " \(format($0, 1)) |" } ?? ""))
        }
    }
    print("")
    print("| phase | gRPC/gateway calls/s | gRPC/gateway p50 | gRPC/gateway p99 | gRPC/gateway client CPU/call |"
        + (etcdColumn ? " gRPC/gateway etcd CPU/call |" : ""))
    print("|---|---:|---:|---:|---:|" + (etcdColumn ? "---:|" : ""))
    for phase in Phase.allCases where options.only == nil {
        let g = medians["grpc"]![phase]!
        let h = medians["gateway"]![phase]!
        var row = "| \(phase.label(options)) | \(format(g.callsPerSecond / h.callsPerSecond, 2)) | "
            + "\(format(g.p50Microseconds / h.p50Microseconds, 2)) | \(format(g.p99Microseconds / h.p99Microseconds, 2)) | "
            + "\(format(g.cpuMicrosecondsPerCall / h.cpuMicrosecondsPerCall, 2)) |"
        if let ge = g.etcdCPUMicrosecondsPerCall, let he = h.etcdCPUMicrosecondsPerCall {
            row += " \(format(ge / he, 2)) |"
        }
        print(row)
    }
}
await gatewayClient.shutdown()
