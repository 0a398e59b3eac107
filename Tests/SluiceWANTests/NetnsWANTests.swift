// Path: Tests/SluiceWANTests/NetnsWANTests.swift — the emulator between two namespaces (root; run
// in CI, skipped elsewhere): ping RTT against the set delay, the share the loss setting drops,
// queue-limit drops counted. Wide bounds: these check behaviour, the bench measures accuracy.
import Glibc
import SluiceCore
import SluicePacketIO
import Testing

@testable import SluiceWAN

@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled, "needs root for network namespaces and AF_PACKET (CI=true runs it)"))
struct NetnsWANTests {
    @Test func pingTakesTwiceTheDelay() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try WANLab()
        defer { lab.destroy() }
        let delayNs: UInt64 = 10_000_000
        let link = try WANLink(configuration: lab.link(WANDirectionSettings(delayNs: delayNs, rateBitsPerSecond: 20_000_000)))
        try link.start()
        defer { link.stop() }
        // The first request waits for ARP, which crosses the emulator too: both ways, delayed.
        let rtts = try ping(from: lab.pathA, to: lab.addressB, count: 12, intervalMs: 30, timeoutMs: 1_000)
        #expect(rtts.count == 12)
        let sorted = rtts.dropFirst().sorted()
        let median = try #require(sorted.isEmpty ? nil : sorted[sorted.count / 2])
        // RTT >= 2 * delay always (the emulator never sends early); the median within 2 * delay plus a
        // slack generous enough for a shared machine.
        #expect(try #require(sorted.first) >= 2 * delayNs)
        #expect(median < 2 * delayNs + 15_000_000, "median RTT \(median) ns")
        #expect(try #require(rtts.first) >= 4 * delayNs, "ARP then the echo: two round trips")
        let snapshot = link.snapshot()
        for direction in snapshot {
            #expect(direction.counters.forwardedPackets >= 12, "\(direction.direction)")
            #expect(direction.drops().isEmpty, "\(direction.direction): \(direction.drops())")
            // Most frames went out within 1 ms of their departure time. Not all, nor the mean: on a
            // busy machine one thread waiting 20 ms for a CPU would decide it (the bench measures).
            let buckets = direction.counters.lateBucketCounts
            #expect(2 * (buckets[0] + buckets[1] + buckets[2]) >= direction.counters.departures,
                    "\(direction.direction) lateness buckets \(buckets)")
        }
    }

    @Test func lossDropsAboutTheSetShare() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try WANLab()
        defer { lab.destroy() }
        let link = try WANLink(configuration: lab.link(WANDirectionSettings(delayNs: 1_000_000, loss: 0.2), seed: 77))
        try link.start()
        defer { link.stop() }
        let total = 2_000
        let (sent, tally) = try sendAndCount(lab: lab, total: total, ratePerSecond: 20_000, settleMs: 300)
        #expect(sent == total)
        let aToB = link.snapshot()[0]
        let lost = aToB.counters.count(.emulatedLoss)
        // Binomial(2000, 0.2): mean 400, sd 18; the bounds are +-5 sd.
        #expect(lost > 310 && lost < 490, "lost \(lost)")
        #expect(aToB.counters.receivedPackets == UInt64(total))
        #expect(aToB.counters.forwardedPackets + lost == UInt64(total))
        #expect(tally.matched == Int(aToB.counters.forwardedPackets))
        #expect(tally.duplicates == 0)
    }

    @Test func queueLimitDropsAreCounted() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try WANLab()
        defer { lab.destroy() }
        // 1 Mbit/s: a 64-byte frame takes 512 µs; a 4 KiB queue holds 64 of them.
        let settings = WANDirectionSettings(delayNs: 1_000_000, rateBitsPerSecond: 1_000_000, queueBytes: 4_096)
        let link = try WANLink(configuration: lab.link(settings))
        try link.start()
        defer { link.stop() }
        let total = 400
        let (sent, tally) = try sendAndCount(lab: lab, total: total, ratePerSecond: 0, settleMs: 600)
        #expect(sent == total)
        let aToB = link.snapshot()[0]
        let queueFull = aToB.counters.count(.queueFull)
        #expect(queueFull > 100, "queueFull \(queueFull)")
        #expect(aToB.counters.forwardedPackets + queueFull == UInt64(total))
        #expect(aToB.counters.queueBytesMax <= 4_096 && aToB.counters.queueBytesMax > 4_096 - 64)
        #expect(tally.matched == Int(aToB.counters.forwardedPackets))
        // In order: the frames that crossed are an increasing subsequence.
        #expect(tally.duplicates == 0)
    }

    @Test func startFailsClearlyOnAMissingInterface() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try WANLab()
        defer { lab.destroy() }
        var configuration = lab.link(WANDirectionSettings(delayNs: 1_000_000))
        configuration.interfaceB = "nosuchif0"
        let link = try WANLink(configuration: configuration)
        do {
            try link.start()
            Issue.record("started without interface b")
        } catch {
            #expect("\(error)".contains("nosuchif0"), "\(error)")
        }
        link.stop()
    }
}
