// Path: Sources/SluiceGateway/LastHopEstimator.swift — what the appliance learns of its last hop from
// its own fetches: the fastest recent delivery rate and the shortest recent round trip (BBR's two
// estimates), and their product, the bandwidth-delay product that sizes the read-ahead window.
import Synchronization

/// Windowed max of delivery-rate samples and windowed min of round-trip samples, from the calls the
/// appliance makes to its intermediate. Thread-safe; bounded (two rings of fixed size).
///
/// - Round trip: each call's time from send to complete reply. The min over the last
///   `rttSamplesMax` calls is the round trip with no queue (small calls, a stat, give it).
/// - Delivery rate: over the last `deliveriesMax` replies of at least `rateSampleBytesMin` bytes, the
///   bytes of all but the earliest-ending one divided by the time from the earliest end to the latest.
///   Ends are measured the same way for every reply (after its sectors are stored), so the time a
///   store takes cancels out, and replies pipelined on one connection count together rather than each
///   against a few microseconds. The max over the last `rateSamplesMax` such samples is the link's
///   rate, as BBR keeps it.
public final class LastHopEstimator: Sendable {
    public static let rttSamplesMax = 64
    public static let rateSamplesMax = 16
    public static let rateSampleBytesMin = 64 << 10
    /// Replies one delivery-rate sample spans (at least `deliveriesMin` before the first sample).
    public static let deliveriesMax = 8
    public static let deliveriesMin = 4

    private struct State {
        var rtts: [UInt64] = []
        var rttNext = 0
        var rates: [Double] = []
        var rateNext = 0
        var deliveries: [(endNs: UInt64, bytes: Int)] = []
        var deliveryNext = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Records a call sent at `startNs` whose reply of `bytes` bytes was complete at `endNs` (CLOCK_MONOTONIC).
    public func record(startNs: UInt64, endNs: UInt64, bytes: Int) {
        guard endNs > startNs else { return }
        state.withLock { s in
            Self.push(endNs - startNs, into: &s.rtts, next: &s.rttNext, max: Self.rttSamplesMax)
            if bytes >= Self.rateSampleBytesMin {
                Self.push((endNs, bytes), into: &s.deliveries, next: &s.deliveryNext, max: Self.deliveriesMax)
                if s.deliveries.count >= Self.deliveriesMin {
                    var first = s.deliveries[0], last = s.deliveries[0], total = 0
                    for delivery in s.deliveries {
                        total += delivery.bytes
                        if delivery.endNs < first.endNs { first = delivery }
                        if delivery.endNs > last.endNs { last = delivery }
                    }
                    if last.endNs > first.endNs {
                        Self.push(Double(total - first.bytes) * 1e9 / Double(last.endNs - first.endNs),
                                  into: &s.rates, next: &s.rateNext, max: Self.rateSamplesMax)
                    }
                }
            }
        }
    }

    /// The shortest recent round trip (ns), nil before any call.
    public var minRTTNs: UInt64? { state.withLock { $0.rtts.min() } }

    /// The fastest recent delivery rate (bytes/s), nil before a large enough reply.
    public var maxRateBytesPerSecond: Double? { state.withLock { $0.rates.max() } }

    /// Delivery rate times round trip (bytes), nil until both are known.
    public var bandwidthDelayBytes: Int? {
        guard let rtt = minRTTNs, let rate = maxRateBytesPerSecond else { return nil }
        return Int(min(rate * Double(rtt) / 1e9, Double(1 << 40)))
    }

    private static func push<T>(_ value: T, into ring: inout [T], next: inout Int, max: Int) {
        if ring.count < max { ring.append(value) } else { ring[next] = value }
        next = (next + 1) % max
    }
}

/// How the read-ahead window is sized when `ApplianceConfiguration.readAheadAuto` is set: the next
/// read's length plus `gain` bandwidth-delay products (what must be in flight to keep the last hop
/// busy while the client turns around), at least one chunk (the intermediate fetches whole chunks
/// from the remote store: a chunk ahead hides that fetch), at most `maxBytes`, and, with a bytes/s
/// budget, at most the share's bucket depth (what the budget can pay at once).
public enum ReadAheadSizing {
    public static let gain = 2

    public static func windowBytes(readLength: Int, bandwidthDelayBytes: Int?, chunkBytes: Int, maxBytes: Int,
                                   budget: ApplianceBudget) -> Int {
        var window = readLength + gain * (bandwidthDelayBytes ?? 0)
        window = max(window, chunkBytes)
        window = min(window, maxBytes)
        if budget.bytesPerSecond != nil { window = min(window, Int(clamping: budget.burstBytes)) }
        return window
    }
}
