// Path: Tests/SluicePacketTests/ParserTests.swift — valid packets of every kind parse to the right fields.
import Testing

@testable import SluicePacket

@Suite struct ParserTests {
    @Test func ethernetIPv4TCP() throws {
        let packet = try #require(parsed(Sample.ipv4TCP()))
        let outer = packet.outer
        #expect(outer.l2Offset == 0)
        #expect(outer.l3Offset == 14)
        #expect(outer.l4Offset == 34)
        #expect(outer.payloadOffset == 54)
        #expect(outer.etherType == 0x0800)
        #expect(outer.ipVersion == 4)
        #expect(outer.ipProtocol == 6)
        #expect(outer.ttl == 64)
        #expect(outer.sourceMAC == MACAddress(Addr.macA))
        #expect(outer.destinationMAC == MACAddress(Addr.macB))
        #expect(outer.sourceAddress == IPAddress(ipv4: Addr.v4A))
        #expect(outer.destinationAddress.ipv4 == Addr.v4B)
        #expect(outer.sourcePort == 40000)
        #expect(outer.destinationPort == 80)
        #expect(outer.tcpFlags == 0x02)
        #expect(outer.flags.isSuperset(of: [.ethernet, .ports, .tcp, .dontFragment]))
        #expect(!outer.flags.contains(.fragment))
        #expect(outer.vlanCount == 0)
        #expect(!packet.isTunnel)
        #expect(packet.inner == PacketHeaders())
        #expect(packet.length == UInt32(Sample.ipv4TCP().count))
    }

    @Test func tcpOptionsMovePayload() throws {
        let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 6, payload: Build.tcp(flags: 0x12, options: [2, 4, 5, 0xB4, 1, 1, 1, 0], payload: [7])))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.payloadOffset == 34 + 28)
        #expect(packet.outer.tcpFlags == 0x12)
    }

    @Test func ipv4OptionsShiftL4() throws {
        let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: Build.udp(destination: 123), options: [0x94, 0x04, 0, 0, 1, 1, 1, 0]))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.l4Offset == 14 + 28)
        #expect(packet.outer.flags.contains(.ipv4Options))
        #expect(packet.outer.destinationPort == 123)
    }

    @Test(arguments: [
        ([(UInt16(0x8100), UInt16(0x2064))], UInt16(100), UInt16(0)),
        ([(0x88A8, 0x0010), (0x8100, 0x0020)], 16, 32),
        ([(0x9100, 0x0FFF), (0x8100, 0x0001)], 4095, 1),
    ])
    func vlanTags(tags: [(UInt16, UInt16)], outer: UInt16, inner: UInt16) throws {
        let frame = Sample.ipv4TCP(tags: tags.map { (tpid: $0.0, tci: $0.1) })
        let packet = try #require(parsed(frame))
        #expect(Int(packet.outer.vlanCount) == tags.count)
        #expect(packet.outer.outerVLAN == outer)
        #expect(packet.outer.innerVLAN == inner)
        #expect(Int(packet.outer.l3Offset) == 14 + 4 * tags.count)
        #expect(packet.outer.etherType == 0x0800)
        #expect(packet.outer.destinationPort == 80)
    }

    @Test func ipv4FirstFragmentHasL4() throws {
        // A first fragment's UDP length spans all fragments: longer than this fragment's payload.
        let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: Build.udp(destination: 53, payload: [1, 2, 3, 4], length: 3000),
            identification: 0xBEEF, fragmentField: 0x2000))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.flags.isSuperset(of: [.fragment, .moreFragments, .ports]))
        #expect(packet.outer.fragmentOffset == 0)
        #expect(packet.outer.fragmentID == 0xBEEF)
        #expect(packet.outer.destinationPort == 53)
    }

    @Test(arguments: [UInt16(0x2000 | 185), 185])
    func ipv4LaterFragmentHasNoL4(fragmentField: UInt16) throws {
        let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 6, payload: [UInt8](repeating: 0xEE, count: 24), fragmentField: fragmentField))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.flags.contains(.fragment))
        #expect(packet.outer.flags.contains(.moreFragments) == (fragmentField & 0x2000 != 0))
        #expect(packet.outer.fragmentOffset == 185)
        #expect(packet.outer.l4Offset == PacketHeaders.absentOffset)
        #expect(!packet.outer.hasL4)
        #expect(packet.outer.ipProtocol == 6)
        #expect(packet.outer.sourcePort == 0)
    }

    @Test func ipv6TCP() throws {
        let packet = try #require(parsed(Sample.ipv6TCP(hopLimit: 9)))
        #expect(packet.outer.ipVersion == 6)
        #expect(packet.outer.etherType == 0x86DD)
        #expect(packet.outer.l3Offset == 14)
        #expect(packet.outer.l4Offset == 54)
        #expect(packet.outer.ttl == 9)
        #expect(packet.outer.sourceAddress == IPAddress(high: Addr.v6A.0, low: Addr.v6A.1))
        #expect(packet.outer.destinationAddress == IPAddress(high: Addr.v6B.0, low: Addr.v6B.1))
        #expect(packet.outer.sourceAddress.ipv4 == nil)
        #expect(packet.outer.destinationPort == 443)
        #expect(!packet.outer.flags.contains(.ipv6Extensions))
    }

    @Test func ipv6TrafficClass() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 17, payload: Build.udp(), trafficClass: 0xB9))
        #expect(try #require(parsed(frame)).outer.trafficClass == 0xB9)
    }

    @Test func ipv6ExtensionChain() throws {
        let packet = try #require(parsed(Sample.ipv6ExtensionsUDP()))
        #expect(packet.outer.flags.contains(.ipv6Extensions))
        #expect(packet.outer.ipProtocol == 17)
        #expect(packet.outer.l4Offset == 14 + 40 + 16 + 8 + 8)
        #expect(packet.outer.destinationPort == 5353)
    }

    @Test func ipv6AuthenticationHeader() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 51, payload: Build.ipv6AH(next: 6, lengthUnits: 4, payload: Build.tcp(destination: 22))))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.l4Offset == 14 + 40 + 24)
        #expect(packet.outer.destinationPort == 22)
    }

    @Test func ipv6FirstFragmentHasL4() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 44, payload: Build.ipv6Fragment(next: 17, offsetUnits: 0, more: true, identification: 0xCAFE_F00D,
                                                  payload: Build.udp(destination: 9, length: 4000))))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.flags.isSuperset(of: [.fragment, .moreFragments, .ports]))
        #expect(packet.outer.fragmentID == 0xCAFE_F00D)
        #expect(packet.outer.destinationPort == 9)
    }

    @Test func ipv6LaterFragmentHasNoL4() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 44, payload: Build.ipv6Fragment(next: 6, offsetUnits: 100, more: false, identification: 1,
                                                  payload: [UInt8](repeating: 1, count: 16))))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.flags.contains(.fragment))
        #expect(!packet.outer.flags.contains(.moreFragments))
        #expect(packet.outer.fragmentOffset == 100)
        #expect(!packet.outer.hasL4)
        #expect(packet.outer.ipProtocol == 6)
    }

    @Test func ipv6AtomicFragmentIsNotAFragment() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 44, payload: Build.ipv6Fragment(next: 6, offsetUnits: 0, more: false, identification: 1,
                                                  payload: Build.tcp())))
        let packet = try #require(parsed(frame))
        #expect(!packet.outer.flags.contains(.fragment))
        #expect(packet.outer.hasL4)
    }

    @Test func ipv6NoNextHeader() throws {
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(next: 59, payload: [1, 2, 3]))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.ipProtocol == 59)
        #expect(!packet.outer.hasL4)
    }

    @Test func ipv6ExtensionChainAtTheBound() throws {
        var chain = Build.tcp()
        for _ in 0..<PacketLimits.ipv6ExtensionHeaderCountMax {
            chain = Build.ipv6Options(next: chain.count == 20 ? 6 : 60, payload: chain)
        }
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(next: 60, payload: chain))
        let packet = try #require(parsed(frame))
        #expect(packet.outer.ipProtocol == 6)
        #expect(Int(packet.outer.l4Offset) == 54 + 8 * PacketLimits.ipv6ExtensionHeaderCountMax)
    }

    @Test func icmpAndICMPv6() throws {
        let icmp = try #require(parsed(Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 1, payload: Build.icmp(type: 3, code: 4)))))
        #expect(icmp.outer.flags.contains(.icmp))
        #expect(icmp.outer.icmpType == 3)
        #expect(icmp.outer.icmpCode == 4)
        #expect(icmp.outer.payloadOffset == 42)
        let icmpv6 = try #require(parsed(Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
            next: 58, payload: Build.icmp(type: 135, code: 0)))))
        #expect(icmpv6.outer.icmpType == 135)
        #expect(icmpv6.outer.payloadOffset == 14 + 40 + 4)
        #expect(!icmpv6.outer.flags.contains(.ports))
    }

    @Test func vxlanInnerPacket() throws {
        let packet = try #require(parsed(Sample.vxlan(vni: 0xABCDEF)))
        #expect(packet.isTunnel)
        #expect(packet.vxlanVNI == 0xABCDEF)
        #expect(packet.outer.destinationPort == 4789)
        #expect(packet.outer.l4Offset == 34)
        let inner = packet.inner
        #expect(inner.l2Offset == 34 + 8 + 8)
        #expect(inner.sourceMAC == MACAddress(0x02_00_00_00_22_22))
        #expect(inner.vlanCount == 1)
        #expect(inner.outerVLAN == 7)
        #expect(inner.l3Offset == 50 + 18)
        #expect(inner.ipVersion == 6)
        #expect(inner.l4Offset == 68 + 40)
        #expect(inner.sourcePort == 1111)
        #expect(inner.destinationPort == 2222)
        #expect(packet.l3Offset == 14)
    }

    @Test func vxlanNotFollowedWhenDisabledOrOtherPort() throws {
        guard case .success(let off) = parse(Sample.vxlan(), parser: PacketParser(followsTunnels: false)) else {
            Issue.record("parse failed")
            return
        }
        #expect(!off.isTunnel)
        guard case .success(let other) = parse(Sample.vxlan(), parser: PacketParser(vxlanPort: 8472)) else {
            Issue.record("parse failed")
            return
        }
        #expect(!other.isTunnel)
    }

    @Test func vxlanInsideVXLANStopsAtTheDepthBound() throws {
        let innermost = Sample.vxlan()
        let frame = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp(
            destination: 4789, payload: Build.vxlan(vni: 1, inner: innermost))))
        let packet = try #require(parsed(frame))
        #expect(packet.isTunnel)
        #expect(packet.vxlanVNI == 1)
        #expect(packet.inner.destinationPort == 4789)
        #expect(packet.inner.l4Offset == 50 + 34)
    }

    @Test func nonIPEtherTypeParsesWithoutL3() throws {
        let arp = Build.ethernet(destination: 0xFFFF_FFFF_FFFF, etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))
        let packet = try #require(parsed(arp))
        #expect(packet.outer.etherType == 0x0806)
        #expect(packet.outer.l3Offset == PacketHeaders.absentOffset)
        #expect(!packet.outer.isIP)
    }

    @Test func otherIPProtocolHasL4OffsetOnly() throws {
        let gre = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 47, payload: [0, 0, 0x08, 0]))
        let packet = try #require(parsed(gre))
        #expect(packet.outer.l4Offset == 34)
        #expect(packet.outer.ipProtocol == 47)
        #expect(!packet.outer.flags.contains(.ports))
        #expect(packet.outer.payloadOffset == PacketHeaders.absentOffset)
    }

    @Test func ethernetPaddingIsIgnored() throws {
        let frame = Sample.ipv4UDP(payload: [1])
        let padded = frame + [UInt8](repeating: 0, count: 60 - frame.count)
        let packet = try #require(parsed(padded))
        #expect(packet.outer.payloadOffset == 42)
        #expect(packet.outer.destinationPort == 53)
    }

    @Test func cutCaptureIsAcceptedOnlyWhenMarked() throws {
        let frame = Sample.ipv4UDP(payload: [UInt8](repeating: 5, count: 100))
        let cut = Array(frame.prefix(14 + 20 + 8 + 10))
        guard case .failure(let reason) = parse(cut) else {
            Issue.record("a cut packet parsed without the mark")
            return
        }
        #expect(reason == .ipv4TotalLengthMismatch)
        guard case .success(let packet) = parse(cut, cut: true) else {
            Issue.record("a marked cut packet failed")
            return
        }
        #expect(packet.outer.destinationPort == 53)
        // Headers must still be whole.
        guard case .failure(let short) = parse(Array(frame.prefix(14 + 20 + 4)), cut: true) else {
            Issue.record("a cut UDP header parsed")
            return
        }
        #expect(short == .truncatedUDP)
    }

    @Test(arguments: Sample.allValid().map(\.name))
    func everyValidKindParses(name: String) throws {
        let sample = try #require(Sample.allValid().first { $0.name == name })
        let packet = try #require(parsed(sample.bytes, sample.link), "\(name): \(String(describing: dropReason(sample.bytes, sample.link)))")
        #expect(packet.linkType == sample.link)
        #expect(packet.outer.isIP)
        #expect(Int(packet.outer.l3Offset) < sample.bytes.count)
    }

    @Test func cookedCapturesCarryTheSourceMAC() throws {
        let sll = try #require(parsed(Build.sll(protocol: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp())), .linuxSLL))
        #expect(sll.outer.l2Offset == PacketHeaders.absentOffset)
        #expect(sll.outer.l3Offset == 16)
        #expect(sll.outer.sourceMAC == MACAddress(Addr.macA))
        #expect(sll.outer.flags.contains(.cookedSourceMAC))
        let sll2 = try #require(parsed(Build.sll2(protocol: 0x86DD, payload: Build.ipv6(next: 6, payload: Build.tcp())), .linuxSLL2))
        #expect(sll2.outer.l3Offset == 20)
        #expect(sll2.outer.l4Offset == 60)
        #expect(sll2.outer.sourceMAC == MACAddress(Addr.macA))
        let tagged = try #require(parsed(Build.sll(protocol: 0x8100, payload: [0x00, 0x05, 0x08, 0x00]
            + Build.ipv4(proto: 17, payload: Build.udp())), .linuxSLL))
        #expect(tagged.outer.outerVLAN == 5)
        #expect(tagged.outer.l3Offset == 20)
    }

    @Test(arguments: [LinkType.raw, .rawLegacy, .ipv4, .ipv6])
    func rawLinkTypes(link: LinkType) throws {
        let bytes = link == .ipv6 ? Build.ipv6(next: 17, payload: Build.udp()) : Build.ipv4(proto: 17, payload: Build.udp())
        let packet = try #require(parsed(bytes, link))
        #expect(packet.outer.l3Offset == 0)
        #expect(packet.outer.ipVersion == (link == .ipv6 ? 6 : 4))
        #expect(packet.outer.etherType == (link == .ipv6 ? 0x86DD : 0x0800))
        #expect(packet.outer.destinationPort == 53)
        #expect(!packet.outer.flags.contains(.ethernet))
    }

    @Test func resultConvenienceMatchesInPlaceParse() throws {
        let frame = Sample.vxlan()
        let viaResult = frame.withUnsafeBytes { PacketParser().parse($0, linkType: .ethernet) }
        #expect(try viaResult.get() == parsed(frame))
    }

    /// The parse resets a reused packet's inner headers only when a parse left them set: whatever came
    /// before, each parse leaves exactly what a parse into a fresh packet leaves, drops included.
    @Test func aReusedPacketHoldsOnlyItsLastParse() {
        func parseInto(_ packet: inout ParsedPacket, _ bytes: [UInt8]) -> DropReason? {
            bytes.withUnsafeBytes { PacketParser().parse(PacketBytes($0), linkType: .ethernet, into: &packet) }
        }
        let brokenInner = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp(
            destination: 4789, payload: Build.vxlan(vni: 9, inner: Build.ethernet(
                etherType: 0x0800, payload: Build.ipv4(proto: 6, payload: Build.tcp(dataOffsetWords: 15)))))))
        // The VNI read, then an inner frame too short for its Ethernet header (no inner field set).
        let shortInner = Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp(
            destination: 4789, payload: Build.vxlan(vni: 5, inner: Array(Sample.ipv4TCP().prefix(10))))))
        let frames = [Sample.vxlan(vni: 7), Sample.ipv4UDP(), Sample.vxlan(vni: 8), brokenInner, Sample.ipv4TCP(),
                      brokenInner, Sample.vxlan(vni: 3), Array(Sample.ipv4TCP().prefix(13)), Sample.ipv4UDP(),
                      shortInner, Sample.vxlan(vni: 4), shortInner]
        var reused = ParsedPacket()
        for (step, frame) in frames.enumerated() {
            var fresh = ParsedPacket()
            let expected = parseInto(&fresh, frame)
            #expect(parseInto(&reused, frame) == expected, "step \(step)")
            #expect(reused == fresh, "step \(step)")
            if !fresh.isTunnel { #expect(reused.inner == PacketHeaders() && reused.vxlanVNI == 0, "step \(step)") }
        }
        #expect(parseInto(&reused, brokenInner) == .truncatedTCP)
        #expect(parseInto(&reused, shortInner) == .truncatedEthernet)
        // Inner headers a caller set (with their l2Offset) are reset too.
        reused.inner.l2Offset = 50
        reused.inner.sourcePort = 1
        #expect(parseInto(&reused, Sample.ipv4UDP()) == nil)
        #expect(reused.inner == PacketHeaders())
    }

    @Test func addressTextRoundTrips() throws {
        #expect(MACAddress("02:00:00:00:00:0a") == MACAddress(Addr.macA))
        #expect(MACAddress(Addr.macA).description == "02:00:00:00:00:0a")
        #expect(MACAddress("02:00:00:00:00") == nil)
        #expect(IPAddress("10.0.0.1") == IPAddress(ipv4: Addr.v4A))
        #expect(IPAddress("2001:db8:0:1::1") == IPAddress(high: Addr.v6A.0, low: Addr.v6A.1))
        #expect(IPAddress("10.0.0.1")?.description == "10.0.0.1")
        #expect(IPAddress("nonsense") == nil)
        #expect(IPPrefix("10.0.0.0/8")?.length == 104)
        #expect(IPPrefix("10.0.0.0/8")?.description == "10.0.0.0/8")
        #expect(IPPrefix("10.0.0.1/8") == nil, "host bits set")
        #expect(IPPrefix("10.0.0.0/33") == nil)
        #expect(IPPrefix("2001:db8::/32")?.contains(IPAddress(high: Addr.v6A.0, low: 0)) == true)
    }
}
