// Path: Sources/SluiceWAN/WANFrameStore.swift — the frames one direction holds, in departure
// order: a byte ring sized from the settings, allocated once, and a ring of descriptors.

/// Where a held frame is and when it leaves.
@frozen
public struct WANFrameDescriptor: Sendable, Equatable {
    public var offset: UInt32
    public var length: UInt32
    public var departureNs: UInt64
}

/// A FIFO of frames in preallocated memory: `capacityBytes` of frame bytes, each frame contiguous
/// (one that does not fit before the end starts again at 0, wasting the gap), and at most
/// `frameCapacity` descriptors. Departures within a direction never decrease, so first in is first
/// out. Owned by one thread; never allocates after `init`, never blocks.
public struct WANFrameStore: ~Copyable {
    public let capacityBytes: Int
    public let frameCapacity: Int
    private let bytes: UnsafeMutableRawPointer
    private let descriptors: UnsafeMutablePointer<WANFrameDescriptor>
    private let mask: Int
    /// Free-running descriptor positions: `count` frames from `head`.
    private var head = 0
    public private(set) var count = 0
    /// Where the next frame's bytes go (before any wrap).
    private var writeOffset = 0
    /// Bytes of the frames held (gaps not included).
    public private(set) var heldBytes = 0

    /// Allocates both rings. `frameCapacity` is a power of two; sizes are bounded by `WANLimits`.
    public init(capacityBytes: Int, frameCapacity: Int) {
        precondition(capacityBytes > 0, "store needs bytes")
        precondition(capacityBytes <= WANLimits.storeBytesMax, "store larger than WANLimits.storeBytesMax")
        precondition(frameCapacity > 0, "store needs descriptors")
        precondition(frameCapacity.nonzeroBitCount == 1, "descriptor count must be a power of two")
        precondition(frameCapacity <= WANLimits.storeFrameCountMax, "more descriptors than WANLimits.storeFrameCountMax")
        self.capacityBytes = capacityBytes
        self.frameCapacity = frameCapacity
        self.bytes = .allocate(byteCount: capacityBytes, alignment: 64)
        self.descriptors = .allocate(capacity: frameCapacity)
        self.descriptors.initialize(repeating: WANFrameDescriptor(offset: 0, length: 0, departureNs: 0), count: frameCapacity)
        self.mask = frameCapacity - 1
    }

    deinit {
        bytes.deallocate()
        descriptors.deallocate()
    }

    public var isEmpty: Bool { count == 0 }

    /// The oldest frame's descriptor, or nil when empty.
    public var front: WANFrameDescriptor? {
        count > 0 ? descriptors[head & mask] : nil
    }

    /// The bytes of a held frame (valid until it is popped).
    public func frameBytes(_ descriptor: WANFrameDescriptor) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: bytes + Int(descriptor.offset), count: Int(descriptor.length))
    }

    /// Where a frame of `length` bytes would go, or nil when neither a descriptor nor a contiguous
    /// run of bytes is free.
    public func placement(forLength length: Int) -> Int? {
        precondition(length > 0, "a frame has bytes")
        guard count < frameCapacity, length <= capacityBytes else { return nil }
        guard count > 0 else { return 0 }
        let readOffset = Int(descriptors[head & mask].offset)
        if writeOffset > readOffset {
            // Frames lie in [read, write): room after them, else at the start before `read`.
            if capacityBytes - writeOffset >= length { return writeOffset }
            return readOffset >= length ? 0 : nil
        }
        // Wrapped (frames in [read, end) and [0, write)) or exactly full (write == read).
        return readOffset - writeOffset >= length ? writeOffset : nil
    }

    /// Copies a frame in; returns false (storing nothing) when there is no room.
    public mutating func append(_ frame: UnsafeRawBufferPointer, departureNs: UInt64) -> Bool {
        guard let offset = placement(forLength: frame.count) else { return false }
        if let last = count > 0 ? descriptors[(head + count - 1) & mask] : nil {
            precondition(departureNs >= last.departureNs, "departures must not decrease within a direction")
        }
        (bytes + offset).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        descriptors[(head + count) & mask] = WANFrameDescriptor(offset: UInt32(offset), length: UInt32(frame.count),
                                                                 departureNs: departureNs)
        count += 1
        writeOffset = offset + frame.count
        heldBytes += frame.count
        return true
    }

    /// Drops the oldest frame (after its bytes were copied out).
    public mutating func popFront() {
        precondition(count > 0, "pop from an empty store")
        heldBytes -= Int(descriptors[head & mask].length)
        head &+= 1
        count -= 1
        if count == 0 { writeOffset = 0 }
    }
}
