// Path: Sources/SluicePacketIO/Pcap/PcapFile.swift — reading and writing pcap and pcapng savefiles.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// Why a capture could not be read or written. Each case keeps what went wrong underneath: the
/// errno of the system call, or libpcap's own words where libpcap is the one that refused (it has
/// no other error channel).
public enum PcapError: Error, Equatable, CustomStringConvertible {
    /// The capture could not be opened or its header read (`open(2)`, `read(2)`).
    case openFailed(path: String, errno: Errno)
    /// libpcap does not take the file as a capture (unknown format, unsupported version).
    case notACapture(path: String, reason: String)
    /// A pipe or FIFO holds pcapng: only classic pcap is read from a stream that cannot seek.
    case pcapngFromPipe(path: String)
    /// A live capture could not be opened on `device` (libpcap's reason).
    case liveCaptureFailed(device: String, reason: String)
    /// The capture cannot be read from a record in the middle (`PcapReader.resume`): pcapng, a pipe,
    /// records read by libpcap, or a seek that failed.
    case notResumable(path: String, reason: String)
    /// A record is cut short or corrupt. `recordIndex` counts from 0; records before it were read.
    case badRecord(path: String, recordIndex: Int, fileOffset: Int64, problem: PcapRecordProblem)
    /// The output file could not be created (`open(2)`), or its header not written.
    case createFailed(path: String, errno: Errno)
    /// Writing the output failed (disk full, I/O error).
    case writeFailed(path: String, errno: Errno)
    /// A packet longer than the output's snapshot length or than 2^31 bytes.
    case recordTooLong(path: String, length: Int)

    public var description: String {
        switch self {
        case .openFailed(let path, let errno): "\(path): cannot open capture: \(errno)"
        case .notACapture(let path, let reason): "\(path): not a capture libpcap reads: \(reason)"
        case .notResumable(let path, let reason): "\(path): cannot be read from a record in the middle: \(reason)"
        case .pcapngFromPipe(let path):
            "\(path): pcapng cannot be read from a pipe or FIFO (classic pcap can); copy it to a file first"
        case .liveCaptureFailed(let device, let reason): "\(device): cannot open live capture: \(reason)"
        case .badRecord(let path, let index, let offset, let problem):
            "\(path): record \(index) (byte offset \(offset)) is truncated or corrupt: \(problem)"
        case .createFailed(let path, let errno): "\(path): cannot create output capture: \(errno)"
        case .writeFailed(let path, let errno): "\(path): write failed: \(errno)"
        case .recordTooLong(let path, let length): "\(path): record of \(length) bytes is too long"
        }
    }
}

/// What is wrong with one record (`PcapError.badRecord`). The classic pcap reader reports these
/// itself, for the same records libpcap refuses; pcapng records are read by libpcap (`libpcap`).
public enum PcapRecordProblem: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file ends inside a 16-byte record header.
    case truncatedHeader(bytesRead: Int)
    /// The file ends inside the record's captured bytes.
    case truncatedData(capturedLength: Int, bytesRead: Int)
    /// A captured length above what libpcap accepts for the link type (262 144 for most).
    case lengthAboveMax(capturedLength: Int, max: Int)
    /// Reading the file failed.
    case readFailed(Errno)
    /// libpcap refused the record; its words.
    case libpcap(String)

    public var description: String {
        switch self {
        case .truncatedHeader(let got): "truncated dump file; tried to read 16 header bytes, only got \(got)"
        case .truncatedData(let length, let got):
            "truncated dump file; tried to read \(length) captured bytes, only got \(got)"
        case .lengthAboveMax(let length, let max): "invalid packet capture length \(length), bigger than maximum of \(max)"
        case .readFailed(let errno): "error reading dump file: \(errno)"
        case .libpcap(let message): message
        }
    }
}

/// What a capture file is, from its first bytes (libpcap hides the format and native precision).
public struct PcapFormat: Sendable, Equatable {
    public enum Container: Sendable, Equatable { case pcap, pcapng }
    public var container: Container
    /// True when the file stores nanosecond timestamps (pcap's 0xa1b23c4d magic). pcapng is read as
    /// microseconds unless its interface says otherwise; libpcap converts either way.
    public var nanosecond: Bool

    /// The format of a file starting with `magic` (read in host order); nil when it is neither.
    public static func from(magic: UInt32) -> PcapFormat? {
        switch magic {
        case 0xA1B2_C3D4, 0xD4C3_B2A1: PcapFormat(container: .pcap, nanosecond: false)
        case 0xA1B2_3C4D, 0x4D3C_B2A1: PcapFormat(container: .pcap, nanosecond: true)
        case 0x0A0D_0D0A: PcapFormat(container: .pcapng, nanosecond: false)
        default: nil
        }
    }
}

/// A classic pcap file header, as stored (24 bytes).
struct PcapFileHeader {
    static let sizeBytes = 24
    var swapped: Bool
    var nanosecond: Bool
    var versionMajor: UInt16
    var versionMinor: UInt16
    /// The link-type field as stored: LINKTYPE_ value and, in the upper bits, FCS and reserved bits.
    var linkTypeField: UInt32

    /// The 32-bit field at `at` of a record header written in the file's byte order.
    @inline(__always) static func field(_ header: UnsafeRawBufferPointer, _ at: Int, swapped: Bool) -> UInt32 {
        let value = header.loadUnaligned(fromByteOffset: at, as: UInt32.self)
        return swapped ? value.byteSwapped : value
    }

    /// nil unless `bytes` (at least 24) start with a classic pcap magic libpcap reads records of.
    init?(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= Self.sizeBytes, "a pcap file header is 24 bytes")
        let magic = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        guard let format = PcapFormat.from(magic: magic), format.container == .pcap else { return nil }
        swapped = magic == 0xD4C3_B2A1 || magic == 0x4D3C_B2A1
        nanosecond = format.nanosecond
        let swap = swapped
        func field16(_ at: Int) -> UInt16 {
            let value = bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self)
            return swap ? value.byteSwapped : value
        }
        versionMajor = field16(4)
        versionMinor = field16(6)
        let link = bytes.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
        linkTypeField = swapped ? link.byteSwapped : link
    }
}

/// One record. `bytes` points into the reader's buffer and is valid only until the reader's next call.
public struct PcapRecord {
    public var timestampNs: UInt64
    public var capturedLength: Int
    public var wireLength: Int
    public var bytes: UnsafeRawBufferPointer
    /// At least 32 readable bytes follow `bytes` (a copy may read past the end in whole vectors).
    public var hasSlack = false
}

/// Reads a pcap or pcapng savefile record by record, timestamps in nanoseconds. libpcap checks every
/// file's header and reads pcapng; classic pcap records are then read in 64 KiB chunks
/// (`PcapChunkReader`, the same records and errors as libpcap, one copy less). A pipe or FIFO is read
/// once, front to back, as `tcpdump -r` does (classic pcap only). One owner at a time; not
/// thread-safe. Closes the file when it goes away.
public struct PcapReader: ~Copyable {
    public let path: String
    /// libpcap link type (DLT_) of every record, as `pcap_datalink` reports it.
    public let linkType: Int
    /// The header's link-type field as stored (classic pcap), upper bits included; nil for pcapng.
    /// Write it back (`PcapWriter(linkTypeField:)`) for a byte-identical header.
    public let linkTypeField: UInt32?
    /// The snapshot length as libpcap adjusts it (0 or above the link type's maximum read as that maximum).
    public let snapshotLength: Int
    public let format: PcapFormat
    /// False for a pipe, FIFO or character device: read once, never reopened.
    public let isRegularFile: Bool
    /// Device and inode of the file, to tell whether an output would overwrite it.
    public let device: UInt64
    public let inode: UInt64
    /// Records returned so far: the index of the next one.
    public private(set) var recordIndex = 0
    /// Byte offset of the next record in a classic pcap file (file header, then 16 + length each);
    /// asking the FILE for its position on every record would cost a system call.
    private var nextRecordOffset: Int64 = 24
    private let handle: OpaquePointer
    /// The header a stream's handle was opened from (its FILE reads this memory).
    private let headerCopy: UnsafeMutableRawBufferPointer?
    private var chunks: PcapChunkReader?
    /// The header of a regular classic pcap file (version 2.4) whose records Sluice reads itself.
    private let classicHeader: PcapFileHeader?

    /// Opens `path`. `libpcapRecords` reads a regular file's classic pcap records through libpcap too
    /// (slower; the tests compare both ways).
    public init(path: String, libpcapRecords: Bool = false) throws(PcapError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .openFailed(path: path, errno: Errno(rawValue: errno)) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw .openFailed(path: path, errno: error)
        }
        let regular = (status.st_mode & S_IFMT) == S_IFREG
        let opened = regular ? try Self.openRegular(path: path, fd: fd, libpcapRecords: libpcapRecords)
                             : try Self.openStream(path: path, fd: fd)
        let linkType = Int(pcap_datalink(opened.handle))
        let snapshotLength = Int(pcap_snapshot(opened.handle))
        self.path = path
        self.handle = opened.handle
        self.headerCopy = opened.headerCopy
        self.format = opened.format
        self.linkTypeField = opened.header?.linkTypeField
        self.isRegularFile = regular
        self.device = UInt64(status.st_dev)
        self.inode = UInt64(status.st_ino)
        self.linkType = linkType
        self.snapshotLength = snapshotLength
        self.classicHeader = regular && opened.chunkFD != nil ? opened.header : nil
        if let chunkFD = opened.chunkFD, let header = opened.header {
            chunks = PcapChunkReader(fd: chunkFD, path: path, header: header, snapshotLength: snapshotLength,
                                     capturedLengthMax: Self.capturedLengthMax(linkType: linkType))
        }
    }

    deinit {
        pcap_close(handle)
        headerCopy?.deallocate()
    }

    /// A libpcap handle on the header, the header as stored (classic pcap), and the descriptor the
    /// chunked reader takes, positioned at the first record (nil: libpcap reads the records).
    private typealias Opened = (handle: OpaquePointer, header: PcapFileHeader?, chunkFD: Int32?, format: PcapFormat,
                                headerCopy: UnsafeMutableRawBufferPointer?)

    /// A regular file: libpcap reads the header through its own FILE on `fd`; classic pcap records
    /// come from a second descriptor of the same open file, read past the header. Takes `fd`.
    private static func openRegular(path: String, fd: Int32, libpcapRecords: Bool) throws(PcapError) -> Opened {
        var bytes = [UInt8](repeating: 0, count: PcapFileHeader.sizeBytes)
        let got = pread(fd, &bytes, bytes.count, 0)
        let header = got == bytes.count ? bytes.withUnsafeBytes { PcapFileHeader($0) } : nil
        let magic = got >= 4 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } : 0
        guard let file = fdopen(fd, "rb") else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw .openFailed(path: path, errno: error)
        }
        let handle = try openLibpcap(path: path, file: file)
        let format = PcapFormat.from(magic: magic) ?? PcapFormat(container: .pcap, nanosecond: false)
        // Versions before 2.4 may swap the two length fields, a patched magic has longer record
        // headers: libpcap reads those records itself.
        var chunkFD: Int32?
        if let header, header.versionMajor == 2, header.versionMinor == 4, !libpcapRecords {
            let second = dup(fd)
            if second >= 0, lseek(second, off_t(PcapFileHeader.sizeBytes), SEEK_SET) >= 0 {
                chunkFD = second
            } else if second >= 0 {
                close(second)
            }
        }
        return (handle, header, chunkFD, format, nil)
    }

    /// A pipe, FIFO or character device, read once: the 24-byte header is read here and handed to
    /// libpcap to check (from memory), then the records come from `fd` in chunks. Takes `fd`.
    private static func openStream(path: String, fd: Int32) throws(PcapError) -> Opened {
        var bytes = [UInt8](repeating: 0, count: PcapFileHeader.sizeBytes)
        var got = 0
        var readError: Errno?
        while got < bytes.count, readError == nil {
            let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if count > 0 {
                got += count
            } else if count == 0 {
                break
            } else if errno != EINTR {
                readError = Errno(rawValue: errno)
            }
        }
        let header = got == bytes.count ? bytes.withUnsafeBytes { PcapFileHeader($0) } : nil
        let magic = got >= 4 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } : 0
        guard let header, header.versionMajor == 2, header.versionMinor == 4 else {
            close(fd)
            if let readError { throw .openFailed(path: path, errno: readError) }
            if magic == 0x0A0D_0D0A { throw .pcapngFromPipe(path: path) }
            throw .notACapture(path: path, reason: got < bytes.count
                ? "truncated dump file; tried to read 24 file header bytes, only got \(got)"
                : "unknown file format (a pipe carries classic pcap 2.4 only)")
        }
        // libpcap checks the header from a copy in memory (kept until the handle closes); its FILE
        // never sees the pipe.
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
        copy.copyBytes(from: bytes)
        guard let memory = fmemopen(copy.baseAddress, copy.count, "rb") else {
            let error = Errno(rawValue: errno)
            copy.deallocate()
            close(fd)
            throw .openFailed(path: path, errno: error)
        }
        let handle: OpaquePointer
        do { handle = try openLibpcap(path: path, file: memory) } catch {
            copy.deallocate()
            close(fd)
            throw error
        }
        return (handle, header, fd, PcapFormat(container: .pcap, nanosecond: header.nanosecond), copy)
    }

    /// libpcap's reading of the header on `file` (nanosecond timestamps). Closes `file` on failure;
    /// on success the handle owns it.
    private static func openLibpcap(path: String, file: UnsafeMutablePointer<FILE>) throws(PcapError) -> OpaquePointer {
        var errbuf = [CChar](repeating: 0, count: Int(SLUICE_PCAP_ERRBUF_SIZE))
        guard let handle = pcap_fopen_offline_with_tstamp_precision(file, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errbuf) else {
            fclose(file)
            throw .notACapture(path: path, reason: String(cString: errbuf))
        }
        return handle
    }

    /// True for a regular classic pcap file (version 2.4): one that can be read in blocks (`blockReader`)
    /// and from a record in the middle (`nextRecordStart`, `resume(at:recordIndex:)`).
    public var readsInBlocks: Bool { classicHeader != nil }

    /// Where the next record starts in a regular classic pcap file read by Sluice (`readsInBlocks`);
    /// nil for pcapng, a pipe, or records libpcap reads.
    public var nextRecordStart: Int64? {
        guard classicHeader != nil else { return nil }
        switch chunks {
        case .some(let reader): return reader.offset
        case .none: return nil
        }
    }

    /// Moves a freshly opened regular classic pcap file's reader to the record at `offset`, which is
    /// record `recordIndex` of the file (a `nextRecordStart` and `recordIndex` another reader of the
    /// same file reported): the next `next()` returns it, and errors name indices from there. For
    /// instances that take over a capture from another reader at a record boundary. Throws
    /// `notResumable` unless `readsInBlocks`, or when the file cannot seek.
    public mutating func resume(at offset: Int64, recordIndex: Int) throws(PcapError) {
        guard classicHeader != nil, chunks != nil else {
            throw .notResumable(path: path, reason: "only a regular classic pcap file (version 2.4) read by Sluice is")
        }
        precondition(offset >= Int64(PcapFileHeader.sizeBytes) && recordIndex >= 0, "a record starts after the file header")
        try chunks!.seek(to: offset)
        self.recordIndex = recordIndex
    }

    /// A reader of `share`'s blocks of this file, on a descriptor of its own. Throws `notACapture`
    /// unless `readsInBlocks`.
    public func blockReader(_ share: CaptureBlockShare) throws(PcapError) -> PcapBlockReader {
        guard let classicHeader else {
            throw .notACapture(path: path, reason: "only a regular classic pcap file (version 2.4) is read in blocks")
        }
        return try PcapBlockReader(share: share, path: path, header: classicHeader, snapshotLength: snapshotLength,
                                   capturedLengthMax: Self.capturedLengthMax(linkType: linkType))
    }

    /// libpcap's `max_snaplen_for_dlt`: the longest record it takes for a link type.
    static func capturedLengthMax(linkType: Int) -> Int {
        switch linkType {
        case 231: 128 * 1024 * 1024  // DLT_DBUS
        case 279: 8 * 1024 * 1024  // DLT_EBHSCR
        case 249: 1024 * 1024  // DLT_USBPCAP
        default: PcapChunkReader.recordLengthMax
        }
    }

    /// The next record, or nil at the end of the file. A truncated or corrupt record throws
    /// `badRecord` naming its index and offset; the records before it were returned normally.
    /// A record longer than the snapshot length comes back cut to it, as libpcap returns it.
    @inline(__always) public mutating func next() throws(PcapError) -> PcapRecord? {
        if chunks != nil {
            guard let record = try chunks!.next(recordIndex: recordIndex) else { return nil }
            recordIndex += 1
            return record
        }
        var record = sluice_pcap_record()
        switch sluice_pcap_next(handle, &record) {
        case 1:
            recordIndex += 1
            nextRecordOffset += 16 + Int64(record.captured_length)
            return PcapRecord(
                timestampNs: record.timestamp_ns, capturedLength: Int(record.captured_length),
                wireLength: Int(record.wire_length),
                bytes: UnsafeRawBufferPointer(start: record.data, count: Int(record.captured_length)))
        case SLUICE_PCAP_END:
            return nil
        default:
            // pcapng blocks vary in size: there, report where libpcap stopped reading.
            let offset = format.container == .pcap ? nextRecordOffset : sluice_pcap_file_offset(handle)
            throw .badRecord(path: path, recordIndex: recordIndex, fileOffset: offset,
                             problem: .libpcap(String(cString: pcap_geterr(handle))))
        }
    }
}

/// Writes a pcap savefile, buffered (stdio, records as libpcap's `pcap_dump` lays them out). One
/// owner; closes (and flushes) when it goes away, but call `close()` to learn whether the last writes
/// reached the disk. Never blocks on the network; may block on the disk.
public struct PcapWriter: ~Copyable {
    public let path: String
    public let linkType: Int
    public let snapshotLength: Int
    public let nanosecond: Bool
    private var file: UnsafeMutablePointer<FILE>?

    /// Creates (truncates) `path`. The header carries `linkTypeField` as given when there is one (a
    /// classic pcap input's own field: byte-identical, FCS and reserved bits kept), else libpcap's
    /// LINKTYPE_ for the DLT `linkType`. Match the input's snapshot length and precision too.
    public init(path: String, linkType: Int, linkTypeField: UInt32? = nil, snapshotLength: Int = 262_144,
                nanosecond: Bool) throws(PcapError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .createFailed(path: path, errno: Errno(rawValue: errno)) }
        guard let file = fdopen(fd, "wb") else {
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .createFailed(path: path, errno: error)
        }
        let field: UInt32
        if let linkTypeField {
            field = linkTypeField
        } else {
            guard let mapped = Self.linkTypeField(dlt: linkType) else {
                fclose(file)
                throw .createFailed(path: path, errno: .invalidArgument)
            }
            field = mapped
        }
        var header: (UInt32, UInt16, UInt16, Int32, UInt32, UInt32, UInt32) =
            (nanosecond ? 0xA1B2_3C4D : 0xA1B2_C3D4, 2, 4, 0, 0, UInt32(truncatingIfNeeded: snapshotLength), field)
        guard fwrite(&header, PcapFileHeader.sizeBytes, 1, file) == 1 else {
            let error = Errno(rawValue: errno)
            fclose(file)
            throw .createFailed(path: path, errno: error)
        }
        self.path = path
        self.linkType = linkType
        self.snapshotLength = snapshotLength
        self.nanosecond = nanosecond
        self.file = file
    }

    deinit { if let file { fclose(file) } }

    /// libpcap's LINKTYPE_ value for a DLT (`dlt_to_linktype`, not exported: a dead handle's dumper
    /// writes it into a header in memory). nil when savefiles have no value for it.
    static func linkTypeField(dlt: Int) -> UInt32? {
        guard let dead = pcap_open_dead(Int32(dlt), 262_144) else { return nil }
        defer { pcap_close(dead) }
        var bytes = [UInt8](repeating: 0, count: PcapFileHeader.sizeBytes)
        return bytes.withUnsafeMutableBytes { buffer -> UInt32? in
            guard let memory = fmemopen(buffer.baseAddress, buffer.count, "wb") else { return nil }
            guard let dumper = pcap_dump_fopen(dead, memory) else {
                fclose(memory)
                return nil
            }
            pcap_dump_close(dumper)
            return buffer.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
        }
    }

    /// Appends one record.
    public mutating func write(timestampNs: UInt64, wireLength: Int, bytes: UnsafeRawBufferPointer) throws(PcapError) {
        guard let file else { preconditionFailure("PcapWriter used after close") }
        guard bytes.count <= snapshotLength, bytes.count <= Int(Int32.max), wireLength <= Int(Int32.max) else {
            throw .recordTooLong(path: path, length: bytes.count)
        }
        let fraction = timestampNs % 1_000_000_000
        var header: (UInt32, UInt32, UInt32, UInt32) = (
            UInt32(truncatingIfNeeded: timestampNs / 1_000_000_000),
            UInt32(nanosecond ? fraction : fraction / 1_000),
            UInt32(bytes.count), UInt32(max(wireLength, bytes.count)))
        // A failed buffered write leaves the stream's error flag set: `flush`/`close` report it.
        _ = fwrite(&header, 16, 1, file)
        if bytes.count > 0 { _ = fwrite(bytes.baseAddress, bytes.count, 1, file) }
    }

    /// Pushes buffered records to the file.
    public mutating func flush() throws(PcapError) {
        guard let file else { return }
        errno = 0
        guard fflush(file) == 0, ferror(file) == 0 else {
            throw .writeFailed(path: path, errno: Errno(rawValue: errno != 0 ? errno : EIO))
        }
    }

    /// Flushes and closes; reports a failed final flush (a full disk shows up here).
    public mutating func close() throws(PcapError) {
        guard let file else { return }
        self.file = nil
        errno = 0
        let flushed = fflush(file) == 0 && ferror(file) == 0
        let flushErrno = errno
        let closed = fclose(file) == 0
        guard flushed, closed else {
            throw .writeFailed(path: path, errno: Errno(rawValue: flushErrno != 0 ? flushErrno : (errno != 0 ? errno : EIO)))
        }
    }
}
