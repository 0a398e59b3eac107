// Path: Tests/SluiceWANTests/CorruptionTests.swift — emulated corruption: one bit of the TCP/UDP
// payload flipped, the transport checksum still verifying (RFC 1624 repair); other frames flipped
// after the L2 header; seeded draws at about the set share; bad settings refused by name.
import SluiceWAN
import Testing

/// An Ethernet + IPv4 + `l4Header` + payload frame, IPv4 and L4 checksums filled in (`checksumAt`:
/// the checksum field's offset in the L4 header).
private func ipv4Frame(proto: UInt8, l4Header: [UInt8], checksumAt: Int, payload: [UInt8]) -> [UInt8] {
    let source: [UInt8] = [198, 18, 0, 2]
    let destination: [UInt8] = [198, 18, 0, 1]
    var l4 = l4Header + payload
    if proto == 17 {  // UDP length
        l4[4] = UInt8(l4.count >> 8)
        l4[5] = UInt8(l4.count & 0xFF)
    }
    let pseudo = source + destination + [0, proto, UInt8(l4.count >> 8), UInt8(l4.count & 0xFF)]
    let checksum = transportChecksum(pseudo + l4)
    l4[checksumAt] = UInt8(checksum >> 8)
    l4[checksumAt + 1] = UInt8(checksum & 0xFF)
    let total = 20 + l4.count
    var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 1, 0x40, 0, 64, proto, 0, 0] + source + destination
    let ipChecksum = transportChecksum(ip)
    ip[10] = UInt8(ipChecksum >> 8)
    ip[11] = UInt8(ipChecksum & 0xFF)
    let ethernet: [UInt8] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]
    return ethernet + ip + l4
}

/// The Internet checksum (RFC 1071) of `bytes`, an odd last byte padded with zero.
private func transportChecksum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var index = 0
    while index < bytes.count {
        sum += UInt32(bytes[index]) << 8 | (index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0)
        index += 2
    }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    return ~UInt16(sum)
}

/// Whether the L4 checksum of an Ethernet + IPv4 (IHL 5) frame verifies (sum over pseudo-header and segment is 0xFFFF).
private func transportVerifies(_ frame: [UInt8]) -> Bool {
    let ip = Array(frame[14..<34])
    let total = Int(ip[2]) << 8 | Int(ip[3])
    let l4 = Array(frame[34..<(14 + total)])
    let pseudo = Array(ip[12..<20]) + [0, ip[9], UInt8(l4.count >> 8), UInt8(l4.count & 0xFF)]
    return transportChecksum(pseudo + l4) == 0
}

private func differingBits(_ a: [UInt8], _ b: [UInt8]) -> [(byte: Int, bits: Int)] {
    zip(a, b).enumerated().compactMap { index, pair in
        pair.0 == pair.1 ? nil : (byte: index, bits: (pair.0 ^ pair.1).nonzeroBitCount)
    }
}

private func corrupted(_ frame: [UInt8], draw: UInt64) -> ([UInt8], WANCorruptionTarget?) {
    var copy = frame
    let target = copy.withUnsafeMutableBytes { WANCorruption.corrupt($0, draw: draw) }
    return (copy, target)
}

@Suite struct CorruptionTests {
    static let tcpHeader: [UInt8] = [0x1F, 0x90, 0xC3, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0]

    @Test(arguments: [1, 2, 3, 1_447, 1_448])
    func tcpPayloadBitFlipsAndTheChecksumStillVerifies(payloadBytes: Int) {
        var random = WANRandom(seed: UInt64(payloadBytes))
        let payload = (0..<payloadBytes).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        let frame = ipv4Frame(proto: 6, l4Header: Self.tcpHeader, checksumAt: 16, payload: payload)
        #expect(transportVerifies(frame))
        for _ in 0..<200 {
            let (bad, target) = corrupted(frame, draw: random.next())
            #expect(target == .transportPayload)
            #expect(transportVerifies(bad), "the repaired TCP checksum verifies")
            // Exactly one bit differs in the payload; the only other change is the checksum field.
            let payloadStart = 14 + 20 + 20
            let changes = differingBits(frame, bad).filter { $0.byte != 14 + 20 + 16 && $0.byte != 14 + 20 + 17 }
            #expect(changes.count == 1 && changes[0].bits == 1 && changes[0].byte >= payloadStart, "\(changes)")
            #expect(Array(bad[payloadStart...]) != payload)
        }
    }

    @Test func udpPayloadIsRepairedAndUnchecksummedUDPLeftAlone() {
        var random = WANRandom(seed: 5)
        let payload = (0..<513).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        let header: [UInt8] = [0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]
        let frame = ipv4Frame(proto: 17, l4Header: header, checksumAt: 6, payload: payload)
        for _ in 0..<200 {
            let (bad, target) = corrupted(frame, draw: random.next())
            #expect(target == .transportPayload && transportVerifies(bad))
            #expect(bad[14 + 20 + 6] != 0 || bad[14 + 20 + 7] != 0, "UDP checksum 0 would mean none")
            let changes = differingBits(frame, bad).filter { $0.byte != 40 && $0.byte != 41 }
            #expect(changes.count == 1 && changes[0].bits == 1 && changes[0].byte >= 42)
        }
        // Sent without a checksum (0): the payload bit flips, the field stays 0.
        var unchecked = frame
        unchecked[40] = 0
        unchecked[41] = 0
        let (bad, _) = corrupted(unchecked, draw: random.next())
        #expect(bad[40] == 0 && bad[41] == 0)
        #expect(differingBits(unchecked, bad).count == 1)
    }

    @Test func framesWithoutPayloadFlipABitAfterTheLinkHeader() {
        let ack = ipv4Frame(proto: 6, l4Header: Self.tcpHeader, checksumAt: 16, payload: [])
        let arp: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 2, 0, 0, 0, 0, 2, 0x08, 0x06] + [UInt8](repeating: 7, count: 28)
        var random = WANRandom(seed: 9)
        for frame in [ack, arp] {
            for _ in 0..<100 {
                let (bad, target) = corrupted(frame, draw: random.next())
                #expect(target == .afterLinkHeader)
                let changes = differingBits(frame, bad)
                #expect(changes.count == 1 && changes[0].bits == 1 && changes[0].byte >= 14, "\(changes)")
            }
        }
        let (short, target) = corrupted([UInt8](repeating: 0, count: 14), draw: 1)
        #expect(target == nil && short == [UInt8](repeating: 0, count: 14))
        // Runt tagged frames: one tag (18 bytes), two tags (22 bytes): nothing past the tags, nothing flipped.
        let oneTag: [UInt8] = Array(repeating: 0, count: 12) + [0x81, 0x00, 0, 1, 0x08, 0x00]
        let twoTags: [UInt8] = Array(repeating: 0, count: 12) + [0x88, 0xA8, 0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00]
        for runt in [oneTag, twoTags] {
            let (same, none) = corrupted(runt, draw: 0)
            #expect(none == nil && same == runt)
        }
    }

    @Test func repairMatchesRecomputation() {
        // RFC 1624's example: HC 0xDD2F, m 0x5555 -> m' 0x3285 gives HC' 0x0000 (eqn. 3).
        #expect(WANCorruption.repair(checksum: 0xDD2F, old: 0x5555, new: 0x3285) == 0x0000)
    }

    @Test func corrupterDrawsAboutTheSetShareAndIsSeeded() {
        func draws(_ probability: Double, seed: UInt64) -> [Int] {
            var corrupter = WANCorrupter(probability: probability, seed: seed)
            return (0..<100_000).filter { _ in corrupter.next() != nil }
        }
        let share = draws(0.01, seed: 3)
        #expect(share.count > 900 && share.count < 1_100, "\(share.count)")
        #expect(draws(0.01, seed: 3) == share)
        #expect(draws(0.01, seed: 4) != share)
        #expect(draws(0, seed: 3).isEmpty)
        #expect(draws(1, seed: 3).count == 100_000)
    }

    @Test func badCorruptionIsRefusedByName() {
        var settings = WANDirectionSettings()
        #expect(throws: WANUnitError.missingUnit("0.1", expected: WANUnits.percentUnits)) { try settings.set(.corrupt, from: "0.1") }
        #expect(throws: WANUnitError.outOfRange("101%", allowed: "0%...100%")) { try settings.set(.corrupt, from: "101%") }
        settings.corrupt = 1.5
        #expect(throws: WANConfigurationError.outOfRange(setting: "b-to-a corrupt", value: "150.0%", allowed: "0%...100%")) {
            try settings.validate(direction: "b-to-a")
        }
    }
}
