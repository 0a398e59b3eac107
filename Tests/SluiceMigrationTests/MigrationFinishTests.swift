// Path: Tests/SluiceMigrationTests/MigrationFinishTests.swift — real guests (tcg) for the last points of
// issue 13: a guest's device that the host type does not offer refuses the move before anything starts,
// and a real post-copy move run to completion through QMP, confirmed by the agent on the destination.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

@Suite(.serialized) struct MigrationFinishTests {
    typealias E = MigrationExecutorTests

    @Test(.timeLimit(.minutes(5)))
    func aDeviceTheHostTypeDoesNotOfferRefusesTheMoveBeforeAnythingStarts() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try E.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var spec = E.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256)
        spec.devices = ["virtio-rng-pci"]
        let source = try await E.boot("rng", spec, in: root + "/rng")
        let description = try await VMDescription.survey(source, connectAgent: AgentChannelConnection.connector, dirtyRateSeconds: 0)
        // The agent sees the rng device and the CPU's vendor; the source's spec names the driver.
        #expect(description.report.devices.contains("rng"), "\(description.report.devices)")
        #expect(description.report.cpuVendor == "GenuineIntel")
        #expect(description.devices == ["virtio-rng-pci", "virtio-serial-pci"])

        var noRNG = E.bigType
        noRNG.name = "no-rng"
        noRNG.devices = ["virtio-serial-pci", "virtio-net-pci", "virtio-blk-pci"]
        let inventory = try await E.inventory(of: noRNG, in: root + "/probe")
        let template = MigrationTemplate.build(vms: [description], to: inventory, hostType: noRNG)
        #expect(template.proofs[0].blockers == [.deviceUnavailable(device: "virtio-rng-pci")])
        #expect(template.plans.isEmpty)

        // A host type offering it gets a plan with the device; handing the executor that plan under the
        // refusing proof starts nothing.
        var withRNG = noRNG
        withRNG.name = "with-rng"
        withRNG.devices = noRNG.devices! + ["virtio-rng-pci"]
        let allowed = MigrationTemplate.build(vms: [description], to: inventory, hostType: withRNG)
        let plan = try #require(allowed.plans.first, "\(allowed.proofs)")
        #expect(plan.devices == ["virtio-rng-pci", "virtio-serial-pci"] && allowed.devices == plan.devices)
        let executor = MigrationExecutor(.init(runRoot: root + "/dst"), connectAgent: AgentChannelConnection.connector)
        guard case .failure(.refused(_, let blockers)) = await executor.migrate(source, plan: plan, proof: template.proofs[0],
                                                                                 policy: MigrationPolicy()) else {
            Issue.record("the executor did not refuse")
            await source.stop()
            return
        }
        #expect(blockers == [.deviceUnavailable(device: "virtio-rng-pci")])
        // A plan that does not cover a device of the guest's spec is stale (the proof never considered
        // it): refused, nothing started.
        var edited = plan
        edited.devices.removeAll { $0 == "virtio-rng-pci" }
        guard case .failure(.refused(_, let stale)) = await executor.migrate(source, plan: edited, proof: allowed.proofs[0],
                                                                              policy: MigrationPolicy()) else {
            Issue.record("the executor took a plan that does not cover the guest's devices")
            await source.stop()
            return
        }
        #expect(stale.first.map { "\($0)".contains("virtio-rng-pci") } == true)
        #expect(!FileManager.default.fileExists(atPath: root + "/dst"))
        #expect(try await source.qmp.queryStatus().running)
        await source.stop()
    }

    @Test(.timeLimit(.minutes(4)))
    func aDirtyingGuestMovesByPostcopyConfirmedOnTheDestination() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let image = try GuestImage.prepared()
        let root = try E.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let inventory = try await E.inventory(of: E.bigType, in: root + "/probe")
        // 64 MiB rewritten in a loop over a 32 MiB/s link, and a policy that allows little throttle: the
        // template picks post-copy (one pass, then the guest runs on the destination and pulls the rest).
        var spec = E.spec(image, cpu: "Nehalem", vcpus: 1, memoryMiB: 256, append: "sluice.dirty=64")
        spec.devices = ["virtio-rng-pci"]  // the destination carries the template's devices
        let source = try await E.boot("post", spec, in: root + "/post")
        let link = HostType(name: "link-32m", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048,
                            migrationBandwidthBytesPerSecond: 32 << 20)
        let description = try await VMDescription.survey(source, connectAgent: AgentChannelConnection.connector)
        let policy = MigrationPolicy(maxCPUThrottle: 0.2, allowPostcopy: true, maxSeconds: 90)
        let template = MigrationTemplate.build(vms: [description], to: inventory, hostType: link, policy: policy)
        guard let plan = template.plans.first else {
            Issue.record("no plan: \(template.proofs)")
            await source.stop()
            return
        }
        #expect(plan.convergence.strategy == .postcopy, "\(plan.convergence.reason); dirty \(description.dirtyBytesPerSecond) B/s")
        let monitor = LinkMonitor(.init(interface: "lo", configuredCapacityBytesPerSecond: link.migrationBandwidthBytesPerSecond))
        var configuration = MigrationExecutor.Configuration(runRoot: root + "/dst")
        configuration.deadlineSlack = .seconds(60)
        configuration.postcopyGrace = .seconds(30)
        configuration.linkMonitor = monitor
        let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
        switch await executor.migrate(source, plan: plan, proof: template.proofs[0], policy: policy) {
        case .success(let (outcome, moved)):
            #expect(outcome.strategy == .postcopy && outcome.postcopyStarted)
            #expect(outcome.after.bootID == outcome.before.bootID)
            #expect((outcome.after.workloadCounter ?? 0) > (outcome.before.workloadCounter ?? .max))
            #expect(outcome.after.devices.contains("rng"))
            #expect(moved.spec.devices == ["virtio-rng-pci"])
            #expect(source.process?.exitStatus != nil)
            #expect(monitor.observations.count == 1 && outcome.achievedBytesPerSecond > 0)
            // The plan's bandwidth caps post-copy too (max-postcopy-bandwidth), not only the first pass.
            #expect(outcome.achievedBytesPerSecond <= plan.convergence.maxBandwidthBytesPerSecond * 5 / 4,
                    "achieved \(formatRate(outcome.achievedBytesPerSecond))")
            print("post-copy: \(plan.convergence.reason); total \(outcome.totalTimeMs) ms, downtime \(outcome.downtimeMs) ms, "
                  + "\(outcome.transferredBytes >> 20) MiB, achieved \(formatRate(outcome.achievedBytesPerSecond)), wall \(outcome.wallTimeMs) ms")
            await moved.stop()
        case .failure(let failure):
            Issue.record("\(failure)")
            if case .postcopyLost(_, _, let destination) = failure { await destination?.stop() }
            await source.stop()
        }
    }
}
