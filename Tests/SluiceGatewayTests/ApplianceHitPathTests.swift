// Path: Tests/SluiceGatewayTests/ApplianceHitPathTests.swift — the cache-hit path: copies out of the block
// cache without its lock (pinned blocks, valid sectors never rewritten), `copyIfComplete`,
// `Appliance.readIfCached`, and the server's reply built straight from the cache.
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(2))) struct ApplianceHitPathTests {
    /// Blocks of 16 KiB (4 sectors of 4 KiB).
    func makeCache(blocks: Int) throws -> BlockCache {
        try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: blocks * (16 << 10), blockBytes: 16 << 10, sectorBytes: 4 << 10))
    }

    @Test func copyIfCompleteCopiesWholeRangesOnly() throws {
        let cache = try makeCache(blocks: 8)
        let object = objectBytes(64 << 10, seed: 7)
        object[0..<(32 << 10)].withUnsafeBytes { cache.store(key: "k", etag: "e", firstSector: 0, bytes: $0) }
        var out = [UInt8](repeating: 0xEE, count: 40 << 10)
        let partial = out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "e", range: 100..<(36 << 10), into: $0) }
        #expect(!partial)
        #expect(out.allSatisfy { $0 == 0xEE }, "nothing copied when a sector is missing")
        let whole = out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "e", range: 100..<(32 << 10), into: $0) }
        #expect(whole && Array(out[0..<((32 << 10) - 100)]) == Array(object[100..<(32 << 10)]))
        let otherEtag = out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "f", range: 0..<10, into: $0) }
        #expect(!otherEtag)
        #expect(out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "e", range: 5..<5, into: $0) })
        #expect(cache.stats.pinnedBlocks == 0)
        cache.checkInvariants()
    }

    /// A valid sector is never rewritten (readers may be copying it without the lock): the same etag
    /// means the same verified bytes, so a second store of it changes nothing.
    @Test func validSectorsAreNotRewritten() throws {
        let cache = try makeCache(blocks: 4)
        let first = objectBytes(16 << 10, seed: 1)
        let second = objectBytes(16 << 10, seed: 2)
        first[0..<(8 << 10)].withUnsafeBytes { cache.store(key: "k", etag: "e", firstSector: 0, bytes: $0) }
        second.withUnsafeBytes { cache.store(key: "k", etag: "e", firstSector: 0, bytes: $0) }
        var out = [UInt8](repeating: 0, count: 16 << 10)
        #expect(out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "e", range: 0..<(16 << 10), into: $0) })
        #expect(Array(out[0..<(8 << 10)]) == Array(first[0..<(8 << 10)]), "sectors 0 and 1 kept")
        #expect(Array(out[(8 << 10)...]) == Array(second[(8 << 10)...]), "sectors 2 and 3 filled")
        // Another etag replaces the object.
        second.withUnsafeBytes { cache.store(key: "k", etag: "e2", firstSector: 0, bytes: $0) }
        #expect(out.withUnsafeMutableBytes { cache.copyIfComplete(key: "k", etag: "e2", range: 0..<(16 << 10), into: $0) })
        #expect(out == second)
        cache.checkInvariants()
    }

    /// Readers copy while writers store, evict and invalidate on a cache far smaller than the objects:
    /// every sector a reader finds holds its object's bytes, and afterwards no block is pinned and the
    /// tables agree (retired slots went back to the free list).
    @Test func concurrentCopiesWithEvictionsReturnOnlyRightBytes() async throws {
        let cache = try makeCache(blocks: 8)
        let keys = 6
        let objectSize = 128 << 10
        let objects = (0..<keys).map { objectBytes(objectSize, seed: UInt64(100 + $0)) }
        let wrong = await withTaskGroup(of: Int.self) { group in
            for writer in 0..<2 {
                group.addTask {
                    var state = UInt64(writer + 1) &* 0x9E37_79B9_7F4A_7C15
                    for step in 0..<3_000 {
                        state = state &* 6364136223846793005 &+ 1442695040888963407
                        let key = Int(state >> 33) % keys
                        let block = Int(state >> 20) % (objectSize >> 14)
                        let start = block << 14
                        objects[key][start..<(start + (16 << 10))].withUnsafeBytes {
                            cache.store(key: "k\(key)", etag: "e", firstSector: UInt64(block * 4), bytes: $0)
                        }
                        if step % 97 == 0 { cache.invalidate(key: "k\(key)") }
                        // Yield now and then: six CPU-bound loops on the 2-thread cooperative pool (debug build)
                        // starved every other test of the process for ~20 s (their calls timed out).
                        if step % 50 == 0 { await Task.yield() }
                    }
                    return 0
                }
            }
            for reader in 0..<4 {
                group.addTask {
                    var state = UInt64(reader + 10) &* 0x9E37_79B9_7F4A_7C15
                    var wrong = 0
                    var out = [UInt8](repeating: 0, count: 48 << 10)
                    for step in 0..<3_000 {
                        if step % 50 == 0 { await Task.yield() }
                        state = state &* 6364136223846793005 &+ 1442695040888963407
                        let key = Int(state >> 33) % keys
                        let offset = Int(state >> 16) % (objectSize - (48 << 10))
                        let range = UInt64(offset)..<UInt64(offset + (48 << 10))
                        var missing: [Range<UInt64>] = []
                        out.withUnsafeMutableBytes { _ = cache.copy(key: "k\(key)", etag: "e", range: range, into: $0, missing: &missing) }
                        // Compare the sectors found (those not in `missing`).
                        let firstSector = offset >> 12
                        let endSector = (offset + (48 << 10) + 4095) >> 12
                        for sector in firstSector..<endSector where !missing.contains(where: { $0.contains(UInt64(sector)) }) {
                            let from = max(offset, sector << 12)
                            let to = min(offset + (48 << 10), (sector + 1) << 12)
                            if out[(from - offset)..<(to - offset)] != objects[key][from..<to] { wrong += 1 }
                        }
                    }
                    return wrong
                }
            }
            var total = 0
            for await count in group { total += count }
            return total
        }
        #expect(wrong == 0)
        #expect(cache.stats.pinnedBlocks == 0)
        #expect(cache.stats.evictions > 0)
        cache.checkInvariants()
    }

    @Test func readIfCachedServesHitsOnlyAndCountsThem() async throws {
        let fixture = try ApplianceFixture(objectBytes: 1 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 300_000, alignment: 64)
        defer { out.deallocate() }
        // Nothing known yet: no stat, no blocks.
        #expect(appliance.readIfCached(key: fixture.key, offset: 0, into: out) == nil)
        #expect(appliance.counters.snapshot().reads == 0)
        _ = try await appliance.read(key: fixture.key, offset: 0, length: 200_000)
        let before = appliance.counters.snapshot()
        // Partly cached: nil, nothing counted.
        #expect(appliance.readIfCached(key: fixture.key, offset: 100_000, into: out) == nil)
        #expect(appliance.counters.snapshot() == before)
        // Whole: the bytes, counted as a hit.
        let hit = UnsafeMutableRawBufferPointer(rebasing: out[0..<150_000])
        let stat = appliance.readIfCached(key: fixture.key, offset: 12_345, into: hit)
        #expect(stat?.size == 1 << 20)
        #expect(Array(UnsafeRawBufferPointer(hit)) == fixture.expected(12_345, 150_000))
        let after = appliance.counters.snapshot()
        #expect(after.reads == before.reads + 1 && after.bytesServed == before.bytesServed + 150_000)
        let lastSector = (12_345 + 150_000 + 4095) / 4096
        let firstSector = 12_345 / 4096
        let sectors = UInt64(lastSector - firstSector)
        #expect(after.hitSectors == before.hitSectors + sectors)
        #expect(after.fetches == before.fetches && after.missSectors == before.missSectors)
        // Out of the object, a bad key: nil (`read` reports those errors).
        #expect(appliance.readIfCached(key: fixture.key, offset: (1 << 20) - 10, into: hit) == nil)
        #expect(appliance.readIfCached(key: "/bad", offset: 0, into: hit) == nil)
        await appliance.close()

        // A stat that is not fresh sends the read to `read` (statTTLNs 0: every read asks).
        let uncached = try await fixture.appliance(statTTLNs: 0)
        _ = try await uncached.read(key: fixture.key, offset: 0, length: 200_000)
        #expect(uncached.readIfCached(key: fixture.key, offset: 0, into: hit) == nil)
        await uncached.close()
    }

    /// Over TCP a hit is answered from the cache on the event loop: the same frame as before (the client
    /// decodes it), nothing fetched; misses and errors still take the task path.
    @Test func serverAnswersHitsFromTheCacheAndMissesAsBefore() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 300_000, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance)
        defer { server.close() }
        let client = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port)
        let cold = try await client.read(key: fixture.key, offset: 0, length: 300_000)
        #expect(cold.bytes == fixture.expected(0, 300_000))
        let warm = appliance.counters.snapshot()
        for (offset, length) in [(UInt64(12_345), 100_000), (0, 300_000), (299_999, 1), (4096, 4096), (7, 0)] {
            let result = try await client.read(key: fixture.key, offset: offset, length: length)
            #expect(result.bytes == fixture.expected(offset, length) && result.size == 300_000 && result.etag == cold.etag)
        }
        let after = appliance.counters.snapshot()
        #expect(after.fetches == warm.fetches && after.missSectors == warm.missSectors && after.reads == warm.reads + 5)
        // Pipelined hits on one connection come back in order.
        let parallel = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<16 {
                group.addTask {
                    let offset = UInt64(index * 17_000)
                    return try await client.read(key: fixture.key, offset: offset, length: 20_000).bytes == fixture.expected(offset, 20_000)
                }
            }
            var all = true
            for try await ok in group { all = all && ok }
            return all
        }
        #expect(parallel)
        // A miss after the blocks are gone, and errors, take the task path.
        appliance.cache.invalidate(key: fixture.key)
        let again = try await client.read(key: fixture.key, offset: 50_000, length: 10_000)
        #expect(again.bytes == fixture.expected(50_000, 10_000))
        #expect(appliance.counters.snapshot().fetches > after.fetches)
        do {
            _ = try await client.read(key: fixture.key, offset: 299_999, length: 2)
            Issue.record("a read past the end succeeded")
        } catch {
            guard case .status(.rangeNotSatisfiable, _) = error else { Issue.record("unexpected \(error)"); return }
        }
        #expect(appliance.cache.stats.pinnedBlocks == 0)
        await client.close()
        await appliance.close()
    }
}
