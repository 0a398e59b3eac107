// Path: Sources/SluiceOverlay/OverlayLeasingAgent.swift — a leasing agent: grants a consumer one slot of a
// producer's capacity in one etcd transaction, keeps its grants' etcd leases alive, renews and revokes them.
import SluiceEtcd
import Synchronization

public struct OverlayLeasingAgentConfiguration: Sendable {
    /// The agent's name (recorded in its grants; a metrics label).
    public var name: String
    public var keys: OverlayKeys
    /// TTL of each grant's etcd lease: a grant outlives a dead agent by at most this.
    public var ttlSeconds: Int64
    /// Deadline of each etcd call the agent makes.
    public var callTimeoutMs: Int64

    public init(name: String, keys: OverlayKeys, ttlSeconds: Int64 = 10, callTimeoutMs: Int64 = 2_000) {
        self.name = name
        self.keys = keys
        self.ttlSeconds = ttlSeconds
        self.callTimeoutMs = callTimeoutMs
    }
}

/// What a grant hands back: the record as written and the revision of its transaction.
public struct OverlayGrant: Sendable, Equatable, Codable {
    public var record: OverlayLeaseRecord
    /// The grant transaction's etcd revision (the record's create revision).
    public var epoch: Int64
    public var lease: OverlayLease { record.lease(epoch: epoch) }

    public init(record: OverlayLeaseRecord, epoch: Int64) {
        self.record = record
        self.epoch = epoch
    }
}

/// A leasing agent. Any number of agents share one etcd prefix: a slot key is created only if absent
/// (compare create_revision == 0) in the same transaction as the lease record, both on the grant's own
/// etcd lease, so one slot is never leased twice and the slot and its record vanish together. `run()`
/// keeps this agent's grants alive; when the agent dies they expire after the TTL.
public final class OverlayLeasingAgent: Sendable {
    public let configuration: OverlayLeasingAgentConfiguration
    public let counters = OverlayLeasingCounters()
    private let client: EtcdClient
    /// etcd lease -> consumer host of the grants this agent keeps alive (at most `leasesPerAgentMax`).
    private let held = Mutex<[Int64: String]>([:])

    public init(client: EtcdClient, configuration: OverlayLeasingAgentConfiguration) throws(OverlayLeasingError) {
        try OverlayNames.check(configuration.name, "agent")
        guard OverlayLeasingLimits.ttlSecondsRange.contains(configuration.ttlSeconds) else {
            throw .invalidValue("TTL \(configuration.ttlSeconds) s not in \(OverlayLeasingLimits.ttlSecondsRange)")
        }
        guard (1...EtcdLimits.callTimeoutMsMax).contains(configuration.callTimeoutMs) else {
            throw .invalidValue("call timeout \(configuration.callTimeoutMs) ms not in 1...\(EtcdLimits.callTimeoutMsMax)")
        }
        self.client = client
        self.configuration = configuration
    }

    /// Leases this agent keeps alive now.
    public var heldCount: Int { held.withLock { $0.count } }

    private func refuse(_ reason: OverlayRefusal, _ message: String) -> OverlayLeasingError {
        counters.refused(reason)
        return .refused(reason, message: message)
    }

    /// Grants `consumerVM` on `consumerHost` one slot of a producer of `service`: the producer with the
    /// most free slots (ties at random), a random free slot of it. Refuses `unknownService` when no
    /// producer is registered, `noCapacity` when none has a free slot after `grantAttemptsMax` tries.
    ///
    /// Idempotent per `requestID` (a name the client makes once per request and sends to every agent it
    /// tries): the grant transaction also creates `P/requests/<host>/<vm>/<service>/<requestID>` (absent
    /// before, on the grant's etcd lease), so of two agents working on one request at most one grants, and
    /// the other (or a later try) answers that same grant. Without a request ID every call is a new grant.
    public func grant(service: String, consumerHost: String, consumerVM: String,
                      requestID: String? = nil) async throws(OverlayLeasingError) -> OverlayGrant {
        for (name, what) in [(service, "service"), (consumerHost, "consumer host"), (consumerVM, "consumer VM"),
                             (requestID ?? "r", "request ID")] {
            guard OverlayNames.isValid(name) else { throw refuse(.invalidName, OverlayLeasingError.invalidName(what: what, value: name).description) }
        }
        let requestKey = requestID.map {
            configuration.keys.request(consumerHost: consumerHost, consumerVM: consumerVM, service: service, requestID: $0)
        }
        if let requestKey, let earlier = try await earlierGrant(requestKey, consumerHost: consumerHost) {
            counters.grantsRepeated.add(1, ordering: .relaxed)
            return earlier
        }
        guard heldCount < OverlayLeasingLimits.leasesPerAgentMax else {
            throw refuse(.agentFull, "agent \(configuration.name) keeps \(OverlayLeasingLimits.leasesPerAgentMax) leases alive already")
        }
        let keys = configuration.keys
        let timeout = configuration.callTimeoutMs
        let etcdLease: EtcdLease
        do {
            etcdLease = try await client.grantLease(ttlSeconds: configuration.ttlSeconds, timeoutMs: timeout)
        } catch {
            throw refuse(.etcdUnavailable, "lease grant: \(error)")
        }
        var everRegistered = false
        for _ in 0..<OverlayLeasingLimits.grantAttemptsMax {
            let producers: EtcdRangeResult
            let slots: EtcdRangeResult
            do {
                producers = try await client.range(.prefix(keys.producers(service: service)),
                                                   limit: OverlayLeasingLimits.producersPerServiceMax, timeoutMs: timeout)
                slots = try await client.range(.prefix(keys.slots(service: service)),
                                               limit: OverlayLeasingLimits.slotsPerServiceReadMax, timeoutMs: timeout)
            } catch {
                await dropLease(etcdLease.id)
                throw refuse(.etcdUnavailable, "reading producers of \(service): \(error)")
            }
            var used: [String: Set<Int>] = [:]
            for kv in slots.kvs {
                if let found = keys.slotProducerVM(kv.key, service: service) { used[found.vm, default: []].insert(found.slot) }
            }
            var best: [(EtcdKeyValue, OverlayProducer, free: Int)] = []
            for kv in producers.kvs {
                guard let producer = try? OverlayJSON.decodeProducer(kv) else { continue }
                everRegistered = true
                let free = producer.capacity - (used[producer.producerVM]?.count ?? 0)
                guard free > 0 else { continue }
                if let first = best.first, first.free > free { continue }
                if let first = best.first, first.free < free { best.removeAll() }
                best.append((kv, producer, free))
            }
            guard let chosen = best.randomElement() else { break }
            let (producerKV, producer) = (chosen.0, chosen.1)
            let taken = used[producer.producerVM] ?? []
            let freeSlots = (0..<producer.capacity).filter { !taken.contains($0) }
            // Capacity counts slots in use; a slot above a lowered capacity still counts, so `free > 0`
            // leaves at least one number in 0..<capacity.
            guard let slot = freeSlots.randomElement() else { continue }
            let record = OverlayLeaseRecord(
                version: OverlayLeasingLimits.recordVersion, leaseID: etcdLease.id, service: service,
                consumerHost: consumerHost, consumerVM: consumerVM, producerVM: producer.producerVM,
                producerHost: producer.producerHost, underlay: producer.underlay, overlay: producer.overlay,
                port: producer.port, vni: producer.vni, slot: slot, agent: configuration.name,
                ttlSeconds: etcdLease.ttlSeconds, endReason: nil)
            let slotRecord = OverlaySlotRecord(version: OverlayLeasingLimits.recordVersion, leaseID: etcdLease.id,
                                               consumerHost: consumerHost, consumerVM: consumerVM, agent: configuration.name)
            let slotKey = keys.slot(service: service, vm: producer.producerVM, slot: slot)
            let recordKey = keys.lease(consumerHost: consumerHost, leaseID: etcdLease.id)
            var compare: [EtcdCompare] = [.absent(slotKey), .absent(recordKey),
                                          EtcdCompare(key: producerKV.key, .modRevision(producerKV.modRevision))]
            var success: [EtcdTxnOp] = [.put(key: slotKey, value: OverlayJSON.encode(slotRecord), lease: etcdLease.id),
                                        .put(key: recordKey, value: OverlayJSON.encode(record), lease: etcdLease.id)]
            if let requestKey {
                compare.append(.absent(requestKey))
                success.append(.put(key: requestKey, value: OverlayJSON.encode(OverlayRequestRecord(
                    version: OverlayLeasingLimits.recordVersion, leaseID: etcdLease.id)), lease: etcdLease.id))
            }
            let result: EtcdTxnResult
            do {
                result = try await client.txn(compare: compare, success: success, timeoutMs: timeout)
            } catch {
                // Applied or not, revoking the etcd lease removes whatever the transaction wrote.
                await dropLease(etcdLease.id)
                throw refuse(.etcdUnavailable, "grant transaction: \(error)")
            }
            if result.succeeded {
                let full = held.withLock { held in
                    guard held.count < OverlayLeasingLimits.leasesPerAgentMax else { return true }
                    held[etcdLease.id] = consumerHost
                    return false
                }
                if full {
                    await dropLease(etcdLease.id)
                    throw refuse(.agentFull, "agent \(configuration.name) keeps \(OverlayLeasingLimits.leasesPerAgentMax) leases alive already")
                }
                counters.grants.add(1, ordering: .relaxed)
                return OverlayGrant(record: record, epoch: result.revision)
            }
            if let requestKey {
                let earlier: OverlayGrant?
                do { earlier = try await earlierGrant(requestKey, consumerHost: consumerHost) } catch {
                    await dropLease(etcdLease.id)
                    throw error
                }
                if let earlier {
                    // Another agent granted this very request meanwhile: that grant is the answer.
                    await dropLease(etcdLease.id)
                    counters.grantsRepeated.add(1, ordering: .relaxed)
                    return earlier
                }
            }
            counters.slotConflicts.add(1, ordering: .relaxed)
        }
        await dropLease(etcdLease.id)
        if !everRegistered { throw refuse(.unknownService, "no producer of service \(service) is registered") }
        throw refuse(.noCapacity, "no producer of service \(service) has a free slot")
    }

    /// The grant an earlier try of the request at `requestKey` made, if its records are there.
    private func earlierGrant(_ requestKey: [UInt8], consumerHost: String) async throws(OverlayLeasingError) -> OverlayGrant? {
        let timeout = configuration.callTimeoutMs
        do {
            guard let requestKV = try await client.get(requestKey, timeoutMs: timeout) else { return nil }
            let request = try OverlayJSON.decode(OverlayRequestRecord.self, requestKV.value,
                                                 key: String(decoding: requestKey, as: UTF8.self))
            let recordKey = configuration.keys.lease(consumerHost: consumerHost, leaseID: request.leaseID)
            guard let recordKV = try await client.get(recordKey, timeoutMs: timeout) else { return nil }
            return OverlayGrant(record: try OverlayJSON.decodeLease(recordKV), epoch: recordKV.createRevision)
        } catch let error as EtcdError {
            throw refuse(.etcdUnavailable, "reading request \(String(decoding: requestKey, as: UTF8.self)): \(error)")
        } catch let error as OverlayLeasingError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }

    private func dropLease(_ id: Int64) async {
        _ = held.withLock { $0.removeValue(forKey: id) }
        try? await client.revokeLease(id, timeoutMs: configuration.callTimeoutMs)
    }

    /// Ends the grant `leaseID` of `consumerHost` (any agent's) in two etcd commits: first the end marker
    /// (`P/leases/<host>/<leaseID>/end`, `reason`, on the grant's own etcd lease) in one transaction that
    /// checks the record is there, no read before it: the consumer host's watch cuts the redirect at this
    /// commit. Then the etcd lease is revoked, so slot, record and marker vanish together and the
    /// capacity is free again. A grant's etcd lease is its lease ID (`grant`).
    public func revoke(consumerHost: String, leaseID: Int64,
                       reason: OverlayLeaseEndReason = .revoked) async throws(OverlayLeasingError) {
        guard OverlayNames.isValid(consumerHost) else {
            throw refuse(.invalidName, OverlayLeasingError.invalidName(what: "consumer host", value: consumerHost).description)
        }
        guard leaseID > 0 else { throw refuse(.leaseNotFound, "no lease \(leaseID) of consumer host \(consumerHost)") }
        let keys = configuration.keys
        let recordKey = keys.lease(consumerHost: consumerHost, leaseID: leaseID)
        let endKey = keys.leaseEnd(consumerHost: consumerHost, leaseID: leaseID)
        let timeout = configuration.callTimeoutMs
        do {
            let marked = try await client.txn(
                compare: [EtcdCompare(key: recordKey, .createRevision(0), .greater)],
                success: [.put(key: endKey, value: OverlayJSON.encode(OverlayLeaseEndRecord(leaseID: leaseID, reason: reason)),
                               lease: leaseID)],
                timeoutMs: timeout)
            guard marked.succeeded else {
                throw refuse(.leaseNotFound, "no lease \(leaseID) of consumer host \(consumerHost)")
            }
            // The consumer host cuts at the marker: from here the grant is only capacity held. This agent
            // stops renewing it first, so if the revoke below fails it still goes within its TTL (when
            // this agent granted it; another granting agent renews it until a revoke is retried).
            _ = held.withLock { $0.removeValue(forKey: leaseID) }
            do {
                try await client.revokeLease(leaseID, timeoutMs: timeout)
            } catch {
                if case .leaseNotFound = error {} else {
                    throw refuse(.etcdUnavailable, "revoke \(leaseID): end marked (the consumer host cuts it), etcd lease not revoked: \(error)")
                }
            }
            counters.revokes.add(1, ordering: .relaxed)
        } catch let error as OverlayLeasingError {
            throw error
        } catch let error as EtcdError {
            if case .leaseNotFound = error { throw refuse(.leaseNotFound, "lease \(leaseID) already ended") }
            throw refuse(.etcdUnavailable, "revoke \(leaseID): \(error)")
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }

    /// Renews `leaseID` now (the agent renews its own grants anyway); returns its TTL.
    public func renew(leaseID: Int64) async throws(OverlayLeasingError) -> Int64 {
        try await renew(leaseID: leaseID, requested: true)
    }

    /// `requested`: a client asked (a failure is a refusal, counted); else the agent's own keep-alive.
    private func renew(leaseID: Int64, requested: Bool) async throws(OverlayLeasingError) -> Int64 {
        do {
            let ttl = try await client.keepAlive(lease: leaseID, timeoutMs: configuration.callTimeoutMs)
            counters.renewals.add(1, ordering: .relaxed)
            return ttl
        } catch {
            if case .leaseNotFound = error {
                if held.withLock({ $0.removeValue(forKey: leaseID) }) != nil { counters.expiries.add(1, ordering: .relaxed) }
                let message = "lease \(leaseID) expired or was revoked"
                throw requested ? refuse(.leaseNotFound, message) : .refused(.leaseNotFound, message: message)
            }
            let message = "renew \(leaseID): \(error)"
            throw requested ? refuse(.etcdUnavailable, message) : .refused(.etcdUnavailable, message: message)
        }
    }

    /// Renews every held grant every TTL/3 until the task is cancelled. A grant etcd no longer knows
    /// (revoked elsewhere, or expired while etcd was out of reach) is dropped and counted as an expiry.
    public func run() async {
        let interval = Duration.milliseconds(max(100, configuration.ttlSeconds * 1000 / 3))
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            await renewAll()
        }
    }

    /// Renewals in flight at once.
    static let renewalsInFlightMax = 32

    func renewAll() async {
        let ids = held.withLock { Array($0.keys) }
        var start = 0
        while start < ids.count {
            let batch = ids[start..<min(ids.count, start + Self.renewalsInFlightMax)]
            start += batch.count
            await withTaskGroup(of: Void.self) { group in
                for id in batch {
                    group.addTask { _ = try? await self.renew(leaseID: id, requested: false) }
                }
            }
        }
    }
}
