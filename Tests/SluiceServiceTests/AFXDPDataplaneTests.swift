// Path: Tests/SluiceServiceTests/AFXDPDataplaneTests.swift — `kind: af_xdp` as a real source and sink
// of the service's dataplane (in process, as `sluice run` builds it): frames replayed into one veth
// pair reach the AF_XDP source, leave through the AF_XDP sink on a second pair, and reach a peer in
// its own namespace exactly once, in order per flow; every completion reaches the traffic controller.
import Foundation
import Glibc
import Logging
import SluiceCore
import Synchronization
import SluicePacketIO
import SluiceReplay
import SluiceTestSupport
import SluiceTraffic
import Testing

@testable import SluiceService

/// Two veth pairs, each with one end in a namespace of its own and the other here: `generatorOutside`
/// (the service's source) faces `generatorInside` in `generatorNamespace`, `peerOutside` (the
/// service's sink) faces `peerInside` in `peerNamespace`. Up, IPv6 off, no addresses, so nothing but
/// the replayed frames crosses. `destroy` (also deinit) deletes both namespaces and pairs.
final class AFXDPServiceLab {
    let generatorNamespace: String
    let generatorInside: String
    let generatorOutside: String
    let peerNamespace: String
    let peerInside: String
    let peerOutside: String

    init() throws {
        _ = Self.swept
        let pid = getpid()
        generatorNamespace = "sluice-xdpg-\(pid)"
        generatorInside = "xg\(pid)i"
        generatorOutside = "xg\(pid)o"
        peerNamespace = "sluice-xdpp-\(pid)"
        peerInside = "xp\(pid)i"
        peerOutside = "xp\(pid)o"
        destroy()
        do {
            for (namespace, inside, outside) in [(generatorNamespace, generatorInside, generatorOutside),
                                                 (peerNamespace, peerInside, peerOutside)] {
                try VethIntoNamespace.run(["/usr/sbin/ip", "netns", "add", namespace])
                try VethIntoNamespace.run(["/usr/sbin/ip", "link", "add", "name", outside, "type", "veth",
                                           "peer", "name", inside, "netns", namespace])
                try VethIntoNamespace.run(["/usr/sbin/sysctl", "-qw", "net.ipv6.conf.\(outside).disable_ipv6=1"])
                try VethIntoNamespace.run(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw",
                                           "net.ipv6.conf.\(inside).disable_ipv6=1"])
                try VethIntoNamespace.run(["/usr/sbin/ip", "link", "set", "dev", outside, "up"])
                try VethIntoNamespace.run(["/usr/sbin/ip", "-n", namespace, "link", "set", "dev", inside, "up"])
            }
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    /// Once per process: deletes the namespaces and veths a crashed earlier run left (names carry the
    /// run's pid; only those whose process is gone).
    static let swept: Void = {
        let listed = (try? runCommand(["/usr/sbin/ip", "netns", "list"]))?.lines ?? []
        for line in listed {
            let name = String(line.split(separator: " ").first ?? "")
            for prefix in ["sluice-xdpg-", "sluice-xdpp-"] where name.hasPrefix(prefix) {
                guard let pid = Int32(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0 else { continue }
                _ = try? runCommand(["/usr/sbin/ip", "netns", "del", name])
                for side in ["xg", "xp"] { _ = try? runCommand(["/usr/sbin/ip", "link", "del", "\(side)\(pid)o"]) }
            }
        }
    }()

    func destroy() {
        for namespace in [generatorNamespace, peerNamespace] {
            _ = try? runCommand(["/usr/sbin/ip", "netns", "del", namespace])
        }
        for outside in [generatorOutside, peerOutside] { _ = try? runCommand(["/usr/sbin/ip", "link", "del", outside]) }
    }
}

/// Keeps every log message (level and text), for tests that check what the service says.
final class CollectingLogHandler: LogHandler, @unchecked Sendable {  // unchecked: messages behind a Mutex
    let messages = Mutex<[(Logger.Level, String)]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        messages.withLock { $0.append((level, message.description)) }
    }
    func warnings(containing text: String) -> [String] {
        messages.withLock { $0.filter { $0.0 == .warning && $0.1.contains(text) }.map(\.1) }
    }
}

@Suite(.serialized) struct AFXDPDataplaneTests {
    static let frameCount = 2000

    /// The frames of a capture grouped by flow (source MAC: the sample's four sources), in order.
    static func flows(_ path: String) throws -> [[UInt8]: [[UInt8]]] {
        var reader = try PcapReader(path: path)
        var flows: [[UInt8]: [[UInt8]]] = [:]
        while let record = try reader.next() {
            let bytes = Array(record.bytes)
            flows[Array(bytes[6..<12]), default: []].append(bytes)
        }
        return flows
    }

    @Test(.enabled(if: NetnsServiceTests.isRoot || NetnsServiceTests.inCI,
                   "needs root for namespaces and AF_XDP (runs in CI, CI=true)"),
          .timeLimit(.minutes(2)))
    func afXDPSourceAndSinkCarryEveryFrameOnceInOrderAndFeedTheController() throws {
        try #require(NetnsServiceTests.isRoot, "CI=true: namespace and AF_XDP tests need root")
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try AFXDPServiceLab()
        defer { lab.destroy() }
        let capture = ScratchPaths("afxdp-peer")
        defer { capture.remove() }
        // The peer records what arrives and exits after the expected count (bounded by `timeout`).
        let peer = try ChildProcess(["/usr/sbin/ip", "netns", "exec", lab.peerNamespace, "/usr/bin/timeout", "60",
                                     "/usr/bin/tcpdump", "-i", lab.peerInside, "-n", "-U", "-c", "\(Self.frameCount)",
                                     "-w", capture.outputPcap])
        defer { if peer.wait(timeoutMs: 0) == nil { peer.signal(SIGKILL); _ = peer.wait(timeoutMs: 2_000) } }
        for _ in 0..<100 where !peer.stderrText.contains("listening on") { usleep(50_000) }
        try #require(peer.stderrText.contains("listening on"), "tcpdump: \(peer.stderrText)")

        let yaml = """
            pipelines:
              - name: xdp
                source: {kind: af_xdp, iface: "\(lab.generatorOutside)"}
                classify:
                  by: source-mac
                  sources: {"02:00:00:00:01:00": 0, "02:00:00:00:01:01": 1, "02:00:00:00:01:02": 2, "02:00:00:00:01:03": 3}
                traffic: {weights: [1, 1, 1, 1]}
                sink: {kind: af_xdp, iface: "\(lab.peerOutside)"}
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
        let logs = CollectingLogHandler()
        let dataplane = try Dataplane(configuration: configuration, logger: Logger(label: "afxdp-test") { _ in logs })
        let path = dataplane.paths[0]
        // The policy is measured (the controller hears every completion) but not enforced: said once.
        #expect(logs.warnings(containing: "policy measured, not enforced on an AF_XDP sink").count == 1)
        // AF_XDP runs, not the AF_PACKET stand-in.
        let stages = path.pipeline.stages.map(\.name)
        #expect(stages.first == "afxdp-rx" && stages.last == "afxdp-tx", "\(stages)")
        let mode = try #require(path.afXDPInputMode)
        #expect(mode == .native || mode == .generic)
        try dataplane.start()
        var stopped = false
        defer { if !stopped { _ = dataplane.stop(drainTimeoutNs: 1_000_000_000) } }

        let sent = try runCommand(["/usr/sbin/ip", "netns", "exec", lab.generatorNamespace, binary, "replay", samplePcap,
                                   "--iface", lab.generatorInside, "--rate", "20000"], timeoutMs: 60_000)
        #expect(sent.status == 0, "replay: \(sent.stderr)")
        let peerStatus = peer.wait(timeoutMs: 10_000)
        #expect(peerStatus == 0, "tcpdump did not see \(Self.frameCount) frames: \(peer.stderrText)")
        // While the service runs, the controller has heard of every frame the kernel finished.
        var completed: UInt64 = 0
        for _ in 0..<100 {  // snapshots are published every 100 ms
            completed = dataplane.trafficSnapshot.first??.sources.reduce(0) { $0 + $1.completedPackets } ?? 0
            if completed >= UInt64(Self.frameCount) { break }
            usleep(50_000)
        }
        #expect(completed == UInt64(Self.frameCount), "the controller heard of \(completed) completions")

        stopped = true
        let outcomes = dataplane.stop(drainTimeoutNs: 2_000_000_000)
        let outcome = try #require(outcomes.first)
        #expect(outcome.failure == nil, "\(outcome.failure ?? "")")
        #expect(outcome.packetsIn == UInt64(Self.frameCount))
        #expect(outcome.drops.isEmpty, "\(outcome.drops)")
        let final = dataplane.trafficSnapshot.first??.sources.reduce(0) { $0 + $1.completedPackets } ?? 0
        #expect(final == UInt64(Self.frameCount), "completions after the stop: \(final)")
        #expect(path.controller?.isStalled == false)

        // Every frame out once, each flow in its original order, byte for byte.
        let original = try Self.flows(samplePcap)
        let received = try Self.flows(capture.outputPcap)
        #expect(received.values.reduce(0) { $0 + $1.count } == Self.frameCount)
        #expect(received.keys.count == original.keys.count)
        for (flow, frames) in original {
            #expect(received[flow] == frames, "flow \(flow) differs: \(received[flow]?.count ?? 0) of \(frames.count) frames")
        }
    }

    /// With `fallback`, a port whose probe fails (a missing interface) runs on its AF_PACKET stand-in;
    /// without it, the same failure is the refusal naming the key. An interface that exists and takes
    /// XDP runs as AF_XDP (the path's input and output say so).
    @Test(.enabled(if: NetnsServiceTests.isRoot || NetnsServiceTests.inCI,
                   "needs root for namespaces and AF_XDP (runs in CI, CI=true)"))
    func aWorkingPortResolvesToAFXDPAndAMissingOneToTheFallback() throws {
        try #require(NetnsServiceTests.isRoot, "CI=true: namespace and AF_XDP tests need root")
        let lab = try AFXDPServiceLab()
        defer { lab.destroy() }
        let yaml = """
            pipelines:
              - name: x
                source: {kind: af_xdp, iface: "\(lab.generatorOutside)", fallback: af_packet}
                sink: {kind: af_xdp, iface: "sluicenoif8", fallback: af_packet}
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
        let resolved = try Dataplane.resolveAFXDP(configuration.pipelines[0], index: 0, logger: Logger(label: "test"))
        #expect(resolved.input == .afXDP(AFXDPConfiguration(interface: lab.generatorOutside)))
        #expect(resolved.output == .interface("sluicenoif8"))  // the AF_PACKET stand-in
        let strict = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: """
            pipelines:
              - name: y
                source: {kind: af_xdp, iface: "\(lab.generatorOutside)"}
                sink: {kind: af_xdp, iface: "sluicenoif8"}
            """), defaultCores: [0, 1])
        #expect {
            _ = try Dataplane.resolveAFXDP(strict.pipelines[0], index: 0, logger: Logger(label: "test"))
        } throws: { error in
            guard case .afXDP(let pipeline, let key, let reason)? = error as? ServiceError else { return false }
            return pipeline == "y" && key == "pipelines[0].sink" && reason.contains("sluicenoif8")
        }
    }

    /// The kernel binds one AF_XDP socket per interface queue (RX or TX alike): a port on a queue an
    /// earlier port took is a failed probe, named (`pipelines[1].sink` here), or its AF_PACKET
    /// stand-in with `fallback`; the probe alone, one port at a time, would have passed it.
    @Test(.enabled(if: NetnsServiceTests.isRoot || NetnsServiceTests.inCI,
                   "needs root for namespaces and AF_XDP (runs in CI, CI=true)"))
    func aSecondPortOnATakenQueueIsAFailedProbe() throws {
        try #require(NetnsServiceTests.isRoot, "CI=true: namespace and AF_XDP tests need root")
        let lab = try AFXDPServiceLab()
        defer { lab.destroy() }
        // What the check stands for: a receiver holds the queue, a transmitter cannot bind it too.
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let receiver = try AFXDPReceiver(configuration: AFXDPConfiguration(interface: lab.generatorOutside), pool: pool)
        #expect(throws: AFXDPError.self) {
            _ = try AFXDPTransmitter(configuration: AFXDPConfiguration(interface: lab.generatorOutside), pool: pool)
        }
        _ = consume receiver
        let yaml = """
            pipelines:
              - name: a
                source: {kind: af_xdp, iface: "\(lab.generatorOutside)"}
                sink: {kind: af_xdp, iface: "\(lab.peerOutside)"}
              - name: b
                source: {kind: af_xdp, iface: "\(lab.peerOutside)", fallback: af_packet}
                sink: {kind: af_xdp, iface: "\(lab.generatorOutside)"}
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
        var claimed: [String: String] = [:]
        let logger = Logger(label: "test")
        let first = try Dataplane.resolveAFXDP(configuration.pipelines[0], index: 0, claimed: &claimed, logger: logger)
        #expect(first.input == .afXDP(configuration.pipelines[0].afXDPSource!.configuration))
        #expect(first.output == .afXDP(configuration.pipelines[0].afXDPSink!.configuration))
        // b's source (taken by a's sink) falls back; b's sink (taken by a's source) has no fallback.
        var claimedByA = claimed
        #expect {
            _ = try Dataplane.resolveAFXDP(configuration.pipelines[1], index: 1, claimed: &claimedByA, logger: logger)
        } throws: { error in
            guard case .afXDP(let pipeline, let key, let reason)? = error as? ServiceError else { return false }
            return pipeline == "b" && key == "pipelines[1].sink" && reason.contains("already taken by pipelines[0].source")
        }
        // With fallback on the sink too, pipeline b runs its sink on AF_PACKET.
        var lenient = configuration.pipelines[1]
        lenient.afXDPSink!.fallbackToAFPacket = true
        var claimedAgain = claimed
        let second = try Dataplane.resolveAFXDP(lenient, index: 1, claimed: &claimedAgain, logger: logger)
        #expect(second.input == .interface(AFPacketRXConfiguration(interface: lab.peerOutside)))
        #expect(second.output == .interface(lab.generatorOutside))
    }

    /// A `traffic:` policy on an AF_XDP sink draws the warning that it is measured, not enforced;
    /// without a policy, or on an AF_PACKET sink (where a shaped TX stage enforces it), none.
    @Test func aPolicyOnAnAFXDPSinkIsSaidToBeMeasuredNotEnforced() throws {
        var path = PacketPathConfiguration(name: "p", input: .afXDP(AFXDPConfiguration(interface: "xa")),
                                           output: .afXDP(AFXDPConfiguration(interface: "xb")))
        #expect(Dataplane.unenforcedPolicyWarning(path, index: 3) == nil)
        path.traffic = TrafficPolicy(sources: [SourcePolicy(), SourcePolicy()])
        let warning = try #require(Dataplane.unenforcedPolicyWarning(path, index: 3))
        #expect(warning.contains("policy measured, not enforced on an AF_XDP sink"))
        #expect(warning.contains("pipelines[3].traffic") && warning.contains("xb"))
        path.output = .interface("xb")
        #expect(Dataplane.unenforcedPolicyWarning(path, index: 3) == nil)
    }

    /// A port the probe opened but the pipeline could not (an attach race): with `fallback` the
    /// AF_PACKET stand-in takes its place; without, the error names the port's key.
    @Test func aPortThatFailsAfterTheProbeFallsBackOrIsNamed() throws {
        let yaml = """
            pipelines:
              - name: x
                source: {kind: af_xdp, iface: veth0, fallback: af_packet}
                sink: {kind: af_xdp, iface: veth1}
            """
        let configuration = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
        let settings = configuration.pipelines[0]
        var resolved = settings.path
        resolved.input = .afXDP(settings.afXDPSource!.configuration)
        resolved.output = .afXDP(settings.afXDPSink!.configuration)
        let logger = Logger(label: "test")
        let back = try Dataplane.fallingBack(from: .afXDPInput(interface: "veth0", .interfaceNotFound("veth0")), resolved,
                                             settings: settings, index: 0, logger: logger)
        #expect(back.input == .interface(AFPacketRXConfiguration(interface: "veth0")))
        #expect(back.output == .afXDP(settings.afXDPSink!.configuration))
        #expect {
            _ = try Dataplane.fallingBack(from: .afXDPOutput(interface: "veth1", .interfaceNotFound("veth1")), back,
                                          settings: settings, index: 0, logger: logger)
        } throws: { error in
            guard case .afXDP(let pipeline, let key, let reason)? = error as? ServiceError else { return false }
            return pipeline == "x" && key == "pipelines[0].sink" && reason.contains("veth1")
        }
    }
}
