// Path: Tests/SluicePacketTests/DropReasonTests.swift — every malformed packet is a counted drop reason,
// never a crash: one crafted packet per reason, every truncation, random corruption.
import Testing

@testable import SluicePacket

/// A crafted malformed packet and the reason it must be dropped for.
struct MalformedCase: CustomTestStringConvertible, Sendable {
    let reason: DropReason
    let bytes: [UInt8]
    let link: LinkType
    var testDescription: String { "\(reason)" }

    init(_ reason: DropReason, _ bytes: [UInt8], _ link: LinkType = .ethernet) {
        self.reason = reason
        self.bytes = bytes
        self.link = link
    }

    static func ipv4(_ proto: UInt8, _ payload: [UInt8], fragmentField: UInt16 = 0) -> [UInt8] {
        Build.ethernet(etherType: 0x0800, payload: Build.ipv4(proto: proto, payload: payload, fragmentField: fragmentField))
    }

    static func ipv6(_ next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(next: next, payload: payload))
    }

    static func vxlanOuter(_ payload: [UInt8]) -> [UInt8] {
        ipv4(17, Build.udp(destination: 4789, payload: payload))
    }

    static let all: [MalformedCase] = {
        let ipv4TCP = Build.ipv4(proto: 6, payload: Build.tcp())
        var longChain = Build.tcp()
        for index in 0...PacketLimits.ipv6ExtensionHeaderCountMax {
            longChain = Build.ipv6Options(next: index == 0 ? 6 : 60, payload: longChain)
        }
        return [
            MalformedCase(.unsupportedLinkType, Sample.ipv4TCP(), LinkType(rawValue: 147)),
            MalformedCase(.truncatedEthernet, Array(Sample.ipv4TCP().prefix(13))),
            MalformedCase(.truncatedCookedHeader, Array(Build.sll(protocol: 0x0800, payload: []).prefix(15)), .linuxSLL),
            MalformedCase(.truncatedCookedHeader, Array(Build.sll2(protocol: 0x0800, payload: []).prefix(19)), .linuxSLL2),
            MalformedCase(.truncatedVLAN, Build.ethernet(etherType: 0x8100, payload: [0, 1])),
            MalformedCase(.vlanDepthExceeded, Sample.ipv4TCP(tags: [(0x88A8, 1), (0x8100, 2), (0x8100, 3)])),
            MalformedCase(.truncatedIP, [], .raw),
            MalformedCase(.badIPVersion, [0x55] + Array(ipv4TCP.dropFirst()), .raw),
            MalformedCase(.truncatedIPv4, Build.ethernet(etherType: 0x0800, payload: Array(ipv4TCP.prefix(19)))),
            MalformedCase(.truncatedIPv4, Build.ethernet(etherType: 0x0800, payload: Array(
                Build.ipv4(proto: 17, payload: [], options: [1, 1, 1, 0]).prefix(22)))),
            MalformedCase(.badIPv4Version, Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 6, payload: Build.tcp(), versionAndIHL: 0x65))),
            MalformedCase(.badIPv4Version, Build.ipv6(next: 17, payload: Build.udp()), .ipv4),
            MalformedCase(.badIPv4HeaderLength, Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 6, payload: Build.tcp(), versionAndIHL: 0x44))),
            MalformedCase(.ipv4TotalLengthMismatch, Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 6, payload: Build.tcp(), totalLength: 19))),
            MalformedCase(.ipv4TotalLengthMismatch, Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
                proto: 6, payload: Build.tcp(), totalLength: 41))),
            MalformedCase(.truncatedIPv6, Build.ethernet(etherType: 0x86DD, payload: Array(
                Build.ipv6(next: 6, payload: []).prefix(39)))),
            MalformedCase(.badIPv6Version, Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
                next: 6, payload: Build.tcp(), version: 4))),
            MalformedCase(.badIPv6Version, Build.ipv4(proto: 6, payload: Build.tcp()), .ipv6),
            MalformedCase(.ipv6PayloadLengthMismatch, Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(
                next: 6, payload: Build.tcp(), payloadLength: 21))),
            MalformedCase(.truncatedIPv6Extension, ipv6(0, [6, 0, 0, 0])),
            MalformedCase(.truncatedIPv6Extension, ipv6(43, [6, 1, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 4))),
            MalformedCase(.truncatedIPv6Extension, ipv6(51, [6, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            MalformedCase(.ipv6ExtensionChainTooLong, ipv6(60, longChain)),
            MalformedCase(.ipv6HopByHopNotFirst, ipv6(60, Build.ipv6Options(next: 0, payload:
                Build.ipv6Options(next: 6, payload: Build.tcp())))),
            MalformedCase(.truncatedTCP, ipv4(6, Array(Build.tcp().prefix(19)))),
            MalformedCase(.truncatedTCP, ipv4(6, Build.tcp(dataOffsetWords: 6))),
            MalformedCase(.truncatedTCP, ipv6(6, Array(Build.tcp().prefix(12)))),
            MalformedCase(.badTCPDataOffset, ipv4(6, Build.tcp(dataOffsetWords: 4))),
            MalformedCase(.truncatedUDP, ipv4(17, Array(Build.udp().prefix(7)))),
            MalformedCase(.badUDPLength, ipv4(17, Build.udp(payload: [1, 2], length: 7))),
            MalformedCase(.badUDPLength, ipv4(17, Build.udp(payload: [1, 2], length: 11))),
            MalformedCase(.badUDPLength, ipv6(17, Build.udp(payload: [1, 2], length: 11))),
            MalformedCase(.truncatedICMP, ipv4(1, Array(Build.icmp(type: 8, code: 0).prefix(7)))),
            MalformedCase(.truncatedICMPv6, ipv6(58, [128, 0, 0])),
            MalformedCase(.truncatedVXLAN, vxlanOuter([0x08, 0, 0, 0, 0, 0, 1])),
            MalformedCase(.badVXLANFlags, vxlanOuter(Build.vxlan(vni: 5, flags: 0, inner: Sample.ipv4TCP()))),
            MalformedCase(.truncatedEthernet, vxlanOuter(Build.vxlan(vni: 5, inner: Array(Sample.ipv4TCP().prefix(10))))),
            MalformedCase(.truncatedTCP, vxlanOuter(Build.vxlan(vni: 5, inner: Build.ethernet(
                etherType: 0x0800, payload: Build.ipv4(proto: 6, payload: Build.tcp(dataOffsetWords: 15)))))),
        ]
    }()
}

@Suite struct DropReasonTests {
    @Test(arguments: MalformedCase.all)
    func malformedPacketIsDroppedForItsReason(_ malformed: MalformedCase) {
        #expect(dropReason(malformed.bytes, malformed.link) == malformed.reason)
    }

    /// Reasons only a rewrite or the action stage can produce; `RewriteTests` and `StageTests` provoke them.
    static let actionReasons: Set<DropReason> = [.droppedByRule, .ttlExpired, .noRoomForVLAN, .rewriteNeedsEthernet,
                                                 .notClassified]

    @Test func everyReasonHasACraftedPacketOrAnActionTest() {
        let provoked = Set(MalformedCase.all.map(\.reason)).union(Self.actionReasons)
        #expect(provoked == Set(DropReason.allCases))
    }

    @Test func reasonsFitTheCounterTableAndHaveNames() {
        #expect(DropReason.allCases.count <= PacketLimits.dropReasonSlotCount)
        #expect(DropReason.names.count == DropReason.allCases.count)
        for (index, reason) in DropReason.allCases.enumerated() {
            #expect(Int(reason.rawValue) == index, "raw values are dense slot indices")
            #expect(reason.description == DropReason.names[index])
        }
        #expect(DropReason.vlanDepthExceeded.description == "vlanDepthExceeded")
    }

    @Test(arguments: Sample.allValid().map(\.name))
    func everyTruncationIsADrop(name: String) throws {
        let sample = try #require(Sample.allValid().first { $0.name == name })
        for length in 0..<sample.bytes.count {
            let cut = Array(sample.bytes.prefix(length))
            #expect(dropReason(cut, sample.link) != nil, "\(name) cut to \(length) bytes parsed")
            _ = parse(cut, sample.link, cut: true)  // lenient mode: may parse, must not crash
        }
    }

    @Test func randomCorruptionNeverCrashesAndKeepsOffsetsInBounds() {
        var random = SplitMix(seed: 42)
        let samples = Sample.allValid()
        for round in 0..<20_000 {
            let sample = samples[round % samples.count]
            var bytes = sample.bytes
            for _ in 0..<(1 + Int(random.next() % 4)) {
                bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
            }
            if random.next() % 4 == 0 { bytes.removeLast(Int(random.next() % UInt64(bytes.count))) }
            let link = random.next() % 8 == 0 ? LinkType(rawValue: UInt16(random.next() % 300)) : sample.link
            if case .success(let packet) = parse(bytes, link, cut: round % 3 == 0) {
                #expect(offsetsInBounds(packet.outer, bytes.count), "round \(round)")
                #expect(offsetsInBounds(packet.inner, bytes.count), "round \(round)")
            }
        }
    }

    @Test func countersCountEachReasonAndPublishDeltas() {
        var counters = DropCounters()
        counters.count(.truncatedTCP)
        counters.count(.truncatedTCP)
        counters.count(.droppedByRule)
        #expect(counters[.truncatedTCP] == 2)
        #expect(counters[.droppedByRule] == 1)
        #expect(counters.total == 3)
        let table = DropCounterTable()
        let mask: UInt64 = 1 << UInt64(DropReason.truncatedTCP.rawValue) | 1 << UInt64(DropReason.droppedByRule.rawValue)
        table.publish(&counters, dirtyMask: mask)
        #expect(counters.total == 0, "published counts are cleared")
        counters.count(.truncatedTCP)
        table.publish(&counters, dirtyMask: 1 << UInt64(DropReason.truncatedTCP.rawValue))
        let snapshot = table.snapshot()
        #expect(snapshot[.truncatedTCP] == 3)
        #expect(snapshot[.droppedByRule] == 1)
        #expect(snapshot.total == 4)
        var sum = DropCounters()
        sum.add(snapshot)
        sum.add(snapshot)
        #expect(sum[.truncatedTCP] == 6)
    }
}

/// Every present offset of `headers` lies inside a packet of `count` bytes, and they are ordered.
func offsetsInBounds(_ headers: PacketHeaders, _ count: Int) -> Bool {
    let absent = PacketHeaders.absentOffset
    let offsets = [headers.l2Offset, headers.l3Offset, headers.l4Offset, headers.payloadOffset].filter { $0 != absent }
    guard offsets.allSatisfy({ Int($0) <= count }) else { return false }
    return zip(offsets, offsets.dropFirst()).allSatisfy { $0 <= $1 }
}

/// A small deterministic generator for tests.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}
