// The overlay's Prometheus text (what `sluice run` serves and `sluice overlay flows --prometheus` prints).
import Testing

@testable import SluiceOverlay

struct OverlayMetricsTests {
    @Test func perServicePerLeaseAndDropSeries() {
        var snapshot = OverlayHostSnapshot()
        snapshot.host = "ch\"1"
        snapshot.ports = [OverlayPortCounters(name: "c1", interface: "chv", receivedPackets: 5, receivedBytes: 500,
                                              sentPackets: 4, sentBytes: 400)]
        snapshot.services = [OverlayServiceReport(name: "web", flows: 3, packets: 20, bytes: 2000, redirectMisses: 2)]
        snapshot.leases = [OverlayLeaseReport(leaseID: 77, epoch: 9, service: "web", consumerVM: "c1", producerVM: "p1",
                                              producerHost: "ph", flows: 3, packets: 20, bytes: 2000)]
        snapshot.drops = ["awaitingLease": 2, "leaseEnded": 1]
        snapshot.flowCount = 3
        let text = OverlayMetrics.text(snapshot)
        let lines = text.split(separator: "\n").map(String.init)
        let host = "host=\"ch\\\"1\""
        #expect(lines.contains("sluice_overlay_service_redirect_misses_total{\(host),service=\"web\"} 2"))
        #expect(lines.contains("sluice_overlay_lease_packets_total{\(host),lease=\"77\",service=\"web\",consumer_vm=\"c1\","
                               + "producer_vm=\"p1\",producer_host=\"ph\"} 20"))
        #expect(lines.contains("sluice_overlay_drops_total{\(host),reason=\"awaitingLease\"} 2"))
        #expect(lines.contains("sluice_overlay_drops_total{\(host),reason=\"malformed\"} 0"))
        #expect(lines.contains("sluice_overlay_port_sent_bytes_total{\(host),port=\"c1\"} 400"))
        #expect(lines.contains("sluice_overlay_flows{\(host)} 3"))
        // One TYPE line per family, every sample after its family's.
        let types = lines.filter { $0.hasPrefix("# TYPE ") }
        #expect(Set(types).count == types.count)
        // An ended lease's series go with it.
        snapshot.leases = []
        #expect(!OverlayMetrics.text(snapshot).contains("lease=\"77\""))
    }

    @Test func agentCountersAsPrometheus() {
        let counters = OverlayLeasingCounters()
        counters.grants.add(3, ordering: .relaxed)
        counters.slotConflicts.add(2, ordering: .relaxed)
        counters.refused(.noCapacity)
        let lines = OverlayMetrics.agentText(agent: "a1", counters).split(separator: "\n").map(String.init)
        #expect(lines.contains("sluice_overlay_agent_grants_total{agent=\"a1\"} 3"))
        #expect(lines.contains("sluice_overlay_agent_slot_conflicts_total{agent=\"a1\"} 2"))
        #expect(lines.contains("sluice_overlay_agent_revokes_total{agent=\"a1\"} 0"))
        #expect(lines.contains("sluice_overlay_agent_refusals_total{agent=\"a1\",reason=\"no_capacity\"} 1"))
        #expect(lines.contains("sluice_overlay_agent_refusals_total{agent=\"a1\",reason=\"etcd_unavailable\"} 0"))
        let types = lines.filter { $0.hasPrefix("# TYPE ") }
        #expect(Set(types).count == types.count && types.count == 7)
    }
}
