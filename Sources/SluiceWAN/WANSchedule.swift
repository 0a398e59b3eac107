// Path: Sources/SluiceWAN/WANSchedule.swift — the arithmetic of one direction: loss, delay line,
// queue limit and rate limiter, as a pure function of arrival times (no clock, no sleeping).

/// What happens to one frame: it leaves at `departureNs` (CLOCK_MONOTONIC), or it is dropped.
public enum WANAdmission: Equatable, Sendable {
    case depart(atNs: UInt64)
    case drop(WANDropReason)
}

/// One direction's schedule. Given each frame's arrival time and size, in arrival order, decides
/// when it leaves, in this order:
/// 1. loss: one draw per frame; with probability `loss` the frame is dropped (`emulatedLoss`);
/// 2. delay line: exit = max(arrival + delay + jitter sample, previous exit), the sample uniform
///    in -jitter...+jitter and the delay at least 0, so frames never overtake each other;
/// 3. queue: with a rate, the bytes still to serialise when the frame exits the delay line (the
///    previous frame's serialisation end minus this exit, times the rate) plus its own must be at
///    most `queueBytes`; without a rate, the bytes held by the direction plus its own. Else `queueFull`;
/// 4. rate: serialisation starts at max(exit, previous serialisation end) and lasts bytes * 8 / rate
///    (Ethernet header and payload as AF_PACKET sees them: no preamble, FCS, gap or padding); the
///    frame departs when it ends. The fraction of a nanosecond left over carries to the next frame,
///    so long runs keep the exact rate.
/// Owned by one thread; never allocates. Deterministic for a given seed and input.
public struct WANSchedule: Sendable {
    public let settings: WANDirectionSettings
    private var random: WANRandom
    /// A draw below this is a loss; `lossesAll` covers loss = 1, which no threshold below 2^64 can.
    private let lossThreshold: UInt64
    private let lossesAll: Bool
    /// The previous admitted frame's delay-line exit and its departure (serialisation end).
    public private(set) var lastExitNs: UInt64 = 0
    public private(set) var lastDepartureNs: UInt64 = 0
    /// Bit-nanoseconds not yet turned into a whole nanosecond of serialisation (below the rate).
    private var carryBitNs: UInt64 = 0
    /// The queue the last admitted frame joined, itself included (bytes).
    public private(set) var lastQueueBytes: Int = 0
    /// The state before the last admission, for `revertLastAdmission`.
    private var saved: (exitNs: UInt64, departureNs: UInt64, carryBitNs: UInt64, queueBytes: Int)?

    public init(settings: WANDirectionSettings, seed: UInt64) {
        precondition(settings.loss >= 0 && settings.loss <= 1, "loss outside 0...1")
        precondition(settings.queueBytes > 0, "queue limit must be positive")
        self.settings = settings
        self.random = WANRandom(seed: seed)
        self.lossesAll = settings.loss >= 1
        self.lossThreshold = settings.loss >= 1 ? UInt64.max : UInt64((settings.loss * 0x1p64).rounded(.down))
    }

    /// Decides the fate of a frame of `bytes` arriving at `arrivalNs` (not before the previous
    /// frame's arrival), with `heldBytes` held by the direction now (used only without a rate).
    public mutating func admit(arrivalNs: UInt64, bytes: Int, heldBytes: Int) -> WANAdmission {
        precondition(bytes > 0, "a frame has bytes")
        if settings.loss > 0 {
            let draw = random.next()
            if lossesAll || draw < lossThreshold { return .drop(.emulatedLoss) }
        }
        let exitNs = max(arrivalNs &+ delaySampleNs(), lastExitNs)
        let rate = settings.rateBitsPerSecond
        saved = nil
        guard rate > 0 else {
            guard heldBytes + bytes <= settings.queueBytes else { return .drop(.queueFull) }
            saved = (lastExitNs, lastDepartureNs, carryBitNs, lastQueueBytes)
            lastExitNs = exitNs
            lastDepartureNs = exitNs
            lastQueueBytes = heldBytes + bytes
            return .depart(atNs: exitNs)
        }
        let backlog = backlogBytes(atNs: exitNs)
        guard backlog + bytes <= settings.queueBytes else { return .drop(.queueFull) }
        saved = (lastExitNs, lastDepartureNs, carryBitNs, lastQueueBytes)
        let startNs = max(exitNs, lastDepartureNs)
        let bitNs = UInt64(bytes) * 8 * 1_000_000_000 + carryBitNs
        let serialisationNs = bitNs / rate
        carryBitNs = bitNs % rate
        lastExitNs = exitNs
        lastDepartureNs = startNs + serialisationNs
        lastQueueBytes = backlog + bytes
        return .depart(atNs: lastDepartureNs)
    }

    /// Takes back the last admission, whose frame could not be stored after all (`storeFull`):
    /// later frames are scheduled as if it had been dropped (its random draws stay drawn). Only
    /// right after an admission that returned `.depart`.
    public mutating func revertLastAdmission() {
        guard let saved else { preconditionFailure("no admission to take back") }
        lastExitNs = saved.exitNs
        lastDepartureNs = saved.departureNs
        carryBitNs = saved.carryBitNs
        lastQueueBytes = saved.queueBytes
        self.saved = nil
    }

    /// Bytes still to serialise at `ns` (frames that exited the delay line by then), rounded up.
    public func backlogBytes(atNs ns: UInt64) -> Int {
        guard settings.rateBitsPerSecond > 0, lastDepartureNs > ns else { return 0 }
        let product = UInt128(lastDepartureNs - ns) * UInt128(settings.rateBitsPerSecond)
        let (bytes, remainder) = product.quotientAndRemainder(dividingBy: 8_000_000_000)
        return Int(clamping: bytes + (remainder > 0 ? 1 : 0))
    }

    /// This frame's delay: `delayNs` plus a uniform sample in -jitter...+jitter, at least 0.
    @inline(__always)
    private mutating func delaySampleNs() -> UInt64 {
        let jitter = settings.jitterNs
        guard jitter > 0 else { return settings.delayNs }
        let sample = random.next(below: 2 * jitter + 1)  // 0...2*jitter, centred on jitter
        let shifted = settings.delayNs + sample
        return shifted > jitter ? shifted - jitter : 0
    }
}
