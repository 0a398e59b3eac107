// Path: Sources/SluicePacketIO/AFXDP/AFXDPConfiguration.swift — AF_XDP socket settings, their bounds,
// and the typed errors for bad settings and failed set-up calls.
import CShims
import SluiceCore

/// Where the XDP program of an AF_XDP receiver runs. `auto` tries native first, then generic.
public enum AFXDPMode: String, Sendable, CaseIterable, CustomStringConvertible {
    case auto
    /// In the driver (XDP_FLAGS_DRV_MODE): veth supports it; the fast path where the driver has it.
    case native
    /// On the skb path (XDP_FLAGS_SKB_MODE): any device, after the kernel built an skb.
    case generic

    public var description: String { rawValue }
}

/// Every bound the AF_XDP port enforces, checked before any system call.
public enum AFXDPLimits {
    /// UMEM frame sizes: the kernel's aligned chunk sizes are powers of two from 2048 to the page size.
    public static let frameSizeMin = 2048
    public static let frameSizeMax = 4096
    /// UMEM frames (one socket). At least one ring's worth.
    public static let frameCountMin = 64
    public static let frameCountMax = 1 << 18
    /// Ring sizes (fill, completion, rx, tx), powers of two.
    public static let ringSizeMin = 64
    public static let ringSizeMax = 1 << 16
    /// Highest queue id accepted (a device has fewer; the kernel refuses the rest with EINVAL).
    public static let queueMax: UInt32 = 1023
    /// The shortest frame sent: an Ethernet header.
    public static let ethernetHeaderBytes = 14
}

/// One AF_XDP socket on one interface queue: a UMEM of `frameCount` frames of `frameSizeBytes`, rings
/// of `ringSize` entries. A receiver hands the kernel min(frameCount, ringSize) frames to fill.
public struct AFXDPConfiguration: Sendable, Equatable {
    public var interface: String
    public var queue: UInt32 = 0
    public var mode = AFXDPMode.auto
    public var frameCount = 4096
    public var frameSizeBytes = 2048
    public var ringSize = 2048
    /// Written into each received packet's metadata (`PacketMetadata.port`).
    public var port: UInt16 = 0
    /// NUMA node for the UMEM (a preference), nil for any.
    public var numaNode: Int?

    public init(interface: String) { self.interface = interface }

    /// Checks every field against `AFXDPLimits`; the first bad one is the error.
    public func validate() throws(AFXDPError) {
        do { try AFPacketInterfaceName.validate(interface) } catch { throw .invalidInterfaceName(interface) }
        guard queue <= AFXDPLimits.queueMax else { throw .invalidQueue(queue, max: AFXDPLimits.queueMax) }
        guard frameSizeBytes == 2048 || frameSizeBytes == 4096 else {
            throw .invalidFrameSize(frameSizeBytes, min: AFXDPLimits.frameSizeMin, max: AFXDPLimits.frameSizeMax)
        }
        guard frameCount >= AFXDPLimits.frameCountMin, frameCount <= AFXDPLimits.frameCountMax,
              frameCount.nonzeroBitCount == 1
        else { throw .invalidFrameCount(frameCount, min: AFXDPLimits.frameCountMin, max: AFXDPLimits.frameCountMax) }
        guard ringSize >= AFXDPLimits.ringSizeMin, ringSize <= AFXDPLimits.ringSizeMax, ringSize.nonzeroBitCount == 1 else {
            throw .invalidRingSize(ringSize, min: AFXDPLimits.ringSizeMin, max: AFXDPLimits.ringSizeMax)
        }
    }
}

/// Why an AF_XDP port could not be opened. Thrown only by initialisers: the burst paths count.
public enum AFXDPError: Error, Equatable, CustomStringConvertible {
    case invalidInterfaceName(String)
    /// No interface of that name in the calling thread's network namespace.
    case interfaceNotFound(String)
    case invalidQueue(UInt32, max: UInt32)
    /// Not 2048 or 4096.
    case invalidFrameSize(Int, min: Int, max: Int)
    /// Not a power of two in `min`...`max`.
    case invalidFrameCount(Int, min: Int, max: Int)
    case invalidRingSize(Int, min: Int, max: Int)
    /// The socket could not be created on the interface in any mode tried (`xsk_socket__create`: the
    /// XDP program's load and attach, then bind). `tried` lists the modes, `error` is the last failure.
    case attachFailed(interface: String, tried: [AFXDPMode], error: SyscallError)
    /// Another set-up call failed (mmap, xsk_umem__create, getsockopt).
    case syscall(SyscallError)

    public var description: String {
        switch self {
        case .invalidInterfaceName(let name): "invalid interface name \"\(name)\""
        case .interfaceNotFound(let name): "no interface \"\(name)\" in this network namespace"
        case .invalidQueue(let queue, let max): "queue \(queue) must be 0...\(max)"
        case .invalidFrameSize(let size, let min, let max): "frame size \(size) must be \(min) or \(max)"
        case .invalidFrameCount(let count, let min, let max): "frame count \(count) must be a power of two in \(min)...\(max)"
        case .invalidRingSize(let size, let min, let max): "ring size \(size) must be a power of two in \(min)...\(max)"
        case .attachFailed(let interface, let tried, let error):
            "cannot attach AF_XDP on \"\(interface)\" (tried \(tried.map(\.rawValue).joined(separator: ", "))): \(error)"
        case .syscall(let error): "\(error)"
        }
    }
}
