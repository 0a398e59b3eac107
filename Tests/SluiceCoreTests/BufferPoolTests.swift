import Glibc
import Synchronization
import Testing

@testable import SluiceCore

@Suite struct BufferPoolTests {
    @Test(arguments: [(0, 2048), (16, 0), (Limits.poolBufferCountMax + 1, 64), (16, Limits.poolBufferSizeMax + 1)])
    func badConfigurationIsATypedError(count: Int, size: Int) {
        #expect(throws: PoolError.invalidConfiguration(bufferCount: count, bufferSizeBytes: size)) {
            _ = try BufferPool(bufferCount: count, bufferSizeBytes: size)
        }
    }

    /// A pool grows while in use up to what it reserved: the new buffers are handed out, writable and
    /// distinct; it never shrinks nor passes its reservation; buffers taken before stay valid.
    @Test func aPoolGrowsWhileInUseUpToItsReservation() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 256, bufferCountMax: 1024)
        #expect(pool.bufferCount == 64 && pool.bufferCountMax == 1024)
        var held: [UInt32] = []
        while let buffer = pool.allocate() { held.append(buffer.releaseIndex()) }
        #expect(held.count == 64 && pool.exhaustedCount.load(ordering: .relaxed) == 1)
        for index in held { pool.bytes(at: index).storeBytes(of: index, as: UInt32.self) }
        try pool.grow(to: 1000)
        #expect(pool.bufferCount == 1000)
        while let buffer = pool.allocate() { held.append(buffer.releaseIndex()) }
        #expect(held.count == 1000 && Set(held).count == 1000 && held.allSatisfy { $0 < 1000 })
        for index in held.suffix(936) { pool.bytes(at: index).storeBytes(of: index, as: UInt32.self) }
        #expect(held.allSatisfy { pool.bytes(at: $0).load(as: UInt32.self) == $0 }, "each buffer its own memory")
        #expect(throws: PoolError.cannotGrow(from: 1000, to: 1000, max: 1024)) { try pool.grow(to: 1000) }
        #expect(throws: PoolError.cannotGrow(from: 1000, to: 2048, max: 1024)) { try pool.grow(to: 2048) }
        for index in held { pool.freeIndex(index) }
        #expect(pool.ownedCountForDebugging.map { $0 == 0 } ?? true)
        // Without a reservation there is no room to grow.
        let fixed = try BufferPool(bufferCount: 64, bufferSizeBytes: 256)
        #expect(throws: PoolError.cannotGrow(from: 64, to: 65, max: 64)) { try fixed.grow(to: 65) }
    }

    @Test func missingNUMANodeIsATypedError() {
        #expect(throws: PoolError.invalidNUMANode(4096, max: CPU.numaNodeMax)) {
            _ = try BufferPool(bufferCount: 4, bufferSizeBytes: 64, numaNode: 4096)
        }
    }

    @Test func exhaustionIsCountedAndTyped() throws {
        let pool = try BufferPool(bufferCount: 4, bufferSizeBytes: 100)
        #expect(pool.bufferSizeBytes == 128, "rounded up to a cache line")
        var indices: [UInt32] = []
        for _ in 0..<4 {
            let buffer = try pool.allocateOrThrow()
            indices.append(buffer.releaseIndex())
        }
        #expect(Set(indices).count == 4)
        if let unexpected = pool.allocate() {
            Issue.record("allocated buffer \(unexpected.index) from an empty pool")
            pool.free(unexpected)
        }
        #expect(throws: PoolError.exhausted(bufferCount: 4)) { _ = try pool.allocateOrThrow() }
        #expect(pool.exhaustedCount.load(ordering: .relaxed) == 2)
        for index in indices { pool.freeIndex(index) }
        #expect(pool.freeCount == 4)
    }

    @Test func buffersDoNotOverlap() throws {
        let pool = try BufferPool(bufferCount: 8, bufferSizeBytes: 256, numaNode: CPU.numaNode(of: 0))
        var held: [UInt32] = []
        for value in 0..<8 {
            let buffer = pool.allocate()!
            pool.bytes(of: buffer).initializeMemory(as: UInt8.self, repeating: UInt8(value))
            held.append(buffer.releaseIndex())
        }
        for (value, index) in held.enumerated() {
            #expect(pool.bytes(at: index).allSatisfy { $0 == UInt8(value) })
            pool.free(PacketBuffer(adopting: index))
        }
    }

    @Test func bulkAllocationIsAllOrNothing() throws {
        let pool = try BufferPool(bufferCount: 8, bufferSizeBytes: 64)
        let indices = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 6)
        let refused = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 6)
        defer {
            indices.deallocate()
            refused.deallocate()
        }
        #expect(pool.allocateBulk(into: indices) == 6)
        // A failed bulk may have written (and then given back) indices: they are not the caller's.
        #expect(pool.allocateBulk(into: refused) == 0, "6 asked, 2 free")
        #expect(pool.freeCount == 2, "a failed bulk takes nothing")
        for index in indices { pool.freeIndex(index) }
        #expect(pool.freeCount == 8)
    }

    @Test func freeHookSeesEveryFree() throws {
        let seen = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
        seen.initialize(repeating: 0, count: 2)
        defer { seen.deallocate() }
        let hook = BufferFreeHook({ context, index in
            let seen = context!.assumingMemoryBound(to: UInt64.self)
            seen[0] += 1
            seen[1] += UInt64(index)
        }, context: UnsafeMutableRawPointer(seen))
        let pool = try BufferPool(bufferCount: 4, bufferSizeBytes: 64, freeHook: hook)
        let a = pool.allocate()!
        let b = pool.allocate()!
        let sum = UInt64(a.index + b.index)
        pool.free(a)
        pool.free(b)
        #expect(seen[0] == 2)
        #expect(seen[1] == sum)
    }

    /// Two threads allocate and free concurrently: no buffer is ever held twice.
    @Test func concurrentAllocateAndFreeNeverHandsOutABufferTwice() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 64)
        let owners = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
        owners.initialize(repeating: 0, count: 64)
        defer { owners.deallocate() }
        let shared = Churn(pool, owners, holdMax: 8, freeEvery: 3)
        var thread = pthread_t()
        pthread_create(&thread, nil, { context in
            Unmanaged<Churn>.fromOpaque(context!).takeRetainedValue().run(rounds: 200_000)
            return nil
        }, Unmanaged.passRetained(shared).toOpaque())
        shared.run(rounds: 200_000)
        pthread_join(thread, nil)
        #expect(pool.freeCount == 64, "every buffer came back")
        #expect(shared.doubleOwned == 0)
    }

    /// Growing while another thread allocates and frees: every buffer, old or new, has one owner at a
    /// time, and all of them come back.
    @Test func growingWhileInUseNeverHandsOutABufferTwice() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 64, bufferCountMax: 4096)
        let owners = UnsafeMutablePointer<UInt8>.allocate(capacity: 4096)
        owners.initialize(repeating: 0, count: 4096)
        defer { owners.deallocate() }
        let churn = Churn(pool, owners, holdMax: 512, freeEvery: 5)
        var thread = pthread_t()
        pthread_create(&thread, nil, { context in
            Unmanaged<Churn>.fromOpaque(context!).takeRetainedValue().run(rounds: 300_000)
            return nil
        }, Unmanaged.passRetained(churn).toOpaque())
        for size in [128, 512, 1024, 4096] {
            usleep(2_000)
            try pool.grow(to: size)
        }
        pthread_join(thread, nil)
        #expect(churn.doubleOwned == 0)
        #expect(pool.bufferCount == 4096 && pool.freeCount == 4096, "every buffer came back: \(pool.freeCount)")
    }

    /// Shrinking an idle pool retires exactly the free buffers asked for, never below 1; a busy pool
    /// retires only what is free; grow puts retired buffers back before never-used ones.
    @Test func shrinkRetiresOnlyFreeBuffersAndGrowReusesThemFirst() throws {
        let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048, bufferCountMax: 1024)
        #expect(try pool.shrink(to: 256) == 0, "nothing to retire")
        #expect(try pool.shrink(to: 300) == 0)
        #expect(throws: PoolError.cannotShrink(from: 256, to: 0, min: 1)) { try pool.shrink(to: 0) }
        #expect(try pool.shrink(to: 100) == 156)
        #expect(pool.bufferCount == 100 && pool.retiredCount == 156 && pool.freeCount == 100 && pool.buffersMade == 256)
        // Busy: 60 of the 100 held, so at most 40 can go, and the pool stops at 60.
        var held: [UInt32] = []
        for _ in 0..<60 { held.append(pool.allocate()!.releaseIndex()) }
        #expect(try pool.shrink(to: 1) == 40)
        #expect(pool.bufferCount == 60 && pool.retiredCount == 196 && pool.freeCount == 0)
        #expect(pool.exhaustedCount.load(ordering: .relaxed) == 0, "shrinking is not exhaustion")
        #expect(throws: PoolError.exhausted(bufferCount: 60)) { _ = try pool.allocateOrThrow() }
        #expect(pool.exhaustedCount.load(ordering: .relaxed) == 1)
        #expect(try pool.shrink(to: 1) == 0, "nothing free: nothing retired")
        // Held buffers above the new count are still freed normally.
        for index in held { pool.freeIndex(index) }
        #expect(pool.freeCount == 60 && pool.ownedCountForDebugging.map { $0 == 0 } ?? true)
        #expect(try pool.shrink(to: 1) == 59 && pool.bufferCount == 1, "never below one buffer")
        // Grow: the 255 retired first (nothing new made), then fresh ones from the reservation.
        try pool.grow(to: 200)
        #expect(pool.bufferCount == 200 && pool.retiredCount == 56 && pool.buffersMade == 256)
        try pool.grow(to: 300)
        #expect(pool.bufferCount == 300 && pool.retiredCount == 0 && pool.buffersMade == 300)
        held = []
        while let buffer = pool.allocate() { held.append(buffer.releaseIndex()) }
        #expect(held.count == 300 && Set(held).count == 300 && held.allSatisfy { $0 < 300 })
        for index in held { pool.bytes(at: index).storeBytes(of: index, as: UInt32.self) }
        #expect(held.allSatisfy { pool.bytes(at: $0).load(as: UInt32.self) == $0 }, "reused buffers are writable")
        #expect(held.allSatisfy { pool.metadata(at: $0).pointee.length == 0 }, "reused metadata is reset")
        for index in held { pool.freeIndex(index) }
        #expect(throws: PoolError.cannotGrow(from: 300, to: 1025, max: 1024)) { try pool.grow(to: 1025) }
    }

    /// Retired buffers' pages go back to the kernel (whole pages only), and come back on grow.
    @Test func shrinkGivesPagesBackToTheKernel() throws {
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 16_384, bufferCountMax: 64)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        // Touch every page so all are resident.
        for index in UInt32(0)..<64 { pool.bytes(at: index).initializeMemory(as: UInt8.self, repeating: 1) }
        #expect(residentPages(pool, page: page) == totalPages(pool, page: page))
        #expect(try pool.shrink(to: 1) == 63)
        let after = residentPages(pool, page: page)
        // At most the one buffer left and the pages it shares with retired neighbours stay.
        #expect(after <= pool.objectStride / page + 2, "\(after) pages still resident")
        try pool.grow(to: 64)
        #expect(residentPages(pool, page: page) == totalPages(pool, page: page), "grow faults every page back in")
    }

    /// Several threads allocate and free bursts while the control thread shrinks and grows the pool:
    /// no buffer is handed out twice, no retired one is ever handed out, and at the end every buffer
    /// made is free or retired, exactly once.
    @Test func shrinkAndGrowWhileThreadsAllocateAndFree() throws {
        let max = 4096
        let pool = try BufferPool(bufferCount: 1024, bufferSizeBytes: 64, bufferCountMax: max)
        let owners = UnsafeMutablePointer<Atomic<UInt8>>.allocate(capacity: max)
        for index in 0..<max { (owners + index).initialize(to: Atomic(0)) }
        defer { owners.deallocate() }
        let threads = 3
        let workers = (0..<threads).map { _ in BurstChurn(pool, owners, rounds: 40_000) }
        var ids: [pthread_t] = []
        for worker in workers {
            var thread = pthread_t()
            pthread_create(&thread, nil, { context in
                Unmanaged<BurstChurn>.fromOpaque(context!).takeRetainedValue().run()
                return nil
            }, Unmanaged.passRetained(worker).toOpaque())
            ids.append(thread)
        }
        var retiredTotal = 0
        var cycles = 0
        while workers.contains(where: { !$0.done.load(ordering: .acquiring) }), cycles < 2000 {
            let before = pool.bufferCount
            let retired = try pool.shrink(to: 64)
            #expect(retired <= before - 64 && pool.bufferCount == before - retired)
            retiredTotal += retired
            usleep(200)
            let next = [1024, 2048, 4096][cycles % 3]
            if next > pool.bufferCount { try pool.grow(to: next) }
            usleep(200)
            cycles += 1
        }
        for thread in ids { pthread_join(thread, nil) }
        #expect(cycles > 2 && retiredTotal > 0, "\(cycles) cycles, \(retiredTotal) retired")
        #expect(workers.allSatisfy { $0.doubleOwned == 0 && $0.retiredSeen == 0 })
        #expect(pool.freeCount + pool.retiredCount == pool.buffersMade, "every buffer free or retired")
        #expect(pool.freeCount == pool.bufferCount && pool.ownedCountForDebugging.map { $0 == 0 } ?? true)
        // Each buffer exactly once: drain the free list and count.
        var seen = Set<UInt32>()
        while let buffer = pool.allocate() { seen.insert(buffer.releaseIndex()) }
        #expect(seen.count == pool.bufferCount && seen.allSatisfy { Int($0) < pool.buffersMade })
        for index in seen { pool.freeIndex(index) }
    }

    /// A busy pipeline's buffers circulate through its returns ring and never reach the free list: a
    /// shrink that does not wait retires none; one that waits has them recycled to the free list and
    /// reaches its target, and recycling goes back to the returns ring after it.
    @Test func aWaitingShrinkTakesBuffersThatCirculateThroughTheReturnsRing() throws {
        let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 64)
        let churn = ReturnsChurn(pool)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<ReturnsChurn>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(churn).toOpaque())
        try #require(rc == 0, "pthread_create: \(rc)")
        defer {
            churn.stop.store(true, ordering: .releasing)
            pthread_join(thread, nil)
        }
        let deadline = Clock.monotonicNs() + 5_000_000_000
        while !churn.started.load(ordering: .acquiring), Clock.monotonicNs() < deadline { usleep(100) }
        let started = churn.started.load(ordering: .acquiring)
        try #require(started)
        #expect(try pool.shrink(to: 64) == 0, "every buffer is on the returns ring or in the thread's hands")
        let retired = try pool.shrink(to: 64, waitNs: 2_000_000_000)
        #expect(retired == 192 && pool.bufferCount == 64 && pool.retiredCount == 192, "\(retired) retired")
        let wanted = pool.retireWanted.load(ordering: .relaxed)
        #expect(!wanted, "recycling goes back to the returns ring")
        let moved = churn.moved.load(ordering: .acquiring)
        while churn.moved.load(ordering: .acquiring) < moved + 64_000, Clock.monotonicNs() < deadline { usleep(100) }
        #expect(churn.moved.load(ordering: .acquiring) >= moved + 64_000, "the thread goes on with 64 buffers")
        #expect(pool.bufferCount == 64 && pool.retiredCount == 192)
    }

    /// Debug builds: freeing a buffer `shrink` retired traps (it was never handed out).
    @Test func freeingARetiredBufferTraps() async {
        #if DEBUG
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 2, bufferSizeBytes: 64)
            _ = try! pool.shrink(to: 1)
            let kept = pool.allocate()!.releaseIndex()
            pool.freeIndex(1 - kept)
        }
        #endif
    }

    @Test func droppingABufferTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 1, bufferSizeBytes: 64)
            _ = pool.allocate()
        }
    }
}

@Suite struct BufferLayoutTests {
    @Test func metadataFitsItsCacheLine() {
        #expect(MemoryLayout<PacketMetadata>.size <= BufferPool.metadataStride)
    }

    /// Metadata and data of every buffer are disjoint from every other buffer's, and strides are an
    /// odd number of cache lines.
    @Test func buffersAndMetadataDoNotOverlap() throws {
        let pool = try BufferPool(bufferCount: 16, bufferSizeBytes: 2048)
        #expect((pool.objectStride / 64) % 2 == 1)
        for index in UInt32(0)..<16 {
            let data = pool.bytes(at: index)
            let metadata = UnsafeRawPointer(pool.metadata(at: index))
            #expect(metadata + BufferPool.metadataStride == UnsafeRawPointer(data.baseAddress!))
            #expect(data.count == 2048)
            data.initializeMemory(as: UInt8.self, repeating: UInt8(index))
            pool.metadata(at: index).pointee.length = index
        }
        for index in UInt32(0)..<16 {
            #expect(pool.bytes(at: index).allSatisfy { $0 == UInt8(index) })
            #expect(pool.metadata(at: index).pointee.length == index)
        }
    }

    /// The pool asks for transparent huge pages before faulting itself in (fewer faults, fewer TLB
    /// misses): the kernel marks its mapping THP-eligible unless THP is off on this machine.
    @Test func poolMemoryIsEligibleForHugePages() throws {
        let mode = readTextFile("/sys/kernel/mm/transparent_hugepage/enabled")
        try #require(!mode.isEmpty, "no THP on this kernel")
        guard !mode.contains("[never]") else { return }  // THP disabled by the administrator: nothing to ask
        let pool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let address = UInt(bitPattern: pool.base)
        let smaps = readTextFile("/proc/self/smaps")
        try #require(!smaps.isEmpty, "cannot read /proc/self/smaps")
        var inMapping = false
        var eligible: Bool?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inMapping = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
            } else if inMapping, fields.first == "THPeligible:" {
                eligible = fields.last == "1"
            }
        }
        #expect(eligible == true, "the pool's mapping is not THP-eligible (MADV_HUGEPAGE not applied)")
    }
}

/// The whole text of a small file (procfs, sysfs), or "" when it cannot be read.
private func readTextFile(_ path: String) -> String {
    guard let file = fopen(path, "r") else { return "" }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count == 0 { break }
        bytes += chunk.prefix(count)
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Allocates and frees from a pool for `rounds` rounds, holding at most `holdMax` buffers and freeing
/// one every `freeEvery` rounds, and counts buffers it was handed while another owner held them.
private final class Churn: @unchecked Sendable {  // unchecked: each `owners` cell is touched by its buffer's owner
    let pool: BufferPool
    let owners: UnsafeMutablePointer<UInt8>
    let holdMax: Int
    let freeEvery: Int
    var doubleOwned = 0
    init(_ pool: BufferPool, _ owners: UnsafeMutablePointer<UInt8>, holdMax: Int, freeEvery: Int) {
        self.pool = pool
        self.owners = owners
        self.holdMax = holdMax
        self.freeEvery = freeEvery
    }
    func run(rounds: Int) {
        var held: [UInt32] = []
        held.reserveCapacity(holdMax + 1)
        for round in 0..<rounds {
            if let buffer = pool.allocate() {
                let index = Int(buffer.releaseIndex())
                if owners[index] != 0 { doubleOwned += 1 }  // seeing 1 means someone else holds it
                owners[index] = 1
                held.append(UInt32(index))
            }
            if held.count > holdMax || (round % freeEvery == 0 && !held.isEmpty) {
                let index = held.removeFirst()
                owners[Int(index)] = 0
                pool.freeIndex(index)
            }
        }
        for index in held { owners[Int(index)] = 0; pool.freeIndex(index) }
    }
}

/// Allocates bursts of 1-32 buffers and frees them, `rounds` times, flagging each buffer it holds in
/// `owners` (an atomic exchange: 1 already there means another owner holds it) and counting any buffer
/// handed out while `shrink` had it retired.
private final class BurstChurn: @unchecked Sendable {  // unchecked: counters read after the thread joined
    let pool: BufferPool
    let owners: UnsafeMutablePointer<Atomic<UInt8>>
    let rounds: Int
    let done = Atomic<Bool>(false)
    var doubleOwned = 0
    var retiredSeen = 0
    init(_ pool: BufferPool, _ owners: UnsafeMutablePointer<Atomic<UInt8>>, rounds: Int) {
        self.pool = pool
        self.owners = owners
        self.rounds = rounds
    }
    func run() {
        let burst = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { burst.deallocate() }
        var seed: UInt64 = UInt64(UInt(bitPattern: ObjectIdentifier(self).hashValue))
        for _ in 0..<rounds {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            let want = 1 + Int(seed >> 59)
            let taken = pool.takeFree(into: UnsafeMutableBufferPointer(rebasing: burst[0..<want]))
            for position in 0..<taken {
                let index = Int(burst[position])
                if owners[index].exchange(1, ordering: .acquiringAndReleasing) != 0 { doubleOwned += 1 }
                #if DEBUG
                if pool.states[index] == BufferState.retired { retiredSeen += 1 }
                #endif
            }
            for position in 0..<taken {
                owners[Int(burst[position])].store(0, ordering: .releasing)
            }
            pool.freeBurst(UnsafeBufferPointer(rebasing: burst[0..<taken]))
        }
        done.store(true, ordering: .releasing)
    }
}

/// Pages of the pool's buffers (`0..<bufferCountMax`) resident now, by mincore.
private func residentPages(_ pool: BufferPool, page: Int) -> Int {
    let start = Int(bitPattern: pool.base) & ~(page - 1)
    let end = Int(bitPattern: pool.base) + pool.bufferCountMax * pool.objectStride
    let pages = (end - start + page - 1) / page
    var vector = [UInt8](repeating: 0, count: pages)
    guard mincore(UnsafeMutableRawPointer(bitPattern: start), end - start, &vector) == 0 else { return -1 }
    return vector.count { $0 & 1 != 0 }
}

private func totalPages(_ pool: BufferPool, page: Int) -> Int {
    let start = Int(bitPattern: pool.base) & ~(page - 1)
    let end = Int(bitPattern: pool.base) + pool.bufferCountMax * pool.objectStride
    return (end - start + page - 1) / page
}

/// Takes every buffer of a pool, then circulates them through a returns ring as a source and sink
/// on one thread do (take a burst back, recycle it) until `stop`.
private final class ReturnsChurn: @unchecked Sendable {
    let pool: BufferPool
    let started = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    /// Buffers taken back and recycled again.
    let moved = Atomic<Int>(0)

    init(_ pool: BufferPool) { self.pool = pool }

    func run() {
        var ends = try! makeRing(capacity: pool.bufferCountMax)
        let raw = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { raw.deallocate() }
        while true {  // every buffer onto the returns ring: the free list is empty
            let taken = pool.takeFree(into: raw)
            if taken == 0 { break }
            pool.recycle(UnsafeBufferPointer(rebasing: raw[0..<taken]), through: &ends.producer)
        }
        started.store(true, ordering: .releasing)
        while !stop.load(ordering: .acquiring) {
            let taken = pool.takeReturned(into: raw, from: &ends.consumer)
            if taken > 0 { pool.recycle(UnsafeBufferPointer(rebasing: raw[0..<taken]), through: &ends.producer) }
            moved.add(taken, ordering: .releasing)
        }
    }
}
