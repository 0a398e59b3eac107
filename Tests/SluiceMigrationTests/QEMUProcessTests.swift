// Path: Tests/SluiceMigrationTests/QEMUProcessTests.swift — starting and stopping QEMU: `-cpu MODEL,enforce`
// starts only for models tcg can provide, and a refusal comes with QEMU's own words from its stderr.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite(.serialized, .enabled(if: qemuTestsEnabled, "qemu-system-x86_64 not installed; `make deps` installs it"))
struct QEMUProcessTests {
    @Test func nehalemEnforcedStartsUnderTCG() async throws {
        try await QEMUTestSupport.withQEMU("nehalem", cpu: "Nehalem,enforce") { qemu in
            #expect(try await qemu.qmp.queryStatus().running)
            let slots = try await qemu.qmp.queryHotpluggableCPUs()
            #expect(slots.map(\.type) == ["Nehalem-x86_64-cpu"])
            #expect(qemu.commandLine.contains("tcg"))
        }
    }

    @Test func skylakeServerEnforcedFailsWithQEMUsReason() async throws {
        let directory = QEMUTestSupport.makeRunDirectory("skylake")
        let arguments = QEMUTestSupport.baseArguments + ["-m", "64M", "-cpu", "Skylake-Server,enforce"]
        let error = await launchError(.init(arguments: arguments, runDirectory: directory))
        try? FileManager.default.removeItem(atPath: directory)
        guard case .exitedBeforeReady(let status, let stderrTail) = error else {
            Issue.record("expected exitedBeforeReady, got \(String(describing: error))")
            return
        }
        #expect(status == .exited(code: 1))
        #expect(stderrTail.contains("TCG doesn't support requested feature"))
        #expect(stderrTail.contains("avx512f"))
    }

    @Test func terminateQuitsThroughQMP() async throws {
        let qemu = try await QEMUTestSupport.launch("terminate")
        let status = await qemu.terminate(grace: .seconds(5))
        #expect(status == .exited(code: 0))
        #expect(qemu.exitStatus == .exited(code: 0))
        #expect(qemu.qmp.isClosed)
        await QEMUTestSupport.dispose(qemu)  // a no-op for the reaped process but the run directory
    }

    @Test func terminateEscalatesToSIGKILLForAStoppedProcess() async throws {
        let qemu = try await QEMUTestSupport.launch("escalate")
        qemu.send(signal: SIGSTOP)
        // quit gets no answer, SIGTERM is held while stopped, SIGKILL ends it.
        let status = await qemu.terminate(grace: .milliseconds(300))
        #expect(status == .signaled(signal: SIGKILL))
        await QEMUTestSupport.dispose(qemu)
    }

    @Test func aMissingBinaryIsASpawnError() async throws {
        let directory = QEMUTestSupport.makeRunDirectory("nobin")
        let error = await launchError(.init(binary: "/nonexistent/qemu", arguments: [], runDirectory: directory))
        try? FileManager.default.removeItem(atPath: directory)
        guard case .spawn(let binary, let syscallError) = error else {
            Issue.record("expected spawn, got \(String(describing: error))")
            return
        }
        #expect(binary == "/nonexistent/qemu")
        #expect(syscallError.errno.rawValue == ENOENT)
    }

    /// The error `launch` fails with; nil (and the process disposed of) when it started.
    private func launchError(_ configuration: QEMUProcess.Configuration) async -> QEMUProcessError? {
        do {
            let qemu = try await QEMUProcess.launch(configuration)
            await QEMUTestSupport.dispose(qemu)
            return nil
        } catch {
            return error
        }
    }
}
