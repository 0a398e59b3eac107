// Path: Sources/SluiceParserFuzz/FuzzHarness.swift — one fuzz input through parser, classifier and
// rewriter, with the invariants that must hold for every input.
import SluicePacket

/// Input format: byte 0 picks the link type, byte 1 the options (bit 0: capture cut; bit 1: VXLAN on
/// port 8472; bits 2-7: which rewrites to try), the rest is the packet. A broken invariant traps, which
/// libFuzzer (or the bounded loop) reports as a crash.
enum FuzzHarness {
    static let linkTypes: [LinkType] = [.ethernet, .linuxSLL, .linuxSLL2, .raw, .rawLegacy, .ipv4, .ipv6]
    static let rewrites: [Rewrite] = [
        .setDestinationMAC(MACAddress(0x02_00_00_00_00_FF)), .setSourceMAC(MACAddress(0x02_00_00_00_00_EE)),
        .setVLAN(id: 42), .pushVLAN(id: 7, priority: 3, tpid: 0x88A8), .stripVLAN, .setDSCP(46), .decrementTTL,
        .pushVLAN(id: 4095, priority: 7, tpid: 0x8100),
    ]
    static let classifier = Classifier(try! ClassifierConfiguration(
        key: .sourcePrefix, entries: [
            SourceEntry(.prefix(IPPrefix("10.0.0.0/8")!), sourceID: 1),
            SourceEntry(.prefix(IPPrefix("2001:db8::/32")!), sourceID: 2),
        ], defaultSourceID: 9, flowHash: FlowHash(isSymmetric: true)))

    /// What one input did, for the loop's summary.
    enum Outcome {
        /// Fewer than the two selector bytes.
        case tooShort
        case parsed
        case dropped(DropReason)
    }

    /// Runs one input. `scratch` must hold at least `input.count + 8` bytes (room for two VLAN pushes).
    static func run(_ input: UnsafeRawBufferPointer, scratch: UnsafeMutableRawBufferPointer) -> Outcome {
        guard input.count >= 2 else { return .tooShort }
        let selector = input[0]
        let options = input[1]
        let link = selector % 8 == 7 ? LinkType(rawValue: UInt16(selector)) : linkTypes[Int(selector % 8)]
        let parser = PacketParser(vxlanPort: options & 2 != 0 ? 8472 : 4789)
        let isCut = options & 1 != 0
        let packetBytes = UnsafeRawBufferPointer(rebasing: input[2...])
        var packet = ParsedPacket()
        if let reason = parser.parse(PacketBytes(packetBytes), linkType: link, into: &packet, isCaptureTruncated: isCut) {
            return .dropped(reason)
        }
        checkParsed(packet, count: packetBytes.count)
        let classification = classifier.classify(packet, inputPort: UInt16(selector))
        check(classification.sourceID == 1 || classification.sourceID == 2 || classification.sourceID == 9,
              "source id outside the table")
        checkRewrites(packet, packetBytes, parser: parser, isCut: isCut, program: options >> 2, scratch: scratch)
        return .parsed
    }

    static func check(_ condition: Bool, _ message: StaticString) {
        if !condition { fatalError("fuzz invariant broken: \(message)") }
    }

    /// Offsets inside the packet and in layer order; flags consistent with the fields.
    static func checkParsed(_ packet: ParsedPacket, count: Int) {
        check(Int(packet.length) == count, "length is not the byte count")
        checkHeaders(packet.outer, count: count)
        if packet.isTunnel {
            checkHeaders(packet.inner, count: count)
            check(packet.inner.l2Offset > packet.outer.l4Offset, "inner frame before the outer UDP header")
            check(packet.vxlanVNI >> 24 == 0, "VNI wider than 24 bits")
        } else {
            check(packet.inner == PacketHeaders(), "inner headers without a tunnel")
        }
    }

    static func checkHeaders(_ headers: PacketHeaders, count: Int) {
        let absent = PacketHeaders.absentOffset
        var previous = -1
        for offset in [headers.l2Offset, headers.l3Offset, headers.l4Offset, headers.payloadOffset] where offset != absent {
            check(Int(offset) <= count, "offset past the end")
            check(Int(offset) > previous, "offsets out of order")
            previous = Int(offset)
        }
        check(headers.isIP == (headers.l3Offset != absent), "IP version without an L3 offset")
        check(headers.ipVersion == 0 || headers.ipVersion == 4 || headers.ipVersion == 6, "bad IP version")
        check(!headers.flags.contains(.ports) || headers.hasL4, "ports without an L4 header")
        check(headers.fragmentOffset == 0 || !headers.hasL4, "L4 header in a later fragment")
        check(Int(headers.vlanCount) <= PacketLimits.vlanTagCountMax, "too many VLAN tags")
        check(headers.outerVLAN <= 0x0FFF, "VLAN id wider than 12 bits")
        if headers.ipVersion == 4 {
            check(headers.sourceAddress.ipv4 != nil, "IPv4 address not mapped")
            check(Int(headers.l3Offset) + 20 <= count, "IPv4 header past the end")
        }
        if headers.ipVersion == 6 { check(Int(headers.l3Offset) + 40 <= count, "IPv6 header past the end") }
        if headers.flags.contains(.tcp) { check(Int(headers.l4Offset) + 20 <= count, "TCP header past the end") }
    }

    /// Two rewrites on a copy: a successful rewrite keeps the packet parseable with the same upper
    /// layer, keeps a valid IPv4 checksum valid, and stays inside the buffer.
    static func checkRewrites(
        _ packet: ParsedPacket, _ bytes: UnsafeRawBufferPointer, parser: PacketParser, isCut: Bool, program: UInt8,
        scratch: UnsafeMutableRawBufferPointer
    ) {
        precondition(scratch.count >= bytes.count + 8, "scratch smaller than the input plus two tags")
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<bytes.count + 8])
        buffer.copyMemory(from: bytes)
        var layout = PacketLayout(packet)
        let l3 = Int(packet.outer.l3Offset)
        let checksumWasValid = packet.outer.ipVersion == 4 && Checksum.isIPv4HeaderValid(PacketBytes(bytes), at: l3)
        for step in 0..<2 {
            let rewrite = rewrites[Int(program >> (3 * step)) & 7]
            guard PacketRewriter.apply(rewrite, to: buffer, layout: &layout) == nil else { return }
            check(layout.length <= buffer.count, "rewrite grew the packet past its buffer")
        }
        var again = ParsedPacket()
        let view = PacketBytes(UnsafeRawBufferPointer(rebasing: buffer[0..<layout.length]))
        check(parser.parse(view, linkType: packet.linkType, into: &again, isCaptureTruncated: isCut) == nil,
              "a rewritten packet no longer parses")
        check(again.outer.ipProtocol == packet.outer.ipProtocol, "rewrite changed the protocol")
        check(again.outer.sourcePort == packet.outer.sourcePort, "rewrite changed the ports")
        check(again.outer.l3Offset == layout.l3Offset, "layout L3 offset disagrees with a fresh parse")
        check(again.outer.l4Offset == layout.l4Offset, "layout L4 offset disagrees with a fresh parse")
        if checksumWasValid {
            check(Checksum.isIPv4HeaderValid(view, at: Int(layout.l3Offset)), "incremental checksum broke the header")
        }
    }
}
