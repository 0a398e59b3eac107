// Path: Sources/SluiceOverlay/OverlayMetrics.swift — a host's overlay counters in the Prometheus text format
// (0.0.4): per port, per service, per live lease, drops by reason, and the leasing join's counters.

/// Renders `sluice_overlay_*` metrics. Per-lease series exist while the lease is live (an ended lease's
/// series leave with it, so their number is bounded by `OverlayLimits.leaseCountMax`); every other series
/// is fixed by the config (ports, services) or by `OverlayDropReason`.
public enum OverlayMetrics {
    public static func text(_ snapshot: OverlayHostSnapshot, leasing: OverlayHostLeasingCounters? = nil) -> String {
        var out = MetricsWriter()
        let host = ("host", snapshot.host)
        out.family("sluice_overlay_port_received_packets_total", "counter", "Frames received per port.")
        for port in snapshot.ports { out.sample([host, ("port", port.name)], port.receivedPackets) }
        out.family("sluice_overlay_port_received_bytes_total", "counter", "Bytes received per port.")
        for port in snapshot.ports { out.sample([host, ("port", port.name)], port.receivedBytes) }
        out.family("sluice_overlay_port_sent_packets_total", "counter", "Frames sent per port.")
        for port in snapshot.ports { out.sample([host, ("port", port.name)], port.sentPackets) }
        out.family("sluice_overlay_port_sent_bytes_total", "counter", "Bytes sent per port.")
        for port in snapshot.ports { out.sample([host, ("port", port.name)], port.sentBytes) }

        let services: [(String, String, KeyPath<OverlayServiceReport, UInt64>)] = [
            ("flows", "Flows redirected per service.", \.flows), ("packets", "Packets redirected per service (both directions).", \.packets),
            ("bytes", "Bytes redirected per service (both directions).", \.bytes),
            ("redirect_misses", "Packets to a service address with no lease held (awaiting one, or none asked).", \.redirectMisses),
        ]
        for (name, help, path) in services {
            out.family("sluice_overlay_service_\(name)_total", "counter", help)
            for service in snapshot.services { out.sample([host, ("service", service.name)], service[keyPath: path]) }
        }
        let leases: [(String, String, KeyPath<OverlayLeaseReport, UInt64>)] = [
            ("flows", "Flows bound to the lease.", \.flows), ("packets", "Packets of the lease's flows.", \.packets),
            ("bytes", "Bytes of the lease's flows.", \.bytes),
        ]
        for (name, help, path) in leases {
            out.family("sluice_overlay_lease_\(name)_total", "counter", help + " Live leases only.")
            for lease in snapshot.leases {
                out.sample([host, ("lease", "\(lease.leaseID)"), ("service", lease.service), ("consumer_vm", lease.consumerVM),
                            ("producer_vm", lease.producerVM), ("producer_host", lease.producerHost)], lease[keyPath: path])
            }
        }
        out.family("sluice_overlay_drops_total", "counter", "Packets dropped, by reason.")
        for reason in OverlayDropReason.allCases {
            out.sample([host, ("reason", reason.description)], snapshot.drops[reason.description] ?? 0)
        }
        out.family("sluice_overlay_flows", "gauge", "Flows in the flow table.")
        out.sample([host], UInt64(snapshot.flowCount))
        out.family("sluice_overlay_leases", "gauge", "Live leases in the redirect table.")
        out.sample([host], UInt64(snapshot.leases.count))
        out.family("sluice_overlay_events_applied_total", "counter", "Inbox drains that applied lease events.")
        out.sample([host], snapshot.eventsApplied)
        out.family("sluice_overlay_events_ignored_total", "counter", "Lease events ignored (stale, or for names this host lacks).")
        out.sample([host], snapshot.eventsIgnored)
        out.family("sluice_overlay_resets_sent_total", "counter", "TCP resets sent to consumer VMs for flows of ended leases.")
        out.sample([host], snapshot.resetsSent)
        out.family("sluice_overlay_held_packets_total", "counter", "First packets held while their lease was asked for.")
        out.sample([host], snapshot.heldPackets)
        out.family("sluice_overlay_released_packets_total", "counter", "Held packets handed on after their grant.")
        out.sample([host], snapshot.releasedPackets)
        out.family("sluice_overlay_lease_slots_full_total", "counter", "Grants refused because every lease slot was taken.")
        out.sample([host], snapshot.leaseSlotsFull)
        if let leasing {
            let counters: [(String, String, UInt64)] = [
                ("lease_requests", "Lease requests raised by first packets.", leasing.requests.load(ordering: .relaxed)),
                ("lease_requests_dropped", "Lease requests the bounded queue refused.", leasing.requestsDropped.load(ordering: .relaxed)),
                ("grants", "Grants the agents answered.", leasing.grants.load(ordering: .relaxed)),
                ("lease_request_failures", "Lease requests refused or unanswered.", leasing.requestFailures.load(ordering: .relaxed)),
                ("lease_events_granted", "Grant events from the etcd watch.", leasing.eventsGranted.load(ordering: .relaxed)),
                ("lease_events_ended", "End events (revoked, expired) from the etcd watch.", leasing.eventsEnded.load(ordering: .relaxed)),
                ("grants_returned", "Grants refused for want of a lease slot and revoked at the agents.", leasing.grantsReturned.load(ordering: .relaxed)),
                ("grant_refusals_dropped", "Refused grants the bounded queue could not take (the reconcile gives them back).", leasing.refusalsDropped.load(ordering: .relaxed)),
                ("grants_return_failed", "Give-backs no agent answered in any try.", leasing.grantsReturnFailed.load(ordering: .relaxed)),
                ("leases_reconciled", "Leases held in etcd for this host but unused by its data plane past the grace, given back.", leasing.leasesReconciled.load(ordering: .relaxed)),
            ]
            for (name, help, value) in counters {
                out.family("sluice_overlay_\(name)_total", "counter", help)
                out.sample([host], value)
            }
        }
        return out.text
    }
}

extension OverlayMetrics {
    /// A leasing agent's own counters as `sluice_overlay_agent_*{agent}`: grants, renewals, revokes,
    /// expiries, races lost (`slot_conflicts`: a grant transaction beaten to its slot, then retried),
    /// repeated grants, and refusals by reason (every reason, zeros included). `sluice overlay agent
    /// --metrics` serves it.
    public static func agentText(agent: String, _ counters: OverlayLeasingCounters) -> String {
        var out = MetricsWriter()
        let label = ("agent", agent)
        let values: [(String, String, Int)] = [
            ("grants", "Leases granted.", counters.grants.load(ordering: .relaxed)),
            ("renewals", "Lease keep-alives that succeeded (the agent's own and requested ones).", counters.renewals.load(ordering: .relaxed)),
            ("revokes", "Leases revoked.", counters.revokes.load(ordering: .relaxed)),
            ("expiries", "Held grants found expired at their keep-alive.", counters.expiries.load(ordering: .relaxed)),
            ("slot_conflicts", "Grant transactions that lost the race for a slot (then retried).", counters.slotConflicts.load(ordering: .relaxed)),
            ("grants_repeated", "Grant requests answered with an earlier try's grant (same request ID).", counters.grantsRepeated.load(ordering: .relaxed)),
        ]
        for (name, help, value) in values {
            out.family("sluice_overlay_agent_\(name)_total", "counter", help)
            out.sample([label], UInt64(max(0, value)))
        }
        out.family("sluice_overlay_agent_refusals_total", "counter", "Requests refused, by reason.")
        for reason in OverlayRefusal.allCases {
            out.sample([label, ("reason", reason.rawValue)], UInt64(max(0, counters.refusals(reason))))
        }
        return out.text
    }
}

/// Prometheus text lines, label values escaped.
struct MetricsWriter {
    var text = ""
    private var name = ""

    mutating func family(_ name: String, _ type: String, _ help: String) {
        self.name = name
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ labels: [(String, String)], _ value: UInt64) {
        let rendered = labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",")
        text += labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(rendered)} \(value)\n"
    }

    static func escape(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
