// Path: Sources/SluiceScheduling/HostSamplers.swift — where the live manager's per-host samples come
// from: `sluice run`'s metrics endpoint (per-port byte counters, the traffic controller's per-source
// bytes) when the dataplane drives the port, else the kernel's /proc/net/dev; free memory from
// /proc/meminfo. Each sample says which source it came from.
import Foundation
import SluiceMigration
import SluiceService

/// Where one sample's used bandwidth came from.
public enum SampleSource: Sendable, Equatable, CustomStringConvertible {
    /// `sluice run`'s metrics: `rx` when `sluice_pipeline_bytes_in_total{pipeline=PORT}` was read, `tx`
    /// when `sluice_traffic_sent_bytes{port=PORT,source=*}` (the traffic controller's per-source bytes) was.
    case dataplane(rx: Bool, tx: Bool)
    /// The kernel's counters of `interface` (/proc/net/dev); `why` says why not the dataplane, if it was asked.
    case procNetDev(interface: String, why: String?)
    /// No rate this tick (the first reading of a counter, or every source failed: `why`).
    case none(why: String)

    /// The Prometheus label value: `dataplane`, `proc_net_dev` or `none`.
    public var label: String {
        switch self {
        case .dataplane: "dataplane"
        case .procNetDev: "proc_net_dev"
        case .none: "none"
        }
    }

    public var description: String {
        switch self {
        case .dataplane(let rx, let tx): "dataplane (" + [rx ? "rx bytes" : nil, tx ? "per-source tx bytes" : nil].compactMap { $0 }.joined(separator: ", ") + ")"
        case .procNetDev(let interface, let why): "/proc/net/dev \(interface)" + (why.map { " (dataplane: \($0))" } ?? "")
        case .none(let why): "none (\(why))"
        }
    }
}

/// One reading of a host: the bandwidth production uses on its link (real bytes/s, nil when no rate is
/// known yet), its free memory, and the source.
public struct HostSample: Sendable, Equatable {
    public var usedBytesPerSecond: Double?
    public var freeMemoryBytes: Double
    public var source: SampleSource
    /// The two directions `usedBytesPerSecond` is the larger of, when the source has both: the manager
    /// takes a move's stream out of the direction it used (TX on its source, RX on its destination).
    public var rxBytesPerSecond: Double?
    public var txBytesPerSecond: Double?

    public init(usedBytesPerSecond: Double?, freeMemoryBytes: Double, source: SampleSource,
                rxBytesPerSecond: Double? = nil, txBytesPerSecond: Double? = nil) {
        self.usedBytesPerSecond = usedBytesPerSecond
        self.freeMemoryBytes = freeMemoryBytes
        self.source = source
        self.rxBytesPerSecond = rxBytesPerSecond
        self.txBytesPerSecond = txBytesPerSecond
    }

    /// Used bandwidth with `outgoing` bytes/s taken out of TX and `incoming` out of RX (a running move's
    /// stream), then the larger direction; without directions, both out of the larger one.
    public func used(lessOutgoing outgoing: Double, incoming: Double) -> Double? {
        guard let used = usedBytesPerSecond else { return nil }
        guard rxBytesPerSecond != nil || txBytesPerSecond != nil else { return max(0, used - outgoing - incoming) }
        return max(max(0, (rxBytesPerSecond ?? 0) - incoming), max(0, (txBytesPerSecond ?? 0) - outgoing))
    }
}

/// Reads one host once per tick. Called by the manager only (one caller, in tick order); may block
/// briefly (a file read, one HTTP GET with a deadline). `atSeconds` is a monotonic reading in seconds.
public protocol HostSampler: Sendable {
    mutating func sample(atSeconds: Double) -> HostSample
}

/// A byte counter turned into a rate between two readings. A counter that went backwards (a restarted
/// `sluice run`) gives no rate for that reading.
public struct CounterRate: Sendable, Equatable {
    private var last: (seconds: Double, bytes: Double)?

    public init() {}

    public mutating func rate(bytes: Double, atSeconds seconds: Double) -> Double? {
        defer { last = (seconds, bytes) }
        guard let last, seconds > last.seconds, bytes >= last.bytes else { return nil }
        return (bytes - last.bytes) / (seconds - last.seconds)
    }

    public static func == (a: CounterRate, b: CounterRate) -> Bool { a.last?.seconds == b.last?.seconds && a.last?.bytes == b.last?.bytes }
}

/// Free memory as the kernel reports it (`MemAvailable` in /proc/meminfo), at most `cap` bytes (a test
/// "host" on a shared machine has less than the machine). Nil when the file cannot be read.
public func memAvailableBytes(cap: Double, path: String = "/proc/meminfo") -> Double? {
    NodeMemory.availableBytes(path: path).map { min(cap, $0) }
}

/// Used bandwidth from the kernel's counters of one interface (max of RX and TX rate, as `LinkMonitor`).
public struct ProcNetDevSampler: HostSampler {
    public let link: LinkMonitor
    public let memoryCapBytes: Double
    private var rx = CounterRate()
    private var tx = CounterRate()

    public init(interface: String, memoryCapBytes: Double, netDevPath: String = "/proc/net/dev") {
        link = LinkMonitor(.init(interface: interface, configuredCapacityBytesPerSecond: 1, netDevPath: netDevPath))
        self.memoryCapBytes = memoryCapBytes
    }

    public mutating func sample(atSeconds seconds: Double) -> HostSample {
        sample(atSeconds: seconds, why: nil)
    }

    mutating func sample(atSeconds seconds: Double, why: String?) -> HostSample {
        let memory = memAvailableBytes(cap: memoryCapBytes) ?? memoryCapBytes
        let counters: InterfaceCounters
        do { counters = try link.sample() } catch {
            return HostSample(usedBytesPerSecond: nil, freeMemoryBytes: memory, source: .none(why: "\(error)"))
        }
        let r = rx.rate(bytes: Double(counters.receivedBytes), atSeconds: seconds)
        let t = tx.rate(bytes: Double(counters.transmittedBytes), atSeconds: seconds)
        guard let r, let t else { return HostSample(usedBytesPerSecond: nil, freeMemoryBytes: memory, source: .none(why: "first reading")) }
        return HostSample(usedBytesPerSecond: max(r, t), freeMemoryBytes: memory,
                          source: .procNetDev(interface: link.configuration.interface, why: why), rxBytesPerSecond: r, txBytesPerSecond: t)
    }
}

/// The dataplane's counters of one port, read from a metrics scrape: RX bytes of the pipeline named
/// `port` and the sum of the traffic controller's per-source sent bytes on it (either may be absent).
public struct DataplanePortCounters: Sendable, Equatable {
    public var rxBytes: Double?
    public var txBytes: Double?
    /// The traffic controller's estimate of the port's capacity (bytes/s), when it runs.
    public var capacityBytesPerSecond: Double?
    /// The serving machine's `MemAvailable` (`sluice_node_memory_available_bytes`): a remote host's own.
    public var memoryAvailableBytes: Double?

    public static func read(_ samples: [MetricSample], port: String) -> DataplanePortCounters {
        var result = DataplanePortCounters()
        for sample in samples {
            switch sample.name {
            case "sluice_pipeline_bytes_in_total" where sample.labels["pipeline"] == port:
                result.rxBytes = (result.rxBytes ?? 0) + sample.value
            case "sluice_traffic_sent_bytes" where sample.labels["port"] == port:
                result.txBytes = (result.txBytes ?? 0) + sample.value
            case "sluice_traffic_port_capacity_bytes_per_second" where sample.labels["port"] == port:
                result.capacityBytesPerSecond = sample.value
            case "sluice_node_memory_available_bytes":
                result.memoryAvailableBytes = sample.value
            default: continue
            }
        }
        return result
    }
}

/// Used bandwidth from `sluice run`'s metrics endpoint (GET /metrics, `deadlineMs` each): the larger of
/// the port's RX and TX byte rates. When the endpoint does not answer or has neither counter for the
/// port, the sample comes from `fallback` (/proc/net/dev), which is read every tick so it has a rate ready.
public struct DataplaneSampler: HostSampler {
    public let endpoint: ListenAddress
    public let port: String
    public let deadlineMs: Int
    public let memoryCapBytes: Double
    private var fallback: ProcNetDevSampler?
    private var rx = CounterRate()
    private var tx = CounterRate()
    /// The last scrape's counters (for tests and the manager's log).
    public private(set) var lastCounters: DataplanePortCounters?
    /// The endpoint machine's free memory as last scraped (capped).
    public private(set) var lastRemoteMemoryBytes: Double?

    public init(endpoint: ListenAddress, port: String, memoryCapBytes: Double, fallback: ProcNetDevSampler?, deadlineMs: Int = 1_000) {
        precondition(deadlineMs > 0, "scrape deadline")
        self.endpoint = endpoint
        self.port = port
        self.memoryCapBytes = memoryCapBytes
        self.fallback = fallback
        self.deadlineMs = deadlineMs
    }

    public mutating func sample(atSeconds seconds: Double) -> HostSample {
        let scraped = scrape()
        if let remote = scraped.memory { lastRemoteMemoryBytes = min(memoryCapBytes, remote) }
        let kernel = fallback?.sample(atSeconds: seconds, why: scraped.why)
        // Free memory of the machine that serves the endpoint (a remote host's own; the last one read
        // while a scrape fails), else, for an endpoint that never said, this machine's.
        let memory = lastRemoteMemoryBytes ?? kernel?.freeMemoryBytes ?? memAvailableBytes(cap: memoryCapBytes) ?? memoryCapBytes
        guard let counters = scraped.counters else {
            lastCounters = nil
            if var kernel {
                kernel.freeMemoryBytes = memory
                return kernel
            }
            return HostSample(usedBytesPerSecond: nil, freeMemoryBytes: memory, source: .none(why: scraped.why ?? "no counters"))
        }
        lastCounters = counters
        let r = counters.rxBytes.flatMap { rx.rate(bytes: $0, atSeconds: seconds) }
        let t = counters.txBytes.flatMap { tx.rate(bytes: $0, atSeconds: seconds) }
        guard r != nil || t != nil else {
            return HostSample(usedBytesPerSecond: nil, freeMemoryBytes: memory, source: .none(why: "first dataplane reading"))
        }
        return HostSample(usedBytesPerSecond: max(r ?? 0, t ?? 0), freeMemoryBytes: memory, source: .dataplane(rx: r != nil, tx: t != nil),
                          rxBytesPerSecond: r, txBytesPerSecond: t)
    }

    private func scrape() -> (counters: DataplanePortCounters?, memory: Double?, why: String?) {
        let response: HTTPClientResponse
        do { response = try HTTPClient.get(host: endpoint.host, port: endpoint.port, path: "/metrics", deadlineMs: deadlineMs) } catch {
            return (nil, nil, "\(endpoint): \(error)")
        }
        guard response.status == 200 else { return (nil, nil, "\(endpoint): HTTP \(response.status)") }
        let samples: [MetricSample]
        do { samples = try MetricsText.parse(response.body) } catch { return (nil, nil, "\(endpoint): \(error)") }
        let counters = DataplanePortCounters.read(samples, port: port)
        guard counters.rxBytes != nil || counters.txBytes != nil else {
            return (nil, counters.memoryAvailableBytes, "\(endpoint): no counters for port '\(port)'")
        }
        return (counters, counters.memoryAvailableBytes, nil)
    }
}
