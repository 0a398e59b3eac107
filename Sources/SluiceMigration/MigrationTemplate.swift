// Path: Sources/SluiceMigration/MigrationTemplate.swift — migration templates: from what the agents in a
// set of guests report and what a target host type offers, the CPU model, the sizing (the type change),
// the devices and the migration parameters of each move, and a migratability proof per guest.

/// How a guest runs now: the QEMU shape its source was started with and what was hot-plugged since.
///
/// A destination must be started with the same shape (QEMU migrates device state, not configuration),
/// so `maxVCPUs` and `maxMemoryMiB` bound every type change that needs no restart.
public struct VMShape: Codable, Sendable, Equatable {
    /// `-smp N`: vCPUs at boot.
    public var bootVCPUs: Int
    /// `-smp ...,maxcpus=N`: vCPU slots in all.
    public var maxVCPUs: Int
    /// `-m N`: boot memory, MiB.
    public var bootMemoryMiB: Int
    /// `-m ...,slots=N`: DIMM slots (0: no memory hot-plug).
    public var memorySlots: Int
    /// `-m ...,maxmem=N`: boot memory plus every DIMM, MiB.
    public var maxMemoryMiB: Int
    /// vCPUs hot-added since boot (so the destination is started with them).
    public var hotAddedVCPUs: Int
    /// DIMMs hot-added since boot, MiB each, in the order they were added.
    public var dimmsMiB: [Int]

    public init(bootVCPUs: Int, maxVCPUs: Int, bootMemoryMiB: Int, memorySlots: Int = 0, maxMemoryMiB: Int? = nil,
                hotAddedVCPUs: Int = 0, dimmsMiB: [Int] = []) {
        precondition(bootVCPUs >= 1 && maxVCPUs >= bootVCPUs, "vCPUs: boot \(bootVCPUs), max \(maxVCPUs)")
        precondition(bootMemoryMiB > 0 && memorySlots >= 0)
        self.bootVCPUs = bootVCPUs
        self.maxVCPUs = maxVCPUs
        self.bootMemoryMiB = bootMemoryMiB
        self.memorySlots = memorySlots
        self.maxMemoryMiB = maxMemoryMiB ?? bootMemoryMiB
        self.hotAddedVCPUs = hotAddedVCPUs
        self.dimmsMiB = dimmsMiB
        precondition(self.maxMemoryMiB >= bootMemoryMiB + dimmsMiB.reduce(0, +), "maxmem below boot memory + DIMMs")
        precondition(bootVCPUs + hotAddedVCPUs <= maxVCPUs && dimmsMiB.count <= memorySlots)
    }

    public var vcpus: Int { bootVCPUs + hotAddedVCPUs }
    public var memoryMiB: Int { bootMemoryMiB + dimmsMiB.reduce(0, +) }
}

/// A guest to move: its name, its agent's report, its CPU model and shape on the source.
public struct VMDescription: Codable, Sendable, Equatable {
    public var name: String
    public var report: AgentReport
    /// The source's `-cpu` model.
    public var cpuModel: String
    public var shape: VMShape
    /// QEMU device drivers the guest has (`virtio-serial-pci`, `virtio-net-pci`, ...): the destination
    /// is started with the same ones.
    public var devices: [String]
    /// Dirty rate the host measured (QMP `calc-dirty-rate`), bytes/s; nil when not measured.
    public var hostDirtyBytesPerSecond: UInt64?

    public init(name: String, report: AgentReport, cpuModel: String, shape: VMShape, devices: [String],
                hostDirtyBytesPerSecond: UInt64? = nil) {
        self.name = name
        self.report = report
        self.cpuModel = cpuModel
        self.shape = shape
        self.devices = devices
        self.hostDirtyBytesPerSecond = hostDirtyBytesPerSecond
    }

    /// The dirty rate the template plans for: the larger of the host's measurement and the agent's.
    public var dirtyBytesPerSecond: UInt64 {
        // The agent's figure is the guest's: clamped, never trusted to be finite or in range.
        let pages = report.dirtiedPagesPerSecond
        let agent = pages.isFinite && pages > 0 ? UInt64(min(pages * 4096, Double(UInt64.max >> 1))) : 0
        return max(agent, hostDirtyBytesPerSecond ?? 0)
    }
}

/// The size a guest should have after the move (the type change); nil fields keep the current size.
public struct VMType: Codable, Sendable, Equatable {
    public var name: String
    public var vcpus: Int?
    public var memoryMiB: Int?

    public init(name: String, vcpus: Int? = nil, memoryMiB: Int? = nil) {
        precondition(vcpus.map { $0 >= 1 } ?? true && memoryMiB.map { $0 > 0 } ?? true)
        self.name = name
        self.vcpus = vcpus
        self.memoryMiB = memoryMiB
    }
}

/// How moves should converge: the operator's choices, which the template turns into QEMU parameters.
public struct MigrationPolicy: Codable, Sendable, Equatable {
    /// The longest pause of the guest at cut-over (QMP `downtime-limit`), ms.
    public var downtimeLimitMs: Int
    /// Pre-copy alone is planned while the dirty rate is at most this share of the bandwidth.
    public var precopyDirtyShareMax: Double
    /// Auto-converge may throttle the guest's vCPUs up to this share (QMP `max-cpu-throttle` / 100).
    public var maxCPUThrottle: Double
    /// Post-copy is allowed when auto-converge would need more throttle than `maxCPUThrottle`.
    public var allowPostcopy: Bool
    /// A move predicted to take longer than this is refused by the proof.
    public var maxSeconds: Double
    /// The guest's memory block size for DIMM sizing when the agent reports none, MiB.
    public var defaultMemoryBlockMiB: Int

    public init(downtimeLimitMs: Int = 300, precopyDirtyShareMax: Double = 0.5, maxCPUThrottle: Double = 0.99,
                allowPostcopy: Bool = true, maxSeconds: Double = 600, defaultMemoryBlockMiB: Int = 128) {
        precondition(downtimeLimitMs > 0 && (0.0...1.0).contains(precopyDirtyShareMax))
        precondition((0.0...0.99).contains(maxCPUThrottle) && maxSeconds > 0 && defaultMemoryBlockMiB > 0)
        self.downtimeLimitMs = downtimeLimitMs
        self.precopyDirtyShareMax = precopyDirtyShareMax
        self.maxCPUThrottle = maxCPUThrottle
        self.allowPostcopy = allowPostcopy
        self.maxSeconds = maxSeconds
        self.defaultMemoryBlockMiB = defaultMemoryBlockMiB
    }
}

/// How a move converges.
public enum ConvergenceStrategy: String, Codable, Sendable, Equatable {
    /// Pre-copy alone: the guest dirties memory slower than it crosses.
    case precopy
    /// Pre-copy with QEMU's auto-converge: vCPUs are throttled until the dirty rate falls under the bandwidth.
    case autoConverge = "auto-converge"
    /// Post-copy: one pre-copy pass, then the guest runs on the destination and pulls the rest on demand.
    case postcopy
}

/// How one move converges: its QEMU migration parameters, the prediction they come from, and why.
public struct ConvergencePlan: Codable, Sendable, Equatable {
    /// `max-bandwidth`, bytes/s.
    public var maxBandwidthBytesPerSecond: UInt64
    /// `downtime-limit`, ms.
    public var downtimeLimitMs: Int
    public var strategy: ConvergenceStrategy
    /// `cpu-throttle-initial` and `max-cpu-throttle` (percent) for auto-converge.
    public var cpuThrottleInitialPercent: Int
    public var maxCPUThrottlePercent: Int
    /// The planned dirty rate, bytes/s, and the prediction it gives.
    public var dirtyBytesPerSecond: UInt64
    public var predictedSeconds: Double
    /// One sentence: why this strategy, and where the bandwidth figure comes from.
    public var reason: String
    /// The measured link the bandwidth came from (nil: the host type's configured rate).
    public var link: LinkBandwidth?

    /// The `migrate-set-parameters` arguments of this plan (capabilities follow `strategy`). The bandwidth
    /// caps post-copy too (`max-postcopy-bandwidth`; QEMU's default 0 is unlimited, so a post-copy move
    /// would otherwise take more of the link than planned), set on every move so no earlier value stays.
    public var qmpParameters: MigrationParameters {
        MigrationParameters(maxBandwidthBytesPerSecond: maxBandwidthBytesPerSecond, downtimeLimitMs: UInt64(downtimeLimitMs),
                            cpuThrottleInitial: strategy == .autoConverge ? cpuThrottleInitialPercent : nil,
                            maxPostcopyBandwidthBytesPerSecond: maxBandwidthBytesPerSecond,
                            maxCPUThrottle: maxCPUThrottlePercent)
    }
}

/// What stops a guest from moving to a host, each saying what and by how much.
public enum MigrationBlocker: Error, Codable, Sendable, Equatable, Hashable, CustomStringConvertible {
    /// No CPU model the host offers covers the CPU flags the guest sees (cpuinfo names); `closest` is
    /// the offered model missing the fewest, and `missing` what it lacks.
    case cpuFeaturesMissing(closest: String, missing: [String])
    /// The guest's agent speaks another protocol version.
    case agentVersion(reported: Int, expected: Int)
    /// The target type needs more vCPUs or memory than the host type allows.
    case hostTooSmall(resource: String, wanted: Int, hostMax: Int)
    /// The target type exceeds the guest's slots (`maxcpus`, `maxmem`/`slots`): only a restart could do it.
    case beyondHotplugHeadroom(resource: String, wanted: Int, headroom: Int)
    /// The target type shrinks a resource (vCPU or memory unplug is not done live).
    case shrink(resource: String, from: Int, to: Int)
    /// The guest cannot online hot-added memory (its kernel reports no memory blocks).
    case noMemoryHotplugInGuest
    /// More memory does not split into whole memory blocks of the guest.
    case memoryNotBlockAligned(deltaMiB: Int, blockMiB: Int)
    /// The move would not finish within the policy's limit (or converge at all) with what is allowed.
    case wontConverge(dirtyBytesPerSecond: UInt64, bandwidthBytesPerSecond: UInt64, reason: String)
    /// The guest has no proof or plan in the template it was handed with.
    case notInTemplate
    /// The guest's name cannot name a run directory (letters, digits, '.', '_', '-'; 1...64 bytes).
    case invalidName
    /// The plan no longer fits the guest as it runs (`reason`): make a new template.
    case stalePlan(String)
    /// The guest uses a device (QEMU driver) that the host type does not offer.
    case deviceUnavailable(device: String)
    /// Offered models cover the guest's CPU flags, but none presents the guest's CPU vendor: moving would
    /// change the vendor under a running kernel. `covering` names the models of other vendors that would.
    case vendorMismatch(guestVendor: String, covering: [String])

    public var description: String {
        switch self {
        case .cpuFeaturesMissing(let closest, let missing):
            "no offered CPU model covers the guest's CPU flags: closest \(closest) lacks \(missing.joined(separator: ","))"
        case .agentVersion(let reported, let expected):
            "agent protocol version \(reported), host speaks \(expected)"
        case .hostTooSmall(let resource, let wanted, let hostMax):
            "\(resource): \(wanted) wanted, the host type allows \(hostMax)"
        case .beyondHotplugHeadroom(let resource, let wanted, let headroom):
            "\(resource): \(wanted) wanted, the guest was started with room for \(headroom) (a restart would be needed)"
        case .shrink(let resource, let from, let to):
            "\(resource): shrinking \(from) to \(to) is not done live"
        case .noMemoryHotplugInGuest:
            "the guest reports no memory blocks: it cannot online hot-added memory"
        case .memoryNotBlockAligned(let delta, let block):
            "\(delta) MiB more memory is not a whole number of the guest's \(block) MiB memory blocks"
        case .wontConverge(let dirty, let bandwidth, let reason):
            "dirty rate \(dirty) B/s against \(bandwidth) B/s: \(reason)"
        case .notInTemplate: "the guest has no proof or plan in this template"
        case .invalidName: "the guest's name may hold only letters, digits, '.', '_', '-' (1 to 64, not starting with '.')"
        case .stalePlan(let reason): "the plan is stale: \(reason)"
        case .deviceUnavailable(let device): "the guest uses device \(device), which the host type does not offer"
        case .vendorMismatch(let vendor, let covering):
            "no offered model of the guest's CPU vendor \(vendor) covers its flags (\(covering.joined(separator: ",")) would, but change the vendor)"
        }
    }
}

/// Whether one guest can move to one host, with every reason it cannot. A move is started only when
/// `blockers` is empty.
public struct MigratabilityProof: Codable, Sendable, Equatable {
    public var vm: String
    public var hostType: String
    public var blockers: [MigrationBlocker]
    public var canMove: Bool { blockers.isEmpty }
}

/// One guest's move in a template: how to start its destination and how to reach the target type.
public struct VMMovePlan: Codable, Sendable, Equatable {
    public var vm: String
    /// The destination's `-cpu` model, started with `enforce` so a host that cannot provide it fails
    /// to start instead of running the guest on less.
    public var cpuModel: String
    /// The shape to start the destination with: the source's, hot-plugged vCPUs and DIMMs included.
    public var destinationShape: VMShape
    public var devices: [String]
    /// After cut-over: vCPUs and DIMMs (MiB each) to hot-add to reach the target type.
    public var addVCPUs: Int
    public var addDIMMsMiB: [Int]
    public var convergence: ConvergencePlan
    /// vCPUs and memory once the type change is done.
    public var targetVCPUs: Int
    public var targetMemoryMiB: Int
    /// cpuinfo flags of the guest that name no QEMU feature of this host's QEMU (not required of it).
    public var flagsWithoutQEMUFeature: [String]
}

/// A migration template: a set of guests moving to hosts of one type, changing to one VM type.
public struct MigrationTemplate: Codable, Sendable, Equatable {
    public var hostType: String
    public var vmType: VMType?
    public var policy: MigrationPolicy
    /// The narrowest offered CPU model covering every movable guest: the destinations' `-cpu`.
    public var cpuModel: String?
    /// The devices (QEMU drivers) the set's guests use, sorted: every destination offers them.
    public var devices: [String]
    /// The bandwidth the moves are planned with, bytes/s, and where it comes from (one sentence).
    public var bandwidthBytesPerSecond: UInt64
    public var bandwidthSource: String
    /// One plan per guest the proof lets move, in the order given.
    public var plans: [VMMovePlan]
    /// One proof per guest, in the order given (movable or not).
    public var proofs: [MigratabilityProof]

    /// Builds the template of `vms` moving to a host with `inventory` (restricted to its type), each
    /// changing to `vmType` when given.
    ///
    /// - The CPU model: the guest's CPU flags (every flag its kernel saw, not only those its workloads
    ///   require: a kernel keeps using what it found at boot) mapped to QEMU features, covered by the
    ///   offered, migration-safe model with the fewest features; one model for the whole set when one
    ///   covers all movable guests, so they can move among the type's hosts alike.
    /// - Sizing: the destination starts with the source's shape; the type change is hot-adds after cut-over,
    ///   within the source's `maxcpus`/`maxmem` and the host type's limits.
    /// - Convergence: pre-copy while the dirty rate is at most `precopyDirtyShareMax` of the bandwidth,
    ///   else auto-converge while the throttle it needs stays within `maxCPUThrottle`, else post-copy
    ///   when allowed, else the proof refuses the move.
    public static func build(vms: [VMDescription], to inventory: HostInventory, hostType: HostType,
                             vmType: VMType? = nil, policy: MigrationPolicy = MigrationPolicy()) -> MigrationTemplate {
        var proofs: [MigratabilityProof] = []
        var candidates: [(VMDescription, [String], [String], [CPUModelDefinition])] = []
        let universe = Set(inventory.hostCPUExpansion.enabledFeatures + inventory.hostCPUExpansion.disabledFeatures)
            .union(inventory.hostCPUFeatures)
        let offered = inventory.cpuModels.filter { $0.migrationSafe && $0.features != nil }
        let (bandwidth, bandwidthSource) = plannedBandwidth(inventory: inventory, hostType: hostType)
        var setDevices: Set<String> = []
        for vm in vms {
            var blockers: [MigrationBlocker] = []
            if vm.report.version != AgentReport.protocolVersion {
                blockers.append(.agentVersion(reported: vm.report.version, expected: AgentReport.protocolVersion))
            }
            let (needed, unknown) = neededFeatures(of: vm.report, universe: universe)
            let anyVendor = offered.filter { Set($0.features!).isSuperset(of: needed) }
            let vendor = guestVendor(vm, inventory: inventory)
            // The narrowest model must not change the vendor a running kernel saw at boot.
            let covering = vendor.map { v in anyVendor.filter { modelVendor($0) == v } } ?? anyVendor
            if covering.isEmpty, !anyVendor.isEmpty, let vendor {
                blockers.append(.vendorMismatch(guestVendor: vendor, covering: anyVendor.map(\.name).sorted()))
            } else if covering.isEmpty {
                let closest = offered.min {
                    let a = needed.subtracting($0.features!).count, b = needed.subtracting($1.features!).count
                    return a != b ? a < b : $0.name < $1.name
                }
                let missing = needed.subtracting(closest?.features ?? []).compactMap(cpuinfoFlag(forQEMUFeature:)).sorted()
                blockers.append(.cpuFeaturesMissing(closest: closest?.name ?? "none", missing: missing))
            }
            let devices = guestDevices(vm)
            if let offeredDevices = hostType.devices {
                for device in devices where !offeredDevices.contains(device) { blockers.append(.deviceUnavailable(device: device)) }
            }
            blockers += sizingBlockers(vm, vmType: vmType, hostType: hostType, policy: policy)
            let parameters = convergence(vm, bandwidth: bandwidth, source: bandwidthSource, link: inventory.link, policy: policy)
            if case .failure(let blocker) = parameters { blockers.append(blocker) }
            proofs.append(MigratabilityProof(vm: vm.name, hostType: hostType.name, blockers: blockers))
            if blockers.isEmpty {
                candidates.append((vm, needed.sorted(), unknown, covering))
                setDevices.formUnion(devices)
            }
        }
        // One model for the set when one covers every movable guest: the narrowest of those.
        let common = candidates.isEmpty ? [] : offered.filter { model in
            candidates.allSatisfy { candidate in candidate.3.contains { $0.name == model.name } }
        }
        let setModel = narrowest(common)
        var plans: [VMMovePlan] = []
        for (vm, _, unknown, covering) in candidates {
            let model = setModel ?? narrowest(covering)!
            guard case .success(let parameters) = convergence(vm, bandwidth: bandwidth, source: bandwidthSource,
                                                              link: inventory.link, policy: policy) else {
                preconditionFailure("a movable guest has converging parameters")
            }
            let targetVCPUs = vmType?.vcpus ?? vm.shape.vcpus
            let targetMemory = vmType?.memoryMiB ?? vm.shape.memoryMiB
            let delta = targetMemory - vm.shape.memoryMiB
            plans.append(VMMovePlan(
                vm: vm.name, cpuModel: model.name, destinationShape: vm.shape, devices: guestDevices(vm),
                addVCPUs: targetVCPUs - vm.shape.vcpus, addDIMMsMiB: delta > 0 ? [delta] : [],
                convergence: parameters, targetVCPUs: targetVCPUs, targetMemoryMiB: targetMemory,
                flagsWithoutQEMUFeature: unknown))
        }
        return MigrationTemplate(hostType: hostType.name, vmType: vmType, policy: policy,
                                 cpuModel: setModel?.name, devices: setDevices.sorted(), bandwidthBytesPerSecond: bandwidth,
                                 bandwidthSource: bandwidthSource, plans: plans, proofs: proofs)
    }

    /// The bandwidth moves are planned with: the measured free bandwidth of the link toward the destination
    /// (`inventory.link`), at most the host type's configured migration rate; the configured rate alone
    /// when nothing was measured. The sentence says which.
    public static func plannedBandwidth(inventory: HostInventory, hostType: HostType) -> (UInt64, String) {
        let configured = hostType.migrationBandwidthBytesPerSecond
        guard let link = inventory.link else {
            return (configured, "configured \(formatRate(configured)) of host type \(hostType.name) (not measured)")
        }
        if link.freeBytesPerSecond > configured {
            return (configured, "\(link), capped at host type \(hostType.name)'s \(formatRate(configured))")
        }
        return (link.freeBytesPerSecond, "\(link)")
    }

    /// The QEMU device driver of each virtio device kind an agent reports (`AgentReport.devices`).
    public static let driverForVirtioKind: [String: String] = [
        "net": "virtio-net-pci", "block": "virtio-blk-pci", "console": "virtio-serial-pci", "rng": "virtio-rng-pci",
        "balloon": "virtio-balloon-pci", "scsi": "virtio-scsi-pci", "9p": "virtio-9p-pci",
        // Keyboard, mouse, tablet and host passthrough all report as virtio id 18: a host type offers the class.
        "input": "virtio-input",
        "vsock": "vhost-vsock-pci", "mem": "virtio-mem-pci", "fs": "vhost-user-fs-pci", "pmem": "virtio-pmem-pci",
    ]

    /// The devices (QEMU drivers) a guest uses, sorted: its source's (`VMDescription.devices`) and what its
    /// agent sees (kinds mapped by `driverForVirtioKind`; a kind with no driver is kept as the agent
    /// named it, so a host type cannot offer it by accident).
    public static func guestDevices(_ vm: VMDescription) -> [String] {
        var devices = Set(vm.devices)
        for kind in vm.report.devices { devices.insert(driverForVirtioKind[kind] ?? kind) }
        return devices.sorted()
    }

    /// The CPU vendor the guest's kernel saw: its agent's `cpuVendor`, else the vendor of its source's
    /// model (from the inventory's expansion, else by name); nil when unknown (no vendor check then).
    static func guestVendor(_ vm: VMDescription, inventory: HostInventory) -> String? {
        if let reported = vm.report.cpuVendor, !reported.isEmpty { return reported }
        if let model = inventory.cpuModels.first(where: { $0.name == vm.cpuModel }), let vendor = model.vendor, !vendor.isEmpty {
            return vendor
        }
        return cpuVendor(ofModelNamed: vm.cpuModel)
    }

    /// A model's vendor: from its static expansion, else by its name; nil when unknown (never chosen for a
    /// guest whose vendor is known).
    static func modelVendor(_ model: CPUModelDefinition) -> String? {
        if let vendor = model.vendor, !vendor.isEmpty { return vendor }
        return cpuVendor(ofModelNamed: model.name)
    }

    /// The vendor QEMU 7.2 gives a named model (its `vendor` property), for models not expanded: AMD for
    /// `qemu64`, `athlon`, `phenom`, `Opteron_*`, `EPYC*`, Hygon for `Dhyana`, Intel for QEMU's Intel
    /// models; nil for `max`, `host`, `base` (the host's vendor, or none) and names it does not know.
    public static func cpuVendor(ofModelNamed name: String) -> String? {
        let base = name.split(separator: "-v").first.map(String.init) ?? name
        if base == "qemu64" || base == "athlon" || base == "phenom" || base.hasPrefix("Opteron") || base.hasPrefix("EPYC") {
            return "AuthenticAMD"
        }
        if base.hasPrefix("Dhyana") { return "HygonGenuine" }
        let intel = ["Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell", "Broadwell", "Skylake", "Cascadelake",
                     "Cooperlake", "Icelake", "SapphireRapids", "Snowridge", "Denverton", "KnightsMill", "Conroe", "Penryn",
                     "core2duo", "coreduo", "kvm64", "kvm32", "qemu32", "n270", "pentium", "486"]
        return intel.contains(where: { base.hasPrefix($0) }) ? "GenuineIntel" : nil
    }

    /// The QEMU features the guest's CPU flags need (within `universe`, the feature names this QEMU
    /// knows), and the cpuinfo flags that name none (reported, not required).
    static func neededFeatures(of report: AgentReport, universe: Set<String>) -> (Set<String>, [String]) {
        var needed: Set<String> = []
        var unknown: [String] = []
        for flag in Set(report.cpuFlags + report.requiredFlags) where !topologyFlags.contains(flag) {
            guard let feature = qemuFeature(forCPUInfoFlag: flag) else { continue }
            if universe.contains(feature) { needed.insert(feature) } else { unknown.append(flag) }
        }
        return (needed, unknown.sorted())
    }

    /// Flags QEMU sets from the `-smp` topology, not from the CPU model (`ht`: more than one logical CPU
    /// per package; `cmp_legacy`: its AMD twin). The destination has the source's shape, so the same
    /// topology gives the guest the same flags; no model lists them.
    static let topologyFlags: Set<String> = ["ht", "cmp_legacy"]

    /// The model with the fewest features (ties: by name), nil when none.
    static func narrowest(_ models: [CPUModelDefinition]) -> CPUModelDefinition? {
        models.min {
            let a = $0.features?.count ?? Int.max, b = $1.features?.count ?? Int.max
            return a != b ? a < b : $0.name < $1.name
        }
    }

    static func sizingBlockers(_ vm: VMDescription, vmType: VMType?, hostType: HostType,
                               policy: MigrationPolicy) -> [MigrationBlocker] {
        var blockers: [MigrationBlocker] = []
        let shape = vm.shape
        let vcpus = vmType?.vcpus ?? shape.vcpus
        let memory = vmType?.memoryMiB ?? shape.memoryMiB
        if vcpus < shape.vcpus { blockers.append(.shrink(resource: "vCPUs", from: shape.vcpus, to: vcpus)) }
        if memory < shape.memoryMiB { blockers.append(.shrink(resource: "memory MiB", from: shape.memoryMiB, to: memory)) }
        // The destination holds the whole shape (slots included), so the host type must allow its maxima.
        if max(vcpus, shape.maxVCPUs) > hostType.maxVCPUs {
            blockers.append(.hostTooSmall(resource: "vCPUs", wanted: max(vcpus, shape.maxVCPUs), hostMax: hostType.maxVCPUs))
        }
        if max(memory, shape.maxMemoryMiB) > hostType.maxMemoryMiB {
            blockers.append(.hostTooSmall(resource: "memory MiB", wanted: max(memory, shape.maxMemoryMiB),
                                          hostMax: hostType.maxMemoryMiB))
        }
        if vcpus > shape.maxVCPUs {
            blockers.append(.beyondHotplugHeadroom(resource: "vCPUs", wanted: vcpus, headroom: shape.maxVCPUs))
        }
        let delta = memory - shape.memoryMiB
        if delta > 0 {
            if memory > shape.maxMemoryMiB || shape.dimmsMiB.count >= shape.memorySlots {
                blockers.append(.beyondHotplugHeadroom(
                    resource: "memory MiB", wanted: memory,
                    headroom: shape.dimmsMiB.count >= shape.memorySlots ? shape.memoryMiB : shape.maxMemoryMiB))
            }
            if vm.report.memoryBlocksTotal == 0 || vm.report.memoryBlockBytes == 0 {
                blockers.append(.noMemoryHotplugInGuest)
            } else {
                let blockMiB = max(1, Int(vm.report.memoryBlockBytes >> 20))
                if delta % blockMiB != 0 { blockers.append(.memoryNotBlockAligned(deltaMiB: delta, blockMiB: blockMiB)) }
            }
        }
        return blockers
    }

    static func percent(_ share: Double) -> String { "\(Int((share * 100).rounded()))%" }

    /// The convergence plan for `vm` over `bandwidth` (bytes/s; `source` says where it comes from), or why
    /// none works.
    static func convergence(_ vm: VMDescription, bandwidth: UInt64, source: String, link: LinkBandwidth?,
                            policy: MigrationPolicy) -> Result<ConvergencePlan, MigrationBlocker> {
        let dirty = vm.dirtyBytesPerSecond
        let memory = Double(vm.shape.memoryMiB) * 1_048_576
        let b = Double(max(bandwidth, 1)), d = Double(dirty)
        func parameters(_ strategy: ConvergenceStrategy, _ seconds: Double, throttle: Double, _ reason: String) -> ConvergencePlan {
            ConvergencePlan(
                maxBandwidthBytesPerSecond: bandwidth, downtimeLimitMs: policy.downtimeLimitMs, strategy: strategy,
                cpuThrottleInitialPercent: strategy == .autoConverge ? max(20, min(99, Int((throttle * 100).rounded(.up)))) : 20,
                maxCPUThrottlePercent: Int((policy.maxCPUThrottle * 100).rounded(.down)),
                dirtyBytesPerSecond: dirty, predictedSeconds: seconds, reason: reason + "; bandwidth \(formatRate(bandwidth)): \(source)",
                link: link)
        }
        guard bandwidth > 0 else {
            return .failure(.wontConverge(dirtyBytesPerSecond: dirty, bandwidthBytesPerSecond: 0, reason: "no migration bandwidth (\(source))"))
        }
        if d <= policy.precopyDirtyShareMax * b {
            // Geometric rounds: memory/b, then what was dirtied meanwhile, ... ≈ memory / (b - d).
            let seconds = memory / (b - d)
            if seconds <= policy.maxSeconds {
                return .success(parameters(.precopy, seconds, throttle: 0, "dirty rate \(percent(d / b)) of the bandwidth: pre-copy converges"))
            }
            return .failure(.wontConverge(dirtyBytesPerSecond: dirty, bandwidthBytesPerSecond: bandwidth,
                                          reason: "pre-copy needs \(Int(seconds.rounded(.up))) s, the policy allows \(Int(policy.maxSeconds)) s"))
        }
        // Auto-converge slows the vCPUs (and so the dirty rate, roughly in proportion) until it fits.
        let throttle = 1 - policy.precopyDirtyShareMax * b / d
        if throttle <= policy.maxCPUThrottle {
            let seconds = memory / (b - d * (1 - throttle)) + 2  // QEMU raises the throttle every ~1 s of rounds
            if seconds <= policy.maxSeconds {
                return .success(parameters(.autoConverge, seconds, throttle: throttle, "dirty rate \(percent(d / b)) of the bandwidth: auto-converge with about \(percent(throttle)) vCPU throttle"))
            }
        }
        if policy.allowPostcopy {
            // One full pass, then cut-over; the rest is pulled at most at the bandwidth.
            let seconds = 2 * memory / b
            if seconds <= policy.maxSeconds {
                return .success(parameters(.postcopy, seconds, throttle: 0, "dirty rate \(percent(d / b)) of the bandwidth needs more than \(percent(policy.maxCPUThrottle)) throttle: post-copy after one pass"))
            }
        }
        return .failure(.wontConverge(dirtyBytesPerSecond: dirty, bandwidthBytesPerSecond: bandwidth,
                                      reason: policy.allowPostcopy ? "even post-copy exceeds the policy's time"
                                          : "auto-converge would need more throttle than allowed, post-copy is not allowed"))
    }
}
