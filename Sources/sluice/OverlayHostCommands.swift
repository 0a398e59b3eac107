// Path: Sources/sluice/OverlayHostCommands.swift — `sluice overlay` subcommands of the host data plane:
// `host` (run one host's forwarding thread from a JSON config), `flows` (print a running host's stats
// file) and `bench` (the redirect path's packet rate, release builds).
import ArgumentParser
import Foundation
import SluiceEtcd
import SluiceOverlay
import Synchronization

let overlayHostSubcommands: [ParsableCommand.Type] = [OverlayHostCommand.self, OverlayFlowsCommand.self,
                                                      OverlayBenchCommand.self, OverlayRevokeBenchCommand.self]

struct OverlayHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host",
        abstract: "Run a host's overlay data plane (VXLAN redirect / producer delivery) until SIGINT or SIGTERM.",
        discussion: """
            Reads a JSON config (docs/OVERLAY.md, "Data plane"): VM veths, underlay interface and address, VNI, \
            services, static leases. Writes its counters, leases and flows as JSON to the config's statsFile \
            (or --stats-file) once a second and at exit; `sluice overlay flows --stats-file FILE` prints them.
            """)

    @Option(help: "The host config (JSON).") var config: String
    @Option(help: "Stats file to write once a second (overrides the config's statsFile).") var statsFile: String?
    @Option(help: "Stop after this many seconds (0: run until a signal).") var duration: Double = 0
    @Option(help: "etcd client URLs, comma-separated: take leases from etcd (overrides the config's leasing.etcd).")
    var etcd: String?
    @Option(help: "Leasing agents IPv4:PORT, comma-separated (overrides the config's leasing.agents).") var agents: String?
    @Option(help: "Key prefix of the overlay in etcd (overrides leasing.prefix).") var prefix: String?
    @Option(help: "This host's name in lease records (default: the config's name).") var consumerHost: String?

    func run() throws {
        let (file, resolved, leasingFile, leasingConfiguration) = try Self.load(
            config: config, etcd: etcd, agents: agents, prefix: prefix, consumerHost: consumerHost)
        let host = try OverlayHost(configuration: resolved.0)
        var leasingTask: Task<Void, Never>?
        var leasing: OverlayHostLeasing?
        if let leasingConfiguration, let file = leasingFile {
            let client: EtcdClient
            do { client = try EtcdClient(EtcdClientConfiguration(endpoints: file.etcd)) } catch {
                throw ValidationError("--etcd: \(error)")
            }
            let join = try OverlayHostLeasing(host: host, etcd: client, configuration: leasingConfiguration)
            leasing = join
            leasingTask = Task {
                do throws(OverlayLeasingError) { try await join.run() } catch {
                    FileHandle.standardError.write(Data("overlay host: leasing stopped: \(error)\n".utf8))
                    OverlaySignals.failed.store(true, ordering: .relaxed)
                    OverlaySignals.stop.store(true, ordering: .relaxed)
                }
                await client.shutdown()
            }
        } else {
            host.onLeaseRequest { vm, service in
                FileHandle.standardError.write(Data("lease wanted: consumer \(vm), service \(service)\n".utf8))
            }
        }
        for lease in resolved.1 { host.submit(.granted(lease)) }
        OverlaySignals.install()
        try host.start()
        defer { host.stop() }
        if leasing != nil { print("overlay host \(resolved.0.name): started, leases from etcd"); fflush(nil) }
        let statsPath = statsFile ?? file.statsFile
        let started = Date()
        var lastWrite = Date.distantPast
        while !OverlaySignals.stop.load(ordering: .relaxed) {
            if duration > 0, Date().timeIntervalSince(started) >= duration { break }
            usleep(50_000)
            if let statsPath, Date().timeIntervalSince(lastWrite) >= 1 {
                try? Self.write(host.snapshot(), to: statsPath)
                lastWrite = Date()
            }
        }
        leasingTask?.cancel()
        host.stop()
        let final = host.snapshot()
        if let statsPath { try? Self.write(final, to: statsPath) }
        print(OverlayFlowsCommand.render(final))
        if let counters = leasing?.counters {
            print("leasing: requests \(counters.requests.load(ordering: .relaxed)) grants \(counters.grants.load(ordering: .relaxed)) "
                + "failures \(counters.requestFailures.load(ordering: .relaxed)) events granted "
                + "\(counters.eventsGranted.load(ordering: .relaxed)) ended \(counters.eventsEnded.load(ordering: .relaxed))")
        }
        if OverlaySignals.failed.load(ordering: .relaxed) { throw ExitCode(1) }
    }

    /// The host config at `config`, its static leases, and its leasing side with the command-line overrides
    /// (`--etcd` and `--agents` together, or the config's `leasing` section; nil: no leasing).
    static func load(config: String, etcd: String?, agents: String?, prefix: String?, consumerHost: String?) throws
        -> (OverlayHostConfigFile, (OverlayHostConfiguration, [OverlayLease]), OverlayHostConfigFile.Leasing?,
            OverlayHostLeasingConfiguration?) {
        let file: OverlayHostConfigFile
        let resolved: (OverlayHostConfiguration, [OverlayLease])
        do {
            file = try OverlayHostConfigFile.load(path: config)
            resolved = try file.resolve()
        } catch { throw ValidationError("\(config): \(error)") }
        var leasingFile = file.leasing
        if etcd != nil || agents != nil || prefix != nil || consumerHost != nil {
            guard let etcd = etcd ?? leasingFile?.etcd.joined(separator: ","),
                  let agents = agents ?? leasingFile?.agents.joined(separator: ",") else {
                throw ValidationError("--etcd and --agents go together (or the config's leasing section)")
            }
            var merged = OverlayHostConfigFile.Leasing(
                etcd: etcd.split(separator: ",").map(String.init), agents: agents.split(separator: ",").map(String.init),
                prefix: prefix ?? leasingFile?.prefix, consumerHost: consumerHost ?? leasingFile?.consumerHost)
            merged.agentCallTimeoutMs = leasingFile?.agentCallTimeoutMs
            merged.retryPauseMs = leasingFile?.retryPauseMs
            leasingFile = merged
        }
        let leasingConfiguration: OverlayHostLeasingConfiguration?
        do { leasingConfiguration = try leasingFile?.resolve(hostName: resolved.0.name) } catch {
            throw ValidationError("\(config): \(error)")
        }
        return (file, resolved, leasingFile, leasingConfiguration)
    }

    static func write(_ snapshot: OverlayHostSnapshot, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(snapshot)
        let temporary = path + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        _ = rename(temporary, path)
    }
}

/// SIGINT/SIGTERM as a flag the main loop polls (the handler only stores to an atomic).
enum OverlaySignals {
    static let stop = Atomic<Bool>(false)
    static let failed = Atomic<Bool>(false)
    static func install() {
        _ = stop.load(ordering: .relaxed)
        signal(SIGINT) { _ in OverlaySignals.stop.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in OverlaySignals.stop.store(true, ordering: .relaxed) }
    }
}

struct OverlayFlowsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flows",
        abstract: "Print a running overlay host's flows, leases and counters (from its stats file).")

    @Option(help: "The stats file `sluice overlay host` writes.") var statsFile: String
    @Flag(help: "Print the JSON as written.") var json = false
    @Flag(help: "Print the counters as Prometheus text (sluice_overlay_*, as `sluice run`'s metrics endpoint serves them).")
    var prometheus = false

    func run() throws {
        guard let data = FileManager.default.contents(atPath: statsFile) else {
            throw ValidationError("cannot read \(statsFile)")
        }
        if json {
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let snapshot: OverlayHostSnapshot
        do { snapshot = try JSONDecoder().decode(OverlayHostSnapshot.self, from: data) } catch {
            throw ValidationError("\(statsFile): not an overlay stats file: \(error)")
        }
        print(prometheus ? OverlayMetrics.text(snapshot) : Self.render(snapshot))
    }

    static func render(_ snapshot: OverlayHostSnapshot) -> String {
        var lines = ["host \(snapshot.host): \(snapshot.flowCount) flows, events applied \(snapshot.eventsApplied), "
            + "ignored \(snapshot.eventsIgnored), resets sent \(snapshot.resetsSent), lease requests \(snapshot.leaseRequests), "
            + "held \(snapshot.heldPackets), released \(snapshot.releasedPackets)"]
        lines.append("ports:")
        for port in snapshot.ports {
            lines.append("  \(port.name) (\(port.interface)): rx \(port.receivedPackets) pkts \(port.receivedBytes) B, "
                + "tx \(port.sentPackets) pkts \(port.sentBytes) B")
        }
        if !snapshot.services.isEmpty { lines.append("services:") }
        for service in snapshot.services {
            lines.append("  \(service.name): flows \(service.flows) packets \(service.packets) bytes \(service.bytes) "
                + "redirect misses \(service.redirectMisses)")
        }
        if !snapshot.leases.isEmpty { lines.append("leases:") }
        for lease in snapshot.leases {
            lines.append("  \(lease.leaseID)@\(lease.epoch) \(lease.service) \(lease.consumerVM) -> \(lease.producerVM) on "
                + "\(lease.producerHost): flows \(lease.flows) packets \(lease.packets) bytes \(lease.bytes)")
        }
        if !snapshot.drops.isEmpty {
            lines.append("drops: " + snapshot.drops.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !snapshot.flows.isEmpty { lines.append("flows:") }
        for flow in snapshot.flows {
            lines.append("  \(flow.kind) \(flow.protocolName) \(flow.source) -> \(flow.destination) => \(flow.redirectedTo) "
                + "via \(flow.underlayPeer) lease \(flow.leaseID)@\(flow.epoch)\(flow.isLive ? "" : " ENDED") "
                + "packets \(flow.packets) bytes \(flow.bytes)")
        }
        return lines.joined(separator: "\n")
    }
}

struct OverlayBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Redirect path (lookup, rewrite, encapsulate) packets/s vs forwarding without redirect, on prebuilt frames.")

    @Option(help: "Flows (distinct source ports), a power of two.") var flows = 1024
    @Option(help: "TCP payload bytes per frame.") var payload = 64
    @Option(help: "Frames per round and loop.") var frames = 2_000_000
    @Option(help: "Rounds (the medians are reported).") var rounds = 5
    @Option(help: "Flow table capacity, a power of two (0: the smallest >= 4 x flows).") var flowCapacity = 0

    func validate() throws {
        guard flows > 0, flows <= 1 << 16 else { throw ValidationError("--flows must be in 1...65536") }
        guard payload >= 0, payload <= 1400 else { throw ValidationError("--payload must be in 0...1400") }
        guard frames > 0, rounds > 0, rounds <= 100 else { throw ValidationError("--frames > 0, --rounds in 1...100") }
        guard flowCapacity == 0 || (flowCapacity.nonzeroBitCount == 1 && flowCapacity >= flows && flowCapacity <= 1 << 20) else {
            throw ValidationError("--flow-capacity must be 0 or a power of two in flows...1048576")
        }
    }

    func run() throws {
        let result = OverlayBench.run(flows: flows, payloadBytes: payload, framesPerRound: frames, rounds: rounds,
                                      flowCapacity: flowCapacity)
        func mpps(_ value: Double) -> String { String(format: "%.2f Mpps", value / 1e6) }
        print("overlay bench: \(flows) flows (table \(result.flowCapacity)), \(payload) B payload, \(frames) frames x \(rounds) rounds")
        print("  redirect (lookup+rewrite+encap): median \(mpps(result.redirectMedian))  rounds "
            + result.redirectPPS.map(mpps).joined(separator: " "))
        print("  forward (parse+MAC rewrite):     median \(mpps(result.forwardMedian))  rounds "
            + result.forwardPPS.map(mpps).joined(separator: " "))
        print(String(format: "  ratio redirect/forward: %.2f (goal >= 0.80)", result.ratio))
    }
}

struct OverlayRevokeBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-revoke",
        abstract: "Revoke to cut on a running consumer host: grant and revoke through the agents, timed to the forwarding thread.",
        discussion: """
            Starts the host of --config (its interfaces must exist) with its leasing side (--etcd/--agents or the \
            config's leasing section), registers a producer of --service (one the host serves, default its first) \
            for --consumer-vm (default its first consumer VM), then --rounds times: a grant (installed as the \
            pair's redirect), a pause, its revoke, timed until the forwarding thread applied the end: the \
            redirect removed and the lease's flows cut (docs/OVERLAY.md, "Revoke to cut"). Prints medians and \
            p90. scripts/bench-overlay-revoke.sh.
            """)

    @Option(help: "The consumer host config (JSON).") var config: String
    @Option(help: "etcd client URLs, comma-separated (overrides leasing.etcd).") var etcd: String?
    @Option(help: "Leasing agents IPv4:PORT, comma-separated (overrides leasing.agents).") var agents: String?
    @Option(help: "Key prefix of the overlay in etcd (overrides leasing.prefix).") var prefix: String?
    @Option(help: "Revokes to time.") var rounds: Int = 50
    @Option(help: "A service the host serves (default: its first).") var service: String?
    @Option(help: "A consumer VM of the host (default: its first).") var consumerVM: String?
    @Flag(help: "Print the samples as JSON (ms) after the summary.") var json = false

    func run() async throws {
        guard (1...10_000).contains(rounds) else { throw ValidationError("--rounds must be 1...10000") }
        let (_, resolved, leasingFile, leasingConfiguration) = try OverlayHostCommand.load(
            config: config, etcd: etcd, agents: agents, prefix: prefix, consumerHost: nil)
        guard let leasingFile, let leasingConfiguration else {
            throw ValidationError("bench-revoke needs a leasing side: --etcd and --agents, or the config's leasing section")
        }
        let dataplane = resolved.0.dataplane
        guard let served = dataplane.services.first(where: { $0.name == (service ?? dataplane.services.first?.name) }) else {
            throw ValidationError("--service \(service ?? "-"): the host serves \(dataplane.services.map(\.name))")
        }
        let consumers = dataplane.vmPorts.filter { $0.role == .consumer }.map(\.name)
        guard let vm = consumerVM ?? consumers.first, consumers.contains(vm) else {
            throw ValidationError("--consumer-vm \(consumerVM ?? "-"): the host's consumer VMs are \(consumers)")
        }
        let client: EtcdClient
        do { client = try EtcdClient(EtcdClientConfiguration(endpoints: leasingFile.etcd)) } catch {
            throw ValidationError("--etcd: \(error)")
        }
        let host = try OverlayHost(configuration: resolved.0)
        let leasing = try OverlayHostLeasing(host: host, etcd: client, configuration: leasingConfiguration)
        let agentClient = try OverlayAgentClient(agents: leasingConfiguration.agents)
        try host.start()
        let joined = Task { try await leasing.run() }
        var registration: OverlayRegistration?
        var outcome: Result<OverlayRevokeTiming, Error>
        do {
            registration = try await OverlayRegistration.start(client, keys: leasingConfiguration.keys, endpoints: [
                OverlayProducer(service: served.name, producerVM: "timing-producer", producerHost: "timing-host",
                                underlayIPv4: 0xC612_00FE, overlayIPv4: 0xC613_00FE, port: served.port,
                                vni: dataplane.vnis.first ?? 1, capacity: 1)],
                ttlSeconds: 30)
            outcome = .success(try await OverlayRevokeTiming.measure(leasing: leasing, agents: agentClient, service: served.name,
                                                                     consumerVM: vm, rounds: rounds))
        } catch {
            outcome = .failure(error)
        }
        try? await registration?.stop()
        joined.cancel()
        _ = try? await joined.value
        host.stop()
        await client.shutdown()
        let timing: OverlayRevokeTiming
        switch outcome {
        case .success(let measured): timing = measured
        case .failure(let error): throw ValidationError("bench-revoke: \(error)")
        }
        print("overlay bench-revoke: \(timing.summary)")
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let samples = ["totalMs": timing.totalMs, "toInboxMs": timing.toInboxMs, "handOffMs": timing.handOffMs,
                           "callMs": timing.callMs]
            print(String(decoding: try encoder.encode(samples), as: UTF8.self))
        }
    }
}
