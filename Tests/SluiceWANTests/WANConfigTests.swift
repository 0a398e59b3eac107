// Path: Tests/SluiceWANTests/WANConfigTests.swift — the `wan:` section of `sluice run`'s config:
// settings with their units, per-direction overrides, and mistakes that name the key.
import Testing

@testable import SluiceService
import SluiceWAN

@Suite struct WANConfigTests {
    private func load(_ yaml: String) throws(ConfigError) -> ServiceConfiguration {
        try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0])
    }

    private func error(_ yaml: String) -> String? {
        do {
            _ = try load(yaml)
            return nil
        } catch { return "\(error)" }
    }

    @Test func linksWithOverrides() throws {
        let configuration = try load("""
            wan:
              - name: wan0
                a: veth-a
                b: veth-b
                netns: lab
                delay: 20ms
                rate: 20mbit
                loss: 0.1%
                jitter: 2ms
                queue: 128kb
                seed: 42
                realtime_priority: 10
                b_to_a:
                  delay: 5ms
                  rate: unlimited
              - a: x0
                b: x1
                delay: 0ms
                rate: 1gbit
            """)
        #expect(configuration.wan.count == 2)
        let link = configuration.wan[0]
        #expect(link.name == "wan0" && link.interfaceA == "veth-a" && link.interfaceB == "veth-b")
        #expect(link.namespacePath == "/var/run/netns/lab" && link.seed == 42 && link.realtimePriority == 10)
        #expect(link.aToB == WANDirectionSettings(delayNs: 20_000_000, jitterNs: 2_000_000, rateBitsPerSecond: 20_000_000,
                                                  loss: 0.001, queueBytes: 131_072))
        #expect(link.bToA == WANDirectionSettings(delayNs: 5_000_000, jitterNs: 2_000_000, rateBitsPerSecond: 0,
                                                  loss: 0.001, queueBytes: 131_072))
        #expect(configuration.wan[1].name == "x0-x1" && configuration.wan[1].namespacePath == nil)
        #expect(configuration.wan[1].aToB.queueBytes == WANDirectionSettings.queueBytesDefault)
    }

    @Test(arguments: [
        ("delay: 20", "wan[0].delay", "'20' has no unit (us, ms or s"),
        ("delay: 20 ms", "wan[0].delay", "unknown unit ' ms'"),
        ("rate: 20Mbit", "wan[0].rate", "unknown unit 'Mbit'"),
        ("loss: 200%", "wan[0].loss", "'200%' is out of range (0%...100%)"),
        ("corrupt: 101%", "wan[0].corrupt", "'101%' is out of range (0%...100%)"),
        ("b_to_a: {corrupt: 1}", "wan[0].b_to_a.corrupt", "'1' has no unit (a percentage"),
        ("queue: 1kb", "wan[0].queue", "out of range (2048...1073741824 bytes)"),
        ("a_to_b: {jitter: 1x}", "wan[0].a_to_b.jitter", "unknown unit 'x'"),
        ("a_to_b: {dealy: 1ms}", "wan[0].a_to_b.dealy", "unknown key"),
        ("b: veth-a", "wan[0]", "both sides are 'veth-a'"),
        ("netns: a/b", "wan[0].netns", "not a namespace name"),
        ("name: 'two words'", "wan[0].name", "link name 'two words'"),
        ("bandwidth: 1mbit", "wan[0].bandwidth", "unknown key"),
        ("realtime_priority: 0", "wan[0].realtime_priority", "must be 1...99, got 0"),
        ("seed: -1", "wan[0].seed", "must be 0..."),
    ])
    func mistakesNameTheKey(line: String, key: String, phrase: String) throws {
        // The first occurrence of a key wins in this parser only if unique: drop the base line it overrides.
        let overridden = line.split(separator: ":")[0]
        let base = ["a: veth-a", "b: veth-b", "delay: 20ms", "rate: 20mbit"].filter { !$0.hasPrefix(overridden + ":") }
        let yaml = "wan:\n  - " + (base + [line]).joined(separator: "\n    ")
        let message = try #require(error(yaml), "accepted: \(yaml)")
        #expect(message.contains(key), "\(message)")
        #expect(message.contains(phrase), "\(message)")
    }

    @Test func requiredKeysAndUniqueness() throws {
        #expect(error("wan:\n  - a: x\n    b: y\n    rate: 1mbit")?.contains("'wan[0].delay' is required") == true)
        #expect(error("wan:\n  - a: x\n    b: y\n    delay: 1ms")?.contains("'wan[0].rate' is required") == true)
        let twice = """
            wan:
              - {name: l, a: x, b: y, delay: 1ms, rate: 1mbit}
              - {name: l, a: z, b: w, delay: 1ms, rate: 1mbit}
            """
        #expect(error(twice)?.contains("name 'l' is used by an earlier link") == true)
        let shared = """
            wan:
              - {a: x, b: y, delay: 1ms, rate: 1mbit}
              - {a: y, b: w, delay: 1ms, rate: 1mbit}
            """
        #expect(error(shared)?.contains("interface 'y' is also link 'x-y''s") == true)
        let otherNamespace = """
            wan:
              - {a: x, b: y, delay: 1ms, rate: 1mbit}
              - {a: y, b: w, delay: 1ms, rate: 1mbit, netns: other}
            """
        #expect(error(otherNamespace) == nil)
    }
}
