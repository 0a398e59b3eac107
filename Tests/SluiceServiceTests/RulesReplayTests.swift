// Path: Tests/SluiceServiceTests/RulesReplayTests.swift — `sluice replay` with rules on scapy-made
// captures against scapy's expected bytes, with tcprewrite's jobs against tcprewrite's own output,
// and bad rule files (exit 2 naming the rule).
import Glibc
import SluicePacketIO
import SluiceTestSupport
import Testing

/// The captures of scripts/make-rule-captures.py, made once per test process.
enum RuleCaptures {
    static let directory: String? = {
        guard access("/usr/bin/python3", X_OK) == 0 else { return nil }
        var template = Array("/tmp/sluice-rule-captures-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { return nil }
        let directory = String(cString: template)
        let result = try? runCommand(["/usr/bin/python3", repositoryRoot + "/scripts/make-rule-captures.py", directory])
        return result?.status == 0 ? directory : nil
    }()

    static func path(_ name: String) -> String { (directory ?? "/nonexistent") + "/" + name }
    static func output(_ name: String) -> String { path("out-\(getpid())-\(name)") }

    static var tcprewrite: String? {
        ["/usr/bin/tcprewrite", "/usr/local/bin/tcprewrite"].first { access($0, X_OK) == 0 }
    }
}

/// A pcap record's lengths and bytes.
struct CapturedRecord: Equatable, CustomStringConvertible {
    var capturedLength: Int
    var wireLength: Int
    var bytes: [UInt8]
    var description: String { "\(capturedLength)/\(wireLength) " + bytes.map { String($0, radix: 16) }.joined(separator: " ") }
}

func records(_ path: String) throws -> [CapturedRecord] {
    var reader = try PcapReader(path: path)
    var result: [CapturedRecord] = []
    while let record = try reader.next() {
        result.append(CapturedRecord(capturedLength: record.capturedLength, wireLength: record.wireLength,
                                     bytes: Array(record.bytes)))
    }
    return result
}

let needsRuleCaptures = Testing.ConditionTrait.enabled(if: RuleCaptures.directory != nil || isCI,
                                                       "needs /usr/bin/python3 with scapy (python3-scapy) to make captures")
let needsTcprewrite = Testing.ConditionTrait.enabled(if: RuleCaptures.tcprewrite != nil || isCI,
                                                     "needs tcprewrite (Debian's tcpreplay) to compare with")

@Suite(.serialized) struct RulesReplayTests {
    func replay(_ input: String, _ output: String, _ flags: [String]) throws -> (status: Int32, lines: [String], stderr: String) {
        let binary = try #require(sluiceBinary(), "build with `swift build --build-tests` first")
        return try runCommand([binary, "replay", input, "--topspeed", "--cores", "0", "--out", output] + flags)
    }

    /// Every case of the script: each match and action, sluice's output equal to scapy's bytes.
    @Test(needsRuleCaptures) func eachMatchAndActionGivesScapysBytes() throws {
        let directory = try #require(RuleCaptures.directory, "scapy made no captures")
        let manifest = String(decoding: try #require(readAll(directory + "/rules-cases.txt")), as: UTF8.self)
        var cases = 0
        for line in manifest.split(separator: "\n") {
            let fields = line.split(separator: "\t", maxSplits: 1).map(String.init)
            try #require(fields.count == 2)
            let (name, rule) = (fields[0], fields[1])
            let output = RuleCaptures.output("\(name).pcap")
            defer { unlink(output) }
            let result = try replay(RuleCaptures.path("rules-in.pcap"), output, ["--rule", rule])
            #expect(result.status == 0, "\(name): \(result.stderr)")
            let got = try records(output)
            let expected = try records(RuleCaptures.path("rules-\(name).pcap"))
            #expect(got == expected, "\(name): \(rule)")
            #expect(result.lines.contains { $0.contains("Rule hits") }, "\(name) prints its hits")
            cases += 1
        }
        #expect(cases >= 15)
    }

    @Test(needsRuleCaptures) func hitsArePrintedPerRule() throws {
        let output = RuleCaptures.output("hits.pcap")
        defer { unlink(output) }
        let result = try replay(RuleCaptures.path("rules-in.pcap"), output,
                                ["--rule", "{name: tcp, match: {protocol: tcp}, action: drop}",
                                 "--rule", "{name: v6, match: {src_prefix: '2001:db8::/32'}}"])
        #expect(result.status == 0, "\(result.stderr)")
        let hits = result.lines.filter { $0.hasPrefix("  ") && $0.contains("packets") }
        #expect(hits.count == 3, "\(result.lines)")
        #expect(hits.first { $0.contains("tcp ") }?.contains(" 2 packets") == true, "\(hits)")
        #expect(hits.first { $0.contains("v6 ") }?.contains(" 1 packets") == true, "\(hits)")
        #expect(hits.first { $0.contains("(no match)") }?.contains(" 3 packets") == true, "\(hits)")
        #expect(try records(output).count == 4)
    }

    /// tcprewrite and sluice on the same capture with the same flags: the same records, byte for byte.
    @Test(needsRuleCaptures, needsTcprewrite) func tcprewriteJobsMatchTcprewrite() throws {
        let tcprewrite = try #require(RuleCaptures.tcprewrite, "apt-get install tcpreplay")
        let cases: [(name: String, input: String, flags: [String])] = [
            ("ipmap", "tcprewrite-in.pcap", ["--srcipmap=198.18.0.0/16:198.19.0.0/16", "--dstipmap=198.19.0.0/16:198.18.128.0/17"]),
            ("ipmap-narrow", "tcprewrite-in.pcap", ["--srcipmap=198.18.1.0/24:198.19.7.0/24,198.18.3.0/24:198.18.9.9/32"]),
            ("ipmap-swap", "tcprewrite-in.pcap", ["--srcipmap=198.18.0.0/16:198.19.0.0/16,198.19.0.0/16:198.18.0.0/16",
                                                  "--dstipmap=198.19.0.0/16:198.18.0.0/16,198.18.0.0/16:198.19.0.0/16"]),
            ("macs", "tcprewrite-in.pcap", ["--enet-smac=02:aa:00:00:00:01", "--enet-dmac=02:bb:00:00:00:02"]),
            ("mtu", "tcprewrite-in.pcap", ["--mtu=1000", "--mtu-trunc"]),
            ("fixcsum", "tcprewrite-badsum.pcap", ["--fixcsum"]),
            ("all", "tcprewrite-in.pcap", ["--srcipmap=198.18.0.0/15:198.19.0.0/16", "--enet-smac=02:aa:00:00:00:01",
                                           "--mtu=1400", "--mtu-trunc", "--fixcsum"]),
        ]
        for (name, input, flags) in cases {
            let theirs = RuleCaptures.output("tcprewrite-\(name).pcap")
            let ours = RuleCaptures.output("sluice-\(name).pcap")
            defer { unlink(theirs); unlink(ours) }
            let reference = try runCommand([tcprewrite, "-i", RuleCaptures.path(input), "-o", theirs] + flags)
            try #require(reference.status == 0, "tcprewrite \(flags): \(reference.stderr)")
            let result = try replay(RuleCaptures.path(input), ours, flags)
            #expect(result.status == 0, "\(name): \(result.stderr)")
            let expected = try records(theirs)
            let got = try records(ours)
            #expect(got.count == expected.count, "\(name)")
            for (index, (mine, reference)) in zip(got, expected).enumerated() {
                #expect(mine == reference, "\(name) record \(index): \(flags)")
            }
        }
    }

    @Test func badRuleFileIsExitTwoNamingTheRule() throws {
        let path = "/tmp/sluice-test-\(getpid())-bad-rules.yaml"
        defer { unlink(path) }
        let text = """
            rules:
              - name: ok
                match: {protocol: tcp}
              - name: web
                match: {protocol: tcp, dst_port: 90-80}
                action: drop
            """
        try writeText(text, to: path)
        let result = try replay(samplePcap, "/dev/null", ["--rules", path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("rules[1].match.dst_port"), "\(result.stderr)")
        #expect(result.stderr.contains("rule 1 'web'"), "\(result.stderr)")
        #expect(result.stderr.contains("line 5"), "\(result.stderr)")
        let unknown = try replay(samplePcap, "/dev/null", ["--rule", "{name: x, match: {port: 1}}"])
        #expect(unknown.status == 2)
        #expect(unknown.stderr.contains("--rule[0].match.port") && unknown.stderr.contains("rule 0 'x'"), "\(unknown.stderr)")
        let missing = try replay(samplePcap, "/dev/null", ["--rules", "/nonexistent/rules.yaml"])
        #expect(missing.status == 2)
    }
}

func readAll(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        bytes += chunk[0..<count]
        if count < chunk.count { break }
    }
    return bytes
}

func writeText(_ text: String, to path: String) throws {
    guard let file = fopen(path, "w") else { throw SpawnError("fopen \(path): errno \(errno)") }
    defer { fclose(file) }
    fputs(text, file)
}
