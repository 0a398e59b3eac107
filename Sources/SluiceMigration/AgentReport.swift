// Path: Sources/SluiceMigration/AgentReport.swift — what a migration agent inside a guest reports to its
// host over virtio-serial: the contract between the guest's agent (scripts/guest/agent.c) and the host.

/// One report of a migration agent: what the guest actually uses, read inside the guest.
///
/// The agent sends it as one JSON object per line (field names as below) on its virtio-serial port, in
/// answer to a request (docs/MIGRATION.md, "The agent's protocol"). Values are what the guest kernel says
/// at the moment of the report; nothing is cached by the agent.
public struct AgentReport: Codable, Sendable, Equatable {
    /// The protocol version the agent speaks (`AgentReport.protocolVersion` on the host side).
    public var version: Int
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot, so a move that restarted the guest shows.
    public var bootID: String
    /// `/proc/uptime`, seconds since the guest booted.
    public var uptimeSeconds: Double
    /// `model name` of the first processor in `/proc/cpuinfo`.
    public var cpuModelName: String
    /// `vendor_id` of the first processor in `/proc/cpuinfo` ("GenuineIntel", "AuthenticAMD"); nil from
    /// an agent that does not report it. A move never changes it (`MigrationBlocker.vendorMismatch`).
    public var cpuVendor: String?
    /// `flags` of the first processor in `/proc/cpuinfo`, as the guest kernel sees them.
    public var cpuFlags: [String]
    /// The CPU flags the guest's workloads declare they need (`/etc/sluice-agent/requires`, one per line),
    /// each also present in `cpuFlags`. A destination must provide every one of them.
    public var requiredFlags: [String]
    /// CPUs online (`/sys/devices/system/cpu/online`).
    public var vcpusOnline: Int
    /// CPUs present (`/sys/devices/system/cpu/present`): online plus hot-added but offline ones.
    public var vcpusPresent: Int
    /// `MemTotal` of `/proc/meminfo`, in KiB (memory online to the kernel).
    public var memoryTotalKiB: UInt64
    /// Memory blocks under `/sys/devices/system/memory` that are online, and all of them.
    public var memoryBlocksOnline: Int
    public var memoryBlocksTotal: Int
    /// `/sys/devices/system/memory/block_size_bytes`, 0 when the guest has no memory hot-plug.
    public var memoryBlockBytes: UInt64
    /// The guest's virtio devices by kind ("net", "block", "console", "balloon", ...), sorted.
    public var devices: [String]
    /// Pages the guest dirtied per second (`nr_dirtied` of `/proc/vmstat`) over the agent's last interval.
    /// It counts page-cache dirtying only; the host measures anonymous memory with QMP `calc-dirty-rate`.
    public var dirtiedPagesPerSecond: Double
    /// The test workload's counter (`/run/sluice-counter`), if the guest runs it: it must keep rising
    /// across a move, with the same `bootID`.
    public var workloadCounter: UInt64?

    /// The version this host speaks; an agent that reports another is refused.
    public static let protocolVersion = 1

    public init(
        version: Int = AgentReport.protocolVersion, bootID: String, uptimeSeconds: Double, cpuModelName: String,
        cpuFlags: [String], requiredFlags: [String], vcpusOnline: Int, vcpusPresent: Int, memoryTotalKiB: UInt64,
        memoryBlocksOnline: Int, memoryBlocksTotal: Int, memoryBlockBytes: UInt64, devices: [String],
        dirtiedPagesPerSecond: Double, workloadCounter: UInt64?, cpuVendor: String? = nil
    ) {
        self.cpuVendor = cpuVendor
        self.version = version
        self.bootID = bootID
        self.uptimeSeconds = uptimeSeconds
        self.cpuModelName = cpuModelName
        self.cpuFlags = cpuFlags
        self.requiredFlags = requiredFlags
        self.vcpusOnline = vcpusOnline
        self.vcpusPresent = vcpusPresent
        self.memoryTotalKiB = memoryTotalKiB
        self.memoryBlocksOnline = memoryBlocksOnline
        self.memoryBlocksTotal = memoryBlocksTotal
        self.memoryBlockBytes = memoryBlockBytes
        self.devices = devices
        self.dirtiedPagesPerSecond = dirtiedPagesPerSecond
        self.workloadCounter = workloadCounter
    }
}
