// Path: Sources/SluicePacket/Bytes/TableStorage.swift — fixed-size lookup tables in one heap block,
// read through raw pointers on the hot path.

/// One allocation holding a table's columns, made when a classifier or rule table is built and freed
/// with the last copy of it. Hot paths read the columns through the unsafe pointers copied out of it,
/// never through this reference, so lookups cost no reference counting. (Inline storage looked
/// cheaper but the 6.3 optimizer copies a whole `InlineArray` stored property on each subscript.)
@usableFromInline
final class TableStorage: @unchecked Sendable {  // unchecked: written once in init, then read-only
    @usableFromInline let base: UnsafeMutableRawPointer
    let byteCount: Int

    /// Zeroed storage for `byteCount` bytes, 64-byte aligned.
    init(byteCount: Int) {
        precondition(byteCount > 0, "empty table storage")
        self.byteCount = byteCount
        base = .allocate(byteCount: byteCount, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    }

    deinit { base.deallocate() }

    /// A column of `count` trivial values starting `offset` bytes in (aligned to `Value`).
    func column<Value: BitwiseCopyable>(_ type: Value.Type, at offset: Int, count: Int) -> UnsafeMutablePointer<Value> {
        precondition(offset % MemoryLayout<Value>.alignment == 0, "misaligned column")
        precondition(offset + count * MemoryLayout<Value>.stride <= byteCount, "column past the storage")
        return (base + offset).bindMemory(to: Value.self, capacity: count)
    }
}
