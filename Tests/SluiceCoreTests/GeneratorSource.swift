// Test support: the paced generator the runtime's tests feed pipelines with. Benchmarks have their
// own copy (Benchmarks/Sources/PipelineLoad), next to the latency sink: neither is library code.
import SluiceCore

/// A source of 8-byte items at a fixed rate, in bursts: `burstCount` items every
/// `burstCount / ratePerSecond` seconds (a NIC with interrupt coalescing looks like this), or as fast
/// as the pipeline takes them when `ratePerSecond` is 0. Stops after `totalCount` items.
struct GeneratorSource: SourceBody {
    /// What each item carries.
    enum Payload: Sendable {
        /// CLOCK_MONOTONIC at generation.
        case timestampNs
        /// 0, 1, 2, ...: for order and loss checks.
        case sequence
    }

    let ratePerSecond: UInt64
    let totalCount: UInt64
    let burstCount: Int
    let payload: Payload
    private var generated: UInt64 = 0
    private var startNs: UInt64 = 0

    init(ratePerSecond: UInt64, totalCount: UInt64, burstCount: Int = 32, payload: Payload = .timestampNs) {
        precondition(burstCount > 0 && burstCount <= Limits.burstCountMax, "burst outside 1...burstCountMax")
        self.ratePerSecond = ratePerSecond
        self.totalCount = totalCount
        self.burstCount = burstCount
        self.payload = payload
    }

    var isExhausted: Bool { generated >= totalCount }

    /// Items due by `nowNs`: pacing anchored to the first call, never summed per burst, so a late
    /// turn catches up instead of drifting.
    private func due(nowNs: UInt64) -> UInt64 {
        guard ratePerSecond > 0 else { return totalCount }
        let elapsed = nowNs &- startNs
        let bursts = (UInt64(Double(elapsed) * Double(ratePerSecond) / 1e9) / UInt64(burstCount)) &+ 1
        return min(totalCount, bursts &* UInt64(burstCount))
    }

    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = Clock.monotonicNs()
        if startNs == 0 { startNs = now }
        let due = due(nowNs: now)
        guard due > generated else { return 0 }
        let count = Int(min(due &- generated, UInt64(items.count)))
        for offset in 0..<count {
            switch payload {
            case .timestampNs: items[offset] = now
            case .sequence: items[offset] = generated &+ UInt64(offset)
            }
        }
        generated &+= UInt64(count)
        return count
    }

    func sleepHintNs(nowNs: UInt64) -> UInt64? {
        guard ratePerSecond > 0, !isExhausted else { return isExhausted ? UInt64.max : nil }
        let nextBurst = generated / UInt64(burstCount)
        let nextNs = startNs &+ UInt64(Double(nextBurst) * Double(burstCount) * 1e9 / Double(ratePerSecond))
        return nextNs > nowNs ? nextNs - nowNs : 0
    }
}
