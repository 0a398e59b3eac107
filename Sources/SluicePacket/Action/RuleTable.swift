// Path: Sources/SluicePacket/Action/RuleTable.swift — what to do with a classified packet: forward,
// drop, or forward rewritten; first matching rule wins.

/// Which packets a rule applies to; nil fields match anything. A protocol constraint matches only IP
/// packets, a port constraint only packets with ports (TCP, UDP; not later fragments).
public struct RuleMatch: Hashable, Sendable {
    public var sourceID: UInt16?
    public var ipProtocol: UInt8?
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?

    public init(sourceID: UInt16? = nil, ipProtocol: UInt8? = nil, sourcePort: UInt16? = nil,
                destinationPort: UInt16? = nil) {
        self.sourceID = sourceID
        self.ipProtocol = ipProtocol
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    /// Matches every packet.
    public static let any = RuleMatch()
}

public enum RuleVerdict: Hashable, Sendable {
    /// Pass the packet on (after the rule's rewrites).
    case forward
    /// Free the packet and count it as `droppedByRule`.
    case drop
}

/// A match, a verdict and, for `.forward`, up to `PacketLimits.rewritesPerRuleMax` rewrites in order.
public struct Rule: Hashable, Sendable {
    public var match: RuleMatch
    public var verdict: RuleVerdict
    public var rewrites: [Rewrite]

    public init(_ match: RuleMatch, _ verdict: RuleVerdict = .forward, rewrites: [Rewrite] = []) {
        self.match = match
        self.verdict = verdict
        self.rewrites = rewrites
    }
}

/// Why a rule table is invalid. `rule` is the index of the offending rule.
public enum RuleError: Error, Equatable {
    case tooManyRules(Int, max: Int)
    case tooManyRewrites(Int, rule: Int, max: Int)
    case rewritesOnDropRule(rule: Int)
    case invalidVLANID(UInt16, rule: Int)
    case invalidVLANPriority(UInt8, rule: Int)
    case invalidTPID(UInt16, rule: Int)
    case invalidDSCP(UInt8, rule: Int)
}

/// The fields rules match on, packed in one word: bits 0-15 destination port, 16-31 source port,
/// 32-39 IP protocol, 40-55 source id, 56 "has ports", 57 "is IP". A rule is a mask and a value.
@frozen
public struct RuleKey: Hashable, Sendable {
    public let rawValue: UInt64

    @inlinable public init(sourceID: UInt16, ipProtocol: UInt8?, ports: (source: UInt16, destination: UInt16)?) {
        var value = UInt64(sourceID) << 40
        if let ipProtocol { value |= 1 << 57 | UInt64(ipProtocol) << 32 }
        if let ports { value |= 1 << 56 | UInt64(ports.source) << 16 | UInt64(ports.destination) }
        rawValue = value
    }
}

/// Rules compiled into fixed-size tables made once (at most `PacketLimits.ruleCountMax`), matched in
/// order by mask and value. Validated when made; never allocates or retains when matching or applying.
public struct RuleTable: @unchecked Sendable {  // unchecked: the columns are read-only after init
    public let rules: [Rule]
    public let defaultVerdict: RuleVerdict
    @usableFromInline let ruleCount: Int
    /// Keeps the columns below alive; never touched when matching.
    let storage: TableStorage
    @usableFromInline let masks: UnsafePointer<UInt64>
    @usableFromInline let values: UnsafePointer<UInt64>
    /// 1 for a drop rule.
    @usableFromInline let drops: UnsafePointer<UInt8>
    @usableFromInline let rewriteCounts: UnsafePointer<UInt8>
    /// Rule n's rewrites are at n * rewritesPerRuleMax ..< + rewriteCounts[n].
    @usableFromInline let rewrites: UnsafePointer<Rewrite>

    /// Builds a table; packets no rule matches get `defaultVerdict`.
    public init(rules: [Rule], defaultVerdict: RuleVerdict = .forward) throws(RuleError) {
        guard rules.count <= PacketLimits.ruleCountMax else {
            throw .tooManyRules(rules.count, max: PacketLimits.ruleCountMax)
        }
        for (index, rule) in rules.enumerated() { try Self.validate(rule, index: index) }
        let slots = PacketLimits.ruleCountMax
        let rewriteSlots = slots * PacketLimits.rewritesPerRuleMax
        let rewriteOffset = slots * 18
        let rewriteStart = (rewriteOffset + 63) & ~63
        storage = TableStorage(byteCount: rewriteStart + rewriteSlots * MemoryLayout<Rewrite>.stride)
        let masks = storage.column(UInt64.self, at: 0, count: slots)
        let values = storage.column(UInt64.self, at: slots * 8, count: slots)
        let drops = storage.column(UInt8.self, at: slots * 16, count: slots)
        let rewriteCounts = storage.column(UInt8.self, at: slots * 17, count: slots)
        let rewrites = storage.column(Rewrite.self, at: rewriteStart, count: rewriteSlots)
        for (index, rule) in rules.enumerated() {
            (masks[index], values[index]) = Self.compile(rule.match)
            drops[index] = rule.verdict == .drop ? 1 : 0
            rewriteCounts[index] = UInt8(rule.rewrites.count)
            for (slot, rewrite) in rule.rewrites.enumerated() {
                (rewrites + index * PacketLimits.rewritesPerRuleMax + slot).initialize(to: rewrite)
            }
        }
        self.rules = rules
        self.defaultVerdict = defaultVerdict
        ruleCount = rules.count
        (self.masks, self.values) = (UnsafePointer(masks), UnsafePointer(values))
        (self.drops, self.rewriteCounts) = (UnsafePointer(drops), UnsafePointer(rewriteCounts))
        self.rewrites = UnsafePointer(rewrites)
    }

    static func validate(_ rule: Rule, index: Int) throws(RuleError) {
        guard rule.rewrites.count <= PacketLimits.rewritesPerRuleMax else {
            throw .tooManyRewrites(rule.rewrites.count, rule: index, max: PacketLimits.rewritesPerRuleMax)
        }
        guard rule.verdict == .forward || rule.rewrites.isEmpty else { throw .rewritesOnDropRule(rule: index) }
        for rewrite in rule.rewrites {
            switch rewrite {
            case .setVLAN(let id) where id > 0x0FFF: throw .invalidVLANID(id, rule: index)
            case .pushVLAN(let id, _, _) where id > 0x0FFF: throw .invalidVLANID(id, rule: index)
            case .pushVLAN(_, let priority, _) where priority > 7: throw .invalidVLANPriority(priority, rule: index)
            case .pushVLAN(_, _, let tpid) where !EtherType.isVLAN(tpid): throw .invalidTPID(tpid, rule: index)
            case .setDSCP(let dscp) where dscp > 63: throw .invalidDSCP(dscp, rule: index)
            default: break
            }
            assert(rewrite.isValid, "a value Rewrite.isValid rejects passed validation")
        }
    }

    /// A match as (mask, value) over `RuleKey` bits.
    static func compile(_ match: RuleMatch) -> (mask: UInt64, value: UInt64) {
        var mask: UInt64 = 0
        var value: UInt64 = 0
        if let sourceID = match.sourceID {
            mask |= 0xFFFF << 40
            value |= UInt64(sourceID) << 40
        }
        if let ipProtocol = match.ipProtocol {
            mask |= 1 << 57 | 0xFF << 32
            value |= 1 << 57 | UInt64(ipProtocol) << 32
        }
        if let port = match.sourcePort {
            mask |= 1 << 56 | 0xFFFF << 16
            value |= 1 << 56 | UInt64(port) << 16
        }
        if let port = match.destinationPort {
            mask |= 1 << 56 | 0xFFFF
            value |= 1 << 56 | UInt64(port)
        }
        return (mask, value)
    }

    /// Index of the first rule matching `key`, or nil.
    @inlinable public func firstMatch(_ key: RuleKey) -> Int? {
        for index in 0..<ruleCount where key.rawValue & masks[index] == values[index] { return index }
        return nil
    }

    /// Runs the first rule matching `key` (or the default verdict) on the packet in `buffer`, updating
    /// `layout`. Same buffer contract as `PacketRewriter`; never allocates.
    @inlinable public func apply(
        _ key: RuleKey, to buffer: UnsafeMutableRawBufferPointer, layout: inout PacketLayout
    ) -> RuleOutcome {
        guard let index = firstMatch(key) else { return defaultVerdict == .drop ? .dropped(.droppedByRule) : .forwarded }
        if drops[index] != 0 { return .dropped(.droppedByRule) }
        let first = index * PacketLimits.rewritesPerRuleMax
        let end = first + Int(rewriteCounts[index])
        for slot in first..<end {
            if let reason = PacketRewriter.apply(rewrites[slot], to: buffer, layout: &layout) { return .dropped(reason) }
        }
        return end > first ? .rewritten : .forwarded
    }
}

/// What a rule table did with a packet.
@frozen
public enum RuleOutcome: Hashable, Sendable {
    /// Passed on unchanged.
    case forwarded
    /// Passed on after at least one rewrite.
    case rewritten
    /// To be freed and counted under the reason (a drop rule, or a rewrite the packet could not take).
    case dropped(DropReason)
}
