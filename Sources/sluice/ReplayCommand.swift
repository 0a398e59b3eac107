// Path: Sources/sluice/ReplayCommand.swift — `sluice replay`: flags into a ReplayConfiguration.
import ArgumentParser
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO
import SluiceReplay
import SluiceService
import SluiceTraffic

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay pcap or pcapng captures through the packet pipeline or tcpreplay's way, to a file, an interface or nowhere.",
        discussion: """
            Two engines (docs/REPLAY.md). The pipeline (the default for one
            capture) runs parse/classify/action stages on pinned workers. The
            sender (tcpreplay's flags: several captures, --mbps, --limit,
            --duration, --preload, --loopdelay-ms, --loop 0, --iface2/--out2,
            --split-by, --cachefile, or --engine sender) is one thread that
            paces on an absolute schedule and prints tcpreplay's summary.

            The capture may be a pipe or FIFO carrying classic pcap, read once
            (as tcpdump -r reads it; - is standard input). Frames up to the
            capture's snapshot length, at most \(PacketPathConfiguration.captureBufferSizeBytesMax) bytes, are carried
            whole; longer ones are dropped and counted as
            frame-larger-than-buffer, never cut. An output that is the capture
            itself is refused.

            --json reports, besides packets, bytes, delivered, drops, stages
            and workers:
              elapsedNs       ns from the workers' start to the last packet
                              delivered
              wallNsFromOpen  ns from just before the capture is opened
                              (before the pool is made and the workers
                              start) to the last packet delivered
              processCpuNs    CPU time (user + system) of all the process's
                              threads over that same span, from
                              getrusage(RUSAGE_SELF)
            The sender's --json is one object of its own (docs/REPLAY.md).
            """)

    @Argument(help: "The captures to replay, in order (pcap or pcapng; - for classic pcap on standard input). More than one runs the sender.")
    var captures: [String] = []

    /// The first capture (the pipeline takes one).
    var capture: String { captures.first ?? "-" }

    @Option(help: "Write the packets to this pcap file.")
    var out: String?

    @Option(help: "Send the packets on this interface (AF_PACKET TX ring).")
    var iface: String?
    @Flag(name: .customLong("af-xdp"), help: "Send on --iface/--iface2 through AF_XDP sockets (queue 0, copy mode) instead of AF_PACKET TX rings (the sender).")
    var afXDP = false

    @Option(help: "Packets per second, evenly spaced (\(ReplayPacing.packetsPerSecondMin)...\(ReplayPacing.packetsPerSecondMax)); --pps is the same.")
    var rate: Double?

    @Option(help: "Packets per second (tcpreplay's --pps): --rate under tcpreplay's name.")
    var pps: Double?

    @Option(help: "Replay at X times the capture's own timing (1 = real time; \(ReplayPacing.speedMin)...\(ReplayPacing.speedMax)); --multiplier is the same.")
    var speed: Double?

    @Option(help: "tcpreplay's --multiplier: --speed under tcpreplay's name.")
    var multiplier: Double?

    @Option(help: "Megabits per second on the wire, 8 bits a byte of each frame (\(SenderPacing.megabitsPerSecondRange)). Sender.")
    var mbps: Double?

    @Flag(help: "As fast as possible.")
    var topspeed = false

    @Option(help: "Replay the captures N times; 0 (sender) runs until --limit or --duration stops it.")
    var loop = 1

    @Option(help: "Milliseconds between loops (0...\(SenderConfiguration.loopDelayNsMax / 1_000_000)). Sender.")
    var loopdelayMs: Int?

    @Option(help: "Stop after N packets, over all loops (1...). Sender.")
    var limit: Int?

    @Option(help: "Stop S seconds after the first packet (0 < S <= \(ReplayCommand.durationSecondsMax)). Sender.")
    var duration: Double?

    @Flag(help: "Read every capture into memory before sending (tcpreplay's --preload-pcap). Sender.")
    var preload = false

    @Option(help: "Memory --preload may use, in MiB: frames plus 24 bytes a record (1...\(SenderConfiguration.preloadBytesMaxLimit >> 20); default 1024).")
    var preloadMaxMb: Int?

    @Option(help: "The secondary interface of a split (tcpreplay's -I): server->client packets. Sender.")
    var iface2: String?

    @Option(help: "The secondary output file of a split. Sender.")
    var out2: String?

    @Option(help: "Split by a rule: port:P[,P...] (server ports) or cidr:PREFIX[,PREFIX...] (server addresses). Sender.")
    var splitBy: String?

    @Option(help: "Split by a cache file from --write-cachefile (one capture). Sender.")
    var cachefile: String?

    @Option(help: "tcpprep: classify the one capture by --split-by into this cache file and exit (nothing is sent).")
    var writeCachefile: String?

    @Option(help: "pipeline, sender, or auto (the sender when a sender-only flag or several captures are given).")
    var engine: ReplayEngine = .auto

    @Option(help: "Cores for the workers, e.g. 0,1 or 0-3. Default: up to two allowed CPUs.")
    var cores: String?

    @Option(help: "How idle workers wait: busy-poll, adaptive or interrupt.")
    var waitMode: WaitMode = .adaptive

    @Option(help: "Where stages run: auto (measured: one instance per core fanned out, run to completion, or pipelined, whichever the measured costs favour), spread (fixed: the source on the first core, the rest over the others) or fanout (fixed: one instance per core, the capture shared as --fanout-by says).")
    var placement: ReplayPlacement = .auto

    @Option(help: "How fanned-out instances share the capture: flows (each flow through one instance, in order; every instance reads every record) or blocks (the file's 256 KiB blocks in turn, each record read once; order within a flow is not kept across blocks; classic pcap only).")
    var fanoutBy: ReplaySplit = .flows

    @Flag(inversion: .prefixedNo, help: "Run a core's whole pipeline as one call chain per burst, skipping the rings between its stages (--no-fuse keeps the rings: benchmarks).")
    var fuse = true

    @Option(help: "Stages between RX and TX: 2 (none), 3 (parse/classify), 4 (parse/classify, action).")
    var stages = 4

    @Option(help: "What gives a packet its source id: source-mac, outer-vlan, source-prefix or input-port.")
    var classifyBy = "source-mac"

    @Option(help: "A source table entry VALUE=ID, e.g. 02:00:00:00:01:00=1, 20=2 (VLAN), 198.18.1.0/24=3. Repeatable.")
    var source: [String] = []

    @Option(help: "Divide the output among source ids 0..N-1 by these weights, e.g. 1,1,2,4 (a traffic controller; on --iface it enforces them).")
    var shape: String?

    @Option(help: "Pool buffer size in bytes (\(ReplayCommand.bufferSizeRange)); longer frames are dropped and counted. Default: the capture's snapshot length, at most \(PacketPathConfiguration.captureBufferSizeBytesMax).")
    var bufferSize: Int?

    static let bufferSizeRange = 64...65_536

    @Flag(help: "With no --out or --iface: record each packet's time in the pipeline (costs a cache line per packet).")
    var latency = false

    @Flag(help: "Print the summary as JSON.")
    var json = false

    // Rules and tcprewrite's jobs (ReplayRules.swift, docs/RULES.md): need --stages 4.

    @Option(help: "A YAML file whose `rules:` key lists rules (docs/RULES.md); first match wins. A bad file is exit 2.")
    var rules: String?

    @Option(help: "One rule as a YAML mapping, e.g. '{name: web, match: {protocol: tcp, dst_port: 80}, action: drop}'. Repeatable; after --rules' rules.")
    var rule: [String] = []

    @Option(name: .customLong("output"), help: "A named output NAME=FILE.pcap, NAME=iface:IFACE or NAME=discard that rules send to with `output: NAME` instead of --out/--iface (at most \(OutputLimits.outputCountMax)). Repeatable.")
    var outputs: [String] = []

    @Option(help: "Map source addresses FROM:TO[,FROM:TO...] as tcprewrite does (keep host bits), e.g. 10.0.0.0/8:198.18.0.0/16; IPv6 as [2001:db8::]/32:[2001:db9::]/32. Repeatable.")
    var srcipmap: [String] = []

    @Option(help: "Map destination addresses, as --srcipmap. Repeatable.")
    var dstipmap: [String] = []

    @Option(help: "Set every Ethernet frame's source MAC.")
    var enetSmac: String?

    @Option(help: "Set every Ethernet frame's destination MAC.")
    var enetDmac: String?

    @Flag(help: "Recompute IPv4, TCP, UDP, ICMP and ICMPv6 checksums of every packet.")
    var fixcsum = false

    @Option(help: "The MTU for --mtu-trunc (\(PacketLimits.mtuMin)...65535).")
    var mtu = 1500

    @Flag(help: "Cut packets longer than --mtu past their L2 header to --mtu bytes, fixing IP lengths and checksums.")
    var mtuTrunc = false

    func validate() throws {
        guard !captures.isEmpty else { throw ValidationError("give at least one capture") }
        guard out == nil || iface == nil else { throw ValidationError("give --out or --iface, not both") }
        let pacings = [rate != nil, pps != nil, speed != nil, multiplier != nil, mbps != nil, topspeed].filter { $0 }.count
        guard pacings <= 1 else { throw ValidationError("give one of --rate (--pps), --speed (--multiplier), --mbps, --topspeed") }
        for (flag, value) in [("--rate", rate), ("--pps", pps)] {
            guard let value else { continue }
            do { try ReplayPacing.rate(packetsPerSecond: value).validate() } catch { throw ValidationError("\(flag): \(error)") }
        }
        for (flag, value) in [("--speed", speed), ("--multiplier", multiplier)] {
            guard let value else { continue }
            do { try ReplayPacing.capture(speed: value).validate() } catch { throw ValidationError("\(flag): \(error)") }
        }
        try validateSender()
        if usesSender { return }
        if let cores { _ = try parseCores(cores) }
        if let bufferSize, !Self.bufferSizeRange.contains(bufferSize) {
            throw ValidationError("--buffer-size must be in \(Self.bufferSizeRange), got \(bufferSize)")
        }
        guard loop >= 1 else { throw ValidationError("--loop must be at least 1, got \(loop) (0 needs --limit or --duration)") }
        guard ReplayStages(rawValue: stages) != nil else { throw ValidationError("--stages must be 2, 3 or 4, got \(stages)") }
        _ = try classifier()
        _ = try trafficPolicy()
        try validateRules()
    }

    /// The traffic policy from --shape: one positive weight per source id.
    func trafficPolicy() throws -> TrafficPolicy? {
        guard let shape else { return nil }
        let weights = shape.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !weights.isEmpty, weights.allSatisfy({ ($0 ?? 0) > 0 }), weights.count <= TrafficLimits.sourceCountMax else {
            throw ValidationError("--shape: expected 1...\(TrafficLimits.sourceCountMax) positive weights like 1,1,2,4, got '\(shape)'")
        }
        return TrafficPolicy(sources: weights.map { SourcePolicy(weight: $0!) })
    }

    /// The classifier from --classify-by and --source; errors name the flag and the entry.
    func classifier() throws -> ClassifierConfiguration {
        let keys: [String: SourceKey] = ["source-mac": .sourceMAC, "outer-vlan": .outerVLAN,
                                         "source-prefix": .sourcePrefix, "input-port": .inputPort]
        guard let key = keys[classifyBy] else {
            throw ValidationError("--classify-by: '\(classifyBy)' is not one of \(keys.keys.sorted().joined(separator: ", "))")
        }
        var entries: [SourceEntry] = []
        for text in source {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let id = UInt16(parts[1]) else {
                throw ValidationError("--source '\(text)': expected VALUE=ID with ID 0...65535")
            }
            let match: SourceMatch? = switch key {
            case .sourceMAC: MACAddress(parts[0]).map { .mac($0) }
            case .outerVLAN: UInt16(parts[0]).map { .vlan($0) }
            case .sourcePrefix: IPPrefix(parts[0]).map { .prefix($0) }
            case .inputPort: UInt16(parts[0]).map { .port($0) }
            }
            guard let match else { throw ValidationError("--source '\(text)': '\(parts[0])' is not a \(classifyBy) value") }
            entries.append(SourceEntry(match, sourceID: id))
        }
        do { return try ClassifierConfiguration(key: key, entries: entries) } catch {
            throw ValidationError("--source: \(error)")
        }
    }

    func run() throws {
        if usesSender { return try runSender() }
        let output: ReplayOutput = out.map { .pcapFile($0) } ?? iface.map { .interface($0) } ?? .discard
        let pacing: ReplayPacing = topspeed ? .topSpeed
            : (rate ?? pps).map { .rate(packetsPerSecond: $0) } ?? .capture(speed: speed ?? multiplier ?? 1)
        let coreList = try cores.map(parseCores) ?? Array(CPU.allowedCPUs().prefix(2))
        let capturePath = capture == "-" ? "/dev/stdin" : capture
        var configuration = ReplayConfiguration(capturePath: capturePath, output: output, pacing: pacing,
                                                loopCount: loop, cores: coreList, waitMode: waitMode)
        configuration.stages = ReplayStages(rawValue: stages)!
        configuration.placement = placement
        configuration.split = fanoutBy
        configuration.fusesRunToCompletion = fuse
        configuration.measuresLatency = latency
        configuration.bufferSizeBytes = bufferSize
        configuration.traffic = try trafficPolicy()
        configuration.classifier = try classifier()
        configuration.outputs = try namedOutputs()
        configuration.rules = try ruleTable()
        let replay: Replay
        let summary: ReplaySummary
        do {
            replay = try Replay(configuration)
            let bar = isatty(STDERR_FILENO) == 1 && !json ? ProgressBar() : nil
            summary = try replay.run(progress: bar.map { bar in { bar.show($0) } })
            bar?.finish()
        } catch {
            FileHandleStderr.write("sluice replay: \(error)\n")
            throw ExitCode(1)
        }
        print(json ? ReplayReport.json(summary) : ReplayReport.tcpreplayLines(summary, output: output) + "\n\n" + ReplayReport.table(summary))
        if !json {
            printRuleHits(configuration.rules)
            printOutputCounts(summary.outputs)
        }
        if let failure = summary.failure {
            FileHandleStderr.write("sluice replay: \(failure)\n")
            throw ExitCode(2)
        }
    }
}

/// A one-line progress bar on stderr, redrawn in place.
final class ProgressBar {
    func show(_ progress: ReplayProgress) {
        let seconds = Double(progress.elapsedNs) / 1e9
        let rate = seconds > 0 ? Double(progress.packets) / seconds : 0
        FileHandleStderr.write("\r  \(progress.packets) packets, \(progress.bytes) bytes, "
            + "\(Int(rate)) pps, \(String(format1: seconds)) s   ")
    }

    func finish() { FileHandleStderr.write("\r\u{1B}[K") }
}

enum FileHandleStderr {
    static func write(_ text: String) {
        var text = text
        text.withUTF8 { bytes in _ = Glibc.write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
    }
}

extension String {
    /// One decimal place, without Foundation.
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}

extension ReplayPlacement: ExpressibleByArgument {}
extension ReplaySplit: ExpressibleByArgument {}
