// Path: Sources/sluice/WanCommand.swift — `sluice wan`: flags into a WANConfiguration, a WANLink
// run until SIGINT/SIGTERM, counters printed on SIGUSR1, every --stats-interval, and at exit.
import ArgumentParser
import Glibc
import SluiceWAN
import Synchronization

struct WanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan",
        abstract: "Emulate a WAN link between two interfaces: delay, jitter, loss, corruption, rate and queue limit per direction.",
        discussion: """
            Frames received on --a leave on --b, and the other way round, after the \
            settings of their direction (the common flags, overridden by --a-to-b-* and \
            --b-to-a-*). Run it in the namespace that holds both interfaces (ip netns exec, \
            or --netns). Units: \(WANUnits.durationUnits); \(WANUnits.rateUnits) (or unlimited); \
            \(WANUnits.percentUnits); \(WANUnits.sizeUnits). With a rate, --queue bounds the \
            bytes waiting for serialisation; without, everything held. Prints one ready line, then \
            runs until SIGINT or SIGTERM; counters go to stdout on SIGUSR1, every --stats-interval \
            seconds, and at exit. Semantics and counters: docs/WAN.md.
            """)

    @Option(name: .customLong("a"), help: "One side's interface.")
    var interfaceA: String

    @Option(name: .customLong("b"), help: "The other side's interface.")
    var interfaceB: String

    @Option(help: "One-way delay, both directions (e.g. 20ms).")
    var delay: String

    @Option(help: "Rate limit, both directions (e.g. 20mbit, or unlimited).")
    var rate: String

    @Option(help: "Loss probability per frame (e.g. 0.1%). Default 0%.")
    var loss: String?

    @Option(help: "Corruption probability per frame (e.g. 0.1%): one bit of the TCP/UDP payload flipped, checksum repaired. Default 0%.")
    var corrupt: String?

    @Option(help: "Jitter: each frame's delay varies uniformly by up to this much either way (no reordering). Default 0ms.")
    var jitter: String?

    @Option(help: "Queue limit in bytes (e.g. 256kb, the default).")
    var queue: String?

    @Option(name: .customLong("a-to-b-delay"), help: "Override for frames from a to b.") var aToBDelay: String?
    @Option(name: .customLong("a-to-b-rate"), help: "Override for frames from a to b.") var aToBRate: String?
    @Option(name: .customLong("a-to-b-loss"), help: "Override for frames from a to b.") var aToBLoss: String?
    @Option(name: .customLong("a-to-b-corrupt"), help: "Override for frames from a to b.") var aToBCorrupt: String?
    @Option(name: .customLong("a-to-b-jitter"), help: "Override for frames from a to b.") var aToBJitter: String?
    @Option(name: .customLong("a-to-b-queue"), help: "Override for frames from a to b.") var aToBQueue: String?
    @Option(name: .customLong("b-to-a-delay"), help: "Override for frames from b to a.") var bToADelay: String?
    @Option(name: .customLong("b-to-a-rate"), help: "Override for frames from b to a.") var bToARate: String?
    @Option(name: .customLong("b-to-a-loss"), help: "Override for frames from b to a.") var bToALoss: String?
    @Option(name: .customLong("b-to-a-corrupt"), help: "Override for frames from b to a.") var bToACorrupt: String?
    @Option(name: .customLong("b-to-a-jitter"), help: "Override for frames from b to a.") var bToAJitter: String?
    @Option(name: .customLong("b-to-a-queue"), help: "Override for frames from b to a.") var bToAQueue: String?

    @Option(help: "Seed of the loss, jitter and corruption generators (a-to-b uses it, b-to-a the next number).")
    var seed: UInt64 = 1

    @Option(help: "Open the interfaces in this network namespace (/var/run/netns/NAME).")
    var netns: String?

    @Option(help: "Link name in reports (default: A-B).")
    var name: String?

    @Option(help: "Run the emulator's threads SCHED_FIFO at this priority (1-99, root): departures stay on time on a busy machine.")
    var realtimePriority: Int?

    @Option(help: "Also print counters every this many seconds (0: only on SIGUSR1 and at exit).")
    var statsInterval: Double = 0

    func run() throws {
        let configuration = try makeConfiguration()
        let link: WANLink
        do { link = try WANLink(configuration: configuration) } catch {
            throw ValidationError("\(error)")
        }
        WanSignals.install()
        do { try link.start() } catch {
            FileHandleStderr.write("sluice wan: \(error)\n")
            throw ExitCode(1)
        }
        print("sluice: ready wan \(configuration.name) a=\(configuration.interfaceA) b=\(configuration.interfaceB) "
            + "a-to-b: \(configuration.aToB.summary); b-to-a: \(configuration.bToA.summary)")
        fflush(nil)
        let startNs = monotonicNs()
        var lastStatsNs = startNs
        while !WanSignals.stopRequested {
            usleep(20_000)
            let now = monotonicNs()
            let periodic = statsInterval > 0 && Double(now - lastStatsNs) >= statsInterval * 1e9
            if WanSignals.takeReportRequest() || periodic {
                lastStatsNs = now
                report(link, startNs: startNs, heading: "counters")
            }
        }
        link.stop()
        report(link, startNs: startNs, heading: "stopped; counters")
    }

    private func report(_ link: WANLink, startNs: UInt64, heading: String) {
        let seconds = Double(monotonicNs() - startNs) / 1e9
        print("sluice wan: \(heading) after \(WANUnits.formatDuration(UInt64(seconds * 1000) * 1_000_000))")
        for line in WANReport.lines(link.snapshot()) { print("  " + line) }
        fflush(nil)
    }

    /// Common flags first, then each direction's overrides; every value checked with its flag named.
    func makeConfiguration() throws(ValidationError) -> WANConfiguration {
        var common = WANDirectionSettings()
        try apply(&common, [(.delay, delay, "--delay"), (.rate, rate, "--rate"), (.loss, loss, "--loss"),
                            (.jitter, jitter, "--jitter"), (.queue, queue, "--queue"), (.corrupt, corrupt, "--corrupt")])
        var aToB = common
        try apply(&aToB, [(.delay, aToBDelay, "--a-to-b-delay"), (.rate, aToBRate, "--a-to-b-rate"),
                          (.loss, aToBLoss, "--a-to-b-loss"), (.jitter, aToBJitter, "--a-to-b-jitter"),
                          (.queue, aToBQueue, "--a-to-b-queue"), (.corrupt, aToBCorrupt, "--a-to-b-corrupt")])
        var bToA = common
        try apply(&bToA, [(.delay, bToADelay, "--b-to-a-delay"), (.rate, bToARate, "--b-to-a-rate"),
                          (.loss, bToALoss, "--b-to-a-loss"), (.jitter, bToAJitter, "--b-to-a-jitter"),
                          (.queue, bToAQueue, "--b-to-a-queue"), (.corrupt, bToACorrupt, "--b-to-a-corrupt")])
        if let netns, netns.isEmpty || netns.contains("/") {
            throw ValidationError("--netns: '\(netns)' is not a namespace name (as ip netns lists them)")
        }
        guard statsInterval >= 0, statsInterval <= 86_400 else {
            throw ValidationError("--stats-interval: \(statsInterval) must be 0...86400 seconds")
        }
        let configuration = WANConfiguration(name: name, interfaceA: interfaceA, interfaceB: interfaceB, aToB: aToB,
                                             bToA: bToA, seed: seed, namespacePath: netns.map { "/var/run/netns/\($0)" },
                                             realtimePriority: realtimePriority)
        do { try configuration.validate() } catch { throw ValidationError("\(error)") }
        return configuration
    }

    private func apply(_ settings: inout WANDirectionSettings, _ values: [(WANSetting, String?, String)]) throws(ValidationError) {
        for case let (setting, text?, flag) in values {
            do { try settings.set(setting, from: text) } catch { throw ValidationError("\(flag): \(error)") }
        }
    }

    private func monotonicNs() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// SIGINT/SIGTERM (stop) and SIGUSR1 (print counters) as flags the main loop polls. The handlers
/// only store to atomics, which is async-signal-safe; the atomics are touched before the handlers
/// are installed, so their lazy initialisation never runs inside a handler.
enum WanSignals {
    private static let stop = Atomic<Bool>(false)
    private static let report = Atomic<Bool>(false)

    static func install() {
        _ = stop.load(ordering: .relaxed)
        _ = report.load(ordering: .relaxed)
        signal(SIGINT) { _ in WanSignals.stop.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in WanSignals.stop.store(true, ordering: .relaxed) }
        signal(SIGUSR1) { _ in WanSignals.report.store(true, ordering: .relaxed) }
    }

    static var stopRequested: Bool { stop.load(ordering: .relaxed) }

    static func takeReportRequest() -> Bool { report.exchange(false, ordering: .relaxed) }
}
