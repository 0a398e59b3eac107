// Path: Tests/SluiceMigrationTests/MigrationExecutorTests.swift — moves of real guests (QEMU under tcg,
// the test image with its agent) between QEMU processes on 127.0.0.1 standing for hosts of two types:
// type change on the way, a move the proof refuses, a destination killed mid-move.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

@Suite(.serialized) struct MigrationExecutorTests {
    /// Hosts of two types: a newer one (Westmere and below) and an older one (Nehalem and below).
    static let bigType = HostType(name: "big-westmere", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048,
                                  migrationBandwidthBytesPerSecond: 256 << 20)
    static let oldType = HostType(name: "old-nehalem", cpuModel: "Nehalem", maxVCPUs: 4, maxMemoryMiB: 2048,
                                  migrationBandwidthBytesPerSecond: 256 << 20)

    /// A scratch directory under /tmp (short paths: Unix socket addresses hold 107 bytes).
    static func scratch() throws -> String {
        var template = Array("/tmp/sluice-mig.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        return String(cString: made)
    }

    /// Boots a guest from `spec` in `directory` and waits for its agent.
    static func boot(_ name: String, _ spec: GuestLaunchSpec, in directory: String) async throws -> RunningGuest {
        let process = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: spec.arguments(runDirectory: directory, incoming: false), runDirectory: directory))
        let guest = RunningGuest(name: name, spec: spec, process: process)
        let agent = try await AgentChannelConnection.connect(socketPath: guest.agentSocketPath, timeout: .seconds(180))
        await agent.close()
        return guest
    }

    /// The inventory of a host of `type`: read from a QEMU that boots nothing (`-S`).
    static func inventory(of type: HostType, in directory: String) async throws -> HostInventory {
        let probe = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: ["-machine", "q35", "-nodefaults", "-display", "none", "-m", "64M", "-S"], runDirectory: directory))
        defer { probe.kill() }
        return try await HostInventory.read(from: probe.qmp, hostType: type)
    }

    static func describe(_ guest: RunningGuest) async throws -> VMDescription {
        let agent = try await AgentChannelConnection.connect(socketPath: guest.agentSocketPath, timeout: .seconds(30))
        let report = try await agent.report()
        await agent.close()
        return VMDescription(name: guest.name, report: report, cpuModel: guest.spec.cpuModel, shape: guest.spec.shape,
                             devices: ["virtio-serial-pci"])
    }

    static func spec(_ image: GuestImage, cpu: String, vcpus: Int, memoryMiB: Int, append: String = "") -> GuestLaunchSpec {
        GuestLaunchSpec(
            cpuModel: cpu,
            shape: VMShape(bootVCPUs: vcpus, maxVCPUs: 2, bootMemoryMiB: memoryMiB, memorySlots: 2, maxMemoryMiB: 1024),
            kernel: image.kernel.path, initrd: image.initramfs.path,
            append: "console=ttyS0 panic=-1" + (append.isEmpty ? "" : " " + append))
    }

    @Test(.timeLimit(.minutes(10)))
    func twoGuestsOfDifferentSizesMoveAndChangeType() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        let executor = MigrationExecutor(.init(runRoot: root + "/dst"), connectAgent: AgentChannelConnection.connector)
        let vmType = VMType(name: "2x512", vcpus: 2, memoryMiB: 512)
        // Two guests of different CPU models and sizes, moved as one set, both at once (4 QEMU processes).
        var sources: [RunningGuest] = []
        for (name, cpu, memory) in [("small-nehalem", "Nehalem", 256), ("mid-westmere", "Westmere", 384)] {
            sources.append(try await Self.boot(name, Self.spec(image, cpu: cpu, vcpus: 1, memoryMiB: memory), in: root + "/" + name))
        }
        var descriptions: [VMDescription] = []
        for source in sources { descriptions.append(try await Self.describe(source)) }
        let template = MigrationTemplate.build(vms: descriptions, to: inventory, hostType: Self.bigType, vmType: vmType)
        #expect(template.proofs.allSatisfy { $0.canMove }, "\(template.proofs)")
        // One model for the set: the narrowest covering both guests' flags (the Westmere guest's AES-NI).
        #expect(template.cpuModel == "Westmere")
        #expect(template.plans.map(\.addDIMMsMiB) == [[256], [128]])
        #expect(template.plans.allSatisfy { $0.addVCPUs == 1 })
        let results = await executor.migrate(sources, template: template, concurrently: 2)
        for ((vm, result), source) in zip(results, sources) {
            switch result {
            case .success(let (outcome, moved)):
                #expect(outcome.after.bootID == outcome.before.bootID)  // no restart
                #expect(outcome.after.vcpusOnline == 2)
                #expect((outcome.after.workloadCounter ?? 0) > (outcome.before.workloadCounter ?? 0))
                #expect(outcome.after.memoryTotalKiB > outcome.before.memoryTotalKiB + UInt64(512 - source.spec.shape.memoryMiB - 16) * 1024)
                #expect(moved.spec.shape.vcpus == 2 && moved.spec.shape.memoryMiB == 512)
                #expect(moved.spec.cpuModel == "Westmere")
                #expect(source.process?.exitStatus != nil)  // the source was stopped after confirmation
                // The workload keeps counting on the destination.
                let agent = try await AgentChannelConnection.connect(socketPath: moved.agentSocketPath, timeout: .seconds(10))
                let later = try await agent.report()
                await agent.close()
                #expect((later.workloadCounter ?? 0) >= (outcome.after.workloadCounter ?? 0))
                print("\(vm): \(outcome.strategy) total \(outcome.totalTimeMs) ms, downtime \(outcome.downtimeMs) ms, "
                      + "\(outcome.transferredBytes) bytes, wall \(outcome.wallTimeMs) ms")
                await moved.stop()
            case .failure(let failure):
                Self.record(failure, vm)
                await source.stop()
            }
        }
    }

    /// A hot-added vCPU's bring-up under tcg sometimes never ends in this guest kernel (docs/MIGRATION.md,
    /// "The test guest"): the executor then refuses to confirm the move and resumes the source, which is
    /// right; the test records that one case as a known intermittent issue, and anything else as a failure.
    static func record(_ failure: MigrationFailure, _ vm: String) {
        if case .notConfirmed(_, let reason) = failure, reason.contains("vCPUs online 1/2") {
            withKnownIssue("hot-added vCPU bring-up under tcg can stall", isIntermittent: true) {
                Issue.record("\(vm): \(failure)")
            }
        } else {
            Issue.record("\(vm): \(failure)")
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func aMoveToAnIncompatibleCPUIsRefusedBeforeAnythingStarts() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.oldType, in: root + "/probe")
        // A guest on Westmere (AES-NI, PCLMULQDQ) cannot move to a host that offers Nehalem at most.
        let source = try await Self.boot("aes", Self.spec(image, cpu: "Westmere", vcpus: 1, memoryMiB: 256), in: root + "/aes")
        let description = try await Self.describe(source)
        let template = MigrationTemplate.build(vms: [description], to: inventory, hostType: Self.oldType)
        let proof = template.proofs[0]
        guard case .cpuFeaturesMissing(let closest, let missing) = proof.blockers.first else {
            Issue.record("expected a CPU blocker, got \(proof.blockers)")
            await source.stop()
            return
        }
        #expect(closest == "Nehalem")
        #expect(missing.contains("aes") && missing.contains("pclmulqdq"))
        #expect(template.plans.isEmpty)
        // Handing the executor a plan anyway (the one for a newer host) is refused by the proof: nothing starts.
        let executor = MigrationExecutor(.init(runRoot: root + "/dst"), connectAgent: AgentChannelConnection.connector)
        let elsewhere = MigrationTemplate.build(vms: [description], to: try await Self.inventory(of: Self.bigType, in: root + "/probe2"),
                                                hostType: Self.bigType)
        guard let plan = elsewhere.plans.first else {
            Issue.record("the newer host refused too: \(elsewhere.proofs)")
            await source.stop()
            return
        }
        guard case .failure(.refused) = await executor.migrate(source, plan: plan, proof: proof, policy: MigrationPolicy()) else {
            Issue.record("the executor did not refuse")
            await source.stop()
            return
        }
        #expect(!FileManager.default.fileExists(atPath: root + "/dst"))  // no destination was started
        #expect(try await source.qmp.queryStatus().running)
        await source.stop()
    }

    @Test(.timeLimit(.minutes(5)))
    func aDestinationKilledMidMoveLeavesTheSourceRunning() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        // A guest dirtying 64 MiB, at a bandwidth that keeps the move going for a while.
        let source = try await Self.boot("victim", Self.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256, append: "sluice.dirty=64"),
                                         in: root + "/victim")
        let slow = HostType(name: "slow", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048,
                            migrationBandwidthBytesPerSecond: 4 << 20)
        let template = MigrationTemplate.build(vms: [try await Self.describe(source)], to: inventory, hostType: slow,
                                               policy: MigrationPolicy(allowPostcopy: false))
        guard let plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        var configuration = MigrationExecutor.Configuration(runRoot: root + "/dst")
        configuration.onDestinationStarted = { destination in
            Task {
                try? await Task.sleep(for: .seconds(2))
                destination.kill()
            }
        }
        let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
        switch await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: template.policy) {
        case .success:
            Issue.record("the move succeeded though its destination was killed")
        case .failure(let failure):
            guard case .migrationFailed(_, let sourceError, _) = failure else {
                Issue.record("expected migrationFailed, got \(failure)")
                break
            }
            #expect(!sourceError.isEmpty)
            print("reported: \(failure)")
        }
        // The source still runs the guest, and its agent answers.
        #expect(try await source.qmp.queryStatus().running)
        let agent = try await AgentChannelConnection.connect(socketPath: source.agentSocketPath, timeout: .seconds(30))
        _ = try await agent.report()
        await agent.close()
        await source.stop()
    }

    @Test(.timeLimit(.minutes(6)))
    func aGuestDirtyingFastConvergesByThePolicy() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        // 64 MiB rewritten in a loop (about 45 MiB/s under tcg here) over a 32 MiB/s link: pre-copy alone
        // never gets the remainder under the downtime limit (docs/BENCHMARKS.md measures that anchor).
        let source = try await Self.boot("dirty", Self.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256, append: "sluice.dirty=64"),
                                         in: root + "/dirty")
        let link = HostType(name: "link-32m", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048,
                            migrationBandwidthBytesPerSecond: 32 << 20)
        let description = try await VMDescription.survey(source, connectAgent: AgentChannelConnection.connector)
        #expect((description.hostDirtyBytesPerSecond ?? 0) > 0)
        let policy = MigrationPolicy(maxSeconds: 120)
        let template = MigrationTemplate.build(vms: [description], to: inventory, hostType: link, policy: policy)
        guard let plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        #expect(plan.convergence.strategy != .precopy, "\(plan.convergence.reason)")
        // The move may take the policy's whole limit (auto-converge under tcg took 23-70 s here): the
        // executor's deadline is then the policy's 120 s, not the prediction's.
        var configuration = MigrationExecutor.Configuration(runRoot: root + "/dst")
        configuration.deadlineSlack = .seconds(policy.maxSeconds)
        let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
        switch await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: policy) {
        case .success(let (outcome, moved)):
            #expect(outcome.downtimeMs <= UInt64(policy.downtimeLimitMs) * 3)
            #expect(outcome.after.bootID == outcome.before.bootID)
            print("dirty guest: \(plan.convergence.reason); \(outcome.strategy), post-copy \(outcome.postcopyStarted), "
                  + "throttle up to \(outcome.maxThrottlePercent)%, total \(outcome.totalTimeMs) ms, downtime \(outcome.downtimeMs) ms")
            await moved.stop()
        case .failure(let failure):
            Issue.record("\(failure)")
            await source.stop()
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func aDestinationThatCannotRunTheModelIsReportedInQEMUsWords() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        let source = try await Self.boot("cpu", Self.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256), in: root + "/cpu")
        let template = MigrationTemplate.build(vms: [try await Self.describe(source)], to: inventory, hostType: Self.bigType)
        guard var plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        // A host whose QEMU cannot provide the model (AVX-512 under tcg): `enforce` stops the destination.
        plan.cpuModel = "Skylake-Server"
        let executor = MigrationExecutor(.init(runRoot: root + "/dst"), connectAgent: AgentChannelConnection.connector)
        guard case .failure(.destinationDidNotStart(_, let reason)) =
                await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: template.policy) else {
            Issue.record("expected destinationDidNotStart")
            await source.stop()
            return
        }
        #expect(reason.contains("avx512"), "\(reason)")  // QEMU names the features it cannot provide
        #expect(try await source.qmp.queryStatus().running)
        await source.stop()
    }

    @Test(.timeLimit(.minutes(5)))
    func aMoveThatDoesNotConvergeInTimeIsCancelledAndTheSourceRuns() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        let source = try await Self.boot("stuck", Self.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256, append: "sluice.dirty=64"),
                                         in: root + "/stuck")
        let link = HostType(name: "link-8m", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048,
                            migrationBandwidthBytesPerSecond: 8 << 20)
        let template = MigrationTemplate.build(vms: [try await Self.describe(source)], to: inventory, hostType: link)
        guard var plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        // Pre-copy alone against a guest that dirties faster than 8 MiB/s, with a short deadline.
        plan.convergence.strategy = .precopy
        plan.convergence.predictedSeconds = 1
        var configuration = MigrationExecutor.Configuration(runRoot: root + "/dst")
        configuration.deadlineFactor = 1
        configuration.deadlineSlack = .seconds(5)
        let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
        guard case .failure(.noConvergence(_, let afterMs, _, let remaining)) =
                await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: template.policy) else {
            Issue.record("expected noConvergence")
            await source.stop()
            return
        }
        #expect(afterMs >= 6_000 && remaining > 0)
        #expect(try await source.qmp.queryStatus().running)
        let migration = try await source.qmp.queryMigrate()
        #expect(migration.status == .cancelled)
        await source.stop()
    }

    @Test(.timeLimit(.minutes(5)))
    func anAgentSilentAfterCutOverStopsTheDestinationAndResumesTheSource() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await Self.inventory(of: Self.bigType, in: root + "/probe")
        let source = try await Self.boot("mute", Self.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256), in: root + "/mute")
        let description = try await Self.describe(source)
        let template = MigrationTemplate.build(vms: [description], to: inventory, hostType: Self.bigType)
        guard let plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        // The destination's agent never answers (its socket is not reached): the move must not be confirmed.
        let destinationRoot = root + "/dst"
        let connector: GuestAgentConnector = { path, timeout in
            if path.hasPrefix(destinationRoot) { throw AgentError.timeout(op: "waitUntilReady(\(path))", afterMs: 0) }
            return try await AgentChannelConnection.connect(socketPath: path, timeout: timeout)
        }
        var configuration = MigrationExecutor.Configuration(runRoot: destinationRoot)
        configuration.confirmTimeout = .seconds(3)
        let executor = MigrationExecutor(configuration, connectAgent: connector)
        guard case .failure(.notConfirmed(_, let reason)) =
                await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: template.policy) else {
            Issue.record("expected notConfirmed")
            await source.stop()
            return
        }
        #expect(reason.contains("did not confirm"), "\(reason)")
        // The source was paused after a completed pre-copy; it runs the guest again, the same boot.
        #expect(try await source.qmp.queryStatus().running)
        let agent = try await AgentChannelConnection.connect(socketPath: source.agentSocketPath, timeout: .seconds(30))
        let after = try await agent.report()
        await agent.close()
        #expect(after.bootID == description.report.bootID)  // the same boot as before the move
        await source.stop()
    }
}
