// Path: Sources/SluiceOverlay/OverlayLeasingModel.swift — what the leasing side keeps in etcd: the key
// layout, the JSON records (each with a version), name and value checks, errors and counters.
import Foundation
import SluiceEtcd
import Synchronization

/// Bounds of the leasing side (the overlay-wide ones are in `OverlayLimits`).
public enum OverlayLeasingLimits {
    /// Largest JSON value the leasing side writes or accepts from etcd.
    public static let recordBytesMax = 4096
    /// Most consumers one producer endpoint takes (its slot numbers are 0..<capacity).
    public static let capacityMax = 4096
    /// Most endpoints one `OverlayRegistration` holds.
    public static let endpointsPerRegistrationMax = 256
    /// Most producers of one service a grant considers, and most slots it reads.
    public static let producersPerServiceMax: Int64 = 4096
    public static let slotsPerServiceReadMax: Int64 = 100_000
    /// Transactions one grant tries (each after re-reading the slots) before it refuses.
    public static let grantAttemptsMax = 8
    /// Leases one agent keeps alive at once.
    public static let leasesPerAgentMax = 16_384
    /// etcd lease TTL bounds (seconds) for grants and registrations.
    public static let ttlSecondsRange: ClosedRange<Int64> = 1...3_600
    /// Longest key prefix.
    public static let prefixLengthMax = 128
    /// The record format written now; readers refuse other versions.
    public static let recordVersion = 1
}

/// Every way the leasing side fails. Errors from etcd keep etcd's typed error.
public enum OverlayLeasingError: Error, CustomStringConvertible, Equatable {
    /// A name (service, VM, host, agent) that is empty, too long or outside `[A-Za-z0-9._-]`.
    case invalidName(what: String, value: String)
    /// A bad value (capacity, port, VNI, address, TTL, prefix), with what is wrong.
    case invalidValue(String)
    /// An etcd call failed.
    case etcd(String)
    /// A record read from etcd that does not decode, or is of another version.
    case malformedRecord(key: String, what: String)
    /// An agent refused a request, with its reason.
    case refused(OverlayRefusal, message: String)
    /// A request or answer on the agent protocol that breaks it.
    case protocolError(peer: String, what: String)
    /// No agent of the set answered within the deadline (each one's failure).
    case agentsUnavailable([String])

    public var description: String {
        switch self {
        case .invalidName(let what, let value):
            "invalid \(what) name '\(value.prefix(80))': 1...\(OverlayLimits.nameLengthMax) characters of [A-Za-z0-9._-]"
        case .invalidValue(let what): "invalid value: \(what)"
        case .etcd(let what): "etcd: \(what)"
        case .malformedRecord(let key, let what): "malformed record at \(key): \(what)"
        case .refused(let reason, let message): "refused (\(reason.rawValue)): \(message)"
        case .protocolError(let peer, let what): "agent protocol error with \(peer): \(what)"
        case .agentsUnavailable(let failures): "no leasing agent answered: \(failures.joined(separator: "; "))"
        }
    }

    static func from(_ error: EtcdError) -> OverlayLeasingError { .etcd(error.description) }
}

/// Why an agent refused a request (the protocol's error codes; also the refusal counters' labels).
public enum OverlayRefusal: String, Sendable, Codable, CaseIterable {
    case malformedRequest = "malformed_request"
    case frameTooLong = "frame_too_long"
    case unsupportedVersion = "unsupported_version"
    case invalidName = "invalid_name"
    case unknownService = "unknown_service"
    case noCapacity = "no_capacity"
    case agentFull = "agent_full"
    case leaseNotFound = "lease_not_found"
    case etcdUnavailable = "etcd_unavailable"
}

/// Checks names: 1...`OverlayLimits.nameLengthMax` ASCII letters, digits, `.`, `_`, `-` (a name is an etcd
/// key component, so never `/`).
public enum OverlayNames {
    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...OverlayLimits.nameLengthMax).contains(bytes.count) else { return false }
        return bytes.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == 0x2e || byte == 0x5f || byte == 0x2d
        }
    }

    public static func check(_ name: String, _ what: String) throws(OverlayLeasingError) {
        guard isValid(name) else { throw .invalidName(what: what, value: name) }
    }
}

/// Dotted-quad IPv4 text <-> host-byte-order `UInt32`.
public enum OverlayIPv4 {
    public static func parse(_ text: String) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    public static func format(_ value: UInt32) -> String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }
}

/// The etcd keys of the leasing side under one prefix (default `/sluice/overlay/`):
///
///     P/producers/<service>/<producerVM>          OverlayProducer (JSON), on the producer host's etcd lease
///     P/slots/<service>/<producerVM>/<slot>       OverlaySlotRecord, on the grant's etcd lease
///     P/leases/<consumerHost>/<leaseID>           OverlayLeaseRecord, on the same etcd lease as its slot
///     P/leases/<consumerHost>/<leaseID>/end       OverlayLeaseEndRecord: a revoke's first commit (why it
///                                                 ends), on the same etcd lease, so it goes with the record
///     P/requests/<consumerHost>/<consumerVM>/<service>/<requestID>
///                                                 OverlayRequestRecord (which lease answered the request),
///                                                 on the same etcd lease: a retried request finds its grant
///
/// A slot number is 0..<capacity (6 decimal digits, zero-padded), a lease ID the etcd lease in decimal.
public struct OverlayKeys: Sendable, Equatable {
    public static let prefixDefault = "/sluice/overlay/"
    public let prefix: String

    public init(prefix: String = OverlayKeys.prefixDefault) throws(OverlayLeasingError) {
        guard !prefix.isEmpty, prefix.utf8.count <= OverlayLeasingLimits.prefixLengthMax, prefix.hasSuffix("/") else {
            throw .invalidValue("key prefix '\(prefix.prefix(80))' must end with / and be 1...\(OverlayLeasingLimits.prefixLengthMax) bytes")
        }
        self.prefix = prefix
    }

    public var producersAll: [UInt8] { Array((prefix + "producers/").utf8) }
    public func producers(service: String) -> [UInt8] { Array((prefix + "producers/\(service)/").utf8) }
    public func producer(service: String, vm: String) -> [UInt8] { Array((prefix + "producers/\(service)/\(vm)").utf8) }
    public func slots(service: String) -> [UInt8] { Array((prefix + "slots/\(service)/").utf8) }
    public func slot(service: String, vm: String, slot: Int) -> [UInt8] {
        let digits = String(slot)
        return Array((prefix + "slots/\(service)/\(vm)/" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits).utf8)
    }
    public var leasesAll: [UInt8] { Array((prefix + "leases/").utf8) }
    public func leases(consumerHost: String) -> [UInt8] { Array((prefix + "leases/\(consumerHost)/").utf8) }
    public func lease(consumerHost: String, leaseID: Int64) -> [UInt8] {
        Array((prefix + "leases/\(consumerHost)/\(leaseID)").utf8)
    }

    /// The end marker a revoke writes next to the record before it revokes the etcd lease.
    public func leaseEnd(consumerHost: String, leaseID: Int64) -> [UInt8] {
        Array((prefix + "leases/\(consumerHost)/\(leaseID)/end").utf8)
    }

    /// A key under `leases(consumerHost:)`: its lease ID, and whether it is the end marker; nil for
    /// anything else.
    func leaseKey(_ key: [UInt8], consumerHost: String) -> (leaseID: Int64, isEnd: Bool)? {
        let base = leases(consumerHost: consumerHost)
        guard key.starts(with: base) else { return nil }
        let rest = String(decoding: key[base.count...], as: UTF8.self)
        if rest.hasSuffix("/end") { return Int64(rest.dropLast(4)).map { ($0, true) } }
        return Int64(rest).map { ($0, false) }
    }

    public func request(consumerHost: String, consumerVM: String, service: String, requestID: String) -> [UInt8] {
        Array((prefix + "requests/\(consumerHost)/\(consumerVM)/\(service)/\(requestID)").utf8)
    }

    /// The producer VM of a slot key (`P/slots/<service>/<vm>/<slot>`), nil for another key.
    func slotProducerVM(_ key: [UInt8], service: String) -> (vm: String, slot: Int)? {
        let base = slots(service: service)
        guard key.starts(with: base) else { return nil }
        let parts = String(decoding: key[base.count...], as: UTF8.self).split(separator: "/")
        guard parts.count == 2, let slot = Int(parts[1]) else { return nil }
        return (String(parts[0]), slot)
    }
}

/// One service endpoint of a producer VM, as its host registers it.
public struct OverlayProducer: Sendable, Equatable, Codable {
    public var version: Int
    public var service: String
    public var producerVM: String
    public var producerHost: String
    /// Dotted quads on the wire; `underlayIPv4`/`overlayIPv4` give them in host byte order.
    public var underlay: String
    public var overlay: String
    public var port: UInt16
    public var vni: UInt32
    /// How many consumers it takes at once (its slots).
    public var capacity: Int

    public init(service: String, producerVM: String, producerHost: String, underlayIPv4: UInt32, overlayIPv4: UInt32,
                port: UInt16, vni: UInt32, capacity: Int) {
        self.version = OverlayLeasingLimits.recordVersion
        self.service = service
        self.producerVM = producerVM
        self.producerHost = producerHost
        self.underlay = OverlayIPv4.format(underlayIPv4)
        self.overlay = OverlayIPv4.format(overlayIPv4)
        self.port = port
        self.vni = vni
        self.capacity = capacity
    }

    public var underlayIPv4: UInt32 { OverlayIPv4.parse(underlay) ?? 0 }
    public var overlayIPv4: UInt32 { OverlayIPv4.parse(overlay) ?? 0 }

    /// Names, addresses, port, VNI and capacity within their bounds.
    public func validate() throws(OverlayLeasingError) {
        guard version == OverlayLeasingLimits.recordVersion else { throw .invalidValue("producer record version \(version)") }
        try OverlayNames.check(service, "service")
        try OverlayNames.check(producerVM, "producer VM")
        try OverlayNames.check(producerHost, "producer host")
        guard OverlayIPv4.parse(underlay) != nil else { throw .invalidValue("underlay address '\(underlay.prefix(40))' is not IPv4") }
        guard OverlayIPv4.parse(overlay) != nil else { throw .invalidValue("overlay address '\(overlay.prefix(40))' is not IPv4") }
        guard port > 0 else { throw .invalidValue("port 0") }
        guard vni <= OverlayLimits.vniMax else { throw .invalidValue("VNI \(vni) is wider than 24 bits") }
        guard (1...OverlayLeasingLimits.capacityMax).contains(capacity) else {
            throw .invalidValue("capacity \(capacity) not in 1...\(OverlayLeasingLimits.capacityMax)")
        }
    }
}

/// The value of a slot key: who holds it.
struct OverlaySlotRecord: Codable, Equatable {
    var version: Int
    var leaseID: Int64
    var consumerHost: String
    var consumerVM: String
    var agent: String
}

/// The value of a request key: the lease that answered one grant request (its ID names the request,
/// the client sends the same ID to every agent it tries).
struct OverlayRequestRecord: Codable, Equatable {
    var version: Int
    var leaseID: Int64
}

/// A revoke's end marker (`P/leases/<host>/<leaseID>/end`): why the lease ends. Written in one transaction
/// that checks the record is there, so a revoke needs no read before it (one etcd commit to the cut).
public struct OverlayLeaseEndRecord: Sendable, Equatable, Codable {
    public var version: Int
    public var leaseID: Int64
    public var reason: String

    public init(leaseID: Int64, reason: OverlayLeaseEndReason) {
        self.version = OverlayLeasingLimits.recordVersion
        self.leaseID = leaseID
        self.reason = reason.rawValue
    }

    /// The reason, nil when the marker is not one this version writes.
    public var endReason: OverlayLeaseEndReason? {
        version == OverlayLeasingLimits.recordVersion ? OverlayLeaseEndReason(rawValue: reason) : nil
    }
}

/// The value of a lease record: the grant. `endReason` is what an earlier version's revoke wrote into the
/// record itself (read still; revokes now write `OverlayLeaseEndRecord` beside it).
public struct OverlayLeaseRecord: Sendable, Equatable, Codable {
    public var version: Int
    public var leaseID: Int64
    public var service: String
    public var consumerHost: String
    public var consumerVM: String
    public var producerVM: String
    public var producerHost: String
    public var underlay: String
    public var overlay: String
    public var port: UInt16
    public var vni: UInt32
    public var slot: Int
    public var agent: String
    public var ttlSeconds: Int64
    /// An earlier version's revoke set this before revoking the etcd lease (`OverlayLeaseEndReason.rawValue`).
    public var endReason: String?

    /// The contract's lease at `epoch` (the revision of the grant's transaction: its create revision).
    public func lease(epoch: Int64) -> OverlayLease {
        OverlayLease(leaseID: leaseID, epoch: epoch, service: service, consumerVM: consumerVM, producerVM: producerVM,
                     producerHost: producerHost, producerUnderlayIPv4: OverlayIPv4.parse(underlay) ?? 0,
                     producerOverlayIPv4: OverlayIPv4.parse(overlay) ?? 0, producerPort: port,
                     vni: min(vni, OverlayLimits.vniMax))
    }

    func validate() throws(OverlayLeasingError) {
        guard version == OverlayLeasingLimits.recordVersion else { throw .invalidValue("lease record version \(version)") }
        try OverlayNames.check(service, "service")
        try OverlayNames.check(consumerHost, "consumer host")
        try OverlayNames.check(consumerVM, "consumer VM")
        try OverlayNames.check(producerVM, "producer VM")
        try OverlayNames.check(producerHost, "producer host")
        guard OverlayIPv4.parse(underlay) != nil, OverlayIPv4.parse(overlay) != nil else { throw .invalidValue("address not IPv4") }
        guard vni <= OverlayLimits.vniMax else { throw .invalidValue("VNI \(vni) is wider than 24 bits") }
        if let endReason, OverlayLeaseEndReason(rawValue: endReason) == nil {
            throw .invalidValue("end reason '\(endReason.prefix(40))'")
        }
    }
}

/// JSON of records: bounded both ways, sorted keys (stable bytes for the same record).
enum OverlayJSON {
    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Only our own Codable structs of strings and integers: encoding cannot fail.
        let data = try! encoder.encode(value)
        precondition(data.count <= OverlayLeasingLimits.recordBytesMax, "record over \(OverlayLeasingLimits.recordBytesMax) bytes")
        return Array(data)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], key: String) throws(OverlayLeasingError) -> T {
        guard bytes.count <= OverlayLeasingLimits.recordBytesMax else {
            throw .malformedRecord(key: key, what: "\(bytes.count) bytes, over \(OverlayLeasingLimits.recordBytesMax)")
        }
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw .malformedRecord(key: key, what: "\(error)")
        }
    }

    static func decodeProducer(_ kv: EtcdKeyValue) throws(OverlayLeasingError) -> OverlayProducer {
        let key = String(decoding: kv.key, as: UTF8.self)
        let producer = try decode(OverlayProducer.self, kv.value, key: key)
        do { try producer.validate() } catch { throw .malformedRecord(key: key, what: error.description) }
        return producer
    }

    static func decodeLeaseEnd(_ kv: EtcdKeyValue) throws(OverlayLeasingError) -> OverlayLeaseEndReason {
        let key = String(decoding: kv.key, as: UTF8.self)
        let end = try decode(OverlayLeaseEndRecord.self, kv.value, key: key)
        guard let reason = end.endReason else { throw .malformedRecord(key: key, what: "end marker version \(end.version) reason '\(end.reason.prefix(40))'") }
        return reason
    }

    static func decodeLease(_ kv: EtcdKeyValue) throws(OverlayLeasingError) -> OverlayLeaseRecord {
        let key = String(decoding: kv.key, as: UTF8.self)
        let record = try decode(OverlayLeaseRecord.self, kv.value, key: key)
        do { try record.validate() } catch { throw .malformedRecord(key: key, what: error.description) }
        return record
    }
}

/// Counters of one agent (or one process's leasing side). Relaxed atomics: read them for reports only.
public final class OverlayLeasingCounters: Sendable {
    public let grants = Atomic(0)
    public let renewals = Atomic(0)
    public let revokes = Atomic(0)
    /// Leases found gone at a keep-alive (their etcd lease expired).
    public let expiries = Atomic(0)
    /// Grant transactions that lost a race for a slot (then retried).
    public let slotConflicts = Atomic(0)
    /// Grant requests answered with the grant an earlier try of the same request ID made (no new slot).
    public let grantsRepeated = Atomic(0)
    /// Refusals by reason (`OverlayRefusal.allCases` order); refusals are rare, a lock is enough.
    private let refusalCounts = Mutex([Int](repeating: 0, count: OverlayRefusal.allCases.count))

    public init() {}

    public func refused(_ reason: OverlayRefusal) {
        let index = OverlayRefusal.allCases.firstIndex(of: reason)!
        refusalCounts.withLock { $0[index] += 1 }
    }

    public func refusals(_ reason: OverlayRefusal) -> Int {
        let index = OverlayRefusal.allCases.firstIndex(of: reason)!
        return refusalCounts.withLock { $0[index] }
    }

    /// `name value` lines, refusals as `refusals{reason="..."}`.
    public var report: String {
        var lines = [
            "grants \(grants.load(ordering: .relaxed))", "renewals \(renewals.load(ordering: .relaxed))",
            "revokes \(revokes.load(ordering: .relaxed))", "expiries \(expiries.load(ordering: .relaxed))",
            "slot_conflicts \(slotConflicts.load(ordering: .relaxed))",
            "grants_repeated \(grantsRepeated.load(ordering: .relaxed))",
        ]
        for reason in OverlayRefusal.allCases { lines.append("refusals{reason=\"\(reason.rawValue)\"} \(refusals(reason))") }
        return lines.joined(separator: "\n")
    }
}
