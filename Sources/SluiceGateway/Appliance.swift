// Path: Sources/SluiceGateway/Appliance.swift — the gateway's appliance, read path: serves object reads
// from its block cache and asks the intermediate (over the last hop) for exactly the sectors it lacks,
// with read-ahead within each share's last-hop budget.
import NIOCore
import NIOPosix
import Synchronization

/// Bounds of an `Appliance`. Validated by `Appliance.start`.
public struct ApplianceConfiguration: Sendable {
    /// Bytes of the block cache.
    public var cacheBytes = 256 << 20
    /// The cache's block: must equal the intermediate's block (its `hello`).
    public var blockBytes = 64 << 10
    public var budget = ApplianceBudget()
    /// How far ahead of a sequential read predicted bytes are asked for (without `readAheadAuto`).
    public var readAheadBytes = 4 << 20
    /// Size the read-ahead window from the last hop instead (`ReadAheadSizing`): the read's length plus
    /// twice the bandwidth-delay product the appliance measures (`LastHopEstimator`), at least a chunk,
    /// at most `readAheadBytesMax` and the share's bucket depth.
    public var readAheadAuto = false
    public var readAheadBytesMax = 32 << 20
    /// Contiguous reads before the one at hand that make it sequential (1: any read that starts where
    /// the last ended; 2 keeps a random read that happens to follow its predecessor from reading ahead).
    public var sequentialStreakMin = 2
    /// Largest read a client may ask for.
    public var readBytesMax = 16 << 20
    /// How long an object's size and etag are used before the intermediate is asked again (0: every read).
    public var statTTLNs: UInt64 = 1_000_000_000
    public var statEntriesMax = 65_536
    /// `readSectors` requests one client read has in flight at once (one per chunk).
    public var chunkRequestsPerReadMax = 8
    /// `readSectors` requests in flight over all reads; one more fails `.overloaded`.
    public var flightsMax = 1_024
    /// Read-ahead requests in flight at once (more are skipped, not queued).
    public var readAheadsInFlightMax = 4
    public var sharesMax = 64
    /// Objects whose last read each share remembers (sequential detection).
    public var patternEntriesMax = 4_096
    public var client = GatewayClientConfiguration()
    /// Writes (docs/GATEWAY.md, "Writes"): nil refuses them.
    public var journal: ApplianceJournalConfiguration?
    public var upload = ApplianceUploadConfiguration()

    public static let sharesMaxLimit = 4_096
    public static let readBytesMaxLimit = 64 << 20

    public init() {}
}

/// Why a read failed: what and where.
public enum ApplianceError: Error, Equatable, CustomStringConvertible {
    case notFound(key: String)
    /// The range asked for is not within the object.
    case rangeNotSatisfiable(key: String, offset: UInt64, length: Int, size: UInt64)
    /// The intermediate cannot be reached or its connection broke (what happened).
    case intermediateUnavailable(String)
    /// The intermediate answered with a failure (e.g. the remote store is down).
    case intermediate(GatewayStatus, message: String)
    /// A sector failed its CRC-32C in every try (`corruptRetriesMax` + 1): nothing of it was returned.
    case corrupt(key: String, chunk: UInt64, block: Int, sector: Int)
    /// A bound of the appliance was reached (requests in flight, shares).
    case overloaded(String)
    case invalidRequest(String)
    /// The object got a new etag during each of `attempts` tries of one read.
    case objectKeptChanging(key: String, attempts: Int)
    /// The journal's file system failed (what, errno).
    case journal(String)
    /// No open write of this ID: never begun, closed, aborted, or the appliance restarted (an unclosed
    /// write is not an object; its bytes are gone).
    case writeNotOpen(writeID: UInt64)
    /// `flush` waited its bound; what is left.
    case flushTimedOut(String)

    public var description: String {
        switch self {
        case .notFound(let key): "no object \(key)"
        case .rangeNotSatisfiable(let key, let offset, let length, let size):
            "bytes \(offset)+\(length) of \(key) are not within its \(size) bytes"
        case .intermediateUnavailable(let text): "intermediate unavailable: \(text)"
        case .intermediate(let status, let message): "intermediate: \(status): \(message)"
        case .corrupt(let key, let chunk, let block, let sector):
            "sector \(sector) of block \(block) of chunk \(chunk) of \(key) failed its CRC-32C in every try"
        case .overloaded(let text): "overloaded: \(text)"
        case .invalidRequest(let text): "invalid request: \(text)"
        case .objectKeptChanging(let key, let attempts): "\(key) changed during each of \(attempts) attempts"
        case .journal(let text): "journal: \(text)"
        case .writeNotOpen(let id): "write \(id) is not open (closed, aborted, or lost with a restart: it is not an object)"
        case .flushTimedOut(let text): "flush timed out: \(text)"
        }
    }
}

/// A read's answer: the object's size and etag, and the bytes (all of one etag).
public struct ApplianceReadResult: Sendable, Equatable {
    public var size: UInt64
    public var etag: String
    public var bytes: [UInt8]
}

/// The appliance's counters. Relaxed atomics; `snapshot()` reads each on its own.
public final class ApplianceCounters: Sendable {
    let reads = Atomic<UInt64>(0)
    let readErrors = Atomic<UInt64>(0)
    let hitSectors = Atomic<UInt64>(0)
    let missSectors = Atomic<UInt64>(0)
    /// Missing sectors a read found already in flight for another read (it waited, no new request).
    let coalescedSectors = Atomic<UInt64>(0)
    let bytesServed = Atomic<UInt64>(0)
    let fetches = Atomic<UInt64>(0)
    let readAheads = Atomic<UInt64>(0)
    let lastHopRequestedBytes = Atomic<UInt64>(0)
    /// Extents the intermediate predicted (sequential, stride) within the granted budget.
    let lastHopPredictedBytes = Atomic<UInt64>(0)
    /// Sectors the appliance's own read-ahead asked for (charged to the budget).
    let lastHopReadAheadBytes = Atomic<UInt64>(0)
    /// Reply frames as they crossed the last hop (headers, CRCs, payload), computed from the replies.
    let lastHopFrameBytes = Atomic<UInt64>(0)
    let corruptSectorsRefused = Atomic<UInt64>(0)
    let intermediateErrors = Atomic<UInt64>(0)
    /// Connections made to the intermediate (the first included): more than one means it reconnected.
    let intermediateConnects = Atomic<UInt64>(0)
    /// The read-ahead window last used (a gauge), and the last hop's estimates behind it (gauges:
    /// min round trip in µs, max delivery rate in bytes/s; 0 before the first sample).
    let readAheadWindowBytes = Atomic<UInt64>(0)
    let lastHopMinRTTUs = Atomic<UInt64>(0)
    let lastHopMaxRateBytesPerSecond = Atomic<UInt64>(0)
    let etagChanges = Atomic<UInt64>(0)
    let stats = Atomic<UInt64>(0)
    /// Bytes appended by clients (durable in the journal).
    let bytesWritten = Atomic<UInt64>(0)
    /// Writes sealed (acknowledged as objects).
    let writesClosed = Atomic<UInt64>(0)
    /// Objects in the remote store (journal deleted).
    let uploadsDone = Atomic<UInt64>(0)
    /// Upload attempts that failed (retried later).
    let uploadsFailed = Atomic<UInt64>(0)
    /// Upload attempts after a failed one.
    let uploadsRetried = Atomic<UInt64>(0)
    /// Sealed journals deleted unsent: a newer one of the key replaced them.
    let uploadsSuperseded = Atomic<UInt64>(0)
    /// `uploadData` pieces taken by the intermediate, and their bytes.
    let uploadPieces = Atomic<UInt64>(0)
    let uploadBytes = Atomic<UInt64>(0)
    /// Appends that waited for journal space, and pieces the intermediate refused `overloaded`.
    let uploadWaits = Atomic<UInt64>(0)
    /// Appends refused `overloaded`: no journal space within the wait bound.
    let journalRefusals = Atomic<UInt64>(0)
    /// Open (never closed) journals deleted at start.
    let journalDiscardedOpen = Atomic<UInt64>(0)
    /// Pieces the intermediate refused for a CRC mismatch, sent again.
    let uploadCorruptResent = Atomic<UInt64>(0)
    /// Reads served from a sealed, not yet uploaded journal.
    let journalReads = Atomic<UInt64>(0)
    /// Bytes in the journal now (a gauge: open and sealed, not yet uploaded).
    let journalBytes = Atomic<UInt64>(0)

    func add(_ counter: borrowing Atomic<UInt64>, _ value: Int = 1) {
        counter.add(UInt64(value), ordering: .relaxed)
    }

    public func snapshot() -> ApplianceCountersSnapshot {
        func load(_ counter: borrowing Atomic<UInt64>) -> UInt64 { counter.load(ordering: .relaxed) }
        return ApplianceCountersSnapshot(
            reads: load(reads), readErrors: load(readErrors), hitSectors: load(hitSectors), missSectors: load(missSectors),
            coalescedSectors: load(coalescedSectors), bytesServed: load(bytesServed), fetches: load(fetches),
            readAheads: load(readAheads), lastHopRequestedBytes: load(lastHopRequestedBytes),
            lastHopPredictedBytes: load(lastHopPredictedBytes), lastHopReadAheadBytes: load(lastHopReadAheadBytes),
            lastHopFrameBytes: load(lastHopFrameBytes), corruptSectorsRefused: load(corruptSectorsRefused),
            intermediateErrors: load(intermediateErrors), intermediateConnects: load(intermediateConnects),
            readAheadWindowBytes: load(readAheadWindowBytes), lastHopMinRTTUs: load(lastHopMinRTTUs),
            lastHopMaxRateBytesPerSecond: load(lastHopMaxRateBytesPerSecond), etagChanges: load(etagChanges), stats: load(stats),
            bytesWritten: load(bytesWritten), writesClosed: load(writesClosed), uploadsDone: load(uploadsDone),
            uploadsFailed: load(uploadsFailed), uploadsRetried: load(uploadsRetried), uploadsSuperseded: load(uploadsSuperseded),
            uploadPieces: load(uploadPieces), uploadBytes: load(uploadBytes), uploadWaits: load(uploadWaits),
            journalRefusals: load(journalRefusals), journalDiscardedOpen: load(journalDiscardedOpen),
            uploadCorruptResent: load(uploadCorruptResent), journalReads: load(journalReads), journalBytes: load(journalBytes))
    }
}

public struct ApplianceCountersSnapshot: Sendable, Equatable, CustomStringConvertible {
    public var reads: UInt64
    public var readErrors: UInt64
    public var hitSectors: UInt64
    public var missSectors: UInt64
    public var coalescedSectors: UInt64
    public var bytesServed: UInt64
    public var fetches: UInt64
    public var readAheads: UInt64
    public var lastHopRequestedBytes: UInt64
    public var lastHopPredictedBytes: UInt64
    public var lastHopReadAheadBytes: UInt64
    public var lastHopFrameBytes: UInt64
    public var corruptSectorsRefused: UInt64
    public var intermediateErrors: UInt64
    public var intermediateConnects: UInt64
    public var readAheadWindowBytes: UInt64
    public var lastHopMinRTTUs: UInt64
    public var lastHopMaxRateBytesPerSecond: UInt64
    public var etagChanges: UInt64
    public var stats: UInt64
    public var bytesWritten: UInt64
    public var writesClosed: UInt64
    public var uploadsDone: UInt64
    public var uploadsFailed: UInt64
    public var uploadsRetried: UInt64
    public var uploadsSuperseded: UInt64
    public var uploadPieces: UInt64
    public var uploadBytes: UInt64
    public var uploadWaits: UInt64
    public var journalRefusals: UInt64
    public var journalDiscardedOpen: UInt64
    public var uploadCorruptResent: UInt64
    public var journalReads: UInt64
    public var journalBytes: UInt64

    /// Payload bytes over the last hop: requested, predicted and read-ahead.
    public var lastHopPayloadBytes: UInt64 { lastHopRequestedBytes + lastHopPredictedBytes + lastHopReadAheadBytes }
    /// Last-hop frame bytes over bytes served (0 before anything was served).
    public var readAmplification: Double { bytesServed == 0 ? 0 : Double(lastHopFrameBytes) / Double(bytesServed) }

    public var fields: [(String, UInt64)] {
        [("reads", reads), ("read_errors", readErrors), ("hit_sectors", hitSectors), ("miss_sectors", missSectors),
         ("coalesced_sectors", coalescedSectors), ("bytes_served", bytesServed), ("fetches", fetches),
         ("read_aheads", readAheads), ("last_hop_requested_bytes", lastHopRequestedBytes),
         ("last_hop_predicted_bytes", lastHopPredictedBytes), ("last_hop_read_ahead_bytes", lastHopReadAheadBytes),
         ("last_hop_frame_bytes", lastHopFrameBytes), ("corrupt_sectors_refused", corruptSectorsRefused),
         ("intermediate_errors", intermediateErrors), ("intermediate_connects", intermediateConnects),
         ("read_ahead_window_bytes", readAheadWindowBytes), ("last_hop_min_rtt_us", lastHopMinRTTUs),
         ("last_hop_max_rate_bytes_per_s", lastHopMaxRateBytesPerSecond), ("etag_changes", etagChanges), ("stats", stats),
         ("bytes_written", bytesWritten), ("writes_closed", writesClosed), ("uploads_done", uploadsDone),
         ("uploads_failed", uploadsFailed), ("uploads_retried", uploadsRetried), ("uploads_superseded", uploadsSuperseded),
         ("upload_pieces", uploadPieces), ("upload_bytes", uploadBytes), ("upload_waits", uploadWaits),
         ("journal_refusals", journalRefusals), ("journal_discarded_open", journalDiscardedOpen),
         ("upload_corrupt_resent", uploadCorruptResent), ("journal_reads", journalReads), ("journal_bytes", journalBytes)]
    }

    public var description: String {
        fields.map { "\($0.0) \($0.1)" }.joined(separator: " ") + " read_amplification \(readAmplification)"
    }
}

/// A `readSectors` in flight for one chunk: the chunk-relative sectors it asked for. Reads that need
/// any of them wait for it instead of asking again (single-flight per missing extent).
private final class Flight: Sendable {
    let sectors: [Range<Int>]
    let task: Task<SectorsReply, any Error>

    init(sectors: [Range<Int>], task: Task<SectorsReply, any Error>) {
        self.sectors = sectors
        self.task = task
    }
}

private struct FlightKey: Hashable {
    var key: String
    var chunk: UInt64
}

private struct ApplianceState: ~Copyable {
    var flights: [FlightKey: [ObjectIdentifier: Flight]] = [:]
    var flightCount = 0
    var readAheadsInFlight = 0
    var stats: [String: (size: UInt64, etag: String, atNs: UInt64)] = [:]
    var shares: [String: ApplianceShare] = [:]
    var client: GatewayClient?
    /// Set by `close`: no new connection is made.
    var closed = false
}

/// The appliance: `read` serves bytes of objects of the intermediate's remote store. What the cache
/// holds is served from it; the missing sectors of each chunk are asked for in one `readSectors` (several
/// chunks in parallel, bounded), with `held` and `extraBudgetBytes` from the share's budget, and
/// everything verified that comes back is stored. A read never mixes bytes of two etags: a reply with
/// another etag than the read started with restarts the read with the new one. Thread-safe.
public final class Appliance: Sendable {
    public let configuration: ApplianceConfiguration
    public let units: GatewayUnits
    public let cache: BlockCache
    public let counters: ApplianceCounters
    public let intermediateHost: String
    public let intermediatePort: Int
    /// The last hop's rate and round trip, from this appliance's own calls (sizes `readAheadAuto`).
    public let lastHop = LastHopEstimator()
    private let state: Mutex<ApplianceState>
    private let group: any EventLoopGroup
    /// Writes: the journal and its uploader (nil without `configuration.journal`).
    let journal: ApplianceJournal?
    let uploader: ApplianceUploader?

    private static let attemptsMax = 4
    /// Times a `readSectors` whose reply failed a sector's CRC is sent again before the read fails `.corrupt`.
    static let corruptRetriesMax = 2

    /// Connects to the intermediate at `host:port` (it must be up: its `hello` fixes the units) and
    /// builds the cache. Later connection losses are repaired on the next request.
    public static func start(intermediateHost host: String, port: Int, configuration: ApplianceConfiguration = .init(),
                             group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws(ApplianceError) -> Appliance {
        let checks: [(String, Int, ClosedRange<Int>)] = [
            ("readAheadBytes", configuration.readAheadBytes, 0...(64 << 20)),
            ("readAheadBytesMax", configuration.readAheadBytesMax, 0...(64 << 20)),
            ("sequentialStreakMin", configuration.sequentialStreakMin, 1...64),
            ("readBytesMax", configuration.readBytesMax, 1...ApplianceConfiguration.readBytesMaxLimit),
            ("statEntriesMax", configuration.statEntriesMax, 1...(1 << 22)),
            ("chunkRequestsPerReadMax", configuration.chunkRequestsPerReadMax, 1...256),
            ("flightsMax", configuration.flightsMax, 1...65_536),
            ("readAheadsInFlightMax", configuration.readAheadsInFlightMax, 0...256),
            ("sharesMax", configuration.sharesMax, 1...ApplianceConfiguration.sharesMaxLimit),
            ("patternEntriesMax", configuration.patternEntriesMax, 1...(1 << 20)),
        ]
        for (setting, value, range) in checks where !range.contains(value) {
            throw .invalidRequest(GatewaySettingError.invalid(setting: setting, value: value, rule: "in \(range)").description)
        }
        if let ratio = configuration.budget.ratio, !(ratio >= 0 && ratio <= 1_000) {
            throw .invalidRequest("budget ratio \(ratio) is not in 0...1000")
        }
        let client: GatewayClient
        do { client = try await GatewayClient.connect(host: host, port: port, configuration: configuration.client, group: group) } catch {
            throw Self.map(error)
        }
        let units = client.hello.units
        guard units.blockBytes == configuration.blockBytes else {
            await client.close()
            throw .invalidRequest("block of \(configuration.blockBytes) bytes; the intermediate's is \(units.blockBytes)")
        }
        let cache: BlockCache
        do {
            cache = try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: configuration.cacheBytes, blockBytes: units.blockBytes,
                                                                          sectorBytes: units.sectorBytes))
        } catch {
            await client.close()
            throw .invalidRequest("\(error)")
        }
        let counters = ApplianceCounters()
        counters.add(counters.intermediateConnects)
        var journal: ApplianceJournal?
        var uploader: ApplianceUploader?
        if let journalConfiguration = configuration.journal {
            guard (1...GatewayProtocol.uploadDataBytesMax).contains(configuration.upload.pieceBytes),
                  configuration.upload.pieceBytes % units.sectorBytes == 0 else {
                await client.close()
                throw .invalidRequest("upload pieceBytes \(configuration.upload.pieceBytes) is not a multiple of \(units.sectorBytes) "
                                      + "in 1...\(GatewayProtocol.uploadDataBytesMax)")
            }
            do { journal = try ApplianceJournal(configuration: journalConfiguration, counters: counters) } catch {
                await client.close()
                throw error
            }
            uploader = ApplianceUploader(journal: journal!, counters: counters, configuration: configuration.upload,
                                         clientConfiguration: configuration.client, host: host, port: port, group: group)
        }
        let appliance = Appliance(configuration: configuration, units: units, cache: cache, client: client, host: host, port: port,
                                  group: group, counters: counters, journal: journal, uploader: uploader)
        if let uploader {
            // After an upload: what this appliance cached of the old object goes.
            uploader.setUploaded { [weak appliance] key in appliance?.forget(key: key) }
            uploader.start()
        }
        return appliance
    }

    private init(configuration: ApplianceConfiguration, units: GatewayUnits, cache: BlockCache, client: GatewayClient,
                 host: String, port: Int, group: any EventLoopGroup, counters: ApplianceCounters,
                 journal: ApplianceJournal?, uploader: ApplianceUploader?) {
        self.counters = counters
        self.journal = journal
        self.uploader = uploader
        self.configuration = configuration
        self.units = units
        self.cache = cache
        intermediateHost = host
        intermediatePort = port
        self.group = group
        var initial = ApplianceState()
        initial.client = client
        state = Mutex(initial)
    }

    /// Closes the connection to the intermediate for good (reads in flight and later fail).
    public func close() async {
        await uploader?.stop()
        journal?.closeFiles()
        let client = state.withLock { s -> GatewayClient? in
            s.closed = true
            defer { s.client = nil }
            return s.client
        }
        await client?.close()
    }

    /// Budget use of every share.
    public var shares: [ShareSnapshot] {
        state.withLock { s in s.shares.values.map(\.snapshot) }.sorted { $0.name < $1.name }
    }

    // MARK: Reads

    /// The object's size and etag (cached for `statTTLNs`).
    public func stat(key: String) async throws(ApplianceError) -> (size: UInt64, etag: String) {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        if let entry = journal?.newestSealed(key: key) { return (entry.dataBytes, "journal-\(entry.id)") }
        return try await stat(key, fresh: false)
    }

    /// Drops what this appliance knows of `key` (its stat and cached blocks): the object was replaced.
    func forget(key: String) {
        _ = state.withLock { $0.stats.removeValue(forKey: key) }
        cache.invalidate(key: key)
    }

    /// `length` bytes at `offset` of `key`, for share `share`. The range must lie within the object.
    public func read(key: String, offset: UInt64, length: Int, share shareName: String = "default") async throws(ApplianceError) -> ApplianceReadResult {
        guard (0...configuration.readBytesMax).contains(length) else {
            counters.add(counters.reads)
            counters.add(counters.readErrors)
            throw .invalidRequest("length \(length) not in 0...\(configuration.readBytesMax)")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(length, 1), alignment: 16)
        defer { buffer.deallocate() }
        let stat = try await read(key: key, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), share: shareName)
        let bytes = [UInt8](unsafeUninitializedCapacity: length) { target, count in
            if length > 0 { UnsafeMutableRawBufferPointer(target).copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[0..<length])) }
            count = length
        }
        return ApplianceReadResult(size: stat.size, etag: stat.etag, bytes: bytes)
    }

    /// `out.count` bytes at `offset` of `key` into `out` (no allocation on a cache hit); the object's size
    /// and etag. On a throw `out` holds nothing meaningful.
    public func read(key: String, offset: UInt64, into out: UnsafeMutableRawBufferPointer,
                     share shareName: String = "default") async throws(ApplianceError) -> (size: UInt64, etag: String) {
        counters.add(counters.reads)
        do {
            if journal != nil, let written = try await readJournal(key: key, offset: offset, into: out) {
                counters.add(counters.bytesServed, out.count)
                return written
            }
            return try await readOnce(key: key, offset: offset, out: out, shareName: shareName)
        } catch {
            counters.add(counters.readErrors)
            throw error
        }
    }

    private func readOnce(key: String, offset: UInt64, out: UnsafeMutableRawBufferPointer,
                          shareName: String) async throws(ApplianceError) -> (size: UInt64, etag: String) {
        let length = out.count
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        guard (0...configuration.readBytesMax).contains(length) else {
            throw .invalidRequest("length \(length) not in 0...\(configuration.readBytesMax)")
        }
        let share = try share(shareName)
        var observed = false
        var succeeded = false
        // Served bytes count once the read succeeded, never for one that threw.
        defer { if observed { share.finish(length: length, succeeded: succeeded) } }
        var sequential = false
        for attempt in 0..<Self.attemptsMax {
            let stat = try await stat(key, fresh: attempt > 0)
            guard offset <= stat.size, UInt64(length) <= stat.size - offset else {
                throw .rangeNotSatisfiable(key: key, offset: offset, length: length, size: stat.size)
            }
            if !observed {
                sequential = share.observe(key: key, offset: offset, length: length) >= configuration.sequentialStreakMin
                observed = true
            }
            let range = offset..<(offset + UInt64(length))
            var missing: [Range<UInt64>] = []
            // Every byte of `out` is written: by a cache hit, or by a requested extent (those come in
            // full, their byte counts checked by `GatewayClient.verify`).
            let hits = cache.copy(key: key, etag: stat.etag, range: range, into: out, missing: &missing)
            counters.add(counters.hitSectors, hits)
            if !missing.isEmpty {
                counters.add(counters.missSectors, missing.reduce(0) { $0 + $1.count })
                let extra = sequential ? readAheadWindow(readLength: length, share: share) : 0
                let replies = try await fetch(key: key, etag: stat.etag, missing: missing, share: share, extra: extra)
                if let changed = replies.lazy.map(\.sectors).first(where: { $0.etag != stat.etag || $0.size != stat.size }) {
                    // Never mix: start over with the object as the intermediate now serves it.
                    counters.add(counters.etagChanges)
                    let entriesMax = configuration.statEntriesMax
                    state.withLock { Self.insertStat(key, (changed.size, changed.etag, monotonicNs()), into: &$0.stats, entriesMax: entriesMax) }
                    continue
                }
                for reply in replies { copy(reply, range: range, into: out) }
            }
            counters.add(counters.bytesServed, length)
            succeeded = true
            if sequential {
                readAhead(key: key, etag: stat.etag, size: stat.size, after: range.upperBound, share: share,
                          window: readAheadWindow(readLength: length, share: share))
            }
            return (stat.size, stat.etag)
        }
        throw .objectKeptChanging(key: key, attempts: Self.attemptsMax)
    }

    /// A read the cache answers alone, without suspending: `out.count` bytes at `offset` of `key` into
    /// `out` when the object's stat is fresh (`statTTLNs`), no sealed journal holds the key, and the
    /// cache holds every sector of the range; then the object's size and etag, the read counted as
    /// `read` counts a hit (and read-ahead started when it is sequential). nil when anything is
    /// missing: nothing counted, `out` undefined; the caller then calls `read`, which also reports every
    /// error. The server calls it on its event loop, so a hit costs no task and one copy.
    public func readIfCached(key: String, offset: UInt64, into out: UnsafeMutableRawBufferPointer,
                             share shareName: String = "default") -> (size: UInt64, etag: String)? {
        let length = out.count
        guard length <= configuration.readBytesMax, gatewayKeyIsValid(key) else { return nil }
        if let journal, journal.newestSealed(key: key) != nil { return nil }
        let ttl = configuration.statTTLNs
        guard ttl > 0, let stat = state.withLock({ $0.stats[key] }), monotonicNs() &- stat.atNs < ttl else { return nil }
        guard offset <= stat.size, UInt64(length) <= stat.size - offset else { return nil }
        guard let share = try? share(shareName) else { return nil }
        let range = offset..<(offset + UInt64(length))
        guard cache.copyIfComplete(key: key, etag: stat.etag, range: range, into: out) else { return nil }
        let sequential = share.observe(key: key, offset: offset, length: length) >= configuration.sequentialStreakMin
        share.finish(length: length, succeeded: true)
        let sectorBytes = UInt64(units.sectorBytes)
        let sectors = range.isEmpty ? 0 : (range.upperBound + sectorBytes - 1) / sectorBytes - range.lowerBound / sectorBytes
        counters.add(counters.reads)
        counters.add(counters.hitSectors, Int(sectors))
        counters.add(counters.bytesServed, length)
        if sequential {
            readAhead(key: key, etag: stat.etag, size: stat.size, after: range.upperBound, share: share,
                      window: readAheadWindow(readLength: length, share: share))
        }
        return (stat.size, stat.etag)
    }

    /// How far ahead of a sequential read of `readLength` bytes to fetch: `readAheadBytes`, or with
    /// `readAheadAuto` the window `ReadAheadSizing` derives from the last hop's estimates.
    func readAheadWindow(readLength: Int, share: ApplianceShare) -> Int {
        let window: Int
        if configuration.readAheadAuto {
            window = ReadAheadSizing.windowBytes(readLength: readLength, bandwidthDelayBytes: lastHop.bandwidthDelayBytes,
                                                 chunkBytes: units.chunkBytes, maxBytes: configuration.readAheadBytesMax,
                                                 budget: share.budget)
        } else {
            window = configuration.readAheadBytes
        }
        counters.readAheadWindowBytes.store(UInt64(window), ordering: .relaxed)
        return window
    }

    /// Feeds one call's timing to `lastHop` and publishes its estimates as gauges.
    private func recordLastHop(startNs: UInt64, bytes: Int) {
        lastHop.record(startNs: startNs, endNs: monotonicNs(), bytes: bytes)
        if let rtt = lastHop.minRTTNs { counters.lastHopMinRTTUs.store(rtt / 1_000, ordering: .relaxed) }
        if let rate = lastHop.maxRateBytesPerSecond { counters.lastHopMaxRateBytesPerSecond.store(UInt64(rate), ordering: .relaxed) }
    }

    /// Copies the bytes of `reply`'s extents that fall in object bytes `range` into `out`.
    private func copy(_ reply: ChunkReply, range: Range<UInt64>, into out: UnsafeMutableRawBufferPointer) {
        let base = reply.chunk * UInt64(units.chunkBytes)
        for payload in reply.sectors.extents {
            let start = base + UInt64(payload.extent.sectors(units).lowerBound * units.sectorBytes)
            let end = start + UInt64(payload.bytes.count)
            let from = max(start, range.lowerBound)
            let to = min(end, range.upperBound)
            guard from < to else { continue }
            payload.bytes.withUnsafeBytes { source in
                out.baseAddress!.advanced(by: Int(from - range.lowerBound))
                    .copyMemory(from: source.baseAddress!.advanced(by: Int(from - start)), byteCount: Int(to - from))
            }
        }
    }

    private func share(_ name: String) throws(ApplianceError) -> ApplianceShare {
        let configuration = configuration
        let found: ApplianceShare? = state.withLock { s in
            if let share = s.shares[name] { return share }
            guard s.shares.count < configuration.sharesMax else { return nil }
            let share = ApplianceShare(name: name, budget: configuration.budget, patternEntriesMax: configuration.patternEntriesMax)
            s.shares[name] = share
            return share
        }
        guard let found else { throw .overloaded("\(configuration.sharesMax) shares already exist; '\(name)' is one too many") }
        return found
    }

    private func stat(_ key: String, fresh: Bool) async throws(ApplianceError) -> (size: UInt64, etag: String) {
        let ttl = configuration.statTTLNs
        if !fresh, ttl > 0, let cached = state.withLock({ $0.stats[key] }), monotonicNs() &- cached.atNs < ttl {
            return (cached.size, cached.etag)
        }
        counters.add(counters.stats)
        let startNs = monotonicNs()
        let result = try await withClient { client throws(GatewayClientError) in try await client.stat(key: key) }
        let frameBytes = 4 + GatewayProtocol.replyHeaderBytes + 8 + 2 + result.etag.utf8.count
        recordLastHop(startNs: startNs, bytes: frameBytes)
        counters.add(counters.lastHopFrameBytes, frameBytes)
        let entriesMax = configuration.statEntriesMax
        state.withLock { Self.insertStat(key, (result.size, result.etag, monotonicNs()), into: &$0.stats, entriesMax: entriesMax) }
        return result
    }

    /// Every insert into the stat table: a new key at `entriesMax` entries first evicts one (any: the
    /// table is a bound, not an LRU), so the table never holds more than `entriesMax`.
    static func insertStat(_ key: String, _ stat: (size: UInt64, etag: String, atNs: UInt64),
                           into stats: inout [String: (size: UInt64, etag: String, atNs: UInt64)], entriesMax: Int) {
        precondition(entriesMax > 0, "the table holds an entry")
        if stats[key] == nil, stats.count >= entriesMax, let victim = stats.keys.first { stats[victim] = nil }
        stats[key] = stat
        precondition(stats.count <= entriesMax, "the stat table is bounded")
    }

    /// Entries in the stat table (tests).
    var statEntryCount: Int { state.withLock { $0.stats.count } }

    // MARK: Fetching

    /// Fetches object sector runs `missing` (ascending), chunk by chunk, at most
    /// `chunkRequestsPerReadMax` chunks at once. Returns the replies that carry them (own or joined).
    private func fetch(key: String, etag: String, missing: [Range<UInt64>], share: ApplianceShare,
                       extra: Int) async throws(ApplianceError) -> [ChunkReply] {
        let byChunk = splitByChunk(missing)
        let parallel = configuration.chunkRequestsPerReadMax
        do {
            return try await withThrowingTaskGroup(of: [ChunkReply].self) { group in
                var replies: [ChunkReply] = []
                var next = 0
                var running = 0
                while next < byChunk.count || running > 0 {
                    while next < byChunk.count, running < parallel {
                        let (chunk, runs) = byChunk[next]
                        next += 1
                        running += 1
                        // Budget for the intermediate's predictions: only for sequential reads.
                        group.addTask { try await self.fetchChunk(key: key, etag: etag, chunk: chunk, runs: runs, share: share,
                                                                  extra: extra) }
                    }
                    guard let done = try await group.next() else { break }
                    running -= 1
                    replies.append(contentsOf: done)
                }
                return replies
            }
        } catch let error as ApplianceError {
            throw error
        } catch {
            throw .intermediateUnavailable("\(error)")
        }
    }

    /// The replies that carry chunk-relative sector `runs` of `chunk`: flights already asking for some
    /// of them are joined; the rest is asked for in one new flight.
    private func fetchChunk(key: String, etag: String, chunk: UInt64, runs: [Range<Int>], share: ApplianceShare,
                            extra: Int) async throws(ApplianceError) -> [ChunkReply] {
        let flightKey = FlightKey(key: key, chunk: chunk)
        let flightsMax = configuration.flightsMax
        var coalesced = 0
        let waits: [Flight]? = state.withLock { s in
            let existing = s.flights[flightKey] ?? [:]
            var remaining = runs
            var joined: [Flight] = []
            for flight in existing.values {
                let before = remaining.reduce(0) { $0 + $1.count }
                remaining = subtract(remaining, flight.sectors)
                let after = remaining.reduce(0) { $0 + $1.count }
                if after < before {
                    joined.append(flight)
                    coalesced += before - after
                }
            }
            // One flight per `wantedExtentsMax` runs (each at most u16 sectors): the protocol's bounds.
            let pieces = protocolSized(remaining)
            guard s.flightCount + pieces.count <= flightsMax else { return nil }
            for piece in pieces {
                joined.append(startFlight(&s, flightKey, etag: etag, runs: piece, share: share, extra: extra, readAhead: false))
            }
            return joined
        }
        guard let waits else { throw .overloaded("\(flightsMax) requests to the intermediate in flight") }
        counters.add(counters.coalescedSectors, coalesced)
        var replies: [ChunkReply] = []
        for flight in waits {
            do {
                replies.append(ChunkReply(chunk: chunk, sectors: try await flight.task.value))
            } catch let error as ApplianceError {
                throw error
            } catch {
                throw .intermediateUnavailable("\(error)")
            }
        }
        return replies
    }

    /// Registers and starts a flight (under the lock). It removes itself when done.
    private func startFlight(_ s: inout ApplianceState, _ flightKey: FlightKey, etag: String, runs: [Range<Int>],
                             share: ApplianceShare, extra: Int, readAhead: Bool) -> Flight {
        s.flightCount += 1
        let task = Task<SectorsReply, any Error> {
            try await self.perform(key: flightKey.key, etag: etag, chunk: flightKey.chunk, runs: runs, share: share,
                                   extra: extra, readAhead: readAhead)
        }
        let flight = Flight(sectors: runs, task: task)
        let id = ObjectIdentifier(flight)
        s.flights[flightKey, default: [:]][id] = flight
        Task {
            _ = try? await task.value
            self.state.withLock { s in
                s.flights[flightKey]?[id] = nil
                if s.flights[flightKey]?.isEmpty == true { s.flights[flightKey] = nil }
                s.flightCount -= 1
            }
        }
        return flight
    }

    /// One `readSectors`: asks for `runs` of `chunk`, with what the cache holds of the chunk and the
    /// granted budget; stores every sector of the reply (already CRC-verified by the client). A reply
    /// with a corrupt sector is asked for again, `corruptRetriesMax` times at most (nothing of it is
    /// stored or served); a broken connection is replaced once.
    private func perform(key: String, etag: String, chunk: UInt64, runs: [Range<Int>], share: ApplianceShare,
                         extra: Int, readAhead: Bool) async throws(ApplianceError) -> SectorsReply {
        let units = units
        let requestedBytes = runs.reduce(0) { $0 + $1.count } * units.sectorBytes
        let granted = readAhead ? requestedBytes : share.grant(min(extra, Int(UInt32.max)))
        var settled = false
        defer { if !settled { share.settle(granted: granted, requested: 0, predicted: 0) } }
        let firstBlock = chunk * UInt64(units.blocksPerChunk)
        // Advisory (it only keeps predictions off what is held): cut to the protocol's bound.
        let inChunk = cache.held(key: key, etag: etag, blocks: firstBlock..<(firstBlock + UInt64(units.blocksPerChunk)))
            .filter { $0.block - firstBlock <= UInt64(UInt16.max) }
        let held = inChunk.prefix(GatewayProtocol.heldEntriesMax).map { HeldBlock(block: UInt16($0.block - firstBlock), sectorMask: $0.mask) }
        let request = ReadSectorsRequest(key: key, chunk: chunk, extraBudgetBytes: readAhead ? 0 : UInt32(granted),
                                         wanted: runs.map { SectorExtent(sectors: $0, units: units) }, held: held)
        counters.add(counters.fetches)
        if readAhead { counters.add(counters.readAheads) }
        var corruptRetries = 0
        var reply: SectorsReply?
        var startNs = monotonicNs()
        while reply == nil {
            do throws(ApplianceError) {
                startNs = monotonicNs()
                reply = try await withClient { client throws(GatewayClientError) in try await client.readSectors(request) }
            } catch {
                guard case .corrupt = error, corruptRetries < Self.corruptRetriesMax else { throw error }
                corruptRetries += 1
            }
        }
        let sectors = reply!
        var requested = 0
        var predicted = 0
        var frame = GatewayProtocol.replyHeaderBytes + 4 + 8 + 2 + sectors.etag.utf8.count + 8 + 4 + 2
        let chunkFirstSector = chunk * UInt64(units.sectorsPerChunk)
        for payload in sectors.extents {
            frame += GatewayProtocol.replyExtentHeaderBytes + 4 * Int(payload.extent.sectorCount) + payload.bytes.count
            if payload.reason == .requested { requested += payload.bytes.count } else { predicted += payload.bytes.count }
            let first = chunkFirstSector + UInt64(payload.extent.sectors(units).lowerBound)
            payload.bytes.withUnsafeBytes { cache.store(key: key, etag: sectors.etag, firstSector: first, bytes: $0) }
        }
        recordLastHop(startNs: startNs, bytes: frame)
        counters.add(counters.lastHopFrameBytes, frame)
        if readAhead {
            counters.add(counters.lastHopReadAheadBytes, requested)
            counters.add(counters.lastHopPredictedBytes, predicted)
            share.settle(granted: granted, requested: 0, predicted: requested + predicted)
        } else {
            counters.add(counters.lastHopRequestedBytes, requested)
            counters.add(counters.lastHopPredictedBytes, predicted)
            share.settle(granted: granted, requested: requested, predicted: predicted)
        }
        settled = true
        return sectors
    }

    /// After a sequential read that ended at `end`: asks for the missing sectors of the next `window`
    /// bytes that no flight asks for yet, one `readSectors` per chunk (in order), while fewer than
    /// `readAheadsInFlightMax` read-aheads are in flight and the share's budget grants bytes. A chunk
    /// whose missing sectors are all in flight is skipped, so the window stays full past it.
    /// Object sector runs (ascending) cut at chunk boundaries: per chunk, its runs in chunk-relative sectors.
    private func splitByChunk(_ missing: [Range<UInt64>]) -> [(chunk: UInt64, runs: [Range<Int>])] {
        let perChunk = UInt64(units.sectorsPerChunk)
        var byChunk: [(chunk: UInt64, runs: [Range<Int>])] = []
        for run in missing {
            var sector = run.lowerBound
            while sector < run.upperBound {
                let chunk = sector / perChunk
                let end = min(run.upperBound, (chunk + 1) * perChunk)
                let local = Int(sector - chunk * perChunk)..<Int(end - chunk * perChunk)
                if byChunk.last?.chunk == chunk { byChunk[byChunk.count - 1].runs.append(local) } else { byChunk.append((chunk, [local])) }
                sector = end
            }
        }
        return byChunk
    }

    private func readAhead(key: String, etag: String, size: UInt64, after end: UInt64, share: ApplianceShare, window: Int) {
        let windowEnd = min(size, end + UInt64(window))
        guard end < windowEnd else { return }
        let missing = cache.missing(key: key, etag: etag, range: end..<windowEnd)
        guard !missing.isEmpty else { return }
        let byChunk = splitByChunk(missing)
        let readAheadsMax = configuration.readAheadsInFlightMax
        let flightsMax = configuration.flightsMax
        let sectorBytes = units.sectorBytes
        var started: [Flight] = []
        state.withLock { s in
            for (chunk, chunkRuns) in byChunk {
                guard s.readAheadsInFlight < readAheadsMax, s.flightCount < flightsMax else { return }
                let flightKey = FlightKey(key: key, chunk: chunk)
                var runs = chunkRuns
                for flight in (s.flights[flightKey] ?? [:]).values { runs = subtract(runs, flight.sectors) }
                guard let group = protocolSized(runs).first else { continue }
                let wanted = group.reduce(0) { $0 + $1.count } * sectorBytes
                // The grant is taken whole or trimmed to whole sectors; nothing granted: no more read-ahead.
                // The flight settles the whole sectors it asks for; the rest of the grant is returned now.
                let granted = share.grant(wanted)
                var sectorsLeft = granted / sectorBytes
                share.settle(granted: granted - sectorsLeft * sectorBytes, requested: 0, predicted: 0)
                guard sectorsLeft > 0 else { return }
                var trimmed: [Range<Int>] = []
                for run in group where sectorsLeft > 0 {
                    let take = min(run.count, sectorsLeft)
                    trimmed.append(run.lowerBound..<(run.lowerBound + take))
                    sectorsLeft -= take
                }
                s.readAheadsInFlight += 1
                started.append(startFlight(&s, flightKey, etag: etag, runs: trimmed, share: share, extra: 0, readAhead: true))
                if trimmed.reduce(0, { $0 + $1.count }) * sectorBytes < wanted { return }  // the budget ran out
            }
        }
        for flight in started {
            Task {
                _ = try? await flight.task.value
                self.state.withLock { $0.readAheadsInFlight -= 1 }
            }
        }
    }

    // MARK: The connection

    /// Runs `call` on the connection to the intermediate, connecting first if there is none. A call that
    /// finds the connection broken (the intermediate restarted) is tried once more on a new one.
    private func withClient<T: Sendable>(_ call: (GatewayClient) async throws(GatewayClientError) -> T) async throws(ApplianceError) -> T {
        for attempt in 0..<2 {
            let client = try await connection()
            do {
                return try await call(client)
            } catch {
                switch error {
                case .connectionClosed, .timedOut, .protocolViolation, .queueFull:
                    state.withLock { s in if s.client === client { s.client = nil } }
                    await client.close()
                    if attempt == 0, error == .connectionClosed { continue }
                    counters.add(counters.intermediateErrors)
                    throw Self.map(error)
                case .corruptSector:
                    counters.add(counters.corruptSectorsRefused)
                    throw Self.map(error)
                case .status(let status, _):
                    if status != .notFound && status != .rangeNotSatisfiable { counters.add(counters.intermediateErrors) }
                    throw Self.map(error)
                default:
                    counters.add(counters.intermediateErrors)
                    throw Self.map(error)
                }
            }
        }
        throw .intermediateUnavailable("connection closed twice")
    }

    private func connection() async throws(ApplianceError) -> GatewayClient {
        let (current, closed) = state.withLock { ($0.client, $0.closed) }
        if closed { throw .intermediateUnavailable("the appliance was closed") }
        if let current { return current }
        let client: GatewayClient
        do {
            client = try await GatewayClient.connect(host: intermediateHost, port: intermediatePort, configuration: configuration.client, group: group)
        } catch {
            counters.add(counters.intermediateErrors)
            throw Self.map(error)
        }
        counters.add(counters.intermediateConnects)
        guard client.hello.units == units else {
            await client.close()
            counters.add(counters.intermediateErrors)
            throw .intermediateUnavailable("the intermediate's units changed to \(client.hello.units) (were \(units))")
        }
        let (kept, spare) = state.withLock { s -> (GatewayClient?, GatewayClient?) in
            if s.closed { return (nil, client) }
            if let existing = s.client { return (existing, client) }
            s.client = client
            return (client, nil)
        }
        await spare?.close()
        guard let kept else { throw .intermediateUnavailable("the appliance was closed") }
        return kept
    }

    static func map(_ error: GatewayClientError) -> ApplianceError {
        switch error {
        case .status(let status, let message): .intermediate(status, message: message)
        case .corruptSector(let key, let chunk, let block, let sector): .corrupt(key: key, chunk: chunk, block: block, sector: sector)
        case .invalidRequest(let text): .invalidRequest(text)
        case .connectFailed, .connectionClosed, .timedOut, .protocolViolation: .intermediateUnavailable(error.description)
        case .queueFull: .overloaded(error.description)
        }
    }
}

/// A `readSectors` reply and its chunk.
struct ChunkReply: Sendable {
    var chunk: UInt64
    var sectors: SectorsReply
}

/// `runs` cut into runs of at most `UInt16.max` sectors, grouped by `wantedExtentsMax`: one
/// `readSectors` per group.
func protocolSized(_ runs: [Range<Int>]) -> [[Range<Int>]] {
    var cut: [Range<Int>] = []
    for run in runs {
        var start = run.lowerBound
        while start < run.upperBound {
            let end = min(run.upperBound, start + Int(UInt16.max))
            cut.append(start..<end)
            start = end
        }
    }
    return stride(from: 0, to: cut.count, by: GatewayProtocol.wantedExtentsMax).map {
        Array(cut[$0..<min(cut.count, $0 + GatewayProtocol.wantedExtentsMax)])
    }
}

/// `runs` without the sectors of `minus` (both ascending, not overlapping within themselves).
func subtract(_ runs: [Range<Int>], _ minus: [Range<Int>]) -> [Range<Int>] {
    var result: [Range<Int>] = []
    for run in runs {
        var pieces = [run]
        for cut in minus where cut.overlaps(run) {
            pieces = pieces.flatMap { piece -> [Range<Int>] in
                guard piece.overlaps(cut) else { return [piece] }
                var out: [Range<Int>] = []
                if piece.lowerBound < cut.lowerBound { out.append(piece.lowerBound..<cut.lowerBound) }
                if cut.upperBound < piece.upperBound { out.append(cut.upperBound..<piece.upperBound) }
                return out
            }
        }
        result.append(contentsOf: pieces)
    }
    return result
}
