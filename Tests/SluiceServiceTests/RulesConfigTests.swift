// Path: Tests/SluiceServiceTests/RulesConfigTests.swift — a pipeline's `rules:` decoded into its rule
// table; every mistake names the rule (index and name), the key path and the line.
import Glibc
import SluicePacket
import SluiceReplay
import SluiceService
import SluiceTestSupport
import Testing

@Suite struct RulesConfigTests {
    static func pipeline(_ rules: String) -> String {
        """
        pipelines:
          - name: p
            source:
              pcap: in.pcap
            sink:
              pcap: out.pcap
            rules:
        \(rules)
        """
    }

    func load(_ yaml: String) throws(ConfigError) -> ServiceConfiguration {
        try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
    }

    func error(_ rules: String) -> String {
        do {
            _ = try load(Self.pipeline(rules))
            return "no error"
        } catch { return "\(error)" }
    }

    @Test func everyKeyDecodes() throws {
        let configuration = try load(Self.pipeline("""
                  - name: drop-telnet
                    match: {protocol: tcp, dst_port: 23}
                    action: drop
                  - name: web
                    match:
                      in_port: 1
                      source_id: 2
                      vlan: 30
                      src_mac: 02:00:00:00:00:0a
                      dst_mac: 02:00:00:00:00:0b
                      src_prefix: 198.18.0.0/15
                      dst_prefix: 198.18.1.0/24
                      protocol: 6
                      src_port: 1024-65535
                      dst_port: 80
                    rewrite:
                      - set_src_ip: 198.19.0.0/16
                      - set_dst_port: 8080
                      - push_vlan: {id: 7, priority: 3, tpid: 0x88a8}
                      - dec_ttl: true
                  - match: {dst_prefix: "2001:db8::/32"}
                    rewrite: [{set_dst_ip: "2001:db8::1"}, {set_ttl: 9}, {pop_vlan: true}, {fix_checksums: true}]
                  - rewrite: [{set_src_mac: 02:00:00:00:00:ee}, {set_dst_mac: 02:00:00:00:00:ff}, {set_vlan: 5}, {set_dscp: 46}]
                  - {action: count, match: {protocol: icmp}}
        """))
        let table = configuration.pipelines[0].path.rules
        #expect(table.names == ["drop-telnet", "web", "rule2", "rule3", "rule4"])
        #expect(table.rules[0] == Rule(RuleMatch(ipProtocol: 6, destinationPort: 23), .drop, name: "drop-telnet"))
        let web = table.rules[1]
        #expect(web.match == RuleMatch(inputPort: 1, sourceID: 2, vlanID: 30, sourceMAC: MACAddress(0x02_00_00_00_00_0A),
                                       destinationMAC: MACAddress(0x02_00_00_00_00_0B), sourcePrefix: IPPrefix("198.18.0.0/15"),
                                       destinationPrefix: IPPrefix("198.18.1.0/24"), ipProtocol: 6,
                                       sourcePorts: 1024...65535, destinationPorts: 80...80))
        #expect(web.rewrites == [.setSourceAddress(IPPrefix("198.19.0.0/16")!), .setDestinationPort(8080),
                                 .pushVLAN(id: 7, priority: 3, tpid: 0x88A8), .decrementTTL])
        #expect(table.rules[2].rewrites == [.setDestinationAddress(IPPrefix("2001:db8::1/128")!), .setTTL(9), .stripVLAN, .fixChecksums])
        #expect(table.rules[3].rewrites.count == 4)
        #expect(table.rules[4].match.ipProtocol == 1 && table.rules[4].verdict == .forward)
    }

    @Test func mistakesNameTheRuleAndTheField() {
        let cases: [(String, [String])] = [
            ("      - name: web\n        match: {dst_port: 90-80}", ["pipelines[0].rules[0].match.dst_port", "rule 0 'web'", "low end"]),
            ("      - {}\n      - name: b\n        match: {vlan: 4096}", ["pipelines[0].rules[1].match.vlan", "rule 1 'b'", "0...4095"]),
            ("      - match: {src_mac: nope}", ["rules[0].match.src_mac", "rule 0:", "not a MAC"]),
            ("      - match: {src_prefix: 198.18.0.1/15}", ["rules[0].match.src_prefix", "host bits"]),
            ("      - match: {src_prefix: 198.18.0.0/15, dst_prefix: '2001:db8::/32'}", ["rules[0].match.dst_prefix", "IPv4 and an IPv6"]),
            ("      - match: {protocol: tcpp}", ["rules[0].match.protocol", "not a protocol"]),
            ("      - match: {port: 1}", ["rules[0].match.port", "unknown key"]),
            ("      - {name: x, action: reject}", ["rules[0].action", "rule 0 'x'", "forward, count or drop"]),
            ("      - {name: x, action: drop, rewrite: [{dec_ttl: true}]}", ["rules[0].rewrite", "drop rule"]),
            ("      - {name: x, rewrite: [{set_ttl: 300}]}", ["rules[0].rewrite[0].set_ttl", "0...255"]),
            ("      - {name: x, rewrite: [{teleport: true}]}", ["rules[0].rewrite[0].teleport", "unknown key"]),
            ("      - {name: x, rewrite: [{push_vlan: {id: 1, tpid: 0x0800}}]}", ["tpid", "0x8100"]),
            ("      - {name: x, rewrite: [a, b, c, d, e]}", ["rules[0].rewrite", "at most 4"]),
            ("      - {name: a}\n      - {name: a}", ["rule 1 'a'", "taken"]),
            ("      - {name: 'bad name'}", ["rules[0].name", "letters"]),
        ]
        for (rules, fragments) in cases {
            let text = error(rules)
            for fragment in fragments { #expect(text.contains(fragment), "\(rules) -> \(text)") }
        }
        #expect(error("      - {name: a}").contains("no error"))
    }

    @Test func rulesNeedTheActionStage() throws {
        let yaml = Self.pipeline("      - {action: drop}").replacing("    rules:", with: "    stages: classify\n    rules:")
        do {
            _ = try load(yaml)
            Issue.record("accepted rules without an action stage")
        } catch {
            #expect("\(error)".contains("classify-and-act"))
        }
    }

    @Test func ruleFilesHoldARulesKey() throws {
        #expect(try RulesConfiguration.table(yaml: "rules:\n  - {action: drop}\n  - {}", origin: "rules").rules.count == 2)
        #expect(throws: ConfigError.self) { try RulesConfiguration.table(yaml: "- {action: drop}", origin: "rules") }
        #expect(try RulesConfiguration.table(yaml: "", origin: "rules", extraRules: ["{name: x}"]).names == ["x"])
        #expect(throws: ConfigError.self) { try RulesConfiguration.table(yaml: "rulez: []", origin: "rules") }
    }
}

/// `sluice run` with a pipeline's rules: the hits reach the metrics endpoint, and `sluice stats`
/// renders them as a Rules table.
@Suite struct RulesMetricsTests {
    @Test func ruleHitsReachTheMetricsAndStats() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        // The sample: 2000 frames; a rule per protocol, the rest under "(no match)".
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: replay
                source: {pcap: "\(samplePcap)", top_speed: true, loop: 2}
                sink: {discard: true}
                rules:
                  - {name: udp, match: {protocol: udp}, action: drop}
                  - {name: tcp, match: {protocol: tcp}, action: count}
            metrics: {listen: "127.0.0.1:0"}
            """)
        var samples: [MetricSample] = []
        for _ in 0..<100 {  // until the 4000 packets are counted (10 s at most)
            samples = try service.scrape()
            let udp = samples.value("sluice_rule_hits_total", ["pipeline": "replay", "rule": "udp"]) ?? 0
            let tcp = samples.value("sluice_rule_hits_total", ["pipeline": "replay", "rule": "tcp"]) ?? 0
            let none = samples.value("sluice_rule_hits_total", ["pipeline": "replay", "rule": "(no match)"]) ?? 0
            if udp + tcp + none >= 4000 { break }
            usleep(100_000)
        }
        let hits = ["udp", "tcp", "(no match)"].map {
            samples.value("sluice_rule_hits_total", ["pipeline": "replay", "rule": $0]) ?? 0
        }
        #expect(hits.reduce(0, +) == 4000, "\(hits)")
        #expect(hits[0] > 0, "the sample has UDP")
        let drops = samples.value("sluice_pipeline_drops_total", ["pipeline": "replay", "reason": "droppedByRule"]) ?? 0
        #expect(drops == hits[0])
        #expect((samples.value("sluice_rule_bytes_total", ["pipeline": "replay", "rule": "udp"]) ?? 0) > hits[0] * 40)
        let table = StatsTable.render(samples)
        #expect(table.contains("Rules") && table.contains("(no match)") && table.contains("udp"), "\(table)")
        let (status, _) = try service.terminate()
        #expect(status == 0)
    }
}
