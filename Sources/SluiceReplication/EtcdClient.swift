// Path: Sources/SluiceReplication/EtcdClient.swift — an etcd v3 client over etcd's JSON gateway
// (`POST /v3/...`, served by etcd 3.4 and later): KV, transactions, leases, watches, status.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Where the client connects and how long it waits. Endpoints are `http://HOST:PORT` client URLs.
public struct EtcdClientConfiguration: Sendable {
    public var endpoints: [String]
    /// Deadline of each call, from its start to its whole response (all endpoints tried included).
    public var callTimeoutMs: Int64
    /// Connection establishment to one endpoint.
    public var connectTimeoutMs: Int64

    public init(endpoints: [String], callTimeoutMs: Int64 = EtcdLimits.callTimeoutMsDefault,
                connectTimeoutMs: Int64 = EtcdLimits.connectTimeoutMsDefault) {
        self.endpoints = endpoints
        self.callTimeoutMs = callTimeoutMs
        self.connectTimeoutMs = connectTimeoutMs
    }
}

/// An etcd v3 client. Safe to share between tasks: calls run concurrently over pooled keep-alive
/// connections. Each call fails over to the next endpoint on a connection error (nothing sent), and
/// remembers the endpoint that answered. `EtcdClient.with` runs a body with one and shuts it down;
/// a client made with `init` must be shut down with `shutdown()` once done.
public final class EtcdClient: Sendable {
    public let configuration: EtcdClientConfiguration
    private let http: HTTPClient
    /// Index of the endpoint tried first: the last one that answered.
    private let preferred = Mutex(0)

    /// Runs `body` with a client for `configuration`, and shuts the client down after it, thrown or not.
    public static func with<Result>(
        _ configuration: EtcdClientConfiguration, _ body: (EtcdClient) async throws -> Result
    ) async throws -> Result {
        let client = try EtcdClient(configuration)
        let result: Result
        do {
            result = try await body(client)
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
        return result
    }

    /// Checks `configuration` (endpoint count and URLs, timeouts) and makes the connection pool; connects
    /// nothing yet. Never blocks.
    public init(_ configuration: EtcdClientConfiguration) throws(EtcdError) {
        guard !configuration.endpoints.isEmpty, configuration.endpoints.count <= EtcdLimits.endpointCountMax else {
            throw .invalidArgument("endpoint count \(configuration.endpoints.count) not in 1...\(EtcdLimits.endpointCountMax)")
        }
        for endpoint in configuration.endpoints where !endpoint.hasPrefix("http://") {
            throw .invalidArgument("endpoint \(endpoint) is not an http:// URL")
        }
        guard (1...EtcdLimits.callTimeoutMsMax).contains(configuration.callTimeoutMs),
              (1...EtcdLimits.callTimeoutMsMax).contains(configuration.connectTimeoutMs) else {
            throw .invalidArgument("timeouts must be in 1...\(EtcdLimits.callTimeoutMsMax) ms")
        }
        var settings = HTTPClient.Configuration()
        settings.timeout = .init(connect: .milliseconds(configuration.connectTimeoutMs))
        // A refused connection fails the call at once, so it can go to the next endpoint within its
        // deadline, instead of being retried against the dead member until the deadline passes.
        settings.connectionPool.retryConnectionEstablishment = false
        settings.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = EtcdLimits.connectionsPerEndpointMax
        settings.httpVersion = .http1Only
        settings.decompression = .disabled
        self.configuration = configuration
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: settings)
    }

    /// Closes every connection. Call once, after the last call and watch.
    public func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: KV

    /// Keys in `range`, at `revision` (0: the newest), at most `limit` of them (0: all).
    /// `serializable` reads the answering member's copy without a quorum round trip (may be stale).
    public func range(_ range: EtcdKeyRange, revision: Int64 = 0, limit: Int64 = 0, serializable: Bool = false,
                      timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdRangeResult {
        guard (0...EtcdLimits.rangeLimitMax).contains(limit), revision >= 0 else {
            throw .invalidArgument("limit \(limit) not in 0...\(EtcdLimits.rangeLimitMax) or negative revision")
        }
        let request = EtcdJSON.rangeRequest(range, revision: revision, limit: limit, serializable: serializable)
        do {
            return try EtcdJSON.rangeResult(try await unary(.range, "/v3/kv/range", request, timeoutMs))
        } catch let error {
            throw Self.compactedOr(error, requestedRevision: revision)
        }
    }

    /// The value of one key, or nil when it does not exist.
    public func get(_ key: [UInt8], timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdKeyValue? {
        try await range(.key(key), timeoutMs: timeoutMs).kvs.first
    }

    /// Sets `key` to `value`, attached to `lease` when not 0 (the key goes when the lease does).
    public func put(_ key: [UInt8], _ value: [UInt8], lease: Int64 = 0, previous: Bool = false,
                    timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdPutResult {
        let request = EtcdJSON.putRequest(key: key, value: value, lease: lease, previous: previous)
        do {
            return try EtcdJSON.putResult(try await unary(.put, "/v3/kv/put", request, timeoutMs))
        } catch let error {
            throw Self.leaseNotFoundOr(error, id: lease)
        }
    }

    public func delete(_ range: EtcdKeyRange, previous: Bool = false,
                       timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdDeleteResult {
        let request = EtcdJSON.deleteRequest(range, previous: previous)
        return try EtcdJSON.deleteResult(try await unary(.deleteRange, "/v3/kv/deleterange", request, timeoutMs))
    }

    /// If every compare holds, runs `success`, else `failure`, as one atomic step at one revision.
    public func txn(compare: [EtcdCompare], success: [EtcdTxnOp], failure: [EtcdTxnOp] = [],
                    timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdTxnResult {
        let request: [String: Any] = [
            "compare": compare.map(EtcdJSON.compare),
            "success": success.map(EtcdJSON.txnOp),
            "failure": failure.map(EtcdJSON.txnOp),
        ]
        return try EtcdJSON.txnResult(try await unary(.txn, "/v3/kv/txn", request, timeoutMs))
    }

    /// Puts `value` at `key` only if the key does not exist; returns whether it did.
    public func putIfAbsent(_ key: [UInt8], _ value: [UInt8], lease: Int64 = 0,
                            timeoutMs: Int64? = nil) async throws(EtcdError) -> Bool {
        try await txn(compare: [.absent(key)], success: [.put(key: key, value: value, lease: lease)],
                      timeoutMs: timeoutMs).succeeded
    }

    /// Drops every revision below `revision` from etcd's history (reads and watches below it fail).
    public func compact(revision: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) {
        guard revision > 0 else { throw .invalidArgument("compaction revision \(revision) must be positive") }
        _ = try await unary(.compact, "/v3/kv/compaction", ["revision": String(revision), "physical": true], timeoutMs)
    }

    // MARK: Leases

    /// A new lease that expires `ttlSeconds` after its last keep-alive (etcd may raise a short TTL).
    public func grantLease(ttlSeconds: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdLease {
        guard ttlSeconds > 0 else { throw .invalidArgument("lease TTL \(ttlSeconds) must be positive") }
        let object = try await unary(.leaseGrant, "/v3/lease/grant", ["TTL": String(ttlSeconds)], timeoutMs)
        return EtcdLease(id: try EtcdJSON.int64(object, "ID"), ttlSeconds: try EtcdJSON.int64(object, "TTL"))
    }

    /// Renews `id` once; returns its TTL again. A lease that expired or was revoked is `leaseNotFound`.
    public func keepAlive(lease id: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) -> Int64 {
        // The gateway serves the keep-alive stream as one request and one `{"result": ...}` answer.
        let object = try await unary(.leaseKeepAlive, "/v3/lease/keepalive", ["ID": String(id)], timeoutMs)
        guard let result = object["result"] as? [String: Any] else {
            throw .malformedResponse("keep-alive answer without result")
        }
        let ttl = try EtcdJSON.int64(result, "TTL")
        guard ttl > 0 else { throw .leaseNotFound(id: id) }
        return ttl
    }

    /// Ends lease `id` now; every key attached to it is deleted.
    public func revokeLease(_ id: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) {
        do {
            _ = try await unary(.leaseRevoke, "/v3/lease/revoke", ["ID": String(id)], timeoutMs)
        } catch let error {
            throw Self.leaseNotFoundOr(error, id: id)
        }
    }

    // MARK: Maintenance

    /// The status of the first member that answers.
    public func status(timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdStatus {
        let (object, endpoint) = try await unaryWithEndpoint(.status, "/v3/maintenance/status", [:], timeoutMs)
        guard let header = object["header"] as? [String: Any] else { throw .malformedResponse("status without header") }
        return EtcdStatus(
            version: (object["version"] as? String) ?? "", memberID: try EtcdJSON.uint64(header, "member_id"),
            leaderID: try EtcdJSON.uint64(object, "leader"), revision: try EtcdJSON.int64(header, "revision"),
            raftTerm: try EtcdJSON.uint64(object, "raftTerm"), raftIndex: try EtcdJSON.uint64(object, "raftIndex"),
            dbSizeBytes: try EtcdJSON.int64(object, "dbSize"), endpoint: endpoint)
    }

    // MARK: Watch

    /// Follows `range` from `fromRevision` (0: from now on). Returns once etcd has created the watch;
    /// events then arrive in revision order through the returned sequence, which ends with
    /// `compacted` when `fromRevision` is below etcd's compaction revision. Cancel it, or drop its
    /// iterator, to close its connection.
    public func watch(_ range: EtcdKeyRange, fromRevision: Int64,
                      timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdWatch {
        guard fromRevision >= 0 else { throw .invalidArgument("watch revision \(fromRevision) is negative") }
        let (key, rangeEnd) = range.bounds
        var create: [String: Any] = ["key": EtcdJSON.base64(key)]
        if !rangeEnd.isEmpty { create["range_end"] = EtcdJSON.base64(rangeEnd) }
        if fromRevision > 0 { create["start_revision"] = String(fromRevision) }
        let body = EtcdJSON.encode(["create_request": create])
        let (watch, _) = try await exchange(.watch, "/v3/watch", body, timeoutMs) { response in
            try await EtcdWatch.start(response, fromRevision: fromRevision)
        }
        return watch
    }

    // MARK: Calls

    private func unary(_ operation: EtcdOperation, _ path: String, _ request: [String: Any],
                       _ timeoutMs: Int64?) async throws(EtcdError) -> [String: Any] {
        try await unaryWithEndpoint(operation, path, request, timeoutMs).0
    }

    private func unaryWithEndpoint(_ operation: EtcdOperation, _ path: String, _ request: [String: Any],
                                   _ timeoutMs: Int64?) async throws(EtcdError) -> ([String: Any], String) {
        let (bytes, endpoint) = try await exchange(operation, path, EtcdJSON.encode(request), timeoutMs) { response in
            do {
                return try await response.body.collect(upTo: EtcdLimits.responseBytesMax)
            } catch is NIOTooManyBytesError {
                throw EtcdError.responseTooLarge(operation: operation, limitBytes: EtcdLimits.responseBytesMax)
            }
        }
        return (try EtcdJSON.decodeObject(bytes.readableBytesView, "\(operation) response"), endpoint)
    }

    /// Sends one request, trying the endpoints in turn from the preferred one while connections fail,
    /// and hands a 200 response to `handle`; any other status is read as etcd's error. The whole of it,
    /// `handle` included, is bounded by the call's deadline.
    private func exchange<Value: Sendable>(
        _ operation: EtcdOperation, _ path: String, _ body: [UInt8], _ timeoutMs: Int64?,
        _ handle: @escaping @Sendable (HTTPClientResponse) async throws -> Value
    ) async throws(EtcdError) -> (Value, String) {
        let timeout = timeoutMs ?? configuration.callTimeoutMs
        guard (1...EtcdLimits.callTimeoutMsMax).contains(timeout) else {
            throw .invalidArgument("timeout \(timeout) ms not in 1...\(EtcdLimits.callTimeoutMsMax)")
        }
        let deadline = ContinuousClock.now + .milliseconds(timeout)
        let endpoints = configuration.endpoints
        let first = preferred.withLock { $0 }
        var failures: [any Error] = []
        for attempt in 0..<endpoints.count {
            let index = (first + attempt) % endpoints.count
            let outcome = await Self.attempt(http, endpoints[index] + path, body, deadline, handle)
            switch outcome {
            case .answered(let value):
                preferred.withLock { $0 = index }
                return (value, endpoints[index])
            case .etcdError(let status, let bytes):
                // 503 is etcd's "unavailable" (no leader, or the member is stopping): the next call
                // starts at another member. This call is not retried: a write may have been applied.
                if status == 503 { rotate(from: index) }
                throw Self.statusError(operation, status, bytes)
            case .failed where Task.isCancelled:
                throw .cancelled(operation: operation, outcomeUnknown: operation.mayWrite)
            case .failed(let error as EtcdError):
                throw error
            case .failed(let error) where Self.isTimeout(error):
                // A member that accepts connections but does not answer (hung, or cut off from the
                // others) would time out every call: the next call starts at another member.
                rotate(from: index)
                throw .timedOut(operation: operation, outcomeUnknown: operation.mayWrite)
            case .failed(let error) where Self.isConnectFailure(error):
                failures.append(error)
            case .failed(let error):
                // The request may have been sent: only a call that cannot write may go elsewhere.
                guard !operation.mayWrite else {
                    throw .connectionLost(operation: operation, outcomeUnknown: true, underlying: error)
                }
                failures.append(error)
            }
            if ContinuousClock.now >= deadline {
                throw .timedOut(operation: operation, outcomeUnknown: false)
            }
        }
        throw .unreachable(endpoints: endpoints, underlying: failures)
    }

    /// Makes the endpoint after `index` the first one tried, unless another call moved it meanwhile.
    private func rotate(from index: Int) {
        let count = configuration.endpoints.count
        preferred.withLock { if $0 == index { $0 = (index + 1) % count } }
    }

    private enum Outcome<Value: Sendable>: Sendable {
        case answered(Value)
        case etcdError(status: Int, body: ByteBuffer)
        case failed(any Error)
    }

    private struct DeadlinePassed: Error {}

    /// One request to one URL, raced against the deadline (async-http-client's own deadline stops at the
    /// response head; the race also bounds reading the body).
    private static func attempt<Value: Sendable>(
        _ http: HTTPClient, _ url: String, _ body: [UInt8], _ deadline: ContinuousClock.Instant,
        _ handle: @escaping @Sendable (HTTPClientResponse) async throws -> Value
    ) async -> Outcome<Value> {
        var prepared = HTTPClientRequest(url: url)
        prepared.method = .POST
        prepared.headers.add(name: "Content-Type", value: "application/json")
        prepared.body = .bytes(body)
        let request = prepared
        let remaining = deadline - ContinuousClock.now
        let nioDeadline = NIODeadline.now() + .nanoseconds(max(0, Self.nanoseconds(remaining)))
        do {
            return try await withThrowingTaskGroup(of: Outcome<Value>.self) { group in
                group.addTask {
                    let response = try await http.execute(request, deadline: nioDeadline)
                    guard response.status == .ok else {
                        let text = try await response.body.collect(upTo: EtcdLimits.responseBytesMax)
                        return .etcdError(status: Int(response.status.code), body: text)
                    }
                    return .answered(try await handle(response))
                }
                group.addTask {
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DeadlinePassed()
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } catch {
            return .failed(error)
        }
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    private static func isTimeout(_ error: any Error) -> Bool {
        if error is DeadlinePassed { return true }
        if let error = error as? HTTPClientError, error == .deadlineExceeded { return true }
        return false
    }

    /// Errors raised before any byte of the request left: the call is known not applied.
    private static func isConnectFailure(_ error: any Error) -> Bool {
        if error is NIOConnectionError { return true }
        if let error = error as? HTTPClientError, error == .connectTimeout { return true }
        if let error = error as? ChannelError, case .connectTimeout = error { return true }
        if let error = error as? IOError, [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH].contains(error.errnoCode) {
            return true
        }
        return false
    }

    /// etcd's `{"error", "message", "code"}` answer as a typed error.
    private static func statusError(_ operation: EtcdOperation, _ status: Int, _ body: ByteBuffer) -> EtcdError {
        let object = try? EtcdJSON.decodeObject(body.readableBytesView, "error")
        let message = (object?["message"] as? String) ?? String(decoding: body.readableBytesView.prefix(512), as: UTF8.self)
        let grpcCode = (object?["code"] as? NSNumber)?.intValue
        return .httpStatus(operation: operation, code: status, message: message, grpcCode: grpcCode)
    }

    private static func compactedOr(_ error: EtcdError, requestedRevision: Int64) -> EtcdError {
        if case .httpStatus(_, _, let message, 11?) = error, message.contains("compacted") {
            return .compacted(requestedRevision: requestedRevision, compactRevision: nil)
        }
        return error
    }

    private static func leaseNotFoundOr(_ error: EtcdError, id: Int64) -> EtcdError {
        if case .httpStatus(_, _, let message, 5?) = error, message.contains("lease not found") {
            return .leaseNotFound(id: id)
        }
        return error
    }
}
