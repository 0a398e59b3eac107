// Path: Sources/SluiceEtcd/EtcdTypes.swift — what the etcd client takes and returns: bounds, errors,
// keys, values, compares and transaction operations (etcd v3's KV, Watch, Lease and Maintenance APIs).

/// Bounds of the etcd client. Every buffer and every wait it has is below one of these.
public enum EtcdLimits {
    /// Most endpoints one client fails over between (an etcd cluster has 3, 5 or 7 members).
    public static let endpointCountMax = 16
    /// Largest response message read from etcd (gRPC's max receive message size); a larger one is
    /// `responseTooLarge`, never buffered whole. etcd's own request limit is 1.5 MiB, but a range over
    /// many keys can answer with more.
    public static let responseBytesMax = 8 << 20
    /// Largest single message of a watch stream (one WatchResponse: a batch of events).
    public static let watchMessageBytesMax = 8 << 20
    /// Events, and bytes of keys and values, a watch buffers for a consumer that has not read them yet.
    /// At either bound the watch stops reading its stream until the consumer catches up (HTTP/2 flow
    /// control then holds etcd back), so no event is dropped and memory stays bounded.
    public static let watchEventsBufferedMax = 4096
    public static let watchBytesBufferedMax = 64 << 20
    /// Longest deadline a call may be given, and the default one.
    public static let callTimeoutMsMax: Int64 = 60_000
    public static let callTimeoutMsDefault: Int64 = 2_000
    /// Connection establishment to one endpoint (TCP and the HTTP/2 handshake, up to the first stream),
    /// so a dead or hung member costs little of a call's deadline.
    public static let connectTimeoutMsDefault: Int64 = 500
    /// Watches open at once on one client (each is one HTTP/2 stream of the endpoint's one connection).
    public static let watchesOpenMax = 1024
    /// How long `shutdown()` lets calls under way finish before it closes the connections under them.
    public static let shutdownGraceMs: Int64 = 1_000
    /// Most keys one range may be asked for (`limit`); 0 means no limit, bounded by `responseBytesMax`.
    public static let rangeLimitMax: Int64 = 100_000
}

/// One etcd call, as named in errors. `mayWrite` says whether it can change etcd's state, which
/// decides whether a timeout leaves its outcome unknown.
public enum EtcdOperation: String, Sendable, Equatable, CustomStringConvertible {
    case range, put, deleteRange, txn, compact, leaseGrant, leaseRevoke, leaseKeepAlive, watch, status

    public var mayWrite: Bool {
        switch self {
        case .put, .deleteRange, .txn, .compact, .leaseGrant, .leaseRevoke, .leaseKeepAlive: true
        case .range, .watch, .status: false
        }
    }

    public var description: String { rawValue }
}

/// gRPC status codes (the numbers of grpc's `Status.Code`) as etcd answers them, and which of them
/// leave a write in doubt.
public enum EtcdStatusCode {
    public static let cancelled = 1, unknown = 2, invalidArgument = 3, deadlineExceeded = 4, notFound = 5
    public static let failedPrecondition = 9, outOfRange = 11, internalError = 13, unavailable = 14, dataLoss = 15

    /// etcd could not serve the call now ("etcdserver: request timed out", "no leader", "leader changed",
    /// "server stopped", a panic): the member or the cluster is unwell, and a write sent to it may have
    /// been applied (e.g. proposed to raft before the answer was lost). Every other code is etcd refusing
    /// the request before applying it (bad argument, compacted revision, lease not found, too many requests).
    public static let inDoubt: Set<Int> = [cancelled, unknown, deadlineExceeded, internalError, unavailable, dataLoss]
}

/// Every way an etcd call fails. The cases that say `outcomeUnknown` are the only ones after which a
/// write may or may not have been applied; every other case is known not to have applied it.
public enum EtcdError: Error, CustomStringConvertible {
    /// A bad argument from the caller, caught before anything was sent.
    case invalidArgument(String)
    /// No endpoint took the request: each refused the connection, failed it, or did not complete the
    /// HTTP/2 handshake within the connect timeout. The request never left: nothing was applied.
    /// `underlying` has one error per endpoint tried, in the order tried.
    case unreachable(endpoints: [String], underlying: [any Error])
    /// The call's deadline passed. When the request may have left (for a call that may write),
    /// `outcomeUnknown` is true, and only reading etcd back settles it.
    case timedOut(operation: EtcdOperation, outcomeUnknown: Bool)
    /// The connection broke after the request may have been sent (and the call could not be retried
    /// elsewhere because it may write).
    case connectionLost(operation: EtcdOperation, outcomeUnknown: Bool, underlying: any Error)
    /// etcd answered with a gRPC error status: `code` is the gRPC status code (`EtcdStatusCode`),
    /// `message` etcd's own text. A code in `EtcdStatusCode.inDoubt` from a call that may write leaves
    /// the outcome unknown; any other code is known not applied.
    case status(operation: EtcdOperation, code: Int, message: String)
    /// The calling task was cancelled while the call was under way; as for a timeout, a call that may
    /// write may have been applied once its request may have left.
    case cancelled(operation: EtcdOperation, outcomeUnknown: Bool)
    /// A response that is not what etcd sends (a message that does not decode, a missing field).
    case malformedResponse(String)
    /// etcd answered `operation`, but in a form this client cannot read: a write may have been applied.
    case unreadableAnswer(operation: EtcdOperation, what: String)
    /// A response message larger than `limitBytes` (`EtcdLimits.responseBytesMax`).
    case responseTooLarge(operation: EtcdOperation, limitBytes: Int)
    /// A range or watch asked for a revision etcd has compacted away. `compactRevision` is etcd's
    /// compaction revision when it says it (a watch does; a range error does not).
    case compacted(requestedRevision: Int64, compactRevision: Int64?)
    /// etcd canceled a watch for another reason than compaction.
    case watchCanceled(reason: String)
    /// A call made after `shutdown()`.
    case shutDown(operation: EtcdOperation)
    /// A lease that etcd does not know (expired or revoked).
    case leaseNotFound(id: Int64)

    /// True when a write may have been applied although the call failed.
    public var outcomeUnknown: Bool {
        switch self {
        case .timedOut(_, let unknown), .connectionLost(_, let unknown, _), .cancelled(_, let unknown): unknown
        case .status(let operation, let code, _): operation.mayWrite && EtcdStatusCode.inDoubt.contains(code)
        case .responseTooLarge(let operation, _), .unreadableAnswer(let operation, _): operation.mayWrite
        default: false
        }
    }

    public var description: String {
        switch self {
        case .invalidArgument(let what): "invalid argument: \(what)"
        case .unreachable(let endpoints, let underlying):
            "etcd unreachable at \(endpoints.joined(separator: ",")): \(underlying.map { "\($0)" }.joined(separator: "; "))"
        case .timedOut(let operation, let unknown):
            "etcd \(operation) timed out" + (unknown ? " (outcome unknown: it may have been applied)" : "")
        case .connectionLost(let operation, let unknown, let underlying):
            "etcd \(operation): connection lost (\(underlying))" + (unknown ? " (outcome unknown)" : "")
        case .status(let operation, let code, let message):
            "etcd \(operation): gRPC status \(code): \(message)"
        case .cancelled(let operation, let unknown):
            "etcd \(operation) cancelled" + (unknown ? " (outcome unknown: it may have been applied)" : "")
        case .malformedResponse(let what): "malformed etcd response: \(what)"
        case .unreadableAnswer(let operation, let what):
            "etcd \(operation): unreadable answer (\(what))" + (operation.mayWrite ? ", outcome unknown" : "")
        case .responseTooLarge(let operation, let limit): "etcd \(operation): response over \(limit) bytes"
        case .compacted(let requested, let compact):
            "revision \(requested) is compacted" + (compact.map { " (compaction revision \($0))" } ?? "")
        case .watchCanceled(let reason): "etcd canceled the watch: \(reason)"
        case .leaseNotFound(let id): "etcd lease \(id) not found (expired or revoked)"
        case .shutDown(let operation): "etcd \(operation) after the client was shut down (not sent)"
        }
    }
}

/// Which keys a call covers: one key, every key with a prefix, or `[start, end)`.
public enum EtcdKeyRange: Sendable, Equatable {
    case key([UInt8])
    case prefix([UInt8])
    case range(start: [UInt8], end: [UInt8])

    /// The `key` and `range_end` etcd wants (range_end empty for one key).
    var bounds: (key: [UInt8], rangeEnd: [UInt8]) {
        switch self {
        case .key(let key): (key, [])
        case .prefix(let prefix): (prefix.isEmpty ? [0] : prefix, Self.prefixEnd(prefix))
        case .range(let start, let end): (start, end)
        }
    }

    /// The first key after every key starting with `prefix`: the prefix with its last byte below 0xff
    /// incremented and the rest dropped; `[0]` (etcd's "to the end") when there is none.
    public static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }
}

/// One key as etcd stores it. Revisions are etcd's cluster-wide store revisions.
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public init(key: [UInt8], value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64, lease: Int64) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }
}

public struct EtcdRangeResult: Sendable, Equatable {
    /// The store revision the range was served at.
    public var revision: Int64
    public var kvs: [EtcdKeyValue]
    /// True when `limit` cut the result short.
    public var more: Bool
    /// How many keys the range covers in all (not only those returned).
    public var count: Int64
}

public struct EtcdPutResult: Sendable, Equatable {
    public var revision: Int64
    /// The key before this put, when asked for (`previous: true`) and it existed.
    public var previous: EtcdKeyValue?
}

public struct EtcdDeleteResult: Sendable, Equatable {
    public var revision: Int64
    public var deleted: Int64
    public var previous: [EtcdKeyValue]
}

/// One condition of a transaction, on one key. A key that does not exist has version,
/// create_revision and mod_revision 0 (so `createRevision(.equal, 0)` means "absent").
public struct EtcdCompare: Sendable, Equatable {
    public enum Relation: String, Sendable { case equal = "EQUAL", notEqual = "NOT_EQUAL", less = "LESS", greater = "GREATER" }
    public enum Target: Sendable, Equatable {
        case value([UInt8])
        case version(Int64)
        case createRevision(Int64)
        case modRevision(Int64)
    }

    public var key: [UInt8]
    public var relation: Relation
    public var target: Target

    public init(key: [UInt8], _ target: Target, _ relation: Relation = .equal) {
        self.key = key
        self.relation = relation
        self.target = target
    }

    /// True when `key` does not exist: what put-if-absent compares.
    public static func absent(_ key: [UInt8]) -> EtcdCompare { EtcdCompare(key: key, .createRevision(0)) }
}

/// One operation of a transaction branch.
public enum EtcdTxnOp: Sendable, Equatable {
    case put(key: [UInt8], value: [UInt8], lease: Int64 = 0)
    case get(EtcdKeyRange)
    /// The first `limit` keys of the range (in key order); its result is a `.get`, `more` set when cut.
    case getFirst(EtcdKeyRange, limit: Int64)
    case delete(EtcdKeyRange)
}

/// The result of one operation of the branch that ran, in the branch's order.
public enum EtcdTxnOpResult: Sendable, Equatable {
    case put(EtcdPutResult)
    case get(EtcdRangeResult)
    case delete(EtcdDeleteResult)
}

public struct EtcdTxnResult: Sendable, Equatable {
    public var revision: Int64
    /// True when every compare held and the success branch ran.
    public var succeeded: Bool
    public var results: [EtcdTxnOpResult]
}

public struct EtcdLease: Sendable, Equatable {
    public var id: Int64
    public var ttlSeconds: Int64
}

/// What etcd's Maintenance.Status says about the member that answered.
public struct EtcdStatus: Sendable, Equatable {
    public var version: String
    public var memberID: UInt64
    public var leaderID: UInt64
    public var revision: Int64
    public var raftTerm: UInt64
    public var raftIndex: UInt64
    public var dbSizeBytes: Int64
    /// Which configured endpoint answered (the client fails over between them).
    public var endpoint: String
}

/// One change seen by a watch.
public struct EtcdWatchEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case put, delete }
    public var kind: Kind
    /// For a delete, the key with `modRevision` the deletion's revision and an empty value.
    public var kv: EtcdKeyValue
}
