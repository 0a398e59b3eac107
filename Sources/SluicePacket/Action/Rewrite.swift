// Path: Sources/SluicePacket/Action/Rewrite.swift — header rewrites applied in place: MACs, VLAN tags,
// DSCP, TTL, addresses and ports (with incremental checksum updates), checksum recomputation and
// MTU truncation.
import Glibc

/// One change to a packet's outer headers. Values are checked when a `RuleTable` is made.
@frozen
public enum Rewrite: Hashable, Sendable, BitwiseCopyable {
    case setDestinationMAC(MACAddress)
    case setSourceMAC(MACAddress)
    /// Sets the outer tag's VLAN id, keeping its priority and DEI; pushes an 802.1Q tag with priority 0
    /// on an untagged packet.
    case setVLAN(id: UInt16)
    /// Pushes a new outermost tag (`tpid` 0x8100, 0x88A8 or 0x9100). Grows the packet by 4 bytes.
    case pushVLAN(id: UInt16, priority: UInt8, tpid: UInt16)
    /// Removes the outermost tag, if any. Shrinks the packet by 4 bytes.
    case stripVLAN
    /// Sets the IPv4 TOS / IPv6 traffic class DSCP bits (0...63), keeping ECN.
    case setDSCP(UInt8)
    /// Decrements the IPv4 TTL / IPv6 hop limit; a packet arriving with 0 or 1 is dropped (`ttlExpired`).
    case decrementTTL
    /// Sets the IPv4 TTL / IPv6 hop limit.
    case setTTL(UInt8)
    /// Overwrites the first `length` bits of the source (destination) address with the prefix's,
    /// keeping the host bits (a /32 or /128 sets the whole address). Only on packets of the prefix's
    /// family; the IPv4 header checksum and the TCP, UDP (unless 0 over IPv4) or ICMPv6 checksum
    /// are updated incrementally (RFC 1624).
    case setSourceAddress(IPPrefix)
    case setDestinationAddress(IPPrefix)
    /// tcprewrite's pseudo-NAT (`--srcipmap`/`--dstipmap` from:to): an address inside `from` gets
    /// `to`'s prefix bits, keeping its other bits; others are left alone. The maps of one direction
    /// in one rewrite list are one map: the first pair whose `from` holds the address applies, the
    /// later ones are skipped (tcprewrite's order; pairs never chain).
    case mapSourcePrefix(from: IPPrefix, to: IPPrefix)
    case mapDestinationPrefix(from: IPPrefix, to: IPPrefix)
    /// Sets the TCP/UDP source (destination) port, updating the L4 checksum. Other packets unchanged.
    case setSourcePort(UInt16)
    case setDestinationPort(UInt16)
    /// Recomputes the IPv4 header checksum and the TCP, UDP, ICMP or ICMPv6 checksum from scratch
    /// (skipped for fragments and for L4 data the capture cut).
    case fixChecksums
    /// Cuts a packet whose network layer is longer than `mtu` bytes to `mtu` (tcprewrite
    /// `--mtu-trunc`), sets the IPv4 total length / IPv6 payload length and recomputes checksums
    /// over what is left. `mtu` at least `PacketLimits.mtuMin`.
    case truncateToMTU(UInt16)

    /// True if every value is in range: VLAN id 0...4095, priority 0...7, a VLAN TPID, DSCP 0...63.
    /// `RuleTable` reports which is not with a typed error; `PacketRewriter` traps on an invalid one.
    @inlinable public var isValid: Bool {
        switch self {
        case .setVLAN(let id): id <= 0x0FFF
        case .pushVLAN(let id, let priority, let tpid): id <= 0x0FFF && priority <= 7 && EtherType.isVLAN(tpid)
        case .setDSCP(let dscp): dscp <= 63
        case .truncateToMTU(let mtu): mtu >= PacketLimits.mtuMin
        case .setDestinationMAC, .setSourceMAC, .stripVLAN, .decrementTTL, .setTTL, .setSourceAddress,
             .setDestinationAddress, .mapSourcePrefix, .mapDestinationPrefix, .setSourcePort, .setDestinationPort,
             .fixChecksums: true
        }
    }
}

/// Where a packet's headers are, as rewrites need and update them (a push or strip moves L3 and L4).
@frozen
public struct PacketLayout: Hashable, Sendable {
    /// Bytes of packet data.
    public var length: Int
    public var linkType: LinkType
    /// Outer L3 and L4 offsets, `PacketHeaders.absentOffset` if absent.
    public var l3Offset: UInt16
    public var l4Offset: UInt16
    /// Outer IP version: 4, 6 or 0.
    public var ipVersion: UInt8
    /// Outer upper-layer protocol (after IPv6 extension headers); meaningful with `ipVersion` and
    /// `l4Offset`. 0 (the default) leaves L4 headers alone.
    public var ipProtocol: UInt8
    /// The outer IP packet is a fragment (the parser's `.fragment` flag: IPv4 offset/MF, or an IPv6
    /// fragment header that is not atomic). Its L4 checksum covers bytes in other packets.
    public var isFragment: Bool

    @inlinable public init(length: Int, linkType: LinkType, l3Offset: UInt16, l4Offset: UInt16, ipVersion: UInt8,
                           ipProtocol: UInt8 = 0, isFragment: Bool = false) {
        self.length = length
        self.linkType = linkType
        self.l3Offset = l3Offset
        self.l4Offset = l4Offset
        self.ipVersion = ipVersion
        self.ipProtocol = ipProtocol
        self.isFragment = isFragment
    }

    /// The layout of a parsed packet's outer headers.
    @inlinable public init(_ packet: ParsedPacket) {
        self.init(length: Int(packet.length), linkType: packet.linkType, l3Offset: packet.outer.l3Offset,
                  l4Offset: packet.outer.l4Offset, ipVersion: packet.outer.ipVersion,
                  ipProtocol: packet.outer.ipProtocol, isFragment: packet.outer.flags.contains(.fragment))
    }

    /// Moves L3 and L4 by `delta` bytes (a tag pushed or stripped in front of them).
    @inlinable mutating func shift(by delta: Int) {
        length += delta
        if l3Offset != PacketHeaders.absentOffset { l3Offset = UInt16(truncatingIfNeeded: Int(l3Offset) + delta) }
        if l4Offset != PacketHeaders.absentOffset { l4Offset = UInt16(truncatingIfNeeded: Int(l4Offset) + delta) }
    }
}

/// Which address a list's prefix maps already rewrote (first matching pair wins per direction).
@frozen
public struct PrefixMapState: Sendable {
    public var sourceMapped = false
    public var destinationMapped = false
    @inlinable public init() {}
}

/// Applies rewrites to a packet in a mutable buffer. Contract: `buffer` holds the packet in its first
/// `layout.length` bytes and is the whole writable buffer; a VLAN push needs
/// `buffer.count >= layout.length + PacketLimits.vlanTagSizeBytes` (else `noRoomForVLAN`) and moves
/// the bytes after the MACs up by 4 (a memmove of the packet). Never allocates; a packet that does
/// not fit a rewrite is a `DropReason`, never a trap.
public enum PacketRewriter {
    /// Applies `rewrite`, updating `layout`. Returns nil, or why the packet must be dropped.
    public static func apply(
        _ rewrite: Rewrite, to buffer: UnsafeMutableRawBufferPointer, layout: inout PacketLayout
    ) -> DropReason? {
        var maps = PrefixMapState()
        return apply(rewrite, to: buffer, layout: &layout, maps: &maps)
    }

    /// As `apply(_:to:layout:)` inside a list of rewrites: the list's `mapSourcePrefix`
    /// (`mapDestinationPrefix`) entries form one map, as tcprewrite's --srcipmap (--dstipmap) pairs
    /// do: once one pair's `from` held the address, later pairs of that direction are skipped (no
    /// chaining, so 10/8->11/8 then 11/8->10/8 swaps). Start each list with a fresh `maps`.
    public static func apply(
        _ rewrite: Rewrite, to buffer: UnsafeMutableRawBufferPointer, layout: inout PacketLayout,
        maps: inout PrefixMapState
    ) -> DropReason? {
        precondition(layout.length >= 0, "negative packet length")
        precondition(layout.length <= buffer.count, "packet longer than its buffer")
        precondition(rewrite.isValid, "rewrite value out of range (RuleTable validates them)")
        switch rewrite {
        case .setDestinationMAC(let address): return setMAC(address, at: 0, buffer, layout)
        case .setSourceMAC(let address): return setMAC(address, at: 6, buffer, layout)
        case .setVLAN(let id): return setVLAN(id: id, buffer, &layout)
        case .pushVLAN(let id, let priority, let tpid):
            return pushVLAN(tpid: tpid, tci: UInt16(priority) << 13 | id, buffer, &layout)
        case .stripVLAN: return stripVLAN(buffer, &layout)
        case .setDSCP(let dscp): return setDSCP(dscp, buffer, layout)
        case .decrementTTL: return decrementTTL(buffer, layout)
        case .setTTL(let ttl): return setTTL(ttl, buffer, layout)
        case .setSourceAddress(let prefix):
            var matched = false
            return setAddress(prefix, destination: false, from: nil, buffer, layout, matched: &matched)
        case .setDestinationAddress(let prefix):
            var matched = false
            return setAddress(prefix, destination: true, from: nil, buffer, layout, matched: &matched)
        case .mapSourcePrefix(let from, let to):
            guard !maps.sourceMapped else { return nil }
            return setAddress(to, destination: false, from: from, buffer, layout, matched: &maps.sourceMapped)
        case .mapDestinationPrefix(let from, let to):
            guard !maps.destinationMapped else { return nil }
            return setAddress(to, destination: true, from: from, buffer, layout, matched: &maps.destinationMapped)
        case .setSourcePort(let port): return setPort(port, at: 0, buffer, layout)
        case .setDestinationPort(let port): return setPort(port, at: 2, buffer, layout)
        case .fixChecksums: fixChecksums(buffer, layout); return nil
        case .truncateToMTU(let mtu): return truncate(toMTU: Int(mtu), buffer, &layout)
        }
    }

    @inline(__always) static func view(_ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout) -> PacketBytes {
        PacketBytes(UnsafeRawBufferPointer(rebasing: buffer[0..<layout.length]))
    }

    /// Why an L2 rewrite cannot run: not Ethernet, or no whole Ethernet header.
    @inline(__always) static func ethernetProblem(_ layout: PacketLayout) -> DropReason? {
        guard layout.linkType == .ethernet else { return .rewriteNeedsEthernet }
        guard layout.length >= 14 else { return .truncatedEthernet }
        return nil
    }

    /// Outer VLAN tags present, counting at most one past `vlanTagCountMax`. Needs an Ethernet header.
    static func tagCount(_ bytes: PacketBytes) -> Int {
        var count = 0
        while count <= PacketLimits.vlanTagCountMax,
            bytes.contains(12 + 4 * count, size: 2, limit: bytes.count),
            EtherType.isVLAN(bytes.u16(12 + 4 * count))
        {
            count += 1
        }
        return count
    }

    static func setMAC(
        _ address: MACAddress, at offset: Int, _ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout
    ) -> DropReason? {
        if let problem = ethernetProblem(layout) { return problem }
        buffer.storeBigEndian48(address.rawValue, at: offset)
        return nil
    }

    static func setVLAN(id: UInt16, _ buffer: UnsafeMutableRawBufferPointer, _ layout: inout PacketLayout) -> DropReason? {
        if let problem = ethernetProblem(layout) { return problem }
        let bytes = view(buffer, layout)
        let tags = tagCount(bytes)
        guard tags > 0 else { return pushVLAN(tpid: EtherType.vlan, tci: id, buffer, &layout) }
        guard bytes.contains(14, size: 2, limit: bytes.count) else { return .truncatedVLAN }
        buffer.storeBigEndian(bytes.u16(14) & 0xF000 | id, at: 14)
        return nil
    }

    static func pushVLAN(
        tpid: UInt16, tci: UInt16, _ buffer: UnsafeMutableRawBufferPointer, _ layout: inout PacketLayout
    ) -> DropReason? {
        if let problem = ethernetProblem(layout) { return problem }
        let bytes = view(buffer, layout)
        let tags = tagCount(bytes)
        guard tags < PacketLimits.vlanTagCountMax else { return .vlanDepthExceeded }
        guard layout.length <= buffer.count - PacketLimits.vlanTagSizeBytes else { return .noRoomForVLAN }
        let base = buffer.baseAddress!
        memmove(base + 16, base + 12, layout.length - 12)
        layout.shift(by: 4)
        buffer.storeBigEndian(tpid, at: 12)
        buffer.storeBigEndian(tci, at: 14)
        return nil
    }

    static func stripVLAN(_ buffer: UnsafeMutableRawBufferPointer, _ layout: inout PacketLayout) -> DropReason? {
        if let problem = ethernetProblem(layout) { return problem }
        let bytes = view(buffer, layout)
        let tags = tagCount(bytes)
        guard tags > 0 else { return nil }
        guard layout.length >= 18 else { return .truncatedVLAN }
        let base = buffer.baseAddress!
        memmove(base + 12, base + 16, layout.length - 16)
        layout.shift(by: -4)
        return nil
    }

    /// DSCP lives in the IPv4 word (version, IHL, TOS) and in the IPv6 word (version, traffic class,
    /// flow label bits): one 16-bit word changes, so IPv4's checksum takes one RFC 1624 update.
    static func setDSCP(_ dscp: UInt8, _ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout) -> DropReason? {
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        switch layout.ipVersion {
        case 4:
            guard bytes.contains(l3, size: 20, limit: bytes.count) else { return .truncatedIPv4 }
            let old = bytes.u16(l3)
            let new = old & 0xFF03 | UInt16(dscp) << 2
            buffer.storeBigEndian(new, at: l3)
            buffer.storeBigEndian(Checksum.updated(bytes.u16(l3 + 10), oldWord: old, newWord: new), at: l3 + 10)
        case 6:
            guard bytes.contains(l3, size: 40, limit: bytes.count) else { return .truncatedIPv6 }
            buffer.storeBigEndian(bytes.u16(l3) & 0xF03F | UInt16(dscp) << 6, at: l3)
        default: break  // not IP: nothing to mark
        }
        return nil
    }

    /// TTL shares a word with the protocol: one RFC 1624 update. IPv6 has no header checksum.
    static func decrementTTL(_ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout) -> DropReason? {
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        switch layout.ipVersion {
        case 4:
            guard bytes.contains(l3, size: 20, limit: bytes.count) else { return .truncatedIPv4 }
            let old = bytes.u16(l3 + 8)
            guard old >> 8 > 1 else { return .ttlExpired }
            let new = old &- 0x0100
            buffer.storeBigEndian(new, at: l3 + 8)
            buffer.storeBigEndian(Checksum.updated(bytes.u16(l3 + 10), oldWord: old, newWord: new), at: l3 + 10)
        case 6:
            guard bytes.contains(l3, size: 40, limit: bytes.count) else { return .truncatedIPv6 }
            let hopLimit = bytes.u8(l3 + 7)
            guard hopLimit > 1 else { return .ttlExpired }
            buffer.storeBytes(of: hopLimit - 1, toByteOffset: l3 + 7, as: UInt8.self)
        default: break  // not IP: no TTL
        }
        return nil
    }
}
