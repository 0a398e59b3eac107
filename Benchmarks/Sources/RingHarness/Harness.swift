// Path: Benchmarks/Sources/RingHarness/Harness.swift — ring variants, pinned throughput runs, round trips.
import CRingHarness
import SluiceCore

/// A ring implementation under test. All are driven by loops of one shape (CRingHarness/loops.h,
/// SwiftLoops.swift) on the same two pinned threads.
public enum RingVariant: String, CaseIterable, Sendable {
    /// SluiceCore's RingProducer/RingConsumer (the C ring inlined into Swift; ends 128 bytes apart).
    case swift = "Swift"
    /// sluice_spsc.h called from C, ends 128 bytes apart (the header's default).
    case c128 = "C 128"
    /// sluice_spsc.h called from C, rebuilt with SLUICE_SPSC_ALIGN 64.
    case c64 = "C 64"
    /// DPDK's rte_ring in SP/SC mode, without the EAL.
    case rte = "rte_ring"

    var loops: ringh_variant {
        switch self {
        case .swift: swiftVariant()
        case .c128: ringh_sluice_c128
        case .c64: ringh_sluice_c64
        case .rte: ringh_rte
        }
    }
}

/// How the loops call the ring: one item per call, or bursts of up to `count` items.
public enum RingCalls: Hashable, Sendable, CustomStringConvertible {
    case single
    case burst(Int)

    public var description: String {
        switch self {
        case .single: "single"
        case .burst(let count): "burst \(count)"
        }
    }
}

/// Where and how a run's two threads go: the producer (or pinger) on `firstCPU`, the consumer (or
/// echoer) on `secondCPU`, both under SCHED_FIFO at `realtimePriority` if it is above 0.
public struct ThreadPlacement: Sendable, CustomStringConvertible {
    public let firstCPU: Int
    public let secondCPU: Int
    public let realtimePriority: Int

    public init(firstCPU: Int, secondCPU: Int, realtimePriority: Int) {
        self.firstCPU = firstCPU
        self.secondCPU = secondCPU
        self.realtimePriority = realtimePriority
    }

    /// CPUs `first` and `second`, real-time at priority 1 if this process may use SCHED_FIFO, else not:
    /// other work on the machine then preempts neither thread.
    public static func pinned(_ first: Int, _ second: Int) -> ThreadPlacement {
        let realtimePriority = ringh_realtime_probe(1) == 0 ? 1 : 0
        return ThreadPlacement(firstCPU: first, secondCPU: second, realtimePriority: realtimePriority)
    }

    public var description: String {
        let scheduling = realtimePriority > 0 ? "SCHED_FIFO \(realtimePriority)" : "normal scheduling"
        return "CPUs \(firstCPU) → \(secondCPU), \(scheduling)"
    }
}

/// Why a measurement could not be made, or could not be trusted.
public enum HarnessError: Error, CustomStringConvertible {
    /// The variant's create call failed with this errno.
    case ringCreation(RingVariant, capacity: Int, errno: Int32)
    /// A pinned thread could not be made (a CPU outside the affinity mask, say), or could not take
    /// its real-time priority.
    case threads(errno: Int32)
    /// Items arrived out of sequence: the ring is broken.
    case outOfSequence(RingVariant, mismatches: UInt64)

    public var description: String {
        switch self {
        case .ringCreation(let variant, let capacity, let errno):
            "\(variant.rawValue): making a ring of \(capacity) failed (errno \(errno))"
        case .threads(let errno): "cannot start a pinned thread at its priority (errno \(errno))"
        case .outOfSequence(let variant, let mismatches): "\(variant.rawValue): \(mismatches) items out of sequence"
        }
    }
}

/// Bytes the harness aligns and pads shared memory to: two cache lines, as SLUICE_SPSC_ALIGN.
let lineBytes = 128

/// One ring of a variant, as the handles its loops take. Destroys the ring with itself.
struct RingHandles: ~Copyable {
    let tx: UnsafeMutableRawPointer
    let rx: UnsafeMutableRawPointer
    private let destroy: @convention(c) (UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Void

    init(_ variant: RingVariant, capacity: Int) throws(HarnessError) {
        let loops = variant.loops
        var tx: UnsafeMutableRawPointer?
        var rx: UnsafeMutableRawPointer?
        let rc = loops.create(UInt32(capacity), &tx, &rx)
        guard rc == 0, let tx, let rx else {
            throw .ringCreation(variant, capacity: capacity, errno: -rc)
        }
        self.tx = tx
        self.rx = rx
        self.destroy = loops.destroy
    }

    deinit { destroy(tx, rx) }
}

/// Zeroed UInt64 slots on lines of their own, so one thread's scratch never shares a line with another's.
func allocateSlots(_ count: Int) -> UnsafeMutableBufferPointer<UInt64> {
    let bytes = (count * MemoryLayout<UInt64>.stride + lineBytes - 1) / lineBytes * lineBytes
    let memory = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, lineBytes), alignment: lineBytes)
    let slots = memory.bindMemory(to: UInt64.self, capacity: count)
    slots.initialize(repeating: 0, count: count)
    return UnsafeMutableBufferPointer(start: slots, count: count)
}

/// A ring with its producer and consumer jobs, ready to run again and again, so that callers can keep
/// setup out of a measurement. Each run starts two pinned threads.
public struct ThroughputRig: ~Copyable {
    public let variant: RingVariant
    public let calls: RingCalls
    public let placement: ThreadPlacement
    private let ring: RingHandles
    private let producerItems: UnsafeMutableBufferPointer<UInt64>
    private let consumerItems: UnsafeMutableBufferPointer<UInt64>

    /// Makes the ring (`capacity` a power of two) and the burst buffers. Bursts are 1...Limits.burstCountMax.
    public init(_ variant: RingVariant, calls: RingCalls, capacity: Int, placement: ThreadPlacement) throws(HarnessError) {
        var burst = 1
        if case .burst(let count) = calls {
            precondition(count >= 1, "a burst moves at least one item")
            precondition(count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
            burst = count
        }
        ring = try RingHandles(variant, capacity: capacity)
        self.variant = variant
        self.calls = calls
        self.placement = placement
        producerItems = allocateSlots(burst)
        consumerItems = allocateSlots(burst)
    }

    deinit {
        producerItems.deallocate()
        consumerItems.deallocate()
    }

    /// Moves `items` items (0, 1, ... in sequence) from the producer thread to the consumer thread.
    /// Blocks until both are done; returns items per second from the first item sent to the last taken.
    public func run(items: Int) throws(HarnessError) -> Double {
        precondition(items > 0, "a run moves at least one item")
        var producer = ringh_job(
            tx: ring.tx, rx: nil, count: UInt64(items), burst: UInt32(producerItems.count),
            buffer: producerItems.baseAddress, mismatches: 0)
        var consumer = ringh_job(
            tx: nil, rx: ring.rx, count: UInt64(items), burst: UInt32(consumerItems.count),
            buffer: consumerItems.baseAddress, mismatches: 0)
        let loops = variant.loops
        let (produce, consume) =
            switch calls {
            case .single: (loops.produce_single, loops.consume_single)
            case .burst: (loops.produce_burst, loops.consume_burst)
            }
        let ns = ringh_run_pair(
            produce, &producer, Int32(placement.firstCPU), consume, &consumer, Int32(placement.secondCPU),
            Int32(placement.realtimePriority))
        guard ns > 0 else { throw .threads(errno: Int32(-ns)) }
        guard consumer.mismatches == 0 else { throw .outOfSequence(variant, mismatches: consumer.mismatches) }
        return Double(items) * 1e9 / Double(ns)
    }
}

/// Round-trip time of one item between two pinned threads, in nanoseconds.
public struct RoundTripLatency: Sendable {
    public let p50Ns: Double
    public let p99Ns: Double
}

/// Ring capacity for round trips: never more than one item is in flight, so any size does.
let roundTripCapacity = 1024

/// Times `rounds` round trips: the first CPU sends one item on a ring, the second echoes it back on
/// another, single-item calls both ways. Each trip is timed with the TSC; returns its median and p99.
public func measureRoundTrip(_ variant: RingVariant, rounds: Int, placement: ThreadPlacement) throws(HarnessError)
    -> RoundTripLatency
{
    precondition(rounds > 0, "at least one round trip")
    let there = try RingHandles(variant, capacity: roundTripCapacity)
    let back = try RingHandles(variant, capacity: roundTripCapacity)
    var samples = allocateSlots(rounds)
    defer { samples.deallocate() }
    var pinger = ringh_job(
        tx: there.tx, rx: back.rx, count: UInt64(rounds), burst: 1, buffer: samples.baseAddress, mismatches: 0)
    var ponger = ringh_job(tx: back.tx, rx: there.rx, count: UInt64(rounds), burst: 1, buffer: nil, mismatches: 0)
    let loops = variant.loops
    let ns = ringh_run_pair(
        loops.ping, &pinger, Int32(placement.firstCPU), loops.pong, &ponger, Int32(placement.secondCPU),
        Int32(placement.realtimePriority))
    guard ns > 0 else { throw .threads(errno: Int32(-ns)) }
    guard pinger.mismatches == 0 else { throw .outOfSequence(variant, mismatches: pinger.mismatches) }
    samples.sort()
    let nsPerTick = 1 / Clock.cyclesPerNs
    return RoundTripLatency(
        p50Ns: Double(samples[(rounds - 1) * 50 / 100]) * nsPerTick,
        p99Ns: Double(samples[(rounds - 1) * 99 / 100]) * nsPerTick)
}

/// How far one reading of the TSC moves past the last, in nanoseconds (median of 101 steps): the
/// resolution of round-trip samples. Some hypervisors step it coarsely (10 ns on a KVM guest here).
public func cycleCounterStepNs() -> Double {
    var steps: [UInt64] = []
    for _ in 0...100 {
        let start = Clock.cycles()
        var now = Clock.cycles()
        while now == start { now = Clock.cycles() }
        steps.append(now &- start)
    }
    steps.sort()
    return Double(steps[steps.count / 2]) / Clock.cyclesPerNs
}
