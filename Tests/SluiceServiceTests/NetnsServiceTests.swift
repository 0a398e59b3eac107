// Path: Tests/SluiceServiceTests/NetnsServiceTests.swift — `sluice run` receiving on an interface
// while serving storage: the sample (198.18.0.0/15 addresses) replayed into a veth pair from a
// namespace (no addresses on the pair, IPv6 off, so only the replayed frames cross), every frame
// counted by the metrics endpoint and written, in order, to the pipeline's pcap file by the time
// SIGTERM returns, and every storage write acknowledged before the SIGTERM found after it.
import Glibc
import SluicePacketIO
import SluiceService
import SluiceStorageServer
import SluiceTestSupport
import Testing

/// A veth pair: `inside` in a namespace of its own (the sender's), `outside` in this namespace (the
/// service's). Both up, IPv6 off, no addresses. `destroy` (also deinit) deletes the namespace and the pair.
final class VethIntoNamespace {
    let namespace: String
    let inside: String
    let outside: String

    init() throws {
        let pid = getpid()
        namespace = "sluice-svc-\(pid)"
        inside = "svc\(pid)i"
        outside = "svc\(pid)o"
        destroy()
        do {
            try Self.run(["/usr/sbin/ip", "netns", "add", namespace])
            try Self.run(["/usr/sbin/ip", "link", "add", "name", outside, "type", "veth", "peer", "name", inside, "netns", namespace])
            try Self.run(["/usr/sbin/sysctl", "-qw", "net.ipv6.conf.\(outside).disable_ipv6=1"])
            try Self.run(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw", "net.ipv6.conf.\(inside).disable_ipv6=1"])
            try Self.run(["/usr/sbin/ip", "link", "set", "dev", outside, "up"])
            try Self.run(["/usr/sbin/ip", "-n", namespace, "link", "set", "dev", inside, "up"])
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    func destroy() {
        _ = try? runCommand(["/usr/sbin/ip", "netns", "del", namespace])
        _ = try? runCommand(["/usr/sbin/ip", "link", "del", outside])
    }

    static func run(_ arguments: [String]) throws {
        let result = try runCommand(arguments, timeoutMs: 30_000)
        guard result.status == 0 else { throw SpawnError("\(arguments.joined(separator: " ")): \(result.stderr)") }
    }
}

@Suite(.serialized) struct NetnsServiceTests {
    static let isRoot = geteuid() == 0
    static let inCI = getenv("CI").map { String(cString: $0) == "true" } ?? false

    @Test(.enabled(if: isRoot || inCI, "needs root for namespaces and AF_PACKET (runs in CI, CI=true)"))
    func interfacePipelineCountsAndWritesEveryFrame() throws {
        try #require(Self.isRoot, "CI=true: namespace and AF_PACKET tests need root")
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try VethIntoNamespace()
        defer { lab.destroy() }
        let paths = ScratchPaths("netns")
        defer { paths.remove() }
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: wire
                source: {interface: "\(lab.outside)"}
                stages: classify
                sink: {pcap: "\(paths.outputPcap)"}
            storage: {data: "\(paths.dataDirectory)", listen: "127.0.0.1:0"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        // Storage requests while packets flow: page i of object 7 written, then overwritten on its OSN.
        let storage = try #require(service.storage)
        let client = try StorageClient(host: storage.host, port: storage.port)
        _ = try client.create(objectID: 7)
        var acknowledged: [UInt64: UInt64] = [:]
        for page in UInt64(0)..<16 {
            let first = try client.write(objectID: 7, pageIndex: page, payload: Array("v1 \(page)".utf8))
            acknowledged[page] = try client.write(objectID: 7, pageIndex: page, payload: Array("v2 \(page)".utf8),
                                                  condition: .unmodifiedSince(first))
        }
        client.close()
        // The sender: `sluice replay` in the namespace, onto the inside end.
        let sent = try runCommand(["/usr/sbin/ip", "netns", "exec", lab.namespace, binary, "replay", samplePcap,
                                   "--iface", lab.inside, "--rate", "20000"], timeoutMs: 60_000)
        #expect(sent.status == 0, "replay: \(sent.stderr)")
        var received = 0.0
        for _ in 0..<500 {  // up to 5 s for the last frames to reach the counters
            received = try service.scrape().value("sluice_pipeline_packets_in_total", ["pipeline": "wire"]) ?? 0
            if received >= 2000 { break }
            usleep(10_000)
        }
        #expect(received == 2000)
        let samples = try service.scrape()
        #expect(samples.value("sluice_stage_items_total", ["pipeline": "wire", "stage": "afpacket-rx"]) == 2000)
        #expect(samples.value("sluice_stage_items_total", ["pipeline": "wire", "stage": "pcap-tx"]) == 2000)
        #expect(!samples.contains { $0.name == "sluice_pipeline_drops_total" && $0.value > 0 }, "drops: \(samples.filter { $0.name == "sluice_pipeline_drops_total" })")
        #expect(samples.value("sluice_ring_occupancy", ["pipeline": "wire", "ring": "afpacket-rx->classify"]) == 0)
        // Worker 0 runs only the interface source: between frames it sleeps (adaptive wait mode),
        // it does not spin on an empty ring.
        #expect((samples.value("sluice_worker_sleeps_total", ["worker": "0"]) ?? 0) > 0, "the source's worker never slept")
        #expect(samples.value("sluice_storage_requests_total", ["op": "writePages", "status": "ok"]) == 32)
        #expect(samples.value("sluice_storage_conflicts_total", ["op": "writePages"]) == 0)

        let (status, lines) = try service.terminate()
        #expect(status == 0, "exit \(status): \(service.child.stderrText)")
        #expect(lines.contains { $0.hasPrefix("wire ") && $0.contains(" 2000 ") && $0.hasSuffix("ok") }, "\(lines)")
        // The file holds the sample's frames, in order, byte for byte.
        var written = try PcapReader(path: paths.outputPcap)
        var original = try PcapReader(path: samplePcap)
        var count = 0
        while let record = try original.next() {
            let copy = try #require(try written.next(), "only \(count) frames written")
            #expect(Array(copy.bytes) == Array(record.bytes), "frame \(count) differs")
            count += 1
        }
        #expect(try written.next() == nil)
        #expect(count == 2000)
        let reopened = try openStorageNode(dataDirectory: paths.dataDirectory)
        for (page, osn) in acknowledged {
            let version = try reopened.node.read(objectID: 7, pageIndex: page)
            #expect(version.pageOSN == osn)
            let expected = Array("v2 \(page)".utf8)
            #expect(Array(version.payload.prefix(expected.count)) == expected)
        }
    }

    /// Two pipelines in one fanout group on one interface (RSS in software): the frames split between
    /// them by flow, none lost, none twice.
    @Test(.enabled(if: isRoot || inCI, "needs root for namespaces and AF_PACKET (runs in CI, CI=true)"))
    func fanoutGroupSplitsAnInterfaceBetweenPipelines() throws {
        try #require(Self.isRoot, "CI=true: namespace and AF_PACKET tests need root")
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try VethIntoNamespace()
        defer { lab.destroy() }
        let first = ScratchPaths("fanout-a")
        let second = ScratchPaths("fanout-b")
        defer { first.remove(); second.remove() }
        let group = getpid() & 0x7FFF
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: rx0
                source: {interface: "\(lab.outside)", fanout_group: \(group), port: 0}
                stages: classify
                sink: {pcap: "\(first.outputPcap)"}
              - name: rx1
                source: {interface: "\(lab.outside)", fanout_group: \(group), port: 1}
                stages: classify
                sink: {pcap: "\(second.outputPcap)"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        let sent = try runCommand(["/usr/sbin/ip", "netns", "exec", lab.namespace, binary, "replay", samplePcap,
                                   "--iface", lab.inside, "--rate", "20000"], timeoutMs: 60_000)
        #expect(sent.status == 0, "replay: \(sent.stderr)")
        var counts = [0.0, 0.0]
        for _ in 0..<500 {
            let samples = try service.scrape()
            counts = ["rx0", "rx1"].map { samples.value("sluice_pipeline_packets_in_total", ["pipeline": $0]) ?? 0 }
            if counts[0] + counts[1] >= 2000 { break }
            usleep(10_000)
        }
        #expect(counts[0] + counts[1] == 2000 && counts[0] > 0 && counts[1] > 0, "\(counts)")
        let (status, _) = try service.terminate()
        #expect(status == 0, "exit \(status): \(service.child.stderrText)")
        var written: [[UInt8]] = []
        for path in [first.outputPcap, second.outputPcap] {
            var reader = try PcapReader(path: path)
            while let record = try reader.next() { written.append(Array(record.bytes)) }
        }
        var original: [[UInt8]] = []
        var reader = try PcapReader(path: samplePcap)
        while let record = try reader.next() { original.append(Array(record.bytes)) }
        #expect(written.count == 2000)
        #expect(written.sorted { $0.lexicographicallyPrecedes($1) } == original.sorted { $0.lexicographicallyPrecedes($1) })
    }

    /// A shaped TX stage on a port slower than its input (tbf on the veth) still holds frames in its
    /// backlogs when the capture ends; with no further input and no shutdown, its worker's idle turns
    /// send them all: every frame reaches the peer while the service keeps running.
    @Test(.enabled(if: isRoot || inCI, "needs root for namespaces, AF_PACKET and tc (runs in CI, CI=true)"))
    func shapedBacklogsDrainWithoutNewInput() throws {
        try #require(Self.isRoot, "CI=true: namespace and AF_PACKET tests need root")
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try VethIntoNamespace()
        defer { lab.destroy() }
        try VethIntoNamespace.run(["/usr/sbin/tc", "qdisc", "add", "dev", lab.outside, "root", "tbf", "rate", "1600kbit",
                                   "burst", "16kb", "latency", "500ms"])
        let capture = ScratchPaths("shaped-peer")
        defer { capture.remove() }
        // The peer records what arrives: tcpdump in the namespace, bounded by `timeout`.
        let peer = try ChildProcess(["/usr/sbin/ip", "netns", "exec", lab.namespace, "/usr/bin/timeout", "30",
                                     "/usr/bin/tcpdump", "-i", lab.inside, "-n", "-U", "-w", capture.outputPcap])
        // SIGINT to tcpdump itself (the child is `ip netns exec`'s `timeout`, which does not pass it on).
        let stopPeer = { _ = try? runCommand(["/usr/bin/pkill", "-INT", "-f", "tcpdump .*\(capture.outputPcap)"]) }
        defer { stopPeer(); _ = peer.wait(timeoutMs: 1_000) }
        for _ in 0..<100 where !peer.stderrText.contains("listening on") { usleep(50_000) }
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: shaped
                source: {pcap: "\(samplePcap)", rate: 2000}
                classify:
                  by: source-mac
                  sources: {"02:00:00:00:01:00": 0, "02:00:00:00:01:01": 1, "02:00:00:00:01:02": 2, "02:00:00:00:01:03": 3}
                traffic: {weights: [1, 1, 1, 1]}
                sink: {interface: "\(lab.outside)"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        // 2000 frames at 2000/s (~260 KB/s) into a 200 KB/s port: about a third still waits when the
        // capture ends. Wait for the drain, then (service still running) for the peer to see them all.
        var drained = false
        for _ in 0..<1000 where !drained {
            drained = service.child.stderrText.contains("pipeline drained")
            usleep(10_000)
        }
        #expect(drained, "\(service.child.stderrText)")
        var dropped = 0.0
        for _ in 0..<100 {
            let samples = try service.scrape()
            dropped = samples.filter { $0.name == "sluice_pipeline_drops_total" }.reduce(0) { $0 + $1.value }
            let sent = (0..<4).compactMap { samples.value("sluice_traffic_sent_bytes", ["port": "shaped", "source": "\($0)"]) }
            if sent.count == 4, samples.value("sluice_traffic_pending_packets", ["port": "shaped", "source": "0"]) == 0,
               (0..<4).allSatisfy({ samples.value("sluice_traffic_pending_packets", ["port": "shaped", "source": "\($0)"]) == 0 }) {
                break
            }
            usleep(100_000)
        }
        // tcpdump -U writes each frame as it comes: the file can be read while it runs.
        var seen = 0
        for _ in 0..<50 {
            seen = (try? pcapRecordCount(capture.outputPcap)) ?? 0
            if seen >= 2000 { break }
            usleep(100_000)
        }
        #expect(dropped == 0, "drops: \(dropped)")
        #expect(seen == 2000, "the peer saw \(seen) of 2000 frames before the service stopped")
        let (status, _) = try service.terminate()
        #expect(status == 0, "\(service.child.stderrText)")
    }
}
