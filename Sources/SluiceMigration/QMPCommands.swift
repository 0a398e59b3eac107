// Path: Sources/SluiceMigration/QMPCommands.swift — typed wrappers over `QMPClient.execute` for what a
// migration needs: run state, CPU models, hot-plug, memory, migration capabilities/parameters, the
// migration itself and its progress, dirty-rate measurement. Names and fields as in QEMU 7.2's QMP reference.

/// `query-status`.
public struct RunState: Sendable, Equatable {
    /// "running", "paused", "postmigrate", "inmigrate", "finish-migrate", "shutdown", "prelaunch", ...
    public var status: String
    public var running: Bool

    public init(status: String, running: Bool) {
        self.status = status
        self.running = running
    }
}

/// A migration's status as `query-migrate` says it (QEMU's `MigrationStatus`).
public struct MigrationStatus: RawRepresentable, Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let none = MigrationStatus(rawValue: "none")
    public static let setup = MigrationStatus(rawValue: "setup")
    public static let active = MigrationStatus(rawValue: "active")
    public static let postcopyActive = MigrationStatus(rawValue: "postcopy-active")
    public static let postcopyPaused = MigrationStatus(rawValue: "postcopy-paused")
    public static let preSwitchover = MigrationStatus(rawValue: "pre-switchover")
    public static let device = MigrationStatus(rawValue: "device")
    public static let cancelling = MigrationStatus(rawValue: "cancelling")
    public static let cancelled = MigrationStatus(rawValue: "cancelled")
    public static let completed = MigrationStatus(rawValue: "completed")
    public static let failed = MigrationStatus(rawValue: "failed")

    /// True for the statuses a migration never leaves: completed, failed, cancelled.
    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// The `ram` part of `query-migrate`.
public struct MigrationRAMStats: Sendable, Equatable, Codable {
    public var transferredBytes: UInt64
    public var remainingBytes: UInt64
    public var totalBytes: UInt64
    public var duplicatePages: UInt64
    public var normalPages: UInt64
    /// Pages dirtied per second during the last iteration.
    public var dirtyPagesRate: UInt64
    /// How many times the dirty bitmap was synchronized (iterations of pre-copy).
    public var dirtySyncCount: UInt64
    public var mbps: Double
    public var pageSizeBytes: UInt64
    public var postcopyRequests: UInt64

    public init(
        transferredBytes: UInt64 = 0, remainingBytes: UInt64 = 0, totalBytes: UInt64 = 0, duplicatePages: UInt64 = 0,
        normalPages: UInt64 = 0, dirtyPagesRate: UInt64 = 0, dirtySyncCount: UInt64 = 0, mbps: Double = 0,
        pageSizeBytes: UInt64 = 4096, postcopyRequests: UInt64 = 0
    ) {
        self.transferredBytes = transferredBytes
        self.remainingBytes = remainingBytes
        self.totalBytes = totalBytes
        self.duplicatePages = duplicatePages
        self.normalPages = normalPages
        self.dirtyPagesRate = dirtyPagesRate
        self.dirtySyncCount = dirtySyncCount
        self.mbps = mbps
        self.pageSizeBytes = pageSizeBytes
        self.postcopyRequests = postcopyRequests
    }
}

/// `query-migrate`: one snapshot of the outgoing (or incoming) migration.
public struct MigrationInfo: Sendable, Equatable, Codable {
    public var status: MigrationStatus
    /// Milliseconds since the migration started (total when completed).
    public var totalTimeMs: UInt64?
    /// The downtime of a completed migration, milliseconds.
    public var downtimeMs: UInt64?
    /// QEMU's estimate of the downtime while active, milliseconds.
    public var expectedDowntimeMs: UInt64?
    public var setupTimeMs: UInt64?
    public var ram: MigrationRAMStats?
    /// Percentage the guest's vCPUs are throttled by auto-converge.
    public var cpuThrottlePercentage: UInt64?
    /// QEMU's own words on why the migration failed (status failed).
    public var errorDescription: String?

    public init(
        status: MigrationStatus, totalTimeMs: UInt64? = nil, downtimeMs: UInt64? = nil, expectedDowntimeMs: UInt64? = nil,
        setupTimeMs: UInt64? = nil, ram: MigrationRAMStats? = nil, cpuThrottlePercentage: UInt64? = nil,
        errorDescription: String? = nil
    ) {
        self.status = status
        self.totalTimeMs = totalTimeMs
        self.downtimeMs = downtimeMs
        self.expectedDowntimeMs = expectedDowntimeMs
        self.setupTimeMs = setupTimeMs
        self.ram = ram
        self.cpuThrottlePercentage = cpuThrottlePercentage
        self.errorDescription = errorDescription
    }

    /// Reads the `return` of `query-migrate` (`{}` before any migration: status `none`).
    public init(reply: QMPValue) {
        status = MigrationStatus(rawValue: reply["status"]?.stringValue ?? "none")
        totalTimeMs = reply["total-time"]?.uint64Value
        downtimeMs = reply["downtime"]?.uint64Value
        expectedDowntimeMs = reply["expected-downtime"]?.uint64Value
        setupTimeMs = reply["setup-time"]?.uint64Value
        cpuThrottlePercentage = reply["cpu-throttle-percentage"]?.uint64Value
        errorDescription = reply["error-desc"]?.stringValue
        if let ram = reply["ram"] {
            self.ram = MigrationRAMStats(
                transferredBytes: ram["transferred"]?.uint64Value ?? 0,
                remainingBytes: ram["remaining"]?.uint64Value ?? 0,
                totalBytes: ram["total"]?.uint64Value ?? 0,
                duplicatePages: ram["duplicate"]?.uint64Value ?? 0,
                normalPages: ram["normal"]?.uint64Value ?? 0,
                dirtyPagesRate: ram["dirty-pages-rate"]?.uint64Value ?? 0,
                dirtySyncCount: ram["dirty-sync-count"]?.uint64Value ?? 0,
                mbps: ram["mbps"]?.doubleValue ?? 0,
                pageSizeBytes: ram["page-size"]?.uint64Value ?? 0,
                postcopyRequests: ram["postcopy-requests"]?.uint64Value ?? 0)
        }
    }
}

/// A migration capability (`migrate-set-capabilities`), by QEMU's name.
public struct MigrationCapability: RawRepresentable, Sendable, Equatable, Hashable, Codable {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    public static let autoConverge = MigrationCapability(rawValue: "auto-converge")
    public static let postcopyRAM = MigrationCapability(rawValue: "postcopy-ram")
    /// MIGRATION events on each status change.
    public static let events = MigrationCapability(rawValue: "events")
    public static let xbzrle = MigrationCapability(rawValue: "xbzrle")
    public static let multifd = MigrationCapability(rawValue: "multifd")
    public static let pauseBeforeSwitchover = MigrationCapability(rawValue: "pause-before-switchover")
}

/// `migrate-set-parameters`: only the fields set are sent.
public struct MigrationParameters: Sendable, Equatable, Codable {
    /// Bytes per second the pre-copy may use (QEMU's default is 128 MiB/s).
    public var maxBandwidthBytesPerSecond: UInt64?
    /// The downtime the migration may take to switch over, milliseconds (QEMU's default 300).
    public var downtimeLimitMs: UInt64?
    /// Auto-converge's first throttle and its step, percent.
    public var cpuThrottleInitial: Int?
    public var cpuThrottleIncrement: Int?
    /// Auto-converge's highest throttle, percent (QEMU's default 99).
    public var maxCPUThrottle: Int?
    /// Bytes per second post-copy may use (0: unlimited).
    public var maxPostcopyBandwidthBytesPerSecond: UInt64?
    public var multifdChannels: Int?
    public var xbzrleCacheSizeBytes: UInt64?

    public init(
        maxBandwidthBytesPerSecond: UInt64? = nil, downtimeLimitMs: UInt64? = nil, cpuThrottleInitial: Int? = nil,
        cpuThrottleIncrement: Int? = nil, maxPostcopyBandwidthBytesPerSecond: UInt64? = nil,
        multifdChannels: Int? = nil, xbzrleCacheSizeBytes: UInt64? = nil, maxCPUThrottle: Int? = nil
    ) {
        self.maxCPUThrottle = maxCPUThrottle
        self.maxBandwidthBytesPerSecond = maxBandwidthBytesPerSecond
        self.downtimeLimitMs = downtimeLimitMs
        self.cpuThrottleInitial = cpuThrottleInitial
        self.cpuThrottleIncrement = cpuThrottleIncrement
        self.maxPostcopyBandwidthBytesPerSecond = maxPostcopyBandwidthBytesPerSecond
        self.multifdChannels = multifdChannels
        self.xbzrleCacheSizeBytes = xbzrleCacheSizeBytes
    }

    /// The arguments of `migrate-set-parameters`.
    public var arguments: [String: QMPValue] {
        var a: [String: QMPValue] = [:]
        if let v = maxBandwidthBytesPerSecond { a["max-bandwidth"] = .uint(v) }
        if let v = downtimeLimitMs { a["downtime-limit"] = .uint(v) }
        if let v = cpuThrottleInitial { a["cpu-throttle-initial"] = .int(Int64(v)) }
        if let v = cpuThrottleIncrement { a["cpu-throttle-increment"] = .int(Int64(v)) }
        if let v = maxPostcopyBandwidthBytesPerSecond { a["max-postcopy-bandwidth"] = .uint(v) }
        if let v = multifdChannels { a["multifd-channels"] = .int(Int64(v)) }
        if let v = maxCPUThrottle { a["max-cpu-throttle"] = .int(Int64(v)) }
        if let v = xbzrleCacheSizeBytes { a["xbzrle-cache-size"] = .uint(v) }
        return a
    }
}

/// `query-dirty-rate`.
public struct DirtyRateInfo: Sendable, Equatable, Codable {
    /// "unstarted", "measuring", "measured".
    public var status: String
    /// MiB the guest dirtied per second; nil until measured.
    public var dirtyRateMiBPerSecond: Int64?
    public var calcTimeSeconds: Int64
    public var mode: String?

    public init(reply: QMPValue) {
        status = reply["status"]?.stringValue ?? "unstarted"
        dirtyRateMiBPerSecond = reply["dirty-rate"]?.int64Value
        calcTimeSeconds = reply["calc-time"]?.int64Value ?? 0
        mode = reply["mode"]?.stringValue
    }
}

extension QMPClient {
    /// `query-status`.
    public func queryStatus(timeout: Duration = .seconds(5)) async throws(QMPError) -> RunState {
        let reply = try await execute("query-status", timeout: timeout)
        guard let status = reply["status"]?.stringValue, let running = reply["running"]?.boolValue else {
            throw .unexpectedReply(command: "query-status", detail: reply.jsonText)
        }
        return RunState(status: status, running: running)
    }

    /// `stop`: pauses the guest's vCPUs (event STOP).
    public func stop(timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("stop", timeout: timeout)
    }

    /// `cont`: resumes the guest (event RESUME).
    public func cont(timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("cont", timeout: timeout)
    }

    /// `quit`: QEMU exits. The connection closing before the answer counts as success.
    public func quit(timeout: Duration = .seconds(5)) async throws(QMPError) {
        do {
            _ = try await execute("quit", timeout: timeout)
        } catch .disconnected {
            return
        }
    }

    /// `query-version`.
    public func queryVersion(timeout: Duration = .seconds(5)) async throws(QMPError) -> QEMUVersion {
        let reply = try await execute("query-version", timeout: timeout)
        guard let qemu = reply["qemu"], let major = qemu["major"]?.int64Value, let minor = qemu["minor"]?.int64Value,
            let micro = qemu["micro"]?.int64Value
        else { throw .unexpectedReply(command: "query-version", detail: reply.jsonText) }
        return QEMUVersion(
            major: Int(major), minor: Int(minor), micro: Int(micro), package: reply["package"]?.stringValue ?? "")
    }

    /// `query-cpu-definitions`: every CPU model with its unavailable features (no `features`).
    public func queryCPUDefinitions(timeout: Duration = .seconds(5)) async throws(QMPError) -> [CPUModelDefinition] {
        let reply = try await execute("query-cpu-definitions", timeout: timeout)
        guard let items = reply.arrayValue else {
            throw .unexpectedReply(command: "query-cpu-definitions", detail: "not an array")
        }
        var definitions: [CPUModelDefinition] = []
        for item in items {
            guard let name = item["name"]?.stringValue else {
                throw .unexpectedReply(command: "query-cpu-definitions", detail: "entry without name")
            }
            definitions.append(
                CPUModelDefinition(
                    name: name, aliasOf: item["alias-of"]?.stringValue,
                    unavailableFeatures: item["unavailable-features"]?.arrayValue?.compactMap(\.stringValue) ?? [],
                    migrationSafe: item["migration-safe"]?.boolValue ?? false,
                    isStatic: item["static"]?.boolValue ?? false, deprecated: item["deprecated"]?.boolValue ?? false))
        }
        return definitions
    }

    /// `query-cpu-model-expansion` of `model` (with optional property overrides, e.g. ["avx2": false]).
    public func queryCPUModelExpansion(
        type: CPUModelExpansion.ExpansionType, model: String, properties: [String: QMPValue]? = nil,
        timeout: Duration = .seconds(5)
    ) async throws(QMPError) -> CPUModelExpansion {
        var modelInfo: [String: QMPValue] = ["name": .string(model)]
        if let properties { modelInfo["props"] = .object(properties) }
        let reply = try await execute(
            "query-cpu-model-expansion", arguments: ["type": .string(type.rawValue), "model": .object(modelInfo)],
            timeout: timeout)
        return try CPUModelExpansion(reply: reply)
    }

    /// `query-hotpluggable-cpus`: plugged and free vCPU slots.
    public func queryHotpluggableCPUs(timeout: Duration = .seconds(5)) async throws(QMPError) -> [HotpluggableCPU] {
        let reply = try await execute("query-hotpluggable-cpus", timeout: timeout)
        guard let items = reply.arrayValue else {
            throw .unexpectedReply(command: "query-hotpluggable-cpus", detail: "not an array")
        }
        return items.map { item in
            let props = item["props"]
            func id(_ key: String) -> Int? { props?[key]?.int64Value.map { Int($0) } }
            return HotpluggableCPU(
                type: item["type"]?.stringValue ?? "", vcpusCount: Int(item["vcpus-count"]?.int64Value ?? 1),
                qomPath: item["qom-path"]?.stringValue, socketID: id("socket-id"), coreID: id("core-id"),
                threadID: id("thread-id"), nodeID: id("node-id"))
        }
    }

    /// `query-memory-size-summary`.
    public func queryMemorySizeSummary(timeout: Duration = .seconds(5)) async throws(QMPError) -> MemorySizeSummary {
        let reply = try await execute("query-memory-size-summary", timeout: timeout)
        guard let base = reply["base-memory"]?.uint64Value else {
            throw .unexpectedReply(command: "query-memory-size-summary", detail: reply.jsonText)
        }
        return MemorySizeSummary(baseMemoryBytes: base, pluggedMemoryBytes: reply["plugged-memory"]?.uint64Value ?? 0)
    }

    /// `device_add` of `driver` named `id` with `properties` (e.g. a vCPU from
    /// `HotpluggableCPU.deviceAddArguments`, or `pc-dimm` with `memdev`).
    public func deviceAdd(
        driver: String, id: String, properties: [String: QMPValue] = [:], timeout: Duration = .seconds(5)
    ) async throws(QMPError) {
        var arguments = properties
        arguments["driver"] = .string(driver)
        arguments["id"] = .string(id)
        _ = try await execute("device_add", arguments: arguments, timeout: timeout)
    }

    /// `device_add` with the arguments as given (they must name `driver`).
    public func deviceAdd(arguments: [String: QMPValue], timeout: Duration = .seconds(5)) async throws(QMPError) {
        precondition(arguments["driver"] != nil)
        _ = try await execute("device_add", arguments: arguments, timeout: timeout)
    }

    /// `device_del` of `id`: a request the guest must acknowledge (event DEVICE_DELETED when done).
    public func deviceDel(id: String, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("device_del", arguments: ["id": .string(id)], timeout: timeout)
    }

    /// `object-add` of a `memory-backend-ram` named `id` of `sizeBytes` (for a `pc-dimm`'s `memdev`).
    public func addMemoryBackendRAM(id: String, sizeBytes: UInt64, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute(
            "object-add", arguments: ["qom-type": "memory-backend-ram", "id": .string(id), "size": .uint(sizeBytes)],
            timeout: timeout)
    }

    /// `object-del` of `id`.
    public func objectDel(id: String, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("object-del", arguments: ["id": .string(id)], timeout: timeout)
    }

    /// `migrate-set-capabilities`: sets each capability on or off (before `migrate` / `migrate-incoming`).
    public func migrateSetCapabilities(
        _ capabilities: [MigrationCapability: Bool], timeout: Duration = .seconds(5)
    ) async throws(QMPError) {
        let list: [QMPValue] = capabilities.sorted { $0.key.rawValue < $1.key.rawValue }.map { capability, state in
            ["capability": .string(capability.rawValue), "state": .bool(state)]
        }
        _ = try await execute("migrate-set-capabilities", arguments: ["capabilities": .array(list)], timeout: timeout)
    }

    /// `migrate-set-parameters` with the fields of `parameters` that are set.
    public func migrateSetParameters(_ parameters: MigrationParameters, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("migrate-set-parameters", arguments: parameters.arguments, timeout: timeout)
    }

    /// `query-migrate-parameters`, as QEMU returns it.
    public func queryMigrateParameters(timeout: Duration = .seconds(5)) async throws(QMPError) -> QMPValue {
        try await execute("query-migrate-parameters", timeout: timeout)
    }

    /// `migrate` to `uri` (e.g. "tcp:127.0.0.1:4444"): starts the outgoing migration and returns at once;
    /// follow it with `queryMigrate`.
    public func migrate(uri: String, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("migrate", arguments: ["uri": .string(uri)], timeout: timeout)
    }

    /// `migrate-incoming` on `uri`, for a QEMU started with `-incoming defer`: listens for the migration.
    public func migrateIncoming(uri: String, timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("migrate-incoming", arguments: ["uri": .string(uri)], timeout: timeout)
    }

    /// `migrate_cancel`.
    public func migrateCancel(timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("migrate_cancel", timeout: timeout)
    }

    /// `migrate-start-postcopy` (capability postcopy-ram set on both sides before `migrate`).
    public func migrateStartPostcopy(timeout: Duration = .seconds(5)) async throws(QMPError) {
        _ = try await execute("migrate-start-postcopy", timeout: timeout)
    }

    /// `query-migrate`.
    public func queryMigrate(timeout: Duration = .seconds(5)) async throws(QMPError) -> MigrationInfo {
        MigrationInfo(reply: try await execute("query-migrate", timeout: timeout))
    }

    /// `calc-dirty-rate` over `seconds` (1...60): starts a measurement; read it with `queryDirtyRate`.
    public func calcDirtyRate(seconds: Int, timeout: Duration = .seconds(5)) async throws(QMPError) {
        precondition(seconds >= 1 && seconds <= 60)
        _ = try await execute("calc-dirty-rate", arguments: ["calc-time": .int(Int64(seconds))], timeout: timeout)
    }

    /// `query-dirty-rate`.
    public func queryDirtyRate(timeout: Duration = .seconds(5)) async throws(QMPError) -> DirtyRateInfo {
        DirtyRateInfo(reply: try await execute("query-dirty-rate", timeout: timeout))
    }

    /// Polls `query-migrate` every `interval` until the status is final (completed, failed, cancelled)
    /// or `timeout` passes (then `.timeout(command: "query-migrate until final")`).
    public func waitForMigrationEnd(
        interval: Duration = .milliseconds(50), timeout: Duration
    ) async throws(QMPError) -> MigrationInfo {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let info = try await queryMigrate()
            if info.status.isFinal { return info }
            if clock.now >= deadline {
                throw .timeout(command: "query-migrate until final (last \(info.status))", afterMs: Self.milliseconds(timeout))
            }
            try? await Task.sleep(for: interval)
        }
    }
}
