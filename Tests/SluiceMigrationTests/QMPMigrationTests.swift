// Path: Tests/SluiceMigrationTests/QMPMigrationTests.swift — migrations between two no-kernel QEMUs on
// 127.0.0.1 driven through the QMP client: one that completes, one whose destination dies mid-way.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite(.serialized, .enabled(if: qemuTestsEnabled, "qemu-system-x86_64 not installed; `make deps` installs it"))
struct QMPMigrationTests {
    @Test func aMigrationCompletesAndTheDestinationRuns() async throws {
        try await QEMUTestSupport.withQEMU("mig-src") { source in
            try await QEMUTestSupport.withQEMU("mig-dst", extra: ["-incoming", "defer"]) { destination in
                #expect(try await destination.qmp.queryStatus().status == "inmigrate")
                try await source.qmp.migrateSetCapabilities([.events: true])
                try await destination.qmp.migrateSetCapabilities([.events: true])
                try await source.qmp.migrateSetParameters(MigrationParameters(downtimeLimitMs: 300))
                let uri = "tcp:127.0.0.1:\(QEMUTestSupport.freeLoopbackPort())"
                try await destination.qmp.migrateIncoming(uri: uri)
                try await source.qmp.migrate(uri: uri)
                let info = try await source.qmp.waitForMigrationEnd(timeout: .seconds(60))
                #expect(info.status == .completed, "\(info)")
                #expect(info.errorDescription == nil)
                let ram = try #require(info.ram)
                #expect(ram.totalBytes >= 64 << 20)
                #expect(ram.remainingBytes == 0)
                #expect(ram.transferredBytes > 0)
                #expect(ram.dirtySyncCount >= 1)
                #expect(try #require(info.totalTimeMs) > 0)
                #expect(info.downtimeMs != nil && info.setupTimeMs != nil)
                // The MIGRATION events came with the capability set.
                let first = try await source.qmp.waitForEvent(name: "MIGRATION", timeout: .seconds(5))
                #expect(first.data["status"]?.stringValue == "setup")
                // The destination runs the guest now; the source is left in postmigrate.
                let destinationState = try await waitForStatus("running", of: destination, timeout: .seconds(10))
                #expect(destinationState.running)
                #expect(try await source.qmp.queryStatus().status == "postmigrate")
                print("migration 64M no-kernel tcg: total \(info.totalTimeMs ?? 0) ms, downtime \(info.downtimeMs ?? 0) ms, setup \(info.setupTimeMs ?? 0) ms, transferred \(ram.transferredBytes) B")
            }
        }
    }

    @Test func aDestinationKilledMidMigrationLeavesTheSourceRunning() async throws {
        try await QEMUTestSupport.withQEMU("kill-src", memory: "256M") { source in
            try await QEMUTestSupport.withQEMU("kill-dst", memory: "256M", extra: ["-incoming", "defer"]) { destination in
                // 64 KiB/s: the 65536 mostly-zero pages of 256 MiB take ~10 s, long enough to kill mid-way.
                try await source.qmp.migrateSetParameters(MigrationParameters(maxBandwidthBytesPerSecond: 64 << 10))
                let uri = "tcp:127.0.0.1:\(QEMUTestSupport.freeLoopbackPort())"
                try await destination.qmp.migrateIncoming(uri: uri)
                try await source.qmp.migrate(uri: uri)
                // Wait until it is really moving pages.
                let clock = ContinuousClock()
                let deadline = clock.now.advanced(by: .seconds(20))
                var active = try await source.qmp.queryMigrate()
                while !(active.status == .active && (active.ram?.transferredBytes ?? 0) > 0) && clock.now < deadline {
                    try await Task.sleep(for: .milliseconds(50))
                    active = try await source.qmp.queryMigrate()
                }
                #expect(active.status == .active)
                #expect((active.ram?.remainingBytes ?? 0) > 0)

                destination.kill()
                #expect(await destination.waitForExit(timeout: .seconds(10)) == .signaled(signal: SIGKILL))
                let info = try await source.qmp.waitForMigrationEnd(timeout: .seconds(30))
                #expect(info.status == .failed)
                let why = try #require(info.errorDescription)
                #expect(!why.isEmpty)
                // The source keeps running the guest.
                let state = try await source.qmp.queryStatus()
                #expect(state.status == "running" && state.running)
                // What each side said is captured (a SIGKILLed destination says nothing; the source
                // says why its side broke).
                _ = destination.stderrTail(maxBytes: 4096)
                #expect(source.stderrTail(maxBytes: 4096).contains(why))
                print("destination killed: source query-migrate error-desc \(why); source stderr: \(source.stderrTail(maxBytes: 400))")
            }
        }
    }

    @Test func dirtyRateIsMeasured() async throws {
        try await QEMUTestSupport.withQEMU("dirtyrate") { qemu in
            try await qemu.qmp.calcDirtyRate(seconds: 1)
            let clock = ContinuousClock()
            let deadline = clock.now.advanced(by: .seconds(10))
            var info = try await qemu.qmp.queryDirtyRate()
            while info.status != "measured" && clock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                info = try await qemu.qmp.queryDirtyRate()
            }
            #expect(info.status == "measured")
            #expect(info.calcTimeSeconds == 1)
            #expect(info.dirtyRateMiBPerSecond != nil)
        }
    }

    /// The numbers in docs/MIGRATION-QMP.md: spawn → QMP ready, connect + negotiate on a running QEMU,
    /// and a 64 MiB no-kernel migration's total time and downtime, 5 runs each (printed, loosely checked).
    @Test func timings() async throws {
        var ready: [Int64] = []
        var handshake: [Int64] = []
        var total: [UInt64] = []
        var downtime: [UInt64] = []
        for run in 0..<5 {
            let directory = QEMUTestSupport.makeRunDirectory("t-mon")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let monitor = directory + "/m2.sock"
            try await QEMUTestSupport.withQEMU(
                "t-src\(run)", extra: ["-chardev", "socket,id=m2,path=\(monitor),server=on,wait=off", "-mon", "chardev=m2,mode=control"]
            ) { source in
                ready.append(source.readyAfterMs)
                let started = ContinuousClock.now
                let second = try await QMPClient.connect(path: monitor)
                handshake.append(Int64((ContinuousClock.now - started) / .microseconds(1)))
                await second.close()
                try await QEMUTestSupport.withQEMU("t-dst\(run)", extra: ["-incoming", "defer"]) { destination in
                    let uri = "tcp:127.0.0.1:\(QEMUTestSupport.freeLoopbackPort())"
                    try await destination.qmp.migrateIncoming(uri: uri)
                    try await source.qmp.migrate(uri: uri)
                    let info = try await source.qmp.waitForMigrationEnd(interval: .milliseconds(5), timeout: .seconds(60))
                    #expect(info.status == .completed)
                    total.append(info.totalTimeMs ?? 0)
                    downtime.append(info.downtimeMs ?? 0)
                }
            }
        }
        print("timings: spawn→QMP ready ms \(ready); connect+qmp_capabilities µs \(handshake); migration 64M total ms \(total), downtime ms \(downtime)")
        #expect(ready.allSatisfy { $0 < 20_000 })
    }

    private func waitForStatus(_ status: String, of qemu: QEMUProcess, timeout: Duration) async throws -> RunState {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let state = try await qemu.qmp.queryStatus()
            if state.status == status || clock.now >= deadline { return state }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
