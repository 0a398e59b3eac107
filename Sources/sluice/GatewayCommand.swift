// Path: Sources/sluice/GatewayCommand.swift — `sluice gateway`: the storage gateway's tiers (docs/GATEWAY.md).
// Flags into the SluiceGateway API; no logic of its own.
import ArgumentParser
import Dispatch
import Glibc
import SluiceGateway
import SluiceService

struct GatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "The storage gateway: an intermediate device near the remote store, an appliance near its users (docs/GATEWAY.md).",
        subcommands: [ServeIntermediate.self, ServeAppliance.self, Read.self, Write.self])
}

extension GatewayCommand {
    struct ServeIntermediate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve-intermediate",
            abstract: "Serve the gateway block protocol from a chunk cache over a remote store, until SIGTERM/SIGINT (then print the counters).")

        @Option(help: "Address to listen on, IPV4:PORT (port 0: any free port, printed on start).")
        var listen: String

        @Option(help: "The remote store: dir:/path (a local or NFS directory; key a/b is the file /path/a/b) or s3:http://HOST:PORT/BUCKET (path-style, no TLS).")
        var store: String

        @Option(help: "s3: the region requests are signed for.")
        var s3Region = "us-east-1"

        @Option(help: "s3: a file holding the access key (default: $AWS_ACCESS_KEY_ID).")
        var s3AccessKeyFile: String?

        @Option(help: "s3: a file holding the secret key (default: $AWS_SECRET_ACCESS_KEY).")
        var s3SecretKeyFile: String?

        @Option(help: "Serve Prometheus metrics (text format) on GET /metrics at HOST:PORT (port 0: any free port, printed on start).")
        var metrics: String?

        @Option(help: "Directory of the chunk cache (created if missing; reopened and verified at start).")
        var cacheDir: String

        @Option(help: "Bytes of chunk files the cache keeps at most (e.g. 1gb; k, m, g, t are powers of 1024).")
        var cacheBytes: String

        @Option(help: "Chunk size: the remote fetch and cache unit (a power of two).")
        var chunkBytes = "4mb"

        @Option(help: "Block size: the appliance's cache unit (a power of two, at most 16 sectors).")
        var blockBytes = "64kb"

        @Option(help: "Sector size: the integrity and transfer unit, one CRC-32C each (a power of two).")
        var sectorBytes = "4kb"

        @Option(help: "How long an object's size and etag are used before the store is asked again (milliseconds; 0: every request).")
        var statTtlMs = 1_000

        @Option(help: "Requests per connection received and not yet answered before reading pauses.")
        var outstandingRequestsMax = 64

        @Option(help: "Remote chunk fetches in flight at once; one more is answered overloaded.")
        var fetchesInFlightMax = 64

        func validate() throws {
            _ = try parsedListen()
            if case .s3 = try parsedStore() { _ = try s3Credentials() }
            _ = try parsedUnits()
            _ = try byteCount(cacheBytes, flag: "--cache-bytes")
            if let metrics { _ = try hostPort(metrics, flag: "--metrics", portZero: true) }
            guard !s3Region.isEmpty else { throw ValidationError("--s3-region must not be empty") }
            guard (0...3_600_000).contains(statTtlMs) else { throw ValidationError("--stat-ttl-ms must be 0...3600000, got \(statTtlMs)") }
            guard (1...IntermediateConfiguration.outstandingRequestsMaxLimit).contains(outstandingRequestsMax) else {
                throw ValidationError("--outstanding-requests-max must be 1...\(IntermediateConfiguration.outstandingRequestsMaxLimit)")
            }
            guard (1...ChunkCacheConfiguration.fetchesInFlightMaxLimit).contains(fetchesInFlightMax) else {
                throw ValidationError("--fetches-in-flight-max must be 1...\(ChunkCacheConfiguration.fetchesInFlightMaxLimit)")
            }
        }

        func parsedListen() throws -> (host: String, port: Int) {
            let parts = listen.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port), !parts[0].isEmpty else {
                throw ValidationError("--listen must be IPV4:PORT with a port 0...65535, got '\(listen)'")
            }
            return (String(parts[0]), port)
        }

        /// The store named by `--store`: a directory, or an S3 endpoint and bucket (credentials are read in `run`).
        func parsedStore() throws -> StoreSpec {
            if store.hasPrefix("dir:") {
                let path = String(store.dropFirst(4))
                guard path.hasPrefix("/") else { throw ValidationError("--store dir: needs an absolute path, got '\(store)'") }
                return .directory(path)
            }
            if store.hasPrefix("s3:") {
                let url = String(store.dropFirst(3))
                guard url.hasPrefix("http://") else {
                    throw ValidationError("--store s3: needs an http:// URL (no TLS), s3:http://HOST:PORT/BUCKET, got '\(store)'")
                }
                let rest = url.dropFirst(7)
                let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
                guard parts.count == 2 || (parts.count == 3 && parts[2].isEmpty), !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw ValidationError("--store s3: must be s3:http://HOST:PORT/BUCKET (one bucket, no key prefix), got '\(store)'")
                }
                return .s3(endpoint: "http://" + parts[0], bucket: String(parts[1]))
            }
            throw ValidationError("--store must be dir:/path or s3:http://HOST:PORT/BUCKET, got '\(store)'")
        }

        /// The S3 credentials: from the key files when given, else from the environment. Leading and
        /// trailing white space (a file's final newline) is dropped.
        func s3Credentials() throws -> (accessKey: String, secretKey: String) {
            func read(_ file: String?, env: String, flag: String) throws -> String {
                let text: String
                if let file {
                    guard let contents = readSmallFile(file) else {
                        throw ValidationError("\(flag) \(file): cannot read it (errno \(errno))")
                    }
                    text = contents
                } else {
                    guard let value = getenv(env) else {
                        throw ValidationError("--store s3: needs credential flags: \(flag) FILE, or $\(env)")
                    }
                    text = String(cString: value)
                }
                let trimmed = String(text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
                guard !trimmed.isEmpty else { throw ValidationError("\(file.map { "\(flag) \($0)" } ?? "$\(env)") is empty") }
                return trimmed
            }
            return (try read(s3AccessKeyFile, env: "AWS_ACCESS_KEY_ID", flag: "--s3-access-key-file"),
                    try read(s3SecretKeyFile, env: "AWS_SECRET_ACCESS_KEY", flag: "--s3-secret-key-file"))
        }

        func parsedUnits() throws -> GatewayUnits {
            let chunk = try byteCount(chunkBytes, flag: "--chunk-bytes")
            let block = try byteCount(blockBytes, flag: "--block-bytes")
            let sector = try byteCount(sectorBytes, flag: "--sector-bytes")
            do { return try GatewayUnits(chunkBytes: chunk, blockBytes: block, sectorBytes: sector) } catch {
                throw ValidationError("units: \(error)")
            }
        }

        func run() throws {
            let (host, port) = try parsedListen()
            let units = try parsedUnits()
            var cacheConfiguration = ChunkCacheConfiguration(directory: cacheDir, capacityBytes: try byteCount(cacheBytes, flag: "--cache-bytes"),
                                                             units: units)
            cacheConfiguration.fetchesInFlightMax = fetchesInFlightMax
            let cache: ChunkCache
            do { cache = try ChunkCache(configuration: cacheConfiguration) } catch {
                FileHandleStderr.write("sluice gateway serve-intermediate: \(error)\n")
                throw ExitCode(1)
            }
            var configuration = IntermediateConfiguration(units: units)
            configuration.statTTLNs = UInt64(statTtlMs) * 1_000_000
            configuration.outstandingRequestsMax = outstandingRequestsMax
            let remote: any RemoteObjectStore
            var s3Client: S3Client?
            switch try parsedStore() {
            case .directory(let path):
                remote = DirectoryObjectStore(root: path)
            case .s3(let endpoint, let bucket):
                let (accessKey, secretKey) = try s3Credentials()
                do {
                    let client = try S3Client(S3Configuration(endpoint: endpoint, accessKey: accessKey, secretKey: secretKey, region: s3Region))
                    s3Client = client
                    remote = S3RemoteStore(client: client, bucket: bucket)
                } catch {
                    FileHandleStderr.write("sluice gateway serve-intermediate: --store \(store): \(error)\n")
                    throw ExitCode(1)
                }
            }
            let server: IntermediateServer
            do {
                server = try IntermediateServer.bind(host: host, port: port, store: remote, cache: cache, configuration: configuration)
            } catch {
                FileHandleStderr.write("sluice gateway serve-intermediate: \(error)\n")
                if let s3Client { shutDownBlocking(s3Client) }
                throw ExitCode(1)
            }
            var endpoint: MetricsEndpoint?
            if let metrics {
                let (metricsHost, metricsPort) = try hostPort(metrics, flag: "--metrics", portZero: true)
                let counters = server.counters
                do {
                    endpoint = try MetricsEndpoint.bind(ListenAddress(host: metricsHost, port: metricsPort),
                                                        render: { GatewayMetrics.intermediate(counters.snapshot()) })
                } catch {
                    FileHandleStderr.write("sluice gateway serve-intermediate: \(error)\n")
                    server.close()
                    if let s3Client { shutDownBlocking(s3Client) }
                    throw ExitCode(1)
                }
            }
            StopSignal.install()
            // One line a supervisor (or a test) can parse for the port.
            print("listening on \(server.host):\(server.port) \(units) cache \(cache.openReport)")
            if let endpoint { print("metrics on \(endpoint.host):\(endpoint.port)") }
            fflush(nil)
            StopSignal.wait()
            endpoint?.close()
            server.close()
            if let s3Client { shutDownBlocking(s3Client) }
            print("counters \(server.counters.snapshot())")
            fflush(nil)
        }
    }
}

extension GatewayCommand {
    struct ServeAppliance: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve-appliance",
            abstract: "Serve object reads to clients from a block cache filled over the last hop from an intermediate, until SIGTERM/SIGINT (then print the counters).")

        @Option(help: "Address to listen on for clients, IPV4:PORT (port 0: any free port, printed on start).")
        var listen: String

        @Option(help: "The intermediate device, HOST:PORT (it must be up at start: its hello fixes the units).")
        var intermediate: String

        @Option(help: "Bytes of the block cache (e.g. 256mb; k, m, g, t are powers of 1024).")
        var cacheBytes: String

        @Option(help: "Block size: must equal the intermediate's.")
        var blockBytes = "64kb"

        @Option(help: "Last-hop budget for predicted bytes per share: token bucket refill in bytes/s (e.g. 2mb; 0: no predicted bytes).")
        var budgetBytesPerS: String?

        @Option(help: "Last-hop budget per share: bytes fetched (requested + predicted) over bytes served at most (e.g. 1.5).")
        var budgetRatio: Double?

        @Option(help: "How far ahead of a sequential read predicted bytes are asked for (default: sized from the last hop: the read plus twice its measured bandwidth-delay product, at least a chunk, at most --read-ahead-max-bytes).")
        var readAheadBytes: String?

        @Option(help: "The largest read-ahead window sized from the last hop (when --read-ahead-bytes is not given).")
        var readAheadMaxBytes = "32mb"

        @Option(help: "How long a request to the intermediate may wait for its reply (milliseconds); past it the connection is closed, the request fails, and the next one reconnects.")
        var callTimeoutMs = 30_000

        @Option(help: "How long an object's size and etag are used before the intermediate is asked again (milliseconds).")
        var statTtlMs = 1_000

        @Option(help: "Upload journal directory: enables writes (write-back; sealed objects left there are uploaded at start).")
        var journal: String?

        @Option(help: "Bytes the journal holds at most (writes waiting for upload); an append past it waits, then is refused.")
        var journalBytes = "1gb"

        @Option(help: "At SIGTERM/SIGINT, how long to wait for sealed objects to reach the remote store (milliseconds).")
        var shutdownFlushMs = 30_000
        @Option(help: "Serve Prometheus metrics (text format) on GET /metrics at HOST:PORT (port 0: any free port, printed on start).")
        var metrics: String?

        func validate() throws {
            _ = try hostPort(listen, flag: "--listen", portZero: true)
            if let metrics { _ = try hostPort(metrics, flag: "--metrics", portZero: true) }
            _ = try hostPort(intermediate, flag: "--intermediate", portZero: false)
            _ = try byteCount(journalBytes, flag: "--journal-bytes")
            guard (0...3_600_000).contains(shutdownFlushMs) else { throw ValidationError("--shutdown-flush-ms must be 0...3600000, got \(shutdownFlushMs)") }
            _ = try byteCount(cacheBytes, flag: "--cache-bytes")
            _ = try byteCount(blockBytes, flag: "--block-bytes")
            if let readAheadBytes { _ = try byteCount(readAheadBytes, flag: "--read-ahead-bytes") }
            _ = try byteCount(readAheadMaxBytes, flag: "--read-ahead-max-bytes")
            guard (1...3_600_000).contains(callTimeoutMs) else { throw ValidationError("--call-timeout-ms must be 1...3600000, got \(callTimeoutMs)") }
            if let rate = budgetBytesPerS { _ = try byteCount(rate, flag: "--budget-bytes-per-s") }
            if let ratio = budgetRatio, !(0...1_000).contains(ratio) { throw ValidationError("--budget-ratio must be 0...1000, got \(ratio)") }
            guard (0...3_600_000).contains(statTtlMs) else { throw ValidationError("--stat-ttl-ms must be 0...3600000, got \(statTtlMs)") }
        }

        func run() async throws {
            let (host, port) = try hostPort(listen, flag: "--listen", portZero: true)
            let (intermediateHost, intermediatePort) = try hostPort(intermediate, flag: "--intermediate", portZero: false)
            var configuration = ApplianceConfiguration()
            configuration.cacheBytes = try byteCount(cacheBytes, flag: "--cache-bytes")
            configuration.blockBytes = try byteCount(blockBytes, flag: "--block-bytes")
            if let readAheadBytes {
                configuration.readAheadBytes = try byteCount(readAheadBytes, flag: "--read-ahead-bytes")
            } else {
                configuration.readAheadAuto = true
            }
            configuration.readAheadBytesMax = try byteCount(readAheadMaxBytes, flag: "--read-ahead-max-bytes")
            configuration.client.callTimeoutNs = UInt64(callTimeoutMs) * 1_000_000
            configuration.statTTLNs = UInt64(statTtlMs) * 1_000_000
            configuration.budget = ApplianceBudget(bytesPerSecond: try budgetBytesPerS.map { UInt64(try byteCount($0, flag: "--budget-bytes-per-s")) },
                                                   ratio: budgetRatio)
            if let journal {
                var journalConfiguration = ApplianceJournalConfiguration(directory: journal)
                journalConfiguration.bytesMax = try byteCount(journalBytes, flag: "--journal-bytes")
                configuration.journal = journalConfiguration
            }
            let appliance: Appliance
            let server: ApplianceServer
            do {
                appliance = try await Appliance.start(intermediateHost: intermediateHost, port: intermediatePort, configuration: configuration)
                server = try ApplianceServer.bind(host: host, port: port, appliance: appliance)
            } catch {
                FileHandleStderr.write("sluice gateway serve-appliance: \(error)\n")
                throw ExitCode(1)
            }
            var endpoint: MetricsEndpoint?
            if let metrics {
                let (metricsHost, metricsPort) = try hostPort(metrics, flag: "--metrics", portZero: true)
                do {
                    endpoint = try MetricsEndpoint.bind(ListenAddress(host: metricsHost, port: metricsPort), render: {
                        GatewayMetrics.appliance(appliance.counters.snapshot(), cache: appliance.cache.stats, shares: appliance.shares)
                    })
                } catch {
                    FileHandleStderr.write("sluice gateway serve-appliance: \(error)\n")
                    server.close()
                    await appliance.close()
                    throw ExitCode(1)
                }
            }
            StopSignal.install()
            print("listening on \(server.host):\(server.port) \(appliance.units) cache \(appliance.cache.capacityBlocks) blocks")
            if journal != nil {
                let recovery = appliance.journalRecovery
                print("journal: \(recovery.sealed) sealed object(s) to upload, \(recovery.discardedOpen) unclosed write(s) discarded")
            }
            if let endpoint { print("metrics on \(endpoint.host):\(endpoint.port)") }
            fflush(nil)
            // Waits on a Dispatch thread: a blocked cooperative thread would starve the appliance's tasks.
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    StopSignal.wait()
                    done.resume()
                }
            }
            endpoint?.close()
            server.close()
            if journal != nil {
                let left = await appliance.shutdown(flushWithinNs: UInt64(shutdownFlushMs) * 1_000_000)
                print(left == 0 ? "journal: every closed object is in the remote store"
                      : "journal: \(left) closed object(s) not yet uploaded; kept in the journal, uploaded at the next start")
            }
            print("counters \(appliance.counters.snapshot())")
            for share in appliance.shares {
                print("share \(share.name) served_bytes \(share.servedBytes) requested_bytes \(share.requestedBytes) "
                      + "predicted_bytes \(share.predictedBytes) granted_bytes \(share.grantedBytes) refused_grants \(share.refusedGrants)")
            }
            fflush(nil)
            await appliance.close()
        }
    }

    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "read",
            abstract: "Read bytes of an object from an appliance to a file or stdout.")

        @Option(help: "The appliance, HOST:PORT.")
        var appliance: String

        @Option(help: "Object key.")
        var key: String

        @Option(help: "First byte.")
        var offset: UInt64 = 0

        @Option(help: "Bytes to read (default: to the object's end).")
        var length: UInt64?

        @Option(help: "Write here instead of stdout (created or truncated).")
        var out: String?

        @Option(help: "The share the reads count against (its last-hop budget).")
        var share = "default"

        func validate() throws {
            _ = try hostPort(appliance, flag: "--appliance", portZero: false)
        }

        func run() async throws {
            let (host, port) = try hostPort(appliance, flag: "--appliance", portZero: false)
            let fd: Int32 = out.map { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) } ?? STDOUT_FILENO
            guard fd >= 0 else {
                FileHandleStderr.write("sluice gateway read: open \(out!): errno \(errno)\n")
                throw ExitCode(1)
            }
            defer { if out != nil { close(fd) } }
            do {
                let client = try await ApplianceClient.connect(host: host, port: port, share: share)
                let stat = try await client.stat(key: key)
                guard offset <= stat.size else {
                    throw ApplianceClientError.status(.rangeNotSatisfiable, message: "offset \(offset) is past the end of \(key) (\(stat.size) bytes)")
                }
                let end = offset + (length ?? (stat.size - offset))
                var position = offset
                while position < end {
                    let piece = Int(min(UInt64(client.readBytesMax), end - position))
                    let result = try await client.read(key: key, offset: position, length: piece)
                    guard result.etag == stat.etag else {
                        throw ApplianceClientError.status(.objectChanging, message: "\(key) changed during the read (etag \(stat.etag) then \(result.etag))")
                    }
                    var written = 0
                    while written < piece {
                        let count = result.bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, piece - written) }
                        guard count > 0 else {
                            FileHandleStderr.write("sluice gateway read: write: errno \(errno)\n")
                            throw ExitCode(1)
                        }
                        written += count
                    }
                    position += UInt64(piece)
                }
                FileHandleStderr.write("read \(end - offset) bytes of \(key) (size \(stat.size), etag \(stat.etag))\n")
                await client.close()
            } catch let exit as ExitCode {
                throw exit
            } catch {
                FileHandleStderr.write("sluice gateway read: \(error)\n")
                throw ExitCode(1)
            }
        }
    }
}

extension GatewayCommand {
    struct Write: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "write",
            abstract: "Write a file as an object through an appliance (create or replace); acknowledged once durable in its journal.")

        @Option(help: "The appliance, HOST:PORT.")
        var appliance: String

        @Option(help: "Object key.")
        var key: String

        @Option(name: .customLong("in"), help: "The file to write (read in pieces of 1 MiB).")
        var input: String

        @Flag(help: "Wait until the object is in the remote store.")
        var flush = false

        @Option(help: "How long --flush waits (milliseconds).")
        var flushTimeoutMs: UInt32 = 600_000

        func validate() throws {
            _ = try hostPort(appliance, flag: "--appliance", portZero: false)
        }

        func run() async throws {
            let (host, port) = try hostPort(appliance, flag: "--appliance", portZero: false)
            let fd = open(input, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                FileHandleStderr.write("sluice gateway write: open \(input): errno \(errno)\n")
                throw ExitCode(1)
            }
            defer { close(fd) }
            do {
                let client = try await ApplianceClient.connect(host: host, port: port)
                let id = try await client.beginWrite(key: key)
                var offset: UInt64 = 0
                var piece = [UInt8](repeating: 0, count: ApplianceProtocol.appendBytesMax)
                while true {
                    let count = piece.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                    guard count >= 0 else {
                        FileHandleStderr.write("sluice gateway write: read \(input): errno \(errno)\n")
                        try? await client.abortWrite(writeID: id)
                        throw ExitCode(1)
                    }
                    if count == 0 { break }
                    offset = try await client.append(writeID: id, offset: offset, bytes: Array(piece[0..<count]))
                }
                let size = try await client.closeWrite(writeID: id)
                if flush { try await client.flush(key: key, timeoutMs: flushTimeoutMs) }
                FileHandleStderr.write("wrote \(size) bytes as \(key)\(flush ? " (in the remote store)" : " (in the appliance's journal; uploaded in the background)")\n")
                await client.close()
            } catch let exit as ExitCode {
                throw exit
            } catch {
                FileHandleStderr.write("sluice gateway write: \(error)\n")
                throw ExitCode(1)
            }
        }
    }
}

/// Parses HOST:PORT (`portZero`: port 0 allowed, for listening).
func hostPort(_ text: String, flag: String, portZero: Bool) throws -> (host: String, port: Int) {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2, let port = Int(parts[1]), ((portZero ? 0 : 1)...65535).contains(port), !parts[0].isEmpty else {
        throw ValidationError("\(flag) must be HOST:PORT with a port \(portZero ? 0 : 1)...65535, got '\(text)'")
    }
    return (String(parts[0]), port)
}

/// SIGTERM and SIGINT as one wake-up of the main thread. The handlers are in place when `install`
/// returns (a `DispatchSource` registers later, on its queue: a signal sent just after the start line
/// could be lost). The handler only calls `sem_post`, which is async-signal-safe.
enum StopSignal {
    nonisolated(unsafe) static var semaphore = sem_t()

    static func install() {
        sem_init(&semaphore, 0, 0)
        for number in [SIGTERM, SIGINT] {
            signal(number) { _ in sem_post(&StopSignal.semaphore) }
        }
    }

    /// Blocks until a signal came.
    static func wait() {
        while sem_wait(&semaphore) != 0, errno == EINTR {}
    }
}

/// Parses `4096`, `64kb`, `4mb`, `1gb`, `1t` (also `kib`, `k`, ...): k, m, g, t are powers of 1024.
func byteCount(_ text: String, flag: String) throws -> Int {
    let lower = text.lowercased()
    let digits = lower.prefix { $0.isNumber }
    let unit = lower.dropFirst(digits.count)
    let shifts: [String: Int] = ["": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20,
                                 "g": 30, "gb": 30, "gib": 30, "t": 40, "tb": 40, "tib": 40]
    guard let value = Int(digits), let shift = shifts[String(unit)], value <= Int.max >> shift else {
        throw ValidationError("\(flag): '\(text)' is not a byte count like 4096, 64kb, 4mb or 1gb")
    }
    return value << shift
}

/// A remote store named by `--store`.
enum StoreSpec {
    case directory(String)
    case s3(endpoint: String, bucket: String)
}

/// The contents of a small file (a key file), or nil with `errno` set. At most 64 KiB are read.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 64 << 10)
    var count = 0
    while count < bytes.count {
        let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
        if got < 0, errno == EINTR { continue }
        guard got >= 0 else { return nil }
        if got == 0 { break }
        count += got
    }
    return String(decoding: bytes[0..<count], as: UTF8.self)
}

/// Shuts an S3 client down from synchronous code (not from a cooperative thread: it blocks until done).
func shutDownBlocking(_ client: S3Client) {
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        await client.shutdown()
        done.signal()
    }
    done.wait()
}
