import Glibc
import SluiceCore
import SluiceTraffic
import Synchronization
import Testing

@testable import SluicePacketIO

/// Frames of `frameBytes` for `sourceCount` sources in turn, each source offered `perSourceRate`
/// frames per second (more than any share it can get, so every source stays backlogged), until
/// `stopSourceAtNs` for `stoppingSource`. Runs as a pipeline source on one worker.
final class ShareTestSource: SourceBody, @unchecked Sendable {  // unchecked: one worker at a time
    let pool: BufferPool
    let lab: VethLab
    let sourceCount: Int
    let perSourceRate: Double
    let durationNs: UInt64
    let stoppingSource: Int?
    let stopSourceAtNs: UInt64
    static let frameBytes = 1_000
    private var startNs: UInt64 = 0
    private var sent: UInt64 = 0
    private var done = false

    init(pool: BufferPool, lab: VethLab, sourceCount: Int, perSourceRate: Double, durationNs: UInt64,
         stoppingSource: Int? = nil, stopSourceAtNs: UInt64 = .max) {
        self.pool = pool
        self.lab = lab
        self.sourceCount = sourceCount
        self.perSourceRate = perSourceRate
        self.durationNs = durationNs
        self.stoppingSource = stoppingSource
        self.stopSourceAtNs = stopSourceAtNs
    }

    var isExhausted: Bool { done }

    func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = Clock.monotonicNs()
        if startNs == 0 { startNs = now }
        if now - startNs >= durationNs { done = true }
        let due = UInt64(Double(now - startNs) / 1e9 * perSourceRate * Double(sourceCount))
        var count = 0
        while count < items.count, sent < due, !done {
            let source = Int(sent % UInt64(sourceCount))
            sent += 1
            if source == stoppingSource, now - startNs >= stopSourceAtNs { continue }
            guard let buffer = pool.allocate() else { break }
            let index = buffer.releaseIndex()
            let bytes = pool.bytes(at: index)
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            for position in 0..<6 {
                bytes[position] = lab.macB[position]
                bytes[6 + position] = lab.macA[position]
            }
            bytes[12] = 0x88
            bytes[13] = 0xB5  // local experimental EtherType: the far side's stack ignores it
            var metadata = PacketMetadata()
            metadata.length = UInt32(Self.frameBytes)
            metadata.wireLength = UInt32(Self.frameBytes)
            metadata.sourceID = UInt16(source)
            metadata.flowHash = UInt32(truncatingIfNeeded: sent)
            metadata.enqueueNs = now
            pool.metadata(at: index).pointee = metadata
            items[count] = UInt64(index)
            count += 1
        }
        return count
    }
}

final class ReporterBox: @unchecked Sendable {
    var reporter: CompletionReporter?
    init(_ reporter: consuming CompletionReporter) { self.reporter = consume reporter }
}

/// The traffic controller on a real port: a veth shaped by `tc tbf` (without qdisc bypass, so TX
/// slots come back milliseconds later, when tbf lets the frame go, as on a NIC). 198.18.0.0/15 only.
@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET, tc); with CI=true it runs and fails without root"))
struct NetnsTrafficShareTests {
    static let linkBytesPerSecond = 10_000_000.0  // tbf rate 80mbit

    struct Run {
        var sentBytes: [UInt64]
        var snapshot: TrafficSnapshot
        var backlogDrops: UInt64
        /// (ns since start, completed bytes per source), about every millisecond.
        var timeline: [(UInt64, [UInt64])]
    }

    /// Runs the shaped sink for `durationNs`; returns the bytes each source completed between
    /// `measureFromNs` and `measureToNs` (from the controller's accounts).
    func run(weights: [Double], durationNs: UInt64, measureFromNs: UInt64, measureToNs: UInt64,
             stoppingSource: Int? = nil, stopSourceAtNs: UInt64 = .max) throws -> Run {
        let lab = try VethLab()
        defer { lab.destroy() }
        try VethLab.command(["/usr/sbin/ip", "netns", "exec", lab.namespaceA, "/usr/sbin/tc", "qdisc", "add", "dev",
                             lab.interfaceA, "root", "tbf", "rate", "80mbit", "burst", "32kb", "latency", "50ms"])
        let pool = try BufferPool(bufferCount: 8192, bufferSizeBytes: 2048)
        let channel = try makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: weights.count)
        let reporterBox = ReporterBox(channel.reporter)
        let controller = try TrafficController(policy: TrafficPolicy(sources: weights.map { SourcePolicy(weight: $0) }),
                                               receiver: channel.receiver)
        let sinkBox = Outcome<ShapedTXSink>()
        try NamespaceThread.run(namespace: lab.pathA) {
            sinkBox.value = try ShapedTXSink(
                configuration: AFPacketTXConfiguration(interface: lab.interfaceA, frameCount: 1024, qdiscBypass: false),
                pool: pool, controller: controller, reporter: reporterBox.reporter.take()!, sourceCount: weights.count)
        }
        let sink = try #require(sinkBox.value)
        var builder = PipelineBuilder(name: "shares")
        builder.source(ShareTestSource(pool: pool, lab: lab, sourceCount: weights.count,
                                       perSourceRate: Self.linkBytesPerSecond / Double(ShareTestSource.frameBytes),
                                       durationNs: durationNs, stoppingSource: stoppingSource,
                                       stopSourceAtNs: stopSourceAtNs), name: "sources")
        builder.stage(sink, name: "shaped-tx")
        let pipeline = try builder.build(ringCapacities: [1024])
        let cores = Array(try CPU.allowedCPUs().prefix(2))
        let runtime = try Runtime(configuration: RuntimeConfiguration(cores: cores, waitMode: .busyPoll))
        try runtime.start()
        defer { runtime.stop() }
        try runtime.launch(pipeline, placement: [0, cores.count - 1])
        // The controller polls on this thread and takes its measurements from its own accounts.
        let start = Clock.monotonicNs()
        var atFrom: [UInt64]?
        var atTo: [UInt64]?
        var timeline: [(UInt64, [UInt64])] = []
        timeline.reserveCapacity(Int(durationNs / 1_000_000) + 256)
        var nextSampleNs: UInt64 = 0
        while Clock.monotonicNs() - start < durationNs + 200_000_000 {
            let now = Clock.monotonicNs()
            controller.poll(nowNs: now)
            if now - start >= nextSampleNs {
                timeline.append((now - start, controller.snapshot().sources.map(\.completedBytes)))
                nextSampleNs = now - start + 1_000_000
            }
            if atFrom == nil, now - start >= measureFromNs { atFrom = controller.snapshot().sources.map(\.completedBytes) }
            if atTo == nil, now - start >= measureToNs { atTo = controller.snapshot().sources.map(\.completedBytes) }
            if pipeline.isDrained { break }
            usleep(50)
        }
        #expect(runtime.drain(timeoutNs: 5_000_000_000))
        runtime.stop()
        _ = sink.finish(timeoutNs: 2_000_000_000)
        let from = try #require(atFrom)
        let to = try #require(atTo)
        return Run(sentBytes: zip(to, from).map { $0 - $1 }, snapshot: controller.snapshot(),
                   backlogDrops: sink.counters.backlogDrops.load(ordering: .relaxed), timeline: timeline)
    }

    /// Four backlogged sources at weights 1:1:2:4 over 2 s: each within 5% of its byte share.
    @Test func weightedSharesOnAShapedVeth() throws {
        try NetnsEnvironment.requireRoot()
        let weights = [1.0, 1, 2, 4]
        let run = try run(weights: weights, durationNs: 2_700_000_000, measureFromNs: 500_000_000,
                          measureToNs: 2_500_000_000)
        let total = Double(run.sentBytes.reduce(0, +))
        for (source, weight) in weights.enumerated() {
            let share = Double(run.sentBytes[source]) / total
            let target = weight / weights.reduce(0, +)
            #expect(abs(share - target) / target < 0.05, "source \(source): share \(share), target \(target)")
        }
        #expect(total / 2 > Self.linkBytesPerSecond * 0.9, "the link stays busy: \(total / 2) B/s")
        #expect(run.backlogDrops > 0, "sources were offered more than they got (backlogged)")
        #expect(run.snapshot.sources.allSatisfy { $0.delayNs > 0 })
    }

    /// Equal weights: Jain's fairness index of the byte counts, reported and close to 1.
    @Test func equalWeightsAreFairOnAShapedVeth() throws {
        try NetnsEnvironment.requireRoot()
        let run = try run(weights: [1, 1, 1, 1], durationNs: 1_700_000_000, measureFromNs: 500_000_000,
                          measureToNs: 1_500_000_000)
        let x = run.sentBytes.map { Double($0) }
        let jain = x.reduce(0, +) * x.reduce(0, +) / (Double(x.count) * x.reduce(0) { $0 + $1 * $1 })
        print("Jain's fairness index, 4 equal sources on a tbf-shaped veth: \(jain), bytes \(run.sentBytes)")
        #expect(jain > 0.99, "Jain's index \(jain)")
    }
}

extension NetnsTrafficShareTests {
    /// Four equal sources; one stops being offered traffic at 0.8 s and goes quiet once its backlog
    /// has gone out. From 10 ms after its last frame left, the other three share the whole link.
    @Test func othersAbsorbAStoppedSourceWithin10ms() throws {
        try NetnsEnvironment.requireRoot()
        let stopNs: UInt64 = 800_000_000
        let endNs: UInt64 = 1_300_000_000
        let run = try run(weights: [1, 1, 1, 1], durationNs: 1_400_000_000, measureFromNs: stopNs,
                          measureToNs: endNs, stoppingSource: 3, stopSourceAtNs: stopNs)
        // When source 3's last frame completed (its completed bytes stop growing).
        let finalBytes = run.timeline.last { $0.0 <= endNs }!.1[3]
        let quietNs = try #require(run.timeline.first { $0.1[3] == finalBytes }).0
        #expect(quietNs < endNs - 200_000_000, "source 3 went quiet in time to measure: \(quietNs)")
        let from = try #require(run.timeline.first { $0.0 >= quietNs + 10_000_000 })
        let to = try #require(run.timeline.last { $0.0 <= endNs })
        let seconds = Double(to.0 - from.0) / 1e9
        let sent = (0..<3).map { to.1[$0] - from.1[$0] }
        let total = Double(sent.reduce(0, +))
        #expect(total / seconds > Self.linkBytesPerSecond * 0.9, "the three fill the link: \(total / seconds) B/s")
        for source in 0..<3 {
            #expect(abs(Double(sent[source]) / total - 1.0 / 3) < 0.05, "source \(source): \(sent)")
        }
        // And the first 20 ms after that are not worse than 80% of the link already (a 10 ms window
        // holds ~65 frames: too few to judge on a loaded 2-core machine).
        let early = try #require(run.timeline.first { $0.0 >= quietNs + 30_000_000 })
        let earlyRate = Double((0..<3).reduce(UInt64(0)) { $0 + early.1[$1] - from.1[$1] }) / (Double(early.0 - from.0) / 1e9)
        #expect(earlyRate > Self.linkBytesPerSecond * 0.8, "rate 10-30 ms after: \(earlyRate) B/s")
    }
}
