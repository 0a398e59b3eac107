// Path: Sources/SluiceGateway/BlockCache.swift — the appliance's block cache: fixed-size blocks in one
// arena, byte-bounded LRU, a sector-valid mask per block, every block tied to one (object, etag).
import Synchronization

/// Sizes of a `BlockCache`. Validated by `BlockCache.init`.
public struct BlockCacheConfiguration: Sendable {
    /// Bytes of block memory at most (rounded down to whole blocks; at least one block).
    public var capacityBytes: Int
    public var blockBytes: Int
    public var sectorBytes: Int

    public static let capacityBytesMax = 1 << 40

    public init(capacityBytes: Int, blockBytes: Int = 64 << 10, sectorBytes: Int = 4 << 10) {
        self.capacityBytes = capacityBytes
        self.blockBytes = blockBytes
        self.sectorBytes = sectorBytes
    }
}

/// One cached block: object key and object-relative block index.
struct BlockID: Hashable, Sendable {
    var key: String
    var block: UInt64
}

/// What a `BlockCache` did (relaxed counters; its owner reads them).
public struct BlockCacheStats: Sendable, Equatable {
    public var blocks: Int
    public var capacityBlocks: Int
    public var objects: Int
    public var evictions: UInt64
    /// Blocks dropped because their object came back with another etag (or was invalidated).
    public var dropped: UInt64
    /// Verified sectors not stored because every block was pinned by readers copying out of it.
    public var skippedSectors: UInt64 = 0
    /// Blocks pinned now (0 when no read is copying).
    public var pinnedBlocks: Int = 0
}

/// One stretch of valid bytes a read copies out of the arena (found under the lock, copied after).
private struct CopyRun {
    var slot: Int32
    var arenaOffset: Int
    var outOffset: Int
    var count: Int
}

/// Blocks of objects, each with a mask of its sectors that hold verified bytes. A block belongs to one
/// (key, etag): storing bytes of a new etag drops every block of the object's old one, and a lookup
/// under another etag than the stored one finds nothing. Bytes of a sector are returned only when its
/// valid bit is set, and that bit is set only by `store` (callers store CRC-verified sectors only).
/// One arena of `capacityBlocks * blockBytes` bytes, allocated once; the block table, the LRU links and
/// the free list are arrays of that length, so the tables are bounded by the capacity. Thread-safe.
public final class BlockCache: Sendable {
    public let blockBytes: Int
    public let sectorBytes: Int
    public let capacityBlocks: Int
    private let state: Mutex<State>
    private let arena: Arena

    public init(configuration: BlockCacheConfiguration) throws(GatewaySettingError) {
        let sector = configuration.sectorBytes
        let block = configuration.blockBytes
        guard GatewayUnits.sectorBytesRange.contains(sector), sector.nonzeroBitCount == 1 else {
            throw .invalid(setting: "sectorBytes", value: sector, rule: "a power of two in \(GatewayUnits.sectorBytesRange)")
        }
        guard block >= sector, block.nonzeroBitCount == 1, block / sector <= GatewayUnits.sectorsPerBlockMax else {
            throw .invalid(setting: "blockBytes", value: block, rule: "a power of two of 1...\(GatewayUnits.sectorsPerBlockMax) sectors")
        }
        guard configuration.capacityBytes >= block, configuration.capacityBytes <= BlockCacheConfiguration.capacityBytesMax else {
            throw .invalid(setting: "capacityBytes", value: configuration.capacityBytes,
                           rule: "at least one block (\(block)) and at most \(BlockCacheConfiguration.capacityBytesMax)")
        }
        blockBytes = block
        sectorBytes = sector
        capacityBlocks = configuration.capacityBytes / block
        arena = Arena(bytes: capacityBlocks * block)
        state = Mutex(State(capacity: capacityBlocks))
    }

    var sectorsPerBlock: Int { blockBytes / sectorBytes }
    private var fullMask: UInt16 { sectorsPerBlock == 16 ? 0xFFFF : UInt16((1 << sectorsPerBlock) - 1) }

    public var stats: BlockCacheStats {
        state.withLock { s in
            BlockCacheStats(blocks: s.index.count, capacityBlocks: capacityBlocks, objects: s.objects.count,
                            evictions: s.evictions, dropped: s.dropped, skippedSectors: s.skippedSectors,
                            pinnedBlocks: s.pins.reduce(0) { $0 + ($1 > 0 ? 1 : 0) })
        }
    }

    /// Copies the valid sectors of bytes `range` of object (`key`, `etag`) into `out` (`out[0]` is byte
    /// `range.lowerBound`) and appends to `missing` the object-relative sector runs it lacks, ascending.
    /// Returns the number of sectors found. Touches the blocks it read.
    @discardableResult
    public func copy(key: String, etag: String, range: Range<UInt64>, into out: UnsafeMutableRawBufferPointer,
                     missing: inout [Range<UInt64>]) -> Int {
        copy(key: key, etag: etag, range: range, into: out, missing: &missing, onlyIfComplete: false) ?? 0
    }

    /// Copies bytes `range` of object (`key`, `etag`) into `out` when the cache holds every sector of
    /// it (then true, the blocks touched); false without copying anything otherwise.
    public func copyIfComplete(key: String, etag: String, range: Range<UInt64>, into out: UnsafeMutableRawBufferPointer) -> Bool {
        var missing: [Range<UInt64>] = []
        return copy(key: key, etag: etag, range: range, into: out, missing: &missing, onlyIfComplete: true) != nil
    }

    /// The copy behind both: the lock is held to find the valid runs and pin their blocks, not for
    /// the copying (readers copy in parallel; a pinned block is neither evicted nor reused, and `store`
    /// never rewrites a valid sector, so the bytes copied do not change under the copy). nil: something
    /// was missing and `onlyIfComplete` (nothing copied, nothing pinned).
    private func copy(key: String, etag: String, range: Range<UInt64>, into out: UnsafeMutableRawBufferPointer,
                      missing: inout [Range<UInt64>], onlyIfComplete: Bool) -> Int? {
        precondition(out.count >= range.count, "the output holds the range")
        guard !range.isEmpty else { return 0 }
        let sectorBytes = UInt64(self.sectorBytes)
        let perBlock = UInt64(sectorsPerBlock)
        let first = range.lowerBound / sectorBytes
        let end = (range.upperBound + sectorBytes - 1) / sectorBytes
        let blockBytes = self.blockBytes
        // At most one run per valid sector: the bound of the run list.
        let runsMax = Int(end - first)
        return withUnsafeTemporaryAllocation(of: CopyRun.self, capacity: runsMax) { runs -> Int? in
            var runCount = 0
            var hits = 0
            let complete: Bool = state.withLock { s in
                let known = s.objects[key]?.etag == etag
                var sector = first
                var complete = true
                while sector < end {
                    let block = sector / perBlock
                    let blockEnd = min(end, (block + 1) * perBlock)
                    let slot = known ? s.index[BlockID(key: key, block: block)] : nil
                    if let slot { s.touch(slot) }
                    let mask = slot.map { s.masks[Int($0)] } ?? 0
                    while sector < blockEnd {
                        if mask & (1 << UInt16(sector % perBlock)) != 0 {
                            // One run per stretch of valid sectors (a whole block when all are valid).
                            var runEnd = sector + 1
                            while runEnd < blockEnd, mask & (1 << UInt16(runEnd % perBlock)) != 0 { runEnd += 1 }
                            let from = max(range.lowerBound, sector * sectorBytes)
                            let to = min(range.upperBound, runEnd * sectorBytes)
                            precondition(runCount < runsMax, "one run per valid sector at most")
                            runs[runCount] = CopyRun(slot: slot!, arenaOffset: Int(slot!) * blockBytes + Int(from - block * perBlock * sectorBytes),
                                                     outOffset: Int(from - range.lowerBound), count: Int(to - from))
                            runCount += 1
                            hits += Int(runEnd - sector)
                            sector = runEnd
                            continue
                        }
                        complete = false
                        if !onlyIfComplete {
                            if let last = missing.last, last.upperBound == sector {
                                missing[missing.count - 1] = last.lowerBound..<(sector + 1)
                            } else {
                                missing.append(sector..<(sector + 1))
                            }
                        }
                        sector += 1
                    }
                    if !complete && onlyIfComplete { return false }
                }
                for index in 0..<runCount { s.pins[Int(runs[index].slot)] += 1 }
                return complete
            }
            if !complete && onlyIfComplete { return nil }
            guard runCount > 0 else { return 0 }
            for index in 0..<runCount {
                let run = runs[index]
                out.baseAddress!.advanced(by: run.outOffset).copyMemory(from: arena.base.advanced(by: run.arenaOffset), byteCount: run.count)
            }
            state.withLock { s in
                for index in 0..<runCount { s.unpin(runs[index].slot) }
            }
            return hits
        }
    }

    /// Stores verified sectors of object (`key`, `etag`) from object-relative sector `firstSector`:
    /// `bytes` holds whole sectors, except that the last may be short (it ends at the object's end).
    /// Another etag than the stored one drops the object's blocks first. Evicts the least recently used
    /// blocks of any object when no block is free.
    public func store(key: String, etag: String, firstSector: UInt64, bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let sectorBytes = self.sectorBytes
        let perBlock = UInt64(sectorsPerBlock)
        let sectorCount = (bytes.count + sectorBytes - 1) / sectorBytes
        state.withLock { s in
            if let object = s.objects[key], object.etag != etag { s.dropObject(key) }
            if s.objects[key] == nil { s.objects[key] = ObjectEntry(etag: etag, blocks: []) }
            var index = 0
            while index < sectorCount {
                let sector = firstSector + UInt64(index)
                let block = sector / perBlock
                let id = BlockID(key: key, block: block)
                let slot: Int32
                if let existing = s.index[id] {
                    slot = existing
                } else {
                    // Every block pinned by readers copying out of them: the rest is not cached.
                    guard let fresh = s.allocate(arenaBlocks: capacityBlocks) else {
                        s.skippedSectors += UInt64(sectorCount - index)
                        break
                    }
                    slot = fresh
                    s.ids[Int(slot)] = id
                    s.masks[Int(slot)] = 0
                    s.index[id] = slot
                    // The eviction may have emptied (and removed) this very object's entry.
                    s.objects[key, default: ObjectEntry(etag: etag, blocks: [])].blocks.insert(block)
                }
                s.touch(slot)
                var inBlock = Int(sector % perBlock)
                while index < sectorCount, inBlock < Int(perBlock) {
                    // A valid sector is never rewritten (same etag, same verified bytes): readers may
                    // be copying it out without the lock.
                    if s.masks[Int(slot)] & (1 << UInt16(inBlock)) == 0 {
                        let length = min(sectorBytes, bytes.count - index * sectorBytes)
                        let target = arena.base.advanced(by: Int(slot) * blockBytes + inBlock * sectorBytes)
                        target.copyMemory(from: bytes.baseAddress!.advanced(by: index * sectorBytes), byteCount: length)
                        s.masks[Int(slot)] |= 1 << UInt16(inBlock)
                    }
                    index += 1
                    inBlock += 1
                }
            }
        }
    }

    /// The object-relative sector runs of bytes `range` that the cache lacks for (`key`, `etag`), ascending.
    public func missing(key: String, etag: String, range: Range<UInt64>) -> [Range<UInt64>] {
        guard !range.isEmpty else { return [] }
        let sectorBytes = UInt64(self.sectorBytes)
        let perBlock = UInt64(sectorsPerBlock)
        let first = range.lowerBound / sectorBytes
        let end = (range.upperBound + sectorBytes - 1) / sectorBytes
        var runs: [Range<UInt64>] = []
        let full = fullMask
        state.withLock { s in
            let known = s.objects[key]?.etag == etag
            var sector = first
            // One table lookup per block (read-ahead asks this of megabytes after every sequential read).
            while sector < end {
                let block = sector / perBlock
                let blockEnd = min(end, (block + 1) * perBlock)
                let slot = known ? s.index[BlockID(key: key, block: block)] : nil
                let mask = slot.map { s.masks[Int($0)] } ?? 0
                if mask == full {
                    sector = blockEnd
                    continue
                }
                while sector < blockEnd {
                    if mask & (1 << UInt16(sector % perBlock)) == 0 {
                        if let last = runs.last, last.upperBound == sector {
                            runs[runs.count - 1] = last.lowerBound..<(sector + 1)
                        } else {
                            runs.append(sector..<(sector + 1))
                        }
                    }
                    sector += 1
                }
            }
        }
        return runs
    }

    /// The valid-sector mask of each block of blocks `blocks` (object-relative) that holds any, for
    /// object (`key`, `etag`): block index and mask. Does not touch the LRU order.
    public func held(key: String, etag: String, blocks: Range<UInt64>) -> [(block: UInt64, mask: UInt16)] {
        state.withLock { s in
            guard s.objects[key]?.etag == etag else { return [] }
            var result: [(block: UInt64, mask: UInt16)] = []
            for block in blocks {
                if let slot = s.index[BlockID(key: key, block: block)], s.masks[Int(slot)] != 0 {
                    result.append((block, s.masks[Int(slot)]))
                }
            }
            return result
        }
    }

    /// The etag whose blocks the cache holds for `key`, if any.
    public func etag(of key: String) -> String? {
        state.withLock { $0.objects[key]?.etag }
    }

    /// Drops every block of `key`.
    public func invalidate(key: String) {
        state.withLock { $0.dropObject(key) }
    }

    /// Checks the tables against each other (tests).
    func checkInvariants() {
        state.withLock { s in
            precondition(s.index.count + s.free.count + s.retiredCount == s.used, "every used slot is indexed, free or retired")
            precondition(s.used <= capacityBlocks, "slots within the capacity")
            let blocks = s.objects.values.reduce(0) { $0 + $1.blocks.count }
            precondition(blocks == s.index.count, "object block sets match the index")
            var count = 0
            var cursor = s.oldest
            while cursor >= 0 {
                count += 1
                cursor = s.newer[Int(cursor)]
            }
            precondition(count == s.index.count, "the LRU list holds every indexed block")
        }
    }
}

private struct ObjectEntry {
    var etag: String
    var blocks: Set<UInt64>
}

/// Block memory: `bytes` bytes, never moved, freed with the cache.
private final class Arena: @unchecked Sendable {  // unchecked: bytes are only touched under the cache's lock
    let base: UnsafeMutableRawPointer

    init(bytes: Int) {
        base = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
    }

    deinit { base.deallocate() }
}

/// The tables behind the lock. Slots are arena block indices; `older`/`newer` thread the LRU list
/// through them (-1: none).
private struct State: ~Copyable {
    var ids: [BlockID?]
    var masks: [UInt16]
    var older: [Int32]
    var newer: [Int32]
    var oldest: Int32 = -1
    var newest: Int32 = -1
    var index: [BlockID: Int32] = [:]
    var objects: [String: ObjectEntry] = [:]
    var free: [Int32] = []
    /// Readers copying out of each slot now: a pinned slot is never evicted or reused.
    var pins: [Int32]
    /// Released while pinned: unindexed, put on the free list by the last unpin.
    var retired: [Bool]
    var retiredCount = 0
    var skippedSectors: UInt64 = 0
    /// Slots handed out at least once (the rest of the arena was never touched).
    var used = 0
    var evictions: UInt64 = 0
    var dropped: UInt64 = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(Int32.max), "slot indices fit Int32")
        ids = Array(repeating: nil, count: capacity)
        masks = Array(repeating: 0, count: capacity)
        older = Array(repeating: -1, count: capacity)
        newer = Array(repeating: -1, count: capacity)
        pins = Array(repeating: 0, count: capacity)
        retired = Array(repeating: false, count: capacity)
        free.reserveCapacity(capacity)
    }

    mutating func unlink(_ slot: Int32) {
        let s = Int(slot)
        if older[s] >= 0 { newer[Int(older[s])] = newer[s] } else if oldest == slot { oldest = newer[s] }
        if newer[s] >= 0 { older[Int(newer[s])] = older[s] } else if newest == slot { newest = older[s] }
        older[s] = -1
        newer[s] = -1
    }

    /// Makes `slot` the most recently used (linking it if it was not).
    mutating func touch(_ slot: Int32) {
        if newest == slot { return }
        unlink(slot)
        older[Int(slot)] = newest
        if newest >= 0 { newer[Int(newest)] = slot }
        newest = slot
        if oldest < 0 { oldest = slot }
    }

    /// A slot for a new block: a free one, a never used one, or the least recently used one no reader
    /// has pinned (evicted). nil: every slot is pinned.
    mutating func allocate(arenaBlocks: Int) -> Int32? {
        if let slot = free.popLast() { return slot }
        if used < arenaBlocks {
            used += 1
            return Int32(used - 1)
        }
        var victim = oldest
        var steps = 0
        while victim >= 0, pins[Int(victim)] > 0 {
            victim = newer[Int(victim)]
            steps += 1
            precondition(steps <= arenaBlocks, "the LRU list is acyclic")
        }
        guard victim >= 0 else { return nil }
        release(victim)
        evictions += 1
        return free.popLast()!
    }

    /// Unindexes `slot`; it goes on the free list now, or when its last reader unpins it.
    mutating func release(_ slot: Int32) {
        let id = ids[Int(slot)]!
        unlink(slot)
        index[id] = nil
        ids[Int(slot)] = nil
        masks[Int(slot)] = 0
        objects[id.key]?.blocks.remove(id.block)
        if objects[id.key]?.blocks.isEmpty == true { objects[id.key] = nil }
        if pins[Int(slot)] > 0 {
            retired[Int(slot)] = true
            retiredCount += 1
        } else {
            free.append(slot)
        }
    }

    mutating func unpin(_ slot: Int32) {
        precondition(pins[Int(slot)] > 0, "each pin is released once")
        pins[Int(slot)] -= 1
        if pins[Int(slot)] == 0, retired[Int(slot)] {
            retired[Int(slot)] = false
            retiredCount -= 1
            free.append(slot)
        }
    }

    mutating func dropObject(_ key: String) {
        guard let object = objects[key] else { return }
        for block in object.blocks {
            if let slot = index[BlockID(key: key, block: block)] {
                release(slot)
                dropped += 1
            }
        }
        objects[key] = nil
    }
}
