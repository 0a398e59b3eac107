// Path: Tests/SluiceGatewayTests/BlockCacheTests.swift — the appliance's block cache alone: sector-valid
// masks, etag changes, the LRU byte bound, short last sectors.
import Testing
@testable import SluiceGateway

@Suite struct BlockCacheTests {
    /// 4 blocks of 16 KiB (4 sectors of 4 KiB each).
    func makeCache(blocks: Int = 4) throws -> BlockCache {
        try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: blocks * (16 << 10), blockBytes: 16 << 10, sectorBytes: 4 << 10))
    }

    func read(_ cache: BlockCache, _ key: String, _ etag: String, _ range: Range<UInt64>) -> (bytes: [UInt8], missing: [Range<UInt64>]) {
        var bytes = [UInt8](repeating: 0xEE, count: range.count)
        var missing: [Range<UInt64>] = []
        bytes.withUnsafeMutableBytes { _ = cache.copy(key: key, etag: etag, range: range, into: $0, missing: &missing) }
        return (bytes, missing)
    }

    @Test func storesSectorsAndReportsWhatIsMissing() throws {
        let cache = try makeCache()
        let object = objectBytes(64 << 10, seed: 3)
        #expect(read(cache, "k", "e1", 0..<100).missing == [0..<1])
        // Sectors 1 and 2 (bytes 4096..<12288), then sector 5 (the second block).
        object[4096..<12288].withUnsafeBytes { cache.store(key: "k", etag: "e1", firstSector: 1, bytes: $0) }
        object[20480..<24576].withUnsafeBytes { cache.store(key: "k", etag: "e1", firstSector: 5, bytes: $0) }
        let whole = read(cache, "k", "e1", 0..<(32 << 10))
        #expect(whole.missing == [0..<1, 3..<5, 6..<8])
        let held = read(cache, "k", "e1", 5000..<12000)
        #expect(held.missing.isEmpty && held.bytes == Array(object[5000..<12000]))
        #expect(read(cache, "k", "e1", 20480..<24576).bytes == Array(object[20480..<24576]))
        #expect(cache.missing(key: "k", etag: "e1", range: 0..<(32 << 10)) == [0..<1, 3..<5, 6..<8])
        let masks = cache.held(key: "k", etag: "e1", blocks: 0..<4)
        #expect(masks.map(\.block) == [0, 1] && masks.map(\.mask) == [0b0110, 0b0010])
        cache.checkInvariants()
    }

    @Test func anotherEtagFindsNothingAndDropsTheOldBlocks() throws {
        let cache = try makeCache()
        let old = objectBytes(16 << 10, seed: 1)
        let new = objectBytes(16 << 10, seed: 2)
        old.withUnsafeBytes { cache.store(key: "k", etag: "old", firstSector: 0, bytes: $0) }
        #expect(read(cache, "k", "new", 0..<100).missing == [0..<1])
        new[0..<4096].withUnsafeBytes { cache.store(key: "k", etag: "new", firstSector: 0, bytes: $0) }
        #expect(read(cache, "k", "old", 0..<4096).missing == [0..<1])
        let mixed = read(cache, "k", "new", 0..<8192)
        #expect(mixed.missing == [1..<2])
        #expect(Array(mixed.bytes[0..<4096]) == Array(new[0..<4096]))
        #expect(cache.stats.dropped == 1 && cache.etag(of: "k") == "new")
        cache.checkInvariants()
    }

    @Test func evictsTheLeastRecentlyUsedBlockAtTheBound() throws {
        let cache = try makeCache(blocks: 4)
        let object = objectBytes(6 * (16 << 10), seed: 5)
        for block in 0..<4 {
            let start = block * (16 << 10)
            object[start..<(start + (16 << 10))].withUnsafeBytes { cache.store(key: "a", etag: "e", firstSector: UInt64(block * 4), bytes: $0) }
        }
        _ = read(cache, "a", "e", 0..<10)  // block 0 is now the most recently used
        object[(4 << 14)..<(5 << 14)].withUnsafeBytes { cache.store(key: "b", etag: "e", firstSector: 0, bytes: $0) }
        #expect(cache.stats.blocks == 4 && cache.stats.evictions == 1)
        #expect(read(cache, "a", "e", 0..<10).missing.isEmpty)
        #expect(read(cache, "a", "e", UInt64(1 << 14)..<UInt64((1 << 14) + 10)).missing == [4..<5])
        // A store larger than the whole cache keeps the bound.
        object.withUnsafeBytes { cache.store(key: "c", etag: "e", firstSector: 0, bytes: $0) }
        #expect(cache.stats.blocks == 4 && cache.stats.objects == 1)
        #expect(read(cache, "c", "e", UInt64(5 << 14)..<UInt64(6 << 14)).bytes == Array(object[(5 << 14)..<(6 << 14)]))
        cache.checkInvariants()
    }

    @Test func shortLastSectorAndInvalidate() throws {
        let cache = try makeCache()
        let object = objectBytes(4096 + 100, seed: 9)
        object.withUnsafeBytes { cache.store(key: "k", etag: "e", firstSector: 0, bytes: $0) }
        let got = read(cache, "k", "e", 0..<UInt64(object.count))
        #expect(got.missing.isEmpty && got.bytes == object)
        cache.invalidate(key: "k")
        #expect(read(cache, "k", "e", 0..<10).missing == [0..<1])
        #expect(cache.stats.blocks == 0)
        cache.checkInvariants()
    }

    @Test func refusesBadSizes() {
        #expect(throws: GatewaySettingError.self) { try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: 1 << 20, blockBytes: 3 << 10)) }
        #expect(throws: GatewaySettingError.self) { try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: 1 << 10)) }
        #expect(throws: GatewaySettingError.self) {
            try BlockCache(configuration: BlockCacheConfiguration(capacityBytes: 1 << 20, blockBytes: 128 << 10, sectorBytes: 4 << 10))
        }
    }
}
