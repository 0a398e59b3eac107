// Path: Sources/SluiceReplay/ReplayTrial.swift — short runs of a placement over the capture's first
// records before the replay starts: what `--placement auto` measures instead of predicting.
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO

/// What one trial measured over its window.
public struct TrialResult: Sendable, Equatable {
    /// Capture records a second the shape went through. Fanned out: the slowest instance's pace
    /// through the capture (each instance reads every record), so the whole run's pace.
    public var recordsPerSecond: Double
    /// Each stage of the first instance, ns per item that entered it over the window.
    public var stageNsPerItem: [Double]
    /// Records the pace was measured over (the slowest instance's, fanned out).
    public var windowRecords: UInt64
    /// Records the slowest instance had put out when the window began.
    public var startRecord: UInt64
    /// The worker each stage of the first instance ran on at the window's end.
    public var placement: [Int]
}

extension Replay {
    /// A trial measures after each instance has put this many records out...
    static let trialWarmUpRecords: UInt64 = 1_024
    /// ...until one of them has put this many more out, has drained (the whole capture, all loops),
    /// or `trialTimeNsMax` has passed since the launch.
    static let trialRecords: UInt64 = 8_192
    static let trialTimeNsMax: UInt64 = 50_000_000
    /// Fewer records than this in the window measure nothing (nil).
    static let trialRecordsMin: UInt64 = 1_024
    /// Room a trial's buffer keeps beyond the largest sampled record, for rules that add headers
    /// (a VXLAN encapsulation adds 50 bytes).
    static let trialBufferRoomBytes = 256

    /// Runs the pipeline's own stages (a copy of the rule table, so no hits are counted) over the
    /// capture's first records into a discard sink: `instances` instances fanned out by flow (instance
    /// i run to completion on core i), or one instance placed as `placement` (worker indices over the
    /// first cores; nil: all on the first). Nothing reaches the output. Blocks the calling thread for
    /// a few milliseconds (at most `trialTimeNsMax` and the drain). nil when it cannot run, its
    /// window held fewer than `trialRecordsMin` records (a tiny capture, a slow debug build), or a
    /// record too large for the trial's buffers was skipped in it (see `recordBytes`).
    /// `recordBytes`: the largest record the sample met; a buffer size following the capture then
    /// follows that instead (plus `trialBufferRoomBytes`, at most what the run's buffers hold), so the
    /// trial's pool faults in fewer pages: 64-byte records take 448 bytes a buffer with its metadata,
    /// a fifth of 2 KiB buffers' 2,112, and that fault-in was most of a trial's set-up. A later, larger record is skipped
    /// as oversize and ends the drain as a record done, but a window it fell in measures nothing: a
    /// skipped record costs almost nothing, so it would inflate the pace.
    static func trial(_ c: ReplayConfiguration, instances: Int = 1, placement: [Int]? = nil,
                      recordBytes: Int? = nil) -> TrialResult? {
        trials(c, instances: instances, placement: placement, recordBytes: recordBytes).first
    }

    /// `trial`, then (one instance only) what `next` asks for after the first window: the stages
    /// moved live to the placement it returns (worker indices over the run's cores; nil: stop) and
    /// measured again on the same path and runtime, the records after the first window's. A second
    /// shape costs a move and a window, not another path, runtime and drain. Returns the windows
    /// measured, in order: empty when the first failed; one when `next` declined or the move or the
    /// second window failed, or the capture drained in the first. `next` runs on the calling thread
    /// while the first shape keeps running. Blocks for up to two windows, the moves (each at most
    /// `trialTimeNsMax`) and the drain.
    static func trials(_ c: ReplayConfiguration, instances: Int = 1, placement: [Int]? = nil,
                       recordBytes: Int? = nil, then next: ((TrialResult) -> [Int]?)? = nil) -> [TrialResult] {
        precondition(instances >= 1 && (instances == 1 || placement == nil), "fanned-out instances run to completion")
        precondition(next == nil || instances == 1, "a second shape is a placement of one instance")
        let shapeWorkers = instances > 1 ? instances : (placement?.max() ?? 0) + 1
        precondition(shapeWorkers <= c.cores.count, "a trial runs on the replay's cores")
        // A second shape may use every core: its workers start with the runtime and idle until then.
        let workerCount = next == nil ? shapeWorkers : c.cores.count
        guard let rules = try? RuleTable(rules: c.rules.rules, defaultVerdict: c.rules.defaultVerdict,
                                         tableRewrites: c.rules.tableRewrites) else { return [] }
        var paths: [PacketPath] = []
        for instance in 0..<instances {
            var probe = PacketPathConfiguration(
                name: "trial-\(instance)", input: .capture(path: c.capturePath, pacing: .topSpeed, loopCount: c.loopCount),
                output: .discard, numaNode: CPU.numaNode(of: c.cores[instance]))
            probe.burstCount = c.burstCount
            // Run to completion the rings stay empty (one burst each): small rings, so the pool is small
            // too (each trial's pool is allocated and faulted in inside the run's measured span).
            // Pipelined (now or after a move) the run's own rings: with 128-slot rings the pipelined
            // window read 14.5 M records/s where the run's 1,024-slot rings ran 18.4 (3 stages, a
            // cheap hand-off), so fanning out won trials it lost in the run. The trial's small
            // buffers keep that pool near 2 MB.
            let pipelined = workerCount > 1 && instances == 1
            let powerOfTwo = 1 << (Int.bitWidth - (c.burstCount - 1).leadingZeroBitCount)  // at or above
            probe.ringCapacity = pipelined ? c.ringCapacity : min(c.ringCapacity, max(32, powerOfTwo))
            if let size = c.bufferSizeBytes
                ?? recordBytes.map({ record in
                    min((record + Self.trialBufferRoomBytes + 63) & ~63, PacketPathConfiguration.captureBufferSizeBytesMax)
                }) {
                probe.bufferSizeBytes = size
                probe.bufferSizeFollowsCapture = false
            }
            probe.stages = c.stages
            probe.classifier = c.classifier
            probe.rules = rules
            if instances > 1 { probe.captureSplit = CaptureSplit(index: instance, count: instances) }
            guard let path = try? PacketPath(probe) else { return [] }
            paths.append(path)
        }
        guard let runtime = try? Runtime(configuration: RuntimeConfiguration(
            cores: Array(c.cores.prefix(workerCount)), waitMode: c.waitMode, fusesRunToCompletion: c.fusesRunToCompletion))
        else { return [] }
        defer { runtime.stop() }
        guard (try? runtime.start()) != nil else { return [] }
        // A shape on fewer cores than the run's: the polling thread keeps off the shape's cores.
        let spare = c.cores.count > shapeWorkers ? Array(c.cores[shapeWorkers...]) : []
        var restore = spare.isEmpty ? nil : CPU.confineCurrentThread(to: spare)
        func restoreAffinity() {
            // Failing that, at least the run's cores: the run checks them against this thread's set.
            if let set = restore, CPU.confineCurrentThread(to: set) == nil { _ = CPU.confineCurrentThread(to: c.cores) }
            restore = nil
        }
        defer { restoreAffinity() }
        func stopAll() -> Bool {
            for path in paths { path.stopSignal.stop() }
            runtime.wakeAll()
            return runtime.drain(timeoutNs: 10 * Self.trialTimeNsMax)  // only slow when something is wrong
        }
        let launch = Mark(ns: Clock.monotonicNs(), done: Array(repeating: 0, count: instances),
                          stages: paths[0].pipeline.snapshot(), oversize: 0)
        var at: [Int] = []
        for (instance, path) in paths.enumerated() {
            let stageCount = path.pipeline.stages.count
            at = instances > 1 ? Array(repeating: instance, count: stageCount)
                               : placement ?? Array(repeating: 0, count: stageCount)
            guard at.count == stageCount, (try? runtime.launch(path.pipeline, placement: at)) != nil else {
                _ = stopAll()
                return []
            }
        }
        var measured: [TrialResult] = []
        // With a core of its own the polling thread takes nothing from the shape: it polls finely.
        let firstPollUs: UInt32 = spare.isEmpty ? 250 : 50
        if let first = Self.window(paths, launch: launch, deadlineNs: Clock.monotonicNs() &+ Self.trialTimeNsMax,
                                   pollUs: firstPollUs) {
            measured.append(first)
            let stages = paths[0].pipeline.stages
            if let next, let target = next(first), target != at, !paths.contains(where: { $0.pipeline.isDrained }) {
                precondition(target.count == stages.count && target.allSatisfy { $0 >= 0 && $0 < workerCount },
                             "a second shape places every stage on the run's cores")
                restoreAffinity()
                var moved = true
                for (stage, worker) in zip(stages, target) where moved {
                    moved = (try? runtime.move(stage, toWorker: worker, timeoutNs: Self.trialTimeNsMax)) != nil
                }
                let from = Mark(ns: Clock.monotonicNs(), done: paths.map(Self.done),
                                stages: paths[0].pipeline.snapshot(), oversize: Self.oversize(paths))
                if moved, let second = Self.window(paths, launch: from,
                                                   deadlineNs: Clock.monotonicNs() &+ Self.trialTimeNsMax, pollUs: 250) {
                    measured.append(second)
                }
            }
        }
        return stopAll() ? measured : []
    }

    /// Records out of an instance: delivered or filtered, passed over for another, or too large.
    private static func done(_ path: PacketPath) -> UInt64 {
        path.pipeline.delivered &+ path.pipeline.filtered &+ path.othersRecords &+ path.oversizeRecords
    }

    /// Records skipped as too large for the trial's buffers, over every instance.
    private static func oversize(_ paths: [PacketPath]) -> UInt64 {
        paths.reduce(0) { $0 &+ $1.oversizeRecords }
    }

    /// Counters at one instant of a trial.
    private struct Mark {
        var ns: UInt64
        /// Per instance: records out of it (delivered or filtered, passed over for another, or too large).
        var done: [UInt64]
        var stages: [StageSnapshot]
        var oversize: UInt64
    }

    /// Polls the running trial's counters every `pollUs` (250 µs where workers are busy on every
    /// core, so the control thread takes little from them): from when every instance has put
    /// `trialWarmUpRecords` records out since `launch` (the launch or a move; so a pipelined shape's
    /// rings have filled) to when one has put `trialRecords` more out, drained, or `deadlineNs` passed.
    /// Records are counted where they leave, not where they enter, so records queued on rings are not
    /// counted as done. A window that ends drained ends when the counts last moved; one too short for
    /// `trialRecordsMin` is measured from the `launch` instead (a capture too short for the warm-up).
    /// nil when a record was skipped as too large for the buffers within it.
    private static func window(_ paths: [PacketPath], launch: Mark, deadlineNs: UInt64, pollUs: UInt32) -> TrialResult? {
        var start: Mark?
        var counts = launch.done
        var movedNs = launch.ns
        while true {
            usleep(pollUs)
            let now = Clock.monotonicNs()
            let drained = paths.contains { $0.pipeline.isDrained }
            let latest = paths.map(Self.done)
            if latest != counts { (counts, movedNs) = (latest, now) }
            let over = now >= deadlineNs || drained
            if start == nil, !over, zip(counts, launch.done).allSatisfy({ $0 &- $1 >= Self.trialWarmUpRecords }) {
                start = Mark(ns: now, done: counts, stages: paths[0].pipeline.snapshot(), oversize: Self.oversize(paths))
                continue
            }
            guard over || start.map({ first in zip(counts, first.done).contains { $0 &- $1 >= Self.trialRecords } }) == true
            else { continue }
            let endNs = drained ? movedNs : now
            var first = start ?? launch
            if zip(counts, first.done).map({ $0 &- $1 }).min()! < Self.trialRecordsMin { first = launch }
            let stages = paths[0].pipeline.snapshot()
            let records = zip(counts, first.done).map { $0 &- $1 }.min()!
            guard records >= Self.trialRecordsMin, endNs > first.ns, Self.oversize(paths) == first.oversize else { return nil }
            let entered = max(stages[0].items &- first.stages[0].items, 1)  // an instance can take none of a few flows
            let stageNs = zip(first.stages, stages).map { before, after in
                Double(after.cycles &- before.cycles) / Clock.cyclesPerNs / Double(entered)
            }
            return TrialResult(recordsPerSecond: Double(records) / (Double(endNs &- first.ns) / 1e9),
                               stageNsPerItem: stageNs, windowRecords: records, startRecord: first.done.min()!,
                               placement: paths[0].pipeline.stages.map { $0.owner.load(ordering: .acquiring) })
        }
    }
}
