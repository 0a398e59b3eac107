// Path: Sources/SluicePacketIO/Pcap/PcapStages.swift — pcap files as the first and last stage of a
// pipeline: records into pool buffers, paced; pool buffers into a savefile.
import CShims
import SluiceCore
import Synchronization

/// How a replay spaces its packets.
public enum ReplayPacing: Sendable, Equatable {
    /// The capture's own gaps divided by `speed` (1 = real time), anchored to the first packet's
    /// timestamp, so a late turn catches up instead of drifting.
    case capture(speed: Double)
    /// A fixed rate, packet i due at start + i / rate.
    case rate(packetsPerSecond: Double)
    /// As fast as the pipeline takes them.
    case topSpeed

    /// Slowest replay speed: a capture second lasts 11.6 days. Slower is a typo, not a replay.
    public static let speedMin = 1e-6
    /// Fastest replay speed short of `topSpeed`: a capture day in 86 µs.
    public static let speedMax = 1e9
    /// Slowest fixed rate: one packet every 1000 s.
    public static let packetsPerSecondMin = 1e-3
    /// Fastest fixed rate: a packet a nanosecond (the clock's resolution).
    public static let packetsPerSecondMax = 1e9

    /// Checks the speed or rate against `speedMin...speedMax` and
    /// `packetsPerSecondMin...packetsPerSecondMax` (NaN and infinities fail). For the CLI and the
    /// service's configuration check; past them, due times saturate and never trap anyway.
    public func validate() throws(PacingError) {
        switch self {
        case .capture(let speed):
            guard speed >= Self.speedMin, speed <= Self.speedMax else {
                throw .speedOutOfRange(speed, min: Self.speedMin, max: Self.speedMax)
            }
        case .rate(let rate):
            guard rate >= Self.packetsPerSecondMin, rate <= Self.packetsPerSecondMax else {
                throw .rateOutOfRange(rate, min: Self.packetsPerSecondMin, max: Self.packetsPerSecondMax)
            }
        case .topSpeed:
            break
        }
    }
}

/// A replay speed or rate outside its bounds (`ReplayPacing.validate`).
public enum PacingError: Error, Equatable, CustomStringConvertible {
    case speedOutOfRange(Double, min: Double, max: Double)
    case rateOutOfRange(Double, min: Double, max: Double)

    public var description: String {
        switch self {
        case .speedOutOfRange(let speed, let min, let max): "speed must be in \(min)...\(max), got \(speed)"
        case .rateOutOfRange(let rate, let min, let max):
            "rate must be in \(min)...\(max) packets per second, got \(rate)"
        }
    }
}

/// Due times in nanoseconds from capture timestamps and rates: saturating, so no capture (a 2^32 s
/// jump in its timestamps) and no pacing can overflow; a packet past the clock's range is due never.
enum DueTime {
    /// `nanoseconds` as UInt64: 0 below, `UInt64.max` above the range and for NaN.
    @inline(__always) static func saturating(_ nanoseconds: Double) -> UInt64 {
        guard nanoseconds > 0 else { return nanoseconds.isNaN ? .max : 0 }
        return nanoseconds >= 18_446_744_073_709_551_615.0 ? .max : UInt64(nanoseconds)  // 2^64 as a Double
    }

    @inline(__always) static func adding(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// Packet `sequence` of a fixed-rate replay that started at `startNs`.
    static func rate(startNs: UInt64, sequence: UInt64, packetsPerSecond: Double) -> UInt64 {
        adding(startNs, saturating(Double(sequence) * 1e9 / packetsPerSecond))
    }

    /// A record `offsetNs` of capture time after the first, replayed at `speed`, from `startNs`.
    static func capture(startNs: UInt64, offsetNs: UInt64, speed: Double) -> UInt64 {
        adding(startNs, saturating(Double(offsetNs) / speed))
    }
}

/// Counters of a `PcapSource`, readable from any thread.
public final class PcapSourceCounters: Sendable {
    public let packets = Atomic<UInt64>(0)
    public let bytes = Atomic<UInt64>(0)
    /// Records that found no free pool buffer; the source waits for one (nothing is skipped).
    public let poolWaits = Atomic<UInt64>(0)
    /// Loops done. A source reading blocks (`CaptureBlocks`) sets it when it ends: every loop, or the
    /// loop a bad record ended (a bad record another reader meets after this source ended is not seen).
    public let loopsDone = Atomic<UInt64>(0)
    /// Records longer than a pool buffer: skipped, never cut (reported as `frame-larger-than-buffer`).
    public let oversizeDrops = Atomic<UInt64>(0)
    /// Records of other readers' flows (`CaptureSplit`), passed over: read, not copied, not counted
    /// in `packets`.
    public let othersRecords = Atomic<UInt64>(0)
    init() {}
}

/// Where the reading of a capture stands between two records: the loop (from 0) and the file's
/// record that comes next, and the byte offset it starts at. What a source that stopped hands to the
/// sources that take the capture over from there (`PcapSource.position`, `PcapReader.resume`).
public struct CapturePosition: Sendable, Equatable, CustomStringConvertible {
    public var loop: Int
    public var recordIndex: Int
    public var fileOffset: Int64

    public init(loop: Int, recordIndex: Int, fileOffset: Int64) {
        self.loop = loop
        self.recordIndex = recordIndex
        self.fileOffset = fileOffset
    }

    public var description: String { "loop \(loop + 1), record \(recordIndex) (byte offset \(fileOffset))" }
}

/// Stage 1 of a replay: reads records from a savefile into pool buffers (one copy each) and releases
/// them when due. Runs on one worker at a time; the file is reopened for each extra loop. A bad
/// record ends the source: what came before it goes through, the error is kept in `failure`.
public final class PcapSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    public let path: String
    public let linkType: Int
    /// The capture's header as `PcapReader` read it: what an output needs to match it.
    public let linkTypeField: UInt32?
    public let snapshotLength: Int
    public let format: PcapFormat
    public let pacing: ReplayPacing
    public let loopCount: Int
    public let port: UInt16
    /// The flows this source takes when several read the capture; nil: every record.
    public let split: CaptureSplit?
    /// The blocks this source reads when several read the capture in blocks (`--fanout-by blocks`); nil: all.
    public let blockShare: CaptureBlockShare?
    public let counters = PcapSourceCounters()
    private let failureBox = Mutex<PcapError?>(nil)
    /// Keeps the pool alive for as long as the source (its cached buffers go back in deinit)...
    private let pool: BufferPool
    /// ...while the hot path reaches it without reference counting (`_withUnsafeGuaranteedRef`:
    /// even an `unowned(unsafe)` reference is retained around each call).
    private let poolRef: Unmanaged<BufferPool>
    @exclusivity(unchecked) private var reader: PcapReader
    /// Reads this source's blocks instead of `reader` (top speed only; loops inside).
    @exclusivity(unchecked) private var blocks: PcapBlockReader?
    @exclusivity(unchecked) private var pending: UInt32?        // the next record, read into a buffer, not yet due
    @exclusivity(unchecked) private var pendingDueNs: UInt64 = 0
    @exclusivity(unchecked) private var firstTimestampNs: UInt64?
    @exclusivity(unchecked) private var lastTimestampNs: UInt64 = 0
    @exclusivity(unchecked) private var loopOffsetNs: UInt64 = 0
    @exclusivity(unchecked) private var startNs: UInt64 = 0
    @exclusivity(unchecked) private var sequence: UInt64 = 0
    @exclusivity(unchecked) private var loopsLeft: Int
    @exclusivity(unchecked) private var finished = false
    // Only the worker running the stage touches the state below: no dynamic exclusivity checks.
    /// Free buffers this source took from the pool in bulk; handed out one per record.
    private let cache = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: PcapSource.cacheCountMax)
    @exclusivity(unchecked) private var cacheCount = 0
    /// Buffers the last stage hands back (`BufferPool.recycle`), taken before the free list.
    @exclusivity(unchecked) private var returns: RingConsumer?
    @exclusivity(unchecked) private var packetsRead: UInt64 = 0
    @exclusivity(unchecked) private var bytesRead: UInt64 = 0
    @exclusivity(unchecked) private var oversizeDrops: UInt64 = 0
    @exclusivity(unchecked) private var othersRecords: UInt64 = 0
    static let cacheCountMax = 64
    static let prefetchDistance = 8
    /// Oversize records skipped in one turn at most, so a turn stays short whatever the capture.
    static let oversizeSkipsPerTurnMax = 64
    /// Other readers' records passed over in one `produce` call at most, on either path (a capture
    /// of one flow that is not ours still ends the turn).
    static let othersSkipsPerTurnMax = 1_024

    /// Opens `path` now, so a missing or unreadable file is an error before the pipeline starts.
    /// `returns` is the consuming end of the ring the last stage recycles buffers through, if any.
    public convenience init(path: String, pool: BufferPool, pacing: ReplayPacing, loopCount: Int = 1,
                            port: UInt16 = 0, returns: consuming RingConsumer? = nil,
                            split: CaptureSplit? = nil) throws(PcapError) {
        self.init(reader: try PcapReader(path: path), pool: pool, pacing: pacing, loopCount: loopCount, port: port,
                  returns: returns, split: split)
    }

    /// Replays `share`'s blocks of the capture `reader` has opened, at top speed, `share.blocks.loopCount`
    /// times (other sources read the other blocks). Throws when the file cannot be read in blocks
    /// (`PcapReader.readsInBlocks`).
    public convenience init(reader: consuming PcapReader, pool: BufferPool, blocks share: CaptureBlockShare,
                            returns: consuming RingConsumer? = nil) throws(PcapError) {
        let blocks = try reader.blockReader(share)
        self.init(reader: reader, pool: pool, pacing: .topSpeed, loopCount: share.blocks.loopCount,
                  returns: returns, split: nil, blocks: blocks, share: share)
    }

    /// Replays what `reader` has opened (it is reopened by path for each extra loop, so a reader on
    /// a pipe allows one loop only). `returns` as above.
    /// With `split`, only the records of that share of the flows (other sources read the rest).
    public convenience init(reader: consuming PcapReader, pool: BufferPool, pacing: ReplayPacing, loopCount: Int = 1,
                            port: UInt16 = 0, returns: consuming RingConsumer? = nil, split: CaptureSplit? = nil) {
        self.init(reader: reader, pool: pool, pacing: pacing, loopCount: loopCount, port: port, returns: returns,
                  split: split, blocks: nil, share: nil)
    }

    private init(reader: consuming PcapReader, pool: BufferPool, pacing: ReplayPacing, loopCount: Int,
                 port: UInt16 = 0, returns: consuming RingConsumer?, split: CaptureSplit?,
                 blocks: consuming PcapBlockReader?, share: CaptureBlockShare?) {
        precondition(loopCount >= 1, "a replay runs the capture at least once")
        precondition(blocks == nil || pacing == .topSpeed, "blocks are read at top speed")
        precondition(loopCount == 1 || reader.isRegularFile, "only a regular file can be read again")
        self.path = reader.path
        self.linkType = reader.linkType
        self.linkTypeField = reader.linkTypeField
        self.snapshotLength = reader.snapshotLength
        self.format = reader.format
        self.reader = reader
        self.pool = pool
        self.poolRef = Unmanaged.passUnretained(pool)
        self.pacing = pacing
        self.loopCount = loopCount
        self.loopsLeft = loopCount - 1
        self.port = port
        self.returns = returns
        self.split = split
        self.blocks = blocks
        self.blockShare = share
    }

    deinit {
        for slot in 0..<cacheCount { pool.freeIndex(UInt32(truncatingIfNeeded: cache[slot])) }
        if let pending { pool.freeIndex(pending) }
        cache.deallocate()
    }

    /// The error that ended the replay early, if any.
    public var failure: PcapError? { failureBox.withLock { $0 } }

    public var isExhausted: Bool { finished && pending == nil }

    /// Starts at `position` (another source's `position` on the same file) instead of the first
    /// record: that source replayed every record before it. Before the source first runs (no worker
    /// may run it yet); top speed, not by blocks, and `position.loop` below `loopCount`. Throws
    /// `notResumable` when the file is not one Sluice reads from a record in the middle
    /// (`PcapReader.resume`) or cannot seek; the source is then unchanged.
    public func takeOver(at position: CapturePosition) throws(PcapError) {
        precondition(pacing == .topSpeed && blockShare == nil && startNs == 0 && packetsRead == 0 && othersRecords == 0,
                     "a source is taken over at top speed, by records, before it runs")
        precondition(position.loop >= 0 && position.loop < loopCount, "a source takes over within its loops")
        try reader.resume(at: position.fileOffset, recordIndex: position.recordIndex)
        loopsLeft = loopCount - 1 - position.loop
        counters.loopsDone.store(UInt64(position.loop), ordering: .relaxed)
    }

    /// Where its reading stands: the loop and record that come next (records it read are in its
    /// pipeline). Only while no worker runs it: after its pipeline drained, or before its launch. nil
    /// once it has finished (the last loop's end, a bad record), when it reads blocks or paced (a
    /// record held until due), or when its file is not a regular classic pcap file Sluice reads
    /// (`PcapReader.nextRecordStart`).
    public var position: CapturePosition? {
        guard !finished, blockShare == nil, pending == nil, pacing == .topSpeed, let offset = reader.nextRecordStart
        else { return nil }
        return CapturePosition(loop: loopCount - 1 - loopsLeft, recordIndex: reader.recordIndex, fileOffset: offset)
    }

    /// Device and inode of the file its reader has open now (reopened for each loop).
    public var fileIdentity: (device: UInt64, inode: UInt64) { (reader.device, reader.inode) }

    public func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = sluice_monotonic_ns()
        if startNs == 0 { startNs = now }
        var count = 0
        // Other readers' records this call may pass over, whichever path reads them (`split`).
        var othersBudget = Self.othersSkipsPerTurnMax
        if blockShare != nil {
            count = poolRef._withUnsafeGuaranteedRef { pool in produceFromBlocks(into: items, now: now, pool: pool) }
        } else if pacing == .topSpeed, pending == nil {
            count = poolRef._withUnsafeGuaranteedRef { pool in
                produceAtTopSpeed(into: items, now: now, pool: pool, othersBudget: &othersBudget)
            }
        }
        while blockShare == nil, count < items.count {
            if pending == nil, !readNext(now: now, othersBudget: &othersBudget) { break }
            guard let index = pending, pendingDueNs <= now else { break }
            if pacing != .topSpeed {  // latency starts at release, not at read
                poolRef._withUnsafeGuaranteedRef { $0.metadata(at: index).pointee.enqueueNs = now }
            }
            items[count] = UInt64(index)
            count += 1
            pending = nil
        }
        counters.packets.store(packetsRead, ordering: .relaxed)
        counters.bytes.store(bytesRead, ordering: .relaxed)
        counters.oversizeDrops.store(oversizeDrops, ordering: .relaxed)
        if split != nil { counters.othersRecords.store(othersRecords, ordering: .relaxed) }
        return count
    }

    /// Unpaced replay: every record is due at once, so read straight into the burst, without the
    /// pending record paced replays keep between turns. Stops early at the end of the file (for
    /// `produce` to start the next loop), on a bad record (kept in `failure`) or when no buffer is free.
    private func produceAtTopSpeed(into items: UnsafeMutableBufferPointer<UInt64>, now: UInt64,
                                   pool: BufferPool, othersBudget: inout Int) -> Int {
        var count = 0
        var skips = 0
        while count < items.count, !finished, skips < Self.oversizeSkipsPerTurnMax, othersBudget > 0 {
            if cacheCount == 0 {
                cacheCount = refill(pool)
                guard cacheCount > 0 else { break }
            }
            let record: PcapRecord
            do {
                guard let next = try reader.next() else { break }  // end of a loop: the slow path decides
                record = next
            } catch {
                failureBox.withLock { $0 = error }
                finished = true
                break
            }
            if let split, !split.takes(record.bytes, linkType: linkType) {
                othersRecords &+= 1
                othersBudget &-= 1
                continue
            }
            if record.capturedLength > pool.bufferSizeBytes {
                oversizeDrops &+= 1
                skips += 1
                continue
            }
            items[count] = UInt64(fillCached(from: record, now: now, pool: pool))
            count += 1
        }
        return count
    }

    /// Copies `record` into the next cached buffer (the cache is not empty) and returns its index,
    /// pulling a buffer a few records ahead into this core's cache for writing.
    @inline(__always)
    private func fillCached(from record: PcapRecord, now: UInt64, pool: BufferPool) -> UInt32 {
        cacheCount -= 1
        let index = UInt32(truncatingIfNeeded: cache[cacheCount])
        if cacheCount >= Self.prefetchDistance {
            pool.prefetch(UInt32(truncatingIfNeeded: cache[cacheCount - Self.prefetchDistance]), forWriting: true)
        }
        fill(index, from: record, now: now, pool: pool)
        sequence &+= 1
        return index
    }

    /// Top speed from this source's blocks: as `produceAtTopSpeed`, and the loops are the block
    /// reader's. Returns early while the next block is not walked yet (the next turn tries again).
    private func produceFromBlocks(into items: UnsafeMutableBufferPointer<UInt64>, now: UInt64, pool: BufferPool) -> Int {
        var count = 0
        var skips = 0
        blocks!.readAhead()  // the next block walked while this one's records go out
        reading: while count < items.count, !finished, skips < Self.oversizeSkipsPerTurnMax {
            if cacheCount == 0 {
                cacheCount = refill(pool)
                guard cacheCount > 0 else {
                    counters.poolWaits.add(1, ordering: .relaxed)
                    break
                }
            }
            let record: PcapRecord
            do {
                switch try blocks!.next() {
                case .record(let next): record = next
                case .waiting: break reading
                case .end:
                    finished = true
                    // Loops every block of which went out: all, or those before the loop a bad record ended.
                    counters.loopsDone.store(UInt64(blockShare!.blocks.failedLoop ?? loopCount), ordering: .relaxed)
                    break reading
                }
            } catch {
                failureBox.withLock { $0 = error }
                finished = true
                counters.loopsDone.store(UInt64(blockShare!.blocks.failedLoop ?? 0), ordering: .relaxed)
                break
            }
            if record.capturedLength > pool.bufferSizeBytes {
                oversizeDrops &+= 1
                skips += 1
                continue
            }
            items[count] = UInt64(fillCached(from: record, now: now, pool: pool))
            count += 1
        }
        return count
    }

    public func sleepHintNs(nowNs: UInt64) -> UInt64? {
        if isExhausted { return UInt64.max }
        guard pending != nil else { return nil }  // waiting for a pool buffer: poll
        return pendingDueNs > nowNs ? pendingDueNs - nowNs : 0
    }

    /// Reads the next record into a fresh buffer as `pending`. False at the end (or on error, or when
    /// no buffer is free: then the record stays unread and the next turn tries again).
    private func readNext(now: UInt64, othersBudget: inout Int) -> Bool {
        poolRef._withUnsafeGuaranteedRef { pool in readNext(now: now, pool: pool, othersBudget: &othersBudget) }
    }

    private func readNext(now: UInt64, pool: BufferPool, othersBudget: inout Int) -> Bool {
        var oversize = 0
        while oversize < Self.oversizeSkipsPerTurnMax, othersBudget > 0 {
            switch readOne(now: now, pool: pool) {
            case .pending: return true
            case .none: return false
            case .oversize:
                oversizeDrops &+= 1
                oversize += 1
            case .others:
                othersRecords &+= 1
                othersBudget -= 1
            }
        }
        return false  // the next turn goes on past the skipped records
    }

    private enum ReadOutcome { case pending, none, oversize, others }

    private func readOne(now: UInt64, pool: BufferPool) -> ReadOutcome {
        guard !finished else { return .none }
        if cacheCount == 0 {
            cacheCount = refill(pool)
            guard cacheCount > 0 else {
                counters.poolWaits.add(1, ordering: .relaxed)
                return .none
            }
        }
        cacheCount -= 1
        let index = UInt32(truncatingIfNeeded: cache[cacheCount])
        // Recycled buffers were last written by the core that parsed them: start pulling the lines of
        // a buffer a few records ahead into this core's cache for writing.
        if cacheCount >= Self.prefetchDistance {
            pool.prefetch(UInt32(truncatingIfNeeded: cache[cacheCount - Self.prefetchDistance]), forWriting: true)
        }
        do {
            guard let record = try reader.next() else {
                pool.freeIndex(index)
                return startNextLoop(now: now) ? readOne(now: now, pool: pool) : .none
            }
            // Every record moves the capture clock, ours or not: instances splitting one capture keep
            // one timeline (same first timestamp, same loop length).
            noteCaptureTime(record.timestampNs)
            if let split, !split.takes(record.bytes, linkType: linkType) {
                cacheCount += 1  // the buffer goes back unused: the cache slot still holds it
                return .others
            }
            if record.capturedLength > pool.bufferSizeBytes {
                cacheCount += 1
                return .oversize
            }
            fill(index, from: record, now: now, pool: pool)
            pending = index
            pendingDueNs = dueNs(timestampNs: record.timestampNs)
            sequence &+= 1
            return .pending
        } catch {
            pool.freeIndex(index)
            failureBox.withLock { $0 = error }
            finished = true
            return .none
        }
    }

    /// Refills the cache: recycled buffers first, then the free list.
    private func refill(_ pool: BufferPool) -> Int {
        let count = returns != nil ? pool.takeReturned(into: cache, from: &returns!) : pool.takeFree(into: cache)
        for slot in max(0, count - Self.prefetchDistance)..<count {
            pool.prefetch(UInt32(truncatingIfNeeded: cache[slot]), forWriting: true)
        }
        return count
    }

    @inline(__always)
    private func fill(_ index: UInt32, from record: PcapRecord, now: UInt64, pool: BufferPool) {
        let bytes = pool.bytes(at: index)
        let length = record.capturedLength
        precondition(length <= bytes.count, "oversize records are skipped before a buffer is filled")
        if record.hasSlack, length + 32 <= bytes.count {
            // Both sides have 32 bytes of room past the record: whole vector moves, no memmove call.
            sluice_copy_padded(bytes.baseAddress!, record.bytes.baseAddress!, length)
        } else {
            bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: record.bytes[0..<length]))
        }
        var metadata = PacketMetadata()
        metadata.length = UInt32(length)
        metadata.wireLength = UInt32(max(record.wireLength, length))
        metadata.timestampNs = record.timestampNs
        metadata.linkType = UInt16(truncatingIfNeeded: linkType)
        metadata.port = port
        metadata.enqueueNs = now  // released at once unless paced; `produce` restamps paced ones
        pool.metadata(at: index).pointee = metadata
        packetsRead &+= 1
        bytesRead &+= UInt64(length)
    }

    private func dueNs(timestampNs: UInt64) -> UInt64 {
        switch pacing {
        case .topSpeed:
            return 0
        case .rate(let packetsPerSecond):
            return DueTime.rate(startNs: startNs, sequence: sequence, packetsPerSecond: packetsPerSecond)
        case .capture(let speed):
            noteCaptureTime(timestampNs)
            let first = firstTimestampNs ?? timestampNs
            let offset = DueTime.adding(timestampNs > first ? timestampNs - first : 0, loopOffsetNs)
            return DueTime.capture(startNs: startNs, offsetNs: offset, speed: speed)
        }
    }

    /// The capture's first and latest timestamps, for capture pacing (a no-op otherwise).
    private func noteCaptureTime(_ timestampNs: UInt64) {
        guard case .capture = pacing else { return }
        if firstTimestampNs == nil { firstTimestampNs = timestampNs }
        lastTimestampNs = max(lastTimestampNs, timestampNs)
    }

    /// At the end of the file: reopen it for another loop, continuing the capture's clock one
    /// microsecond after its last packet. False when no loops are left.
    private func startNextLoop(now: UInt64) -> Bool {
        counters.loopsDone.add(1, ordering: .relaxed)
        guard loopsLeft > 0 else {
            finished = true
            return false
        }
        loopsLeft -= 1
        if let first = firstTimestampNs {
            loopOffsetNs = DueTime.adding(DueTime.adding(loopOffsetNs, lastTimestampNs - first), 1_000)
        }
        lastTimestampNs = firstTimestampNs ?? 0
        do {
            reader = try PcapReader(path: path)
            return true
        } catch {
            failureBox.withLock { $0 = error }
            finished = true
            return false
        }
    }
}

/// Last stage: writes each buffer's bytes to a savefile and frees the buffer. Disk errors end the
/// writing (counted, kept in `failure`); buffers are still freed, so the pipeline drains.
public final class PcapSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    private let pool: BufferPool
    private let poolRef: Unmanaged<BufferPool>  // the hot path's uncounted view of `pool`
    /// Where written buffers go back to the source (`BufferPool.recycle`); the free list if nil.
    @exclusivity(unchecked) private var returns: RingProducer?
    /// Called with each buffer once its record is written (before the buffer is freed): the sink's
    /// free-buffer path, where a traffic controller learns what left.
    private let writtenHook: BufferFreeHook?
    @exclusivity(unchecked) private var writer: PcapWriter
    private let failureBox = Mutex<PcapError?>(nil)
    @exclusivity(unchecked) private var failed = false
    public let written = Atomic<UInt64>(0)
    public let writeErrors = Atomic<UInt64>(0)

    /// Creates `path` now. `linkTypeField`: the input's stored link-type field, for a byte-identical
    /// header (see `PcapWriter`).
    public init(path: String, pool: BufferPool, linkType: Int, linkTypeField: UInt32? = nil, snapshotLength: Int,
                nanosecond: Bool, returns: consuming RingProducer? = nil, writtenHook: BufferFreeHook? = nil)
        throws(PcapError)
    {
        let writer = try PcapWriter(path: path, linkType: linkType, linkTypeField: linkTypeField,
                                    snapshotLength: snapshotLength, nanosecond: nanosecond)
        self.returns = returns
        self.writtenHook = writtenHook
        self.pool = pool
        self.poolRef = Unmanaged.passUnretained(pool)
        self.writer = writer
    }

    public var failure: PcapError? { failureBox.withLock { $0 } }

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        poolRef._withUnsafeGuaranteedRef { pool in process(items, pool: pool) }
    }

    private func process(_ items: UnsafeMutableBufferPointer<UInt64>, pool: BufferPool) -> Int {
        var written: UInt64 = 0
        for item in items {
            let index = UInt32(truncatingIfNeeded: item)
            if !failed {
                let metadata = pool.metadata(at: index).pointee
                let bytes = UnsafeRawBufferPointer(rebasing: pool.bytes(at: index)[0..<Int(metadata.length)])
                do {
                    try writer.write(timestampNs: metadata.timestampNs, wireLength: Int(metadata.wireLength),
                                     bytes: bytes)
                    written &+= 1
                    if let writtenHook { writtenHook.function(writtenHook.context, index) }
                } catch { record(error) }
            }
        }
        if returns != nil {
            pool.recycle(UnsafeBufferPointer(items), through: &returns!)
        } else {
            pool.freeBurst(UnsafeBufferPointer(items))
        }
        self.written.store(self.written.load(ordering: .relaxed) &+ written, ordering: .relaxed)
        return items.count
    }

    /// Flushes and closes the file. Call after the pipeline has drained.
    public func finish() throws(PcapError) {
        do { try writer.close() } catch {
            record(error)
            throw error
        }
        if let failure { throw failure }
    }

    private func record(_ error: PcapError) {
        failed = true
        writeErrors.add(1, ordering: .relaxed)
        failureBox.withLock { if $0 == nil { $0 = error } }
    }
}

/// Last stage that drops everything: frees each buffer (back to the source through `returns` if
/// given), recording each packet's time in the pipeline (`PacketMetadata.enqueueNs` to now) when
/// given a histogram. The null sink of benchmarks.
public final class DiscardSink: StageBody, @unchecked Sendable {  // unchecked: one worker at a time
    private let pool: BufferPool
    private let poolRef: Unmanaged<BufferPool>  // the hot path's uncounted view of `pool`
    @exclusivity(unchecked) private var returns: RingProducer?
    private let latency: LatencyHistogram?
    private let recorder: LatencyHistogram.Recorder?

    public init(pool: BufferPool, returns: consuming RingProducer? = nil, latency: LatencyHistogram? = nil) {
        self.pool = pool
        self.poolRef = Unmanaged.passUnretained(pool)
        self.returns = returns
        self.latency = latency
        self.recorder = latency?.recorder
    }

    public func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        poolRef._withUnsafeGuaranteedRef { pool in
            if let recorder {
                let now = sluice_monotonic_ns()
                for item in items {
                    recorder.record(now &- pool.metadata(at: UInt32(truncatingIfNeeded: item)).pointee.enqueueNs)
                }
            }
            if returns != nil {
                pool.recycle(UnsafeBufferPointer(items), through: &returns!)
            } else {
                pool.freeBurst(UnsafeBufferPointer(items))
            }
        }
        return items.count
    }
}
