// Path: Sources/SluicePacket/Parse/LinkType.swift — the link-layer types the parser accepts.

/// A libpcap link type (DLT_/LINKTYPE_ value), as carried in `PacketMetadata.linkType`.
@frozen
public struct LinkType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// DLT_EN10MB: Ethernet II / 802.3, with 802.1Q and 802.1ad tags.
    @inlinable public static var ethernet: LinkType { LinkType(rawValue: 1) }
    /// DLT_RAW as some systems number it (LINKTYPE_RAW's in-kernel value on Linux/BSD): IPv4 or IPv6
    /// chosen by the version nibble.
    @inlinable public static var rawLegacy: LinkType { LinkType(rawValue: 12) }
    /// LINKTYPE_RAW (what pcap files carry): IPv4 or IPv6 chosen by the version nibble.
    @inlinable public static var raw: LinkType { LinkType(rawValue: 101) }
    /// DLT_LINUX_SLL: Linux cooked capture v1, a 16-byte header ending in the EtherType.
    @inlinable public static var linuxSLL: LinkType { LinkType(rawValue: 113) }
    /// DLT_IPV4: raw IPv4 only.
    @inlinable public static var ipv4: LinkType { LinkType(rawValue: 228) }
    /// DLT_IPV6: raw IPv6 only.
    @inlinable public static var ipv6: LinkType { LinkType(rawValue: 229) }
    /// DLT_LINUX_SLL2: Linux cooked capture v2, a 20-byte header starting with the EtherType.
    @inlinable public static var linuxSLL2: LinkType { LinkType(rawValue: 276) }

    /// True for the types the parser handles; others are dropped as `unsupportedLinkType`.
    @inlinable public var isSupported: Bool {
        switch rawValue {
        case 1, 12, 101, 113, 228, 229, 276: return true
        default: return false
        }
    }
}
