// Path: Sources/SluiceCore/BufferPool/BufferPool.swift — fixed-size buffers, preallocated, by index.
import CShims
import Glibc
import Synchronization

/// Why a pool could not be made or could not give a buffer.
public enum PoolError: Error, Equatable {
    /// Buffer count or size is zero or above its bound.
    case invalidConfiguration(bufferCount: Int, bufferSizeBytes: Int)
    /// The pool's memory could not be allocated.
    case outOfMemory(bytes: Int)
    /// Every buffer is in use.
    case exhausted(bufferCount: Int)
    /// No such NUMA node on this machine.
    case invalidNUMANode(Int, max: Int)
    /// `grow` asked for no more buffers than the pool has, or more than it reserved room for.
    case cannotGrow(from: Int, to: Int, max: Int)
    /// `shrink` asked for fewer buffers than `min` (1 for a pool; what its rings need for a pipeline's).
    case cannotShrink(from: Int, to: Int, min: Int)
}

/// What a debug build knows about each buffer of a pool (`BufferPool.states`).
@usableFromInline enum BufferState {
    @usableFromInline static let free: UInt8 = 0
    /// Taken from the free list (or a returns ring): some stage or ring owns it.
    @usableFromInline static let owned: UInt8 = 1
    /// On a ring of its pipeline when the pipeline was torn down: lost with the ring, not leaked.
    @usableFromInline static let inFlightAtTeardown: UInt8 = 2
    /// Taken off the free list by `shrink`: out of circulation until `grow` puts it back.
    @usableFromInline static let retired: UInt8 = 3
}

/// One buffer of a pool, by index. One owner at a time: moving it is handing the buffer over.
/// Rings carry the raw index (`consume buffer.index`... `PacketBuffer(adopting:)`), Swift the ownership.
@frozen
public struct PacketBuffer: ~Copyable, Sendable {
    /// The buffer's slot in its pool.
    public let index: UInt32

    /// Takes ownership of the buffer at `index`, which the caller got from `releaseIndex()` or a ring.
    @inlinable public init(adopting index: UInt32) { self.index = index }

    /// Gives up ownership and returns the raw index (to put it on a ring).
    @inlinable public consuming func releaseIndex() -> UInt32 {
        let index = self.index
        discard self
        return index
    }

    deinit {
        // A buffer may only leave through BufferPool.free or releaseIndex(); dropping it leaks a slot.
        preconditionFailure("PacketBuffer \(index) dropped without being freed")
    }
}

/// Called once per freed buffer, on the freeing thread, before the buffer is reusable.
/// A C function pointer and context: no closure, no reference counting on the free path.
public struct BufferFreeHook: @unchecked Sendable {  // unchecked: the context's owner guarantees it
    public typealias Function = @convention(c) (UnsafeMutableRawPointer?, UInt32) -> Void
    public let function: Function
    public let context: UnsafeMutableRawPointer?

    public init(_ function: Function, context: UnsafeMutableRawPointer?) {
        self.function = function
        self.context = context
    }
}

/// A fixed set of equal-sized buffers, allocated once on one NUMA node (or aligned heap memory
/// when NUMA is unavailable), handed out by index. Any thread may allocate and free: the free list
/// is a bounded MPMC queue (CShims/sluice_mpmc.h) with twice as many cells as buffers. Allocation
/// never allocates memory; exhaustion is counted. A free can wait a moment for another thread that
/// is in the middle of an allocation (see the queue's caveat), never for anything else. The control
/// plane may put reserved buffers in circulation (`grow`) and take free ones out (`shrink`).
public final class BufferPool: @unchecked Sendable {  // unchecked: the C free list is the synchronisation
    /// Buffers in circulation now (free or owned): `grow` raises it, up to `bufferCountMax`; `shrink`
    /// lowers it. Equals `buffersMade - retiredCount` between resizes.
    public var bufferCount: Int { count.load(ordering: .acquiring) }
    @usableFromInline let count: Atomic<Int>
    /// Buffers ever made (indices `0..<buffersMade`), in circulation or retired: frees are checked
    /// against it. Only `grow` raises it; it never falls.
    public var buffersMade: Int { made.load(ordering: .acquiring) }
    @usableFromInline let made: Atomic<Int>
    /// Set while a `shrink` waits for buffers: `recycle` then frees to the free list. Read once a burst.
    @usableFromInline let retireWanted = Atomic<Bool>(false)
    /// Buffers `shrink` retired and `grow` has not put back; a snapshot.
    public var retiredCount: Int { retiredTotal.load(ordering: .acquiring) }
    private let retiredTotal = Atomic<Int>(0)
    /// The retired stash: one byte per reserved buffer, nonzero while it is retired (allocated at
    /// creation; touched only under `resizing`).
    private let retiredFlags: UnsafeMutablePointer<UInt8>
    /// Buffers the pool reserved address space (and free-list cells) for at creation: `grow`'s bound,
    /// and the bound every index is checked against (memory past `buffersMade` is mapped, unused).
    public let bufferCountMax: Int
    /// One `grow` or `shrink` at a time.
    private let resizing = Mutex<Void>(())
    public let bufferSizeBytes: Int
    /// NUMA node the buffers live on; nil when NUMA placement was unavailable.
    public let numaNode: Int?
    @usableFromInline let base: UnsafeMutableRawPointer
    /// Bytes from one buffer object to the next: a cache line of metadata, then the data, padded to an
    /// odd number of lines so that buffers spread over all cache sets (a power-of-two stride would
    /// put every buffer's first line in the same few sets).
    @usableFromInline let objectStride: Int
    @usableFromInline let freeList: OpaquePointer
    @usableFromInline let freeHook: BufferFreeHook?
    private let byteCount: Int
    /// Allocation attempts that found the pool empty.
    public let exhaustedCount = Atomic<UInt64>(0)
    #if DEBUG
    /// Debug builds only: one `BufferState` byte per buffer, to trap a double free at the free and
    /// report leaked buffers when the pool of a pipeline goes away. Written by the buffer's owner;
    /// the free list's and rings' release/acquire order the writes of successive owners. Release
    /// builds have neither the bytes nor the checks.
    @usableFromInline let states: UnsafeMutablePointer<UInt8>
    /// Set (once) when a pipeline declares it carries this pool's buffers: the leak check then runs.
    let leakCheckArmed = Atomic<Bool>(false)
    #endif

    /// Makes a pool of `bufferCount` buffers of `bufferSizeBytes` each (rounded up to 64 bytes),
    /// on `numaNode` when libnuma is available. `freeHook` runs on every free. With `bufferCountMax`
    /// above `bufferCount`, address space and free-list cells for that many are reserved (not
    /// touched: pages become resident as `grow` faults them in, though a kernel with strict overcommit
    /// accounting charges the whole reservation at once; the free list's cells for every reserved
    /// buffer, 32 bytes each, are allocated now), so the pool can grow while in use.
    public init(
        bufferCount: Int, bufferSizeBytes: Int, numaNode: Int? = nil, freeHook: BufferFreeHook? = nil,
        bufferCountMax: Int? = nil
    ) throws(PoolError) {
        let reserved = bufferCountMax ?? bufferCount
        guard bufferCount > 0, bufferCount <= reserved, reserved <= Limits.poolBufferCountMax,
            bufferSizeBytes > 0, bufferSizeBytes <= Limits.poolBufferSizeMax
        else { throw PoolError.invalidConfiguration(bufferCount: bufferCount, bufferSizeBytes: bufferSizeBytes) }
        let stride = (bufferSizeBytes + 63) & ~63
        var objectStride = Self.metadataStride + stride
        if (objectStride / 64) % 2 == 0 { objectStride += 64 }
        let bytes = objectStride * reserved
        if let numaNode, !(0...CPU.numaNodeMax).contains(numaNode) {
            throw .invalidNUMANode(numaNode, max: CPU.numaNodeMax)
        }
        // Without a node: the caller's own node (the worker that will use the pool should make it).
        let node = CPU.numaAvailable ? (numaNode ?? CPU.numaNode(of: CPU.current())) : nil
        var memory: UnsafeMutableRawPointer?
        if let node {
            memory = sluice_numa_alloc_onnode(bytes, Int32(node))
        } else if posix_memalign(&memory, 4096, bytes) != 0 {
            memory = nil
        }
        guard let memory else { throw PoolError.outOfMemory(bytes: bytes) }
        let queueSize = UInt32(2) << UInt32(Int.bitWidth - (reserved - 1).leadingZeroBitCount)
        guard let freeList = sluice_mpmc_new(queueSize) else {
            if node != nil { sluice_numa_free(memory, bytes) } else { Glibc.free(memory) }
            throw PoolError.outOfMemory(bytes: Int(queueSize) * 16)
        }
        for index in 0..<bufferCount {
            let added = sluice_mpmc_enqueue(freeList, UInt64(index))
            precondition(added == 1, "free list smaller than the pool")
        }
        // Writing every metadata line also faults every page in now, not on the data path.
        Self.faultIn(memory, objectStride: objectStride, buffers: 0..<bufferCount)
        // Huge pages where the kernel gives them (THP in `madvise` mode or `always`), as DPDK backs its
        // pools with hugepages, so the data path misses the TLB less. Advised only after the pages are
        // in: advised first, each 2 MiB fault above compacts memory on the spot when no huge page is
        // free (`defrag` = madvise, the default), which measured 65-90 ms for a 38 MB pool against
        // 5 ms in 4 KiB pages; advised now, khugepaged merges them in the background, at its own pace
        // (by default 4096 pages every 10 s: a short replay runs on 4 KiB pages). Advisory.
        Self.adviseHugePages(memory, objectStride: objectStride, buffers: 0..<bufferCount)
        self.objectStride = objectStride
        self.count = Atomic(bufferCount)
        self.made = Atomic(bufferCount)
        self.retiredFlags = .allocate(capacity: reserved)
        self.retiredFlags.initialize(repeating: 0, count: reserved)
        self.bufferCountMax = reserved
        self.bufferSizeBytes = stride
        self.numaNode = node
        self.base = memory
        self.freeList = freeList
        self.freeHook = freeHook
        self.byteCount = bytes
        #if DEBUG
        self.states = .allocate(capacity: reserved)
        self.states.initialize(repeating: BufferState.free, count: reserved)
        #endif
    }

    deinit {
        #if DEBUG
        if leakCheckArmed.load(ordering: .acquiring) {
            let leaked = (0..<buffersMade).count { states[$0] == BufferState.owned }
            precondition(leaked == 0, "BufferPool: \(leaked) of \(bufferCount) buffers leaked: neither free nor "
                + "in flight on a ring when the pipeline carrying them stopped (a stage kept or dropped them)")
        }
        states.deallocate()
        #endif
        retiredFlags.deallocate()
        sluice_mpmc_delete(freeList)
        if numaNode != nil { sluice_numa_free(base, byteCount) } else { Glibc.free(base) }
    }

    /// Writes each buffer's metadata line and first data word: the kernel faults its pages in now;
    /// with `everyPage`, a byte in each page the buffer covers too (a retired buffer, whose pages were
    /// given back).
    private static func faultIn(_ memory: UnsafeMutableRawPointer, objectStride: Int, buffers: Range<Int>,
                                everyPage: Bool = false) {
        for index in buffers {
            let object = memory + index * objectStride
            object.initializeMemory(as: PacketMetadata.self, repeating: PacketMetadata(), count: 1)
            (object + metadataStride).storeBytes(of: 0, as: UInt64.self)
            guard everyPage else { continue }
            var offset = pageSize - (Int(bitPattern: object) & (pageSize - 1))
            while offset < objectStride {
                (object + offset).storeBytes(of: 0, as: UInt8.self)
                offset += pageSize
            }
        }
    }

    /// Advises huge pages for the pages `buffers` cover (advisory; see the call in `init`): the whole
    /// pages, or from the page the range starts in when `fromStartPage` (a grown range, whose first
    /// page was faulted in with the buffers before it).
    private static func adviseHugePages(_ memory: UnsafeMutableRawPointer, objectStride: Int, buffers: Range<Int>,
                                        fromStartPage: Bool = false) {
        let page = 4096
        let first = Int(bitPattern: memory) + buffers.lowerBound * objectStride
        let start = fromStartPage ? first & ~(page - 1) : (first + page - 1) & ~(page - 1)
        let end = (Int(bitPattern: memory) + buffers.upperBound * objectStride) & ~(page - 1)
        guard end > start, let address = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = sluice_mem_advise_hugepages(address, end - start)
    }

    /// Puts buffers in circulation up to `newCount` (at most `bufferCountMax`) while the pool is in use:
    /// retired ones first (their pages faulted in again), then never-used reserved ones; faults their
    /// pages in and puts them on the free list. Control plane: blocks for the page faults (a few ms per
    /// 10 MB), one grow or shrink at a time; allocating and freeing threads go on meanwhile.
    public func grow(to newCount: Int) throws(PoolError) {
        try resizing.withLock { _ throws(PoolError) in
            let old = bufferCount
            guard newCount > old, newCount <= bufferCountMax else {
                throw .cannotGrow(from: old, to: newCount, max: bufferCountMax)
            }
            let oldMade = buffersMade
            let retired = retiredCount
            let reused = min(newCount - old, retired)
            let newMade = oldMade + (newCount - old - reused)
            precondition(newMade <= bufferCountMax, "pool counts out of step: \(old) + \(retired) retired != \(oldMade)")
            // Retired buffers back first, lowest index first: marked 2 until they are counted.
            var left = reused
            var index = 0
            while left > 0 {
                precondition(index < bufferCountMax, "pool counts out of step: \(left) retired buffers not found")
                if retiredFlags[index] != 0 {
                    retiredFlags[index] = 2
                    Self.faultIn(base, objectStride: objectStride, buffers: index..<(index + 1), everyPage: true)
                    #if DEBUG
                    states[index] = BufferState.free
                    #endif
                    left -= 1
                }
                index += 1
            }
            Self.faultIn(base, objectStride: objectStride, buffers: oldMade..<newMade)
            Self.adviseHugePages(base, objectStride: objectStride, buffers: oldMade..<newMade, fromStartPage: true)
            // Counted before they are handed out: whoever takes one sees counts that include it.
            made.store(newMade, ordering: .releasing)
            retiredTotal.store(retired - reused, ordering: .releasing)
            count.store(newCount, ordering: .releasing)
            for reusedIndex in 0..<index where retiredFlags[reusedIndex] == 2 {
                retiredFlags[reusedIndex] = 0
                returnToFreeList(UInt32(reusedIndex))
            }
            for fresh in oldMade..<newMade { returnToFreeList(UInt32(fresh)) }
        }
    }

    /// Takes buffers out of circulation until `target` remain or none is free now; returns how many it
    /// retired (0 when `target >= bufferCount`: best effort, partial when the free list runs dry).
    /// Only buffers on the free list are taken, never one a stage, ring, returns ring or cache holds.
    /// With `waitNs`, when the free list runs dry first, it asks `recycle` to send buffers to the free
    /// list instead of their returns ring (where a busy pipeline keeps them circulating) and takes them
    /// as they come, sleeping 1 ms between tries, for up to `waitNs`; recycling goes back to the returns
    /// ring before it returns. They go to a stash reserved at creation (nothing is allocated), the
    /// whole pages that only retired buffers cover go back to the kernel (MADV_DONTNEED), and `grow`
    /// puts them back first. Control plane, while threads allocate and free: blocks up to `waitNs`;
    /// one grow or shrink at a time; never counts exhaustion. Throws `cannotShrink` when `target` is
    /// below 1.
    @discardableResult
    public func shrink(to target: Int, waitNs: UInt64 = 0) throws(PoolError) -> Int {
        try resizing.withLock { _ throws(PoolError) -> Int in
            let old = bufferCount
            guard target >= 1 else { throw .cannotShrink(from: old, to: target, min: 1) }
            var taken = 0
            var lowest = Int.max
            var highest = -1
            let (sum, overflow) = Clock.monotonicNs().addingReportingOverflow(waitNs)
            let deadline = overflow ? .max : sum
            defer { retireWanted.store(false, ordering: .relaxed) }
            while old - taken > target {
                var item: UInt64 = 0
                guard sluice_mpmc_dequeue(freeList, &item) == 1 else {
                    guard Clock.monotonicNs() < deadline else { break }
                    retireWanted.store(true, ordering: .relaxed)
                    usleep(1_000)
                    continue
                }
                let index = Int(truncatingIfNeeded: item)
                precondition(index < buffersMade && retiredFlags[index] == 0, "free list held buffer \(index) twice")
                #if DEBUG
                precondition(states[index] == BufferState.free, "buffer \(index) on the free list but not free")
                states[index] = BufferState.retired
                #endif
                retiredFlags[index] = 1
                lowest = min(lowest, index)
                highest = max(highest, index)
                taken += 1
            }
            guard taken > 0 else { return 0 }
            retiredTotal.add(taken, ordering: .releasing)
            count.store(old - taken, ordering: .releasing)
            releasePages(around: lowest...highest)
            return taken
        }
    }

    /// Gives back to the kernel the whole pages inside each run of consecutive retired buffers that
    /// overlaps `indices` (a page shared with a buffer in circulation stays). Under `resizing`.
    private func releasePages(around indices: ClosedRange<Int>) {
        let page = Self.pageSize
        let made = buffersMade
        var first = indices.lowerBound
        while first > 0, retiredFlags[first - 1] != 0 { first -= 1 }
        var index = first
        while index <= indices.upperBound {
            guard retiredFlags[index] != 0 else {
                index += 1
                continue
            }
            var end = index
            while end < made, retiredFlags[end] != 0 { end += 1 }
            let start = (Int(bitPattern: base) + index * objectStride + page - 1) & ~(page - 1)
            let stop = (Int(bitPattern: base) + end * objectStride) & ~(page - 1)
            if stop > start, let address = UnsafeMutableRawPointer(bitPattern: start) {
                // Private anonymous memory: fails only on locked pages (EINVAL), which then stay resident.
                _ = sluice_mem_release(address, stop - start)
            }
            index = end
        }
    }

    /// The kernel's page size: what `madvise` rounds to.
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// A free buffer, or nil when all are in use (counted in `exhaustedCount`). Any thread; never blocks.
    @inlinable public func allocate() -> PacketBuffer? {
        var index: UInt64 = 0
        guard sluice_mpmc_dequeue(freeList, &index) == 1 else {
            exhaustedCount.add(1, ordering: .relaxed)
            return nil
        }
        markTaken(UInt32(truncatingIfNeeded: index))
        return PacketBuffer(adopting: UInt32(truncatingIfNeeded: index))
    }

    /// A free buffer, or `PoolError.exhausted` when all are in use. For control paths.
    public func allocateOrThrow() throws(PoolError) -> PacketBuffer {
        guard let buffer = allocate() else { throw PoolError.exhausted(bufferCount: bufferCount) }
        return buffer
    }

    /// Fills `indices` with free buffer indices, all or none; the caller owns them (adopt each).
    /// Returns indices.count, or 0 when fewer were free (none taken; counted as exhaustion).
    @inlinable public func allocateBulk(into indices: UnsafeMutableBufferPointer<UInt32>) -> Int {
        for position in indices.indices {
            var index: UInt64 = 0
            guard sluice_mpmc_dequeue(freeList, &index) == 1 else {
                for taken in 0..<position {
                    markFreed(indices[taken])
                    returnToFreeList(indices[taken])
                }
                exhaustedCount.add(1, ordering: .relaxed)
                return 0
            }
            indices[position] = UInt32(truncatingIfNeeded: index)
            markTaken(indices[position])
        }
        return indices.count
    }

    /// Takes up to `indices.count` free buffers (best effort); returns how many, 0 counted as
    /// exhaustion. The caller owns them (adopt each, or keep them as raw indices in a stage's cache).
    @inlinable public func allocateBurst(into indices: UnsafeMutableBufferPointer<UInt32>) -> Int {
        var taken = 0
        while taken < indices.count {
            var index: UInt64 = 0
            guard sluice_mpmc_dequeue(freeList, &index) == 1 else { break }
            indices[taken] = UInt32(truncatingIfNeeded: index)
            markTaken(indices[taken])
            taken += 1
        }
        if taken == 0, indices.count > 0 { exhaustedCount.add(1, ordering: .relaxed) }
        return taken
    }

    /// Returns a burst of owned buffers by raw index (items taken off a ring), running the free hook
    /// for each. Any thread; never blocks.
    @inlinable public func freeBurst(_ items: UnsafeBufferPointer<UInt64>) {
        for item in items { freeIndex(UInt32(truncatingIfNeeded: item)) }
    }

    /// Hands a burst of owned buffers back to the stage that allocates them through `returns`, an SPSC
    /// ring that stage drains before it asks the free list (`BufferPool.takeReturned`), running the free
    /// hook for each. What does not fit goes to the free list. Across cores this costs a ring line
    /// per 8 buffers instead of a contended free-list cell per buffer. Never blocks.
    @inlinable public func recycle(_ items: UnsafeBufferPointer<UInt64>, through returns: inout RingProducer) {
        #if DEBUG
        for item in items { markFreed(UInt32(truncatingIfNeeded: item)) }
        #endif
        if let freeHook {
            for item in items { freeHook.function(freeHook.context, UInt32(truncatingIfNeeded: item)) }
        }
        var offset = 0
        // A shrink waiting for free buffers takes them off the free list: none to the returns ring.
        while offset < items.count, !retireWanted.load(ordering: .relaxed) {
            let chunk = min(items.count - offset, Limits.burstCountMax)
            let (added, _) = returns.enqueueBurst(UnsafeBufferPointer(rebasing: items[offset..<(offset + chunk)]))
            offset += added
            if added < chunk { break }
        }
        while offset < items.count {
            returnToFreeList(UInt32(truncatingIfNeeded: items[offset]))
            offset += 1
        }
    }

    /// Takes up to `indices.count` buffers: first those recycled to this stage through `returns`,
    /// then from the free list. Returns how many; 0 is counted as exhaustion.
    @inlinable public func takeReturned(into indices: UnsafeMutableBufferPointer<UInt64>,
                                        from returns: inout RingConsumer) -> Int {
        let burst = UnsafeMutableBufferPointer(rebasing: indices[0..<min(indices.count, Limits.burstCountMax)])
        let (taken, _) = returns.dequeueBurst(into: burst)
        #if DEBUG
        for position in 0..<taken { markTaken(UInt32(truncatingIfNeeded: burst[position])) }
        #endif
        return taken > 0 ? taken : takeFree(into: indices)
    }

    /// Takes up to `indices.count` buffers from the free list, as raw indices the caller owns.
    /// Returns how many; 0 is counted as exhaustion.
    @inlinable public func takeFree(into indices: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var count = 0
        while count < indices.count {
            var index: UInt64 = 0
            guard sluice_mpmc_dequeue(freeList, &index) == 1 else { break }
            indices[count] = index
            markTaken(UInt32(truncatingIfNeeded: index))
            count += 1
        }
        if count == 0, indices.count > 0 { exhaustedCount.add(1, ordering: .relaxed) }
        return count
    }

    /// Returns a buffer to the pool, running the free hook first. Any thread; never blocks.
    @inlinable public func free(_ buffer: consuming PacketBuffer) {
        freeIndex(buffer.releaseIndex())
    }

    /// Returns a buffer by raw index (one taken off a ring). The caller must own it.
    @inlinable public func freeIndex(_ index: UInt32) {
        // Against the buffers made (a plain load): an index past them was never handed out, and freeing
        // one would give it two owners once `grow` hands it out too. The index came to this thread
        // after the release store that counted it. (A retired index traps in debug builds, `markFreed`.)
        precondition(Int(index) < made.load(ordering: .relaxed), "buffer index outside the pool")
        markFreed(index)
        if let freeHook { freeHook.function(freeHook.context, index) }
        returnToFreeList(index)
    }

    /// Puts an index back on the free list. The queue has twice as many cells as buffers, so "full"
    /// only means an allocator on another thread is between claiming and releasing the cell we need
    /// (a preempted thread: microseconds to a scheduler tick): wait for it, boundedly.
    @inlinable func returnToFreeList(_ index: UInt32) {
        var spins: UInt64 = 0
        while sluice_mpmc_enqueue(freeList, UInt64(index)) == 0 {
            spins &+= 1
            precondition(spins < Self.freeSpinsMax, "free list stuck full for seconds: pool corrupt")
            sluice_cpu_relax()
        }
    }

    /// PAUSEs a free may wait for a stalled allocator (seconds) before declaring the free list corrupt.
    /// Double frees trap in debug builds (`markFreed`): rings carry raw indices, so ownership alone
    /// cannot prevent them.
    @usableFromInline static let freeSpinsMax: UInt64 = 1 << 28

    /// Debug builds: records that the buffer at `index` left the free list for an owner. Release: nothing.
    @inlinable @inline(__always) func markTaken(_ index: UInt32) {
        #if DEBUG
        if states[Int(index)] == BufferState.retired { retiredTaken(index) }
        states[Int(index)] = BufferState.owned
        #endif
    }

    /// Debug builds: traps unless the buffer at `index` is owned, i.e. on a double free or a free of a
    /// buffer never taken, at the free that is wrong. Release: nothing.
    @inlinable @inline(__always) func markFreed(_ index: UInt32) {
        #if DEBUG
        if states[Int(index)] != BufferState.owned { doubleFree(index) }
        states[Int(index)] = BufferState.free
        #endif
    }

    @usableFromInline @inline(never) func doubleFree(_ index: UInt32) -> Never {
        #if DEBUG
        if states[Int(index)] == BufferState.retired {
            preconditionFailure("BufferPool: free of buffer \(index), which shrink retired (it was free, not owned)")
        }
        #endif
        preconditionFailure("BufferPool: double free of buffer \(index): it is not owned (already free, or never taken)")
    }

    @usableFromInline @inline(never) func retiredTaken(_ index: UInt32) -> Never {
        preconditionFailure("BufferPool: buffer \(index) taken while retired by shrink (it is out of circulation)")
    }

    /// Declares that a pipeline carries this pool's buffers: in debug builds, when the pool goes away,
    /// any buffer still owned (not free, not in flight on a ring at the pipeline's teardown) is a leak
    /// and traps with the count. Release builds: nothing. `PipelineBuilder.carriesBuffers(of:)` calls it.
    public func armLeakCheck() {
        #if DEBUG
        leakCheckArmed.store(true, ordering: .releasing)
        #endif
    }

    /// Debug builds: marks a buffer that was in flight on a pipeline's ring when the pipeline was torn
    /// down: not free, but not leaked by a stage either. Nobody may run the pipeline any more.
    func markInFlightAtTeardown(_ index: UInt32) {
        #if DEBUG
        precondition(Int(index) < buffersMade, "ring item outside the pool its pipeline carries")
        precondition(states[Int(index)] != BufferState.retired, "ring item \(index) retired by shrink")
        if states[Int(index)] == BufferState.owned { states[Int(index)] = BufferState.inFlightAtTeardown }
        #endif
    }

    /// Debug builds: buffers owned now (taken, not freed); a snapshot for tests. Release builds: nil.
    public var ownedCountForDebugging: Int? {
        #if DEBUG
        return (0..<buffersMade).count { states[$0] == BufferState.owned }
        #else
        return nil
        #endif
    }

    /// The bytes of the buffer at `index`.
    @inlinable public func bytes(at index: UInt32) -> UnsafeMutableRawBufferPointer {
        precondition(Int(index) < bufferCountMax, "buffer index outside the pool")
        return UnsafeMutableRawBufferPointer(start: base + Int(index) * objectStride + Self.metadataStride,
                                             count: bufferSizeBytes)
    }

    /// The bytes of an owned buffer.
    @inlinable public func bytes(of buffer: borrowing PacketBuffer) -> UnsafeMutableRawBufferPointer {
        bytes(at: buffer.index)
    }

    /// The metadata of the buffer at `index`. Only the buffer's owner may read or write it.
    @inlinable public func metadata(at index: UInt32) -> UnsafeMutablePointer<PacketMetadata> {
        precondition(Int(index) < bufferCountMax, "buffer index outside the pool")
        return (base + Int(index) * objectStride).assumingMemoryBound(to: PacketMetadata.self)
    }

    /// Starts loading the metadata line and first data line of the buffer at `index` (burst loops
    /// call this a few packets ahead; the lines were usually last written by another core).
    @inlinable public func prefetch(_ index: UInt32, forWriting: Bool = false) {
        let object = UnsafeRawPointer(base + Int(index) * objectStride)
        if forWriting {
            sluice_prefetch_write(object)
            sluice_prefetch_write(object + Self.metadataStride)
        } else {
            sluice_prefetch_read(object)
            sluice_prefetch_read(object + Self.metadataStride)
        }
    }

    /// Each buffer's metadata has a cache line of its own, right before its data (as in a DPDK mbuf):
    /// the stage that owns a buffer never shares a line with the owner of another.
    @usableFromInline static let metadataStride = 64

    /// Buffers free now; a snapshot.
    public var freeCount: Int { Int(sluice_mpmc_count(freeList)) }
}
