// Path: Sources/SluiceOverlay/OverlayRevokeTiming.swift — revoke to cut, measured on a running consumer host:
// grant, then revoke through the agents, and time the end through etcd, the watch and the forwarding thread.
// One function for the namespace test (debug build) and `sluice overlay bench-revoke` (release).
import SluiceCore
import SluiceEtcd

/// Revoke-to-cut samples, in milliseconds, one per round.
public struct OverlayRevokeTiming: Sendable {
    /// Revoke call started -> the end event in the host's inbox (the agent, etcd's commit, the watch).
    public var toInboxMs: [Double] = []
    /// End event in the inbox -> applied by the forwarding thread (from then on no packet of the lease
    /// is forwarded).
    public var handOffMs: [Double] = []
    /// Revoke call started -> applied: the cut.
    public var totalMs: [Double] = []
    /// Revoke call started -> the call returned (the marker's commit and the etcd lease's revoke).
    public var callMs: [Double] = []

    /// The sample at quantile `q` (nearest rank) of `values`; 0 when empty.
    public static func quantile(_ values: [Double], _ q: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
    }

    public var summary: String {
        func both(_ values: [Double]) -> String {
            String(format: "median %.2f ms p90 %.2f ms", Self.quantile(values, 0.5), Self.quantile(values, 0.9))
        }
        return "\(totalMs.count) revokes: revoke call -> cut applied \(both(totalMs)); revoke -> end in the inbox "
            + "\(both(toInboxMs)); inbox -> applied \(both(handOffMs)); revoke call returned \(both(callMs))"
    }

    public enum Failure: Error, CustomStringConvertible {
        case grantNotSeen(round: Int)
        case endNotSeen(round: Int)
        public var description: String {
            switch self {
            case .grantNotSeen(let round): "round \(round): the grant did not reach the host within 3 s"
            case .endNotSeen(let round): "round \(round): the revoke did not reach the forwarding thread within 3 s"
            }
        }
    }

    /// `rounds` times: a grant of `service` for `consumerVM` through `agents`, waited for on the host (its
    /// grant event handed over), a pause of `settleMs`, then its revoke, timed until the host's forwarding
    /// thread applied the end. For a service and consumer VM the host serves, the end is the real cut
    /// (`OverlayRedirect.end(slot:)`: redirect gone, flows cut); for others the data plane ignores the
    /// events (they still go the whole way). Callers: one at a time per `leasing` (it reads the join's
    /// last-end time), with nothing else ending leases of the host meanwhile.
    public static func measure(leasing: OverlayHostLeasing, agents: OverlayAgentClient, service: String,
                               consumerVM: String, rounds: Int, settleMs: Int = 20) async throws -> OverlayRevokeTiming {
        precondition(rounds > 0 && rounds <= 100_000)
        let counters = leasing.counters
        let host = leasing.host
        let consumerHost = leasing.configuration.consumerHost
        var timing = OverlayRevokeTiming()
        for round in 0..<rounds {
            let endsBefore = counters.eventsEnded.load(ordering: .relaxed)
            let grantsBefore = counters.eventsGranted.load(ordering: .relaxed)
            let grant = try await agents.grant(service: service, consumerHost: consumerHost, consumerVM: consumerVM)
            guard await waitFor(timeoutMs: 3_000, { counters.eventsGranted.load(ordering: .relaxed) > grantsBefore }) else {
                throw Failure.grantNotSeen(round: round)
            }
            try await Task.sleep(for: .milliseconds(settleMs))
            let start = Clock.monotonicNs()
            try await agents.revoke(consumerHost: consumerHost, leaseID: grant.record.leaseID)
            let returned = Clock.monotonicNs()
            // Applied once the host's applied-input count reaches the end's number in its inbox (FIFO).
            let seen = await waitFor(timeoutMs: 3_000) {
                counters.eventsEnded.load(ordering: .relaxed) > endsBefore
                    && host.inputsAppliedCount >= counters.lastEndInputNumber.load(ordering: .acquiring)
            }
            guard seen else { throw Failure.endNotSeen(round: round) }
            let submitted = counters.lastEndSubmittedNs.load(ordering: .relaxed)
            let applied = host.lastEventsApplied.atNs
            timing.toInboxMs.append(Double(submitted &- start) / 1e6)
            timing.handOffMs.append(Double(applied &- submitted) / 1e6)
            timing.totalMs.append(Double(applied &- start) / 1e6)
            timing.callMs.append(Double(returned &- start) / 1e6)
        }
        return timing
    }

    /// Polls `condition` every 50 µs (the times measured are milliseconds) until it holds or `timeoutMs` passed.
    private static func waitFor(timeoutMs: Int, _ condition: @Sendable () -> Bool) async -> Bool {
        let deadline = Clock.monotonicNs() &+ UInt64(timeoutMs) * 1_000_000
        while Clock.monotonicNs() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .microseconds(50))
        }
        return condition()
    }
}
