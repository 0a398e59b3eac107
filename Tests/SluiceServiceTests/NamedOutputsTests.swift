// Path: Tests/SluiceServiceTests/NamedOutputsTests.swift — rules that send to named outputs: the
// `outputs:` section and `output:` key decoded and checked (errors name the rule and field), and
// packets through `sluice replay --output` and `sluice run` landing in the right file, byte for
// byte and in order, against the same capture filtered by drop rules.
import Glibc
import SluicePacket
import SluiceReplay
import SluiceService
import SluiceTestSupport
import Testing

@Suite struct NamedOutputsConfigTests {
    static func pipeline(outputs: String, rules: String, stages: String = "classify-and-act") -> String {
        """
        pipelines:
          - name: p
            source:
              pcap: in.pcap
            sink:
              pcap: out.pcap
            stages: \(stages)
            outputs:
        \(outputs)
            rules:
        \(rules)
        """
    }

    func load(_ yaml: String) throws(ConfigError) -> ServiceConfiguration {
        try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
    }

    func error(_ yaml: String) -> String {
        do {
            _ = try load(yaml)
            return "no error"
        } catch { return "\(error)" }
    }

    @Test func outputsAndRuleOutputsDecode() throws {
        let configuration = try load(Self.pipeline(outputs: """
                  mirror: {pcap: out/mirror.pcap}
                  uplink: {interface: veth1}
                  void: {discard: true}
            """, rules: """
                  - {name: web, match: {protocol: tcp, dst_port: 80}, output: mirror}
                  - {name: dns, match: {protocol: udp}, output: uplink, rewrite: [{dec_ttl: true}]}
                  - {name: rest, action: drop}
            """))
        let path = configuration.pipelines[0].path
        #expect(path.outputs == [NamedOutput(name: "mirror", output: .pcapFile("out/mirror.pcap")),
                                 NamedOutput(name: "uplink", output: .interface("veth1")),
                                 NamedOutput(name: "void", output: .discard)])
        #expect(path.rules.outputs == ["mirror", "uplink", "void"])
        #expect(path.rules.rules.map(\.output) == ["mirror", "uplink", nil])
        #expect(path.rules.outputIndex(rule: 0) == 1)
        #expect(path.rules.outputIndex(rule: 1) == 2)
        #expect(path.rules.outputIndex(rule: 2) == 0)
        #expect(path.rules.outputIndex(rule: 3) == 0, "no match goes to the sink")
    }

    @Test func unknownOutputNamesTheRuleAndField() {
        let text = error(Self.pipeline(outputs: "      a: {discard: true}", rules: """
                  - {name: first, match: {protocol: tcp}, output: a}
                  - {name: second, match: {protocol: udp}, output: b}
            """))
        #expect(text.contains("rules[1].output"), "\(text)")
        #expect(text.contains("rule 1 'second'"), "\(text)")
        #expect(text.contains("'b' is not declared") && text.contains("declared: a"), "\(text)")
    }

    @Test func mistakesAreRefusedNamingTheKey() {
        let drop = error(Self.pipeline(outputs: "      a: {discard: true}",
                                       rules: "      - {name: x, action: drop, output: a}"))
        #expect(drop.contains("rules[0].output") && drop.contains("rule 0 'x'") && drop.contains("drop rule"), "\(drop)")
        let nine = (0..<9).map { "      o\($0): {discard: true}" }.joined(separator: "\n")
        let tooMany = error(Self.pipeline(outputs: nine, rules: "      - {}"))
        #expect(tooMany.contains("9 named outputs, at most 8"), "\(tooMany)")
        let reserved = error(Self.pipeline(outputs: "      default: {discard: true}", rules: "      - {}"))
        #expect(reserved.contains("outputs.default"), "\(reserved)")
        let twoKinds = error(Self.pipeline(outputs: "      a: {discard: true, pcap: x.pcap}", rules: "      - {}"))
        #expect(twoKinds.contains("outputs.a") && twoKinds.contains("exactly one"), "\(twoKinds)")
        let sameFile = error(Self.pipeline(outputs: "      a: {pcap: out.pcap}", rules: "      - {}"))
        #expect(sameFile.contains("outputs.a.pcap") && sameFile.contains("out.pcap"), "\(sameFile)")
        let noAction = error(Self.pipeline(outputs: "      a: {discard: true}", rules: "      - {}", stages: "classify")
            .replacing("    rules:\n      - {}", with: ""))
        #expect(noAction.contains("outputs") && noAction.contains("classify-and-act"), "\(noAction)")
    }

    /// The dispatch stage is one more stage: `stage_cores` names it.
    @Test func stageCoresCountTheOutputsStage() throws {
        let yaml = Self.pipeline(outputs: "      a: {discard: true}", rules: "      - {output: a}")
        let five = try load(yaml + "\n    stage_cores: [0, 1, 1, 1, 1]")
        #expect(five.pipelines[0].path.stageCount == 5)
        #expect(five.pipelines[0].stageCores == [0, 1, 1, 1, 1])
        let four = error(yaml + "\n    stage_cores: [0, 1, 1, 1]")
        #expect(four.contains("stage_cores") && four.contains("one core per stage (5"), "\(four)")
    }

    @Test func ruleTableChecksOutputs() {
        #expect(throws: RuleError.unknownOutput("b", rule: 0, known: ["a"])) {
            try RuleTable(rules: [Rule(.any, output: "b")], outputs: ["a"])
        }
        #expect(throws: RuleError.outputOnDropRule(rule: 0)) {
            try RuleTable(rules: [Rule(.any, .drop, output: "a")], outputs: ["a"])
        }
        #expect(throws: RuleError.invalidOutputName("a")) { try RuleTable(rules: [], outputs: ["a", "a"]) }
        #expect(throws: RuleError.invalidOutputName("default")) { try RuleTable(rules: [], outputs: ["default"]) }
        #expect(throws: RuleError.tooManyOutputs(9, max: 8)) {
            try RuleTable(rules: [], outputs: (0..<9).map { "o\($0)" })
        }
    }
}

@Suite(.serialized) struct NamedOutputsReplayTests {
    func replay(_ input: String, _ output: String, _ flags: [String]) throws -> (status: Int32, lines: [String], stderr: String) {
        let binary = try #require(sluiceBinary(), "build with `swift build --build-tests` first")
        return try runCommand([binary, "replay", input, "--topspeed", "--cores", "0", "--out", output] + flags)
    }

    /// The capture through drop rules that keep only what `keep` matches: what an output should get.
    func filtered(_ input: String, keep: [String], dropFirst: [String]) throws -> [CapturedRecord] {
        let output = RuleCaptures.output("filter-\(keep.count)-\(dropFirst.count).pcap")
        defer { unlink(output) }
        var flags: [String] = []
        for match in dropFirst { flags += ["--rule", "{match: \(match), action: drop}"] }
        for match in keep { flags += ["--rule", "{match: \(match)}"] }
        if !keep.isEmpty { flags += ["--rule", "{action: drop}"] }
        let result = try replay(input, output, flags)
        try #require(result.status == 0, "\(result.stderr)")
        return try records(output)
    }

    /// Rule a's packets in output a, rule b's in b, the rest at --out: each file the capture as the
    /// drop rules filter it (equal to scapy's bytes in RulesReplayTests), so byte for byte and in order.
    @Test(needsRuleCaptures) func rulesSendToTheirOutputsByteForByte() throws {
        let input = RuleCaptures.path("rules-in.pcap")
        let (a, b, rest) = (RuleCaptures.output("a.pcap"), RuleCaptures.output("b.pcap"), RuleCaptures.output("rest.pcap"))
        defer { unlink(a); unlink(b); unlink(rest) }
        let tcp = "{protocol: tcp}"
        let v6 = "{src_prefix: '2001:db8::/32'}"
        let result = try replay(input, rest, ["--output", "a=\(a)", "--output", "b=\(b)",
                                              "--rule", "{name: ra, match: \(tcp), output: a}",
                                              "--rule", "{name: rb, match: \(v6), output: b}"])
        #expect(result.status == 0, "\(result.stderr)")
        let (gotA, gotB, gotRest) = (try records(a), try records(b), try records(rest))
        #expect(gotA == (try filtered(input, keep: [tcp], dropFirst: [])))
        #expect(gotB == (try filtered(input, keep: [v6], dropFirst: [tcp])))
        #expect(gotRest == (try filtered(input, keep: [], dropFirst: [tcp, v6])))
        #expect(gotA.count == 2 && gotB.count == 1 && gotRest.count == 3, "\(gotA.count) \(gotB.count) \(gotRest.count)")
        #expect(gotA.count + gotB.count + gotRest.count == (try records(input)).count, "nothing lost or doubled")
        let lines = result.lines.filter { $0.hasPrefix("  ") && $0.contains("drops") }
        #expect(lines.count == 3, "\(result.lines)")
        #expect(lines.first { $0.contains("default ") }?.contains(" 3 packets") == true, "\(lines)")
        #expect(lines.first { $0.contains("a ") }?.contains(" 2 packets") == true, "\(lines)")
        #expect(lines.first { $0.contains("b ") }?.contains(" 1 packets") == true, "\(lines)")
    }

    /// A rule naming an undeclared output is exit 2 naming the rule and the field; bad --output
    /// flags are usage errors.
    @Test func badOutputsAreRefused() throws {
        let out = "/tmp/sluice-test-\(getpid())-outputs.pcap"
        defer { unlink(out) }
        let unknown = try replay(samplePcap, out, ["--output", "a=discard", "--rule", "{name: x, output: nope}"])
        #expect(unknown.status == 2)
        #expect(unknown.stderr.contains("--rule[0].output") && unknown.stderr.contains("rule 0 'x'"), "\(unknown.stderr)")
        #expect(unknown.stderr.contains("'nope' is not declared"), "\(unknown.stderr)")
        let none = try replay(samplePcap, out, ["--rule", "{name: y, output: a}"])
        #expect(none.status == 2)
        #expect(none.stderr.contains("rule 0 'y'") && none.stderr.contains("declares no outputs"), "\(none.stderr)")
        for flags in [["--output", "default=discard"], ["--output", "a"], ["--output", "a=discard", "--output", "a=x.pcap"],
                      ["--output", "a=\(out)"], ["--output", "a=discard", "--stages", "3"]] {
            let result = try replay(samplePcap, out, flags)
            #expect(result.status != 0 && result.status != 2, "\(flags) accepted")
        }
    }
}

/// `sluice run` with an `outputs:` section: each rule's packets land in its output's file, the rest
/// at the sink, and the per-output counters reach the metrics and `sluice stats`.
@Suite struct NamedOutputsRunTests {
    @Test func runSendsToNamedOutputs() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let directory = "/tmp/sluice-test-\(getpid())-run-outputs"
        mkdir(directory, 0o755)
        let (udp, tcp, rest) = ("\(directory)/udp.pcap", "\(directory)/tcp.pcap", "\(directory)/rest.pcap")
        defer { unlink(udp); unlink(tcp); unlink(rest); rmdir(directory) }
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: p
                source: {pcap: "\(samplePcap)", top_speed: true}
                sink: {pcap: "\(rest)"}
                outputs:
                  u: {pcap: "\(udp)"}
                  t: {pcap: "\(tcp)"}
                rules:
                  - {name: udp, match: {protocol: udp}, output: u}
                  - {name: tcp, match: {protocol: tcp}, output: t}
            metrics: {listen: "127.0.0.1:0"}
            """)
        var samples: [MetricSample] = []
        func outputCount(_ name: String) -> Double {
            samples.value("sluice_output_packets_total", ["pipeline": "p", "output": name]) ?? 0
        }
        for _ in 0..<100 {  // until the 2000 packets are counted (10 s at most)
            samples = try service.scrape()
            if outputCount("u") + outputCount("t") + outputCount("default") >= 2000 { break }
            usleep(100_000)
        }
        let hits = ["udp", "tcp", "(no match)"].map {
            samples.value("sluice_rule_hits_total", ["pipeline": "p", "rule": $0]) ?? 0
        }
        #expect([outputCount("u"), outputCount("t"), outputCount("default")] == hits, "\(hits)")
        #expect(hits.reduce(0, +) == 2000 && hits[0] > 0 && hits[1] > 0, "\(hits)")
        #expect(samples.value("sluice_output_drops_total", ["pipeline": "p", "output": "u"]) == 0)
        let table = StatsTable.render(samples)
        #expect(table.contains("Outputs") && table.contains("default"), "\(table)")
        let (status, _) = try service.terminate()
        #expect(status == 0)
        let got = [try records(udp), try records(tcp), try records(rest)]
        #expect(got.map { Double($0.count) } == hits)
        // Each file is the capture filtered by drop rules, through `sluice replay`: byte for byte, in order.
        let replayBinary = try #require(sluiceBinary())
        for (index, keep) in ["{protocol: udp}", "{protocol: tcp}"].enumerated() {
            let expected = "\(directory)/expected-\(index).pcap"
            defer { unlink(expected) }
            let result = try runCommand([replayBinary, "replay", samplePcap, "--topspeed", "--cores", "0", "--out", expected,
                                         "--rule", "{match: \(keep)}", "--rule", "{action: drop}"])
            try #require(result.status == 0, "\(result.stderr)")
            #expect(got[index] == (try records(expected)), "output \(index)")
        }
    }
}
