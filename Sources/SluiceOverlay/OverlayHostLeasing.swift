// Path: Sources/SluiceOverlay/OverlayHostLeasing.swift — joins a consumer host's data plane to the leasing
// side: its etcd lease view feeds the host's inbox, and the host's lease requests go to the agents.
import SluiceCore
import SluiceEtcd
import Synchronization

/// Where a consumer host's leases come from.
public struct OverlayHostLeasingConfiguration: Sendable {
    /// The consumer host's name in etcd (`P/leases/<consumerHost>/`), the same the agents are told.
    public var consumerHost: String
    public var keys: OverlayKeys
    /// Agents as `IPv4:PORT` (1...`OverlayAgentClient.agentsMax`).
    public var agents: [String]
    /// Deadline of one agent call.
    public var agentCallTimeoutMs: Int64
    /// After a failed request, how long the consumer VM and service stay unasked (their packets drop as
    /// `noLease`; the ones held while the request was out drop as `leaseAskFailed`) before the next packet
    /// asks again.
    public var retryPauseMs: Int64
    /// A lease of this host that etcd holds and the data plane does not (its grant refused and the refusal
    /// lost to a full queue, replaced by a newer grant, or for a VM or service the host does not have) is
    /// given back once it has been granted this long: checked every `reconcileGraceMs` (100...600000).
    public var reconcileGraceMs: Int64

    public init(consumerHost: String, keys: OverlayKeys, agents: [String], agentCallTimeoutMs: Int64 = 3_000,
                retryPauseMs: Int64 = 500, reconcileGraceMs: Int64 = 2_000) {
        self.reconcileGraceMs = reconcileGraceMs
        self.consumerHost = consumerHost
        self.keys = keys
        self.agents = agents
        self.agentCallTimeoutMs = agentCallTimeoutMs
        self.retryPauseMs = retryPauseMs
    }
}

/// Counters of the join (atomics: read from any thread).
public final class OverlayHostLeasingCounters: Sendable {
    /// Lease requests the forwarding thread raised and the request queue took.
    public let requests = Atomic<UInt64>(0)
    /// Requests the queue refused (it holds `OverlayDataplaneLimits.leaseRequestQueueMax`).
    public let requestsDropped = Atomic<UInt64>(0)
    /// Grants the agents answered, and requests that failed (refused or no agent answered).
    public let grants = Atomic<UInt64>(0)
    public let requestFailures = Atomic<UInt64>(0)
    /// Lease events handed to the host (granted, ended), and times the host's inbox was full (retried).
    public let eventsGranted = Atomic<UInt64>(0)
    public let eventsEnded = Atomic<UInt64>(0)
    public let inboxFullRetries = Atomic<UInt64>(0)
    /// CLOCK_MONOTONIC ns at which the last end event went into the host's inbox (timings: the watch's
    /// share of a revoke's time, and the hand-off's after it, `OverlayHost.lastEventsApplied`).
    public let lastEndSubmittedNs = Atomic<UInt64>(0)
    /// The last end event's number in the host's inbox order: applied once `OverlayHost.inputsAppliedCount`
    /// reaches it.
    public let lastEndInputNumber = Atomic<UInt64>(0)
    /// Grants the host refused for want of a lease slot, those given back (revoked at the agents), and
    /// refusals the queue (`leaseRequestQueueMax`) could not take (not given back: counted to be seen).
    public let grantsRefused = Atomic<UInt64>(0)
    public let grantsReturned = Atomic<UInt64>(0)
    public let refusalsDropped = Atomic<UInt64>(0)
    /// Give-backs that failed every try (no agent answered): the lease ends with its TTL once its agent stops
    /// renewing it, or at the next reconcile.
    public let grantsReturnFailed = Atomic<UInt64>(0)
    /// Leases the reconcile gave back: held in etcd for this host, not in its data plane (see
    /// `OverlayHostLeasingConfiguration.reconcileGraceMs`).
    public let leasesReconciled = Atomic<UInt64>(0)
    init() {}
}

/// The join of one consumer host (`OverlayHost`) to the leasing side. `run()`:
/// - reads the host's lease records and watches them (`OverlayLeaseWatch`) and submits every event to
///   the host's inbox: a grant installs the redirect, an end removes the redirect and cuts its flows in
///   one step on the forwarding thread (see `OverlayRedirect.apply`);
/// - takes the host's lease requests (raised on the forwarding thread by a consumer VM's first packet to
///   a service it holds no lease for; that packet and the next ones are held, bounded, and go on once the
///   grant is applied: `OverlayRedirect`) from a bounded queue and asks the agents (`OverlayAgentClient`), one request at a time, off the
///   packet thread. The grant itself reaches the host through the watch, like any other (one path for
///   every grant, in revision order). A failed request is counted; after `retryPauseMs` the pair is
///   re-armed so the next packet asks again.
public final class OverlayHostLeasing: Sendable {
    public let configuration: OverlayHostLeasingConfiguration
    public let counters = OverlayHostLeasingCounters()
    public let host: OverlayHost
    private let etcd: EtcdClient
    private let agents: OverlayAgentClient
    private let requests: AsyncStream<(consumerVM: String, service: String)>
    private let requestInput: AsyncStream<(consumerVM: String, service: String)>.Continuation
    private let refusals: AsyncStream<OverlayLease>
    private let refusalInput: AsyncStream<OverlayLease>.Continuation
    /// CLOCK_MONOTONIC ns at which the agents answered each grant (bounded: the last `grantTimesMax`).
    private let grantTimes = Mutex<[Int64: UInt64]>([:])
    static let grantTimesMax = 4096
    /// Leases the watch reported granted and not ended: lease ID -> (lease, CLOCK_MONOTONIC ns handed to the
    /// host). At most `watchedMax` (the watch reads at most `leaseCountMax` records).
    private let watched = Mutex<[Int64: (lease: OverlayLease, sinceNs: UInt64)]>([:])
    static let watchedMax = 2 * OverlayLimits.leaseCountMax
    /// Leases a give-back is working on (the reconcile leaves them alone).
    private let givingBack = Mutex<Set<Int64>>([])
    /// Leases ended at a revoke's marker, until their record is seen gone (at most `watchedMax`).
    private let marked = Mutex<[Int64: (lease: OverlayLease, sinceNs: UInt64)]>([:])
    /// Tries of one give-back (revoke at the agents), `retryPauseMs` apart, doubling.
    static let giveBackTriesMax = 5

    public init(host: OverlayHost, etcd: EtcdClient, configuration: OverlayHostLeasingConfiguration) throws(OverlayLeasingError) {
        try OverlayNames.check(configuration.consumerHost, "consumer host")
        guard (1...60_000).contains(configuration.retryPauseMs) else {
            throw .invalidValue("retry pause \(configuration.retryPauseMs) ms not in 1...60000")
        }
        guard (100...600_000).contains(configuration.reconcileGraceMs) else {
            throw .invalidValue("reconcile grace \(configuration.reconcileGraceMs) ms not in 100...600000")
        }
        self.agents = try OverlayAgentClient(agents: configuration.agents, callTimeoutMs: configuration.agentCallTimeoutMs)
        self.configuration = configuration
        self.host = host
        self.etcd = etcd
        (requests, requestInput) = AsyncStream.makeStream(
            of: (consumerVM: String, service: String).self,
            bufferingPolicy: .bufferingOldest(OverlayDataplaneLimits.leaseRequestQueueMax))
        (refusals, refusalInput) = AsyncStream.makeStream(
            of: OverlayLease.self, bufferingPolicy: .bufferingOldest(OverlayDataplaneLimits.leaseRequestQueueMax))
        let input = requestInput
        let refusalInput = refusalInput
        let counters = counters
        host.onGrantRefused { [weak self] lease in
            // On the forwarding thread (a refusal: rare): a non-blocking enqueue. Marked as being given back
            // from here on, so the reconcile leaves it to the queue; a refusal the queue cannot take is left
            // to the reconcile.
            counters.grantsRefused.add(1, ordering: .relaxed)
            _ = self?.givingBack.withLock { $0.insert(lease.leaseID) }
            if case .enqueued = refusalInput.yield(lease) {} else {
                counters.refusalsDropped.add(1, ordering: .relaxed)
                _ = self?.givingBack.withLock { $0.remove(lease.leaseID) }
            }
        }
        host.onLeaseRequest { [unowned host] vm, service in
            // On the forwarding thread: a non-blocking enqueue, nothing more. A refused one re-arms the
            // pair at once, so a later packet asks again instead of waiting for an answer that never comes.
            if case .enqueued = input.yield((consumerVM: vm, service: service)) {
                counters.requests.add(1, ordering: .relaxed)
            } else {
                counters.requestsDropped.add(1, ordering: .relaxed)
                _ = host.rearmLeaseRequest(consumerVM: vm, service: service)
            }
        }
    }

    /// When the agents answered the grant of `leaseID` (CLOCK_MONOTONIC ns), if this join asked for it.
    public func grantAnsweredNs(leaseID: Int64) -> UInt64? { grantTimes.withLock { $0[leaseID] } }

    /// Watches and serves requests until cancelled (returns), or throws when etcd cannot be watched again
    /// within the watch's reconnect deadline.
    public func run() async throws(OverlayLeasingError) {
        // A new watch reports every lease again from its snapshot.
        watched.withLock { $0.removeAll() }
        marked.withLock { $0.removeAll() }
        let failure = await withTaskGroup(of: OverlayLeasingError?.self) { group -> OverlayLeasingError? in
            group.addTask {
                do throws(OverlayLeasingError) {
                    var watch = try await OverlayLeaseWatch.start(self.etcd, keys: self.configuration.keys,
                                                                  consumerHost: self.configuration.consumerHost)
                    while let event = try await watch.next() { await self.deliver(event) }
                    watch.cancel()
                    return nil
                } catch {
                    return error
                }
            }
            group.addTask {
                for await request in self.requests {
                    await self.ask(consumerVM: request.consumerVM, service: request.service)
                }
                return nil
            }
            group.addTask {
                for await lease in self.refusals { await self.giveBack(lease, rearm: true) }
                return nil
            }
            group.addTask {
                while !Task.isCancelled {
                    do { try await Task.sleep(for: .milliseconds(self.configuration.reconcileGraceMs)) } catch { break }
                    await self.reconcile()
                }
                return nil
            }
            // Any task ending ends all: the watch ended (cancelled or failed) or a stream did.
            let first = await group.next() ?? nil
            requestInput.finish()
            refusalInput.finish()
            group.cancelAll()
            return first
        }
        if let failure, !Task.isCancelled { throw failure }
    }

    /// Hands one event to the host, waiting (1 ms steps) while its inbox is full: the watch is held back
    /// meanwhile, and etcd behind it.
    func deliver(_ event: OverlayLeaseEvent) async {
        var submittedNs = Clock.monotonicNs()
        var number = host.submitNumbered(event)
        while number == nil {
            counters.inboxFullRetries.add(1, ordering: .relaxed)
            if Task.isCancelled { return }
            try? await Task.sleep(for: .milliseconds(1))
            submittedNs = Clock.monotonicNs()
            number = host.submitNumbered(event)
        }
        switch event {
        case .granted(let lease):
            counters.eventsGranted.add(1, ordering: .relaxed)
            watched.withLock { watched in
                if watched.count < Self.watchedMax { watched[lease.leaseID] = (lease, submittedNs) }
            }
        case .ended(let leaseID, _, let reason):
            // Stamped before the submit: the forwarding thread may apply it before this line runs.
            counters.lastEndSubmittedNs.store(submittedNs, ordering: .relaxed)
            counters.lastEndInputNumber.store(number!, ordering: .releasing)
            counters.eventsEnded.add(1, ordering: .relaxed)
            let lease = watched.withLock { $0.removeValue(forKey: leaseID) }
            // Ended at a revoke's marker: the record should go with its etcd lease right after. If that
            // revoke failed, the slot stays held (renewed by its granting agent): checked by the reconcile.
            if reason != .expired, let lease {
                marked.withLock { marked in
                    if marked.count < Self.watchedMax { marked[leaseID] = (lease.lease, submittedNs) }
                }
            }
        }
    }

    /// Gives back every lease etcd holds for this host (as the watch reported) that the data plane has not
    /// held for `reconcileGraceMs`: a refusal the bounded queues lost, a grant replaced by a newer one for
    /// the same pair, a grant for a VM or service the host does not have. Without this its agent would
    /// renew it, and hold the producer's slot, for nothing.
    ///
    /// Also: a lease ended at a revoke's marker whose record is still in etcd a grace later (the revoke's
    /// second step failed, or its agent died between the two) is revoked again, so its slot is freed.
    func reconcile() async {
        let held = Set(host.snapshot().leases.map(\.leaseID))
        let graceNs = UInt64(configuration.reconcileGraceMs) * 1_000_000
        let now = Clock.monotonicNs()
        let unused = watched.withLock { watched in
            watched.values.filter { !held.contains($0.lease.leaseID) && now &- $0.sinceNs >= graceNs }.map(\.lease)
        }.filter { lease in givingBack.withLock { !$0.contains(lease.leaseID) } }
        for lease in unused.sorted(by: { $0.leaseID < $1.leaseID }) {
            if Task.isCancelled { return }
            // Held after all (applied since the snapshot was published): keep it.
            let snapshot = host.snapshot()
            if snapshot.leases.contains(where: { $0.leaseID == lease.leaseID }) { continue }
            counters.leasesReconciled.add(1, ordering: .relaxed)
            // A pair holding no lease may be stuck on a refusal the queues lost (its packets drop
            // `leaseSlotsFull` and ask nothing until re-armed): re-arm it after the give-back.
            let pairIdle = !snapshot.leases.contains { $0.consumerVM == lease.consumerVM && $0.service == lease.service }
            await giveBack(lease, rearm: pairIdle)
        }
        let due = marked.withLock { marked in
            marked.filter { now &- $0.value.sinceNs >= graceNs }.map { ($0.key, $0.value.lease) }
        }
        for (leaseID, lease) in due.sorted(by: { $0.0 < $1.0 }) {
            if Task.isCancelled { return }
            let recordKey = configuration.keys.lease(consumerHost: configuration.consumerHost, leaseID: leaseID)
            guard let present = try? await etcd.get(recordKey, timeoutMs: configuration.agentCallTimeoutMs) else { continue }
            if present != nil {
                counters.leasesReconciled.add(1, ordering: .relaxed)
                await giveBack(lease, rearm: false)
            } else {
                _ = marked.withLock { $0.removeValue(forKey: leaseID) }
            }
        }
    }

    /// Gives back a lease the host does not use: revokes it at the agents, `giveBackTriesMax` tries
    /// (`retryPauseMs` apart, doubling) while no agent answers; a lease already gone counts as given back.
    /// `rearm` (a grant refused for want of a slot): after `retryPauseMs` the pair is re-armed so a later
    /// packet asks again.
    func giveBack(_ lease: OverlayLease, rearm: Bool) async {
        _ = givingBack.withLock { $0.insert(lease.leaseID) }
        defer { _ = givingBack.withLock { $0.remove(lease.leaseID) } }
        var pauseMs = configuration.retryPauseMs
        for attempt in 1...Self.giveBackTriesMax {
            do {
                try await agents.revoke(consumerHost: configuration.consumerHost, leaseID: lease.leaseID)
                counters.grantsReturned.add(1, ordering: .relaxed)
                forget(lease.leaseID)
                break
            } catch {
                if case .refused(.leaseNotFound, _) = error {
                    // Expired or revoked meanwhile: nothing is held any more.
                    counters.grantsReturned.add(1, ordering: .relaxed)
                    forget(lease.leaseID)
                    break
                }
                if attempt == Self.giveBackTriesMax || Task.isCancelled {
                    counters.grantsReturnFailed.add(1, ordering: .relaxed)
                    break
                }
                try? await Task.sleep(for: .milliseconds(pauseMs))
                pauseMs = min(pauseMs * 2, 60_000)
            }
        }
        guard rearm else { return }
        try? await Task.sleep(for: .milliseconds(configuration.retryPauseMs))
        while !host.rearmLeaseRequest(consumerVM: lease.consumerVM, service: lease.service), !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// A lease given back: the reconcile has nothing more to do with it.
    private func forget(_ leaseID: Int64) {
        _ = watched.withLock { $0.removeValue(forKey: leaseID) }
        _ = marked.withLock { $0.removeValue(forKey: leaseID) }
    }

    func ask(consumerVM: String, service: String) async {
        do {
            let grant = try await agents.grant(service: service, consumerHost: configuration.consumerHost, consumerVM: consumerVM)
            let now = Clock.monotonicNs()
            grantTimes.withLock { times in
                if times.count >= Self.grantTimesMax { times.removeAll() }
                times[grant.record.leaseID] = now
            }
            counters.grants.add(1, ordering: .relaxed)
        } catch {
            counters.requestFailures.add(1, ordering: .relaxed)
            try? await Task.sleep(for: .milliseconds(configuration.retryPauseMs))
            while !host.rearmLeaseRequest(consumerVM: consumerVM, service: service), !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
    }
}
