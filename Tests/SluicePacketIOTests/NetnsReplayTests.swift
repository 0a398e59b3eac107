import Glibc
import SluiceCore
import Testing

@testable import SluicePacketIO
import SluiceReplay

/// `sluice replay --iface` end to end: the bundled sample replayed into a veth in one namespace and
/// captured live with libpcap (immediate mode) in the other; every packet arrives, in order, unchanged.
@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NetnsReplayTests {
    @Test func replayToAnInterfaceArrivesWholeAndInOrder() throws {
        try NetnsEnvironment.requireRoot()
        let lab = try VethLab()
        defer { lab.destroy() }
        let captureCount = 2000
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let captureBox = Outcome<PcapLiveSource>()
        try NamespaceThread.run(namespace: lab.pathB) {
            captureBox.value = try PcapLiveSource(device: lab.interfaceB, pool: rxPool, incomingOnly: true,
                                                  packetCountMax: UInt64(captureCount))
        }
        let capture = try #require(captureBox.value)
        #expect(capture.linkType == 1)
        let cores = Array(try CPU.allowedCPUs().prefix(2))
        let replayBox = Outcome<Replay>()
        try NamespaceThread.run(namespace: lab.pathA) {
            replayBox.value = try Replay(ReplayConfiguration(
                capturePath: Captures.sample, output: .interface(lab.interfaceA),
                // 20k/s: the capture side is a plain libpcap loop sharing two CPUs with the replay's
                // workers; at 50k/s it once lost a burst to the kernel under CI load.
                pacing: .rate(packetsPerSecond: 20_000), cores: cores, waitMode: .interrupt))
        }
        let replay = try #require(replayBox.value)

        // The capture runs on a thread of its own (polling libpcap), the replay on the runtime's workers.
        let received = Outcome<[[UInt8]]>()
        let capturer = try NamespaceThread.start(namespace: lab.pathB) {
            var frames: [[UInt8]] = []
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            let deadline = Clock.monotonicNs() + 20_000_000_000
            while !capture.isExhausted, Clock.monotonicNs() < deadline {
                let count = capture.produce(into: items)
                frames += items[0..<count].map(rxPool.takeFrame)
                if count == 0 { usleep(100) }
            }
            received.value = frames
        }
        let summary = try replay.run()
        #expect(capturer.join() == nil)
        #expect(summary.failure == nil)
        #expect(summary.delivered == UInt64(captureCount))
        #expect(summary.drops.isEmpty, "drops: \(summary.drops)")

        let frames = try #require(received.value)
        #expect(frames.count == captureCount)
        var reader = try PcapReader(path: Captures.sample)
        var expected: [[UInt8]] = []
        while let record = try reader.next() { expected.append(Array(record.bytes)) }
        let missing = expected.indices.filter { index in !frames.contains(expected[index]) }
        #expect(missing.isEmpty, "missing sample records \(missing.prefix(20))")
        #expect(frames == Array(expected.prefix(frames.count)), "frames arrive in capture order, unchanged")
        #expect(capture.counters.poolExhausted.load(ordering: .relaxed) == 0)
        capture.refreshKernelCounters()
        #expect(capture.counters.kernelDrops.load(ordering: .relaxed) == 0)
    }
}
