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
        guard out2 == nil || out != nil else { throw ValidationError("--out2 needs --out (the primary)") }
        guard iface2 == nil || out2 == nil else { throw ValidationError("give --iface2 or --out2, not both") }
        guard splitBy == nil || cachefile == nil else { throw ValidationError("give --split-by or --cachefile, not both") }
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
        var outputs: [SenderOutput] = [out.map { .pcapFile($0) } ?? iface.map { .interface($0) } ?? .discard]
        if let iface2 { outputs.append(.interface(iface2)) }
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

/// `sluice replay prep`: tcpprep's job, a cache file classifying each packet of a capture
/// client->server (primary) or server->client (secondary).
struct ReplayPrepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prep",
        abstract: "Classify a capture's packets client->server or server->client into a cache file (tcpprep).",
        discussion: """
            --port P[,P...]: a TCP, UDP or SCTP packet to a server port is
            client->server (primary); one from a server port is server->client
            (secondary); everything else is primary.
            --cidr PREFIX[,PREFIX...]: a packet whose source address is in a
            server prefix is server->client (secondary); everything else is
            primary. Replay with `sluice replay --cachefile F --iface A --iface2 B`.
            """)

    @Option(help: "Server ports, comma separated.")
    var port: String?

    @Option(help: "Server prefixes, comma separated, e.g. 198.18.1.0/24.")
    var cidr: String?

    @Option(name: [.short, .customLong("output")], help: "The cache file to write.")
    var output: String

    @Argument(help: "The capture to classify.")
    var capture: String

    func validate() throws {
        guard (port == nil) != (cidr == nil) else { throw ValidationError("give --port or --cidr, one of them") }
        if let port, ReplaySplitRule("port:" + port) == nil {
            throw ValidationError("--port '\(port)': expected ports 0...65535, comma separated")
        }
        if let cidr, ReplaySplitRule("cidr:" + cidr) == nil {
            throw ValidationError("--cidr '\(cidr)': expected prefixes like 198.18.1.0/24, comma separated")
        }
    }

    func run() throws {
        let rule = ReplaySplitRule(port.map { "port:" + $0 } ?? "cidr:" + cidr!)!
        do {
            let cache = try ReplayCacheFile.make(capture: capture, rule: rule)
            try cache.write(to: output)
            let secondary = cache.sides.count { $0 == .secondary }
            print("\(capture): \(cache.sides.count) packets, \(cache.sides.count - secondary) client->server (primary), "
                + "\(secondary) server->client (secondary); wrote \(output)")
        } catch {
            FileHandleStderr.write("sluice replay prep: \(error)\n")
            throw ExitCode(1)
        }
    }
}
