// Path: Sources/SluiceMigration/LinkMonitor.swift — free migration bandwidth, measured: the byte counters of
// the interface that carries traffic toward a destination (/proc/net/dev), sampled into a bounded ring, the
// rate used over a window, the link's capacity (/sys/class/net/IF/speed, else configured), and the rate
// QEMU actually achieved on the last move recorded as an observation. Reusable (issue 14 builds its
// bandwidth forecasts on it): public, Sendable, no global state.
import Foundation
import Glibc
import Synchronization

/// Why a link could not be measured, naming the file, command or line.
public enum LinkMonitorError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A file could not be read (`path`, the errno's words).
    case unreadable(path: String, reason: String)
    /// `/proc/net/dev` text did not parse: which line and why.
    case malformedNetDev(line: Int, reason: String)
    /// The interface is not in `/proc/net/dev`.
    case noSuchInterface(String)
    /// `ip route get ADDR` failed or named no device.
    case noRoute(address: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .malformedNetDev(let line, let reason): "/proc/net/dev line \(line): \(reason)"
        case .noSuchInterface(let name): "no interface \(name) in /proc/net/dev"
        case .noRoute(let address, let reason): "no route to \(address): \(reason)"
        }
    }
}

/// One interface's cumulative byte counters, as `/proc/net/dev` lists them.
public struct InterfaceCounters: Sendable, Equatable, Codable {
    public var interface: String
    public var receivedBytes: UInt64
    public var transmittedBytes: UInt64

    public init(interface: String, receivedBytes: UInt64, transmittedBytes: UInt64) {
        self.interface = interface
        self.receivedBytes = receivedBytes
        self.transmittedBytes = transmittedBytes
    }

    /// Parses `/proc/net/dev` text: two header lines, then `IFACE: rx_bytes rx_packets ... (8 receive
    /// fields) tx_bytes ...` (16 numbers). Blank lines are skipped; any other line that does not fit throws.
    public static func parseNetDev(_ text: String) throws(LinkMonitorError) -> [InterfaceCounters] {
        var result: [InterfaceCounters] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            if raw.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            guard let colon = raw.firstIndex(of: ":") else {
                if lineNumber <= 2 && raw.contains("|") { continue }  // the two header lines
                throw .malformedNetDev(line: lineNumber, reason: "no ':' after the interface name")
            }
            let name = raw[..<colon].trimmingSpaces()
            guard !name.isEmpty else { throw .malformedNetDev(line: lineNumber, reason: "empty interface name") }
            let fields = raw[raw.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 16 else {
                throw .malformedNetDev(line: lineNumber, reason: "\(fields.count) counters for \(name), expected 16")
            }
            guard let rx = UInt64(fields[0]), let tx = UInt64(fields[8]) else {
                throw .malformedNetDev(line: lineNumber, reason: "byte counters of \(name) are not numbers")
            }
            result.append(InterfaceCounters(interface: name, receivedBytes: rx, transmittedBytes: tx))
        }
        return result
    }
}

/// What a link has free for a migration at one moment, and how that was measured.
public struct LinkBandwidth: Sendable, Equatable, Codable, CustomStringConvertible {
    public enum CapacitySource: String, Sendable, Codable {
        /// `/sys/class/net/IF/speed` (the kernel knows the link's speed).
        case kernel
        /// The host type's configured migration bandwidth (the kernel does not know: `lo`, virtual links).
        case configured
    }

    public var interface: String
    public var capacityBytesPerSecond: UInt64
    public var capacitySource: CapacitySource
    /// Bytes per second the interface carried over the window (the larger direction).
    public var usedBytesPerSecond: UInt64
    /// `capacity - used`, never below 0.
    public var freeBytesPerSecond: UInt64
    /// The window the used rate covers, seconds, and the samples it took (0 or 1 sample: used is 0).
    public var windowSeconds: Double
    public var samples: Int
    /// The rate QEMU achieved on the last move recorded on this link, bytes per second; nil when none.
    public var lastAchievedBytesPerSecond: UInt64?

    public init(interface: String, capacityBytesPerSecond: UInt64, capacitySource: CapacitySource, usedBytesPerSecond: UInt64,
                windowSeconds: Double, samples: Int, lastAchievedBytesPerSecond: UInt64? = nil) {
        self.interface = interface
        self.capacityBytesPerSecond = capacityBytesPerSecond
        self.capacitySource = capacitySource
        self.usedBytesPerSecond = usedBytesPerSecond
        self.freeBytesPerSecond = capacityBytesPerSecond > usedBytesPerSecond ? capacityBytesPerSecond - usedBytesPerSecond : 0
        self.windowSeconds = windowSeconds
        self.samples = samples
        self.lastAchievedBytesPerSecond = lastAchievedBytesPerSecond
    }

    /// "measured free X of capacity Y on IF": the words a plan uses.
    public var description: String {
        var text = "measured free \(formatRate(freeBytesPerSecond)) of capacity \(formatRate(capacityBytesPerSecond)) "
            + "(\(capacitySource == .kernel ? "kernel link speed" : "host type's configured rate")) on \(interface)"
            + ", used \(formatRate(usedBytesPerSecond)) over \(String(format: "%.1f", windowSeconds)) s"
        if let lastAchievedBytesPerSecond { text += "; last move achieved \(formatRate(lastAchievedBytesPerSecond))" }
        return text
    }
}

/// A rate in MiB/s with one decimal ("12.5 MiB/s").
public func formatRate(_ bytesPerSecond: UInt64) -> String {
    String(format: "%.1f MiB/s", Double(bytesPerSecond) / 1_048_576)
}

/// One sample of an interface's counters at a monotonic instant.
public struct LinkSample: Sendable, Equatable {
    public var at: ContinuousClock.Instant
    public var counters: InterfaceCounters

    public init(at: ContinuousClock.Instant, counters: InterfaceCounters) {
        self.at = at
        self.counters = counters
    }
}

/// A bounded ring of samples, oldest first; appending past `capacity` drops the oldest.
public struct LinkSampleRing: Sendable {
    public let capacity: Int
    private var storage: [LinkSample] = []
    private var head = 0

    public init(capacity: Int) {
        precondition(capacity >= 2, "a rate needs two samples")
        self.capacity = capacity
        storage.reserveCapacity(capacity)
    }

    public mutating func append(_ sample: LinkSample) {
        if storage.count < capacity { storage.append(sample) } else {
            storage[head] = sample
            head = (head + 1) % capacity
        }
    }

    /// The samples, oldest first.
    public var samples: [LinkSample] { Array(storage[head...] + storage[..<head]) }
    public var count: Int { storage.count }

    /// The rate over the samples of the last `window` (from the oldest sample within it, or the one just
    /// before it, to the newest): bytes per second in the larger direction, the seconds covered, and the
    /// samples used. Counters that went backwards (an interface reset) count as 0 for that step.
    public func usedRate(window: Duration) -> (bytesPerSecond: UInt64, seconds: Double, samples: Int) {
        let all = samples
        guard let newest = all.last, all.count >= 2 else { return (0, 0, all.count) }
        let from = newest.at - window
        var startIndex = all.count - 2
        while startIndex > 0 && all[startIndex].at > from { startIndex -= 1 }
        let used = all[startIndex...]
        var rx: UInt64 = 0, tx: UInt64 = 0
        for (a, b) in zip(used, used.dropFirst()) {
            rx &+= b.counters.receivedBytes >= a.counters.receivedBytes ? b.counters.receivedBytes - a.counters.receivedBytes : 0
            tx &+= b.counters.transmittedBytes >= a.counters.transmittedBytes ? b.counters.transmittedBytes - a.counters.transmittedBytes : 0
        }
        let span = newest.at - all[startIndex].at
        let seconds = Double(span.components.seconds) + Double(span.components.attoseconds) / 1e18
        guard seconds > 0 else { return (0, 0, used.count) }
        return (UInt64(Double(max(rx, tx)) / seconds), seconds, used.count)
    }
}

/// Measures one interface: samples its counters into a bounded ring, gives its used and free rate over a
/// window, and keeps the rates QEMU achieved on moves over it (bounded too).
///
/// Contract: thread-safe; no global state (the file paths are the configuration's, tests point them at
/// fixtures); `sample()` reads `/proc/net/dev` once. Free = capacity - used, never below 0.
public final class LinkMonitor: Sendable {
    public struct Configuration: Sendable {
        public var interface: String
        /// Used when the kernel does not know the link's speed (`lo`, most virtual links), bytes/s.
        public var configuredCapacityBytesPerSecond: UInt64
        /// Samples kept (the ring's bound).
        public var sampleCapacity: Int
        /// Achieved-rate observations kept.
        public var observationCapacity: Int
        public var netDevPath: String
        /// `/sys/class/net` (the speed file is `<root>/<IF>/speed`, Mbit/s).
        public var sysClassNetRoot: String

        public init(interface: String, configuredCapacityBytesPerSecond: UInt64, sampleCapacity: Int = 600,
                    observationCapacity: Int = 64, netDevPath: String = "/proc/net/dev", sysClassNetRoot: String = "/sys/class/net") {
            precondition(!interface.isEmpty && sampleCapacity >= 2 && observationCapacity >= 1)
            self.interface = interface
            self.configuredCapacityBytesPerSecond = configuredCapacityBytesPerSecond
            self.sampleCapacity = sampleCapacity
            self.observationCapacity = observationCapacity
            self.netDevPath = netDevPath
            self.sysClassNetRoot = sysClassNetRoot
        }
    }

    /// A rate QEMU achieved on a move over this link.
    public struct Observation: Sendable, Equatable, Codable {
        public var destination: String
        public var bytesPerSecond: UInt64
        /// Seconds since the monitor was made.
        public var atSeconds: Double
    }

    public let configuration: Configuration
    private let clock = ContinuousClock()
    private let born: ContinuousClock.Instant
    private struct State {
        var ring: LinkSampleRing
        var observations: [Observation] = []
    }
    private let state: Mutex<State>

    public init(_ configuration: Configuration) {
        self.configuration = configuration
        self.born = clock.now
        self.state = Mutex(State(ring: LinkSampleRing(capacity: configuration.sampleCapacity)))
    }

    /// A monitor of the interface that carries traffic toward `address` (`ip route get`), with
    /// `configuredCapacity` for a link whose speed the kernel does not know.
    public static func toward(_ address: String, configuredCapacityBytesPerSecond: UInt64) throws(LinkMonitorError) -> LinkMonitor {
        LinkMonitor(Configuration(interface: try interface(toward: address),
                                  configuredCapacityBytesPerSecond: configuredCapacityBytesPerSecond))
    }

    /// The interface the kernel routes `address` through: `lo` for 127.0.0.0/8 and ::1, else the `dev` of
    /// `ip route get ADDRESS`.
    public static func interface(toward address: String) throws(LinkMonitorError) -> String {
        if address.hasPrefix("127.") || address == "::1" || address == "localhost" { return "lo" }
        guard address.allSatisfy({ $0.isHexDigit || $0 == "." || $0 == ":" }), !address.isEmpty else {
            throw .noRoute(address: address, reason: "not an IP address")
        }
        let output: String
        do { output = try runCapturingOutput(["/usr/sbin/ip", "route", "get", address], limitBytes: 4096) } catch {
            throw .noRoute(address: address, reason: error.description)
        }
        return try parseRouteGet(output, address: address)
    }

    /// The `dev` word of `ip route get` output ("198.18.0.2 dev veth0 src 198.18.0.1 uid 0").
    public static func parseRouteGet(_ output: String, address: String) throws(LinkMonitorError) -> String {
        let words = output.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        guard let index = words.firstIndex(of: "dev"), index + 1 < words.count else {
            throw .noRoute(address: address, reason: "`ip route get` named no device: \(output.prefix(200))")
        }
        return String(words[index + 1])
    }

    /// Reads the counters once and appends them to the ring.
    @discardableResult
    public func sample() throws(LinkMonitorError) -> InterfaceCounters {
        let text = try readSmallFile(configuration.netDevPath, limitBytes: 1 << 20)
        guard let counters = try InterfaceCounters.parseNetDev(text).first(where: { $0.interface == configuration.interface }) else {
            throw .noSuchInterface(configuration.interface)
        }
        let now = clock.now
        state.withLock { $0.ring.append(LinkSample(at: now, counters: counters)) }
        return counters
    }

    /// Samples every `interval` for `duration` (at least two samples), then returns the bandwidth over it.
    public func measure(for duration: Duration, interval: Duration = .milliseconds(100)) async throws(LinkMonitorError) -> LinkBandwidth {
        precondition(duration > .zero && interval > .zero)
        let end = clock.now + duration
        try sample()
        repeat {
            try? await Task.sleep(for: interval)
            try sample()
        } while clock.now < end
        return bandwidth(window: duration)
    }

    /// The link's capacity: the kernel's speed when it knows it (a positive number in the speed file), else
    /// the configured rate.
    public func capacity() -> (bytesPerSecond: UInt64, source: LinkBandwidth.CapacitySource) {
        let path = "\(configuration.sysClassNetRoot)/\(configuration.interface)/speed"
        if let text = try? readSmallFile(path, limitBytes: 64),
           let mbit = Int64(text.trimmingSpaces()), mbit > 0 {
            return (UInt64(mbit) * 125_000, .kernel)
        }
        return (configuration.configuredCapacityBytesPerSecond, .configured)
    }

    /// Used and free bandwidth over the last `window` of samples.
    public func bandwidth(window: Duration) -> LinkBandwidth {
        let (used, seconds, samples, last) = state.withLock { state in
            let rate = state.ring.usedRate(window: window)
            return (rate.bytesPerSecond, rate.seconds, rate.samples, state.observations.last?.bytesPerSecond)
        }
        let (capacity, source) = capacity()
        return LinkBandwidth(interface: configuration.interface, capacityBytesPerSecond: capacity, capacitySource: source,
                             usedBytesPerSecond: used, windowSeconds: seconds, samples: samples, lastAchievedBytesPerSecond: last)
    }

    /// Records the rate QEMU achieved on a move to `destination` over this link (bounded: the oldest goes).
    public func recordAchieved(destination: String, bytesPerSecond: UInt64) {
        let at = clock.now - born
        let seconds = Double(at.components.seconds) + Double(at.components.attoseconds) / 1e18
        state.withLock { state in
            if state.observations.count >= configuration.observationCapacity { state.observations.removeFirst() }
            state.observations.append(Observation(destination: destination, bytesPerSecond: bytesPerSecond, atSeconds: seconds))
        }
    }

    /// The achieved-rate observations, oldest first.
    public var observations: [Observation] { state.withLock { $0.observations } }

    /// The samples in the ring, oldest first.
    public var samples: [LinkSample] { state.withLock { $0.ring.samples } }
}

extension MigrationOutcome {
    /// The rate QEMU achieved: bytes transferred over the migration's total time (0 when QEMU gave none).
    public var achievedBytesPerSecond: UInt64 {
        totalTimeMs > 0 ? UInt64(Double(transferredBytes) * 1000 / Double(totalTimeMs)) : 0
    }
}

// MARK: - Small file and process helpers (bounded)

/// Reads at most `limitBytes` of `path` (a /proc or /sys file, whose size `stat` does not tell).
func readSmallFile(_ path: String, limitBytes: Int) throws(LinkMonitorError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while bytes.count < limitBytes {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limitBytes - bytes.count)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        if n == 0 { break }
        bytes += buffer[..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Runs `argv` (no shell), returns its standard output (at most `limitBytes`); throws with its status.
func runCapturingOutput(_ argv: [String], limitBytes: Int) throws(LinkMonitorError) -> String {
    var pipeFDs: [Int32] = [0, 0]
    guard pipe(&pipeFDs) == 0 else { throw .unreadable(path: "pipe", reason: String(cString: strerror(errno))) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
    var pid: pid_t = 0
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    let status = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
    close(pipeFDs[1])
    guard status == 0 else {
        close(pipeFDs[0])
        throw .unreadable(path: argv[0], reason: "posix_spawn: \(String(cString: strerror(status)))")
    }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        if bytes.count < limitBytes { bytes += buffer[..<min(n, limitBytes - bytes.count)] }
    }
    close(pipeFDs[0])
    var waitStatus: Int32 = 0
    while waitpid(pid, &waitStatus, 0) < 0 && errno == EINTR {}
    let exited = (waitStatus & 0x7f) == 0
    let code = (waitStatus >> 8) & 0xff
    guard exited && code == 0 else {
        throw .unreadable(path: argv.joined(separator: " "), reason: "exit status \(exited ? code : -1): \(String(decoding: bytes, as: UTF8.self).prefix(200))")
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s = s.dropLast() }
        return String(s)
    }
}
