// Path: Tests/SluicePacketTests/RewriteTests.swift — rewrites in place, incremental checksums against a
// full recompute, and rule tables.
import Testing

@testable import SluicePacket

/// A packet in a buffer with room to grow, as the rewriter's contract asks.
struct RewriteBuffer {
    var storage: [UInt8]
    var layout: PacketLayout

    init(_ frame: [UInt8], link: LinkType = .ethernet, room: Int = PacketLimits.vlanTagSizeBytes) throws {
        let packet = try #require(parsed(frame, link))
        storage = frame + [UInt8](repeating: 0xEE, count: room)
        layout = PacketLayout(packet)
    }

    var bytes: [UInt8] { Array(storage.prefix(layout.length)) }

    mutating func apply(_ rewrite: Rewrite) -> DropReason? {
        storage.withUnsafeMutableBytes { PacketRewriter.apply(rewrite, to: $0, layout: &layout) }
    }
}

@Suite struct RewriteTests {
    @Test func builtHeadersHaveValidChecksums() {
        let frame = Sample.ipv4TCP()
        frame.withUnsafeBytes { raw in
            #expect(Checksum.isIPv4HeaderValid(PacketBytes(raw), at: 14))
            #expect(Checksum.ipv4Header(PacketBytes(raw), at: 14, headerSize: 20) == UInt16(frame[24]) << 8 | UInt16(frame[25]))
        }
        var broken = frame
        broken[22] ^= 1  // TTL
        broken.withUnsafeBytes { #expect(!Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14)) }
        broken.withUnsafeBytes { #expect(!Checksum.isIPv4HeaderValid(PacketBytes($0), at: 100), "outside the bytes") }
    }

    /// Every word change, every TTL, random headers: the incremental update equals a full recompute.
    @Test func incrementalUpdateMatchesFullRecompute() {
        var random = SplitMix(seed: 7)
        for _ in 0..<20_000 {
            var header = (0..<20).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            header[0] = 0x45
            header[10] = 0
            header[11] = 0
            let checksum = Build.internetChecksum(header)
            let word = Int(random.next() % 10) * 2
            guard word != 10 else { continue }
            let old = UInt16(header[word]) << 8 | UInt16(header[word + 1])
            let new = UInt16(truncatingIfNeeded: random.next())
            header[word] = UInt8(new >> 8)
            header[word + 1] = UInt8(new & 0xFF)
            #expect(Checksum.updated(checksum, oldWord: old, newWord: new) == Build.internetChecksum(header))
        }
    }

    @Test(arguments: [UInt8(2), 3, 64, 128, 255])
    func decrementTTLUpdatesTheChecksum(ttl: UInt8) throws {
        var buffer = try RewriteBuffer(Sample.ipv4TCP(ttl: ttl))
        #expect(buffer.apply(.decrementTTL) == nil)
        #expect(buffer.bytes[22] == ttl - 1)
        buffer.bytes.withUnsafeBytes { #expect(Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14)) }
        #expect(buffer.bytes == Sample.ipv4TCP(ttl: ttl - 1), "identical to a freshly built header")
    }

    @Test func everyTTLAndDSCPKeepsTheChecksumValid() throws {
        for ttl in 2...255 {
            for dscp in stride(from: 0, through: 63, by: 7) {
                let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                    proto: 17, payload: Build.udp(), ttl: UInt8(ttl), tos: 0x03))
                var buffer = try RewriteBuffer(frame)
                #expect(buffer.apply(.setDSCP(UInt8(dscp))) == nil)
                #expect(buffer.apply(.decrementTTL) == nil)
                let expected = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                    proto: 17, payload: Build.udp(), ttl: UInt8(ttl - 1), tos: UInt8(dscp) << 2 | 0x03))
                #expect(buffer.bytes == expected, "ttl \(ttl) dscp \(dscp)")
            }
        }
    }

    @Test(arguments: [UInt8(0), 1])
    func expiredTTLIsADrop(ttl: UInt8) throws {
        var v4 = try RewriteBuffer(Sample.ipv4TCP(ttl: ttl))
        #expect(v4.apply(.decrementTTL) == .ttlExpired)
        var v6 = try RewriteBuffer(Sample.ipv6TCP(hopLimit: ttl))
        #expect(v6.apply(.decrementTTL) == .ttlExpired)
    }

    @Test func ipv6HopLimitAndTrafficClass() throws {
        var buffer = try RewriteBuffer(Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 6, payload: Build.tcp(), hopLimit: 10, trafficClass: 0x02)))
        #expect(buffer.apply(.decrementTTL) == nil)
        #expect(buffer.apply(.setDSCP(46)) == nil)
        let packet = try #require(parsed(buffer.bytes))
        #expect(packet.outer.ttl == 9)
        #expect(packet.outer.trafficClass == 46 << 2 | 0x02, "ECN kept")
        #expect(buffer.bytes == Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 6, payload: Build.tcp(), hopLimit: 9, trafficClass: 46 << 2 | 0x02)))
    }

    @Test func nonIPIgnoresL3Rewrites() throws {
        let arp = Build.ethernet(etherType: 0x0806, payload: [UInt8](repeating: 1, count: 28))
        var buffer = try RewriteBuffer(arp)
        #expect(buffer.apply(.decrementTTL) == nil)
        #expect(buffer.apply(.setDSCP(10)) == nil)
        #expect(buffer.bytes == arp)
    }

    @Test func setMACs() throws {
        var buffer = try RewriteBuffer(Sample.ipv4TCP())
        #expect(buffer.apply(.setDestinationMAC(MACAddress(0x0A_0B_0C_0D_0E_0F))) == nil)
        #expect(buffer.apply(.setSourceMAC(MACAddress(0x11_22_33_44_55_66))) == nil)
        #expect(buffer.bytes == Sample.ipv4TCP(sourceMAC: 0x11_22_33_44_55_66).enumerated().map {
            $0.offset < 6 ? [0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F][$0.offset] : $0.element
        })
    }

    @Test func pushAndStripVLAN() throws {
        let original = Sample.ipv4TCP()
        var buffer = try RewriteBuffer(original, room: 8)
        #expect(buffer.apply(.pushVLAN(id: 100, priority: 5, tpid: 0x8100)) == nil)
        #expect(buffer.layout.length == original.count + 4)
        #expect(buffer.layout.l3Offset == 18)
        #expect(buffer.layout.l4Offset == 38)
        #expect(buffer.bytes == Sample.ipv4TCP(tags: [(0x8100, 0xA000 | 100)]))
        #expect(buffer.apply(.pushVLAN(id: 200, priority: 0, tpid: 0x88A8)) == nil)
        #expect(buffer.bytes == Sample.ipv4TCP(tags: [(0x88A8, 200), (0x8100, 0xA000 | 100)]))
        #expect(buffer.apply(.pushVLAN(id: 300, priority: 0, tpid: 0x8100)) == .vlanDepthExceeded)
        let packet = try #require(parsed(buffer.bytes))
        #expect(packet.outer.outerVLAN == 200)
        #expect(packet.outer.innerVLAN == 100)
        #expect(packet.outer.l4Offset == buffer.layout.l4Offset)
        #expect(buffer.apply(.stripVLAN) == nil)
        #expect(buffer.apply(.stripVLAN) == nil)
        #expect(buffer.bytes == original)
        #expect(buffer.layout == PacketLayout(try #require(parsed(original))))
        #expect(buffer.apply(.stripVLAN) == nil, "untagged: nothing to strip")
        #expect(buffer.bytes == original)
    }

    @Test func setVLANRewritesOrPushes() throws {
        var tagged = try RewriteBuffer(Sample.ipv4TCP(tags: [(0x8100, 0xB000 | 5)]))
        #expect(tagged.apply(.setVLAN(id: 42)) == nil)
        #expect(tagged.bytes == Sample.ipv4TCP(tags: [(0x8100, 0xB000 | 42)]), "priority and DEI kept")
        var untagged = try RewriteBuffer(Sample.ipv4TCP())
        #expect(untagged.apply(.setVLAN(id: 42)) == nil)
        #expect(untagged.bytes == Sample.ipv4TCP(tags: [(0x8100, 42)]))
    }

    @Test func pushWithoutRoomIsADrop() throws {
        var buffer = try RewriteBuffer(Sample.ipv4TCP(), room: 3)
        #expect(buffer.apply(.pushVLAN(id: 1, priority: 0, tpid: 0x8100)) == .noRoomForVLAN)
        #expect(buffer.bytes == Sample.ipv4TCP(), "untouched")
    }

    @Test func l2RewritesNeedEthernet() throws {
        let raw = Build.ipv4(proto: 6, payload: Build.tcp())
        for rewrite in [Rewrite.setSourceMAC(MACAddress(1)), .setDestinationMAC(MACAddress(1)), .setVLAN(id: 1),
                        .pushVLAN(id: 1, priority: 0, tpid: 0x8100), .stripVLAN] {
            var buffer = try RewriteBuffer(raw, link: .raw)
            #expect(buffer.apply(rewrite) == .rewriteNeedsEthernet)
        }
        var buffer = try RewriteBuffer(raw, link: .raw)
        #expect(buffer.apply(.decrementTTL) == nil)
        #expect(buffer.bytes[8] == 63)
    }

    // MARK: Rule tables

    static let ipv4UDPKey = RuleKey(sourceID: 3, ipProtocol: 17, ports: (50000, 53))

    @Test func firstMatchingRuleWins() throws {
        let table = try RuleTable(rules: [
            Rule(RuleMatch(sourceID: 9), .drop),
            Rule(RuleMatch(ipProtocol: 17, destinationPort: 53), rewrites: [.setDSCP(10)]),
            Rule(RuleMatch(sourceID: 3), .drop),
        ])
        #expect(table.firstMatch(Self.ipv4UDPKey) == 1)
        #expect(table.firstMatch(RuleKey(sourceID: 9, ipProtocol: 17, ports: (1, 53))) == 0)
        #expect(table.firstMatch(RuleKey(sourceID: 3, ipProtocol: 6, ports: (1, 53))) == 2)
        #expect(table.firstMatch(RuleKey(sourceID: 4, ipProtocol: 6, ports: (1, 53))) == nil)
    }

    @Test func constraintsNeedTheFieldToBePresent() throws {
        let table = try RuleTable(rules: [
            Rule(RuleMatch(destinationPort: 0), .drop), Rule(RuleMatch(ipProtocol: 0), .drop),
        ])
        #expect(table.firstMatch(RuleKey(sourceID: 0, ipProtocol: nil, ports: nil)) == nil, "non-IP")
        #expect(table.firstMatch(RuleKey(sourceID: 0, ipProtocol: 47, ports: nil)) == nil, "no ports")
        #expect(table.firstMatch(RuleKey(sourceID: 0, ipProtocol: 6, ports: (5, 0))) == 0)
        #expect(table.firstMatch(RuleKey(sourceID: 0, ipProtocol: 0, ports: nil)) == 1)
        let any = try RuleTable(rules: [Rule(.any, .drop)])
        #expect(any.firstMatch(RuleKey(sourceID: 0, ipProtocol: nil, ports: nil)) == 0)
    }

    @Test func applyForwardsDropsAndRewrites() throws {
        let table = try RuleTable(rules: [
            Rule(RuleMatch(sourceID: 1), .drop),
            Rule(RuleMatch(sourceID: 2), rewrites: [.decrementTTL, .pushVLAN(id: 7, priority: 1, tpid: 0x8100)]),
            Rule(RuleMatch(sourceID: 3)),
        ], defaultVerdict: .drop)
        func run(_ sourceID: UInt16, _ frame: [UInt8]) throws -> (RuleOutcome, RewriteBuffer) {
            var buffer = try RewriteBuffer(frame)
            let outcome = buffer.storage.withUnsafeMutableBytes {
                table.apply(RuleKey(sourceID: sourceID, ipProtocol: 6, ports: (40000, 80)), to: $0, layout: &buffer.layout)
            }
            return (outcome, buffer)
        }
        #expect(try run(1, Sample.ipv4TCP()).0 == .dropped(.droppedByRule))
        #expect(try run(4, Sample.ipv4TCP()).0 == .dropped(.droppedByRule), "default verdict")
        #expect(try run(3, Sample.ipv4TCP()).0 == .forwarded)
        let (outcome, buffer) = try run(2, Sample.ipv4TCP(ttl: 9))
        #expect(outcome == .rewritten)
        #expect(buffer.bytes == Sample.ipv4TCP(tags: [(0x8100, 0x2000 | 7)], ttl: 8))
        #expect(try run(2, Sample.ipv4TCP(ttl: 1)).0 == .dropped(.ttlExpired))
    }

    @Test func ruleErrorsAreTyped() {
        let tooMany = PacketLimits.ruleCountMax + 1
        #expect(throws: RuleError.tooManyRules(tooMany, max: PacketLimits.ruleCountMax)) {
            _ = try RuleTable(rules: (0..<tooMany).map { Rule(.any, name: "r\($0)") })
        }
        #expect(throws: RuleError.tooManyRewrites(5, rule: 0, max: PacketLimits.rewritesPerRuleMax)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [Rewrite](repeating: .decrementTTL, count: 5))])
        }
        #expect(throws: RuleError.rewritesOnDropRule(rule: 1)) {
            _ = try RuleTable(rules: [Rule(.any), Rule(.any, .drop, rewrites: [.stripVLAN])])
        }
        #expect(throws: RuleError.invalidVLANID(4096, rule: 0)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [.setVLAN(id: 4096)])])
        }
        #expect(throws: RuleError.invalidVLANID(5000, rule: 0)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [.pushVLAN(id: 5000, priority: 0, tpid: 0x8100)])])
        }
        #expect(throws: RuleError.invalidVLANPriority(8, rule: 0)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [.pushVLAN(id: 1, priority: 8, tpid: 0x8100)])])
        }
        #expect(throws: RuleError.invalidTPID(0x0800, rule: 0)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [.pushVLAN(id: 1, priority: 0, tpid: 0x0800)])])
        }
        #expect(throws: RuleError.invalidDSCP(64, rule: 0)) {
            _ = try RuleTable(rules: [Rule(.any, rewrites: [.setDSCP(64)])])
        }
    }
}
