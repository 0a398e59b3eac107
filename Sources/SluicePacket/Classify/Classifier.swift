// Path: Sources/SluicePacket/Classify/Classifier.swift — flow hash and source id of a parsed packet.

/// What a classifier derives a packet's source id from.
public enum SourceKey: String, Sendable, CaseIterable {
    /// The outer Ethernet source MAC (or a cooked capture's 6-byte link address).
    case sourceMAC
    /// The outer (first) VLAN id; untagged packets get the default.
    case outerVLAN
    /// The longest matching prefix of the IPv4/IPv6 source address; non-IP packets get the default.
    case sourcePrefix
    /// The input port or capture index (`PacketMetadata.port`).
    case inputPort
}

/// One table entry's match; its case must be the classifier's key.
public enum SourceMatch: Hashable, Sendable {
    case mac(MACAddress)
    case vlan(UInt16)
    case prefix(IPPrefix)
    case port(UInt16)

    /// The key this match belongs to.
    public var key: SourceKey {
        switch self {
        case .mac: .sourceMAC
        case .vlan: .outerVLAN
        case .prefix: .sourcePrefix
        case .port: .inputPort
        }
    }
}

/// Maps one MAC, VLAN id, prefix or port to a source id.
public struct SourceEntry: Hashable, Sendable {
    public var match: SourceMatch
    public var sourceID: UInt16
    public init(_ match: SourceMatch, sourceID: UInt16) {
        self.match = match
        self.sourceID = sourceID
    }
}

/// Why a classifier configuration is invalid.
public enum ClassifierError: Error, Equatable {
    /// More entries than `max` (`PacketLimits.sourceEntryCountMax`).
    case tooManyEntries(Int, max: Int)
    /// Entry `index` matches on another key than the configuration's.
    case entryKeyMismatch(index: Int, key: SourceKey)
    /// Entry `index` has a VLAN id above 4095.
    case invalidVLANID(UInt16, index: Int)
    /// Entry `index` repeats an earlier entry's MAC, VLAN id, prefix or port.
    case duplicateEntry(index: Int)
}

/// A classifier's configuration: a value, validated when made, so a `Classifier` built from it
/// cannot fail.
public struct ClassifierConfiguration: Sendable, Equatable {
    public let key: SourceKey
    public let entries: [SourceEntry]
    /// Source id of packets no entry matches (and packets without the key, e.g. untagged for VLAN).
    public let defaultSourceID: UInt16
    public let flowHash: FlowHash
    /// For VXLAN packets: classify and hash the inner headers (the tenant's flow) instead of the outer.
    /// The input port key is unaffected.
    public let usesInnerHeaders: Bool

    public init(
        key: SourceKey, entries: [SourceEntry] = [], defaultSourceID: UInt16 = 0, flowHash: FlowHash = FlowHash(),
        usesInnerHeaders: Bool = false
    ) throws(ClassifierError) {
        guard entries.count <= PacketLimits.sourceEntryCountMax else {
            throw .tooManyEntries(entries.count, max: PacketLimits.sourceEntryCountMax)
        }
        for (index, entry) in entries.enumerated() {
            guard entry.match.key == key else { throw .entryKeyMismatch(index: index, key: key) }
            if case .vlan(let id) = entry.match, id > 0x0FFF { throw .invalidVLANID(id, index: index) }
            if entries[..<index].contains(where: { $0.match == entry.match }) { throw .duplicateEntry(index: index) }
        }
        self.key = key
        self.entries = entries
        self.defaultSourceID = defaultSourceID
        self.flowHash = flowHash
        self.usesInnerHeaders = usesInnerHeaders
    }
}

/// A packet's classification: its flow hash and source id.
@frozen
public struct Classification: Hashable, Sendable {
    public var flowHash: UInt32
    public var sourceID: UInt16
    @inlinable public init(flowHash: UInt32, sourceID: UInt16) {
        self.flowHash = flowHash
        self.sourceID = sourceID
    }
}

/// Classifies parsed packets by a `ClassifierConfiguration`, from fixed-size tables made once: exact
/// keys (MAC, VLAN, port) sorted for binary search, prefixes sorted longest first and scanned (at most
/// `PacketLimits.sourceEntryCountMax`). Never allocates or retains when classifying.
public struct Classifier: @unchecked Sendable {  // unchecked: the columns are read-only after init
    public let configuration: ClassifierConfiguration
    @usableFromInline let key: SourceKey
    @usableFromInline let defaultSourceID: UInt16
    @usableFromInline let flowHash: FlowHash
    @usableFromInline let usesInnerHeaders: Bool
    @usableFromInline let entryCount: Int
    /// Keeps the columns below alive; never touched when classifying.
    let storage: TableStorage
    /// Exact keys ascending (in `keyLow`), or prefix addresses and masks longest prefix first.
    @usableFromInline let keyHigh: UnsafePointer<UInt64>
    @usableFromInline let keyLow: UnsafePointer<UInt64>
    @usableFromInline let maskHigh: UnsafePointer<UInt64>
    @usableFromInline let maskLow: UnsafePointer<UInt64>
    @usableFromInline let sourceIDs: UnsafePointer<UInt16>

    public init(_ configuration: ClassifierConfiguration) {
        let slots = PacketLimits.sourceEntryCountMax
        self.configuration = configuration
        key = configuration.key
        defaultSourceID = configuration.defaultSourceID
        flowHash = configuration.flowHash
        usesInnerHeaders = configuration.usesInnerHeaders
        entryCount = configuration.entries.count
        precondition(entryCount <= slots, "configuration validated against the bound")
        storage = TableStorage(byteCount: slots * (4 * 8 + 2))
        let keyHigh = storage.column(UInt64.self, at: 0, count: slots)
        let keyLow = storage.column(UInt64.self, at: slots * 8, count: slots)
        let maskHigh = storage.column(UInt64.self, at: slots * 16, count: slots)
        let maskLow = storage.column(UInt64.self, at: slots * 24, count: slots)
        let sourceIDs = storage.column(UInt16.self, at: slots * 32, count: slots)
        for (slot, entry) in Self.sorted(configuration.entries).enumerated() {
            switch entry.match {
            case .mac(let address): keyLow[slot] = address.rawValue
            case .vlan(let id): keyLow[slot] = UInt64(id)
            case .port(let port): keyLow[slot] = UInt64(port)
            case .prefix(let prefix):
                let mask = IPPrefix.masked(IPAddress(high: ~0, low: ~0), length: prefix.length)
                keyHigh[slot] = prefix.address.high
                keyLow[slot] = prefix.address.low
                maskHigh[slot] = mask.high
                maskLow[slot] = mask.low
            }
            sourceIDs[slot] = entry.sourceID
        }
        (self.keyHigh, self.keyLow, self.maskHigh, self.maskLow) = (.init(keyHigh), .init(keyLow), .init(maskHigh), .init(maskLow))
        self.sourceIDs = UnsafePointer(sourceIDs)
    }

    /// Entries in lookup order: exact keys ascending, prefixes longest first.
    static func sorted(_ entries: [SourceEntry]) -> [SourceEntry] {
        entries.sorted { lhs, rhs in
            switch (lhs.match, rhs.match) {
            case (.mac(let a), .mac(let b)): a.rawValue < b.rawValue
            case (.vlan(let a), .vlan(let b)): a < b
            case (.port(let a), .port(let b)): a < b
            case (.prefix(let a), .prefix(let b)): a.length > b.length
            default: false
            }
        }
    }

    /// The flow hash and source id of `packet`, which arrived on `inputPort`. Reads the headers in
    /// place: a copy of a just-parsed packet would load it wider than the parse stored it.
    @inlinable @inline(__always)
    public func classify(_ packet: ParsedPacket, inputPort: UInt16) -> Classification {
        if usesInnerHeaders && packet.isTunnel {
            return Classification(flowHash: flowHash.hash(packet.inner), sourceID: sourceID(of: packet.inner, inputPort: inputPort))
        }
        return Classification(flowHash: flowHash.hash(packet.outer), sourceID: sourceID(of: packet.outer, inputPort: inputPort))
    }

    /// The source id of a packet with `headers` from `inputPort`; the default when nothing matches.
    @inlinable @inline(__always)
    public func sourceID(of headers: PacketHeaders, inputPort: UInt16) -> UInt16 {
        switch key {
        case .sourceMAC:
            guard headers.flags.contains(.ethernet) || headers.flags.contains(.cookedSourceMAC) else {
                return defaultSourceID
            }
            return exactMatch(headers.sourceMAC.rawValue)
        case .outerVLAN:
            return headers.vlanCount == 0 ? defaultSourceID : exactMatch(UInt64(headers.outerVLAN))
        case .inputPort:
            return exactMatch(UInt64(inputPort))
        case .sourcePrefix:
            return headers.isIP ? longestPrefixMatch(headers.sourceAddress) : defaultSourceID
        }
    }

    /// Binary search over the ascending exact keys.
    @inlinable func exactMatch(_ value: UInt64) -> UInt16 {
        var low = 0
        var high = entryCount
        while low < high {
            let middle = (low + high) / 2
            let candidate = keyLow[middle]
            if candidate == value { return sourceIDs[middle] }
            if candidate < value { low = middle + 1 } else { high = middle }
        }
        return defaultSourceID
    }

    /// First match in longest-first order is the longest match.
    @inlinable func longestPrefixMatch(_ address: IPAddress) -> UInt16 {
        for slot in 0..<entryCount
        where address.high & maskHigh[slot] == keyHigh[slot] && address.low & maskLow[slot] == keyLow[slot] {
            return sourceIDs[slot]
        }
        return defaultSourceID
    }
}
