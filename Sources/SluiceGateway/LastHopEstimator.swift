// Path: Sources/SluiceGateway/LastHopEstimator.swift — what the appliance learns of its last hop from
// its own fetches: the fastest recent delivery rate and the shortest recent round trip (BBR's two
// estimates), and their product, the bandwidth-delay product that sizes the read-ahead window.
import Synchronization

/// Windowed max of delivery-rate samples and windowed min of round-trip samples, from the calls the
/// appliance makes to its intermediate. Thread-safe; bounded (two rings of fixed size).
///
/// - Round trip: each call's time from send to complete reply. The min over the last
///   `rttSamplesMax` calls is the round trip with no queue (small calls, a stat, give it).
/// - Delivery rate: a reply of at least `rateSampleBytesMin` bytes delivered its bytes in
///   `end - max(start, previous reply's end)`: the replies are answered in order on one connection,
///   so a reply that waited behind another only counts the time after that one ended (the link was
///   busy with it). The max over the last `rateSamplesMax` samples is the link's rate, as BBR keeps it.
public final class LastHopEstimator: Sendable {
    public static let rttSamplesMax = 64
    public static let rateSamplesMax = 16
    public static let rateSampleBytesMin = 64 << 10

    private struct State {
        var rtts: [UInt64] = []
        var rttNext = 0
        var rates: [Double] = []
        var rateNext = 0
        var lastEndNs: UInt64 = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Records a call sent at `startNs` whose reply of `bytes` bytes was complete at `endNs` (CLOCK_MONOTONIC).
    public func record(startNs: UInt64, endNs: UInt64, bytes: Int) {
        guard endNs > startNs else { return }
        state.withLock { s in
            Self.push(endNs - startNs, into: &s.rtts, next: &s.rttNext, max: Self.rttSamplesMax)
            if bytes >= Self.rateSampleBytesMin {
                let busyFrom = max(startNs, s.lastEndNs)
                if endNs > busyFrom {
                    Self.push(Double(bytes) * 1e9 / Double(endNs - busyFrom), into: &s.rates, next: &s.rateNext, max: Self.rateSamplesMax)
                }
            }
            s.lastEndNs = max(s.lastEndNs, endNs)
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
