// Path: Tests/SluiceMigrationTests/MigrationTemplateTests.swift — templates and migratability proofs from
// agent reports and a host inventory: the narrowest CPU model, the type change within the guest's slots,
// the convergence strategy, and every blocker that refuses a move before it starts.
import SluiceMigration
import Testing

@Suite struct MigrationTemplateTests {
    // Feature sets shaped like QEMU 7.2's static expansions (QEMU names), cut down.
    static let qemu64 = ["apic", "cx16", "cx8", "fpu", "fxsr", "lahf-lm", "lm", "mmx", "nx", "pni", "sse", "sse2", "syscall"]
    static let nehalem = qemu64 + ["popcnt", "sse4.1", "sse4.2", "ssse3"]
    static let westmere = nehalem + ["aes", "pclmulqdq"]
    static let maxModel = westmere + ["avx", "avx2", "xsave"]

    static func inventory(hostModel: String, features: [String], models: [(String, [String], Bool)]) -> HostInventory {
        let expansion = CPUModelExpansion(modelName: hostModel, enabledFeatures: features,
                                          disabledFeatures: Self.maxModel.filter { !features.contains($0) }, otherProperties: [:])
        let definitions = models.map { CPUModelDefinition(name: $0.0, migrationSafe: $0.2, features: $0.1.sorted()) }
        return HostInventory(
            qemuVersion: QEMUVersion(major: 7, minor: 2, micro: 0), hostType: nil, hostCPUModel: hostModel,
            hostCPUFeatures: features.sorted(), hostCPUExpansion: expansion, cpuModels: definitions,
            allCPUModels: definitions, memory: MemorySizeSummary(baseMemoryBytes: 64 << 20, pluggedMemoryBytes: 0),
            hotpluggableCPUs: [])
    }

    /// A host type capped at Westmere (models up to it offered) and one capped at Nehalem.
    static let westmereHost = inventory(hostModel: "Westmere", features: westmere, models: [
        ("qemu64", qemu64, true), ("Nehalem", nehalem, true), ("Westmere", westmere, true)])
    static let nehalemHost = inventory(hostModel: "Nehalem", features: nehalem, models: [
        ("qemu64", qemu64, true), ("Nehalem", nehalem, true)])
    static let bigType = HostType(name: "big", cpuModel: "Westmere", maxVCPUs: 8, maxMemoryMiB: 4096,
                                  migrationBandwidthBytesPerSecond: 100 << 20)
    static let oldType = HostType(name: "old", cpuModel: "Nehalem", maxVCPUs: 2, maxMemoryMiB: 1024,
                                  migrationBandwidthBytesPerSecond: 100 << 20)

    /// cpuinfo flags of a guest seeing `features` (as Linux names them), plus kernel-made ones.
    static func report(features: [String], requires: [String] = [], dirtyPages: Double = 0, blockMiB: UInt64 = 128,
                       version: Int = AgentReport.protocolVersion) -> AgentReport {
        let flags = features.compactMap(cpuinfoFlag(forQEMUFeature:)) + ["rep_good", "nopl", "cpuid", "hypervisor_lookalike"]
        return AgentReport(
            version: version, bootID: "b", uptimeSeconds: 10, cpuModelName: "QEMU", cpuFlags: flags.sorted(),
            requiredFlags: requires, vcpusOnline: 1, vcpusPresent: 1, memoryTotalKiB: 250_000,
            memoryBlocksOnline: blockMiB == 0 ? 0 : 2, memoryBlocksTotal: blockMiB == 0 ? 0 : 2,
            memoryBlockBytes: blockMiB << 20, devices: ["console"], dirtiedPagesPerSecond: dirtyPages, workloadCounter: 1)
    }

    static let roomyShape = VMShape(bootVCPUs: 1, maxVCPUs: 2, bootMemoryMiB: 256, memorySlots: 2, maxMemoryMiB: 1024)

    static func vm(_ name: String, _ features: [String], shape: VMShape = roomyShape, dirtyPages: Double = 0,
                   blockMiB: UInt64 = 128) -> VMDescription {
        VMDescription(name: name, report: report(features: features, dirtyPages: dirtyPages, blockMiB: blockMiB),
                      cpuModel: "whatever", shape: shape, devices: ["virtio-serial-pci"])
    }

    @Test func theNarrowestModelCoveringEveryGuestIsChosenForTheSet() {
        let template = MigrationTemplate.build(vms: [Self.vm("a", Self.nehalem), Self.vm("b", Self.qemu64)],
                                               to: Self.westmereHost, hostType: Self.bigType)
        #expect(template.proofs.allSatisfy { $0.canMove })
        #expect(template.cpuModel == "Nehalem")
        #expect(template.plans.map(\.cpuModel) == ["Nehalem", "Nehalem"])
        // Kernel-made flags need nothing; a flag QEMU does not know is reported, not required.
        #expect(template.plans[0].flagsWithoutQEMUFeature == ["hypervisor_lookalike"])
    }

    @Test func aGuestNeedingMoreThanTheHostOffersIsRefusedWithWhatIsMissing() {
        let template = MigrationTemplate.build(vms: [Self.vm("aes-user", Self.westmere), Self.vm("plain", Self.qemu64)],
                                               to: Self.nehalemHost, hostType: Self.oldType)
        #expect(template.proofs[0].blockers == [.cpuFeaturesMissing(closest: "Nehalem", missing: ["aes", "pclmulqdq"])])
        #expect(template.proofs[1].canMove)
        #expect(template.plans.map(\.vm) == ["plain"])  // the refused guest gets no plan: it is not started
        #expect(template.cpuModel == "qemu64")
    }

    @Test func aModelThatIsNotMigrationSafeIsNeverChosen() {
        // `max` covers everything but means something else on every host: a guest using AVX has no
        // migration-safe model here, so it is refused rather than moved onto `max`.
        let host = Self.inventory(hostModel: "max", features: Self.maxModel, models: [
            ("Westmere", Self.westmere, true), ("max", Self.maxModel, false)])
        let template = MigrationTemplate.build(vms: [Self.vm("avx", Self.maxModel)], to: host, hostType: Self.bigType)
        #expect(template.proofs[0].blockers == [.cpuFeaturesMissing(closest: "Westmere", missing: ["avx", "avx2", "xsave"])])
    }

    @Test func theTypeChangeIsHotAddsWithinTheGuestsSlots() {
        let small = Self.vm("small", Self.qemu64)
        let template = MigrationTemplate.build(vms: [small], to: Self.westmereHost, hostType: Self.bigType,
                                               vmType: VMType(name: "2x512", vcpus: 2, memoryMiB: 512))
        let plan = template.plans[0]
        #expect(plan.destinationShape == small.shape)  // started as the source was
        #expect(plan.addVCPUs == 1)
        #expect(plan.addDIMMsMiB == [256])
        #expect(plan.targetVCPUs == 2 && plan.targetMemoryMiB == 512)
    }

    @Test func typeChangesThatCannotBeDoneLiveAreRefused() {
        let fixed = Self.vm("fixed", Self.qemu64, shape: VMShape(bootVCPUs: 1, maxVCPUs: 1, bootMemoryMiB: 256))
        let beyond = MigrationTemplate.build(vms: [fixed], to: Self.westmereHost, hostType: Self.bigType,
                                             vmType: VMType(name: "2x512", vcpus: 2, memoryMiB: 512))
        #expect(beyond.proofs[0].blockers == [
            .beyondHotplugHeadroom(resource: "vCPUs", wanted: 2, headroom: 1),
            .beyondHotplugHeadroom(resource: "memory MiB", wanted: 512, headroom: 256)])

        let shrink = MigrationTemplate.build(vms: [Self.vm("s", Self.qemu64)], to: Self.westmereHost, hostType: Self.bigType,
                                             vmType: VMType(name: "tiny", memoryMiB: 128))
        #expect(shrink.proofs[0].blockers == [.shrink(resource: "memory MiB", from: 256, to: 128)])

        let tooBig = MigrationTemplate.build(
            vms: [Self.vm("t", Self.qemu64, shape: VMShape(bootVCPUs: 1, maxVCPUs: 4, bootMemoryMiB: 256, memorySlots: 2, maxMemoryMiB: 2048))],
            to: Self.nehalemHost, hostType: Self.oldType)
        #expect(tooBig.proofs[0].blockers == [.hostTooSmall(resource: "vCPUs", wanted: 4, hostMax: 2),
                                              .hostTooSmall(resource: "memory MiB", wanted: 2048, hostMax: 1024)])

        let noBlocks = MigrationTemplate.build(vms: [Self.vm("n", Self.qemu64, blockMiB: 0)], to: Self.westmereHost,
                                               hostType: Self.bigType, vmType: VMType(name: "m", memoryMiB: 512))
        #expect(noBlocks.proofs[0].blockers == [.noMemoryHotplugInGuest])

        let odd = MigrationTemplate.build(vms: [Self.vm("o", Self.qemu64)], to: Self.westmereHost, hostType: Self.bigType,
                                          vmType: VMType(name: "odd", memoryMiB: 356))
        #expect(odd.proofs[0].blockers == [.memoryNotBlockAligned(deltaMiB: 100, blockMiB: 128)])
    }

    @Test func convergenceFollowsTheDirtyRate() {
        let bandwidth = Double(Self.bigType.migrationBandwidthBytesPerSecond)
        let pages = { (share: Double) in share * bandwidth / 4096 }
        let idle = MigrationTemplate.build(vms: [Self.vm("idle", Self.qemu64, dirtyPages: pages(0.1))],
                                           to: Self.westmereHost, hostType: Self.bigType)
        #expect(idle.plans[0].convergence.strategy == .precopy)
        #expect(idle.plans[0].convergence.maxBandwidthBytesPerSecond == 100 << 20)

        let busy = MigrationTemplate.build(vms: [Self.vm("busy", Self.qemu64, dirtyPages: pages(1.5))],
                                           to: Self.westmereHost, hostType: Self.bigType)
        #expect(busy.plans[0].convergence.strategy == .autoConverge)
        #expect(busy.plans[0].convergence.cpuThrottleInitialPercent == 67)  // 1 - 0.5 / 1.5

        let wild = Self.vm("wild", Self.qemu64, dirtyPages: pages(100))
        let post = MigrationTemplate.build(vms: [wild], to: Self.westmereHost, hostType: Self.bigType)
        #expect(post.plans[0].convergence.strategy == .postcopy)
        let refused = MigrationTemplate.build(vms: [wild], to: Self.westmereHost, hostType: Self.bigType,
                                              policy: MigrationPolicy(allowPostcopy: false))
        guard case .wontConverge = refused.proofs[0].blockers.first else {
            Issue.record("expected wontConverge, got \(refused.proofs[0].blockers)")
            return
        }
        #expect(refused.plans.isEmpty)
    }

    @Test func theHostsMeasurementCountsWhenItIsHigherThanTheAgents() {
        var guest = Self.vm("g", Self.qemu64, dirtyPages: 0)
        guest.hostDirtyBytesPerSecond = 80 << 20  // 80% of the bandwidth
        #expect(guest.dirtyBytesPerSecond == 80 << 20)
        let template = MigrationTemplate.build(vms: [guest], to: Self.westmereHost, hostType: Self.bigType)
        #expect(template.plans[0].convergence.strategy == .autoConverge)
    }

    @Test func anAgentOfAnotherVersionIsRefused() {
        var guest = Self.vm("old-agent", Self.qemu64)
        guest.report.version = 99
        let template = MigrationTemplate.build(vms: [guest], to: Self.westmereHost, hostType: Self.bigType)
        #expect(template.proofs[0].blockers == [.agentVersion(reported: 99, expected: AgentReport.protocolVersion)])
    }
}
