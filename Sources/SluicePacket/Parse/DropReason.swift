// Path: Sources/SluicePacket/Parse/DropReason.swift — why a packet was dropped, and the counters per reason.
import Synchronization

/// Why the packet path dropped a packet. Parsing reasons come first, then action reasons. Each has a
/// slot in `DropCounters`; the raw values are stable slot indices (append new cases, never reorder).
public enum DropReason: UInt8, Error, CaseIterable, Sendable, CustomStringConvertible {
    // Link layer.
    case unsupportedLinkType = 0
    case truncatedEthernet
    case truncatedCookedHeader  // Linux SLL (16 bytes) or SLL2 (20 bytes) header cut short
    case truncatedVLAN
    case vlanDepthExceeded  // more tags than `PacketLimits.vlanTagCountMax` (also on a VLAN push)
    // Network layer.
    case truncatedIP  // raw link type with no bytes to read the version from
    case badIPVersion  // raw link type whose version nibble is neither 4 nor 6
    case truncatedIPv4
    case badIPv4Version
    case badIPv4HeaderLength  // IHL below 5
    case ipv4TotalLengthMismatch  // total length below the header, or past the captured bytes
    case truncatedIPv6
    case badIPv6Version
    case ipv6PayloadLengthMismatch  // payload length past the captured bytes
    case truncatedIPv6Extension
    case ipv6ExtensionChainTooLong  // more than `PacketLimits.ipv6ExtensionHeaderCountMax`
    case ipv6HopByHopNotFirst  // RFC 8200 4.1: hop-by-hop options only right after the fixed header
    // Transport layer and tunnels.
    case truncatedTCP
    case badTCPDataOffset  // data offset below 5 words
    case truncatedUDP
    case badUDPLength  // below 8, or past the IP payload
    case truncatedICMP
    case truncatedICMPv6
    case truncatedVXLAN
    case badVXLANFlags  // the I flag (VNI valid) is clear
    // Actions.
    case droppedByRule
    case ttlExpired  // TTL or hop limit of 0 or 1 before a decrement
    case noRoomForVLAN  // a VLAN push needs `PacketLimits.vlanTagSizeBytes` past the packet's length
    case rewriteNeedsEthernet  // a MAC or VLAN rewrite on a packet that is not Ethernet
    case notClassified  // reached an action stage without passing a parse stage first

    public var description: String { Self.names[Int(rawValue)] }

    static let names = [
        "unsupportedLinkType", "truncatedEthernet", "truncatedCookedHeader", "truncatedVLAN",
        "vlanDepthExceeded", "truncatedIP", "badIPVersion", "truncatedIPv4", "badIPv4Version",
        "badIPv4HeaderLength", "ipv4TotalLengthMismatch", "truncatedIPv6", "badIPv6Version",
        "ipv6PayloadLengthMismatch", "truncatedIPv6Extension", "ipv6ExtensionChainTooLong",
        "ipv6HopByHopNotFirst", "truncatedTCP", "badTCPDataOffset", "truncatedUDP", "badUDPLength",
        "truncatedICMP", "truncatedICMPv6", "truncatedVXLAN", "badVXLANFlags", "droppedByRule",
        "ttlExpired", "noRoomForVLAN", "rewriteNeedsEthernet", "notClassified",
    ]
}

/// A fixed-size table of drop counts, one slot per `DropReason` raw value. A value type with inline
/// storage: counting never allocates. One writer; publish to a `DropCounterTable` to share.
@frozen
public struct DropCounters: Sendable {
    @usableFromInline var slots: InlineArray<64, UInt64>

    public init() { slots = InlineArray(repeating: 0) }

    /// Counts one drop for `reason`.
    @inlinable public mutating func count(_ reason: DropReason) {
        slots[Int(reason.rawValue)] &+= 1
    }

    /// Drops counted for `reason`.
    @inlinable public subscript(reason: DropReason) -> UInt64 {
        slots[Int(reason.rawValue)]
    }

    /// Drops counted over all reasons.
    public var total: UInt64 {
        var sum: UInt64 = 0
        for reason in DropReason.allCases { sum &+= self[reason] }
        return sum
    }

    /// Adds every count of `other` into this table.
    public mutating func add(_ other: DropCounters) {
        for slot in 0..<PacketLimits.dropReasonSlotCount { slots[slot] &+= other.slots[slot] }
    }
}

/// Drop counts shared between the stages that write them and anyone reading them (the CLI's report).
/// Stages add per-burst deltas with relaxed atomic adds, so several stages and workers may share one
/// table. Allocated once; stages hold it without reference counting (see `ParseClassifyStage`).
public final class DropCounterTable: Sendable {
    @usableFromInline let slots: InlineArray<64, Atomic<UInt64>>

    public init() {
        precondition(DropReason.allCases.count <= PacketLimits.dropReasonSlotCount, "more reasons than slots")
        slots = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// Adds the non-zero counts of `pending` whose bit is set in `dirtyMask` (bit n = raw value n),
    /// then clears them in `pending`. Called once per burst that dropped anything; never blocks.
    @inlinable public func publish(_ pending: inout DropCounters, dirtyMask: UInt64) {
        var mask = dirtyMask
        while mask != 0 {
            let slot = mask.trailingZeroBitCount
            mask &= mask &- 1
            slots[slot].wrappingAdd(pending.slots[slot], ordering: .relaxed)
            pending.slots[slot] = 0
        }
    }

    /// A snapshot of every count (each slot read on its own; not one atomic instant).
    public func snapshot() -> DropCounters {
        var counters = DropCounters()
        for slot in 0..<PacketLimits.dropReasonSlotCount {
            counters.slots[slot] = slots[slot].load(ordering: .relaxed)
        }
        return counters
    }
}
