// Path: Sources/SluicePacket/Parse/PacketParser.swift — parses a packet's headers, link layer to VXLAN
// inner packet, into a `ParsedPacket` or a `DropReason`.

/// Parses packets. A small value: make one per stage and reuse it. Never allocates, never traps on
/// packet contents (every header length is checked before its fields are read); a malformed packet
/// gives a `DropReason`. Checksums are not verified (see `Checksum.isIPv4HeaderValid`).
public struct PacketParser: Sendable {
    /// UDP destination port that marks VXLAN (IANA 4789; Linux's old default was 8472).
    public var vxlanPort: UInt16
    /// Whether to parse a VXLAN packet's inner frame (at most `PacketLimits.tunnelDepthMax` deep).
    public var followsTunnels: Bool

    public init(vxlanPort: UInt16 = 4789, followsTunnels: Bool = true) {
        self.vxlanPort = vxlanPort
        self.followsTunnels = followsTunnels
    }

    /// Parses `bytes` as `linkType` into `packet` (overwritten). Returns nil when the packet parsed, or
    /// the reason to drop it. Strict by default: an IP length past the captured bytes is a drop; when
    /// `isCaptureTruncated` (the capture cut the packet, wire length > captured length) IP payloads
    /// may end early, but every header read must still be present.
    ///
    /// `packet` should come from `ParsedPacket()` or an earlier parse: its inner headers are reset only
    /// when `inner.l2Offset` is set (as every tunnel's parse sets it), which saves most of a reset's
    /// stores per packet. A parse that drops a tunnel packet leaves them absent.
    public func parse(
        _ bytes: PacketBytes, linkType: LinkType, into packet: inout ParsedPacket, isCaptureTruncated: Bool = false
    ) -> DropReason? {
        if packet.inner.l2Offset != PacketHeaders.absentOffset {
            packet.inner = PacketHeaders()
        }
        packet.outer = PacketHeaders()
        packet.isTunnel = false
        packet.vxlanVNI = 0
        packet.linkType = linkType
        packet.length = UInt32(truncatingIfNeeded: bytes.count)
        let layers = LayerParser(bytes: bytes, acceptsShortCapture: isCaptureTruncated)
        if let reason = layers.parseLink(linkType, &packet.outer) { return reason }
        guard followsTunnels, isVXLAN(packet.outer) else { return nil }
        if let reason = layers.parseVXLAN(outer: packet.outer, vni: &packet.vxlanVNI, inner: &packet.inner) {
            packet.inner = PacketHeaders()  // what the inner parse wrote before it failed
            packet.vxlanVNI = 0
            return reason
        }
        packet.isTunnel = true
        return nil
    }

    /// Parses `bytes` as `linkType`: the packet, or the reason to drop it. Convenience for tests and
    /// control paths; loops should reuse a `ParsedPacket` with `parse(_:linkType:into:)`.
    public func parse(_ bytes: UnsafeRawBufferPointer, linkType: LinkType) -> Result<ParsedPacket, DropReason> {
        var packet = ParsedPacket()
        if let reason = parse(PacketBytes(bytes), linkType: linkType, into: &packet) { return .failure(reason) }
        return .success(packet)
    }

    /// UDP to the VXLAN port, not a fragment (a fragment's inner frame is incomplete: left unparsed).
    @inline(__always) func isVXLAN(_ outer: PacketHeaders) -> Bool {
        outer.ipProtocol == IPProtocol.udp
            && outer.flags.contains(.ports)
            && !outer.flags.contains(.fragment)
            && outer.destinationPort == vxlanPort
    }
}

/// IP protocol numbers the parser knows.
public enum IPProtocol {
    @inlinable public static var icmp: UInt8 { 1 }
    @inlinable public static var tcp: UInt8 { 6 }
    @inlinable public static var udp: UInt8 { 17 }
    @inlinable public static var esp: UInt8 { 50 }
    @inlinable public static var icmpv6: UInt8 { 58 }
    @inlinable public static var noNextHeader: UInt8 { 59 }
    // IPv6 extension headers.
    @inlinable public static var hopByHop: UInt8 { 0 }
    @inlinable public static var routing: UInt8 { 43 }
    @inlinable public static var fragment: UInt8 { 44 }
    @inlinable public static var authentication: UInt8 { 51 }
    @inlinable public static var destinationOptions: UInt8 { 60 }
}

/// EtherTypes the parser knows.
public enum EtherType {
    @inlinable public static var ipv4: UInt16 { 0x0800 }
    @inlinable public static var ipv6: UInt16 { 0x86DD }
    @inlinable public static var vlan: UInt16 { 0x8100 }
    @inlinable public static var qinq: UInt16 { 0x88A8 }
    @inlinable public static var qinqLegacy: UInt16 { 0x9100 }

    /// True for a VLAN tag protocol identifier (802.1Q, 802.1ad, and the pre-standard 0x9100).
    @inlinable public static func isVLAN(_ type: UInt16) -> Bool {
        type == vlan || type == qinq || type == qinqLegacy
    }
}

/// The parse of one packet's bytes: header parsers for each layer, each given where its header starts
/// and `limit`, the end of the bytes it may read (the enclosing IP or UDP length, or the captured end).
struct LayerParser {
    let bytes: PacketBytes
    /// True when the capture cut the packet: IP and UDP lengths may point past the captured bytes.
    let acceptsShortCapture: Bool

    /// Offsets are below 0xFFFF by construction: headers start within link + 2 tags + 60 + 8 IPv6
    /// extensions of at most 2 KiB each, twice for a tunnel.
    @inline(__always) static func offset16(_ offset: Int) -> UInt16 {
        precondition(offset < Int(PacketHeaders.absentOffset), "header offset beyond 16 bits")
        return UInt16(truncatingIfNeeded: offset)
    }

    /// Dispatches on the link type.
    @inline(__always) func parseLink(_ linkType: LinkType, _ headers: inout PacketHeaders) -> DropReason? {
        let count = bytes.count
        switch linkType {
        case .ethernet: return parseEthernet(at: 0, limit: count, &headers)
        case .linuxSLL: return parseSLL(&headers)
        case .linuxSLL2: return parseSLL2(&headers)
        case .raw, .rawLegacy:
            guard count >= 1 else { return .truncatedIP }
            switch bytes.u8(0) >> 4 {
            case 4: return parseIPv4(at: 0, limit: count, &headers)
            case 6: return parseIPv6(at: 0, limit: count, &headers)
            default: return .badIPVersion
            }
        case .ipv4: return parseIPv4(at: 0, limit: count, &headers)
        case .ipv6: return parseIPv6(at: 0, limit: count, &headers)
        default: return .unsupportedLinkType
        }
    }

    /// The VXLAN header after the outer UDP header, then the inner Ethernet frame up to the UDP end.
    /// The inner frame's own VXLAN (if any) is not followed: `PacketLimits.tunnelDepthMax` is 1.
    func parseVXLAN(outer: PacketHeaders, vni: inout UInt32, inner: inout PacketHeaders) -> DropReason? {
        let udpStart = Int(outer.l4Offset)
        let udpEnd = min(udpStart + Int(bytes.u16(udpStart + 4)), bytes.count)
        let start = udpStart + 8
        guard bytes.contains(start, size: 8, limit: udpEnd) else { return .truncatedVXLAN }
        guard bytes.u8(start) & 0x08 != 0 else { return .badVXLANFlags }
        vni = bytes.u32(start + 4) >> 8
        return parseEthernet(at: start + 8, limit: udpEnd, &inner)
    }
}
