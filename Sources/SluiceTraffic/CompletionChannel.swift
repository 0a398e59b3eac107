// Path: Sources/SluiceTraffic/CompletionChannel.swift — completion events from the TX free path to the
// traffic controller: an SPSC ring, no lock, no allocation, no system call on the TX side.
import SluiceCore
import Synchronization

/// One frame the TX path saw leave: the free-buffer path reports it when the ring slot comes back
/// (the kernel sent it) or a sink wrote it.
@frozen
public struct CompletionEvent: Sendable, Equatable {
    public var sourceID: UInt16
    public var flowHash: UInt32
    public var bytes: UInt32
    /// When the frame entered the TX queue and when it left, CLOCK_MONOTONIC ns.
    public var enqueueNs: UInt64
    public var completionNs: UInt64

    @inlinable public init(sourceID: UInt16, flowHash: UInt32, bytes: UInt32, enqueueNs: UInt64, completionNs: UInt64) {
        self.sourceID = sourceID
        self.flowHash = flowHash
        self.bytes = bytes
        self.enqueueNs = enqueueNs
        self.completionNs = completionNs
    }

    /// Three ring items: [source 16 | bytes 32 | 16 spare], [flow hash 32 | 32 spare], completion time.
    /// The enqueue time travels as the delay (completion - enqueue), saturated at 2^32 - 1 ns.
    @usableFromInline static let itemCount = 3
}

/// Totals per source of events the ring had no room for: counted, never lost silently.
/// Written by the reporter (single writer), read by anyone.
public final class CompletionOverflow: Sendable {
    @usableFromInline let packetSlots: InlineArray<256, Atomic<UInt64>>
    @usableFromInline let byteSlots: InlineArray<256, Atomic<UInt64>>

    init() {
        packetSlots = InlineArray { _ in Atomic<UInt64>(0) }
        byteSlots = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// Events of `source` that did not fit the ring, and their bytes.
    public func packets(_ source: Int) -> UInt64 { packetSlots[source].load(ordering: .relaxed) }
    public func bytes(_ source: Int) -> UInt64 { byteSlots[source].load(ordering: .relaxed) }

    /// Single writer: load + store, no read-modify-write.
    @inlinable func add(source: Int, bytes: UInt32) {
        packetSlots[source].store(packetSlots[source].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        byteSlots[source].store(byteSlots[source].load(ordering: .relaxed) &+ UInt64(bytes), ordering: .relaxed)
    }
}

/// Why a channel could not be made.
public enum TrafficError: Error, Equatable {
    case invalidCapacity(Int, max: Int)
    case invalidSourceCount(Int, max: Int)
    case invalidPolicy(String)
}

/// The TX path's end. Owned by the one thread that frees TX buffers; never blocks or allocates.
public struct CompletionReporter: ~Copyable, @unchecked Sendable {  // unchecked: one owner, by construction
    @usableFromInline var ring: RingProducer
    @usableFromInline let overflow: CompletionOverflow
    @usableFromInline let scratch: UnsafeMutableBufferPointer<UInt64>
    public let sourceCountMax: Int

    init(ring: consuming RingProducer, overflow: CompletionOverflow, sourceCountMax: Int) {
        self.ring = ring
        self.overflow = overflow
        self.sourceCountMax = sourceCountMax
        self.scratch = .allocate(capacity: CompletionEvent.itemCount)
    }

    deinit { scratch.deallocate() }

    /// Reports one completion. If the ring is full the event is added to the per-source overflow
    /// totals instead (single writer: load + store, no read-modify-write).
    @inlinable public mutating func report(_ event: CompletionEvent) {
        precondition(Int(event.sourceID) < sourceCountMax, "source id beyond the channel's sourceCountMax")
        let delay = event.completionNs > event.enqueueNs ? min(event.completionNs - event.enqueueNs, UInt64(UInt32.max)) : 0
        scratch[0] = UInt64(event.sourceID) << 48 | UInt64(event.bytes) << 16
        scratch[1] = UInt64(event.flowHash) << 32 | delay
        scratch[2] = event.completionNs
        let (added, _) = ring.enqueueBulk(UnsafeBufferPointer(scratch))
        if added == 0 { overflow.add(source: Int(event.sourceID), bytes: event.bytes) }
    }
}

/// The controller's end. Owned by the controller's thread.
public struct CompletionReceiver: ~Copyable, @unchecked Sendable {  // unchecked: one owner, by construction
    var ring: RingConsumer
    public let overflow: CompletionOverflow
    /// Sources 0..<sourceCountMax report on this channel.
    public let sourceCountMax: Int
    private let scratch: UnsafeMutableBufferPointer<UInt64>

    init(ring: consuming RingConsumer, overflow: CompletionOverflow, sourceCountMax: Int) {
        self.ring = ring
        self.overflow = overflow
        self.sourceCountMax = sourceCountMax
        self.scratch = .allocate(capacity: 255)  // 85 events, a multiple of 3 within Limits.burstCountMax
    }

    deinit { scratch.deallocate() }

    /// Takes up to 85 events and hands each to `body`. Returns how many.
    public mutating func drain(_ body: (CompletionEvent) -> Void) -> Int {
        let (taken, _) = ring.dequeueBurst(into: scratch)
        precondition(taken % CompletionEvent.itemCount == 0, "a completion event was split")
        var index = 0
        while index < taken {
            let word0 = scratch[index]
            let word1 = scratch[index + 1]
            let completion = scratch[index + 2]
            let delay = word1 & 0xFFFF_FFFF
            body(CompletionEvent(sourceID: UInt16(word0 >> 48), flowHash: UInt32(word1 >> 32),
                                 bytes: UInt32(truncatingIfNeeded: word0 >> 16), enqueueNs: completion &- delay,
                                 completionNs: completion))
            index += CompletionEvent.itemCount
        }
        return taken / CompletionEvent.itemCount
    }
}

/// A channel's two ends.
@frozen
public struct CompletionChannel: ~Copyable {
    public var reporter: CompletionReporter
    public var receiver: CompletionReceiver
}

/// Makes a channel holding `eventCapacity` events (rounded up to a power-of-two ring) for sources
/// 0..<sourceCountMax.
public func makeCompletionChannel(eventCapacity: Int, sourceCountMax: Int) throws(TrafficError) -> CompletionChannel {
    guard sourceCountMax > 0, sourceCountMax <= TrafficLimits.sourceCountMax else {
        throw .invalidSourceCount(sourceCountMax, max: TrafficLimits.sourceCountMax)
    }
    let itemsMax = Limits.ringCapacityMax
    guard eventCapacity > 0, eventCapacity <= itemsMax / CompletionEvent.itemCount else {
        throw .invalidCapacity(eventCapacity, max: itemsMax / CompletionEvent.itemCount)
    }
    let items = eventCapacity * CompletionEvent.itemCount
    let ends: RingEnds
    do { ends = try makeRing(capacity: 1 << (Int.bitWidth - (items - 1).leadingZeroBitCount)) } catch {
        throw .invalidCapacity(eventCapacity, max: itemsMax / CompletionEvent.itemCount)
    }
    let overflow = CompletionOverflow()
    return CompletionChannel(reporter: CompletionReporter(ring: ends.producer, overflow: overflow,
                                                          sourceCountMax: sourceCountMax),
                             receiver: CompletionReceiver(ring: ends.consumer, overflow: overflow,
                                                          sourceCountMax: sourceCountMax))
}

/// Bounds of the traffic controller.
public enum TrafficLimits {
    /// Most sources one controller divides a port among (the overflow tables are this big).
    public static let sourceCountMax = 256
}
