// Path: Sources/sluice/ReplaySenderCommand.swift — `sluice replay`'s tcpreplay flags: which engine
// runs, their checks (usage errors naming the flag), and the sender's run.
import ArgumentParser
import Glibc
import SluiceCore
import SluicePacketIO
import SluiceReplay

/// Which engine a replay runs on (docs/REPLAY.md).
enum ReplayEngine: String, ExpressibleByArgument, CaseIterable {
    case auto, pipeline, sender
}

extension ReplayCommand {
    static let durationSecondsMax = 31_536_000.0  // a year

    /// True when a sender-only flag (or several captures) asks for the sender, or --engine sender.
    var senderOnlyFlags: [String] {
        var flags: [String] = []
        if captures.count > 1 { flags.append("several captures") }
        if mbps != nil { flags.append("--mbps") }
        if limit != nil { flags.append("--limit") }
        if duration != nil { flags.append("--duration") }
        if preload { flags.append("--preload") }
        if preloadMaxMb != nil { flags.append("--preload-max-mb") }
        if loopdelayMs != nil { flags.append("--loopdelay-ms") }
        if loop == 0 { flags.append("--loop 0") }
        if iface2 != nil { flags.append("--iface2") }
        if out2 != nil { flags.append("--out2") }
        if splitBy != nil { flags.append("--split-by") }
        if cachefile != nil { flags.append("--cachefile") }
        if writeCachefile != nil { flags.append("--write-cachefile") }
        if afXDP { flags.append("--af-xdp") }
        return flags
    }

    /// Pipeline-only flags given (not at their defaults).
    var pipelineOnlyFlags: [String] {
        var flags: [String] = []
        if hasRuleFlags { flags.append("rules and tcprewrite flags") }
        if shape != nil { flags.append("--shape") }
        if classifyBy != "source-mac" || !source.isEmpty { flags.append("--classify-by/--source") }
        if stages != 4 { flags.append("--stages") }
        if latency { flags.append("--latency") }
        if bufferSize != nil { flags.append("--buffer-size") }
        if placement != .auto { flags.append("--placement") }
        return flags
    }

    var usesSender: Bool {
        switch engine {
        case .sender: true
        case .pipeline: false
        case .auto: !senderOnlyFlags.isEmpty
        }
    }

    func validateSender() throws {
        if engine == .pipeline, let flag = senderOnlyFlags.first {
            throw ValidationError("\(flag) needs the sender: drop --engine pipeline")
        }
        guard usesSender else { return }
        if let flag = pipelineOnlyFlags.first {
            throw ValidationError("\(flag): a pipeline flag, but \(senderOnlyFlags.first ?? "--engine sender") runs the sender, which has no stages")
        }
        if let mbps, !SenderPacing.megabitsPerSecondRange.contains(mbps) {
            throw ValidationError("--mbps must be in \(SenderPacing.megabitsPerSecondRange), got \(mbps)")
        }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1, got \(limit)") }
        if let duration, !(duration > 0 && duration <= Self.durationSecondsMax) {
            throw ValidationError("--duration must be in 0 < S <= \(Self.durationSecondsMax) seconds, got \(duration)")
        }
        if let loopdelayMs, loopdelayMs < 0 || UInt64(loopdelayMs) > SenderConfiguration.loopDelayNsMax / 1_000_000 {
            throw ValidationError("--loopdelay-ms must be in 0...\(SenderConfiguration.loopDelayNsMax / 1_000_000), got \(loopdelayMs)")
        }
        guard loop >= 0 else { throw ValidationError("--loop must be at least 0, got \(loop)") }
        if loop == 0, limit == nil, duration == nil {
            throw ValidationError("--loop 0 (until stopped) needs --limit or --duration")
        }
        if let preloadMaxMb, preloadMaxMb < 1 || UInt64(preloadMaxMb) > SenderConfiguration.preloadBytesMaxLimit >> 20 {
            throw ValidationError("--preload-max-mb must be in 1...\(SenderConfiguration.preloadBytesMaxLimit >> 20), got \(preloadMaxMb)")
        }
        if preloadMaxMb != nil, !preload { throw ValidationError("--preload-max-mb needs --preload") }
        guard iface2 == nil || iface != nil else { throw ValidationError("--iface2 needs --iface (the primary)") }
        if afXDP, iface == nil { throw ValidationError("--af-xdp sends on --iface: give one") }
        if afXDP, out2 != nil { throw ValidationError("--af-xdp with --out2: give --iface2 for the secondary") }
        guard out2 == nil || out != nil else { throw ValidationError("--out2 needs --out (the primary)") }
        guard iface2 == nil || out2 == nil else { throw ValidationError("give --iface2 or --out2, not both") }
        guard splitBy == nil || cachefile == nil else { throw ValidationError("give --split-by or --cachefile, not both") }
        if let writeCachefile {
            guard splitBy != nil else { throw ValidationError("--write-cachefile \(writeCachefile) needs --split-by port:...|cidr:...") }
            guard captures.count == 1 else { throw ValidationError("--write-cachefile classifies one capture; \(captures.count) given") }
            guard cachefile == nil, iface2 == nil, out2 == nil else {
                throw ValidationError("--write-cachefile only writes the cache file: drop --cachefile, --iface2 and --out2")
            }
            return
        }
        let splits = splitBy != nil || cachefile != nil
        let second = iface2 != nil || out2 != nil
        if splits, !second { throw ValidationError("\(splitBy != nil ? "--split-by" : "--cachefile") needs a secondary output: --iface2 or --out2") }
        if second, !splits { throw ValidationError("\(iface2 != nil ? "--iface2" : "--out2") needs --split-by or --cachefile") }
        if let splitBy, ReplaySplitRule(splitBy) == nil {
            throw ValidationError("--split-by '\(splitBy)': expected port:P[,P...] or cidr:PREFIX[,PREFIX...] (at most \(ReplaySplitRule.entriesMax))")
        }
        if cachefile != nil, captures.count != 1 { throw ValidationError("--cachefile classifies one capture; \(captures.count) given") }
        if let cores { _ = try parseCores(cores) }
    }

    func senderConfiguration() throws -> SenderConfiguration {
        let onInterface: (String) -> SenderOutput = { afXDP ? .afXDP($0) : .interface($0) }
        var outputs: [SenderOutput] = [out.map { .pcapFile($0) } ?? iface.map(onInterface) ?? .discard]
        if let iface2 { outputs.append(onInterface(iface2)) }
        if let out2 { outputs.append(.pcapFile(out2)) }
        var c = SenderConfiguration(captures: captures.map { $0 == "-" ? "/dev/stdin" : $0 }, outputs: outputs)
        c.pacing = topspeed ? .topSpeed
            : mbps.map { .megabitsPerSecond($0) }
            ?? (rate ?? pps).map { .packetsPerSecond($0) }
            ?? .multiplier(speed ?? multiplier ?? 1)
        c.loopCount = loop
        c.loopDelayNs = UInt64(loopdelayMs ?? 0) * 1_000_000
        c.packetLimit = limit.map(UInt64.init)
        c.durationNs = duration.map { UInt64($0 * 1e9) }
        c.preload = preload
        if let preloadMaxMb { c.preloadBytesMax = UInt64(preloadMaxMb) << 20 }
        c.split = splitBy.flatMap(ReplaySplitRule.init).map { .rule($0) } ?? cachefile.map { .cacheFile($0) }
        c.core = try cores.map(parseCores)?.first
        return c
    }

    func runSender() throws {
        if let writeCachefile, let splitBy, let rule = ReplaySplitRule(splitBy) {
            do {
                let cache = try ReplayCacheFile.make(capture: captures[0], rule: rule)
                try cache.write(to: writeCachefile)
                let secondary = cache.sides.count { $0 == .secondary }
                print("\(captures[0]): \(cache.sides.count) packets, \(cache.sides.count - secondary) client->server (primary), "
                    + "\(secondary) server->client (secondary); wrote \(writeCachefile)")
            } catch {
                FileHandleStderr.write("sluice replay: \(error)\n")
                throw ExitCode(1)
            }
            return
        }
        let summary: SenderSummary
        do {
            let sender = try ReplaySender(try senderConfiguration())
            summary = sender.run()
        } catch let error as ReplayError {
            FileHandleStderr.write("sluice replay: \(error)\n")
            throw ExitCode(1)
        }
        print(json ? ReplayReport.senderJSON(summary) : ReplayReport.senderText(summary))
        if let failure = summary.failure {
            FileHandleStderr.write("sluice replay: \(failure)\n")
            throw ExitCode(2)
        }
    }
}
