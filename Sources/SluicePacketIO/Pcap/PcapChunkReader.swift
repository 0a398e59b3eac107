// Path: Sources/SluicePacketIO/Pcap/PcapChunkReader.swift — classic pcap records straight from 64 KiB
// reads: one copy less and one call less per record than libpcap's two freads.
import Glibc
import SystemPackage

/// Reads the records of a classic pcap file (either byte order, micro- or nanosecond, version 2.4)
/// whose header libpcap has already accepted. Reads 64 KiB at a time, so what the kernel just copied
/// is still in this core's cache when the records are parsed (1 MiB reads ran out of L2 and were
/// slower). Records point into its buffer until the next call. Records and errors match libpcap's
/// (same cases, same record index; a record longer than the snapshot length is cut to it, the rest
/// skipped), checked record for record against it in the tests. Reads front to back (a regular
/// file may also `seek` to a record it reported), so a pipe works as well as a file.
struct PcapChunkReader: ~Copyable {
    /// Bytes asked of each read(2).
    static let readSizeBytes = 1 << 16
    /// Longest record libpcap accepts for most link types (MAXIMUM_SNAPLEN).
    static let recordLengthMax = 262_144

    private let fd: Int32
    private let path: String
    private let swapped: Bool
    private let nanosecond: Bool
    /// libpcap's snapshot length: longer records are cut to it.
    private let snapshotLength: Int
    /// Longer records are an error (`max_snaplen_for_dlt`).
    private let capturedLengthMax: Int
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var endOfFile = false
    private var readError: Errno?
    /// File offset of `buffer[start]`: the next record.
    private(set) var offset: Int64

    /// Takes `fd`, positioned at the first record (`offset` bytes into the file), and closes it.
    init(fd: Int32, path: String, header: PcapFileHeader, snapshotLength: Int, capturedLengthMax: Int) {
        precondition(snapshotLength > 0, "libpcap adjusts a 0 snapshot length to the maximum")
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        self.fd = fd
        self.path = path
        self.swapped = header.swapped
        self.nanosecond = header.nanosecond
        self.snapshotLength = snapshotLength
        self.capturedLengthMax = capturedLengthMax
        self.offset = Int64(PcapFileHeader.sizeBytes)
        // Room for the longest kept record plus one read, whatever the alignment of records to reads.
        self.buffer = .allocate(byteCount: 16 + min(snapshotLength, capturedLengthMax) + Self.readSizeBytes,
                                alignment: 64)
    }

    deinit {
        buffer.deallocate()
        close(fd)
    }

    /// Moves to `offset`, where a record starts (an `offset` this reader, or another on the same
    /// file, reported): the next call reads that record. A regular file only. Throws `notResumable`
    /// with lseek's errno.
    mutating func seek(to offset: Int64) throws(PcapError) {
        guard lseek(fd, off_t(offset), SEEK_SET) >= 0 else {
            throw .notResumable(path: path, reason: "lseek to byte \(offset): \(Errno(rawValue: errno))")
        }
        (start, end, endOfFile, readError) = (0, 0, false, nil)
        self.offset = offset
    }

    /// The next record, nil at the end of the file; `recordIndex` only names the record in errors.
    @inline(__always) mutating func next(recordIndex: Int) throws(PcapError) -> PcapRecord? {
        guard end - start >= 16 || fill(atLeast: 16) else {
            if end == start, readError == nil { return nil }
            throw bad(recordIndex, .truncatedHeader(bytesRead: end - start))
        }
        let header = UnsafeRawBufferPointer(rebasing: buffer[start..<(start + 16)])
        let seconds = field(header, 0)
        let fraction = field(header, 4)
        let captured = Int(field(header, 8))
        let wire = Int(field(header, 12))
        guard captured <= capturedLengthMax else {
            throw bad(recordIndex, .lengthAboveMax(capturedLength: captured, max: capturedLengthMax))
        }
        // libpcap hands out at most the snapshot length and skips the rest of a longer record.
        let kept = min(captured, snapshotLength)
        guard end - start >= 16 + kept || fill(atLeast: 16 + kept) else {
            throw bad(recordIndex, .truncatedData(capturedLength: kept, bytesRead: end - start - 16))
        }
        if kept < captured {
            try skip(captured - kept, after: 16 + kept, recordIndex: recordIndex, captured: captured)
        }
        let data = UnsafeRawBufferPointer(rebasing: buffer[(start + 16)..<(start + 16 + kept)])
        start += 16 + kept
        offset += Int64(16 + captured)
        let timestampNs = UInt64(seconds) &* 1_000_000_000 &+ UInt64(fraction) &* (nanosecond ? 1 : 1_000)
        return PcapRecord(timestampNs: timestampNs, capturedLength: kept, wireLength: wire, bytes: data,
                          hasSlack: start + 32 <= buffer.count)
    }

    /// Drops `count` bytes that follow the first `keep` bytes at `start` (the cut part of a record
    /// longer than the snapshot length), reading as needed; the kept bytes may move to the front.
    @inline(never)
    private mutating func skip(_ count: Int, after keep: Int, recordIndex: Int, captured: Int) throws(PcapError) {
        var left = count
        let buffered = min(left, end - start - keep)
        if buffered > 0 {
            let tail = end - (start + keep + buffered)
            if tail > 0 {
                (buffer.baseAddress! + start + keep).copyMemory(from: buffer.baseAddress! + start + keep + buffered,
                                                                byteCount: tail)
            }
            end -= buffered
            left -= buffered
        }
        if left > 0, start > 0 {
            buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: keep)
            start = 0
            end = keep
        }
        while left > 0 {
            // Read into the room past the kept bytes and forget what came.
            let room = min(left, buffer.count - (start + keep))
            let got = read(fd, buffer.baseAddress! + start + keep, room)
            if got > 0 {
                left -= got
            } else if got < 0, errno == EINTR {
                continue
            } else {
                if got < 0 { throw bad(recordIndex, .readFailed(Errno(rawValue: errno))) }
                throw bad(recordIndex, .truncatedData(capturedLength: captured, bytesRead: captured - left))
            }
        }
    }

    @inline(__always) private func field(_ header: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        PcapFileHeader.field(header, at, swapped: swapped)
    }

    /// Makes at least `count` bytes available from `start`, moving the tail to the front and
    /// reading more as needed. False if the file ends first.
    @inline(never)  // the slow path: the record's bytes are usually in the buffer already
    private mutating func fill(atLeast count: Int) -> Bool {
        if end - start >= count { return true }
        if start > 0 {
            let remaining = end - start
            if remaining > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: remaining) }
            start = 0
            end = remaining
        }
        while end - start < count, !endOfFile {
            let got = read(fd, buffer.baseAddress! + end, min(Self.readSizeBytes, buffer.count - end))
            if got > 0 {
                end += got
            } else if got == 0 {
                endOfFile = true
            } else if errno != EINTR {
                readError = Errno(rawValue: errno)
                endOfFile = true
            }
        }
        return end - start >= count
    }

    /// A read error, when one ended the file early, wins over the truncation it looks like.
    private func bad(_ recordIndex: Int, _ problem: PcapRecordProblem) -> PcapError {
        .badRecord(path: path, recordIndex: recordIndex, fileOffset: offset, problem: readError.map { .readFailed($0) } ?? problem)
    }
}
