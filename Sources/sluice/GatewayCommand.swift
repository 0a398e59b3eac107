// Path: Sources/sluice/GatewayCommand.swift — `sluice gateway`: the storage gateway's tiers (docs/GATEWAY.md).
// Flags into the SluiceGateway API; no logic of its own.
import ArgumentParser
import Glibc
import SluiceGateway

struct GatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "The storage gateway: an intermediate device near the remote store (docs/GATEWAY.md).",
        subcommands: [ServeIntermediate.self])
}

extension GatewayCommand {
    struct ServeIntermediate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve-intermediate",
            abstract: "Serve the gateway block protocol from a chunk cache over a remote store, until SIGTERM/SIGINT (then print the counters).")

        @Option(help: "Address to listen on, IPV4:PORT (port 0: any free port, printed on start).")
        var listen: String

        @Option(help: "The remote store: dir:/path (a local or NFS directory; key a/b is the file /path/a/b).")
        var store: String

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
            _ = try parsedStore()
            _ = try parsedUnits()
            _ = try byteCount(cacheBytes, flag: "--cache-bytes")
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

        /// Only `dir:` for now: an `s3:` store (`S3RemoteStore`) also needs credential flags.
        func parsedStore() throws -> String {
            if store.hasPrefix("dir:") {
                let path = String(store.dropFirst(4))
                guard path.hasPrefix("/") else { throw ValidationError("--store dir: needs an absolute path, got '\(store)'") }
                return path
            }
            throw ValidationError("--store must be dir:/path (s3: needs credential flags, not added yet), got '\(store)'")
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
            let server: IntermediateServer
            do {
                server = try IntermediateServer.bind(host: host, port: port, store: DirectoryObjectStore(root: try parsedStore()),
                                                     cache: cache, configuration: configuration)
            } catch {
                FileHandleStderr.write("sluice gateway serve-intermediate: \(error)\n")
                throw ExitCode(1)
            }
            StopSignal.install()
            // One line a supervisor (or a test) can parse for the port.
            print("listening on \(server.host):\(server.port) \(units) cache \(cache.openReport)")
            fflush(nil)
            StopSignal.wait()
            server.close()
            print("counters \(server.counters.snapshot())")
            fflush(nil)
        }
    }
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
