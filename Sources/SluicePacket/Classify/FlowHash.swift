// Path: Sources/SluicePacket/Classify/FlowHash.swift — a seeded 5-tuple hash, optionally symmetric.

/// Hashes a flow's 5-tuple (source and destination address and port, IP protocol) to 32 bits.
///
/// The mixing is wyhash's multiply-fold: `mum(a, b)` = high ^ low of the 128-bit product, applied to
/// the five words `src.high, src.low, dst.high, dst.low, ports|proto` XORed with fixed odd constants
/// and the seed. Three 64x64->128 multiplies; every input bit reaches every output bit. It is not the
/// Toeplitz RSS hash, so it will not match a NIC's RSS queue choice.
///
/// Symmetric hashing orders the two (address, port) endpoints before mixing, so both directions of a
/// connection hash alike. Fragments hash without ports (the later fragments have none), so every
/// fragment of a datagram hashes alike. Non-IP packets hash their MACs and EtherType.
@frozen
public struct FlowHash: Sendable, Equatable {
    public var isSymmetric: Bool
    public var seed: UInt64

    public init(isSymmetric: Bool = false, seed: UInt64 = 0x5EED_51C0_F10E_0001) {
        self.isSymmetric = isSymmetric
        self.seed = seed
    }

    /// The hash of `headers`' flow. Never allocates.
    @inlinable @inline(__always) public func hash(_ headers: PacketHeaders) -> UInt32 {
        guard headers.isIP else {
            return hashLink(headers.sourceMAC.rawValue, headers.destinationMAC.rawValue, headers.etherType)
        }
        let hasPorts = headers.flags.contains(.ports) && !headers.flags.contains(.fragment)
        var source = (address: headers.sourceAddress, port: hasPorts ? headers.sourcePort : 0)
        var target = (address: headers.destinationAddress, port: hasPorts ? headers.destinationPort : 0)
        if isSymmetric, target.address < source.address || (target.address == source.address && target.port < source.port) {
            swap(&source, &target)
        }
        let ports = UInt64(source.port) << 32 | UInt64(target.port) << 16 | UInt64(headers.ipProtocol)
        var mixed = Self.mum(source.address.high ^ 0xA076_1D64_78BD_642F, source.address.low ^ seed)
        mixed = Self.mum(target.address.high ^ 0xE703_7ED1_A0B4_28DB, target.address.low ^ mixed)
        mixed = Self.mum(ports ^ 0x8EBC_6AF0_9C88_C6E3, mixed ^ 0x5899_65CC_7537_4CC3)
        return UInt32(truncatingIfNeeded: mixed ^ mixed >> 32)
    }

    @inlinable func hashLink(_ sourceMAC: UInt64, _ destinationMAC: UInt64, _ etherType: UInt16) -> UInt32 {
        var first = sourceMAC
        var second = destinationMAC
        if isSymmetric, second < first { swap(&first, &second) }
        var mixed = Self.mum(first ^ 0xA076_1D64_78BD_642F, second ^ seed)
        mixed = Self.mum(UInt64(etherType) ^ 0x8EBC_6AF0_9C88_C6E3, mixed ^ 0x5899_65CC_7537_4CC3)
        return UInt32(truncatingIfNeeded: mixed ^ mixed >> 32)
    }

    /// Multiply-fold: the XOR of the halves of the 128-bit product.
    @inlinable @inline(__always) static func mum(_ lhs: UInt64, _ rhs: UInt64) -> UInt64 {
        let product = lhs.multipliedFullWidth(by: rhs)
        return product.high ^ product.low
    }
}
