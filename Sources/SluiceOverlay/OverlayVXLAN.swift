// Path: Sources/SluiceOverlay/OverlayVXLAN.swift — VXLAN (RFC 7348) encapsulation and checked
// decapsulation of Ethernet frames over an IPv4/UDP underlay, in place in a packet buffer.
import Glibc
import SluicePacket

/// Why the overlay data plane dropped a packet. Raw values are stable counter slots (append only).
public enum OverlayDropReason: UInt8, CaseIterable, Sendable, CustomStringConvertible {
    /// The packet parser refused the frame (outer or inner headers malformed, VXLAN header cut short).
    case malformed = 0
    /// Underlay frame that is not IPv4/UDP to the VXLAN port.
    case notVXLAN
    /// Outer IPv4 addressed to another host.
    case notForThisHost
    /// Outer IPv4 header checksum wrong.
    case badOuterChecksum
    /// Outer IPv4 is a fragment or carries options (we never send either).
    case outerFragmentOrOptions
    /// Outer UDP checksum present and wrong.
    case badUDPChecksum
    /// VXLAN flags other than exactly the I flag, or reserved bits set.
    case badVXLANFlags
    /// VNI this host does not serve.
    case unknownVNI
    /// Inner frame is not Ethernet/IPv4 carrying TCP or UDP (the overlay carries nothing else).
    case innerNotTransport
    /// Inner destination is no local producer VM (producer side).
    case unknownProducerVM
    /// Reply from the underlay with no flow (consumer side) or VM packet of no known flow (producer side).
    case noFlow
    /// Packet to a service for which the consumer holds no lease, and none could be asked for (the
    /// request queue was full, or the last request failed and its retry pause has not passed).
    case noLease
    /// Packet of a flow whose lease ended (revoked, expired, producer moved).
    case leaseEnded
    /// VM packet to no service address and of no producer flow.
    case notOverlay
    /// The flow table is at its bound.
    case flowTableFull
    /// No room for the outer headers in the buffer, or the frame is longer than the port takes.
    case tooLarge
    /// The output port's TX ring was full.
    case txRingFull
    /// A frame from a VM port that is neither consumer nor producer VM traffic the config knows.
    case unknownVM
    /// Packet to a service for which the consumer holds no lease yet, one being asked for (the request
    /// hook fired for this consumer VM and service and no grant or failure came back yet), that could not
    /// be held: the pair's hold queue is full (`heldPerPairMax`), no hold queue is free (`heldPairsMax`),
    /// or the frame is longer than `heldFrameBytesMax`. Held packets are not drops (`OverlayVerdict.held`).
    case awaitingLease
    /// A held first packet dropped because the lease request for its consumer VM and service failed.
    case leaseAskFailed
    /// A held first packet dropped because no grant came within `heldTimeoutNs` of the first one held.
    case heldTimedOut
    /// A packet to a service whose grant came while every lease slot was taken (`leaseSlotCount`): the
    /// grant was refused and given back; held packets of the pair and the next ones until the pair is
    /// re-armed drop with this reason.
    case leaseSlotsFull

    public var description: String { Self.names[Int(rawValue)] }

    static let names = [
        "malformed", "notVXLAN", "notForThisHost", "badOuterChecksum", "outerFragmentOrOptions", "badUDPChecksum",
        "badVXLANFlags", "unknownVNI", "innerNotTransport", "unknownProducerVM", "noFlow", "noLease", "leaseEnded",
        "notOverlay", "flowTableFull", "tooLarge", "txRingFull", "unknownVM",
        "awaitingLease", "leaseAskFailed", "heldTimedOut", "leaseSlotsFull",
    ]
}

/// Drop counts by reason: a fixed inline table, one writer.
public struct OverlayDropCounters: Sendable, Equatable {
    public var slots: InlineArray<32, UInt64> = InlineArray(repeating: 0)
    public init() {}
    @inline(__always) public mutating func add(_ reason: OverlayDropReason, _ count: UInt64 = 1) {
        slots[Int(reason.rawValue)] &+= count
    }
    public subscript(_ reason: OverlayDropReason) -> UInt64 { slots[Int(reason.rawValue)] }
    /// Non-zero counts by name, for reports.
    public var nonZero: [(String, UInt64)] {
        OverlayDropReason.allCases.compactMap { self[$0] == 0 ? nil : ($0.description, self[$0]) }
    }
    public static func == (lhs: Self, rhs: Self) -> Bool {
        OverlayDropReason.allCases.allSatisfy { lhs[$0] == rhs[$0] }
    }
}

/// The outer headers one VXLAN packet gets: addresses of this host and the next underlay hop.
public struct OverlayUnderlayHeader: Sendable, Equatable {
    public var sourceMAC: MACAddress
    public var destinationMAC: MACAddress
    /// Host byte order.
    public var sourceIPv4: UInt32
    public var destinationIPv4: UInt32
    public var ttl: UInt8
    /// Compute the outer UDP checksum (RFC 7348 allows 0 over IPv4, which is the default and what Linux sends).
    public var computesUDPChecksum: Bool

    public init(sourceMAC: MACAddress, destinationMAC: MACAddress, sourceIPv4: UInt32, destinationIPv4: UInt32,
                ttl: UInt8 = 64, computesUDPChecksum: Bool = false) {
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.sourceIPv4 = sourceIPv4
        self.destinationIPv4 = destinationIPv4
        self.ttl = ttl
        self.computesUDPChecksum = computesUDPChecksum
    }
}

/// What a checked decapsulation found. Offsets count from the start of the received frame.
public struct OverlayDecapsulated: Sendable, Equatable {
    public var vni: UInt32 = 0
    public var outerSourceIPv4: UInt32 = 0
    public var outerSourceMAC = MACAddress(0)
    public var outerSourcePort: UInt16 = 0
    /// Inner Ethernet frame: offset and length.
    public var innerOffset = 0
    public var innerLength = 0
    public init() {}
}

/// A bounded set of VNIs a host serves (at most `capacityMax`), checked per packet by a short scan.
public struct OverlayVNISet: Sendable, Equatable {
    public static let capacityMax = 16
    var values: InlineArray<16, UInt32> = InlineArray(repeating: 0)
    public private(set) var count = 0
    public init(_ vnis: [UInt32]) {
        precondition(vnis.count <= Self.capacityMax, "more than \(Self.capacityMax) VNIs")
        for vni in vnis where !contains(vni) {
            precondition(vni <= OverlayLimits.vniMax, "VNI \(vni) is wider than 24 bits")
            values[count] = vni
            count += 1
        }
    }
    @inline(__always) public func contains(_ vni: UInt32) -> Bool {
        var index = 0
        while index < count {
            if values[index] == vni { return true }
            index += 1
        }
        return false
    }
    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.count == rhs.count && (0..<lhs.count).allSatisfy { lhs.values[$0] == rhs.values[$0] }
    }
}

/// VXLAN framing. Never allocates; the hot functions take the buffer and lengths and return sizes
/// or drop reasons, never throw.
public enum OverlayVXLAN {
    /// IANA VXLAN port.
    public static let udpPort: UInt16 = 4789
    /// Outer Ethernet (14) + IPv4 without options (20) + UDP (8) + VXLAN (8).
    public static let outerHeaderBytes = 50
    /// The VXLAN flags byte with only the I flag (VNI valid).
    public static let flagsVNIValid: UInt8 = 0x08

    /// UDP source port from the inner flow hash, in 49152...65535 (Linux `udp_flow_src_port` picks from
    /// the local port range the same way), so underlay ECMP spreads flows.
    @inlinable public static func sourcePort(flowHash: UInt32) -> UInt16 {
        49152 &+ UInt16(truncatingIfNeeded: flowHash & 0x3FFF)
    }

    /// Puts the outer headers in front of the inner frame in `buffer[0..<innerLength]`: moves the
    /// frame up by `outerHeaderBytes` and writes Ethernet/IPv4/UDP/VXLAN. Returns the new length, or
    /// nil if the buffer has no room (the frame is left untouched).
    public static func encapsulate(_ buffer: UnsafeMutableRawBufferPointer, innerLength: Int, vni: UInt32,
                                   sourcePort: UInt16, header: OverlayUnderlayHeader, ipID: UInt16) -> Int? {
        precondition(innerLength >= 0, "negative frame length")
        precondition(innerLength <= buffer.count, "frame longer than its buffer")
        precondition(vni <= OverlayLimits.vniMax, "VNI wider than 24 bits")
        guard innerLength <= buffer.count - outerHeaderBytes, innerLength + 36 <= 0xFFFF else { return nil }
        let base = buffer.baseAddress!
        memmove(base + outerHeaderBytes, base, innerLength)
        writeOuter(base, innerLength: innerLength, vni: vni, sourcePort: sourcePort, header: header, ipID: ipID)
        if header.computesUDPChecksum {
            let udpLength = innerLength + 16
            let sum = udpChecksum(UnsafeRawPointer(base + 34), length: udpLength,
                                  source: header.sourceIPv4, destination: header.destinationIPv4)
            store16(base, 40, sum)
        }
        return innerLength + outerHeaderBytes
    }

    /// Writes the 50 outer bytes at `base` (UDP checksum 0).
    @inline(__always)
    static func writeOuter(_ base: UnsafeMutableRawPointer, innerLength: Int, vni: UInt32, sourcePort: UInt16,
                           header: OverlayUnderlayHeader, ipID: UInt16) {
        store48(base, 0, header.destinationMAC.rawValue)
        store48(base, 6, header.sourceMAC.rawValue)
        store16(base, 12, EtherType.ipv4)
        let totalLength = UInt16(truncatingIfNeeded: innerLength + 36)
        store16(base, 14, 0x4500)
        store16(base, 16, totalLength)
        store16(base, 18, ipID)
        store16(base, 20, 0x4000)  // don't fragment
        store16(base, 22, UInt16(header.ttl) << 8 | UInt16(IPProtocol.udp))
        store16(base, 24, 0)
        store32(base, 26, header.sourceIPv4)
        store32(base, 30, header.destinationIPv4)
        // Header checksum over the ten words, the checksum word counted as zero.
        var sum: UInt32 = 0x4500 &+ UInt32(totalLength) &+ UInt32(ipID) &+ 0x4000
        sum &+= UInt32(header.ttl) << 8 | UInt32(IPProtocol.udp)
        sum &+= header.sourceIPv4 >> 16 &+ header.sourceIPv4 & 0xFFFF
        sum &+= header.destinationIPv4 >> 16 &+ header.destinationIPv4 & 0xFFFF
        store16(base, 24, ~fold(sum))
        store16(base, 34, sourcePort)
        store16(base, 36, udpPort)
        store16(base, 38, UInt16(truncatingIfNeeded: innerLength + 16))
        store16(base, 40, 0)
        store32(base, 42, UInt32(flagsVNIValid) << 24)
        store32(base, 46, vni << 8)
    }

    /// Checks a frame received on the underlay and finds its inner frame. `packet` is the parse of
    /// `bytes` (the caller parses once with a tunnel-following `PacketParser`; a parse failure is
    /// `malformed` before this is called). Checks, in order: outer IPv4/UDP to the VXLAN port, outer
    /// destination `localIPv4`, no fragment or options, header checksum, UDP checksum if not zero,
    /// flags exactly I and every reserved bit zero, VNI in `vnis`, inner Ethernet/IPv4 with TCP or UDP.
    public static func decapsulate(_ frame: UnsafeRawBufferPointer, packet: borrowing ParsedPacket, localIPv4: UInt32,
                                   vnis: borrowing OverlayVNISet, into result: inout OverlayDecapsulated)
        -> OverlayDropReason?
    {
        let bytes = PacketBytes(frame)
        let outer = packet.outer
        guard outer.ipVersion == 4, outer.ipProtocol == IPProtocol.udp, outer.flags.contains(.ports),
              outer.destinationPort == udpPort, outer.l2Offset == 0
        else { return .notVXLAN }
        guard outer.destinationAddress.ipv4 == localIPv4 else { return .notForThisHost }
        guard !outer.flags.contains(.fragment), !outer.flags.contains(.ipv4Options) else { return .outerFragmentOrOptions }
        let l3 = Int(outer.l3Offset)
        guard Checksum.isIPv4HeaderValid(bytes, at: l3) else { return .badOuterChecksum }
        let l4 = Int(outer.l4Offset)
        let udpLength = Int(bytes.u16(l4 + 4))
        guard packet.isTunnel else { return .malformed }  // the parser saw UDP/4789 but found no VXLAN
        let checksum = bytes.u16(l4 + 6)
        if checksum != 0 {
            let sum = udpChecksum(frame.baseAddress! + l4, length: udpLength, source: outer.sourceAddress.ipv4 ?? 0,
                                  destination: localIPv4, verifying: true)
            guard sum == 0 else { return .badUDPChecksum }
        }
        let vxlan = l4 + 8
        guard bytes.u8(vxlan) == flagsVNIValid, bytes.u16(vxlan + 1) == 0, bytes.u8(vxlan + 3) == 0,
              bytes.u8(vxlan + 7) == 0
        else { return .badVXLANFlags }
        guard vnis.contains(packet.vxlanVNI) else { return .unknownVNI }
        let inner = packet.inner
        guard inner.l2Offset != PacketHeaders.absentOffset, inner.ipVersion == 4, inner.vlanCount == 0,
              inner.flags.contains(.ports), !inner.flags.contains(.fragment),
              inner.ipProtocol == IPProtocol.tcp || inner.ipProtocol == IPProtocol.udp
        else { return .innerNotTransport }
        result.vni = packet.vxlanVNI
        result.outerSourceIPv4 = outer.sourceAddress.ipv4 ?? 0
        result.outerSourceMAC = outer.sourceMAC
        result.outerSourcePort = outer.sourcePort
        result.innerOffset = Int(inner.l2Offset)
        result.innerLength = l4 + udpLength - result.innerOffset
        return nil
    }

    /// The UDP checksum over the pseudo-header and `length` bytes at `udp`. With `verifying`, the
    /// stored checksum is included and a correct datagram sums to 0; otherwise the checksum field is
    /// skipped and the value to store is returned (0 is sent as 0xFFFF).
    public static func udpChecksum(_ udp: UnsafeRawPointer, length: Int, source: UInt32, destination: UInt32,
                                   verifying: Bool = false) -> UInt16 {
        var sum: UInt32 = source >> 16 &+ source & 0xFFFF &+ destination >> 16 &+ destination & 0xFFFF
        sum &+= UInt32(IPProtocol.udp) &+ UInt32(length)
        var offset = 0
        while offset + 1 < length {
            if verifying || offset != 6 {
                sum &+= UInt32(UInt16(bigEndian: udp.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
            }
            offset += 2
            if sum & 0x8000_0000 != 0 { sum = sum & 0xFFFF &+ sum >> 16 }
        }
        if offset < length { sum &+= UInt32(udp.load(fromByteOffset: offset, as: UInt8.self)) << 8 }
        let result = ~fold(sum)
        if verifying { return result }
        return result == 0 ? 0xFFFF : result
    }

    @inline(__always) static func fold(_ sum: UInt32) -> UInt16 {
        var folded = (sum & 0xFFFF) &+ (sum >> 16)
        folded = (folded & 0xFFFF) &+ (folded >> 16)
        return UInt16(truncatingIfNeeded: folded)
    }
}

// Unaligned big-endian stores; callers check bounds first (every offset here is inside a length
// the function checked).
@inline(__always) func store16(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: UInt16) {
    base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
}
@inline(__always) func store32(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: UInt32) {
    base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
}
@inline(__always) func store48(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: UInt64) {
    store16(base, offset, UInt16(truncatingIfNeeded: value >> 32))
    store32(base, offset + 2, UInt32(truncatingIfNeeded: value))
}
@inline(__always) func load16(_ base: UnsafeRawPointer, _ offset: Int) -> UInt16 {
    UInt16(bigEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
}
@inline(__always) func load32(_ base: UnsafeRawPointer, _ offset: Int) -> UInt32 {
    UInt32(bigEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
}
