// Path: Sources/SluicePacketIO/Pcap/CaptureSplit.swift — several readers of one capture, each taking
// the flows of its share (`sluice replay` fanned out over instances, as RSS splits a NIC's input).

/// Which records one of `count` sources reading the same capture takes: those whose flow hashes to
/// its `index`. Both directions of a conversation hash alike (the hash of the two endpoints is
/// symmetric), so each flow goes through one instance, in capture order. Ethernet frames (link type 1,
/// up to two VLAN tags) hash their IPv4 or IPv6 addresses, plus TCP, UDP or SCTP ports when the
/// packet is not an IPv4 fragment (fragments hash their addresses only, so they stay together; IPv6
/// extension headers are not walked, so a fragment header hashes addresses only too); other frames
/// hash their first 32 bytes. Pure and allocation-free: called once per record read, by every reader.
public struct CaptureSplit: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    /// Most readers one capture is split over.
    public static let countMax = 64

    public init(index: Int, count: Int) {
        precondition(count >= 2 && count <= Self.countMax, "a split has 2...countMax readers")
        precondition(index >= 0 && index < count, "a reader's index is below the reader count")
        self.index = index
        self.count = count
    }

    public var description: String { "flows \(index) of \(count)" }

    /// True when the record's flow is this reader's.
    @inline(__always)
    public func takes(_ frame: UnsafeRawBufferPointer, linkType: Int) -> Bool {
        // Multiply-shift range reduction of the hash's high half: no division on the read path.
        Int(truncatingIfNeeded: ((Self.flowHash(frame, linkType: linkType) >> 32) &* UInt64(count)) >> 32) == index
    }

    /// A symmetric hash of the frame's flow (see the type's contract): the XOR of the two endpoints'
    /// addresses and of their ports (XOR does not care which side is which), mixed by one multiply.
    /// Called for every record every reader reads, so it stays a handful of loads and one multiply.
    /// Any bytes are safe: every read is bounds-checked against the frame's length.
    @inline(__always)
    public static func flowHash(_ frame: UnsafeRawBufferPointer, linkType: Int) -> UInt64 {
        let length = frame.count
        guard linkType == 1, length >= 34, let base = frame.baseAddress else { return prefixHash(frame) }
        var l3 = 14
        var etherType = UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        if etherType == 0x8100 || etherType == 0x88A8 {
            // Up to two tags; the (inner) type follows each.
            etherType = UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt16.self))
            l3 = 18
            if etherType == 0x8100, length >= 38 {
                etherType = UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 20, as: UInt16.self))
                l3 = 22
            }
        }
        var key: UInt64
        var proto: UInt8
        var l4: Int
        switch etherType {
        case 0x0800 where length >= l3 + 20:
            let versionAndLength = base.load(fromByteOffset: l3, as: UInt8.self)
            proto = base.load(fromByteOffset: l3 + 9, as: UInt8.self)
            key = UInt64(base.loadUnaligned(fromByteOffset: l3 + 12, as: UInt32.self)
                ^ base.loadUnaligned(fromByteOffset: l3 + 16, as: UInt32.self))
            // MF set or an offset: a fragment, hashed by its addresses only so all of them stay together.
            if base.loadUnaligned(fromByteOffset: l3 + 6, as: UInt16.self) & UInt16(bigEndian: 0x3FFF) != 0 { proto = 0 }
            l4 = l3 + max(Int(versionAndLength & 0x0F) * 4, 20)
        case 0x86DD where length >= l3 + 40:
            proto = base.load(fromByteOffset: l3 + 6, as: UInt8.self)
            key = base.loadUnaligned(fromByteOffset: l3 + 8, as: UInt64.self)
                ^ base.loadUnaligned(fromByteOffset: l3 + 16, as: UInt64.self)
                ^ base.loadUnaligned(fromByteOffset: l3 + 24, as: UInt64.self)
                ^ base.loadUnaligned(fromByteOffset: l3 + 32, as: UInt64.self)
            l4 = l3 + 40
        default:
            return prefixHash(frame)
        }
        if proto == 6 || proto == 17 || proto == 132, length >= l4 + 4 {
            let ports = base.loadUnaligned(fromByteOffset: l4, as: UInt32.self)
            key ^= UInt64((ports ^ (ports >> 16)) & 0xFFFF) << 40
        }
        key ^= UInt64(proto) << 32
        return (key ^ (key >> 29)) &* 0x9E37_79B9_7F4A_7C15
    }

    /// A frame that is not IP over Ethernet: its first 32 bytes (addresses and type for most links).
    static func prefixHash(_ frame: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0x9E37_79B9_7F4A_7C15
        for byte in frame.prefix(32) { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return mix(hash)
    }

    /// splitmix64's finaliser: every input bit moves every output bit.
    @inline(__always) static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
