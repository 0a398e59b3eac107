// Path: Sources/SluicePacket/Parse/IPHeaders.swift — IPv4 (options, fragments) and IPv6 (extension
// header chain, fragments).

extension LayerParser {
    /// An IPv4 header at `start`, then its upper layer unless it is a non-first fragment.
    @inline(__always) func parseIPv4(at start: Int, limit: Int, _ headers: inout PacketHeaders) -> DropReason? {
        guard bytes.contains(start, size: 20, limit: limit) else { return .truncatedIPv4 }
        let versionAndLength = bytes.u8(start)
        guard versionAndLength >> 4 == 4 else { return .badIPv4Version }
        let headerSize = Int(versionAndLength & 0x0F) * 4
        guard headerSize >= 20 else { return .badIPv4HeaderLength }
        guard bytes.contains(start, size: headerSize, limit: limit) else { return .truncatedIPv4 }
        let totalLength = Int(bytes.u16(start + 2))
        guard totalLength >= headerSize else { return .ipv4TotalLengthMismatch }
        let declaredEnd = start + totalLength
        guard declaredEnd <= limit || acceptsShortCapture else { return .ipv4TotalLengthMismatch }

        headers.l3Offset = Self.offset16(start)
        headers.etherType = EtherType.ipv4
        headers.ipVersion = 4
        headers.trafficClass = bytes.u8(start + 1)
        headers.fragmentID = UInt32(bytes.u16(start + 4))
        headers.ttl = bytes.u8(start + 8)
        headers.ipProtocol = bytes.u8(start + 9)
        headers.sourceAddress = IPAddress(ipv4: bytes.u32(start + 12))
        headers.destinationAddress = IPAddress(ipv4: bytes.u32(start + 16))
        if headerSize > 20 { headers.flags.insert(.ipv4Options) }
        let fragmentField = bytes.u16(start + 6)
        headers.fragmentOffset = fragmentField & 0x1FFF
        if fragmentField & 0x4000 != 0 { headers.flags.insert(.dontFragment) }
        if fragmentField & 0x2000 != 0 { headers.flags.insert(.moreFragments) }
        if fragmentField & 0x3FFF != 0 { headers.flags.insert(.fragment) }
        // Only the first fragment carries the upper-layer header.
        guard headers.fragmentOffset == 0 else { return nil }
        return parseTransport(
            headers.ipProtocol, at: start + headerSize, limit: min(declaredEnd, limit), declaredEnd: declaredEnd,
            &headers)
    }

    /// An IPv6 header at `start`, its extension headers (at most
    /// `PacketLimits.ipv6ExtensionHeaderCountMax`), then its upper layer unless it is a non-first
    /// fragment or has no next header. Jumbograms (payload length 0) are not supported.
    func parseIPv6(at start: Int, limit: Int, _ headers: inout PacketHeaders) -> DropReason? {
        guard bytes.contains(start, size: 40, limit: limit) else { return .truncatedIPv6 }
        let firstWord = bytes.u32(start)
        guard firstWord >> 28 == 6 else { return .badIPv6Version }
        let declaredEnd = start + 40 + Int(bytes.u16(start + 4))
        guard declaredEnd <= limit || acceptsShortCapture else { return .ipv6PayloadLengthMismatch }
        let end = min(declaredEnd, limit)

        headers.l3Offset = Self.offset16(start)
        headers.etherType = EtherType.ipv6
        headers.ipVersion = 6
        headers.trafficClass = UInt8(truncatingIfNeeded: firstWord >> 20)
        headers.ttl = bytes.u8(start + 7)
        headers.sourceAddress = IPAddress(high: bytes.u64(start + 8), low: bytes.u64(start + 16))
        headers.destinationAddress = IPAddress(high: bytes.u64(start + 24), low: bytes.u64(start + 32))
        var next = bytes.u8(start + 6)
        var cursor = start + 40
        var extensionCount = 0
        while Self.isIPv6Extension(next) {
            guard extensionCount < PacketLimits.ipv6ExtensionHeaderCountMax else { return .ipv6ExtensionChainTooLong }
            guard next != IPProtocol.hopByHop || extensionCount == 0 else { return .ipv6HopByHopNotFirst }
            guard bytes.contains(cursor, size: 8, limit: end) else { return .truncatedIPv6Extension }
            let size = extensionSize(next, at: cursor)
            guard bytes.contains(cursor, size: size, limit: end) else { return .truncatedIPv6Extension }
            if next == IPProtocol.fragment { readFragmentHeader(at: cursor, &headers) }
            next = bytes.u8(cursor)
            cursor += size
            extensionCount += 1
        }
        if extensionCount > 0 { headers.flags.insert(.ipv6Extensions) }
        headers.ipProtocol = next
        guard headers.fragmentOffset == 0, next != IPProtocol.noNextHeader else { return nil }
        return parseTransport(next, at: cursor, limit: end, declaredEnd: declaredEnd, &headers)
    }

    @inline(__always) static func isIPv6Extension(_ next: UInt8) -> Bool {
        switch next {
        case IPProtocol.hopByHop, IPProtocol.routing, IPProtocol.fragment, IPProtocol.authentication,
            IPProtocol.destinationOptions:
            return true
        default: return false
        }
    }

    /// Size of the extension header `type` at `offset` (its first 8 bytes are known to be present).
    @inline(__always) func extensionSize(_ type: UInt8, at offset: Int) -> Int {
        switch type {
        case IPProtocol.fragment: return 8
        case IPProtocol.authentication: return (Int(bytes.u8(offset + 1)) + 2) * 4  // RFC 4302: 4-byte units
        default: return (Int(bytes.u8(offset + 1)) + 1) * 8  // RFC 8200: 8-byte units, not counting the first
        }
    }

    /// An IPv6 fragment header: offset (13 bits, 8-byte units), M flag, identification.
    @inline(__always) func readFragmentHeader(at offset: Int, _ headers: inout PacketHeaders) {
        let field = bytes.u16(offset + 2)
        headers.fragmentOffset = field >> 3
        headers.fragmentID = bytes.u32(offset + 4)
        // An atomic fragment (offset 0, M clear, RFC 6946) is a whole packet: not flagged as a fragment.
        if field & 1 != 0 { headers.flags.insert(.moreFragments) }
        if field & 0xFFF9 != 0 { headers.flags.insert(.fragment) }
    }
}
