// Path: Tests/SluicePacketTests/RuleMatchTests.swift — each match field through the action stage
// (first match wins, hit counters), and the L3/L4 rewrites against a full checksum recompute.
import SluiceCore
import Testing

@testable import SluicePacket

@Suite struct RuleMatchTests {
    static let classifier = Classifier(try! ClassifierConfiguration(key: .sourceMAC))

    /// Runs parse/classify then the action stage with `rules` over `frames` (port i for frame i
    /// unless given); returns the index of the rule each frame hit (rules.count: none) and the
    /// surviving frames' bytes.
    static func run(_ rules: RuleTable, _ frames: [[UInt8]], ports: [UInt16]? = nil) throws
        -> (hits: [Int], out: [[UInt8]])
    {
        var hits: [Int] = []
        var out: [[UInt8]] = []
        for (position, frame) in frames.enumerated() {
            let fixture = try PoolFixture()
            try fixture.add(frame, port: ports?[position] ?? 0)
            let drops = DropCounterTable()
            var parse = ParseClassifyStage(pool: fixture.pool, classifier: classifier, drops: drops)
            #expect(fixture.run(&parse) == 1, "frame \(position) parses")
            let before = (0...rules.rules.count).map { rules.hits.hits(rule: $0).packets }
            var action = ActionStage(pool: fixture.pool, rules: rules, drops: drops)
            let kept = fixture.run(&action)
            let after = (0...rules.rules.count).map { rules.hits.hits(rule: $0).packets }
            let changed = (0...rules.rules.count).filter { after[$0] != before[$0] }
            #expect(changed.count == 1, "one rule counts each packet")
            hits.append(changed.first ?? -1)
            if kept == 1 { out.append(fixture.frame(fixture.items[0])) }
            fixture.freeAll()
        }
        return (hits, out)
    }

    static let v4 = Sample.ipv4TCP()  // 10.0.0.1:40000 -> 192.168.1.2:80, MAC A -> B
    static let v4Tagged = Sample.ipv4TCP(tags: [(0x8100, 0x2000 | 30)])
    static let v6 = Sample.ipv6TCP()  // 2001:db8:0:1::1 -> 2001:db8:ff:2::2, TCP to 443
    static let udp = Sample.ipv4UDP(sourcePort: 50000, destinationPort: 53)
    static let arp = Build.ethernet(etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))

    @Test func eachFieldMatchesOnlyPacketsThatHaveIt() throws {
        let cases: [(String, RuleMatch, [Bool])] = [  // v4, v4Tagged, v6, udp, arp
            ("in_port", RuleMatch(inputPort: 1), [false, true, false, false, false]),
            ("vlan", RuleMatch(vlanID: 30), [false, true, false, false, false]),
            ("src_mac", RuleMatch(sourceMAC: MACAddress(Addr.macA)), [true, true, true, true, true]),
            ("dst_mac", RuleMatch(destinationMAC: MACAddress(Addr.macA)), [false, false, false, false, false]),
            ("src_prefix v4", RuleMatch(sourcePrefix: IPPrefix("10.0.0.0/8")), [true, true, false, true, false]),
            ("dst_prefix v4", RuleMatch(destinationPrefix: IPPrefix("192.168.1.0/24")), [true, true, false, true, false]),
            ("src_prefix v6", RuleMatch(sourcePrefix: IPPrefix("2001:db8::/32")), [false, false, true, false, false]),
            ("dst_prefix v6 miss", RuleMatch(destinationPrefix: IPPrefix("2001:db8:fe::/48")), [false, false, false, false, false]),
            ("any v4", RuleMatch(sourcePrefix: IPPrefix("0.0.0.0/0")), [true, true, false, true, false]),
            ("protocol", RuleMatch(ipProtocol: 6), [true, true, true, false, false]),
            ("src_port range", RuleMatch(sourcePorts: 39000...40000), [true, true, true, false, false]),
            ("dst_port range", RuleMatch(destinationPorts: 53...443), [true, true, true, true, false]),
            ("dst_port single", RuleMatch(destinationPort: 443), [false, false, true, false, false]),
            ("all of", RuleMatch(inputPort: 1, vlanID: 30, sourcePrefix: IPPrefix("10.0.0.1/32"), ipProtocol: 6,
                                 destinationPorts: 80...80), [false, true, false, false, false]),
        ]
        let frames = [Self.v4, Self.v4Tagged, Self.v6, Self.udp, Self.arp]
        for (name, match, expected) in cases {
            let table = try RuleTable(rules: [Rule(match, .drop, name: name)])
            let (hits, _) = try Self.run(table, frames, ports: [0, 1, 0, 0, 0])
            #expect(hits.map { $0 == 0 } == expected, "\(name)")
            #expect(table.hits.hits(rule: 0).packets == UInt64(expected.filter { $0 }.count), "\(name)")
        }
    }

    @Test func firstMatchWinsAndCountsPacketsAndBytes() throws {
        let table = try RuleTable(rules: [
            Rule(RuleMatch(ipProtocol: 17), .drop, name: "udp"),
            Rule(RuleMatch(destinationPorts: 1...1024), name: "low"),
            Rule(RuleMatch(ipProtocol: 6), .drop, name: "tcp-never"),
        ])
        let (hits, out) = try Self.run(table, [Self.v4, Self.udp, Self.v6, Self.arp, Self.v4])
        #expect(hits == [1, 0, 1, 3, 1])
        #expect(out == [Self.v4, Self.v6, Self.arp, Self.v4])
        #expect(table.hits.hits(rule: 1).packets == 3)
        #expect(table.hits.hits(rule: 1).bytes == UInt64(2 * Self.v4.count + Self.v6.count))
        #expect(table.hits.hits(rule: 0).packets == 1)
        #expect(table.hits.hits(rule: 0).bytes == UInt64(Self.udp.count))
        #expect(table.hits.hits(rule: 2).packets == 0)
        #expect(table.names == ["udp", "low", "tcp-never"])
    }

    @Test func oneBurstCountsRunsOfOneRule() throws {
        let table = try RuleTable(rules: [Rule(RuleMatch(ipProtocol: 6), name: "tcp")])
        let fixture = try PoolFixture()
        for frame in [Self.v4, Self.v4, Self.udp, Self.v4, Self.arp] { try fixture.add(frame) }
        let drops = DropCounterTable()
        var parse = ParseClassifyStage(pool: fixture.pool, classifier: Self.classifier, drops: drops)
        var action = ActionStage(pool: fixture.pool, rules: table, drops: drops)
        #expect(fixture.run(&parse) == 5)
        #expect(fixture.run(&action) == 5)
        #expect(table.hits.hits(rule: 0).packets == 3)
        #expect(table.hits.hits(rule: 0).bytes == UInt64(3 * Self.v4.count))
        #expect(table.hits.hits(rule: 1).packets == 2)
        fixture.freeAll()
    }

    @Test func rulesAreChecked() {
        #expect(throws: RuleError.invalidVLANID(4096, rule: 0)) { _ = try RuleTable(rules: [Rule(RuleMatch(vlanID: 4096))]) }
        #expect(throws: RuleError.mixedAddressFamilies(rule: 0)) {
            _ = try RuleTable(rules: [Rule(RuleMatch(sourcePrefix: IPPrefix("10.0.0.0/8"), destinationPrefix: IPPrefix("::/0")))])
        }
        #expect(throws: RuleError.duplicateName("a", rule: 1)) {
            _ = try RuleTable(rules: [Rule(.any, name: "a"), Rule(.any, name: "a")])
        }
        #expect(throws: RuleError.invalidMTU(20, rule: 0)) { _ = try RuleTable(rules: [], tableRewrites: [.truncateToMTU(20)]) }
        #expect(throws: RuleError.tooManyTableRewrites(17, max: 16)) {
            _ = try RuleTable(rules: [], tableRewrites: [Rewrite](repeating: .fixChecksums, count: 17))
        }
    }

    // MARK: L3/L4 rewrites

    /// `frame` with correct IPv4 and L4 checksums (the builder leaves L4 checksums as they come).
    static func fixed(_ frame: [UInt8]) throws -> [UInt8] {
        var buffer = try RewriteBuffer(frame)
        #expect(buffer.apply(.fixChecksums) == nil)
        return buffer.bytes
    }

    /// Applies `rewrite` to `frame`; checks the incremental checksums equal a full recompute.
    static func rewritten(_ frame: [UInt8], _ rewrite: Rewrite) throws -> [UInt8] {
        var buffer = try RewriteBuffer(try fixed(frame))
        #expect(buffer.apply(rewrite) == nil)
        let incremental = buffer.bytes
        #expect(buffer.apply(.fixChecksums) == nil)
        #expect(buffer.bytes == incremental, "incremental checksums of \(rewrite) equal a full recompute")
        return incremental
    }

    @Test func addressesPortsAndTTLWithChecksums() throws {
        let v4 = try Self.rewritten(Self.v4, .setSourceAddress(IPPrefix("198.18.0.9/32")!))
        #expect(Array(v4[26..<30]) == [198, 18, 0, 9])
        let mapped = try Self.rewritten(Self.v4, .mapDestinationPrefix(from: IPPrefix("192.168.0.0/16")!, to: IPPrefix("198.19.0.0/16")!))
        #expect(Array(mapped[30..<34]) == [198, 19, 1, 2])
        let unmapped = try Self.rewritten(Self.v4, .mapSourcePrefix(from: IPPrefix("172.16.0.0/12")!, to: IPPrefix("198.19.0.0/16")!))
        #expect(unmapped == (try Self.fixed(Self.v4)), "outside `from`: unchanged")
        let v6 = try Self.rewritten(Self.v6, .setDestinationAddress(IPPrefix("2001:db8:aaaa::/48")!))
        #expect(Array(v6[38..<44]) == [0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xaa])
        #expect(Array(v6[44..<54]) == Array(Self.v6[44..<54]), "host bits kept")
        let wrongFamily = try Self.rewritten(Self.v6, .setSourceAddress(IPPrefix("198.18.0.9/32")!))
        #expect(wrongFamily == (try Self.fixed(Self.v6)))
        let port = try Self.rewritten(Self.udp, .setDestinationPort(5353))
        #expect(Array(port[36..<38]) == [0x14, 0xE9])
        let sport = try Self.rewritten(Self.v6, .setSourcePort(1))
        #expect(Array(sport[54..<56]) == [0, 1])
        let ttl = try Self.rewritten(Self.v4, .setTTL(3))
        #expect(ttl[22] == 3)
        #expect(try Self.rewritten(Self.v6, .setTTL(7))[21] == 7)
        #expect(try Self.rewritten(Self.arp, .setTTL(7)) == Self.arp, "not IP: unchanged")
    }

    @Test func truncateToMTUCutsAndFixesLengths() throws {
        let big = Sample.ipv4UDP(payload: [UInt8](repeating: 7, count: 1000))
        var buffer = try RewriteBuffer(try Self.fixed(big))
        #expect(buffer.apply(.truncateToMTU(500)) == nil)
        #expect(buffer.layout.length == 14 + 500)
        #expect(UInt16(buffer.bytes[16]) << 8 | UInt16(buffer.bytes[17]) == 500)
        let cut = buffer.bytes
        #expect(buffer.apply(.fixChecksums) == nil)
        #expect(buffer.bytes == cut, "checksums already recomputed")
        var small = try RewriteBuffer(Self.udp)
        #expect(small.apply(.truncateToMTU(1500)) == nil)
        #expect(small.bytes == Self.udp, "short enough: unchanged")
    }

    @Test func tableRewritesRunAfterTheRuleOnEveryForwardedPacket() throws {
        let table = try RuleTable(rules: [Rule(RuleMatch(ipProtocol: 17), .drop, name: "udp"),
                                          Rule(RuleMatch(ipProtocol: 6), rewrites: [.setTTL(9)], name: "tcp")],
                                  tableRewrites: [.setSourceMAC(MACAddress(0x02_00_00_00_00_EE))])
        let (hits, out) = try Self.run(table, [Self.v4, Self.udp, Self.arp])
        #expect(hits == [1, 0, 2])
        #expect(out.count == 2)
        #expect(out.allSatisfy { Array($0[6..<12]) == [2, 0, 0, 0, 0, 0xEE] })
        #expect(out[0][22] == 9)
    }
}
