// Path: Sources/SluicePacket/Bytes/Addresses.swift — MAC and IP addresses and prefixes as fixed-size values.
import Glibc

/// A 48-bit Ethernet address in the low bits of a UInt64 (first byte on the wire is bits 40...47).
@frozen
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    /// The address with bits 0...47 of `rawValue`; higher bits must be zero.
    @inlinable public init(_ rawValue: UInt64) {
        precondition(rawValue >> 48 == 0, "MAC address wider than 48 bits")
        self.rawValue = rawValue
    }

    /// Parses "02:00:00:00:00:01" (colons or dashes, hex digits in either case). For configuration.
    public init?(_ text: String) {
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == "-" })
        guard parts.count == 6 else { return nil }
        var value: UInt64 = 0
        for part in parts {
            guard part.count <= 2, let byte = UInt8(part, radix: 16) else { return nil }
            value = value << 8 | UInt64(byte)
        }
        self.rawValue = value
    }

    public var description: String {
        (0..<6).map { index in
            let byte = UInt8(truncatingIfNeeded: rawValue >> UInt64(40 - 8 * index))
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined(separator: ":")
    }
}

/// An IPv6 address as two big-endian halves; IPv4 addresses are held IPv4-mapped (::ffff:a.b.c.d),
/// so one 128-bit compare and one prefix table serve both versions.
@frozen
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Bits 0...63 of the address (the first 8 bytes on the wire).
    public var high: UInt64
    /// Bits 64...127 of the address.
    public var low: UInt64

    @inlinable public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The IPv4-mapped form of the IPv4 address `value` (host order, a.b.c.d = a << 24 | ...).
    @inlinable public init(ipv4 value: UInt32) {
        self.high = 0
        self.low = 0xFFFF_0000_0000 | UInt64(value)
    }

    @inlinable public static var zero: IPAddress { IPAddress(high: 0, low: 0) }

    /// The IPv4 address if this is IPv4-mapped, else nil.
    @inlinable public var ipv4: UInt32? {
        guard high == 0, low >> 32 == 0xFFFF else { return nil }
        return UInt32(truncatingIfNeeded: low)
    }

    @inlinable public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        lhs.high != rhs.high ? lhs.high < rhs.high : lhs.low < rhs.low
    }

    /// Parses dotted IPv4 ("10.0.0.1") or IPv6 ("2001:db8::1") text with `inet_pton`. For configuration.
    public init?(_ text: String) {
        var bytes = (UInt64(0), UInt64(0))
        let parsed = withUnsafeMutableBytes(of: &bytes) { raw -> IPAddress? in
            if text.withCString({ inet_pton(AF_INET, $0, raw.baseAddress) }) == 1 {
                return IPAddress(ipv4: UInt32(bigEndian: raw.load(as: UInt32.self)))
            }
            guard text.withCString({ inet_pton(AF_INET6, $0, raw.baseAddress) }) == 1 else { return nil }
            return IPAddress(high: UInt64(bigEndian: raw.load(fromByteOffset: 0, as: UInt64.self)),
                             low: UInt64(bigEndian: raw.load(fromByteOffset: 8, as: UInt64.self)))
        }
        guard let parsed else { return nil }
        self = parsed
    }

    public var description: String {
        if let ipv4 {
            return "\(ipv4 >> 24).\(ipv4 >> 16 & 0xFF).\(ipv4 >> 8 & 0xFF).\(ipv4 & 0xFF)"
        }
        return (0..<8).map { index in
            let half = index < 4 ? high : low
            return String(UInt16(truncatingIfNeeded: half >> UInt64(48 - 16 * (index % 4))), radix: 16)
        }.joined(separator: ":")
    }
}

/// An address prefix over the 128-bit space; an IPv4 prefix a.b.c.d/n is held as ::ffff:a.b.c.d/(96+n).
/// The family is kept: an IPv6 prefix written as ::ffff:a.b.c.d/(96+n) has the same bits but is IPv6
/// (rules match it only against IPv6 packets).
@frozen
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    /// Prefix length in the 128-bit space (0...128).
    public let length: Int
    /// True for a prefix made as IPv4 (`init(ipv4:length:)`, or dotted text without ':').
    public let isIPv4: Bool

    /// An IPv6 prefix. Fails (nil) for a length above 128 or host bits set past the prefix.
    public init?(ipv6 address: IPAddress, length: Int) {
        guard length >= 0, length <= 128, Self.masked(address, length: length) == address else { return nil }
        self.address = address
        self.length = length
        isIPv4 = false
    }

    /// An IPv4 prefix (`address` in host order). Fails for a length above 32 or host bits set.
    public init?(ipv4 address: UInt32, length: Int) {
        guard length >= 0, length <= 32 else { return nil }
        let mapped = IPAddress(ipv4: address)
        guard Self.masked(mapped, length: 96 + length) == mapped else { return nil }
        self.address = mapped
        self.length = 96 + length
        isIPv4 = true
    }

    /// Parses "10.0.0.0/8" or "2001:db8::/32". For configuration.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard parts.count == 2, let address = IPAddress(String(parts[0])), let length = Int(parts[1]) else {
            return nil
        }
        if let ipv4 = address.ipv4, !parts[0].contains(":") {
            self.init(ipv4: ipv4, length: length)
        } else {
            self.init(ipv6: address, length: length)
        }
    }

    /// True if `candidate` lies inside the prefix.
    @inlinable public func contains(_ candidate: IPAddress) -> Bool {
        Self.masked(candidate, length: length) == address
    }

    /// `address` with every bit past the first `length` cleared.
    @inlinable static func masked(_ address: IPAddress, length: Int) -> IPAddress {
        let highMask: UInt64 = length >= 64 ? ~0 : (length == 0 ? 0 : ~0 << UInt64(64 - length))
        let lowMask: UInt64 = length <= 64 ? 0 : (length >= 128 ? ~0 : ~0 << UInt64(128 - length))
        return IPAddress(high: address.high & highMask, low: address.low & lowMask)
    }

    public var description: String {
        if isIPv4 { return "\(address)/\(length - 96)" }
        return address.ipv4 != nil ? "::ffff:\(address)/\(length)" : "\(address)/\(length)"
    }
}
