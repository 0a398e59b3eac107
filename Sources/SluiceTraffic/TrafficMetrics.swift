// Path: Sources/SluiceTraffic/TrafficMetrics.swift — the controller's state as swift-metrics gauges
// (exported by whatever backend the process bootstraps, e.g. Prometheus).
import CoreMetrics

/// Gauges for each source (share target and achieved, pending frames, time on the ring, bytes sent)
/// and for the port (estimated capacity, in-flight limit, stalled). Made once; `record` only sets
/// values. Call from the controller's thread, outside its hot loop.
public final class TrafficMetrics {
    private struct SourceGauges {
        let shareTarget, shareAchieved, pendingPackets, delaySeconds, sentBytes: Gauge
    }

    private let sources: [SourceGauges]
    private let capacity: Gauge
    private let inFlightLimit: Gauge
    private let stalled: Gauge

    public init(sourceCount: Int, port: String = "0", factory: MetricsFactory = MetricsSystem.factory) {
        sources = (0..<sourceCount).map { source in
            let dimensions = [("port", port), ("source", "\(source)")]
            return SourceGauges(
                shareTarget: Gauge(label: "sluice_traffic_share_target", dimensions: dimensions, factory: factory),
                shareAchieved: Gauge(label: "sluice_traffic_share_achieved", dimensions: dimensions, factory: factory),
                pendingPackets: Gauge(label: "sluice_traffic_pending_packets", dimensions: dimensions, factory: factory),
                delaySeconds: Gauge(label: "sluice_traffic_delay_seconds", dimensions: dimensions, factory: factory),
                sentBytes: Gauge(label: "sluice_traffic_sent_bytes", dimensions: dimensions, factory: factory))
        }
        capacity = Gauge(label: "sluice_traffic_port_capacity_bytes_per_second", dimensions: [("port", port)], factory: factory)
        inFlightLimit = Gauge(label: "sluice_traffic_port_in_flight_limit_bytes", dimensions: [("port", port)], factory: factory)
        stalled = Gauge(label: "sluice_traffic_port_stalled", dimensions: [("port", port)], factory: factory)
    }

    public func record(_ snapshot: TrafficSnapshot) {
        for state in snapshot.sources where state.source < sources.count {
            let gauges = sources[state.source]
            gauges.shareTarget.record(state.shareTarget)
            gauges.shareAchieved.record(state.shareAchieved)
            gauges.pendingPackets.record(Double(state.pendingPackets))
            gauges.delaySeconds.record(Double(state.delayNs) / 1e9)
            gauges.sentBytes.record(Double(state.completedBytes))
        }
        capacity.record(snapshot.portCapacityBytesPerSecond)
        inFlightLimit.record(Double(snapshot.portLimitBytes))
        stalled.record(snapshot.stalled ? 1 : 0)
    }
}
