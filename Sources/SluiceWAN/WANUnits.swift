// Path: Sources/SluiceWAN/WANUnits.swift — the emulator's settings as people type them ("20ms",
// "20mbit", "0.1%", "256kb"), parsed strictly: a number, then exactly one known unit.

/// Why a setting's text was refused. `text` is what was given; each case says what was expected.
public enum WANUnitError: Error, Equatable, CustomStringConvertible {
    /// Empty, or not a plain decimal number (digits with at most one point; no sign, no exponent).
    case notANumber(String, expected: String)
    /// A number without a unit, where one is required.
    case missingUnit(String, expected: String)
    /// A unit this setting does not take.
    case unknownUnit(String, unit: String, expected: String)
    /// A number outside the setting's bounds, in the setting's own terms.
    case outOfRange(String, allowed: String)

    public var description: String {
        switch self {
        case let .notANumber(text, expected): "'\(text)' is not a number with a unit (\(expected))"
        case let .missingUnit(text, expected): "'\(text)' has no unit (\(expected))"
        case let .unknownUnit(text, unit, expected): "'\(text)': unknown unit '\(unit)' (\(expected))"
        case let .outOfRange(text, allowed): "'\(text)' is out of range (\(allowed))"
        }
    }
}

/// Strict unit parsing shared by `sluice wan` and the `wan:` section of `sluice run`'s config.
/// Units follow tc(8): `kbit`/`mbit`/`gbit` are powers of 1000 bits, `kb`/`mb`/`gb` powers of 1024
/// bytes. Numbers are plain decimals (`1.5ms`); the unit is lower case and required.
public enum WANUnits {
    public static let durationUnits = "us, ms or s, e.g. 20ms"
    public static let rateUnits = "bit, kbit, mbit or gbit, e.g. 20mbit"
    public static let percentUnits = "a percentage, e.g. 0.1%"
    public static let sizeUnits = "b, kb, mb or gb (1024-based, as tc), e.g. 256kb"

    /// A duration in nanoseconds: `us`, `ms` or `s`, rounded to the nearest ns, at most `maxNs`.
    public static func durationNs(_ text: String, maxNs: UInt64) throws(WANUnitError) -> UInt64 {
        let (number, unit) = try split(text, expected: durationUnits)
        let scale: Double
        switch unit {
        case "us": scale = 1e3
        case "ms": scale = 1e6
        case "s": scale = 1e9
        default: throw .unknownUnit(text, unit: unit, expected: durationUnits)
        }
        let ns = (number * scale).rounded()
        guard ns <= Double(maxNs) else { throw .outOfRange(text, allowed: "at most \(formatDuration(maxNs))") }
        return UInt64(ns)
    }

    /// A rate in bits per second: `bit`, `kbit`, `mbit` or `gbit`, in `range`.
    public static func rateBitsPerSecond(_ text: String, range: ClosedRange<UInt64>) throws(WANUnitError) -> UInt64 {
        let (number, unit) = try split(text, expected: rateUnits)
        let scale: Double
        switch unit {
        case "bit": scale = 1
        case "kbit": scale = 1e3
        case "mbit": scale = 1e6
        case "gbit": scale = 1e9
        default: throw .unknownUnit(text, unit: unit, expected: rateUnits)
        }
        let bits = (number * scale).rounded()
        guard bits >= Double(range.lowerBound), bits <= Double(range.upperBound) else {
            throw .outOfRange(text, allowed: "\(formatRate(range.lowerBound))...\(formatRate(range.upperBound))")
        }
        return UInt64(bits)
    }

    /// A probability from a percentage (`0.1%` is 0.001), 0%...100%.
    public static func probability(_ text: String) throws(WANUnitError) -> Double {
        let (number, unit) = try split(text, expected: percentUnits)
        guard unit == "%" else { throw .unknownUnit(text, unit: unit, expected: percentUnits) }
        guard number <= 100 else { throw .outOfRange(text, allowed: "0%...100%") }
        return number / 100
    }

    /// A size in bytes: `b`, `kb`, `mb` or `gb` (powers of 1024), a whole number of bytes in `range`.
    public static func bytes(_ text: String, range: ClosedRange<Int>) throws(WANUnitError) -> Int {
        let (number, unit) = try split(text, expected: sizeUnits)
        let scale: Double
        switch unit {
        case "b": scale = 1
        case "kb": scale = 1024
        case "mb": scale = 1024 * 1024
        case "gb": scale = 1024 * 1024 * 1024
        default: throw .unknownUnit(text, unit: unit, expected: sizeUnits)
        }
        let bytes = number * scale
        guard bytes == bytes.rounded() else { throw .outOfRange(text, allowed: "a whole number of bytes") }
        guard bytes >= Double(range.lowerBound), bytes <= Double(range.upperBound) else {
            throw .outOfRange(text, allowed: "\(range.lowerBound)...\(range.upperBound) bytes")
        }
        return Int(bytes)
    }

    /// Splits "12.5ms" into 12.5 and "ms". The number is digits with at most one '.', at most 18
    /// digits (so it converts exactly enough), and at least one digit before or after the point.
    static func split(_ text: String, expected: String) throws(WANUnitError) -> (Double, String) {
        let bytes = Array(text.utf8)
        var end = 0
        var digits = 0
        var points = 0
        while end < bytes.count {
            let byte = bytes[end]
            if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                digits += 1
            } else if byte == UInt8(ascii: ".") {
                points += 1
            } else {
                break
            }
            end += 1
        }
        guard digits > 0, digits <= 18, points <= 1 else { throw .notANumber(text, expected: expected) }
        let unit = String(decoding: bytes[end...], as: UTF8.self)
        guard !unit.isEmpty else { throw .missingUnit(text, expected: expected) }
        guard let number = Double(String(decoding: bytes[..<end], as: UTF8.self)), number.isFinite else {
            throw .notANumber(text, expected: expected)
        }
        return (number, unit)
    }

    /// "20ms", "1.5ms", "250us", "2s": the shortest exact form for reports.
    public static func formatDuration(_ ns: UInt64) -> String {
        if ns == 0 { return "0ms" }
        if ns % 1_000_000_000 == 0 { return "\(ns / 1_000_000_000)s" }
        if ns % 1_000 == 0 && ns < 1_000_000 { return "\(ns / 1_000)us" }
        if ns % 1_000 == 0 { return trimmed(Double(ns) / 1e6) + "ms" }
        return "\(ns)ns"
    }

    /// "20mbit", "1.5gbit", "64kbit", "unlimited" for 0.
    public static func formatRate(_ bitsPerSecond: UInt64) -> String {
        if bitsPerSecond == 0 { return "unlimited" }
        if bitsPerSecond >= 1_000_000_000 { return trimmed(Double(bitsPerSecond) / 1e9) + "gbit" }
        if bitsPerSecond >= 1_000_000 { return trimmed(Double(bitsPerSecond) / 1e6) + "mbit" }
        if bitsPerSecond >= 1_000 { return trimmed(Double(bitsPerSecond) / 1e3) + "kbit" }
        return "\(bitsPerSecond)bit"
    }

    /// A number without a trailing ".0" and with at most 6 decimals.
    static func trimmed(_ value: Double) -> String {
        var text = String(format6: value)
        while text.contains("."), text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }
}

extension String {
    /// `value` with 6 decimals, without Foundation.
    init(format6 value: Double) {
        let scaled = (value * 1e6).rounded()
        let whole = Int64(scaled / 1e6)
        let fraction = Int64(scaled) - whole * 1_000_000
        var fractionText = String(fraction)
        while fractionText.count < 6 { fractionText = "0" + fractionText }
        self = "\(whole).\(fractionText)"
    }
}
