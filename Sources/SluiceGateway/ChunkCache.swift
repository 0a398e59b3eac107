// Path: Sources/SluiceGateway/ChunkCache.swift — the intermediate device's chunk cache: one file per chunk
// with its per-sector CRC-32Cs, byte-bounded LRU, single-flight remote fetches, reopened after a restart.
import CShims
import Glibc
import SluiceCore
import Synchronization
import SystemPackage

/// What a chunk cache is opened with. `capacityBytes` bounds the cache files (headers included).
public struct ChunkCacheConfiguration: Sendable {
    public var directory: String
    public var capacityBytes: Int
    public var units: GatewayUnits
    /// Remote fetches in flight at once (distinct chunks); one more is refused `overloaded`.
    public var fetchesInFlightMax = 64

    public static let fetchesInFlightMaxLimit = 4_096

    public init(directory: String, capacityBytes: Int, units: GatewayUnits = .standard) {
        self.directory = directory
        self.capacityBytes = capacityBytes
        self.units = units
    }
}

/// Why the cache could not be opened.
public enum ChunkCacheError: Error, Equatable, CustomStringConvertible {
    case setting(GatewaySettingError)
    /// Creating, listing or locking the directory failed.
    case directory(SyscallError)
    /// Another open cache (this process or another) holds the directory's lock file.
    case locked(path: String)

    public var description: String {
        switch self {
        case .setting(let error): "\(error)"
        case .directory(let error): "cache directory: \(error)"
        case .locked(let path): "cache directory in use: \(path) is locked by another cache"
        }
    }
}

/// Why a file found at open was discarded (deleted).
public enum ChunkDiscard: String, Error, Sendable, Hashable, CaseIterable {
    /// A `.tmp` file: a write the process did not finish.
    case unfinishedWrite
    /// Bad magic, format version, header CRC, or a field out of bounds.
    case badHeader
    /// Written with another chunk or sector size than this cache's.
    case otherUnits
    /// The file is not exactly header plus data long (torn or truncated).
    case wrongLength
    /// A data sector failed its CRC-32C.
    case corruptData
    /// An older copy of a chunk also cached under a newer file.
    case duplicate
    /// Beyond the byte bound (least recently written first).
    case overCapacity
    /// Opening or reading it failed (errno).
    case unreadable
}

/// What `ChunkCache.init` found on disk: chunks kept (every sector verified) and files discarded.
public struct ChunkCacheOpenReport: Sendable, Equatable, CustomStringConvertible {
    public var kept = 0
    public var keptBytes = 0
    public var discarded: [ChunkDiscard: Int] = [:]

    public var discardedCount: Int { discarded.values.reduce(0, +) }

    public var description: String {
        let reasons = ChunkDiscard.allCases.compactMap { reason in discarded[reason].map { "\(reason.rawValue) \($0)" } }
        return "kept \(kept) chunks (\(keptBytes) bytes), discarded \(discardedCount)"
            + (reasons.isEmpty ? "" : " (" + reasons.joined(separator: ", ") + ")")
    }
}

/// Why a chunk read failed. Nothing is cached from a failed fetch.
public enum ChunkReadError: Error, Equatable, CustomStringConvertible {
    case remote(RemoteStoreError)
    case overloaded(fetchesInFlight: Int, max: Int)

    public var description: String {
        switch self {
        case .remote(let error): "\(error)"
        case .overloaded(let count, let max): "\(count) chunk fetches in flight (bound \(max))"
        }
    }
}

/// Where a chunk read's sectors came from.
public enum ChunkSource: Sendable, Equatable {
    /// The disk cache (every sector's CRC verified).
    case disk
    /// A remote fetch this read started.
    case fetched
    /// A remote fetch another read had started.
    case coalesced
}

/// The sectors of one run: `bytes` (the last sector short at the object's end) and one CRC per sector.
public struct SectorRunData: Sendable, Equatable {
    public var bytes: [UInt8]
    public var crcs: [UInt32]
}

/// Chunks of remote objects on local disk, one file per chunk: `<crc32c(key)>-<chunk>-<seq>.chunk` holding
/// a header (key, etag, chunk, lengths, one CRC-32C per sector, the header's own CRC) then the data.
/// One file per chunk because eviction is then an unlink (no free space to manage, no index to keep
/// in step), a torn write spoils one chunk only, and a restart rebuilds the index from the files.
///
/// Every read from disk verifies each sector it returns against the CRCs taken when the chunk was
/// fetched; a mismatch drops the chunk, counts `corruptOnDisk` and refetches. A miss fetches the whole
/// chunk once however many readers ask at once (single-flight, keyed by key, chunk and etag; the others
/// are counted `coalesced`); a failed fetch reaches every waiter and is not kept. The byte bound
/// (`capacityBytes`, file sizes) is never passed: eviction takes least recently used chunks that no
/// read holds; a fetched chunk that cannot fit is served from memory and not kept (`notStored`).
/// Files are not fsynced: a cache, whose torn or lost files fail their checks and are fetched again.
/// Any task may call; state is behind one mutex, file I/O runs off the cooperative pool.
public final class ChunkCache: Sendable {
    public let configuration: ChunkCacheConfiguration
    public let counters: GatewayCounters
    /// What the open found on disk.
    public let openReport: ChunkCacheOpenReport
    private let state: Mutex<State>
    private let lockFD: Int32

    struct ChunkID: Hashable, Sendable {
        var key: String
        var chunk: UInt64
    }

    private struct FlightID: Hashable {
        var id: ChunkID
        var etag: String
    }

    /// A cached chunk. `pins` counts reads in progress: eviction skips it while they last.
    struct Entry {
        var etag: String
        var dataBytes: Int
        var headerBytes: Int
        var fileName: String
        var crcs: [UInt32]
        var pins = 0
        var fileBytes: Int { headerBytes + dataBytes }
    }

    /// A fetched chunk with its sector CRCs, shared by every waiter of its flight.
    struct FetchedChunk: Sendable {
        var bytes: [UInt8]
        var crcs: [UInt32]
    }

    /// What a flight's fetch task and its store task both mark. `stale` is set when the key is
    /// invalidated meanwhile: its bytes still answer the reads that waited for it, but are not kept.
    /// `ended` is set (under the state mutex) once the flight no longer counts against
    /// `fetchesInFlightMax`.
    private final class FlightMarks: Sendable {
        let stale = Atomic<Bool>(false)
        let ended = Atomic<Bool>(false)
    }

    /// One remote fetch in flight, joinable while in `State.flights`.
    private struct Flight: Sendable {
        let task: Task<Result<FetchedChunk, ChunkReadError>, Never>
        let marks: FlightMarks
    }

    private struct State {
        var entries: [ChunkID: Entry] = [:]
        var lru = LRUOrder<ChunkID>()
        var chunksByKey: [String: Set<UInt64>] = [:]
        var flights: [FlightID: Flight] = [:]
        /// Flights not yet ended, joinable or not (an invalidate removes a flight from `flights` but its
        /// fetch still runs and holds its bytes): what `fetchesInFlightMax` bounds.
        var fetchesRunning = 0
        /// Tasks storing fetched chunks (one per flight), for `waitUntilSettled`.
        var storing: [UInt64: Task<Void, Never>] = [:]
        var nextStoreID: UInt64 = 0
        var bytesUsed = 0
        /// Bytes of files being written (counted against the bound before they exist).
        var bytesReserved = 0
        var nextSequence: UInt64 = 1
    }

    /// Largest header a chunk file can have (longest key and etag, a CRC per sector), page aligned.
    public var headerBytesMax: Int { ChunkFileFormat.headerBytes(keyBytes: GatewayProtocol.keyBytesMax,
                                                                 etagBytes: GatewayProtocol.etagBytesMax,
                                                                 sectorCount: configuration.units.sectorsPerChunk) }

    /// Opens (creating it if missing, its parent must exist) and locks `configuration.directory`, then
    /// reads back every chunk file: each header and every sector is verified; what fails is deleted and
    /// counted by reason in `openReport`, as are unfinished writes, duplicates and chunks above the
    /// bound. Blocks (reads the whole cache).
    public init(configuration: ChunkCacheConfiguration, counters: GatewayCounters = GatewayCounters()) throws(ChunkCacheError) {
        let units = configuration.units
        let fileBytesMax = ChunkFileFormat.headerBytes(keyBytes: GatewayProtocol.keyBytesMax, etagBytes: GatewayProtocol.etagBytesMax,
                                                       sectorCount: units.sectorsPerChunk) + units.chunkBytes
        guard configuration.capacityBytes >= fileBytesMax else {
            throw .setting(.invalid(setting: "capacityBytes", value: configuration.capacityBytes,
                                    rule: "at least one chunk file (\(fileBytesMax) bytes)"))
        }
        guard (1...Self.fetchesInFlightLimit).contains(configuration.fetchesInFlightMax) else {
            throw .setting(.invalid(setting: "fetchesInFlightMax", value: configuration.fetchesInFlightMax,
                                    rule: "in 1...\(Self.fetchesInFlightLimit)"))
        }
        let directory = configuration.directory
        if mkdir(directory, 0o755) != 0, errno != EEXIST {
            throw .directory(SyscallError("mkdir(\(directory))", Errno(rawValue: errno)))
        }
        let lockPath = directory + "/LOCK"
        let fd: Int32
        switch GatewayFiles.open(lockPath, O_RDWR | O_CREAT) {
        case .success(let opened): fd = opened
        case .failure(let error): throw .directory(error)
        }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            Glibc.close(fd)
            if code == EWOULDBLOCK { throw .locked(path: lockPath) }
            throw .directory(SyscallError("flock(\(lockPath))", Errno(rawValue: code)))
        }
        let loaded: ChunkFileFormat.Loaded
        do { loaded = try ChunkFileFormat.load(directory: directory, units: units, capacityBytes: configuration.capacityBytes) } catch {
            Glibc.close(fd)
            throw .directory(error)
        }
        var state = State()
        // Oldest written first: the least recently used end of the order.
        for found in loaded.entries {
            state.entries[found.id] = found.entry
            state.lru.touch(found.id)
            state.chunksByKey[found.id.key, default: []].insert(found.id.chunk)
            state.bytesUsed += found.entry.fileBytes
        }
        state.nextSequence = loaded.sequenceMax + 1
        precondition(state.bytesUsed <= configuration.capacityBytes, "open keeps the byte bound")
        self.configuration = configuration
        self.counters = counters
        self.openReport = loaded.report
        self.lockFD = fd
        self.state = Mutex(state)
    }

    /// Bound of `ChunkCacheConfiguration.fetchesInFlightMax`.
    public static let fetchesInFlightLimit = ChunkCacheConfiguration.fetchesInFlightMaxLimit

    deinit { Glibc.close(lockFD) }

    // MARK: Reads

    /// The sectors of `runs` (chunk-relative sector ranges, each starting before `chunkLength`) of
    /// chunk `chunk` of `key` at `etag`, with their CRCs. From disk when cached at this etag (verified),
    /// else from the single remote fetch of the whole chunk (`fetch` must return its `chunkLength`
    /// bytes; it runs at most once per flight, on its own task, so a reader that goes away does not
    /// cancel it for the others). A cached chunk of another etag or length is dropped.
    public func read(key: String, etag: String, chunk: UInt64, chunkLength: Int, runs: [Range<Int>],
                     fetch: @escaping @Sendable () async throws(RemoteStoreError) -> [UInt8]) async throws(ChunkReadError) -> (source: ChunkSource, runs: [SectorRunData]) {
        let units = configuration.units
        precondition(chunkLength > 0 && chunkLength <= units.chunkBytes, "a chunk holds 1...chunkBytes bytes")
        let sectorCount = (chunkLength + units.sectorBytes - 1) / units.sectorBytes
        for run in runs {
            precondition(!run.isEmpty && run.lowerBound >= 0, "a run holds a sector")
            precondition(run.upperBound <= sectorCount, "a run ends within the chunk's data")
        }
        let id = ChunkID(key: key, chunk: chunk)
        if let pinned = pin(id, etag: etag, dataBytes: chunkLength) {
            let path = configuration.directory + "/" + pinned.fileName
            let sectorBytes = units.sectorBytes
            let outcome = await runBlocking {
                Self.readRuns(path: path, headerBytes: pinned.headerBytes, dataBytes: chunkLength, crcs: pinned.crcs,
                              runs: runs, sectorBytes: sectorBytes)
            }
            unpin(id, fileName: pinned.fileName)
            switch outcome {
            case .verified(let data):
                counters.add(counters.chunkHits)
                return (.disk, data)
            case .corrupt:
                counters.add(counters.corruptOnDisk)
                drop(id, fileName: pinned.fileName)
            case .gone:
                break  // dropped (invalidated, replaced) between the lookup and the open: fetch it
            case .failed:
                counters.add(counters.diskErrors)
                drop(id, fileName: pinned.fileName)
            }
        }
        let (fetched, source) = try await fetchOnce(id, etag: etag, chunkLength: chunkLength, fetch: fetch)
        return (source, runs.map { Self.extract($0, from: fetched, sectorBytes: units.sectorBytes) })
    }

    /// Drops every cached chunk of `key` and keeps any fetch now in flight for it from being stored.
    /// Returns how many chunks were dropped.
    @discardableResult
    public func invalidate(key: String) -> Int {
        let files = state.withLock { state -> [String] in
            // A later read must not join a fetch that may have been answered before the write.
            for (flightID, flight) in state.flights where flightID.id.key == key {
                flight.marks.stale.store(true, ordering: .relaxed)
                state.flights[flightID] = nil
            }
            guard let chunks = state.chunksByKey[key] else { return [] }
            return chunks.compactMap { Self.remove(ChunkID(key: key, chunk: $0), from: &state)?.fileName }
        }
        unlink(files)
        return files.count
    }

    /// Waits until every fetch started before the call has been stored on disk or dropped. A read
    /// returns as soon as its bytes arrived, before they are stored; for tests and orderly shutdown.
    public func waitUntilSettled() async {
        let tasks = state.withLock { Array($0.storing.values) }
        for task in tasks { await task.value }
    }

    // MARK: Introspection (tests, reports)

    public var bytesUsed: Int { state.withLock { $0.bytesUsed } }
    public var chunkCount: Int { state.withLock { $0.entries.count } }
    /// Fetches not yet ended, including those an invalidate made unjoinable.
    public var fetchesInFlight: Int { state.withLock { $0.fetchesRunning } }

    /// Cached chunks from the least to the most recently used.
    public var chunksOldestFirst: [(key: String, chunk: UInt64)] {
        state.withLock { $0.lru.keysOldestFirst.map { ($0.key, $0.chunk) } }
    }

    /// The file holding chunk `chunk` of `key`, nil when not cached.
    public func filePath(key: String, chunk: UInt64) -> String? {
        state.withLock { $0.entries[ChunkID(key: key, chunk: chunk)] }.map { configuration.directory + "/" + $0.fileName }
    }

    // MARK: Index (under the mutex)

    struct Pinned {
        var fileName: String
        var headerBytes: Int
        var crcs: [UInt32]
    }

    /// Pins the entry when cached at this etag and length; drops it when cached at another.
    func pin(_ id: ChunkID, etag: String, dataBytes: Int) -> Pinned? {
        var outdated: String?
        let pinned = state.withLock { state -> Pinned? in
            guard var entry = state.entries[id] else { return nil }
            guard entry.etag == etag, entry.dataBytes == dataBytes else {
                outdated = Self.remove(id, from: &state)?.fileName
                return nil
            }
            entry.pins += 1
            state.entries[id] = entry
            state.lru.touch(id)
            return Pinned(fileName: entry.fileName, headerBytes: entry.headerBytes, crcs: entry.crcs)
        }
        if let outdated { unlink([outdated]) }
        return pinned
    }

    func unpin(_ id: ChunkID, fileName: String) {
        state.withLock { state in
            // The entry may have been dropped or replaced meanwhile: its pins went with it.
            guard var entry = state.entries[id], entry.fileName == fileName else { return }
            precondition(entry.pins > 0, "every unpin follows a pin")
            entry.pins -= 1
            state.entries[id] = entry
        }
    }

    /// Drops the entry if it is still the one in `fileName`.
    private func drop(_ id: ChunkID, fileName: String) {
        let removed = state.withLock { state -> Bool in
            guard state.entries[id]?.fileName == fileName else { return false }
            _ = Self.remove(id, from: &state)
            return true
        }
        if removed { unlink([fileName]) }
    }

    /// Removes an entry from every index; the caller unlinks its file.
    private static func remove(_ id: ChunkID, from state: inout State) -> Entry? {
        guard let entry = state.entries.removeValue(forKey: id) else { return nil }
        state.lru.remove(id)
        state.chunksByKey[id.key]?.remove(id.chunk)
        if state.chunksByKey[id.key]?.isEmpty == true { state.chunksByKey[id.key] = nil }
        state.bytesUsed -= entry.fileBytes
        precondition(state.bytesUsed >= 0, "bytes used never go negative")
        return entry
    }

    private func unlink(_ fileNames: [String]) {
        for name in fileNames { Glibc.unlink(configuration.directory + "/" + name) }
    }

    // MARK: Single-flight fetch

    /// Joins the fetch in flight for (key, chunk, etag) or starts it. Throws its error to every waiter.
    private func fetchOnce(_ id: ChunkID, etag: String, chunkLength: Int,
                           fetch: @escaping @Sendable () async throws(RemoteStoreError) -> [UInt8]) async throws(ChunkReadError) -> (FetchedChunk, ChunkSource) {
        let flightID = FlightID(id: id, etag: etag)
        let limit = configuration.fetchesInFlightMax
        let sectorBytes = configuration.units.sectorBytes
        let counters = counters
        let started = try state.withLock { state throws(ChunkReadError) -> (Flight, Bool) in
            if let flight = state.flights[flightID] { return (flight, false) }
            guard state.fetchesRunning < limit else { throw .overloaded(fetchesInFlight: state.fetchesRunning, max: limit) }
            let marks = FlightMarks()
            let task = Task { () -> Result<FetchedChunk, ChunkReadError> in
                counters.add(counters.remoteReads)
                let result: Result<FetchedChunk, ChunkReadError>
                do throws(RemoteStoreError) {
                    let bytes = try await fetch()
                    counters.add(counters.bytesFromRemote, bytes.count)
                    if bytes.count == chunkLength {
                        result = .success(FetchedChunk(bytes: bytes, crcs: sectorCRCs(bytes, sectorBytes: sectorBytes)))
                    } else {
                        counters.add(counters.remoteErrors)
                        result = .failure(.remote(.failed("chunk \(id.chunk) of \(id.key): \(bytes.count) bytes, expected \(chunkLength)")))
                    }
                } catch {
                    if error.status == .remoteUnavailable {
                        counters.add(counters.remoteUnavailable)
                    } else {
                        counters.add(counters.remoteErrors)
                    }
                    result = .failure(.remote(error))
                }
                // A failure leaves the table before any waiter sees it: a read after this starts a new
                // fetch, never joins this one for its stale error.
                if case .failure = result { self.state.withLock { state in Self.endFlight(marks, flightID, in: &state) } }
                return result
            }
            let flight = Flight(task: task, marks: marks)
            state.flights[flightID] = flight
            state.fetchesRunning += 1
            // Stores the chunk, then ends the flight: until then a reader joins it (its bytes are in memory).
            // Registered here, under the lock, so `waitUntilSettled` never misses it.
            let storeID = state.nextStoreID
            state.nextStoreID += 1
            state.storing[storeID] = Task {
                await self.store(flight, flightID)
                self.state.withLock { state in _ = state.storing.removeValue(forKey: storeID) }
            }
            return (flight, true)
        }
        let (flight, leader) = started
        if leader {
            counters.add(counters.chunkMisses)
        } else {
            counters.add(counters.chunkCoalesced)
        }
        let fetched = try await flight.task.value.get()
        return (fetched, leader ? .fetched : .coalesced)
    }

    /// After a flight's fetch: keeps the chunk on disk when it succeeded, was not invalidated meanwhile
    /// and fits (evicting least recently used unpinned chunks), then removes the flight.
    private func store(_ flight: Flight, _ flightID: FlightID) async {
        let result = await flight.task.value
        guard case .success(let fetched) = result, !flight.marks.stale.load(ordering: .relaxed) else {
            state.withLock { state in Self.endFlight(flight.marks, flightID, in: &state) }
            return
        }
        let id = flightID.id
        let headerBytes = ChunkFileFormat.headerBytes(keyBytes: id.key.utf8.count, etagBytes: flightID.etag.utf8.count,
                                                      sectorCount: fetched.crcs.count)
        let fileBytes = headerBytes + fetched.bytes.count
        let capacity = configuration.capacityBytes
        var evicted: [String] = []
        let fileName = state.withLock { state -> String? in
            while state.bytesUsed + state.bytesReserved + fileBytes > capacity {
                guard let victim = state.lru.oldest(where: { state.entries[$0]!.pins == 0 }) else { break }
                evicted.append(Self.remove(victim, from: &state)!.fileName)
            }
            guard state.bytesUsed + state.bytesReserved + fileBytes <= capacity else {
                Self.endFlight(flight.marks, flightID, in: &state)
                return nil
            }
            state.bytesReserved += fileBytes
            defer { state.nextSequence += 1 }
            return ChunkFileFormat.fileName(key: id.key, chunk: id.chunk, sequence: state.nextSequence)
        }
        counters.add(counters.evictions, evicted.count)
        unlink(evicted)
        guard let fileName else {
            counters.add(counters.notStored)
            return
        }
        let header = ChunkFileFormat.encodeHeader(key: id.key, etag: flightID.etag, chunk: id.chunk, dataBytes: fetched.bytes.count,
                                                  crcs: fetched.crcs, units: configuration.units)
        precondition(header.count == headerBytes, "the header is as long as planned")
        let directory = configuration.directory
        let failure = await runBlocking { ChunkFileFormat.write(directory: directory, fileName: fileName, header: header, data: fetched.bytes) }
        if failure != nil { counters.add(counters.diskErrors) }
        var replaced: String?
        let kept = state.withLock { state -> Bool in
            state.bytesReserved -= fileBytes
            Self.endFlight(flight.marks, flightID, in: &state)
            guard failure == nil, !flight.marks.stale.load(ordering: .relaxed) else { return false }
            replaced = Self.remove(id, from: &state)?.fileName
            state.entries[id] = Entry(etag: flightID.etag, dataBytes: fetched.bytes.count, headerBytes: headerBytes,
                                      fileName: fileName, crcs: fetched.crcs)
            state.lru.touch(id)
            state.chunksByKey[id.key, default: []].insert(id.chunk)
            state.bytesUsed += fileBytes
            precondition(state.bytesUsed + state.bytesReserved <= capacity, "the byte bound holds")
            return true
        }
        if let replaced { unlink([replaced]) }
        if !kept { unlink([fileName]) }
    }

    /// Ends a flight once (its fetch failed, or its chunk was stored or dropped): it stops counting
    /// against `fetchesInFlightMax` and leaves the table unless an invalidate already removed it or a
    /// newer flight replaced it.
    private static func endFlight(_ marks: FlightMarks, _ flightID: FlightID, in state: inout State) {
        guard !marks.ended.exchange(true, ordering: .relaxed) else { return }
        state.fetchesRunning -= 1
        precondition(state.fetchesRunning >= 0, "each flight ends once")
        if state.flights[flightID]?.marks === marks { state.flights[flightID] = nil }
    }

    // MARK: Disk reads (blocking)

    private enum DiskRead: Sendable {
        case verified([SectorRunData])
        /// Sector `sector` did not match its CRC.
        case corrupt(sector: Int)
        /// The file is no longer there.
        case gone
        case failed(SyscallError)
    }

    /// Reads `runs` from a chunk file and checks every sector against `crcs`.
    private static func readRuns(path: String, headerBytes: Int, dataBytes: Int, crcs: [UInt32], runs: [Range<Int>],
                                 sectorBytes: Int) -> DiskRead {
        let fd: Int32
        switch GatewayFiles.open(path, O_RDONLY) {
        case .success(let opened): fd = opened
        case .failure(let error): return error.errno == .noSuchFileOrDirectory ? .gone : .failed(error)
        }
        defer { Glibc.close(fd) }
        var data: [SectorRunData] = []
        data.reserveCapacity(runs.count)
        for run in runs {
            let start = run.lowerBound * sectorBytes
            let end = min(run.upperBound * sectorBytes, dataBytes)
            let bytes: [UInt8]
            switch GatewayFiles.pread(fd, count: end - start, offset: Int64(headerBytes + start), what: path) {
            case .success(let read): bytes = read
            case .failure(let error): return .failed(error)
            }
            let runCRCs = Array(crcs[run])
            let computed = sectorCRCs(bytes, sectorBytes: sectorBytes)
            if let bad = computed.indices.first(where: { computed[$0] != runCRCs[$0] }) { return .corrupt(sector: run.lowerBound + bad) }
            data.append(SectorRunData(bytes: bytes, crcs: runCRCs))
        }
        return .verified(data)
    }

    private static func extract(_ run: Range<Int>, from chunk: FetchedChunk, sectorBytes: Int) -> SectorRunData {
        let start = run.lowerBound * sectorBytes
        let end = min(run.upperBound * sectorBytes, chunk.bytes.count)
        return SectorRunData(bytes: Array(chunk.bytes[start..<end]), crcs: Array(chunk.crcs[run]))
    }
}

/// The CRC-32C of each `sectorBytes` sector of `bytes` (the last one may be short).
public func sectorCRCs(_ bytes: [UInt8], sectorBytes: Int) -> [UInt32] {
    precondition(sectorBytes > 0, "sectors have a size")
    let count = (bytes.count + sectorBytes - 1) / sectorBytes
    return bytes.withUnsafeBytes { raw in
        (0..<count).map { index in
            let start = index * sectorBytes
            return sluice_crc32c(0, raw.baseAddress! + start, min(sectorBytes, raw.count - start))
        }
    }
}
