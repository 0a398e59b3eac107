// Path: Sources/SluiceService/MetricsText.swift — a parser for the Prometheus text exposition format
// 0.0.4, as `sluice run` emits it on `GET /metrics`; `sluice stats` reads it back into samples.

/// One sample line: `name{label="value",...} value [timestamp]`.
/// `value` may be NaN or ±infinity; NaN samples compare unequal, as doubles do.
public struct MetricSample: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public var value: Double
    /// Milliseconds since the epoch, when the line carries one (swift-prometheus never writes it).
    public var timestampMs: Int64?

    public init(name: String, labels: [String: String] = [:], value: Double, timestampMs: Int64? = nil) {
        self.name = name
        self.labels = labels
        self.value = value
        self.timestampMs = timestampMs
    }
}

/// A line the parser rejected: its 1-based number and what was wrong with it.
public struct MetricsTextError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case badMetricName
        case badLabelName
        case expectedEquals
        case expectedQuote
        case unterminatedLabelValue
        case badEscape(Character)
        case duplicateLabel(String)
        case tooManyLabels
        case expectedCommaOrBrace
        case missingValue
        case badValue(String)
        case badTimestamp(String)
        case trailingText(String)
        case badTypeLine
    }

    public let line: Int
    public let reason: Reason

    public init(line: Int, reason: Reason) {
        self.line = line
        self.reason = reason
    }

    public var description: String {
        let what: String
        switch reason {
        case .badMetricName: what = "metric name missing or not [a-zA-Z_:][a-zA-Z0-9_:]*"
        case .badLabelName: what = "label name missing or not [a-zA-Z_][a-zA-Z0-9_]*"
        case .expectedEquals: what = "expected '=' after the label name"
        case .expectedQuote: what = "expected '\"' to open the label value"
        case .unterminatedLabelValue: what = "label value has no closing '\"'"
        case .badEscape(let c): what = "unknown escape '\\\(c)' in a label value (only \\\\, \\\" and \\n)"
        case .duplicateLabel(let name): what = "label '\(name)' given twice"
        case .tooManyLabels: what = "more than \(MetricsText.labelCountMax) labels"
        case .expectedCommaOrBrace: what = "expected ',' or '}' after a label value"
        case .missingValue: what = "sample has no value"
        case .badValue(let text): what = "value '\(text)' is not a number, NaN, +Inf or -Inf"
        case .badTimestamp(let text): what = "timestamp '\(text)' is not an integer in milliseconds"
        case .trailingText(let text): what = "unexpected text '\(text)' after the sample"
        case .badTypeLine: what = "# TYPE needs a metric name and counter, gauge, histogram, summary or untyped"
        }
        return "line \(line): \(what)"
    }
}

/// Parses the text exposition format 0.0.4 (`text/plain; version=0.0.4`).
public enum MetricsText {
    /// Most labels one sample may carry; a bound on a hostile or broken scrape, not a format rule.
    public static let labelCountMax = 64

    /// Every sample in `text`, in order. `# HELP` and other comments are skipped, `# TYPE` lines are
    /// checked for shape; blank lines are skipped. Pure: no I/O, allocates only the result.
    /// Throws at the first malformed line, naming its 1-based number.
    public static func parse(_ text: String) throws(MetricsTextError) -> [MetricSample] {
        var samples: [MetricSample] = []
        var number = 0
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            var scanner = Scanner(bytes: Array(line), line: number)
            scanner.trimCarriageReturn()
            scanner.skipBlanks()
            if scanner.atEnd { continue }
            if scanner.peek == UInt8(ascii: "#") {
                try scanner.checkComment()
                continue
            }
            samples.append(try scanner.sample())
        }
        return samples
    }
}

/// A cursor over one line's bytes.
private struct Scanner {
    var bytes: [UInt8]
    var index = 0
    let line: Int

    init(bytes: [UInt8], line: Int) {
        self.bytes = bytes
        self.line = line
    }

    var atEnd: Bool { index >= bytes.count }
    var peek: UInt8? { atEnd ? nil : bytes[index] }

    mutating func trimCarriageReturn() {
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
    }

    mutating func skipBlanks() {
        while let b = peek, b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") { index += 1 }
    }

    func fail(_ reason: MetricsTextError.Reason) -> MetricsTextError { MetricsTextError(line: line, reason: reason) }

    /// The next run of non-blank bytes (possibly empty).
    mutating func token() -> String {
        let start = index
        while let b = peek, b != UInt8(ascii: " "), b != UInt8(ascii: "\t") { index += 1 }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names (`colon: true`), without ':' for label names.
    mutating func name(colon: Bool) -> String? {
        let start = index
        while let b = peek, isNameByte(b, first: index == start, colon: colon) { index += 1 }
        return index == start ? nil : String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// `# TYPE name kind` must be whole; `# HELP` and any other comment are free text.
    mutating func checkComment() throws(MetricsTextError) {
        index += 1
        skipBlanks()
        guard token() == "TYPE" else { return }
        skipBlanks()
        guard name(colon: true) != nil, peek == UInt8(ascii: " ") || peek == UInt8(ascii: "\t") else {
            throw fail(.badTypeLine)
        }
        skipBlanks()
        let kind = token()
        skipBlanks()
        guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind), atEnd else {
            throw fail(.badTypeLine)
        }
    }

    mutating func sample() throws(MetricsTextError) -> MetricSample {
        guard let name = name(colon: true) else { throw fail(.badMetricName) }
        var labels: [String: String] = [:]
        skipBlanks()
        if peek == UInt8(ascii: "{") {
            index += 1
            try labelSet(into: &labels)
        }
        skipBlanks()
        let valueText = token()
        guard !valueText.isEmpty else { throw fail(.missingValue) }
        guard let value = parseValue(valueText) else { throw fail(.badValue(valueText)) }
        skipBlanks()
        var timestamp: Int64?
        if !atEnd {
            let text = token()
            guard let ms = Int64(text) else { throw fail(.badTimestamp(text)) }
            timestamp = ms
            skipBlanks()
        }
        guard atEnd else { throw fail(.trailingText(token())) }
        return MetricSample(name: name, labels: labels, value: value, timestampMs: timestamp)
    }

    /// After '{': `name="value"` pairs separated by ',', an optional trailing ',', then '}'.
    mutating func labelSet(into labels: inout [String: String]) throws(MetricsTextError) {
        while true {
            skipBlanks()
            if peek == UInt8(ascii: "}") { index += 1; return }
            guard let label = name(colon: false) else { throw fail(.badLabelName) }
            skipBlanks()
            guard peek == UInt8(ascii: "=") else { throw fail(.expectedEquals) }
            index += 1
            skipBlanks()
            guard peek == UInt8(ascii: "\"") else { throw fail(.expectedQuote) }
            index += 1
            let value = try labelValue()
            guard labels[label] == nil else { throw fail(.duplicateLabel(label)) }
            guard labels.count < MetricsText.labelCountMax else { throw fail(.tooManyLabels) }
            labels[label] = value
            skipBlanks()
            switch peek {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"): index += 1; return
            default: throw fail(.expectedCommaOrBrace)
            }
        }
    }

    /// After the opening '"': bytes up to the closing '"', with `\\`, `\"` and `\n` unescaped.
    mutating func labelValue() throws(MetricsTextError) -> String {
        var value: [UInt8] = []
        while let b = peek {
            index += 1
            switch b {
            case UInt8(ascii: "\""):
                return String(decoding: value, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard let escaped = peek else { throw fail(.unterminatedLabelValue) }
                index += 1
                switch escaped {
                case UInt8(ascii: "\\"), UInt8(ascii: "\""): value.append(escaped)
                case UInt8(ascii: "n"): value.append(UInt8(ascii: "\n"))
                default: throw fail(.badEscape(Character(Unicode.Scalar(escaped))))
                }
            default:
                value.append(b)
            }
        }
        throw fail(.unterminatedLabelValue)
    }
}

private func isNameByte(_ b: UInt8, first: Bool, colon: Bool) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"): return true
    case UInt8(ascii: ":"): return colon
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return !first
    default: return false
    }
}

/// Go's `ParseFloat` as Prometheus uses it, narrowed: decimal numbers with an optional sign, point and
/// exponent, and `NaN`, `Inf`, `+Inf`, `-Inf` (any case). Hex floats and `infinity` are refused.
private func parseValue(_ text: String) -> Double? {
    switch text.lowercased() {
    case "nan": return .nan
    case "inf", "+inf": return .infinity
    case "-inf": return -.infinity
    default: break
    }
    var digits = 0
    for b in text.utf8 {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digits += 1
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): break
        default: return nil
        }
    }
    guard digits > 0 else { return nil }
    return Double(text)
}
