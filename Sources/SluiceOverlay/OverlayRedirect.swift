// Path: Sources/SluiceOverlay/OverlayRedirect.swift — a host's overlay data plane, both roles: on a
// consumer host, redirect (lease lookup, rewrite, encapsulate) and the reverse path; on a producer
// host, decapsulate to local producer VMs and encapsulate their replies back.
import Glibc
import SluicePacket

/// Bounds of the data plane's tables (with `OverlayLimits` for leases).
public enum OverlayDataplaneLimits {
    /// VM-facing ports of one host (the underlay port comes after them).
    public static let vmPortCountMax = 64
    /// Services one host redirects (scanned per first packet: keep it small).
    public static let serviceCountMax = 64
    /// Lease requests waiting for the leasing side (deduplicated per consumer VM and service).
    public static let leaseRequestQueueMax = 256
    /// TCP resets waiting to go to consumer VMs after a lease ended.
    public static let resetQueueMax = 1024
    /// Default flow table capacity.
    public static let flowCapacityDefault = 1 << 16
    /// First packets held per consumer VM and service while its lease is asked for (more: `awaitingLease`).
    public static let heldPerPairMax = 32
    /// Consumer VM and service pairs holding packets at once (each a preallocated queue; more: `awaitingLease`).
    public static let heldPairsMax = 16
    /// Longest frame held (longer first packets are dropped `awaitingLease`).
    public static let heldFrameBytesMax = 2048
    /// Default of `OverlayDataplaneConfig.heldTimeoutNs`.
    public static let heldTimeoutNsDefault: UInt64 = 5_000_000_000
}

/// What a VM port connects.
public enum OverlayVMRole: String, Sendable, Codable {
    /// A consumer VM: its packets to service addresses are redirected.
    case consumer
    /// A producer VM: decapsulated packets for its overlay address are delivered to it.
    case producer
}

/// One VM-facing port of a host.
public struct OverlayVMPort: Sendable, Equatable {
    public var name: String
    public var role: OverlayVMRole
    /// The VM's MAC (where the host delivers; for consumers it is also learned per flow).
    public var vmMAC: MACAddress
    /// The host side's MAC (the source of frames the host delivers).
    public var hostMAC: MACAddress
    /// Producer VMs: their overlay address (host order) and VNI.
    public var overlayIPv4: UInt32
    public var vni: UInt32

    public init(name: String, role: OverlayVMRole, vmMAC: MACAddress, hostMAC: MACAddress, overlayIPv4: UInt32 = 0,
                vni: UInt32 = 0) {
        self.name = name
        self.role = role
        self.vmMAC = vmMAC
        self.hostMAC = hostMAC
        self.overlayIPv4 = overlayIPv4
        self.vni = vni
    }
}

/// A service address consumers use: packets to it are redirected to a leased producer.
public struct OverlayService: Sendable, Equatable {
    public var name: String
    public var ipv4: UInt32
    public var port: UInt16
    public var ipProtocol: UInt8

    public init(name: String, ipv4: UInt32, port: UInt16, ipProtocol: UInt8 = IPProtocol.tcp) {
        self.name = name
        self.ipv4 = ipv4
        self.port = port
        self.ipProtocol = ipProtocol
    }
}

/// What happens to a lease's established flows when the lease ends. Either way no packet of them
/// reaches the old producer after the end event is applied.
public enum OverlayEndedFlowPolicy: String, Sendable, Codable {
    /// TCP flows get a RST towards the consumer (from the service address); every later packet of
    /// an old flow is dropped as `leaseEnded` until the flow idles out.
    case reset
    /// The next packet of an old flow is bound to the consumer's current lease for the service (if
    /// any; `leaseEnded` drop otherwise). TCP will see the new producer refuse it: use for UDP.
    case move
}

/// Everything the data plane of one host needs, in numeric form (the CLI config converts to this).
public struct OverlayDataplaneConfig: Sendable {
    public var underlayIPv4: UInt32
    public var underlayMAC: MACAddress
    /// Underlay next-hop MACs by underlay address; others go to `underlayGatewayMAC`.
    public var neighborMACs: [UInt32: MACAddress]
    public var underlayGatewayMAC: MACAddress
    public var vnis: [UInt32]
    public var vmPorts: [OverlayVMPort]
    public var services: [OverlayService]
    public var flowCapacity: Int
    public var flowIdleNs: UInt64
    public var endedFlowPolicy: OverlayEndedFlowPolicy
    public var computesUDPChecksum: Bool
    /// Held first packets are dropped (`heldTimedOut`) this long after the first of their pair was held.
    public var heldTimeoutNs: UInt64
    /// Lease slots (leases held at once), 1...`OverlayLimits.leaseCountMax`. A grant finding none free is
    /// refused (`takeRefusedGrants`, `leaseSlotsFull`).
    public var leaseSlotCount: Int = OverlayLimits.leaseCountMax

    public init(underlayIPv4: UInt32, underlayMAC: MACAddress, neighborMACs: [UInt32: MACAddress] = [:],
                underlayGatewayMAC: MACAddress = MACAddress(0xFFFF_FFFF_FFFF), vnis: [UInt32],
                vmPorts: [OverlayVMPort], services: [OverlayService],
                flowCapacity: Int = OverlayDataplaneLimits.flowCapacityDefault, flowIdleNs: UInt64 = 120_000_000_000,
                endedFlowPolicy: OverlayEndedFlowPolicy = .reset, computesUDPChecksum: Bool = false,
                heldTimeoutNs: UInt64 = OverlayDataplaneLimits.heldTimeoutNsDefault) {
        self.underlayIPv4 = underlayIPv4
        self.underlayMAC = underlayMAC
        self.neighborMACs = neighborMACs
        self.underlayGatewayMAC = underlayGatewayMAC
        self.vnis = vnis
        self.vmPorts = vmPorts
        self.services = services
        self.flowCapacity = flowCapacity
        self.flowIdleNs = flowIdleNs
        self.endedFlowPolicy = endedFlowPolicy
        self.computesUDPChecksum = computesUDPChecksum
        self.heldTimeoutNs = heldTimeoutNs
    }

    /// The config's first mistake, if any (the CLI reports it; `OverlayRedirect` traps on one).
    public var problem: String? {
        if vmPorts.count > OverlayDataplaneLimits.vmPortCountMax { return "more than \(OverlayDataplaneLimits.vmPortCountMax) VM ports" }
        if services.count > OverlayDataplaneLimits.serviceCountMax { return "more than \(OverlayDataplaneLimits.serviceCountMax) services" }
        if vnis.isEmpty || vnis.count > OverlayVNISet.capacityMax { return "1...\(OverlayVNISet.capacityMax) VNIs needed" }
        if let vni = vnis.first(where: { $0 > OverlayLimits.vniMax }) { return "VNI \(vni) is wider than 24 bits" }
        if flowCapacity <= 0 || flowCapacity > OverlayFlowTable.capacityMax || flowCapacity.nonzeroBitCount != 1 {
            return "flow capacity \(flowCapacity) is not a power of two in 1...\(OverlayFlowTable.capacityMax)"
        }
        for port in vmPorts where port.role == .producer && !vnis.contains(port.vni) {
            return "producer VM \(port.name): VNI \(port.vni) is not one of the host's VNIs"
        }
        if let long = (vmPorts.map(\.name) + services.map(\.name)).first(where: { $0.utf8.count > OverlayLimits.nameLengthMax }) {
            return "name \(long) is longer than \(OverlayLimits.nameLengthMax) bytes"
        }
        if !(1...OverlayLimits.leaseCountMax).contains(leaseSlotCount) {
            return "lease slot count \(leaseSlotCount) not in 1...\(OverlayLimits.leaseCountMax)"
        }
        if Set(vmPorts.map(\.name)).count != vmPorts.count { return "two VM ports share a name" }
        if Set(services.map(\.name)).count != services.count { return "two services share a name" }
        return nil
    }
}

/// Where a packet goes, or why not.
public enum OverlayVerdict: Equatable, Sendable {
    /// Send `length` bytes from the start of the buffer on `port` (VM ports 0..<n, then the underlay).
    case forward(port: Int, length: Int)
    case drop(OverlayDropReason)
    /// The frame was copied into the hold queue of its consumer VM and service (a lease is being asked
    /// for); the caller's buffer is free again. `takeReleasedFrame` hands it back once the grant is applied.
    case held
}

/// One pair's hold queue (frames in `OverlayRedirect.heldBytes`).
struct HoldQueue {
    /// The (consumer port, service) pair, -1 when free.
    var pair: Int32 = -1
    var count: Int32 = 0
    /// Next frame to hand out once released.
    var next: Int32 = 0
    var releasing = false
    var firstHeldNs: UInt64 = 0
}

/// Counters of the hold queues.
public struct OverlayHoldCounters: Sendable, Equatable {
    /// Frames held, and frames handed back after their grant (then processed like new ones).
    public var held: UInt64 = 0
    public var released: UInt64 = 0
    public init() {}
}

/// Counters of one lease slot (what it carried while it held a lease).
public struct OverlayLeaseCounters: Sendable, Equatable {
    public var flows: UInt64 = 0
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    /// When the grant was applied, and when its first flow's first packet was redirected (CLOCK_MONOTONIC
    /// ns as the caller passes them; 0: not yet). Set off the per-packet path (grant, flow creation).
    public var appliedNs: UInt64 = 0
    public var firstPacketNs: UInt64 = 0
    public init() {}
}

/// Counters of one service on a consumer host.
public struct OverlayServiceCounters: Sendable, Equatable {
    public var flows: UInt64 = 0
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    /// First packets that found no lease (each also an `awaitingLease` or `noLease` drop).
    public var redirectMisses: UInt64 = 0
    public init() {}
}

/// A lease as the data plane holds it: the contract's fields resolved to numbers, checked per packet.
struct LeaseSlot {
    var leaseID: Int64 = 0
    var epoch: Int64 = 0
    var isActive = false
    var consumerPort: Int32 = -1
    var service: Int32 = -1
    var producerIPv4: UInt32 = 0
    var producerPort: UInt16 = 0
    var producerUnderlayIPv4: UInt32 = 0
    var nextHopMAC: UInt64 = 0
    var vni: UInt32 = 0
    var counters = OverlayLeaseCounters()
}

/// A queued TCP reset towards a consumer VM (its flow's lease ended).
public struct OverlayReset: Sendable, Equatable {
    public var vmPort: Int32
    public var vmMAC: UInt64
    public var hostMAC: UInt64
    public var consumerIPv4: UInt32
    public var consumerPort: UInt16
    public var serviceIPv4: UInt32
    public var servicePort: UInt16
    public var sequence: UInt32
}

/// A host's overlay data plane. One owner thread calls everything: packets (`process`) and lease
/// events (`apply`) are serialised there, so an applied end is seen by the very next packet.
/// The packet path allocates nothing, takes no lock and touches no reference-counted object.
public struct OverlayRedirect: ~Copyable {
    public let config: OverlayDataplaneConfig
    public let underlayPort: Int
    let vnis: OverlayVNISet
    let parser = PacketParser()
    let flowHash = FlowHash()
    var parsed = ParsedPacket()
    var decap = OverlayDecapsulated()
    public private(set) var flows: OverlayFlowTable
    public internal(set) var drops = OverlayDropCounters()

    // Ports (POD copies of the config for the packet path).
    let portRoles: UnsafeMutablePointer<UInt8>  // 1 consumer, 2 producer
    let portVMMAC: UnsafeMutablePointer<UInt64>
    let portHostMAC: UnsafeMutablePointer<UInt64>
    let portOverlayIPv4: UnsafeMutablePointer<UInt32>
    let portVNI: UnsafeMutablePointer<UInt32>
    let portCount: Int
    let hasConsumerPorts: Bool
    // Services.
    let services: UnsafeMutablePointer<OverlayService.Key>
    let serviceCount: Int
    let serviceCounts: UnsafeMutablePointer<OverlayServiceCounters>
    /// Per-service counters, in config order (control path: copies).
    public var serviceCounters: [OverlayServiceCounters] { (0..<serviceCount).map { serviceCounts[$0] } }
    // Leases: slots, the current slot per (consumer port, service), and the id -> slot map (control path).
    let slots: UnsafeMutablePointer<LeaseSlot>
    let current: UnsafeMutablePointer<Int32>
    var freeSlots: [Int32]
    var slotByLeaseID: [Int64: Int32] = [:]
    /// The granted leases by slot, for reports (control path only).
    public private(set) var leases: [OverlayLease?]
    /// Requests for leases the consumer lacks: (consumer port, service) pairs, drained by the host.
    var requestQueue: [(Int32, Int32)]
    let requested: UnsafeMutablePointer<Bool>
    /// Pairs whose grant was refused for want of a lease slot: their packets drop `leaseSlotsFull` until
    /// the leasing side re-arms them.
    let slotsFullPair: UnsafeMutablePointer<Bool>
    /// Grants refused for want of a lease slot, for the leasing side to give back (drained by the host;
    /// at most `leaseRequestQueueMax`, more are counted in `refusedGrantsDropped`).
    var refusedGrants: [OverlayLease]
    /// Grants refused because every lease slot was taken, and refusals the queue could not take.
    public private(set) var leaseSlotsFull: UInt64 = 0
    public private(set) var refusedGrantsDropped: UInt64 = 0
    /// Resets to send, drained by the host.
    var resetQueue: [OverlayReset]
    public private(set) var resetsDropped: UInt64 = 0
    public private(set) var eventsIgnored: UInt64 = 0
    var ipID: UInt16 = 0
    /// Consumer frames of the common shape take `OverlayFastParse` instead of `PacketParser` (same result;
    /// off only to measure the difference).
    public var usesFastParse = true
    var sweepCursor = 0
    // Hold queues: `heldPairsMax` queues of `heldPerPairMax` frames, the queue per pair (-1: none).
    let holdQueues: UnsafeMutablePointer<HoldQueue>
    let holdOfPair: UnsafeMutablePointer<Int16>
    let heldBytes: UnsafeMutableRawPointer
    let heldLengths: UnsafeMutablePointer<UInt16>
    /// Per lease slot: the 50 outer header bytes (`outerTemplateStride` apart) with length, IP id, IP
    /// checksum and UDP source port zero, and the IPv4 header's one's-complement sum without those.
    let outerTemplates: UnsafeMutableRawPointer
    let outerSums: UnsafeMutablePointer<UInt32>
    static let outerTemplateStride = 64
    /// `forwardPlain`'s next hop: the first neighbour's MAC (lowest underlay address), else the gateway's.
    let plainNextHopMAC: UInt64
    var holdQueuesInUse = 0
    var holdQueuesReleasing = 0
    public private(set) var holdCounters = OverlayHoldCounters()

    public init(config: OverlayDataplaneConfig) {
        precondition(config.problem == nil, "invalid overlay config: \(config.problem ?? "")")
        self.config = config
        underlayPort = config.vmPorts.count
        vnis = OverlayVNISet(config.vnis)
        flows = OverlayFlowTable(capacity: config.flowCapacity)
        portCount = config.vmPorts.count
        hasConsumerPorts = config.vmPorts.contains { $0.role == .consumer }
        portRoles = .allocate(capacity: max(1, portCount))
        portVMMAC = .allocate(capacity: max(1, portCount))
        portHostMAC = .allocate(capacity: max(1, portCount))
        portOverlayIPv4 = .allocate(capacity: max(1, portCount))
        portVNI = .allocate(capacity: max(1, portCount))
        for (index, port) in config.vmPorts.enumerated() {
            portRoles[index] = port.role == .consumer ? 1 : 2
            portVMMAC[index] = port.vmMAC.rawValue
            portHostMAC[index] = port.hostMAC.rawValue
            portOverlayIPv4[index] = port.overlayIPv4
            portVNI[index] = port.vni
        }
        serviceCount = config.services.count
        services = .allocate(capacity: max(1, serviceCount))
        for (index, service) in config.services.enumerated() {
            services[index] = OverlayService.Key(ipv4: service.ipv4, port: service.port, ipProtocol: service.ipProtocol)
        }
        serviceCounts = .allocate(capacity: max(1, serviceCount))
        serviceCounts.initialize(repeating: OverlayServiceCounters(), count: max(1, serviceCount))
        slots = .allocate(capacity: OverlayLimits.leaseCountMax)
        slots.initialize(repeating: LeaseSlot(), count: OverlayLimits.leaseCountMax)
        let pairs = max(1, portCount * serviceCount)
        current = .allocate(capacity: pairs)
        current.initialize(repeating: -1, count: pairs)
        requested = .allocate(capacity: pairs)
        requested.initialize(repeating: false, count: pairs)
        freeSlots = (0..<Int32(config.leaseSlotCount)).reversed()
        refusedGrants = []
        refusedGrants.reserveCapacity(OverlayDataplaneLimits.leaseRequestQueueMax)
        slotsFullPair = .allocate(capacity: pairs)
        slotsFullPair.initialize(repeating: false, count: pairs)
        leases = Array(repeating: nil, count: OverlayLimits.leaseCountMax)
        requestQueue = []
        requestQueue.reserveCapacity(OverlayDataplaneLimits.leaseRequestQueueMax)
        resetQueue = []
        resetQueue.reserveCapacity(OverlayDataplaneLimits.resetQueueMax)
        holdQueues = .allocate(capacity: OverlayDataplaneLimits.heldPairsMax)
        holdQueues.initialize(repeating: HoldQueue(), count: OverlayDataplaneLimits.heldPairsMax)
        holdOfPair = .allocate(capacity: pairs)
        holdOfPair.initialize(repeating: -1, count: pairs)
        let heldFrames = OverlayDataplaneLimits.heldPairsMax * OverlayDataplaneLimits.heldPerPairMax
        heldBytes = .allocate(byteCount: heldFrames * OverlayDataplaneLimits.heldFrameBytesMax, alignment: 64)
        heldLengths = .allocate(capacity: heldFrames)
        heldLengths.initialize(repeating: 0, count: heldFrames)
        outerTemplates = .allocate(byteCount: OverlayLimits.leaseCountMax * Self.outerTemplateStride, alignment: 64)
        outerTemplates.initializeMemory(as: UInt8.self, repeating: 0,
                                        count: OverlayLimits.leaseCountMax * Self.outerTemplateStride)
        outerSums = .allocate(capacity: OverlayLimits.leaseCountMax)
        outerSums.initialize(repeating: 0, count: OverlayLimits.leaseCountMax)
        plainNextHopMAC = (config.neighborMACs.min { $0.key < $1.key }?.value ?? config.underlayGatewayMAC).rawValue
    }

    deinit {
        portRoles.deallocate()
        portVMMAC.deallocate()
        portHostMAC.deallocate()
        portOverlayIPv4.deallocate()
        portVNI.deallocate()
        services.deallocate()
        serviceCounts.deallocate()
        slots.deallocate()
        current.deallocate()
        requested.deallocate()
        slotsFullPair.deallocate()
        holdQueues.deallocate()
        holdOfPair.deallocate()
        heldBytes.deallocate()
        heldLengths.deallocate()
        outerTemplates.deallocate()
        outerSums.deallocate()
    }

    // MARK: Lease events (control path, on the owner thread)

    /// Applies one event from the leasing side. A grant for a consumer VM or service this host does
    /// not have is ignored (counted); a grant older than the current one for the pair is ignored; a
    /// newer one replaces it (the old one ends as `producerMoved`). An end removes the redirect and,
    /// in the same call, cuts every flow of the lease off (their per-packet check fails from now on)
    /// and, under `.reset`, queues a RST for each TCP flow.
    public mutating func apply(_ event: OverlayLeaseEvent, nowNs: UInt64 = 0) {
        switch event {
        case .granted(let lease):
            guard let port = config.vmPorts.firstIndex(where: { $0.name == lease.consumerVM && $0.role == .consumer }),
                  let service = config.services.firstIndex(where: { $0.name == lease.service }),
                  vnis.contains(lease.vni)
            else { eventsIgnored &+= 1; return }
            let pair = port * serviceCount + service
            let existing = current[pair]
            if existing >= 0 {
                if slots[Int(existing)].epoch >= lease.epoch { eventsIgnored &+= 1; return }
                end(slot: existing)
            }
            if let old = slotByLeaseID[lease.leaseID] { end(slot: old) }  // same etcd lease, new grant
            guard let slot = freeSlots.popLast() else {
                // No slot: refuse the grant (the leasing side gives it back, so the producer's capacity is
                // not held for nothing) and drop what the pair holds.
                leaseSlotsFull &+= 1
                if refusedGrants.count < OverlayDataplaneLimits.leaseRequestQueueMax {
                    refusedGrants.append(lease)
                } else {
                    refusedGrantsDropped &+= 1
                }
                slotsFullPair[pair] = true
                let hold = Int(holdOfPair[pair])
                if hold >= 0, !holdQueues[hold].releasing { freeHoldQueue(hold, dropping: .leaseSlotsFull) }
                return
            }
            let nextHop = config.neighborMACs[lease.producerUnderlayIPv4] ?? config.underlayGatewayMAC
            slots[Int(slot)] = LeaseSlot(leaseID: lease.leaseID, epoch: lease.epoch, isActive: true,
                                         consumerPort: Int32(port), service: Int32(service),
                                         producerIPv4: lease.producerOverlayIPv4, producerPort: lease.producerPort,
                                         producerUnderlayIPv4: lease.producerUnderlayIPv4,
                                         nextHopMAC: nextHop.rawValue, vni: lease.vni)
            slots[Int(slot)].counters.appliedNs = nowNs
            let template = outerTemplates + Int(slot) * Self.outerTemplateStride
            let header = OverlayUnderlayHeader(sourceMAC: config.underlayMAC, destinationMAC: nextHop,
                                               sourceIPv4: config.underlayIPv4,
                                               destinationIPv4: lease.producerUnderlayIPv4)
            OverlayVXLAN.writeOuter(template, innerLength: -36, vni: lease.vni, sourcePort: 0, header: header, ipID: 0)
            store16(template, 24, 0)
            store16(template, 38, 0)
            outerSums[Int(slot)] = 0x4500 &+ 0x4000 &+ (UInt32(header.ttl) << 8 | UInt32(IPProtocol.udp))
                &+ header.sourceIPv4 >> 16 &+ header.sourceIPv4 & 0xFFFF
                &+ header.destinationIPv4 >> 16 &+ header.destinationIPv4 & 0xFFFF
            leases[Int(slot)] = lease
            slotByLeaseID[lease.leaseID] = slot
            current[pair] = slot
            requested[pair] = false
            slotsFullPair[pair] = false
            let hold = Int(holdOfPair[pair])
            if hold >= 0, !holdQueues[hold].releasing {
                holdQueues[hold].releasing = true
                holdQueuesReleasing += 1
            }
        case .ended(let leaseID, let epoch, _):
            guard let slot = slotByLeaseID[leaseID], slots[Int(slot)].epoch <= epoch else { eventsIgnored &+= 1; return }
            end(slot: slot)
        }
    }

    /// Ends the lease in `slot`: the redirect goes, flows are cut (epoch check), resets queued.
    mutating func end(slot: Int32) {
        let lease = slots[Int(slot)]
        precondition(lease.isActive, "ending a lease slot twice")
        slots[Int(slot)].isActive = false
        let pair = Int(lease.consumerPort) * serviceCount + Int(lease.service)
        if current[pair] == slot { current[pair] = -1 }
        slotByLeaseID[lease.leaseID] = nil
        leases[Int(slot)] = nil
        freeSlots.append(slot)
        guard config.endedFlowPolicy == .reset else { return }
        for index in 0..<Int32(flows.highWater) where flows.isInUse(index) {
            let flow = flows.flow(index)
            guard flow.pointee.kind == .consumerForward, flow.pointee.leaseSlot == slot,
                  flow.pointee.leaseID == lease.leaseID, flow.pointee.epoch == lease.epoch, flow.pointee.isTCP
            else { continue }
            guard resetQueue.count < OverlayDataplaneLimits.resetQueueMax else { resetsDropped &+= 1; continue }
            resetQueue.append(OverlayReset(
                vmPort: flow.pointee.vmPort, vmMAC: flow.pointee.vmMAC, hostMAC: portHostMAC[Int(flow.pointee.vmPort)],
                consumerIPv4: UInt32(truncatingIfNeeded: flow.pointee.forwardKey.addresses >> 32),
                consumerPort: UInt16(truncatingIfNeeded: flow.pointee.forwardKey.rest >> 48),
                serviceIPv4: flow.pointee.serviceIPv4, servicePort: flow.pointee.servicePort,
                sequence: flow.pointee.consumerAck))
        }
    }

    /// Lets the next packet of `consumerVM` to `service` ask for a lease again (the last request failed).
    /// Ignored (false) for names this host does not have.
    @discardableResult
    public mutating func rearmLeaseRequest(consumerVM: String, service: String) -> Bool {
        guard let port = config.vmPorts.firstIndex(where: { $0.name == consumerVM && $0.role == .consumer }),
              let service = config.services.firstIndex(where: { $0.name == service })
        else { return false }
        let pair = port * serviceCount + service
        requested[pair] = false
        slotsFullPair[pair] = false
        let hold = Int(holdOfPair[pair])
        if hold >= 0, !holdQueues[hold].releasing { freeHoldQueue(hold, dropping: .leaseAskFailed) }
        return true
    }

    // MARK: Hold queues (first packets while a lease is asked for)

    /// Copies a frame into `pair`'s hold queue (made on its first frame). False if it cannot be held.
    mutating func hold(_ base: UnsafeRawPointer, length: Int, pair: Int, nowNs: UInt64) -> Bool {
        guard length <= OverlayDataplaneLimits.heldFrameBytesMax else { return false }
        var hold = Int(holdOfPair[pair])
        if hold < 0 {
            guard holdQueuesInUse < OverlayDataplaneLimits.heldPairsMax else { return false }
            hold = 0
            while holdQueues[hold].pair >= 0 { hold += 1 }
            holdQueues[hold] = HoldQueue(pair: Int32(pair), count: 0, next: 0, releasing: false, firstHeldNs: nowNs)
            holdOfPair[pair] = Int16(hold)
            holdQueuesInUse += 1
        }
        let queue = holdQueues + hold
        guard !queue.pointee.releasing, Int(queue.pointee.count) < OverlayDataplaneLimits.heldPerPairMax else { return false }
        let frame = hold * OverlayDataplaneLimits.heldPerPairMax + Int(queue.pointee.count)
        memcpy(heldBytes + frame * OverlayDataplaneLimits.heldFrameBytesMax, base, length)
        heldLengths[frame] = UInt16(length)
        queue.pointee.count += 1
        holdCounters.held &+= 1
        return true
    }

    /// Frees hold queue `hold`, counting its frames not yet handed out as `reason` drops.
    mutating func freeHoldQueue(_ hold: Int, dropping reason: OverlayDropReason) {
        let queue = holdQueues[hold]
        precondition(queue.pair >= 0, "freeing a free hold queue")
        drops.add(reason, UInt64(queue.count - queue.next))
        if queue.releasing { holdQueuesReleasing -= 1 }
        holdOfPair[Int(queue.pair)] = -1
        holdQueues[hold] = HoldQueue()
        holdQueuesInUse -= 1
    }

    /// True if held frames of granted pairs wait to be handed back (`takeReleasedFrame`).
    public var hasReleasedFrames: Bool { holdQueuesReleasing > 0 }

    /// Copies the next held frame of a pair whose grant was applied into `buffer` and says which VM port
    /// it came from; the caller then passes it to `process` like a frame just received. Nil when none wait.
    public mutating func takeReleasedFrame(into buffer: UnsafeMutableRawBufferPointer) -> (port: Int, length: Int)? {
        guard holdQueuesReleasing > 0 else { return nil }
        for hold in 0..<OverlayDataplaneLimits.heldPairsMax where holdQueues[hold].pair >= 0 && holdQueues[hold].releasing {
            let queue = holdQueues + hold
            if queue.pointee.next == queue.pointee.count {
                freeHoldQueue(hold, dropping: .heldTimedOut)  // all handed out: counts zero drops
                continue
            }
            let frame = hold * OverlayDataplaneLimits.heldPerPairMax + Int(queue.pointee.next)
            let length = Int(heldLengths[frame])
            precondition(length <= buffer.count, "held frame longer than the buffer it goes back into")
            memcpy(buffer.baseAddress!, heldBytes + frame * OverlayDataplaneLimits.heldFrameBytesMax, length)
            queue.pointee.next += 1
            holdCounters.released &+= 1
            let port = Int(queue.pointee.pair) / serviceCount
            if queue.pointee.next == queue.pointee.count { freeHoldQueue(hold, dropping: .heldTimedOut) }
            return (port, length)
        }
        return nil
    }

    /// Drops the frames of hold queues older than `heldTimeoutNs` (no grant came).
    mutating func expireHoldQueues(nowNs: UInt64) {
        for hold in 0..<OverlayDataplaneLimits.heldPairsMax where holdQueues[hold].pair >= 0 && !holdQueues[hold].releasing {
            if nowNs > holdQueues[hold].firstHeldNs, nowNs - holdQueues[hold].firstHeldNs > config.heldTimeoutNs {
                freeHoldQueue(hold, dropping: .heldTimedOut)
            }
        }
    }

    /// Takes the queued lease requests as (consumer VM, service) names.
    public mutating func takeLeaseRequests() -> [(consumerVM: String, service: String)] {
        guard !requestQueue.isEmpty else { return [] }
        let names: [(consumerVM: String, service: String)] = requestQueue.map {
            (consumerVM: config.vmPorts[Int($0.0)].name, service: config.services[Int($0.1)].name)
        }
        requestQueue.removeAll(keepingCapacity: true)
        return names
    }

    /// Takes the grants refused for want of a lease slot (the leasing side gives them back, then re-arms
    /// their pairs).
    public mutating func takeRefusedGrants() -> [OverlayLease] {
        guard !refusedGrants.isEmpty else { return [] }
        let taken = refusedGrants
        refusedGrants.removeAll(keepingCapacity: true)
        return taken
    }

    /// True if resets wait; `takeReset` hands them out one at a time (no allocation).
    public var hasResets: Bool { !resetQueue.isEmpty }
    public mutating func takeReset() -> OverlayReset? { resetQueue.popLast() }

    /// The counters of the lease in `slot` (control path: reports).
    public func leaseCounters(slot: Int) -> OverlayLeaseCounters { slots[slot].counters }

    /// Removes up to `budget` flows idle longer than `flowIdleNs`, continuing where the last call
    /// stopped. Bounded work per call: the host calls it once per loop turn.
    public mutating func sweep(nowNs: UInt64, budget: Int = 64) {
        if holdQueuesInUse > holdQueuesReleasing { expireHoldQueues(nowNs: nowNs) }
        let capacity = flows.capacity
        for _ in 0..<min(budget, capacity) {
            let index = Int32(sweepCursor)
            sweepCursor = (sweepCursor + 1) & (capacity - 1)
            guard flows.isInUse(index) else { continue }
            let flow = flows.flow(index)
            if nowNs &- flow.pointee.lastSeenNs > config.flowIdleNs && nowNs > flow.pointee.lastSeenNs {
                flows.remove(index)
            }
        }
    }

    // MARK: The packet path

    /// A hint for burst loops: for a frame that will be passed to `process` a few frames from now,
    /// starts pulling its flow's index slot into cache. Reads only the frame's fixed header bytes
    /// (untagged Ethernet, IPv4, TCP/UDP from a consumer VM port); any other frame is ignored. Never
    /// changes state or results.
    @inline(__always)
    public func prefetch(_ frame: UnsafeRawPointer, length: Int, port: Int) {
        guard port < portCount, portRoles[port] == 1, length >= 54, load16(frame, 12) == EtherType.ipv4 else { return }
        let versionIHL = frame.load(fromByteOffset: 14, as: UInt8.self)
        let ipProtocol = frame.load(fromByteOffset: 23, as: UInt8.self)
        let l4 = 14 + Int(versionIHL & 0x0F) * 4
        guard versionIHL >> 4 == 4, l4 + 4 <= length else { return }
        flows.prefetch(OverlayFlowKey(kind: .consumerForward, source: load32(frame, 26), destination: load32(frame, 30),
                                      sourcePort: load16(frame, l4), destinationPort: load16(frame, l4 + 2),
                                      ipProtocol: ipProtocol, vni: UInt32(port)))
    }

    /// Decides one frame received on `port` (held in `buffer[0..<length]`, `buffer` being the whole
    /// writable buffer): rewrites/encapsulates/decapsulates in place and says where the result goes.
    public mutating func process(_ buffer: UnsafeMutableRawBufferPointer, length: Int, port: Int,
                                 nowNs: UInt64) -> OverlayVerdict {
        precondition(length >= 0 && length <= buffer.count, "frame longer than its buffer")
        precondition(port >= 0 && port <= underlayPort, "port out of range")
        let frame = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        if port < underlayPort, usesFastParse, portRoles[port] == 1,
           OverlayFastParse.parse(frame.baseAddress!, length: length, vxlanPort: parser.vxlanPort, into: &parsed) {
            return count(fromConsumer(buffer, length: length, port: port, nowNs: nowNs))
        }
        if let reason = parser.parse(PacketBytes(frame), linkType: .ethernet, into: &parsed) {
            let verdict = OverlayVerdict.drop(reason == .badVXLANFlags ? .badVXLANFlags : .malformed)
            return count(verdict)
        }
        if port == underlayPort { return count(fromUnderlay(buffer, frame: frame, nowNs: nowNs)) }
        let headers = parsed.outer
        guard headers.ipVersion == 4, headers.flags.contains(.ports), !headers.flags.contains(.fragment),
              headers.ipProtocol == IPProtocol.tcp || headers.ipProtocol == IPProtocol.udp,
              headers.l2Offset == 0, headers.vlanCount == 0
        else { return count(.drop(.notOverlay)) }
        if portRoles[port] == 1 { return count(fromConsumer(buffer, length: length, port: port, nowNs: nowNs)) }
        return count(fromProducer(buffer, length: length, port: port, nowNs: nowNs))
    }

    /// The baseline the redirect is measured against (`OverlayHostConfiguration.forwardOnly`, bench
    /// only): the same parse (`OverlayFastParse` for VM frames when `usesFastParse`, as the redirect), then a consumer VM's frame goes out on the underlay with its MACs set to
    /// (gateway, underlay) and nothing else changed; an underlay frame goes to VM port 0 the same way.
    /// No flow, lease or service state is touched.
    public mutating func forwardPlain(_ buffer: UnsafeMutableRawBufferPointer, length: Int, port: Int) -> OverlayVerdict {
        precondition(length >= 0 && length <= buffer.count, "frame longer than its buffer")
        precondition(port >= 0 && port <= underlayPort, "port out of range")
        let frame = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        let fast = port < underlayPort && usesFastParse
            && OverlayFastParse.parse(frame.baseAddress!, length: length, vxlanPort: parser.vxlanPort, into: &parsed)
        if !fast, parser.parse(PacketBytes(frame), linkType: .ethernet, into: &parsed) != nil { return count(.drop(.malformed)) }
        let base = buffer.baseAddress!
        if port == underlayPort {
            guard portCount > 0 else { return count(.drop(.notOverlay)) }
            store48(base, 0, portVMMAC[0])
            store48(base, 6, portHostMAC[0])
            return .forward(port: 0, length: length)
        }
        store48(base, 0, plainNextHopMAC)
        store48(base, 6, config.underlayMAC.rawValue)
        return .forward(port: underlayPort, length: length)
    }

    @inline(__always) mutating func count(_ verdict: OverlayVerdict) -> OverlayVerdict {
        if case .drop(let reason) = verdict { drops.add(reason) }
        return verdict
    }

    /// True if the flow's lease slot still holds the lease (id and epoch) the flow was bound under.
    /// One packet of a leased flow (either direction on the consumer host): the flow's, its lease's and
    /// its service's counters.
    @inline(__always) func countLeased(_ flow: UnsafeMutablePointer<OverlayFlow>, bytes: Int, nowNs: UInt64) {
        let slot = slots + Int(flow.pointee.leaseSlot)
        flow.pointee.packets &+= 1
        flow.pointee.bytes &+= UInt64(bytes)
        flow.pointee.lastSeenNs = nowNs
        slot.pointee.counters.packets &+= 1
        slot.pointee.counters.bytes &+= UInt64(bytes)
        serviceCounts[Int(flow.pointee.serviceIndex)].packets &+= 1
        serviceCounts[Int(flow.pointee.serviceIndex)].bytes &+= UInt64(bytes)
    }

    @inline(__always) func isLive(_ flow: UnsafeMutablePointer<OverlayFlow>) -> Bool {
        let slot = slots + Int(flow.pointee.leaseSlot)
        return slot.pointee.isActive && slot.pointee.leaseID == flow.pointee.leaseID
            && slot.pointee.epoch == flow.pointee.epoch
    }

    /// Consumer VM -> service address: find or make the flow, check its lease, rewrite, encapsulate.
    mutating func fromConsumer(_ buffer: UnsafeMutableRawBufferPointer, length: Int, port: Int,
                               nowNs: UInt64) -> OverlayVerdict {
        let headers = parsed.outer
        let source = headers.sourceAddress.ipv4 ?? 0
        let destination = headers.destinationAddress.ipv4 ?? 0
        let key = OverlayFlowKey(kind: .consumerForward, source: source, destination: destination,
                                 sourcePort: headers.sourcePort, destinationPort: headers.destinationPort,
                                 ipProtocol: headers.ipProtocol, vni: UInt32(port))
        var index = flows.find(key)
        if index >= 0, !isLive(flows.flow(index)), config.endedFlowPolicy == .reset {
            // A cut flow stays cut; only a new connection on the same ports (a bare SYN) replaces it.
            guard headers.ipProtocol == IPProtocol.tcp, headers.tcpFlags & 0x12 == 0x02 else { return .drop(.leaseEnded) }
            flows.remove(index)
            index = -1
        }
        if index >= 0, !isLive(flows.flow(index)) {
            let flow = flows.flow(index)
            let pair = Int(port) * serviceCount + Int(flow.pointee.serviceIndex)
            let slot = current[pair]
            guard slot >= 0 else { return .drop(.leaseEnded) }
            let lease = slots[Int(slot)]
            let reply = OverlayFlowKey(kind: .consumerReply, source: lease.producerIPv4, destination: source,
                                       sourcePort: lease.producerPort, destinationPort: headers.sourcePort,
                                       ipProtocol: headers.ipProtocol)
            guard flows.rekeyReply(index, to: reply) else { return .drop(.flowTableFull) }
            bind(flow, slot: slot)
            slots[Int(slot)].counters.flows &+= 1
        }
        if index < 0 {
            var service = -1
            for candidate in 0..<serviceCount where services[candidate].matches(destination, headers.destinationPort,
                                                                                    headers.ipProtocol) {
                service = candidate
                break
            }
            guard service >= 0 else { return .drop(.notOverlay) }
            let pair = port * serviceCount + service
            let slot = current[pair]
            guard slot >= 0 else {
                serviceCounts[service].redirectMisses &+= 1
                if slotsFullPair[pair] { return .drop(.leaseSlotsFull) }
                if !requested[pair], requestQueue.count < OverlayDataplaneLimits.leaseRequestQueueMax {
                    requested[pair] = true
                    requestQueue.append((Int32(port), Int32(service)))
                }
                guard requested[pair] else { return .drop(.noLease) }
                return hold(buffer.baseAddress!, length: length, pair: pair, nowNs: nowNs) ? .held : .drop(.awaitingLease)
            }
            let lease = slots[Int(slot)]
            let reply = OverlayFlowKey(kind: .consumerReply, source: lease.producerIPv4, destination: source,
                                       sourcePort: lease.producerPort, destinationPort: headers.sourcePort,
                                       ipProtocol: headers.ipProtocol)
            var flow = OverlayFlow(forwardKey: key, replyKey: reply, kind: .consumerForward)
            flow.serviceIndex = Int32(service)
            flow.vmPort = Int32(port)
            flow.vmMAC = headers.sourceMAC.rawValue
            flow.serviceIPv4 = destination
            flow.servicePort = headers.destinationPort
            flow.isTCP = headers.ipProtocol == IPProtocol.tcp
            flow.entropyPort = OverlayVXLAN.sourcePort(flowHash: flowHash.hash(headers))
            guard let inserted = flows.insert(flow) else { return .drop(.flowTableFull) }
            index = inserted
            bind(flows.flow(index), slot: slot)
            if slots[Int(slot)].counters.flows == 0 { slots[Int(slot)].counters.firstPacketNs = nowNs }
            slots[Int(slot)].counters.flows &+= 1
            serviceCounts[service].flows &+= 1
        }
        let flow = flows.flow(index)
        countLeased(flow, bytes: length, nowNs: nowNs)
        let base = buffer.baseAddress!
        let l3 = Int(headers.l3Offset)
        let l4 = Int(headers.l4Offset)
        if flow.pointee.isTCP, load16(base, l4 + 12) & 0x0010 != 0 { flow.pointee.consumerAck = load32(base, l4 + 8) }
        OverlayRewrite.set(base, l3: l3, l4: l4, ipProtocol: headers.ipProtocol, isDestination: true,
                           ipv4: flow.pointee.producerIPv4, port: flow.pointee.producerPort)
        if config.computesUDPChecksum {
            return encapsulate(buffer, length: length, vni: flow.pointee.vni, entropyPort: flow.pointee.entropyPort,
                               destinationIPv4: flow.pointee.peerUnderlayIPv4,
                               destinationMAC: slots[Int(flow.pointee.leaseSlot)].nextHopMAC)
        }
        return encapsulate(buffer, length: length, slot: Int(flow.pointee.leaseSlot), entropyPort: flow.pointee.entropyPort)
    }

    /// Encapsulation from the lease slot's precomputed outer headers: copy the 50 bytes, patch lengths,
    /// IP id, IP checksum (the slot's constant sum plus those two words) and the UDP source port. The
    /// same bytes as `OverlayVXLAN.encapsulate` with a zero UDP checksum.
    @inline(__always)
    mutating func encapsulate(_ buffer: UnsafeMutableRawBufferPointer, length: Int, slot: Int,
                              entropyPort: UInt16) -> OverlayVerdict {
        guard length <= buffer.count - OverlayVXLAN.outerHeaderBytes, length + 36 <= 0xFFFF else { return .drop(.tooLarge) }
        ipID &+= 1
        let base = buffer.baseAddress!
        memmove(base + OverlayVXLAN.outerHeaderBytes, base, length)
        memcpy(base, outerTemplates + slot * Self.outerTemplateStride, OverlayVXLAN.outerHeaderBytes)
        let totalLength = UInt16(truncatingIfNeeded: length + 36)
        store16(base, 16, totalLength)
        store16(base, 18, ipID)
        store16(base, 24, ~OverlayVXLAN.fold(outerSums[slot] &+ UInt32(totalLength) &+ UInt32(ipID)))
        store16(base, 34, entropyPort)
        store16(base, 38, UInt16(truncatingIfNeeded: length + 16))
        return .forward(port: underlayPort, length: length + OverlayVXLAN.outerHeaderBytes)
    }

    /// Binds a flow to the lease in `slot` (first packet, or a move).
    @inline(__always) func bind(_ flow: UnsafeMutablePointer<OverlayFlow>, slot: Int32) {
        let lease = slots[Int(slot)]
        flow.pointee.leaseSlot = slot
        flow.pointee.leaseID = lease.leaseID
        flow.pointee.epoch = lease.epoch
        flow.pointee.producerIPv4 = lease.producerIPv4
        flow.pointee.producerPort = lease.producerPort
        flow.pointee.peerUnderlayIPv4 = lease.producerUnderlayIPv4
        flow.pointee.vni = lease.vni
    }

    @inline(__always)
    mutating func encapsulate(_ buffer: UnsafeMutableRawBufferPointer, length: Int, vni: UInt32, entropyPort: UInt16,
                              destinationIPv4: UInt32, destinationMAC: UInt64) -> OverlayVerdict {
        ipID &+= 1
        let header = OverlayUnderlayHeader(sourceMAC: config.underlayMAC, destinationMAC: MACAddress(destinationMAC),
                                           sourceIPv4: config.underlayIPv4, destinationIPv4: destinationIPv4,
                                           computesUDPChecksum: config.computesUDPChecksum)
        guard let encapsulated = OverlayVXLAN.encapsulate(buffer, innerLength: length, vni: vni, sourcePort: entropyPort,
                                                          header: header, ipID: ipID)
        else { return .drop(.tooLarge) }
        return .forward(port: underlayPort, length: encapsulated)
    }

    /// Producer VM -> consumer: the reply of a flow the producer host learned from the underlay.
    mutating func fromProducer(_ buffer: UnsafeMutableRawBufferPointer, length: Int, port: Int,
                               nowNs: UInt64) -> OverlayVerdict {
        let headers = parsed.outer
        let source = headers.sourceAddress.ipv4 ?? 0
        guard source == portOverlayIPv4[port] else { return .drop(.unknownVM) }
        let key = OverlayFlowKey(kind: .producerReply, source: source, destination: headers.destinationAddress.ipv4 ?? 0,
                                 sourcePort: headers.sourcePort, destinationPort: headers.destinationPort,
                                 ipProtocol: headers.ipProtocol, vni: portVNI[port])
        let index = flows.find(key)
        guard index >= 0 else { return .drop(.noFlow) }
        let flow = flows.flow(index)
        flow.pointee.packets &+= 1
        flow.pointee.bytes &+= UInt64(length)
        flow.pointee.lastSeenNs = nowNs
        return encapsulate(buffer, length: length, vni: flow.pointee.vni, entropyPort: flow.pointee.entropyPort,
                           destinationIPv4: flow.pointee.peerUnderlayIPv4, destinationMAC: flow.pointee.peerMAC)
    }

    /// Underlay -> a local producer VM (producer role) or a consumer VM (a reply, consumer role).
    mutating func fromUnderlay(_ buffer: UnsafeMutableRawBufferPointer, frame: UnsafeRawBufferPointer,
                               nowNs: UInt64) -> OverlayVerdict {
        if let reason = OverlayVXLAN.decapsulate(frame, packet: parsed, localIPv4: config.underlayIPv4, vnis: vnis,
                                                 into: &decap) {
            return .drop(reason)
        }
        let inner = parsed.inner
        let source = inner.sourceAddress.ipv4 ?? 0
        let destination = inner.destinationAddress.ipv4 ?? 0
        let innerOffset = decap.innerOffset
        let innerLength = decap.innerLength
        let l3 = Int(inner.l3Offset) - innerOffset
        let l4 = Int(inner.l4Offset) - innerOffset
        // Producer role: the inner destination is one of our producer VMs on this VNI.
        var producerPort = -1
        for candidate in 0..<portCount where portRoles[candidate] == 2 && portOverlayIPv4[candidate] == destination
            && portVNI[candidate] == decap.vni {
            producerPort = candidate
            break
        }
        let base = buffer.baseAddress!
        if producerPort >= 0 {
            let replyKey = OverlayFlowKey(kind: .producerReply, source: destination, destination: source,
                                          sourcePort: inner.destinationPort, destinationPort: inner.sourcePort,
                                          ipProtocol: inner.ipProtocol, vni: decap.vni)
            var index = flows.find(replyKey)
            if index < 0 {
                let inboundKey = OverlayFlowKey(kind: .producerInbound, source: source, destination: destination,
                                                sourcePort: inner.sourcePort, destinationPort: inner.destinationPort,
                                                ipProtocol: inner.ipProtocol, vni: decap.vni)
                var flow = OverlayFlow(forwardKey: inboundKey, replyKey: replyKey, kind: .producerReply)
                flow.vmPort = Int32(producerPort)
                flow.vni = decap.vni
                flow.entropyPort = decap.outerSourcePort
                flow.isTCP = inner.ipProtocol == IPProtocol.tcp
                guard let inserted = flows.insert(flow) else { return .drop(.flowTableFull) }
                index = inserted
            }
            let flow = flows.flow(index)
            flow.pointee.peerUnderlayIPv4 = decap.outerSourceIPv4
            flow.pointee.peerMAC = decap.outerSourceMAC.rawValue
            flow.pointee.packets &+= 1
            flow.pointee.bytes &+= UInt64(innerLength)
            flow.pointee.lastSeenNs = nowNs
            memmove(base, base + innerOffset, innerLength)
            store48(base, 0, portVMMAC[producerPort])
            store48(base, 6, portHostMAC[producerPort])
            return .forward(port: producerPort, length: innerLength)
        }
        // Consumer role: a reply of one of our redirected flows.
        let key = OverlayFlowKey(kind: .consumerReply, source: source, destination: destination,
                                 sourcePort: inner.sourcePort, destinationPort: inner.destinationPort,
                                 ipProtocol: inner.ipProtocol)
        let index = flows.find(key)
        guard index >= 0 else { return .drop(hasConsumerPorts ? .noFlow : .unknownProducerVM) }
        let flow = flows.flow(index)
        guard flow.pointee.vni == decap.vni, flow.pointee.peerUnderlayIPv4 == decap.outerSourceIPv4 else {
            return .drop(.noFlow)
        }
        guard isLive(flow) else { return .drop(.leaseEnded) }
        countLeased(flow, bytes: innerLength, nowNs: nowNs)
        memmove(base, base + innerOffset, innerLength)
        let vmPort = Int(flow.pointee.vmPort)
        store48(base, 0, flow.pointee.vmMAC)
        store48(base, 6, portHostMAC[vmPort])
        OverlayRewrite.set(base, l3: l3, l4: l4, ipProtocol: inner.ipProtocol, isDestination: false,
                           ipv4: flow.pointee.serviceIPv4, port: flow.pointee.servicePort)
        return .forward(port: vmPort, length: innerLength)
    }
}

extension OverlayService {
    /// The packet path's copy of a service address.
    struct Key {
        var ipv4: UInt32
        var port: UInt16
        var ipProtocol: UInt8
        @inline(__always) func matches(_ address: UInt32, _ port: UInt16, _ ipProtocol: UInt8) -> Bool {
            self.ipv4 == address && self.port == port && self.ipProtocol == ipProtocol
        }
    }
}

/// Address and port rewrites with RFC 1624 checksum updates (IPv4 header and TCP/UDP checksum; a
/// zero UDP checksum stays zero). Offsets are from `base`; the caller parsed the headers there.
enum OverlayRewrite {
    @inline(__always)
    static func set(_ base: UnsafeMutableRawPointer, l3: Int, l4: Int, ipProtocol: UInt8, isDestination: Bool,
                    ipv4: UInt32, port: UInt16) {
        let addressOffset = l3 + (isDestination ? 16 : 12)
        let portOffset = l4 + (isDestination ? 2 : 0)
        let checksumOffset = l4 + (ipProtocol == IPProtocol.tcp ? 16 : 6)
        let oldHigh = load16(base, addressOffset)
        let oldLow = load16(base, addressOffset + 2)
        let oldPort = load16(base, portOffset)
        let newHigh = UInt16(truncatingIfNeeded: ipv4 >> 16)
        let newLow = UInt16(truncatingIfNeeded: ipv4)
        var ipChecksum = load16(base, l3 + 10)
        ipChecksum = Checksum.updated(ipChecksum, oldWord: oldHigh, newWord: newHigh)
        ipChecksum = Checksum.updated(ipChecksum, oldWord: oldLow, newWord: newLow)
        store16(base, l3 + 10, ipChecksum)
        store16(base, addressOffset, newHigh)
        store16(base, addressOffset + 2, newLow)
        store16(base, portOffset, port)
        var l4Checksum = load16(base, checksumOffset)
        guard ipProtocol == IPProtocol.tcp || l4Checksum != 0 else { return }
        l4Checksum = Checksum.updated(l4Checksum, oldWord: oldHigh, newWord: newHigh)
        l4Checksum = Checksum.updated(l4Checksum, oldWord: oldLow, newWord: newLow)
        l4Checksum = Checksum.updated(l4Checksum, oldWord: oldPort, newWord: port)
        if ipProtocol == IPProtocol.udp && l4Checksum == 0 { l4Checksum = 0xFFFF }
        store16(base, checksumOffset, l4Checksum)
    }
}
