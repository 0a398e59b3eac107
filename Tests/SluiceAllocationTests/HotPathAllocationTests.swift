// Path: Tests/SluiceAllocationTests/HotPathAllocationTests.swift — "no malloc per packet", checked.
//
// Each test runs Tests/SluiceAllocationProbe (release build) with the malloc interposer preloaded. The probe moves N
// and then 2N packets through a path in steady state and counts mallocs in each window (start-up is
// done before either): a path that allocates per packet or per burst counts thousands more in the
// 2N window. The canary proves the interposer is loaded, so a zero can be believed.
import Glibc
import SluiceTestSupport
import Testing

/// The release build of the probe and interposer (what ships: a debug build allocates where release
/// does not). `make build-tests` builds them: `swift build -c release --product SluiceAllocationProbe`.
enum Probe {
    static let packetCount = 20_000
    /// Mallocs the 2N window may exceed the N window by: a few stray control-plane allocations
    /// (none expected), nowhere near one per burst (625 bursts of 32 in N packets).
    static let extraMallocsMax: Int64 = 8

    /// Runs one scenario; returns the mallocs counted over N and over 2N packets.
    static func run(_ scenario: String) throws -> (single: Int64, double: Int64) {
        let build = "run `make build-tests` or `swift build -c release --product SluiceAllocationProbe`"
        let probe = try #require(builtProduct("SluiceAllocationProbe", configuration: "release"), "release probe not built: \(build)")
        let interposer = try #require(builtProduct("libMallocInterposerSwift.so", configuration: "release"), "interposer not built: \(build)")
        let (status, lines, stderr) = try runCommand(
            ["/usr/bin/env", "LD_PRELOAD=\(interposer)", probe, scenario, "\(packetCount)"], timeoutMs: 120_000)
        try #require(status == 0, "probe \(scenario) exited with \(status): \(stderr)")
        let fields = try #require(lines.last?.split(separator: " "), "probe \(scenario) printed nothing")
        try #require(fields.count == 4 && fields[0] == scenario, "probe printed \(lines)")
        return (try #require(Int64(fields[2])), try #require(Int64(fields[3])))
    }

    static func expectNoMallocPerPacket(_ scenario: String) throws {
        let counted = try run(scenario)
        #expect(counted.double - counted.single <= extraMallocsMax,
                "\(scenario): \(counted.single) mallocs over \(packetCount) packets, \(counted.double) over \(2 * packetCount)")
    }
}

@Suite(.serialized) struct HotPathAllocationTests {
    /// A path that allocates once per packet must show it, or every other zero here means nothing.
    @Test func canaryThatAllocatesPerPacketIsCaught() throws {
        let counted = try Probe.run("canary")
        #expect(counted.single >= Int64(Probe.packetCount), "interposer not counting: \(counted)")
        #expect(counted.double - counted.single >= Int64(Probe.packetCount))
    }

    @Test func ringBurstsAllocateNothing() throws { try Probe.expectNoMallocPerPacket("ring") }

    /// Workers and rings of a running pipeline, busy-polling at full speed.
    @Test func pipelineSteadyStateAllocatesNothing() throws { try Probe.expectNoMallocPerPacket("pipeline-busy-poll") }

    /// All stages on one worker, run to completion without the rings (the fused path).
    @Test func fusedRunToCompletionAllocatesNothing() throws { try Probe.expectNoMallocPerPacket("pipeline-fused") }

    /// The same with adaptive waiting at a paced rate: workers sleep and are woken between bursts.
    @Test func sleepingAndWakingWorkersAllocateNothing() throws { try Probe.expectNoMallocPerPacket("pipeline-adaptive") }

    @Test func pcapSourceAndSinkAllocateNothingPerPacket() throws { try Probe.expectNoMallocPerPacket("pcap") }
}

/// The AF_PACKET stages on a veth pair in namespaces the probe makes and deletes (198.18.0.0/15).
@Suite(.serialized, .enabled(if: geteuid() == 0 || getenv("CI").map { String(cString: $0) == "true" } ?? false,
                             "needs root (namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct AFPacketAllocationTests {
    @Test func afpacketTXAndRXStagesAllocateNothingPerPacket() throws {
        try #require(geteuid() == 0, "CI=true: AF_PACKET allocation tests need root")
        try Probe.expectNoMallocPerPacket("afpacket")
    }

    @Test func shapedTXStageAllocatesNothingPerPacket() throws {
        try #require(geteuid() == 0, "CI=true: AF_PACKET allocation tests need root")
        try Probe.expectNoMallocPerPacket("shaped-tx")
    }
}
