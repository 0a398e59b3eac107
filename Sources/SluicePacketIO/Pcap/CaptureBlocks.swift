// Path: Sources/SluicePacketIO/Pcap/CaptureBlocks.swift — several readers of one classic pcap file,
// each reading whole blocks of it in turn (`sluice replay --fanout-by blocks`): every byte read once.
import Glibc
import Synchronization
import SystemPackage

/// One classic pcap file cut into blocks of `blockSizeBytes`, read by `readerCount` readers: each
/// claims the next block of the looped capture (global block g is block g % blockCount of loop
/// g / blockCount) when it has room for one, so a faster reader takes more. A record belongs to the
/// block its first byte is in. Where a block's first record starts is known only once the block
/// before it has been walked, so each reader walks its block's record headers right after reading it
/// and publishes where the next block's first record starts (and that record's index): the next
/// reader starts while this one still runs its records through the stages. Later loops reuse what
/// the first one published, once all of the first loop has been walked without a bad record (so a
/// bad record ends every loop; in a file that changes during the replay, one first met in a later
/// loop stops the other readers only at their next block). Unlike `CaptureSplit`, flows are not kept together: records keep
/// capture order within a block, not across readers. Shared by the readers; lock-free. The file's
/// size is taken once, at creation: what is appended later is not read, a file cut shorter reads as
/// truncated.
public final class CaptureBlocks: @unchecked Sendable {  // unchecked: the atomics sit behind raw pointers
    public static let blockSizeBytesDefault = 256 * 1024
    /// Most blocks one loop is cut into (16 bytes of shared state each); a larger file gets larger blocks.
    public static let blockCountMax = 1 << 22
    public let path: String
    public let readerCount: Int
    public let loopCount: Int
    public let blockSizeBytes: Int
    public let fileSizeBytes: Int64
    /// Blocks in one loop: 0 for a file holding its header only.
    public let blockCount: Int
    /// File offset of each block's first record: -1 until published. One slot more: the end of the
    /// first loop's last record, published when the whole first loop has been walked cleanly.
    private let starts: UnsafeMutablePointer<Atomic<Int64>>
    /// Index of that record (stored before its offset is published).
    private let indices: UnsafeMutablePointer<Atomic<Int64>>
    /// Lowest global block whose reader met a bad record (Int64.max: none). Blocks after it are not read.
    private let failedBlock = Atomic<Int64>(.max)
    /// The next global block to claim.
    private let nextClaim = Atomic<Int64>(0)

    /// Takes the size of the file at `path` now. `blockSizeBytes` is raised when the file would need
    /// more than `blockCountMax` blocks.
    public init(path: String, readerCount: Int, loopCount: Int,
                blockSizeBytes: Int = CaptureBlocks.blockSizeBytesDefault) throws(PcapError) {
        precondition(readerCount >= 1 && loopCount >= 1 && blockSizeBytes >= 1, "readers, loops and blocks are positive")
        var status = stat()
        guard stat(path, &status) == 0 else { throw .openFailed(path: path, errno: Errno(rawValue: errno)) }
        let records = max(Int64(status.st_size) - Int64(PcapFileHeader.sizeBytes), 0)
        let size = max(blockSizeBytes, Int((records + Int64(Self.blockCountMax) - 1) / Int64(Self.blockCountMax)))
        self.path = path
        self.readerCount = readerCount
        self.loopCount = loopCount
        self.blockSizeBytes = size
        self.fileSizeBytes = Int64(status.st_size)
        self.blockCount = Int((records + Int64(size) - 1) / Int64(size))
        precondition(blockCount <= Self.blockCountMax, "the block size was raised to fit the bound")
        let slots = blockCount + 1
        starts = .allocate(capacity: slots)
        indices = .allocate(capacity: slots)
        for slot in 0..<slots {
            (starts + slot).initialize(to: Atomic(-1))
            (indices + slot).initialize(to: Atomic(0))
        }
        starts[0].store(Int64(PcapFileHeader.sizeBytes), ordering: .releasing)
    }

    deinit {
        let slots = blockCount + 1
        starts.deinitialize(count: slots)
        indices.deinitialize(count: slots)
        starts.deallocate()
        indices.deallocate()
    }

    /// File offsets `[begin, end)` of block `block` of a loop.
    func range(of block: Int) -> (begin: Int64, end: Int64) {
        let begin = Int64(PcapFileHeader.sizeBytes) + Int64(block) * Int64(blockSizeBytes)
        return (begin, min(begin + Int64(blockSizeBytes), fileSizeBytes))
    }

    /// Where block `block`'s first record starts and its index, once the block before has been walked.
    func start(of block: Int) -> (offset: Int64, recordIndex: Int64)? {
        let offset = starts[block].load(ordering: .acquiring)
        return offset < 0 ? nil : (offset, indices[block].load(ordering: .relaxed))
    }

    /// Called by the reader of block `block - 1` once it has walked it cleanly (`block == blockCount`:
    /// the first loop's last block). Later loops find it published.
    func publish(block: Int, offset: Int64, recordIndex: Int64) {
        precondition(block > 0 && block <= blockCount, "a block after the first, or the first loop's end")
        precondition(block < blockCount ? offset >= range(of: block).begin : offset <= fileSizeBytes,
                     "a start lies in its block, the first loop's end in the file")
        guard starts[block].load(ordering: .relaxed) < 0 else { return }
        indices[block].store(recordIndex, ordering: .relaxed)
        starts[block].store(offset, ordering: .releasing)
    }

    /// True once every block of the first loop has been walked without a bad record: later loops may start.
    var firstLoopWalked: Bool { starts[blockCount].load(ordering: .acquiring) >= 0 }

    /// The loop a bad record ended the capture in, if one did.
    public var failedLoop: Int? {
        let block = failedBlock.load(ordering: .acquiring)
        return block == .max ? nil : Int(block / Int64(max(blockCount, 1)))
    }

    /// The next unclaimed global block: the caller alone reads it (every loop's blocks, then past them).
    func claim() -> Int64 { nextClaim.add(1, ordering: .relaxed).oldValue }

    /// Global blocks of all loops.
    var globalBlockCount: Int64 { Int64(blockCount) * Int64(loopCount) }

    /// A reader met a bad record in global block `block`: no reader enters a later block.
    func fail(atBlock block: Int64) {
        var current = failedBlock.load(ordering: .relaxed)
        while block < current {
            let (exchanged, original) = failedBlock.compareExchange(expected: current, desired: block, ordering: .acquiringAndReleasing)
            if exchanged { return }
            current = original
        }
    }

    func hasFailed(before block: Int64) -> Bool { failedBlock.load(ordering: .acquiring) < block }
}

/// Reader `index` of a `CaptureBlocks`: what one fanned-out instance reads.
public struct CaptureBlockShare: Sendable, CustomStringConvertible {
    public let blocks: CaptureBlocks
    public let index: Int

    public init(blocks: CaptureBlocks, index: Int) {
        precondition(index >= 0 && index < blocks.readerCount, "a reader's index is below the reader count")
        self.blocks = blocks
        self.index = index
    }

    public var description: String { "blocks \(index) of \(blocks.readerCount)" }
}

/// What `PcapBlockReader.next` found.
public enum PcapBlockRead {
    case record(PcapRecord)
    /// The reader's next block is not walked yet by the reader before it: try again soon.
    case waiting
    /// This reader's blocks are all read (every loop), or a bad record ended the capture before them.
    case end
}

/// Reads the records of one reader's blocks (`CaptureBlockShare`) of a classic pcap file with
/// pread(2): a block in one read, its record headers walked at once (publishing where the next
/// block starts), then its records returned from the buffer. Double-buffered: `readAhead` reads and
/// walks the reader's next block while the current one's records go out, so the walks run ahead of
/// the records and the readers do not wait on each other. Records and errors are libpcap's (a record
/// longer than the snapshot length is cut to it; a bad record throws `badRecord` with its index and
/// offset, after the records before it in its block). Records point into its buffer until the next
/// call. One owner; never blocks: a block not yet walked by the reader before returns `.waiting`.
public struct PcapBlockReader: ~Copyable {
    /// A block read and walked: its records start at offset 0 of its buffer.
    private struct Walked {
        var global: Int64
        var records: Int
        var firstIndex: Int64
        var loop: Int
        var error: PcapError?
    }

    private let share: CaptureBlockShare
    private let fd: Int32
    private let path: String
    private let swapped: Bool
    private let nanosecond: Bool
    private let snapshotLength: Int
    private let capturedLengthMax: Int
    /// The block whose records go out, and the one read ahead (swapped when the first runs out).
    private var buffer: UnsafeMutableRawBufferPointer
    private var aheadBuffer: UnsafeMutableRawBufferPointer
    private var ahead: Walked?
    /// The next record's place in `buffer`; walked records left in it.
    private var cursor = 0
    private var recordsLeft = 0
    /// Index (within its loop) of the next record, and of the last one returned.
    private var nextRecordIndex: Int64 = 0
    public private(set) var lastRecordIndex: Int64 = -1
    /// The loop of the block in `buffer`, and of the last record returned.
    private var loop = 0
    public private(set) var lastLoop = 0
    /// Thrown once the current block's good records are out.
    private var pendingError: PcapError?
    /// The global block this reader claimed and has not walked yet (its start not published yet).
    private var claimed: Int64?
    /// No block is left to claim (every loop's are claimed, or a bad record ended the capture).
    private var walkedAll = false
    private var ended = false

    init(share: CaptureBlockShare, path: String, header: PcapFileHeader, snapshotLength: Int,
         capturedLengthMax: Int) throws(PcapError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .openFailed(path: path, errno: Errno(rawValue: errno)) }
        self.fd = fd
        self.share = share
        self.path = path
        self.swapped = header.swapped
        self.nanosecond = header.nanosecond
        self.snapshotLength = snapshotLength
        self.capturedLengthMax = capturedLengthMax
        // A block, then the last record's header and kept bytes past its end, and room for padded copies.
        let size = share.blocks.blockSizeBytes + 16 + min(snapshotLength, capturedLengthMax) + 64
        self.buffer = .allocate(byteCount: size, alignment: 64)
        self.aheadBuffer = .allocate(byteCount: size, alignment: 64)
    }

    deinit {
        buffer.deallocate()
        aheadBuffer.deallocate()
        close(fd)
    }

    /// The next record of this reader's blocks, `.waiting` while the next block is not walked yet,
    /// `.end` when done. Throws the bad record that ended the capture (once; `.end` after).
    @inline(__always)
    public mutating func next() throws(PcapError) -> PcapBlockRead {
        if recordsLeft == 0, let read = try nextBlock() { return read }
        let header = UnsafeRawBufferPointer(start: buffer.baseAddress! + cursor, count: 16)
        let seconds = field(header, 0)
        let fraction = field(header, 4)
        let captured = Int(field(header, 8))
        let wire = Int(field(header, 12))
        let kept = min(captured, snapshotLength)
        let data = UnsafeRawBufferPointer(start: buffer.baseAddress! + cursor + 16, count: kept)
        let dataEnd = cursor + 16 + kept
        cursor += 16 + captured  // past the cut bytes too (only the block's last record has them unread)
        recordsLeft -= 1
        lastRecordIndex = nextRecordIndex
        lastLoop = loop
        nextRecordIndex += 1
        let timestampNs = UInt64(seconds) &* 1_000_000_000 &+ UInt64(fraction) &* (nanosecond ? 1 : 1_000)
        return .record(PcapRecord(timestampNs: timestampNs, capturedLength: kept, wireLength: wire, bytes: data,
                                  hasSlack: dataEnd + 32 <= buffer.count))
    }

    /// `next` out of records in the current block: moves to the walked block read ahead, or says why
    /// there is none (nil: the current block has records again).
    @inline(never)
    private mutating func nextBlock() throws(PcapError) -> PcapBlockRead? {
        while recordsLeft == 0 {
            if let error = pendingError {
                pendingError = nil
                ended = true
                throw error
            }
            if ended { return .end }
            if ahead == nil { readAhead() }
            guard let walked = ahead else {
                if walkedAll { ended = true }
                return ended ? .end : .waiting
            }
            // A bad record another reader met since (in a later loop, in a file that changed) ends this one.
            if walked.error == nil, share.blocks.hasFailed(before: walked.global) {
                ahead = nil
                ended = true
                return .end
            }
            let spare = buffer
            buffer = aheadBuffer
            aheadBuffer = spare
            ahead = nil
            cursor = 0
            recordsLeft = walked.records
            nextRecordIndex = walked.firstIndex
            loop = walked.loop
            pendingError = walked.error
        }
        return nil
    }

    /// Reads and walks this reader's next block into the spare buffer if there is room and the block
    /// before it has been walked; otherwise returns at once (one atomic load). Call between records
    /// (once a burst): it never touches the current block, whose records stay valid.
    public mutating func readAhead() {
        guard ahead == nil, !walkedAll else { return }
        let blocks = share.blocks
        while ahead == nil {
            let global = claimed ?? blocks.claim()
            guard global < blocks.globalBlockCount, !blocks.hasFailed(before: global) else {
                walkedAll = true
                return
            }
            let block = Int(global % Int64(blocks.blockCount))
            // A later loop waits for the whole first one to be walked: a bad record ends every loop.
            guard global < Int64(blocks.blockCount) || blocks.firstLoopWalked,
                  let (start, firstIndex) = blocks.start(of: block) else {
                claimed = global  // walked by the reader of the block before it in a moment
                return
            }
            claimed = nil
            let loop = Int(global / Int64(blocks.blockCount))
            let range = blocks.range(of: block)
            if start >= range.end {  // a record from an earlier block covers this one: nothing starts here
                if loop == 0 { blocks.publish(block: block + 1, offset: start, recordIndex: firstIndex) }
                continue
            }
            var walked = Walked(global: global, records: 0, firstIndex: firstIndex, loop: loop, error: nil)
            let end = walk(from: start, to: range.end, records: &walked.records)
            if let (offset, problem) = end.problem {
                walked.error = .badRecord(path: path, recordIndex: Int(firstIndex) + walked.records, fileOffset: offset,
                                          problem: problem)
                blocks.fail(atBlock: global)
            } else if loop == 0 {
                blocks.publish(block: block + 1, offset: end.next, recordIndex: firstIndex + Int64(walked.records))
            }
            ahead = walked
        }
    }

    /// Reads `[start, end)` into the spare buffer (and past `end`, the rest of the last record's
    /// kept bytes) and counts the records that start before `end`. Returns the offset after them,
    /// or the first bad record's offset and what is wrong with it: as `PcapChunkReader` says it (a
    /// read that fails or ends early is met at the record whose bytes it could not bring).
    private func walk(from start: Int64, to end: Int64, records: inout Int)
        -> (next: Int64, problem: (offset: Int64, PcapRecordProblem)?) {
        let base = aheadBuffer.baseAddress!
        var buffered = 0
        // The whole block in one read; if that fails, each record's bytes are asked for again below.
        _ = fill(aheadBuffer, from: start, buffered: &buffered, through: Int(end - start))
        let fileSize = share.blocks.fileSizeBytes
        var at = 0
        while start + Int64(at) < end {
            let offset = start + Int64(at)
            let left = fileSize - offset
            guard left >= 16 else { return (offset, (offset, .truncatedHeader(bytesRead: Int(left)))) }
            if buffered < at + 16, let failure = fill(aheadBuffer, from: start, buffered: &buffered, through: at + 16) {
                return (offset, (offset, failure.error.map { .readFailed($0) } ?? .truncatedHeader(bytesRead: max(buffered - at, 0))))
            }
            let captured = Int(field(UnsafeRawBufferPointer(start: base + at, count: 16), 8))
            guard captured <= capturedLengthMax else {
                return (offset, (offset, .lengthAboveMax(capturedLength: captured, max: capturedLengthMax)))
            }
            let kept = min(captured, snapshotLength)
            guard left - 16 >= Int64(captured) else {
                // libpcap: a short kept part is a truncated record; a short cut part, a truncated skip.
                return (offset, (offset, .truncatedData(capturedLength: left - 16 >= Int64(kept) ? captured : kept,
                                                         bytesRead: Int(left - 16))))
            }
            if buffered < at + 16 + kept,
               let failure = fill(aheadBuffer, from: start, buffered: &buffered, through: at + 16 + kept) {
                return (offset, (offset, failure.error.map { .readFailed($0) }
                    ?? .truncatedData(capturedLength: kept, bytesRead: max(buffered - at - 16, 0))))
            }
            at += 16 + captured
            records += 1
        }
        return (start + Int64(at), nil)
    }

    /// Why `fill` stopped short: a read error, or the end of the file (error nil: it shrank since
    /// the blocks were cut).
    private struct ShortRead { var error: Errno? }

    /// Reads until `buffer` holds its first `count` bytes of the file from `offset`; nil when it does.
    @inline(never)
    private func fill(_ buffer: UnsafeMutableRawBufferPointer, from offset: Int64, buffered: inout Int,
                      through count: Int) -> ShortRead? {
        precondition(count <= buffer.count, "a block, a header and a kept record fit the buffer")
        while buffered < count {
            let got = pread(fd, buffer.baseAddress! + buffered, count - buffered, off_t(offset + Int64(buffered)))
            if got > 0 {
                buffered += got
            } else if got == 0 {
                return ShortRead(error: nil)
            } else if errno != EINTR {
                return ShortRead(error: Errno(rawValue: errno))
            }
        }
        return nil
    }

    @inline(__always) private func field(_ header: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        PcapFileHeader.field(header, at, swapped: swapped)
    }
}
