// Path: Sources/SluiceOverlay/OverlayRegistry.swift — producers in etcd: a producer host registers its
// service endpoints on an etcd lease of its own and keeps it alive; when the host dies they vanish.
import SluiceEtcd

/// Reads the registered producers (any process).
public enum OverlayRegistry {
    /// Every registered producer endpoint, or those of `service`, sorted by key (service, VM).
    /// A record that does not decode is skipped and returned in `malformed` (it is not offered to consumers).
    public static func producers(_ client: EtcdClient, keys: OverlayKeys, service: String? = nil)
        async throws(OverlayLeasingError) -> (producers: [OverlayProducer], malformed: [String]) {
        let prefix: [UInt8]
        if let service {
            try OverlayNames.check(service, "service")
            prefix = keys.producers(service: service)
        } else {
            prefix = keys.producersAll
        }
        let result: EtcdRangeResult
        do {
            result = try await client.range(.prefix(prefix), limit: OverlayLeasingLimits.producersPerServiceMax)
        } catch {
            throw .from(error)
        }
        var producers: [OverlayProducer] = []
        var malformed: [String] = []
        for kv in result.kvs {
            do { producers.append(try OverlayJSON.decodeProducer(kv)) } catch { malformed.append(error.description) }
        }
        return (producers, malformed)
    }

    /// How many slots of each producer (`service/vm`) are leased now.
    public static func slotsInUse(_ client: EtcdClient, keys: OverlayKeys, service: String)
        async throws(OverlayLeasingError) -> [String: Int] {
        let result: EtcdRangeResult
        do {
            result = try await client.range(.prefix(keys.slots(service: service)), limit: OverlayLeasingLimits.slotsPerServiceReadMax)
        } catch {
            throw .from(error)
        }
        var used: [String: Int] = [:]
        for kv in result.kvs {
            if let found = keys.slotProducerVM(kv.key, service: service) { used[found.vm, default: 0] += 1 }
        }
        return used
    }
}

/// One producer host's registration: its endpoints on one etcd lease it keeps alive. `start` writes them;
/// `run` keeps the lease alive until cancelled or the lease is lost; `stop` revokes it (they vanish now).
public final class OverlayRegistration: Sendable {
    public let endpoints: [OverlayProducer]
    public let leaseID: Int64
    public let ttlSeconds: Int64
    private let client: EtcdClient

    private init(client: EtcdClient, endpoints: [OverlayProducer], leaseID: Int64, ttlSeconds: Int64) {
        self.client = client
        self.endpoints = endpoints
        self.leaseID = leaseID
        self.ttlSeconds = ttlSeconds
    }

    /// Checks every endpoint (all of one producer host, no (service, VM) twice), grants an etcd lease of
    /// `ttlSeconds` and puts every endpoint on it in one transaction. An endpoint already registered by a
    /// live registration is replaced (a producer host that restarts takes its endpoints back).
    public static func start(_ client: EtcdClient, keys: OverlayKeys, endpoints: [OverlayProducer],
                             ttlSeconds: Int64) async throws(OverlayLeasingError) -> OverlayRegistration {
        guard (1...OverlayLeasingLimits.endpointsPerRegistrationMax).contains(endpoints.count) else {
            throw .invalidValue("endpoint count \(endpoints.count) not in 1...\(OverlayLeasingLimits.endpointsPerRegistrationMax)")
        }
        guard OverlayLeasingLimits.ttlSecondsRange.contains(ttlSeconds) else {
            throw .invalidValue("TTL \(ttlSeconds) s not in \(OverlayLeasingLimits.ttlSecondsRange)")
        }
        var seen = Set<String>()
        for endpoint in endpoints {
            try endpoint.validate()
            guard endpoint.producerHost == endpoints[0].producerHost else {
                throw .invalidValue("endpoints of two producer hosts (\(endpoints[0].producerHost), \(endpoint.producerHost)) in one registration")
            }
            guard seen.insert("\(endpoint.service)/\(endpoint.producerVM)").inserted else {
                throw .invalidValue("endpoint \(endpoint.service)/\(endpoint.producerVM) given twice")
            }
        }
        do {
            let lease = try await client.grantLease(ttlSeconds: ttlSeconds)
            let puts = endpoints.map { endpoint in
                EtcdTxnOp.put(key: keys.producer(service: endpoint.service, vm: endpoint.producerVM),
                              value: OverlayJSON.encode(endpoint), lease: lease.id)
            }
            _ = try await client.txn(compare: [], success: puts)
            return OverlayRegistration(client: client, endpoints: endpoints, leaseID: lease.id, ttlSeconds: ttlSeconds)
        } catch {
            throw .from(error)
        }
    }

    /// Renews the lease every TTL/3 until the task is cancelled (returns) or etcd says the lease is gone
    /// (throws: the endpoints vanished; register again). A failed renewal is tried again at the next tick.
    public func run() async throws(OverlayLeasingError) {
        let interval = Duration.milliseconds(max(100, ttlSeconds * 1000 / 3))
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            do {
                _ = try await client.keepAlive(lease: leaseID, timeoutMs: max(200, ttlSeconds * 1000 / 3))
            } catch {
                if case .leaseNotFound = error { throw .etcd("registration lease \(leaseID) expired: \(error)") }
                if case .cancelled = error { return }
            }
        }
    }

    /// Revokes the lease: every endpoint of this registration vanishes now.
    public func stop() async throws(OverlayLeasingError) {
        do {
            try await client.revokeLease(leaseID)
        } catch {
            if case .leaseNotFound = error { return }
            throw .from(error)
        }
    }
}
