// Path: Sources/SluicePacket/Action/Checksum.swift — the Internet checksum: full IPv4 header check and
// RFC 1624 incremental update.

/// One's-complement Internet checksum (RFC 1071) helpers. None allocates.
public enum Checksum {
    /// The checksum field value for the IPv4 header at `offset` (`headerSize` bytes, with its checksum
    /// field counted as zero). The caller checks the header lies inside `bytes`.
    public static func ipv4Header(_ bytes: PacketBytes, at offset: Int, headerSize: Int) -> UInt16 {
        precondition(headerSize >= 20, "IPv4 header below 20 bytes")
        precondition(headerSize % 2 == 0, "odd IPv4 header size")
        var sum: UInt32 = 0
        var position = offset
        while position < offset + headerSize {
            if position != offset + 10 { sum &+= UInt32(bytes.u16(position)) }
            position += 2
        }
        return ~fold(sum)
    }

    /// True if the IPv4 header at `offset` has a correct checksum. Not run by the parser (DPDK leaves it
    /// to the NIC or the caller too); returns false if the header is not inside `bytes`.
    public static func isIPv4HeaderValid(_ bytes: PacketBytes, at offset: Int) -> Bool {
        guard bytes.contains(offset, size: 20, limit: bytes.count) else { return false }
        let headerSize = Int(bytes.u8(offset) & 0x0F) * 4
        guard headerSize >= 20, bytes.contains(offset, size: headerSize, limit: bytes.count) else { return false }
        return ipv4Header(bytes, at: offset, headerSize: headerSize) == bytes.u16(offset + 10)
    }

    /// The checksum after one 16-bit word of the covered data changes from `old` to `new`:
    /// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), which (unlike eqn. 2) never yields 0xFFFF wrongly.
    @inlinable public static func updated(_ checksum: UInt16, oldWord old: UInt16, newWord new: UInt16) -> UInt16 {
        let sum = UInt32(~checksum) &+ UInt32(~old) &+ UInt32(new)
        return ~fold(sum)
    }

    /// Folds carries back into the low 16 bits (end-around carry).
    @inlinable static func fold(_ sum: UInt32) -> UInt16 {
        var folded = (sum & 0xFFFF) &+ (sum >> 16)
        folded = (folded & 0xFFFF) &+ (folded >> 16)
        return UInt16(truncatingIfNeeded: folded)
    }
}
