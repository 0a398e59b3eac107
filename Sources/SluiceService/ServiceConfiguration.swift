// Path: Sources/SluiceService/ServiceConfiguration.swift — what `sluice run` runs: the cores, the
// packet pipelines, the storage node and the metrics endpoint, read from YAML (docs/sluice.yaml is
// the commented example) and checked key by key before anything starts.
import Glibc
import Logging
import SluiceCore
import SluicePacket
import SluicePacketIO
import SluicePageStore
import SluiceReplay
import SluiceReplication
import SluiceStorageServer
import SluiceTraffic
import SluiceWAN
import SluiceFirmware

/// Bounds of what one service runs.
public enum ServiceLimits {
    /// Pipelines in one service.
    public static let pipelineCountMax = 16
    /// CPU numbers are below this (glibc's CPU_SETSIZE).
    public static let cpuNumberMax = 1024
    /// A capture's replay speed (a multiplier of its timestamps): the bounds `sluice replay --speed`
    /// checks (`ReplayPacing`), one definition for the CLI and the config.
    public static let replaySpeedMin = ReplayPacing.speedMin
    public static let replaySpeedMax = ReplayPacing.speedMax
    /// A capture's replay rate in packets per second, as `sluice replay --rate` takes it.
    public static let replayRatePacketsPerSecondMin = ReplayPacing.packetsPerSecondMin
    public static let replayRatePacketsPerSecondMax = ReplayPacing.packetsPerSecondMax
    /// WAN links (`wan:`) in one service.
    public static let wanLinkCountMax = 16
}

/// A host and port to listen on.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { "\(host):\(port)" }
}

/// One packet pipeline of the service.
public struct PipelineSettings: Sendable {
    /// Assembly of the pipeline (its `numaNode` is set from `cores` at start).
    public var path: PacketPathConfiguration
    /// The service cores its stages run on (the source on the first), a subset of `cores`.
    public var cores: [Int]
    /// The core of each stage, source first (nil: `placement` decides).
    public var stageCores: [Int]?
    /// Without `stageCores`: measured (`auto`, the default: start run to completion on the first
    /// core, move stages when measured costs predict a clear gain) or the fixed `spread`.
    public var placement = ReplayPlacement.auto
    /// Its share of the cores when pipelines contend for them (`weight`, relative to the others'; 1).
    public var weight = 1.0
    /// `source: {kind: af_xdp}` / `sink: {kind: af_xdp}`; `path` then holds the AF_PACKET stand-in on
    /// the same interface. `Dataplane.resolveAFXDP` puts the AF_XDP port in its place when the port
    /// opens; the stand-in runs only when it does not and the fallback is allowed.
    public var afXDPSource: AFXDPPortSettings?
    public var afXDPSink: AFXDPPortSettings?
}

/// An AF_XDP source or sink (`kind: af_xdp`): the socket's settings, and whether the service may fall
/// back to AF_PACKET on the same interface when XDP cannot be attached (`fallback: af_packet`).
public struct AFXDPPortSettings: Sendable, Equatable {
    public var configuration: AFXDPConfiguration
    public var fallbackToAFPacket = false
    public init(configuration: AFXDPConfiguration) { self.configuration = configuration }
}

/// Moving stages between workers as load shifts (`ResourceAllocator.rebalance`), from the control thread.
public struct RebalanceSettings: Sendable, Equatable {
    /// How often load is measured and moves considered.
    public var intervalMs = 1000
    /// Moves happen only while the busiest and idlest workers differ by more than this (core shares).
    public var imbalance = 0.2
    /// Also move cores between pipelines (`CoreBroker`): from one with slack to one that needs them,
    /// by measured demand, and by `weight` when all are busy (`move_cores`, default true).
    public var movesCores = true
    /// Also grow each pipeline's rings to hold `ResourceAllocator.Configuration.bufferingNs` of its
    /// measured arrivals when that is 4x what they hold, within what its pool can fill, and shrink
    /// them back towards (never below) `ring_size` when it is 4x less (`resize_rings`, default false:
    /// a resize parks the ring's producer while the ring drains; `Runtime.resizeRing` loses and
    /// reorders nothing, but a live interface source parked that long may overflow its kernel ring,
    /// so the first ring of an interface or AF_XDP source is never resized).
    public var resizesRings = false
}

/// The storage node of the service.
public struct StorageSettings: Sendable, Equatable {
    public var dataDirectory: String
    public var listen = ListenAddress(host: "127.0.0.1", port: 7000)
    public var pageSizeBytes = 4096
    public var queueDepth = 32
    public var blockingThreadCount = 16
    public var frameBytesMax = StorageProtocol.frameBytesMaxDefault
    public var directIO = true
    /// Write a checkpoint at shutdown, so the next start replays no log.
    public var checkpointOnShutdown = true
    /// Where the node's operation log lives: its own file (embedded) or shared through etcd.
    public var log = StorageLogSettings.embedded
}

/// `storage.log`: the embedded log (the default), or a log shared with other nodes through etcd.
public enum StorageLogSettings: Sendable, Equatable {
    case embedded
    case etcd(EtcdLogSettings)
}

/// `storage.log` with `kind: etcd`. Bounds are `EtcdLogConfiguration`'s and `EtcdLimits`'.
public struct EtcdLogSettings: Sendable, Equatable {
    /// etcd client URLs (`http://HOST:PORT`).
    public var endpoints: [String]
    public var prefix = EtcdLogConfiguration.prefixDefault
    public var callTimeoutMs: Int64 = EtcdLogConfiguration.callTimeoutMsDefault
    public var proposalTimeoutMs: Int64 = EtcdLogConfiguration.proposalTimeoutMsDefault
    public var batchRecordsMax = EtcdLogConfiguration.batchRecordsMaxDefault
    public var batchBytesMax = EtcdLogConfiguration.batchBytesMaxDefault
    public var batchWaitUs: Int64 = 0

    public init(endpoints: [String]) { self.endpoints = endpoints }

    /// The log configuration these settings stand for.
    public var configuration: EtcdLogConfiguration {
        var configuration = EtcdLogConfiguration(client: EtcdClientConfiguration(endpoints: endpoints, callTimeoutMs: callTimeoutMs),
                                                 prefix: prefix)
        configuration.proposalTimeoutMs = proposalTimeoutMs
        configuration.batchRecordsMax = batchRecordsMax
        configuration.batchBytesMax = batchBytesMax
        configuration.batchWaitUs = batchWaitUs
        return configuration
    }
}

/// Everything `sluice run` needs, checked.
public struct ServiceConfiguration: Sendable {
    public var cores: [Int]
    /// CPUs for every thread that is not a worker (control thread, storage server, metrics, logging);
    /// nil: the CPUs the process may use minus `cores` (all of them if that leaves none).
    public var controlCores: [Int]?
    public var waitMode: WaitMode = .adaptive
    public var logLevel: Logger.Level = .info
    /// nil: no metrics endpoint.
    public var metrics: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 9464)
    public var pipelines: [PipelineSettings] = []
    public var storage: StorageSettings?
    /// At shutdown: how long stopped sources' pipelines may take to drain before their workers stop.
    public var drainTimeoutMs = 5000
    /// Stop by itself after this long, as on SIGTERM (nil: run until signalled).
    public var runForMs: Int?
    /// Stop by itself once every pipeline has drained (a replay job; the storage node stops too).
    public var exitWhenDrained = false
    /// nil: stages stay where they started.
    public var rebalance: RebalanceSettings?
    /// WAN links (`wan:`), each on two threads of its own, started before the pipelines and stopped
    /// after them (docs/WAN.md).
    public var wan: [WANConfiguration] = []
    /// The firmware boot check (`firmware:`): devices checked before anything starts; an isolated
    /// device's pipelines do not start and its storage takes no writes (docs/FIRMWARE.md).
    public var firmware: FirmwareSettings?
    /// The overlay host (`overlay:`, docs/OVERLAY.md): started after the WAN links, stopped with them.
    public var overlay: OverlaySettings?
}

/// `firmware:`: where the store and keys are, which counter, and the devices with what runs on them.
public struct FirmwareSettings: Sendable, Equatable {
    public enum Counter: String, Sendable, Equatable { case software, tpm }
    public struct Device: Sendable, Equatable {
        public var name: String
        /// Interfaces of this device: a pipeline that reads or writes one is the device's.
        public var interfaces: [String] = []
        /// Pipelines (by name) that run on this device whatever their source.
        public var pipelines: [String] = []
        /// The storage node's data lives on this device.
        public var storage = false
        /// The TPM NV index of its counter (default: `FirmwareNode.defaultIndex(name)`).
        public var tpmIndex: UInt32?
        public init(name: String) { self.name = name }
    }
    public var store: String
    public var counter: Counter = .software
    /// The TPM (counter `tpm`): a TCTI string (`device:/dev/tpmrm0`, `tabrmd:`, `swtpm:host=H,port=P`)
    /// or `HOST:PORT` of an swtpm-protocol socket.
    public var tpm: String?
    /// `tpm` as a TCTI configuration string.
    public var tcti: String {
        let text = tpm ?? ""
        for name in ["device:", "tabrmd:", "swtpm:", "mssim:", "cmd:"] where text.hasPrefix(name) { return text }
        let colon = text.lastIndex(of: ":") ?? text.endIndex
        let port = colon < text.endIndex ? Int(text[text.index(after: colon)...]) ?? 0 : 0
        return TPMConnection.swtpm(host: String(text[..<colon]), port: port)
    }
    /// File holding the counters' auth value (counter `tpm`; empty auth when absent).
    public var tpmAuthFile: String?
    public var nodeKey: String
    public var vendorKey: String
    public var operatorKey: String?
    public var devices: [Device] = []
    /// Check the devices again this often while running (nil: at start only). A device isolated then
    /// has its pipelines' sources stopped (they drain) and its storage refuses writes from then on.
    public var recheckMs: Int?
    public init(store: String, nodeKey: String, vendorKey: String) {
        self.store = store
        self.nodeKey = nodeKey
        self.vendorKey = vendorKey
    }
}

extension ServiceConfiguration {
    /// Worker indices (positions in `cores`) of a pipeline's stages at start: `stageCores` when
    /// given; all on the first of its cores when the placement is measured (`isMeasured`); else the
    /// source on the first of its cores and the rest spread over the others.
    public func placement(of pipeline: PipelineSettings, stageCount: Int) -> [Int] {
        let workers = pipeline.cores.compactMap { cores.firstIndex(of: $0) }
        if let stageCores = pipeline.stageCores, stageCores.count == stageCount {
            return stageCores.compactMap { cores.firstIndex(of: $0) }
        }
        if isMeasured(pipeline) { return Array(repeating: workers[0], count: stageCount) }
        return spreadPlacement(stageCount: stageCount, workers: workers)
    }

    /// Whether the pipeline's stages are placed by measured cost: `placement: auto`, no `stage_cores`,
    /// and either two or more cores with no other pipeline on any of them (the planner assumes its
    /// cores are its own), or, with `rebalance: {move_cores: true}` on a service of two or more cores,
    /// any cores no other such `auto` pipeline shares (spread pipelines may): its cores then change as
    /// the broker moves them, and it plans over those it holds at each moment, from one core up
    /// (`Dataplane`; docs/PLACEMENT.md). Two `auto` pipelines on shared cores both keep the spread
    /// rule (each planner would count only its own stages and start them on the same first core), and
    /// `rebalance:` evens them out.
    public func isMeasured(_ pipeline: PipelineSettings) -> Bool {
        guard pipeline.stageCores == nil, pipeline.placement == .auto else { return false }
        let movesCores = rebalance?.movesCores == true && cores.count >= 2
        guard movesCores || pipeline.cores.count >= 2 else { return false }
        return pipelines.allSatisfy { other in
            other.path.name == pipeline.path.name || Set(other.cores).isDisjoint(with: pipeline.cores)
                || (movesCores && (other.placement != .auto || other.stageCores != nil))
        }
    }

    /// The two cores whose hand-off cost a measured pipeline plans with: its first two, or with one
    /// core of its own (cores moved to it later), that core and the service's first other core.
    public func handoffCores(of pipeline: PipelineSettings) -> [Int] {
        if pipeline.cores.count >= 2 { return Array(pipeline.cores.prefix(2)) }
        return [pipeline.cores[0], cores.first { $0 != pipeline.cores[0] }!]
    }

    /// The configuration with no file: the bundled sample capture through the full pipeline to a
    /// pcap file, the storage node on loopback with the embedded log, metrics on loopback.
    public static let defaultYAML = """
        # The embedded default of `sluice run` (no --config): print it with `sluice run --print-default-config`.
        wait_mode: adaptive
        log_level: info
        metrics:
          listen: 127.0.0.1:9464
        pipelines:
          - name: sample
            source:
              pcap: Tests/Fixtures/sample.pcap
              speed: 1
            stages: classify-and-act
            sink:
              pcap: out/run.pcap
        storage:
          data: out/storage
          listen: 127.0.0.1:7000
        """

    /// Reads `path` (or the embedded default when nil), applies `overrides` (`key.path=value`),
    /// and checks every key. `defaultCores` fills `cores` when the config has none.
    public static func load(path: String?, overrides: [String] = [],
                            defaultCores: [Int]) throws(ConfigError) -> ServiceConfiguration {
        let text: String
        if let path {
            text = try readFile(path)
        } else {
            text = defaultYAML
        }
        var tree = try ConfigNode.parse(yaml: text)
        for override in overrides { tree = try tree.applying(override: override) }
        return try decode(tree, defaultCores: defaultCores)
    }

    static func readFile(_ path: String) throws(ConfigError) -> String {  // also RulesConfiguration
        guard let file = fopen(path, "r") else {
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count > 0 { bytes += chunk[0..<count] }
            if count < chunk.count { break }
            guard bytes.count <= 1 << 20 else { throw .unreadable(path: path, reason: "larger than 1 MiB") }
        }
        guard ferror(file) == 0 else { throw .unreadable(path: path, reason: "read error") }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .unreadable(path: path, reason: "not UTF-8 text")
        }
        return text
    }

    /// Checks the tree against the format, key by key.
    public static func decode(_ tree: ConfigNode, defaultCores: [Int]) throws(ConfigError) -> ServiceConfiguration {
        let root = ConfigReader(tree, key: "")
        try root.allowKeys(["cores", "control_cores", "wait_mode", "log_level", "metrics", "pipelines", "storage", "shutdown",
                            "rebalance", "wan", "firmware", "overlay"])
        let cores = try root.optional("cores").map { reader throws(ConfigError) in try reader.cores() } ?? defaultCores
        guard !cores.isEmpty else { throw .invalid(key: "cores", line: tree.line, reason: "no cores to run on") }
        var configuration = ServiceConfiguration(cores: cores)
        if let control = root.optional("control_cores") {
            let controlCores = try control.cores()
            for core in controlCores where cores.contains(core) {
                throw control.invalid("core \(core) is also a worker core (`cores`)")
            }
            configuration.controlCores = controlCores
        }
        if let mode = root.optional("wait_mode") {
            let text = try mode.string()
            guard let waitMode = WaitMode(argument: text) else {
                throw mode.invalid("'\(text)' is not busy-poll, adaptive or interrupt")
            }
            configuration.waitMode = waitMode
        }
        if let level = root.optional("log_level") {
            let text = try level.string()
            guard let logLevel = Logger.Level(rawValue: text) else {
                throw level.invalid("'\(text)' is not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            configuration.logLevel = logLevel
        }
        if let metrics = root.optional("metrics") {
            try metrics.allowKeys(["enabled", "listen"])
            let enabled = try metrics.optional("enabled")?.bool() ?? true
            let listen = try metrics.optional("listen")?.listenAddress() ?? ListenAddress(host: "127.0.0.1", port: 9464)
            configuration.metrics = enabled ? listen : nil
        }
        if let rebalance = root.optional("rebalance") {
            try rebalance.allowKeys(["interval_ms", "imbalance", "move_cores", "resize_rings"])
            var movesCores = true
            if let move = rebalance.optional("move_cores") { movesCores = try move.bool() }
            var resizesRings = false
            if let resize = rebalance.optional("resize_rings") { resizesRings = try resize.bool() }
            var settings = RebalanceSettings()
            if let interval = rebalance.optional("interval_ms") { settings.intervalMs = try interval.int(in: 10...3_600_000) }
            if let imbalance = rebalance.optional("imbalance") {
                settings.imbalance = try imbalance.positiveDouble()
                guard settings.imbalance <= Double(cores.count) else {
                    throw imbalance.invalid("at most the worker count (\(cores.count)), got \(settings.imbalance)")
                }
            }
            settings.movesCores = movesCores
            settings.resizesRings = resizesRings
            configuration.rebalance = settings
        }
        if let shutdown = root.optional("shutdown") {
            try shutdown.allowKeys(["drain_timeout_ms", "run_for_ms", "exit_when_drained"])
            if let exit = shutdown.optional("exit_when_drained") { configuration.exitWhenDrained = try exit.bool() }
            if let drain = shutdown.optional("drain_timeout_ms") { configuration.drainTimeoutMs = try drain.int(in: 0...600_000) }
            if let runFor = shutdown.optional("run_for_ms") { configuration.runForMs = try runFor.int(in: 1...Int(Int32.max)) }
        }
        if let pipelines = root.optional("pipelines") {
            let items = try pipelines.list()
            guard items.count <= ServiceLimits.pipelineCountMax else {
                throw pipelines.invalid("at most \(ServiceLimits.pipelineCountMax) pipelines, got \(items.count)")
            }
            for item in items {
                let pipeline = try decodePipeline(item, serviceCores: cores, index: configuration.pipelines.count)
                if configuration.pipelines.contains(where: { $0.path.name == pipeline.path.name }) {
                    throw item.invalid("name '\(pipeline.path.name)' is used by an earlier pipeline")
                }
                configuration.pipelines.append(pipeline)
            }
        }
        if let storage = root.optional("storage") {
            configuration.storage = try decodeStorage(storage)
        }
        if let wan = root.optional("wan") { configuration.wan = try decodeWAN(wan) }
        if let firmware = root.optional("firmware") { configuration.firmware = try decodeFirmware(firmware, configuration) }
        if let overlay = root.optional("overlay") { configuration.overlay = try decodeOverlay(overlay) }
        try checkPorts(configuration, root: root)
        try checkFiles(configuration, root: root)
        try checkFanoutGroups(configuration, root: root)
        try checkStagesPerWorker(configuration, root: root)
        if configuration.exitWhenDrained {
            let reader = root.optional("shutdown")?.child("exit_when_drained") ?? root
            guard !configuration.pipelines.isEmpty else { throw reader.invalid("there is no pipeline to drain") }
            for pipeline in configuration.pipelines {
                if case .interface = pipeline.path.input {
                    throw reader.invalid("pipeline '\(pipeline.path.name)' reads an interface, which never drains")
                }
            }
        }
        return configuration
    }

    /// `firmware:` with its devices; every pipeline a device names exists, no interface or pipeline
    /// belongs to two devices, at most one device holds the storage.
    private static func decodeFirmware(_ reader: ConfigReader, _ configuration: ServiceConfiguration) throws(ConfigError) -> FirmwareSettings {
        try reader.allowKeys(["store", "counter", "tpm", "tpm_auth_file", "node_key", "vendor_key", "operator_key", "devices", "recheck_ms"])
        var settings = FirmwareSettings(store: try reader.required("store").string(), nodeKey: try reader.required("node_key").string(),
                                        vendorKey: try reader.required("vendor_key").string())
        if let counter = reader.optional("counter") {
            let text = try counter.string()
            guard let kind = FirmwareSettings.Counter(rawValue: text) else { throw counter.invalid("'\(text)' is not software or tpm") }
            settings.counter = kind
        }
        if let tpm = reader.optional("tpm") {
            let text = try tpm.string()
            if ["device:", "tabrmd:", "swtpm:", "mssim:", "cmd:"].contains(where: text.hasPrefix) {
                settings.tpm = text
            } else {
                let address = try tpm.listenAddress()
                settings.tpm = "\(address.host):\(address.port)"
            }
        }
        if settings.counter == .tpm, settings.tpm == nil { throw reader.child("tpm").invalid("counter tpm needs tpm: HOST:PORT") }
        settings.tpmAuthFile = try reader.optional("tpm_auth_file")?.string()
        settings.operatorKey = try reader.optional("operator_key")?.string()
        settings.recheckMs = try reader.optional("recheck_ms")?.int(in: 100...86_400_000)
        let items = try reader.required("devices").list()
        guard (1...FirmwareLimits.devicesMax).contains(items.count) else {
            throw reader.child("devices").invalid("1...\(FirmwareLimits.devicesMax) devices, got \(items.count)")
        }
        var owners: [String: String] = [:]
        for item in items {
            try item.allowKeys(["name", "interfaces", "pipelines", "storage", "tpm_index"])
            let nameReader = try item.required("name")
            var device = FirmwareSettings.Device(name: try nameReader.string())
            do { try FirmwareNode.validate(device: device.name) } catch { throw nameReader.invalid("\(error)") }
            guard !settings.devices.contains(where: { $0.name == device.name }) else { throw nameReader.invalid("device '\(device.name)' twice") }
            if let list = item.optional("interfaces") { device.interfaces = try list.list().map { entry throws(ConfigError) in try entry.interfaceName() } }
            if let list = item.optional("pipelines") {
                device.pipelines = try list.list().map { entry throws(ConfigError) in
                    let name = try entry.string()
                    guard configuration.pipelines.contains(where: { $0.path.name == name }) else { throw entry.invalid("no pipeline '\(name)'") }
                    return name
                }
            }
            for owned in device.interfaces.map({ "interface \($0)" }) + device.pipelines.map({ "pipeline \($0)" }) {
                if let other = owners[owned] { throw item.invalid("\(owned) is also device '\(other)''s") }
                owners[owned] = device.name
            }
            if let storage = item.optional("storage") {
                device.storage = try storage.bool()
                if device.storage, settings.devices.contains(where: \.storage) { throw storage.invalid("another device holds the storage") }
            }
            if let index = item.optional("tpm_index") {
                let text = try index.string()
                let digits = text.hasPrefix("0x") ? String(text.dropFirst(2)) : text
                guard let value = UInt32(digits, radix: text.hasPrefix("0x") ? 16 : 10), (0x0100_0000...0x01BF_FFFF).contains(value) else {
                    throw index.invalid("'\(text)' is not an NV index in 0x01000000...0x01BFFFFF")
                }
                device.tpmIndex = value
            }
            settings.devices.append(device)
        }
        // Two devices on one TPM counter would isolate each other on every update.
        if settings.counter == .tpm {
            var indices: [UInt32: String] = [:]
            for device in settings.devices {
                let index = device.tpmIndex ?? FirmwareNode.defaultIndex(device.name)
                if let other = indices[index] {
                    throw reader.child("devices").invalid("devices '\(other)' and '\(device.name)' use one TPM index 0x\(String(index, radix: 16)); set tpm_index")
                }
                indices[index] = device.name
            }
        }
        return settings
    }

    /// A pipeline's `outputs:` mapping: NAME: {pcap: FILE} | {interface: IFACE} | {discard: true},
    /// at most `OutputLimits.outputCountMax`, in the order given (docs/RULES.md).
    static func decodeOutputs(_ reader: ConfigReader, sink: ReplayOutput) throws(ConfigError) -> [NamedOutput] {
        let pairs = try reader.pairs()
        guard pairs.count <= OutputLimits.outputCountMax else {
            throw reader.invalid("\(pairs.count) named outputs, at most \(OutputLimits.outputCountMax)")
        }
        var outputs: [NamedOutput] = []
        for (name, value) in pairs {
            guard name != OutputLimits.sinkName, !name.isEmpty, name.count <= 64,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw value.invalid("output name '\(name)' must be 1-64 letters, digits, '-', '_' or '.', and not '\(OutputLimits.sinkName)' (the sink)")
            }
            try value.allowKeys(["pcap", "interface", "discard"])
            let kinds = ["pcap", "interface", "discard"].filter { value.optional($0) != nil }
            guard kinds.count == 1 else { throw value.invalid("give exactly one of pcap, interface, discard") }
            let output: ReplayOutput
            switch kinds[0] {
            case "pcap":
                let path = try value.child("pcap").string()
                guard !path.isEmpty else { throw value.child("pcap").invalid("empty path") }
                output = .pcapFile(path)
                guard output != sink, !outputs.contains(where: { $0.output == output }) else {
                    throw value.child("pcap").invalid("'\(path)' is written by another output of this pipeline")
                }
            case "interface":
                output = .interface(try value.child("interface").interfaceName())
            default:
                guard try value.child("discard").bool() else { throw value.child("discard").invalid("only `discard: true` makes sense") }
                output = .discard
            }
            outputs.append(NamedOutput(name: name, output: output))
        }
        return outputs
    }

    /// No two sinks write one file, and no sink overwrites a capture a pipeline reads.
    private static func checkFiles(_ configuration: ServiceConfiguration, root: ConfigReader) throws(ConfigError) {
        var outputs: [String: String] = [:]
        var inputs: Set<String> = []
        for pipeline in configuration.pipelines {
            if case .capture(let path, _, _) = pipeline.path.input { inputs.insert(path) }
        }
        for (index, pipeline) in configuration.pipelines.enumerated() {
            let named = pipeline.path.outputs.map { ("outputs.\($0.name)", $0.output) }
            for (key, output) in [("sink", pipeline.path.output)] + named {
                guard case .pcapFile(let path) = output else { continue }
                let reader = root.optional("pipelines").flatMap { pipelines -> ConfigReader? in
                    guard let entries = try? pipelines.list(), index < entries.count else { return nil }
                    let parent = key == "sink" ? entries[index].child("sink")
                        : entries[index].child("outputs").child(String(key.dropFirst("outputs.".count)))
                    return parent.child("pcap")
                } ?? root
                if let other = outputs[path] { throw reader.invalid("'\(path)' is also pipeline '\(other)''s output") }
                if inputs.contains(path) { throw reader.invalid("'\(path)' is a pipeline's input capture") }
                outputs[path] = pipeline.path.name
            }
        }
    }

    /// A fanout group id belongs to one interface (the kernel refuses a second one at start).
    private static func checkFanoutGroups(_ configuration: ServiceConfiguration, root: ConfigReader) throws(ConfigError) {
        var interfaces: [UInt16: String] = [:]
        for (index, pipeline) in configuration.pipelines.enumerated() {
            guard case .interface(let rx) = pipeline.path.input, let group = rx.fanout?.group else { continue }
            if let other = interfaces[group], other != rx.interface {
                let reader = root.optional("pipelines").flatMap { try? $0.list()[index].child("source").child("fanout_group") } ?? root
                throw reader.invalid("group \(group) is already on interface '\(other)'; a group spans one interface")
            }
            interfaces[group] = rx.interface
        }
    }

    /// Each worker runs at most `Limits.stagesPerWorkerMax` stages over all pipelines.
    private static func checkStagesPerWorker(_ configuration: ServiceConfiguration, root: ConfigReader) throws(ConfigError) {
        var perWorker = [Int](repeating: 0, count: configuration.cores.count)
        for pipeline in configuration.pipelines {
            let stageCount = pipeline.path.stageCount  // outputs add the dispatch stage
            for worker in configuration.placement(of: pipeline, stageCount: stageCount) { perWorker[worker] += 1 }
        }
        for (worker, count) in perWorker.enumerated() where count > Limits.stagesPerWorkerMax {
            throw (root.optional("pipelines") ?? root).invalid(
                "core \(configuration.cores[worker]) would run \(count) stages, at most \(Limits.stagesPerWorkerMax): spread the pipelines with `cores`")
        }
    }

    private static func checkPorts(_ configuration: ServiceConfiguration, root: ConfigReader) throws(ConfigError) {
        guard let metrics = configuration.metrics, let storage = configuration.storage,
              metrics.port != 0, metrics.port == storage.listen.port else { return }
        throw .invalid(key: "storage.listen", line: root.optional("storage")?.node.line ?? 0,
                       reason: "port \(metrics.port) is also metrics.listen's")
    }

    private static func decodePipeline(_ reader: ConfigReader, serviceCores: [Int],
                                       index: Int) throws(ConfigError) -> PipelineSettings {
        try reader.allowKeys(["name", "source", "sink", "stages", "classify", "traffic", "cores", "stage_cores",
                              "placement", "burst", "ring_size", "buffers", "buffers_max", "buffer_size", "rules", "outputs",
                              "weight"])
        let name = try reader.optional("name")?.string() ?? "pipeline\(index)"
        guard !name.isEmpty, name.count <= 32,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw reader.child("name").invalid("'\(name)' must be 1-32 letters, digits, '-' or '_'")
        }
        let source = try reader.required("source")
        let input: PacketInput
        var afXDPSource: AFXDPPortSettings?
        if let kind = source.optional("kind") {
            afXDPSource = try decodeAFXDP(source, kind: kind)
            input = .interface(AFPacketRXConfiguration(interface: afXDPSource!.configuration.interface))
        } else {
            try source.allowKeys(["pcap", "interface", "speed", "rate", "top_speed", "loop", "fanout_group", "port"])
            switch (source.optional("pcap"), source.optional("interface")) {
            case let (pcap?, nil):
                let path = try pcap.string()
                guard !path.isEmpty else { throw pcap.invalid("empty path") }
                for key in ["fanout_group", "port"] where source.optional(key) != nil {
                    throw source.child(key).invalid("only an interface source has a fanout group or port number")
                }
                let speed = try source.optional("speed").map { reader throws(ConfigError) in
                    try reader.double(in: ServiceLimits.replaySpeedMin...ServiceLimits.replaySpeedMax)
                }
                let rate = try source.optional("rate").map { reader throws(ConfigError) in
                    try reader.double(in: ServiceLimits.replayRatePacketsPerSecondMin...ServiceLimits.replayRatePacketsPerSecondMax)
                }
                let topSpeed = try source.optional("top_speed")?.bool() ?? false
                guard [speed != nil, rate != nil, topSpeed].filter({ $0 }).count <= 1 else {
                    throw source.invalid("give one of speed, rate, top_speed")
                }
                let pacing: ReplayPacing = topSpeed ? .topSpeed
                    : rate.map { .rate(packetsPerSecond: $0) } ?? .capture(speed: speed ?? 1)
                let loop = try source.optional("loop")?.int(in: 1...1_000_000) ?? 1
                input = .capture(path: path, pacing: pacing, loopCount: loop)
            case let (nil, interface?):
                for key in ["speed", "rate", "top_speed", "loop"] where source.optional(key) != nil {
                    throw source.child(key).invalid("only a pcap source is paced or looped")
                }
                var rx = AFPacketRXConfiguration(interface: try interface.interfaceName())
                if let group = source.optional("fanout_group") {
                    rx.fanout = AFPacketFanout(group: UInt16(try group.int(in: 0...Int(UInt16.max))), defragment: true)
                }
                if let port = source.optional("port") { rx.port = UInt16(try port.int(in: 0...Int(UInt16.max))) }
                input = .interface(rx)
            case (_?, _?):
                throw source.invalid("give pcap or interface, not both")
            case (nil, nil):
                throw source.invalid("needs pcap (a capture file), interface (AF_PACKET RX) or kind: af_xdp")
            }
        }
        let sink = try reader.required("sink")
        let output: ReplayOutput
        var afXDPSink: AFXDPPortSettings?
        if let kind = sink.optional("kind") {
            afXDPSink = try decodeAFXDP(sink, kind: kind)
            output = .interface(afXDPSink!.configuration.interface)
        } else {
            try sink.allowKeys(["pcap", "interface", "discard"])
            let outputs = ["pcap", "interface", "discard"].filter { sink.optional($0) != nil }
            guard outputs.count == 1 else { throw sink.invalid("give exactly one of pcap, interface, discard, kind: af_xdp") }
            switch outputs[0] {
            case "pcap":
                let path = try sink.child("pcap").string()
                guard !path.isEmpty else { throw sink.child("pcap").invalid("empty path") }
                output = .pcapFile(path)
            case "interface":
                output = .interface(try sink.child("interface").interfaceName())
            default:
                guard try sink.child("discard").bool() else { throw sink.child("discard").invalid("only `discard: true` makes sense") }
                output = .discard
            }
        }
        var path = PacketPathConfiguration(name: name, input: input, output: output)
        if let stages = reader.optional("stages") {
            let names: [String: ReplayStages] = ["none": .none, "classify": .classify, "classify-and-act": .classifyAndAct]
            let text = try stages.string()
            guard let value = names[text] else { throw stages.invalid("'\(text)' is not none, classify or classify-and-act") }
            path.stages = value
        }
        if let classify = reader.optional("classify") { path.classifier = try decodeClassifier(classify) }
        if let outputs = reader.optional("outputs") { path.outputs = try decodeOutputs(outputs, sink: output) }
        if let rules = reader.optional("rules") {  // RulesConfiguration.swift
            path.rules = try RulesConfiguration.decode(rules, outputs: path.outputs.map(\.name))
            guard path.stages == .classifyAndAct else { throw rules.invalid("rules run in the action stage: needs stages: classify-and-act") }
        } else if !path.outputs.isEmpty, let outputs = reader.optional("outputs") {
            do { path.rules = try RuleTable(rules: [], outputs: path.outputs.map(\.name)) } catch {
                throw outputs.invalid("\(error)")
            }
        }
        if !path.outputs.isEmpty, path.stages != .classifyAndAct, let outputs = reader.optional("outputs") {
            throw outputs.invalid("rules pick the output in the action stage: needs stages: classify-and-act")
        }
        if let traffic = reader.optional("traffic") { path.traffic = try decodeTraffic(traffic) }
        if let burst = reader.optional("burst") { path.burstCount = try burst.int(in: 1...Limits.burstCountMax) }
        if let ring = reader.optional("ring_size") {
            path.ringCapacity = try ring.int(in: 2...Limits.ringCapacityMax)
            guard path.ringCapacity & (path.ringCapacity - 1) == 0 else {
                throw ring.invalid("must be a power of two, got \(path.ringCapacity)")
            }
        }
        if let buffers = reader.optional("buffers") { path.poolBufferCount = try buffers.int(in: 64...Limits.ringCapacityMax) }
        if let buffersMax = reader.optional("buffers_max") {
            path.poolBufferCountMax = try buffersMax.int(in: 64...Limits.ringCapacityMax)
            guard path.poolBufferCountMax! >= path.poolBufferCount else {
                throw buffersMax.invalid("at least buffers (\(path.poolBufferCount)), got \(path.poolBufferCountMax!)")
            }
        }
        if let size = reader.optional("buffer_size") { path.bufferSizeBytes = try size.int(in: 256...65_536) }
        do { try PacketPath.validate(path) } catch {
            guard case .invalidConfiguration(let reason) = error else { throw reader.invalid("\(error)") }
            throw reader.invalid("\(reason)")
        }
        var cores = serviceCores
        if let coreList = reader.optional("cores") {
            cores = try coreList.cores()
            for core in cores where !serviceCores.contains(core) {
                throw coreList.invalid("core \(core) is not in the service's cores \(serviceCores)")
            }
        }
        var settings = PipelineSettings(path: path, cores: cores)
        if let weight = reader.optional("weight") {
            settings.weight = try weight.positiveDouble()
            guard settings.weight <= 1_000_000 else { throw weight.invalid("at most 1000000, got \(settings.weight)") }
        }
        settings.afXDPSource = afXDPSource
        settings.afXDPSink = afXDPSink
        if let stageCoresReader = reader.optional("stage_cores") {
            let items = try stageCoresReader.list()
            guard items.count == path.stageCount else {
                throw stageCoresReader.invalid("one core per stage (\(path.stageCount), source first, the outputs stage before the sink), got \(items.count)")
            }
            var stageCores: [Int] = []
            for item in items {
                let core = try item.int(in: 0...(ServiceLimits.cpuNumberMax - 1))
                guard cores.contains(core) else { throw item.invalid("core \(core) is not in the pipeline's cores \(cores)") }
                stageCores.append(core)
            }
            settings.stageCores = stageCores
        }
        if let placementReader = reader.optional("placement") {
            let text = try placementReader.string()
            guard let placement = ReplayPlacement(rawValue: text), placement != .fanout else {
                throw placementReader.invalid(text == "fanout"
                    ? "fanout is sluice replay's: a service fans out with pipelines sharing a source's fanout_group"
                    : "'\(text)' is not auto or spread")
            }
            guard settings.stageCores == nil else {
                throw placementReader.invalid("stage_cores fixes every stage's core: give one of placement and stage_cores")
            }
            settings.placement = placement
        }
        return settings
    }

    /// `kind: af_xdp` with iface (required), queue, mode (auto|native|generic), frames, frame_size and
    /// fallback (af_packet). Bounds are `AFXDPLimits`; each bad value is an error naming its key.
    private static func decodeAFXDP(_ reader: ConfigReader, kind: ConfigReader) throws(ConfigError) -> AFXDPPortSettings {
        let text = try kind.string()
        guard text == "af_xdp" else {
            throw kind.invalid("'\(text)' is not af_xdp (an AF_PACKET port is `interface: NAME`, without kind)")
        }
        try reader.allowKeys(["kind", "iface", "queue", "mode", "frames", "frame_size", "fallback"])
        var settings = AFXDPPortSettings(configuration: AFXDPConfiguration(interface: try reader.required("iface").interfaceName()))
        if let queue = reader.optional("queue") {
            settings.configuration.queue = UInt32(try queue.int(in: 0...Int(AFXDPLimits.queueMax)))
        }
        if let mode = reader.optional("mode") {
            let text = try mode.string()
            guard let value = AFXDPMode(rawValue: text) else { throw mode.invalid("'\(text)' is not auto, native or generic") }
            settings.configuration.mode = value
        }
        if let frames = reader.optional("frames") {
            let count = try frames.int(in: AFXDPLimits.frameCountMin...AFXDPLimits.frameCountMax)
            guard count.nonzeroBitCount == 1 else { throw frames.invalid("must be a power of two, got \(count)") }
            settings.configuration.frameCount = count
            settings.configuration.ringSize = min(settings.configuration.ringSize, count)
        }
        if let size = reader.optional("frame_size") {
            let bytes = try size.int(in: AFXDPLimits.frameSizeMin...AFXDPLimits.frameSizeMax)
            guard bytes == 2048 || bytes == 4096 else { throw size.invalid("must be 2048 or 4096, got \(bytes)") }
            settings.configuration.frameSizeBytes = bytes
        }
        if let fallback = reader.optional("fallback") {
            let text = try fallback.string()
            guard text == "af_packet" else { throw fallback.invalid("'\(text)' is not af_packet (the only fallback)") }
            settings.fallbackToAFPacket = true
        }
        return settings
    }

    private static func decodeClassifier(_ reader: ConfigReader) throws(ConfigError) -> ClassifierConfiguration {
        try reader.allowKeys(["by", "sources"])
        let keys: [String: SourceKey] = ["source-mac": .sourceMAC, "outer-vlan": .outerVLAN,
                                         "source-prefix": .sourcePrefix, "input-port": .inputPort]
        let byReader = try reader.required("by")
        let by = try byReader.string()
        guard let key = keys[by] else { throw byReader.invalid("'\(by)' is not one of \(keys.keys.sorted().joined(separator: ", "))") }
        var entries: [SourceEntry] = []
        if let sources = reader.optional("sources") {
            for (value, idReader) in try sources.pairs() {
                let id = try idReader.int(in: 0...Int(UInt16.max))
                let match: SourceMatch? = switch key {
                case .sourceMAC: MACAddress(value).map { .mac($0) }
                case .outerVLAN: UInt16(value).map { .vlan($0) }
                case .sourcePrefix: IPPrefix(value).map { .prefix($0) }
                case .inputPort: UInt16(value).map { .port($0) }
                }
                guard let match else { throw idReader.invalid("'\(value)' is not a \(by) value") }
                entries.append(SourceEntry(match, sourceID: UInt16(id)))
            }
        }
        do { return try ClassifierConfiguration(key: key, entries: entries) } catch {
            throw reader.invalid("\(error)")
        }
    }

    private static func decodeTraffic(_ reader: ConfigReader) throws(ConfigError) -> TrafficPolicy {
        try reader.allowKeys(["weights", "min_bytes_per_second", "max_bytes_per_second"])
        let weightsReader = try reader.required("weights")
        let weights = try weightsReader.list()
        guard (1...TrafficLimits.sourceCountMax).contains(weights.count) else {
            throw weightsReader.invalid("1...\(TrafficLimits.sourceCountMax) weights, one per source id, got \(weights.count)")
        }
        var sources: [SourcePolicy] = []
        for weight in weights { sources.append(SourcePolicy(weight: try weight.positiveDouble())) }
        for (key, isMinimum) in [("min_bytes_per_second", true), ("max_bytes_per_second", false)] {
            guard let limits = reader.optional(key) else { continue }
            let items = try limits.list()
            guard items.count == sources.count else {
                throw limits.invalid("one value per weight (\(sources.count)), got \(items.count)")
            }
            for (index, item) in items.enumerated() {
                let value = try item.positiveDouble(allowZero: isMinimum)
                if isMinimum { sources[index].minimumBytesPerSecond = value } else { sources[index].maximumBytesPerSecond = value }
            }
        }
        let policy = TrafficPolicy(sources: sources)
        do { try policy.validate() } catch { throw reader.invalid("\(error)") }
        return policy
    }

    /// `wan:`: a list of links, each `a`, `b`, `delay` and `rate` required; `jitter`, `loss`, `queue`,
    /// `corrupt` for both directions, overridden by `a_to_b:` and `b_to_a:`; `name`, `netns`, `seed`,
    /// `realtime_priority` optional.
    /// Units as `sluice wan` takes them (WANUnits); names and interfaces unique per namespace.
    private static func decodeWAN(_ reader: ConfigReader) throws(ConfigError) -> [WANConfiguration] {
        let items = try reader.list()
        guard items.count <= ServiceLimits.wanLinkCountMax else {
            throw reader.invalid("at most \(ServiceLimits.wanLinkCountMax) links, got \(items.count)")
        }
        var links: [WANConfiguration] = []
        for item in items {
            let link = try decodeWANLink(item)
            if links.contains(where: { $0.name == link.name }) {
                throw item.invalid("name '\(link.name)' is used by an earlier link")
            }
            for other in links where other.namespacePath == link.namespacePath {
                for interface in [link.interfaceA, link.interfaceB] where [other.interfaceA, other.interfaceB].contains(interface) {
                    throw item.invalid("interface '\(interface)' is also link '\(other.name)''s")
                }
            }
            links.append(link)
        }
        return links
    }

    private static func decodeWANLink(_ reader: ConfigReader) throws(ConfigError) -> WANConfiguration {
        let settingKeys = WANSetting.allCases.map(\.rawValue)
        try reader.allowKeys(["name", "a", "b", "netns", "seed", "realtime_priority", "a_to_b", "b_to_a"] + settingKeys)
        let a = try reader.required("a").interfaceName()
        let b = try reader.required("b").interfaceName()
        _ = try reader.required("delay")
        _ = try reader.required("rate")
        var common = WANDirectionSettings()
        try applyWAN(reader, to: &common)
        var aToB = common
        var bToA = common
        for (key, direction) in [("a_to_b", WANDirection.aToB), ("b_to_a", .bToA)] {
            guard let overrides = reader.optional(key) else { continue }
            try overrides.allowKeys(settingKeys)
            if direction == .aToB { try applyWAN(overrides, to: &aToB) } else { try applyWAN(overrides, to: &bToA) }
        }
        var namespacePath: String?
        if let netns = reader.optional("netns") {
            let name = try netns.string()
            guard !name.isEmpty, !name.contains("/") else { throw netns.invalid("'\(name)' is not a namespace name (as ip netns lists them)") }
            namespacePath = "/var/run/netns/\(name)"
        }
        let seed = try reader.optional("seed").map { seed throws(ConfigError) in UInt64(try seed.int(in: 0...Int.max)) } ?? 1
        let name = try reader.optional("name")?.string()
        let priority = try reader.optional("realtime_priority").map { value throws(ConfigError) in
            try value.int(in: WANLimits.realtimePriorityRange.lowerBound...WANLimits.realtimePriorityRange.upperBound)
        }
        let link = WANConfiguration(name: name, interfaceA: a, interfaceB: b, aToB: aToB, bToA: bToA, seed: seed,
                                    namespacePath: namespacePath, realtimePriority: priority)
        do { try link.validate() } catch {
            if case .invalidName = error { throw reader.child("name").invalid("\(error)") }
            throw reader.invalid("\(error)")
        }
        return link
    }

    /// Sets every WAN setting `reader` has (delay, jitter, rate, loss, queue, corrupt), each error naming its key.
    private static func applyWAN(_ reader: ConfigReader, to settings: inout WANDirectionSettings) throws(ConfigError) {
        for setting in WANSetting.allCases {
            guard let value = reader.optional(setting.rawValue) else { continue }
            let text = try value.string()
            do { try settings.set(setting, from: text) } catch { throw value.invalid("\(error)") }
        }
    }

    private static func decodeStorage(_ reader: ConfigReader) throws(ConfigError) -> StorageSettings {
        try reader.allowKeys(["data", "listen", "page_size", "queue_depth", "blocking_threads", "max_frame_bytes",
                              "direct_io", "checkpoint_on_shutdown", "log"])
        let dataReader = try reader.required("data")
        let data = try dataReader.string()
        guard !data.isEmpty else { throw dataReader.invalid("empty path") }
        var storage = StorageSettings(dataDirectory: data)
        if let listen = reader.optional("listen") { storage.listen = try listen.listenAddress() }
        if let pageSize = reader.optional("page_size") {
            storage.pageSizeBytes = try pageSize.int(in: 4096...(1 << 20))
            guard storage.pageSizeBytes & (storage.pageSizeBytes - 1) == 0 else {
                throw pageSize.invalid("must be a power of two, got \(storage.pageSizeBytes)")
            }
        }
        if let depth = reader.optional("queue_depth") { storage.queueDepth = try depth.int(in: 1...PageFile.queueDepthMax) }
        if let threads = reader.optional("blocking_threads") { storage.blockingThreadCount = try threads.int(in: 1...256) }
        if let frame = reader.optional("max_frame_bytes") {
            storage.frameBytesMax = try frame.int(in: (storage.pageSizeBytes + 64)...StorageProtocol.frameBytesMaxLimit)
        }
        if let direct = reader.optional("direct_io") { storage.directIO = try direct.bool() }
        if let checkpoint = reader.optional("checkpoint_on_shutdown") { storage.checkpointOnShutdown = try checkpoint.bool() }
        if let log = reader.optional("log") { storage.log = try decodeStorageLog(log) }
        return storage
    }

    /// `storage.log`: `kind` embedded (nothing else allowed) or etcd (endpoints required).
    private static func decodeStorageLog(_ reader: ConfigReader) throws(ConfigError) -> StorageLogSettings {
        let kindReader = reader.optional("kind")
        let kind = try kindReader?.string() ?? "embedded"
        switch kind {
        case "embedded":
            try reader.allowKeys(["kind"])
            return .embedded
        case "etcd":
            try reader.allowKeys(["kind", "endpoints", "prefix", "call_timeout_ms", "proposal_timeout_ms",
                                  "batch_records_max", "batch_bytes_max", "batch_wait_us"])
            let endpointsReader = try reader.required("endpoints")
            let list = try endpointsReader.list()
            guard (1...EtcdLimits.endpointCountMax).contains(list.count) else {
                throw endpointsReader.invalid("\(list.count) endpoints, want 1...\(EtcdLimits.endpointCountMax)")
            }
            var endpoints: [String] = []
            for entry in list {
                let text = try entry.string()
                // `http://HOST:PORT` as is; a bare `HOST:PORT` is checked like `--log etcd://HOST:PORT`.
                let bare = text.hasPrefix("http://") ? String(text.dropFirst("http://".count)) : text
                guard !bare.contains("/"), !bare.contains(",") else { throw entry.invalid("\"\(text)\" is not http://HOST:PORT or HOST:PORT") }
                do { endpoints += try EtcdLogConfiguration.endpoints(fromURL: "etcd://" + bare) } catch {
                    throw entry.invalid("\"\(text)\" is not http://HOST:PORT or HOST:PORT")
                }
            }
            var settings = EtcdLogSettings(endpoints: endpoints)
            if let prefix = reader.optional("prefix") {
                settings.prefix = try prefix.string()
                guard !settings.prefix.isEmpty, !settings.prefix.hasSuffix("/") else {
                    throw prefix.invalid("must be non-empty, without a trailing /")
                }
            }
            typealias Limits = EtcdLogConfiguration
            func int64(_ reader: ConfigReader, _ range: ClosedRange<Int64>) throws(ConfigError) -> Int64 {
                Int64(try reader.int(in: Int(range.lowerBound)...Int(range.upperBound)))
            }
            if let value = reader.optional("call_timeout_ms") { settings.callTimeoutMs = try int64(value, 1...EtcdLimits.callTimeoutMsMax) }
            if let value = reader.optional("proposal_timeout_ms") {
                settings.proposalTimeoutMs = try int64(value, Limits.proposalTimeoutMsLimit)
            }
            if let value = reader.optional("batch_records_max") { settings.batchRecordsMax = try value.int(in: Limits.batchRecordsMaxLimit) }
            if let value = reader.optional("batch_bytes_max") { settings.batchBytesMax = try value.int(in: Limits.batchBytesMaxLimit) }
            if let value = reader.optional("batch_wait_us") { settings.batchWaitUs = try int64(value, Limits.batchWaitUsLimit) }
            return .etcd(settings)
        default:
            throw (kindReader ?? reader).invalid("kind must be embedded or etcd, got \"\(kind)\"")
        }
    }
}

/// A node of the tree with its key path, for errors that name the key.
struct ConfigReader {
    let node: ConfigNode
    let key: String

    init(_ node: ConfigNode, key: String) {
        self.node = node
        self.key = key
    }

    func invalid(_ reason: String) -> ConfigError { .invalid(key: key.isEmpty ? "(top level)" : key, line: node.line, reason: reason) }

    private func childKey(_ name: String) -> String { key.isEmpty ? name : "\(key).\(name)" }

    /// The value at `name`, nil when absent or null.
    func optional(_ name: String) -> ConfigReader? {
        guard case .map(let pairs, _) = node, let pair = pairs.first(where: { $0.key == name }) else { return nil }
        if case .scalar("", _) = pair.value { return nil }
        return ConfigReader(pair.value, key: childKey(name))
    }

    func required(_ name: String) throws(ConfigError) -> ConfigReader {
        guard case .map = node else { throw invalid("expected a mapping of keys") }
        guard let child = optional(name) else { throw .missingKey(key: childKey(name)) }
        return child
    }

    /// A child the caller knows is there (checked with `optional`).
    func child(_ name: String) -> ConfigReader { optional(name) ?? ConfigReader(.scalar("", line: node.line), key: childKey(name)) }

    /// Rejects keys outside `known` (typos would otherwise be silently ignored).
    func allowKeys(_ known: [String]) throws(ConfigError) {
        guard case .map(let pairs, _) = node else { throw invalid("expected a mapping of keys") }
        for pair in pairs where !known.contains(pair.key) {
            throw .unknownKey(key: childKey(pair.key), line: pair.value.line, known: known)
        }
    }

    func string() throws(ConfigError) -> String {
        guard case .scalar(let text, _) = node else { throw invalid("expected a single value, not a list or mapping") }
        return text
    }

    func int(in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        let text = try string()
        let digits = text.replacing("_", with: "")
        guard let value = Int(digits) else { throw invalid("expected a whole number, got '\(text)'") }
        guard range.contains(value) else { throw outOfRange(Double(value), Double(range.lowerBound)...Double(range.upperBound)) }
        return value
    }

    func outOfRange(_ value: Double, _ allowed: ClosedRange<Double>) -> ConfigError {
        .outOfRange(key: key.isEmpty ? "(top level)" : key, line: node.line, value: value, allowed: allowed)
    }

    /// A finite number within `range` (a bound for what the data path can compute with, not taste).
    func double(in range: ClosedRange<Double>) throws(ConfigError) -> Double {
        let text = try string()
        guard let value = Double(text.replacing("_", with: "")), value.isFinite else { throw invalid("expected a number, got '\(text)'") }
        guard range.contains(value) else { throw outOfRange(value, range) }
        return value
    }

    func positiveDouble(allowZero: Bool = false) throws(ConfigError) -> Double {
        let text = try string()
        guard let value = Double(text), value.isFinite else { throw invalid("expected a number, got '\(text)'") }
        guard value > 0 || (allowZero && value == 0) else { throw invalid("must be \(allowZero ? "zero or more" : "positive"), got \(text)") }
        return value
    }

    func bool() throws(ConfigError) -> Bool {
        let text = try string()
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw invalid("expected true or false, got '\(text)'")
        }
    }

    func list() throws(ConfigError) -> [ConfigReader] {
        guard case .list(let items, _) = node else { throw invalid("expected a list") }
        return items.enumerated().map { ConfigReader($1, key: "\(key)[\($0)]") }
    }

    func pairs() throws(ConfigError) -> [(String, ConfigReader)] {
        guard case .map(let pairs, _) = node else { throw invalid("expected a mapping") }
        return pairs.map { ($0.key, ConfigReader($0.value, key: childKey($0.key))) }
    }

    /// A CPU list: `[0, 1]`, `"0-3"` or `"0,2"`; each CPU at most once.
    func cores() throws(ConfigError) -> [Int] {
        var cores: [Int] = []
        let parts: [ConfigReader]
        if case .list = node { parts = try list() } else { parts = [self] }
        for part in parts {
            for piece in try part.string().split(separator: ",") {
                // Empty parts are kept, so "-1" is an empty range start (refused), not CPU 1.
                let bounds = piece.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
                    .map { Int($0.trimmingCharacters(in: .whitespaces)) }
                guard let low = bounds.first ?? nil, let high = bounds.last ?? nil, low >= 0, low <= high,
                      high < ServiceLimits.cpuNumberMax else {
                    throw part.invalid("'\(piece)' is not a CPU number or range below \(ServiceLimits.cpuNumberMax)")
                }
                for core in low...high {
                    guard !cores.contains(core) else { throw part.invalid("core \(core) appears twice") }
                    cores.append(core)
                }
            }
        }
        guard !cores.isEmpty else { throw invalid("no cores") }
        return cores
    }

    /// `host:port` with an IPv4 literal or `localhost`, port 0...65535 (0: any free port).
    func listenAddress() throws(ConfigError) -> ListenAddress {
        let text = try string()
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else {
            throw invalid("expected host:port, e.g. 127.0.0.1:9464, got '\(text)'")
        }
        let host = String(text[..<colon])
        guard host == "localhost" || isIPv4(host) else { throw invalid("'\(host)' is not an IPv4 address or localhost") }
        return ListenAddress(host: host, port: port)
    }

    func interfaceName() throws(ConfigError) -> String {
        let name = try string()
        guard (1...AFPacketLimits.interfaceNameLengthMax).contains(name.utf8.count),
              !name.contains("/"), !name.contains(" ") else {
            throw invalid("'\(name)' is not an interface name (1-\(AFPacketLimits.interfaceNameLengthMax) bytes)")
        }
        return name
    }

    private func isIPv4(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { part in
            guard let value = Int(part), (0...255).contains(value), part.count <= 3 else { return false }
            return true
        }
    }
}
