// Path: Tests/SluicePacketIOTests/ReplayFanoutTests.swift — one capture read by several sources, each
// taking its flows (`CaptureSplit`), and `sluice replay` fanned out over instances on that split.
import Glibc
import SluiceCore
import SluicePacketIO
@testable import SluiceReplay
import Testing

@Suite(.serialized) struct ReplayFanoutTests {
    static let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(2))

    /// An Ethernet/IPv4 frame from `a:pa` to `b:pb` (UDP), optionally a fragment.
    private func frame(_ a: UInt32, _ pa: UInt16, _ b: UInt32, _ pb: UInt16, fragmentBits: UInt16 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        bytes[12] = 0x08
        bytes[14] = 0x45
        bytes[20] = UInt8(fragmentBits >> 8)
        bytes[21] = UInt8(fragmentBits & 0xFF)
        bytes[23] = 17
        for (offset, value) in [(26, a), (30, b)] {
            for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(i))) }
        }
        for (offset, port) in [(34, pa), (36, pb)] {
            bytes[offset] = UInt8(port >> 8)
            bytes[offset + 1] = UInt8(port & 0xFF)
        }
        return bytes
    }

    private func hash(_ bytes: [UInt8]) -> UInt64 {
        bytes.withUnsafeBytes { CaptureSplit.flowHash($0, linkType: 1) }
    }

    @Test func bothDirectionsOfAFlowAndAllItsFragmentsHashAlike() {
        let client: UInt32 = 0xC612_0001, server: UInt32 = 0xC612_0102  // 198.18.0.1, 198.18.1.2
        #expect(hash(frame(client, 40_000, server, 53)) == hash(frame(server, 53, client, 40_000)))
        #expect(hash(frame(client, 40_000, server, 53)) != hash(frame(client, 40_001, server, 53)))
        // First fragment (MF) and a later one (offset) carry the addresses only: they stay together.
        #expect(hash(frame(client, 40_000, server, 53, fragmentBits: 0x2000))
            == hash(frame(server, 9, client, 7, fragmentBits: 0x0010)))
        // Short and odd frames hash without reading past their end.
        for length in [0, 1, 13, 14, 20, 33, 37] {
            let bytes = Array(frame(client, 1, server, 2).prefix(length))
            _ = hash(bytes)
            _ = bytes.withUnsafeBytes { CaptureSplit.flowHash($0, linkType: 228) }
        }
        // Flows spread over the readers (1000 flows, 4 readers: none gets nothing).
        var counts = [Int](repeating: 0, count: 4)
        for port in 0..<1000 {
            let bytes = frame(client, UInt16(port), server, 80)
            let owners = (0..<4).filter { index in
                bytes.withUnsafeBytes { CaptureSplit(index: index, count: 4).takes($0, linkType: 1) }
            }
            #expect(owners.count == 1, "each flow has exactly one reader")
            counts[owners[0]] += 1
        }
        #expect(counts.allSatisfy { $0 > 150 }, "\(counts)")
    }

    /// Runs `source` alone (bursts of `burst`) until it is exhausted or `limit` records came out (at
    /// most 100,000 turns); returns the records' bytes, the buffers freed.
    private static func drain(_ source: PcapSource, pool: BufferPool, burst: Int, limit: Int = .max) -> [[UInt8]] {
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burst)
        defer { items.deallocate() }
        var taken: [[UInt8]] = []
        var turns = 0
        while !source.isExhausted, taken.count < limit, turns < 100_000 {
            let count = source.produce(into: items)
            taken += items[0..<count].map(pool.takeFrame)
            turns += 1
        }
        return taken
    }

    /// Two sources over one capture: each takes exactly its flows' records, in capture order, and
    /// together every record once.
    @Test func twoSourcesSplitTheCaptureByFlow() throws {
        var reader = try PcapReader(path: Captures.sample)
        var all: [[UInt8]] = []
        while let record = try reader.next() { all.append(Array(record.bytes)) }
        var seen = 0
        for index in 0..<2 {
            let split = CaptureSplit(index: index, count: 2)
            let pool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
            let source = try PcapSource(path: Captures.sample, pool: pool, pacing: .topSpeed, split: split)
            let taken = Self.drain(source, pool: pool, burst: 32)
            let expected = all.filter { bytes in bytes.withUnsafeBytes { split.takes($0, linkType: 1) } }
            #expect(taken == expected)
            #expect(!taken.isEmpty && taken.count < all.count)
            #expect(source.counters.othersRecords.load(ordering: .relaxed) == UInt64(all.count - taken.count))
            seen += taken.count
        }
        #expect(seen == all.count)
    }

    /// A source stopped between two records hands its position to sources that take the capture over
    /// from there, each with its share of the flows: together they read exactly the records after
    /// it, each in capture order, over the loops left. Stopped mid-loop, at a loop's last record
    /// (the takers start the next loop), and after the last loop's last record (nothing left).
    @Test func sourcesTakeTheCaptureOverWhereAnotherStopped() throws {
        var reader = try PcapReader(path: Captures.sample)
        var file: [[UInt8]] = []
        while let record = try reader.next() { file.append(Array(record.bytes)) }
        let loops = 3
        let all = Array((0..<loops).map { _ in file }.joined())
        for stopAfter in [file.count + 1_234, file.count, loops * file.count] {
            let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
            let first = try PcapSource(path: Captures.sample, pool: pool, pacing: .topSpeed, loopCount: loops)
            let before = Self.drain(first, pool: pool, burst: 1, limit: stopAfter)
            #expect(before == Array(all[0..<stopAfter]))
            let position = try #require(first.position, "stopped after \(stopAfter)")
            #expect(position.loop == (stopAfter - 1) / file.count && position.recordIndex == stopAfter - position.loop * file.count,
                    "\(position) after \(stopAfter)")
            var seen = 0
            for index in 0..<2 {
                let split = CaptureSplit(index: index, count: 2)
                let takerPool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2048)
                let taker = try PcapSource(path: Captures.sample, pool: takerPool, pacing: .topSpeed, loopCount: loops, split: split)
                try taker.takeOver(at: position)
                let taken = Self.drain(taker, pool: takerPool, burst: 32)
                let expected = all[stopAfter...].filter { bytes in bytes.withUnsafeBytes { split.takes($0, linkType: 1) } }
                #expect(taken == expected, "share \(index) after \(stopAfter): \(taken.count) of \(expected.count)")
                #expect(taker.failure == nil && taker.position == nil, "it read to the end")
                #expect(taker.counters.loopsDone.load(ordering: .relaxed) == UInt64(loops))
                seen += taken.count
            }
            #expect(seen == all.count - stopAfter)
        }
    }

    /// A pcapng capture is not taken over in the middle (its blocks need the interfaces read before
    /// them): no position, and a take-over is refused with the reason.
    @Test(needsCaptures) func aPcapngCaptureHasNoPositionToTakeOver() throws {
        let path = Captures.path("mixed.pcapng")
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let source = try PcapSource(path: path, pool: pool, pacing: .topSpeed)
        #expect(source.position == nil)
        #expect {
            try source.takeOver(at: CapturePosition(loop: 0, recordIndex: 1, fileOffset: 64))
        } throws: { error in
            guard case PcapError.notResumable(_, let reason) = error else { return false }
            return reason.contains("classic pcap")
        }
    }

    /// Auto started one instance; once 12,345 records went out it fans out mid-run: the single
    /// instance stops between two records and drains, and two instances take the capture over from
    /// the next record (each with its flows). Every record is delivered once. 300 loops (600,000
    /// records): the run is still going when the instances' paths are made, even in a release build.
    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func autoFansOutMidRunWithoutLosingARecord() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        var c = configuration(.auto, loops: 300)
        c.startsSingleInstance = true
        c.fansOutMidRun = .afterRecords(12_345)
        let total: UInt64 = 600_000
        let summary = try Replay(c).run()
        let midRun = try #require(summary.fannedOutMidRun, "\(summary.fanout.map { "\($0)" } ?? "")")
        #expect(summary.failure == nil && summary.drops.isEmpty && summary.fannedOutMidRunRefusal == nil)
        #expect(summary.packets == total && summary.delivered == total)
        #expect(summary.stages.map(\.items) == [total, total, total, total], "\(summary.stages.map(\.items))")
        #expect(midRun.deliveredBefore >= 12_345 && midRun.deliveredBefore < total, "\(midRun)")
        #expect(midRun.position.loop * 2_000 + midRun.position.recordIndex == Int(midRun.deliveredBefore), "\(midRun)")
        #expect(summary.instances == 2 && summary.instanceDelivered.allSatisfy { $0 > 0 })
        #expect(summary.instanceDelivered.reduce(0, +) + midRun.deliveredBefore == total)
        #expect(midRun.singleRecordsPerSecond == nil && "\(midRun)".contains("forced"))
        #expect(summary.split == .flows)
        // Never: the single instance runs to the end.
        c.fansOutMidRun = .never
        c.loopCount = 20
        let single = try Replay(c).run()
        #expect(single.fannedOutMidRun == nil && single.instances == 1 && single.delivered == 40_000)
    }

    /// A capture file replaced (same bytes, another inode) after the run opened it: the instances,
    /// which would open the new file, are refused, and the single instance runs on to the end with
    /// nothing lost; the summary says why, and it is not a failure.
    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func aReplacedCaptureIsNotTakenOverMidRun() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let bytes = try #require(fileBytes(Captures.sample))
        let path = temporaryPath("replaced.pcap")
        let replacement = temporaryPath("replacement.pcap")
        defer { unlink(path); unlink(replacement) }
        for target in [path, replacement] {
            let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            try #require(fd >= 0)
            #expect(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count)
            close(fd)
        }
        var c = configuration(.auto, loops: 100)
        c.capturePath = path
        c.startsSingleInstance = true
        c.fansOutMidRun = .afterRecords(12_345)
        let replay = try Replay(c)
        #expect(rename(replacement, path) == 0)
        let summary = try replay.run()
        #expect(summary.fannedOutMidRun == nil && summary.instances == 1)
        #expect(summary.fannedOutMidRunRefusal?.contains("replaced") == true, "\(summary.fannedOutMidRunRefusal ?? "")")
        #expect(summary.failure == nil && summary.delivered == 200_000 && summary.drops.isEmpty)
    }

    /// The rule that fans a single instance out mid-run, on numbers: not before the warm-up, not on a
    /// window shorter than 50,000 records or 20 ms, not within 5% of the trial's rate, not when the
    /// records left would save less than 10 ms; then yes, with the window's pace.
    @Test func theMidRunWatchFansOutOnlyForAClearGainOverWhatIsLeft() throws {
        let instances = [PacketPathConfiguration(name: "a", input: .capture(path: "x", pacing: .topSpeed, loopCount: 1), output: .discard),
                         PacketPathConfiguration(name: "b", input: .capture(path: "x", pacing: .topSpeed, loopCount: 1), output: .discard)]
        // A capture of 10M 64-byte records (80 bytes each in the file), read once; the trial ran 15 M/s.
        let file: UInt64 = 24 + 10_000_000 * 80
        var watch = MidRunWatch(instances: instances, rule: .whenFaster, trialRecordsPerSecond: 15e6)
        func due(_ out: UInt64, _ ms: UInt64) -> Double? {
            watch.due(out: out, packets: out, bytes: out * 64, nowNs: ms * 1_000_000, captureBytes: file, loopCount: 1)
        }
        #expect(due(1_000, 1) == nil)          // warming up
        #expect(due(10_000, 2) == nil)         // the window starts here
        #expect(due(40_000, 10) == nil)        // too few records
        #expect(due(300_000, 21) == nil)       // 290,000 in 19 ms is too short a window
        #expect(due(300_000, 22) == nil)       // 14.5 M/s: within 5% of 15; a new window starts
        #expect(due(550_000, 47) == nil)       // 250,000 in 25 ms: 10 M/s, slow, but one window only
        let pace = try #require(due(800_000, 72))  // 10 M/s again: 9.2M left save 307 ms
        #expect(abs(pace - 10e6) < 1, "\(pace)")
        // A fast window between two slow ones starts the count again.
        var wobbly = MidRunWatch(instances: instances, rule: .whenFaster, trialRecordsPerSecond: 15e6)
        for (out, ms): (UInt64, UInt64) in [(10_000, 0), (210_000, 20), (510_000, 40)] {
            #expect(wobbly.due(out: out, packets: out, bytes: out * 64, nowNs: ms * 1_000_000, captureBytes: file, loopCount: 1) == nil)
        }
        #expect(wobbly.due(out: 710_000, packets: 710_000, bytes: 710_000 * 64, nowNs: 60_000_000, captureBytes: file, loopCount: 1) == nil)
        #expect(wobbly.due(out: 910_000, packets: 910_000, bytes: 910_000 * 64, nowNs: 80_000_000, captureBytes: file, loopCount: 1) != nil)
        // Near the end: 50,000 left at 5 against 15 M/s save 6.7 ms, less than the 10 a switch costs.
        var late = MidRunWatch(instances: instances, rule: .whenFaster, trialRecordsPerSecond: 15e6)
        for (out, ms): (UInt64, UInt64) in [(9_700_000, 0), (9_850_000, 20), (9_950_000, 40)] {
            #expect(late.due(out: out, packets: out, bytes: out * 64, nowNs: ms * 1_000_000, captureBytes: file, loopCount: 1) == nil)
        }
        // The same pace with more left does fan out, after its second slow window.
        var early = MidRunWatch(instances: instances, rule: .whenFaster, trialRecordsPerSecond: 15e6)
        for (out, ms): (UInt64, UInt64) in [(9_000_000, 0), (9_150_000, 20)] {
            #expect(early.due(out: out, packets: out, bytes: out * 64, nowNs: ms * 1_000_000, captureBytes: file, loopCount: 1) == nil)
        }
        #expect(early.due(out: 9_300_000, packets: 9_300_000, bytes: 9_300_000 * 64, nowNs: 40_000_000, captureBytes: file, loopCount: 1) != nil)
        // Forced after a count, whatever was measured; never without a trial's rate.
        var forced = MidRunWatch(instances: instances, rule: .afterRecords(100), trialRecordsPerSecond: nil)
        #expect(forced.due(out: 99, packets: 99, bytes: 0, nowNs: 0, captureBytes: file, loopCount: 1) == nil)
        #expect(forced.due(out: 100, packets: 100, bytes: 0, nowNs: 0, captureBytes: file, loopCount: 1) == 0)
        var blind = MidRunWatch(instances: instances, rule: .whenFaster, trialRecordsPerSecond: nil)
        #expect(blind.due(out: 10_000, packets: 10_000, bytes: 0, nowNs: 0, captureBytes: file, loopCount: 1) == nil)
        #expect(blind.due(out: 900_000, packets: 900_000, bytes: 0, nowNs: 1_000_000_000, captureBytes: file, loopCount: 1) == nil)
    }

    private func configuration(_ placement: ReplayPlacement, output: ReplayOutput = .discard,
                               loops: Int = 5) -> ReplayConfiguration {
        var configuration = ReplayConfiguration(capturePath: Captures.sample, output: output, pacing: .topSpeed,
                                                loopCount: loops, cores: Self.cores, waitMode: .busyPoll)
        configuration.placement = placement
        return configuration
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func fanoutRunsOneInstancePerCoreAndDeliversEveryPacketOnce() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let summary = try Replay(configuration(.fanout)).run()
        #expect(summary.failure == nil && summary.drops.isEmpty)
        #expect(summary.instances == 2 && summary.delivered == 10_000 && summary.packets == 10_000)
        #expect(summary.instanceDelivered.count == 2 && summary.instanceDelivered.allSatisfy { $0 > 0 })
        #expect(summary.instanceDelivered.reduce(0, +) == 10_000)
        #expect(summary.stages.map(\.items) == [10_000, 10_000, 10_000, 10_000])
        #expect(summary.fusedBursts > 0, "each instance runs to completion on its core")
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func autoFansOutOnlyWhenItsTrialsFavourIt() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        var tried = configuration(.auto, loops: 20)
        tried.trialsWithin = .infinity  // every decision a close call: the shapes are tried
        let summary = try Replay(tried).run()
        let decision = try #require(summary.fanout)
        #expect(decision.notSplittable == nil && decision.othersNsPerRecord > 0)
        // Nothing a trial ran reached the run: every stage saw the run's packets once.
        #expect(summary.stages.map(\.items) == [40_000, 40_000, 40_000, 40_000], "\(summary.stages.map(\.items))")
        // The one-core trial measured the stages; the planner predicted from them.
        let stageNs = try #require(decision.stageNsPerItem, "\(decision)")
        #expect(stageNs.count == 4 && stageNs.allSatisfy { $0 > 0 })
        let planner = try #require(decision.planner)
        #expect(decision.predictedItemsPerSecond != nil)
        // The shapes were tried (the sample's 2,000 records over 20 loops fill every trial's window),
        // the pipelined one where the planner put it, and the choice follows the trials' rates.
        let one = try #require(decision.trialOneCore, "\(decision)")
        let fanned = try #require(decision.trialFannedOut, "\(decision)")
        let split = try #require(decision.trialPipelinedPlacement, "\(decision)")
        #expect(Set(split).count == 2 && ([planner.chosen] + planner.alternatives).contains { $0.placement == split })
        let pipelined = try #require(decision.trialPipelined, "\(decision)")
        #expect(one > 0 && fanned > 0 && pipelined > 0)
        // The rule (`Replay.fansOut`, tested by itself below) on what was measured and predicted.
        let pipelinedBest = pipelined >= one * 1.05
        let bestSingle = pipelinedBest ? pipelined : one
        let splitPredicted = try #require(([planner.chosen] + planner.alternatives).first { $0.placement == split })
        #expect(decision.chosen == Replay.fansOut(
            fanned: fanned, best: bestSingle, bestUsesEveryCore: pipelinedBest, predictedFanned: decision.predictedItemsPerSecond,
            predictedBest: pipelinedBest ? splitPredicted.predictedItemsPerSecond : nil, margin: 1.05), "\(decision)")
        #expect(summary.instances == (decision.chosen ? 2 : 1))
        #expect(decision.startPlacement == (pipelined >= one * 1.05 ? split : [0, 0, 0, 0]), "\(decision)")
        #expect(decision.refuted == (pipelined < bestSingle ? [split] : []), "\(decision)")
        #expect(decision.closeCall && "\(decision)".contains("in trials over the capture's first records"), "\(decision)")
        // Never a close call: the predictions decide, only the one-core trial ran (for the stages' costs).
        var predicted = configuration(.auto, loops: 20)
        predicted.trialsWithin = 1
        let clearRun = try Replay(predicted).run()
        let clear = try #require(clearRun.fanout)
        let clearPlan = try #require(clear.planner, "\(clear)")
        #expect(clearRun.delivered == 40_000 && clearRun.failure == nil)
        #expect(!clear.closeCall && clear.trialOneCore != nil && clear.trialFannedOut == nil, "\(clear)")
        let prediction = try #require(clear.predictedItemsPerSecond)
        #expect(clear.chosen == (prediction >= clearPlan.chosen.predictedItemsPerSecond * 1.05), "\(clear)")
        // A pipelined start predicted for one instance is still tried against one core; otherwise none is.
        let startsPipelined = !clear.chosen && Set(clearPlan.chosen.placement).count > 1
        #expect((clear.trialPipelinedPlacement != nil) == startsPipelined, "\(clear)")
        #expect((clear.startPlacement != nil) == (startsPipelined && clear.trialPipelined != nil), "\(clear)")
        #expect("\(clear)".contains("clear enough without the fanned-out trial"), "\(clear)")
        predicted.trialsWithin = 0.5
        #expect(throws: ReplayError.self) { _ = try Replay(predicted) }
        #expect(summary.instanceDelivered.count == summary.instances && summary.instanceDelivered.allSatisfy { $0 > 0 })
        #expect(summary.delivered == 40_000 && summary.failure == nil)
        // A pcap output cannot be split: auto says so and runs one instance.
        let path = Captures.output("fanout-auto.pcap")
        defer { unlink(path) }
        let single = try Replay(configuration(.auto, output: .pcapFile(path), loops: 1)).run()
        #expect(single.instances == 1 && single.fanout?.chosen == false)
        #expect(single.fanout?.notSplittable?.contains("pcap") == true)
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func aSecondShapeIsMeasuredOnTheSamePathAfterALiveMove() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let c = configuration(.auto, loops: 20)
        let affinity = try CPU.allowedCPUs()
        var seen: [TrialResult] = []
        let shapes = Replay.trials(c) { first in
            seen.append(first)
            return [0, 0, 1, 1]
        }
        // The first window went to `next`; the second, after the move, measured the split, over
        // records after the first window's.
        try #require(shapes.count == 2, "\(shapes)")
        #expect(seen == [shapes[0]])
        #expect(shapes[0].placement == [0, 0, 0, 0] && shapes[1].placement == [0, 0, 1, 1], "\(shapes)")
        #expect(shapes[1].startRecord >= shapes[0].startRecord + shapes[0].windowRecords, "\(shapes)")
        for shape in shapes {
            #expect(shape.recordsPerSecond > 0 && shape.windowRecords >= Replay.trialRecordsMin, "\(shape)")
            #expect(shape.stageNsPerItem.count == 4 && shape.stageNsPerItem.allSatisfy { $0 > 0 }, "\(shape)")
        }
        // The polling thread kept off the one-core shape's core, and has the run's cores back.
        #expect(try CPU.allowedCPUs() == affinity)
        // Declined: one window, as `trial` measures.
        let once = Replay.trials(c) { _ in nil }
        #expect(once.count == 1 && once[0].windowRecords >= Replay.trialRecordsMin, "\(once)")
        // The same placement again is no second shape.
        #expect(Replay.trials(c) { _ in [0, 0, 0, 0] }.count == 1)
        // A capture that drains in the first window leaves nothing for a second (2,000 records, once).
        let short = configuration(.auto, loops: 1)
        #expect(Replay.trials(short) { _ in [0, 0, 1, 1] }.count <= 1)
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func aRecordTooLargeForTheTrialsBuffersVoidsTheWindowItFallsIn() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        // Every tenth record of 1,400 bytes, the rest of 64: with buffers for the small ones only (as
        // when the sample met no large record), the window skips large records as oversize and, since a
        // skipped record costs almost nothing, measures nothing. Whatever the build's speed, every
        // window meets them.
        var capture = RawCapture()
        for index in 0..<4_000 {
            capture.records.append(.init(seconds: 1, fraction: UInt32(index),
                                         bytes: RawCapture.frame(length: index % 10 == 9 ? 1_400 : 64, seed: index)))
        }
        let path = temporaryPath("trial-oversize.pcap")
        try capture.write(to: path)
        defer { unlink(path) }
        var c = configuration(.auto, loops: 20)
        c.capturePath = path
        #expect(Replay.trials(c, recordBytes: 64) { _ in [0, 0, 1, 1] }.isEmpty)
        #expect(Replay.trial(c, instances: 2, recordBytes: 64) == nil)
        // Buffers that hold them all: both windows measure.
        let shapes = Replay.trials(c, recordBytes: 1_400) { _ in [0, 0, 1, 1] }
        #expect(shapes.count == 2, "\(shapes)")
    }

    @Test func fanningOutAgainstTheBestSingleShapeFollowsTheRule() {
        func fans(_ fanned: Double, _ best: Double, everyCore: Bool, predicted: (Double, Double)?) -> Bool {
            Replay.fansOut(fanned: fanned, best: best, bestUsesEveryCore: everyCore, predictedFanned: predicted?.0,
                           predictedBest: predicted?.1, margin: 1.05)
        }
        // Against one core (or fewer cores than the instances take): 5% more, whatever was predicted.
        #expect(!fans(10.4, 10, everyCore: false, predicted: (13, 9)))
        #expect(fans(10.5, 10, everyCore: false, predicted: (9, 13)))
        // Against a split on every core, predicted slower than fanning out: fanning out stands unless
        // the split measured 5% faster.
        #expect(fans(10, 10.4, everyCore: true, predicted: (13, 10)))
        #expect(!fans(10, 10.6, everyCore: true, predicted: (13, 10)))
        // Predicted faster than fanning out: the split stands unless fanning out measured 5% faster.
        #expect(!fans(10.4, 10, everyCore: true, predicted: (10, 13)))
        #expect(fans(10.5, 10, everyCore: true, predicted: (10, 13)))
        // Without predictions (no calibrated hand-off): the margin, as against one core.
        #expect(!fans(10.4, 10, everyCore: true, predicted: nil))
    }

    @Test func fanoutRefusesWhatCannotBeSplit() throws {
        let path = Captures.output("fanout-refused.pcap")
        defer { unlink(path) }
        var cases: [(ReplayConfiguration, String)] = [(configuration(.fanout, output: .pcapFile(path)), "pcap")]
        var paced = configuration(.fanout)
        paced.pacing = .rate(packetsPerSecond: 1_000)
        cases.append((paced, "paced"))
        var timed = configuration(.fanout)
        timed.pacing = .capture(speed: 1)
        cases.append((timed, "paced"))
        var oneCore = configuration(.fanout)
        oneCore.cores = [Self.cores[0]]
        cases.append((oneCore, "cores"))
        var spreadByBlocks = configuration(.spread)
        spreadByBlocks.split = .blocks
        cases.append((spreadByBlocks, "not spread"))
        for (configuration, word) in cases {
            #expect {
                _ = try Replay(configuration)
            } throws: { error in
                guard case ReplayError.invalidConfiguration(.fanout(let reason)) = error else { return false }
                return reason.contains(word)
            }
        }
    }

    /// A capture of `count` 60-byte frames (RawCapture), its path, and its bytes once through.
    private func largeCapture(_ name: String, count: Int) throws -> (path: String, bytes: UInt64) {
        var capture = RawCapture()
        for index in 0..<count {
            capture.records.append(.init(seconds: UInt32(index / 1_000), fraction: UInt32(index % 1_000),
                                         bytes: RawCapture.frame(length: 60, seed: index)))
        }
        let path = temporaryPath(name)
        try capture.write(to: path)
        return (path, UInt64(count * 60))
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func fanoutByBlocksReadsEveryRecordOnceOverAllLoops() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let (path, bytes) = try largeCapture("blocks-fanout.pcap", count: 20_000)  // 1.5 MB: 6 blocks a loop
        defer { unlink(path) }
        var configuration = ReplayConfiguration(capturePath: path, output: .discard, pacing: .topSpeed, loopCount: 3,
                                                cores: Self.cores, waitMode: .busyPoll)
        configuration.placement = .fanout
        configuration.split = .blocks
        let summary = try Replay(configuration).run()
        #expect(summary.failure == nil && summary.drops.isEmpty)
        #expect(summary.instances == 2 && summary.split == .blocks)
        #expect(summary.packets == 60_000 && summary.delivered == 60_000 && summary.bytes == 3 * bytes)
        // How many blocks each instance claims depends on when its worker starts (CaptureBlocksTests
        // checks every reader gets blocks, deterministically).
        #expect(summary.instanceDelivered.count == 2 && summary.instanceDelivered.reduce(0, +) == 60_000)
        #expect(summary.stages.map(\.items) == [60_000, 60_000, 60_000, 60_000])
        // Auto allowed to fan out by blocks does so on a capture of at least two blocks an instance...
        configuration.placement = .auto
        let auto = try Replay(configuration).run()
        let decision = try #require(auto.fanout)
        #expect(decision.chosen && decision.split == .blocks && decision.blockCount == 6, "\(decision)")
        #expect(auto.instances == 2 && auto.delivered == 60_000 && auto.failure == nil)
        // ...and not on one of fewer (the sample once: 2 blocks), where it measures and places one instance.
        var small = self.configuration(.auto, loops: 1)
        small.split = .blocks
        let single = try Replay(small).run()
        #expect(single.instances == 1 && single.delivered == 2_000 && single.split == nil)
        let declined = try #require(single.fanout)
        #expect(!declined.chosen && declined.notSplittable?.contains("fewer than 2") == true, "\(declined)")
        #expect(declined.stageNsPerItem?.count == 4 && declined.planner != nil, "the probe placed the single instance")
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func fanoutByBlocksEndsAtABadRecordAfterEveryRecordBeforeIt() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let (path, _) = try largeCapture("blocks-cut.pcap", count: 10_000)
        defer { unlink(path) }
        #expect(truncate(path, off_t(24 + 9_000 * 76 + 30)) == 0)  // record 9,000 cut in its data
        var configuration = ReplayConfiguration(capturePath: path, output: .discard, pacing: .topSpeed, loopCount: 2,
                                                cores: Self.cores, waitMode: .busyPoll)
        configuration.placement = .fanout
        configuration.split = .blocks
        let summary = try Replay(configuration).run()
        #expect(summary.delivered == 9_000, "every record before the cut one, once; no second loop")
        guard case .badRecord(_, let index, let offset, .truncatedData) = try #require(summary.inputError) else {
            Issue.record("\(String(describing: summary.inputError))")
            return
        }
        #expect(index == 9_000 && offset == 24 + 9_000 * 76)
    }

    @Test(.enabled(if: Self.cores.count >= 2 || Captures.inCI, "needs two CPUs"))
    func theCommandLineFansOutByBlocks() throws {
        try #require(Self.cores.count >= 2, "CI machines have two CPUs")
        let cores = Self.cores.map(String.init).joined(separator: ",")
        let result = try runSluice(["replay", Captures.sample, "--topspeed", "--loop", "3", "--cores", cores,
                                    "--placement", "fanout", "--fanout-by", "blocks", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("\"split\":\"blocks\"") && result.stdout.contains("\"delivered\":6000"))
        let wrong = try runSluice(["replay", Captures.sample, "--fanout-by", "rows"])
        #expect(wrong.status != 0 && wrong.stderr.contains("fanout-by"))
    }

    @Test(needsCaptures) func aPcapngCaptureIsNotFannedOutByBlocks() throws {
        var configuration = ReplayConfiguration(capturePath: Captures.path("mixed.pcapng"), output: .discard,
                                                cores: [0, 0], waitMode: .busyPoll)
        configuration.placement = .fanout
        configuration.split = .blocks
        #expect {
            _ = try Replay(configuration)
        } throws: { error in
            guard case ReplayError.invalidConfiguration(.fanout(let reason)) = error else { return false }
            return reason.contains("classic pcap")
        }
    }
}
