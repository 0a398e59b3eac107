// Path: Sources/SluiceOverlay/OverlayLease.swift — what the leasing side (etcd) tells the data plane:
// a consumer's lease of one producer's capacity, and the events that grant and end it.
// Shared contract between the leasing agents (OverlayLeasing*.swift) and the redirect path
// (OverlayRedirect*.swift): change it only together with both.

/// Every bound of the overlay, one place.
public enum OverlayLimits {
    /// Longest service, VM or host name (an etcd key component and a metrics label).
    public static let nameLengthMax = 64
    /// Most leases one consumer host holds at once (its redirect table's bound).
    public static let leaseCountMax = 4096
    /// VXLAN network identifiers are 24 bits.
    public static let vniMax: UInt32 = (1 << 24) - 1
}

/// A consumer VM's lease of one unit of a producer VM's capacity for a service.
///
/// `leaseID` is the etcd lease that carries it: when etcd expires or revokes that lease the grant is
/// gone, and so must be every redirect and flow that uses it. `epoch` is the etcd revision at which
/// this grant was written; a later grant of the same (consumer, service) always has a higher epoch, so
/// the data plane can refuse state from an older grant.
public struct OverlayLease: Sendable, Equatable, Hashable {
    public var leaseID: Int64
    public var epoch: Int64
    public var service: String
    public var consumerVM: String
    public var producerVM: String
    public var producerHost: String
    /// The producer host's underlay address (IPv4, host byte order): where VXLAN packets go.
    public var producerUnderlayIPv4: UInt32
    /// The producer VM's address on the overlay (IPv4, host byte order): what the redirect rewrites to.
    public var producerOverlayIPv4: UInt32
    /// The service's TCP/UDP port on the producer VM.
    public var producerPort: UInt16
    /// The overlay network the producer VM is on.
    public var vni: UInt32

    public init(leaseID: Int64, epoch: Int64, service: String, consumerVM: String, producerVM: String,
                producerHost: String, producerUnderlayIPv4: UInt32, producerOverlayIPv4: UInt32,
                producerPort: UInt16, vni: UInt32) {
        precondition(vni <= OverlayLimits.vniMax, "VNI \(vni) is wider than 24 bits")
        self.leaseID = leaseID
        self.epoch = epoch
        self.service = service
        self.consumerVM = consumerVM
        self.producerVM = producerVM
        self.producerHost = producerHost
        self.producerUnderlayIPv4 = producerUnderlayIPv4
        self.producerOverlayIPv4 = producerOverlayIPv4
        self.producerPort = producerPort
        self.vni = vni
    }
}

/// Why a lease ended.
public enum OverlayLeaseEndReason: String, Sendable, Equatable {
    /// An agent or an operator revoked it.
    case revoked
    /// Its etcd lease ran out (the agent that kept it alive is gone).
    case expired
    /// The producer VM moved to another host; a new grant follows.
    case producerMoved = "producer_moved"
}

/// What the leasing side reports to a consumer host's data plane, in etcd revision order.
public enum OverlayLeaseEvent: Sendable, Equatable {
    case granted(OverlayLease)
    case ended(leaseID: Int64, epoch: Int64, reason: OverlayLeaseEndReason)
}
