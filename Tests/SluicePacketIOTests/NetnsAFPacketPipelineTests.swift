// Path: Tests/SluicePacketIOTests/NetnsAFPacketPipelineTests.swift — AFPacketSource and AFPacketSink
// as the ends of SluiceCore pipelines on pinned workers, across a veth pair between two namespaces.
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization
import Testing

/// Stage 1 of the sending pipeline: test frames written into pool buffers at a fixed rate.
private struct TestFrameSource: SourceBody, @unchecked Sendable {  // unchecked: VethLab is read-only here
    let pool: BufferPool
    let lab: VethLab
    let total: UInt64
    let ratePerSecond: Double
    var generated: UInt64 = 0
    var startNs: UInt64 = 0

    var isExhausted: Bool { generated >= total }

    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = Clock.monotonicNs()
        if startNs == 0 { startNs = now }
        let due = min(total, UInt64(Double(now - startNs) * ratePerSecond / 1e9) + 1)
        var count = 0
        while count < items.count, generated < due {
            guard let buffer = pool.allocate() else { break }
            let index = buffer.releaseIndex()
            TestFrames.write(sequence: generated, flowCount: 1, lab: lab, into: pool.bytes(at: index))
            pool.metadata(at: index).pointee = PacketMetadata()
            pool.metadata(at: index).pointee.length = UInt32(TestFrames.lengthBytes)
            pool.metadata(at: index).pointee.sourceID = 5
            items[count] = UInt64(index)
            count += 1
            generated += 1
        }
        return count
    }

    func sleepHintNs(nowNs: UInt64) -> UInt64? {
        if isExhausted { return UInt64.max }
        let nextNs = startNs + UInt64(Double(generated) * 1e9 / ratePerSecond)
        return nextNs > nowNs ? nextNs - nowNs : 0
    }
}

/// What the receiving pipeline's last stage saw; read after the runtime stopped.
private final class TallyBox: @unchecked Sendable {  // unchecked: one worker writes, the test reads after stop
    var tally: SequenceTally
    var wrongPort = 0
    init(total: Int) { tally = SequenceTally(total: total) }
}

/// Last stage of the receiving pipeline: checks each frame and frees its buffer.
private struct TallySink: StageBody, @unchecked Sendable {  // unchecked: see TallyBox
    let pool: BufferPool
    let box: TallyBox

    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        for item in items {
            let index = UInt32(item)
            let metadata = pool.metadata(at: index).pointee
            if metadata.port != 3 || metadata.linkType != 1 { box.wrongPort += 1 }
            box.tally.record(UnsafeRawBufferPointer(pool.bytes(at: index)), length: Int(metadata.length))
            pool.freeIndex(index)
        }
        return items.count
    }
}

/// Counts completions the TX completion scan reports, by status, and checks their tags.
private struct CompletionCounts {
    var sent: UInt64 = 0
    var rejected: UInt64 = 0
    var wrongTag: UInt64 = 0
    var bytes: UInt64 = 0
}

private let countCompletion: AFPacketTXCompletionHook.Function = { context, _, tag, length, status in
    let counts = context!.assumingMemoryBound(to: CompletionCounts.self)
    if status == AFPacketTXCompletionHook.statusSent { counts.pointee.sent += 1 } else { counts.pointee.rejected += 1 }
    if tag != 5 { counts.pointee.wrongTag += 1 }
    counts.pointee.bytes += UInt64(length)
}

@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NetnsAFPacketPipelineTests {
    /// Generator → AFPacketSink in namespace A, AFPacketSource → checking sink in namespace B, both
    /// pipelines on the runtime's workers. Every frame arrives once; the completion hook sees each.
    @Test func pipelinesSendAndReceiveEveryFrameThroughTheRings() throws {
        try NetnsEnvironment.requireRoot()
        let total = 50_000
        let lab = try VethLab()
        defer { lab.destroy() }
        let txPool = try BufferPool(bufferCount: 2048, bufferSizeBytes: 2048)
        let rxPool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        let completions = UnsafeMutablePointer<CompletionCounts>.allocate(capacity: 1)
        completions.initialize(to: CompletionCounts())
        defer { completions.deallocate() }

        // Sockets are made on threads inside each namespace; the workers use them from outside.
        let sourceBox = Outcome<AFPacketSource>()
        let sinkBox = Outcome<AFPacketSink>()
        try NamespaceThread.run(namespace: lab.pathB) {
            sourceBox.value = try AFPacketSource(
                configuration: AFPacketRXConfiguration(interface: lab.interfaceB, blockCount: 32, ignoreOutgoing: true,
                                                       port: 3),
                pool: rxPool, packetCountMax: UInt64(total))
        }
        try NamespaceThread.run(namespace: lab.pathA) {
            sinkBox.value = try AFPacketSink(
                configuration: AFPacketTXConfiguration(interface: lab.interfaceA, frameCount: 1024, qdiscBypass: true),
                pool: txPool, completionHook: AFPacketTXCompletionHook(countCompletion, context: completions))
        }
        let source = try #require(sourceBox.value)
        let sink = try #require(sinkBox.value)
        let tally = TallyBox(total: total)

        var rxBuilder = PipelineBuilder(name: "afpacket-rx")
        rxBuilder.source(source, name: "af-rx")
        rxBuilder.stage(TallySink(pool: rxPool, box: tally), name: "tally")
        let rxPipeline = try rxBuilder.build(ringCapacities: [1024])
        var txBuilder = PipelineBuilder(name: "afpacket-tx")
        txBuilder.source(TestFrameSource(pool: txPool, lab: lab, total: UInt64(total), ratePerSecond: 200_000),
                         name: "frames")
        txBuilder.stage(sink, name: "af-tx")
        let txPipeline = try txBuilder.build(ringCapacities: [1024])

        let cores = Array(try CPU.allowedCPUs().prefix(2))
        let runtime = try Runtime(configuration: RuntimeConfiguration(cores: cores, waitMode: .adaptive))
        try runtime.start()
        defer { runtime.stop() }
        let last = cores.count - 1
        try runtime.launch(rxPipeline, placement: [last, last])
        try runtime.launch(txPipeline, placement: [0, 0])
        let drained = runtime.drain(timeoutNs: 30_000_000_000)
        runtime.stop()
        #expect(drained, "both pipelines drain: the receiver got \(source.statistics.snapshot().packets) of \(total)")
        #expect(sink.finish(timeoutNs: 2_000_000_000))

        let tx = sink.statistics.snapshot()
        #expect(tx.queued == UInt64(total))
        #expect(tx.packets == UInt64(total))
        #expect(tx.drops.isEmpty)
        #expect(txPipeline.delivered == UInt64(total))
        #expect(completions.pointee.sent == UInt64(total), "the completion hook saw every frame")
        #expect(completions.pointee.rejected == 0)
        #expect(completions.pointee.wrongTag == 0, "tags carry the buffer's sourceID")
        #expect(completions.pointee.bytes == tx.bytes)
        #expect(txPool.freeCount == txPool.bufferCount)

        try source.statistics.refreshKernelCounters()
        let rx = source.statistics.snapshot()
        #expect(tally.tally.matched == total)
        #expect(tally.tally.missing == 0)
        #expect(tally.tally.duplicates == 0)
        #expect(tally.wrongPort == 0)
        #expect(rx.packets == UInt64(total))
        #expect(rx.kernelDrops == 0)
        #expect(rxPipeline.delivered == UInt64(total))
        #expect(rxPool.freeCount == rxPool.bufferCount)
    }
}
