// Path: Sources/SluicePacketIO/AFPacket/AFPacketConfiguration.swift — AF_PACKET ring settings, their
// bounds, and the typed errors for bad settings and failed system calls.
import CShims
import SluiceCore

/// Every bound the AF_PACKET port enforces. Ring sizes are checked here, before any system call, so
/// a bad setting is a typed error naming the setting instead of an `EINVAL` from `setsockopt`.
public enum AFPacketLimits {
    /// TPACKET_ALIGNMENT: RX frame sizes are multiples of it.
    public static let frameAlignmentBytes = 16
    /// Smallest RX frame size: a `tpacket3_hdr` and `sockaddr_ll` (68 bytes) plus a minimal frame.
    public static let rxFrameSizeMin = 128
    /// Largest RX block (4 MiB); blocks are whole pages.
    public static let rxBlockSizeMax = 1 << 22
    /// Most RX blocks in one ring.
    public static let rxBlockCountMax = 1 << 16
    /// Longest block retire timeout; 0 asks the kernel for its default (derived from the link speed).
    public static let rxBlockTimeoutMsMax = 10_000
    /// Smallest and largest TX frame, in bytes (powers of two). Data starts 32 bytes in.
    public static let txFrameSizeMin = 128
    public static let txFrameSizeMax = 1 << 16
    /// Most TX frames in one ring (a power of two).
    public static let txFrameCountMax = 1 << 18
    /// Largest mapping of one ring, RX or TX (1 GiB).
    public static let ringSizeMax = 1 << 30
    /// Longest interface name (IFNAMSIZ - 1).
    public static let interfaceNameLengthMax = 15
    /// Ethernet header bytes: the shortest frame the kernel sends on an Ethernet device.
    public static let ethernetHeaderBytes = Int(SLUICE_AFPACKET_ETHERNET_HEADER_BYTES)
    /// Where a TX frame's data starts in its slot (after the `tpacket2_hdr`).
    public static let txDataOffsetBytes = Int(SLUICE_AFPACKET_TX_DATA_OFFSET)

    /// The system page size; RX blocks are multiples of it and TX blocks at least one page.
    public static let pageSizeBytes = Int(sluice_afpacket_page_size())
}

/// Why an AF_PACKET port could not be opened. Thrown only by initialisers: the burst paths count
/// their failures instead.
public enum AFPacketError: Error, Equatable, CustomStringConvertible {
    /// Empty, longer than `AFPacketLimits.interfaceNameLengthMax`, or containing `/`, `:`, NUL or space.
    case invalidInterfaceName(String)
    /// No interface of that name in the calling thread's network namespace.
    case interfaceNotFound(String)
    /// RX block size not a whole number of pages in 1 page...`max`.
    case invalidBlockSize(Int, pageSizeBytes: Int, max: Int)
    case invalidBlockCount(Int, max: Int)
    /// RX frame size not a multiple of 16 in `min`...`max` (the block size), or TX frame size not a
    /// power of two in `min`...`max`.
    case invalidFrameSize(Int, min: Int, max: Int)
    /// TX frame count not a power of two in `min`...`max` (`min` fills at least one page).
    case invalidFrameCount(Int, min: Int, max: Int)
    case invalidBlockTimeout(milliseconds: Int, max: Int)
    /// The ring would map more than `AFPacketLimits.ringSizeMax` bytes.
    case ringTooLarge(bytes: Int, max: Int)
    /// A system call failed while setting the port up.
    case syscall(SyscallError)

    public var description: String {
        switch self {
        case .invalidInterfaceName(let name): "invalid interface name \"\(name)\""
        case .interfaceNotFound(let name): "no interface \"\(name)\" in this network namespace"
        case .invalidBlockSize(let size, let page, let max):
            "block size \(size) must be a multiple of the page size \(page), at most \(max)"
        case .invalidBlockCount(let count, let max): "block count \(count) must be 1...\(max)"
        case .invalidFrameSize(let size, let min, let max): "frame size \(size) must be \(min)...\(max)"
        case .invalidFrameCount(let count, let min, let max):
            "frame count \(count) must be a power of two, \(min)...\(max)"
        case .invalidBlockTimeout(let ms, let max): "block timeout \(ms) ms must be 0...\(max)"
        case .ringTooLarge(let bytes, let max): "ring of \(bytes) bytes exceeds \(max)"
        case .syscall(let error): "\(error)"
        }
    }
}

/// PACKET_FANOUT: several RX sockets on one interface share its packets, each flow (by the kernel's
/// flow hash) always going to the same socket. Every socket of a group names the same `group`, in
/// the same network namespace.
public struct AFPacketFanout: Sendable, Equatable {
    /// Group id, shared by all members.
    public var group: UInt16
    /// PACKET_FANOUT_FLAG_DEFRAG: reassemble IP fragments before hashing, so all fragments of a
    /// datagram reach the same socket.
    public var defragment: Bool

    public init(group: UInt16, defragment: Bool = false) {
        self.group = group
        self.defragment = defragment
    }
}

/// A TPACKET_V3 RX ring on one interface. Block size and count set the ring's memory; the block
/// timeout bounds how long a partly filled block waits before the kernel hands it over (the latency
/// of a quiet link).
public struct AFPacketRXConfiguration: Sendable, Equatable {
    public var interface: String
    /// Bytes per block: a whole number of pages. Frames are packed into blocks back to back.
    public var blockSizeBytes: Int
    public var blockCount: Int
    /// The kernel's frame-size parameter for V3 (a multiple of 16); frames are really variable-sized
    /// up to the block size, so this only needs to fit the largest expected frame's headers.
    public var frameSizeBytes: Int
    /// Milliseconds before a partly filled block is retired; 0: the kernel's default.
    public var blockTimeoutMs: Int
    public var fanout: AFPacketFanout?
    /// PACKET_IGNORE_OUTGOING: skip frames this host sends on the interface.
    public var ignoreOutgoing: Bool
    /// Written to each packet's `PacketMetadata.port`.
    public var port: UInt16

    public init(interface: String, blockSizeBytes: Int = 1 << 20, blockCount: Int = 16, frameSizeBytes: Int = 2048,
                blockTimeoutMs: Int = 1, fanout: AFPacketFanout? = nil, ignoreOutgoing: Bool = false,
                port: UInt16 = 0) {
        self.interface = interface
        self.blockSizeBytes = blockSizeBytes
        self.blockCount = blockCount
        self.frameSizeBytes = frameSizeBytes
        self.blockTimeoutMs = blockTimeoutMs
        self.fanout = fanout
        self.ignoreOutgoing = ignoreOutgoing
        self.port = port
    }

    /// Bytes the ring maps.
    public var ringSizeBytes: Int { blockSizeBytes * blockCount }

    /// Checks every setting against `AFPacketLimits`; makes no system call.
    public func validate() throws(AFPacketError) {
        try AFPacketInterfaceName.validate(interface)
        let page = AFPacketLimits.pageSizeBytes
        guard blockSizeBytes >= page, blockSizeBytes <= AFPacketLimits.rxBlockSizeMax, blockSizeBytes % page == 0 else {
            throw .invalidBlockSize(blockSizeBytes, pageSizeBytes: page, max: AFPacketLimits.rxBlockSizeMax)
        }
        guard blockCount >= 1, blockCount <= AFPacketLimits.rxBlockCountMax else {
            throw .invalidBlockCount(blockCount, max: AFPacketLimits.rxBlockCountMax)
        }
        guard frameSizeBytes >= AFPacketLimits.rxFrameSizeMin, frameSizeBytes <= blockSizeBytes,
              frameSizeBytes % AFPacketLimits.frameAlignmentBytes == 0
        else { throw .invalidFrameSize(frameSizeBytes, min: AFPacketLimits.rxFrameSizeMin, max: blockSizeBytes) }
        guard blockTimeoutMs >= 0, blockTimeoutMs <= AFPacketLimits.rxBlockTimeoutMsMax else {
            throw .invalidBlockTimeout(milliseconds: blockTimeoutMs, max: AFPacketLimits.rxBlockTimeoutMsMax)
        }
        guard ringSizeBytes <= AFPacketLimits.ringSizeMax else {
            throw .ringTooLarge(bytes: ringSizeBytes, max: AFPacketLimits.ringSizeMax)
        }
    }
}

/// A TPACKET_V2 TX ring on one interface: `frameCount` slots of `frameSizeBytes`, each carrying one
/// frame of up to `frameSizeBytes - 32` bytes.
public struct AFPacketTXConfiguration: Sendable, Equatable {
    public var interface: String
    /// Bytes per slot, a power of two; a frame's data starts 32 bytes in.
    public var frameSizeBytes: Int
    /// Slots in the ring, a power of two.
    public var frameCount: Int
    /// PACKET_QDISC_BYPASS: hand frames straight to the driver, skipping the qdisc layer (and any
    /// traffic shaping or packet taps on it).
    public var qdiscBypass: Bool
    /// PACKET_LOSS: let the kernel skip a frame it rejects instead of stopping the ring at it. Sluice
    /// checks lengths before queueing, so rejections need something like an MTU change at runtime.
    /// Off, rejected frames come back as TP_STATUS_WRONG_FORMAT (counted) but stall the kernel's TX
    /// position until that slot is filled again.
    public var discardMalformed: Bool

    public init(interface: String, frameSizeBytes: Int = 2048, frameCount: Int = 4096, qdiscBypass: Bool = false,
                discardMalformed: Bool = true) {
        self.interface = interface
        self.frameSizeBytes = frameSizeBytes
        self.frameCount = frameCount
        self.qdiscBypass = qdiscBypass
        self.discardMalformed = discardMalformed
    }

    /// Bytes per kernel block: one page, or one frame when frames are larger.
    public var blockSizeBytes: Int { max(AFPacketLimits.pageSizeBytes, frameSizeBytes) }
    /// Bytes the ring maps.
    public var ringSizeBytes: Int { frameSizeBytes * frameCount }
    /// Longest frame a slot holds.
    public var frameLengthMax: Int { frameSizeBytes - AFPacketLimits.txDataOffsetBytes }

    /// Checks every setting against `AFPacketLimits`; makes no system call.
    public func validate() throws(AFPacketError) {
        try AFPacketInterfaceName.validate(interface)
        guard frameSizeBytes >= AFPacketLimits.txFrameSizeMin, frameSizeBytes <= AFPacketLimits.txFrameSizeMax,
              frameSizeBytes.nonzeroBitCount == 1
        else {
            throw .invalidFrameSize(frameSizeBytes, min: AFPacketLimits.txFrameSizeMin,
                                    max: AFPacketLimits.txFrameSizeMax)
        }
        // A kernel block holds a whole number of frames, and the ring at least one block.
        let countMin = max(8, blockSizeBytes / frameSizeBytes)
        guard frameCount >= countMin, frameCount <= AFPacketLimits.txFrameCountMax, frameCount.nonzeroBitCount == 1
        else { throw .invalidFrameCount(frameCount, min: countMin, max: AFPacketLimits.txFrameCountMax) }
        guard ringSizeBytes <= AFPacketLimits.ringSizeMax else {
            throw .ringTooLarge(bytes: ringSizeBytes, max: AFPacketLimits.ringSizeMax)
        }
    }
}

/// Linux interface-name rules (`dev_valid_name`), checked before any system call.
enum AFPacketInterfaceName {
    static func validate(_ name: String) throws(AFPacketError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= AFPacketLimits.interfaceNameLengthMax, name != ".", name != "..",
              !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 })
        else { throw .invalidInterfaceName(name) }
    }
}
