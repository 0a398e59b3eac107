// Path: Sources/SluiceMigration/HostInventory.swift — what a host offers a guest, read through QMP from a
// running QEMU (CPU models and their features, memory, hot-pluggable vCPU slots), the `HostType` a host
// stands for (from config), and the mapping between QEMU's CPU feature names and the guest's
// /proc/cpuinfo flag names.

/// QEMU's version, from the QMP greeting or `query-version`.
public struct QEMUVersion: Codable, Sendable, Equatable, Hashable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var micro: Int
    /// The distribution's package string, e.g. "Debian 1:7.2+dfsg-7+deb12u18+b3"; empty when none.
    public var package: String

    public init(major: Int, minor: Int, micro: Int, package: String = "") {
        self.major = major
        self.minor = minor
        self.micro = micro
        self.package = package
    }

    public var description: String { "\(major).\(minor).\(micro)" }

    public static func < (a: QEMUVersion, b: QEMUVersion) -> Bool {
        (a.major, a.minor, a.micro) < (b.major, b.minor, b.micro)
    }
}

/// One CPU model as `query-cpu-definitions` lists it, plus its features when expanded.
public struct CPUModelDefinition: Codable, Sendable, Equatable, Hashable {
    /// The name `-cpu` takes, e.g. "Nehalem", "Nehalem-v1", "qemu64", "max".
    public var name: String
    /// The versioned model this name is an alias of ("Nehalem" → "Nehalem-v1"), nil when not an alias.
    public var aliasOf: String?
    /// Features the model needs that this QEMU with this accelerator cannot provide (QEMU names). A
    /// model with any is not runnable here: `-cpu MODEL,enforce` fails to start.
    public var unavailableFeatures: [String]
    /// The model's CPUID does not change across QEMU versions and hosts (false for `max` and `host`).
    public var migrationSafe: Bool
    /// The model is a static one (only `base` in QEMU 7.2).
    public var isStatic: Bool
    public var deprecated: Bool
    /// The model's CPU features (QEMU names, sorted): the boolean properties set in its static
    /// expansion (`query-cpu-model-expansion` type `static`). Nil when not expanded.
    public var features: [String]?
    /// The CPUID vendor the model presents ("GenuineIntel", "AuthenticAMD", ...): the `vendor` property of
    /// its static expansion. Nil when not expanded.
    public var vendor: String?

    public init(
        name: String, aliasOf: String? = nil, unavailableFeatures: [String] = [], migrationSafe: Bool,
        isStatic: Bool = false, deprecated: Bool = false, features: [String]? = nil, vendor: String? = nil
    ) {
        self.vendor = vendor
        self.name = name
        self.aliasOf = aliasOf
        self.unavailableFeatures = unavailableFeatures
        self.migrationSafe = migrationSafe
        self.isStatic = isStatic
        self.deprecated = deprecated
        self.features = features
    }

    /// True when `-cpu name,enforce` can start here: no unavailable features.
    public var isRunnable: Bool { unavailableFeatures.isEmpty }
}

/// The answer of `query-cpu-model-expansion`.
public struct CPUModelExpansion: Codable, Sendable, Equatable {
    public enum ExpansionType: String, Codable, Sendable {
        /// Expands into `base` plus every feature as a property: comparable across models.
        case `static`
        /// The model itself with every property (aliases of one feature included, e.g. `sse4.1`,
        /// `sse4-1`, `sse4_1`).
        case full
    }

    /// The model the expansion names ("base" for a static expansion, the model itself for full).
    public var modelName: String
    /// The boolean properties that are true, sorted: the CPU features (QEMU names).
    public var enabledFeatures: [String]
    /// The boolean properties that are false, sorted.
    public var disabledFeatures: [String]
    /// The other properties as QEMU sent them ("vendor": "GenuineIntel", "family": 6, ...).
    public var otherProperties: [String: QMPValue]

    public init(
        modelName: String, enabledFeatures: [String], disabledFeatures: [String], otherProperties: [String: QMPValue]
    ) {
        self.modelName = modelName
        self.enabledFeatures = enabledFeatures
        self.disabledFeatures = disabledFeatures
        self.otherProperties = otherProperties
    }

    /// Reads the `return` of `query-cpu-model-expansion`: `{"model": {"name": ..., "props": {...}}}`.
    public init(reply: QMPValue, command: String = "query-cpu-model-expansion") throws(QMPError) {
        guard let model = reply["model"], let name = model["name"]?.stringValue,
            let props = model["props"]?.objectValue
        else { throw .unexpectedReply(command: command, detail: "no model.name / model.props") }
        var enabled: [String] = []
        var disabled: [String] = []
        var other: [String: QMPValue] = [:]
        for (key, value) in props {
            switch value {
            case .bool(true): enabled.append(key)
            case .bool(false): disabled.append(key)
            default: other[key] = value
            }
        }
        self.init(
            modelName: name, enabledFeatures: enabled.sorted(), disabledFeatures: disabled.sorted(),
            otherProperties: other)
    }
}

/// One vCPU slot of `query-hotpluggable-cpus`: present (has a QOM path) or free for `device_add`.
public struct HotpluggableCPU: Codable, Sendable, Equatable, Hashable {
    /// The device type to `device_add` into this slot, e.g. "max-x86_64-cpu".
    public var type: String
    public var vcpusCount: Int
    /// The QOM path of the vCPU in this slot; nil for a free slot.
    public var qomPath: String?
    public var socketID: Int?
    public var coreID: Int?
    public var threadID: Int?
    public var nodeID: Int?

    public init(
        type: String, vcpusCount: Int = 1, qomPath: String? = nil, socketID: Int? = nil, coreID: Int? = nil,
        threadID: Int? = nil, nodeID: Int? = nil
    ) {
        self.type = type
        self.vcpusCount = vcpusCount
        self.qomPath = qomPath
        self.socketID = socketID
        self.coreID = coreID
        self.threadID = threadID
        self.nodeID = nodeID
    }

    public var isPlugged: Bool { qomPath != nil }

    /// The CPU model this slot's type names ("max-x86_64-cpu" → "max").
    public var cpuModel: String {
        let suffix = "-x86_64-cpu"
        return type.hasSuffix(suffix) ? String(type.dropLast(suffix.count)) : type
    }

    /// The `device_add` arguments that plug a vCPU into this slot (`id` names the new device).
    public func deviceAddArguments(id: String) -> [String: QMPValue] {
        var arguments: [String: QMPValue] = ["driver": .string(type), "id": .string(id)]
        if let socketID { arguments["socket-id"] = .int(Int64(socketID)) }
        if let coreID { arguments["core-id"] = .int(Int64(coreID)) }
        if let threadID { arguments["thread-id"] = .int(Int64(threadID)) }
        if let nodeID { arguments["node-id"] = .int(Int64(nodeID)) }
        return arguments
    }
}

/// `query-memory-size-summary`: memory the guest booted with and memory hot-plugged since (DIMMs).
public struct MemorySizeSummary: Codable, Sendable, Equatable {
    public var baseMemoryBytes: UInt64
    public var pluggedMemoryBytes: UInt64

    public init(baseMemoryBytes: UInt64, pluggedMemoryBytes: UInt64) {
        self.baseMemoryBytes = baseMemoryBytes
        self.pluggedMemoryBytes = pluggedMemoryBytes
    }

    public var totalBytes: UInt64 { baseMemoryBytes + pluggedMemoryBytes }
}

/// What a host of one type may offer its guests (from config). A host "standing for" an older machine
/// names an older `cpuModel`: its inventory then lists only models whose features are a subset.
public struct HostType: Codable, Sendable, Equatable, Hashable {
    /// The type's name in config and reports, e.g. "small-nehalem".
    public var name: String
    /// The most capable CPU model the host provides (`-cpu` name), e.g. "max", "Nehalem", "qemu64".
    public var cpuModel: String
    public var maxVCPUs: Int
    public var maxMemoryMiB: Int
    /// The bandwidth a migration to or from this host may use, bytes per second: the link's capacity when
    /// the kernel does not know its speed, and the ceiling of the measured free bandwidth (`LinkMonitor`).
    public var migrationBandwidthBytesPerSecond: UInt64
    /// The QEMU device drivers a host of this type offers its guests (`virtio-serial-pci`,
    /// `virtio-net-pci`, `virtio-rng-pci`, ...). A guest using a device not listed is refused
    /// (`MigrationBlocker.deviceUnavailable`). Nil: the type does not restrict devices (every device this
    /// host's QEMU has).
    public var devices: [String]?

    public init(name: String, cpuModel: String, maxVCPUs: Int, maxMemoryMiB: Int, migrationBandwidthBytesPerSecond: UInt64,
                devices: [String]? = nil) {
        self.devices = devices
        precondition(!name.isEmpty)
        precondition(!cpuModel.isEmpty)
        precondition(maxVCPUs > 0)
        precondition(maxMemoryMiB > 0)
        self.name = name
        self.cpuModel = cpuModel
        self.maxVCPUs = maxVCPUs
        self.maxMemoryMiB = maxMemoryMiB
        self.migrationBandwidthBytesPerSecond = migrationBandwidthBytesPerSecond
    }
}

/// A host's inventory, read through QMP from a QEMU running on it (`HostInventory.read`).
///
/// Contract: `cpuModels` holds only models that are runnable here (`-cpu NAME,enforce` starts) and,
/// when the host has a `hostType`, whose static features are a subset of `hostCPUFeatures`, the
/// features of the type's `cpuModel`. All feature names are QEMU's; `cpuinfoFlag(forQEMUFeature:)`
/// maps them to what a guest's /proc/cpuinfo says.
public struct HostInventory: Codable, Sendable, Equatable {
    public var qemuVersion: QEMUVersion
    /// The host type the inventory was restricted to; nil when it lists all QEMU can run here.
    public var hostType: HostType?
    /// The most capable model the host offers: `hostType.cpuModel`, else the model the queried QEMU runs
    /// (e.g. "max" under tcg).
    public var hostCPUModel: String
    /// The features of `hostCPUModel` (QEMU names, sorted), from its static expansion.
    public var hostCPUFeatures: [String]
    /// The full expansion of `hostCPUModel` (`query-cpu-model-expansion` type `full`): enabled features
    /// there include QEMU's alias spellings (`sse4.1`, `sse4-1`, `sse4_1`).
    public var hostCPUExpansion: CPUModelExpansion
    /// The models offered (runnable, features within `hostCPUFeatures`), each with `features`, by name.
    public var cpuModels: [CPUModelDefinition]
    /// Every model QEMU listed, runnable or not, without `features` (for reports of why not).
    public var allCPUModels: [CPUModelDefinition]
    /// Memory of the queried QEMU.
    public var memory: MemorySizeSummary
    /// vCPU slots of the queried QEMU (plugged and free).
    public var hotpluggableCPUs: [HotpluggableCPU]
    /// Free migration bandwidth, measured on the link toward the destination (`LinkMonitor`); nil when not
    /// measured (templates then use the host type's configured rate).
    public var link: LinkBandwidth?

    public init(
        qemuVersion: QEMUVersion, hostType: HostType?, hostCPUModel: String, hostCPUFeatures: [String],
        hostCPUExpansion: CPUModelExpansion, cpuModels: [CPUModelDefinition], allCPUModels: [CPUModelDefinition],
        memory: MemorySizeSummary, hotpluggableCPUs: [HotpluggableCPU], link: LinkBandwidth? = nil
    ) {
        self.link = link
        self.qemuVersion = qemuVersion
        self.hostType = hostType
        self.hostCPUModel = hostCPUModel
        self.hostCPUFeatures = hostCPUFeatures
        self.hostCPUExpansion = hostCPUExpansion
        self.cpuModels = cpuModels
        self.allCPUModels = allCPUModels
        self.memory = memory
        self.hotpluggableCPUs = hotpluggableCPUs
    }

    /// The offered model named `name` (an alias or a versioned name), nil when not offered.
    public func model(named name: String) -> CPUModelDefinition? {
        cpuModels.first { $0.name == name }
    }

    /// True when the host offers every one of `qemuFeatures` (QEMU names).
    public func provides(qemuFeatures: some Sequence<String>) -> Bool {
        missingFeatures(qemuFeatures: qemuFeatures).isEmpty
    }

    /// The `qemuFeatures` the host's CPU model lacks, sorted.
    public func missingFeatures(qemuFeatures: some Sequence<String>) -> [String] {
        let offered = Set(hostCPUFeatures)
        return Set(qemuFeatures.map(canonicalQEMUFeature)).subtracting(offered).sorted()
    }

    /// The guest's /proc/cpuinfo flags the host's CPU model lacks, sorted (cpuinfo names). Flags with
    /// no QEMU feature (kernel-synthesized ones such as `rep_good`) are ignored.
    public func missingCPUInfoFlags(_ flags: some Sequence<String>) -> [String] {
        let offered = Set(hostCPUFeatures)
        var missing: [String] = []
        for flag in flags {
            guard let feature = qemuFeature(forCPUInfoFlag: flag) else { continue }
            if !offered.contains(feature) { missing.append(flag) }
        }
        return Array(Set(missing)).sorted()
    }

    /// The free vCPU slots (not plugged).
    public var freeCPUSlots: [HotpluggableCPU] { hotpluggableCPUs.filter { !$0.isPlugged } }

    /// Reads the inventory from the QEMU behind `client`.
    ///
    /// - `hostType`: restrict to what that type offers (its `cpuModel` must be runnable here, else
    ///   `QMPError.unexpectedReply`); nil lists all QEMU can run here, with the running model as the host's.
    /// - Costs one `query-cpu-model-expansion` per runnable model (about 60 under tcg, a few ms each).
    public static func read(
        from client: QMPClient, hostType: HostType? = nil, timeout: Duration = .seconds(10)
    ) async throws(QMPError) -> HostInventory {
        let version = try await client.queryVersion(timeout: timeout)
        let definitions = try await client.queryCPUDefinitions(timeout: timeout)
        let memory = try await client.queryMemorySizeSummary(timeout: timeout)
        let slots = try await client.queryHotpluggableCPUs(timeout: timeout)
        let hostModel: String
        if let hostType {
            hostModel = hostType.cpuModel
        } else if let running = slots.first(where: { $0.isPlugged }) ?? slots.first {
            hostModel = running.cpuModel
        } else {
            hostModel = "max"
        }
        guard let hostDefinition = definitions.first(where: { $0.name == hostModel }) else {
            throw .unexpectedReply(command: "query-cpu-definitions", detail: "no CPU model \(hostModel)")
        }
        guard hostDefinition.isRunnable else {
            throw .unexpectedReply(
                command: "query-cpu-definitions",
                detail: "host model \(hostModel) not runnable: lacks \(hostDefinition.unavailableFeatures.joined(separator: ","))")
        }
        let hostStatic = try await client.queryCPUModelExpansion(type: .static, model: hostModel, timeout: timeout)
        let hostFull = try await client.queryCPUModelExpansion(type: .full, model: hostModel, timeout: timeout)
        let hostFeatures = Set(hostStatic.enabledFeatures)
        var offered: [CPUModelDefinition] = []
        for definition in definitions where definition.isRunnable {
            var expanded = definition
            if definition.name == hostModel {
                expanded.features = hostStatic.enabledFeatures
                expanded.vendor = hostStatic.otherProperties["vendor"]?.stringValue
            } else {
                let expansion = try await client.queryCPUModelExpansion(
                    type: .static, model: definition.name, timeout: timeout)
                expanded.features = expansion.enabledFeatures
                expanded.vendor = expansion.otherProperties["vendor"]?.stringValue
            }
            if hostType != nil, !Set(expanded.features ?? []).isSubset(of: hostFeatures) { continue }
            offered.append(expanded)
        }
        offered.sort { $0.name < $1.name }
        return HostInventory(
            qemuVersion: version, hostType: hostType, hostCPUModel: hostModel,
            hostCPUFeatures: hostStatic.enabledFeatures, hostCPUExpansion: hostFull, cpuModels: offered,
            allCPUModels: definitions.sorted { $0.name < $1.name }, memory: memory, hotpluggableCPUs: slots)
    }
}

// MARK: - QEMU feature names and /proc/cpuinfo flags

/// QEMU features whose /proc/cpuinfo flag is not the QEMU name with `-` and `.` turned into `_`.
/// From QEMU 7.2 `target/i386/cpu.c` (feature_word_info) against Linux `arch/x86/include/asm/cpufeatures.h`.
private let qemuToCPUInfoExceptions: [String: String] = [
    "ds": "dts",
    "tsc-deadline": "tsc_deadline_timer",
    "cr8legacy": "cr8_legacy",
    "pause-filter": "pausefilter",
    "tsx-ldtrk": "tsxldtrk",
    "stibp": "intel_stibp",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "xcrypt": "ace",
    "xcrypt-en": "ace_en",
    "xstore": "rng",
    "xstore-en": "rng_en",
    "invtsc": "nonstop_tsc",
]

/// QEMU's other spellings of one feature (aliases in the full expansion) and their canonical name.
private let qemuFeatureAliases: [String: String] = [
    "xd": "nx",
    "i64": "lm",
    "pclmuldq": "pclmulqdq",
    "ffxsr": "fxsr-opt",
    "sse4-1": "sse4.1",
    "sse4_1": "sse4.1",
    "sse4-2": "sse4.2",
    "sse4_2": "sse4.2",
]

private let cpuInfoToQEMUExceptions: [String: String] = {
    var inverse: [String: String] = [:]
    for (qemu, cpuinfo) in qemuToCPUInfoExceptions { inverse[cpuinfo] = qemu }
    inverse["sse4_1"] = "sse4.1"
    inverse["sse4_2"] = "sse4.2"
    return inverse
}()

/// QEMU features that are not CPUID flags a guest kernel lists: VMX capability MSR bits (`vmx-*`, the
/// kernel prints them on a separate "vmx flags" line), KVM paravirtual and Hyper-V enlightenments, and
/// bits of IA32_ARCH_CAPABILITIES.
private func qemuFeatureHasNoCPUInfoFlag(_ feature: String) -> Bool {
    feature.hasPrefix("vmx-") || feature.hasPrefix("kvm") || feature.hasPrefix("hv-")
        || feature.hasPrefix("intel-pt-") || feature.hasPrefix("sgx-") || feature == "svme-addr-chk"
        || ["ssb-no", "mds-no", "rdctl-no", "ibrs-all", "skip-l1dfl-vmentry", "pschange-mc-no", "taa-no",
            "tsx-ctrl", "sbdr-ssdp-no", "fbsdp-no", "psdp-no", "pbrsb-no", "rsba", "pcommit", "full-width-write",
            "legacy-cache", "check", "enforce", "pmu", "lmce", "l3-cache", "vmware-cpuid-freq", "cpuid-0xb",
            "fill-mtrr-mask", "host-cache-info", "migratable", "x-intel-pt-auto-level", "kvm-no-smi-migration",
            "amd-no-ssb", "host-phys-bits", "tcg-cpuid", "full-cpuid-auto-level", "cpuid-0xb", "xfd"]
            .contains(feature)
}

/// The canonical QEMU name of `feature`: one of QEMU's alias spellings mapped to the name the static
/// expansion uses (`sse4_1` → `sse4.1`, `xd` → `nx`, `kvm_pv_eoi` → `kvm-pv-eoi`).
public func canonicalQEMUFeature(_ feature: String) -> String {
    if let canonical = qemuFeatureAliases[feature] { return canonical }
    if feature.contains("_") { return feature.replacingUnderscores(with: "-") }
    return feature
}

/// The flag a Linux guest shows in /proc/cpuinfo for the QEMU CPU feature `feature`, nil when the
/// feature shows as no flag there (VMX capability bits, KVM/Hyper-V enlightenments, ARCH_CAPABILITIES bits).
///
/// The rule is QEMU's name with `-` and `.` turned into `_` (`sse4.2` → `sse4_2`, `lahf-lm` → `lahf_lm`,
/// `pclmulqdq` → `pclmulqdq`); the exceptions are a table from QEMU's and Linux's sources (`ds` → `dts`,
/// `tsc-deadline` → `tsc_deadline_timer`, `cr8legacy` → `cr8_legacy`, `avx512vnni` → `avx512_vnni`, ...).
/// QEMU's alias spellings are accepted (`sse4-2`, `sse4_2`, `xd`, `i64`). Inverse: `qemuFeature(forCPUInfoFlag:)`.
public func cpuinfoFlag(forQEMUFeature feature: String) -> String? {
    let canonical = canonicalQEMUFeature(feature)
    if qemuFeatureHasNoCPUInfoFlag(canonical) { return nil }
    if let flag = qemuToCPUInfoExceptions[canonical] { return flag }
    var flag = ""
    for c in canonical { flag.append(c == "-" || c == "." ? "_" : c) }
    return flag
}

/// The QEMU feature (canonical name) for the /proc/cpuinfo flag `flag`, nil for flags the kernel
/// synthesizes with no CPUID bit of their own that QEMU can set (`rep_good`, `nopl`, `cpuid`,
/// `constant_tsc`, `tsc_known_freq`, ...). Inverse of `cpuinfoFlag(forQEMUFeature:)`.
public func qemuFeature(forCPUInfoFlag flag: String) -> String? {
    if kernelSynthesizedCPUInfoFlags.contains(flag) { return nil }
    if let feature = cpuInfoToQEMUExceptions[flag] { return feature }
    return flag.replacingUnderscores(with: "-")
}

/// /proc/cpuinfo flags that Linux derives (from other bits, MSRs, errata or its own choices), which no
/// `-cpu` feature sets by that name. A guest listing them needs no feature from the host for them.
private let kernelSynthesizedCPUInfoFlags: Set<String> = [
    "rep_good", "nopl", "xtopology", "cpuid", "tsc_known_freq", "constant_tsc", "nonstop_tsc_s3", "art",
    "arch_perfmon", "pebs", "bts", "tsc_reliable", "extd_apicid", "aperfmperf", "eagerfpu", "pti", "ibrs",
    "ibpb", "ssbd", "ibrs_enhanced", "retpoline", "retpoline_amd", "kaiser", "fence_swapgs", "user_shstk",
    "vmmcall", "tpr_shadow", "vnmi", "flexpriority", "ept", "vpid", "ept_ad", "cpuid_fault", "epb",
    "cat_l3", "cdp_l3", "invpcid_single", "hw_pstate", "sme", "sev", "proc_feedback", "sev_es", "ibt",
    "split_lock_detect", "tsc_adjust_ignored", "flush_l1d", "arch_capabilities_ignored", "xsaves_ignored",
    "dtherm", "ida", "arat_ignored", "pln", "pts", "hwp", "hwp_notify", "hwp_act_window", "hwp_epp",
    "hwp_pkg_req", "amd_ppin", "vmsave_vmload",
    "v_vmsave_vmload", "v_spec_ctrl", "zero_fcs_fds", "rsb_ctxsw", "use_ibpb", "use_ibrs_fw",
    "spec_store_bypass_disable", "mba", "intel_ppin", "ssbd_ignored", "tme", "msr_ia32_feat_ctl",
]

extension String {
    fileprivate func replacingUnderscores(with replacement: Character) -> String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for c in self { out.append(c == "_" ? replacement : c) }
        return out
    }
}
