// Path: Tests/SluiceSchedulingTests/DataplaneSamplerTests.swift — the manager's used bandwidth from a real
// `sluice run` (a child process replaying the sample capture at a known packet rate into a pcap sink):
// the sampler's rate matches the replay's byte rate and says it came from the dataplane; with the
// endpoint gone it falls back to /proc/net/dev and says so.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SluiceScheduling
import SluiceService
import SluiceTestSupport
import Testing

@Suite(.serialized) struct DataplaneSamplerTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let samplePcap = repositoryRoot + "/Tests/Fixtures/sample.pcap"

    /// Frames and captured bytes of a classic pcap file (24-byte header, 16-byte record headers).
    static func pcapFrames(_ path: String) throws -> (frames: Int, bytes: Int) {
        let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        var offset = 24, frames = 0, bytes = 0
        while offset + 16 <= data.count {
            let length = Int(data[offset + 8]) | Int(data[offset + 9]) << 8 | Int(data[offset + 10]) << 16 | Int(data[offset + 11]) << 24
            frames += 1
            bytes += length
            offset += 16 + length
        }
        return (frames, bytes)
    }

    /// `sluice run` on `yaml`, its metrics endpoint from the ready line.
    static func start(_ binary: String, yaml: String) throws -> (ChildProcess, ListenAddress, String) {
        let config = "/tmp/sluice-sampler-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).yaml"
        FileManager.default.createFile(atPath: config, contents: Data(yaml.utf8))
        let child = try ChildProcess([binary, "run", "--config", config])
        guard let line = child.readLine(timeoutMs: 60_000), line.hasPrefix("sluice: ready ") else {
            child.signal(SIGKILL)
            _ = child.wait(timeoutMs: 5_000)
            throw SpawnError("no ready line; stderr:\n\(child.stderrText)")
        }
        guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("metrics=") }),
              let colon = field.lastIndex(of: ":"), let port = Int(field[field.index(after: colon)...]) else {
            throw SpawnError("no metrics endpoint in '\(line)'")
        }
        let host = String(field[field.index(field.startIndex, offsetBy: 8)..<colon])
        return (child, ListenAddress(host: host, port: port), config)
    }

    @Test(.timeLimit(.minutes(2)))
    func usedBandwidthComesFromTheDataplanesCounters() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let capture = try Self.pcapFrames(Self.samplePcap)
        let rate = 4_000  // frames per second
        let expected = Double(rate) * Double(capture.bytes) / Double(capture.frames)
        let output = "/tmp/sluice-sampler-\(getpid()).pcap"
        defer { unlink(output) }
        let (child, endpoint, config) = try Self.start(binary, yaml: """
            pipelines:
              - name: toward-b
                source: {pcap: "\(Self.samplePcap)", rate: \(rate), loop: 1000}
                sink: {pcap: "\(output)"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        defer {
            child.signal(SIGTERM)
            if child.wait(timeoutMs: 20_000) == nil { child.signal(SIGKILL); _ = child.wait(timeoutMs: 5_000) }
            unlink(config)
        }
        var sampler = DataplaneSampler(endpoint: endpoint, port: "toward-b", memoryCapBytes: 1_073_741_824,
                                       fallback: ProcNetDevSampler(interface: "lo", memoryCapBytes: 1_073_741_824))
        let clock = ContinuousClock()
        let origin = clock.now
        func seconds() -> Double { let d = clock.now - origin; return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        let first = sampler.sample(atSeconds: seconds())
        #expect(first.usedBytesPerSecond == nil)  // a first reading has no rate yet
        var rates: [Double] = []
        for _ in 0..<3 {
            Thread.sleep(forTimeInterval: 1)
            let sample = sampler.sample(atSeconds: seconds())
            #expect(sample.source == .dataplane(rx: true, tx: false), "\(sample.source)")
            // The endpoint's machine's free memory (here the same machine), under the cap.
            #expect(sample.freeMemoryBytes > 0 && sample.freeMemoryBytes <= 1_073_741_824)
            #expect(sampler.lastCounters?.memoryAvailableBytes != nil)
            if let used = sample.usedBytesPerSecond { rates.append(used) }
        }
        let mean = rates.reduce(0, +) / Double(max(1, rates.count))
        print("dataplane: \(rates.map { Int($0) }) bytes/s, expected \(Int(expected)) (\(rate) frames/s of \(capture.bytes / capture.frames) B)")
        #expect(rates.count == 3)
        #expect(abs(mean - expected) < 0.25 * expected, "mean \(mean), expected \(expected)")

        // The service gone: the same sampler falls back to the kernel's counters and says why.
        child.signal(SIGTERM)
        _ = child.wait(timeoutMs: 20_000)
        let fallback = sampler.sample(atSeconds: seconds())
        guard case .procNetDev(let interface, let why) = fallback.source else {
            Issue.record("no fallback: \(fallback.source)")
            return
        }
        #expect(interface == "lo" && why != nil)
        #expect(fallback.usedBytesPerSecond != nil)
        print("fallback: \(fallback.source)")
    }

    @Test func portCountersAddUpPerSourceBytes() throws {
        let text = """
            sluice_pipeline_bytes_in_total{pipeline="p"} 1000
            sluice_pipeline_bytes_in_total{pipeline="q"} 5
            sluice_traffic_sent_bytes{port="p",source="0"} 300
            sluice_traffic_sent_bytes{port="p",source="1"} 400
            sluice_traffic_port_capacity_bytes_per_second{port="p"} 125000
            sluice_node_memory_available_bytes 4096000
            """
        let counters = DataplanePortCounters.read(try MetricsText.parse(text), port: "p")
        #expect(counters.rxBytes == 1000 && counters.txBytes == 700 && counters.capacityBytesPerSecond == 125_000)
        #expect(counters.memoryAvailableBytes == 4_096_000)
        #expect(DataplanePortCounters.read(try MetricsText.parse(text), port: "none").rxBytes == nil)
        var rate = CounterRate()
        #expect(rate.rate(bytes: 100, atSeconds: 1) == nil)
        #expect(rate.rate(bytes: 300, atSeconds: 3) == 100)
        #expect(rate.rate(bytes: 50, atSeconds: 4) == nil)  // a restarted counter gives no rate
    }
}
