// Path: Tests/SluiceSchedulingTests/ManagerRestartTests.swift — what the manager keeps across a stop: a
// move started and never finished (the manager was killed) is marked interrupted on restart and never run
// again; a normal exit waits for the running move; the finished counters survive a restart; a runner whose
// table of kept destinations is full refuses the move instead of dropping a live destination.
import Foundation
import SluiceScheduling
import Synchronization
import Testing

/// A move that runs until the test opens the gate, then completes. Counts the moves it was given.
final class GateRunner: MoveRunner {
    let open = Mutex(false)
    let calls = Mutex(0)
    func run(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError> {
        calls.withLock { $0 += 1 }
        while !open.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
        return .success(MoveReport(migrationSeconds: 3, wallSeconds: 3, downtimeMs: 10, transferredBytes: 1, method: "precopy"))
    }
}

@Suite struct ManagerRestartTests {
    /// A manager over `directory` (history written once by the caller), its state in state.json.
    static func manager(_ directory: String, hosts: ScheduleHostsFile, clock: TestClock, runner: any MoveRunner) throws -> MigrationManager {
        let scale = TimeScale(tickSeconds: 1)
        var configuration = MigrationManager.Configuration(hosts: hosts, timeScale: scale, statePath: directory + "/state.json")
        configuration.clock = { clock.now() }
        configuration.appendHistory = false
        let samplers: [any HostSampler] = ["a", "b"].map { name in
            ScriptedSampler(clock: clock, scale: scale, used: { ManagerTests.production($0, host: name) })
        }
        return try MigrationManager(configuration, samplers: samplers, runner: runner)
    }

    /// Books request `id` now (host a is free from tick 30 of the day) and ticks until its move runs.
    static func startMove(_ manager: MigrationManager, id: Int, clock: TestClock, now: Int) async throws {
        await manager.tick()
        guard case .success(.booked) = await manager.submit(ManagerTests.request(id: id, now: now, window: 200)) else {
            Issue.record("request \(id) was not booked")
            return
        }
        for _ in 0..<100 where await manager.runningCount == 0 {
            clock.advance(1)
            await manager.tick()
        }
        #expect(await manager.runningCount == 1)
    }

    @Test func aMoveStartedBeforeACrashIsMarkedInterruptedNotRunAgain() async throws {
        let directory = ManagerTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let now = 20_000 * ManagerTests.day + 100
        let clock = TestClock(Double(now) + 0.1)
        let hosts = ManagerTests.world(directory, now: now)
        let first = GateRunner()
        defer { first.open.withLock { $0 = true } }  // the first manager's move ends with the test
        let crashed = try Self.manager(directory, hosts: hosts, clock: clock, runner: first)
        try await Self.startMove(crashed, id: 7, clock: clock, now: now)
        for _ in 0..<200 where first.calls.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(first.calls.withLock { $0 } == 1)

        // The manager is gone (never asked to finish); a new one starts from the same state file.
        let second = GateRunner()
        second.open.withLock { $0 = true }
        let restarted = try Self.manager(directory, hosts: hosts, clock: clock, runner: second)
        #expect(await restarted.interrupted == [7])
        #expect(await restarted.bookings[7] == nil)
        #expect(await restarted.totals.interrupted == 1)
        for _ in 0..<5 {
            clock.advance(1)
            await restarted.tick()
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(second.calls.withLock { $0 } == 0, "the interrupted move was started again")
        let text = restarted.metrics.withLock { $0 }
        #expect(text.contains("sluice_manager_finished_total{result=\"interrupted\"} 1"), "\(text)")
        #expect(text.contains("sluice_manager_predicted_move_seconds{request=\"7\",state=\"interrupted\"}"), "\(text)")
        guard case .failure(let why) = await restarted.explain(ManagerTests.request(id: 7, now: now, window: 200)) else {
            Issue.record("explain did not report the interrupted move")
            return
        }
        #expect(why.description.contains("interrupted"), "\(why)")
        // The state file says so too, and a third start counts it once, not again.
        let state = try JSONDecoder().decode(ScheduleState.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/state.json")))
        #expect(state.bookings.first?.interrupted == true && state.bookings.first?.failure?.hasPrefix("interrupted") == true)
        let third = try Self.manager(directory, hosts: hosts, clock: clock, runner: second)
        #expect(await third.totals.interrupted == 1)
    }

    @Test func aNormalExitWaitsForTheRunningMoveAndCountersSurviveARestart() async throws {
        let directory = ManagerTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let now = 20_000 * ManagerTests.day + 100
        let clock = TestClock(Double(now) + 0.1)
        let hosts = ManagerTests.world(directory, now: now)
        let runner = GateRunner()
        let manager = try Self.manager(directory, hosts: hosts, clock: clock, runner: runner)
        try await Self.startMove(manager, id: 3, clock: clock, now: now)
        Task {
            try? await Task.sleep(for: .milliseconds(100))
            runner.open.withLock { $0 = true }
        }
        await manager.finishRunning()
        #expect(await manager.runningCount == 0)
        let finished = await manager.finished
        #expect(finished.count == 1 && finished.first?.failure == nil)
        // No new move starts once stopping: a request booked now stays booked.
        let later = Int(clock.now())
        guard case .success(.booked(let booking)) = await manager.submit(ManagerTests.request(id: 4, now: later, window: 200)) else {
            Issue.record("request 4 was not booked")
            return
        }
        while clock.now() < Double(booking.start) + 2 {
            clock.advance(1)
            await manager.tick()
        }
        let runningAfter = await manager.runningCount
        #expect(runner.calls.withLock { $0 } == 1 && runningAfter == 0)

        let restarted = try Self.manager(directory, hosts: hosts, clock: clock, runner: GateRunner())
        #expect(await restarted.interrupted.isEmpty)
        await restarted.tick()
        let text = restarted.metrics.withLock { $0 }
        #expect(text.contains("sluice_manager_finished_total{result=\"completed\"} 1"), "\(text)")
        #expect(text.contains("sluice_manager_finished_total{result=\"failed\"} 0"), "\(text)")
    }

    @Test func aFullTableOfKeptDestinationsRefusesTheMoveAndKeepsItsGuests() {
        var table = KeptGuests<String>(capacity: 2)
        let r1 = table.reserve()
        #expect(r1)
        let r2 = table.fill("vm1", "qemu-1")
        #expect(r2 == nil)
        let r3 = table.reserve()
        #expect(r3)  // a second move runs
        let third = table.reserve()
        #expect(!third, "a third move must be refused: two slots are held or promised")
        #expect(table.guests == ["vm1": "qemu-1"], "no kept destination is dropped")
        table.release()  // the second move failed
        let r4 = table.reserve()
        #expect(r4)
        let r5 = table.fill("vm2", "qemu-2")
        #expect(r5 == nil)
        let r6 = table.reserve()
        #expect(!r6)
        // vm1 moved on again, from its kept destination: that QEMU (now the quit source) is handed back.
        var moved = KeptGuests<String>(capacity: 2)
        let r7 = moved.reserve()
        #expect(r7)
        let r8 = moved.fill("vm1", "qemu-1")
        #expect(r8 == nil)
        let r9 = moved.reserve()
        #expect(r9)
        let r10 = moved.fill("vm1", "qemu-3")
        #expect(r10 == "qemu-1")
        #expect(moved.guests == ["vm1": "qemu-3"] && moved.reserved == 0)
    }

    @Test func theExecutorRunnerRefusesWhenItsTableIsFull() async {
        let runner = ExecutorMoveRunner(keptMax: 0)
        let order = MoveOrder(requestID: 1, vm: "vm1", guest: GuestFiles(qmp: "/nonexistent", agent: "", spec: "", template: ""),
                              destination: "b", destinationRunRoot: "/tmp/none", cap: RateCell(1), predictedSeconds: 1)
        guard case .failure(let failure) = await runner.run(order) else {
            Issue.record("the move was not refused")
            return
        }
        #expect(failure.reason == "kept_full", "\(failure)")
        #expect(runner.keptCount.guests == 0 && runner.keptCount.reserved == 0)
    }
}
