// Path: Tests/SluiceMigrationTests/HostInventoryTests.swift — the host inventory read through QMP from a
// real QEMU (tcg): CPU models with features, a host type standing for an older machine, vCPU and DIMM
// hot-plug slots; and the QEMU feature name ↔ /proc/cpuinfo flag mapping.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

@Suite(.serialized, .enabled(if: qemuTestsEnabled, "qemu-system-x86_64 not installed; `make deps` installs it"))
struct HostInventoryTests {
    @Test func listsQemu64NehalemAndMaxWithFeatures() async throws {
        try await QEMUTestSupport.withQEMU("inventory", cpu: "max") { qemu in
            let inventory = try await HostInventory.read(from: qemu.qmp)
            #expect(inventory.qemuVersion == qemu.qmp.greetingVersion)
            #expect(inventory.hostType == nil)
            #expect(inventory.hostCPUModel == "max")
            #expect(inventory.memory == MemorySizeSummary(baseMemoryBytes: 64 << 20, pluggedMemoryBytes: 0))
            #expect(inventory.hotpluggableCPUs.count == 1 && inventory.hotpluggableCPUs[0].isPlugged)

            let qemu64 = try #require(inventory.model(named: "qemu64"))
            let nehalem = try #require(inventory.model(named: "Nehalem"))
            let max = try #require(inventory.model(named: "max"))
            #expect(qemu64.migrationSafe && nehalem.migrationSafe && !max.migrationSafe)
            #expect(nehalem.aliasOf == "Nehalem-v1")
            // Vendors from the static expansions: qemu64 and (under tcg) max are AMD, Nehalem Intel.
            #expect(qemu64.vendor == "AuthenticAMD" && nehalem.vendor == "GenuineIntel" && max.vendor == "AuthenticAMD")
            let nehalemFeatures = Set(try #require(nehalem.features))
            #expect(nehalemFeatures.isSuperset(of: ["sse4.2", "sse4.1", "ssse3", "popcnt", "cx16", "lm", "nx"]))
            #expect(!nehalemFeatures.contains("pclmulqdq") && !nehalemFeatures.contains("avx"))
            #expect(Set(try #require(qemu64.features)).isSuperset(of: ["sse2", "lm", "pni"]))
            let maxFeatures = Set(try #require(max.features))
            #expect(maxFeatures == Set(inventory.hostCPUFeatures))
            #expect(maxFeatures.isSuperset(of: nehalemFeatures))
            #expect(maxFeatures.isSuperset(of: ["pclmulqdq", "aes", "avx", "avx2"]))
            // The full expansion spells features in all of QEMU's ways.
            #expect(inventory.hostCPUExpansion.modelName == "max")
            #expect(inventory.hostCPUExpansion.enabledFeatures.contains("sse4_1"))
            // Models tcg cannot run are not offered, but listed with why.
            #expect(inventory.model(named: "Skylake-Server") == nil)
            let skylake = try #require(inventory.allCPUModels.first { $0.name == "Skylake-Server" })
            #expect(skylake.unavailableFeatures.contains("avx512f"))
            #expect(inventory.missingFeatures(qemuFeatures: skylake.unavailableFeatures).contains("avx512f"))
            #expect(inventory.missingCPUInfoFlags(["sse4_2", "pclmulqdq", "rep_good", "avx512f"]) == ["avx512f"])

            // Every feature QEMU names maps to a cpuinfo flag and back (or to none, consistently).
            for feature in inventory.hostCPUExpansion.enabledFeatures + inventory.hostCPUExpansion.disabledFeatures {
                guard let flag = cpuinfoFlag(forQEMUFeature: feature) else { continue }
                #expect(!flag.contains("-") && !flag.contains("."), "\(feature) → \(flag)")
                if let back = qemuFeature(forCPUInfoFlag: flag) {
                    #expect(back == canonicalQEMUFeature(feature), "\(feature) → \(flag) → \(back)")
                }
            }
        }
    }

    @Test func aHostStandingForNehalemOffersOnlyModelsWithinIt() async throws {
        let nehalemHost = HostType(
            name: "old-nehalem", cpuModel: "Nehalem", maxVCPUs: 2, maxMemoryMiB: 512,
            migrationBandwidthBytesPerSecond: 100 << 20)
        try await QEMUTestSupport.withQEMU("nehalemhost", cpu: "Nehalem") { qemu in
            let inventory = try await HostInventory.read(from: qemu.qmp, hostType: nehalemHost)
            #expect(inventory.hostType == nehalemHost)
            #expect(inventory.hostCPUModel == "Nehalem")
            let names = Set(inventory.cpuModels.map(\.name))
            #expect(names.isSuperset(of: ["Nehalem", "Nehalem-v1", "Penryn", "Conroe", "kvm64"]))
            // qemu64 is AMD-flavoured (svm, sse4a...): not within Nehalem.
            #expect(!names.contains("max") && !names.contains("Westmere") && !names.contains("qemu64"))
            let host = Set(inventory.hostCPUFeatures)
            for model in inventory.cpuModels {
                #expect(Set(model.features ?? ["?"]).isSubset(of: host), "\(model.name)")
            }
            #expect(inventory.missingCPUInfoFlags(["sse4_2", "pclmulqdq", "aes"]) == ["aes", "pclmulqdq"])
            #expect(inventory.provides(qemuFeatures: ["sse4.2", "sse4_1", "popcnt"]))
        }
    }

    @Test func aHostTypeDecodesFromConfig() throws {
        let json = #"{"name":"small","cpuModel":"qemu64","maxVCPUs":1,"maxMemoryMiB":256,"migrationBandwidthBytesPerSecond":10485760}"#
        let type = try JSONDecoder().decode(HostType.self, from: Data(json.utf8))
        #expect(type == HostType(name: "small", cpuModel: "qemu64", maxVCPUs: 1, maxMemoryMiB: 256, migrationBandwidthBytesPerSecond: 10 << 20))
    }

    @Test func aVCPUHotAddedShowsInTheSlots() async throws {
        try await QEMUTestSupport.withQEMU("cpuhotplug", extra: ["-smp", "1,maxcpus=2"]) { qemu in
            let before = try await qemu.qmp.queryHotpluggableCPUs()
            #expect(before.count == 2)
            let free = try #require(before.first { !$0.isPlugged })
            #expect(free.type == "qemu64-x86_64-cpu")
            try await qemu.qmp.deviceAdd(arguments: free.deviceAddArguments(id: "vcpu1"))
            let after = try await qemu.qmp.queryHotpluggableCPUs()
            #expect(after.filter(\.isPlugged).count == 2)
            #expect(after.contains { $0.qomPath == "/machine/peripheral/vcpu1" })
            let inventory = try await HostInventory.read(from: qemu.qmp)
            #expect(inventory.freeCPUSlots.isEmpty)
        }
    }

    @Test func aDIMMHotAddedShowsInTheMemorySummary() async throws {
        try await QEMUTestSupport.withQEMU("memhotplug", memory: "64M,slots=2,maxmem=512M") { qemu in
            #expect(try await qemu.qmp.queryMemorySizeSummary() == MemorySizeSummary(baseMemoryBytes: 64 << 20, pluggedMemoryBytes: 0))
            try await qemu.qmp.addMemoryBackendRAM(id: "mem1", sizeBytes: 128 << 20)
            try await qemu.qmp.deviceAdd(driver: "pc-dimm", id: "dimm1", properties: ["memdev": "mem1"])
            let summary = try await qemu.qmp.queryMemorySizeSummary()
            #expect(summary == MemorySizeSummary(baseMemoryBytes: 64 << 20, pluggedMemoryBytes: 128 << 20))
            #expect(summary.totalBytes == 192 << 20)
        }
    }
}

@Suite struct CPUInfoFlagTests {
    @Test func mapsQEMUNamesToCPUInfoNames() {
        #expect(cpuinfoFlag(forQEMUFeature: "sse4.2") == "sse4_2")
        #expect(cpuinfoFlag(forQEMUFeature: "sse4-2") == "sse4_2")
        #expect(cpuinfoFlag(forQEMUFeature: "sse4_1") == "sse4_1")
        #expect(cpuinfoFlag(forQEMUFeature: "pclmulqdq") == "pclmulqdq")
        #expect(cpuinfoFlag(forQEMUFeature: "lahf-lm") == "lahf_lm")
        #expect(cpuinfoFlag(forQEMUFeature: "tsc-deadline") == "tsc_deadline_timer")
        #expect(cpuinfoFlag(forQEMUFeature: "xd") == "nx")
        #expect(cpuinfoFlag(forQEMUFeature: "ds") == "dts")
        #expect(cpuinfoFlag(forQEMUFeature: "avx512vnni") == "avx512_vnni")
        #expect(cpuinfoFlag(forQEMUFeature: "avx512-vpopcntdq") == "avx512_vpopcntdq")
        #expect(cpuinfoFlag(forQEMUFeature: "vmx-exit-load-efer") == nil)
        #expect(cpuinfoFlag(forQEMUFeature: "kvm-pv-eoi") == nil)
    }

    @Test func mapsCPUInfoNamesBack() {
        #expect(qemuFeature(forCPUInfoFlag: "sse4_2") == "sse4.2")
        #expect(qemuFeature(forCPUInfoFlag: "sse4_1") == "sse4.1")
        #expect(qemuFeature(forCPUInfoFlag: "lahf_lm") == "lahf-lm")
        #expect(qemuFeature(forCPUInfoFlag: "tsc_deadline_timer") == "tsc-deadline")
        #expect(qemuFeature(forCPUInfoFlag: "cr8_legacy") == "cr8legacy")
        #expect(qemuFeature(forCPUInfoFlag: "pni") == "pni")
        #expect(qemuFeature(forCPUInfoFlag: "rep_good") == nil)
        #expect(qemuFeature(forCPUInfoFlag: "constant_tsc") == nil)
    }
}
