// Path: Sources/sluice/StorageCommand.swift — `sluice storage`: serve a storage node over TCP, and a
// small client (get, put, stat). Flags into the SluiceStorageServer API; no logic of its own.
import ArgumentParser
import Dispatch
import Glibc
import SluicePageStore
import SluiceReplication
import SluiceService
import SluiceStorageServer

struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Serve a storage node over TCP (docs/STORAGE-PROTOCOL.md) and talk to one.",
        subcommands: [Serve.self, Get.self, Put.self, Stat.self, Status.self])
}

/// Where a client command connects.
struct StorageAddress: ParsableArguments {
    @Option(help: "Server address (IPv4 literal or localhost).")
    var host = "127.0.0.1"

    @Option(help: "Server port.")
    var port: Int

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
    }

    func connect(receiveTimeoutMs: Int = 10_000) throws -> StorageClient {
        do { return try StorageClient(host: host, port: port, receiveTimeoutMs: receiveTimeoutMs) } catch {
            FileHandleStderr.write("sluice storage: cannot connect to \(host):\(port): \(error)\n")
            throw ExitCode(1)
        }
    }
}

/// Runs a client call; a typed error goes to stderr with exit code 2 (1 for the connection).
func storageCall<T>(_ what: String, _ body: () throws(StorageClientError) -> T) throws -> T {
    do { return try body() } catch {
        FileHandleStderr.write("sluice storage \(what): \(error)\n")
        throw ExitCode(2)
    }
}

extension StorageCommand {
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open (or create) a data directory and serve it until SIGTERM/SIGINT (then checkpoint; with --log, stop following the log).")

        @Option(help: "Data directory (created if missing; must support O_DIRECT, so not tmpfs).")
        var data: String

        @Option(help: "Address to listen on.")
        var host = "127.0.0.1"

        @Option(help: "Port to listen on (0: any free port, printed on start).")
        var port = 0

        @Option(help: "Page size in bytes, header included (a multiple of 4096).")
        var pageSize = 4096

        @Option(help: "io_uring queue depth (also the most pages one write may carry).")
        var queueDepth = 32

        @Option(help: "Largest frame accepted, in bytes.")
        var maxFrameBytes = StorageProtocol.frameBytesMaxDefault

        @Option(help: "Threads running node calls (disk I/O); also bounds how many connections' writes share a group commit.")
        var blockingThreads = StorageServerConfiguration().blockingThreadCount

        @Option(help: "Requests per connection received and not yet answered (reply unsent included) before reading pauses; frames already read in the same socket read still queue (memory stays bounded by the read size).")
        var outstandingRequestsMax = StorageServerConfiguration().outstandingRequestsMax

        @Option(help: "Reply bytes per connection written and not yet taken by the socket before reading pauses.")
        var outstandingReplyBytesMax = StorageServerConfiguration().outstandingReplyBytesMax

        @Option(help: "Close a connection whose unread replies stay at a bound this long (milliseconds).")
        var stalledReplyDeadlineMs = Int(StorageServerConfiguration().stalledReplyDeadlineNs / 1_000_000)

        @Option(help: "Share the operation log with other nodes through etcd: etcd://HOST:PORT[,HOST:PORT...] (default: the embedded log in the data directory).")
        var log: String?

        @Option(help: "Key prefix of the shared log in etcd (nodes with one prefix share one log).")
        var logPrefix = EtcdLogConfiguration.prefixDefault

        @Option(help: "How long a write waits for a definite outcome from the shared log (milliseconds).")
        var proposalTimeoutMs: Int64 = EtcdLogConfiguration.proposalTimeoutMsDefault

        @Option(help: "Deadline of each etcd call (milliseconds).")
        var etcdTimeoutMs: Int64 = EtcdLogConfiguration.callTimeoutMsDefault

        @Option(help: "Records per batch (one etcd transaction) at most.")
        var batchRecordsMax = EtcdLogConfiguration.batchRecordsMaxDefault

        @Option(help: "Encoded bytes per batch at most.")
        var batchBytesMax = EtcdLogConfiguration.batchBytesMaxDefault

        @Option(help: "Extra wait before a batch is taken, so more writes join it (microseconds).")
        var batchWaitUs: Int64 = 0

        func validate() throws {
            guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
            guard (1...StorageServerConfiguration.outstandingRequestsMaxLimit).contains(outstandingRequestsMax) else {
                throw ValidationError("--outstanding-requests-max must be 1...\(StorageServerConfiguration.outstandingRequestsMaxLimit)")
            }
            guard (1...StorageServerConfiguration.outstandingReplyBytesMaxLimit).contains(outstandingReplyBytesMax) else {
                throw ValidationError("--outstanding-reply-bytes-max must be 1...\(StorageServerConfiguration.outstandingReplyBytesMaxLimit)")
            }
            let deadlineMsMax = Int(StorageServerConfiguration.stalledReplyDeadlineNsLimit / 1_000_000)
            guard (1...deadlineMsMax).contains(stalledReplyDeadlineMs) else {
                throw ValidationError("--stalled-reply-deadline-ms must be 1...\(deadlineMsMax)")
            }
            guard pageSize >= 4096, pageSize % 4096 == 0, pageSize <= 1 << 20 else {
                throw ValidationError("--page-size must be a multiple of 4096 up to 1 MiB, got \(pageSize)")
            }
            guard (1...PageFile.queueDepthMax).contains(queueDepth) else {
                throw ValidationError("--queue-depth must be 1...\(PageFile.queueDepthMax), got \(queueDepth)")
            }
            guard maxFrameBytes >= pageSize + 64, maxFrameBytes <= StorageProtocol.frameBytesMaxLimit else {
                throw ValidationError("--max-frame-bytes must hold a page (>= \(pageSize + 64)) and be <= \(StorageProtocol.frameBytesMaxLimit)")
            }
            guard (1...256).contains(blockingThreads) else { throw ValidationError("--blocking-threads must be 1...256") }
            if log != nil {
                do { _ = try logConfiguration()?.validate() } catch { throw ValidationError("--log: \(error)") }
            }
        }

        /// The shared log's configuration, nil without `--log`. `validate()` names the config keys
        /// (`proposal_timeout_ms`, `batch_records_max`, ...): each is the flag of the same words.
        func logConfiguration() throws(EtcdError) -> EtcdLogConfiguration? {
            guard let log else { return nil }
            let endpoints = try EtcdLogConfiguration.endpoints(fromURL: log)
            guard (1...EtcdLimits.callTimeoutMsMax).contains(etcdTimeoutMs) else {
                throw .invalidArgument("--etcd-timeout-ms \(etcdTimeoutMs) not in 1...\(EtcdLimits.callTimeoutMsMax)")
            }
            var settings = EtcdLogSettings(endpoints: endpoints)
            settings.prefix = logPrefix
            settings.callTimeoutMs = etcdTimeoutMs
            settings.proposalTimeoutMs = proposalTimeoutMs
            settings.batchRecordsMax = batchRecordsMax
            settings.batchBytesMax = batchBytesMax
            settings.batchWaitUs = batchWaitUs
            let configuration = settings.configuration
            try configuration.validate()
            return configuration
        }

        /// Opens the data directory: with its embedded log, or as a replica of the shared log (the async
        /// open bridged onto this plain thread).
        func openNode() throws -> (node: StorageNode, payloadSizeBytes: Int, replicated: ReplicatedStorage?) {
            let configuration: EtcdLogConfiguration?
            do { configuration = try logConfiguration() } catch {
                FileHandleStderr.write("sluice storage serve: --log: \(error)\n")
                throw ExitCode(1)
            }
            guard let configuration else {
                do {
                    let opened = try openStorageNode(dataDirectory: data, pageSizeBytes: pageSize, queueDepth: queueDepth)
                    return (opened.node, opened.payloadSizeBytes, nil)
                } catch {
                    FileHandleStderr.write("sluice storage serve: \(data): \(error)\n")
                    throw ExitCode(1)
                }
            }
            let box = OpenBox()
            let done = DispatchSemaphore(value: 0)
            let (data, pageSize, queueDepth) = (data, pageSize, queueDepth)
            Task.detached {
                do throws(ReplicatedStorageError) {
                    box.result = .success(try await ReplicatedStorage.open(dataDirectory: data, configuration: configuration,
                                                                           pageSizeBytes: pageSize, queueDepth: queueDepth))
                } catch { box.result = .failure(error) }
                done.signal()
            }
            done.wait()
            switch box.result! {
            case .success(let replicated): return (replicated.node, replicated.payloadSizeBytes, replicated)
            case .failure(let error):
                FileHandleStderr.write("sluice storage serve: \(data): \(error)\n")
                throw ExitCode(1)
            }
        }

        func run() throws {
            let opened = try openNode()
            var configuration = StorageServerConfiguration()
            configuration.frameBytesMax = maxFrameBytes
            configuration.blockingThreadCount = blockingThreads
            configuration.outstandingRequestsMax = outstandingRequestsMax
            configuration.outstandingReplyBytesMax = outstandingReplyBytesMax
            configuration.stalledReplyDeadlineNs = UInt64(stalledReplyDeadlineMs) * 1_000_000
            let server: StorageServer
            do {
                server = try StorageServer.bind(host: host, port: port, node: opened.node,
                                                payloadSizeBytes: opened.payloadSizeBytes, configuration: configuration)
            } catch {
                FileHandleStderr.write("sluice storage serve: \(error)\n")
                opened.replicated?.log.shutdownBlocking()
                throw ExitCode(1)
            }
            // SIGTERM/SIGINT close the server; this thread then checkpoints and stops following the log.
            signal(SIGTERM, SIG_IGN)
            signal(SIGINT, SIG_IGN)
            let stop = DispatchSemaphore(value: 0)
            let signals = [SIGTERM, SIGINT].map { number in
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { stop.signal() }
                source.resume()
                return source
            }
            // One line a supervisor (or a test) can parse for the port (and, on a shared log, the replica state).
            var line = "listening on \(server.host):\(server.port) lastOSN \(opened.node.lastOSN)"
            if opened.replicated != nil {
                let status = RemoteReplicaStatus(opened.node.replicaStatus)
                line += " log etcd applied \(status.appliedOSN) logOSN \(status.logOSN) state \(status.stateName)"
            }
            print(line)
            fflush(nil)  // all streams: `stdout` itself is not concurrency-safe to name
            stop.wait()
            server.close()
            signals.forEach { $0.cancel() }
            var failed = false
            do { try opened.node.checkpoint() } catch {
                FileHandleStderr.write("sluice storage serve: checkpoint at shutdown failed (the log still holds every write): \(error)\n")
                failed = true
            }
            opened.replicated?.log.shutdownBlocking()
            if failed { throw ExitCode(1) }
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read one page (or --count pages from PAGE at one OSN): OSNs, then each payload in hex (or raw to --out).")

        @OptionGroup var address: StorageAddress

        @Argument(help: "Object id.")
        var object: UInt64

        @Argument(help: "Page index (the first, with --count).")
        var page: UInt64

        @Option(help: "Read this many pages starting at PAGE, all at one OSN (one readPages request).")
        var count: UInt32?

        @Option(help: "Write the raw payload to this file instead of printing hex (with --count: the payloads concatenated).")
        var out: String?

        @Option(help: "First wait until the node applied its log through this OSN (a write acknowledged by another node), at most --sync-timeout-ms.")
        var minOsn: UInt64?

        @Option(help: "Longest wait for --min-osn (milliseconds).")
        var syncTimeoutMs: UInt32 = 10_000

        func validate() throws {
            if let count {
                guard count >= 1 else { throw ValidationError("--count must be at least 1") }
                guard page.addingReportingOverflow(UInt64(count)).overflow == false else {
                    throw ValidationError("PAGE + --count overflows")
                }
            }
            guard syncTimeoutMs <= SyncBounds.timeoutMsMax else {
                throw ValidationError("--sync-timeout-ms must be at most \(SyncBounds.timeoutMsMax)")
            }
        }

        func run() throws {
            let client = try address.connect(receiveTimeoutMs: Int(syncTimeoutMs) + 10_000)
            if let minOsn {
                let status = try storageCall("get") { () throws(StorageClientError) in
                    try client.sync(minOSN: minOsn, timeoutMs: syncTimeoutMs)
                }
                print("synced appliedOSN \(status.appliedOSN) state \(status.stateName)")
            }
            let pages: [(index: UInt64, page: RemotePage)]
            if let count {
                let range = page..<(page + UInt64(count))
                let read = try storageCall("get") { () throws(StorageClientError) in try client.read(objectID: object, pageRange: range) }
                print("object \(object) pages \(range.lowerBound)..<\(range.upperBound) readOSN \(read.readOSN)")
                pages = zip(range, read.pages).map { ($0, $1) }
            } else {
                let read = try storageCall("get") { () throws(StorageClientError) in try client.read(objectID: object, pageIndex: page) }
                print("object \(object) page \(page) pageOSN \(read.pageOSN) readOSN \(read.readOSN) bytes \(read.payload.count)")
                pages = [(page, read)]
            }
            if let out {
                let bytes = pages.flatMap { $0.page.payload }
                guard let file = fopen(out, "wb"), fwrite(bytes, 1, bytes.count, file) == bytes.count,
                      fclose(file) == 0 else {
                    FileHandleStderr.write("sluice storage get: cannot write \(out)\n")
                    throw ExitCode(1)
                }
                return
            }
            for (index, read) in pages {
                if count != nil { print("page \(index) pageOSN \(read.pageOSN) bytes \(read.payload.count)") }
                // Pages read back zero-padded to the payload size: the hex stops at the last non-zero byte.
                let used = (read.payload.lastIndex(where: { $0 != 0 }) ?? -1) + 1
                print(read.payload.prefix(used).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
            }
        }
    }

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write one page from a file or a string; prints the write's OSN.")

        @OptionGroup var address: StorageAddress

        @Argument(help: "Object id.")
        var object: UInt64

        @Argument(help: "Page index.")
        var page: UInt64

        @Argument(help: "File holding the payload (or give --value).")
        var file: String?

        @Option(help: "The payload as a UTF-8 string.")
        var value: String?

        @Option(help: "Write only if the page is unmodified since this OSN (the pageOSN a get printed).")
        var ifOsn: UInt64?

        @Flag(help: "Write only if the page was never written.")
        var ifAbsent = false

        func validate() throws {
            guard (file == nil) != (value == nil) else { throw ValidationError("give a FILE or --value, not both or neither") }
            guard ifOsn == nil || !ifAbsent else { throw ValidationError("give --if-osn or --if-absent, not both") }
        }

        func run() throws {
            let payload: [UInt8]
            if let value { payload = Array(value.utf8) } else { payload = try readFile(file!) }
            let condition: WriteCondition = ifAbsent ? .absent : ifOsn.map { .unmodifiedSince($0) } ?? .unconditional
            let client = try address.connect()
            let osn = try storageCall("put") { () throws(StorageClientError) in
                try client.write(objectID: object, pageIndex: page, payload: payload, condition: condition)
            }
            print("object \(object) page \(page) osn \(osn)")
        }

        /// The whole file, bounded by the largest page payload the protocol carries. A directory (or
        /// a read error) is refused: reading it would give no bytes and write an empty page.
        func readFile(_ path: String) throws -> [UInt8] {
            guard let handle = fopen(path, "rb") else {
                FileHandleStderr.write("sluice storage put: cannot open \(path): \(String(cString: strerror(errno)))\n")
                throw ExitCode(1)
            }
            defer { fclose(handle) }
            var info = Glibc.stat()
            guard fstat(fileno(handle), &info) == 0, info.st_mode & S_IFMT != S_IFDIR else {
                FileHandleStderr.write("sluice storage put: \(path) is a directory, not a payload file\n")
                throw ExitCode(1)
            }
            let bytesMax = 1 << 20
            var bytes = [UInt8](repeating: 0, count: bytesMax + 1)
            let count = fread(&bytes, 1, bytes.count, handle)
            guard ferror(handle) == 0 else {
                FileHandleStderr.write("sluice storage put: cannot read \(path): \(String(cString: strerror(errno)))\n")
                throw ExitCode(1)
            }
            guard count <= bytesMax else {
                FileHandleStderr.write("sluice storage put: \(path) is larger than \(bytesMax) bytes\n")
                throw ExitCode(1)
            }
            return Array(bytes.prefix(count))
        }
    }

    struct Stat: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the node (last OSN, page size, objects) or one object.")

        @OptionGroup var address: StorageAddress

        @Argument(help: "Object id (omit for the node).")
        var object: UInt64?

        func run() throws {
            let client = try address.connect()
            if let object {
                let summary = try storageCall("stat") { () throws(StorageClientError) in try client.stat(objectID: object) }
                print("object \(summary.objectID) pageCount \(summary.pageCount) lastOSN \(summary.lastOSN)")
                return
            }
            let node = try storageCall("stat") { () throws(StorageClientError) in try client.statNode() }
            let listed = try storageCall("stat") { () throws(StorageClientError) in try client.list() }
            print("lastOSN \(node.lastOSN) payloadSizeBytes \(node.payloadSizeBytes) objects \(listed.totalCount)")
            for summary in listed.objects {
                print("  object \(summary.objectID) pageCount \(summary.pageCount) lastOSN \(summary.lastOSN)")
            }
        }
    }
}

extension StorageCommand {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show how stale the node's reads are: its replica state, applied and log OSNs, and the age of its last contact with the log (syncNode).")

        @OptionGroup var address: StorageAddress

        @Option(help: "First wait until the node applied its log through this OSN, at most --timeout-ms.")
        var minOsn: UInt64 = 0

        @Option(help: "Longest wait for --min-osn (milliseconds).")
        var timeoutMs: UInt32 = 10_000

        func validate() throws {
            guard timeoutMs <= SyncBounds.timeoutMsMax else { throw ValidationError("--timeout-ms must be at most \(SyncBounds.timeoutMsMax)") }
        }

        func run() throws {
            let client = try address.connect(receiveTimeoutMs: Int(timeoutMs) + 10_000)
            let status = try storageCall("status") { () throws(StorageClientError) in try client.sync(minOSN: minOsn, timeoutMs: timeoutMs) }
            print("state \(status.stateName) appliedOSN \(status.appliedOSN) logOSN \(status.logOSN) contactAgeMs \(status.contactAgeMs.map { "\($0)" } ?? "never")")
        }
    }
}

/// Hands the replicated open's result from its task to the waiting main thread.
private final class OpenBox: @unchecked Sendable {
    var result: Result<ReplicatedStorage, ReplicatedStorageError>?
}
