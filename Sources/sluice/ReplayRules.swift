// Path: Sources/sluice/ReplayRules.swift — `sluice replay`'s rule flags (--rules, --rule) and
// tcprewrite's jobs (--srcipmap, --dstipmap, --enet-smac, --enet-dmac, --fixcsum, --mtu-trunc) as
// one `RuleTable`.
import ArgumentParser
import SluicePacket
import SluiceReplay
import SluiceService

extension ReplayCommand {
    /// True when any rule, named output or tcprewrite flag is given.
    var hasRuleFlags: Bool {
        rules != nil || !rule.isEmpty || !outputs.isEmpty || !srcipmap.isEmpty || !dstipmap.isEmpty || enetSmac != nil
            || enetDmac != nil || fixcsum || mtuTrunc
    }

    /// Checks the tcprewrite flags (usage errors); the rules themselves are read in `run` (exit 2).
    func validateRules() throws {
        guard !hasRuleFlags || stages == ReplayStages.classifyAndAct.rawValue else {
            throw ValidationError("rules and rewrites run in the action stage: give --stages 4 (the default)")
        }
        guard (Int(PacketLimits.mtuMin)...65535).contains(mtu) else {
            throw ValidationError("--mtu must be in \(PacketLimits.mtuMin)...65535, got \(mtu)")
        }
        _ = try tableRewrites()
        _ = try namedOutputs()
    }

    /// The --output flags: NAME=FILE (pcap), NAME=iface:IFACE or NAME=discard; names unique, at most
    /// `OutputLimits.outputCountMax`, never "default" (the sink's name in counters).
    func namedOutputs() throws -> [NamedOutput] {
        guard outputs.count <= OutputLimits.outputCountMax else {
            throw ValidationError("--output: \(outputs.count) named outputs, at most \(OutputLimits.outputCountMax)")
        }
        var result: [NamedOutput] = []
        for text in outputs {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[1].isEmpty else {
                throw ValidationError("--output '\(text)': expected NAME=FILE.pcap, NAME=iface:IFACE or NAME=discard")
            }
            let name = parts[0]
            guard !name.isEmpty, name.count <= 64, name != OutputLimits.sinkName,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw ValidationError("--output '\(text)': the name must be 1-64 letters, digits, '-', '_' or '.', not '\(OutputLimits.sinkName)'")
            }
            guard !result.contains(where: { $0.name == name }) else {
                throw ValidationError("--output '\(text)': '\(name)' is given twice")
            }
            let output: ReplayOutput = parts[1] == "discard" ? .discard
                : parts[1].hasPrefix("iface:") ? .interface(String(parts[1].dropFirst("iface:".count))) : .pcapFile(parts[1])
            if case .pcapFile(let path) = output, path == out || result.contains(where: { $0.output == output }) {
                throw ValidationError("--output '\(text)': '\(path)' is written by another output")
            }
            result.append(NamedOutput(name: name, output: output))
        }
        return result
    }

    /// The edits every forwarded packet gets, in tcprewrite's order: address maps, MACs, MTU cut,
    /// then the checksum fix.
    func tableRewrites() throws -> [Rewrite] {
        var rewrites: [Rewrite] = []
        for (flag, texts, destination) in [("--srcipmap", srcipmap, false), ("--dstipmap", dstipmap, true)] {
            for text in texts {
                for pair in text.split(separator: ",") {
                    guard let prefixes = Self.prefixPair(String(pair)) else {
                        throw ValidationError("\(flag) '\(pair)': expected FROM:TO prefixes of one family, e.g. 10.0.0.0/8:198.18.0.0/16 or [2001:db8::]/32:[2001:db9::]/32")
                    }
                    let (from, to) = prefixes
                    rewrites.append(destination ? .mapDestinationPrefix(from: from, to: to) : .mapSourcePrefix(from: from, to: to))
                }
            }
        }
        for (flag, text, destination) in [("--enet-smac", enetSmac, false), ("--enet-dmac", enetDmac, true)] {
            guard let text else { continue }
            guard let address = MACAddress(text) else { throw ValidationError("\(flag) '\(text)' is not a MAC address") }
            rewrites.append(destination ? .setDestinationMAC(address) : .setSourceMAC(address))
        }
        if mtuTrunc { rewrites.append(.truncateToMTU(UInt16(mtu))) }
        if fixcsum { rewrites.append(.fixChecksums) }
        guard rewrites.count <= PacketLimits.tableRewritesMax else {
            throw ValidationError("\(rewrites.count) address maps and edits, at most \(PacketLimits.tableRewritesMax)")
        }
        return rewrites
    }

    /// "a.b.c.d/n:e.f.g.h/m" or "[v6]/n:[v6]/m" (tcprewrite's cidr:cidr), both prefixes of one family.
    static func prefixPair(_ text: String) -> (IPPrefix, IPPrefix)? {
        let parts: [String]
        if text.hasPrefix("[") {
            guard let middle = text.firstRange(of: ":[") else { return nil }
            parts = [String(text[..<middle.lowerBound]), String(text[text.index(after: middle.lowerBound)...])]
        } else {
            parts = text.split(separator: ":").map(String.init)
        }
        guard parts.count == 2 else { return nil }
        let prefixes = parts.map { IPPrefix($0.replacing("[", with: "").replacing("]", with: "")) }
        guard let from = prefixes[0], let to = prefixes[1], from.isIPv4 == to.isIPv4 else { return nil }
        return (from, to)
    }

    /// The table from --rules, --rule and the tcprewrite flags; a bad rule is exit 2, naming it.
    func ruleTable() throws -> RuleTable {
        guard hasRuleFlags else { return try RuleTable(rules: []) }
        do {
            return try RulesConfiguration.table(file: rules, extraRules: rule, tableRewrites: try tableRewrites(),
                                                outputs: try namedOutputs().map(\.name))
        } catch let error as ConfigError {
            FileHandleStderr.write("sluice replay: \(rules.map { "--rules \($0): " } ?? "")\(error)\n")
            throw ExitCode(2)
        }
    }

    /// One line per output (the sink as "default") after the rule hits, with named outputs.
    func printOutputCounts(_ counts: [OutputCount]) {
        guard !counts.isEmpty else { return }
        let width = counts.map(\.name.count).max() ?? 0
        print("Outputs:")
        for count in counts {
            print("  \(count.name)\(String(repeating: " ", count: width - count.name.count))  \(count.packets) packets  \(count.bytes) bytes  \(count.drops) drops")
        }
    }

    /// One line per rule (and for packets no rule matched) after the summary.
    func printRuleHits(_ table: RuleTable) {
        let hits = RulesConfiguration.hits(table)
        guard !hits.isEmpty else { return }
        let width = hits.map(\.rule.count).max() ?? 0
        print("Rule hits (first match wins):")
        for hit in hits {
            print("  \(hit.rule)\(String(repeating: " ", count: width - hit.rule.count))  \(hit.packets) packets  \(hit.bytes) bytes")
        }
    }
}
