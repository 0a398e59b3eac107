// Path: Sources/SluicePacketIO/Pcap/CaptureSplit.swift — several readers of one capture, each taking
// the flows of its share (`sluice replay` fanned out over instances, as RSS splits a NIC's input).

/// Which records one of `count` sources reading the same capture takes: those whose flow hashes to
/// its `index`. Both directions of a conversation hash alike (the hash of the two endpoints is
/// symmetric), so each flow goes through one instance, in capture order, as with RSS. The link types
/// it reads (`splits(linkType:)`): Ethernet (1, up to two VLAN tags), raw IP (101, 228, 229) and Linux
/// cooked captures (113, 276). IPv4 and IPv6 packets hash their addresses, plus TCP, UDP or SCTP ports
/// when the packet is not a fragment; fragments hash their addresses only, so all fragments of a
/// datagram stay together (IPv6 extension headers are not walked: a fragment header hashes addresses
/// only too). As with RSS, a flow that mixes fragmented and whole packets (large UDP datagrams) can
/// have the two kinds on different instances. Other packets hash their MAC addresses (XORed, so
/// symmetric) and EtherType on Ethernet, their protocol field on cooked captures. Pure and
/// allocation-free: called once per record read, by every reader.
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

    /// True for the link types `flowHash` reads; a capture of another type cannot be split by flow.
    public static func splits(linkType: Int) -> Bool { [1, 101, 228, 229, 113, 276].contains(linkType) }

    /// A symmetric hash of the frame's flow (see the type's contract): the XOR of the two endpoints'
    /// addresses and of their ports (XOR does not care which side is which), mixed by one multiply.
    /// Called for every record every reader reads, so it stays a handful of loads and one multiply.
    /// Any bytes are safe: every read is bounds-checked against the frame's length; a frame too short
    /// for its link header, or of a link type `splits` refuses, hashes to 0.
    @inline(__always)
    public static func flowHash(_ frame: UnsafeRawBufferPointer, linkType: Int) -> UInt64 {
        let length = frame.count
        guard let base = frame.baseAddress else { return 0 }
        @inline(__always) func u16(_ at: Int) -> UInt16 {
            UInt16(bigEndian: base.loadUnaligned(fromByteOffset: at, as: UInt16.self))
        }
        // Where L3 starts and what it is (an EtherType), per link type.
        var l3: Int
        var etherType: UInt16
        switch linkType {
        case 1:  // Ethernet, up to two VLAN tags
            guard length >= 14 else { return 0 }
            l3 = 14
            etherType = u16(12)
            if etherType == 0x8100 || etherType == 0x88A8, length >= 18 {
                etherType = u16(16)
                l3 = 18
                if etherType == 0x8100, length >= 22 {
                    etherType = u16(20)
                    l3 = 22
                }
            }
        case 101, 228, 229:  // raw IP: the version nibble says which
            guard length >= 1 else { return 0 }
            l3 = 0
            etherType = base.load(as: UInt8.self) >> 4 == 6 ? 0x86DD : 0x0800
        case 113:  // Linux cooked (SLL): protocol at 14, L3 at 16
            guard length >= 16 else { return 0 }
            l3 = 16
            etherType = u16(14)
        case 276:  // Linux cooked v2 (SLL2): protocol at 0, L3 at 20
            guard length >= 20 else { return 0 }
            l3 = 20
            etherType = u16(0)
        default:
            return 0
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
            // Not IP, or cut short: Ethernet hashes its two MACs (XORed: symmetric) and type; others their type.
            key = UInt64(etherType)
            if linkType == 1 {  // length >= 14: both 6-byte addresses are there
                let destination = UInt64(base.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) | UInt64(u16(4)) << 32
                let source = UInt64(base.loadUnaligned(fromByteOffset: 6, as: UInt32.self)) | UInt64(u16(10)) << 32
                key ^= (destination ^ source) << 16
            }
            return mix(key)
        }
        if proto == 6 || proto == 17 || proto == 132, length >= l4 + 4 {
            let ports = base.loadUnaligned(fromByteOffset: l4, as: UInt32.self)
            key ^= UInt64((ports ^ (ports >> 16)) & 0xFFFF) << 40
        }
        return mix(key ^ UInt64(proto) << 32)
    }

    /// One multiply after folding the high bits down: the high half of the product, which `takes`
    /// uses, depends on every bit of the key.
    @inline(__always) static func mix(_ key: UInt64) -> UInt64 { (key ^ (key >> 29)) &* 0x9E37_79B9_7F4A_7C15 }
}
