// Path: Tests/SluiceSchedulingTests/ManagerTests.swift — the live manager on a compressed time scale (one
// tick is one real second), driven tick by tick on a test clock: two days of history in which host a's
// link is busy for the first 30 ticks of each day, live samples that follow it, a move booked after the
// busy period, started at its tick, its finish recorded against the prediction; a window that closes
// before the link frees is refused with the reason; a sample far off its forecast re-plans.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SluiceScheduling
import Synchronization
import Testing

/// Samples from a script: the used rate at each tick (real bytes/s), from a function of the tick.
struct ScriptedSampler: HostSampler {
    let clock: TestClock
    let scale: TimeScale
    let used: @Sendable (Int) -> Double
    mutating func sample(atSeconds: Double) -> HostSample {
        HostSample(usedBytesPerSecond: used(scale.tick(atUnixSeconds: clock.now())), freeMemoryBytes: 64 * 1_073_741_824,
                   source: .procNetDev(interface: "script", why: nil))
    }
}

final class TestClock: Sendable {
    let seconds: Mutex<Double>
    init(_ start: Double) { seconds = Mutex(start) }
    func now() -> Double { seconds.withLock { $0 } }
    func advance(_ by: Double) { seconds.withLock { $0 += by } }
}

/// A move that takes what its cap says: memory over the cap, reported at once (the test's clock does not
/// move while it "runs"). Records the caps it was given.
final class InstantRunner: MoveRunner {
    let memoryBytes: Double
    let caps: Mutex<[Double]> = Mutex([])
    init(memoryBytes: Double) { self.memoryBytes = memoryBytes }
    func run(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError> {
        let cap = order.cap.load()
        caps.withLock { $0.append(cap) }
        let seconds = memoryBytes / cap
        return .success(MoveReport(migrationSeconds: seconds, wallSeconds: seconds, downtimeMs: 10, transferredBytes: UInt64(memoryBytes),
                                   method: "precopy"))
    }
}

@Suite struct ManagerTests {
    static let day = 1440
    static let link = 100_000_000.0

    /// Host a busy (97 % of its link) for the first 30 ticks of every scheduler day, else 10 %.
    static func production(_ tick: Int, host: String) -> Double {
        host == "a" && ((tick % day) + day) % day < 30 ? 0.97 * link : 0.1 * link
    }

    static func scratch() -> String {
        var template = Array("/tmp/sluice-manager-XXXXXX".utf8CString)
        return String(cString: mkdtemp(&template)!)
    }

    static func world(_ directory: String, now: Int) -> ScheduleHostsFile {
        var hosts: [ScheduleHost] = []
        for name in ["a", "b"] {
            var lines = ""
            for tick in (now - 2 * day)..<now {
                lines += HistoryFile.line(minute: tick, production: production(tick, host: name), freeMemory: 64 * 1_073_741_824, slots: 0) + "\n"
            }
            FileManager.default.createFile(atPath: "\(directory)/\(name).history", contents: Data(lines.utf8))
            hosts.append(ScheduleHost(name: name, linkBytesPerSecond: link, migrationSlots: 1, memoryBytes: 128 * 1_073_741_824,
                                      history: "\(directory)/\(name).history"))
        }
        return ScheduleHostsFile(hosts: hosts)
    }

    static func request(id: Int, now: Int, window: Int) -> ManagerRequestFile {
        ManagerRequestFile(request: ScheduleRequestFile(
            id: id, vm: "vm\(id)", source: "a", candidates: ["b"], earliestStart: now, deadline: now + window,
            memoryBytes: 2_000_000_000, dirtyBytesPerSecond: 1_000_000, maxBandwidth: 80_000_000, autoConverge: false))
    }

    @Test func booksAfterTheBusyPeriodRunsItAndRecordsTheFinish() async throws {
        let directory = Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let scale = TimeScale(tickSeconds: 1)
        let dayStart = 20_000 * Self.day  // a tick that starts a scheduler day
        let clock = TestClock(Double(dayStart) + 0.1)
        let hosts = Self.world(directory, now: dayStart)
        var configuration = MigrationManager.Configuration(hosts: hosts, timeScale: scale, statePath: directory + "/state.json",
                                                           spoolDirectory: directory + "/spool")
        configuration.clock = { clock.now() }
        let samplers: [any HostSampler] = ["a", "b"].map { name in
            ScriptedSampler(clock: clock, scale: scale, used: { Self.production($0, host: name) })
        }
        let runner = InstantRunner(memoryBytes: 2_000_000_000)
        let manager = try MigrationManager(configuration, samplers: samplers, runner: runner)
        await manager.tick()

        // A window of 20 ticks closes while a's link is busy: refused up front, with the reason.
        guard case .success(.refused(let verdicts)) = await manager.submit(Self.request(id: 1, now: dayStart, window: 20)) else {
            Issue.record("the short window was not refused")
            return
        }
        #expect(verdicts.allSatisfy { $0.reason == "link_busy" || $0.reason == "finishes_late" }, "\(verdicts)")
        // A window of 200 ticks: booked after the busy period (2 GB at up to 80 MB/s is 25 s: 25 ticks).
        try FileManager.default.createDirectory(atPath: directory + "/spool", withIntermediateDirectories: true)
        try JSONEncoder().encode(Self.request(id: 2, now: dayStart, window: 200)).write(to: URL(fileURLWithPath: directory + "/spool/2.json"))
        clock.advance(1)
        await manager.tick()
        let result = try String(contentsOfFile: directory + "/spool/done/2.json.result", encoding: .utf8)
        #expect(result.hasPrefix("booked request 2"), "\(result)")
        let booking = try #require(await manager.bookings[2])
        print("booked: start tick +\(booking.start - dayStart), predicted \(scale.realSeconds(booking.prediction.totalSeconds)) s")
        #expect(booking.start >= dayStart + 25 && booking.start <= dayStart + 60, "start +\(booking.start - dayStart)")
        let afterBooking = manager.metrics.withLock { $0 }
        #expect(afterBooking.contains("sluice_manager_refusals_total{reason=\"link_busy\"} 1")
                || afterBooking.contains("sluice_manager_refusals_total{reason=\"finishes_late\"} 1"), "\(afterBooking)")

        // Tick on to the start: the move runs, at the booked rate, and finishes.
        while clock.now() < Double(booking.start) + 1.5 {
            clock.advance(1)
            await manager.tick()
        }
        for _ in 0..<100 where await manager.finished.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        let done = try #require(await manager.finished.first)
        let actual = try #require(done.actualSeconds)
        print("predicted \(done.predictedSeconds) s, actual \(actual) s; predicted finish \(done.predictedFinishUnix), "
              + "recorded finish \(done.finishedUnix ?? -1)")
        #expect(abs(actual - done.predictedSeconds) <= 0.1 * done.predictedSeconds + 1)
        #expect(runner.caps.withLock { $0 }.first.map { $0 > 50_000_000 && $0 <= 80_000_001 } == true)
        let text = manager.metrics.withLock { $0 }
        #expect(text.contains("sluice_manager_actual_move_seconds{request=\"2\",state=\"finished\"}"), "\(text)")
        #expect(text.contains("sluice_manager_forecast_mape{host=\"a\"}"))
        #expect(text.contains("sluice_manager_samples_total{host=\"a\",source=\"proc_net_dev\"}"))
        // The state file keeps the finished move with its actual time (scheduler seconds).
        let state = try JSONDecoder().decode(ScheduleState.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/state.json")))
        #expect(state.bookings.count == 1 && state.bookings[0].actualSeconds != nil)
    }

    @Test func aSampleFarOffItsForecastReplans() async throws {
        let directory = Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let scale = TimeScale(tickSeconds: 1)
        let dayStart = 20_000 * Self.day
        let clock = TestClock(Double(dayStart) + 0.1)
        var configuration = MigrationManager.Configuration(hosts: Self.world(directory, now: dayStart), timeScale: scale)
        configuration.clock = { clock.now() }
        configuration.appendHistory = false
        // Live: host b is suddenly saturated, which its history never showed.
        let samplers: [any HostSampler] = ["a", "b"].map { name in
            ScriptedSampler(clock: clock, scale: scale, used: { name == "b" ? 0.99 * Self.link : Self.production($0, host: name) })
        }
        let manager = try MigrationManager(configuration, samplers: samplers, runner: InstantRunner(memoryBytes: 1))
        await manager.tick()
        #expect(await manager.replanCount("forecast") >= 1)
    }

    /// A move's own stream crosses both links: the samples the manager records (history, forecast) are
    /// production only. The stream is taken out of the direction it used (TX on the source, RX on the
    /// destination), so production the other way stays; a move's last bytes (after the runner's last
    /// poll) come out of the interval it finished in. The runner holds the move open; the test plays
    /// QEMU's bytes-sent counter.
    @Test func aRunningMovesOwnStreamIsNotProduction() async throws {
        final class HeldRunner: MoveRunner {
            let sent = Mutex<RateCell?>(nil)
            let release = Mutex<UInt64?>(nil)  // the transferred bytes to report when released
            func run(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError> {
                sent.withLock { $0 = order.sent }
                while true {
                    if let total = release.withLock({ $0 }) {
                        return .success(MoveReport(migrationSeconds: 5, wallSeconds: 5, downtimeMs: 1, transferredBytes: total, method: "precopy"))
                    }
                    try? await Task.sleep(for: .milliseconds(5))
                }
            }
        }
        /// Production RX on a (10 % of the link, incoming) and TX on b; the stream (a's TX, b's RX) added
        /// at `streamRate` bytes/s while the test says so.
        final class StreamRate: Sendable { let value = Mutex(0.0) }
        struct DirectionalSampler: HostSampler {
            let host: String
            let stream: StreamRate
            mutating func sample(atSeconds: Double) -> HostSample {
                let production = 0.1 * ManagerTests.link
                let streamRate = stream.value.withLock { $0 }
                let rx = host == "a" ? production : streamRate
                let tx = host == "a" ? streamRate : production
                return HostSample(usedBytesPerSecond: max(rx, tx), freeMemoryBytes: 64 * 1_073_741_824,
                                  source: .procNetDev(interface: "script", why: nil), rxBytesPerSecond: rx, txBytesPerSecond: tx)
            }
        }
        let directory = Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let scale = TimeScale(tickSeconds: 1)
        let dayStart = 20_000 * Self.day + 40  // a's link is quiet (10 % of it) from tick 30 of the day
        let clock = TestClock(Double(dayStart) + 0.1)
        var configuration = MigrationManager.Configuration(hosts: Self.world(directory, now: dayStart), timeScale: scale)
        configuration.clock = { clock.now() }
        let stream = 50_000_000.0  // the move's bytes/s while it runs
        let runner = HeldRunner()
        let streamA = StreamRate(), streamB = StreamRate()
        let manager = try MigrationManager(configuration, samplers: [DirectionalSampler(host: "a", stream: streamA),
                                                                     DirectionalSampler(host: "b", stream: streamB)], runner: runner)
        await manager.tick()
        guard case .success(.booked(let booking)) = await manager.submit(Self.request(id: 3, now: dayStart, window: 200)) else {
            Issue.record("not booked")
            return
        }
        #expect(booking.start <= dayStart + 5)
        while runner.sent.withLock({ $0 }) == nil, clock.now() < Double(dayStart + 20) {
            clock.advance(1)
            await manager.tick()
            try await Task.sleep(for: .milliseconds(20))  // the runner's task takes the order
        }
        let cell = try #require(runner.sent.withLock { $0 }, "the move did not start")
        let started = clock.now()
        for rate in [streamA, streamB] { rate.value.withLock { $0 = stream } }
        for _ in 0..<5 {
            clock.advance(1)
            cell.store(stream * (clock.now() - started))  // QEMU's ram.transferred as the runner stores it
            await manager.tick()
        }
        let metrics = manager.metrics.withLock { $0 }
        #expect(metrics.contains("sluice_manager_move_stream_bytes_per_second{host=\"a\",direction=\"out\"} 50000000"), "\(metrics)")
        #expect(metrics.contains("sluice_manager_move_stream_bytes_per_second{host=\"b\",direction=\"in\"} 50000000"), "\(metrics)")
        // The move ends 20 MB after the runner's last poll, within the next interval.
        let polled = UInt64(cell.load())
        for rate in [streamA, streamB] { rate.value.withLock { $0 = 20_000_000 } }
        runner.release.withLock { $0 = polled + 20_000_000 }
        for _ in 0..<100 where await manager.finished.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        #expect(await manager.finished.count == 1)
        clock.advance(1)
        await manager.tick()
        // a's last six ticks (the move's and the one it ended in): its RX production, 10 % of the link;
        // neither the stream nor its RX-TX mix-up (max(rx, tx) less the stream would record 0).
        let history = try String(contentsOfFile: directory + "/a.history", encoding: .utf8)
        let recorded = try HistoryFile.parse(history, path: "a.history").suffix(6).map(\.production)
        #expect(recorded.count == 6 && recorded.allSatisfy { abs($0 - 0.1 * Self.link) < 1 }, "\(recorded)")
        let historyB = try String(contentsOfFile: directory + "/b.history", encoding: .utf8)
        let recordedB = try HistoryFile.parse(historyB, path: "b.history").suffix(6).map(\.production)
        #expect(recordedB.allSatisfy { abs($0 - 0.1 * Self.link) < 1 }, "\(recordedB)")
    }

    @Test func timeScaleConvertsRatesAndDurations() {
        let scale = TimeScale(tickSeconds: 2)
        #expect(scale.factor == 30)
        #expect(scale.realRate(scale.modelRate(123_456)) == 123_456)
        // 1 GB at 100 MB/s: 10 real seconds, 300 scheduler seconds (5 scheduler minutes = 5 ticks = 10 s).
        let demand = scale.model(MigrationDemand(memoryBytes: 1e9, dirtyBytesPerSecond: 0, maxBandwidth: 1e8))
        let profile = BandwidthProfile(rates: [Double](repeating: demand.maxBandwidth, count: 60), start: 0, count: 60, cap: demand.maxBandwidth)
        guard case .success(let prediction) = DurationModel.predict(demand, allowance: .init(), bandwidth: profile) else {
            Issue.record("no prediction")
            return
        }
        #expect(abs(scale.realSeconds(prediction.totalSeconds) - 10) < 0.5, "\(prediction)")
        #expect(scale.tick(atUnixSeconds: 101) == 50 && scale.unixSeconds(ofTick: 50) == 100)
    }
}
