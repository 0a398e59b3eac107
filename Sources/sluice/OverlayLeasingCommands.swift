// Path: Sources/sluice/OverlayLeasingCommands.swift — `sluice overlay` subcommands of the leasing side:
// producers, leases, agent, register, lease, revoke, watch. Flags into SluiceOverlay; no logic of its own.
import ArgumentParser
import Foundation
import Glibc
import SluiceEtcd
import SluiceOverlay
import SluiceService

let overlayLeasingSubcommands: [ParsableCommand.Type] = [
    OverlayProducersCommand.self, OverlayLeasesCommand.self, OverlayAgentCommand.self, OverlayRegisterCommand.self,
    OverlayLeaseCommand.self, OverlayRevokeCommand.self, OverlayWatchCommand.self,
]

/// Flags every etcd-reading subcommand shares.
struct OverlayEtcdOptions: ParsableArguments {
    @Option(help: "etcd client URLs, comma-separated: http://HOST:PORT[,http://HOST:PORT...].")
    var etcd = "http://127.0.0.1:2379"

    @Option(help: "Key prefix of the overlay in etcd (ends with /).")
    var prefix = OverlayKeys.prefixDefault

    @Option(help: "Deadline of each etcd call (milliseconds).")
    var etcdTimeoutMs: Int64 = 2_000

    func keys() throws -> OverlayKeys {
        do { return try OverlayKeys(prefix: prefix) } catch { throw ValidationError("--prefix: \(error)") }
    }

    func configuration() throws -> EtcdClientConfiguration {
        let endpoints = etcd.split(separator: ",").map(String.init)
        guard !endpoints.isEmpty, endpoints.allSatisfy({ $0.hasPrefix("http://") }) else {
            throw ValidationError("--etcd must be http://HOST:PORT[,...], got '\(etcd)'")
        }
        guard (1...EtcdLimits.callTimeoutMsMax).contains(etcdTimeoutMs) else {
            throw ValidationError("--etcd-timeout-ms \(etcdTimeoutMs) not in 1...\(EtcdLimits.callTimeoutMsMax)")
        }
        return EtcdClientConfiguration(endpoints: endpoints, callTimeoutMs: etcdTimeoutMs)
    }

    func client() throws -> EtcdClient {
        let configuration = try configuration()
        do { return try EtcdClient(configuration) } catch { throw ValidationError("--etcd: \(error)") }
    }
}

func checkName(_ name: String, flag: String) throws {
    guard OverlayNames.isValid(name) else {
        throw ValidationError("\(flag) '\(name.prefix(80))' must be 1...\(OverlayLimits.nameLengthMax) characters of [A-Za-z0-9._-]")
    }
}

/// Prints `error` on stderr and exits with 1 (an operating error, not a usage error).
func overlayFail(_ error: any Error) -> ExitCode {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    return ExitCode(1)
}

/// Blocks a thread of its own until SIGTERM or SIGINT (the handlers are installed before it returns).
func waitForStopSignal() async {
    StopSignal.install()
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        Thread {
            StopSignal.wait()
            continuation.resume()
        }.start()
    }
}

struct OverlayProducersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producers", abstract: "List the registered producer endpoints and how many slots are leased.")

    @OptionGroup var etcd: OverlayEtcdOptions
    @Option(help: "Only this service.") var service: String?

    func run() async throws {
        if let service { try checkName(service, flag: "--service") }
        let keys = try etcd.keys()
        let client = try etcd.client()
        do {
            let (producers, malformed) = try await OverlayRegistry.producers(client, keys: keys, service: service)
            print(["SERVICE", "VM", "HOST", "UNDERLAY", "OVERLAY", "PORT", "VNI", "CAPACITY", "LEASED"].joined(separator: "\t"))
            var usedByService: [String: [String: Int]] = [:]
            for producer in producers {
                if usedByService[producer.service] == nil {
                    usedByService[producer.service] = try await OverlayRegistry.slotsInUse(client, keys: keys, service: producer.service)
                }
                let used = usedByService[producer.service]?[producer.producerVM] ?? 0
                print([producer.service, producer.producerVM, producer.producerHost, producer.underlay, producer.overlay,
                       "\(producer.port)", "\(producer.vni)", "\(producer.capacity)", "\(used)"].joined(separator: "\t"))
            }
            for line in malformed { FileHandle.standardError.write(Data("warning: \(line)\n".utf8)) }
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw overlayFail(error)
        }
    }
}

struct OverlayLeasesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "leases", abstract: "List the leases held now.")

    @OptionGroup var etcd: OverlayEtcdOptions
    @Option(help: "Only the leases of this consumer host.") var consumerHost: String?

    func run() async throws {
        if let consumerHost { try checkName(consumerHost, flag: "--consumer-host") }
        let keys = try etcd.keys()
        let client = try etcd.client()
        let prefix = consumerHost.map { keys.leases(consumerHost: $0) } ?? keys.leasesAll
        do {
            let result = try await client.range(.prefix(prefix), limit: EtcdLimits.rangeLimitMax)
            print(["LEASE", "EPOCH", "SERVICE", "CONSUMER_HOST", "CONSUMER_VM", "PRODUCER_VM", "PRODUCER_HOST", "SLOT", "AGENT", "END"]
                .joined(separator: "\t"))
            // End markers (`<record key>/end`, written by a revoke before the lease goes) fill the END column.
            var ends: [Int64: String] = [:]
            for kv in result.kvs where kv.key.count > 4 && kv.key.suffix(4).elementsEqual("/end".utf8) {
                if let end = try? JSONDecoder().decode(OverlayLeaseEndRecord.self, from: Data(kv.value)) { ends[end.leaseID] = end.reason }
            }
            for kv in result.kvs where !(kv.key.count > 4 && kv.key.suffix(4).elementsEqual("/end".utf8)) {
                guard let record = try? JSONDecoder().decode(OverlayLeaseRecord.self, from: Data(kv.value)) else {
                    FileHandle.standardError.write(Data("warning: malformed record at \(String(decoding: kv.key, as: UTF8.self))\n".utf8))
                    continue
                }
                print(["\(record.leaseID)", "\(kv.createRevision)", record.service, record.consumerHost, record.consumerVM,
                       record.producerVM, record.producerHost, "\(record.slot)", record.agent, ends[record.leaseID] ?? record.endReason ?? "-"]
                    .joined(separator: "\t"))
            }
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw overlayFail(error)
        }
    }
}

struct OverlayAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run a leasing agent: serve grant/revoke/renew requests (JSON lines over TCP) until SIGTERM/SIGINT, then print the counters.")

    @OptionGroup var etcd: OverlayEtcdOptions
    @Option(help: "The agent's name (recorded in its grants).") var name: String
    @Option(help: "Address to listen on, IPV4:PORT (port 0: any free port, printed on start).") var listen: String
    @Option(help: "TTL of each grant's etcd lease (seconds): a dead agent's grants expire after it.") var ttl: Int64 = 10
    @Option(help: "Serve the agent's counters as Prometheus text on http://IPV4:PORT/metrics (port 0: any free port, printed on start).")
    var metrics: String?

    func validate() throws {
        try checkName(name, flag: "--name")
        if let metrics {
            let (host, _) = try hostPort(metrics, flag: "--metrics", portZero: true)
            guard OverlayIPv4.parse(host) != nil else { throw ValidationError("--metrics host '\(host)' is not an IPv4 address") }
        }
        guard OverlayLeasingLimits.ttlSecondsRange.contains(ttl) else {
            throw ValidationError("--ttl \(ttl) not in \(OverlayLeasingLimits.ttlSecondsRange)")
        }
        let (host, _) = try hostPort(listen, flag: "--listen", portZero: true)
        guard OverlayIPv4.parse(host) != nil else { throw ValidationError("--listen host '\(host)' is not an IPv4 address") }
    }

    func run() async throws {
        let keys = try etcd.keys()
        let (host, port) = try hostPort(listen, flag: "--listen", portZero: true)
        let client = try etcd.client()
        do {
            let agent = try OverlayLeasingAgent(client: client, configuration: .init(
                name: name, keys: keys, ttlSeconds: ttl, callTimeoutMs: etcd.etcdTimeoutMs))
            let server = try await OverlayAgentServer.bind(agent: agent, host: host, port: port)
            print("agent \(name) listening on \(host):\(server.port)")
            var endpoint: MetricsEndpoint?
            if let metrics {
                let (metricsHost, metricsPort) = try hostPort(metrics, flag: "--metrics", portZero: true)
                let counters = agent.counters
                let agentName = name
                endpoint = try MetricsEndpoint.bind(ListenAddress(host: metricsHost, port: metricsPort),
                                                    render: { OverlayMetrics.agentText(agent: agentName, counters) })
                print("agent \(name) metrics on \(metricsHost):\(endpoint!.port)")
            }
            defer { endpoint?.close() }
            fflush(nil)
            let serving = Task { await server.run() }
            let renewing = Task { await agent.run() }
            await waitForStopSignal()
            serving.cancel()
            renewing.cancel()
            await serving.value
            await renewing.value
            print(agent.counters.report)
            fflush(nil)
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw overlayFail(error)
        }
    }
}

struct OverlayRegisterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Register a producer host's service endpoints and keep them alive until SIGTERM/SIGINT (then remove them).")

    @OptionGroup var etcd: OverlayEtcdOptions
    @Option(help: "The producer host's name.") var host: String
    @Option(help: "The producer host's underlay IPv4 address (where VXLAN packets go).") var underlay: String
    @Option(parsing: .singleValue,
            help: "An endpoint: SERVICE,VM,OVERLAY_IPV4,PORT,VNI,CAPACITY (repeat the flag for more).")
    var endpoint: [String] = []
    @Option(help: "TTL of the registration's etcd lease (seconds): endpoints of a dead host vanish after it.") var ttl: Int64 = 10

    func endpoints() throws -> [OverlayProducer] {
        try checkName(host, flag: "--host")
        guard let underlayIPv4 = OverlayIPv4.parse(underlay) else { throw ValidationError("--underlay '\(underlay)' is not IPv4") }
        guard !endpoint.isEmpty else { throw ValidationError("give at least one --endpoint") }
        guard OverlayLeasingLimits.ttlSecondsRange.contains(ttl) else {
            throw ValidationError("--ttl \(ttl) not in \(OverlayLeasingLimits.ttlSecondsRange)")
        }
        return try endpoint.map { text in
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 6 else { throw ValidationError("--endpoint '\(text)' is not SERVICE,VM,OVERLAY_IPV4,PORT,VNI,CAPACITY") }
            try checkName(parts[0], flag: "--endpoint service")
            try checkName(parts[1], flag: "--endpoint VM")
            guard let overlay = OverlayIPv4.parse(parts[2]) else { throw ValidationError("--endpoint overlay '\(parts[2])' is not IPv4") }
            guard let port = UInt16(parts[3]), port > 0 else { throw ValidationError("--endpoint port '\(parts[3])' not in 1...65535") }
            guard let vni = UInt32(parts[4]), vni <= OverlayLimits.vniMax else {
                throw ValidationError("--endpoint VNI '\(parts[4])' not in 0...\(OverlayLimits.vniMax)")
            }
            guard let capacity = Int(parts[5]), (1...OverlayLeasingLimits.capacityMax).contains(capacity) else {
                throw ValidationError("--endpoint capacity '\(parts[5])' not in 1...\(OverlayLeasingLimits.capacityMax)")
            }
            return OverlayProducer(service: parts[0], producerVM: parts[1], producerHost: host, underlayIPv4: underlayIPv4,
                                   overlayIPv4: overlay, port: port, vni: vni, capacity: capacity)
        }
    }

    func validate() throws { _ = try endpoints() }

    func run() async throws {
        let keys = try etcd.keys()
        let endpoints = try endpoints()
        let client = try etcd.client()
        do {
            let registration = try await OverlayRegistration.start(client, keys: keys, endpoints: endpoints, ttlSeconds: ttl)
            print("registered \(endpoints.count) endpoints of \(host) on etcd lease \(registration.leaseID)")
            fflush(nil)
            let renewing = Task { try await registration.run() }
            await waitForStopSignal()
            renewing.cancel()
            _ = await renewing.result
            try await registration.stop()
            print("removed \(endpoints.count) endpoints of \(host)")
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw overlayFail(error)
        }
    }
}

/// Flags of the subcommands that talk to agents.
struct OverlayAgentsOptions: ParsableArguments {
    @Option(help: "Leasing agents, comma-separated IPV4:PORT (asked in turn, a random one first).") var agents: String
    @Option(help: "Deadline of each request to one agent (milliseconds).") var timeoutMs: Int64 = 5_000

    func client() throws -> OverlayAgentClient {
        do {
            return try OverlayAgentClient(agents: agents.split(separator: ",").map(String.init), callTimeoutMs: timeoutMs)
        } catch {
            throw ValidationError("--agents/--timeout-ms: \(error)")
        }
    }
}

struct OverlayLeaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lease", abstract: "Ask the agents for a lease of one producer of a service for a consumer VM.")

    @OptionGroup var agents: OverlayAgentsOptions
    @Option(help: "The consumer VM.") var consumer: String
    @Option(help: "The consumer VM's host (whose lease view gets the grant).") var consumerHost: String
    @Option(help: "The service.") var service: String

    func validate() throws {
        try checkName(consumer, flag: "--consumer")
        try checkName(consumerHost, flag: "--consumer-host")
        try checkName(service, flag: "--service")
    }

    func run() async throws {
        let client = try agents.client()
        do {
            let grant = try await client.grant(service: service, consumerHost: consumerHost, consumerVM: consumer)
            let record = grant.record
            print("lease \(record.leaseID) epoch \(grant.epoch) service \(record.service) consumer \(record.consumerHost)/\(record.consumerVM) "
                  + "producer \(record.producerHost)/\(record.producerVM) \(record.overlay):\(record.port) vni \(record.vni) "
                  + "underlay \(record.underlay) slot \(record.slot) agent \(record.agent) ttl \(record.ttlSeconds)")
        } catch {
            throw overlayFail(error)
        }
    }
}

struct OverlayRevokeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a lease through the agents.")

    @OptionGroup var agents: OverlayAgentsOptions
    @Option(help: "The consumer host holding the lease.") var consumerHost: String
    @Option(help: "The lease (its etcd lease ID, as `lease` printed).") var lease: Int64

    func validate() throws { try checkName(consumerHost, flag: "--consumer-host") }

    func run() async throws {
        let client = try agents.client()
        do {
            try await client.revoke(consumerHost: consumerHost, leaseID: lease)
            print("revoked \(lease)")
        } catch {
            throw overlayFail(error)
        }
    }
}

struct OverlayWatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch-leases", abstract: "Print a consumer host's lease events (snapshot, then changes) until SIGINT or --count events.")

    @OptionGroup var etcd: OverlayEtcdOptions
    @Option(help: "The consumer host.") var consumerHost: String
    @Option(help: "Stop after this many events (0: never).") var count = 0

    func validate() throws { try checkName(consumerHost, flag: "--consumer-host") }

    func run() async throws {
        let keys = try etcd.keys()
        let client = try etcd.client()
        do {
            var watch = try await OverlayLeaseWatch.start(client, keys: keys, consumerHost: consumerHost)
            var seen = 0
            while let event = try await watch.next() {
                switch event {
                case .granted(let lease):
                    print("granted lease \(lease.leaseID) epoch \(lease.epoch) service \(lease.service) consumer \(lease.consumerVM) "
                          + "producer \(lease.producerHost)/\(lease.producerVM)")
                case .ended(let id, let epoch, let reason):
                    print("ended lease \(id) epoch \(epoch) reason \(reason.rawValue)")
                }
                fflush(nil)
                seen += 1
                if count > 0, seen >= count { break }
            }
            await client.shutdown()
        } catch {
            await client.shutdown()
            throw overlayFail(error)
        }
    }
}
