// Path: Sources/sluice/VMScheduleCommand.swift — `sluice vm monitor|schedule|bookings|explain`: the
// migration scheduler (SluiceScheduling, docs/SCHEDULING.md) over files: a history per host written by
// the monitor, the hosts, a request, and the bookings kept between runs. No logic of its own.
import ArgumentParser
import Foundation
import Glibc
import SluiceMigration
import SluiceScheduling
import SluiceService

enum VMSchedule {
    static func nowMinute() -> Int { Int(Date().timeIntervalSince1970 / 60) }

    static func readText(_ path: String, flag: String, bytesMax: Int = 64 << 20) throws -> String {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        guard size <= bytesMax else { throw ValidationError("\(flag) \(path): \(size) bytes, more than \(bytesMax)") }
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(flag) \(path): cannot read") }
        return String(decoding: data, as: UTF8.self)
    }

    /// Holds an exclusive lock on `<state>.lock` until the process exits (flock; released by the kernel):
    /// two `sluice vm schedule` runs on one state file take turns, so neither loses the other's booking.
    /// Blocks while another run holds it.
    static func lockState(_ path: String, waitSeconds: Double = 30) throws {
        let fd = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ValidationError("--state \(path): cannot open \(path).lock: errno \(errno)") }
        // Short commands take turns; a manager holds the lock for its whole life, so nobody waits for
        // ever behind one: after `waitSeconds` (0 for a manager) the holder is named as the reason.
        let deadline = Date().addingTimeInterval(waitSeconds)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                throw ValidationError("--state \(path): cannot lock \(path).lock: errno \(errno)")
            }
            guard Date() < deadline else {
                close(fd)
                throw ValidationError("--state \(path): another process holds \(path).lock (a `sluice vm manager` on this "
                    + "state takes requests through its --spool)")
            }
            usleep(10_000)
        }
        // The descriptor stays open (and the lock held) for the rest of the process.
    }

    static func loadState(_ path: String) throws -> ScheduleState {
        guard FileManager.default.fileExists(atPath: path) else { return ScheduleState() }
        return try VMCommand.load(ScheduleState.self, path, flag: "--state")
    }

    static func saveState(_ state: ScheduleState, _ path: String) throws {
        guard state.bookings.count <= ScheduleState.bookingsMax else {
            throw ValidationError("--state \(path): more than \(ScheduleState.bookingsMax) bookings")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: try encoder.encode(state)),
              rename(temporary, path) == 0 else {
            throw ValidationError("--state \(path): cannot write")
        }
    }

    /// The hosts, a monitor fed from their histories, and a scheduler holding the stored bookings, at `now`.
    static func world(hostsPath: String, statePath: String, now: Int)
        throws -> (ScheduleHostsFile, ResourceMonitor, MigrationScheduler, ScheduleState) {
        let hosts: ScheduleHostsFile
        do { hosts = try VMCommand.load(ScheduleHostsFile.self, hostsPath, flag: "--hosts").validated() } catch let error as ScheduleFileError {
            throw ValidationError("--hosts \(hostsPath): \(error)")
        }
        var monitor = ResourceMonitor(hosts: hosts.hosts.map(\.resources))
        var scheduler = MigrationScheduler(hosts: hosts.hosts.map(\.resources), now: now)
        for (index, host) in hosts.hosts.enumerated() {
            let samples: [(minute: Int, production: Double, freeMemory: Double, slots: Int)]
            do { samples = try HistoryFile.parse(try readText(host.history, flag: "history of \(host.name)"), path: host.history) } catch let error as ScheduleFileError {
                throw ValidationError("\(error)")
            }
            for sample in samples where sample.minute < now {
                monitor.record(host: index, minute: sample.minute, productionBytesPerSecond: sample.production,
                               freeMemoryBytes: sample.freeMemory, slotsInUse: sample.slots)
            }
            if let last = samples.last(where: { $0.minute < now }) { scheduler.observeFreeMemory(host: index, bytes: last.freeMemory) }
        }
        let state = try loadState(statePath)
        do { try state.restore(into: &scheduler, hosts: hosts) } catch { throw ValidationError("--state \(statePath): \(error)") }
        return (hosts, monitor, scheduler, state)
    }

    static func minuteText(_ minute: Int) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(minute) * 60))
    }
}

extension VMCommand {
    struct Monitor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sample this host's link (production traffic), free memory and migration slots once a minute into a history file.")

        @Option(help: ArgumentHelp("History file to append to (kept to the last week).", valueName: "file")) var history: String
        @Option(help: ArgumentHelp("The link toward this address is the one measured (127.0.0.1: lo).", valueName: "address")) var toward: String
        @Option(help: ArgumentHelp("Link capacity in bytes/s when the kernel does not know the interface's speed.", valueName: "bytes/s"))
        var linkBytesPerSecond: UInt64
        @Option(help: "Seconds between samples (one sample is one minute of the history), 1...3600.") var intervalSeconds = 60
        @Option(help: "Samples to take, then exit (0: until stopped).") var samples = 0
        @Option(help: "Migration slots in use on this host, recorded with each sample.") var slotsInUse = 0

        func validate() throws {
            guard (1...3600).contains(intervalSeconds) else { throw ValidationError("--interval-seconds must be 1...3600") }
            guard samples >= 0, slotsInUse >= 0, linkBytesPerSecond > 0 else {
                throw ValidationError("--samples and --slots-in-use must be >= 0, --link-bytes-per-second > 0")
            }
        }

        func run() async throws {
            let link: LinkMonitor
            do { link = try LinkMonitor.toward(toward, configuredCapacityBytesPerSecond: linkBytesPerSecond) } catch {
                throw ValidationError("--toward \(toward): \(error)")
            }
            var minute = VMSchedule.nowMinute()
            var taken = 0
            while samples == 0 || taken < samples {
                let measured = try await link.measure(for: .seconds(intervalSeconds), interval: .milliseconds(250))
                let free = Self.memAvailableBytes()
                minute = max(minute + 1, VMSchedule.nowMinute())
                try Self.append(HistoryFile.line(minute: minute, production: Double(measured.usedBytesPerSecond), freeMemory: free,
                                                 slots: slotsInUse), to: history)
                print("minute \(minute): \(measured)")
                taken += 1
            }
        }

        static func memAvailableBytes() -> Double { NodeMemory.availableBytes() ?? 0 }

        /// Appends a line; when the file passes twice the kept length, keeps the newest week.
        static func append(_ line: String, to path: String) throws {
            var lines = (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? []
            lines.append(line)
            if lines.count > 2 * HistoryFile.linesMax { lines.removeFirst(lines.count - HistoryFile.linesMax) }
            guard FileManager.default.createFile(atPath: path, contents: Data((lines.joined(separator: "\n") + "\n").utf8)) else {
                throw ValidationError("--history \(path): cannot write")
            }
        }
    }

    struct ScheduleOptions: ParsableArguments {
        @Option(help: ArgumentHelp("Hosts (JSON: name, linkBytesPerSecond, migrationSlots, memoryBytes, history).", valueName: "file"))
        var hosts: String
        @Option(help: ArgumentHelp("Bookings kept between runs (JSON; created if missing).", valueName: "file")) var state: String
        @Option(help: ArgumentHelp("Now, in minutes of the Unix epoch (default: the clock).", valueName: "minute")) var now: Int?
    }

    struct Schedule: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Book a move at the earliest start whose predicted run finishes in its window, or refuse it saying why (exit 3).")

        @OptionGroup var options: ScheduleOptions
        @Option(help: ArgumentHelp("The move request (JSON).", valueName: "file")) var request: String?
        @Option(help: ArgumentHelp("Record that booked request ID finished (give --actual-seconds), for predicted-against-actual.", valueName: "id"))
        var finished: Int?
        @Option(help: "Seconds the finished move took.") var actualSeconds: Double?

        func validate() throws {
            guard (request == nil) != (finished == nil) else { throw ValidationError("give --request or --finished, one of them") }
            if finished != nil, (actualSeconds ?? -1) < 0 { throw ValidationError("--finished needs --actual-seconds >= 0") }
        }

        func run() async throws {
            let now = options.now ?? VMSchedule.nowMinute()
            try VMSchedule.lockState(options.state)
            var (hosts, monitor, scheduler, state) = try VMSchedule.world(hostsPath: options.hosts, statePath: options.state, now: now)
            if let finished, let actualSeconds {
                guard let index = state.bookings.firstIndex(where: { $0.request.id == finished }) else {
                    throw ValidationError("--finished \(finished): no such booking")
                }
                state.bookings[index].actualSeconds = actualSeconds
                try VMSchedule.saveState(state, options.state)
                let predicted = state.bookings[index].predictedSeconds
                print("request \(finished): predicted \(String(format: "%.1f", predicted)) s, actual \(String(format: "%.1f", actualSeconds)) s "
                      + "(\(String(format: "%+.1f", 100 * (actualSeconds - predicted) / max(predicted, 1e-9))) %)")
                return
            }
            let file = try VMCommand.load(ScheduleRequestFile.self, request!, flag: "--request")
            let request: MigrationRequest
            do { request = try file.request(hosts: hosts) } catch { throw ValidationError("--request: \(error)") }
            guard !state.bookings.contains(where: { $0.request.id == file.id }) else {
                throw ValidationError("--request: request \(file.id) is booked already")
            }
            switch scheduler.plan(request, now: now, outlook: monitor) {
            case .booked(let booking):
                state.bookings.append(ScheduleState.entry(booking, request: file, hosts: hosts))
                try VMSchedule.saveState(state, options.state)
                print("booked request \(file.id) (\(file.vm)): start minute \(booking.start) (\(VMSchedule.minuteText(booking.start))), "
                      + "\(file.source) -> \(hosts.hosts[booking.destination].name), \(booking.prediction.method.rawValue), predicted "
                      + "\(String(format: "%.1f", booking.prediction.totalSeconds)) s, downtime \(String(format: "%.0f", booking.prediction.downtimeSeconds * 1000)) ms, "
                      + "at \(Int(booking.confidence * 100)) % confidence; max-bandwidth per minute: "
                      + booking.rates.map { "\(Int($0 / 1_048_576)) MiB/s" }.joined(separator: " "))
            case .refused(let verdicts):
                print("refused request \(file.id) (\(file.vm)):")
                for (name, verdict) in zip(file.candidates, verdicts) { print("  \(name): \(verdict)") }
                throw ExitCode(3)
            }
            _ = monitor
        }
    }

    struct Bookings: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The bookings kept in a state file, and the scheduler's metrics (--prometheus).")

        @Option(help: ArgumentHelp("Bookings file.", valueName: "file")) var state: String
        @Option(help: ArgumentHelp("Also the hosts, for the forecast error per host in --prometheus.", valueName: "file")) var hosts: String?
        @Flag(help: "Print Prometheus text (bookings, forecast error, predicted and actual seconds) instead of a table.") var prometheus = false

        func run() async throws {
            let statePath = self.state
            let state = try VMSchedule.loadState(statePath)
            guard prometheus else {
                print("id\tvm\tsource\tdestination\tstart\tmethod\tpredicted_s\tactual_s\tconfidence")
                for entry in state.bookings.sorted(by: { ($0.start, $0.request.id) < ($1.start, $1.request.id) }) {
                    print("\(entry.request.id)\t\(entry.request.vm)\t\(entry.request.source)\t\(entry.destination)\t\(VMSchedule.minuteText(entry.start))\t"
                          + "\(entry.method)\t\(String(format: "%.1f", entry.predictedSeconds))\t\(entry.actualSeconds.map { String(format: "%.1f", $0) } ?? "-")\t"
                          + "\(entry.confidence)")
                }
                return
            }
            var lines = ["# TYPE sluice_schedule_bookings gauge",
                         "sluice_schedule_bookings \(state.bookings.filter { $0.actualSeconds == nil }.count)",
                         "# TYPE sluice_schedule_finished_total counter",
                         "sluice_schedule_finished_total \(state.bookings.filter { $0.actualSeconds != nil }.count)",
                         "# TYPE sluice_schedule_predicted_seconds gauge", "# TYPE sluice_schedule_actual_seconds gauge"]
            for entry in state.bookings {
                let labels = "request=\"\(entry.request.id)\",vm=\"\(entry.request.vm)\""
                lines.append("sluice_schedule_predicted_seconds{\(labels)} \(entry.predictedSeconds)")
                if let actual = entry.actualSeconds { lines.append("sluice_schedule_actual_seconds{\(labels)} \(actual)") }
            }
            if let hostsPath = hosts {
                let (file, monitor, _, _) = try VMSchedule.world(hostsPath: hostsPath, statePath: statePath, now: VMSchedule.nowMinute())
                lines.append("# TYPE sluice_schedule_forecast_mape gauge")
                for (index, host) in file.hosts.enumerated() {
                    if let mape = monitor.forecastError(host: index) { lines.append("sluice_schedule_forecast_mape{host=\"\(host.name)\"} \(mape)") }
                }
            }
            print(lines.joined(separator: "\n"))
        }
    }

    struct FirstPass: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "first-pass",
            abstract: "What a move's first pass of a running guest would send (its non-zero pages), as JSON: put firstPassBytes in a request.")

        @Option(help: ArgumentHelp("The guest's QMP socket (root: QEMU's memory is read).", valueName: "path"))
        var qmp: String

        func run() async throws {
            let scan: GuestMemoryScan
            do { scan = try await GuestMemoryScan.scan(qmpSocketPath: qmp) } catch { throw ValidationError("--qmp: \(error)") }
            print(#"{"qemuPID":\#(scan.qemuPID),"ramBytes":\#(scan.ramBytes),"presentBytes":\#(scan.presentBytes),"#
                  + #""nonZeroBytes":\#(scan.nonZeroBytes),"firstPassBytes":\#(scan.firstPassBytes)}"#)
        }
    }

    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Why a request cannot start now, and its earliest feasible start (books nothing).")

        @OptionGroup var options: ScheduleOptions
        @Option(help: ArgumentHelp("The move request (JSON).", valueName: "file")) var request: String
        @Option(help: ArgumentHelp("The guest's QMP socket: its first pass is measured when the request leaves firstPassBytes out (root).",
                                   valueName: "path"))
        var qmp: String?

        func run() async throws {
            let now = options.now ?? VMSchedule.nowMinute()
            let (hosts, monitor, scheduler, _) = try VMSchedule.world(hostsPath: options.hosts, statePath: options.state, now: now)
            var file = try VMCommand.load(ScheduleRequestFile.self, request, flag: "--request")
            if file.firstPassBytes == nil, let qmp {
                do {
                    let scan = try await GuestMemoryScan.scan(qmpSocketPath: qmp)
                    file.firstPassBytes = min(Double(scan.firstPassBytes), file.memoryBytes)
                    print("first pass measured: \(scan.firstPassBytes) B (\(scan.nonZeroBytes >> 20) MiB of \(scan.ramBytes >> 20) MiB hold data)")
                } catch {
                    throw ValidationError("--qmp: \(error)")
                }
            }
            let request: MigrationRequest
            do { request = try file.request(hosts: hosts) } catch { throw ValidationError("--request: \(error)") }
            let explanation = scheduler.explain(request, now: now, outlook: monitor)
            print("request \(file.id) (\(file.vm)) at minute \(now) (\(VMSchedule.minuteText(now))):")
            for (name, verdict) in zip(file.candidates, explanation.atNow) { print("  now, to \(name): \(verdict)") }
            if let earliest = explanation.earliest {
                print("  earliest feasible: minute \(earliest.start) (\(VMSchedule.minuteText(earliest.start))) to "
                      + "\(hosts.hosts[earliest.destination].name), finishing by minute \(Int((earliest.finishSecond / 60).rounded(.up)))")
            } else {
                print("  earliest feasible: none inside the window (ends at minute \(file.deadline))")
                throw ExitCode(3)
            }
        }
    }
}
