// Path: Sources/SluicePacketIO/AFPacket/AFPacketStages.swift — an interface as the first stage of a
// pipeline (TPACKET_V3 RX) and as its last (PACKET_TX_RING).
import CShims
import SluiceCore

/// Stage 1 of a pipeline: received frames, as pool buffer indices. Polls without blocking (the
/// pipeline's worker decides when to spin or sleep); frames never wait for the pipeline, so a full
/// kernel ring shows up as `kernelDrops`, an empty pool as `poolExhausted`. Owns its receiver; runs
/// on one worker at a time.
public final class AFPacketSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    private var receiver: AFPacketReceiver
    /// Stops the source after this many packets (nil: never; a live interface has no end).
    public let packetCountMax: UInt64?
    /// The receiver's counters, readable from any thread.
    public let statistics: AFPacketRXStatistics
    /// With no frame ready, how long the worker may sleep (adaptive and interrupt wait modes; a
    /// busy-polling worker ignores it). nil: the worker polls. TPACKET_V3 hands frames over a block
    /// at a time, a partly filled one only after the block timeout, so at low rates polling more
    /// often than that finds nothing new; sleeping half of it adds at most that much delay.
    public let idlePollIntervalNs: UInt64?
    private var received: UInt64 = 0

    /// Takes over an open receiver (open it on a thread in the right network namespace).
    public init(receiver: consuming AFPacketReceiver, packetCountMax: UInt64? = nil, idlePollIntervalNs: UInt64? = nil) {
        self.statistics = receiver.statistics
        self.receiver = receiver
        self.packetCountMax = packetCountMax
        self.idlePollIntervalNs = idlePollIntervalNs
    }

    /// Opens a receiver on `configuration.interface` in the calling thread's namespace. An idle
    /// worker sleeps half the block timeout between polls (the kernel's 8 ms default when it is 0),
    /// at most `idlePollIntervalNsMax`: blocks also retire when full, and a burst after a quiet spell
    /// must not find the ring full.
    public convenience init(configuration: AFPacketRXConfiguration, pool: BufferPool,
                            packetCountMax: UInt64? = nil) throws(AFPacketError) {
        let blockTimeoutMs = configuration.blockTimeoutMs > 0 ? configuration.blockTimeoutMs : 8
        self.init(receiver: try AFPacketReceiver(configuration: configuration, pool: pool),
                  packetCountMax: packetCountMax,
                  idlePollIntervalNs: min(UInt64(blockTimeoutMs) * 500_000, Self.idlePollIntervalNsMax))
    }

    /// The longest idle sleep the convenience initialiser picks: 1 ms.
    public static let idlePollIntervalNsMax: UInt64 = 1_000_000

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

    /// Exhausted: sleep for good. Frames ready: poll (nil). Else `idlePollIntervalNs` (nil: poll).
    public func sleepHintNs(nowNs: UInt64) -> UInt64? {
        if isExhausted { return UInt64.max }
        guard let idlePollIntervalNs, !receiver.hasFrames else { return nil }
        return idlePollIntervalNs
    }
}

/// The last stage of a pipeline: each buffer copied into the TX ring and freed, one kick per burst.
/// A full ring drops (`ringFull`): the last stage cannot push back. Owns its transmitter; runs on
/// one worker at a time. After the pipeline drains, call `finish(timeoutNs:)` to send what is queued.
public final class AFPacketSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    private var transmitter: AFPacketTransmitter
    /// The transmitter's counters, readable from any thread.
    public let statistics: AFPacketTXStatistics

    /// Takes over an open transmitter (open it on a thread in the right network namespace).
    public init(transmitter: consuming AFPacketTransmitter) {
        self.statistics = transmitter.statistics
        self.transmitter = transmitter
    }

    /// Opens a transmitter on `configuration.interface` in the calling thread's namespace.
    public convenience init(configuration: AFPacketTXConfiguration, pool: BufferPool,
                            completionHook: AFPacketTXCompletionHook? = nil) throws(AFPacketError) {
        self.init(transmitter: try AFPacketTransmitter(configuration: configuration, pool: pool,
                                                       completionHook: completionHook))
    }

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        transmitter.transmitOrDrop(UnsafeBufferPointer(items))
    }

    /// Sends what is still queued and waits for completions, at most `timeoutNs`. Call only once the
    /// pipeline has drained or stopped (no worker is running this stage). True if nothing is pending.
    public func finish(timeoutNs: UInt64 = 1_000_000_000) -> Bool {
        transmitter.flush(timeoutNs: timeoutNs)
    }
}
