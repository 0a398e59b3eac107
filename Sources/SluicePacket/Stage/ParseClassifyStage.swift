// Path: Sources/SluicePacket/Stage/ParseClassifyStage.swift — the pipeline stage that parses and
// classifies pool buffers, dropping malformed ones.
import SluiceCore

/// A pipeline stage over pool buffer indices: parses each buffer's first `metadata.length` bytes as
/// `metadata.linkType`, fills `flowHash`, `sourceID`, `l3Offset`, `l4Offset` and `flags`
/// (`MetadataFlags`), and passes it on. A malformed packet is freed to the pool and counted in
/// `drops` by reason, never passed on. Never allocates, locks or retains: the pool and the drop table
/// are held unmanaged, so both must outlive the pipeline.
public struct ParseClassifyStage: StageBody, @unchecked Sendable {  // unchecked: unmanaged pool and table
    let pool: Unmanaged<BufferPool>
    let drops: Unmanaged<DropCounterTable>
    let parser: PacketParser
    let classifier: Classifier
    /// Drops counted this burst, published to `drops` at its end.
    var pending = DropCounters()
    /// Scratch parse result, reused for every packet.
    var packet = ParsedPacket()

    public init(pool: BufferPool, classifier: Classifier, parser: PacketParser = PacketParser(),
                drops: DropCounterTable) {
        self.pool = Unmanaged.passUnretained(pool)
        self.drops = Unmanaged.passUnretained(drops)
        self.parser = parser
        self.classifier = classifier
    }

    /// Parses and classifies a burst of buffer indices in place; returns how many survive (compacted
    /// to the front). The dropped ones are back in the pool.
    public mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var dirtyMask: UInt64 = 0
        let kept = parseClassifyBurst(items, pool: pool, parser: parser, classifier: classifier, packet: &packet,
                                      pending: &pending, dirtyMask: &dirtyMask)
        if dirtyMask != 0 {
            drops._withUnsafeGuaranteedRef { $0.publish(&pending, dirtyMask: dirtyMask) }
        }
        return kept
    }
}

/// The parse stage's loop over one burst: explicit arguments, nothing retained (the pool is reached
/// through `_withUnsafeGuaranteedRef` at each use, tables are borrowed). Returns the kept count; every
/// dropped reason's bit is set in `dirtyMask`.
@inline(__always)
/// How many packets ahead the parse loop prefetches (DPDK's l3fwd uses 3 to 8).
let parsePrefetchDistance = 4

func parseClassifyBurst(
    _ items: UnsafeMutableBufferPointer<UInt64>, pool: Unmanaged<BufferPool>, parser: borrowing PacketParser,
    classifier: borrowing Classifier, packet: inout ParsedPacket, pending: inout DropCounters,
    dirtyMask: inout UInt64
) -> Int {
    var kept = 0
    for position in 0..<items.count {
        // The buffers were filled on another core: pull a later packet's lines while parsing this one.
        if position + parsePrefetchDistance < items.count {
            let ahead = UInt32(truncatingIfNeeded: items[position + parsePrefetchDistance])
            pool._withUnsafeGuaranteedRef { $0.prefetch(ahead) }
        }
        let item = items[position]
        precondition(item <= UInt64(UInt32.max), "item is not a buffer index")
        let index = UInt32(truncatingIfNeeded: item)
        let metadata = pool._withUnsafeGuaranteedRef { $0.metadata(at: index) }
        let buffer = pool._withUnsafeGuaranteedRef { $0.bytes(at: index) }
        let length = Int(metadata.pointee.length)
        precondition(length <= buffer.count, "metadata length past the end of its buffer")
        let bytes = PacketBytes(UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
        let isCut = metadata.pointee.wireLength > metadata.pointee.length
        let linkType = LinkType(rawValue: metadata.pointee.linkType)
        if let reason = parser.parse(bytes, linkType: linkType, into: &packet, isCaptureTruncated: isCut) {
            pending.count(reason)
            dirtyMask |= 1 << UInt64(reason.rawValue)
            pool._withUnsafeGuaranteedRef { $0.freeIndex(index) }
            continue
        }
        let classification = classifier.classify(packet, inputPort: metadata.pointee.port)
        metadata.pointee.flowHash = classification.flowHash
        metadata.pointee.sourceID = classification.sourceID
        metadata.pointee.l3Offset = packet.outer.l3Offset
        metadata.pointee.l4Offset = packet.outer.l4Offset
        metadata.pointee.flags = MetadataFlags(packet).rawValue
        items[kept] = item
        kept += 1
    }
    return kept
}
