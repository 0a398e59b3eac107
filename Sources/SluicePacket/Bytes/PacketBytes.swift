// Path: Sources/SluicePacket/Bytes/PacketBytes.swift — a bounds-checked, read-only view of a packet's
// bytes with big-endian loads.

/// The bytes of one packet, borrowed for one call: do not store it past the call that received it
/// (the memory belongs to a pool buffer, a capture or a test array). Every load checks its bounds and
/// traps when out of range: parsers check header lengths first, so a trap here is a parser bug, never
/// a malformed packet. Loads are unaligned and big-endian (network order) and never allocate.
@frozen
public struct PacketBytes {
    @usableFromInline let raw: UnsafeRawBufferPointer

    /// Views `raw`; the caller keeps it alive and unchanged for as long as the view is used.
    @inlinable public init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }

    /// Bytes in the view.
    @inlinable public var count: Int { raw.count }

    /// True if `size` bytes starting at `offset` lie inside the first `limit` bytes (and the view).
    @inlinable @inline(__always) public func contains(_ offset: Int, size: Int, limit: Int) -> Bool {
        offset >= 0 && size >= 0 && offset <= limit &- size && limit <= raw.count
    }

    @inlinable @inline(__always) func check(_ offset: Int, _ size: Int) {
        precondition(offset >= 0, "negative packet offset")
        precondition(offset <= raw.count &- size, "packet read past the end of the bytes")
    }

    /// The byte at `offset`.
    @inlinable @inline(__always) public func u8(_ offset: Int) -> UInt8 {
        check(offset, 1)
        return raw.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// The big-endian 16-bit field at `offset`.
    @inlinable @inline(__always) public func u16(_ offset: Int) -> UInt16 {
        check(offset, 2)
        return UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    /// The big-endian 32-bit field at `offset`.
    @inlinable @inline(__always) public func u32(_ offset: Int) -> UInt32 {
        check(offset, 4)
        return UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    /// The big-endian 64-bit field at `offset` (half an IPv6 address).
    @inlinable @inline(__always) public func u64(_ offset: Int) -> UInt64 {
        check(offset, 8)
        return UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// The 48-bit MAC address at `offset`, in the low bits.
    @inlinable @inline(__always) public func u48(_ offset: Int) -> UInt64 {
        check(offset, 6)
        return UInt64(u16(offset)) << 32 | UInt64(u32(offset + 2))
    }
}

/// Big-endian stores into a mutable packet buffer, each bounds-checked (a failed check is a bug in the
/// rewriter, which checks lengths first, and traps).
extension UnsafeMutableRawBufferPointer {
    @inlinable func storeBigEndian(_ value: UInt16, at offset: Int) {
        precondition(offset >= 0, "negative packet offset")
        precondition(offset <= count &- 2, "packet write past the end of the buffer")
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    @inlinable func storeBigEndian48(_ value: UInt64, at offset: Int) {
        precondition(offset >= 0, "negative packet offset")
        precondition(offset <= count &- 6, "packet write past the end of the buffer")
        storeBytes(of: UInt16(truncatingIfNeeded: value >> 32).bigEndian, toByteOffset: offset, as: UInt16.self)
        storeBytes(of: UInt32(truncatingIfNeeded: value).bigEndian, toByteOffset: offset + 2, as: UInt32.self)
    }
}
