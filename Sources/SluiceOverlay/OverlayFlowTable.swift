// Path: Sources/SluiceOverlay/OverlayFlowTable.swift — the bounded flow table of a host's overlay data
// plane: 5-tuple keys (two per flow, one per direction) to flow records carrying lease id and epoch.
import CShims

/// A flow key: IPv4 5-tuple plus which table side it names, packed in two words.
public struct OverlayFlowKey: Hashable, Sendable {
    public var addresses: UInt64
    public var rest: UInt64

    /// What a key looks up.
    public enum Kind: UInt8, Sendable {
        /// Consumer host: consumer VM -> service address (as the VM sent it).
        case consumerForward = 1
        /// Consumer host: producer VM -> consumer VM (a decapsulated reply).
        case consumerReply = 2
        /// Producer host: producer VM -> consumer VM (a reply to encapsulate back).
        case producerReply = 3
        /// Producer host: consumer VM -> producer VM (as decapsulated).
        case producerInbound = 4
    }

    @inline(__always)
    public init(kind: Kind, source: UInt32, destination: UInt32, sourcePort: UInt16, destinationPort: UInt16,
                ipProtocol: UInt8, vni: UInt32 = 0) {
        addresses = UInt64(source) << 32 | UInt64(destination)
        rest = UInt64(sourcePort) << 48 | UInt64(destinationPort) << 32 | UInt64(ipProtocol) << 24
            | UInt64(vni & 0xFF_FFFF)
        tag = kind.rawValue
    }

    /// The `Kind` raw value.
    public var tag: UInt8

    @inline(__always) var hash: UInt64 {
        var mixed = (addresses ^ 0xA076_1D64_78BD_642F).multipliedFullWidth(by: rest ^ UInt64(tag) ^ 0xE703_7ED1_A0B4_28DB)
        mixed.low ^= mixed.high
        return mixed.low ^ mixed.low >> 29
    }
}

/// What the data plane keeps per flow. Plain values: the table stores them inline. Field order is
/// layout: the fields every packet of a leased flow reads or writes come first (the first 64 bytes plus
/// a few), the keys and what only first packets, ends and reports use come after.
public struct OverlayFlow: Sendable, Equatable {
    /// Consumer side: the lease id and epoch the flow was bound under, and its lease slot; the
    /// packet path forwards only while the slot still holds exactly this lease id and epoch.
    public var leaseID: Int64 = 0
    public var epoch: Int64 = 0
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    public var lastSeenNs: UInt64 = 0
    public var leaseSlot: Int32 = -1
    public var serviceIndex: Int32 = -1
    /// Producer VM address the flow is redirected to.
    public var producerIPv4: UInt32 = 0
    /// The underlay peer: producer host (consumer side) or consumer host (producer side, learned from
    /// the outer source), with its MAC on the producer side.
    public var peerUnderlayIPv4: UInt32 = 0
    public var vni: UInt32 = 0
    /// Consumer side, TCP: the last acknowledgment number the consumer sent (the RST's sequence number).
    public var consumerAck: UInt32 = 0
    public var producerPort: UInt16 = 0
    /// Outer UDP source port (from the inner flow hash).
    public var entropyPort: UInt16 = 0
    public var isTCP = false
    public var kind: OverlayFlowKey.Kind
    public var forwardKey: OverlayFlowKey
    /// The reply direction's key (a flow is found from either direction).
    public var replyKey: OverlayFlowKey
    /// The VM port the flow's VM is behind (consumer VM or producer VM).
    public var vmPort: Int32 = -1
    /// The VM's MAC as learned from its first packet (consumer side: where replies go).
    public var vmMAC: UInt64 = 0
    /// Service address the consumer used (consumer side), host order.
    public var serviceIPv4: UInt32 = 0
    public var servicePort: UInt16 = 0
    public var peerMAC: UInt64 = 0

    public init(forwardKey: OverlayFlowKey, replyKey: OverlayFlowKey, kind: OverlayFlowKey.Kind) {
        self.forwardKey = forwardKey
        self.replyKey = replyKey
        self.kind = kind
    }
}

/// A fixed-capacity flow table: `capacity` flow records (a free stack) and an open-addressing index
/// of twice as many keys at a load of at most 1/2, linear probing with backward-shift deletion (no
/// tombstones, so lookups stay short). Never allocates after init; a full table refuses inserts.
/// One owner thread.
public struct OverlayFlowTable: ~Copyable {
    public static let capacityMax = 1 << 20

    public let capacity: Int
    private let flows: UnsafeMutablePointer<OverlayFlow>
    private let inUse: UnsafeMutablePointer<Bool>
    private let freeStack: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    /// Index slots: each slot's key and flow index + 1 (0 = empty), together so a probe touches one
    /// cache line.
    private let slots: UnsafeMutablePointer<IndexSlot>
    private let slotMask: Int

    struct IndexSlot {
        var key: OverlayFlowKey
        var flow: Int32
    }

    public var count: Int { capacity - freeCount }
    /// One past the highest record index ever used: scans of the records (a lease's end, reports)
    /// stop here. Records are taken lowest index first, so this follows the peak flow count.
    public private(set) var highWater = 0

    /// Capacity 1...`capacityMax`, a power of two.
    public init(capacity: Int) {
        precondition(capacity > 0, "empty flow table")
        precondition(capacity <= Self.capacityMax, "flow table above \(Self.capacityMax)")
        precondition(capacity.nonzeroBitCount == 1, "flow table capacity not a power of two")
        self.capacity = capacity
        let empty = OverlayFlowKey(kind: .consumerForward, source: 0, destination: 0, sourcePort: 0,
                                   destinationPort: 0, ipProtocol: 0)
        flows = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<OverlayFlow>.stride, alignment: 64)
            .bindMemory(to: OverlayFlow.self, capacity: capacity)
        flows.initialize(repeating: OverlayFlow(forwardKey: empty, replyKey: empty, kind: .consumerForward),
                         count: capacity)
        inUse = .allocate(capacity: capacity)
        inUse.initialize(repeating: false, count: capacity)
        freeStack = .allocate(capacity: capacity)
        for index in 0..<capacity { freeStack[index] = Int32(capacity - 1 - index) }
        freeCount = capacity
        let slotCount = capacity * 4
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: IndexSlot(key: empty, flow: 0), count: slotCount)
        slotMask = slotCount - 1
    }

    deinit {
        flows.deinitialize(count: capacity)
        flows.deallocate()
        inUse.deallocate()
        freeStack.deallocate()
        slots.deallocate()
    }

    /// The flow a key names, or -1.
    @inline(__always) public func find(_ key: OverlayFlowKey) -> Int32 {
        var slot = Int(truncatingIfNeeded: key.hash) & slotMask
        while true {
            let entry = slots[slot].flow
            if entry == 0 { return -1 }
            if slots[slot].key == key { return entry - 1 }
            slot = (slot + 1) & slotMask
        }
    }

    /// Starts pulling the index slot `key` hashes to into cache (a hint: burst loops call it a few
    /// frames ahead of `find`, so the probe does not wait on memory).
    @inline(__always) public func prefetch(_ key: OverlayFlowKey) {
        sluice_prefetch_read(slots + (Int(truncatingIfNeeded: key.hash) & slotMask))
    }

    /// The record of flow `index` (valid while the flow is in the table).
    @inline(__always) public func flow(_ index: Int32) -> UnsafeMutablePointer<OverlayFlow> {
        precondition(index >= 0 && Int(index) < capacity, "flow index out of range")
        return flows + Int(index)
    }

    public func isInUse(_ index: Int32) -> Bool { inUse[Int(index)] }

    /// Adds `flow` under both its keys. Returns its index, or nil if the table is full or either key is
    /// already present (the caller looked up first; a clash is a reply key another flow owns).
    public mutating func insert(_ flow: OverlayFlow) -> Int32? {
        guard freeCount > 0 else { return nil }
        guard find(flow.forwardKey) < 0, find(flow.replyKey) < 0, flow.forwardKey != flow.replyKey else { return nil }
        freeCount -= 1
        let index = freeStack[freeCount]
        flows[Int(index)] = flow
        inUse[Int(index)] = true
        if Int(index) >= highWater { highWater = Int(index) + 1 }
        place(flow.forwardKey, index)
        place(flow.replyKey, index)
        return index
    }

    /// Changes a flow's reply key (a flow moved to another producer). False if the new key is taken.
    public mutating func rekeyReply(_ index: Int32, to key: OverlayFlowKey) -> Bool {
        precondition(inUse[Int(index)], "rekey of a free flow")
        if key == flows[Int(index)].replyKey { return true }
        guard find(key) < 0 else { return false }
        unplace(flows[Int(index)].replyKey)
        flows[Int(index)].replyKey = key
        place(key, index)
        return true
    }

    /// Removes flow `index` and both its keys.
    public mutating func remove(_ index: Int32) {
        precondition(inUse[Int(index)], "removal of a free flow")
        unplace(flows[Int(index)].forwardKey)
        unplace(flows[Int(index)].replyKey)
        inUse[Int(index)] = false
        freeStack[freeCount] = index
        freeCount += 1
    }

    private func place(_ key: OverlayFlowKey, _ index: Int32) {
        var slot = Int(truncatingIfNeeded: key.hash) & slotMask
        while slots[slot].flow != 0 { slot = (slot + 1) & slotMask }
        slots[slot] = IndexSlot(key: key, flow: index + 1)
    }

    /// Backward-shift deletion (Knuth 6.4 algorithm R): later entries of the probe run move into the
    /// hole when their home slot does not lie cyclically between the hole and them.
    private func unplace(_ key: OverlayFlowKey) {
        var slot = Int(truncatingIfNeeded: key.hash) & slotMask
        while slots[slot].key != key || slots[slot].flow == 0 {
            precondition(slots[slot].flow != 0, "flow key missing from the index")
            slot = (slot + 1) & slotMask
        }
        var hole = slot
        var next = (hole + 1) & slotMask
        while slots[next].flow != 0 {
            let home = Int(truncatingIfNeeded: slots[next].key.hash) & slotMask
            let distanceNext = (next - home) & slotMask
            let distanceHole = (hole - home) & slotMask
            if distanceHole <= distanceNext {
                slots[hole] = slots[next]
                hole = next
            }
            next = (next + 1) & slotMask
        }
        slots[hole].flow = 0
    }
}
