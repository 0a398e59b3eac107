// Path: Sources/SluiceTraffic/ShapedTXSink.swift — the TX stage under a traffic controller: per-source
// backlogs, admission by the controller's grants, and the completion tap on the TX ring's free path.
import SluiceCore
import SluicePacketIO
import Glibc
import Synchronization

/// Counters of a shaped TX stage, readable from any thread.
public final class ShapedTXCounters: Sendable {
    /// Frames that found their source's backlog full (freed: the last stage cannot push back).
    public let backlogDrops = Atomic<UInt64>(0)
    /// Frames whose source id is beyond the stage's source count (freed).
    public let unknownSourceDrops = Atomic<UInt64>(0)
    /// Frames handed to the TX ring.
    public let admitted = Atomic<UInt64>(0)
    /// Frames too short or too long for the port (dropped before admission).
    public let malformedDrops = Atomic<UInt64>(0)
    /// Admitted frames the ring had no slot for after all (admission undone, freed).
    public let ringFullDrops = Atomic<UInt64>(0)
    /// Frames still in a backlog when `finish` gave up (freed).
    public let unsentAtFinish = Atomic<UInt64>(0)
    init() {}
}

/// What the transmitter's completion scan calls back into, per slot, on the TX thread: the event goes
/// to the controller through the channel, and the slot's bytes leave the admission's in-flight count.
final class CompletionTap: @unchecked Sendable {  // unchecked: used only on the TX stage's thread
    @exclusivity(unchecked) var reporter: CompletionReporter
    @exclusivity(unchecked) var admission: TxAdmission
    var records: UnsafeMutablePointer<AFPacketTXSlotRecord>?
    /// Completion time for the current scan: the stage's clock reading for this burst (one clock
    /// read per burst, not per frame; completions are found at most a burst late anyway).
    @exclusivity(unchecked) var nowNs: UInt64 = 0

    init(reporter: consuming CompletionReporter, admission: consuming TxAdmission) {
        self.reporter = reporter
        self.admission = admission
    }

    static let function: AFPacketTXCompletionHook.Function = { context, slot, tag, length, status in
        Unmanaged<CompletionTap>.fromOpaque(context!)._withUnsafeGuaranteedRef { tap in
            tap.admission.completed(source: Int(tag), bytes: Int(length))
            // A frame the kernel rejected also left the queue: report it, or it would stay pending
            // in the controller's books for ever.
            guard let records = tap.records else { return }
            let record = records[Int(slot)]
            tap.reporter.report(CompletionEvent(sourceID: UInt16(truncatingIfNeeded: tag), flowHash: record.flowHash,
                                                bytes: length, enqueueNs: record.enqueueNs,
                                                completionNs: max(tap.nowNs, record.enqueueNs)))
        }
    }
}

/// Last stage: frames wait in a bounded backlog per source (`PacketMetadata.sourceID`) and go onto the
/// AF_PACKET TX ring as the controller's grants (`TxAdmission`) allow, round-robin over sources; each
/// completed slot is reported to the controller. Backlogs are served on every burst and by `finish`.
/// Never blocks or allocates on the data path; one worker at a time.
public final class ShapedTXSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    public let sourceCount: Int
    public let backlogCountMax: Int
    public let counters = ShapedTXCounters()
    /// Frames in the backlogs plus frames on the ring not yet seen complete, as of the stage's last
    /// turn (written by its worker, read by anyone: a drained pipeline is done when this is 0).
    public let heldFrames = Atomic<Int>(0)
    /// Frames in all backlogs (the worker's own count).
    private var backlogTotal = 0
    /// Idle turns in a row that sent nothing.
    private var idleMisses = 0
    @exclusivity(unchecked) private var transmitter: AFPacketTransmitter
    private let tap: CompletionTap
    private let pool: BufferPool
    private let poolRef: Unmanaged<BufferPool>
    private let backlog: UnsafeMutablePointer<UInt64>  // sourceCount rings of backlogCountMax indices
    private let backlogHead: UnsafeMutablePointer<Int>
    private let backlogCount: UnsafeMutablePointer<Int>
    private let burst = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
    @exclusivity(unchecked) private var nextSource = 0

    /// Opens the TX ring (in the calling thread's network namespace) for `sourceCount` sources, each
    /// with a backlog of `backlogCountMax` frames. `reporter` is the channel end the controller drains.
    public init(configuration: AFPacketTXConfiguration, pool: BufferPool, controller: TrafficController,
                reporter: consuming CompletionReporter, sourceCount: Int, backlogCountMax: Int = 256)
        throws(AFPacketError)
    {
        precondition(sourceCount > 0 && sourceCount <= TrafficLimits.sourceCountMax, "source count out of range")
        precondition(backlogCountMax > 0, "a backlog holds at least one frame")
        let tap = CompletionTap(reporter: reporter, admission: controller.makeAdmission())
        let hook = AFPacketTXCompletionHook(CompletionTap.function, context: Unmanaged.passUnretained(tap).toOpaque())
        transmitter = try AFPacketTransmitter(configuration: configuration, pool: pool, completionHook: hook)
        tap.records = transmitter.slotRecords
        self.tap = tap
        self.pool = pool
        self.poolRef = Unmanaged.passUnretained(pool)
        self.sourceCount = sourceCount
        self.backlogCountMax = backlogCountMax
        backlog = .allocate(capacity: sourceCount * backlogCountMax)
        backlogHead = .allocate(capacity: sourceCount)
        backlogHead.initialize(repeating: 0, count: sourceCount)
        backlogCount = .allocate(capacity: sourceCount)
        backlogCount.initialize(repeating: 0, count: sourceCount)
    }

    deinit {
        for source in 0..<sourceCount {
            for offset in 0..<backlogCount[source] {
                pool.freeIndex(UInt32(truncatingIfNeeded: backlog[slot(source, offset)]))
            }
        }
        backlog.deallocate()
        backlogHead.deallocate()
        backlogCount.deallocate()
        burst.deallocate()
    }

    /// Transmitter counters (sent, bytes, kicks) for other threads.
    public var statistics: AFPacketTXStatistics { transmitter.statistics }

    @inline(__always) private func slot(_ source: Int, _ offset: Int) -> Int {
        source * backlogCountMax + (backlogHead[source] + offset) % backlogCountMax
    }

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var dropped = 0
        poolRef._withUnsafeGuaranteedRef { pool in
            for item in items {
                let index = UInt32(truncatingIfNeeded: item)
                let source = Int(pool.metadata(at: index).pointee.sourceID)
                guard source < sourceCount else {
                    pool.freeIndex(index)
                    counters.unknownSourceDrops.add(1, ordering: .relaxed)
                    dropped += 1
                    continue
                }
                guard backlogCount[source] < backlogCountMax else {
                    pool.freeIndex(index)
                    counters.backlogDrops.add(1, ordering: .relaxed)
                    dropped += 1
                    continue
                }
                backlog[slot(source, backlogCount[source])] = item
                backlogCount[source] += 1
                backlogTotal += 1
            }
            let now = Clock.monotonicNs()
            tap.nowNs = now
            serve(pool: pool, nowNs: now)
        }
        return items.count - dropped
    }

    /// The worker calls `idle` on turns without input: backlogs wait for tokens, sent frames for
    /// their completions, and neither should wait for the next burst to arrive.
    public static var hasIdleWork: Bool { true }

    /// Serves the backlogs and scans the ring's completions (the free path that feeds the
    /// controller) when anything is held back. Returns the frames it sent.
    public func idle() -> Int {
        guard backlogTotal > 0 || transmitter.pendingCount > 0 else {
            heldFrames.store(0, ordering: .relaxed)
            return 0
        }
        let now = Clock.monotonicNs()
        tap.nowNs = now
        let sent = poolRef._withUnsafeGuaranteedRef { pool in serve(pool: pool, nowNs: now) }
        // Nothing went: look less often (up to 32x the base interval) until something does, so a
        // link that stopped completing does not keep the worker awake at 10 kHz.
        idleMisses = sent > 0 ? 0 : min(idleMisses + 1, 5)
        return sent
    }

    /// While frames wait in a backlog or on the ring: look again in 100 µs, backing off to 3.2 ms
    /// while looking finds nothing to send. Nothing held: nil (sleep until new input).
    public func idleHintNs(nowNs: UInt64) -> UInt64? {
        guard heldFrames.load(ordering: .relaxed) > 0 else { return nil }
        return Self.idlePollIntervalNs << UInt64(idleMisses)
    }

    static let idlePollIntervalNs: UInt64 = 100_000

    /// Moves admitted frames from the backlogs to the ring: one frame per source in turn (round-robin),
    /// gathered into bursts of up to 32 so each burst costs one kick, as far as the ring has room.
    /// Returns how many went.
    @discardableResult
    private func serve(pool: BufferPool, nowNs: UInt64) -> Int {
        transmitter.kickIfNeeded()  // frames a full socket buffer turned back last time
        var room = transmitter.freeSlotCount()
        tap.admission.scanned(nowNs: nowNs)
        var sent = 0
        var source = nextSource
        while room > 0 {
            var count = 0
            var blocked = 0  // sources in a row that could not send: all of them ends the burst
            while count < min(burst.count, room), blocked < sourceCount {
                if backlogCount[source] > 0 {
                    let item = backlog[slot(source, 0)]
                    let bytes = Int(pool.metadata(at: UInt32(truncatingIfNeeded: item)).pointee.length)
                    if !transmitter.canCarry(UInt32(truncatingIfNeeded: item)) {
                        // Malformed for this port: dropped before admission, so nothing leaks.
                        backlogHead[source] = (backlogHead[source] + 1) % backlogCountMax
                        backlogCount[source] -= 1
                        backlogTotal -= 1
                        pool.freeIndex(UInt32(truncatingIfNeeded: item))
                        counters.malformedDrops.add(1, ordering: .relaxed)
                    } else if tap.admission.admit(source: source, bytes: bytes, nowNs: nowNs) {
                        burst[count] = item
                        count += 1
                        backlogHead[source] = (backlogHead[source] + 1) % backlogCountMax
                        backlogCount[source] -= 1
                        backlogTotal -= 1
                        blocked = 0
                    } else {
                        blocked += 1
                    }
                } else {
                    blocked += 1
                }
                source = (source + 1) % sourceCount
            }
            guard count > 0 else { break }
            let result = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: burst[0..<count]))
            // Frames the ring would not take after all: undo their admission and drop them (counted).
            for item in burst[result.taken..<count] {
                let index = UInt32(truncatingIfNeeded: item)
                let metadata = pool.metadata(at: index).pointee
                tap.admission.completed(source: Int(metadata.sourceID), bytes: Int(metadata.length))
                pool.freeIndex(index)
                counters.ringFullDrops.add(1, ordering: .relaxed)
            }
            sent += result.queued
            room -= count
            if blocked >= sourceCount { break }
        }
        nextSource = source
        counters.admitted.add(UInt64(sent), ordering: .relaxed)
        heldFrames.store(backlogTotal + transmitter.pendingCount, ordering: .relaxed)
        return sent
    }

    /// Serves the backlogs until they are empty, then waits for the ring's completions, at most
    /// `timeoutNs`. Call once the pipeline has drained (no worker runs this stage). True if done.
    public func finish(timeoutNs: UInt64 = 2_000_000_000) -> Bool {
        let deadline = Clock.monotonicNs() &+ timeoutNs
        tap.admission.ignoresStall = true  // no controller runs now to clear a stall
        while (0..<sourceCount).contains(where: { backlogCount[$0] > 0 }) {
            let now = Clock.monotonicNs()
            tap.nowNs = now
            poolRef._withUnsafeGuaranteedRef { pool in _ = serve(pool: pool, nowNs: now) }
            if Clock.monotonicNs() >= deadline {
                let left = (0..<sourceCount).reduce(0) { $0 + backlogCount[$1] }
                counters.unsentAtFinish.add(UInt64(left), ordering: .relaxed)
                return false
            }
            usleep(20)
        }
        return transmitter.flush(timeoutNs: deadline > Clock.monotonicNs() ? deadline - Clock.monotonicNs() : 0)
    }
}

/// The pcap sink's free path as a completion source: each written record becomes a completion event
/// (the frame "left" when it reached the file). Pass `hook` to `PcapSink(writtenHook:)`; keep the tap
/// alive as long as the sink. Frames of sources beyond `sourceCount` count under the last source.
public final class WrittenRecordTap: @unchecked Sendable {  // unchecked: used only on the sink's thread
    @exclusivity(unchecked) var reporter: CompletionReporter
    let pool: Unmanaged<BufferPool>
    private let poolOwner: BufferPool
    let sourceCount: Int

    public init(pool: BufferPool, reporter: consuming CompletionReporter, sourceCount: Int) {
        self.reporter = reporter
        self.poolOwner = pool
        self.pool = Unmanaged.passUnretained(pool)
        self.sourceCount = sourceCount
    }

    /// The hook to give the sink. Holds the tap unretained.
    public var hook: BufferFreeHook {
        BufferFreeHook(Self.function, context: Unmanaged.passUnretained(self).toOpaque())
    }

    static let function: BufferFreeHook.Function = { context, index in
        Unmanaged<WrittenRecordTap>.fromOpaque(context!)._withUnsafeGuaranteedRef { tap in
            let metadata = tap.pool._withUnsafeGuaranteedRef { $0.metadata(at: index).pointee }
            let source = min(Int(metadata.sourceID), tap.sourceCount - 1)
            tap.reporter.report(CompletionEvent(sourceID: UInt16(source), flowHash: metadata.flowHash,
                                                bytes: metadata.length, enqueueNs: metadata.enqueueNs,
                                                completionNs: max(Clock.monotonicNs(), metadata.enqueueNs)))
        }
    }
}
