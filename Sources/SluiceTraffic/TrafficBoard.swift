// Path: Sources/SluiceTraffic/TrafficBoard.swift — what the controller grants and what the TX stage
// enqueues, shared through single-writer atomics (no locks between the two threads).
import Synchronization

/// The controller writes grants; the TX stage (`TxAdmission`) writes its enqueue and refusal totals.
/// Each field has one writer, so updates are load + store; readers may see values a moment old.
public final class TrafficBoard: Sendable {
    // Written by the controller.
    /// Rate each source may send at, in bytes per second.
    let rateBytesPerSecond: InlineArray<256, Atomic<UInt64>>
    /// Bytes each source may have in flight on the port.
    let quotaBytes: InlineArray<256, Atomic<UInt64>>
    /// Bytes all sources together may have in flight (the DQL limit).
    let portLimitBytes = Atomic<UInt64>(0)
    /// Set while the watchdog finds the port stalled: nothing is admitted.
    let stalled = Atomic<Bool>(false)
    // Written by the TX stage.
    let enqueuedPackets: InlineArray<256, Atomic<UInt64>>
    let enqueuedBytes: InlineArray<256, Atomic<UInt64>>
    /// Admission attempts refused (a frame refused twice counts twice): a source with refusals is
    /// backlogged (it wants more than it gets).
    let refusedPackets: InlineArray<256, Atomic<UInt64>>
    let lastEnqueueNs: InlineArray<256, Atomic<UInt64>>
    /// When the TX stage last scanned its ring for completions: the watchdog only believes a silent
    /// port when TX has looked recently and found nothing.
    let lastScanNs = Atomic<UInt64>(0)

    init(initialRate: UInt64, initialQuota: UInt64, portLimit: UInt64) {
        rateBytesPerSecond = InlineArray { _ in Atomic(initialRate) }
        quotaBytes = InlineArray { _ in Atomic(initialQuota) }
        enqueuedPackets = InlineArray { _ in Atomic(0) }
        enqueuedBytes = InlineArray { _ in Atomic(0) }
        refusedPackets = InlineArray { _ in Atomic(0) }
        lastEnqueueNs = InlineArray { _ in Atomic(0) }
        portLimitBytes.store(portLimit, ordering: .relaxed)
    }

    @inline(__always) static func bump(_ counter: borrowing Atomic<UInt64>, by amount: UInt64) {
        counter.store(counter.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }
}

/// The TX stage's enforcement of the controller's grants: a token bucket and an in-flight quota per
/// source, and the port's in-flight limit. Owned by the TX stage's thread, which also sees the
/// completions (call `completed` from the free-buffer hook). No lock, no allocation, no system call.
public struct TxAdmission: ~Copyable, @unchecked Sendable {  // unchecked: one owner, by construction
    let board: TrafficBoard
    private let tokens: UnsafeMutablePointer<Double>
    private let refillNs: UnsafeMutablePointer<UInt64>
    private let inFlight: UnsafeMutablePointer<UInt64>
    private var portInFlight: UInt64 = 0
    /// Set while a stage drains at shutdown: frames still go (the controller is no longer polled).
    public var ignoresStall = false
    /// Largest burst a bucket holds, in seconds of its rate (and never less than one large frame).
    static let bucketDepthNs: Double = 2_000_000
    static let bucketFloorBytes: Double = 9_018

    init(board: TrafficBoard) {
        self.board = board
        tokens = .allocate(capacity: TrafficLimits.sourceCountMax)
        tokens.initialize(repeating: Self.bucketFloorBytes, count: TrafficLimits.sourceCountMax)
        refillNs = .allocate(capacity: TrafficLimits.sourceCountMax)
        refillNs.initialize(repeating: 0, count: TrafficLimits.sourceCountMax)
        inFlight = .allocate(capacity: TrafficLimits.sourceCountMax)
        inFlight.initialize(repeating: 0, count: TrafficLimits.sourceCountMax)
    }

    deinit {
        tokens.deallocate()
        refillNs.deallocate()
        inFlight.deallocate()
    }

    /// Whether a frame of `bytes` from `source` may go on the port now; if so it is counted as in
    /// flight and enqueued. A refusal is counted (the controller reads it as demand).
    public mutating func admit(source: Int, bytes: Int, nowNs: UInt64) -> Bool {
        precondition(source >= 0 && source < TrafficLimits.sourceCountMax, "source id out of range")
        let size = UInt64(bytes)
        guard ignoresStall || !board.stalled.load(ordering: .relaxed), fits(source: source, size: size),
              take(source, size, nowNs)
        else {
            TrafficBoard.bump(board.refusedPackets[source], by: 1)
            board.lastEnqueueNs[source].store(nowNs, ordering: .relaxed)
            return false
        }
        inFlight[source] &+= size
        portInFlight &+= size
        TrafficBoard.bump(board.enqueuedPackets[source], by: 1)
        TrafficBoard.bump(board.enqueuedBytes[source], by: size)
        board.lastEnqueueNs[source].store(nowNs, ordering: .relaxed)
        return true
    }

    /// A frame of `source` left the port (its TX slot came back): it no longer counts as in flight.
    public mutating func completed(source: Int, bytes: Int) {
        precondition(source >= 0 && source < TrafficLimits.sourceCountMax, "source id out of range")
        let size = UInt64(bytes)
        inFlight[source] = inFlight[source] >= size ? inFlight[source] - size : 0
        portInFlight = portInFlight >= size ? portInFlight - size : 0
    }

    /// The TX stage scanned its ring for completions at `nowNs` (the watchdog's evidence).
    public func scanned(nowNs: UInt64) { board.lastScanNs.store(nowNs, ordering: .relaxed) }

    /// Bytes in flight, for one source and for the port.
    public func inFlightBytes(source: Int) -> UInt64 { inFlight[source] }
    public var portInFlightBytes: UInt64 { portInFlight }

    /// In-flight limits: the port's, and the source's quota. A source with nothing in flight may always
    /// send one frame, so a tiny quota cannot starve it.
    private func fits(source: Int, size: UInt64) -> Bool {
        if portInFlight > 0, portInFlight &+ size > board.portLimitBytes.load(ordering: .relaxed) { return false }
        if inFlight[source] > 0, inFlight[source] &+ size > board.quotaBytes[source].load(ordering: .relaxed) {
            return false
        }
        return true
    }

    /// The source's token bucket: refilled at its granted rate, at most `bucketDepthNs` of it.
    private mutating func take(_ source: Int, _ size: UInt64, _ nowNs: UInt64) -> Bool {
        let rate = Double(board.rateBytesPerSecond[source].load(ordering: .relaxed))
        let depth = max(rate * Self.bucketDepthNs / 1e9, Self.bucketFloorBytes)
        let elapsed = nowNs > refillNs[source] ? Double(nowNs - refillNs[source]) : 0
        tokens[source] = min(tokens[source] + rate * elapsed / 1e9, depth)
        refillNs[source] = nowNs
        guard tokens[source] >= Double(size) else { return false }
        tokens[source] -= Double(size)
        return true
    }
}
