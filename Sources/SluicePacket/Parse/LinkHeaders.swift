// Path: Sources/SluicePacket/Parse/LinkHeaders.swift — Ethernet, 802.1Q/802.1ad tags and Linux cooked
// headers, up to the network layer.

extension LayerParser {
    /// An Ethernet header at `start`, its tags, and the network layer after them.
    @inline(__always) func parseEthernet(at start: Int, limit: Int, _ headers: inout PacketHeaders) -> DropReason? {
        guard bytes.contains(start, size: 14, limit: limit) else { return .truncatedEthernet }
        headers.l2Offset = Self.offset16(start)
        headers.destinationMAC = MACAddress(bytes.u48(start))
        headers.sourceMAC = MACAddress(bytes.u48(start + 6))
        headers.flags.insert(.ethernet)
        return parseEtherType(bytes.u16(start + 12), at: start + 14, limit: limit, &headers)
    }

    /// DLT_LINUX_SLL: packet type, ARPHRD type, address length, 8 address bytes, protocol (16 bytes).
    func parseSLL(_ headers: inout PacketHeaders) -> DropReason? {
        let limit = bytes.count
        guard bytes.contains(0, size: 16, limit: limit) else { return .truncatedCookedHeader }
        if bytes.u16(4) == 6 { setCookedSourceMAC(bytes.u48(6), &headers) }
        return parseEtherType(bytes.u16(14), at: 16, limit: limit, &headers)
    }

    /// DLT_LINUX_SLL2: protocol, reserved, interface index, ARPHRD type, packet type, address length,
    /// 8 address bytes (20 bytes).
    func parseSLL2(_ headers: inout PacketHeaders) -> DropReason? {
        let limit = bytes.count
        guard bytes.contains(0, size: 20, limit: limit) else { return .truncatedCookedHeader }
        if bytes.u8(11) == 6 { setCookedSourceMAC(bytes.u48(12), &headers) }
        return parseEtherType(bytes.u16(0), at: 20, limit: limit, &headers)
    }

    @inline(__always) func setCookedSourceMAC(_ address: UInt64, _ headers: inout PacketHeaders) {
        headers.sourceMAC = MACAddress(address)
        headers.flags.insert(.cookedSourceMAC)
    }

    /// Up to `PacketLimits.vlanTagCountMax` VLAN tags starting at `start` when `type` is a TPID, then the
    /// network layer. A non-IP EtherType (ARP, LLDP, an 802.3 length) ends the parse successfully.
    @inline(__always) func parseEtherType(_ type: UInt16, at start: Int, limit: Int, _ headers: inout PacketHeaders) -> DropReason? {
        var type = type
        var cursor = start
        var tagCount = 0
        while EtherType.isVLAN(type) {
            guard tagCount < PacketLimits.vlanTagCountMax else { return .vlanDepthExceeded }
            guard bytes.contains(cursor, size: 4, limit: limit) else { return .truncatedVLAN }
            let vlanID = bytes.u16(cursor) & 0x0FFF
            if tagCount == 0 { headers.outerVLAN = vlanID } else { headers.innerVLAN = vlanID }
            type = bytes.u16(cursor + 2)
            cursor += 4
            tagCount += 1
        }
        headers.vlanCount = UInt8(truncatingIfNeeded: tagCount)
        headers.etherType = type
        switch type {
        case EtherType.ipv4: return parseIPv4(at: cursor, limit: limit, &headers)
        case EtherType.ipv6: return parseIPv6(at: cursor, limit: limit, &headers)
        default: return nil
        }
    }
}
