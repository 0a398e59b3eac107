// Path: Sources/SluiceScheduling/ScheduleFiles.swift — what `sluice vm monitor|schedule|bookings|explain`
// keep between runs: hosts, a request, the bookings, and each host's history of samples.

/// A host the scheduler may move VMs from or to, with the file its monitor writes.
public struct ScheduleHost: Codable, Sendable, Equatable {
    public var name: String
    public var linkBytesPerSecond: Double
    public var migrationSlots: Int
    public var memoryBytes: Double
    /// History file (`HistoryFile` lines) written by `sluice vm monitor` (and by `sluice vm manager`,
    /// which reads it at start and appends a line per tick).
    public var history: String
    /// `sluice vm manager` only: `sluice run`'s metrics endpoint (`HOST:PORT`) and the pipeline (port)
    /// toward the destinations whose counters give the used bandwidth.
    public var metrics: String?
    public var port: String?
    /// `sluice vm manager` only: the interface whose /proc/net/dev counters give the used bandwidth when
    /// there is no dataplane (or it does not answer).
    public var interface: String?
    /// `sluice vm manager` only: where the QEMU run directories of guests moved to this host go.
    public var runRoot: String?
    /// `sluice vm manager` only: the network namespace guests moved to this host run in (their QEMU is
    /// started with `ip netns exec NAME`), and the "HOST:PORT" the migration stream comes in on over
    /// TCP (nil: a Unix socket in the run directory).
    public var netns: String?
    public var migrationAddress: String?

    public init(name: String, linkBytesPerSecond: Double, migrationSlots: Int, memoryBytes: Double, history: String,
                metrics: String? = nil, port: String? = nil, interface: String? = nil, runRoot: String? = nil,
                netns: String? = nil, migrationAddress: String? = nil) {
        self.netns = netns
        self.migrationAddress = migrationAddress
        self.name = name
        self.linkBytesPerSecond = linkBytesPerSecond
        self.migrationSlots = migrationSlots
        self.memoryBytes = memoryBytes
        self.history = history
        self.metrics = metrics
        self.port = port
        self.interface = interface
        self.runRoot = runRoot
    }

    public var resources: HostResources {
        HostResources(linkBytesPerSecond: linkBytesPerSecond, migrationSlots: migrationSlots, memoryBytes: memoryBytes)
    }
}

public struct ScheduleHostsFile: Codable, Sendable, Equatable {
    public var hosts: [ScheduleHost]
    public init(hosts: [ScheduleHost]) { self.hosts = hosts }

    /// Checks names (unique, 1-64 characters) and resources; the first fault, named.
    public func validated() throws(ScheduleFileError) -> ScheduleHostsFile {
        guard !hosts.isEmpty, hosts.count <= ScheduleLimits.hostCountMax else {
            throw .invalid("hosts: \(hosts.count) given, 1...\(ScheduleLimits.hostCountMax) allowed")
        }
        var seen = Set<String>()
        for host in hosts {
            guard !host.name.isEmpty, host.name.count <= 64, seen.insert(host.name).inserted else {
                throw .invalid("host name '\(host.name)' is empty, longer than 64 or repeated")
            }
            guard host.linkBytesPerSecond > 0, host.linkBytesPerSecond.isFinite, host.memoryBytes >= 0,
                  (1...ScheduleLimits.migrationSlotsMax).contains(host.migrationSlots) else {
                throw .invalid("host \(host.name): link, memory or migration slots out of range")
            }
        }
        return self
    }

    public func index(of name: String) throws(ScheduleFileError) -> Int {
        guard let index = hosts.firstIndex(where: { $0.name == name }) else { throw .invalid("no host named '\(name)'") }
        return index
    }
}

/// A move request as a file: hosts by name, times in minutes of the Unix epoch.
public struct ScheduleRequestFile: Codable, Sendable, Equatable {
    public var id: Int
    public var vm: String
    public var source: String
    public var candidates: [String]
    public var earliestStart: Int
    public var deadline: Int
    public var memoryBytes: Double
    /// What the first pass sends (non-zero pages plus zero-page headers); `sluice vm manager` measures
    /// it on the source (`GuestMemoryScan`) when a request names the guest and leaves this out.
    public var firstPassBytes: Double?
    public var dirtyBytesPerSecond: Double
    public var workingSetBytes: Double?
    public var downtimeLimitSeconds: Double?
    public var maxBandwidth: Double
    public var autoConverge: Bool?
    public var postcopy: Bool?

    public init(id: Int, vm: String, source: String, candidates: [String], earliestStart: Int, deadline: Int, memoryBytes: Double,
                firstPassBytes: Double? = nil, dirtyBytesPerSecond: Double, workingSetBytes: Double? = nil,
                downtimeLimitSeconds: Double? = nil, maxBandwidth: Double, autoConverge: Bool? = nil, postcopy: Bool? = nil) {
        self.id = id
        self.vm = vm
        self.source = source
        self.candidates = candidates
        self.earliestStart = earliestStart
        self.deadline = deadline
        self.memoryBytes = memoryBytes
        self.firstPassBytes = firstPassBytes
        self.dirtyBytesPerSecond = dirtyBytesPerSecond
        self.workingSetBytes = workingSetBytes
        self.downtimeLimitSeconds = downtimeLimitSeconds
        self.maxBandwidth = maxBandwidth
        self.autoConverge = autoConverge
        self.postcopy = postcopy
    }

    /// The request in host indices, checked; the first fault, named.
    public func request(hosts: ScheduleHostsFile) throws(ScheduleFileError) -> MigrationRequest {
        guard id >= 0 else { throw .invalid("request id \(id) is negative") }
        guard !candidates.isEmpty, candidates.count <= 64 else { throw .invalid("request \(id): 1...64 candidates, \(candidates.count) given") }
        guard deadline > earliestStart else { throw .invalid("request \(id): deadline \(deadline) is not after earliestStart \(earliestStart)") }
        guard memoryBytes > 0, memoryBytes.isFinite, dirtyBytesPerSecond >= 0, dirtyBytesPerSecond.isFinite,
              maxBandwidth > 0, maxBandwidth.isFinite, (downtimeLimitSeconds ?? 0.3) > 0,
              (workingSetBytes ?? 0) >= 0, (firstPassBytes ?? 1) > 0, (firstPassBytes ?? 1) <= memoryBytes else {
            throw .invalid("request \(id): memory, first pass, dirty rate, working set, downtime limit or max bandwidth out of range")
        }
        let source = try hosts.index(of: source)
        var indices: [Int] = []
        for name in candidates { indices.append(try hosts.index(of: name)) }
        return MigrationRequest(
            id: id, vm: vm, source: source, candidates: indices, earliestStart: earliestStart, deadline: deadline,
            demand: MigrationDemand(memoryBytes: memoryBytes, firstPassBytes: firstPassBytes, dirtyBytesPerSecond: dirtyBytesPerSecond,
                                    workingSetBytes: workingSetBytes, downtimeLimitSeconds: downtimeLimitSeconds ?? 0.3,
                                    maxBandwidth: maxBandwidth),
            allowance: ConvergenceAllowance(autoConverge: autoConverge ?? true, postcopy: postcopy ?? false))
    }
}

/// The scheduler's bookings between runs, with the requests they came from and finishes reported.
public struct ScheduleState: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var request: ScheduleRequestFile
        public var destination: String
        public var start: Int
        public var rates: [Double]
        public var method: String
        public var rounds: Int
        public var predictedSeconds: Double
        public var downtimeSeconds: Double
        public var throttle: Double
        public var bytes: Double
        public var confidence: Double
        /// Reported by `sluice vm schedule --finished`: seconds from the start the move really took.
        public var actualSeconds: Double?
        /// `sluice vm manager` only: how to reach the guest when the booking starts.
        public var guest: GuestFiles?
        /// `sluice vm manager` only: why the move failed (then `actualSeconds` stays nil).
        public var failure: String?
        /// `sluice vm manager` only: Unix seconds the move was started (written before the runner is called).
        public var startedUnix: Double?
        /// `sluice vm manager` only: started but never finished (the manager stopped while it ran). Such a
        /// booking is never started again: the guest may have moved already. `failure` says so too.
        public var interrupted: Bool?
    }

    /// Monotonic counts of moves that ended, kept with the state (the bookings list forgets old ones).
    public struct Totals: Codable, Sendable, Equatable {
        public var completed = 0
        public var failed = 0
        public var interrupted = 0
        public init() {}
    }

    public var bookings: [Entry]
    /// `sluice vm manager` only (nil in older files: all zero).
    public var totals: Totals?
    public init(bookings: [Entry] = []) { self.bookings = bookings }

    public static let bookingsMax = 10_000

    /// Puts every stored booking back into `scheduler` (those that ended before its horizon are skipped).
    public func restore(into scheduler: inout MigrationScheduler, hosts: ScheduleHostsFile) throws(ScheduleFileError) {
        for entry in bookings where entry.actualSeconds == nil && entry.failure == nil {
            let request = try entry.request.request(hosts: hosts)
            guard let method = ConvergenceMethod(rawValue: entry.method) else {
                throw .invalid("booking \(entry.request.id): unknown method '\(entry.method)'")
            }
            let booking = Booking(requestID: request.id, source: request.source, destination: try hosts.index(of: entry.destination),
                                  start: entry.start, rates: entry.rates,
                                  prediction: DurationPrediction(method: method, rounds: entry.rounds, totalSeconds: entry.predictedSeconds,
                                                                 downtimeSeconds: entry.downtimeSeconds, bytes: entry.bytes,
                                                                 throttle: entry.throttle),
                                  memoryBytes: request.demand.memoryBytes, confidence: entry.confidence)
            scheduler.restore(booking)
        }
    }

    public static func entry(_ booking: Booking, request: ScheduleRequestFile, hosts: ScheduleHostsFile, guest: GuestFiles? = nil) -> Entry {
        Entry(request: request, destination: hosts.hosts[booking.destination].name, start: booking.start, rates: booking.rates,
              method: booking.prediction.method.rawValue, rounds: booking.prediction.rounds,
              predictedSeconds: booking.prediction.totalSeconds, downtimeSeconds: booking.prediction.downtimeSeconds,
              throttle: booking.prediction.throttle, bytes: booking.prediction.bytes, confidence: booking.confidence,
              actualSeconds: nil, guest: guest, failure: nil, startedUnix: nil, interrupted: nil)
    }
}

/// A request handed to `sluice vm manager` (a JSON file in its spool directory): the move, in ticks of
/// the manager's time scale and real rates, and the guest's files for the executor.
public struct ManagerRequestFile: Codable, Sendable, Equatable {
    public var request: ScheduleRequestFile
    public var guest: GuestFiles?

    public init(request: ScheduleRequestFile, guest: GuestFiles? = nil) {
        self.request = request
        self.guest = guest
    }
}

public enum ScheduleFileError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalid(String)
    case badHistoryLine(path: String, line: Int, text: String)

    public var description: String {
        switch self {
        case .invalid(let what): what
        case .badHistoryLine(let path, let line, let text): "\(path):\(line): not 'minute,production,free_memory,slots': '\(text.prefix(80))'"
        }
    }
}

/// One host's history: a line per minute, `minute,production_bytes_per_second,free_memory_bytes,slots_in_use`.
public enum HistoryFile {
    /// Most lines kept (a week); `sluice vm monitor` trims older ones.
    public static let linesMax = ScheduleLimits.seriesSamplesMax

    public static func line(minute: Int, production: Double, freeMemory: Double, slots: Int) -> String {
        "\(minute),\(Int(production.rounded())),\(Int(freeMemory.rounded())),\(slots)"
    }

    /// Parses `text` (the file named `path`, for errors) into samples in minute order.
    public static func parse(_ text: String, path: String) throws(ScheduleFileError) -> [(minute: Int, production: Double, freeMemory: Double, slots: Int)] {
        var samples: [(minute: Int, production: Double, freeMemory: Double, slots: Int)] = []
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            if raw.isEmpty || raw.hasPrefix("#") { continue }
            let fields = raw.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count == 4, let minute = Int(fields[0]), let production = Double(fields[1]), let free = Double(fields[2]),
                  let slots = Int(fields[3]), production >= 0, production.isFinite, free >= 0, free.isFinite, slots >= 0 else {
                throw .badHistoryLine(path: path, line: number, text: String(raw))
            }
            samples.append((minute, production, free, slots))
        }
        if samples.count > linesMax { samples.removeFirst(samples.count - linesMax) }
        return samples
    }
}
