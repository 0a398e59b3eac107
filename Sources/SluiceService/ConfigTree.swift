// Path: Sources/SluiceService/ConfigTree.swift — a config file as a tree of keys, lists and scalars
// with their line numbers, and `--set key.path=value` overrides applied to it before validation.
import CYaml
import Yams

/// A parsed config value: where it came from (line, 0 for an override or a default) and what it is.
public indirect enum ConfigNode: Sendable, Equatable {
    case scalar(String, line: Int)
    case list([ConfigNode], line: Int)
    /// Keys in file order; a key appears once (duplicates are a syntax error).
    case map([(key: String, value: ConfigNode)], line: Int)

    public static func == (lhs: ConfigNode, rhs: ConfigNode) -> Bool {
        switch (lhs, rhs) {
        case let (.scalar(a, _), .scalar(b, _)): a == b
        case let (.list(a, _), .list(b, _)): a == b
        case let (.map(a, _), .map(b, _)): a.map(\.key) == b.map(\.key) && a.map(\.value) == b.map(\.value)
        default: false
        }
    }

    public var line: Int {
        switch self {
        case .scalar(_, let line), .list(_, let line), .map(_, let line): line
        }
    }

    /// An empty mapping (the config with no file).
    public static let empty = ConfigNode.map([], line: 0)
}

/// A config that could not be read or is wrong: says which key and what is wrong with it.
public enum ConfigError: Error, Equatable, CustomStringConvertible {
    /// The file could not be read.
    case unreadable(path: String, reason: String)
    /// Not YAML, or YAML the config cannot use (several documents, keys that are not words).
    case syntax(line: Int, reason: String)
    /// An anchor (`&name`) or alias (`*name`): refused before any tree is built, so a few hundred bytes
    /// of nested aliases cannot expand into gigabytes.
    case anchorOrAlias(line: Int)
    /// A key the format does not have (a typo, usually).
    case unknownKey(key: String, line: Int, known: [String])
    case missingKey(key: String)
    /// A key whose value is wrong.
    case invalid(key: String, line: Int, reason: String)
    /// A key whose number lies outside what it may be (`allowed` is inclusive).
    case outOfRange(key: String, line: Int, value: Double, allowed: ClosedRange<Double>)
    /// A `--set` override that is not `key=value` or names a path the tree cannot take.
    case badOverride(String, reason: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): "cannot read config \(path): \(reason)"
        case let .syntax(line, reason): "config line \(line): \(reason)"
        case let .anchorOrAlias(line): "config line \(line): anchors and aliases (&name, *name) are not supported"
        case let .unknownKey(key, line, known):
            "config\(Self.at(line)): unknown key '\(key)'" + (known.isEmpty ? "" : " (known here: \(known.joined(separator: ", ")))")
        case let .missingKey(key): "config: '\(key)' is required"
        case let .invalid(key, line, reason): "config\(Self.at(line)): \(key): \(reason)"
        case let .outOfRange(key, line, value, allowed):
            "config\(Self.at(line)): \(key): must be \(Self.number(allowed.lowerBound))...\(Self.number(allowed.upperBound)), got \(Self.number(value))"
        case let .badOverride(text, reason): "--set '\(text)': \(reason)"
        }
    }

    /// The key the error is about, when it names one.
    public var key: String? {
        switch self {
        case let .unknownKey(key, _, _), let .missingKey(key), let .invalid(key, _, _), let .outOfRange(key, _, _, _): key
        case .unreadable, .syntax, .anchorOrAlias, .badOverride: nil
        }
    }

    private static func at(_ line: Int) -> String { line > 0 ? " line \(line)" : "" }

    /// A whole number without a fraction (`1000000`, not `1000000.0`), any other number as Swift prints it.
    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? "\(Int(value))" : "\(value)"
    }
}

extension ConfigNode {
    /// Parses YAML text into a tree. A document must be a mapping (or empty). Anchors and aliases
    /// are refused first, from the token stream (linear in the text), before anything is composed.
    public static func parse(yaml text: String) throws(ConfigError) -> ConfigNode {
        if let line = firstAnchorOrAliasLine(text) { throw .anchorOrAlias(line: line) }
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch let error as YamlError {
            throw .syntax(line: Self.line(of: error, in: text), reason: Self.reason(of: error))
        } catch {
            throw .syntax(line: 0, reason: "\(error)")
        }
        guard let root else { return .empty }
        let tree = try convert(root)
        guard case .map = tree else { throw .syntax(line: tree.line, reason: "the top level must be a mapping of keys") }
        return tree
    }

    private static func convert(_ node: Node) throws(ConfigError) -> ConfigNode {
        let line = node.mark?.line ?? 0
        switch node {
        case .scalar(let scalar):
            // A plain `~`/`null`/empty value is the absence of a value: an empty string here.
            let isNull = scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
            return .scalar(isNull ? "" : scalar.string, line: line)
        case .sequence(let sequence):
            var items: [ConfigNode] = []
            for item in sequence { items.append(try convert(item)) }
            return .list(items, line: line)
        case .mapping(let mapping):
            var pairs: [(key: String, value: ConfigNode)] = []
            for (key, value) in mapping {
                guard case .scalar(let keyScalar) = key else {
                    throw .syntax(line: key.mark?.line ?? line, reason: "keys must be plain words")
                }
                if pairs.contains(where: { $0.key == keyScalar.string }) {
                    throw .syntax(line: key.mark?.line ?? line, reason: "key '\(keyScalar.string)' appears twice")
                }
                // A block under a key is reported at the key's line, not at its first entry's.
                var converted = try convert(value)
                let keyLine = key.mark?.line ?? line
                switch converted {
                case .map(let inner, _): converted = .map(inner, line: keyLine)
                case .list(let inner, _): converted = .list(inner, line: keyLine)
                case .scalar: break
                }
                pairs.append((keyScalar.string, converted))
            }
            return .map(pairs, line: line)
        case .alias:
            throw .anchorOrAlias(line: line)
        }
    }

    /// The line (from 1) of the first anchor or alias token in `text`, or nil. Scans tokens only
    /// (libyaml's scanner, which Yams parses with): no node is built, nothing is expanded. Text the
    /// scanner refuses is left to `Yams.compose`, which reports it with its line.
    static func firstAnchorOrAliasLine(_ text: String) -> Int? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return nil }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBufferPointer { buffer -> Int? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var token = yaml_token_t()
            while yaml_parser_scan(&parser, &token) == 1 {
                defer { yaml_token_delete(&token) }
                switch token.type {
                case YAML_ANCHOR_TOKEN, YAML_ALIAS_TOKEN: return Int(token.start_mark.line) + 1
                case YAML_STREAM_END_TOKEN, YAML_NO_TOKEN: return nil
                default: continue
                }
            }
            return nil
        }
    }

    /// The line (from 1) an error is at. A reader error (a NUL or other control byte, bad UTF-8)
    /// carries a byte offset, not a mark: its line is counted from the text.
    private static func line(of error: YamlError, in text: String) -> Int {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): mark.line
        case .duplicatedKeysInMapping(_, let context): context.mark.line
        case .reader(_, let offset?, _, _): 1 + text.utf8.prefix(max(offset, 0)).lazy.filter { $0 == UInt8(ascii: "\n") }.count
        default: 0
        }
    }

    private static func reason(of error: YamlError) -> String {
        switch error {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _): problem
        case .duplicatedKeysInMapping(let duplicates, _): "duplicated keys \(duplicates.joined(separator: ", "))"
        case .reader(let problem, _, let value, _) where value >= 0:
            "\(problem) (U+\(String(repeating: "0", count: max(0, 4 - String(value, radix: 16).count)) + String(value, radix: 16, uppercase: true)))"
        default: "\(error)"
        }
    }
}

// MARK: - Overrides

extension ConfigNode {
    /// Applies `key.path=value` (e.g. `storage.listen=127.0.0.1:7001`, `pipelines[0].sink.pcap=out.pcap`,
    /// `cores=[0,1]`): the value is read as YAML (a scalar or a flow list/map), missing maps on the way
    /// are made, a list index may name an existing element or the next one.
    public func applying(override text: String) throws(ConfigError) -> ConfigNode {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
            throw .badOverride(text, reason: "expected key.path=value")
        }
        let path = try Self.pathComponents(String(text[..<equals]), text: text)
        let valueText = String(text[text.index(after: equals)...])
        let value: ConfigNode
        if valueText.hasPrefix("[") || valueText.hasPrefix("{") {
            guard Self.firstAnchorOrAliasLine(valueText) == nil else {
                throw .badOverride(text, reason: "anchors and aliases (&name, *name) are not supported")
            }
            let parsed: Node?
            do { parsed = try Yams.compose(yaml: valueText) } catch {
                throw .badOverride(text, reason: "value is not a YAML list or mapping")
            }
            guard let parsed else { throw .badOverride(text, reason: "empty value") }
            do { value = try Self.convert(parsed).relined() } catch { throw .badOverride(text, reason: "\(error)") }
        } else {
            value = .scalar(valueText, line: 0)
        }
        return try setting(value, at: path[...], text: text)
    }

    private enum PathComponent { case key(String), index(Int) }

    private static func pathComponents(_ key: String, text: String) throws(ConfigError) -> [PathComponent] {
        var result: [PathComponent] = []
        for part in key.split(separator: ".", omittingEmptySubsequences: false) {
            var name = Substring(part)
            var indices: [Int] = []
            while name.hasSuffix("]"), let open = name.lastIndex(of: "[") {
                guard let index = Int(name[name.index(after: open)..<name.index(before: name.endIndex)]), index >= 0 else {
                    throw .badOverride(text, reason: "'\(part)' has a bad list index")
                }
                indices.insert(index, at: 0)
                name = name[..<open]
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                throw .badOverride(text, reason: "'\(part)' is not a key")
            }
            result.append(.key(String(name)))
            result += indices.map { .index($0) }
        }
        return result
    }

    private func setting(_ value: ConfigNode, at path: ArraySlice<PathComponent>, text: String) throws(ConfigError) -> ConfigNode {
        guard let first = path.first else { return value }
        let rest = path.dropFirst()
        switch (first, self) {
        case let (.key(key), .map(pairs, line)):
            var pairs = pairs
            if let slot = pairs.firstIndex(where: { $0.key == key }) {
                pairs[slot].value = try pairs[slot].value.setting(value, at: rest, text: text)
            } else {
                pairs.append((key, try ConfigNode.fresh(for: rest).setting(value, at: rest, text: text)))
            }
            return .map(pairs, line: line)
        case let (.index(index), .list(items, line)):
            var items = items
            if index < items.count {
                items[index] = try items[index].setting(value, at: rest, text: text)
            } else if index == items.count {
                items.append(try ConfigNode.fresh(for: rest).setting(value, at: rest, text: text))
            } else {
                throw .badOverride(text, reason: "index \(index) is past the list's end (\(items.count) items)")
            }
            return .list(items, line: line)
        case (.key(let key), _):
            throw .badOverride(text, reason: "cannot set '\(key)' inside a value that is not a mapping")
        case (.index(let index), _):
            throw .badOverride(text, reason: "cannot index [\(index)] into a value that is not a list")
        }
    }

    private static func fresh(for path: ArraySlice<PathComponent>) -> ConfigNode {
        switch path.first {
        case .index: .list([], line: 0)
        case .key: .map([], line: 0)
        case nil: .scalar("", line: 0)
        }
    }

    /// The same tree with every line set to 0 (an override has no line in the file).
    private func relined() -> ConfigNode {
        switch self {
        case .scalar(let text, _): .scalar(text, line: 0)
        case .list(let items, _): .list(items.map { $0.relined() }, line: 0)
        case .map(let pairs, _): .map(pairs.map { ($0.key, $0.value.relined()) }, line: 0)
        }
    }
}
