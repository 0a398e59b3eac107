// Path: Tests/SluiceOverlayTests/OverlayDataplaneTests.swift — the overlay data plane without I/O:
// VXLAN bytes against a reference frame, checked decapsulation, redirect rewrites and checksums, the
// flow table's bounds, lease epochs and ends, and every drop reason counted.
import SluicePacket
import Testing

@testable import SluiceOverlay

/// Addresses of the unit tests: consumer host 198.18.0.1, producer host 198.18.0.2, consumer VM
/// 198.19.1.2, service 198.19.100.1:80, producers 198.19.2.2:8000 and 198.19.2.3:8000, VNI 42.
enum Net {
    static let consumerHost: UInt32 = 0xC612_0001
    static let producerHost: UInt32 = 0xC612_0002
    static let consumerHostMAC: UInt64 = 0x0253_4C00_0001
    static let producerHostMAC: UInt64 = 0x0253_4C00_0002
    static let consumerVM: UInt32 = 0xC613_0102
    static let consumerVMMAC: UInt64 = 0x0253_4C01_0002
    static let consumerPortMAC: UInt64 = 0x0253_4C01_0001
    static let service: UInt32 = 0xC613_6401
    static let producer1: UInt32 = 0xC613_0202
    static let producer2: UInt32 = 0xC613_0203
    static let producer1MAC: UInt64 = 0x0253_4C02_0002
    static let producerPortMAC: UInt64 = 0x0253_4C02_0001

    static func lease(_ id: Int64, epoch: Int64, producer: UInt32 = producer1, name: String = "p1") -> OverlayLease {
        OverlayLease(leaseID: id, epoch: epoch, service: "web", consumerVM: "c1", producerVM: name, producerHost: "h2",
                     producerUnderlayIPv4: producerHost, producerOverlayIPv4: producer, producerPort: 8000, vni: 42)
    }

    static func consumerConfig(policy: OverlayEndedFlowPolicy = .reset, flowCapacity: Int = 1024) -> OverlayDataplaneConfig {
        OverlayDataplaneConfig(
            underlayIPv4: consumerHost, underlayMAC: MACAddress(consumerHostMAC),
            neighborMACs: [producerHost: MACAddress(producerHostMAC)], vnis: [42],
            vmPorts: [OverlayVMPort(name: "c1", role: .consumer, vmMAC: MACAddress(consumerVMMAC),
                                    hostMAC: MACAddress(consumerPortMAC))],
            services: [OverlayService(name: "web", ipv4: service, port: 80),
                       OverlayService(name: "dns", ipv4: service, port: 53, ipProtocol: IPProtocol.udp)],
            flowCapacity: flowCapacity, endedFlowPolicy: policy)
    }

    static func producerConfig() -> OverlayDataplaneConfig {
        OverlayDataplaneConfig(
            underlayIPv4: producerHost, underlayMAC: MACAddress(producerHostMAC), vnis: [42],
            vmPorts: [OverlayVMPort(name: "p1", role: .producer, vmMAC: MACAddress(producer1MAC),
                                    hostMAC: MACAddress(producerPortMAC), overlayIPv4: producer1, vni: 42)],
            services: [])
    }

    static func consumerTCP(sourcePort: UInt16 = 40000, flags: UInt8 = 0x10, ack: UInt32 = 777,
                            payload: [UInt8] = Array("GET /".utf8)) -> [UInt8] {
        OverlayTestFrames.tcp(sourceMAC: consumerVMMAC, destinationMAC: consumerPortMAC, source: consumerVM,
                              destination: service, sourcePort: sourcePort, destinationPort: 80, flags: flags,
                              sequence: 100, acknowledgment: ack, payload: payload)
    }

    static func producerReply(from producer: UInt32 = producer1, sourcePort: UInt16 = 8000,
                              consumerPort: UInt16 = 40000) -> [UInt8] {
        OverlayTestFrames.tcp(sourceMAC: producer1MAC, destinationMAC: producerPortMAC, source: producer,
                              destination: consumerVM, sourcePort: sourcePort, destinationPort: consumerPort,
                              flags: 0x18, sequence: 5000, acknowledgment: 105, payload: Array("HTTP/1.0 200".utf8))
    }

    /// `inner` encapsulated as a host would send it (optionally with a UDP checksum).
    static func vxlan(_ inner: [UInt8], vni: UInt32 = 42, from source: UInt32 = producerHost,
                      to destination: UInt32 = consumerHost, udpChecksum: Bool = false) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 2048)
        let length = buffer.withUnsafeMutableBytes { raw -> Int in
            raw.copyBytes(from: inner)
            let header = OverlayUnderlayHeader(sourceMAC: MACAddress(producerHostMAC), destinationMAC: MACAddress(consumerHostMAC),
                                               sourceIPv4: source, destinationIPv4: destination, computesUDPChecksum: udpChecksum)
            return OverlayVXLAN.encapsulate(raw, innerLength: inner.count, vni: vni, sourcePort: 50000, header: header, ipID: 7)!
        }
        return Array(buffer[0..<length])
    }
}

/// Runs frames through a redirect in a 2048-byte buffer, as the host does.
/// Every frame the redirect hands back from its hold queues, as (VM port, frame).
func takeReleased(_ redirect: inout OverlayRedirect) -> [(Int, [UInt8])] {
    var out: [(Int, [UInt8])] = []
    var buffer = [UInt8](repeating: 0, count: 2048)
    while true {
        let taken = buffer.withUnsafeMutableBytes { redirect.takeReleasedFrame(into: $0) }
        guard let (port, length) = taken else { return out }
        out.append((port, Array(buffer[0..<length])))
    }
}

func run(_ redirect: inout OverlayRedirect, _ frame: [UInt8], port: Int, nowNs: UInt64 = 1_000)
    -> (OverlayVerdict, [UInt8])
{
    var buffer = [UInt8](repeating: 0, count: 2048)
    let verdict = buffer.withUnsafeMutableBytes { raw -> OverlayVerdict in
        raw.copyBytes(from: frame)
        return redirect.process(raw, length: frame.count, port: port, nowNs: nowNs)
    }
    if case .forward(_, let length) = verdict { return (verdict, Array(buffer[0..<length])) }
    return (verdict, [])
}

func parse(_ frame: [UInt8]) throws -> ParsedPacket {
    try frame.withUnsafeBytes { try PacketParser().parse($0, linkType: .ethernet).get() }
}

/// True if the frame's IPv4 header checksum and TCP/UDP checksum (at `l3`) are right.
func checksumsValid(_ frame: [UInt8], l3: Int = 14) -> Bool {
    let ipOK = frame.withUnsafeBytes { Checksum.isIPv4HeaderValid(PacketBytes($0), at: l3) }
    let inner = Array(frame[(l3 - 14)...])
    let source = UInt32(inner[26]) << 24 | UInt32(inner[27]) << 16 | UInt32(inner[28]) << 8 | UInt32(inner[29])
    let destination = UInt32(inner[30]) << 24 | UInt32(inner[31]) << 16 | UInt32(inner[32]) << 8 | UInt32(inner[33])
    let ipProtocol = inner[23]
    let checksumOffset = ipProtocol == IPProtocol.tcp ? 50 : 40
    if ipProtocol == IPProtocol.udp && inner[40] == 0 && inner[41] == 0 { return ipOK }
    var zeroed = inner
    zeroed[checksumOffset] = 0
    zeroed[checksumOffset + 1] = 0
    var expected = OverlayTestFrames.l4Checksum(zeroed, source: source, destination: destination, ipProtocol: ipProtocol)
    if ipProtocol == IPProtocol.udp && expected == 0 { expected = 0xFFFF }
    return ipOK && UInt16(inner[checksumOffset]) << 8 | UInt16(inner[checksumOffset + 1]) == expected
}

@Suite struct OverlayVXLANTests {
    /// The inner frame: UDP 198.19.1.2:1234 -> 198.19.2.2:5678, payload "hi".
    static let inner = OverlayTestFrames.udp(sourceMAC: 0x0253_4C01_0002, destinationMAC: 0x0253_4C01_0001,
                                             source: 0xC613_0102, destination: 0xC613_0202, sourcePort: 1234,
                                             destinationPort: 5678, payload: Array("hi".utf8))

    @Test func encapsulationWritesTheReferenceHeaders() throws {
        let frame = Net.vxlan(Self.inner)
        #expect(frame.count == Self.inner.count + 50)
        // Byte for byte scapy's frame: outer MACs, IPv4 (id 7, DF, TTL 64, checksum 0xAE6E),
        // UDP 50000 -> 4789 length 60 checksum 0, VXLAN flags 08 VNI 42, then the inner frame.
        #expect(frame == OverlayVXLANReference.frame)
        #expect(Array(frame[50...]) == Self.inner)
        #expect(frame.withUnsafeBytes { Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14) })
        let parsed = try parse(frame)
        #expect(parsed.isTunnel)
        #expect(parsed.vxlanVNI == 42)
        #expect(parsed.inner.destinationPort == 5678)
    }

    @Test func decapsulationFindsTheInnerFrame() throws {
        for udpChecksum in [false, true] {
            let frame = Net.vxlan(Self.inner, udpChecksum: udpChecksum)
            if udpChecksum { #expect(frame[40] != 0 || frame[41] != 0) }
            let parsed = try parse(frame)
            var result = OverlayDecapsulated()
            let reason = frame.withUnsafeBytes {
                OverlayVXLAN.decapsulate($0, packet: parsed, localIPv4: Net.consumerHost, vnis: OverlayVNISet([42]),
                                         into: &result)
            }
            #expect(reason == nil)
            #expect(result.innerOffset == 50)
            #expect(result.innerLength == Self.inner.count)
            #expect(result.vni == 42)
            #expect(result.outerSourceIPv4 == Net.producerHost)
            #expect(result.outerSourcePort == 50000)
        }
    }

    @Test func sourcePortComesFromTheFlowHash() {
        #expect(OverlayVXLAN.sourcePort(flowHash: 0) == 49152)
        #expect(OverlayVXLAN.sourcePort(flowHash: 0xFFFF_FFFF) == 65535)
        #expect(OverlayVXLAN.sourcePort(flowHash: 0x1234) != OverlayVXLAN.sourcePort(flowHash: 0x1235))
    }

    @Test func noRoomMeansNoEncapsulation() {
        var buffer = [UInt8](repeating: 0, count: Self.inner.count + 49)
        let result = buffer.withUnsafeMutableBytes { raw -> Int? in
            raw.copyBytes(from: Self.inner)
            let header = OverlayUnderlayHeader(sourceMAC: MACAddress(1), destinationMAC: MACAddress(2), sourceIPv4: 1, destinationIPv4: 2)
            return OverlayVXLAN.encapsulate(raw, innerLength: Self.inner.count, vni: 1, sourcePort: 1, header: header, ipID: 1)
        }
        #expect(result == nil)
        #expect(Array(buffer[0..<Self.inner.count]) == Self.inner)
    }
}

@Suite struct OverlayBadUnderlayTests {
    /// Every malformed or foreign underlay frame is a counted drop with its reason, never forwarded.
    @Test func malformedVXLANIsDroppedWithItsReason() {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        let good = Net.vxlan(Net.producerReply())
        var cases: [(String, [UInt8], OverlayDropReason)] = []
        var flags = good
        flags[42] = 0x0C
        cases.append(("extra flag", flags, .badVXLANFlags))
        var noI = good
        noI[42] = 0x00
        cases.append(("I flag clear", noI, .badVXLANFlags))
        var reserved = good
        reserved[49] = 1
        cases.append(("reserved byte", reserved, .badVXLANFlags))
        cases.append(("unknown VNI", Net.vxlan(Net.producerReply(), vni: 43), .unknownVNI))
        var checksum = good
        checksum[24] ^= 0xFF
        cases.append(("outer checksum", checksum, .badOuterChecksum))
        cases.append(("other host", Net.vxlan(Net.producerReply(), to: 0xC612_0009), .notForThisHost))
        cases.append(("cut short", Array(good[0..<46]), .malformed))
        var otherPort = good
        otherPort[36] = 0x12
        otherPort[37] = 0x00
        cases.append(("not the VXLAN port", otherPort, .notVXLAN))
        var udpSum = Net.vxlan(Net.producerReply(), udpChecksum: true)
        udpSum[udpSum.count - 1] ^= 0x55
        cases.append(("UDP checksum", udpSum, .badUDPChecksum))
        let arp: [UInt8] = [UInt8](repeating: 0xFF, count: 6) + [2, 0, 0, 0, 0, 1, 0x08, 0x06] + [UInt8](repeating: 0, count: 28)
        cases.append(("ARP", arp, .notVXLAN))
        let icmpInner = { () -> [UInt8] in
            var frame = Net.producerReply()
            frame[23] = 1  // ICMP: not carried
            return frame
        }()
        cases.append(("inner ICMP", Net.vxlan(icmpInner), .innerNotTransport))
        cases.append(("no flow", Net.vxlan(Net.producerReply(consumerPort: 1)), .noFlow))
        for (name, frame, reason) in cases {
            let before = redirect.drops[reason]
            let (verdict, _) = run(&redirect, frame, port: redirect.underlayPort)
            #expect(verdict == .drop(reason), "\(name)")
            #expect(redirect.drops[reason] == before + 1, "\(name)")
        }
        #expect(redirect.flows.count == 0)
    }
}

@Suite struct OverlayRedirectTests {
    @Test func firstPacketIsRedirectedRewrittenAndEncapsulated() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        let (verdict, frame) = run(&redirect, Net.consumerTCP(), port: 0)
        #expect(verdict == .forward(port: 1, length: Net.consumerTCP().count + 50))
        let parsed = try parse(frame)
        #expect(parsed.isTunnel)
        #expect(parsed.vxlanVNI == 42)
        #expect(parsed.outer.destinationAddress.ipv4 == Net.producerHost)
        #expect(parsed.outer.sourceAddress.ipv4 == Net.consumerHost)
        #expect(parsed.outer.destinationMAC.rawValue == Net.producerHostMAC)
        #expect(parsed.outer.sourcePort >= 49152)
        #expect(parsed.inner.destinationAddress.ipv4 == Net.producer1)
        #expect(parsed.inner.destinationPort == 8000)
        #expect(parsed.inner.sourceAddress.ipv4 == Net.consumerVM)
        #expect(checksumsValid(frame, l3: 64))
        #expect(frame.withUnsafeBytes { Checksum.isIPv4HeaderValid(PacketBytes($0), at: 14) })
        #expect(redirect.flows.count == 1)
        let service = redirect.serviceCounters[0]
        #expect(service.flows == 1 && service.packets == 1)
        #expect(redirect.leaseCounters(slot: 0).flows == 1)
        #expect(redirect.leaseCounters(slot: 0).packets == 1)
        // The same flow's next packet takes the same UDP source port (one flow, one underlay path).
        let (_, second) = run(&redirect, Net.consumerTCP(), port: 0)
        #expect(Array(second[34..<36]) == Array(frame[34..<36]))
        #expect(redirect.flows.count == 1)
    }

    @Test func udpChecksumsFollowTheRewrite() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        var dnsLease = Net.lease(2, epoch: 1)
        dnsLease.service = "dns"
        dnsLease.producerPort = 5353
        redirect.apply(.granted(dnsLease))
        for zero in [false, true] {
            let query = OverlayTestFrames.udp(sourceMAC: Net.consumerVMMAC, destinationMAC: Net.consumerPortMAC,
                                              source: Net.consumerVM, destination: Net.service,
                                              sourcePort: zero ? 3000 : 3001, destinationPort: 53,
                                              payload: Array("query".utf8), zeroChecksum: zero)
            let (verdict, frame) = run(&redirect, query, port: 0)
            guard case .forward = verdict else { Issue.record("\(verdict)"); continue }
            let parsed = try parse(frame)
            #expect(parsed.inner.destinationPort == 5353)
            #expect(checksumsValid(frame, l3: 64))
            if zero { #expect(frame[50 + 40] == 0 && frame[50 + 41] == 0) }
        }
    }

    @Test func repliesAreReverseRewrittenToTheServiceAddress() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        _ = run(&redirect, Net.consumerTCP(), port: 0)
        let (verdict, frame) = run(&redirect, Net.vxlan(Net.producerReply()), port: redirect.underlayPort)
        #expect(verdict == .forward(port: 0, length: Net.producerReply().count))
        let parsed = try parse(frame)
        #expect(!parsed.isTunnel)
        #expect(parsed.outer.sourceAddress.ipv4 == Net.service)
        #expect(parsed.outer.sourcePort == 80)
        #expect(parsed.outer.destinationAddress.ipv4 == Net.consumerVM)
        #expect(parsed.outer.destinationMAC.rawValue == Net.consumerVMMAC)
        #expect(parsed.outer.sourceMAC.rawValue == Net.consumerPortMAC)
        #expect(checksumsValid(frame))
        // A reply from the right producer address but another underlay host is not ours.
        let spoofed = Net.vxlan(Net.producerReply(), from: 0xC612_0007)
        #expect(run(&redirect, spoofed, port: redirect.underlayPort).0 == .drop(.noFlow))
    }

    @Test func noLeaseIsACountedMissAndOneRequest() {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        #expect(run(&redirect, Net.consumerTCP(), port: 0).0 == .held)
        #expect(run(&redirect, Net.consumerTCP(sourcePort: 40001), port: 0).0 == .held)
        let requests = redirect.takeLeaseRequests()
        #expect(requests.count == 1)
        #expect(requests.first?.consumerVM == "c1" && requests.first?.service == "web")
        #expect(redirect.serviceCounters[0].redirectMisses == 2)
        #expect(redirect.holdCounters.held == 2)
        #expect(redirect.drops[.awaitingLease] == 0)
        #expect(redirect.flows.count == 0)
        // The request failed: re-armed (the held packets drop, counted), the next packet asks again.
        let rearmed = redirect.rearmLeaseRequest(consumerVM: "c1", service: "web")
        let unknown = redirect.rearmLeaseRequest(consumerVM: "nobody", service: "web")
        #expect(rearmed && !unknown)
        #expect(redirect.drops[.leaseAskFailed] == 2)
        let nothingReleased = !redirect.hasReleasedFrames
        #expect(nothingReleased)
        #expect(run(&redirect, Net.consumerTCP(sourcePort: 40002), port: 0).0 == .held)
        #expect(redirect.takeLeaseRequests().count == 1)
        // The grant arrives: the held packet comes back and goes through, then the next one.
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        let releasing = redirect.hasReleasedFrames
        #expect(releasing)
        let released = takeReleased(&redirect)
        #expect(released.count == 1)
        #expect(released.first?.0 == 0 && released.first?.1 == Net.consumerTCP(sourcePort: 40002))
        #expect(run(&redirect, released[0].1, port: 0).0 == .forward(port: 1, length: Net.consumerTCP().count + 50))
        let drained = !redirect.hasReleasedFrames && redirect.holdCounters.released == 1
        #expect(drained)
        #expect(run(&redirect, Net.consumerTCP(), port: 0).0 == .forward(port: 1, length: Net.consumerTCP().count + 50))
        // Not a service address: not the overlay's business.
        var other = Net.consumerTCP()
        other[37] = 81
        #expect(run(&redirect, other, port: 0).0 == .drop(.notOverlay))
    }

    /// A grant that finds every lease slot taken is refused, not ignored: counted, handed out to be given
    /// back, the pair's held packets drop `leaseSlotsFull`, and so do its next ones until it is re-armed.
    @Test func aGrantWithNoFreeLeaseSlotIsRefusedAndItsHeldPacketsDrop() {
        var config = Net.consumerConfig()
        config.leaseSlotCount = 1
        var redirect = OverlayRedirect(config: config)
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        func dns(_ port: UInt16 = 5353) -> [UInt8] {
            OverlayTestFrames.udp(sourceMAC: Net.consumerVMMAC, destinationMAC: Net.consumerPortMAC, source: Net.consumerVM,
                                  destination: Net.service, sourcePort: port, destinationPort: 53, payload: [1, 2, 3])
        }
        func dnsLease(_ id: Int64, epoch: Int64) -> OverlayLease {
            OverlayLease(leaseID: id, epoch: epoch, service: "dns", consumerVM: "c1", producerVM: "p1", producerHost: "h2",
                         producerUnderlayIPv4: Net.producerHost, producerOverlayIPv4: Net.producer1, producerPort: 53, vni: 42)
        }
        #expect(run(&redirect, dns(), port: 0).0 == .held)
        #expect(run(&redirect, dns(5354), port: 0).0 == .held)
        let asked = redirect.takeLeaseRequests().map { $0.service }
        #expect(asked == ["dns"])
        redirect.apply(.granted(dnsLease(2, epoch: 2)))
        #expect(redirect.leaseSlotsFull == 1)
        let refused = redirect.takeRefusedGrants()
        #expect(refused == [dnsLease(2, epoch: 2)])
        #expect(redirect.drops[.leaseSlotsFull] == 2)
        let nothingReleased = !redirect.hasReleasedFrames
        #expect(nothingReleased)
        // Until re-armed: dropped at once, no new request, nothing held.
        #expect(run(&redirect, dns(5355), port: 0).0 == .drop(.leaseSlotsFull))
        #expect(redirect.takeLeaseRequests().isEmpty)
        #expect(redirect.holdCounters.held == 2)
        // The web lease still works.
        #expect(run(&redirect, Net.consumerTCP(), port: 0).0 == .forward(port: 1, length: Net.consumerTCP().count + 50))
        // The web lease ends (slot free), the pair is re-armed: the next packet asks, the grant is applied.
        redirect.apply(.ended(leaseID: 1, epoch: 1, reason: .revoked))
        let rearmed = redirect.rearmLeaseRequest(consumerVM: "c1", service: "dns")
        #expect(rearmed)
        #expect(run(&redirect, dns(5356), port: 0).0 == .held)
        let askedAgain = redirect.takeLeaseRequests().map { $0.service }
        #expect(askedAgain == ["dns"])
        redirect.apply(.granted(dnsLease(3, epoch: 3)))
        let refusedAgain = redirect.takeRefusedGrants()
        #expect(redirect.leaseSlotsFull == 1)
        #expect(refusedAgain.isEmpty)
        let released = takeReleased(&redirect)
        #expect(released.count == 1)
        #expect(run(&redirect, released[0].1, port: 0).0 == .forward(port: 1, length: dns().count + 50))
        // A bad slot count is a config problem.
        config.leaseSlotCount = 0
        #expect(config.problem != nil)
    }

    @Test func heldPacketsAreBoundedReleasedInOrderAndTimeOut() {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        let limit = OverlayDataplaneLimits.heldPerPairMax
        for index in 0..<(limit + 3) {
            let verdict = run(&redirect, Net.consumerTCP(sourcePort: 41000 + UInt16(index)), port: 0, nowNs: 1_000).0
            #expect(verdict == (index < limit ? .held : .drop(.awaitingLease)))
        }
        #expect(redirect.drops[.awaitingLease] == 3 && redirect.holdCounters.held == UInt64(limit))
        // No grant within the timeout: the held packets drop as `heldTimedOut`.
        redirect.sweep(nowNs: 1_000 + redirect.config.heldTimeoutNs)
        #expect(redirect.drops[.heldTimedOut] == 0)
        redirect.sweep(nowNs: 2_000 + redirect.config.heldTimeoutNs)
        #expect(redirect.drops[.heldTimedOut] == UInt64(limit))
        let idle = !redirect.hasReleasedFrames
        #expect(idle)
        // Held again (the request is still out), then granted: handed back in arrival order.
        for index in 0..<4 { _ = run(&redirect, Net.consumerTCP(sourcePort: 42000 + UInt16(index)), port: 0) }
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        let released = takeReleased(&redirect)
        #expect(released.map(\.1) == (0..<4).map { Net.consumerTCP(sourcePort: 42000 + UInt16($0)) })
        for (port, frame) in released { #expect(run(&redirect, frame, port: port).0 == .forward(port: 1, length: frame.count + 50)) }
        #expect(redirect.flows.count == 4)
        #expect(redirect.leaseCounters(slot: 0).packets == 4)
    }

    @Test func anEndedLeaseCutsItsFlowsInOneStepAndResetsThem() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig(policy: .reset))
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        for port: UInt16 in 40000..<40010 { _ = run(&redirect, Net.consumerTCP(sourcePort: port, ack: 900 + UInt32(port - 40000)), port: 0) }
        #expect(redirect.flows.count == 10)
        redirect.apply(.ended(leaseID: 1, epoch: 1, reason: .revoked))
        // Every flow of the lease: forward and reply both dropped, never forwarded.
        for port: UInt16 in 40000..<40010 {
            #expect(run(&redirect, Net.consumerTCP(sourcePort: port), port: 0).0 == .drop(.leaseEnded))
            #expect(run(&redirect, Net.vxlan(Net.producerReply(consumerPort: port)), port: redirect.underlayPort).0
                    == .drop(.leaseEnded))
        }
        #expect(redirect.drops[.leaseEnded] == 20)
        var resets: [OverlayReset] = []
        while let reset = redirect.takeReset() { resets.append(reset) }
        #expect(resets.count == 10)
        let reset = try #require(resets.first { $0.consumerPort == 40003 })
        #expect(reset.sequence == 903)
        #expect(reset.serviceIPv4 == Net.service && reset.servicePort == 80)
        var buffer = [UInt8](repeating: 0, count: 64)
        let length = buffer.withUnsafeMutableBytes { OverlayReset.write(reset, into: $0) }
        let frame = Array(buffer[0..<length])
        #expect(checksumsValid(frame))
        let parsed = try parse(frame)
        #expect(parsed.outer.tcpFlags == 0x04)
        #expect(parsed.outer.destinationMAC.rawValue == Net.consumerVMMAC)
        // A new grant (producer 2): old flows stay cut, new flows reach producer 2.
        redirect.apply(.granted(Net.lease(2, epoch: 2, producer: Net.producer2, name: "p2")))
        #expect(run(&redirect, Net.consumerTCP(sourcePort: 40001), port: 0).0 == .drop(.leaseEnded))
        let (verdict, moved) = run(&redirect, Net.consumerTCP(sourcePort: 41000), port: 0)
        #expect(verdict == .forward(port: 1, length: Net.consumerTCP().count + 50))
        #expect(try parse(moved).inner.destinationAddress.ipv4 == Net.producer2)
        // A new connection reusing a cut flow's ports (a bare SYN) replaces it.
        let (synVerdict, syn) = run(&redirect, Net.consumerTCP(sourcePort: 40001, flags: 0x02, ack: 0), port: 0)
        #expect(synVerdict == .forward(port: 1, length: Net.consumerTCP().count + 50))
        #expect(try parse(syn).inner.destinationAddress.ipv4 == Net.producer2)
    }

    @Test func theMovePolicyRebindsFlowsToTheNextLease() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig(policy: .move))
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        _ = run(&redirect, Net.consumerTCP(), port: 0)
        redirect.apply(.ended(leaseID: 1, epoch: 1, reason: .producerMoved))
        let hasResets = redirect.hasResets
        #expect(!hasResets)
        #expect(run(&redirect, Net.consumerTCP(), port: 0).0 == .drop(.leaseEnded))
        redirect.apply(.granted(Net.lease(2, epoch: 2, producer: Net.producer2, name: "p2")))
        let (verdict, frame) = run(&redirect, Net.consumerTCP(), port: 0)
        guard case .forward = verdict else { Issue.record("\(verdict)"); return }
        #expect(try parse(frame).inner.destinationAddress.ipv4 == Net.producer2)
        // Replies now come from producer 2 only.
        #expect(run(&redirect, Net.vxlan(Net.producerReply()), port: redirect.underlayPort).0 == .drop(.noFlow))
        #expect(run(&redirect, Net.vxlan(Net.producerReply(from: Net.producer2)), port: redirect.underlayPort).0
                == .forward(port: 0, length: Net.producerReply().count))
    }

    @Test func epochsOrderGrantsAndEnds() throws {
        var redirect = OverlayRedirect(config: Net.consumerConfig())
        redirect.apply(.granted(Net.lease(5, epoch: 10)))
        // An older grant for the same pair is ignored; so is an end of an unknown or newer-epoch lease.
        redirect.apply(.granted(Net.lease(4, epoch: 9, producer: Net.producer2, name: "p2")))
        redirect.apply(.ended(leaseID: 99, epoch: 1, reason: .expired))
        redirect.apply(.ended(leaseID: 5, epoch: 9, reason: .expired))
        #expect(redirect.eventsIgnored == 3)
        let (_, frame) = run(&redirect, Net.consumerTCP(), port: 0)
        #expect(try parse(frame).inner.destinationAddress.ipv4 == Net.producer1)
        // A newer grant replaces the lease: the old one's flows end with it.
        redirect.apply(.granted(Net.lease(6, epoch: 11, producer: Net.producer2, name: "p2")))
        #expect(run(&redirect, Net.consumerTCP(), port: 0).0 == .drop(.leaseEnded))
        #expect(redirect.leases.compactMap { $0 }.map(\.leaseID) == [6])
        // Grants for VMs or services this host does not have are not ours.
        var foreign = Net.lease(7, epoch: 12)
        foreign.consumerVM = "c9"
        redirect.apply(.granted(foreign))
        #expect(redirect.eventsIgnored == 4)
    }

    @Test func theFlowTableIsBounded() {
        var redirect = OverlayRedirect(config: Net.consumerConfig(flowCapacity: 4))
        redirect.apply(.granted(Net.lease(1, epoch: 1)))
        for port: UInt16 in 40000..<40004 {
            #expect(run(&redirect, Net.consumerTCP(sourcePort: port), port: 0).0 != .drop(.flowTableFull))
        }
        #expect(run(&redirect, Net.consumerTCP(sourcePort: 40004), port: 0).0 == .drop(.flowTableFull))
        #expect(redirect.flows.count == 4)
        // Idle flows go (sweep), and room comes back.
        redirect.sweep(nowNs: 1_000 + 121_000_000_000, budget: 4)
        #expect(redirect.flows.count == 0)
        #expect(run(&redirect, Net.consumerTCP(sourcePort: 40004), port: 0).0 != .drop(.flowTableFull))
    }

    @Test func flowTableMatchesADictionaryModel() {
        var table = OverlayFlowTable(capacity: 256)
        var model: [OverlayFlowKey: Int32] = [:]
        var generator = SystemRandomNumberGenerator()
        func key(_ value: UInt32, _ kind: OverlayFlowKey.Kind) -> OverlayFlowKey {
            OverlayFlowKey(kind: kind, source: value % 64, destination: 7, sourcePort: UInt16(value % 13),
                           destinationPort: 80, ipProtocol: 6)
        }
        for _ in 0..<20_000 {
            let value = UInt32.random(in: 0..<800, using: &generator)
            let forward = key(value, .consumerForward)
            if let index = model[forward] {
                #expect(table.find(forward) == index)
                #expect(table.find(key(value, .consumerReply)) == index)
                table.remove(index)
                model[forward] = nil
            } else {
                let inserted = table.insert(OverlayFlow(forwardKey: forward, replyKey: key(value, .consumerReply),
                                                        kind: .consumerForward))
                if model.count == 256 { #expect(inserted == nil) } else if let inserted { model[forward] = inserted } else {
                    Issue.record("insert refused below capacity")
                }
            }
            #expect(table.count == model.count)
        }
        for (forward, index) in model { #expect(table.find(forward) == index) }
    }
}

@Suite struct OverlayProducerTests {
    @Test func producerHostDeliversAndSendsRepliesBack() throws {
        var producer = OverlayRedirect(config: Net.producerConfig())
        let request = Net.consumerTCP()
        // What the consumer host sends: destination rewritten to producer 1.
        var consumer = OverlayRedirect(config: Net.consumerConfig())
        consumer.apply(.granted(Net.lease(1, epoch: 1)))
        let (_, encapsulated) = run(&consumer, request, port: 0)
        let (verdict, delivered) = run(&producer, encapsulated, port: producer.underlayPort)
        #expect(verdict == .forward(port: 0, length: request.count))
        let parsed = try parse(delivered)
        #expect(parsed.outer.destinationMAC.rawValue == Net.producer1MAC)
        #expect(parsed.outer.sourceMAC.rawValue == Net.producerPortMAC)
        #expect(parsed.outer.destinationAddress.ipv4 == Net.producer1)
        #expect(checksumsValid(delivered))
        // The reply goes back to the consumer host it came from, learned from the outer source.
        let (replyVerdict, reply) = run(&producer, Net.producerReply(), port: 0)
        #expect(replyVerdict == .forward(port: producer.underlayPort, length: Net.producerReply().count + 50))
        let outer = try parse(reply)
        #expect(outer.outer.destinationAddress.ipv4 == Net.consumerHost)
        #expect(outer.outer.destinationMAC.rawValue == Net.consumerHostMAC)
        #expect(outer.vxlanVNI == 42)
        // And the consumer host takes it.
        #expect(run(&consumer, reply, port: consumer.underlayPort).0 == .forward(port: 0, length: Net.producerReply().count))
        // A packet for a producer VM this host does not have, and a VM packet of no flow.
        let stray = Net.vxlan(OverlayTestFrames.tcp(sourceMAC: 1, destinationMAC: 2, source: Net.consumerVM,
                                                    destination: Net.producer2, sourcePort: 1, destinationPort: 8000,
                                                    flags: 0x02, sequence: 1, acknowledgment: 0, payload: []),
                              from: Net.consumerHost, to: Net.producerHost)
        #expect(run(&producer, stray, port: producer.underlayPort).0 == .drop(.unknownProducerVM))
        #expect(run(&producer, Net.producerReply(consumerPort: 9), port: 0).0 == .drop(.noFlow))
        var spoof = Net.producerReply()
        spoof[29] = 99  // a source address that is not the VM's
        #expect(run(&producer, spoof, port: 0).0 == .drop(.unknownVM))
    }
}

/// `OverlayFastParse` gives exactly `PacketParser`'s result on the frames it takes, and declines the rest.
@Suite struct OverlayFastParseTests {
    static func parse(_ frame: [UInt8]) -> (fast: ParsedPacket?, full: ParsedPacket?) {
        frame.withUnsafeBytes { bytes in
            var fast = ParsedPacket()
            let took = OverlayFastParse.parse(bytes.baseAddress!, length: bytes.count, vxlanPort: 4789, into: &fast)
            var full = ParsedPacket()
            let reason = PacketParser().parse(PacketBytes(bytes), linkType: .ethernet, into: &full)
            return (took ? fast : nil, reason == nil ? full : nil)
        }
    }

    @Test func sameResultAsThePacketParserOrDeclined() {
        var taken: [[UInt8]] = [
            Net.consumerTCP(), Net.consumerTCP(flags: 0x02, payload: []), Net.consumerTCP(payload: Array(repeating: 7, count: 1400)),
            OverlayTestFrames.udp(sourceMAC: 1, destinationMAC: 2, source: 3, destination: 4, sourcePort: 5, destinationPort: 53,
                                  payload: [1, 2, 3]),
            OverlayTestFrames.udp(sourceMAC: 1, destinationMAC: 2, source: 3, destination: 4, sourcePort: 5, destinationPort: 53,
                                  payload: [], zeroChecksum: true),
        ]
        var padded = Net.consumerTCP(payload: [])
        padded += [0, 0, 0, 0, 0, 0]  // Ethernet padding past the IPv4 total length
        taken.append(padded)
        var noDF = Net.consumerTCP()
        noDF[20] = 0
        taken.append(noDF)
        for frame in taken {
            let (fast, full) = Self.parse(frame)
            #expect(fast != nil && fast == full, "\(frame.count) bytes")
        }
        // Declined: each goes to the full parser (whatever it decides).
        var declined: [[UInt8]] = []
        var options = Net.consumerTCP()
        options[14] = 0x46
        declined.append(options)
        var fragment = Net.consumerTCP()
        fragment[20] = 0x20  // more fragments
        declined.append(fragment)
        var shortIP = Net.consumerTCP()
        shortIP[17] &+= 40  // total length past the frame
        declined.append(shortIP)
        var longTCPHeader = Net.consumerTCP(payload: [])
        longTCPHeader[46] = 0x60  // data offset 6 words: the TCP header would end past the IPv4 payload
        declined.append(longTCPHeader)
        declined.append(OverlayTestFrames.udp(sourceMAC: 1, destinationMAC: 2, source: 3, destination: 4, sourcePort: 5,
                                              destinationPort: 4789, payload: Array(repeating: 0, count: 30)))
        var vlan = Net.consumerTCP()
        vlan.insert(contentsOf: [0x81, 0x00, 0x00, 0x05], at: 12)
        declined.append(vlan)
        var icmp = Net.consumerTCP()
        icmp[23] = 1
        declined.append(icmp)
        declined.append(Array(Net.consumerTCP().prefix(40)))
        for (index, frame) in declined.enumerated() {
            #expect(Self.parse(frame).fast == nil, "declined #\(index)")
        }
        // The redirect gives the same verdicts and bytes with and without it.
        for fastParse in [true, false] {
            var redirect = OverlayRedirect(config: Net.consumerConfig())
            redirect.usesFastParse = fastParse
            redirect.apply(.granted(Net.lease(1, epoch: 1)))
            let (verdict, bytes) = run(&redirect, Net.consumerTCP(), port: 0)
            #expect(verdict == .forward(port: 1, length: Net.consumerTCP().count + 50))
            var reference = OverlayRedirect(config: Net.consumerConfig())
            reference.usesFastParse = false
            reference.apply(.granted(Net.lease(1, epoch: 1)))
            #expect(run(&reference, Net.consumerTCP(), port: 0).1 == bytes)
        }
    }
}
