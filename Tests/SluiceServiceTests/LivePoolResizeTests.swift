// Path: Tests/SluiceServiceTests/LivePoolResizeTests.swift — an interface or AF_XDP source's pool, with
// `buffers_max`, grows while frames arrive when the source finds it empty (those frames are dropped and
// counted) and halves back when it stays full enough: every frame is delivered once or counted, each
// flow in order, and nothing is dropped while the pool shrinks.
import Foundation
import Glibc
import Logging
import SluiceCore
import SluicePacketIO
import SluiceTestSupport
import Testing

@testable import SluiceReplay
@testable import SluiceService

@Suite(.serialized) struct LivePoolResizeTests {
    enum Input: String, CaseIterable, CustomTestStringConvertible {
        case afPacket = "interface"
        case afXDP = "af_xdp"
        var testDescription: String { rawValue }
    }

    /// Stands for a stage that holds buffers (a shaped port's backlog, a slow sink): the test takes
    /// every free buffer of the pool, so the source finds it empty, while the sample is replayed into
    /// the interface at 20,000 frames/s, twice; the rebalancer (every 20 ms) doubles the pool each time
    /// (512 -> 1024 -> 2048). Then the test gives its buffers back and the sample is replayed at
    /// 2,000 frames/s (1 s), after 0.8 s idle (an idle interval starts the count again): after 30
    /// intervals in a row with arrivals and without running empty the pool halves (2048 -> 1024,
    /// the power of two above what its rings need), while frames still arrive, with no drop.
    @Test(.enabled(if: NetnsServiceTests.isRoot || NetnsServiceTests.inCI,
                   "needs root for namespaces, AF_PACKET and AF_XDP (runs in CI, CI=true)"),
          .timeLimit(.minutes(2)), arguments: Input.allCases)
    func aLiveSourcesPoolGrowsWhenItRunsEmptyAndHalvesWhenItDoesNot(_ input: Input) throws {
        try #require(NetnsServiceTests.isRoot, "CI=true: namespace, AF_PACKET and AF_XDP tests need root")
        guard let cpus = cpusOrRecordIssue(2) else { return }
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try VethIntoNamespace()
        defer { lab.destroy() }
        let paths = ScratchPaths("live-pool")
        defer { paths.remove() }
        let source = input == .afPacket ? "{interface: \"\(lab.outside)\"}" : "{kind: af_xdp, iface: \"\(lab.outside)\"}"
        let yaml = """
            cores: [\(cpus[0]), \(cpus[1])]
            rebalance: {interval_ms: 20, move_cores: false}
            pipelines:
              - name: wire
                source: \(source)
                stages: classify
                sink: {pcap: "\(paths.outputPcap)"}
                ring_size: 64
                buffers: 512
                buffers_max: 4096
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: cpus)
        let logs = CollectingLogHandler()
        let dataplane = try Dataplane(configuration: configuration, logger: Logger(label: "live-pool-test") { _ in logs })
        let path = dataplane.paths[0]
        #expect(path.pipeline.stages.first?.name == (input == .afPacket ? "afpacket-rx" : "afxdp-rx"))
        #expect(path.poolBufferCount == 512 && path.poolBufferCountMax == 4096)
        try dataplane.start()
        var stopped = false
        defer { if !stopped { _ = dataplane.stop(drainTimeoutNs: 1_000_000_000) } }
        let pool = path.pool
        var held: [UInt32] = []
        defer { for index in held { pool.freeIndex(index) } }

        func exhaustedDrops() -> UInt64 {
            path.dropCounts().filter { $0.reason == "pool-exhausted" }.reduce(0) { $0 + $1.count }
        }
        func allDrops() -> UInt64 { path.dropCounts().reduce(0) { $0 + $1.count } }
        /// Replays the sample into the interface and waits until every frame entered or was dropped;
        /// `meanwhile` runs every 5 ms while the sender runs.
        func replay(rate: Int, expectingSeen seen: UInt64, meanwhile: () -> Void = {}) throws {
            let sender = try ChildProcess(["/usr/sbin/ip", "netns", "exec", lab.namespace, binary, "replay", samplePcap,
                                           "--iface", lab.inside, "--rate", "\(rate)"])
            var status: Int32?
            for _ in 0..<12_000 where status == nil {  // 60 s at most
                meanwhile()
                status = sender.wait(timeoutMs: 5)
            }
            if status == nil { sender.signal(SIGKILL); _ = sender.wait(timeoutMs: 2_000) }
            #expect(status == 0, "replay: \(sender.stderrText)")
            for _ in 0..<300 where path.packetsIn + allDrops() < seen { usleep(10_000) }
            #expect(path.packetsIn + allDrops() == seen, "\(path.packetsIn) in, drops \(path.dropCounts())")
            for _ in 0..<300 where path.pipeline.delivered < path.packetsIn { usleep(10_000) }
        }
        /// Takes every buffer not in the test's hands (the pipeline is idle: all of them are free).
        func holdTheRest() throws {
            let free = path.poolBufferCount - held.count
            var indices = [UInt32](repeating: 0, count: free)
            let taken = indices.withUnsafeMutableBufferPointer { pool.allocateBurst(into: $0) }
            try #require(taken == free, "took \(taken) of \(free) free buffers")
            held += indices
        }

        try holdTheRest()
        try replay(rate: 20_000, expectingSeen: 2000)
        let firstDrops = exhaustedDrops()
        #expect(firstDrops > 0 && path.packetsIn > 0, "the source found the pool empty: \(firstDrops) dropped")
        #expect(path.poolBufferCount == 1024, "\(path.poolBufferCount)")
        try holdTheRest()
        try replay(rate: 20_000, expectingSeen: 4000)
        #expect(exhaustedDrops() > firstDrops && path.poolBufferCount == 2048, "\(path.poolBufferCount)")
        #expect(dataplane.poolGrowths.load(ordering: .relaxed) == 2)
        #expect(logs.messages.withLock { $0.filter { $0.1.contains("pool grown: its source found it empty") }.count } == 2)

        for index in held { pool.freeIndex(index) }
        held = []
        // Idle for 40 intervals (more than the 30 a halving needs): idle intervals start the count
        // again, so the pool keeps its size until frames arrive for 30 intervals in a row.
        usleep(800_000)
        #expect(dataplane.poolShrinks.load(ordering: .relaxed) == 0 && path.poolBufferCount == 2048, "halved while idle")
        let dropsBefore = allDrops()
        // Frames seen when the pool halved: after the replay's first and before its last.
        var seenAtHalving: UInt64?
        try replay(rate: 2_000, expectingSeen: 6000) {
            if seenAtHalving == nil, dataplane.poolShrinks.load(ordering: .relaxed) > 0 {
                seenAtHalving = path.packetsIn + allDrops()
            }
        }
        let halvedAt = try #require(seenAtHalving, "the pool did not halve during the replay at 2,000 frames/s")
        #expect(halvedAt > 4000 && halvedAt < 6000, "halved after \(halvedAt) frames, not mid-replay")
        #expect(allDrops() == dropsBefore, "drops while the pool shrank: \(path.dropCounts())")
        #expect(dataplane.poolShrinks.load(ordering: .relaxed) == 1 && path.poolBufferCount == 1024, "\(path.poolBufferCount)")
        #expect(logs.messages.withLock { $0.contains { $0.1.contains("pool halved: its source found it never empty") } })

        stopped = true
        let outcome = try #require(dataplane.stop(drainTimeoutNs: 2_000_000_000).first)
        #expect(outcome.failure == nil && outcome.leftOnRings == 0, "\(outcome.failure ?? "")")
        #expect(outcome.delivered == outcome.packetsIn && outcome.packetsIn + exhaustedDrops() == 6000,
                "\(outcome.packetsIn) in, \(outcome.delivered) delivered, drops \(outcome.drops)")
        #expect(outcome.drops.allSatisfy { $0.reason == "pool-exhausted" }, "\(outcome.drops)")
        // Each flow's frames in order: a subsequence of its frames sent three times, the last time whole.
        let original = try AFXDPDataplaneTests.flows(samplePcap)
        let written = try AFXDPDataplaneTests.flows(paths.outputPcap)
        #expect(written.values.reduce(0) { $0 + $1.count } == Int(outcome.delivered))
        for (flow, frames) in original {
            let got = written[flow] ?? []
            #expect(Array(got.suffix(frames.count)) == frames, "flow \(flow): the last replay not whole and in order")
            var next = 0
            let sent = frames + frames + frames
            for frame in got {
                while next < sent.count, sent[next] != frame { next += 1 }
                next += 1
            }
            #expect(next <= sent.count, "flow \(flow): \(got.count) frames not in the order sent")
        }
    }
}
