// Path: Sources/SluicePageStore/Replica.swift — what a storage node needs from a shared, replicated
// operation log (SluiceReplication's etcd log): proposals in, outcomes decided at apply time out, and
// how far behind the log this node is.

/// Orders a node's writes through a log shared with other nodes. Writes are proposed; every node
/// applies the log's records in order (`StorageNode.applyOrdered`), deciding each record's outcome by
/// the same checks, so the node that proposed a record answers with the outcome every node reached.
/// Any thread; `propose` and `catchUp` block their caller.
public protocol WriteSequencer: AnyObject, Sendable {
    /// Puts `record` in the shared log and blocks until this node has applied it: its OSN, or the
    /// refusal every node decided (a conflict, `noSuchObject`, ...). Without a definite outcome by its
    /// deadline: `.replication(.logUnavailable)` when it was never sent (nothing applied anywhere), or
    /// `.replication(.outcomeUnknown)` when it may be in the log (settled later by reading the log back).
    func propose(_ record: LogRecord) -> Result<UInt64, ObjectStoreError>
    /// Blocks until this node has applied the log through `osn` (at most `timeoutMs`): its status then,
    /// or `.replication(.behind)`.
    func catchUp(to osn: UInt64, timeoutMs: Int) -> Result<ReplicaStatus, ObjectStoreError>
    /// Where this node stands against the log, now. Never blocks on the network.
    var status: ReplicaStatus { get }
}

/// Where a node stands against its operation log: how stale its reads may be.
public struct ReplicaStatus: Sendable, Equatable {
    public enum State: UInt8, Sendable {
        /// Up to date as of the last contact: reads are as fresh as `appliedOSN`.
        case following = 1
        /// Applying records it knows exist (`logOSN` > `appliedOSN`).
        case catchingUp = 2
        /// The log does not answer: writes are refused, reads are served as of `appliedOSN`.
        case disconnected = 3
        /// The node stopped applying (a page write failed, the log is corrupt or compacted past it).
        case failed = 4
    }

    public var state: State
    /// Every record through this OSN is applied: reads are ordered here.
    public var appliedOSN: UInt64
    /// The newest OSN this node knows the log holds (at least `appliedOSN`).
    public var logOSN: UInt64
    /// Milliseconds since the log last answered this node; nil when it never has.
    public var contactAgeMs: UInt64?

    public init(state: State, appliedOSN: UInt64, logOSN: UInt64, contactAgeMs: UInt64?) {
        self.state = state
        self.appliedOSN = appliedOSN
        self.logOSN = logOSN
        self.contactAgeMs = contactAgeMs
    }
}

/// Why a replicated node could not give an operation a definite outcome, or could not follow its log.
public enum ReplicationProblem: Error, Sendable, Equatable, CustomStringConvertible {
    /// The log could not be reached or took nothing before the deadline; the operation was never put
    /// in the log and is not applied anywhere. `reason` is the last error of the log's client.
    case logUnavailable(reason: String)
    /// The operation may be in the log: its proposal (`proposalID`, this node's id and sequence) is
    /// still being settled by reading the log back. Reading the page later tells which it was.
    case outcomeUnknown(proposalID: String)
    /// This node had applied only through `appliedOSN` when the wait for `wantedOSN` ended.
    case behind(appliedOSN: UInt64, wantedOSN: UInt64)
    /// Too many proposals wait for the log already (the bound); this one was not sent.
    case overloaded(pendingMax: Int)
    /// The operation's encoding is above the log's record bound (`recordBytesMax`).
    case recordTooLarge(bytes: Int, max: Int)
    /// This node's state is older than what the log still holds (its records through `floorOSN` were
    /// deleted once every known node had checkpointed past them): it cannot catch up from the log.
    case compactedPast(appliedOSN: UInt64, floorOSN: UInt64)
    /// A record in the log does not decode (key, offset and what was wrong): the node stops applying.
    case corruptRecord(key: String, reason: String)
    /// The log in etcd was made by nodes this one cannot join (another format or page size).
    case incompatibleLog(reason: String)
    /// The node stopped following the log (shut down, or failed: see its status).
    case stopped

    public var description: String {
        switch self {
        case .logUnavailable(let reason): "log unavailable, nothing written: \(reason)"
        case .outcomeUnknown(let id): "outcome unknown: proposal \(id) is being settled by reading the log back"
        case .behind(let applied, let wanted): "applied through OSN \(applied), wanted \(wanted)"
        case .overloaded(let pendingMax): "\(pendingMax) proposals already wait for the log"
        case .recordTooLarge(let bytes, let max): "record of \(bytes) bytes above the log's bound of \(max)"
        case .compactedPast(let applied, let floor):
            "this node applied through OSN \(applied) but the log was compacted through \(floor): copy a stopped node's data directory to recover"
        case .corruptRecord(let key, let reason): "corrupt log record at \(key): \(reason)"
        case .incompatibleLog(let reason): "incompatible log: \(reason)"
        case .stopped: "node stopped following the log"
        }
    }
}
