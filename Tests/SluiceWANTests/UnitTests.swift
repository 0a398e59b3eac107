// Path: Tests/SluiceWANTests/UnitTests.swift — settings as typed: every unit, and every way to get
// one wrong, refused with an error that says what was expected.
import Testing

@testable import SluiceWAN

@Suite struct UnitTests {
    @Test(arguments: [("20ms", UInt64(20_000_000)), ("1.5ms", 1_500_000), ("250us", 250_000), ("2s", 2_000_000_000),
                      ("0ms", 0), ("0.0005ms", 500), (".5s", 500_000_000), ("10s", 10_000_000_000)])
    func durations(text: String, ns: UInt64) throws {
        #expect(try WANUnits.durationNs(text, maxNs: WANLimits.delayNsMax) == ns)
    }

    @Test(arguments: [("20mbit", UInt64(20_000_000)), ("1.5gbit", 1_500_000_000), ("64kbit", 64_000), ("8000bit", 8_000),
                      ("100gbit", 100_000_000_000)])
    func rates(text: String, bits: UInt64) throws {
        #expect(try WANUnits.rateBitsPerSecond(text, range: WANLimits.rateBitsPerSecondMin...WANLimits.rateBitsPerSecondMax) == bits)
    }

    @Test func percentagesAndSizes() throws {
        #expect(try WANUnits.probability("0.1%") == 0.001)
        #expect(try WANUnits.probability("100%") == 1)
        #expect(try WANUnits.probability("0%") == 0)
        let sizes = WANLimits.queueBytesMin...WANLimits.queueBytesMax
        #expect(try WANUnits.bytes("256kb", range: sizes) == 262_144)
        #expect(try WANUnits.bytes("1.5mb", range: sizes) == 1_572_864)
        #expect(try WANUnits.bytes("4096b", range: sizes) == 4_096)
        #expect(try WANUnits.bytes("1gb", range: sizes) == 1 << 30)
    }

    @Test func mistakesSayWhatWasExpected() {
        let durations = WANUnits.durationUnits
        #expect(throws: WANUnitError.missingUnit("20", expected: durations)) { try WANUnits.durationNs("20", maxNs: 1 << 40) }
        #expect(throws: WANUnitError.unknownUnit("20 ms", unit: " ms", expected: durations)) {
            try WANUnits.durationNs("20 ms", maxNs: 1 << 40)
        }
        #expect(throws: WANUnitError.unknownUnit("20MS", unit: "MS", expected: durations)) { try WANUnits.durationNs("20MS", maxNs: 1 << 40) }
        #expect(throws: WANUnitError.unknownUnit("1e3ms", unit: "e3ms", expected: durations)) {
            try WANUnits.durationNs("1e3ms", maxNs: 1 << 40)
        }
        for bad in ["", "ms", "-5ms", "+5ms", "1.2.3ms", ".ms", "1234567890123456789ms"] {
            #expect(throws: WANUnitError.notANumber(bad, expected: durations)) { try WANUnits.durationNs(bad, maxNs: 1 << 40) }
        }
        #expect(throws: WANUnitError.outOfRange("11s", allowed: "at most 10s")) {
            try WANUnits.durationNs("11s", maxNs: WANLimits.delayNsMax)
        }
        let rates = WANLimits.rateBitsPerSecondMin...WANLimits.rateBitsPerSecondMax
        #expect(throws: WANUnitError.unknownUnit("20mbps", unit: "mbps", expected: WANUnits.rateUnits)) {
            try WANUnits.rateBitsPerSecond("20mbps", range: rates)
        }
        #expect(throws: WANUnitError.outOfRange("1kbit", allowed: "8kbit...100gbit")) { try WANUnits.rateBitsPerSecond("1kbit", range: rates) }
        #expect(throws: WANUnitError.missingUnit("0.1", expected: WANUnits.percentUnits)) { try WANUnits.probability("0.1") }
        #expect(throws: WANUnitError.outOfRange("101%", allowed: "0%...100%")) { try WANUnits.probability("101%") }
        #expect(throws: WANUnitError.unknownUnit("0.1percent", unit: "percent", expected: WANUnits.percentUnits)) {
            try WANUnits.probability("0.1percent")
        }
        let sizes = WANLimits.queueBytesMin...WANLimits.queueBytesMax
        #expect(throws: WANUnitError.outOfRange("1kb", allowed: "2048...1073741824 bytes")) { try WANUnits.bytes("1kb", range: sizes) }
        #expect(throws: WANUnitError.outOfRange("2048.5b", allowed: "a whole number of bytes")) { try WANUnits.bytes("2048.5b", range: sizes) }
        #expect(throws: WANUnitError.unknownUnit("256KB", unit: "KB", expected: WANUnits.sizeUnits)) { try WANUnits.bytes("256KB", range: sizes) }
    }

    @Test func settingsTakeTextAndRateTakesUnlimited() throws {
        var settings = WANDirectionSettings()
        try settings.set(.delay, from: "20ms")
        try settings.set(.jitter, from: "2ms")
        try settings.set(.rate, from: "20mbit")
        try settings.set(.loss, from: "0.1%")
        try settings.set(.queue, from: "64kb")
        try settings.set(.corrupt, from: "0.05%")
        #expect(settings == WANDirectionSettings(delayNs: 20_000_000, jitterNs: 2_000_000, rateBitsPerSecond: 20_000_000,
                                                 loss: 0.001, queueBytes: 65_536, corrupt: 0.0005))
        #expect(settings.summary == "delay 20ms jitter 2ms rate 20mbit loss 0.1% queue 65536b corrupt 0.05%")
        try settings.set(.rate, from: "unlimited")
        #expect(settings.rateBitsPerSecond == 0)
    }

    @Test func reportsFormatBack() {
        #expect(WANUnits.formatDuration(20_000_000) == "20ms")
        #expect(WANUnits.formatDuration(1_500_000) == "1.5ms")
        #expect(WANUnits.formatDuration(250_000) == "250us")
        #expect(WANUnits.formatDuration(3_000_000_000) == "3s")
        #expect(WANUnits.formatRate(20_000_000) == "20mbit")
        #expect(WANUnits.formatRate(1_500_000_000) == "1.5gbit")
        #expect(WANUnits.formatRate(0) == "unlimited")
    }

    @Test func configurationChecksNamesAndStoreSize() throws {
        let direction = WANDirectionSettings(delayNs: 10_000_000, rateBitsPerSecond: 20_000_000)
        var configuration = WANConfiguration(interfaceA: "veth0", interfaceB: "veth1", aToB: direction, bToA: direction)
        try configuration.validate()
        #expect(configuration.name == "veth0-veth1")
        configuration.interfaceB = "veth0"
        #expect(throws: WANConfigurationError.sameInterface("veth0")) { try configuration.validate() }
        configuration.interfaceB = "bad/name"
        #expect(throws: WANConfigurationError.invalidInterfaceName("bad/name")) { try configuration.validate() }
        configuration.interfaceB = "veth1"
        configuration.name = "has space"
        #expect(throws: WANConfigurationError.invalidName("has space")) { try configuration.validate() }
        configuration.name = "wan0"
        // 100 Gbit/s over 10 s of delay would need 125 GB of store.
        configuration.bToA = WANDirectionSettings(delayNs: 10_000_000_000, rateBitsPerSecond: 100_000_000_000)
        #expect(throws: WANConfigurationError.storeTooLarge(direction: "b-to-a", bytes: configuration.bToA.storeBytes,
                                                            max: WANLimits.storeBytesMax)) { try configuration.validate() }
        // The store: two queues, the rate times (delay + jitter + 10 ms), two largest frames.
        #expect(direction.storeBytes == 2 * 262_144 + 2 * WANLimits.frameBytesMax + 50_000)
        #expect(WANDirectionSettings(queueBytes: 4_096).storeBytes == 4_096 + 2 * WANLimits.frameBytesMax)
    }
}
