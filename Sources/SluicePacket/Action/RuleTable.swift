// Path: Sources/SluicePacket/Action/RuleTable.swift — what to do with a classified packet: forward,
// drop, or forward rewritten; the first matching rule wins; per-rule hit counters.
import Synchronization

/// Which packets a rule applies to; nil fields match anything. Every given field must match (AND).
/// A field only matches packets that have it: a VLAN id only tagged packets, MACs only Ethernet
/// frames, a protocol or prefix only IP packets (an IPv4 prefix only IPv4, an IPv6 prefix only
/// IPv6), a port range only packets with ports (TCP, UDP; not later fragments).
public struct RuleMatch: Hashable, Sendable {
    /// `PacketMetadata.port`: the input port or capture index.
    public var inputPort: UInt16?
    /// The source id the classifier gave the packet.
    public var sourceID: UInt16?
    /// The outer VLAN tag's id (0...4095).
    public var vlanID: UInt16?
    public var sourceMAC: MACAddress?
    public var destinationMAC: MACAddress?
    public var sourcePrefix: IPPrefix?
    public var destinationPrefix: IPPrefix?
    public var ipProtocol: UInt8?
    /// Inclusive port ranges (a single port is `p...p`).
    public var sourcePorts: ClosedRange<UInt16>?
    public var destinationPorts: ClosedRange<UInt16>?

    public init(inputPort: UInt16? = nil, sourceID: UInt16? = nil, vlanID: UInt16? = nil,
                sourceMAC: MACAddress? = nil, destinationMAC: MACAddress? = nil,
                sourcePrefix: IPPrefix? = nil, destinationPrefix: IPPrefix? = nil, ipProtocol: UInt8? = nil,
                sourcePort: UInt16? = nil, destinationPort: UInt16? = nil,
                sourcePorts: ClosedRange<UInt16>? = nil, destinationPorts: ClosedRange<UInt16>? = nil) {
        self.inputPort = inputPort
        self.sourceID = sourceID
        self.vlanID = vlanID
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.sourcePrefix = sourcePrefix
        self.destinationPrefix = destinationPrefix
        self.ipProtocol = ipProtocol
        self.sourcePorts = sourcePorts ?? sourcePort.map { $0...$0 }
        self.destinationPorts = destinationPorts ?? destinationPort.map { $0...$0 }
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
/// `name` labels the rule's hit counters and errors (empty: "rule<index>"). `output` (forward rules
/// only) sends the packet to the pipeline's named output of that name instead of its sink: exclusive,
/// as VPP's next node (no copy goes to the sink). nil: the sink.
public struct Rule: Hashable, Sendable {
    public var match: RuleMatch
    public var verdict: RuleVerdict
    public var rewrites: [Rewrite]
    public var name: String
    public var output: String?

    public init(_ match: RuleMatch, _ verdict: RuleVerdict = .forward, rewrites: [Rewrite] = [], name: String = "",
                output: String? = nil) {
        self.match = match
        self.verdict = verdict
        self.rewrites = rewrites
        self.name = name
        self.output = output
    }
}

/// Why a rule table is invalid. `rule` is the index of the offending rule.
public enum RuleError: Error, Equatable, CustomStringConvertible {
    case tooManyRules(Int, max: Int)
    case tooManyRewrites(Int, rule: Int, max: Int)
    case tooManyTableRewrites(Int, max: Int)
    case rewritesOnDropRule(rule: Int)
    case invalidVLANID(UInt16, rule: Int)
    case invalidVLANPriority(UInt8, rule: Int)
    case invalidTPID(UInt16, rule: Int)
    case invalidDSCP(UInt8, rule: Int)
    case invalidMTU(UInt16, rule: Int)
    /// A port range whose low end is above its high end.
    case emptyPortRange(rule: Int)
    /// A match on an IPv4 and an IPv6 prefix at once: no packet has both.
    case mixedAddressFamilies(rule: Int)
    case duplicateName(String, rule: Int)
    /// More named outputs than `OutputLimits.outputCountMax`.
    case tooManyOutputs(Int, max: Int)
    /// An output name declared twice, empty, or "default" (the sink's name in counters).
    case invalidOutputName(String)
    /// A rule's `output` names no declared output.
    case unknownOutput(String, rule: Int, known: [String])
    /// A drop rule with an `output`.
    case outputOnDropRule(rule: Int)

    public var description: String {
        switch self {
        case let .tooManyRules(count, max): "\(count) rules, at most \(max)"
        case let .tooManyRewrites(count, rule, max): "rule \(rule): \(count) rewrites, at most \(max)"
        case let .tooManyTableRewrites(count, max): "\(count) rewrites for every packet, at most \(max)"
        case let .rewritesOnDropRule(rule): "rule \(rule): a drop rule has no rewrites"
        case let .invalidVLANID(id, rule): "rule \(rule): VLAN id \(id) is not 0...4095"
        case let .invalidVLANPriority(priority, rule): "rule \(rule): VLAN priority \(priority) is not 0...7"
        case let .invalidTPID(tpid, rule): "rule \(rule): TPID 0x\(String(tpid, radix: 16)) is not 0x8100, 0x88a8 or 0x9100"
        case let .invalidDSCP(dscp, rule): "rule \(rule): DSCP \(dscp) is not 0...63"
        case let .invalidMTU(mtu, rule): "rule \(rule): MTU \(mtu) is below \(PacketLimits.mtuMin)"
        case let .emptyPortRange(rule): "rule \(rule): a port range's low end is above its high end"
        case let .mixedAddressFamilies(rule): "rule \(rule): an IPv4 and an IPv6 prefix never match one packet"
        case let .duplicateName(name, rule): "rule \(rule): the name '\(name)' is taken by an earlier rule"
        case let .tooManyOutputs(count, max): "\(count) named outputs, at most \(max)"
        case let .invalidOutputName(name): "output name '\(name)' is empty, 'default' or given twice"
        case let .unknownOutput(name, rule, known):
            "rule \(rule): output '\(name)' is not declared" + (known.isEmpty ? " (the pipeline declares no outputs)"
                : " (declared: \(known.joined(separator: ", ")))")
        case let .outputOnDropRule(rule): "rule \(rule): a drop rule sends to no output"
        }
    }
}

/// The fields rules match on, read once per packet. `word` packs the exact-match fields: bits 0-15
/// input port, 16-31 source id, 32-39 IP protocol, 40-51 outer VLAN id, 52 "tagged", 53 "is IP",
/// 54 "has ports", 55 "IPv4", 56 "IPv6", 57 "Ethernet". Absent fields are zero.
@frozen
public struct RuleKey: Hashable, Sendable {
    public var word: UInt64
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sourceMAC: UInt64
    public var destinationMAC: UInt64
    public var sourceAddress: IPAddress
    public var destinationAddress: IPAddress

    @inlinable public init(inputPort: UInt16 = 0, sourceID: UInt16, ipProtocol: UInt8?,
                           ports: (source: UInt16, destination: UInt16)?, vlanID: UInt16? = nil,
                           macs: (source: MACAddress, destination: MACAddress)? = nil,
                           addresses: (source: IPAddress, destination: IPAddress, version: UInt8)? = nil) {
        var word = UInt64(inputPort) | UInt64(sourceID) << 16
        if let ipProtocol { word |= RuleKey.isIP | UInt64(ipProtocol) << 32 }
        if let vlanID { word |= RuleKey.tagged | UInt64(vlanID & 0x0FFF) << 40 }
        if macs != nil { word |= RuleKey.ethernet }
        sourcePort = ports?.source ?? 0
        destinationPort = ports?.destination ?? 0
        if ports != nil { word |= RuleKey.hasPorts }
        sourceMAC = macs?.source.rawValue ?? 0
        destinationMAC = macs?.destination.rawValue ?? 0
        sourceAddress = addresses?.source ?? .zero
        destinationAddress = addresses?.destination ?? .zero
        if let addresses { word |= addresses.version == 4 ? RuleKey.ipv4 : RuleKey.ipv6 }
        self.word = word
    }

    @inlinable static var tagged: UInt64 { 1 << 52 }
    @inlinable static var isIP: UInt64 { 1 << 53 }
    @inlinable static var hasPorts: UInt64 { 1 << 54 }
    @inlinable static var ipv4: UInt64 { 1 << 55 }
    @inlinable static var ipv6: UInt64 { 1 << 56 }
    @inlinable static var ethernet: UInt64 { 1 << 57 }
}

/// One rule's match, compiled: a mask and value over `RuleKey.word`, masks and values over the MACs
/// and addresses (zero masks when not matched), and port ranges as (low, span) so that
/// `port &- low <= span` is one compare. `wide` is false when only `word` needs checking.
@frozen @usableFromInline
struct CompiledMatch: BitwiseCopyable {
    @usableFromInline var wordMask: UInt64 = 0
    @usableFromInline var wordValue: UInt64 = 0
    @usableFromInline var wide = false
    @usableFromInline var sourcePortLow: UInt16 = 0
    @usableFromInline var sourcePortSpan: UInt16 = 0xFFFF
    @usableFromInline var destinationPortLow: UInt16 = 0
    @usableFromInline var destinationPortSpan: UInt16 = 0xFFFF
    @usableFromInline var sourceMACMask: UInt64 = 0
    @usableFromInline var sourceMACValue: UInt64 = 0
    @usableFromInline var destinationMACMask: UInt64 = 0
    @usableFromInline var destinationMACValue: UInt64 = 0
    @usableFromInline var sourceMask = IPAddress.zero
    @usableFromInline var sourceValue = IPAddress.zero
    @usableFromInline var destinationMask = IPAddress.zero
    @usableFromInline var destinationValue = IPAddress.zero

    @inlinable @inline(__always) func matches(_ key: RuleKey) -> Bool {
        guard key.word & wordMask == wordValue else { return false }
        guard wide else { return true }
        // Differences OR-ed together: one test at the end instead of a branch per field.
        var miss = (key.sourceMAC & sourceMACMask) ^ sourceMACValue
        miss |= (key.destinationMAC & destinationMACMask) ^ destinationMACValue
        miss |= (key.sourceAddress.high & sourceMask.high) ^ sourceValue.high
        miss |= (key.sourceAddress.low & sourceMask.low) ^ sourceValue.low
        miss |= (key.destinationAddress.high & destinationMask.high) ^ destinationValue.high
        miss |= (key.destinationAddress.low & destinationMask.low) ^ destinationValue.low
        if key.sourcePort &- sourcePortLow > sourcePortSpan { miss |= 1 }
        if key.destinationPort &- destinationPortLow > destinationPortSpan { miss |= 1 }
        return miss == 0
    }
}

/// What a table's rules read beyond `RuleKey.word`, so the stage loads only those fields.
public struct RuleKeyNeeds: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let vlan = RuleKeyNeeds(rawValue: 1 << 0)
    public static let macs = RuleKeyNeeds(rawValue: 1 << 1)
    public static let addresses = RuleKeyNeeds(rawValue: 1 << 2)
}

/// Per-rule hit counters (packets and bytes as matched, before rewrites), one pair per rule plus
/// one for packets no rule matched. Written by the stages at the end of runs of packets hitting
/// one rule (relaxed atomic adds); read from any thread.
public final class RuleHits: @unchecked Sendable {  // unchecked: atomics behind a raw pointer
    @usableFromInline let slots: UnsafeMutablePointer<Atomic<UInt64>>
    /// Rules counted (the extra "no match" pair is at index `ruleCount`).
    public let ruleCount: Int

    init(ruleCount: Int) {
        self.ruleCount = ruleCount
        slots = .allocate(capacity: 2 * (ruleCount + 1))
        for slot in 0..<(2 * (ruleCount + 1)) { (slots + slot).initialize(to: Atomic<UInt64>(0)) }
    }

    deinit {
        slots.deinitialize(count: 2 * (ruleCount + 1))
        slots.deallocate()
    }

    /// Adds to rule `index`'s counters (`ruleCount`: no rule matched).
    @inlinable public func add(rule index: Int, packets: UInt64, bytes: UInt64) {
        precondition(index >= 0 && index <= ruleCount, "rule index out of range")
        slots[2 * index].wrappingAdd(packets, ordering: .relaxed)
        slots[2 * index + 1].wrappingAdd(bytes, ordering: .relaxed)
    }

    /// Packets and bytes of rule `index` (`ruleCount`: no rule matched).
    public func hits(rule index: Int) -> (packets: UInt64, bytes: UInt64) {
        precondition(index >= 0 && index <= ruleCount, "rule index out of range")
        return (slots[2 * index].load(ordering: .relaxed), slots[2 * index + 1].load(ordering: .relaxed))
    }
}

/// Rules compiled once (at most `PacketLimits.ruleCountMax`) into a column walked in order: the
/// first rule whose match holds decides (drop, or forward with its rewrites); no match takes
/// `defaultVerdict`. `tableRewrites` then run on every packet that is forwarded (tcprewrite-style
/// edits: prefix maps, MACs, checksum fix, MTU cut), at most `PacketLimits.tableRewritesMax`.
/// Validated when made; never allocates or retains when matching or applying. Copies share one
/// set of hit counters (`hits`). `outputs` are the pipeline's named outputs rules may send to
/// (at most `OutputLimits.outputCountMax`); output index 0 is the sink, n is `outputs[n - 1]`.
public struct RuleTable: @unchecked Sendable {  // unchecked: the columns are read-only after init
    public let rules: [Rule]
    public let defaultVerdict: RuleVerdict
    public let tableRewrites: [Rewrite]
    /// Rule names as counters show them ("rule<index>" for unnamed rules).
    public let names: [String]
    /// The named outputs rules may send to (index n + 1 in `outputIndex(rule:)`).
    public let outputs: [String]
    public let hits: RuleHits
    public let needs: RuleKeyNeeds
    @usableFromInline let ruleCount: Int
    @usableFromInline let tableRewriteCount: Int
    /// Keeps the columns below alive; never touched when matching.
    let storage: TableStorage
    @usableFromInline let matches: UnsafePointer<CompiledMatch>
    /// 1 for a drop rule.
    @usableFromInline let drops: UnsafePointer<UInt8>
    @usableFromInline let rewriteCounts: UnsafePointer<UInt8>
    /// Each rule's output index: 0 the sink, n `outputs[n - 1]`.
    @usableFromInline let outputIndices: UnsafePointer<UInt8>
    /// `outputs.count`: 0 when every packet goes to the sink (the stage then leaves metadata alone).
    @usableFromInline let outputCount: Int
    /// Rule n's rewrites are at n * rewritesPerRuleMax ..< + rewriteCounts[n]; the table's rewrites
    /// follow the last rule's slots.
    @usableFromInline let rewrites: UnsafePointer<Rewrite>

    /// Builds a table; packets no rule matches get `defaultVerdict`.
    public init(rules: [Rule], defaultVerdict: RuleVerdict = .forward, tableRewrites: [Rewrite] = [],
                outputs: [String] = []) throws(RuleError) {
        guard rules.count <= PacketLimits.ruleCountMax else {
            throw .tooManyRules(rules.count, max: PacketLimits.ruleCountMax)
        }
        guard outputs.count <= OutputLimits.outputCountMax else {
            throw .tooManyOutputs(outputs.count, max: OutputLimits.outputCountMax)
        }
        for (index, output) in outputs.enumerated()
        where output.isEmpty || output == OutputLimits.sinkName || outputs[..<index].contains(output) {
            throw .invalidOutputName(output)
        }
        guard tableRewrites.count <= PacketLimits.tableRewritesMax else {
            throw .tooManyTableRewrites(tableRewrites.count, max: PacketLimits.tableRewritesMax)
        }
        var names: [String] = []
        for (index, rule) in rules.enumerated() {
            try Self.validate(rule, index: index)
            if let output = rule.output {
                guard rule.verdict == .forward else { throw .outputOnDropRule(rule: index) }
                guard outputs.contains(output) else { throw .unknownOutput(output, rule: index, known: outputs) }
            }
            let name = rule.name.isEmpty ? "rule\(index)" : rule.name
            guard !names.contains(name) else { throw .duplicateName(name, rule: index) }
            names.append(name)
        }
        for rewrite in tableRewrites { try Self.validate(rewrite, index: rules.count) }
        let slots = max(rules.count, 1)
        let rewriteSlots = slots * PacketLimits.rewritesPerRuleMax + PacketLimits.tableRewritesMax
        let matchBytes = slots * MemoryLayout<CompiledMatch>.stride
        let dropOffset = (matchBytes + 63) & ~63
        let rewriteOffset = (dropOffset + 3 * slots + 63) & ~63
        storage = TableStorage(byteCount: rewriteOffset + rewriteSlots * MemoryLayout<Rewrite>.stride)
        let matches = storage.column(CompiledMatch.self, at: 0, count: slots)
        let drops = storage.column(UInt8.self, at: dropOffset, count: slots)
        let rewriteCounts = storage.column(UInt8.self, at: dropOffset + slots, count: slots)
        let outputIndices = storage.column(UInt8.self, at: dropOffset + 2 * slots, count: slots)
        let rewrites = storage.column(Rewrite.self, at: rewriteOffset, count: rewriteSlots)
        var needs: RuleKeyNeeds = []
        for (index, rule) in rules.enumerated() {
            (matches + index).initialize(to: Self.compile(rule.match))
            if rule.match.vlanID != nil { needs.insert(.vlan) }
            if rule.match.sourceMAC != nil || rule.match.destinationMAC != nil { needs.insert(.macs) }
            if rule.match.sourcePrefix != nil || rule.match.destinationPrefix != nil { needs.insert(.addresses) }
            drops[index] = rule.verdict == .drop ? 1 : 0
            rewriteCounts[index] = UInt8(rule.rewrites.count)
            outputIndices[index] = rule.output.map { name in UInt8(outputs.firstIndex(of: name)! + 1) } ?? 0
            for (slot, rewrite) in rule.rewrites.enumerated() {
                (rewrites + index * PacketLimits.rewritesPerRuleMax + slot).initialize(to: rewrite)
            }
        }
        for (slot, rewrite) in tableRewrites.enumerated() {
            (rewrites + slots * PacketLimits.rewritesPerRuleMax + slot).initialize(to: rewrite)
        }
        self.rules = rules
        self.defaultVerdict = defaultVerdict
        self.tableRewrites = tableRewrites
        self.names = names
        self.outputs = outputs
        outputCount = outputs.count
        self.outputIndices = UnsafePointer(outputIndices)
        self.needs = needs
        hits = RuleHits(ruleCount: rules.count)
        hitSlots = hits.slots
        ruleCount = rules.count
        tableRewriteCount = tableRewrites.count
        self.matches = UnsafePointer(matches)
        (self.drops, self.rewriteCounts) = (UnsafePointer(drops), UnsafePointer(rewriteCounts))
        self.rewrites = UnsafePointer(rewrites)
        tableRewriteStart = slots * PacketLimits.rewritesPerRuleMax
    }

    @usableFromInline let tableRewriteStart: Int
    /// `hits`' counters, reached without touching the reference on the hot path.
    @usableFromInline let hitSlots: UnsafeMutablePointer<Atomic<UInt64>>

    /// Adds a run of packets to rule `index`'s counters (`rules.count`: no rule matched).
    @inlinable public func countHits(rule index: Int, packets: UInt64, bytes: UInt64) {
        precondition(index >= 0 && index <= ruleCount, "rule index out of range")
        hitSlots[2 * index].wrappingAdd(packets, ordering: .relaxed)
        hitSlots[2 * index + 1].wrappingAdd(bytes, ordering: .relaxed)
    }

    static func validate(_ rule: Rule, index: Int) throws(RuleError) {
        guard rule.rewrites.count <= PacketLimits.rewritesPerRuleMax else {
            throw .tooManyRewrites(rule.rewrites.count, rule: index, max: PacketLimits.rewritesPerRuleMax)
        }
        guard rule.verdict == .forward || rule.rewrites.isEmpty else { throw .rewritesOnDropRule(rule: index) }
        let match = rule.match
        if let id = match.vlanID, id > 0x0FFF { throw .invalidVLANID(id, rule: index) }
        let families = [match.sourcePrefix, match.destinationPrefix].compactMap { $0.map(\.isIPv4) }
        if families.count == 2, families[0] != families[1] { throw .mixedAddressFamilies(rule: index) }
        for rewrite in rule.rewrites { try validate(rewrite, index: index) }
    }

    static func validate(_ rewrite: Rewrite, index: Int) throws(RuleError) {
        switch rewrite {
        case .setVLAN(let id) where id > 0x0FFF: throw .invalidVLANID(id, rule: index)
        case .pushVLAN(let id, _, _) where id > 0x0FFF: throw .invalidVLANID(id, rule: index)
        case .pushVLAN(_, let priority, _) where priority > 7: throw .invalidVLANPriority(priority, rule: index)
        case .pushVLAN(_, _, let tpid) where !EtherType.isVLAN(tpid): throw .invalidTPID(tpid, rule: index)
        case .setDSCP(let dscp) where dscp > 63: throw .invalidDSCP(dscp, rule: index)
        case .truncateToMTU(let mtu) where mtu < PacketLimits.mtuMin: throw .invalidMTU(mtu, rule: index)
        default: break
        }
        assert(rewrite.isValid, "a value Rewrite.isValid rejects passed validation")
    }

    /// A match as masks and values over `RuleKey`.
    static func compile(_ match: RuleMatch) -> CompiledMatch {
        var compiled = CompiledMatch()
        func exact(_ bits: UInt64, mask: UInt64, value: UInt64) {
            compiled.wordMask |= bits | mask
            compiled.wordValue |= bits | value
        }
        if let port = match.inputPort { exact(0, mask: 0xFFFF, value: UInt64(port)) }
        if let id = match.sourceID { exact(0, mask: 0xFFFF << 16, value: UInt64(id) << 16) }
        if let proto = match.ipProtocol { exact(RuleKey.isIP, mask: 0xFF << 32, value: UInt64(proto) << 32) }
        if let vlan = match.vlanID { exact(RuleKey.tagged, mask: 0x0FFF << 40, value: UInt64(vlan) << 40) }
        if let range = match.sourcePorts {
            exact(RuleKey.hasPorts, mask: 0, value: 0)
            (compiled.sourcePortLow, compiled.sourcePortSpan) = (range.lowerBound, range.upperBound - range.lowerBound)
        }
        if let range = match.destinationPorts {
            exact(RuleKey.hasPorts, mask: 0, value: 0)
            (compiled.destinationPortLow, compiled.destinationPortSpan) = (range.lowerBound, range.upperBound - range.lowerBound)
        }
        if let mac = match.sourceMAC {
            exact(RuleKey.ethernet, mask: 0, value: 0)
            (compiled.sourceMACMask, compiled.sourceMACValue) = (0xFFFF_FFFF_FFFF, mac.rawValue)
        }
        if let mac = match.destinationMAC {
            exact(RuleKey.ethernet, mask: 0, value: 0)
            (compiled.destinationMACMask, compiled.destinationMACValue) = (0xFFFF_FFFF_FFFF, mac.rawValue)
        }
        if let prefix = match.sourcePrefix {
            exact(prefix.isIPv4 ? RuleKey.ipv4 : RuleKey.ipv6, mask: 0, value: 0)
            (compiled.sourceMask, compiled.sourceValue) = (prefix.mask, prefix.address)
        }
        if let prefix = match.destinationPrefix {
            exact(prefix.isIPv4 ? RuleKey.ipv4 : RuleKey.ipv6, mask: 0, value: 0)
            (compiled.destinationMask, compiled.destinationValue) = (prefix.mask, prefix.address)
        }
        compiled.wide = match.sourcePorts != nil || match.destinationPorts != nil || match.sourceMAC != nil
            || match.destinationMAC != nil || match.sourcePrefix != nil || match.destinationPrefix != nil
        return compiled
    }

    /// The output of the packets rule `index` decided (`rules.count`, no match: 0, the sink). 0 is
    /// the sink, n `outputs[n - 1]`.
    @inlinable public func outputIndex(rule index: Int) -> Int {
        precondition(index >= 0 && index <= ruleCount, "rule index out of range")
        return index < ruleCount ? Int(outputIndices[index]) : 0
    }

    /// True when the table has named outputs (the action stage then tags every packet it passes on).
    @inlinable public var hasOutputs: Bool { outputCount > 0 }

    /// No rules, the default forwards, no table rewrites, no named outputs: every classified packet
    /// goes on unchanged under the default, so the action stage reads no packet bytes.
    @inlinable public var forwardsEverything: Bool {
        ruleCount == 0 && defaultVerdict == .forward && tableRewriteCount == 0 && outputCount == 0
    }

    /// Index of the first rule matching `key`, or nil.
    @inlinable public func firstMatch(_ key: RuleKey) -> Int? {
        for index in 0..<ruleCount where matches[index].matches(key) { return index }
        return nil
    }

    /// Runs the first rule matching `key` (or the default verdict) on the packet in `buffer`, updating
    /// `layout`. Same buffer contract as `PacketRewriter`; never allocates.
    @inlinable public func apply(
        _ key: RuleKey, to buffer: UnsafeMutableRawBufferPointer, layout: inout PacketLayout
    ) -> RuleOutcome {
        var matched = 0
        return apply(key, to: buffer, layout: &layout, matched: &matched)
    }

    /// As `apply(_:to:layout:)`, and sets `matched` to the index of the rule that decided, or
    /// `rules.count` when none matched (the index `hits` counts it under).
    @inlinable public func apply(
        _ key: RuleKey, to buffer: UnsafeMutableRawBufferPointer, layout: inout PacketLayout, matched: inout Int
    ) -> RuleOutcome {
        var rewritten = false
        if let index = firstMatch(key) {
            matched = index
            if drops[index] != 0 { return .dropped(.droppedByRule) }
            let first = index * PacketLimits.rewritesPerRuleMax
            let end = first + Int(rewriteCounts[index])
            var maps = PrefixMapState()
            for slot in first..<end {
                if let reason = PacketRewriter.apply(rewrites[slot], to: buffer, layout: &layout, maps: &maps) {
                    return .dropped(reason)
                }
            }
            rewritten = end > first
        } else {
            matched = ruleCount
            if defaultVerdict == .drop { return .dropped(.droppedByRule) }
        }
        var maps = PrefixMapState()
        for slot in tableRewriteStart..<(tableRewriteStart + tableRewriteCount) {
            if let reason = PacketRewriter.apply(rewrites[slot], to: buffer, layout: &layout, maps: &maps) {
                return .dropped(reason)
            }
            rewritten = true
        }
        return rewritten ? .rewritten : .forwarded
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

extension IPPrefix {
    /// The prefix's bits as a mask over the 128-bit space.
    @inlinable public var mask: IPAddress {
        let highMask: UInt64 = length >= 64 ? ~0 : (length == 0 ? 0 : ~0 << UInt64(64 - length))
        let lowMask: UInt64 = length <= 64 ? 0 : (length >= 128 ? ~0 : ~0 << UInt64(128 - length))
        return IPAddress(high: highMask, low: lowMask)
    }
}
