// Path: Sources/sluice/ReplayCommand.swift — `sluice replay`: flags into a ReplayConfiguration.
import ArgumentParser
import Glibc
import SluiceCore
import SluicePacketIO

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a pcap or pcapng capture through the packet pipeline to a file, an interface or nowhere.")

    @Argument(help: "The capture to replay (pcap or pcapng).")
    var capture: String

    @Option(help: "Write the packets to this pcap file.")
    var out: String?

    @Option(help: "Send the packets on this interface (AF_PACKET TX ring).")
    var iface: String?

    @Option(help: "Packets per second, evenly spaced.")
    var rate: Double?

    @Option(help: "Replay at X times the capture's own timing (1 = real time).")
    var speed: Double?

    @Flag(help: "As fast as possible.")
    var topspeed = false

    @Option(help: "Replay the capture N times.")
    var loop = 1

    @Option(help: "Cores for the workers, e.g. 0,1 or 0-3. Default: up to two allowed CPUs.")
    var cores: String?

    @Option(help: "How idle workers wait: busy-poll, adaptive or interrupt.")
    var waitMode: WaitMode = .adaptive

    @Flag(help: "Print the summary as JSON.")
    var json = false

    func validate() throws {
        guard out == nil || iface == nil else { throw ValidationError("give --out or --iface, not both") }
        let pacings = [rate != nil, speed != nil, topspeed].filter { $0 }.count
        guard pacings <= 1 else { throw ValidationError("give one of --rate, --speed, --topspeed") }
        if let rate, !(rate > 0) { throw ValidationError("--rate must be positive, got \(rate)") }
        if let speed, !(speed > 0) { throw ValidationError("--speed must be positive, got \(speed)") }
        guard loop >= 1 else { throw ValidationError("--loop must be at least 1, got \(loop)") }
    }

    func run() throws {
        let output: ReplayOutput = out.map { .pcapFile($0) } ?? iface.map { .interface($0) } ?? .discard
        let pacing: ReplayPacing = topspeed ? .topSpeed
            : rate.map { .rate(packetsPerSecond: $0) } ?? .capture(speed: speed ?? 1)
        let coreList = try cores.map(parseCores) ?? Array(CPU.allowedCPUs().prefix(2))
        let configuration = ReplayConfiguration(capturePath: capture, output: output, pacing: pacing,
                                                loopCount: loop, cores: coreList, waitMode: waitMode)
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
        print(json ? ReplayReport.json(summary) : ReplayReport.table(summary))
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
