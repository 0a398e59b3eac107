// Path: Sources/SluiceCore/Ring/SPSCRing.swift — the SPSC ring's two ends, over CShims/sluice_spsc.h.
import CShims
import Glibc

/// Why a ring could not be made.
public enum RingError: Error, Equatable {
    /// Zero, above `max`, or (without `exact`) not a power of two.
    case invalidCapacity(Int, max: Int)
    /// The ring's memory could not be allocated.
    case outOfMemory(bytes: Int)
    /// No such NUMA node on this machine.
    case invalidNUMANode(Int, max: Int)
}

/// A new ring's two ends. Take them apart (`let p = ends.producer; let c = ends.consumer`) and move
/// each to the one thread that will use it.
@frozen
public struct RingEnds: ~Copyable {
    public var producer: RingProducer
    public var consumer: RingConsumer
}

/// Makes an SPSC ring of 64-bit items and returns its two ends, each to be moved to one thread.
/// `capacity` must be a power of two unless `exact` is set (then any count; slots round up).
/// With `numaNode`, the ring's memory comes from that node (libnuma), else from aligned heap memory.
public func makeRing(capacity: Int, exact: Bool = false, numaNode: Int? = nil) throws(RingError) -> RingEnds {
    let storage = try RingStorage(capacity: capacity, exact: exact, numaNode: numaNode)
    return RingEnds(producer: RingProducer(storage), consumer: RingConsumer(storage))
}

/// Owns a ring's memory. Shared by the two ends; freed when the last end goes away.
/// Hot paths never touch it: they use the raw pointer each end copies at creation.
@usableFromInline
final class RingStorage: @unchecked Sendable {  // unchecked: the C ring is the synchronisation
    @usableFromInline let ring: OpaquePointer
    private let byteCount: Int
    private let onNUMANode: Bool

    init(capacity: Int, exact: Bool, numaNode: Int?) throws(RingError) {
        let powerOfTwo = capacity > 0 && capacity.nonzeroBitCount == 1
        guard capacity > 0, capacity <= Limits.ringCapacityMax, exact || powerOfTwo else {
            throw RingError.invalidCapacity(capacity, max: Limits.ringCapacityMax)
        }
        if let numaNode, !(0...CPU.numaNodeMax).contains(numaNode) {
            throw RingError.invalidNUMANode(numaNode, max: CPU.numaNodeMax)
        }
        let flags: UInt32 = exact ? UInt32(SLUICE_SPSC_F_EXACT) : 0
        let bytes = sluice_spsc_memsize(UInt32(capacity), flags)
        precondition(bytes > 0, "memsize rejected a capacity the Swift check accepted")
        var memory: UnsafeMutableRawPointer?
        if let numaNode, CPU.numaAvailable {
            memory = sluice_numa_alloc_onnode(bytes, Int32(numaNode))
        } else if posix_memalign(&memory, Int(SLUICE_SPSC_ALIGN), bytes) != 0 {
            memory = nil
        }
        guard let memory else { throw RingError.outOfMemory(bytes: bytes) }
        let ring = OpaquePointer(memory)
        let rc = sluice_spsc_init(ring, UInt32(capacity), flags)
        precondition(rc == 0, "sluice_spsc_init rejected a checked capacity")
        self.ring = ring
        self.byteCount = bytes
        self.onNUMANode = numaNode != nil && CPU.numaAvailable
    }

    deinit {
        if onNUMANode {
            sluice_numa_free(UnsafeMutableRawPointer(ring), byteCount)
        } else {
            free(UnsafeMutableRawPointer(ring))
        }
    }
}

/// A read-only view of a ring's occupancy, for any thread (idle prediction, metrics).
/// Copyable: it can take nothing out and put nothing in.
public struct RingObserver: @unchecked Sendable {  // unchecked: reads atomics only
    @usableFromInline let storage: RingStorage
    @usableFromInline let ring: OpaquePointer

    init(_ storage: RingStorage) {
        self.storage = storage
        self.ring = storage.ring
    }

    /// Items queued now; may be stale by the time it returns.
    @inlinable public var count: Int { Int(sluice_spsc_count(ring)) }
    /// Whether nothing is queued now.
    @inlinable public var isEmpty: Bool { sluice_spsc_is_empty(ring) != 0 }
    /// Items the ring holds when full.
    @inlinable public var capacity: Int { Int(sluice_spsc_capacity(ring)) }
}

/// The one writing end of an SPSC ring. Owned by a single thread: move it there, never share it.
/// Never blocks, never allocates, takes no lock and touches no reference count per call.
public struct RingProducer: ~Copyable, @unchecked Sendable {  // unchecked: SPSC by construction
    @usableFromInline let storage: RingStorage
    @usableFromInline let ring: OpaquePointer

    init(_ storage: RingStorage) {
        self.storage = storage
        self.ring = storage.ring
    }

    /// Items the ring holds when full.
    @inlinable public var capacity: Int { Int(sluice_spsc_capacity(ring)) }
    /// A read-only view of this ring for other threads.
    public var observer: RingObserver { RingObserver(storage) }

    /// Adds one item; false if the ring is full (the caller keeps the item and counts the drop).
    @inlinable @inline(__always)
    public mutating func enqueue(_ item: UInt64) -> Bool {
        sluice_spsc_enqueue(ring, item) == 1
    }

    /// Adds as many of `items` as fit (best effort). Returns how many went in and the free slots left
    /// (a lower bound: the consumer may have freed more; `freeCount()` is exact).
    @inlinable @inline(__always)
    public mutating func enqueueBurst(_ items: UnsafeBufferPointer<UInt64>) -> (count: Int, freeSpace: Int) {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        guard let base = items.baseAddress else { return (0, freeCount()) }
        var freeSpace: UInt32 = 0
        let count = sluice_spsc_enqueue_burst(ring, base, UInt32(truncatingIfNeeded: items.count), &freeSpace)
        return (Int(count), Int(freeSpace))
    }

    /// Adds all of `items` or none. Returns items.count or 0, and the free slots left.
    @inlinable @inline(__always)
    public mutating func enqueueBulk(_ items: UnsafeBufferPointer<UInt64>) -> (count: Int, freeSpace: Int) {
        precondition(items.count <= Limits.burstCountMax, "bulk larger than Limits.burstCountMax")
        guard let base = items.baseAddress else { return (0, freeCount()) }
        var freeSpace: UInt32 = 0
        let count = sluice_spsc_enqueue_bulk(ring, base, UInt32(truncatingIfNeeded: items.count), &freeSpace)
        return (Int(count), Int(freeSpace))
    }

    /// Span form of `enqueueBurst(_:)`.
    @inlinable
    public mutating func enqueueBurst(_ items: Span<UInt64>) -> (count: Int, freeSpace: Int) {
        items.withUnsafeBufferPointer { enqueueBurst($0) }
    }

    /// Free slots now, exact for this producer (the consumer can only add to it). Reads the
    /// consumer's cache line.
    @inlinable public mutating func freeCount() -> Int { Int(sluice_spsc_free_count(ring)) }

    /// Free slots, reading the consumer's index only if fewer than `wanted` look free: a lower bound
    /// that is at least `wanted` whenever that many are really free. The cheap check for a hot loop.
    @inlinable public mutating func freeCount(wanting wanted: Int) -> Int {
        Int(sluice_spsc_free_count_wanting(ring, UInt32(truncatingIfNeeded: wanted)))
    }
    /// Items queued now.
    @inlinable public var count: Int { Int(sluice_spsc_count(ring)) }
}

/// The one reading end of an SPSC ring. Owned by a single thread: move it there, never share it.
/// Never blocks, never allocates, takes no lock and touches no reference count per call.
public struct RingConsumer: ~Copyable, @unchecked Sendable {  // unchecked: SPSC by construction
    @usableFromInline let storage: RingStorage
    @usableFromInline let ring: OpaquePointer

    init(_ storage: RingStorage) {
        self.storage = storage
        self.ring = storage.ring
    }

    /// Items the ring holds when full.
    @inlinable public var capacity: Int { Int(sluice_spsc_capacity(ring)) }
    /// A read-only view of this ring for other threads.
    public var observer: RingObserver { RingObserver(storage) }

    /// Takes one item, or nil if the ring is empty.
    @inlinable @inline(__always)
    public mutating func dequeue() -> UInt64? {
        var item: UInt64 = 0
        return sluice_spsc_dequeue(ring, &item) == 1 ? item : nil
    }

    /// Takes up to `items.count` items into `items` (best effort). Returns how many and how many remain
    /// (a lower bound: the producer may have added more; `availableCount()` is exact).
    @inlinable @inline(__always)
    public mutating func dequeueBurst(into items: UnsafeMutableBufferPointer<UInt64>) -> (count: Int, available: Int) {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        guard let base = items.baseAddress else { return (0, availableCount()) }
        var available: UInt32 = 0
        let count = sluice_spsc_dequeue_burst(ring, base, UInt32(truncatingIfNeeded: items.count), &available)
        return (Int(count), Int(available))
    }

    /// Takes exactly `items.count` items or none. Returns items.count or 0, and how many remain.
    @inlinable @inline(__always)
    public mutating func dequeueBulk(into items: UnsafeMutableBufferPointer<UInt64>) -> (count: Int, available: Int) {
        precondition(items.count <= Limits.burstCountMax, "bulk larger than Limits.burstCountMax")
        guard let base = items.baseAddress else { return (0, availableCount()) }
        var available: UInt32 = 0
        let count = sluice_spsc_dequeue_bulk(ring, base, UInt32(truncatingIfNeeded: items.count), &available)
        return (Int(count), Int(available))
    }

    /// Copies up to `items.count` items from the front without taking them. Returns how many.
    @inlinable
    public mutating func peek(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        precondition(items.count <= Limits.burstCountMax, "peek larger than Limits.burstCountMax")
        guard let base = items.baseAddress else { return 0 }
        return Int(sluice_spsc_peek_burst(ring, base, UInt32(truncatingIfNeeded: items.count)))
    }

    /// The front item without taking it, or nil if the ring is empty.
    @inlinable
    public mutating func peek() -> UInt64? {
        var item: UInt64 = 0
        return sluice_spsc_peek_burst(ring, &item, 1) == 1 ? item : nil
    }

    /// Items available now, exact for this consumer (the producer can only add to it).
    @inlinable public mutating func availableCount() -> Int { Int(sluice_spsc_available_count(ring)) }
    /// Items queued now.
    @inlinable public var count: Int { Int(sluice_spsc_count(ring)) }
}
