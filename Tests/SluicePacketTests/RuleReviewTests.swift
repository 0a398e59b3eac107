// Path: Tests/SluicePacketTests/RuleReviewTests.swift — review fixes (issue 17): fragments keep their L4
// checksum, prefix maps do not chain, the MTU cut never grows the IP length, UDP checksum 0 stays 0,
// IPv6 prefixes never match IPv4 packets. Frames made with scapy 2.x; expected bytes from tcprewrite 4.x.
import SluiceCore
import Testing

@testable import SluicePacket

@Suite struct RuleReviewTests {
    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    /// scapy: fragment6(IPv6()/IPv6ExtHdrFragment(id=7)/UDP(1000, 2000)/bytes(range(64)), 80)[0]:
    /// offset 0, M=1, the UDP checksum (0xb42d) over the whole datagram.
    static let firstFragment6 = hex(
        "02000000000202000000000186dd6000000000282c4020010db800000000000000000000000120010db800000000000000000000000211"
            + "0000010000000703e807d00048b42d000102030405060708090a0b0c0d0e0f1011121314151617")
    /// scapy UDP(chksum=0) over IPv4 and IPv6, 20 bytes of payload.
    static let udp4Zero = hex(
        "02fc0000000502fc000000010800450000300001000040115ba70a0102030a09090900010002001c00007979797979797979797979797979797979797979")
    static let udp6Zero = hex(
        "ffffffffffff02fc0000000186dd60000000001c114020010db800000000000000000000000120010db80000000000000000000000020001"
            + "0002001c00007979797979797979797979797979797979797979")
    /// scapy IPv4/UDP, IP total length 98, then a 4-byte FCS (de ad be ef) in the capture.
    static let withFCS = hex(
        "02fc0000000502fc000000010800450000620001000040115b750a0102030a09090900010002004e67c1"
            + String(repeating: "78", count: 70) + "deadbeef")

    @Test func checksumFixSkipsAnIPv6FirstFragment() throws {
        var buffer = try RewriteBuffer(Self.firstFragment6)
        #expect(buffer.layout.isFragment)
        #expect(buffer.apply(.fixChecksums) == nil)
        #expect(buffer.bytes == Self.firstFragment6, "checksum over the whole datagram kept")
        #expect(buffer.apply(.truncateToMTU(72)) == nil)
        #expect(Array(buffer.bytes[68..<70]) == [0xb4, 0x2d], "no L4 fix-up after the cut either")
        var whole = try RewriteBuffer(Sample.ipv6TCP())
        #expect(!whole.layout.isFragment)
        _ = whole.apply(.fixChecksums)
    }

    @Test func prefixMapPairsDoNotChain() throws {
        let ten = IPPrefix("10.0.0.0/8")!, eleven = IPPrefix("11.0.0.0/8")!
        let table = try RuleTable(rules: [], tableRewrites: [.mapSourcePrefix(from: ten, to: eleven),
                                                             .mapSourcePrefix(from: eleven, to: ten),
                                                             .mapDestinationPrefix(from: IPPrefix("192.168.0.0/16")!, to: ten),
                                                             .mapDestinationPrefix(from: ten, to: eleven)])
        let from11 = Sample.ipv4TCP(source: 0x0B00_0001)
        let (_, out) = try RuleMatchTests.run(table, [RuleMatchTests.v4, from11])
        #expect(out.count == 2)
        #expect(Array(out[0][26..<30]) == [11, 0, 0, 1], "10/8 -> 11/8, not back to 10/8")
        #expect(Array(out[1][26..<30]) == [10, 0, 0, 1], "the swap's other half")
        #expect(Array(out[0][30..<34]) == [10, 168, 1, 2], "192.168/16 -> 10/8 only: no second destination pair")
        #expect(out.allSatisfy { $0.withUnsafeBytes { Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14) } })
    }

    @Test func mtuCutNeverGrowsTheIPLength() throws {
        var buffer = try RewriteBuffer(Self.withFCS)
        #expect(buffer.apply(.truncateToMTU(100)) == nil)
        #expect(buffer.layout.length == 14 + 100, "the capture is cut at the MTU")
        #expect(UInt16(buffer.bytes[16]) << 8 | UInt16(buffer.bytes[17]) == 98, "total length kept at 98, not 100")
        buffer.bytes.withUnsafeBytes { #expect(Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14)) }
        #expect(Array(buffer.bytes[14..<112]) == Array(Self.withFCS[14..<112]), "the IP packet is unchanged")
        var ipv6 = try RewriteBuffer(Self.udp6Zero + [0xde, 0xad, 0xbe, 0xef])
        #expect(ipv6.apply(.truncateToMTU(1280)) == nil)
        #expect(ipv6.bytes.count == Self.udp6Zero.count + 4, "under the MTU: unchanged")
    }

    @Test func fixChecksumsLeavesAZeroUDPChecksumAsTcprewriteDoes() throws {
        // tcprewrite --fixcsum output: identical to the input for both.
        for frame in [Self.udp4Zero, Self.udp6Zero] {
            var buffer = try RewriteBuffer(frame)
            #expect(buffer.apply(.fixChecksums) == nil)
            #expect(buffer.bytes == frame)
        }
    }

    @Test func ipv6ZeroUDPChecksumStaysZeroAfterRewrites() throws {
        for rewrite in [Rewrite.setSourcePort(7), .setDestinationAddress(IPPrefix("2001:db9::/32")!)] {
            var buffer = try RewriteBuffer(Self.udp6Zero)
            #expect(buffer.apply(rewrite) == nil)
            #expect(buffer.bytes != Self.udp6Zero)
            #expect(Array(buffer.bytes[60..<62]) == [0, 0], "\(rewrite): no checksum stays no checksum")
        }
    }

    @Test func ipv6MappedPrefixNeverMatchesIPv4() throws {
        let mapped = try #require(IPPrefix("::ffff:10.0.0.0/104"))
        let v4 = try #require(IPPrefix("10.0.0.0/8"))
        #expect(!mapped.isIPv4 && v4.isIPv4 && mapped != v4)
        #expect(mapped.description == "::ffff:10.0.0.0/104" && v4.description == "10.0.0.0/8")
        // 10.0.0.1 over IPv4, and ::ffff:10.0.0.1 over IPv6.
        let v6Mapped = Sample.ipv6TCP(source: (0, 0x0000_FFFF_0A00_0001))
        let table = try RuleTable(rules: [Rule(RuleMatch(sourcePrefix: mapped), name: "v6"),
                                          Rule(RuleMatch(sourcePrefix: v4), name: "v4")])
        let (hits, _) = try RuleMatchTests.run(table, [RuleMatchTests.v4, v6Mapped])
        #expect(hits == [1, 0])
        var buffer = try RewriteBuffer(RuleMatchTests.v4)
        #expect(buffer.apply(.setSourceAddress(IPPrefix("::ffff:11.0.0.0/104")!)) == nil)
        #expect(buffer.bytes == RuleMatchTests.v4, "an IPv6 prefix leaves IPv4 packets alone")
    }
}
