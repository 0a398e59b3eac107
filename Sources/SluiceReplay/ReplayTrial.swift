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
}

extension Replay {
    /// A trial measures after each instance has read this many records...
    static let trialWarmUpRecords: UInt64 = 2_048
    /// ...until one of them has read this many more, has read the whole capture (all loops), or
    /// `trialTimeNsMax` has passed since the launch.
    static let trialRecords: UInt64 = 16_384
    static let trialTimeNsMax: UInt64 = 50_000_000
    /// Fewer records than this in the window measure nothing (nil).
    static let trialRecordsMin: UInt64 = 1_024

    /// Runs the pipeline's own stages (a copy of the rule table, so no hits are counted) over the
    /// capture's first records into a discard sink: `instances` instances fanned out by flow (instance
    /// i run to completion on core i), or one instance placed as `placement` (worker indices over the
    /// first cores; nil: all on the first). Nothing reaches the output. Blocks the calling thread for
    /// a few milliseconds (at most `trialTimeNsMax` and the drain). nil when it cannot run or its
    /// window held fewer than `trialRecordsMin` records (a tiny capture, a slow debug build).
    static func trial(_ c: ReplayConfiguration, instances: Int = 1, placement: [Int]? = nil) -> TrialResult? {
        precondition(instances >= 1 && (instances == 1 || placement == nil), "fanned-out instances run to completion")
        let workerCount = instances > 1 ? instances : (placement?.max() ?? 0) + 1
        precondition(workerCount <= c.cores.count, "a trial runs on the replay's cores")
        guard let rules = try? RuleTable(rules: c.rules.rules, defaultVerdict: c.rules.defaultVerdict,
                                         tableRewrites: c.rules.tableRewrites) else { return nil }
        var paths: [PacketPath] = []
        for instance in 0..<instances {
            var probe = PacketPathConfiguration(
                name: "trial-\(instance)", input: .capture(path: c.capturePath, pacing: .topSpeed, loopCount: c.loopCount),
                output: .discard, numaNode: CPU.numaNode(of: c.cores[instance]))
            probe.burstCount = c.burstCount
            // Run to completion the rings stay empty: small, so the pool is too. Pipelined: the run's.
            probe.ringCapacity = workerCount > 1 && instances == 1 ? c.ringCapacity : 64
            if workerCount > 1, instances == 1, let count = c.poolBufferCount { probe.poolBufferCount = count }
            if let size = c.bufferSizeBytes {
                probe.bufferSizeBytes = size
                probe.bufferSizeFollowsCapture = false
            }
            probe.stages = c.stages
            probe.classifier = c.classifier
            probe.rules = rules
            if instances > 1 { probe.captureSplit = CaptureSplit(index: instance, count: instances) }
            guard let path = try? PacketPath(probe) else { return nil }
            paths.append(path)
        }
        guard let runtime = try? Runtime(configuration: RuntimeConfiguration(
            cores: Array(c.cores.prefix(workerCount)), waitMode: .busyPoll, fusesRunToCompletion: c.fusesRunToCompletion))
        else { return nil }
        defer { runtime.stop() }
        guard (try? runtime.start()) != nil else { return nil }
        let launch = Mark(ns: Clock.monotonicNs(), read: Array(repeating: 0, count: instances), stages: paths[0].pipeline.snapshot())
        for (instance, path) in paths.enumerated() {
            let stageCount = path.pipeline.stages.count
            let at = instances > 1 ? Array(repeating: instance, count: stageCount)
                                   : placement ?? Array(repeating: 0, count: stageCount)
            guard at.count == stageCount, (try? runtime.launch(path.pipeline, placement: at)) != nil else {
                for launched in paths { launched.stopSignal.stop() }
                runtime.wakeAll()
                _ = runtime.drain(timeoutNs: 10 * Self.trialTimeNsMax)
                return nil
            }
        }
        let measured = Self.window(paths, launch: launch, deadlineNs: Clock.monotonicNs() &+ Self.trialTimeNsMax)
        for path in paths { path.stopSignal.stop() }
        runtime.wakeAll()
        guard runtime.drain(timeoutNs: 10 * Self.trialTimeNsMax) else { return nil }  // only slow when something is wrong
        return measured
    }

    /// Counters at one instant of a trial.
    private struct Mark {
        var ns: UInt64
        var read: [UInt64]
        var stages: [StageSnapshot]
    }

    /// Polls the running trial's counters: from when every instance has read `trialWarmUpRecords` to
    /// when one has read `trialRecords` more, read all it will, or `deadlineNs` passed. A capture too
    /// short for the warm-up is measured from the `launch`.
    private static func window(_ paths: [PacketPath], launch: Mark, deadlineNs: UInt64) -> TrialResult? {
        func read(_ path: PacketPath) -> UInt64 { path.packetsIn &+ path.othersRecords }
        var start: Mark?
        while true {
            let now = Clock.monotonicNs()
            let counts = paths.map(read)
            let over = now >= deadlineNs || paths.contains { $0.pipeline.isDrained }
            if start == nil, !over, counts.allSatisfy({ $0 >= Self.trialWarmUpRecords }) {
                start = Mark(ns: now, read: counts, stages: paths[0].pipeline.snapshot())
            } else if over || start.map({ first in zip(counts, first.read).contains { $0 &- $1 >= Self.trialRecords } }) == true {
                let first = start ?? launch
                let stages = paths[0].pipeline.snapshot()
                let records = zip(counts, first.read).map { $0 &- $1 }.min()!
                let entered = stages[0].items &- first.stages[0].items
                guard records >= Self.trialRecordsMin, entered > 0, now > first.ns else { return nil }
                let seconds = Double(now &- first.ns) / 1e9
                let stageNs = zip(first.stages, stages).map { before, after in
                    Double(after.cycles &- before.cycles) / Clock.cyclesPerNs / Double(entered)
                }
                return TrialResult(recordsPerSecond: Double(records) / seconds, stageNsPerItem: stageNs, windowRecords: records)
            }
            usleep(100)
        }
    }
}
