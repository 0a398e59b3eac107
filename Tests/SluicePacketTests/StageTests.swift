// Path: Tests/SluicePacketTests/StageTests.swift — the parse/classify and action stage bodies over a
// real BufferPool: metadata filled, drops freed and counted.
import SluiceCore
import Testing

@testable import SluicePacket

/// A pool holding test frames, and the burst of their indices.
final class PoolFixture {
    let pool: BufferPool
    var items: [UInt64] = []

    init(bufferCount: Int = 64, bufferSizeBytes: Int = 256) throws {
        pool = try BufferPool(bufferCount: bufferCount, bufferSizeBytes: bufferSizeBytes)
    }

    /// Copies `frame` into a fresh buffer and queues its index.
    @discardableResult
    func add(_ frame: [UInt8], link: LinkType = .ethernet, port: UInt16 = 0, wireLength: Int? = nil) throws -> UInt32 {
        let index = try pool.allocateOrThrow().releaseIndex()
        let bytes = pool.bytes(at: index)
        precondition(frame.count <= bytes.count)
        frame.withUnsafeBytes { bytes.copyMemory(from: $0) }
        var metadata = PacketMetadata()
        metadata.length = UInt32(frame.count)
        metadata.wireLength = UInt32(wireLength ?? frame.count)
        metadata.linkType = link.rawValue
        metadata.port = port
        pool.metadata(at: index).pointee = metadata
        items.append(UInt64(index))
        return index
    }

    /// Runs `body` over the queued burst; keeps the survivors queued.
    func run(_ body: inout some StageBody) -> Int {
        let kept = items.withUnsafeMutableBufferPointer { body.process($0) }
        items.removeLast(items.count - kept)
        return kept
    }

    func frame(_ index: UInt64) -> [UInt8] {
        let metadata = pool.metadata(at: UInt32(index)).pointee
        return Array(pool.bytes(at: UInt32(index)).prefix(Int(metadata.length)))
    }

    func metadata(_ index: UInt64) -> PacketMetadata { pool.metadata(at: UInt32(index)).pointee }

    func freeAll() {
        for item in items { pool.freeIndex(UInt32(item)) }
        items.removeAll()
    }
}

@Suite struct StageTests {
    static let classifier = Classifier(try! ClassifierConfiguration(
        key: .sourcePrefix, entries: [SourceEntry(.prefix(IPPrefix("10.0.0.0/8")!), sourceID: 1)],
        defaultSourceID: 9, flowHash: FlowHash(isSymmetric: true)))

    @Test func parseStageFillsMetadataAndFreesDrops() throws {
        let fixture = try PoolFixture()
        let drops = DropCounterTable()
        var stage = ParseClassifyStage(pool: fixture.pool, classifier: Self.classifier, drops: drops)
        let tcp = try fixture.add(Sample.ipv4TCP())
        try fixture.add(Array(Sample.ipv4TCP().prefix(30)))
        let reverse = try fixture.add(Sample.ipv4TCP(source: Addr.v4B, destination: Addr.v4A, sourcePort: 80,
                                                     destinationPort: 40000))
        try fixture.add(Sample.ipv4TCP(), link: LinkType(rawValue: 999))
        let v6 = try fixture.add(Sample.ipv6TCP(), port: 3)
        let tunnel = try fixture.add(Sample.vxlan())
        for malformed in MalformedCase.all.prefix(20) { try fixture.add(malformed.bytes, link: malformed.link) }
        let cut = try fixture.add(Array(Sample.ipv4UDP(payload: [UInt8](repeating: 1, count: 100)).prefix(50)),
                                  wireLength: 142)

        #expect(fixture.run(&stage) == 5)
        #expect(fixture.items == [UInt64(tcp), UInt64(reverse), UInt64(v6), UInt64(tunnel), UInt64(cut)])
        #expect(fixture.pool.freeCount == 64 - 5, "every dropped buffer is back in the pool")

        let metadata = fixture.metadata(UInt64(tcp))
        let packet = try #require(parsed(Sample.ipv4TCP()))
        #expect(metadata.sourceID == 1)
        #expect(metadata.flowHash == FlowHash(isSymmetric: true).hash(packet.outer))
        #expect(metadata.flowHash == fixture.metadata(UInt64(reverse)).flowHash, "symmetric")
        #expect(metadata.l3Offset == 14)
        #expect(metadata.l4Offset == 34)
        let flags = MetadataFlags(rawValue: metadata.flags)
        #expect(flags.isSuperset(of: [.classified, .ipv4, .ports]))
        #expect(flags.ipProtocol == 6)
        #expect(flags.ipVersion == 4)
        #expect(fixture.metadata(UInt64(v6)).sourceID == 9)
        #expect(MetadataFlags(rawValue: fixture.metadata(UInt64(v6)).flags).contains(.ipv6))
        #expect(MetadataFlags(rawValue: fixture.metadata(UInt64(tunnel)).flags).contains(.tunnel))
        #expect(MetadataFlags(rawValue: fixture.metadata(UInt64(cut)).flags).ipProtocol == 17)

        var expected = DropCounters()
        expected.count(.unsupportedLinkType)
        expected.count(.truncatedIPv4)
        for malformed in MalformedCase.all.prefix(20) { expected.count(malformed.reason) }
        let counted = drops.snapshot()
        for reason in DropReason.allCases { #expect(counted[reason] == expected[reason], "\(reason)") }
        #expect(counted.total == 2 + 20)

        fixture.freeAll()
        #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
    }

    @Test func actionStageForwardsDropsAndRewrites() throws {
        let fixture = try PoolFixture(bufferSizeBytes: 128)
        let drops = DropCounterTable()
        var parse = ParseClassifyStage(pool: fixture.pool, classifier: Self.classifier, drops: drops)
        let rules = try RuleTable(rules: [
            Rule(RuleMatch(ipProtocol: 17, destinationPort: 53), .drop),
            Rule(RuleMatch(sourceID: 1), rewrites: [.decrementTTL, .pushVLAN(id: 30, priority: 0, tpid: 0x8100)]),
            Rule(RuleMatch(ipProtocol: 6), rewrites: [.stripVLAN, .setSourceMAC(MACAddress(0x0E_00_00_00_00_01))]),
        ])
        var action = ActionStage(pool: fixture.pool, rules: rules, drops: drops)
        let pushed = try fixture.add(Sample.ipv4TCP(ttl: 5))
        try fixture.add(Sample.ipv4UDP())
        try fixture.add(Sample.ipv4TCP(ttl: 1))
        let stripped = try fixture.add(Sample.ipv4TCP(source: 0xC000_0001, tags: [(0x8100, 12)]))
        // 126 bytes in a 128-byte buffer: no room for a tag.
        let full = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 6, payload: Build.tcp(
            payload: [UInt8](repeating: 0, count: 126 - 54))))
        try fixture.add(full)
        let raw = try fixture.add(Build.ipv4(proto: 6, payload: Build.tcp()), link: .raw)
        let rawV4 = try fixture.add(Build.ipv4(source: 0x0A00_0009, proto: 6, payload: Build.tcp()), link: .raw)
        #expect(fixture.run(&parse) == 7)
        #expect(fixture.run(&action) == 2)
        #expect(fixture.items == [UInt64(pushed), UInt64(stripped)])
        _ = raw
        _ = rawV4

        let pushedMetadata = fixture.metadata(UInt64(pushed))
        #expect(fixture.frame(UInt64(pushed)) == Sample.ipv4TCP(tags: [(0x8100, 30)], ttl: 4))
        #expect(pushedMetadata.length == UInt32(Sample.ipv4TCP().count + 4))
        #expect(pushedMetadata.wireLength == pushedMetadata.length)
        #expect(pushedMetadata.l3Offset == 18)
        #expect(pushedMetadata.l4Offset == 38)
        #expect(MetadataFlags(rawValue: pushedMetadata.flags).isSuperset(of: [.rewritten, .vlan]))

        let strippedMetadata = fixture.metadata(UInt64(stripped))
        #expect(fixture.frame(UInt64(stripped)) == Sample.ipv4TCP(source: 0xC000_0001, sourceMAC: 0x0E_00_00_00_00_01))
        #expect(strippedMetadata.l3Offset == 14)
        #expect(!MetadataFlags(rawValue: strippedMetadata.flags).contains(.vlan))

        let counted = drops.snapshot()
        #expect(counted[.droppedByRule] == 1)
        #expect(counted[.ttlExpired] == 1)
        #expect(counted[.noRoomForVLAN] == 1)
        #expect(counted[.rewriteNeedsEthernet] == 2, "raw packets: MAC and VLAN rewrites cannot apply")
        fixture.freeAll()
        #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
    }

    @Test func actionStageDropsUnclassifiedBuffers() throws {
        let fixture = try PoolFixture()
        let drops = DropCounterTable()
        var action = ActionStage(pool: fixture.pool, rules: try RuleTable(rules: []), drops: drops)
        try fixture.add(Sample.ipv4TCP())
        #expect(fixture.run(&action) == 0)
        #expect(drops.snapshot()[.notClassified] == 1)
        #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
    }

    /// A table with no rules, forwarding by default, no table rewrites or outputs does not read the
    /// packets (`RuleTable.forwardsEverything`), and decides as a table whose one rule never matches:
    /// classified packets go on unchanged under the default, unclassified ones are dropped.
    @Test func anEmptyTableForwardsAsATableWhoseRulesNeverMatch() throws {
        let empty = try RuleTable(rules: [])
        let missing = try RuleTable(rules: [Rule(RuleMatch(ipProtocol: 132), .drop)])  // SCTP: none below
        #expect(empty.forwardsEverything && !missing.forwardsEverything)
        #expect(!(try RuleTable(rules: [], defaultVerdict: .drop)).forwardsEverything)
        #expect(!(try RuleTable(rules: [], tableRewrites: [.decrementTTL])).forwardsEverything)
        var outcomes: [(kept: [[UInt8]], metadata: [PacketMetadata], drops: UInt64, hits: (UInt64, UInt64))] = []
        for rules in [empty, missing] {
            let fixture = try PoolFixture()
            let drops = DropCounterTable()
            var parse = ParseClassifyStage(pool: fixture.pool, classifier: Self.classifier, drops: drops)
            var action = ActionStage(pool: fixture.pool, rules: rules, drops: drops)
            // First in the burst, not parsed (no metadata flags): the survivors must be compacted.
            let unclassified = try fixture.add(Sample.ipv4TCP())
            try fixture.add(Sample.ipv4TCP(ttl: 5), wireLength: 1_500)  // hits count captured bytes
            try fixture.add(Sample.ipv4UDP())
            try fixture.add(Build.ipv4(proto: 6, payload: Build.tcp()), link: .raw)
            var parsed = Array(fixture.items.dropFirst())
            #expect(parsed.withUnsafeMutableBufferPointer { parse.process($0) } == 3)
            fixture.items = [UInt64(unclassified)] + parsed
            #expect(fixture.run(&action) == 3)
            #expect(!fixture.items.contains(UInt64(unclassified)))
            outcomes.append((fixture.items.map { fixture.frame($0) }, fixture.items.map { fixture.metadata($0) },
                             drops.snapshot()[.notClassified] ?? 0, rules.hits.hits(rule: rules.rules.count)))
            fixture.freeAll()
            #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
        }
        #expect(outcomes[0].kept == outcomes[1].kept && outcomes[0].kept.count == 3)
        #expect(outcomes[0].metadata.map(\.flags) == outcomes[1].metadata.map(\.flags))
        #expect(outcomes[0].drops == 1 && outcomes[1].drops == 1)
        #expect(outcomes[0].hits == outcomes[1].hits && outcomes[0].hits.0 == 3, "\(outcomes.map(\.hits))")
        let captured = UInt64(Sample.ipv4TCP(ttl: 5).count + Sample.ipv4UDP().count + Build.ipv4(proto: 6, payload: Build.tcp()).count)
        #expect(outcomes[0].hits.1 == captured, "\(outcomes[0].hits.1) bytes")
    }

    @Test func stagesShareOneDropTableAcrossBursts() throws {
        let fixture = try PoolFixture(bufferCount: 512)
        let drops = DropCounterTable()
        var parse = ParseClassifyStage(pool: fixture.pool, classifier: Self.classifier, drops: drops)
        var action = ActionStage(pool: fixture.pool, rules: try RuleTable(rules: [Rule(RuleMatch(sourceID: 9), .drop)]),
                                 drops: drops)
        for round in 0..<8 {
            for index in 0..<32 {
                switch index % 4 {
                case 0: try fixture.add(Array(Sample.ipv4TCP().prefix(index)))
                case 1: try fixture.add(Sample.ipv6TCP())
                default: try fixture.add(Sample.ipv4TCP(sourcePort: UInt16(round * 32 + index)))
                }
            }
            _ = fixture.run(&parse)
            _ = fixture.run(&action)
            fixture.freeAll()
        }
        let counted = drops.snapshot()
        #expect(counted[.droppedByRule] == 8 * 8, "IPv6 sources are unmatched: default id 9, dropped")
        #expect(counted.total == 8 * 16)
        #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
    }
}
