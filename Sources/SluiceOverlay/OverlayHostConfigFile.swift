// Path: Sources/SluiceOverlay/OverlayHostConfigFile.swift — the JSON file `sluice overlay host --config`
// reads: interfaces, underlay address, VNI, services, static leases; checked and turned into an
// `OverlayHostConfiguration` plus the leases to grant at start.
import Foundation
import SluicePacket

/// The host config file, as written. Addresses are dotted quads, MACs `aa:bb:cc:dd:ee:ff`.
public struct OverlayHostConfigFile: Codable, Sendable {
    public struct Underlay: Codable, Sendable {
        public var interface: String
        public var ipv4: String
        /// This host's underlay MAC; read from /sys/class/net/<interface>/address when absent.
        public var mac: String?
        /// Next hop for underlay addresses not in `neighbors` (default: broadcast).
        public var gatewayMAC: String?
        public var neighbors: [Neighbor]?
    }
    public struct Neighbor: Codable, Sendable {
        public var ipv4: String
        public var mac: String
    }
    public struct VM: Codable, Sendable {
        public var name: String
        public var interface: String
        public var role: OverlayVMRole
        /// The VM's MAC (required for producer VMs; consumers' are learned per flow).
        public var mac: String?
        /// The host side's MAC; read from sysfs when absent.
        public var hostMAC: String?
        /// Producer VMs: their overlay address.
        public var overlayIPv4: String?
        public var vni: UInt32?
    }
    public struct Service: Codable, Sendable {
        public var name: String
        public var ipv4: String
        public var port: UInt16
        /// "tcp" (default) or "udp".
        public var `protocol`: String?
    }
    public struct StaticLease: Codable, Sendable {
        public var leaseID: Int64
        public var epoch: Int64?
        public var service: String
        public var consumerVM: String
        public var producerVM: String
        public var producerHost: String
        public var producerUnderlayIPv4: String
        public var producerOverlayIPv4: String
        public var producerPort: UInt16
        public var vni: UInt32?
    }

    /// A consumer host's leasing side: etcd to watch its lease records in, agents to ask for leases.
    public struct Leasing: Codable, Sendable {
        /// etcd client URLs (`http://HOST:PORT`).
        public var etcd: [String]
        /// Leasing agents, `IPv4:PORT` each.
        public var agents: [String]
        /// Key prefix (default `/sluice/overlay/`).
        public var prefix: String?
        /// This host's name in lease records (default: `name`).
        public var consumerHost: String?
        public var agentCallTimeoutMs: Int64?
        public var retryPauseMs: Int64?

        public init(etcd: [String], agents: [String], prefix: String? = nil, consumerHost: String? = nil) {
            self.etcd = etcd
            self.agents = agents
            self.prefix = prefix
            self.consumerHost = consumerHost
        }

        /// The join's configuration for host `hostName`, or the first mistake.
        public func resolve(hostName: String) throws(OverlayConfigError) -> OverlayHostLeasingConfiguration {
            guard !etcd.isEmpty, etcd.allSatisfy({ $0.hasPrefix("http://") }) else {
                throw .invalid("leasing.etcd must be one or more http://HOST:PORT URLs")
            }
            let keys: OverlayKeys
            do { keys = try OverlayKeys(prefix: prefix ?? OverlayKeys.prefixDefault) } catch {
                throw .invalid("leasing.prefix: \(error)")
            }
            let host = consumerHost ?? hostName
            guard OverlayNames.isValid(host) else { throw .invalid("leasing.consumerHost '\(host.prefix(80))' is not a valid name") }
            guard (1...OverlayAgentClient.agentsMax).contains(agents.count) else {
                throw .invalid("leasing.agents: 1...\(OverlayAgentClient.agentsMax) agents, IPv4:PORT each")
            }
            let configuration = OverlayHostLeasingConfiguration(
                consumerHost: host, keys: keys, agents: agents, agentCallTimeoutMs: agentCallTimeoutMs ?? 3_000,
                retryPauseMs: retryPauseMs ?? 500)
            do { _ = try OverlayAgentClient(agents: agents, callTimeoutMs: configuration.agentCallTimeoutMs) } catch {
                throw .invalid("leasing.agents: \(error)")
            }
            guard (1...60_000).contains(configuration.retryPauseMs) else { throw .invalid("leasing.retryPauseMs must be in 1...60000") }
            return configuration
        }
    }

    public var name: String
    /// Network namespace to open the interfaces in (`/var/run/netns/NAME` or a name there).
    public var namespace: String?
    public var underlay: Underlay
    public var vni: UInt32
    public var vms: [VM]
    public var services: [Service]?
    public var leases: [StaticLease]?
    public var flowCapacity: Int?
    public var flowIdleSeconds: Double?
    public var endedFlowPolicy: OverlayEndedFlowPolicy?
    public var udpChecksum: Bool?
    /// Where `sluice overlay host` writes its snapshot (JSON) once a second.
    public var statsFile: String?
    /// Leases from etcd and the agents (consumer hosts); absent: only the static `leases`.
    public var leasing: Leasing?

    /// Reads and decodes a file of at most 4 MiB.
    public static func load(path: String) throws(OverlayConfigError) -> OverlayHostConfigFile {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .unreadable(path) }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: 4 << 20 + 1) ?? Data() } catch { throw .unreadable(path) }
        guard data.count <= 4 << 20 else { throw .tooLarge(path) }
        do { return try JSONDecoder().decode(OverlayHostConfigFile.self, from: data) } catch {
            throw .invalid("\(path): \(error)")
        }
    }

    /// The host configuration and the static leases, or the first mistake.
    public func resolve() throws(OverlayConfigError) -> (OverlayHostConfiguration, [OverlayLease]) {
        let underlayIPv4 = try Self.ipv4(underlay.ipv4, "underlay.ipv4")
        let underlayMAC = try Self.mac(underlay.mac, interface: underlay.interface, "underlay.mac")
        var neighbors: [UInt32: MACAddress] = [:]
        for neighbor in underlay.neighbors ?? [] {
            let address = try Self.ipv4(neighbor.ipv4, "underlay.neighbors.ipv4")
            neighbors[address] = try Self.mac(neighbor.mac, "underlay.neighbors.mac")
        }
        var gateway = MACAddress(0xFFFF_FFFF_FFFF)
        if let text = underlay.gatewayMAC { gateway = try Self.mac(text, "underlay.gatewayMAC") }
        var ports: [OverlayVMPort] = []
        for vm in vms {
            let vmMAC: MACAddress
            if let text = vm.mac { vmMAC = try Self.mac(text, "vms.\(vm.name).mac") } else {
                guard vm.role == .consumer else { throw .invalid("vms.\(vm.name): a producer VM needs its mac") }
                vmMAC = MACAddress(0)
            }
            let hostMAC = try Self.mac(vm.hostMAC, interface: vm.interface, "vms.\(vm.name).hostMAC")
            var overlay: UInt32 = 0
            if vm.role == .producer {
                guard let text = vm.overlayIPv4 else { throw .invalid("vms.\(vm.name): a producer VM needs overlayIPv4") }
                overlay = try Self.ipv4(text, "vms.\(vm.name).overlayIPv4")
            }
            ports.append(OverlayVMPort(name: vm.name, role: vm.role, vmMAC: vmMAC, hostMAC: hostMAC,
                                       overlayIPv4: overlay, vni: vm.vni ?? vni))
        }
        var serviceList: [OverlayService] = []
        for service in services ?? [] {
            let ipProtocol: UInt8
            switch service.protocol ?? "tcp" {
            case "tcp": ipProtocol = IPProtocol.tcp
            case "udp": ipProtocol = IPProtocol.udp
            default: throw .invalid("services.\(service.name).protocol must be tcp or udp")
            }
            serviceList.append(OverlayService(name: service.name, ipv4: try Self.ipv4(service.ipv4, "services.\(service.name).ipv4"),
                                              port: service.port, ipProtocol: ipProtocol))
        }
        let idle = flowIdleSeconds ?? 120
        guard idle > 0, idle <= 86_400 else { throw .invalid("flowIdleSeconds must be in (0, 86400]") }
        let dataplane = OverlayDataplaneConfig(
            underlayIPv4: underlayIPv4, underlayMAC: underlayMAC, neighborMACs: neighbors, underlayGatewayMAC: gateway,
            vnis: Array(Set([vni] + ports.filter { $0.role == .producer }.map(\.vni))).sorted(), vmPorts: ports,
            services: serviceList, flowCapacity: flowCapacity ?? OverlayDataplaneLimits.flowCapacityDefault,
            flowIdleNs: UInt64(idle * 1e9), endedFlowPolicy: endedFlowPolicy ?? .reset,
            computesUDPChecksum: udpChecksum ?? false)
        if let problem = dataplane.problem { throw .invalid(problem) }
        var staticLeases: [OverlayLease] = []
        for lease in leases ?? [] {
            let leaseVNI = lease.vni ?? vni
            guard leaseVNI <= OverlayLimits.vniMax else { throw .invalid("leases.\(lease.leaseID).vni is wider than 24 bits") }
            staticLeases.append(OverlayLease(
                leaseID: lease.leaseID, epoch: lease.epoch ?? 1, service: lease.service, consumerVM: lease.consumerVM,
                producerVM: lease.producerVM, producerHost: lease.producerHost,
                producerUnderlayIPv4: try Self.ipv4(lease.producerUnderlayIPv4, "leases.\(lease.leaseID).producerUnderlayIPv4"),
                producerOverlayIPv4: try Self.ipv4(lease.producerOverlayIPv4, "leases.\(lease.leaseID).producerOverlayIPv4"),
                producerPort: lease.producerPort, vni: leaseVNI))
        }
        let path = namespace.map { $0.hasPrefix("/") ? $0 : "/var/run/netns/\($0)" }
        return (OverlayHostConfiguration(name: name, dataplane: dataplane, vmInterfaces: vms.map(\.interface),
                                         underlayInterface: underlay.interface, namespacePath: path), staticLeases)
    }

    static func ipv4(_ text: String, _ field: String) throws(OverlayConfigError) -> UInt32 {
        guard let address = IPAddress(text), let value = address.ipv4 else { throw .invalid("\(field): \(text) is not an IPv4 address") }
        return value
    }

    static func mac(_ text: String, _ field: String) throws(OverlayConfigError) -> MACAddress {
        guard let mac = MACAddress(text) else { throw .invalid("\(field): \(text) is not a MAC address") }
        return mac
    }

    /// `text`, or the interface's MAC from sysfs (read in the caller's namespace: give it in the file
    /// when the interface lives in another namespace).
    static func mac(_ text: String?, interface: String, _ field: String) throws(OverlayConfigError) -> MACAddress {
        if let text { return try mac(text, field) }
        guard let contents = try? String(contentsOfFile: "/sys/class/net/\(interface)/address", encoding: .utf8) else {
            throw .invalid("\(field): absent, and /sys/class/net/\(interface)/address is unreadable")
        }
        return try mac(contents.trimmingCharacters(in: .whitespacesAndNewlines), field)
    }
}

/// A config file that cannot be used.
public enum OverlayConfigError: Error, CustomStringConvertible, Equatable {
    case unreadable(String)
    case tooLarge(String)
    case invalid(String)

    public var description: String {
        switch self {
        case .unreadable(let path): "cannot read \(path)"
        case .tooLarge(let path): "\(path) is larger than 4 MiB"
        case .invalid(let problem): problem
        }
    }
}
