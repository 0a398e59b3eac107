// Path: Sources/sluice/RunCommand.swift — `sluice run`: the configured dataplane, traffic
// controllers and storage node as one service until SIGTERM/SIGINT. Flags into a
// ServiceConfiguration; the SluiceService module does the rest.
import ArgumentParser
import Glibc
import Logging
import SluiceCore
import SluiceService

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the pinned-core dataplane service (pipelines, traffic control, storage node, metrics).",
        discussion: """
            With no --config, runs the embedded default: the bundled sample capture through the full \
            pipeline to out/run.pcap, the storage node on 127.0.0.1:7000 (data in out/storage) and \
            metrics on http://127.0.0.1:9464/metrics. The config format is in docs/sluice.yaml. \
            SIGTERM or SIGINT stops the sources, drains the rings and flushes sinks and the log.
            """)

    @Option(help: "The YAML config file (docs/sluice.yaml shows every key).")
    var config: String?

    @Option(name: .customLong("set"), help: "Override a config key: key.path=value, e.g. storage.listen=127.0.0.1:7001 or pipelines[0].sink.pcap=x.pcap. Repeatable.")
    var overrides: [String] = []

    @Option(help: "Worker cores, e.g. 0,1 or 0-3 (overrides the config's `cores`).")
    var cores: String?

    @Option(help: "Log level (trace, debug, info, notice, warning, error, critical); overrides `log_level`.")
    var logLevel: String?

    @Flag(help: "Check the config (file, overrides, and its cores against this machine's) and exit: 0 when valid.")
    var check = false

    @Flag(help: "Print the embedded default config and exit.")
    var printDefaultConfig = false

    func run() async throws {
        if printDefaultConfig {
            print(ServiceConfiguration.defaultYAML)
            return
        }
        var overrides = overrides
        if let cores { overrides.append("cores=\(cores)") }
        if let logLevel { overrides.append("log_level=\(logLevel)") }
        let configuration: ServiceConfiguration
        do {
            let defaultCores = Array((try? CPU.allowedCPUs())?.prefix(2) ?? [0])
            configuration = try ServiceConfiguration.load(path: config, overrides: overrides, defaultCores: defaultCores)
        } catch {
            FileHandleStderr.write("sluice run: \(error)\n")
            throw ExitCode(2)
        }
        // The config format is pure; what this machine allows is checked here, before anything starts.
        if let allowed = try? CPU.allowedCPUs() {
            for core in configuration.cores + (configuration.controlCores ?? []) where !allowed.contains(core) {
                FileHandleStderr.write("sluice run: config: core \(core) is not one this process may use \(allowed)\n")
                throw ExitCode(2)
            }
        }
        if check {
            print("config OK: \(configuration.pipelines.count) pipeline(s) on cores \(configuration.cores)"
                + (configuration.storage.map { ", storage on \($0.listen)" } ?? "")
                + (configuration.metrics.map { ", metrics on \($0)" } ?? ""))
            return
        }
        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sluice")
        let summary: ServiceSummary
        do {
            summary = try await ServiceRunner.run(configuration, logger: logger) { endpoints in
                // One line on stdout when everything is up: scripts and tests wait for it.
                print("sluice: ready \(endpoints)")
                fflush(nil)
            }
        } catch {
            // Every start-up failure is a ServiceError carrying its cause (a data directory locked by
            // another process, a port in use, ...): exit 1 with it on stderr.
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            FileHandleStderr.write("sluice run: \(error)\n")
            throw ExitCode(1)
        }
        print(RunReport.table(summary))
        guard summary.isClean else { throw ExitCode(3) }
    }
}

/// The shutdown summary: what each pipeline did and whether anything was left behind.
enum RunReport {
    static func table(_ summary: ServiceSummary) -> String {
        var lines = ["pipeline          packets-in   delivered    filtered  left-on-rings    seconds         pps  result"]
        for outcome in summary.pipelines {
            lines.append(pad(outcome.name, 16) + " " + padLeft("\(outcome.packetsIn)", 11)
                + " " + padLeft("\(outcome.delivered)", 11) + " " + padLeft("\(outcome.filtered)", 11)
                + " " + padLeft("\(outcome.leftOnRings)", 14)
                + " " + padLeft(String(format3: Double(outcome.elapsedNs) / 1e9), 10)
                + " " + padLeft("\(Int(outcome.packetsPerSecond))", 11) + "  " + (outcome.failure ?? "ok"))
            for drop in outcome.drops { lines.append("  drop \(drop.reason): \(drop.count)") }
        }
        if let osn = summary.storageLastOSN { lines.append("storage: last OSN \(osn)") }
        if let error = summary.groupError { lines.append("service: ended with an error: \(error)") }
        return lines.joined(separator: "\n")
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    static func padLeft(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
    }
}

extension String {
    /// Three decimal places, without Foundation.
    init(format3 value: Double) {
        let thousandths = Int((value * 1000).rounded())
        let fraction = abs(thousandths % 1000)
        self = "\(thousandths / 1000)." + String(repeating: "0", count: fraction < 10 ? 2 : fraction < 100 ? 1 : 0) + "\(fraction)"
    }
}
