// Path: Sources/SluicePacket/PacketLimits.swift — every bound the packet path enforces, in one place.

/// Explicit bounds for header chains, tables and rules in SluicePacket. SluiceCore's `Limits` holds
/// the runtime's bounds; these are the parser's and classifier's.
public enum PacketLimits {
    /// Most 802.1Q/802.1ad tags in one Ethernet header (QinQ). A third tag is `vlanDepthExceeded`.
    public static let vlanTagCountMax = 2
    /// Most IPv6 extension headers followed before the upper layer. More is `ipv6ExtensionChainTooLong`.
    public static let ipv6ExtensionHeaderCountMax = 8
    /// Most encapsulations parsed: the outer packet plus one VXLAN inner packet. A tunnel inside the
    /// inner packet is left unparsed (its UDP payload), never followed.
    public static let tunnelDepthMax = 1
    /// Most entries in a classifier's source table (MACs, VLAN ids, prefixes or ports).
    public static let sourceEntryCountMax = 64
    /// Most rules in a rule table; the first matching rule wins (a linear walk: 256 rules cost
    /// about 10x an empty table per packet, see docs/BENCHMARKS.md).
    public static let ruleCountMax = 1024
    /// Most rewrites a table applies to every forwarded packet (`RuleTable.tableRewrites`).
    public static let tableRewritesMax = 16
    /// Smallest MTU `Rewrite.truncateToMTU` takes (IPv4's minimum, RFC 791).
    public static let mtuMin: UInt16 = 68
    /// Most rewrites one rule applies, in order.
    public static let rewritesPerRuleMax = 4
    /// Slots in a drop counter table; `DropReason.allCases.count` must stay at or below it (a test checks).
    public static let dropReasonSlotCount = 64
    /// Bytes a VLAN push adds: the caller's buffer must have this much room past the packet's length.
    public static let vlanTagSizeBytes = 4
}
