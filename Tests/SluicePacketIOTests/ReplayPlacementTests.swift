// Path: Tests/SluicePacketIOTests/ReplayPlacementTests.swift — `sluice replay`'s measured placement:
// it reports its calibration and decisions, and whatever it decides the output is the fixed
// placement's, byte for byte.
import Glibc
import SluiceCore
import SluiceReplay
import Testing

@Suite(.serialized) struct ReplayPlacementTests {
    static let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(2))

    private func replay(placement: ReplayPlacement, to output: String, loops: Int) throws -> ReplaySummary {
        var configuration = ReplayConfiguration(capturePath: Captures.sample, output: .pcapFile(output),
                                                loopCount: loops, cores: Self.cores, waitMode: .busyPoll)
        configuration.placement = placement
        return try Replay(configuration).run()
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func measuredAndFixedPlacementsWriteTheSameBytes() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let measuredPath = "/tmp/sluice-placement-\(getpid())-auto.pcap"
        let fixedPath = "/tmp/sluice-placement-\(getpid())-spread.pcap"
        defer { unlink(measuredPath); unlink(fixedPath) }
        // 2000 packets x 60 loops: enough for the allocator's first decision (50,000 packets in).
        let measured = try replay(placement: .auto, to: measuredPath, loops: 60)
        let fixed = try replay(placement: .spread, to: fixedPath, loops: 60)
        #expect(measured.failure == nil && fixed.failure == nil)
        #expect(measured.delivered == 120_000 && fixed.delivered == 120_000)
        #expect(run(["/usr/bin/cmp", "-s", measuredPath, fixedPath]) == 0, "a move lost or reordered packets")
        let handoff = try #require(measured.handoff, "auto on two cores calibrates: \(measured.calibrationFailure ?? "")")
        #expect(handoff.crossNsPerItem > 0 && handoff.localNsPerItem > 0)
        let first = try #require(measured.firstDecision, "120,000 packets are enough to decide")
        #expect(first.costs.stageNsPerItem.count == 4)
        // The summary's placement is where the last change left it (or where it started).
        #expect(measured.stagePlacement == (measured.placementChanges.last?.to ?? [0, 0, 0, 0]))
        #expect(fixed.handoff == nil && fixed.firstDecision == nil && fixed.placementChanges.isEmpty)
        #expect(fixed.stagePlacement == [0, 1, 1, 1])
    }

    @Test func oneCoreHasNothingToDecide() throws {
        var configuration = ReplayConfiguration(capturePath: Captures.sample, output: .discard, cores: [Self.cores[0]])
        configuration.placement = .auto
        let summary = try Replay(configuration).run()
        #expect(summary.delivered == 2000)
        #expect(summary.handoff == nil && summary.firstDecision == nil && summary.stagePlacement == [0, 0, 0, 0])
    }
}
