// Path: Tests/SluicePacketTests/OutputTagTests.swift — the action stage tags each packet it passes on
// with its rule's output index (0: the sink) when the table has named outputs, and leaves the
// metadata alone when it has none.
import SluiceCore
import Testing

@testable import SluicePacket

@Suite struct OutputTagTests {
    @Test func actionStageTagsEachPacketWithItsOutput() throws {
        let fixture = try PoolFixture()
        let drops = DropCounterTable()
        var parse = ParseClassifyStage(pool: fixture.pool, classifier: StageTests.classifier, drops: drops)
        let rules = try RuleTable(rules: [
            Rule(RuleMatch(ipProtocol: 17), name: "udp", output: "b"),
            Rule(RuleMatch(ipProtocol: 6, destinationPort: 23), .drop, name: "telnet"),
            Rule(RuleMatch(ipProtocol: 6), name: "tcp", output: "a"),
        ], outputs: ["a", "b"])
        var action = ActionStage(pool: fixture.pool, rules: rules, drops: drops)
        let tcp = try fixture.add(Sample.ipv4TCP(), port: 7)
        let udp = try fixture.add(Sample.ipv4UDP(), port: 7)
        let other = try fixture.add(Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 1, payload: [8, 0, 0, 0, 0, 0, 0, 0])), port: 7)
        #expect(fixture.run(&parse) == 3)
        #expect(fixture.run(&action) == 3)
        #expect(fixture.items == [UInt64(tcp), UInt64(udp), UInt64(other)], "order kept")
        #expect(fixture.metadata(UInt64(tcp)).outputIndex == 1)
        #expect(fixture.metadata(UInt64(udp)).outputIndex == 2)
        #expect(fixture.metadata(UInt64(other)).outputIndex == 0, "no match: the sink")
        #expect(rules.hits.hits(rule: 0).packets == 1 && rules.hits.hits(rule: 2).packets == 1)
        fixture.freeAll()
        #expect(fixture.pool.freeCount == fixture.pool.bufferCount)
    }

    @Test func withoutOutputsTheMetadataIsLeftAlone() throws {
        let fixture = try PoolFixture()
        let drops = DropCounterTable()
        var parse = ParseClassifyStage(pool: fixture.pool, classifier: StageTests.classifier, drops: drops)
        var action = ActionStage(pool: fixture.pool, rules: try RuleTable(rules: [Rule(.any)]), drops: drops)
        let tcp = try fixture.add(Sample.ipv4TCP(), port: 7)
        #expect(fixture.run(&parse) == 1)
        #expect(fixture.run(&action) == 1)
        #expect(fixture.metadata(UInt64(tcp)).port == 7)
        fixture.freeAll()
    }

    @Test func outputCountersAddPerOutput() {
        let counters = OutputCounters(outputCount: 3)
        counters.add(output: 0, packets: 2, bytes: 120)
        counters.add(output: 2, packets: 1, bytes: 60)
        counters.add(output: 2, packets: 1, bytes: 64)
        #expect(counters.counts(output: 0) == (2, 120))
        #expect(counters.counts(output: 1) == (0, 0))
        #expect(counters.counts(output: 2) == (2, 124))
    }
}
