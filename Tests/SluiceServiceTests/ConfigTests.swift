// Path: Tests/SluiceServiceTests/ConfigTests.swift — the config format: the shipped example and the
// embedded default load; every kind of mistake is an error that names the key (and line).
import Testing

@testable import SluiceService
import SluiceReplay
import SluicePacketIO

/// The repository root, from this file's path (Tests/SluiceServiceTests/ConfigTests.swift).
let repositoryRoot: String = {
    var path = #filePath
    for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path
}()

@Suite struct ConfigTests {
    private func load(_ yaml: String, overrides: [String] = []) throws(ConfigError) -> ServiceConfiguration {
        var tree = try ConfigNode.parse(yaml: yaml)
        for override in overrides { tree = try tree.applying(override: override) }
        return try ServiceConfiguration.decode(tree, defaultCores: [0, 1])
    }

    private func error(_ yaml: String, overrides: [String] = []) -> ConfigError? {
        do {
            _ = try load(yaml, overrides: overrides)
            return nil
        } catch { return error }
    }

    private let minimal = """
        pipelines:
          - name: p
            source:
              pcap: in.pcap
            sink:
              pcap: out.pcap
        """

    @Test func shippedExampleLoadsWithEveryKey() throws {
        let configuration = try ServiceConfiguration.load(path: repositoryRoot + "/docs/sluice.yaml", defaultCores: [7])
        #expect(configuration.cores == [0, 1])
        #expect(configuration.waitMode == .adaptive)
        #expect(configuration.metrics == ListenAddress(host: "127.0.0.1", port: 9464))
        let pipeline = try #require(configuration.pipelines.first)
        #expect(pipeline.path.name == "sample")
        #expect(pipeline.path.input == .capture(path: "Tests/Fixtures/sample.pcap", pacing: .capture(speed: 1), loopCount: 1))
        #expect(pipeline.path.output == .pcapFile("out/run.pcap"))
        #expect(pipeline.path.traffic?.sources.map(\.weight) == [1, 3])
        #expect(pipeline.path.classifier.entries.count == 1)
        #expect(pipeline.path.ringCapacity == 1024 && pipeline.path.poolBufferCount == 4096 && pipeline.path.burstCount == 32)
        let storage = try #require(configuration.storage)
        #expect(storage.dataDirectory == "out/storage" && storage.listen.port == 7000 && storage.queueDepth == 32)
        #expect(configuration.drainTimeoutMs == 5000 && configuration.runForMs == nil)
    }

    @Test func embeddedDefaultRunsTheSampleWithStorage() throws {
        let configuration = try ServiceConfiguration.load(path: nil, defaultCores: [3])
        #expect(configuration.cores == [3])
        #expect(configuration.pipelines.count == 1)
        #expect(configuration.pipelines[0].path.output == .pcapFile("out/run.pcap"))
        #expect(configuration.pipelines[0].cores == [3])
        #expect(configuration.storage?.listen == ListenAddress(host: "127.0.0.1", port: 7000))
        #expect(configuration.metrics?.host == "127.0.0.1")
    }

    @Test func minimalConfigGetsDefaults() throws {
        let configuration = try load(minimal)
        #expect(configuration.cores == [0, 1])
        #expect(configuration.storage == nil)
        #expect(configuration.pipelines[0].path.stages == .classifyAndAct)
        #expect(configuration.pipelines[0].cores == [0, 1])
    }

    @Test func overridesSetNestedKeysAndAppendListItems() throws {
        let configuration = try load(minimal, overrides: [
            "cores=[2,3]", "pipelines[0].source.rate=500", "pipelines[0].cores=3",
            "storage.data=/var/tmp/x", "storage.listen=127.0.0.1:0",
            "pipelines[1].name=q", "pipelines[1].source.interface=veth0", "pipelines[1].sink.discard=true",
        ])
        #expect(configuration.cores == [2, 3])
        #expect(configuration.pipelines[0].path.input == .capture(path: "in.pcap", pacing: .rate(packetsPerSecond: 500), loopCount: 1))
        #expect(configuration.pipelines[0].cores == [3])
        #expect(configuration.pipelines[1].path.input == .interface(AFPacketRXConfiguration(interface: "veth0")))
        #expect(configuration.pipelines[1].path.output == .discard)
        #expect(configuration.storage?.listen.port == 0)
    }

    @Test func badOverridesSayWhy() {
        #expect(error(minimal, overrides: ["novalue"]) == .badOverride("novalue", reason: "expected key.path=value"))
        #expect(error(minimal, overrides: ["pipelines[5].name=x"])
            == .badOverride("pipelines[5].name=x", reason: "index 5 is past the list's end (1 items)"))
        #expect(error(minimal, overrides: ["pipelines.name=x"])
            == .badOverride("pipelines.name=x", reason: "cannot set 'name' inside a value that is not a mapping"))
    }

    @Test(arguments: [
        // (override, the key the error must name, a phrase it must contain)
        ("pipelines[0].source.speed=fast", "pipelines[0].source.speed", "expected a number"),
        ("pipelines[0].source.interface=eth0", "pipelines[0].source", "not both"),
        ("pipelines[0].sink.discard=true", "pipelines[0].sink", "exactly one"),
        ("pipelines[0].stages=all", "pipelines[0].stages", "none, classify or classify-and-act"),
        ("pipelines[0].buffers=1024", "pipelines[0]", "more buffers or smaller rings"),
        ("pipelines[0].cores=[9]", "pipelines[0].cores", "not in the service's cores"),
        ("pipelines[0].name=a b", "pipelines[0].name", "letters, digits"),
        ("pipelines[0].traffic.weights=[1,0]", "pipelines[0].traffic.weights[1]", "must be positive"),
        ("pipelines[0].classify.by=colour", "pipelines[0].classify.by", "is not one of"),
        ("pipelines[0].source.interface=x/y", "pipelines[0].source", "not both"),
        ("cores=[0,0]", "cores[1]", "appears twice"),
        ("cores=0-x", "cores", "not a CPU number"),
        ("cores=-1", "cores", "'-1' is not a CPU number"),
        ("cores=1-", "cores", "'1-' is not a CPU number"),
        ("wait_mode=fast", "wait_mode", "busy-poll, adaptive or interrupt"),
        ("log_level=loud", "log_level", "is not one of"),
        ("metrics.listen=10.1.2.3", "metrics.listen", "expected host:port"),
        ("metrics.listen=example.com:80", "metrics.listen", "not an IPv4 address"),
        ("pipelines[0].ring_size=1000", "pipelines[0].ring_size", "power of two"),
        ("pipelines[0].sink.pcap=in.pcap", "pipelines[0].sink.pcap", "is a pipeline's input capture"),
        ("pipelines[1]={name: q, source: {pcap: b.pcap}, sink: {pcap: out.pcap}}", "pipelines[1].sink.pcap", "also pipeline 'p''s output"),
        ("control_cores=[1]", "control_cores", "also a worker core"),
        ("pipelines[0].stage_cores=[0,1]", "pipelines[0].stage_cores", "one core per stage (4"),
        ("pipelines[0].stage_cores=[0,1,2,0]", "pipelines[0].stage_cores[2]", "not in the pipeline's cores"),
        ("rebalance.imbalance=5", "rebalance.imbalance", "at most the worker count"),
        ("pipelines[0].placement=fast", "pipelines[0].placement", "'fast' is not auto or spread"),
    ])
    func mistakesNameTheKey(override: String, key: String, phrase: String) throws {
        let failure = try #require(error(minimal, overrides: [override]), "\(override) was accepted")
        guard case .invalid(let named, _, let reason) = failure else {
            Issue.record("\(override): not an invalid-value error: \(failure)")
            return
        }
        #expect(named == key)
        #expect(reason.contains(phrase), "\(reason) does not say \(phrase)")
    }

    /// Numbers out of their range: the exact key, the value and the range, typed. The replay speed and
    /// rate bounds keep the data path's due-time arithmetic finite (1e-300 used to pass and then trap).
    @Test(arguments: [
        ("pipelines[0].source.speed=-1", "pipelines[0].source.speed", -1.0, ServiceLimits.replaySpeedMin...ServiceLimits.replaySpeedMax),
        ("pipelines[0].source.speed=0", "pipelines[0].source.speed", 0, ServiceLimits.replaySpeedMin...ServiceLimits.replaySpeedMax),
        ("pipelines[0].source.speed=1e-300", "pipelines[0].source.speed", 1e-300, 1e-6...1e9),
        ("pipelines[0].source.speed=2e9", "pipelines[0].source.speed", 2e9, 1e-6...1e9),
        ("pipelines[0].source.rate=1e-12", "pipelines[0].source.rate", 1e-12, 1e-3...1e9),
        ("pipelines[0].source.rate=1e-4", "pipelines[0].source.rate", 1e-4, 1e-3...1e9),
        ("pipelines[0].source.rate=1e12", "pipelines[0].source.rate", 1e12, 1e-3...1e9),
        ("pipelines[0].source.loop=0", "pipelines[0].source.loop", 0, 1...1_000_000),
        ("pipelines[0].burst=0", "pipelines[0].burst", 0, 1...256),
        ("shutdown.drain_timeout_ms=-5", "shutdown.drain_timeout_ms", -5, 0...600_000),
        ("rebalance.interval_ms=1", "rebalance.interval_ms", 1, 10...3_600_000),
    ])
    func numbersOutOfRangeAreTypedErrors(override: String, key: String, value: Double, allowed: ClosedRange<Double>) {
        #expect(error(minimal, overrides: [override]) == .outOfRange(key: key, line: 0, value: value, allowed: allowed))
    }

    @Test func replayBoundsThemselvesAreAccepted() throws {
        for (key, value) in [("speed", "1e-6"), ("speed", "1e9"), ("rate", "0.001"), ("rate", "1e9")] {
            let configuration = try load(minimal, overrides: ["pipelines[0].source.\(key)=\(value)"])
            let expected: ReplayPacing = key == "speed" ? .capture(speed: Double(value)!) : .rate(packetsPerSecond: Double(value)!)
            #expect(configuration.pipelines[0].path.input == .capture(path: "in.pcap", pacing: expected, loopCount: 1))
        }
    }

    @Test func coreRangesParse() throws {
        #expect(try load(minimal, overrides: ["cores=0-2"]).cores == [0, 1, 2])
        #expect(try load(minimal, overrides: ["cores=0, 2 - 3"]).cores == [0, 2, 3])
    }

    @Test func storageAndMetricsCannotShareAPort() throws {
        let failure = try #require(error(minimal, overrides: ["storage.data=d", "storage.listen=127.0.0.1:9464"]))
        #expect("\(failure)".contains("also metrics.listen's"))
    }

    @Test func unknownKeysAreRejectedWithTheirLine() {
        let yaml = """
            pipelines:
              - name: p
                source:
                  pcap: in.pcap
                  sped: 2
                sink:
                  pcap: out.pcap
            """
        guard case .unknownKey(let key, let line, let known)? = error(yaml) else {
            Issue.record("a misspelt key was accepted")
            return
        }
        #expect(key == "pipelines[0].source.sped")
        #expect(line == 5)
        #expect(known.contains("speed"))
    }

    @Test func missingPartsAreNamed() {
        #expect(error("pipelines:\n  - name: p\n    sink:\n      pcap: o\n") == .missingKey(key: "pipelines[0].source"))
        #expect(error("storage:\n  listen: 127.0.0.1:1\n") == .missingKey(key: "storage.data"))
    }

    @Test func syntaxErrorsCarryTheLine() {
        guard case .syntax(let line, _)? = error("pipelines:\n  - name: a\n   source: 1\n") else {
            Issue.record("broken indentation was accepted")
            return
        }
        #expect(line == 3)
        guard case .syntax(let duplicateLine, let reason)? = error("cores: [0]\ncores: [1]\n") else {
            Issue.record("a duplicated key was accepted")
            return
        }
        #expect(duplicateLine >= 1 && duplicateLine <= 2 && reason.contains("cores"), "\(duplicateLine): \(reason)")
        #expect(error("- a\n- b\n") == .syntax(line: 1, reason: "the top level must be a mapping of keys"))
    }

    @Test func unreadableFileIsAnError() {
        #expect(throws: ConfigError.unreadable(path: "/nonexistent/sluice.yaml", reason: "No such file or directory")) {
            _ = try ServiceConfiguration.load(path: "/nonexistent/sluice.yaml", defaultCores: [0])
        }
    }
}

extension ConfigTests {
    @Test func onePacingOnly() throws {
        let failure = try #require(error(minimal, overrides: ["pipelines[0].source.rate=5", "pipelines[0].source.speed=2"]))
        #expect("\(failure)".contains("give one of speed, rate, top_speed"))
    }
}

extension ConfigTests {
    @Test func stageCoresAndRebalance() throws {
        let configuration = try load(minimal, overrides: ["pipelines[0].stage_cores=[0,0,1,1]", "rebalance.interval_ms=250"])
        #expect(configuration.pipelines[0].stageCores == [0, 0, 1, 1])
        #expect(configuration.placement(of: configuration.pipelines[0], stageCount: 4) == [0, 0, 1, 1])
        #expect(configuration.rebalance == RebalanceSettings(intervalMs: 250, imbalance: 0.2))
        let measured = try load(minimal)
        #expect(measured.isMeasured(measured.pipelines[0]))
        #expect(measured.placement(of: measured.pipelines[0], stageCount: 4) == [0, 0, 0, 0], "measured: starts on one core")
        #expect(measured.rebalance == nil)
        let spread = try load(minimal, overrides: ["pipelines[0].placement=spread"])
        #expect(!spread.isMeasured(spread.pipelines[0]))
        #expect(spread.placement(of: spread.pipelines[0], stageCount: 4) == [0, 1, 1, 1])
        #expect(!configuration.isMeasured(configuration.pipelines[0]), "stage_cores fix the placement")
        let shared = try load(minimal, overrides: ["pipelines[1]={name: q, source: {pcap: b.pcap}, sink: {discard: true}}"])
        #expect(!shared.isMeasured(shared.pipelines[0]) && !shared.isMeasured(shared.pipelines[1]),
                "pipelines on the same cores keep the spread rule")
        #expect(shared.placement(of: shared.pipelines[1], stageCount: 4) == [0, 1, 1, 1])
        let both = try #require(error(minimal, overrides: ["pipelines[0].stage_cores=[0,0,1,1]", "pipelines[0].placement=auto"]))
        #expect("\(both)".contains("pipelines[0].placement") && "\(both)".contains("give one of placement and stage_cores"), "\(both)")
    }

    @Test func interfaceSourcesTakeAFanoutGroupAndPort() throws {
        let configuration = try load(minimal, overrides: [
            "pipelines[0].source.pcap=", "pipelines[0].source.interface=veth0",
            "pipelines[0].source.fanout_group=7", "pipelines[0].source.port=3"])
        guard case .interface(let rx) = configuration.pipelines[0].path.input else {
            Issue.record("not an interface source")
            return
        }
        #expect(rx.fanout == AFPacketFanout(group: 7, defragment: true) && rx.port == 3)
        let failure = try #require(error(minimal, overrides: ["pipelines[0].source.fanout_group=7"]))
        #expect("\(failure)".contains("only an interface source"))
        let twoInterfaces = try #require(error(minimal, overrides: [
            "pipelines[0].source.pcap=", "pipelines[0].source.interface=veth0", "pipelines[0].source.fanout_group=7",
            "pipelines[1].name=q", "pipelines[1].source.interface=veth1", "pipelines[1].source.fanout_group=7",
            "pipelines[1].sink.discard=true"]))
        #expect("\(twoInterfaces)".contains("pipelines[1].source.fanout_group") && "\(twoInterfaces)".contains("veth0"),
                "\(twoInterfaces)")
    }

    @Test func exitWhenDrainedNeedsPipelinesThatEnd() throws {
        let live = try #require(error(minimal, overrides: ["pipelines[0].source.pcap=", "pipelines[0].source.interface=veth0",
                                                           "shutdown.exit_when_drained=true"]))
        #expect("\(live)".contains("shutdown.exit_when_drained") && "\(live)".contains("never drains"), "\(live)")
        let none = try #require(error("shutdown: {exit_when_drained: true}"))
        #expect("\(none)".contains("no pipeline to drain"))
    }

    @Test func stagesPerWorkerAreBounded() throws {
        var overrides = ["cores=[0]"]
        for index in 1..<9 {  // 9 pipelines x 4 stages on one core: 36 > 32
            overrides += ["pipelines[\(index)].name=p\(index)", "pipelines[\(index)].source.pcap=in\(index).pcap",
                          "pipelines[\(index)].sink.discard=true"]
        }
        let failure = try #require(error(minimal, overrides: overrides))
        #expect("\(failure)".contains("core 0 would run 36 stages"), "\(failure)")
    }
}

extension ConfigTests {
    /// Nested aliases ("billion laughs": under 500 bytes, 9^10 nodes expanded) used to expand for 36 s and 6.6 GB in
    /// `sluice run --check`: refused from the token stream, naming the first anchor's line.
    @Test func nestedAliasesAreRefusedAtOnce() {
        var yaml = "pipelines: []\nx0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for level in 1...9 {
            yaml += "x\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ",") + "]\n"
        }
        #expect(yaml.utf8.count < 500)
        let start = ContinuousClock.now
        #expect(throws: ConfigError.anchorOrAlias(line: 2)) { try ConfigNode.parse(yaml: yaml) }
        #expect(ContinuousClock.now - start < .seconds(1))
        // An alias alone (its anchor missing) and an anchor alone are refused too, each at its line.
        #expect(throws: ConfigError.anchorOrAlias(line: 2)) { try ConfigNode.parse(yaml: "cores: [0]\nlog_level: *level\n") }
        #expect(throws: ConfigError.anchorOrAlias(line: 3)) { try ConfigNode.parse(yaml: "cores: [0]\n\nlog_level: &l info\n") }
        #expect(throws: ConfigError.badOverride("cores=[&c 0, *c]", reason: "anchors and aliases (&name, *name) are not supported")) {
            try ConfigNode.empty.applying(override: "cores=[&c 0, *c]")
        }
        // An ampersand or asterisk inside a value is no anchor.
        #expect((try? ConfigNode.parse(yaml: "a: \"*x\"\nb: c&d\n")) != nil)
    }

    /// A NUL byte used to be reported at "line 0": the line it is on.
    @Test func nulByteIsReportedAtItsLine() {
        let yaml = "cores: [0]\nlog_level: info\nwait_mode: ada\u{0}ptive\n"
        #expect(error(yaml) == .syntax(line: 3, reason: "control characters are not allowed (U+0000)"))
        guard case .syntax(let firstLine, _)? = error("\u{0}cores: [0]\n") else {
            Issue.record("a leading NUL byte was accepted")
            return
        }
        #expect(firstLine == 1)
    }
}
