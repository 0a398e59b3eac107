// Path: Sources/SluicePacket/Stage/ActionStage.swift — the pipeline stage that forwards, drops or
// rewrites classified pool buffers by a rule table.
import SluiceCore

/// A pipeline stage after `ParseClassifyStage`: matches each buffer's metadata (source id, protocol,
/// ports read at `l4Offset`) against `rules` and forwards, drops or rewrites it in place. A rewrite
/// that changes the length (VLAN push/strip) updates `length`, `wireLength`, the offsets and the VLAN
/// flag; a push needs 4 free bytes past the packet in its pool buffer. Dropped buffers are freed and
/// counted by reason. Never allocates, locks or retains: pool and table must outlive the pipeline.
public struct ActionStage: StageBody, @unchecked Sendable {  // unchecked: unmanaged pool and table
    let pool: Unmanaged<BufferPool>
    let drops: Unmanaged<DropCounterTable>
    let rules: RuleTable
    var pending = DropCounters()

    public init(pool: BufferPool, rules: RuleTable, drops: DropCounterTable) {
        self.pool = Unmanaged.passUnretained(pool)
        self.drops = Unmanaged.passUnretained(drops)
        self.rules = rules
    }

    /// Applies the rules to a burst of buffer indices in place; returns how many are passed on
    /// (compacted to the front). The dropped ones are back in the pool.
    public mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var dirtyMask: UInt64 = 0
        let kept = actionBurst(items, pool: pool, rules: rules, pending: &pending, dirtyMask: &dirtyMask)
        if dirtyMask != 0 {
            drops._withUnsafeGuaranteedRef { $0.publish(&pending, dirtyMask: dirtyMask) }
        }
        return kept
    }
}

/// The action stage's loop over one burst: explicit arguments, nothing retained. Returns the kept
/// count; sets each drop reason's bit in `dirtyMask`.
@inline(__always)
func actionBurst(
    _ items: UnsafeMutableBufferPointer<UInt64>, pool: Unmanaged<BufferPool>, rules: borrowing RuleTable,
    pending: inout DropCounters, dirtyMask: inout UInt64
) -> Int {
    var kept = 0
    for position in 0..<items.count {
        let item = items[position]
        precondition(item <= UInt64(UInt32.max), "item is not a buffer index")
        let index = UInt32(truncatingIfNeeded: item)
        let metadata = pool._withUnsafeGuaranteedRef { $0.metadata(at: index) }
        let buffer = pool._withUnsafeGuaranteedRef { $0.bytes(at: index) }
        if let reason = applyRules(rules, to: buffer, metadata: metadata) {
            pending.count(reason)
            dirtyMask |= 1 << UInt64(reason.rawValue)
            pool._withUnsafeGuaranteedRef { $0.freeIndex(index) }
            continue
        }
        items[kept] = item
        kept += 1
    }
    return kept
}

/// Runs the rule table on one buffer and updates its metadata. Returns nil to forward, or why to drop.
@inline(__always)
func applyRules(
    _ rules: borrowing RuleTable, to buffer: UnsafeMutableRawBufferPointer, metadata: UnsafeMutablePointer<PacketMetadata>
) -> DropReason? {
    var flags = MetadataFlags(rawValue: metadata.pointee.flags)
    guard flags.contains(.classified) else { return .notClassified }
    let length = Int(metadata.pointee.length)
    precondition(length <= buffer.count, "metadata length past the end of its buffer")
    let bytes = PacketBytes(UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
    let l4 = Int(metadata.pointee.l4Offset)
    var ports: (source: UInt16, destination: UInt16)?
    if flags.contains(.ports), bytes.contains(l4, size: 4, limit: length) {
        ports = (bytes.u16(l4), bytes.u16(l4 + 2))
    }
    let ipVersion = flags.ipVersion
    let key = RuleKey(sourceID: metadata.pointee.sourceID, ipProtocol: ipVersion != 0 ? flags.ipProtocol : nil,
                      ports: ports)
    var layout = PacketLayout(length: length, linkType: LinkType(rawValue: metadata.pointee.linkType),
                              l3Offset: metadata.pointee.l3Offset, l4Offset: metadata.pointee.l4Offset,
                              ipVersion: ipVersion)
    switch rules.apply(key, to: buffer, layout: &layout) {
    case .forwarded: return nil
    case .dropped(let reason): return reason
    case .rewritten: break
    }
    flags.insert(.rewritten)
    if layout.length != length {
        let delta = layout.length - length
        metadata.pointee.length = UInt32(layout.length)
        metadata.pointee.wireLength = UInt32(truncatingIfNeeded: Int(metadata.pointee.wireLength) + delta)
        metadata.pointee.l3Offset = layout.l3Offset
        metadata.pointee.l4Offset = layout.l4Offset
        let resized = PacketBytes(UnsafeRawBufferPointer(start: buffer.baseAddress, count: layout.length))
        if resized.count >= 14, EtherType.isVLAN(resized.u16(12)) { flags.insert(.vlan) } else { flags.remove(.vlan) }
    }
    metadata.pointee.flags = flags.rawValue
    return nil
}
