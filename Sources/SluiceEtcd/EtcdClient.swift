// Path: Sources/SluiceEtcd/EtcdClient.swift — an etcd v3 client over etcd's gRPC API (grpc-swift-2, HTTP/2
// plaintext, one connection per endpoint): KV, transactions, leases, watches, status; deadlines and fail-over.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOCore
import Synchronization

/// Where the client connects and how long it waits. Endpoints are `http://HOST:PORT` client URLs.
public struct EtcdClientConfiguration: Sendable {
    public var endpoints: [String]
    /// Deadline of each call, from its start to its whole response (all endpoints tried included).
    public var callTimeoutMs: Int64
    /// Connection establishment to one endpoint (TCP and HTTP/2 handshake).
    public var connectTimeoutMs: Int64

    public init(endpoints: [String], callTimeoutMs: Int64 = EtcdLimits.callTimeoutMsDefault,
                connectTimeoutMs: Int64 = EtcdLimits.connectTimeoutMsDefault) {
        self.endpoints = endpoints
        self.callTimeoutMs = callTimeoutMs
        self.connectTimeoutMs = connectTimeoutMs
    }
}

/// One configured endpoint: its gRPC client (one HTTP/2 connection, made on first use and again after it
/// breaks) and etcd's services over it.
struct EtcdEndpoint: Sendable {
    let url: String
    let grpc: GRPCClient<EtcdTransport>
    let kv: Etcdserverpb_KV.Client<EtcdTransport>
    let watch: Etcdserverpb_Watch.Client<EtcdTransport>
    let lease: Etcdserverpb_Lease.Client<EtcdTransport>
    let maintenance: Etcdserverpb_Maintenance.Client<EtcdTransport>
    let counters: TransportCounters

    init(url: String) throws(EtcdError) {
        let target = try Self.target(url)
        let counters = TransportCounters()
        let config = HTTP2ClientTransport.Posix.Config.defaults { config in
            // A member that comes back is connected to again within a second; meanwhile a call to it fails
            // at once (nothing sent) and goes to the next endpoint.
            config.backoff = .init(initial: .milliseconds(100), max: .seconds(1), multiplier: 1.6, jitter: 0.2)
            // A member that stops answering (hung, cut off) under an open watch closes its connection
            // after 10 s + 5 s instead of never; only while calls are open, as etcd's policy asks.
            config.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: false)
            let frameBytesMax = config.http2.maxFrameSize
            config.channelDebuggingCallbacks.onCreateTCPConnection = { channel in
                counters.connectionsOpened.add(1, ordering: .relaxed)
                return channel.pipeline.addHandler(
                    PingAnswerer(frameBytesMax: frameBytesMax, counters: counters), position: .first)
            }
        }
        let transport: HTTP2ClientTransport.Posix
        do {
            transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext, config: config)
        } catch {
            throw .invalidArgument("endpoint \(url): \(error)")
        }
        self.url = url
        self.counters = counters
        self.grpc = GRPCClient(transport: EtcdTransport(base: transport))
        self.kv = Etcdserverpb_KV.Client(wrapping: grpc)
        self.watch = Etcdserverpb_Watch.Client(wrapping: grpc)
        self.lease = Etcdserverpb_Lease.Client(wrapping: grpc)
        self.maintenance = Etcdserverpb_Maintenance.Client(wrapping: grpc)
    }

    /// `http://HOST:PORT` (an IPv4 address, `[IPv6]` or a DNS name) as a gRPC target.
    static func target(_ url: String) throws(EtcdError) -> any ResolvableTarget {
        guard url.hasPrefix("http://") else { throw .invalidArgument("endpoint \(url) is not an http:// URL") }
        var rest = url.dropFirst("http://".count)
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
              (1...65535).contains(port) else {
            throw .invalidArgument("endpoint \(url) is not http://HOST:PORT")
        }
        let host = String(rest[..<colon])
        guard !host.isEmpty, !host.contains("/") else { throw .invalidArgument("endpoint \(url) has no host") }
        if host.hasPrefix("["), host.hasSuffix("]") {
            return .ipv6(address: String(host.dropFirst().dropLast()), port: port)
        }
        if host.split(separator: ".").count == 4, host.allSatisfy({ $0.isNumber || $0 == "." }) {
            return .ipv4(address: host, port: port)
        }
        return .dns(host: host, port: port)
    }
}

/// An etcd v3 client. Safe to share between tasks: calls run concurrently, multiplexed as HTTP/2 streams
/// over one connection per endpoint. Each call fails over to the next endpoint while nothing was sent
/// (see `CallProgress`), and remembers the endpoint that answered. `EtcdClient.with` runs a body with one
/// and shuts it down; a client made with `init` must be shut down with `shutdown()` once done.
public final class EtcdClient: Sendable {
    public let configuration: EtcdClientConfiguration
    let endpoints: [EtcdEndpoint]
    /// Runs every endpoint's connections until `shutdown()`.
    private let connections: Task<Void, Never>
    /// Index of the endpoint tried first: the last one that answered.
    private let preferred = Mutex(0)
    let watches = WatchRegistry()
    /// `shutdown()` began: calls are refused with `shutDown`, not sent.
    private let closed = Atomic(false)

    /// TCP connections made to all endpoints so far (tests: a connection that broke was made again).
    var connectionsOpened: Int { endpoints.reduce(0) { $0 + $1.counters.connectionsOpened.load(ordering: .relaxed) } }
    /// etcd's HTTP/2 PINGs answered by `PingAnswerer` so far.
    var pingsAnswered: Int { endpoints.reduce(0) { $0 + $1.counters.pingsAnswered.load(ordering: .relaxed) } }

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

    /// Checks `configuration` (endpoint count and URLs, timeouts) and starts the task that runs the
    /// connections; connects nothing yet (the first call to an endpoint does). Never blocks.
    public init(_ configuration: EtcdClientConfiguration) throws(EtcdError) {
        guard !configuration.endpoints.isEmpty, configuration.endpoints.count <= EtcdLimits.endpointCountMax else {
            throw .invalidArgument("endpoint count \(configuration.endpoints.count) not in 1...\(EtcdLimits.endpointCountMax)")
        }
        guard (1...EtcdLimits.callTimeoutMsMax).contains(configuration.callTimeoutMs),
              (1...EtcdLimits.callTimeoutMsMax).contains(configuration.connectTimeoutMs) else {
            throw .invalidArgument("timeouts must be in 1...\(EtcdLimits.callTimeoutMsMax) ms")
        }
        var endpoints: [EtcdEndpoint] = []
        for url in configuration.endpoints { endpoints.append(try EtcdEndpoint(url: url)) }
        self.configuration = configuration
        self.endpoints = endpoints
        let clients = endpoints.map(\.grpc)
        self.connections = Task {
            await withDiscardingTaskGroup { group in
                for client in clients {
                    // Ends at shutdown. An error here is the transport failing as a whole: each call
                    // then fails with it, typed, on its own.
                    group.addTask { try? await client.runConnections() }
                }
            }
        }
    }

    /// Ends every open watch (its sequence ends without an error), lets calls under way finish for up to
    /// `EtcdLimits.shutdownGraceMs`, then closes every connection. Call once, after the last call.
    public func shutdown() async {
        closed.store(true, ordering: .releasing)
        for reader in watches.closeAll() { reader.cancel() }
        for endpoint in endpoints { endpoint.grpc.beginGracefulShutdown() }
        let connections = self.connections
        let force = Task {
            try? await Task.sleep(for: .milliseconds(EtcdLimits.shutdownGraceMs))
            connections.cancel()
        }
        await connections.value
        force.cancel()
    }

    // MARK: KV

    /// Keys in `range`, at `revision` (0: the newest), at most `limit` of them (0: all).
    /// `serializable` reads the answering member's copy without a quorum round trip (may be stale).
    public func range(_ range: EtcdKeyRange, revision: Int64 = 0, limit: Int64 = 0, serializable: Bool = false,
                      timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdRangeResult {
        guard (0...EtcdLimits.rangeLimitMax).contains(limit), revision >= 0 else {
            throw .invalidArgument("limit \(limit) not in 0...\(EtcdLimits.rangeLimitMax) or negative revision")
        }
        let request = EtcdProto.rangeRequest(range, revision: revision, limit: limit, serializable: serializable)
        do {
            let response = try await call(.range, timeoutMs) { endpoint, options in
                try await endpoint.kv.range(request, options: options)
            }.value
            return try EtcdProto.rangeResult(response)
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
        let request = EtcdProto.putRequest(key: key, value: value, lease: lease, previous: previous)
        do {
            let response = try await call(.put, timeoutMs) { endpoint, options in
                try await endpoint.kv.put(request, options: options)
            }.value
            return try Self.answered(.put) { () throws(EtcdError) in try EtcdProto.putResult(response) }
        } catch let error {
            throw Self.leaseNotFoundOr(error, id: lease)
        }
    }

    public func delete(_ range: EtcdKeyRange, previous: Bool = false,
                       timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdDeleteResult {
        let request = EtcdProto.deleteRequest(range, previous: previous)
        let response = try await call(.deleteRange, timeoutMs) { endpoint, options in
            try await endpoint.kv.deleteRange(request, options: options)
        }.value
        return try Self.answered(.deleteRange) { () throws(EtcdError) in try EtcdProto.deleteResult(response) }
    }

    /// If every compare holds, runs `success`, else `failure`, as one atomic step at one revision.
    public func txn(compare: [EtcdCompare], success: [EtcdTxnOp], failure: [EtcdTxnOp] = [],
                    timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdTxnResult {
        let request = EtcdProto.txnRequest(compare: compare, success: success, failure: failure)
        let response = try await call(.txn, timeoutMs) { endpoint, options in
            try await endpoint.kv.txn(request, options: options)
        }.value
        return try Self.answered(.txn) { () throws(EtcdError) in try EtcdProto.txnResult(response) }
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
        let request = Etcdserverpb_CompactionRequest.with {
            $0.revision = revision
            $0.physical = true
        }
        _ = try await call(.compact, timeoutMs) { endpoint, options in
            try await endpoint.kv.compact(request, options: options)
        }
    }

    // MARK: Leases

    /// A new lease that expires `ttlSeconds` after its last keep-alive (etcd may raise a short TTL).
    public func grantLease(ttlSeconds: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdLease {
        guard ttlSeconds > 0 else { throw .invalidArgument("lease TTL \(ttlSeconds) must be positive") }
        let request = Etcdserverpb_LeaseGrantRequest.with { $0.ttl = ttlSeconds }
        let response = try await call(.leaseGrant, timeoutMs) { endpoint, options in
            try await endpoint.lease.leaseGrant(request, options: options)
        }.value
        guard response.error.isEmpty else {
            throw .malformedResponse("lease grant answered \"\(response.error)\" without an error status")
        }
        return EtcdLease(id: response.id, ttlSeconds: response.ttl)
    }

    /// Renews `id` once; returns its TTL again. A lease that expired or was revoked is `leaseNotFound`.
    public func keepAlive(lease id: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) -> Int64 {
        let request = Etcdserverpb_LeaseKeepAliveRequest.with { $0.id = id }
        // etcd's keep-alive is a bidirectional stream; one renewal is one request (then the request side
        // closes) and the one answer etcd sends to it.
        let response = try await call(.leaseKeepAlive, timeoutMs) { endpoint, options in
            try await endpoint.lease.leaseKeepAlive(options: options) { writer in
                try await writer.write(request)
            } onResponse: { response in
                for try await message in response.messages { return message }
                throw EtcdError.malformedResponse("keep-alive stream ended without an answer")
            }
        }.value
        guard response.ttl > 0 else { throw .leaseNotFound(id: id) }
        return response.ttl
    }

    /// Ends lease `id` now; every key attached to it is deleted.
    public func revokeLease(_ id: Int64, timeoutMs: Int64? = nil) async throws(EtcdError) {
        let request = Etcdserverpb_LeaseRevokeRequest.with { $0.id = id }
        do {
            _ = try await call(.leaseRevoke, timeoutMs) { endpoint, options in
                try await endpoint.lease.leaseRevoke(request, options: options)
            }
        } catch let error {
            throw Self.leaseNotFoundOr(error, id: id)
        }
    }

    // MARK: Maintenance

    /// The status of the first member that answers.
    public func status(timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdStatus {
        let (response, endpoint) = try await call(.status, timeoutMs) { endpoint, options in
            try await endpoint.maintenance.status(Etcdserverpb_StatusRequest(), options: options)
        }
        return try EtcdProto.status(response, endpoint: endpoint)
    }

    // MARK: Watch

    /// Follows `range` from `fromRevision` (0: from now on). Returns once etcd has created the watch;
    /// events then arrive in revision order through the returned sequence, which ends with
    /// `compacted` when `fromRevision` is below etcd's compaction revision. Cancel it, or drop its
    /// iterator, to end its stream. The call's deadline covers the watch's creation only.
    public func watch(_ range: EtcdKeyRange, fromRevision: Int64,
                      timeoutMs: Int64? = nil) async throws(EtcdError) -> EtcdWatch {
        guard fromRevision >= 0 else { throw .invalidArgument("watch revision \(fromRevision) is negative") }
        guard !closed.load(ordering: .acquiring) else { throw .shutDown(operation: .watch) }
        let request = EtcdProto.watchCreateRequest(range, fromRevision: fromRevision)
        let deadline = try deadline(timeoutMs)
        let first = preferred.withLock { $0 }
        var failures: [any Error] = []
        for attempt in 0..<endpoints.count {
            let index = (first + attempt) % endpoints.count
            let progress = CallProgress()
            let watch = try EtcdWatch.start(
                endpoints[index], request, fromRevision: fromRevision, progress: progress, registry: watches)
            let connectBy = min(deadline, ContinuousClock.now + .milliseconds(configuration.connectTimeoutMs))
            switch await watch.waitCreated(connectBy: connectBy, deadline: deadline, progress: progress) {
            case .created:
                preferred.withLock { $0 = index }
                return watch
            case .cancelled:
                watch.cancel()
                throw .cancelled(operation: .watch, outcomeUnknown: false)
            case .timedOut:
                watch.cancel()
                rotate(from: index)
                throw .timedOut(operation: .watch, outcomeUnknown: false)
            case .failed(let error, let opened):
                watch.cancel()
                guard !opened else {
                    if case .status(_, EtcdStatusCode.unavailable, _) = error { rotate(from: index) }
                    throw error
                }
                failures.append(error)
            }
            if ContinuousClock.now >= deadline { throw .timedOut(operation: .watch, outcomeUnknown: false) }
        }
        throw .unreachable(endpoints: configuration.endpoints, underlying: failures)
    }

    // MARK: Calls

    private func deadline(_ timeoutMs: Int64?) throws(EtcdError) -> ContinuousClock.Instant {
        let timeout = timeoutMs ?? configuration.callTimeoutMs
        guard (1...EtcdLimits.callTimeoutMsMax).contains(timeout) else {
            throw .invalidArgument("timeout \(timeout) ms not in 1...\(EtcdLimits.callTimeoutMsMax)")
        }
        return ContinuousClock.now + .milliseconds(timeout)
    }

    /// Runs `body` (one RPC) on the endpoints in turn from the preferred one, while attempts fail before
    /// their request could leave; returns its value and the endpoint that answered. The whole of it,
    /// reading the response included, is bounded by the call's deadline. Never retries a call that may
    /// write once its request may have left.
    private func call<Value: Sendable>(
        _ operation: EtcdOperation, _ timeoutMs: Int64?,
        _ body: @escaping @Sendable (EtcdEndpoint, CallOptions) async throws -> Value
    ) async throws(EtcdError) -> (value: Value, endpoint: String) {
        guard !closed.load(ordering: .acquiring) else { throw .shutDown(operation: operation) }
        let deadline = try deadline(timeoutMs)
        let first = preferred.withLock { $0 }
        var failures: [any Error] = []
        for attempt in 0..<endpoints.count {
            let index = (first + attempt) % endpoints.count
            let progress = CallProgress()
            let connectBy = min(deadline, ContinuousClock.now + .milliseconds(configuration.connectTimeoutMs))
            let outcome = await Self.attempt(endpoints[index], progress, connectBy, deadline, body)
            let error: any Error
            switch outcome {
            case .success(let value):
                preferred.withLock { $0 = index }
                return (value, endpoints[index].url)
            case .failure(let failure):
                error = failure
            }
            switch Self.classify(operation, error, progress) {
            case .fail(let etcdError):
                // etcd's "unavailable" (no leader, stopping) and a member that does not answer in time:
                // the next call starts at another member. This call is not retried: a write may have
                // been applied.
                switch etcdError {
                case .status(_, EtcdStatusCode.unavailable, _), .timedOut: rotate(from: index)
                default: break
                }
                throw etcdError
            case .nextEndpoint:
                failures.append(error)
            }
            if ContinuousClock.now >= deadline { throw .timedOut(operation: operation, outcomeUnknown: false) }
        }
        throw .unreachable(endpoints: configuration.endpoints, underlying: failures)
    }

    private struct DeadlinePassed: Error {}

    /// One RPC on one endpoint, raced against the call's deadline and, until the RPC has its stream,
    /// against the connect deadline (which abandons it: see `CallProgress`).
    private static func attempt<Value: Sendable>(
        _ endpoint: EtcdEndpoint, _ progress: CallProgress, _ connectBy: ContinuousClock.Instant,
        _ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable (EtcdEndpoint, CallOptions) async throws -> Value
    ) async -> Result<Value, any Error> {
        var options = Self.callOptions(responseBytesMax: EtcdLimits.responseBytesMax)
        options.timeout = ContinuousClock.now.duration(to: deadline)  // sent to etcd as grpc-timeout
        let callOptions = options
        do {
            return .success(try await withThrowingTaskGroup(of: Value?.self) { group in
                group.addTask {
                    try await CallProgress.$current.withValue(progress) { try await body(endpoint, callOptions) }
                }
                group.addTask {
                    try await Task.sleep(until: connectBy, clock: .continuous)
                    if progress.abandonUnlessOpened() { throw CallAbandoned() }
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DeadlinePassed()
                }
                defer { group.cancelAll() }
                // Only the RPC's child returns a value; the timer's only throws.
                return try await group.next()!!
            })
        } catch {
            return .failure(error)
        }
    }

    /// Options of every RPC: no waiting for a connection that is not ready (a member that refuses fails
    /// the call now, not at its deadline), and responses bounded by `responseBytesMax`. That bound is set
    /// twice: grpc-swift-nio-transport 2.9.2 bounds a client's inbound messages by the call's
    /// `maxRequestMessageBytes` (4 MiB when unset) and does not read `maxResponseMessageBytes`; etcd
    /// bounds what it accepts itself (`--max-request-bytes`, 1.5 MiB by default).
    static func callOptions(responseBytesMax: Int) -> CallOptions {
        var options = CallOptions.defaults
        options.waitForReady = false
        options.maxResponseMessageBytes = responseBytesMax
        options.maxRequestMessageBytes = responseBytesMax
        return options
    }

    private enum Classified {
        case fail(EtcdError)
        /// Known not sent (or a read that broke): the next endpoint may take it.
        case nextEndpoint
    }

    /// What one failed attempt means for the call: see `CallProgress` for how "never sent" is told from
    /// "may have been sent".
    private static func classify(_ operation: EtcdOperation, _ error: any Error, _ progress: CallProgress) -> Classified {
        let opened = progress.opened
        if Task.isCancelled { return .fail(.cancelled(operation: operation, outcomeUnknown: operation.mayWrite && opened)) }
        if let error = error as? EtcdError { return .fail(error) }
        if error is DeadlinePassed { return .fail(.timedOut(operation: operation, outcomeUnknown: operation.mayWrite && opened)) }
        if let status = progress.serverStatus, status.code != .ok {
            // etcd's own answer; an error status from etcd is not a connection problem.
            return .fail(.status(operation: operation, code: status.code.rawValue, message: status.message))
        }
        // Not sent: refused, unreachable, channel backing off after a failed connect, abandoned at the
        // connect deadline. Any endpoint may take the call.
        guard opened else { return .nextEndpoint }
        if let rpc = error as? RPCError {
            switch rpc.code {
            case .deadlineExceeded:
                return .fail(.timedOut(operation: operation, outcomeUnknown: operation.mayWrite))
            case _ where CallProgress.isResponseTooLarge(rpc.message):
                return .fail(.responseTooLarge(operation: operation, limitBytes: EtcdLimits.responseBytesMax))
            case .invalidArgument where rpc.message.hasPrefix("Can't deserialize"):
                return .fail(.unreadableAnswer(operation: operation, what: rpc.message))
            default:
                break
            }
        }
        // The stream broke after the request may have left: only a call that cannot write may go elsewhere.
        guard !operation.mayWrite else { return .fail(.connectionLost(operation: operation, outcomeUnknown: true, underlying: error)) }
        return .nextEndpoint
    }

    /// Reads etcd's answer to a call that may write: an answer this client cannot read is not proof
    /// that nothing was applied, so it becomes `unreadableAnswer` (outcome unknown), not `malformedResponse`.
    private static func answered<Value>(_ operation: EtcdOperation,
                                        _ read: () throws(EtcdError) -> Value) throws(EtcdError) -> Value {
        do {
            return try read()
        } catch .malformedResponse(let what) {
            throw .unreadableAnswer(operation: operation, what: what)
        }
    }

    /// Makes the endpoint after `index` the first one tried, unless another call moved it meanwhile.
    private func rotate(from index: Int) {
        let count = endpoints.count
        preferred.withLock { if $0 == index { $0 = (index + 1) % count } }
    }

    private static func compactedOr(_ error: EtcdError, requestedRevision: Int64) -> EtcdError {
        if case .status(_, EtcdStatusCode.outOfRange, let message) = error, message.contains("compacted") {
            return .compacted(requestedRevision: requestedRevision, compactRevision: nil)
        }
        return error
    }

    private static func leaseNotFoundOr(_ error: EtcdError, id: Int64) -> EtcdError {
        if case .status(_, EtcdStatusCode.notFound, let message) = error, message.contains("lease not found") {
            return .leaseNotFound(id: id)
        }
        return error
    }
}
