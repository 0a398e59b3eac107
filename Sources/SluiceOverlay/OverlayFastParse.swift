// Path: Sources/SluiceOverlay/OverlayFastParse.swift — the consumer side's parse of the common frame
// (untagged Ethernet, IPv4 without options, not a fragment, TCP or UDP) in straight-line code; anything
// else goes to SluicePacket's `PacketParser`.
import SluicePacket

enum OverlayFastParse {
    /// If `base[0..<length]` is an untagged Ethernet frame carrying IPv4 with a 20-byte header, neither a
    /// fragment nor cut short, and a whole TCP or UDP header (UDP not to `vxlanPort`), fills `packet`
    /// exactly as `PacketParser.parse(_, linkType: .ethernet, ...)` would and returns true (the unit test
    /// compares the two on such frames and on near misses). Otherwise returns false with `packet` undefined:
    /// the caller runs the full parser.
    @inline(__always)
    static func parse(_ base: UnsafeRawPointer, length: Int, vxlanPort: UInt16, into packet: inout ParsedPacket) -> Bool {
        guard length >= 42, load16(base, 12) == EtherType.ipv4, base.load(fromByteOffset: 14, as: UInt8.self) == 0x45
        else { return false }
        let totalLength = Int(load16(base, 16))
        let declaredEnd = 14 + totalLength
        let fragmentField = load16(base, 20)
        guard declaredEnd <= length, fragmentField & 0x3FFF == 0 else { return false }
        let ipProtocol = base.load(fromByteOffset: 23, as: UInt8.self)
        var headers = PacketHeaders()
        if ipProtocol == IPProtocol.tcp {
            guard declaredEnd >= 54 else { return false }
            let headerSize = Int(base.load(fromByteOffset: 46, as: UInt8.self) >> 4) * 4
            guard headerSize >= 20, 34 + headerSize <= declaredEnd else { return false }
            headers.tcpFlags = base.load(fromByteOffset: 47, as: UInt8.self)
            headers.payloadOffset = UInt16(truncatingIfNeeded: 34 + headerSize)
            headers.flags = [.ethernet, .ports, .tcp]
        } else if ipProtocol == IPProtocol.udp {
            guard declaredEnd >= 42 else { return false }
            let udpLength = Int(load16(base, 38))
            guard udpLength >= 8, 34 + udpLength <= declaredEnd, load16(base, 36) != vxlanPort else { return false }
            headers.payloadOffset = 42
            headers.flags = [.ethernet, .ports]
        } else {
            return false
        }
        if fragmentField & 0x4000 != 0 { headers.flags.insert(.dontFragment) }
        headers.l2Offset = 0
        headers.destinationMAC = MACAddress(UInt64(load16(base, 0)) << 32 | UInt64(load32(base, 2)))
        headers.sourceMAC = MACAddress(UInt64(load16(base, 6)) << 32 | UInt64(load32(base, 8)))
        headers.l3Offset = 14
        headers.etherType = EtherType.ipv4
        headers.ipVersion = 4
        headers.trafficClass = base.load(fromByteOffset: 15, as: UInt8.self)
        headers.fragmentID = UInt32(load16(base, 18))
        headers.ttl = base.load(fromByteOffset: 22, as: UInt8.self)
        headers.ipProtocol = ipProtocol
        headers.sourceAddress = IPAddress(ipv4: load32(base, 26))
        headers.destinationAddress = IPAddress(ipv4: load32(base, 30))
        headers.l4Offset = 34
        headers.sourcePort = load16(base, 34)
        headers.destinationPort = load16(base, 36)
        packet = ParsedPacket()
        packet.linkType = .ethernet
        packet.length = UInt32(truncatingIfNeeded: length)
        packet.outer = headers
        return true
    }
}
