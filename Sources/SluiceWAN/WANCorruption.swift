// Path: Sources/SluiceWAN/WANCorruption.swift — emulated corruption: one bit of a frame flipped the
// way a faulty middlebox or NIC would, with the transport checksum repaired so only an end-to-end
// check (the gateway's per-sector CRC32C) can catch it.

/// Where a corruption landed, for counters and tests.
public enum WANCorruptionTarget: Equatable, Sendable {
    /// A bit of an IPv4 TCP or UDP payload; the L4 checksum was repaired (RFC 1624), or left
    /// alone for UDP sent without one (checksum 0).
    case transportPayload
    /// Any other frame (no payload, not IPv4 TCP/UDP, a fragment): a bit after the L2 header; the
    /// receiver's checks may catch it (an IP header checksum, say) or not (ARP).
    case afterLinkHeader
}

/// Flips one bit of a frame chosen by a random draw. Pure: no state, no allocation.
public enum WANCorruption {
    /// Ethernet header bytes before the EtherType's payload (VLAN tags add 4 each, at most 2).
    static let ethernetHeaderBytes = 14
    static let vlanTagBytes = 4

    /// Flips one bit of `frame` (an Ethernet frame) picked by `draw`: for an unfragmented IPv4
    /// TCP or UDP packet with payload, a bit of the payload, then the L4 checksum is updated
    /// incrementally (RFC 1624, eqn. 3) so it still verifies; otherwise a bit after the L2 header.
    /// Returns nil (and changes nothing) if the frame has no byte past its L2 header.
    @discardableResult
    public static func corrupt(_ frame: UnsafeMutableRawBufferPointer, draw: UInt64) -> WANCorruptionTarget? {
        var l2 = ethernetHeaderBytes
        guard frame.count > l2 else { return nil }
        var etherType = word(frame, 12)
        var tags = 0
        while (etherType == 0x8100 || etherType == 0x88A8), tags < 2, frame.count >= l2 + vlanTagBytes {
            etherType = word(frame, l2 + 2)
            l2 += vlanTagBytes
            tags += 1
        }
        // A runt tagged frame (18 bytes with one tag, 22 with two) ends with its tags.
        guard frame.count > l2 else { return nil }
        if etherType == 0x0800, let (payloadStart, payloadEnd, checksumOffset) = transportPayload(frame, ipStart: l2) {
            let bit = Int(draw.multipliedFullWidth(by: UInt64((payloadEnd - payloadStart) * 8)).high)
            let byteOffset = payloadStart + bit / 8
            // The 16-bit word holding the byte, aligned from the L4 header (which starts at an even offset).
            let wordOffset = byteOffset - (byteOffset - checksumOffset.l4Start) % 2
            // An odd last byte is summed as if padded with a zero byte.
            let before = wordOffset + 1 < payloadEnd ? word(frame, wordOffset) : UInt16(frame[wordOffset]) << 8
            frame[byteOffset] ^= UInt8(1) << (bit % 8)
            let after = wordOffset + 1 < payloadEnd ? word(frame, wordOffset) : UInt16(frame[wordOffset]) << 8
            let checksum = word(frame, checksumOffset.field)
            if !(checksumOffset.isUDP && checksum == 0) {
                var repaired = repair(checksum: checksum, old: before, new: after)
                if checksumOffset.isUDP && repaired == 0 { repaired = 0xFFFF }  // 0 means "no checksum" in UDP
                setWord(frame, checksumOffset.field, repaired)
            }
            return .transportPayload
        }
        let bit = Int(draw.multipliedFullWidth(by: UInt64((frame.count - l2) * 8)).high)
        frame[l2 + bit / 8] ^= UInt8(1) << (bit % 8)
        return .afterLinkHeader
    }

    /// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), one's complement sums with end-around carry.
    public static func repair(checksum: UInt16, old: UInt16, new: UInt16) -> UInt16 {
        var sum = UInt32(~checksum) + UInt32(~old) + UInt32(new)
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// The payload range of an unfragmented IPv4 TCP/UDP packet at `ipStart`, with where its checksum
    /// field and L4 header are; nil for anything else, for a packet without payload, or one whose
    /// lengths do not fit the frame.
    private static func transportPayload(_ frame: UnsafeMutableRawBufferPointer, ipStart: Int)
        -> (Int, Int, (field: Int, l4Start: Int, isUDP: Bool))? {
        guard frame.count >= ipStart + 20, frame[ipStart] >> 4 == 4 else { return nil }
        let ihl = Int(frame[ipStart] & 0x0F) * 4
        let totalLength = Int(word(frame, ipStart + 2))
        let fragment = word(frame, ipStart + 6)
        guard ihl >= 20, fragment & 0x3FFF == 0, totalLength >= ihl, ipStart + totalLength <= frame.count else { return nil }
        let l4 = ipStart + ihl
        let ipEnd = ipStart + totalLength
        switch frame[ipStart + 9] {
        case 6:  // TCP
            guard ipEnd >= l4 + 20 else { return nil }
            let headerBytes = Int(frame[l4 + 12] >> 4) * 4
            guard headerBytes >= 20, l4 + headerBytes < ipEnd else { return nil }
            return (l4 + headerBytes, ipEnd, (field: l4 + 16, l4Start: l4, isUDP: false))
        case 17:  // UDP
            guard ipEnd >= l4 + 8 else { return nil }
            let udpLength = Int(word(frame, l4 + 4))
            guard udpLength > 8, l4 + udpLength <= ipEnd else { return nil }
            return (l4 + 8, l4 + udpLength, (field: l4 + 6, l4Start: l4, isUDP: true))
        default:
            return nil
        }
    }

    @inline(__always)
    static func word(_ frame: UnsafeMutableRawBufferPointer, _ offset: Int) -> UInt16 {
        UInt16(frame[offset]) << 8 | UInt16(frame[offset + 1])
    }

    @inline(__always)
    static func setWord(_ frame: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt16) {
        frame[offset] = UInt8(value >> 8)
        frame[offset + 1] = UInt8(value & 0xFF)
    }
}

/// One direction's corruption draws: a generator of its own (so the loss and jitter sequences of a
/// seed do not change when corruption is set), one draw per forwarded frame when the probability
/// is above 0. Owned by the direction's thread.
public struct WANCorrupter: Sendable {
    public let probability: Double
    private var random: WANRandom
    private let threshold: UInt64
    private let always: Bool

    /// Mixed into the direction's seed so the corruption generator differs from the schedule's.
    static let seedSalt: UInt64 = 0xC022_0B7E_5EED_0001

    public init(probability: Double, seed: UInt64) {
        precondition(probability >= 0 && probability <= 1, "corruption probability outside 0...1")
        self.probability = probability
        self.random = WANRandom(seed: seed ^ Self.seedSalt)
        self.always = probability >= 1
        self.threshold = probability >= 1 ? UInt64.max : UInt64((probability * 0x1p64).rounded(.down))
    }

    /// For the next frame: nil to leave it alone, or the draw that picks the bit to flip.
    @inline(__always)
    public mutating func next() -> UInt64? {
        guard probability > 0 else { return nil }
        guard always || random.next() < threshold else { return nil }
        return random.next()
    }
}
