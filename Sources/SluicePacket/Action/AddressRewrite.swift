// Path: Sources/SluicePacket/Action/AddressRewrite.swift — the L3/L4 rewrites: TTL, addresses and
// prefix maps, ports (incremental checksum updates), full checksum recomputation, MTU truncation.

/// Where a packet's L4 checksum is and how to treat it.
struct L4Checksum {
    let offset: Int
    let isUDP: Bool
    /// UDP with a zero field: no checksum (RFC 768; over IPv6 the tunnel case of RFC 6935), left as is.
    let isAbsent: Bool
}

extension PacketRewriter {
    /// The TCP, UDP or ICMPv6 checksum field the pseudo-header feeds, when the packet has it whole.
    static func l4Checksum(_ bytes: PacketBytes, _ layout: PacketLayout) -> L4Checksum? {
        guard layout.ipVersion != 0, layout.l4Offset != PacketHeaders.absentOffset else { return nil }
        let field: Int
        switch layout.ipProtocol {
        case IPProtocol.tcp: field = 16
        case IPProtocol.udp: field = 6
        case IPProtocol.icmpv6 where layout.ipVersion == 6: field = 2
        default: return nil
        }
        let offset = Int(layout.l4Offset) + field
        guard bytes.contains(offset, size: 2, limit: bytes.count) else { return nil }
        let isUDP = layout.ipProtocol == IPProtocol.udp
        return L4Checksum(offset: offset, isUDP: isUDP, isAbsent: isUDP && bytes.u16(offset) == 0)
    }

    /// Writes `new` over the 16-bit word at `offset` and updates the IPv4 header checksum at
    /// `ipv4Checksum` (if any) and the L4 checksum (if any) by RFC 1624. A UDP result of 0 is sent as
    /// 0xFFFF (RFC 768).
    static func replaceWord(
        _ new: UInt16, at offset: Int, _ buffer: UnsafeMutableRawBufferPointer, length: Int,
        ipv4Checksum: Int?, l4: L4Checksum?
    ) {
        let bytes = PacketBytes(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
        let old = bytes.u16(offset)
        guard old != new else { return }
        buffer.storeBigEndian(new, at: offset)
        if let at = ipv4Checksum {
            buffer.storeBigEndian(Checksum.updated(bytes.u16(at), oldWord: old, newWord: new), at: at)
        }
        if let l4, !l4.isAbsent {
            var updated = Checksum.updated(bytes.u16(l4.offset), oldWord: old, newWord: new)
            if l4.isUDP && updated == 0 { updated = 0xFFFF }
            buffer.storeBigEndian(updated, at: l4.offset)
        }
    }

    static func setTTL(_ ttl: UInt8, _ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout) -> DropReason? {
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        switch layout.ipVersion {
        case 4:
            guard bytes.contains(l3, size: 20, limit: bytes.count) else { return .truncatedIPv4 }
            replaceWord(bytes.u16(l3 + 8) & 0x00FF | UInt16(ttl) << 8, at: l3 + 8, buffer, length: layout.length,
                        ipv4Checksum: l3 + 10, l4: nil)
        case 6:
            guard bytes.contains(l3, size: 40, limit: bytes.count) else { return .truncatedIPv6 }
            buffer.storeBytes(of: ttl, toByteOffset: l3 + 7, as: UInt8.self)
        default: break  // not IP: no TTL
        }
        return nil
    }

    /// Sets an address's first `prefix.length` bits (when `from` is nil or holds the address);
    /// `matched` is set when it did.
    static func setAddress(
        _ prefix: IPPrefix, destination: Bool, from: IPPrefix?, _ buffer: UnsafeMutableRawBufferPointer,
        _ layout: PacketLayout, matched: inout Bool
    ) -> DropReason? {
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        let mask = prefix.mask
        switch layout.ipVersion {
        case 4 where prefix.isIPv4:
            guard bytes.contains(l3, size: 20, limit: bytes.count) else { return .truncatedIPv4 }
            let at = l3 + (destination ? 16 : 12)
            let old = IPAddress(ipv4: bytes.u32(at))
            if let from, !from.contains(old) { return nil }
            matched = true
            let new = UInt32(truncatingIfNeeded: old.low & ~mask.low | prefix.address.low & mask.low)
            let l4 = l4Checksum(bytes, layout)
            for word in 0..<2 {
                replaceWord(UInt16(truncatingIfNeeded: new >> UInt32(16 - 16 * word)), at: at + 2 * word, buffer,
                            length: layout.length, ipv4Checksum: l3 + 10, l4: l4)
            }
        case 6 where !prefix.isIPv4:
            guard bytes.contains(l3, size: 40, limit: bytes.count) else { return .truncatedIPv6 }
            let at = l3 + (destination ? 24 : 8)
            let old = IPAddress(high: bytes.u64(at), low: bytes.u64(at + 8))
            if let from, !from.contains(old) { return nil }
            matched = true
            let new = IPAddress(high: old.high & ~mask.high | prefix.address.high & mask.high,
                                low: old.low & ~mask.low | prefix.address.low & mask.low)
            let l4 = l4Checksum(bytes, layout)
            for word in 0..<8 {
                let half = word < 4 ? new.high : new.low
                replaceWord(UInt16(truncatingIfNeeded: half >> UInt64(48 - 16 * (word % 4))), at: at + 2 * word,
                            buffer, length: layout.length, ipv4Checksum: nil, l4: l4)
            }
        default: break  // not IP, or the other family: left alone
        }
        return nil
    }

    /// Sets the TCP/UDP port at `l4 + field` (0 source, 2 destination).
    static func setPort(_ port: UInt16, at field: Int, _ buffer: UnsafeMutableRawBufferPointer,
                        _ layout: PacketLayout) -> DropReason? {
        guard layout.ipVersion != 0, layout.l4Offset != PacketHeaders.absentOffset,
              layout.ipProtocol == IPProtocol.tcp || layout.ipProtocol == IPProtocol.udp else { return nil }
        let bytes = view(buffer, layout)
        let l4 = Int(layout.l4Offset)
        guard bytes.contains(l4, size: 4, limit: bytes.count) else {
            return layout.ipProtocol == IPProtocol.tcp ? .truncatedTCP : .truncatedUDP
        }
        replaceWord(port, at: l4 + field, buffer, length: layout.length, ipv4Checksum: nil, l4: l4Checksum(bytes, layout))
        return nil
    }

    /// Recomputes the IPv4 header checksum, then the L4 checksum over the IP payload when it is all
    /// in the buffer and the packet is not a fragment (IPv4 offset/MF, or `layout.isFragment`: an
    /// IPv6 fragment header); a first fragment's checksum covers the whole datagram, so it is kept.
    /// A UDP checksum of 0 (none) stays 0, as tcprewrite leaves it.
    static func fixChecksums(_ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout) {
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        switch layout.ipVersion {
        case 4:
            guard bytes.contains(l3, size: 20, limit: bytes.count) else { return }
            let headerSize = Int(bytes.u8(l3) & 0x0F) * 4
            guard headerSize >= 20, bytes.contains(l3, size: headerSize, limit: bytes.count) else { return }
            buffer.storeBigEndian(Checksum.ipv4Header(bytes, at: l3, headerSize: headerSize), at: l3 + 10)
            guard bytes.u16(l3 + 6) & 0x3FFF == 0, !layout.isFragment else { return }  // L4 spans several packets
            fixTransport(buffer, layout, end: l3 + Int(bytes.u16(l3 + 2)))
        case 6:
            guard bytes.contains(l3, size: 40, limit: bytes.count), !layout.isFragment else { return }
            fixTransport(buffer, layout, end: l3 + 40 + Int(bytes.u16(l3 + 4)))
        default: break
        }
    }

    /// The TCP, UDP, ICMP or ICMPv6 checksum over `l4 ..< end` (with the pseudo-header but ICMP).
    static func fixTransport(_ buffer: UnsafeMutableRawBufferPointer, _ layout: PacketLayout, end: Int) {
        guard layout.l4Offset != PacketHeaders.absentOffset else { return }
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        let l4 = Int(layout.l4Offset)
        let field: Int
        var pseudo = true
        switch layout.ipProtocol {
        case IPProtocol.tcp: field = 16
        case IPProtocol.udp: field = 6
        case IPProtocol.icmp where layout.ipVersion == 4: field = 2; pseudo = false
        case IPProtocol.icmpv6 where layout.ipVersion == 6: field = 2
        default: return
        }
        guard end <= layout.length, l4 + field + 2 <= end else { return }  // cut by the capture
        // tcprewrite: "no need to recalculate UDP checksums if already 0" (both families).
        if layout.ipProtocol == IPProtocol.udp && bytes.u16(l4 + field) == 0 { return }
        var sum: UInt32 = 0
        if pseudo {
            let (start, words) = layout.ipVersion == 4 ? (l3 + 12, 4) : (l3 + 8, 16)
            for word in 0..<words { sum &+= UInt32(bytes.u16(start + 2 * word)) }
            let length = UInt32(end - l4)
            sum &+= length >> 16
            sum &+= length & 0xFFFF
            sum &+= UInt32(layout.ipProtocol)
        }
        var position = l4
        while position + 1 < end {
            if position != l4 + field { sum &+= UInt32(bytes.u16(position)) }
            position += 2
        }
        if position < end { sum &+= UInt32(bytes.u8(position)) << 8 }
        var checksum = ~Checksum.fold(sum)
        if layout.ipProtocol == IPProtocol.udp && checksum == 0 { checksum = 0xFFFF }
        buffer.storeBigEndian(checksum, at: l4 + field)
    }

    /// Cuts the packet to `mtu` bytes past its network-layer start (the L2 header stays whole). The IP
    /// length becomes min(`mtu`, its old value): bytes past the IP packet (an Ethernet FCS or padding)
    /// are cut first and never counted into it. tcprewrite sets it to `mtu` even then (growing it).
    static func truncate(toMTU mtu: Int, _ buffer: UnsafeMutableRawBufferPointer,
                         _ layout: inout PacketLayout) -> DropReason? {
        let start = layout.l3Offset != PacketHeaders.absentOffset ? Int(layout.l3Offset)
            : (layout.linkType == .ethernet ? min(14, layout.length) : 0)
        guard layout.length > start + mtu else { return nil }
        layout.length = start + mtu
        if layout.l4Offset != PacketHeaders.absentOffset, Int(layout.l4Offset) >= layout.length {
            layout.l4Offset = PacketHeaders.absentOffset
        }
        let bytes = view(buffer, layout)
        let l3 = Int(layout.l3Offset)
        switch layout.ipVersion {
        case 4 where bytes.contains(l3, size: 20, limit: bytes.count):
            buffer.storeBigEndian(UInt16(min(mtu, Int(bytes.u16(l3 + 2)))), at: l3 + 2)
        case 6 where bytes.contains(l3, size: 40, limit: bytes.count):
            buffer.storeBigEndian(UInt16(min(mtu - 40, Int(bytes.u16(l3 + 4)))), at: l3 + 4)
        default: return nil
        }
        fixChecksums(buffer, layout)
        return nil
    }
}
