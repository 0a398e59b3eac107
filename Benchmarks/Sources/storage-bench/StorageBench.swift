// Path: Benchmarks/Sources/storage-bench/StorageBench.swift — a storage node served on loopback in
// this process, N client threads over TCP, one kind of operation; prints ops/s and latency
// percentiles. scripts/bench-storage.sh and scripts/bench-storage-reads.sh run it for docs/BENCHMARKS.md.
import ArgumentParser
import Glibc
import SluicePageStore
import SluiceStorageServer
import Synchronization

/// A line on stderr.
func printError(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

@main
struct StorageBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage-bench",
        abstract: "Load a loopback storage node: reads, unconditional or conditional writes, N clients.")

    enum Operation: String, ExpressibleByArgument, CaseIterable {
        /// Random reads of pages written beforehand.
        case read
        /// Unconditional one-page writes.
        case write
        /// One-page writes on condition of the OSN this client's previous write of the page got
        /// (pages are per client, so each succeeds: the cost of the check, not of conflicts).
        case conditional
    }

    @Option(help: "Data directory (emptied first; must support O_DIRECT, so not tmpfs).")
    var data: String

    @Option(help: "Operation: \(Operation.allCases.map(\.rawValue).joined(separator: ", ")).")
    var op: Operation = .read

    @Option(help: "Client threads, one connection each (1...256).")
    var clients = 1

    @Option(help: "Seconds to run (after a warm-up of a tenth of that).")
    var seconds = 3.0

    @Option(help: "Pages per client (each client has its own object).")
    var pagesPerClient = 256

    @Option(help: "Readers that read pages outside the node's mutex (0: every read grouped under it).")
    var parallelReaders = 0

    func validate() throws {
        guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1...256") }
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
        guard (1...65_536).contains(pagesPerClient) else { throw ValidationError("--pages-per-client must be 1...65536") }
        guard (0...256).contains(parallelReaders) else { throw ValidationError("--parallel-readers must be 0...256") }
    }

    func run() throws {
        for name in ["pages", "log", "pages.checkpoint", "pages.format"] { unlink(data + "/" + name) }
        let opened: (node: StorageNode, payloadSizeBytes: Int)
        do { opened = try openStorageNode(dataDirectory: data, parallelReadersMax: parallelReaders) } catch {
            printError("storage-bench: cannot open \(data): \(error)\n")
            throw ExitCode(1)
        }
        var configuration = StorageServerConfiguration()
        configuration.blockingThreadCount = max(16, clients)
        let server: StorageServer
        do {
            server = try StorageServer.bind(host: "127.0.0.1", port: 0, node: opened.node,
                                            payloadSizeBytes: opened.payloadSizeBytes, configuration: configuration)
        } catch {
            printError("storage-bench: cannot serve: \(error)\n")
            throw ExitCode(1)
        }
        defer { server.close() }
        let payload = [UInt8](repeating: 0xA5, count: opened.payloadSizeBytes)
        // Every page exists first, so reads read data and conditional writes have an OSN.
        var lastOSNs = [[UInt64]](repeating: [], count: clients)
        for client in 0..<clients {
            for index in 0..<pagesPerClient {
                let osn: UInt64
                do { osn = try opened.node.write(objectID: UInt64(client), pages: [(UInt64(index), payload, .unconditional)]) } catch {
                    printError("storage-bench: prefill: \(error)\n")
                    throw ExitCode(1)
                }
                lastOSNs[client].append(osn)
            }
        }
        let result = try Self.load(port: server.port, clients: clients, seconds: seconds, op: op,
                                   pagesPerClient: pagesPerClient, payload: payload, lastOSNs: lastOSNs)
        let stats = opened.node.commitStats
        let reads = opened.node.readStats  // grouped reads only (pooled readers are counted apart)
        print("op=\(op.rawValue) clients=\(clients) ops=\(result.ops) errors=\(result.errors) "
              + "ops_per_s=\(Int(Double(result.ops) / result.seconds)) "
              + "p50_us=\(Double(result.p50Ns) / 1000) p99_us=\(Double(result.p99Ns) / 1000) "
              + "writes_per_flush=\(stats.groupCommits == 0 ? 0 : Double(stats.writes) / Double(stats.groupCommits)) "
              + "reads_per_group=\(reads.groups == 0 ? 0 : Double(reads.reads) / Double(reads.groups)) "
              + "parallel_reads=\(opened.node.parallelReads)")
        if result.errors > 0 { throw ExitCode(2) }
    }

    /// Latencies kept per client at most (a reservoir: later ones replace random earlier ones).
    static let samplesMax = 100_000

    final class ClientRun: @unchecked Sendable {  // one thread writes, the main thread reads after join
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    static func load(port: Int, clients: Int, seconds: Double, op: Operation, pagesPerClient: Int,
                     payload: [UInt8], lastOSNs: [[UInt64]])
        throws -> (ops: Int, errors: Int, seconds: Double, p50Ns: UInt64, p99Ns: UInt64)
    {
        let connections = try (0..<clients).map { _ in
            try StorageClient(host: "127.0.0.1", port: port)
        }
        let samples = Mutex<[UInt64]>([])
        let totals = Mutex<(ops: Int, errors: Int)>((0, 0))
        let start = nowNs()
        let warmEnd = start + UInt64(seconds * 1e8)
        let end = warmEnd + UInt64(seconds * 1e9)
        var threads: [pthread_t] = []
        for client in 0..<clients {
            let connection = connections[client]
            let run = ClientRun {
                var osns = lastOSNs[client]
                var mine: [UInt64] = []
                mine.reserveCapacity(samplesMax)
                var ops = 0, errors = 0, seen = 0
                var generator = SystemRandomNumberGenerator()
                while true {
                    let begin = nowNs()
                    if begin >= end { break }
                    let index = Int.random(in: 0..<pagesPerClient, using: &generator)
                    do {
                        switch op {
                        case .read:
                            _ = try connection.read(objectID: UInt64(client), pageIndex: UInt64(index))
                        case .write:
                            _ = try connection.write(objectID: UInt64(client), pageIndex: UInt64(index), payload: payload)
                        case .conditional:
                            osns[index] = try connection.write(objectID: UInt64(client), pageIndex: UInt64(index),
                                                               payload: payload, condition: .unmodifiedSince(osns[index]))
                        }
                    } catch {
                        errors += 1
                        continue
                    }
                    let done = nowNs()
                    guard begin >= warmEnd else { continue }
                    ops += 1
                    seen += 1
                    if mine.count < samplesMax {
                        mine.append(done - begin)
                    } else {
                        let slot = Int.random(in: 0..<seen, using: &generator)
                        if slot < samplesMax { mine[slot] = done - begin }
                    }
                }
                samples.withLock { $0 += mine }
                totals.withLock { $0.ops += ops; $0.errors += errors }
            }
            var thread = pthread_t()
            pthread_create(&thread, nil, { raw in
                Unmanaged<ClientRun>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, Unmanaged.passRetained(run).toOpaque())
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
        for connection in connections { connection.close() }
        let sorted = samples.withLock { $0 }.sorted()
        let percentile = { (p: Double) -> UInt64 in sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        let (ops, errors) = totals.withLock { $0 }
        return (ops, errors, Double(end - warmEnd) / 1e9, percentile(0.50), percentile(0.99))
    }

    static func nowNs() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
