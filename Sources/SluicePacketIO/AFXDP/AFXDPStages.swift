// Path: Sources/SluicePacketIO/AFXDP/AFXDPStages.swift — an interface queue as the first stage of a
// pipeline (AF_XDP RX) and as its last (AF_XDP TX).
import CShims
import Glibc
import SluiceCore
import Synchronization

/// Stage 1 of a pipeline: frames received on an AF_XDP socket, as pool buffer indices. Polls without
/// blocking; a full RX ring shows up as `kernelDropped`, an empty pool as `poolExhausted`. Owns its
/// receiver; runs on one worker at a time.
public final class AFXDPSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    private var receiver: AFXDPReceiver
    public let packetCountMax: UInt64?
    public let statistics: AFXDPRXStatistics
    /// The mode the XDP program runs in, for the log.
    public let mode: AFXDPMode
    /// With no frame ready, how long an idle worker may sleep (the RX ring holds `ringSize` frames;
    /// 100 µs at 10 Mpps would be a full 1024-entry ring, so this stays short). nil: poll.
    public let idlePollIntervalNs: UInt64?
    private var received: UInt64 = 0

    /// Takes over an open receiver (open it on a thread in the right network namespace).
    public init(receiver: consuming AFXDPReceiver, packetCountMax: UInt64? = nil, idlePollIntervalNs: UInt64? = 50_000) {
        self.statistics = receiver.statistics
        self.mode = receiver.mode
        self.receiver = receiver
        self.packetCountMax = packetCountMax
        self.idlePollIntervalNs = idlePollIntervalNs
    }

    /// Opens a receiver on `configuration.interface` in the calling thread's namespace.
    public convenience init(configuration: AFXDPConfiguration, pool: BufferPool,
                            packetCountMax: UInt64? = nil) throws(AFXDPError) {
        self.init(receiver: try AFXDPReceiver(configuration: configuration, pool: pool), packetCountMax: packetCountMax)
    }

    public var isExhausted: Bool {
        guard let packetCountMax else { return false }
        return received >= packetCountMax
    }

    public func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var room = items
        if let packetCountMax {
            guard received < packetCountMax else { return 0 }
            let left = Int(min(packetCountMax - received, UInt64(items.count)))
            room = UnsafeMutableBufferPointer(rebasing: items[0..<left])
        }
        let count = receiver.receiveBurst(into: room)
        received &+= UInt64(count)
        return count
    }

    public func sleepHintNs(nowNs: UInt64) -> UInt64? {
        if isExhausted { return UInt64.max }
        guard let idlePollIntervalNs, !receiver.hasFrames else { return nil }
        return idlePollIntervalNs
    }
}

/// The last stage of a pipeline: each buffer copied into a UMEM frame and freed, one kick per burst,
/// then the completion ring scanned (the completion hook runs there, on this stage's worker). No free
/// frame or slot drops (`ringFull`). On turns without input, while frames are pending, `idle` kicks
/// and scans again, so queued frames and their completions never wait for the next packet. After the
/// pipeline drains, `finish(timeoutNs:)` sends what is queued and takes the last completions. Owns its
/// transmitter; runs on one worker at a time.
public final class AFXDPSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time; idle/finish below
    private var transmitter: AFXDPTransmitter
    public let statistics: AFXDPTXStatistics
    /// Who may touch the transmitter outside `process`: `idle` takes it free -> idling and gives it back;
    /// `finish` takes it free -> finished for good. So a `finish` on another thread while the worker
    /// still calls `idle` (a pipeline that finishes its sink before stopping the runtime) waits for the
    /// turn in progress and ends idle work, instead of racing the worker on the rings.
    private let owner = Atomic<UInt8>(Owner.free)
    private enum Owner {
        static let free: UInt8 = 0
        static let idling: UInt8 = 1
        static let finished: UInt8 = 2
    }
    /// Frames on the TX ring or in flight after the worker's last turn (0 once finished: what was left
    /// is `unsentAtFinish`); any thread.
    public let heldFrames = Atomic<Int>(0)
    /// What the first `finish` returned, for later calls.
    private let flushedAtFinish = Atomic<Bool>(false)
    /// While frames are pending, how often idle turns kick and scan.
    public static let idlePollIntervalNs: UInt64 = 50_000

    public init(transmitter: consuming AFXDPTransmitter) {
        self.statistics = transmitter.statistics
        self.transmitter = transmitter
    }

    /// Opens a transmitter on `configuration.interface` in the calling thread's namespace.
    public convenience init(configuration: AFXDPConfiguration, pool: BufferPool,
                            completionHook: AFPacketTXCompletionHook? = nil) throws(AFXDPError) {
        self.init(transmitter: try AFXDPTransmitter(configuration: configuration, pool: pool,
                                                    completionHook: completionHook))
    }

    /// Per UMEM frame: what the frame carries (flow hash, length, enqueue time), for a completion hook
    /// that reports events. Read it from the hook only (the stage's worker, or `finish`'s caller).
    public var frameRecords: UnsafeMutablePointer<AFPacketTXSlotRecord> { transmitter.frameRecords }

    /// Whether the open-time probe found that this kernel completes refused descriptors' frames.
    public var refusedFramesComplete: Bool? { transmitter.refusedFramesComplete }

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        // Copy mode completes frames inside the kick: report them now, not when frames run short.
        let queued = transmitter.transmitOrDrop(UnsafeBufferPointer(items), reaping: true)
        heldFrames.store(transmitter.pendingCount, ordering: .relaxed)
        return queued
    }

    /// Idle turns do the kick and the completion scan that pending frames need.
    public static var hasIdleWork: Bool { true }

    /// While frames are pending: kicks if the kernel asks, scans the completions. Returns the frames
    /// completed. Worker only; never blocks; nothing once `finish` has begun.
    public func idle() -> Int {
        guard heldFrames.load(ordering: .relaxed) > 0 else { return 0 }
        guard owner.compareExchange(expected: Owner.free, desired: Owner.idling, ordering: .acquiring).exchanged else {
            return 0
        }
        transmitter.kickIfNeeded()
        let completed = transmitter.reapCompletions()
        heldFrames.store(transmitter.pendingCount, ordering: .relaxed)
        owner.store(Owner.free, ordering: .releasing)
        return completed
    }

    /// While frames are pending: look again in 50 µs. Nothing pending (or finished): nil.
    public func idleHintNs(nowNs: UInt64) -> UInt64? {
        heldFrames.load(ordering: .relaxed) > 0 ? Self.idlePollIntervalNs : nil
    }

    /// Sends what is still queued and waits for completions, at most `timeoutNs`; frames the kernel
    /// refused are taken back where that is safe (counted). Call only once no `process` runs (the
    /// pipeline drained); waits for an `idle` turn in progress and stops idle work for good. True if
    /// nothing is pending. Later calls return the first call's answer without touching the transmitter.
    public func finish(timeoutNs: UInt64 = 1_000_000_000) -> Bool {
        // Bounded: an idle turn is a kick and a scan, microseconds; 1 s of 10 µs naps is far beyond it.
        var spins = 0
        while !owner.compareExchange(expected: Owner.free, desired: Owner.finished, ordering: .acquiring).exchanged {
            if owner.load(ordering: .acquiring) == Owner.finished { return flushedAtFinish.load(ordering: .acquiring) }
            precondition(spins < 100_000, "an idle turn of the AF_XDP sink did not end within 1 s")
            spins += 1
            usleep(10)
        }
        let flushed = transmitter.flush(timeoutNs: timeoutNs)
        flushedAtFinish.store(flushed, ordering: .releasing)
        heldFrames.store(0, ordering: .relaxed)
        return flushed
    }
}
