// Path: Tests/SluiceMigrationTests/QMPClientTests.swift — the QMP client against a real QEMU (no guest
// kernel, tcg): handshake, QEMU's own errors, overlapping calls, deadlines, disconnects, events and the
// event buffer's bound.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

let qemuTestsEnabled = MigrationTestEnvironment.skipReason == nil

@Suite(.serialized, .enabled(if: qemuTestsEnabled, "qemu-system-x86_64 not installed; `make deps` installs it"))
struct QMPClientTests {
    @Test func handshakeReadsTheGreetingAndNegotiates() async throws {
        try await QEMUTestSupport.withQEMU("handshake") { qemu in
            #expect(qemu.qmp.greetingVersion.major >= 7)
            #expect(qemu.qmp.greetingCapabilities.contains("oob"))
            let version = try await qemu.qmp.queryVersion()
            #expect(version == qemu.qmp.greetingVersion)
            #expect(!version.package.isEmpty)
            let state = try await qemu.qmp.queryStatus()
            #expect(state.status == "running" && state.running)
            #expect(qemu.readyAfterMs > 0 && qemu.readyAfterMs < 20_000)
        }
    }

    @Test func aBadCommandFailsWithQEMUsErrorClassAndText() async throws {
        try await QEMUTestSupport.withQEMU("badcmd") { qemu in
            await #expect(
                throws: QMPError.commandFailed(
                    command: "no-such-command", errorClass: "CommandNotFound",
                    description: "The command no-such-command has not been found")
            ) {
                _ = try await qemu.qmp.execute("no-such-command")
            }
            do {
                try await qemu.qmp.deviceAdd(driver: "no-such-device", id: "x")
                Issue.record("device_add of an unknown driver succeeded")
            } catch let error as QMPError {
                guard case .commandFailed(let command, let errorClass, let description) = error else {
                    Issue.record("unexpected \(error)")
                    return
                }
                #expect(command == "device_add")
                #expect(errorClass == "GenericError")
                #expect(description.contains("no-such-device"))
            }
            // The connection is still usable after errors.
            #expect(try await qemu.qmp.queryStatus().running)
        }
    }

    @Test func overlappingCallsEachGetTheirOwnAnswer() async throws {
        try await QEMUTestSupport.withQEMU("overlap") { qemu in
            let client = qemu.qmp
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<32 {
                    group.addTask {
                        if index % 2 == 0 {
                            return try await client.queryStatus().running
                        }
                        return try await client.queryMemorySizeSummary().baseMemoryBytes == 64 << 20
                    }
                }
                for try await ok in group { #expect(ok) }
            }
        }
    }

    @Test func aStoppedProcessTimesOutAndTheConnectionRecovers() async throws {
        try await QEMUTestSupport.withQEMU("timeout") { qemu in
            qemu.send(signal: SIGSTOP)
            let started = ContinuousClock.now
            await #expect(throws: QMPError.timeout(command: "query-status", afterMs: 300)) {
                _ = try await qemu.qmp.queryStatus(timeout: .milliseconds(300))
            }
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(300) && waited < .seconds(3))
            qemu.send(signal: SIGCONT)
            let state = try await qemu.qmp.queryStatus()
            #expect(state.running)
            // The late answer to the timed-out call came after and was dropped.
            #expect(qemu.qmp.lateRepliesDropped == 1)
        }
    }

    @Test func aDisconnectFailsEveryPendingCall() async throws {
        try await QEMUTestSupport.withQEMU("disconnect") { qemu in
            let client = qemu.qmp
            qemu.send(signal: SIGSTOP)
            let calls = (0..<3).map { _ in
                Task { () -> QMPError? in
                    do throws(QMPError) {
                        _ = try await client.queryStatus(timeout: .seconds(30))
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(200))
            qemu.kill()
            for call in calls {
                #expect(await call.value == .disconnected(command: "query-status"))
            }
            #expect(client.isClosed)
            await #expect(throws: QMPError.disconnected(command: "query-version")) {
                _ = try await client.queryVersion()
            }
            await #expect(throws: QMPError.disconnected(command: "event STOP")) {
                _ = try await client.waitForEvent(name: "STOP", timeout: .seconds(5))
            }
            #expect(await qemu.waitForExit(timeout: .seconds(10)) == .signaled(signal: SIGKILL))
        }
    }

    @Test func stopAndContSendStopAndResumeEvents() async throws {
        try await QEMUTestSupport.withQEMU("events") { qemu in
            try await qemu.qmp.stop()
            let stop = try await qemu.qmp.waitForEvent(name: "STOP", timeout: .seconds(5))
            #expect(stop.name == "STOP")
            #expect(stop.timestampSeconds > 1_600_000_000)
            #expect(try await qemu.qmp.queryStatus().status == "paused")
            try await qemu.qmp.cont()
            let resume = try await qemu.qmp.waitForEvent(name: "RESUME", timeout: .seconds(5))
            #expect(resume.timestampSeconds >= stop.timestampSeconds)
            // No event pending: a wait times out with the event's name.
            await #expect(throws: QMPError.timeout(command: "event STOP", afterMs: 100)) {
                _ = try await qemu.qmp.waitForEvent(name: "STOP", timeout: .milliseconds(100))
            }
            // The AsyncSequence sees the same events.
            try await qemu.qmp.stop()
            try await qemu.qmp.cont()
            var names: [String] = []
            for await event in qemu.qmp.events {
                names.append(event.name)
                if names.count == 2 { break }
            }
            #expect(names == ["STOP", "RESUME"])
        }
    }

    @Test func theEventBufferKeepsTheNewestAndCountsTheDropped() async throws {
        // A second QMP monitor, for a client with a buffer of 2 events.
        let directory = QEMUTestSupport.makeRunDirectory("evbound")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let second = directory + "/m2.sock"
        try await QEMUTestSupport.withQEMU(
            "evbound", extra: ["-chardev", "socket,id=m2,path=\(second),server=on,wait=off", "-mon", "chardev=m2,mode=control"]
        ) { qemu in
            let small = try await QMPClient.connect(path: second, eventBufferMax: 2)
            for _ in 0..<3 {
                try await qemu.qmp.stop()
                try await qemu.qmp.cont()
            }
            // Six events went out; wait until the last has reached the small client.
            _ = try await qemu.qmp.queryStatus()
            _ = try await small.queryStatus()
            #expect(small.eventsDropped == 4)
            #expect(small.drainEvents().map(\.name) == ["STOP", "RESUME"])
            #expect(qemu.qmp.drainEvents().count == 6)
            await small.close()
        }
    }

    @Test func connectingToNoSocketIsAConnectError() async throws {
        do {
            _ = try await QMPClient.connect(path: "/tmp/sluice-no-such-qmp.sock", timeout: .seconds(1))
            Issue.record("connected to nothing")
        } catch {
            guard case .connect(let path, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(path == "/tmp/sluice-no-such-qmp.sock")
        }
    }
}

@Suite struct QMPValueTests {
    @Test func roundTripsThroughJSON() throws {
        let value: QMPValue = [
            "execute": "migrate-set-parameters", "id": 7,
            "arguments": ["max-bandwidth": .uint(UInt64(Int64.max) + 1), "x": .double(0.5), "s": "a\"b\\c\n", "n": .null],
            "list": [true, false, 1],
        ]
        let parsed = try QMPValue.parse(Array(value.jsonText.utf8))
        #expect(parsed == value)
        #expect(!value.jsonText.contains("\n"))
    }

    @Test func notJSONIsAProtocolViolation() {
        #expect(throws: QMPError.self) { try QMPValue.parse(Array("{\"return\": ".utf8)) }
    }
}
