// Path: Sources/SluiceScheduling/MigrationManager.swift — the live migration manager: samples every
// host once per tick into the monitor, takes requests, books them, re-plans when a forecast changes or a
// running move falls behind, starts each booking at its tick through a `MoveRunner`, and records the
// actual finish against the predicted one. `sluice vm manager` drives it (docs/SCHEDULING.md).
import Foundation
import SluiceMigration
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One finished (or failed) move, for the metrics and the report: predicted against actual.
public struct FinishedMove: Sendable, Equatable {
    public var requestID: Int
    public var vm: String
    public var destination: String
    /// Real seconds the duration model predicted for the migration, and QEMU's own total time of it.
    public var predictedSeconds: Double
    public var actualSeconds: Double?
    /// Unix seconds: the booked start, the predicted finish (booked start plus the prediction), the real
    /// start (the tick the runner was called) and the real finish (start plus QEMU's total time).
    public var bookedStartUnix: Double
    public var predictedFinishUnix: Double
    public var startedUnix: Double
    public var finishedUnix: Double?
    public var wallSeconds: Double
    public var failure: String?
    /// How the move ran, when it completed.
    public var report: MoveReport?
}

/// The live manager. One instance per process; `tick()` is called once per tick (`run(period:)` does so),
/// `submit` by whoever takes requests (the spool, a test). Everything it holds is bounded: requests and
/// bookings by `ScheduleLimits.requestCountMax`, finished moves by `finishedMax`, series by the monitor.
public actor MigrationManager {
    public struct Configuration: Sendable {
        public var hosts: ScheduleHostsFile
        public var timeScale: TimeScale
        /// Bookings kept between runs (nil: none kept).
        public var statePath: String?
        /// Requests are taken from `*.json` files here each tick; each moves to `done/` with a `.result`.
        public var spoolDirectory: String?
        /// A sample further than this many sigmas from its forecast means the forecast changed: re-plan.
        public var replanSigmas = 3.0
        /// Samples a host needs before its deviations count (the forecast knows nothing before).
        public var replanWarmupSamples = 30
        /// Below this free rate (real bytes/s) a minute is busy: no move is run in it.
        public var minimumRateBytesPerSecond = 8.0 * 1_048_576
        /// Append each tick's samples to the hosts' history files.
        public var appendHistory = true
        /// The forecaster's short season in ticks (its long one is 7 of them): 1440 (a day of minutes)
        /// by default; a test on compressed time learns a pattern that repeats every few dozen ticks.
        /// `SeasonalForecaster.Parameters.seasonRange`, a multiple of its slot length.
        public var seasonTicks = ScheduleLimits.minutesPerDay
        /// Real seconds since the Unix epoch (tests pass their own).
        public var clock: @Sendable () -> Double = { Date().timeIntervalSince1970 }

        public init(hosts: ScheduleHostsFile, timeScale: TimeScale, statePath: String? = nil, spoolDirectory: String? = nil) {
            self.hosts = hosts
            self.timeScale = timeScale
            self.statePath = statePath
            self.spoolDirectory = spoolDirectory
        }
    }

    public static let finishedMax = 1_000
    /// Most request files taken from the spool per tick.
    public static let spoolFilesPerTickMax = 64

    public let configuration: Configuration
    public nonisolated let metrics = Mutex<String>("")
    private var monitor: ResourceMonitor
    private var scheduler: MigrationScheduler
    private var samplers: [any HostSampler]
    private let runner: any MoveRunner
    private var state: ScheduleState
    private var requests: [Int: MigrationRequest] = [:]
    /// Moves running now: the cap the runner follows, QEMU's bytes sent so far (the runner updates it)
    /// and how many of them the samples have already had taken out.
    private var running: [Int: (cell: RateCell, startedUnix: Double, sent: RateCell, counted: Double)] = [:]
    /// When the hosts were last sampled (real seconds): the moves' own stream rate is taken over it.
    private var lastSampleSeconds: Double?
    /// Per host, the move streams' rates taken out of the last sample (real bytes/s): sent from the
    /// host (its moves' sources) and received (their destinations).
    private var ownStream: [(outgoing: Double, incoming: Double)]
    /// Per host, bytes of moves that finished since the last sample and were not yet taken out.
    private var finishedStreamBytes: [(outgoing: Double, incoming: Double)]
    public private(set) var finished: [FinishedMove] = []
    private var refusals: [String: Int] = [:]
    /// First passes measured on the source guest, scans that failed, and the last failure.
    public private(set) var firstPassScans = (measured: 0, failed: 0, lastFailure: "")
    /// Dirty rates asked of the guests' agents, asks that failed, and the last failure.
    public private(set) var agentReports = (measured: 0, failed: 0, lastFailure: "")
    private var replans: [String: Int] = [:]
    private var samplesBySource: [[String: Int]]
    private var lastSamples: [HostSample?]
    private var lastTick: Int?
    private var history: [FileHandle?]
    private var historyLinesSinceTrim = 0
    /// Set by `finishRunning`: no booking is started any more.
    private var stopping = false

    /// Loads each host's history (samples before now) into the forecasts, and the stored bookings.
    public init(_ configuration: Configuration, samplers: [any HostSampler], runner: any MoveRunner) throws(ScheduleFileError) {
        let hosts = try configuration.hosts.validated()
        precondition(samplers.count == hosts.hosts.count, "one sampler per host")
        let scale = configuration.timeScale
        let now = scale.tick(atUnixSeconds: configuration.clock())
        let modelHosts = hosts.hosts.map { scale.model($0.resources) }
        var parameters = MigrationScheduler.Parameters()
        parameters.minimumRate = scale.modelRate(configuration.minimumRateBytesPerSecond)  // real, whatever the scale
        var monitor = ResourceMonitor(hosts: modelHosts, forecaster: .init(seasonMinutes: configuration.seasonTicks))
        var scheduler = MigrationScheduler(hosts: modelHosts, now: now, parameters: parameters)
        for (index, host) in hosts.hosts.enumerated() {
            guard let data = FileManager.default.contents(atPath: host.history) else { continue }  // no history yet
            let samples = try HistoryFile.parse(String(decoding: data, as: UTF8.self), path: host.history)
            for sample in samples where sample.minute < now {
                monitor.record(host: index, minute: sample.minute, productionBytesPerSecond: scale.modelRate(sample.production),
                               freeMemoryBytes: sample.freeMemory, slotsInUse: sample.slots)
            }
            if let last = samples.last(where: { $0.minute < now }) { scheduler.observeFreeMemory(host: index, bytes: last.freeMemory) }
        }
        var state = ScheduleState()
        if let path = configuration.statePath, let data = FileManager.default.contents(atPath: path) {
            do { state = try JSONDecoder().decode(ScheduleState.self, from: data) } catch { throw .invalid("state \(path): \(error)") }
            // A move started but never finished: the manager stopped while it ran. QEMU may have moved the
            // guest since, so it is never started again; it is kept as failed, marked interrupted.
            var marked = false
            for index in state.bookings.indices {
                let entry = state.bookings[index]
                guard let started = entry.startedUnix, entry.actualSeconds == nil, entry.failure == nil else { continue }
                state.bookings[index].interrupted = true
                state.bookings[index].failure = "interrupted: the manager stopped while the move ran (started at Unix "
                    + "\(Int(started))); not started again, the guest may be on either host"
                state.totals = state.totals ?? .init()
                state.totals!.interrupted += 1
                marked = true
            }
            try state.restore(into: &scheduler, hosts: hosts)
            if marked { Self.write(state, to: path) }
        }
        var restored: [Int: MigrationRequest] = [:]
        for entry in state.bookings where entry.actualSeconds == nil && entry.failure == nil {
            var request = try entry.request.request(hosts: hosts)
            request.demand = scale.model(request.demand)
            restored[request.id] = request
        }
        requests = restored
        self.configuration = configuration
        self.monitor = monitor
        self.scheduler = scheduler
        self.samplers = samplers
        self.runner = runner
        self.state = state
        samplesBySource = Array(repeating: [:], count: hosts.hosts.count)
        ownStream = Array(repeating: (0, 0), count: hosts.hosts.count)
        finishedStreamBytes = Array(repeating: (0, 0), count: hosts.hosts.count)
        lastSamples = Array(repeating: nil, count: hosts.hosts.count)
        history = hosts.hosts.map { host in
            guard configuration.appendHistory else { return nil }
            Self.trimHistory(host.history)
            let handle = FileHandle(forWritingAtPath: host.history)
            _ = try? handle?.seekToEnd()
            return handle
        }
        metrics.withLock { $0 = "" }
    }

    /// Runs ticks every `tickSeconds` (of the time scale) until the task is cancelled.
    public func run() async {
        let period = Duration.milliseconds(Int64(configuration.timeScale.tickSeconds * 1000))
        while !Task.isCancelled {
            await tick()
            try? await Task.sleep(for: period)
        }
    }

    /// One tick: samples, the spool, re-planning, starting due bookings. Does nothing twice in one tick
    /// except starting due bookings (a move whose runner was busy starts on the next call).
    public func tick() async {
        let scale = configuration.timeScale
        let nowUnix = configuration.clock()
        let now = scale.tick(atUnixSeconds: nowUnix)
        if lastTick.map({ now > $0 }) ?? true {
            lastTick = now
            scheduler.advance(to: now)
            let changed = sample(now: now, atSeconds: nowUnix)
            let behind = extendLateMoves(now: now)
            if changed || behind { replan(now: now, reason: changed ? "forecast" : "behind") }
            await drainSpool(now: now)
        }
        // Measuring requests' guests in the spool may have taken a while: start what is due by the clock now.
        let startUnix = configuration.clock()
        startDue(now: scale.tick(atUnixSeconds: startUnix), nowUnix: startUnix)
        publishMetrics(now: now)
    }

    /// Plans `file` now; books it (and keeps it in the state file) or refuses it with the verdicts.
    /// Times in `file` are ticks; rates are real bytes/s. A request that names its guest and leaves
    /// `firstPassBytes` out has it measured on the source first (`GuestMemoryScan`, blocks ~0.1 s per GiB).
    public func submit(_ file: ManagerRequestFile) async -> Result<PlanOutcome, ScheduleFileError> {
        // Checked before the guest is measured (a bad or known request costs no scan) and again after
        // (another submit may have taken the id while this one waited).
        if case .failure(let error) = admissible(file) { return .failure(error) }
        let file = await measuringGuest(file)
        let scale = configuration.timeScale
        let now = lastTick ?? scale.tick(atUnixSeconds: configuration.clock())
        var request: MigrationRequest
        switch admissible(file) {
        case .failure(let error): return .failure(error)
        case .success(let checked): request = checked
        }
        request.demand = scale.model(request.demand)
        request.earliestStart = max(request.earliestStart, now)
        let outcome = scheduler.plan(request, now: now, outlook: monitor)
        switch outcome {
        case .booked(let booking):
            requests[request.id] = request
            state.bookings.append(ScheduleState.entry(booking, request: file.request, hosts: configuration.hosts, guest: file.guest))
            saveState()
        case .refused(let verdicts):
            for reason in Set(verdicts.map(\.reason)) { refusals[reason, default: 0] += 1 }
        }
        publishMetrics(now: now)
        return .success(outcome)
    }

    /// The request in host indices if it is valid, new, and the tables have room.
    private func admissible(_ file: ManagerRequestFile) -> Result<MigrationRequest, ScheduleFileError> {
        let request: MigrationRequest
        do { request = try file.request.request(hosts: configuration.hosts) } catch { return .failure(error) }
        guard requests[request.id] == nil, !state.bookings.contains(where: { $0.request.id == request.id }) else {
            return .failure(.invalid("request \(request.id) is known already"))
        }
        guard requests.count < ScheduleLimits.requestCountMax, state.bookings.count < ScheduleState.bookingsMax else {
            return .failure(.invalid("request \(request.id): the manager holds \(requests.count) requests, its most"))
        }
        return .success(request)
    }

    /// `file` measured on its source guest when it names one: the first pass (`GuestMemoryScan`) when
    /// the request leaves it out, and the dirty rate the guest's agent reports when that is higher than
    /// the request's. A failed measurement keeps the request's figures (the whole memory for the first
    /// pass) and is counted. Blocks the manager for the scan (~0.1 s per GiB) and at most 2 s per socket.
    public func measuringGuest(_ file: ManagerRequestFile) async -> ManagerRequestFile {
        guard let guest = file.guest else { return file }
        var file = file
        if file.request.firstPassBytes == nil {
            do {
                let scan = try await GuestMemoryScan.scan(qmpSocketPath: guest.qmp)
                file.request.firstPassBytes = min(Double(scan.firstPassBytes), file.request.memoryBytes)
                firstPassScans.measured += 1
            } catch {
                firstPassScans.failed += 1
                firstPassScans.lastFailure = "\(error)"
            }
        }
        do {
            let agent = try await AgentChannelConnection.connect(socketPath: guest.agent, timeout: .seconds(2))
            let report = try await agent.report()
            await agent.close()
            file.request.dirtyBytesPerSecond = max(file.request.dirtyBytesPerSecond, report.dirtiedPagesPerSecond * 4096)
            agentReports.measured += 1
        } catch {
            agentReports.failed += 1
            agentReports.lastFailure = "\(error)"
        }
        return file
    }

    /// Why `file` cannot start now and its earliest feasible start; books nothing.
    public func explain(_ file: ManagerRequestFile) async -> Result<Explanation, ScheduleFileError> {
        let file = await measuringGuest(file)
        let now = lastTick ?? configuration.timeScale.tick(atUnixSeconds: configuration.clock())
        var request: MigrationRequest
        do { request = try file.request.request(hosts: configuration.hosts) } catch { return .failure(error) }
        if let entry = state.bookings.first(where: { $0.request.id == request.id && $0.interrupted == true }) {
            return .failure(.invalid("request \(request.id) (\(entry.request.vm)): \(entry.failure ?? "interrupted")"))
        }
        request.demand = configuration.timeScale.model(request.demand)
        request.earliestStart = max(request.earliestStart, now)
        return .success(scheduler.explain(request, now: now, outlook: monitor))
    }

    /// Stops starting bookings and waits until every running move has finished (each is bounded by the
    /// executor's deadline). `sluice vm manager` calls it before a normal exit, so that no move is left
    /// running unrecorded; a crash leaves it started, and the next run marks it interrupted.
    public func finishRunning(poll: Duration = .milliseconds(100)) async {
        stopping = true
        while !running.isEmpty { try? await Task.sleep(for: poll) }
    }

    /// The bookings not yet finished, by request id.
    public var bookings: [Int: Booking] { scheduler.bookings }
    /// Request ids of moves found started but unfinished when the manager started (never run again).
    public var interrupted: [Int] { state.bookings.filter { $0.interrupted == true }.map(\.request.id) }
    /// Moves ended since the state file was made (monotonic; `finished` keeps only the newest).
    public var totals: ScheduleState.Totals { state.totals ?? .init() }
    public var runningCount: Int { running.count }
    public func lastSample(host: Int) -> HostSample? { lastSamples[host] }
    public func forecastError(host: Int) -> Double? { monitor.forecastError(host: host) }
    public func replanCount(_ reason: String) -> Int { replans[reason] ?? 0 }

    // MARK: - Tick steps

    /// Samples every host into the monitor; true when a sample strayed from its forecast.
    private func sample(now: Int, atSeconds seconds: Double) -> Bool {
        let scale = configuration.timeScale
        var changed = false
        // A running move's stream crosses its source's and destination's links: the counters cannot tell
        // it from production, so what QEMU sent since the last sample is taken out of both.
        // A finished move's last bytes (since the runner's last poll) count in the interval it ended in.
        // A clock that did not advance leaves everything for the next sample.
        let elapsed = lastSampleSeconds.map { seconds - $0 } ?? 0
        for index in ownStream.indices { ownStream[index] = (0, 0) }
        if elapsed > 0 || lastSampleSeconds == nil {
            lastSampleSeconds = seconds
            for id in running.keys {
                let sent = running[id]!.sent.load()
                let delta = max(0, sent - running[id]!.counted)
                running[id]!.counted = max(sent, running[id]!.counted)
                guard elapsed > 0, let booking = scheduler.bookings[id] else { continue }
                ownStream[booking.source].outgoing += delta / elapsed
                ownStream[booking.destination].incoming += delta / elapsed
            }
            if elapsed > 0 {
                for index in ownStream.indices {
                    ownStream[index].outgoing += finishedStreamBytes[index].outgoing / elapsed
                    ownStream[index].incoming += finishedStreamBytes[index].incoming / elapsed
                    finishedStreamBytes[index] = (0, 0)
                }
            }
        }
        for index in samplers.indices {
            let sample = samplers[index].sample(atSeconds: seconds)
            lastSamples[index] = sample
            samplesBySource[index][sample.source.label, default: 0] += 1
            guard let used = sample.used(lessOutgoing: ownStream[index].outgoing, incoming: ownStream[index].incoming) else { continue }
            let model = scale.modelRate(used)
            let point = monitor.forecast(host: index, minute: now)
            if monitor.production[index].count >= configuration.replanWarmupSamples,
               abs(model - point.mean) > configuration.replanSigmas * max(point.sigma, 1e-9) {
                changed = true
            }
            let slots = running.keys.filter { id in scheduler.bookings[id].map { $0.source == index || $0.destination == index } ?? false }.count
            monitor.record(host: index, minute: now, productionBytesPerSecond: model, freeMemoryBytes: sample.freeMemoryBytes, slotsInUse: slots)
            scheduler.observeFreeMemory(host: index, bytes: sample.freeMemoryBytes)
            if let handle = history[index] {
                let line = HistoryFile.line(minute: now, production: used, freeMemory: sample.freeMemoryBytes, slots: slots) + "\n"
                try? handle.write(contentsOf: Data(line.utf8))
            }
        }
        // Every `HistoryFile.linesMax` ticks each history is cut back to its newest week of lines.
        historyLinesSinceTrim += 1
        if historyLinesSinceTrim >= HistoryFile.linesMax {
            historyLinesSinceTrim = 0
            for (index, host) in configuration.hosts.hosts.enumerated() where history[index] != nil {
                try? history[index]?.close()
                Self.trimHistory(host.history)
                history[index] = FileHandle(forWritingAtPath: host.history)
                _ = try? history[index]?.seekToEnd()
            }
        }
        return changed
    }

    /// A running move past its booked minutes holds its last rate for this minute too; true if any did.
    private func extendLateMoves(now: Int) -> Bool {
        var behind = false
        for (id, move) in running {
            guard let booking = scheduler.bookings[id] else { continue }
            let index = now - booking.start
            if index >= booking.rates.count {
                let rate = booking.rates.last ?? scheduler.parameters.minimumRate
                scheduler.extend(id, minute: now, rate: rate)
                behind = true
            }
            let rates = scheduler.bookings[id]?.rates ?? booking.rates
            move.cell.store(configuration.timeScale.realRate(rates[min(max(0, index), rates.count - 1)]))
        }
        return behind
    }

    private func replan(now: Int, reason: String) {
        replans[reason, default: 0] += 1
        let pending = requests.filter { running[$0.key] == nil }
        let changed = scheduler.replan(now: now, requests: pending, outlook: monitor)
        for id in changed {
            guard let booking = scheduler.bookings[id], let index = state.bookings.firstIndex(where: { $0.request.id == id }) else { continue }
            let old = state.bookings[index]
            var entry = ScheduleState.entry(booking, request: old.request, hosts: configuration.hosts, guest: old.guest)
            entry.failure = old.failure
            state.bookings[index] = entry
        }
        if !changed.isEmpty { saveState() }
    }

    private func startDue(now: Int, nowUnix: Double) {
        guard !stopping else { return }
        let due = scheduler.bookings.values.filter { $0.start <= now && running[$0.requestID] == nil && requests[$0.requestID] != nil }
        var started = false
        defer { if started { saveState() } }
        for booking in due.sorted(by: { $0.requestID < $1.requestID }) {
            guard let entryIndex = state.bookings.firstIndex(where: { $0.request.id == booking.requestID }) else { continue }
            let entry = state.bookings[entryIndex]
            let scale = configuration.timeScale
            let index = min(max(0, now - booking.start), max(0, booking.rates.count - 1))
            let cell = RateCell(scale.realRate(booking.rates.isEmpty ? scheduler.parameters.minimumRate : booking.rates[index]))
            let sent = RateCell(0)
            running[booking.requestID] = (cell, nowUnix, sent, 0)
            let destination = configuration.hosts.hosts[booking.destination]
            var order = MoveOrder(requestID: booking.requestID, vm: entry.request.vm, guest: entry.guest, destination: destination.name,
                                  destinationRunRoot: destination.runRoot ?? "/tmp/sluice-manager-\(destination.name)", cap: cell,
                                  predictedSeconds: scale.realSeconds(booking.prediction.totalSeconds))
            order.sent = sent
            if let netns = destination.netns { order.destinationLaunchPrefix = ["/usr/sbin/ip", "netns", "exec", netns] }
            order.streamAddress = destination.migrationAddress
            let runner = self.runner
            // Kept before the runner is called: a manager that stops now finds it started when it restarts.
            state.bookings[entryIndex].startedUnix = nowUnix
            started = true
            Task { [weak self] in
                let result = await runner.run(order)
                await self?.finish(booking.requestID, result)
            }
        }
    }

    private func finish(_ id: Int, _ result: Result<MoveReport, MoveRunError>) {
        guard let move = running.removeValue(forKey: id), let booking = scheduler.release(id) else { return }
        if case .success(let report) = result {
            let rest = max(0, Double(report.transferredBytes) - move.counted)
            finishedStreamBytes[booking.source].outgoing += rest
            finishedStreamBytes[booking.destination].incoming += rest
        }
        requests[id] = nil
        let scale = configuration.timeScale
        let bookedStart = scale.unixSeconds(ofTick: booking.start)
        let predicted = scale.realSeconds(booking.prediction.totalSeconds)
        var record = FinishedMove(requestID: id, vm: "", destination: configuration.hosts.hosts[booking.destination].name,
                                  predictedSeconds: predicted, actualSeconds: nil, bookedStartUnix: bookedStart,
                                  predictedFinishUnix: bookedStart + predicted, startedUnix: move.startedUnix, finishedUnix: nil,
                                  wallSeconds: configuration.clock() - move.startedUnix, failure: nil)
        let index = state.bookings.firstIndex(where: { $0.request.id == id })
        if let index { record.vm = state.bookings[index].request.vm }
        switch result {
        case .success(let report):
            record.actualSeconds = report.migrationSeconds
            record.report = report
            // QEMU's total time ends the migration; the rest of the wall time is the destination's start
            // (before) and the agent's confirmation (after): the migration ends that much before the run.
            record.finishedUnix = configuration.clock() - max(0, report.wallSeconds - report.migrationSeconds) / 2
            if let index { state.bookings[index].actualSeconds = scale.modelSeconds(report.migrationSeconds) }
            state.totals = state.totals ?? .init()
            state.totals!.completed += 1
        case .failure(let failure):
            record.failure = failure.description
            if let index { state.bookings[index].failure = failure.description }
            state.totals = state.totals ?? .init()
            state.totals!.failed += 1
        }
        if finished.count == Self.finishedMax { finished.removeFirst() }
        finished.append(record)
        // The state file keeps the newest `finishedMax` finished moves; older ones leave it.
        let done = state.bookings.indices.filter { state.bookings[$0].actualSeconds != nil || state.bookings[$0].failure != nil }
        if done.count > Self.finishedMax {
            let drop = Set(done.prefix(done.count - Self.finishedMax))
            state.bookings = state.bookings.enumerated().filter { !drop.contains($0.offset) }.map(\.element)
        }
        saveState()
        publishMetrics(now: lastTick ?? scale.tick(atUnixSeconds: configuration.clock()))
    }

    // MARK: - Spool, state, metrics

    private func drainSpool(now: Int) async {
        guard let spool = configuration.spoolDirectory,
              let names = try? FileManager.default.contentsOfDirectory(atPath: spool) else { return }
        let done = spool + "/done"
        try? FileManager.default.createDirectory(atPath: done, withIntermediateDirectories: true)
        for name in names.filter({ $0.hasSuffix(".json") }).sorted().prefix(Self.spoolFilesPerTickMax) {
            let path = spool + "/" + name
            let text: String
            switch readRequest(path) {
            case .failure(let error): text = "invalid: \(error)\n"
            case .success(let file):
                switch await submit(file) {
                case .failure(let error): text = "invalid: \(error)\n"
                case .success(.booked(let booking)):
                    let demand = requests[booking.requestID]?.demand
                    text = "booked request \(booking.requestID): start tick \(booking.start), destination "
                        + "\(configuration.hosts.hosts[booking.destination].name), predicted "
                        + String(format: "%.1f", configuration.timeScale.realSeconds(booking.prediction.totalSeconds)) + " s, first pass "
                        + (demand.map { String(format: "%.0f MiB of %.0f MiB", $0.firstPassBytes / 1_048_576, $0.memoryBytes / 1_048_576) } ?? "?")
                        + "\n"
                case .success(.refused(let verdicts)):
                    text = "refused request \(file.request.id):\n" + zip(file.request.candidates, verdicts).map { "  \($0): \($1)\n" }.joined()
                }
            }
            _ = rename(path, done + "/" + name)
            FileManager.default.createFile(atPath: done + "/" + name + ".result", contents: Data(text.utf8))
        }
    }

    /// Creates `path` if missing; keeps only its newest `HistoryFile.linesMax` lines.
    private static func trimHistory(_ path: String) {
        guard let data = FileManager.default.contents(atPath: path) else {
            FileManager.default.createFile(atPath: path, contents: nil)
            return
        }
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        guard lines.count > HistoryFile.linesMax else { return }
        let kept = lines.suffix(HistoryFile.linesMax).map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n") + "\n"
        if FileManager.default.createFile(atPath: path + ".tmp", contents: Data(kept.utf8)) { _ = rename(path + ".tmp", path) }
    }

    private func readRequest(_ path: String) -> Result<ManagerRequestFile, ScheduleFileError> {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 1 << 20 else {
            return .failure(.invalid("\(path): cannot read or larger than 1 MiB"))
        }
        do { return .success(try JSONDecoder().decode(ManagerRequestFile.self, from: data)) } catch {
            return .failure(.invalid("\(path): not a request: \(error)"))
        }
    }

    private func saveState() {
        guard let path = configuration.statePath else { return }
        Self.write(state, to: path)
    }

    /// Writes `state` to `path` through a temporary file and a rename (a reader sees the old or the new).
    private static func write(_ state: ScheduleState, to path: String) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(state) else { return }
        if FileManager.default.createFile(atPath: path + ".tmp", contents: data) { _ = rename(path + ".tmp", path) }
    }

    /// Prometheus text of the manager's state, kept in `metrics` for the endpoint to serve.
    private func publishMetrics(now: Int) {
        let hosts = configuration.hosts.hosts
        var lines = ["# TYPE sluice_manager_tick gauge", "sluice_manager_tick \(now)",
                     "# TYPE sluice_manager_tick_seconds gauge", "sluice_manager_tick_seconds \(configuration.timeScale.tickSeconds)",
                     "# TYPE sluice_manager_bookings gauge", "sluice_manager_bookings \(scheduler.bookings.count - running.count)",
                     "# TYPE sluice_manager_running_moves gauge", "sluice_manager_running_moves \(running.count)",
                     "# TYPE sluice_manager_finished_total counter",
                     "sluice_manager_finished_total{result=\"completed\"} \(totals.completed)",
                     "sluice_manager_finished_total{result=\"failed\"} \(totals.failed)",
                     "sluice_manager_finished_total{result=\"interrupted\"} \(totals.interrupted)",
                     "# TYPE sluice_manager_refusals_total counter"]
        for (reason, count) in refusals.sorted(by: { $0.key < $1.key }) { lines.append("sluice_manager_refusals_total{reason=\"\(reason)\"} \(count)") }
        lines += ["# TYPE sluice_manager_first_pass_scans_total counter",
                  "sluice_manager_first_pass_scans_total{result=\"measured\"} \(firstPassScans.measured)",
                  "sluice_manager_first_pass_scans_total{result=\"failed\"} \(firstPassScans.failed)",
                  "# TYPE sluice_manager_agent_reports_total counter",
                  "sluice_manager_agent_reports_total{result=\"measured\"} \(agentReports.measured)",
                  "sluice_manager_agent_reports_total{result=\"failed\"} \(agentReports.failed)"]
        lines.append("# TYPE sluice_manager_replans_total counter")
        for (reason, count) in replans.sorted(by: { $0.key < $1.key }) { lines.append("sluice_manager_replans_total{reason=\"\(reason)\"} \(count)") }
        lines += ["# TYPE sluice_manager_forecast_mape gauge", "# TYPE sluice_manager_used_bytes_per_second gauge",
                  "# TYPE sluice_manager_move_stream_bytes_per_second gauge",
                  "# TYPE sluice_manager_samples_total counter"]
        for (index, host) in hosts.enumerated() {
            if let mape = monitor.forecastError(host: index) { lines.append("sluice_manager_forecast_mape{host=\"\(host.name)\"} \(mape)") }
            if let sample = lastSamples[index], let used = sample.usedBytesPerSecond {
                lines.append("sluice_manager_used_bytes_per_second{host=\"\(host.name)\",source=\"\(sample.source.label)\"} \(used)")
            }
            lines.append("sluice_manager_move_stream_bytes_per_second{host=\"\(host.name)\",direction=\"out\"} \(ownStream[index].outgoing)")
            lines.append("sluice_manager_move_stream_bytes_per_second{host=\"\(host.name)\",direction=\"in\"} \(ownStream[index].incoming)")
            for (source, count) in samplesBySource[index].sorted(by: { $0.key < $1.key }) {
                lines.append("sluice_manager_samples_total{host=\"\(host.name)\",source=\"\(source)\"} \(count)")
            }
        }
        lines += ["# TYPE sluice_manager_predicted_finish_unix_seconds gauge", "# TYPE sluice_manager_actual_finish_unix_seconds gauge",
                  "# TYPE sluice_manager_predicted_move_seconds gauge", "# TYPE sluice_manager_actual_move_seconds gauge",
                  "# TYPE sluice_manager_first_pass_bytes gauge"]
        let scale = configuration.timeScale
        for booking in scheduler.bookings.values.sorted(by: { $0.requestID < $1.requestID }) {
            let labels = "request=\"\(booking.requestID)\",state=\"\(running[booking.requestID] == nil ? "booked" : "running")\""
            let predicted = scale.realSeconds(booking.prediction.totalSeconds)
            lines.append("sluice_manager_predicted_finish_unix_seconds{\(labels)} \(scale.unixSeconds(ofTick: booking.start) + predicted)")
            lines.append("sluice_manager_predicted_move_seconds{\(labels)} \(predicted)")
            if let request = requests[booking.requestID] {
                lines.append("sluice_manager_first_pass_bytes{\(labels)} \(request.demand.firstPassBytes)")
            }
        }
        for entry in state.bookings.filter({ $0.interrupted == true }).suffix(100) {
            lines.append("sluice_manager_predicted_move_seconds{request=\"\(entry.request.id)\",state=\"interrupted\"} "
                         + "\(scale.realSeconds(entry.predictedSeconds))")
        }
        for move in finished.suffix(100) {
            let labels = "request=\"\(move.requestID)\",state=\"\(move.failure == nil ? "finished" : "failed")\""
            lines.append("sluice_manager_predicted_finish_unix_seconds{\(labels)} \(move.predictedFinishUnix)")
            lines.append("sluice_manager_predicted_move_seconds{\(labels)} \(move.predictedSeconds)")
            if let actual = move.actualSeconds { lines.append("sluice_manager_actual_move_seconds{\(labels)} \(actual)") }
            if let finish = move.finishedUnix { lines.append("sluice_manager_actual_finish_unix_seconds{\(labels)} \(finish)") }
        }
        let text = lines.joined(separator: "\n") + "\n"
        metrics.withLock { $0 = text }
    }
}
