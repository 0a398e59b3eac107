import Testing
@testable import SluiceGateway

@Suite struct LastHopEstimatorTests {
    /// 1 MiB replies completing every 50 ms (20 MiB/s), two of them pipelined so that the second ends 10 µs
    /// after the first: the rate stays near 20 MiB/s rather than the 100 GiB/s one pair would suggest.
    @Test func pipelinedRepliesDoNotInflateTheRate() throws {
        let estimator = LastHopEstimator()
        var end: UInt64 = 1_000_000_000
        for index in 0..<12 {
            end += index == 6 ? 10_000 : 50_000_000
            estimator.record(startNs: end - 60_000_000, endNs: end, bytes: 1 << 20)
        }
        let rate = try #require(estimator.maxRateBytesPerSecond)
        #expect(rate > 15 * 1_048_576 && rate < 30 * 1_048_576, "rate \(rate / 1_048_576) MiB/s")
        #expect(estimator.minRTTNs == 60_000_000)
        let bdp = try #require(estimator.bandwidthDelayBytes)
        #expect(bdp < 2 << 20, "bandwidth-delay product \(bdp)")
    }

    @Test func noRateBeforeEnoughLargeReplies() {
        let estimator = LastHopEstimator()
        estimator.record(startNs: 1, endNs: 1_000_001, bytes: 100)  // a stat: a round trip, no rate
        for i in 0..<(LastHopEstimator.deliveriesMin - 1) {
            estimator.record(startNs: UInt64(i) * 10_000_000, endNs: UInt64(i + 1) * 10_000_000, bytes: 1 << 20)
        }
        #expect(estimator.maxRateBytesPerSecond == nil)
        #expect(estimator.bandwidthDelayBytes == nil)
        #expect(estimator.minRTTNs == 1_000_000)
    }
}
