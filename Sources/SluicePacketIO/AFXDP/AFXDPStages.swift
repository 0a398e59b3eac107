// Path: Sources/SluicePacketIO/AFXDP/AFXDPStages.swift — an interface queue as the first stage of a
// pipeline (AF_XDP RX) and as its last (AF_XDP TX).
import CShims
import SluiceCore

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
/// frame or slot drops (`ringFull`). After the pipeline drains, `finish(timeoutNs:)` sends what is
/// queued and takes the last completions. Owns its transmitter; runs on one worker at a time.
public final class AFXDPSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    private var transmitter: AFXDPTransmitter
    public let statistics: AFXDPTXStatistics

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

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let queued = transmitter.transmitOrDrop(UnsafeBufferPointer(items))
        // Copy mode completes frames inside the kick: report them now, not when frames run short.
        transmitter.reapCompletions()
        return queued
    }

    /// Sends what is still queued and waits for completions, at most `timeoutNs`; frames the kernel
    /// refused are taken back (counted). Call only once no worker runs this stage. True if nothing
    /// is pending.
    public func finish(timeoutNs: UInt64 = 1_000_000_000) -> Bool {
        transmitter.flush(timeoutNs: timeoutNs)
    }
}
