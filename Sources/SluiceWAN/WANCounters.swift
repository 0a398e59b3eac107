// Path: Sources/SluiceWAN/WANCounters.swift — what each direction of a link counts: plain values
// for its thread, atomics for everyone else, and the AF_PACKET ports' own counters beside them.
import SluicePacketIO
import Synchronization

/// Why a frame entered a direction and did not leave it.
public enum WANDropReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// The emulated loss drew it (independent, seeded).
    case emulatedLoss
    /// It would have found more than the queue limit ahead of it.
    case queueFull
    /// The frame store had no room: the thread fell behind its schedule far enough to fill the
    /// margin the store is sized with (never happens on time; see `WANDirectionSettings.storeBytes`).
    case storeFull
    /// Longer than the outgoing interface's MTU allows or than a TX slot holds, or cut short by the
    /// receive path (its wire length is larger than what was read).
    case tooLarge
    /// Due, but every TX ring slot was still queued or in flight.
    case txRingFull
    /// Still queued when the link stopped.
    case stopped

    /// The name in reports and in the `reason` label of `sluice_wan_drops_total`.
    public var description: String {
        switch self {
        case .emulatedLoss: "emulatedLoss"
        case .queueFull: "queueFull"
        case .storeFull: "storeFull"
        case .tooLarge: "tooLarge"
        case .txRingFull: "txRingFull"
        case .stopped: "stopped"
        }
    }
}

/// One direction's counters at one moment. Owned as plain values by the direction's thread.
public struct WANDirectionCounters: Sendable, Equatable {
    /// Frames (and their bytes) taken from the RX ring.
    public var receivedPackets: UInt64 = 0
    public var receivedBytes: UInt64 = 0
    /// Frames (and their bytes) put on the TX ring.
    public var forwardedPackets: UInt64 = 0
    public var forwardedBytes: UInt64 = 0
    /// Drops by `WANDropReason.rawValue`.
    public var drops: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
    /// Bytes and frames in the store now (delay line and queue), and the most bytes it ever held.
    public var heldBytes: UInt64 = 0
    public var heldFrames: UInt64 = 0
    public var heldBytesMax: UInt64 = 0
    /// The queue the last admitted frame joined, itself included (0 once the store is empty), and the
    /// largest such value: what `queueBytes` in the settings limits.
    public var queueBytes: UInt64 = 0
    public var queueBytesMax: UInt64 = 0
    /// How late frames went on the TX ring after their departure time: the worst, the sum (the mean
    /// is `lateNsTotal / departures`), and counts per `WANLimits.latenessBucketBoundsNs` bucket.
    public var lateNsMax: UInt64 = 0
    public var lateNsTotal: UInt64 = 0
    public var lateBuckets: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    /// Frames whose kernel timestamp was not trusted (see `WANLimits.arrivalSkewNsMax`).
    public var arrivalClockFallbacks: UInt64 = 0
    /// Frames admitted with one bit flipped by the emulated corruption (`WANCorruption`); counted
    /// when admitted, so a corrupted frame later dropped (`storeFull`, `txRingFull`, `stopped`) is
    /// counted here too.
    public var corruptedPackets: UInt64 = 0

    public init() {}

    public func count(_ reason: WANDropReason) -> UInt64 {
        switch reason {
        case .emulatedLoss: drops.0
        case .queueFull: drops.1
        case .storeFull: drops.2
        case .tooLarge: drops.3
        case .txRingFull: drops.4
        case .stopped: drops.5
        }
    }

    @inline(__always)
    public mutating func add(_ reason: WANDropReason, _ count: UInt64 = 1) {
        switch reason {
        case .emulatedLoss: drops.0 &+= count
        case .queueFull: drops.1 &+= count
        case .storeFull: drops.2 &+= count
        case .tooLarge: drops.3 &+= count
        case .txRingFull: drops.4 &+= count
        case .stopped: drops.5 &+= count
        }
    }

    /// Frames taken off the store when due: forwarded, or dropped as `txRingFull`. The lateness
    /// counters cover exactly these.
    public var departures: UInt64 { forwardedPackets &+ count(.txRingFull) }

    /// Counts in the lateness buckets, earliest first.
    public var lateBucketCounts: [UInt64] { [lateBuckets.0, lateBuckets.1, lateBuckets.2, lateBuckets.3] }

    @inline(__always)
    mutating func recordLateness(_ ns: UInt64) {
        lateNsTotal &+= ns
        if ns > lateNsMax { lateNsMax = ns }
        if ns <= 50_000 {
            lateBuckets.0 &+= 1
        } else if ns <= 200_000 {
            lateBuckets.1 &+= 1
        } else if ns <= 1_000_000 {
            lateBuckets.2 &+= 1
        } else {
            lateBuckets.3 &+= 1
        }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.receivedPackets == rhs.receivedPackets && lhs.receivedBytes == rhs.receivedBytes
            && lhs.forwardedPackets == rhs.forwardedPackets && lhs.forwardedBytes == rhs.forwardedBytes
            && WANDropReason.allCases.allSatisfy { lhs.count($0) == rhs.count($0) }
            && lhs.heldBytes == rhs.heldBytes && lhs.heldFrames == rhs.heldFrames && lhs.heldBytesMax == rhs.heldBytesMax
            && lhs.queueBytes == rhs.queueBytes && lhs.queueBytesMax == rhs.queueBytesMax
            && lhs.lateNsMax == rhs.lateNsMax && lhs.lateNsTotal == rhs.lateNsTotal
            && lhs.lateBucketCounts == rhs.lateBucketCounts && lhs.arrivalClockFallbacks == rhs.arrivalClockFallbacks
            && lhs.corruptedPackets == rhs.corruptedPackets
    }
}

/// One direction's counters for other threads. The direction's thread publishes its plain counters
/// after every turn that did work (relaxed loads and stores, one writer); readers take snapshots.
public final class WANDirectionStatistics: Sendable {
    private let receivedPackets = Atomic<UInt64>(0)
    private let receivedBytes = Atomic<UInt64>(0)
    private let forwardedPackets = Atomic<UInt64>(0)
    private let forwardedBytes = Atomic<UInt64>(0)
    private let drop0 = Atomic<UInt64>(0)
    private let drop1 = Atomic<UInt64>(0)
    private let drop2 = Atomic<UInt64>(0)
    private let drop3 = Atomic<UInt64>(0)
    private let drop4 = Atomic<UInt64>(0)
    private let drop5 = Atomic<UInt64>(0)
    private let heldBytes = Atomic<UInt64>(0)
    private let heldFrames = Atomic<UInt64>(0)
    private let heldBytesMax = Atomic<UInt64>(0)
    private let queueBytes = Atomic<UInt64>(0)
    private let queueBytesMax = Atomic<UInt64>(0)
    private let lateNsMax = Atomic<UInt64>(0)
    private let lateNsTotal = Atomic<UInt64>(0)
    private let late0 = Atomic<UInt64>(0)
    private let late1 = Atomic<UInt64>(0)
    private let late2 = Atomic<UInt64>(0)
    private let late3 = Atomic<UInt64>(0)
    private let arrivalClockFallbacks = Atomic<UInt64>(0)
    private let corruptedPackets = Atomic<UInt64>(0)

    public init() {}

    /// The last published counters.
    public func snapshot() -> WANDirectionCounters {
        var c = WANDirectionCounters()
        c.receivedPackets = receivedPackets.load(ordering: .relaxed)
        c.receivedBytes = receivedBytes.load(ordering: .relaxed)
        c.forwardedPackets = forwardedPackets.load(ordering: .relaxed)
        c.forwardedBytes = forwardedBytes.load(ordering: .relaxed)
        c.drops = (drop0.load(ordering: .relaxed), drop1.load(ordering: .relaxed), drop2.load(ordering: .relaxed),
                   drop3.load(ordering: .relaxed), drop4.load(ordering: .relaxed), drop5.load(ordering: .relaxed))
        c.heldBytes = heldBytes.load(ordering: .relaxed)
        c.heldFrames = heldFrames.load(ordering: .relaxed)
        c.heldBytesMax = heldBytesMax.load(ordering: .relaxed)
        c.queueBytes = queueBytes.load(ordering: .relaxed)
        c.queueBytesMax = queueBytesMax.load(ordering: .relaxed)
        c.lateNsMax = lateNsMax.load(ordering: .relaxed)
        c.lateNsTotal = lateNsTotal.load(ordering: .relaxed)
        c.lateBuckets = (late0.load(ordering: .relaxed), late1.load(ordering: .relaxed), late2.load(ordering: .relaxed),
                         late3.load(ordering: .relaxed))
        c.arrivalClockFallbacks = arrivalClockFallbacks.load(ordering: .relaxed)
        c.corruptedPackets = corruptedPackets.load(ordering: .relaxed)
        return c
    }

    /// Publishes the owning thread's counters. Owner only: stores, no read-modify-write.
    func publish(_ c: borrowing WANDirectionCounters) {
        receivedPackets.store(c.receivedPackets, ordering: .relaxed)
        receivedBytes.store(c.receivedBytes, ordering: .relaxed)
        forwardedPackets.store(c.forwardedPackets, ordering: .relaxed)
        forwardedBytes.store(c.forwardedBytes, ordering: .relaxed)
        drop0.store(c.drops.0, ordering: .relaxed)
        drop1.store(c.drops.1, ordering: .relaxed)
        drop2.store(c.drops.2, ordering: .relaxed)
        drop3.store(c.drops.3, ordering: .relaxed)
        drop4.store(c.drops.4, ordering: .relaxed)
        drop5.store(c.drops.5, ordering: .relaxed)
        heldBytes.store(c.heldBytes, ordering: .relaxed)
        heldFrames.store(c.heldFrames, ordering: .relaxed)
        heldBytesMax.store(c.heldBytesMax, ordering: .relaxed)
        queueBytes.store(c.queueBytes, ordering: .relaxed)
        queueBytesMax.store(c.queueBytesMax, ordering: .relaxed)
        lateNsMax.store(c.lateNsMax, ordering: .relaxed)
        lateNsTotal.store(c.lateNsTotal, ordering: .relaxed)
        late0.store(c.lateBuckets.0, ordering: .relaxed)
        late1.store(c.lateBuckets.1, ordering: .relaxed)
        late2.store(c.lateBuckets.2, ordering: .relaxed)
        late3.store(c.lateBuckets.3, ordering: .relaxed)
        arrivalClockFallbacks.store(c.arrivalClockFallbacks, ordering: .relaxed)
        corruptedPackets.store(c.corruptedPackets, ordering: .relaxed)
    }
}

/// A direction at one moment: the emulator's counters and those of its two AF_PACKET ports.
public struct WANDirectionSnapshot: Sendable {
    public var direction: WANDirection
    public var counters: WANDirectionCounters
    /// The receiving port (on the direction's input side): kernel ring drops, pool exhaustion.
    public var receive: AFPacketRXCounters
    /// The sending port (on the output side): frames the kernel finished or refused, kicks.
    public var transmit: AFPacketTXCounters

    /// Every drop by reason, the ports' included: `rxRingFull` (the kernel's RX ring overflowed),
    /// `rxPoolExhausted` (no staging buffer; never expected), `txRejected` (the kernel refused a frame
    /// on the ring). Reasons with no drops are left out unless `includingZero`.
    public func drops(includingZero: Bool = false) -> [(reason: String, count: UInt64)] {
        var drops = WANDropReason.allCases.map { (reason: $0.description, count: counters.count($0)) }
        drops.append((reason: "rxRingFull", count: receive.kernelDrops))
        drops.append((reason: "rxPoolExhausted", count: receive.poolExhausted))
        drops.append((reason: "txRejected", count: transmit.wrongFormat &+ transmit.frameTooLong &+ transmit.frameTooShort))
        return includingZero ? drops : drops.filter { $0.count > 0 }
    }

    /// Mean lateness of departures in ns (0 before any).
    public var meanLateNs: Double {
        let departures = counters.departures
        return departures > 0 ? Double(counters.lateNsTotal) / Double(departures) : 0
    }
}
