// Path: Sources/SluicePacket/Parse/TransportHeaders.swift — TCP, UDP, ICMP and ICMPv6 headers.

extension LayerParser {
    /// The upper-layer header `proto` at `start`, readable up to `limit`. `declaredEnd` is where the IP
    /// header says the payload ends (past `limit` only for a cut capture). Other protocols (GRE, ESP,
    /// SCTP...) get an L4 offset and nothing else.
    @inline(__always) func parseTransport(
        _ proto: UInt8, at start: Int, limit: Int, declaredEnd: Int, _ headers: inout PacketHeaders
    ) -> DropReason? {
        headers.l4Offset = Self.offset16(start)
        switch proto {
        case IPProtocol.tcp: return parseTCP(at: start, limit: limit, &headers)
        case IPProtocol.udp: return parseUDP(at: start, limit: limit, declaredEnd: declaredEnd, &headers)
        case IPProtocol.icmp where headers.ipVersion == 4:
            return parseICMP(at: start, size: 8, limit: limit, reason: .truncatedICMP, &headers)
        case IPProtocol.icmpv6 where headers.ipVersion == 6:
            return parseICMP(at: start, size: 4, limit: limit, reason: .truncatedICMPv6, &headers)
        default: return nil
        }
    }

    @inline(__always) func parseTCP(at start: Int, limit: Int, _ headers: inout PacketHeaders) -> DropReason? {
        guard bytes.contains(start, size: 20, limit: limit) else { return .truncatedTCP }
        let headerSize = Int(bytes.u8(start + 12) >> 4) * 4
        guard headerSize >= 20 else { return .badTCPDataOffset }
        guard bytes.contains(start, size: headerSize, limit: limit) else { return .truncatedTCP }
        headers.sourcePort = bytes.u16(start)
        headers.destinationPort = bytes.u16(start + 2)
        headers.tcpFlags = bytes.u8(start + 13)
        headers.payloadOffset = Self.offset16(start + headerSize)
        headers.flags.insert([.ports, .tcp])
        return nil
    }

    /// The UDP length must cover the header and fit the IP payload; a first fragment is exempt from
    /// the second check (its UDP length spans every fragment).
    @inline(__always) func parseUDP(at start: Int, limit: Int, declaredEnd: Int, _ headers: inout PacketHeaders) -> DropReason? {
        guard bytes.contains(start, size: 8, limit: limit) else { return .truncatedUDP }
        let length = Int(bytes.u16(start + 4))
        guard length >= 8 else { return .badUDPLength }
        guard start + length <= declaredEnd || headers.flags.contains(.moreFragments) else { return .badUDPLength }
        headers.sourcePort = bytes.u16(start)
        headers.destinationPort = bytes.u16(start + 2)
        headers.payloadOffset = Self.offset16(start + 8)
        headers.flags.insert(.ports)
        return nil
    }

    /// ICMP (8-byte header) or ICMPv6 (4-byte header): type and code.
    func parseICMP(
        at start: Int, size: Int, limit: Int, reason: DropReason, _ headers: inout PacketHeaders
    ) -> DropReason? {
        guard bytes.contains(start, size: size, limit: limit) else { return reason }
        headers.icmpType = bytes.u8(start)
        headers.icmpCode = bytes.u8(start + 1)
        headers.payloadOffset = Self.offset16(start + size)
        headers.flags.insert(.icmp)
        return nil
    }
}
