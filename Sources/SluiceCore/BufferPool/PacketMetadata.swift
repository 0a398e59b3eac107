// Path: Sources/SluiceCore/BufferPool/PacketMetadata.swift — what travels with a buffer besides its bytes.

/// Per-buffer metadata, in a cache line of its own right before the buffer's data (the part of a DPDK
/// mbuf that is not the packet). Written by the stage that owns the buffer; read by the stages after it.
@frozen
public struct PacketMetadata: Sendable, Equatable {
    /// Bytes of packet data in the buffer, from its start.
    public var length: UInt32
    /// Length on the wire; more than `length` when the capture cut the packet short.
    public var wireLength: UInt32
    /// Arrival or capture time, nanoseconds since the Unix epoch.
    public var timestampNs: UInt64
    /// Time the buffer entered the pipeline or a TX queue (CLOCK_MONOTONIC ns), for latency.
    public var enqueueNs: UInt64
    /// 5-tuple flow hash, set by classification (0 before).
    public var flowHash: UInt32
    /// Link-layer type of the data (a libpcap DLT_ value, e.g. 1 for Ethernet).
    public var linkType: UInt16
    /// Traffic source, set by classification.
    public var sourceID: UInt16
    /// Input port or capture index.
    public var port: UInt16
    /// Offsets of the network and transport headers from the start of the data; 0xFFFF if absent.
    public var l3Offset: UInt16
    public var l4Offset: UInt16
    /// Free for stages to pass flags along (classification result, action taken).
    public var flags: UInt16

    public static let absentOffset: UInt16 = 0xFFFF

    public init() {
        self.length = 0
        self.wireLength = 0
        self.timestampNs = 0
        self.enqueueNs = 0
        self.flowHash = 0
        self.linkType = 0
        self.sourceID = 0
        self.port = 0
        self.l3Offset = Self.absentOffset
        self.l4Offset = Self.absentOffset
        self.flags = 0
    }
}
