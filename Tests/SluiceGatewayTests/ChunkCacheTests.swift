// Path: Tests/SluiceGatewayTests/ChunkCacheTests.swift — the chunk cache over a real directory store:
// hits and misses, the byte bound, restart, corruption on disk, single-flight and its errors.
import Glibc
import Testing
@testable import SluiceGateway

@Suite struct ChunkCacheTests {
    let units = smallUnits  // 64 KiB chunks, 16 sectors of 4 KiB
    /// One chunk file at most: a 4 KiB header (short keys) and 64 KiB of data.
    let fileBytes = 4096 + (64 << 10)

    struct Fixture {
        let storeDirectory = TemporaryDirectory("sluice-gw-store")
        let cacheDirectory = TemporaryDirectory("sluice-gw-cache")
        let store: DirectoryObjectStore
        let object: [UInt8]
        let key = "obj"

        init(objectBytes count: Int = 10 * (64 << 10) + 5000) {
            store = DirectoryObjectStore(root: storeDirectory.path)
            object = objectBytes(count, seed: 7)
            writeObject(storeDirectory.path, key, object)
        }

        func cache(capacityBytes: Int, fetchesInFlightMax: Int = 64, counters: GatewayCounters = GatewayCounters()) throws -> ChunkCache {
            var configuration = ChunkCacheConfiguration(directory: cacheDirectory.path + "/cache", capacityBytes: capacityBytes, units: smallUnits)
            configuration.fetchesInFlightMax = fetchesInFlightMax
            return try ChunkCache(configuration: configuration, counters: counters)
        }

        /// Reads `runs` of `chunk` through `cache`, fetching from the store on a miss.
        func read(_ cache: ChunkCache, chunk: UInt64, runs: [Range<Int>] = [0..<16]) async throws(ChunkReadError) -> (ChunkSource, [SectorRunData]) {
            let (size, etag) = try await sizeAndEtag()
            let length = smallUnits.chunkLength(chunk, objectSize: size)
            let start = chunk * UInt64(smallUnits.chunkBytes)
            let store = store
            let key = key
            let result = try await cache.read(key: key, etag: etag, chunk: chunk, chunkLength: length, runs: runs) {
                () async throws(RemoteStoreError) -> [UInt8] in try await store.read(key: key, range: start..<(start + UInt64(length)))
            }
            // A miss returns before its chunk is stored: the tests look at the cache once it is.
            await cache.waitUntilSettled()
            return (result.source, result.runs)
        }

        func sizeAndEtag() async throws(ChunkReadError) -> (UInt64, String) {
            do throws(RemoteStoreError) { return try await store.size(key: key) } catch { throw .remote(error) }
        }
    }

    /// An object replaced (same size) after its stat: a read for the stat's etag is `changed`, never the
    /// new version's bytes under the old etag; a read with the new etag gets them.
    @Test func aReadForAnOldVersionIsRefused() async throws {
        let fixture = Fixture()
        let old = try await fixture.store.size(key: fixture.key)
        let replacement = objectBytes(fixture.object.count, seed: 8)
        writeObject(fixture.storeDirectory.path, fixture.key + ".new", replacement)
        #expect(rename(fixture.storeDirectory.path + "/" + fixture.key + ".new", fixture.storeDirectory.path + "/" + fixture.key) == 0)
        let new = try await fixture.store.size(key: fixture.key)
        #expect(new.size == old.size && new.etag != old.etag)
        await #expect(throws: RemoteStoreError.changed(key: fixture.key, expected: old.etag, found: new.etag)) {
            try await fixture.store.read(key: fixture.key, range: 0..<4096, etag: old.etag)
        }
        let bytes = try await fixture.store.read(key: fixture.key, range: 0..<4096, etag: new.etag)
        #expect(bytes == Array(replacement[0..<4096]))
    }

    @Test func missThenHitReturnVerifiedBytes() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        let runs = [0..<1, 3..<9, 15..<16]
        let (first, fetched) = try await fixture.read(cache, chunk: 2, runs: runs)
        let (second, cached) = try await fixture.read(cache, chunk: 2, runs: runs)
        #expect(first == .fetched)
        #expect(second == .disk)
        for (index, run) in runs.enumerated() {
            let expected = expectedBytes(fixture.object, chunk: 2, run: run, units: units)
            #expect(fetched[index].bytes == expected)
            #expect(cached[index].bytes == expected)
            #expect(cached[index].crcs == sectorCRCs(expected, sectorBytes: 4096))
        }
        #expect(fixture.store.readCount == 1)
        let counters = cache.counters.snapshot()
        #expect(counters.chunkMisses == 1 && counters.chunkHits == 1)
        #expect(counters.bytesFromRemote == UInt64(64 << 10))
        // The short last chunk (5000 bytes: one full sector and a short one).
        let (_, tail) = try await fixture.read(cache, chunk: 10, runs: [0..<2])
        #expect(tail[0].bytes == Array(fixture.object[(10 * (64 << 10))...]))
        #expect(cache.filePath(key: "obj", chunk: 10).map(fileSize) == 4096 + 5000)
    }

    @Test func byteBoundHoldsAndEvictsTheLeastRecentlyUsed() async throws {
        let fixture = Fixture()
        let capacity = 3 * fileBytes
        let cache = try fixture.cache(capacityBytes: capacity)
        for chunk: UInt64 in [0, 1, 2] { _ = try await fixture.read(cache, chunk: chunk) }
        _ = try await fixture.read(cache, chunk: 0)  // 0 is now the most recently used
        for chunk: UInt64 in [3, 4] {
            _ = try await fixture.read(cache, chunk: chunk)
            #expect(cache.bytesUsed <= capacity)
        }
        #expect(cache.chunkCount == 3)
        #expect(cache.chunksOldestFirst.map(\.chunk) == [0, 3, 4])
        #expect(cache.counters.snapshot().evictions == 2)
        let files = try ChunkFileFormat.listDirectory(fixture.cacheDirectory.path + "/cache").filter { $0.hasSuffix(".chunk") }
        #expect(files.count == 3)
        #expect(files.map { fileSize(fixture.cacheDirectory.path + "/cache/" + $0) }.reduce(0, +) == cache.bytesUsed)
    }

    /// A chunk pinned by a read in progress is skipped by eviction; when every chunk is pinned, a fetched
    /// chunk is served but not kept, and the bound holds.
    @Test func aChunkBeingReadIsNeverEvicted() async throws {
        let fixture = Fixture()
        let capacity = 2 * fileBytes
        let cache = try fixture.cache(capacityBytes: capacity)
        let (_, etag) = try await fixture.sizeAndEtag()
        for chunk: UInt64 in [0, 1] { _ = try await fixture.read(cache, chunk: chunk) }
        let zero = try #require(cache.pin(ChunkCache.ChunkID(key: "obj", chunk: 0), etag: etag, dataBytes: 64 << 10))
        _ = try await fixture.read(cache, chunk: 1)  // chunk 0 is now the least recently used, and pinned
        _ = try await fixture.read(cache, chunk: 2)
        #expect(cache.chunksOldestFirst.map(\.chunk) == [0, 2])
        let two = try #require(cache.pin(ChunkCache.ChunkID(key: "obj", chunk: 2), etag: etag, dataBytes: 64 << 10))
        let (source, runs) = try await fixture.read(cache, chunk: 3, runs: [2..<3])
        #expect(source == .fetched)
        #expect(runs[0].bytes == expectedBytes(fixture.object, chunk: 3, run: 2..<3, units: units))
        #expect(cache.chunksOldestFirst.map(\.chunk) == [0, 2])
        #expect(cache.counters.snapshot().notStored == 1)
        #expect(cache.bytesUsed <= capacity)
        cache.unpin(ChunkCache.ChunkID(key: "obj", chunk: 0), fileName: zero.fileName)
        cache.unpin(ChunkCache.ChunkID(key: "obj", chunk: 2), fileName: two.fileName)
        _ = try await fixture.read(cache, chunk: 3)
        #expect(cache.chunksOldestFirst.map(\.chunk) == [2, 3])
    }

    @Test func restartKeepsVerifiedChunksAndDiscardsTheRest() async throws {
        let fixture = Fixture()
        do {
            let cache = try fixture.cache(capacityBytes: 8 * fileBytes)
            for chunk: UInt64 in 0..<6 { _ = try await fixture.read(cache, chunk: chunk) }
            flipByte(cache.filePath(key: "obj", chunk: 1)!, at: -1)                       // data
            flipByte(cache.filePath(key: "obj", chunk: 2)!, at: 50)                       // header
            truncate(cache.filePath(key: "obj", chunk: 3)!, off_t(fileBytes - 10))        // torn
            writeObject(fixture.cacheDirectory.path + "/cache", "0000-x.chunk.tmp", [1, 2, 3])  // unfinished write
            writeObject(fixture.cacheDirectory.path + "/cache", "notes.txt", [1])         // not ours: left alone
        }
        let readsBefore = fixture.store.readCount
        let cache = try fixture.cache(capacityBytes: 8 * fileBytes)
        let report = cache.openReport
        #expect(report.kept == 3)
        #expect(report.discarded == [.corruptData: 1, .badHeader: 1, .wrongLength: 1, .unfinishedWrite: 1])
        #expect(cache.chunkCount == 3)
        for chunk: UInt64 in [0, 4, 5] {
            let (source, runs) = try await fixture.read(cache, chunk: chunk)
            #expect(source == .disk)
            #expect(runs[0].bytes == expectedBytes(fixture.object, chunk: chunk, run: 0..<16, units: units))
        }
        #expect(fixture.store.readCount == readsBefore)
        #expect(fileSize(fixture.cacheDirectory.path + "/cache/notes.txt") == 1)
        // Reopened with another chunk size, nothing matches: all discarded as other units.
        _ = consume cache
        var other = ChunkCacheConfiguration(directory: fixture.cacheDirectory.path + "/cache", capacityBytes: 8 * (128 << 10),
                                            units: try GatewayUnits(chunkBytes: 128 << 10, blockBytes: 16 << 10, sectorBytes: 4096))
        other.fetchesInFlightMax = 4
        #expect(try ChunkCache(configuration: other).openReport.discarded == [.otherUnits: 3])
    }

    @Test func restartAboveANewBoundKeepsTheNewest() async throws {
        let fixture = Fixture()
        do {
            let cache = try fixture.cache(capacityBytes: 6 * fileBytes)
            for chunk: UInt64 in 0..<6 { _ = try await fixture.read(cache, chunk: chunk) }
        }
        let cache = try fixture.cache(capacityBytes: 2 * fileBytes)
        #expect(cache.openReport.discarded == [.overCapacity: 4])
        #expect(cache.bytesUsed <= 2 * fileBytes)
        #expect(cache.chunkCount == 2)
    }

    @Test func secondOpenOfADirectoryIsLockedOut() throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 2 * fileBytes)
        #expect(throws: ChunkCacheError.locked(path: fixture.cacheDirectory.path + "/cache/LOCK")) {
            try fixture.cache(capacityBytes: 2 * fileBytes)
        }
        _ = cache
        #expect(throws: ChunkCacheError.self) { try fixture.cache(capacityBytes: fileBytes - 1) }
    }

    @Test func flippedByteOnDiskIsDetectedAndRefetched() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        _ = try await fixture.read(cache, chunk: 4)
        let path = try #require(cache.filePath(key: "obj", chunk: 4))
        flipByte(path, at: 4096 + 5 * 4096 + 17)  // sector 5 of the data
        // A read that does not touch sector 5 is served from disk, verified.
        let (untouched, _) = try await fixture.read(cache, chunk: 4, runs: [0..<5])
        #expect(untouched == .disk)
        let (source, runs) = try await fixture.read(cache, chunk: 4, runs: [4..<7])
        #expect(source == .fetched)
        #expect(runs[0].bytes == expectedBytes(fixture.object, chunk: 4, run: 4..<7, units: units))
        #expect(cache.counters.snapshot().corruptOnDisk == 1)
        #expect(fixture.store.readCount == 2)
        #expect(cache.filePath(key: "obj", chunk: 4) != path)  // a new file replaced the corrupt one
        let (again, _) = try await fixture.read(cache, chunk: 4, runs: [0..<16])
        #expect(again == .disk)
    }

    @Test func concurrentMissesFetchOnce() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        fixture.store.readDelayNs.store(500_000_000, ordering: .relaxed)  // long enough for every reader to join
        let readers = 16
        let results = try await withThrowingTaskGroup(of: (ChunkSource, [UInt8]).self) { group in
            for reader in 0..<readers {
                group.addTask {
                    let run = (reader % 16)..<(reader % 16 + 1)
                    let (source, runs) = try await fixture.read(cache, chunk: 3, runs: [run])
                    #expect(runs[0].bytes == expectedBytes(fixture.object, chunk: 3, run: run, units: smallUnits))
                    return (source, runs[0].bytes)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(fixture.store.readCount == 1)
        #expect(results.filter { $0.0 == .fetched }.count == 1)
        #expect(results.filter { $0.0 == .coalesced }.count == readers - 1)
        let counters = cache.counters.snapshot()
        #expect(counters.chunkMisses == 1)
        #expect(counters.chunkCoalesced == UInt64(readers - 1))
    }

    @Test func fetchErrorReachesEveryWaiterAndIsNotCached() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        fixture.store.readDelayNs.store(1_000_000_000, ordering: .relaxed)
        let (size, etag) = try await fixture.sizeAndEtag()
        let length = smallUnits.chunkLength(1, objectSize: size)
        let store = fixture.store
        let failures = await withTaskGroup(of: ChunkReadError?.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    do throws(ChunkReadError) {
                        _ = try await cache.read(key: "obj", etag: etag, chunk: 1, chunkLength: length, runs: [0..<1]) {
                            () async throws(RemoteStoreError) -> [UInt8] in
                            try await store.read(key: "obj", range: UInt64(64 << 10)..<UInt64(128 << 10))
                        }
                        return nil
                    } catch { return error }
                }
            }
            // The object disappears while the one fetch waits, once every reader has joined it.
            for _ in 0..<200 {
                let counters = cache.counters.snapshot()
                if counters.chunkMisses + counters.chunkCoalesced == 8 { break }
                try? await Task.sleep(nanoseconds: 5_000_000)
            }
            unlink(fixture.storeDirectory.path + "/obj")
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(failures.count == 8)
        #expect(failures.allSatisfy { $0 == .remote(.notFound(key: "obj")) })
        #expect(fixture.store.readCount == 1)
        #expect(cache.chunkCount == 0)
        // The flight ends on its own task just after its waiters were answered.
        for _ in 0..<100 where cache.fetchesInFlight > 0 { try await Task.sleep(nanoseconds: 10_000_000) }
        #expect(cache.fetchesInFlight == 0)
        // Back again: the error was not kept, the next read fetches.
        fixture.store.readDelayNs.store(0, ordering: .relaxed)
        writeObject(fixture.storeDirectory.path, "obj", fixture.object)
        let (source, runs) = try await fixture.read(cache, chunk: 1, runs: [0..<1])
        #expect(source == .fetched)
        #expect(runs[0].bytes == expectedBytes(fixture.object, chunk: 1, run: 0..<1, units: units))
        #expect(fixture.store.readCount == 2)
    }

    @Test func fetchesInFlightAreBounded() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes, fetchesInFlightMax: 1)
        fixture.store.readDelayNs.store(300_000_000, ordering: .relaxed)
        async let first = fixture.read(cache, chunk: 0)
        for _ in 0..<200 where cache.fetchesInFlight == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        await #expect(throws: ChunkReadError.overloaded(fetchesInFlight: 1, max: 1)) { try await fixture.read(cache, chunk: 1) }
        #expect(try await first.0 == .fetched)
    }

    @Test func invalidateDropsChunksAndKeepsAFetchInFlightFromBeingStored() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 8 * fileBytes)
        for chunk: UInt64 in 0..<3 { _ = try await fixture.read(cache, chunk: chunk) }
        #expect(cache.invalidate(key: "obj") == 3)
        #expect(cache.chunkCount == 0 && cache.bytesUsed == 0)
        fixture.store.readDelayNs.store(200_000_000, ordering: .relaxed)
        async let inFlight = fixture.read(cache, chunk: 5)
        for _ in 0..<200 where cache.fetchesInFlight == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        #expect(cache.fetchesInFlight == 1)
        cache.invalidate(key: "obj")
        #expect(try await inFlight.0 == .fetched)  // its waiters still get the bytes
        #expect(cache.chunkCount == 0)
        let files = try ChunkFileFormat.listDirectory(fixture.cacheDirectory.path + "/cache").filter { $0 != "LOCK" }
        #expect(files.isEmpty)
    }

    /// An invalidate makes a fetch unjoinable but it still runs and holds its bytes: it still counts
    /// against `fetchesInFlightMax`, so a read of the same chunk after the invalidate is refused.
    @Test func invalidatedFetchesStillCountAgainstTheBound() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes, fetchesInFlightMax: 1)
        fixture.store.readDelayNs.store(300_000_000, ordering: .relaxed)
        async let first = fixture.read(cache, chunk: 0)
        for _ in 0..<200 where cache.fetchesInFlight == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        cache.invalidate(key: fixture.key)
        #expect(cache.fetchesInFlight == 1)
        await #expect(throws: ChunkReadError.overloaded(fetchesInFlight: 1, max: 1)) { try await fixture.read(cache, chunk: 0) }
        #expect(try await first.0 == .fetched)
        #expect(cache.fetchesInFlight == 0)
        #expect(try await fixture.read(cache, chunk: 0).0 == .fetched)
    }

    /// A failed fetch leaves the single-flight table before its waiters hear of it: a read that starts
    /// after the failure fetches anew, never gets the old error (nor hangs).
    @Test func aReadAfterAFailedFetchFetchesAgain() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        let bytes = [UInt8](repeating: 7, count: 4096)
        for round in 0..<200 {
            await #expect(throws: ChunkReadError.remote(.unavailable("down \(round)"))) {
                _ = try await cache.read(key: "k", etag: "e", chunk: 0, chunkLength: 4096, runs: [0..<1]) {
                    () async throws(RemoteStoreError) -> [UInt8] in throw .unavailable("down \(round)")
                }
            }
            let again = try await cache.read(key: "k", etag: "e", chunk: 0, chunkLength: 4096, runs: [0..<1]) {
                () async throws(RemoteStoreError) -> [UInt8] in bytes
            }
            #expect(again.source == .fetched && again.runs[0].bytes == bytes, "round \(round)")
            cache.invalidate(key: "k")
            await cache.waitUntilSettled()
        }
        #expect(cache.fetchesInFlight == 0)
    }

    @Test func otherEtagIsAMiss() async throws {
        let fixture = Fixture()
        let cache = try fixture.cache(capacityBytes: 4 * fileBytes)
        _ = try await fixture.read(cache, chunk: 0)
        // The object is rewritten: its etag changes, the cached chunk is dropped at the next read.
        var changed = fixture.object
        changed[10] ^= 0xFF
        try await Task.sleep(nanoseconds: 10_000_000)
        writeObject(fixture.storeDirectory.path, "obj", changed)
        let (source, runs) = try await fixture.read(cache, chunk: 0, runs: [0..<1])
        #expect(source == .fetched)
        #expect(runs[0].bytes == Array(changed[0..<4096]))
    }
}
