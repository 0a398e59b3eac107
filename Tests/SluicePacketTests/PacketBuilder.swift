// Path: Tests/SluicePacketTests/PacketBuilder.swift — frames built byte by byte for the tests, with no
// help from the code under test (except nothing: checksums are computed here too).
import SluicePacket

/// Big-endian byte appends.
struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { bytes += [UInt8(value >> 8), UInt8(value & 0xFF)] }
    mutating func u32(_ value: UInt32) {
        u16(UInt16(value >> 16))
        u16(UInt16(value & 0xFFFF))
    }
    mutating func u48(_ value: UInt64) {
        u16(UInt16(truncatingIfNeeded: value >> 32))
        u32(UInt32(truncatingIfNeeded: value))
    }
    mutating func u64(_ value: UInt64) {
        u32(UInt32(truncatingIfNeeded: value >> 32))
        u32(UInt32(truncatingIfNeeded: value))
    }
}

/// Test addresses.
enum Addr {
    static let macA: UInt64 = 0x02_00_00_00_00_0A
    static let macB: UInt64 = 0x02_00_00_00_00_0B
    static let v4A: UInt32 = 0x0A00_0001  // 10.0.0.1
    static let v4B: UInt32 = 0xC0A8_0102  // 192.168.1.2
    static let v6A = (UInt64(0x2001_0DB8_0000_0001), UInt64(0x0000_0000_0000_0001))  // 2001:db8:0:1::1
    static let v6B = (UInt64(0x2001_0DB8_00FF_0002), UInt64(0x0000_0000_0000_0002))  // 2001:db8:ff:2::2
}

enum Build {
    /// The one's-complement sum of 16-bit words (an odd trailing byte padded with zero), complemented.
    static func internetChecksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var index = 0
        while index < bytes.count {
            let high = UInt32(bytes[index]) << 8
            let low = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            sum += high | low
            index += 2
        }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    static func ethernet(
        destination: UInt64 = Addr.macB, source: UInt64 = Addr.macA, tags: [(tpid: UInt16, tci: UInt16)] = [],
        etherType: UInt16, payload: [UInt8]
    ) -> [UInt8] {
        var writer = ByteWriter()
        writer.u48(destination)
        writer.u48(source)
        for tag in tags {
            writer.u16(tag.tpid)
            writer.u16(tag.tci)
        }
        writer.u16(etherType)
        return writer.bytes + payload
    }

    /// An IPv4 header (checksum computed) and payload. `totalLength` overrides the computed length.
    static func ipv4(
        source: UInt32 = Addr.v4A, destination: UInt32 = Addr.v4B, proto: UInt8, payload: [UInt8],
        ttl: UInt8 = 64, tos: UInt8 = 0, identification: UInt16 = 0x1234, fragmentField: UInt16 = 0x4000,
        options: [UInt8] = [], totalLength: Int? = nil, versionAndIHL: UInt8? = nil
    ) -> [UInt8] {
        precondition(options.count % 4 == 0)
        let headerSize = 20 + options.count
        var writer = ByteWriter()
        writer.u8(versionAndIHL ?? (0x40 | UInt8(headerSize / 4)))
        writer.u8(tos)
        writer.u16(UInt16(totalLength ?? headerSize + payload.count))
        writer.u16(identification)
        writer.u16(fragmentField)
        writer.u8(ttl)
        writer.u8(proto)
        writer.u16(0)
        writer.u32(source)
        writer.u32(destination)
        var header = writer.bytes + options
        let checksum = internetChecksum(header)
        header[10] = UInt8(checksum >> 8)
        header[11] = UInt8(checksum & 0xFF)
        return header + payload
    }

    static func ipv6(
        source: (UInt64, UInt64) = Addr.v6A, destination: (UInt64, UInt64) = Addr.v6B, next: UInt8,
        payload: [UInt8], hopLimit: UInt8 = 64, trafficClass: UInt8 = 0, payloadLength: Int? = nil,
        version: UInt32 = 6
    ) -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(version << 28 | UInt32(trafficClass) << 20 | 0x12345)
        writer.u16(UInt16(payloadLength ?? payload.count))
        writer.u8(next)
        writer.u8(hopLimit)
        writer.u64(source.0)
        writer.u64(source.1)
        writer.u64(destination.0)
        writer.u64(destination.1)
        return writer.bytes + payload
    }

    /// A hop-by-hop, routing or destination options header of (lengthUnits + 1) * 8 bytes.
    static func ipv6Options(next: UInt8, lengthUnits: UInt8 = 0, payload: [UInt8]) -> [UInt8] {
        [next, lengthUnits] + [UInt8](repeating: 0, count: (Int(lengthUnits) + 1) * 8 - 2) + payload
    }

    /// An authentication header of (lengthUnits + 2) * 4 bytes.
    static func ipv6AH(next: UInt8, lengthUnits: UInt8 = 4, payload: [UInt8]) -> [UInt8] {
        [next, lengthUnits] + [UInt8](repeating: 0xAA, count: (Int(lengthUnits) + 2) * 4 - 2) + payload
    }

    static func ipv6Fragment(next: UInt8, offsetUnits: UInt16, more: Bool, identification: UInt32, payload: [UInt8])
        -> [UInt8]
    {
        var writer = ByteWriter()
        writer.u8(next)
        writer.u8(0)
        writer.u16(offsetUnits << 3 | (more ? 1 : 0))
        writer.u32(identification)
        return writer.bytes + payload
    }

    static func tcp(
        source: UInt16 = 40000, destination: UInt16 = 80, flags: UInt8 = 0x02, dataOffsetWords: UInt8? = nil,
        options: [UInt8] = [], payload: [UInt8] = []
    ) -> [UInt8] {
        precondition(options.count % 4 == 0)
        var writer = ByteWriter()
        writer.u16(source)
        writer.u16(destination)
        writer.u32(1000)
        writer.u32(0)
        writer.u8((dataOffsetWords ?? UInt8(5 + options.count / 4)) << 4)
        writer.u8(flags)
        writer.u16(65535)
        writer.u16(0)
        writer.u16(0)
        return writer.bytes + options + payload
    }

    static func udp(source: UInt16 = 50000, destination: UInt16 = 53, payload: [UInt8] = [], length: Int? = nil)
        -> [UInt8]
    {
        var writer = ByteWriter()
        writer.u16(source)
        writer.u16(destination)
        writer.u16(UInt16(length ?? 8 + payload.count))
        writer.u16(0)
        return writer.bytes + payload
    }

    /// ICMP or ICMPv6: type, code, checksum, 4 bytes of rest-of-header (echo id and sequence).
    static func icmp(type: UInt8, code: UInt8, payload: [UInt8] = []) -> [UInt8] {
        [type, code, 0, 0, 0x12, 0x34, 0x00, 0x01] + payload
    }

    static func vxlan(vni: UInt32, flags: UInt8 = 0x08, inner: [UInt8]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u8(flags)
        writer.u8(0)
        writer.u16(0)
        writer.u32(vni << 8)
        return writer.bytes + inner
    }

    /// Linux cooked v1: packet type, ARPHRD_ETHER, address length 6, address padded to 8, protocol.
    static func sll(protocol etherType: UInt16, source: UInt64 = Addr.macA, payload: [UInt8]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u16(0)
        writer.u16(1)
        writer.u16(6)
        writer.u48(source)
        writer.u16(0)
        writer.u16(etherType)
        return writer.bytes + payload
    }

    /// Linux cooked v2: protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address.
    static func sll2(protocol etherType: UInt16, source: UInt64 = Addr.macA, payload: [UInt8]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u16(etherType)
        writer.u16(0)
        writer.u32(3)
        writer.u16(1)
        writer.u8(0)
        writer.u8(6)
        writer.u48(source)
        writer.u16(0)
        return writer.bytes + payload
    }
}

/// Common whole frames.
enum Sample {
    static func ipv4TCP(source: UInt32 = Addr.v4A, destination: UInt32 = Addr.v4B, sourcePort: UInt16 = 40000,
                        destinationPort: UInt16 = 80, tags: [(tpid: UInt16, tci: UInt16)] = [], ttl: UInt8 = 64,
                        sourceMAC: UInt64 = Addr.macA) -> [UInt8] {
        Build.ethernet(source: sourceMAC, tags: tags, etherType: 0x0800, payload: Build.ipv4(
            source: source, destination: destination, proto: 6, payload: Build.tcp(
                source: sourcePort, destination: destinationPort, payload: Array("hello".utf8)), ttl: ttl))
    }

    static func ipv4UDP(sourcePort: UInt16 = 50000, destinationPort: UInt16 = 53, payload: [UInt8] = [1, 2, 3, 4])
        -> [UInt8]
    {
        Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: Build.udp(source: sourcePort, destination: destinationPort, payload: payload)))
    }

    static func ipv6TCP(source: (UInt64, UInt64) = Addr.v6A, destination: (UInt64, UInt64) = Addr.v6B,
                        hopLimit: UInt8 = 64) -> [UInt8] {
        Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            source: source, destination: destination, next: 6, payload: Build.tcp(destination: 443), hopLimit: hopLimit))
    }

    static func ipv6ExtensionsUDP() -> [UInt8] {
        let udp = Build.udp(destination: 5353, payload: [9, 9])
        let chain = Build.ipv6Options(next: 43, lengthUnits: 1, payload:
            Build.ipv6Options(next: 60, payload: Build.ipv6Options(next: 17, payload: udp)))
        return Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(next: 0, payload: chain))
    }

    static func vxlan(vni: UInt32 = 0x123456) -> [UInt8] {
        let inner = Build.ethernet(destination: 0x02_00_00_00_11_11, source: 0x02_00_00_00_22_22,
                                   tags: [(0x8100, 0x0007)], etherType: 0x86DD,
                                   payload: Build.ipv6(next: 6, payload: Build.tcp(source: 1111, destination: 2222)))
        return Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: Build.udp(source: 33333, destination: 4789, payload: Build.vxlan(vni: vni, inner: inner))))
    }

    /// Every valid kind, each with exact IP lengths (no padding): any shorter cut is malformed.
    static func allValid() -> [(name: String, bytes: [UInt8], link: LinkType)] {
        [
            ("ipv4-tcp", ipv4TCP(), .ethernet),
            ("ipv4-tcp-qinq", ipv4TCP(tags: [(0x88A8, 100), (0x8100, 200)]), .ethernet),
            ("ipv4-tcp-9100", ipv4TCP(tags: [(0x9100, 300)]), .ethernet),
            ("ipv4-udp", ipv4UDP(), .ethernet),
            ("ipv4-options-udp", Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 17, payload: Build.udp(), options: [0x94, 0x04, 0x00, 0x00])), .ethernet),
            ("ipv4-icmp", Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 1, payload: Build.icmp(type: 8, code: 0, payload: [1, 2]))), .ethernet),
            ("ipv4-first-fragment", Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 17, payload: Build.udp(payload: [1, 2, 3, 4]), fragmentField: 0x2000)), .ethernet),
            ("ipv6-tcp", ipv6TCP(), .ethernet),
            ("ipv6-extensions-udp", ipv6ExtensionsUDP(), .ethernet),
            ("ipv6-ah-icmpv6", Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
                next: 51, payload: Build.ipv6AH(next: 58, payload: Build.icmp(type: 128, code: 0)))), .ethernet),
            ("ipv6-fragment-tcp", Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
                next: 44, payload: Build.ipv6Fragment(next: 6, offsetUnits: 0, more: true, identification: 7,
                                                      payload: Build.tcp()))), .ethernet),
            ("vxlan", vxlan(), .ethernet),
            ("sll-ipv4-udp", Build.sll(protocol: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp())),
             .linuxSLL),
            ("sll2-ipv6-tcp", Build.sll2(protocol: 0x86DD, payload: Build.ipv6(next: 6, payload: Build.tcp())),
             .linuxSLL2),
            ("raw-ipv4", Build.ipv4(proto: 6, payload: Build.tcp()), .raw),
            ("raw12-ipv6", Build.ipv6(next: 17, payload: Build.udp()), .rawLegacy),
            ("dlt-ipv4", Build.ipv4(proto: 1, payload: Build.icmp(type: 0, code: 0)), .ipv4),
            ("dlt-ipv6", Build.ipv6(next: 58, payload: Build.icmp(type: 129, code: 0)), .ipv6),
        ]
    }
}

/// Parses a byte array with the default parser.
func parse(_ bytes: [UInt8], _ link: LinkType = .ethernet, cut: Bool = false, parser: PacketParser = PacketParser())
    -> Result<ParsedPacket, DropReason>
{
    bytes.withUnsafeBytes { raw in
        var packet = ParsedPacket()
        if let reason = parser.parse(PacketBytes(raw), linkType: link, into: &packet, isCaptureTruncated: cut) {
            return .failure(reason)
        }
        return .success(packet)
    }
}

/// The parsed packet, or nil (with the reason recorded as a test issue by the caller).
func parsed(_ bytes: [UInt8], _ link: LinkType = .ethernet) -> ParsedPacket? {
    if case .success(let packet) = parse(bytes, link) { return packet }
    return nil
}

func dropReason(_ bytes: [UInt8], _ link: LinkType = .ethernet) -> DropReason? {
    if case .failure(let reason) = parse(bytes, link) { return reason }
    return nil
}
