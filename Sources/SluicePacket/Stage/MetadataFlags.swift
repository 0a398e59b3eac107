// Path: Sources/SluicePacket/Stage/MetadataFlags.swift — what the parse stage leaves in
// `PacketMetadata.flags` for the stages after it.
import SluiceCore

/// The layout of `PacketMetadata.flags` after `ParseClassifyStage`: the low 8 bits are the outer
/// upper-layer IP protocol (0 for non-IP), the high 8 bits the flags below. With `l3Offset` and
/// `l4Offset` this lets later stages act without parsing again.
@frozen
public struct MetadataFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Set by `ParseClassifyStage`: the other fields are valid.
    @inlinable public static var classified: MetadataFlags { MetadataFlags(rawValue: 1 << 8) }
    @inlinable public static var ipv4: MetadataFlags { MetadataFlags(rawValue: 1 << 9) }
    @inlinable public static var ipv6: MetadataFlags { MetadataFlags(rawValue: 1 << 10) }
    /// The outer Ethernet header has at least one VLAN tag.
    @inlinable public static var vlan: MetadataFlags { MetadataFlags(rawValue: 1 << 11) }
    /// An IP fragment (the first one included).
    @inlinable public static var fragment: MetadataFlags { MetadataFlags(rawValue: 1 << 12) }
    /// TCP or UDP with ports at `l4Offset` and `l4Offset + 2`.
    @inlinable public static var ports: MetadataFlags { MetadataFlags(rawValue: 1 << 13) }
    /// A VXLAN packet whose inner frame was parsed.
    @inlinable public static var tunnel: MetadataFlags { MetadataFlags(rawValue: 1 << 14) }
    /// Set by `ActionStage` when a rule rewrote the packet.
    @inlinable public static var rewritten: MetadataFlags { MetadataFlags(rawValue: 1 << 15) }

    /// The flags and protocol of a parsed packet's outer headers.
    @inlinable @inline(__always) public init(_ packet: ParsedPacket) {
        var raw = UInt16(packet.outer.ipProtocol) | Self.classified.rawValue
        if packet.outer.ipVersion == 4 { raw |= Self.ipv4.rawValue }
        if packet.outer.ipVersion == 6 { raw |= Self.ipv6.rawValue }
        if packet.outer.vlanCount > 0 { raw |= Self.vlan.rawValue }
        if packet.outer.flags.contains(.fragment) { raw |= Self.fragment.rawValue }
        if packet.outer.flags.contains(.ports) { raw |= Self.ports.rawValue }
        if packet.isTunnel { raw |= Self.tunnel.rawValue }
        self.init(rawValue: raw)
    }

    /// The outer upper-layer protocol (meaningful with `.ipv4` or `.ipv6`).
    @inlinable public var ipProtocol: UInt8 { UInt8(truncatingIfNeeded: rawValue) }

    /// The outer IP version: 4, 6 or 0.
    @inlinable public var ipVersion: UInt8 { contains(.ipv4) ? 4 : (contains(.ipv6) ? 6 : 0) }
}
