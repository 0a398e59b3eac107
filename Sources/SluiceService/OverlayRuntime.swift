// Path: Sources/SluiceService/OverlayRuntime.swift — the service's overlay host (`overlay:`): its data plane
// thread and, on a consumer host, the join to the leasing side (etcd watch + agents); decoded from the
// config, started after the WAN links, stopped with them, counted in the metrics (`sluice_overlay_*`).
import Foundation
import Logging
import SluiceEtcd
import SluiceOverlay
import Synchronization

/// `overlay:` as checked: the host, its static leases, and where its leases come from (nil: static only).
public struct OverlaySettings: Sendable {
    public var host: OverlayHostConfiguration
    public var staticLeases: [OverlayLease]
    public var leasing: OverlayHostLeasingConfiguration?
    public var etcdEndpoints: [String]
    public var statsFile: String?
}

extension ServiceConfiguration {
    /// `overlay:` takes the keys of `sluice overlay host`'s JSON config (docs/OVERLAY.md) in snake_case
    /// (`host_mac`, `overlay_ipv4`, `flow_capacity`, `leasing: {etcd, agents, prefix, consumer_host}` ...).
    static func decodeOverlay(_ reader: ConfigReader) throws(ConfigError) -> OverlaySettings {
        guard case .map = reader.node else { throw reader.invalid("expected a mapping of keys") }
        let data: Data
        do { data = try JSONSerialization.data(withJSONObject: Self.overlayJSON(reader.node)) } catch {
            throw reader.invalid("cannot be read as the overlay host config: \(error)")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .custom { path in OverlayKey(camelCase: path.last!.stringValue) }
        let file: OverlayHostConfigFile
        do { file = try decoder.decode(OverlayHostConfigFile.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw .missingKey(key: "\(reader.key).\(OverlayKey.snakeCase(key.stringValue))")
        } catch {
            throw reader.invalid("\(error)")
        }
        let resolved: (OverlayHostConfiguration, [OverlayLease])
        let leasing: OverlayHostLeasingConfiguration?
        do {
            resolved = try file.resolve()
            leasing = try file.leasing?.resolve(hostName: file.name)
        } catch {
            throw reader.invalid("\(error)")
        }
        return OverlaySettings(host: resolved.0, staticLeases: resolved.1, leasing: leasing,
                               etcdEndpoints: file.leasing?.etcd ?? [], statsFile: file.statsFile)
    }

    /// The config subtree as JSON objects: scalars that read as integers, decimals or booleans become
    /// numbers and booleans (quote nothing: a name made of digits would be read as a number).
    private static func overlayJSON(_ node: ConfigNode) -> Any {
        switch node {
        case .scalar(let text, _):
            if let integer = Int64(text) { return integer }
            if text.filter({ $0 == "." }).count == 1, let decimal = Double(text) { return decimal }
            if text == "true" || text == "false" { return text == "true" }
            return text
        case .list(let items, _): return items.map(overlayJSON)
        case .map(let pairs, _):
            var object: [String: Any] = [:]
            for pair in pairs { object[pair.key] = overlayJSON(pair.value) }
            return object
        }
    }
}

/// snake_case config keys to the JSON config's camelCase (`host_mac` -> `hostMAC`, `lease_id` -> `leaseID`).
struct OverlayKey: CodingKey {
    static let acronyms = ["mac": "MAC", "ipv4": "IPv4", "id": "ID", "vm": "VM", "vni": "VNI", "udp": "UDP"]
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    init(camelCase snake: String) {
        let parts = snake.split(separator: "_", omittingEmptySubsequences: false).map(String.init)
        var name = parts.first ?? ""
        for part in parts.dropFirst() { name += Self.acronyms[part] ?? part.prefix(1).uppercased() + part.dropFirst() }
        stringValue = name
    }
    /// The other way, for error messages.
    static func snakeCase(_ camel: String) -> String {
        var out = ""
        for character in camel {
            if character.isUppercase, !out.isEmpty, out.last != "_", !(out.last?.isUppercase ?? false) { out += "_" }
            out += character.lowercased()
        }
        return out
    }
}

/// The running overlay host: its forwarding thread, the leasing join's task and its etcd client.
/// Control-plane object; any thread may take `snapshot()`/`metricsText()`.
public final class OverlayRuntime: Sendable {
    public let settings: OverlaySettings
    public let host: OverlayHost
    /// The leasing join in force (replaced by a fresh one after etcd was lost; see `start`).
    public var leasing: OverlayHostLeasing? { currentLeasing.withLock { $0 } }
    private let currentLeasing: Mutex<OverlayHostLeasing?>
    private let client: EtcdClient?
    private let task = Mutex<Task<Void, Never>?>(nil)

    public init(settings: OverlaySettings) throws(ServiceError) {
        do { host = try OverlayHost(configuration: settings.host) } catch { throw .overlay("\(error)") }
        if let configuration = settings.leasing {
            let client: EtcdClient
            do { client = try EtcdClient(EtcdClientConfiguration(endpoints: settings.etcdEndpoints)) } catch {
                throw .overlay("etcd: \(error)")
            }
            do {
                currentLeasing = Mutex(try OverlayHostLeasing(host: host, etcd: client, configuration: configuration))
            } catch {
                throw .overlay("leasing: \(error)")
            }
            self.client = client
        } else {
            currentLeasing = Mutex(nil)
            client = nil
        }
        self.settings = settings
    }

    /// Starts the forwarding thread (ports opened) and the leasing join. Blocks up to 10 s.
    public func start(logger: Logger) throws(ServiceError) {
        for lease in settings.staticLeases { host.submit(.granted(lease)) }
        do { try host.start() } catch { throw .overlay("\(error)") }
        if leasing != nil, let client, let configuration = settings.leasing {
            let name = settings.host.name
            task.withLock {
                $0 = Task { [self] in await followLeases(client: client, configuration: configuration, host: name, logger: logger) }
            }
        }
        logger.info("overlay host started", metadata: [
            "host": "\(settings.host.name)", "vms": "\(settings.host.vmInterfaces)", "underlay": "\(settings.host.underlayInterface)",
            "leases": leasing == nil ? "static (\(settings.staticLeases.count))" : "etcd \(settings.etcdEndpoints), agents \(settings.leasing!.agents)"])
    }

    /// Runs the leasing join until cancelled. When etcd cannot be watched again within the watch's
    /// reconnect deadline, the host can no longer know which leases hold: it fails closed, ending
    /// every redirect it has (no packet may reach a producer whose lease may be gone), then starts a
    /// fresh join (a new snapshot re-grants the live leases) after a backoff of 0.5 s doubling to 30 s.
    private func followLeases(client: EtcdClient, configuration: OverlayHostLeasingConfiguration, host name: String,
                              logger: Logger) async {
        var backoffMs: Int64 = 500
        while !Task.isCancelled {
            guard let current = leasing else { return }
            do throws(OverlayLeasingError) {
                try await current.run()
                return  // cancelled
            } catch {
                let withdrawn = withdrawAllLeases()
                logger.error("overlay leasing lost etcd: every redirect withdrawn until it is back", metadata: [
                    "host": "\(name)", "error": "\(error)", "withdrawn": "\(withdrawn)", "retryInMs": "\(backoffMs)"])
            }
            try? await Task.sleep(for: .milliseconds(backoffMs))
            backoffMs = min(backoffMs * 2, 30_000)
            do throws(OverlayLeasingError) {
                let fresh = try OverlayHostLeasing(host: host, etcd: client, configuration: configuration)
                currentLeasing.withLock { $0 = fresh }
            } catch {
                logger.error("overlay leasing could not restart", metadata: ["host": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// Ends every lease the host holds (reason `expired`: nothing says it still holds). Returns how many.
    private func withdrawAllLeases() -> Int {
        let leases = host.snapshot().leases
        for lease in leases {
            var tries = 0
            while !host.submit(.ended(leaseID: lease.leaseID, epoch: lease.epoch, reason: .expired)), tries < 1_000 {
                tries += 1
                usleep(1_000)
            }
        }
        return leases.count
    }

    /// Stops the join and the thread; logs the final counters.
    public func stop(logger: Logger) {
        let running = task.withLock { task -> Task<Void, Never>? in
            defer { task = nil }
            return task
        }
        running?.cancel()
        host.stop()
        if let client {
            let done = DispatchSemaphore(value: 0)
            Task {
                await running?.value
                await client.shutdown()
                done.signal()
            }
            _ = done.wait(timeout: .now() + 5)
        }
        let snapshot = host.snapshot()
        logger.info("overlay host stopped", metadata: [
            "host": "\(snapshot.host)", "flows": "\(snapshot.flowCount)", "leases": "\(snapshot.leases.count)",
            "drops": "\(snapshot.drops.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"])
    }

    /// `sluice_overlay_*` in the Prometheus text format.
    public func metricsText() -> String { OverlayMetrics.text(host.snapshot(), leasing: leasing?.counters) }
}
