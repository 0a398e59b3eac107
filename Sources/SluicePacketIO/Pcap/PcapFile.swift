// Path: Sources/SluicePacketIO/Pcap/PcapFile.swift — reading and writing pcap and pcapng savefiles.
import CShims
import Glibc
import SluiceCore

/// Why a capture could not be read or written.
public enum PcapError: Error, Equatable, CustomStringConvertible {
    /// libpcap could not open the file (missing, not a capture, unsupported format).
    case openFailed(path: String, message: String)
    /// A record is cut short or corrupt. `recordIndex` counts from 0; records before it were read.
    case badRecord(path: String, recordIndex: Int, fileOffset: Int64, message: String)
    /// Writing the output failed (disk full, I/O error).
    case writeFailed(path: String, message: String)
    /// A packet longer than the output's snapshot length or than 2^31 bytes.
    case recordTooLong(path: String, length: Int)

    public var description: String {
        switch self {
        case .openFailed(let path, let message): "\(path): cannot open capture: \(message)"
        case .badRecord(let path, let index, let offset, let message):
            "\(path): record \(index) (byte offset \(offset)) is truncated or corrupt: \(message)"
        case .writeFailed(let path, let message): "\(path): write failed: \(message)"
        case .recordTooLong(let path, let length): "\(path): record of \(length) bytes is too long"
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

    /// Sniffs the magic number; nil when the file is not a pcap or pcapng file (libpcap then reports why).
    public static func sniff(path: String) -> PcapFormat? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var magic: UInt32 = 0
        guard fread(&magic, 4, 1, file) == 1 else { return nil }
        switch magic {
        case 0xA1B2_C3D4, 0xD4C3_B2A1: return PcapFormat(container: .pcap, nanosecond: false)
        case 0xA1B2_3C4D, 0x4D3C_B2A1: return PcapFormat(container: .pcap, nanosecond: true)
        case 0x0A0D_0D0A: return PcapFormat(container: .pcapng, nanosecond: false)
        default: return nil
        }
    }
}

/// One record. `bytes` points into libpcap's buffer and is valid only until the reader's next call.
public struct PcapRecord {
    public var timestampNs: UInt64
    public var capturedLength: Int
    public var wireLength: Int
    public var bytes: UnsafeRawBufferPointer
    /// At least 32 readable bytes follow `bytes` (a copy may read past the end in whole vectors).
    public var hasSlack = false
}

/// Reads a pcap or pcapng savefile record by record, timestamps in nanoseconds. libpcap opens and
/// checks every file and reads pcapng; classic pcap records are then read in 64 KiB chunks
/// (`PcapChunkReader`, the same records and errors as libpcap, one copy less). One owner at a time;
/// not thread-safe. Closes the file when it goes away.
public struct PcapReader: ~Copyable {
    public let path: String
    /// libpcap link type (DLT_) of every record.
    public let linkType: Int
    public let snapshotLength: Int
    public let format: PcapFormat
    /// Records returned so far: the index of the next one.
    public private(set) var recordIndex = 0
    /// Byte offset of the next record in a classic pcap file (file header, then 16 + length each);
    /// asking the FILE for its position on every record would cost a system call.
    private var nextRecordOffset: Int64 = 24
    private let handle: OpaquePointer
    private var chunks: PcapChunkReader?

    /// Opens `path`. `libpcapRecords` reads classic pcap records through libpcap too (slower; the
    /// tests compare both ways).
    public init(path: String, libpcapRecords: Bool = false) throws(PcapError) {
        var errbuf = [CChar](repeating: 0, count: Int(SLUICE_PCAP_ERRBUF_SIZE))
        guard let handle = sluice_pcap_open_file(path, &errbuf) else {
            throw .openFailed(path: path, message: String(cString: errbuf))
        }
        self.path = path
        self.handle = handle
        self.linkType = Int(pcap_datalink(handle))
        self.snapshotLength = Int(pcap_snapshot(handle))
        self.format = PcapFormat.sniff(path: path) ?? PcapFormat(container: .pcap, nanosecond: false)
        if format.container == .pcap, !libpcapRecords {
            chunks = PcapChunkReader(path: path, snapshotLength: snapshotLength)
        }
    }

    deinit { pcap_close(handle) }

    /// The next record, or nil at the end of the file. A truncated or corrupt record throws
    /// `badRecord` naming its index and offset; the records before it were returned normally.
    public mutating func next() throws(PcapError) -> PcapRecord? {
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
                             message: String(cString: pcap_geterr(handle)))
        }
    }
}

/// Writes a pcap savefile (libpcap's `pcap_dump`), buffered. One owner; closes (and flushes) when it
/// goes away, but call `close()` to learn whether the last writes reached the disk.
public struct PcapWriter: ~Copyable {
    public let path: String
    public let linkType: Int
    public let snapshotLength: Int
    public let nanosecond: Bool
    private var handle: OpaquePointer?

    /// Creates (truncates) `path`. Match the input's link type, snapshot length and precision to
    /// write back a byte-identical file.
    public init(path: String, linkType: Int, snapshotLength: Int = 262_144, nanosecond: Bool) throws(PcapError) {
        var errbuf = [CChar](repeating: 0, count: Int(SLUICE_PCAP_ERRBUF_SIZE))
        guard let handle = sluice_pcap_writer_open(path, Int32(linkType), Int32(snapshotLength),
                                                   nanosecond ? 1 : 0, &errbuf) else {
            throw .openFailed(path: path, message: String(cString: errbuf))
        }
        self.path = path
        self.linkType = linkType
        self.snapshotLength = snapshotLength
        self.nanosecond = nanosecond
        self.handle = handle
    }

    deinit { if let handle { _ = sluice_pcap_writer_close(handle) } }

    /// Appends one record. Never blocks on the network; may block on the disk (stdio buffering).
    public mutating func write(timestampNs: UInt64, wireLength: Int, bytes: UnsafeRawBufferPointer) throws(PcapError) {
        guard let handle else { preconditionFailure("PcapWriter used after close") }
        guard bytes.count <= snapshotLength, bytes.count <= Int(Int32.max), wireLength <= Int(Int32.max) else {
            throw .recordTooLong(path: path, length: bytes.count)
        }
        let rc = sluice_pcap_writer_write(handle, timestampNs, UInt32(bytes.count), UInt32(max(wireLength, bytes.count)),
                                          bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), nanosecond ? 1 : 0)
        precondition(rc == 0, "lengths were checked above")
    }

    /// Pushes buffered records to the file.
    public mutating func flush() throws(PcapError) {
        guard let handle else { return }
        let rc = sluice_pcap_writer_flush(handle)
        guard rc == 0 else { throw .writeFailed(path: path, message: String(cString: strerror(-rc))) }
    }

    /// Flushes and closes; reports a failed final flush (a full disk shows up here).
    public mutating func close() throws(PcapError) {
        guard let handle else { return }
        self.handle = nil
        let rc = sluice_pcap_writer_close(handle)
        guard rc == 0 else { throw .writeFailed(path: path, message: String(cString: strerror(-rc))) }
    }
}
