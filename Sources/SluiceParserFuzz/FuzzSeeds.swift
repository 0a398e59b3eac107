// Path: Sources/SluiceParserFuzz/FuzzSeeds.swift — valid packets of every kind the parser knows: the
// seed corpus for libFuzzer and the starting points of the bounded mutation loop.
import SluicePacket

/// Byte-by-byte frame construction (big-endian), independent of the parser.
struct SeedWriter {
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
}

enum Seeds {
    static func ethernet(tags: [UInt16] = [], etherType: UInt16, _ payload: [UInt8]) -> [UInt8] {
        var writer = SeedWriter()
        writer.u48(0x02_00_00_00_00_02)
        writer.u48(0x02_00_00_00_00_01)
        for (index, tag) in tags.enumerated() {
            writer.u16(index == 0 && tags.count > 1 ? 0x88A8 : 0x8100)
            writer.u16(tag)
        }
        writer.u16(etherType)
        return writer.bytes + payload
    }

    static func ipv4(proto: UInt8, fragment: UInt16 = 0x4000, options: [UInt8] = [], _ payload: [UInt8]) -> [UInt8] {
        var writer = SeedWriter()
        writer.u8(0x40 | UInt8((20 + options.count) / 4))
        writer.u8(0)
        writer.u16(UInt16(20 + options.count + payload.count))
        writer.u16(0x1234)
        writer.u16(fragment)
        writer.u8(64)
        writer.u8(proto)
        writer.u16(0)
        writer.u32(0x0A00_0001)
        writer.u32(0xC0A8_0001)
        var header = writer.bytes + options
        var sum: UInt32 = 0
        for index in stride(from: 0, to: header.count, by: 2) { sum += UInt32(header[index]) << 8 | UInt32(header[index + 1]) }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        header[10] = UInt8(~sum >> 8 & 0xFF)
        header[11] = UInt8(~sum & 0xFF)
        return header + payload
    }

    static func ipv6(next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var writer = SeedWriter()
        writer.u32(0x6000_0000)
        writer.u16(UInt16(payload.count))
        writer.u8(next)
        writer.u8(64)
        for word in [0x2001_0DB8, 0, 0, 1, 0x2001_0DB8, 0, 0, 2] as [UInt32] { writer.u32(word) }
        return writer.bytes + payload
    }

    static func options(next: UInt8, _ payload: [UInt8]) -> [UInt8] { [next, 0, 1, 4, 0, 0, 0, 0] + payload }

    static func fragment6(next: UInt8, offset: UInt16, more: Bool, _ payload: [UInt8]) -> [UInt8] {
        [next, 0, UInt8(offset >> 5), UInt8((offset << 3) & 0xF8) | (more ? 1 : 0), 0, 0, 0, 7] + payload
    }

    static func tcp(_ port: UInt16 = 80) -> [UInt8] {
        var writer = SeedWriter()
        writer.u16(40000)
        writer.u16(port)
        writer.u32(1)
        writer.u32(0)
        writer.u8(0x60)
        writer.u8(0x02)
        writer.u16(1024)
        writer.u32(0)
        writer.u32(0x0204_05B4)  // MSS option
        return writer.bytes
    }

    static func udp(_ port: UInt16 = 53, _ payload: [UInt8] = [1, 2, 3, 4]) -> [UInt8] {
        var writer = SeedWriter()
        writer.u16(50000)
        writer.u16(port)
        writer.u16(UInt16(8 + payload.count))
        writer.u16(0)
        return writer.bytes + payload
    }

    static let icmp: [UInt8] = [8, 0, 0, 0, 0, 1, 0, 1]

    static func vxlan(_ inner: [UInt8]) -> [UInt8] { udp(4789, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0] + inner) }

    /// (link type, packet) for every kind of valid packet.
    static func all() -> [(link: LinkType, bytes: [UInt8])] {
        let innerFrame = ethernet(tags: [7], etherType: 0x86DD, ipv6(next: 6, tcp(22)))
        let sll: [UInt8] = [0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00]
        let sll2: [UInt8] = [0x86, 0xDD, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]
        return [
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 6, tcp()))),
            (.ethernet, ethernet(tags: [100], etherType: 0x0800, ipv4(proto: 17, udp()))),
            (.ethernet, ethernet(tags: [100, 200], etherType: 0x86DD, ipv6(next: 6, tcp()))),
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 17, options: [0x94, 4, 0, 0], udp()))),
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 1, icmp))),
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 17, fragment: 0x2000, udp(53, [UInt8](repeating: 9, count: 16))))),
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 17, fragment: 0x0010, [UInt8](repeating: 9, count: 16)))),
            (.ethernet, ethernet(etherType: 0x86DD, ipv6(next: 0, options(next: 43, options(next: 60, options(next: 17, udp())))))),
            (.ethernet, ethernet(etherType: 0x86DD, ipv6(next: 51, [58, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1] + icmp))),
            (.ethernet, ethernet(etherType: 0x86DD, ipv6(next: 44, fragment6(next: 6, offset: 0, more: true, tcp())))),
            (.ethernet, ethernet(etherType: 0x86DD, ipv6(next: 44, fragment6(next: 6, offset: 9, more: false, [1, 2, 3])))),
            (.ethernet, ethernet(etherType: 0x86DD, ipv6(next: 58, [135, 0, 0, 0, 0, 0, 0, 0]))),
            (.ethernet, ethernet(etherType: 0x0800, ipv4(proto: 17, vxlan(innerFrame)))),
            (.ethernet, ethernet(etherType: 0x0806, [UInt8](repeating: 0, count: 28))),
            (.linuxSLL, sll + ipv4(proto: 6, tcp())),
            (.linuxSLL2, sll2 + ipv6(next: 17, udp())),
            (.raw, ipv4(proto: 6, tcp())),
            (.rawLegacy, ipv6(next: 6, tcp())),
            (.ipv4, ipv4(proto: 17, udp())),
            (.ipv6, ipv6(next: 58, icmp)),
        ]
    }
}
