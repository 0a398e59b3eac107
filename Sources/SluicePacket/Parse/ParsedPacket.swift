// Path: Sources/SluicePacket/Parse/ParsedPacket.swift — what a parse finds: offsets and fields of each
// layer, in a fixed-size value.

/// Facts about one layer's headers beyond their offsets.
@frozen
public struct HeaderFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The layer has an Ethernet header (MACs valid).
    @inlinable public static var ethernet: HeaderFlags { HeaderFlags(rawValue: 1 << 0) }
    /// IPv4 header with options (IHL above 5).
    @inlinable public static var ipv4Options: HeaderFlags { HeaderFlags(rawValue: 1 << 1) }
    /// IPv6 header followed by at least one extension header.
    @inlinable public static var ipv6Extensions: HeaderFlags { HeaderFlags(rawValue: 1 << 2) }
    /// A fragment (more-fragments set or a non-zero offset). Only the first has an L4 header.
    @inlinable public static var fragment: HeaderFlags { HeaderFlags(rawValue: 1 << 3) }
    /// The more-fragments flag.
    @inlinable public static var moreFragments: HeaderFlags { HeaderFlags(rawValue: 1 << 4) }
    /// The IPv4 don't-fragment flag.
    @inlinable public static var dontFragment: HeaderFlags { HeaderFlags(rawValue: 1 << 5) }
    /// The L4 header was parsed and `sourcePort`/`destinationPort` are valid (TCP, UDP).
    @inlinable public static var ports: HeaderFlags { HeaderFlags(rawValue: 1 << 6) }
    /// `tcpFlags` is valid.
    @inlinable public static var tcp: HeaderFlags { HeaderFlags(rawValue: 1 << 7) }
    /// `icmpType`/`icmpCode` are valid (ICMP or ICMPv6).
    @inlinable public static var icmp: HeaderFlags { HeaderFlags(rawValue: 1 << 8) }
    /// The source MAC came from a Linux cooked header's link-layer address.
    @inlinable public static var cookedSourceMAC: HeaderFlags { HeaderFlags(rawValue: 1 << 9) }
}

/// The headers of one encapsulation layer. Offsets count from the start of the packet's bytes (also
/// for an inner packet) and are `absentOffset` when the layer has no such header. Fields of absent
/// headers are zero.
@frozen
public struct PacketHeaders: Hashable, Sendable {
    @inlinable public static var absentOffset: UInt16 { 0xFFFF }

    /// Start of the Ethernet header (absent on raw and cooked link types).
    public var l2Offset: UInt16
    /// Start of the IPv4/IPv6 header (absent for non-IP EtherTypes).
    public var l3Offset: UInt16
    /// Start of the upper-layer header after any IPv6 extension headers (absent for non-first fragments).
    public var l4Offset: UInt16
    /// First byte after the TCP/UDP/ICMP header (absent when that header was not parsed).
    public var payloadOffset: UInt16
    /// The EtherType after any VLAN tags (0x0800/0x86DD for raw IP link types).
    public var etherType: UInt16
    /// VLAN id (12 bits) of the outer and inner tag; valid per `vlanCount`.
    public var outerVLAN: UInt16
    public var innerVLAN: UInt16
    public var vlanCount: UInt8
    /// 4, 6, or 0 for non-IP.
    public var ipVersion: UInt8
    /// The upper-layer protocol (IPv4 protocol, or the last IPv6 next header after extensions).
    public var ipProtocol: UInt8
    /// IPv4 TTL or IPv6 hop limit.
    public var ttl: UInt8
    /// IPv4 TOS or IPv6 traffic class: DSCP in the high 6 bits, ECN in the low 2.
    public var trafficClass: UInt8
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN); valid with `.tcp`.
    public var tcpFlags: UInt8
    public var icmpType: UInt8
    public var icmpCode: UInt8
    public var flags: HeaderFlags
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// Fragment offset in 8-byte units (IPv4 header or IPv6 fragment header).
    public var fragmentOffset: UInt16
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    public var fragmentID: UInt32
    public var sourceMAC: MACAddress
    public var destinationMAC: MACAddress
    /// IPv4 addresses are IPv4-mapped (see `IPAddress`).
    public var sourceAddress: IPAddress
    public var destinationAddress: IPAddress

    /// No headers found yet.
    @inlinable public init() {
        l2Offset = Self.absentOffset
        l3Offset = Self.absentOffset
        l4Offset = Self.absentOffset
        payloadOffset = Self.absentOffset
        etherType = 0
        outerVLAN = 0
        innerVLAN = 0
        vlanCount = 0
        ipVersion = 0
        ipProtocol = 0
        ttl = 0
        trafficClass = 0
        tcpFlags = 0
        icmpType = 0
        icmpCode = 0
        flags = []
        sourcePort = 0
        destinationPort = 0
        fragmentOffset = 0
        fragmentID = 0
        sourceMAC = MACAddress(0)
        destinationMAC = MACAddress(0)
        sourceAddress = .zero
        destinationAddress = .zero
    }

    /// True for IPv4 or IPv6.
    @inlinable public var isIP: Bool { ipVersion != 0 }
    /// True if the layer has an L4 header (not a non-first fragment, not non-IP).
    @inlinable public var hasL4: Bool { l4Offset != Self.absentOffset }
}

/// The result of a successful parse: the outer headers, and the inner ones when the packet is a VXLAN
/// tunnel packet. A fixed-size value (no references): parse into one reused variable per loop.
@frozen
public struct ParsedPacket: Hashable, Sendable {
    /// Link type the packet was parsed as.
    public var linkType: LinkType
    /// Bytes parsed (the packet's captured length).
    public var length: UInt32
    public var outer: PacketHeaders
    /// True if `outer` is UDP to port 4789 carrying a valid VXLAN header and `inner` was parsed.
    public var isTunnel: Bool
    /// VXLAN network identifier (24 bits); valid when `isTunnel`.
    public var vxlanVNI: UInt32
    /// The inner packet's headers (its `l2Offset` is the inner Ethernet header); all absent unless `isTunnel`.
    public var inner: PacketHeaders

    @inlinable public init() {
        linkType = .ethernet
        length = 0
        outer = PacketHeaders()
        isTunnel = false
        vxlanVNI = 0
        inner = PacketHeaders()
    }

    /// The outer L3 and L4 offsets (what `PacketMetadata` carries).
    @inlinable public var l3Offset: UInt16 { outer.l3Offset }
    @inlinable public var l4Offset: UInt16 { outer.l4Offset }
}
