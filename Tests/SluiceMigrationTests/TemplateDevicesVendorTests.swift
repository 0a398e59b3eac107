// Path: Tests/SluiceMigrationTests/TemplateDevicesVendorTests.swift — templates list the devices their guests
// use and refuse a guest whose device the host type does not offer; the narrowest model never changes the
// guest's CPU vendor.
import SluiceMigration
import Testing

@Suite struct TemplateDevicesVendorTests {
    typealias T = MigrationTemplateTests

    static func vm(_ name: String, agentDevices: [String], sourceDevices: [String] = ["virtio-serial-pci"],
                   vendor: String? = nil, cpuModel: String = "whatever", features: [String] = T.nehalem) -> VMDescription {
        var description = T.vm(name, features)
        description.report.devices = agentDevices
        description.report.cpuVendor = vendor
        description.devices = sourceDevices
        description.cpuModel = cpuModel
        return description
    }

    @Test func theTemplateListsTheDevicesItsGuestsUse() throws {
        let template = MigrationTemplate.build(
            vms: [Self.vm("a", agentDevices: ["console", "rng"], sourceDevices: ["virtio-serial-pci", "virtio-rng-pci"]),
                  Self.vm("b", agentDevices: ["console", "net"])],
            to: T.westmereHost, hostType: T.bigType)
        #expect(template.proofs.allSatisfy { $0.canMove })
        #expect(template.devices == ["virtio-net-pci", "virtio-rng-pci", "virtio-serial-pci"])
        #expect(template.plans[0].devices == ["virtio-rng-pci", "virtio-serial-pci"])
        #expect(template.plans[1].devices == ["virtio-net-pci", "virtio-serial-pci"])
    }

    @Test func aDeviceTheHostTypeDoesNotOfferBlocksWithItsName() {
        var type = T.bigType
        type.devices = ["virtio-serial-pci", "virtio-net-pci"]
        let template = MigrationTemplate.build(
            vms: [Self.vm("rng", agentDevices: ["console", "rng"]), Self.vm("plain", agentDevices: ["console"]),
                  Self.vm("odd", agentDevices: ["console", "virtio-42"])],
            to: T.westmereHost, hostType: type)
        #expect(template.proofs[0].blockers == [.deviceUnavailable(device: "virtio-rng-pci")])
        #expect(template.proofs[1].canMove)
        // A kind the host side cannot name stays as the agent said it: never offered by accident.
        #expect(template.proofs[2].blockers == [.deviceUnavailable(device: "virtio-42")])
        #expect(template.plans.map(\.vm) == ["plain"])
        #expect(template.devices == ["virtio-serial-pci"])
        #expect("\(MigrationBlocker.deviceUnavailable(device: "virtio-rng-pci"))".contains("virtio-rng-pci"))
        // No device list in the host type: devices are not restricted.
        type.devices = nil
        #expect(MigrationTemplate.build(vms: [Self.vm("rng", agentDevices: ["rng"])], to: T.westmereHost, hostType: type).proofs[0].canMove)
    }

    /// An inventory with Intel and AMD models: the AMD one the narrowest (fewest features).
    static let mixedHost: HostInventory = {
        var inventory = T.inventory(hostModel: "Westmere", features: T.westmere, models: [
            ("Opteron_G1", T.qemu64 + ["popcnt"], true), ("qemu64", T.qemu64, true), ("Nehalem", T.nehalem, true),
            ("Westmere", T.westmere, true)])
        for index in inventory.cpuModels.indices {
            let name = inventory.cpuModels[index].name
            inventory.cpuModels[index].vendor = name == "Opteron_G1" || name == "qemu64" ? "AuthenticAMD" : "GenuineIntel"
        }
        return inventory
    }()

    @Test func theNarrowestModelKeepsTheGuestsVendor() {
        // An Intel guest needing only qemu64's features: qemu64 (AMD) is narrower, but Nehalem keeps the vendor.
        let intel = MigrationTemplate.build(vms: [Self.vm("i", agentDevices: ["console"], vendor: "GenuineIntel", features: T.qemu64)],
                                            to: Self.mixedHost, hostType: T.bigType)
        #expect(intel.cpuModel == "Nehalem")
        // The same guest as AMD: qemu64.
        let amd = MigrationTemplate.build(vms: [Self.vm("a", agentDevices: ["console"], vendor: "AuthenticAMD", features: T.qemu64)],
                                          to: Self.mixedHost, hostType: T.bigType)
        #expect(amd.cpuModel == "qemu64")
        // No vendor reported: the source's model tells (qemu64 is AMD in QEMU 7.2).
        let bySource = MigrationTemplate.build(vms: [Self.vm("s", agentDevices: ["console"], cpuModel: "qemu64", features: T.qemu64)],
                                               to: Self.mixedHost, hostType: T.bigType)
        #expect(bySource.cpuModel == "qemu64")
        let byIntelSource = MigrationTemplate.build(vms: [Self.vm("s", agentDevices: ["console"], cpuModel: "Nehalem-v1", features: T.qemu64)],
                                                    to: Self.mixedHost, hostType: T.bigType)
        #expect(byIntelSource.cpuModel == "Nehalem")
        // A set of an Intel and an AMD guest: each keeps its vendor, so no one model for the set.
        let set = MigrationTemplate.build(vms: [Self.vm("i", agentDevices: [], vendor: "GenuineIntel", features: T.qemu64),
                                                Self.vm("a", agentDevices: [], vendor: "AuthenticAMD", features: T.qemu64)],
                                          to: Self.mixedHost, hostType: T.bigType)
        #expect(set.cpuModel == nil)
        #expect(set.plans.map(\.cpuModel) == ["Nehalem", "qemu64"])
    }

    @Test func noModelOfTheGuestsVendorIsAVendorMismatch() {
        // An AMD guest needing Nehalem's features: only Intel models cover them.
        let template = MigrationTemplate.build(vms: [Self.vm("a", agentDevices: [], vendor: "AuthenticAMD", features: T.nehalem)],
                                               to: Self.mixedHost, hostType: T.bigType)
        #expect(template.proofs[0].blockers == [.vendorMismatch(guestVendor: "AuthenticAMD", covering: ["Nehalem", "Westmere"])])
        #expect(template.plans.isEmpty)
        // Missing features stay a feature blocker, not a vendor one.
        let lacking = MigrationTemplate.build(vms: [Self.vm("a", agentDevices: [], vendor: "AuthenticAMD", features: T.maxModel)],
                                              to: Self.mixedHost, hostType: T.bigType)
        guard case .cpuFeaturesMissing = lacking.proofs[0].blockers.first else {
            Issue.record("expected cpuFeaturesMissing, got \(lacking.proofs[0].blockers)")
            return
        }
    }

    @Test func modelVendorsByName() {
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "qemu64") == "AuthenticAMD")
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "EPYC-Rome-v2") == "AuthenticAMD")
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "Opteron_G2") == "AuthenticAMD")
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "Nehalem-v1") == "GenuineIntel")
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "kvm64") == "GenuineIntel")
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "max") == nil)
        #expect(MigrationTemplate.cpuVendor(ofModelNamed: "whatever") == nil)
    }
}
