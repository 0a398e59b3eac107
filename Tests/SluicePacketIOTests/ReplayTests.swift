import Glibc
import SluiceCore
import Testing

@testable import SluicePacketIO
import SluiceReplay
import SluicePacket
import SluiceTraffic

@Suite(.serialized) struct ReplayTests {
    static let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(2))

    func replay(_ input: String, to output: ReplayOutput, pacing: ReplayPacing = .topSpeed, loops: Int = 1,
                mode: WaitMode = .adaptive) throws -> ReplaySummary {
        var configuration = ReplayConfiguration(capturePath: input, output: output, pacing: pacing, loopCount: loops,
                                                cores: Self.cores, waitMode: mode)
        configuration.poolBufferCount = 4096
        return try Replay(configuration).run()
    }

    /// The bundled sample through every stage to a file: byte-identical to the input.
    @Test(arguments: WaitMode.allCases)
    func replayToFileIsByteIdentical(mode: WaitMode) throws {
        let output = "/tmp/sluice-replay-\(getpid())-\(mode).pcap"
        defer { unlink(output) }
        let summary = try replay(Captures.sample, to: .pcapFile(output), mode: mode)
        #expect(summary.failure == nil)
        #expect(summary.packets == 2000)
        #expect(summary.delivered == 2000)
        #expect(run(["/usr/bin/cmp", "-s", Captures.sample, output]) == 0)
    }

    /// tcpdump and tshark see the same packets, bytes and times in what Sluice wrote as in the input,
    /// also when the input is pcapng (written back as pcap).
    @Test(needsCaptures, arguments: ["mixed.pcapng", "vlan_qinq.pcap", "ipv6_ext.pcap", "sll.pcap"])
    func toolsReadBackTheSamePackets(_ file: String) throws {
        try #require(Captures.available)
        let input = Captures.path(file)
        let output = Captures.output(file + ".pcap")
        defer { unlink(output) }
        let summary = try replay(input, to: .pcapFile(output))
        #expect(summary.failure == nil)
        for tool in [["/usr/bin/tcpdump", "-nn", "-xx", "-tt", "-r"], ["/usr/bin/tshark", "-x", "-t", "e", "-r"]] {
            guard access(tool[0], X_OK) == 0 else {
                #expect(!Captures.inCI, "CI installs \(tool[0])")
                continue
            }
            var expected = ""
            var actual = ""
            #expect(run(tool + [input], capture: &expected) == 0)
            #expect(run(tool + [output], capture: &actual) == 0)
            #expect(!expected.isEmpty)
            #expect(expected == actual, "\(tool[0]) reads \(output) differently from \(input)")
        }
    }

    /// A truncated capture: the records before the bad one go through, and the error names the file
    /// and the record.
    @Test(needsCaptures) func truncatedCaptureKeepsWhatCameBefore() throws {
        try #require(Captures.available)
        let input = Captures.path("truncated.pcap")
        let output = Captures.output("truncated-out.pcap")
        defer { unlink(output) }
        let summary = try replay(input, to: .pcapFile(output))
        #expect(summary.failure != nil)
        guard case .badRecord(let path, 99, _, .truncatedData) = try #require(summary.inputError) else {
            Issue.record("expected record 99 truncated, got \(String(describing: summary.inputError))")
            return
        }
        #expect(path == input)
        #expect(summary.delivered == 99)
        var reader = try PcapReader(path: output)
        var count = 0
        while try reader.next() != nil { count += 1 }
        #expect(count == 99)
    }

    @Test func loopsRepeatTheCaptureAndKeepTimeMoving() throws {
        let output = "/tmp/sluice-replay-loop-\(getpid()).pcap"
        defer { unlink(output) }
        let summary = try replay(Captures.sample, to: .pcapFile(output), loops: 3)
        #expect(summary.delivered == 6000)
        var reader = try PcapReader(path: output)
        var count = 0
        while try reader.next() != nil { count += 1 }
        #expect(count == 6000)
    }

    /// Pacing is anchored to the start: 2000 packets at 20 000 pps take about 100 ms, never less.
    @Test func ratePacingSpacesPackets() throws {
        let summary = try replay(Captures.sample, to: .discard, pacing: .rate(packetsPerSecond: 20_000))
        #expect(summary.delivered == 2000)
        #expect(summary.elapsedNs >= 99_000_000)
        #expect(summary.elapsedNs < 1_000_000_000)
    }

    /// The sample spans 0.2 s of capture time; at speed 2 the replay takes about 0.1 s.
    @Test func captureTimingFollowsTheTimestamps() throws {
        let summary = try replay(Captures.sample, to: .discard, pacing: .capture(speed: 2))
        #expect(summary.elapsedNs >= 99_000_000)
        #expect(summary.elapsedNs < 1_000_000_000)
    }

    /// With a traffic policy, the pcap sink's free path reports every written record: the controller's
    /// per-source counts match what the classifier assigned (source MAC -> id).
    @Test func trafficControllerSeesEveryWrittenRecordBySource() throws {
        let output = "/tmp/sluice-replay-traffic-\(getpid()).pcap"
        defer { unlink(output) }
        var configuration = ReplayConfiguration(capturePath: Captures.sample, output: .pcapFile(output),
                                                cores: Self.cores)
        configuration.classifier = try ClassifierConfiguration(key: .sourceMAC, entries: (0..<4).map { id in
            SourceEntry(.mac(MACAddress("02:00:00:00:01:0\(id)")!), sourceID: UInt16(id))
        })
        configuration.traffic = TrafficPolicy(sources: [1, 1, 2, 4].map { SourcePolicy(weight: $0) })
        let summary = try Replay(configuration).run()
        let traffic = try #require(summary.traffic)
        #expect(traffic.sources.map(\.completedPackets) == [500, 500, 500, 500])
        var expectedBytes = [UInt64](repeating: 0, count: 4)
        var reader = try PcapReader(path: Captures.sample)
        var index = 0
        while let record = try reader.next() {
            expectedBytes[index % 4] += UInt64(record.capturedLength)
            index += 1
        }
        #expect(traffic.sources.map(\.completedBytes) == expectedBytes)
        #expect(traffic.sources.allSatisfy { $0.pendingPackets == 0 })
    }

    @Test func badConfigurationIsATypedError() {
        var configuration = ReplayConfiguration(capturePath: Captures.sample, output: .discard, cores: Self.cores)
        configuration.loopCount = 0
        #expect(throws: ReplayError.invalidConfiguration(.loopCount(0))) {
            _ = try Replay(configuration)
        }
        configuration.loopCount = 1
        configuration.poolBufferCount = 16
        #expect(throws: ReplayError.invalidConfiguration(.poolBelowInFlight(16, inFlight: 1024 * 3 + 32 * 4))) {
            _ = try Replay(configuration)
        }
        #expect(throws: ReplayError.capture(.openFailed(path: "/nonexistent.pcap", errno: .noSuchFileOrDirectory))) {
            _ = try Replay(ReplayConfiguration(capturePath: "/nonexistent.pcap", output: .discard, cores: Self.cores))
        }
    }
}

/// The default pool holds what the rings and bursts can (plus the source's cache), no more: set-up
/// zeroes every buffer, so a pool twice that size cost a 1M-packet replay about 10% (BENCHMARKS.md).
@Suite struct PoolSizingTests {
    @Test(arguments: [(1024, 32, 4096), (2048, 32, 8192), (64, 32, 1024), (16, 8, 512)])
    func defaultPoolFitsTheRings(ring: Int, burst: Int, expected: Int) throws {
        var configuration = PacketPathConfiguration(name: "p", input: .capture(path: "x", pacing: .topSpeed, loopCount: 1),
                                                    output: .discard)
        configuration.ringCapacity = ring
        configuration.burstCount = burst
        #expect(configuration.poolBufferCount == expected)
        #expect(configuration.poolBufferCount > PacketPathConfiguration.inFlightMax(ringCapacity: ring, burstCount: burst) + 255)
        configuration.poolBufferCount = 9000  // a configured count wins
        #expect(configuration.poolBufferCount == 9000)
    }
}
