// Path: Sources/SluiceReplay/ReplaySplit.swift — tcpprep-style client/server classification of a
// capture's packets (by server port or server prefix), the cache file that stores it, and the
// 5-tuple reader the sender's flow count shares.
import Glibc
import SluicePacket
import SluicePacketIO

/// Which interface a packet goes to when a replay is split, as tcpreplay's -i/-I.
public enum ReplaySide: UInt8, Sendable, Equatable {
    /// Client to server: the primary interface (`--iface`, tcpreplay -i).
    case primary = 0
    /// Server to client: the secondary interface (`--iface2`, tcpreplay -I).
    case secondary = 1
}

/// How packets are classified client->server (primary) or server->client (secondary).
///
/// - `ports`: a TCP, UDP or SCTP packet whose destination port is a server port goes to the
///   primary side; else one whose source port is a server port goes to the secondary side; every
///   other packet (other protocols, non-first IPv4 fragments, non-IP frames) goes to the primary side.
/// - `prefixes`: an IPv4 or IPv6 packet whose source address lies in one of the server prefixes is
///   server->client (secondary); every other packet is primary (tcpprep's `--cidr`).
public enum ReplaySplitRule: Sendable, Equatable {
    case ports([UInt16])
    case prefixes([IPPrefix])

    /// Most server ports or prefixes one rule holds.
    public static let entriesMax = 1024

    /// Parses `port:P[,P...]` or `cidr:PREFIX[,PREFIX...]`; nil when malformed or empty.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return nil }
        let items = parts[1].split(separator: ",").map { String($0).trimmingCharacters(in: " ") }
        guard !items.isEmpty, items.count <= Self.entriesMax else { return nil }
        switch parts[0] {
        case "port":
            let ports = items.compactMap { UInt16($0) }
            guard ports.count == items.count else { return nil }
            self = .ports(ports)
        case "cidr":
            let prefixes = items.compactMap { IPPrefix($0) }
            guard prefixes.count == items.count else { return nil }
            self = .prefixes(prefixes)
        default:
            return nil
        }
    }

    /// The side of an Ethernet frame (`linkType` 1; other link types are all primary).
    public func side(of frame: UnsafeRawBufferPointer, linkType: Int) -> ReplaySide {
        guard let tuple = FiveTuple(frame: frame, linkType: linkType) else { return .primary }
        switch self {
        case .ports(let ports):
            guard tuple.hasPorts else { return .primary }
            if ports.contains(tuple.destinationPort) { return .primary }
            return ports.contains(tuple.sourcePort) ? .secondary : .primary
        case .prefixes(let prefixes):
            return prefixes.contains { $0.isIPv4 == tuple.isIPv4 && $0.contains(tuple.source) } ? .secondary : .primary
        }
    }
}

extension String {
    func trimmingCharacters(in character: Character) -> String {
        var text = Substring(self)
        while text.first == character { text.removeFirst() }
        while text.last == character { text.removeLast() }
        return String(text)
    }
}

/// The addresses, protocol and ports of an IP packet in an Ethernet frame (up to two VLAN tags).
/// IPv6 extension headers are not walked: ports are read only when the next header is TCP, UDP or SCTP.
struct FiveTuple: Hashable {
    var source: IPAddress
    var destination: IPAddress
    var isIPv4: Bool
    var proto: UInt8
    var sourcePort: UInt16 = 0
    var destinationPort: UInt16 = 0
    var hasPorts = false

    init?(frame: UnsafeRawBufferPointer, linkType: Int) {
        guard linkType == 1, frame.count >= 14 else { return nil }
        func u16(_ offset: Int) -> UInt16 { UInt16(frame[offset]) << 8 | UInt16(frame[offset + 1]) }
        func u32(_ offset: Int) -> UInt32 { UInt32(u16(offset)) << 16 | UInt32(u16(offset + 2)) }
        func u64(_ offset: Int) -> UInt64 { UInt64(u32(offset)) << 32 | UInt64(u32(offset + 4)) }
        var offset = 12
        var etherType = u16(offset)
        for _ in 0..<2 where etherType == 0x8100 || etherType == 0x88A8 {
            offset += 4
            guard frame.count >= offset + 2 else { return nil }
            etherType = u16(offset)
        }
        offset += 2
        var l4: Int
        var fragmentOffsetZero = true
        switch etherType {
        case 0x0800:
            guard frame.count >= offset + 20, frame[offset] >> 4 == 4 else { return nil }
            let headerLength = Int(frame[offset] & 0x0F) * 4
            guard headerLength >= 20 else { return nil }
            isIPv4 = true
            proto = frame[offset + 9]
            source = IPAddress(ipv4: u32(offset + 12))
            destination = IPAddress(ipv4: u32(offset + 16))
            fragmentOffsetZero = u16(offset + 6) & 0x1FFF == 0
            l4 = offset + headerLength
        case 0x86DD:
            guard frame.count >= offset + 40, frame[offset] >> 4 == 6 else { return nil }
            isIPv4 = false
            proto = frame[offset + 6]
            source = IPAddress(high: u64(offset + 8), low: u64(offset + 16))
            destination = IPAddress(high: u64(offset + 24), low: u64(offset + 32))
            l4 = offset + 40
        default:
            return nil
        }
        if fragmentOffsetZero, proto == 6 || proto == 17 || proto == 132, frame.count >= l4 + 4 {
            sourcePort = u16(l4)
            destinationPort = u16(l4 + 2)
            hasPorts = true
        }
    }

    /// A 64-bit hash of the tuple (direction kept: A->B and B->A are two flows).
    var hash: UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for word in [source.high, source.low, destination.high, destination.low,
                     UInt64(proto) << 32 | UInt64(sourcePort) << 16 | UInt64(destinationPort)] {
            h = (h ^ word) &* 0x0000_0100_0000_01B3
            h ^= h >> 29
        }
        return h == 0 ? 1 : h
    }
}

/// Why a cache file could not be made, read or used.
public enum ReplayCacheError: Error, Equatable, CustomStringConvertible {
    case io(path: String, operation: String, errno: Int32)
    case notACacheFile(path: String)
    /// A cache file of an earlier format (no capture fingerprint): made again with --write-cachefile.
    case olderCacheFile(path: String)
    case tooManyPackets(path: String, count: UInt64, max: UInt64)
    /// The capture is not the one the cache file was made from (its size differs).
    case captureChanged(cache: String, capture: String, expectedBytes: UInt64, actualBytes: UInt64)
    /// Same size, other bytes: the fingerprint (FNV-1a of its first and last MiB) differs.
    case captureContentChanged(cache: String, capture: String)
    /// The capture holds more packets than the cache file classifies.
    case packetBeyondCache(cache: String, packets: UInt64)

    public var description: String {
        switch self {
        case .io(let path, let operation, let errno):
            "\(path): \(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case .notACacheFile(let path): "\(path): not a sluice replay cache file (made by `sluice replay --write-cachefile`)"
        case .olderCacheFile(let path): "\(path): a cache file of an earlier sluice (no capture fingerprint): make it again with --write-cachefile"
        case .tooManyPackets(let path, let count, let max): "\(path): \(count) packets, at most \(max)"
        case .captureChanged(let cache, let capture, let expected, let actual):
            "\(cache) was made from a capture of \(expected) bytes; \(capture) has \(actual): not the same capture"
        case .packetBeyondCache(let cache, let packets): "\(cache) classifies \(packets) packets; the capture has more"
        case .captureContentChanged(let cache, let capture):
            "\(cache) was made from another capture of the same size as \(capture) (their first and last MiB differ)"
        }
    }
}

/// tcpprep's cache file, Sluice's format: the magic "SLUICEC2", the capture's size in bytes
/// (UInt64 little endian), its fingerprint (UInt64 LE, `fingerprint(of:)`), the packet count (UInt64 LE),
/// then one bit per packet in capture order (bit i of byte i/8; 1 = secondary, server->client).
public struct ReplayCacheFile: Sendable, Equatable {
    public static let magic = Array("SLUICEC2".utf8)
    /// Most packets one cache file classifies (16 MiB of bits).
    public static let packetCountMax: UInt64 = 1 << 27
    /// Bytes of the capture's head and of its tail the fingerprint covers.
    static let fingerprintSpanBytes = 1 << 20
    public var captureBytes: UInt64
    public var captureFingerprint: UInt64
    public var sides: [ReplaySide]

    public init(captureBytes: UInt64, captureFingerprint: UInt64, sides: [ReplaySide]) {
        self.captureBytes = captureBytes
        self.captureFingerprint = captureFingerprint
        self.sides = sides
    }

    /// Checks that `capture` is the capture this file was made from: same size, same fingerprint.
    public func check(capture: String, cachePath: String) throws(ReplayError) {
        let size = try Self.fileSize(capture)
        guard size == captureBytes else {
            throw .cache(.captureChanged(cache: cachePath, capture: capture, expectedBytes: captureBytes, actualBytes: size))
        }
        guard try Self.fingerprint(of: capture) == captureFingerprint else {
            throw .cache(.captureContentChanged(cache: cachePath, capture: capture))
        }
    }

    /// FNV-1a (64 bit) of the file's first and last `fingerprintSpanBytes` (the whole file when shorter than
    /// twice that): two reads of at most 1 MiB, whatever the capture's size.
    public static func fingerprint(of path: String) throws(ReplayError) -> UInt64 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cache(.io(path: path, operation: "open", errno: errno)) }
        defer { close(fd) }
        let size = try fileSize(path)
        let span = UInt64(fingerprintSpanBytes)
        let whole = size <= 2 * span
        let offsets: [UInt64] = whole ? [0] : [0, size - span]
        let length = whole ? Int(truncatingIfNeeded: size) : fingerprintSpanBytes
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        var buffer = [UInt8](repeating: 0, count: fingerprintSpanBytes)
        for offset in offsets {
            let count = length
            var done = 0
            while done < count {
                let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
                guard got > 0 else { throw .cache(.io(path: path, operation: "read", errno: got == 0 ? EIO : errno)) }
                done += got
            }
            for byte in buffer[0..<count] { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        }
        return hash
    }

    /// Classifies every packet of `capture` by `rule`.
    public static func make(capture: String, rule: ReplaySplitRule) throws(ReplayError) -> ReplayCacheFile {
        var reader: PcapReader
        do { reader = try PcapReader(path: capture) } catch { throw .capture(error) }
        var sides: [ReplaySide] = []
        do {
            while let record = try reader.next() {
                guard UInt64(sides.count) < packetCountMax else {
                    throw ReplayError.cache(.tooManyPackets(path: capture, count: UInt64(sides.count) + 1, max: packetCountMax))
                }
                sides.append(rule.side(of: UnsafeRawBufferPointer(rebasing: record.bytes[0..<record.capturedLength]),
                                       linkType: reader.linkType))
            }
        } catch let error as PcapError {
            throw .capture(error)
        } catch let error as ReplayError {
            throw error
        } catch {
            preconditionFailure("only PcapError and ReplayError are thrown here")
        }
        return ReplayCacheFile(captureBytes: try fileSize(capture), captureFingerprint: try fingerprint(of: capture), sides: sides)
    }

    public var bytes: [UInt8] {
        var out = Self.magic
        withUnsafeBytes(of: captureBytes.littleEndian) { out += $0 }
        withUnsafeBytes(of: captureFingerprint.littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt64(sides.count).littleEndian) { out += $0 }
        var bits = [UInt8](repeating: 0, count: (sides.count + 7) / 8)
        for (index, side) in sides.enumerated() where side == .secondary { bits[index / 8] |= 1 << UInt8(index % 8) }
        return out + bits
    }

    public func write(to path: String) throws(ReplayError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .cache(.io(path: path, operation: "open", errno: errno)) }
        defer { close(fd) }
        let data = bytes
        var written = 0
        while written < data.count {
            let count = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            guard count > 0 else { throw .cache(.io(path: path, operation: "write", errno: errno)) }
            written += count
        }
    }

    public static func read(path: String) throws(ReplayError) -> ReplayCacheFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cache(.io(path: path, operation: "open", errno: errno)) }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 32)
        let got = readFully(fd, &header, 0, 32)
        if got >= 8, Array(header[0..<8]) == Array("SLUICEC1".utf8) { throw .cache(.olderCacheFile(path: path)) }
        guard got == 32, Array(header[0..<8]) == magic else {
            throw .cache(.notACacheFile(path: path))
        }
        func u64(_ offset: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(header[offset + $1]) << (8 * UInt64($1)) } }
        let size = u64(8)
        let fingerprint = u64(16)
        let count = u64(24)
        guard count <= packetCountMax else { throw .cache(.tooManyPackets(path: path, count: count, max: packetCountMax)) }
        let byteCount = Int((count + 7) / 8)
        var bits = [UInt8](repeating: 0, count: byteCount)
        guard readFully(fd, &bits, 0, byteCount) == byteCount else { throw .cache(.notACacheFile(path: path)) }
        let sides = (0..<Int(count)).map { bits[$0 / 8] >> UInt8($0 % 8) & 1 == 1 ? ReplaySide.secondary : .primary }
        return ReplayCacheFile(captureBytes: size, captureFingerprint: fingerprint, sides: sides)
    }

    private static func readFully(_ fd: Int32, _ buffer: inout [UInt8], _ start: Int, _ count: Int) -> Int {
        var done = 0
        while done < count {
            let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + start + done, count - done) }
            if got <= 0 { break }
            done += got
        }
        return done
    }

    static func fileSize(_ path: String) throws(ReplayError) -> UInt64 {
        var status = stat()
        guard stat(path, &status) == 0 else { throw .cache(.io(path: path, operation: "stat", errno: errno)) }
        return UInt64(status.st_size)
    }
}
