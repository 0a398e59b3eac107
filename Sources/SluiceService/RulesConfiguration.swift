// Path: Sources/SluiceService/RulesConfiguration.swift — a `rules:` list (a pipeline's in `sluice run`,
// a `--rules FILE` or `--rule '{...}'` of `sluice replay`) decoded into a checked `RuleTable`.
// docs/RULES.md describes the format.
import SluicePacket

/// Decodes rule lists. Every error names the rule (index and name) and the field, with the key path
/// and line: `config line 12: pipelines[0].rules[2].match.dst_port: rule 2 'web': ...`.
public enum RulesConfiguration {
    /// Keys of one rule.
    static let ruleKeys = ["name", "match", "action", "rewrite", "output"]
    /// Keys of a rule's `match`.
    static let matchKeys = ["in_port", "source_id", "vlan", "src_mac", "dst_mac", "src_prefix", "dst_prefix", "protocol",
                            "src_port", "dst_port"]
    /// Keys of one `rewrite` entry (each entry is a mapping with one of them).
    static let rewriteKeys = ["set_src_mac", "set_dst_mac", "set_vlan", "push_vlan", "pop_vlan", "set_src_ip", "set_dst_ip",
                              "set_src_port", "set_dst_port", "set_ttl", "dec_ttl", "set_dscp", "fix_checksums"]
    static let protocols: [String: UInt8] = ["tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47, "esp": 50, "sctp": 132]

    /// A table from a YAML text holding a mapping whose `rules` key holds the list (what
    /// `--rules FILE` reads; empty text: no rules), then the `extraRules` (each one rule as a YAML
    /// flow mapping, `--rule`), then `tableRewrites` for every forwarded packet. `outputs`: the
    /// named outputs a rule's `output` may name.
    public static func table(yaml text: String, origin: String = "rules", extraRules: [String] = [],
                             tableRewrites: [Rewrite] = [], outputs: [String] = []) throws(ConfigError) -> RuleTable {
        var readers: [ConfigReader] = []
        if !text.isEmpty {
            let root = ConfigReader(try ConfigNode.parse(yaml: text), key: "")
            try root.allowKeys([origin])
            readers += try root.required(origin).list()
        }
        for (index, rule) in extraRules.enumerated() {
            readers.append(ConfigReader(try ConfigNode.parse(yaml: rule), key: "--rule[\(index)]"))
        }
        return try table(readers, tableRewrites: tableRewrites, outputs: outputs)
    }

    /// Hits of each rule by name, then of "(no match)"; nothing for a table without rules.
    public static func hits(_ table: RuleTable) -> [(rule: String, packets: UInt64, bytes: UInt64)] {
        guard !table.rules.isEmpty else { return [] }
        return (0...table.rules.count).map { index in
            let hit = table.hits.hits(rule: index)
            return (index < table.names.count ? table.names[index] : "(no match)", hit.packets, hit.bytes)
        }
    }

    /// A table from the rules in the file at `path` (if any), then the `--rule` texts in `extraRules`.
    public static func table(file path: String?, extraRules: [String], tableRewrites: [Rewrite],
                             outputs: [String] = []) throws(ConfigError) -> RuleTable {
        let text = try path.map { path throws(ConfigError) in try ServiceConfiguration.readFile(path) } ?? ""
        return try table(yaml: text, origin: "rules", extraRules: extraRules, tableRewrites: tableRewrites,
                         outputs: outputs)
    }

    /// A pipeline's `rules:` list, whose rules may name the pipeline's `outputs`.
    static func decode(_ reader: ConfigReader, outputs: [String] = []) throws(ConfigError) -> RuleTable {
        try table(try reader.list(), tableRewrites: [], outputs: outputs)
    }

    static func table(_ readers: [ConfigReader], tableRewrites: [Rewrite],
                      outputs: [String] = []) throws(ConfigError) -> RuleTable {
        guard readers.count <= PacketLimits.ruleCountMax else {
            throw (readers.last ?? ConfigReader(.empty, key: "rules")).invalid(
                "\(readers.count) rules, at most \(PacketLimits.ruleCountMax)")
        }
        var rules: [Rule] = []
        for (index, reader) in readers.enumerated() {
            let name = (try? reader.optional("name")?.string()) ?? ""
            do { rules.append(try decodeRule(reader, index: index)) } catch {
                throw naming(error, rule: index, name: name)
            }
        }
        do { return try RuleTable(rules: rules, tableRewrites: tableRewrites, outputs: outputs) } catch {
            let index = error.ruleIndex ?? 0
            var reader = index < readers.count ? readers[index] : ConfigReader(.empty, key: "rules")
            switch error {
            case .unknownOutput, .outputOnDropRule: reader = reader.child("output")
            default: break
            }
            throw naming(reader.invalid("\(error)"), rule: index, name: index < rules.count ? rules[index].name : "")
        }
    }

    /// The same error with "rule N 'name': " in front of its reason.
    static func naming(_ error: ConfigError, rule index: Int, name: String) -> ConfigError {
        let label = "rule \(index)" + (name.isEmpty ? "" : " '\(name)'")
        switch error {
        case let .invalid(key, line, reason): return .invalid(key: key, line: line, reason: "\(label): \(reason)")
        case let .outOfRange(key, line, value, allowed):
            return .invalid(key: key, line: line, reason: "\(label): must be \(ConfigError.number(allowed.lowerBound))...\(ConfigError.number(allowed.upperBound)), got \(ConfigError.number(value))")
        case let .unknownKey(key, line, known):
            return .invalid(key: key, line: line, reason: "\(label): unknown key (known here: \(known.joined(separator: ", ")))")
        case let .missingKey(key): return .invalid(key: key, line: 0, reason: "\(label): is required")
        default: return error
        }
    }

    static func decodeRule(_ reader: ConfigReader, index: Int) throws(ConfigError) -> Rule {
        try reader.allowKeys(ruleKeys)
        let name = try reader.optional("name")?.string() ?? ""
        if !name.isEmpty {
            guard name.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw reader.child("name").invalid("'\(name)' must be 1-64 letters, digits, '-', '_' or '.'")
            }
        }
        let match = try reader.optional("match").map { reader throws(ConfigError) in try decodeMatch(reader) } ?? .any
        var verdict = RuleVerdict.forward
        if let action = reader.optional("action") {
            switch try action.string() {
            case "forward", "count": verdict = .forward
            case "drop": verdict = .drop
            case let other: throw action.invalid("'\(other)' is not forward, count or drop")
            }
        }
        var rewrites: [Rewrite] = []
        if let list = reader.optional("rewrite") {
            let entries = try list.list()
            guard verdict == .forward else { throw list.invalid("a drop rule has no rewrites") }
            guard entries.count <= PacketLimits.rewritesPerRuleMax else {
                throw list.invalid("\(entries.count) rewrites, at most \(PacketLimits.rewritesPerRuleMax)")
            }
            for entry in entries { rewrites.append(try decodeRewrite(entry)) }
        }
        var output: String?
        if let outputReader = reader.optional("output") {
            let text = try outputReader.string()
            guard !text.isEmpty else { throw outputReader.invalid("empty output name") }
            guard verdict == .forward else { throw outputReader.invalid("a drop rule sends to no output") }
            output = text
        }
        return Rule(match, verdict, rewrites: rewrites, name: name, output: output)
    }

    static func decodeMatch(_ reader: ConfigReader) throws(ConfigError) -> RuleMatch {
        try reader.allowKeys(matchKeys)
        var match = RuleMatch()
        if let port = reader.optional("in_port") { match.inputPort = UInt16(try port.int(in: 0...65535)) }
        if let id = reader.optional("source_id") { match.sourceID = UInt16(try id.int(in: 0...65535)) }
        if let vlan = reader.optional("vlan") { match.vlanID = UInt16(try vlan.int(in: 0...4095)) }
        if let mac = reader.optional("src_mac") { match.sourceMAC = try mac.macAddress() }
        if let mac = reader.optional("dst_mac") { match.destinationMAC = try mac.macAddress() }
        if let prefix = reader.optional("src_prefix") { match.sourcePrefix = try prefix.ipPrefix() }
        if let prefix = reader.optional("dst_prefix") { match.destinationPrefix = try prefix.ipPrefix() }
        if let source = match.sourcePrefix, let destination = match.destinationPrefix, source.isIPv4 != destination.isIPv4 {
            throw reader.child("dst_prefix").invalid("an IPv4 and an IPv6 prefix never match one packet")
        }
        if let proto = reader.optional("protocol") {
            let text = try proto.string().lowercased()
            if let known = protocols[text] { match.ipProtocol = known } else {
                guard let number = UInt8(text) else {
                    throw proto.invalid("'\(text)' is not a protocol number 0...255 or one of \(protocols.keys.sorted().joined(separator: ", "))")
                }
                match.ipProtocol = number
            }
        }
        if let ports = reader.optional("src_port") { match.sourcePorts = try ports.portRange() }
        if let ports = reader.optional("dst_port") { match.destinationPorts = try ports.portRange() }
        return match
    }

    static func decodeRewrite(_ reader: ConfigReader) throws(ConfigError) -> Rewrite {
        let pairs = try reader.pairs()
        guard pairs.count == 1 else {
            throw reader.invalid("each rewrite is one of \(rewriteKeys.joined(separator: ", ")) with its value")
        }
        let (key, value) = pairs[0]
        switch key {
        case "set_src_mac": return .setSourceMAC(try value.macAddress())
        case "set_dst_mac": return .setDestinationMAC(try value.macAddress())
        case "set_vlan": return .setVLAN(id: UInt16(try value.int(in: 0...4095)))
        case "push_vlan":
            if case .map = value.node {
                try value.allowKeys(["id", "priority", "tpid"])
                let id = UInt16(try value.required("id").int(in: 0...4095))
                let priority = UInt8(try value.optional("priority")?.int(in: 0...7) ?? 0)
                var tpid = EtherType.vlan
                if let tpidReader = value.optional("tpid") {
                    let text = try tpidReader.string().lowercased()
                    let parsed = text.hasPrefix("0x") ? UInt16(text.dropFirst(2), radix: 16) : UInt16(text)
                    guard let parsed, EtherType.isVLAN(parsed) else {
                        throw tpidReader.invalid("'\(text)' is not 0x8100, 0x88a8 or 0x9100")
                    }
                    tpid = parsed
                }
                return .pushVLAN(id: id, priority: priority, tpid: tpid)
            }
            return .pushVLAN(id: UInt16(try value.int(in: 0...4095)), priority: 0, tpid: EtherType.vlan)
        case "pop_vlan":
            guard try value.bool() else { throw value.invalid("only `pop_vlan: true` makes sense") }
            return .stripVLAN
        case "set_src_ip": return .setSourceAddress(try value.addressOrPrefix())
        case "set_dst_ip": return .setDestinationAddress(try value.addressOrPrefix())
        case "set_src_port": return .setSourcePort(UInt16(try value.int(in: 0...65535)))
        case "set_dst_port": return .setDestinationPort(UInt16(try value.int(in: 0...65535)))
        case "set_ttl": return .setTTL(UInt8(try value.int(in: 0...255)))
        case "dec_ttl":
            guard try value.bool() else { throw value.invalid("only `dec_ttl: true` makes sense") }
            return .decrementTTL
        case "set_dscp": return .setDSCP(UInt8(try value.int(in: 0...63)))
        case "fix_checksums":
            guard try value.bool() else { throw value.invalid("only `fix_checksums: true` makes sense") }
            return .fixChecksums
        default:
            throw ConfigError.unknownKey(key: value.key, line: value.node.line, known: rewriteKeys)
        }
    }
}

extension RuleError {
    /// The rule the error is about, when it names one.
    var ruleIndex: Int? {
        switch self {
        case let .tooManyRewrites(_, rule, _), let .rewritesOnDropRule(rule), let .invalidVLANID(_, rule),
             let .invalidVLANPriority(_, rule), let .invalidTPID(_, rule), let .invalidDSCP(_, rule),
             let .invalidMTU(_, rule), let .emptyPortRange(rule), let .mixedAddressFamilies(rule),
             let .duplicateName(_, rule), let .unknownOutput(_, rule, _), let .outputOnDropRule(rule): rule
        case .tooManyRules, .tooManyTableRewrites, .tooManyOutputs, .invalidOutputName: nil
        }
    }
}

extension ConfigReader {
    func macAddress() throws(ConfigError) -> MACAddress {
        let text = try string()
        guard let address = MACAddress(text) else { throw invalid("'\(text)' is not a MAC address like 02:00:00:00:00:01") }
        return address
    }

    /// A prefix with no host bits set, e.g. 198.18.0.0/15 or 2001:db8::/32.
    func ipPrefix() throws(ConfigError) -> IPPrefix {
        let text = try string()
        guard let prefix = IPPrefix(text) else {
            throw invalid("'\(text)' is not a prefix like 198.18.0.0/15 or 2001:db8::/32 (no host bits set)")
        }
        return prefix
    }

    /// An address (the whole address: /32 or /128) or a prefix (its bits only, host bits kept).
    func addressOrPrefix() throws(ConfigError) -> IPPrefix {
        let text = try string()
        if text.contains("/") { return try ipPrefix() }
        guard let address = IPAddress(text) else { throw invalid("'\(text)' is not an IPv4 or IPv6 address") }
        let prefix = address.ipv4 != nil && !text.contains(":") ? IPPrefix(ipv4: address.ipv4!, length: 32)
            : IPPrefix(ipv6: address, length: 128)
        return prefix!
    }

    /// A port (80) or an inclusive range ("8000-8999").
    func portRange() throws(ConfigError) -> ClosedRange<UInt16> {
        let text = try string()
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            .map { UInt16(String($0.filter { $0 != " " })) }
        guard (1...2).contains(parts.count), let low = parts.first ?? nil, let high = parts.last ?? nil else {
            throw invalid("'\(text)' is not a port 0...65535 or a range like 8000-8999")
        }
        guard low <= high else { throw invalid("'\(text)': the range's low end is above its high end") }
        return low...high
    }
}
