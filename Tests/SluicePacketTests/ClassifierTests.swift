// Path: Tests/SluicePacketTests/ClassifierTests.swift — source ids by each key, configuration errors,
// and the flow hash's symmetric and asymmetric behaviour.
import Testing

@testable import SluicePacket

@Suite struct ClassifierTests {
    func classify(_ frame: [UInt8], _ configuration: ClassifierConfiguration, port: UInt16 = 0,
                  link: LinkType = .ethernet) throws -> Classification {
        let packet = try #require(parsed(frame, link))
        return Classifier(configuration).classify(packet, inputPort: port)
    }

    @Test func bySourceMAC() throws {
        let configuration = try ClassifierConfiguration(key: .sourceMAC, entries: [
            SourceEntry(.mac(MACAddress(Addr.macA)), sourceID: 7),
            SourceEntry(.mac(MACAddress(0x02_00_00_00_00_99)), sourceID: 8),
        ], defaultSourceID: 1)
        #expect(try classify(Sample.ipv4TCP(), configuration).sourceID == 7)
        #expect(try classify(Sample.ipv4TCP(sourceMAC: 0x02_00_00_00_00_99), configuration).sourceID == 8)
        #expect(try classify(Sample.ipv4TCP(sourceMAC: 0x02_00_00_00_00_55), configuration).sourceID == 1)
        let cooked = Build.sll(protocol: 0x0800, payload: Build.ipv4(proto: 17, payload: Build.udp()))
        #expect(try classify(cooked, configuration, link: .linuxSLL).sourceID == 7)
        #expect(try classify(Build.ipv4(proto: 17, payload: Build.udp()), configuration, link: .raw).sourceID == 1)
    }

    @Test func byOuterVLAN() throws {
        let configuration = try ClassifierConfiguration(key: .outerVLAN, entries: [
            SourceEntry(.vlan(100), sourceID: 10), SourceEntry(.vlan(4095), sourceID: 11), SourceEntry(.vlan(0), sourceID: 12),
        ], defaultSourceID: 2)
        #expect(try classify(Sample.ipv4TCP(tags: [(0x8100, 0xE000 | 100)]), configuration).sourceID == 10)
        #expect(try classify(Sample.ipv4TCP(tags: [(0x88A8, 4095), (0x8100, 100)]), configuration).sourceID == 11)
        #expect(try classify(Sample.ipv4TCP(tags: [(0x8100, 0x2000)]), configuration).sourceID == 12, "priority tag")
        #expect(try classify(Sample.ipv4TCP(tags: [(0x8100, 101)]), configuration).sourceID == 2)
        #expect(try classify(Sample.ipv4TCP(), configuration).sourceID == 2, "untagged")
    }

    @Test func bySourcePrefixLongestFirst() throws {
        let configuration = try ClassifierConfiguration(key: .sourcePrefix, entries: [
            SourceEntry(.prefix(IPPrefix("10.0.0.0/8")!), sourceID: 20),
            SourceEntry(.prefix(IPPrefix("10.0.0.0/24")!), sourceID: 21),
            SourceEntry(.prefix(IPPrefix("0.0.0.0/0")!), sourceID: 22),
            SourceEntry(.prefix(IPPrefix("2001:db8::/32")!), sourceID: 30),
            SourceEntry(.prefix(IPPrefix("2001:db8:0:1::/64")!), sourceID: 31),
        ], defaultSourceID: 3)
        #expect(try classify(Sample.ipv4TCP(source: 0x0A00_0001), configuration).sourceID == 21)
        #expect(try classify(Sample.ipv4TCP(source: 0x0A01_0001), configuration).sourceID == 20)
        #expect(try classify(Sample.ipv4TCP(source: 0x0B00_0001), configuration).sourceID == 22, "IPv4 default route")
        #expect(try classify(Sample.ipv6TCP(source: Addr.v6A), configuration).sourceID == 31)
        #expect(try classify(Sample.ipv6TCP(source: Addr.v6B), configuration).sourceID == 30)
        #expect(try classify(Sample.ipv6TCP(source: (0x2002_0000_0000_0000, 1)), configuration).sourceID == 3,
                "an IPv4 /0 does not cover IPv6")
        let arp = Build.ethernet(etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))
        #expect(try classify(arp, configuration).sourceID == 3)
    }

    @Test func byInputPort() throws {
        let configuration = try ClassifierConfiguration(key: .inputPort, entries: [
            SourceEntry(.port(0), sourceID: 40), SourceEntry(.port(3), sourceID: 43),
        ], defaultSourceID: 4)
        #expect(try classify(Sample.ipv4TCP(), configuration, port: 0).sourceID == 40)
        #expect(try classify(Sample.ipv4TCP(), configuration, port: 3).sourceID == 43)
        #expect(try classify(Sample.ipv4TCP(), configuration, port: 2).sourceID == 4)
    }

    @Test func fullExactTableFindsEveryEntry() throws {
        let entries = (0..<PacketLimits.sourceEntryCountMax).map {
            SourceEntry(.port(UInt16(($0 * 7919) % 1000)), sourceID: UInt16($0 + 100))
        }
        let classifier = Classifier(try ClassifierConfiguration(key: .inputPort, entries: entries, defaultSourceID: 9))
        let packet = try #require(parsed(Sample.ipv4TCP()))
        for entry in entries {
            guard case .port(let port) = entry.match else { continue }
            #expect(classifier.classify(packet, inputPort: port).sourceID == entry.sourceID)
        }
        #expect(classifier.classify(packet, inputPort: 1000).sourceID == 9)
    }

    @Test func innerHeadersClassifyTunnels() throws {
        let configuration = try ClassifierConfiguration(key: .sourceMAC, entries: [
            SourceEntry(.mac(MACAddress(0x02_00_00_00_22_22)), sourceID: 50),
        ], defaultSourceID: 5, usesInnerHeaders: true)
        let tunnel = try classify(Sample.vxlan(), configuration)
        #expect(tunnel.sourceID == 50)
        let packet = try #require(parsed(Sample.vxlan()))
        #expect(tunnel.flowHash == FlowHash().hash(packet.inner))
        let outerOnly = try ClassifierConfiguration(key: .sourceMAC, entries: configuration.entries, defaultSourceID: 5)
        #expect(try classify(Sample.vxlan(), outerOnly).sourceID == 5)
        #expect(try classify(Sample.vxlan(), outerOnly).flowHash == FlowHash().hash(packet.outer))
    }

    @Test func configurationErrorsAreTyped() {
        #expect(throws: ClassifierError.tooManyEntries(65, max: PacketLimits.sourceEntryCountMax)) {
            _ = try ClassifierConfiguration(key: .inputPort, entries: (0..<65).map {
                SourceEntry(.port(UInt16($0)), sourceID: 1)
            })
        }
        #expect(throws: ClassifierError.entryKeyMismatch(index: 1, key: .outerVLAN)) {
            _ = try ClassifierConfiguration(key: .outerVLAN, entries: [
                SourceEntry(.vlan(1), sourceID: 1), SourceEntry(.port(1), sourceID: 2),
            ])
        }
        #expect(throws: ClassifierError.invalidVLANID(4096, index: 0)) {
            _ = try ClassifierConfiguration(key: .outerVLAN, entries: [SourceEntry(.vlan(4096), sourceID: 1)])
        }
        #expect(throws: ClassifierError.duplicateEntry(index: 2)) {
            _ = try ClassifierConfiguration(key: .sourceMAC, entries: [
                SourceEntry(.mac(MACAddress(1)), sourceID: 1), SourceEntry(.mac(MACAddress(2)), sourceID: 2),
                SourceEntry(.mac(MACAddress(1)), sourceID: 3),
            ])
        }
    }

    // MARK: Flow hash

    func headers(_ frame: [UInt8]) throws -> PacketHeaders { try #require(parsed(frame)).outer }

    @Test func symmetricHashIsTheSameBothWays() throws {
        let forward = try headers(Sample.ipv4TCP(source: Addr.v4A, destination: Addr.v4B, sourcePort: 40000, destinationPort: 80))
        let reverse = try headers(Sample.ipv4TCP(source: Addr.v4B, destination: Addr.v4A, sourcePort: 80, destinationPort: 40000))
        let symmetric = FlowHash(isSymmetric: true)
        #expect(symmetric.hash(forward) == symmetric.hash(reverse))
        let asymmetric = FlowHash()
        #expect(asymmetric.hash(forward) != asymmetric.hash(reverse))
        let v6Forward = try headers(Sample.ipv6TCP(source: Addr.v6A, destination: Addr.v6B))
        let v6Reverse = try headers(Sample.ipv6TCP(source: Addr.v6B, destination: Addr.v6A))
        #expect(symmetric.hash(v6Forward) != symmetric.hash(forward))
        var swapped = v6Reverse
        swap(&swapped.sourcePort, &swapped.destinationPort)
        #expect(symmetric.hash(v6Forward) == symmetric.hash(swapped))
        let arpForward = try headers(Build.ethernet(destination: Addr.macB, source: Addr.macA, etherType: 0x0806, payload: []))
        let arpReverse = try headers(Build.ethernet(destination: Addr.macA, source: Addr.macB, etherType: 0x0806, payload: []))
        #expect(symmetric.hash(arpForward) == symmetric.hash(arpReverse))
        #expect(asymmetric.hash(arpForward) != asymmetric.hash(arpReverse))
    }

    @Test func sameAddressesDifferentPortsStayDistinct() throws {
        // Same host pair both ways: the ports alone must order the endpoints.
        let one = try headers(Sample.ipv4TCP(source: Addr.v4A, destination: Addr.v4A, sourcePort: 1, destinationPort: 2))
        let two = try headers(Sample.ipv4TCP(source: Addr.v4A, destination: Addr.v4A, sourcePort: 2, destinationPort: 1))
        #expect(FlowHash(isSymmetric: true).hash(one) == FlowHash(isSymmetric: true).hash(two))
        #expect(FlowHash().hash(one) != FlowHash().hash(two))
    }

    @Test func everyTupleFieldAndTheSeedChangeTheHash() throws {
        let base = try headers(Sample.ipv4TCP())
        let hash = FlowHash()
        var changed = [base, base, base, base, base]
        changed[0].sourceAddress.low ^= 1
        changed[1].destinationAddress.low ^= 0x100
        changed[2].sourcePort ^= 1
        changed[3].destinationPort ^= 0x8000
        changed[4].ipProtocol = 17
        for variant in changed { #expect(hash.hash(variant) != hash.hash(base)) }
        #expect(FlowHash(seed: 1).hash(base) != hash.hash(base))
    }

    @Test func fragmentsHashWithoutPorts() throws {
        let first = try headers(Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: Build.udp(length: 1000), fragmentField: 0x2000)))
        let later = try headers(Build.ethernet(etherType: 0x0800, payload: Build.ipv4(
            proto: 17, payload: [UInt8](repeating: 0, count: 16), fragmentField: 100)))
        #expect(first.flags.contains(.ports))
        #expect(FlowHash().hash(first) == FlowHash().hash(later))
    }

    @Test func hashSpreadsFlowsEvenly() throws {
        var headers = try headers(Sample.ipv4TCP())
        var buckets = [Int](repeating: 0, count: 16)
        let flowCount = 64_000
        for flow in 0..<flowCount {
            headers.sourceAddress = IPAddress(ipv4: 0x0A00_0000 | UInt32(flow / 64))
            headers.sourcePort = UInt16(1024 + flow % 64)
            buckets[Int(FlowHash().hash(headers) >> 28)] += 1
        }
        let expected = flowCount / buckets.count
        for count in buckets { #expect(abs(count - expected) < expected / 10, "\(buckets)") }
    }
}
