// Path: Sources/sluice/VMManagerCommand.swift — `sluice vm manager`: the live migration manager
// (SluiceScheduling's MigrationManager) as one process: samplers per host from the hosts file, requests
// from a spool directory, moves through the executor, metrics on HTTP. No logic of its own.
import ArgumentParser
import Foundation
import SluiceScheduling
import SluiceService

extension VMCommand {
    struct Manager: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the migration manager: sample hosts each tick, book requests from a spool, run moves through QMP.",
            discussion: """
                Hosts (JSON, as for `schedule`) may add `metrics` (HOST:PORT of `sluice run`'s metrics endpoint) and \
                `port` (the pipeline toward the destinations): used bandwidth is then read from its counters, else from \
                /proc/net/dev of `interface` (default lo). A request is a JSON file dropped into --spool: \
                {"request": {...as for schedule, times in ticks...}, "guest": {"qmp", "agent", "spec", "template"}}; \
                it moves to <spool>/done with a .result file saying booked or refused and why. One tick is --period \
                real seconds and counts as one scheduler minute (docs/SCHEDULING.md, "Time scale"). After --ticks, \
                running moves are waited for; a move found started but unfinished at start (the manager was killed) is \
                marked interrupted and never started again.
                """)

        @Option(help: ArgumentHelp("Hosts (JSON).", valueName: "file")) var hosts: String
        @Option(help: ArgumentHelp("Bookings kept between runs (JSON; created if missing).", valueName: "file")) var state: String
        @Option(help: ArgumentHelp("Directory of request files, taken each tick.", valueName: "dir")) var spool: String?
        @Option(help: "Serve Prometheus metrics on GET /metrics at HOST:PORT (port 0: any, printed).") var metrics: String?
        @Option(help: "Real seconds per tick (one scheduler minute), 0.5...60.") var period: Double = 60
        @Option(help: "Ticks to run, then exit (0: until stopped).") var ticks = 0
        @Option(help: "The forecast's short season in ticks (the long one is 7 of them), 4...1440; slots of 1 tick below 192.")
        var seasonTicks = 1440
        @Option(help: "QEMU binary for the destinations.") var qemu = "/usr/bin/qemu-system-x86_64"

        func validate() throws {
            guard TimeScale.tickSecondsRange.contains(period) else { throw ValidationError("--period must be 0.5...60 seconds") }
            guard ticks >= 0 else { throw ValidationError("--ticks must be >= 0") }
            guard SeasonalForecaster.Parameters.seasonRange.contains(seasonTicks), seasonTicks % max(1, seasonTicks / 96) == 0 else {
                throw ValidationError("--season-ticks must be 4...1440 and a multiple of \(max(1, seasonTicks / 96)) (its slot length)")
            }
            if let metrics { _ = try hostPort(metrics, flag: "--metrics", portZero: true) }
        }

        func run() async throws {
            let file: ScheduleHostsFile
            do { file = try VMCommand.load(ScheduleHostsFile.self, hosts, flag: "--hosts").validated() } catch let error as ScheduleFileError {
                throw ValidationError("--hosts \(hosts): \(error)")
            }
            var samplers: [any HostSampler] = []
            for host in file.hosts {
                let kernel = ProcNetDevSampler(interface: host.interface ?? "lo", memoryCapBytes: host.memoryBytes)
                if let endpoint = host.metrics {
                    guard let port = host.port else { throw ValidationError("--hosts: host \(host.name) has metrics but no port") }
                    let (address, number) = try hostPort(endpoint, flag: "metrics of host \(host.name)", portZero: false)
                    samplers.append(DataplaneSampler(endpoint: ListenAddress(host: address, port: number), port: port,
                                                     memoryCapBytes: host.memoryBytes, fallback: kernel))
                } else {
                    samplers.append(kernel)
                }
            }
            try VMSchedule.lockState(state, waitSeconds: 0)
            let manager: MigrationManager
            var configuration = MigrationManager.Configuration(hosts: file, timeScale: TimeScale(tickSeconds: period), statePath: state,
                                                               spoolDirectory: spool)
            configuration.seasonTicks = seasonTicks
            do {
                manager = try MigrationManager(configuration, samplers: samplers, runner: ExecutorMoveRunner(qemuBinary: qemu))
            } catch { throw ValidationError("\(error)") }
            var endpoint: MetricsEndpoint?
            if let metrics {
                let (host, port) = try hostPort(metrics, flag: "--metrics", portZero: true)
                endpoint = try MetricsEndpoint.bind(ListenAddress(host: host, port: port), render: { manager.metrics.withLock { $0 } })
                print("metrics on \(endpoint!.host):\(endpoint!.port)")
                fflush(nil)
            }
            defer { endpoint?.close() }
            let period = Duration.milliseconds(Int64(self.period * 1000))
            var done = 0
            while ticks == 0 || done < ticks {
                await manager.tick()
                done += 1
                try await Task.sleep(for: period)
            }
            // A normal exit: no new move starts, the running ones are waited for and recorded.
            await manager.finishRunning()
        }
    }
}
