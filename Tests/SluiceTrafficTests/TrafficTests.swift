import Testing

@testable import SluiceTraffic

@Suite struct DivisionTests {
    @Test func weightsDivideThePort() {
        let shares = divide(capacity: 800, among: [(0, SourcePolicy(weight: 1)), (1, SourcePolicy(weight: 1)),
                                                   (2, SourcePolicy(weight: 2)), (3, SourcePolicy(weight: 4))])
        #expect(shares == [0: 100, 1: 100, 2: 200, 3: 400])
    }

    @Test func minimumsComeFirstAndCapsPassTheRestOn() {
        let shares = divide(capacity: 1000, among: [
            (0, SourcePolicy(weight: 1, minimumBytesPerSecond: 300)),
            (1, SourcePolicy(weight: 1, maximumBytesPerSecond: 100)),
            (2, SourcePolicy(weight: 2)),
        ])
        // 300 guaranteed to 0; the 700 left by weight 1:1:2, 1 capped at 100 and its excess re-spread 1:2.
        #expect(abs(shares[0]! - 500) < 1e-6)
        #expect(abs(shares[1]! - 100) < 1e-6, "capped")
        #expect(abs(shares[2]! - 400) < 1e-6)
    }

    @Test func minimumsBeyondCapacityAreScaled() {
        let shares = divide(capacity: 100, among: [(0, SourcePolicy(minimumBytesPerSecond: 100)),
                                                   (1, SourcePolicy(minimumBytesPerSecond: 300))])
        #expect(abs(shares[0]! - 25) < 1e-6)
        #expect(abs(shares[1]! - 75) < 1e-6)
    }

    @Test func badPolicyIsATypedError() {
        #expect(throws: TrafficError.invalidPolicy("source 0: weight must be positive, got 0.0")) {
            try TrafficPolicy(sources: [SourcePolicy(weight: 0)]).validate()
        }
        #expect(throws: TrafficError.self) {
            try TrafficPolicy(sources: [SourcePolicy(minimumBytesPerSecond: 10, maximumBytesPerSecond: 5)]).validate()
        }
    }
}

@Suite struct CompletionChannelTests {
    @Test func eventsRoundTripAndAFullRingOverflowsIntoCounters() throws {
        let channel = try makeCompletionChannel(eventCapacity: 4, sourceCountMax: 8)
        var reporter = channel.reporter
        var receiver = channel.receiver
        // 4 events -> 12 items -> a 16-slot ring: 5 fit, the rest overflow.
        for index in 0..<10 {
            reporter.report(CompletionEvent(sourceID: UInt16(index % 2), flowHash: UInt32(index), bytes: 100,
                                            enqueueNs: 1_000, completionNs: 1_500 + UInt64(index)))
        }
        var seen: [CompletionEvent] = []
        _ = receiver.drain { seen.append($0) }
        #expect(seen.count == 5)
        #expect(seen[0] == CompletionEvent(sourceID: 0, flowHash: 0, bytes: 100, enqueueNs: 1_000, completionNs: 1_500))
        #expect(seen[3].flowHash == 3 && seen[3].sourceID == 1 && seen[3].completionNs == 1_503)
        let overflowed = (0..<2).reduce(UInt64(0)) { $0 + receiver.overflow.packets($1) }
        #expect(overflowed == 5, "every event is either in the ring or counted")
        #expect(receiver.overflow.bytes(0) + receiver.overflow.bytes(1) == 500)
    }

    @Test func badChannelSizesAreTypedErrors() {
        #expect(throws: TrafficError.invalidSourceCount(0, max: TrafficLimits.sourceCountMax)) {
            _ = try makeCompletionChannel(eventCapacity: 4, sourceCountMax: 0)
        }
        #expect(throws: TrafficError.self) { _ = try makeCompletionChannel(eventCapacity: 0, sourceCountMax: 4) }
    }
}

/// A simulated port: frames admitted by the TX stage wait in FIFO order and leave one after another
/// at `capacity` bytes per second, each completion reported through the channel, as a shaped veth
/// or a real NIC returns TX slots. Simulated time, so the test is exact and fast.
struct SimulatedPort {
    let capacityBytesPerSecond: Double
    var queue: [(source: Int, bytes: Int, enqueueNs: UInt64)] = []
    var head = 0
    var busyUntilNs: UInt64 = 0
    var sentBytes: [UInt64] = Array(repeating: 0, count: 8)

    mutating func complete(until nowNs: UInt64, reporter: inout CompletionReporter, admission: inout TxAdmission,
                           countFrom windowStartNs: UInt64) {
        while head < queue.count {
            let frame = queue[head]
            let start = max(busyUntilNs, frame.enqueueNs)
            let done = start + UInt64(Double(frame.bytes) / capacityBytesPerSecond * 1e9)
            guard done <= nowNs else { break }
            busyUntilNs = done
            head += 1
            reporter.report(CompletionEvent(sourceID: UInt16(frame.source), flowHash: 0, bytes: UInt32(frame.bytes),
                                            enqueueNs: frame.enqueueNs, completionNs: done))
            admission.completed(source: frame.source, bytes: frame.bytes)
            if done >= windowStartNs { sentBytes[frame.source] += UInt64(frame.bytes) }
        }
    }
}

@Suite struct TrafficControllerTests {
    static let frameBytes = 1_500
    static let capacity = 12_500_000.0  // 100 Mbit/s

    /// Runs backlogged sources (those `sending` at each time) against the simulated port for
    /// `durationNs`; returns bytes sent per source from `measureFromNs` on.
    func run(policy: TrafficPolicy, durationNs: UInt64, measureFromNs: UInt64,
             sending: (Int, UInt64) -> Bool) throws -> (sent: [UInt64], controller: TrafficController) {
        let channel = try makeCompletionChannel(eventCapacity: 4096, sourceCountMax: 8)
        var reporter = channel.reporter
        let controller = try TrafficController(policy: policy, receiver: channel.receiver)
        var admission = controller.makeAdmission()
        var port = SimulatedPort(capacityBytesPerSecond: Self.capacity)
        let stepNs: UInt64 = 10_000
        var now: UInt64 = 1_000_000
        let end = now + durationNs
        while now < end {
            for source in 0..<policy.sources.count where sending(source, now - 1_000_000) {
                var admitted = 0
                while admitted < 8, admission.admit(source: source, bytes: Self.frameBytes, nowNs: now) {
                    port.queue.append((source, Self.frameBytes, now))
                    admitted += 1
                }
            }
            port.complete(until: now, reporter: &reporter, admission: &admission, countFrom: measureFromNs + 1_000_000)
            controller.poll(nowNs: now)
            now += stepNs
        }
        return (port.sentBytes, controller)
    }

    /// Four backlogged sources at weights 1:1:2:4: each one's byte share within 5% of its target.
    @Test func backloggedSourcesGetTheirWeightedShares() throws {
        let weights = [1.0, 1, 2, 4]
        let (sent, controller) = try run(policy: TrafficPolicy(sources: weights.map { SourcePolicy(weight: $0) }),
                                         durationNs: 2_000_000_000, measureFromNs: 500_000_000) { _, _ in true }
        let total = Double(sent[0..<4].reduce(0, +))
        for (source, weight) in weights.enumerated() {
            let share = Double(sent[source]) / total
            let target = weight / 8
            #expect(abs(share - target) / target < 0.05, "source \(source): share \(share), target \(target)")
        }
        #expect(total / 1.5 > Self.capacity * 0.95, "the port stays busy")
        let snapshot = controller.snapshot()
        #expect(abs(snapshot.portCapacityBytesPerSecond - Self.capacity) / Self.capacity < 0.05)
        #expect(abs(snapshot.sources[3].shareTarget - 0.5) < 0.01)
        #expect(snapshot.sources.count == 8, "every id the channel carries is accounted")
        #expect(snapshot.sources.prefix(weights.count).allSatisfy { $0.delayNs > 0 && $0.completedPackets > 0 })
    }

    /// Equal weights: Jain's fairness index close to 1.
    @Test func equalWeightsAreFair() throws {
        let (sent, _) = try run(policy: TrafficPolicy(sources: Array(repeating: SourcePolicy(), count: 4)),
                                durationNs: 1_000_000_000, measureFromNs: 300_000_000) { _, _ in true }
        let x = sent[0..<4].map { Double($0) }
        let jain = x.reduce(0, +) * x.reduce(0, +) / (4 * x.reduce(0) { $0 + $1 * $1 })
        #expect(jain > 0.99, "Jain's index \(jain)")
    }

    /// When one of four equal sources stops, the other three share the whole port within 10 ms.
    @Test func othersAbsorbAQuietSourceWithin10ms() throws {
        let stopNs: UInt64 = 600_000_000
        let (sent, _) = try run(policy: TrafficPolicy(sources: Array(repeating: SourcePolicy(), count: 4)),
                                durationNs: 800_000_000, measureFromNs: stopNs + 10_000_000) { source, t in
            source != 3 || t < stopNs
        }
        let total = Double(sent[0..<3].reduce(0, +))
        let seconds = Double(800_000_000 - stopNs - 10_000_000) / 1e9
        #expect(total / seconds > Self.capacity * 0.95, "the three use the whole port: \(total / seconds)")
        for source in 0..<3 { #expect(abs(Double(sent[source]) / total - 1.0 / 3) < 0.05) }
        #expect(sent[3] == 0)
    }

    /// Frames pending and no completion for 100 ms: stalled, nothing admitted; a completion clears it.
    @Test func watchdogStopsGrantsToAStalledPort() throws {
        let channel = try makeCompletionChannel(eventCapacity: 64, sourceCountMax: 4)
        var reporter = channel.reporter
        let controller = try TrafficController(policy: TrafficPolicy(sources: [SourcePolicy()]), receiver: channel.receiver)
        var admission = controller.makeAdmission()
        let first = admission.admit(source: 0, bytes: 1500, nowNs: 1_000_000)
        #expect(first)
        controller.poll(nowNs: 1_000_000)
        controller.poll(nowNs: 50_000_000)
        #expect(!controller.isStalled, "50 ms is not yet a stall")
        controller.poll(nowNs: 102_000_000)
        #expect(!controller.isStalled, "a TX stage that has not scanned its ring is idle, not stalled")
        admission.scanned(nowNs: 102_000_000)
        controller.poll(nowNs: 102_000_000)
        #expect(controller.isStalled)
        let whileStalled = admission.admit(source: 0, bytes: 1500, nowNs: 102_000_000)
        #expect(!whileStalled, "a stalled port gets no frames")
        reporter.report(CompletionEvent(sourceID: 0, flowHash: 0, bytes: 1500, enqueueNs: 1_000_000,
                                        completionNs: 103_000_000))
        admission.completed(source: 0, bytes: 1500)
        controller.poll(nowNs: 103_000_000)
        #expect(!controller.isStalled)
        let afterwards = admission.admit(source: 0, bytes: 1500, nowNs: 103_000_000)
        #expect(afterwards)
    }
}

import MetricsTestKit

@Suite struct TrafficMetricsTests {
    @Test func snapshotBecomesGauges() throws {
        let metrics = TestMetrics()
        let gauges = TrafficMetrics(sourceCount: 2, factory: metrics)
        var first = SourceState(source: 0)
        first.shareTarget = 0.25
        first.pendingPackets = 7
        first.delayNs = 2_000_000
        var second = SourceState(source: 1)
        second.shareAchieved = 0.75
        second.completedBytes = 1_500
        gauges.record(TrafficSnapshot(sources: [first, second], portCapacityBytesPerSecond: 1e7, portLimitBytes: 65_536,
                                      stalled: true, redivisions: 3))
        let dimensions0 = [("port", "0"), ("source", "0")]
        let dimensions1 = [("port", "0"), ("source", "1")]
        #expect(try metrics.expectGauge("sluice_traffic_share_target", dimensions0).lastValue == 0.25)
        #expect(try metrics.expectGauge("sluice_traffic_pending_packets", dimensions0).lastValue == 7)
        #expect(try metrics.expectGauge("sluice_traffic_delay_seconds", dimensions0).lastValue == 0.002)
        #expect(try metrics.expectGauge("sluice_traffic_share_achieved", dimensions1).lastValue == 0.75)
        #expect(try metrics.expectGauge("sluice_traffic_sent_bytes", dimensions1).lastValue == 1_500)
        #expect(try metrics.expectGauge("sluice_traffic_port_stalled", [("port", "0")]).lastValue == 1)
    }
}

/// Byte rates and quotas computed in Double reach the board saturated: a policy or an estimate that
/// overflows UInt64 (or is NaN) must not trap the controller's thread, as `UInt64(Double)` would.
@Suite struct SaturatingBytesTests {
    @Test(arguments: [(Double.nan, UInt64(0)), (-1, 0), (0, 0), (1.9, 1), (1e300, .max), (Double.infinity, .max),
                      (18_446_744_073_709_551_615.0, .max), (9.0e18, 9_000_000_000_000_000_000)])
    func convertsWithoutTrapping(value: Double, expected: UInt64) {
        #expect(TrafficController.saturatingBytes(value) == expected)
    }
}
