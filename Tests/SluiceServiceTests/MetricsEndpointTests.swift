// Path: Tests/SluiceServiceTests/MetricsEndpointTests.swift — the metrics endpoint in process: a
// client that pipelines scrapes and never reads is held at the configured bound and closed after
// the stall deadline, while other clients are served.
import Glibc
import SluiceService
import Synchronization
import Testing

@Suite struct MetricsEndpointTests {
    /// 1 MiB replies, at most 2 unread per connection, closed 300 ms after stalling: the kernel's
    /// socket buffers take a few replies, the endpoint renders only a couple more, then closes.
    @Test func stalledPipelinedClientIsClosedAfterRenderingABoundedNumber() throws {
        let body = String(repeating: "m 1\n", count: 1 << 18)  // 1 MiB
        let renders = Atomic<Int>(0)
        var limits = MetricsEndpointLimits()
        limits.responsesOutstandingMax = 2
        limits.stalledTimeoutMs = 300
        let endpoint = try MetricsEndpoint.bind(ListenAddress(host: "127.0.0.1", port: 0), render: {
            renders.add(1, ordering: .relaxed)
            return body
        }, limits: limits)
        defer { endpoint.close() }
        let client = try UnreadPipeline(host: "127.0.0.1", port: endpoint.port)
        let sent = client.send(requests: 500, forMs: 1_000)
        #expect(sent == 500)
        let closedAfterMs = try #require(client.waitForClose(timeoutMs: 10_000), "the stalled connection was never closed")
        #expect(closedAfterMs < 5_000)
        // Unbounded, all 500 would have been rendered (500 MiB); the kernel holds some tens of MiB at most.
        #expect(renders.load(ordering: .relaxed) < 100, "\(renders.load(ordering: .relaxed)) replies rendered")
        #expect(try HTTPClient.get(host: "127.0.0.1", port: endpoint.port, path: "/healthz").status == 200)
    }
}
