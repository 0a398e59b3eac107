// Path: Sources/SluicePacket/Stage/ActionStage.swift — the pipeline stage that forwards, drops or
// rewrites classified pool buffers by a rule table.
import SluiceCore

/// A pipeline stage after `ParseClassifyStage`: matches each buffer's metadata (source id, protocol,
/// ports read at `l4Offset`) against `rules` and forwards, drops or rewrites it in place. A rewrite
/// that changes the length (VLAN push/strip) updates `length`, `wireLength`, the offsets and the VLAN
/// flag; a push needs 4 free bytes past the packet in its pool buffer. Dropped buffers are freed and
/// counted by reason. Every packet is counted (packets, bytes as matched) under the rule that decided
/// in `rules.hits`. When the table has named outputs, each packet passed on carries its output index
/// in `PacketMetadata.outputIndex` (0: the sink) for the dispatch stage before the sink. Never
/// allocates, locks or retains: pool and table must outlive the pipeline.
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

/// A run of packets that hit one rule, counted once at its end (one pair of atomic adds per run,
/// not per packet).
struct HitRun {
    var rule = -1
    var packets: UInt64 = 0
    var bytes: UInt64 = 0

    @inline(__always) mutating func count(rule index: Int, bytes length: Int, into rules: borrowing RuleTable) {
        if index != rule {
            flush(into: rules)
            rule = index
        }
        packets &+= 1
        bytes &+= UInt64(length)
    }

    @inline(__always) mutating func flush(into rules: borrowing RuleTable) {
        if packets > 0 { rules.countHits(rule: rule, packets: packets, bytes: bytes) }
        (rule, packets, bytes) = (-1, 0, 0)
    }
}

/// The action stage's loop over one burst: explicit arguments, nothing retained. Returns the kept
/// count; sets each drop reason's bit in `dirtyMask`; counts each packet under the rule that decided.
@inline(__always)
func actionBurst(
    _ items: UnsafeMutableBufferPointer<UInt64>, pool: Unmanaged<BufferPool>, rules: borrowing RuleTable,
    pending: inout DropCounters, dirtyMask: inout UInt64
) -> Int {
    var kept = 0
    var run = HitRun()
    if rules.forwardsEverything {
        // Nothing to match or rewrite: what `applyRules` would do without reading the packet.
        for position in 0..<items.count {
            let item = items[position]
            precondition(item <= UInt64(UInt32.max), "item is not a buffer index")
            let index = UInt32(truncatingIfNeeded: item)
            let metadata = pool._withUnsafeGuaranteedRef { $0.metadata(at: index) }
            guard MetadataFlags(rawValue: metadata.pointee.flags).contains(.classified) else {
                pending.count(.notClassified)
                dirtyMask |= 1 << UInt64(DropReason.notClassified.rawValue)
                pool._withUnsafeGuaranteedRef { $0.freeIndex(index) }
                continue
            }
            run.count(rule: rules.ruleCount, bytes: Int(metadata.pointee.length), into: rules)
            items[kept] = item
            kept += 1
        }
        run.flush(into: rules)
        return kept
    }
    for position in 0..<items.count {
        let item = items[position]
        precondition(item <= UInt64(UInt32.max), "item is not a buffer index")
        let index = UInt32(truncatingIfNeeded: item)
        let metadata = pool._withUnsafeGuaranteedRef { $0.metadata(at: index) }
        let buffer = pool._withUnsafeGuaranteedRef { $0.bytes(at: index) }
        let length = Int(metadata.pointee.length)
        var matched = -1
        let reason = applyRules(rules, to: buffer, metadata: metadata, matched: &matched)
        if matched >= 0 { run.count(rule: matched, bytes: length, into: rules) }
        if let reason {
            pending.count(reason)
            dirtyMask |= 1 << UInt64(reason.rawValue)
            pool._withUnsafeGuaranteedRef { $0.freeIndex(index) }
            continue
        }
        if rules.hasOutputs {
            precondition(matched >= 0, "a forwarded packet was decided by a rule or the default")
            metadata.pointee.outputIndex = UInt16(truncatingIfNeeded: rules.outputIndex(rule: matched))
        }
        items[kept] = item
        kept += 1
    }
    run.flush(into: rules)
    return kept
}

/// The fields `rules` match on, read from the buffer and its metadata (MACs, VLAN id and addresses
/// only when some rule looks at them).
@inline(__always)
func ruleKey(
    _ rules: borrowing RuleTable, bytes: PacketBytes, metadata: UnsafeMutablePointer<PacketMetadata>,
    flags: MetadataFlags
) -> RuleKey {
    let length = bytes.count
    let l3 = Int(metadata.pointee.l3Offset)
    let l4 = Int(metadata.pointee.l4Offset)
    var ports: (source: UInt16, destination: UInt16)?
    if flags.contains(.ports), bytes.contains(l4, size: 4, limit: length) {
        ports = (bytes.u16(l4), bytes.u16(l4 + 2))
    }
    let ipVersion = flags.ipVersion
    let isEthernet = metadata.pointee.linkType == LinkType.ethernet.rawValue && length >= 14
    var vlanID: UInt16?
    if rules.needs.contains(.vlan), isEthernet, flags.contains(.vlan), bytes.contains(14, size: 2, limit: length) {
        vlanID = bytes.u16(14) & 0x0FFF
    }
    var macs: (source: MACAddress, destination: MACAddress)?
    if rules.needs.contains(.macs), isEthernet {
        macs = (MACAddress(bytes.u48(6)), MACAddress(bytes.u48(0)))
    }
    var addresses: (source: IPAddress, destination: IPAddress, version: UInt8)?
    if rules.needs.contains(.addresses) {
        if ipVersion == 4, bytes.contains(l3, size: 20, limit: length) {
            addresses = (IPAddress(ipv4: bytes.u32(l3 + 12)), IPAddress(ipv4: bytes.u32(l3 + 16)), 4)
        } else if ipVersion == 6, bytes.contains(l3, size: 40, limit: length) {
            addresses = (IPAddress(high: bytes.u64(l3 + 8), low: bytes.u64(l3 + 16)),
                         IPAddress(high: bytes.u64(l3 + 24), low: bytes.u64(l3 + 32)), 6)
        }
    }
    return RuleKey(inputPort: metadata.pointee.port, sourceID: metadata.pointee.sourceID,
                   ipProtocol: ipVersion != 0 ? flags.ipProtocol : nil, ports: ports, vlanID: vlanID, macs: macs,
                   addresses: addresses)
}

/// Runs the rule table on one buffer and updates its metadata. Returns nil to forward, or why to
/// drop; `matched` is the rule that decided (`rules.rules.count` for none), -1 if none ran.
@inline(__always)
func applyRules(
    _ rules: borrowing RuleTable, to buffer: UnsafeMutableRawBufferPointer, metadata: UnsafeMutablePointer<PacketMetadata>,
    matched: inout Int
) -> DropReason? {
    var flags = MetadataFlags(rawValue: metadata.pointee.flags)
    guard flags.contains(.classified) else { return .notClassified }
    let length = Int(metadata.pointee.length)
    precondition(length <= buffer.count, "metadata length past the end of its buffer")
    let bytes = PacketBytes(UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
    let key = ruleKey(rules, bytes: bytes, metadata: metadata, flags: flags)
    var layout = PacketLayout(length: length, linkType: LinkType(rawValue: metadata.pointee.linkType),
                              l3Offset: metadata.pointee.l3Offset, l4Offset: metadata.pointee.l4Offset,
                              ipVersion: flags.ipVersion, ipProtocol: flags.ipProtocol,
                              isFragment: flags.contains(.fragment))
    switch rules.apply(key, to: buffer, layout: &layout, matched: &matched) {
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
