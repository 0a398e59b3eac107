// Path: Sources/SluiceOverlay/OverlayDataplaneBench.swift — the redirect path's packet rate on prebuilt
// frames (lookup, rewrite, encapsulate) against the same loop forwarding without redirect (parse and
// a MAC rewrite), single thread, no I/O. `sluice overlay bench` runs it (release build).
import SluiceCore
import SluicePacket

/// One bench result: packets per second of each loop, medians over the rounds.
public struct OverlayBenchResult: Sendable {
    public var frames: Int
    public var flows: Int
    public var rounds: Int
    public var flowCapacity: Int
    public var redirectPPS: [Double]
    public var forwardPPS: [Double]
    public var redirectMedian: Double { Self.median(redirectPPS) }
    public var forwardMedian: Double { Self.median(forwardPPS) }
    public var ratio: Double { redirectMedian / forwardMedian }
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }
}

public enum OverlayBench {
    /// Frames of the consumer VM `198.19.1.2` to the service `198.19.100.1:80`, `flows` source ports,
    /// `payloadBytes` of TCP payload; each a 54 + payload byte Ethernet/IPv4/TCP frame.
    public static func consumerFrames(flows: Int, payloadBytes: Int) -> [[UInt8]] {
        (0..<flows).map { flow in
            OverlayTestFrames.tcp(sourceMAC: 0x0253_4C01_0002, destinationMAC: 0x0253_4C01_0001,
                                  source: 0xC613_0102, destination: 0xC613_6401,
                                  sourcePort: UInt16(20000 + flow), destinationPort: 80, flags: 0x10,
                                  sequence: 1, acknowledgment: 1, payload: [UInt8](repeating: 0x61, count: payloadBytes))
        }
    }

    /// A consumer host with one consumer VM, one service and one lease.
    public static func consumerConfig(flowCapacity: Int = 1 << 16) -> OverlayDataplaneConfig {
        OverlayDataplaneConfig(
            underlayIPv4: 0xC612_0001, underlayMAC: MACAddress(0x0253_4C00_0001),
            neighborMACs: [0xC612_0002: MACAddress(0x0253_4C00_0002)], vnis: [42],
            vmPorts: [OverlayVMPort(name: "c1", role: .consumer, vmMAC: MACAddress(0x0253_4C01_0002),
                                    hostMAC: MACAddress(0x0253_4C01_0001))],
            services: [OverlayService(name: "web", ipv4: 0xC613_6401, port: 80)], flowCapacity: flowCapacity)
    }

    public static let lease = OverlayLease(leaseID: 1, epoch: 1, service: "web", consumerVM: "c1", producerVM: "p1",
                                           producerHost: "h2", producerUnderlayIPv4: 0xC612_0002,
                                           producerOverlayIPv4: 0xC613_0202, producerPort: 8000, vni: 42)

    /// Frames between a flow index prefetch and the frame's `process` (0: no prefetch, the default: it
    /// measured no gain, docs/BENCHMARKS.md).
    public static let prefetchDistanceDefault = 0

    /// Runs `rounds` rounds of `framesPerRound` frames through each loop (alternating, redirect first).
    /// The forward loop always uses `PacketParser` (the first step's baseline); `usesFastParse` sets the
    /// redirect's `OverlayRedirect.usesFastParse`.
    /// `flowCapacity` 0: the smallest power of two >= 4 x `flows` (the table sized for its load).
    public static func run(flows: Int = 1024, payloadBytes: Int = 64, framesPerRound: Int = 2_000_000,
                           rounds: Int = 5, flowCapacity: Int = 0,
                           prefetchDistance: Int = prefetchDistanceDefault,
                           usesFastParse: Bool = true) -> OverlayBenchResult {
        precondition(flows > 0 && flows <= 1 << 16, "flows in 1...65536")
        precondition(rounds > 0, "no rounds")
        let frames = consumerFrames(flows: flows, payloadBytes: payloadBytes)
        let length = frames[0].count
        let templates = UnsafeMutableRawBufferPointer.allocate(byteCount: flows * length, alignment: 64)
        defer { templates.deallocate() }
        for (index, frame) in frames.enumerated() {
            UnsafeMutableRawBufferPointer(rebasing: templates[index * length..<(index + 1) * length]).copyBytes(from: frame)
        }
        let work = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 64)
        defer { work.deallocate() }
        var capacity = flowCapacity
        if capacity == 0 {
            capacity = 1
            while capacity < 4 * flows { capacity <<= 1 }
        }
        var redirect = OverlayRedirect(config: consumerConfig(flowCapacity: capacity))
        redirect.apply(.granted(lease))
        redirect.usesFastParse = usesFastParse
        let parser = PacketParser()
        var parsed = ParsedPacket()
        var result = OverlayBenchResult(frames: framesPerRound, flows: flows, rounds: rounds, flowCapacity: capacity,
                                        redirectPPS: [], forwardPPS: [])
        var sink = 0
        for _ in 0..<rounds {
            var start = Clock.monotonicNs()
            for position in 0..<framesPerRound {
                // As the host's receive loop does: hint the flow index slot `prefetchDistance` frames ahead.
                if prefetchDistance > 0 {
                    redirect.prefetch(templates.baseAddress! + ((position &+ prefetchDistance) % flows) * length,
                                      length: length, port: 0)
                }
                work.baseAddress!.copyMemory(from: templates.baseAddress! + (position % flows) * length, byteCount: length)
                switch redirect.process(work, length: length, port: 0, nowNs: start) {
                case .forward(_, let newLength): sink &+= newLength
                case .drop, .held: sink &+= 1
                }
            }
            var elapsed = Clock.monotonicNs() &- start
            result.redirectPPS.append(Double(framesPerRound) / (Double(elapsed) / 1e9))
            start = Clock.monotonicNs()
            for position in 0..<framesPerRound {
                work.baseAddress!.copyMemory(from: templates.baseAddress! + (position % flows) * length, byteCount: length)
                let bytes = PacketBytes(UnsafeRawBufferPointer(rebasing: work[0..<length]))
                if parser.parse(bytes, linkType: .ethernet, into: &parsed) == nil {
                    var layout = PacketLayout(parsed)
                    _ = PacketRewriter.apply(.setDestinationMAC(MACAddress(0x0253_4C00_0002)), to: work, layout: &layout)
                    _ = PacketRewriter.apply(.setSourceMAC(MACAddress(0x0253_4C00_0001)), to: work, layout: &layout)
                    sink &+= layout.length
                } else {
                    sink &+= 1
                }
            }
            elapsed = Clock.monotonicNs() &- start
            result.forwardPPS.append(Double(framesPerRound) / (Double(elapsed) / 1e9))
        }
        precondition(sink != 0, "the loops did nothing")
        precondition(redirect.drops.nonZero.isEmpty, "redirect dropped bench frames: \(redirect.drops.nonZero)")
        return result
    }
}

/// Frame builders for tests and the bench (not the packet path: these allocate).
public enum OverlayTestFrames {
    /// An Ethernet/IPv4/TCP frame with correct checksums.
    public static func tcp(sourceMAC: UInt64, destinationMAC: UInt64, source: UInt32, destination: UInt32,
                           sourcePort: UInt16, destinationPort: UInt16, flags: UInt8, sequence: UInt32,
                           acknowledgment: UInt32, payload: [UInt8]) -> [UInt8] {
        var frame = ethernetIPv4(sourceMAC: sourceMAC, destinationMAC: destinationMAC, source: source,
                                 destination: destination, ipProtocol: IPProtocol.tcp, l4Length: 20 + payload.count)
        frame += be16(sourcePort) + be16(destinationPort) + be32(sequence) + be32(acknowledgment)
        frame += [0x50, flags] + be16(65535) + [0, 0, 0, 0] + payload
        let checksum = l4Checksum(frame, source: source, destination: destination, ipProtocol: IPProtocol.tcp)
        frame[50] = UInt8(checksum >> 8)
        frame[51] = UInt8(checksum & 0xFF)
        return frame
    }

    /// An Ethernet/IPv4/UDP frame with correct checksums (or a zero UDP checksum).
    public static func udp(sourceMAC: UInt64, destinationMAC: UInt64, source: UInt32, destination: UInt32,
                           sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8], zeroChecksum: Bool = false) -> [UInt8] {
        var frame = ethernetIPv4(sourceMAC: sourceMAC, destinationMAC: destinationMAC, source: source,
                                 destination: destination, ipProtocol: IPProtocol.udp, l4Length: 8 + payload.count)
        frame += be16(sourcePort) + be16(destinationPort) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
        if !zeroChecksum {
            var checksum = l4Checksum(frame, source: source, destination: destination, ipProtocol: IPProtocol.udp)
            if checksum == 0 { checksum = 0xFFFF }
            frame[40] = UInt8(checksum >> 8)
            frame[41] = UInt8(checksum & 0xFF)
        }
        return frame
    }

    static func ethernetIPv4(sourceMAC: UInt64, destinationMAC: UInt64, source: UInt32, destination: UInt32,
                             ipProtocol: UInt8, l4Length: Int) -> [UInt8] {
        var frame = be48(destinationMAC) + be48(sourceMAC) + be16(EtherType.ipv4)
        frame += [0x45, 0] + be16(UInt16(20 + l4Length)) + be16(0x1234) + be16(0x4000) + [64, ipProtocol, 0, 0]
        frame += be32(source) + be32(destination)
        let checksum = frame.withUnsafeBytes { Checksum.ipv4Header(PacketBytes($0), at: 14, headerSize: 20) }
        frame[24] = UInt8(checksum >> 8)
        frame[25] = UInt8(checksum & 0xFF)
        return frame
    }

    /// The TCP/UDP checksum of the L4 part of an Ethernet/IPv4 frame (field counted as stored: zero it first).
    public static func l4Checksum(_ frame: [UInt8], source: UInt32, destination: UInt32, ipProtocol: UInt8) -> UInt16 {
        let l4 = Array(frame[34...])
        var sum: UInt32 = source >> 16 + source & 0xFFFF + destination >> 16 + destination & 0xFFFF
        sum += UInt32(ipProtocol) + UInt32(l4.count)
        var index = 0
        while index < l4.count {
            sum += UInt32(l4[index]) << 8 + (index + 1 < l4.count ? UInt32(l4[index + 1]) : 0)
            index += 2
        }
        while sum >> 16 != 0 { sum = sum & 0xFFFF + sum >> 16 }
        return ~UInt16(sum)
    }

    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
    static func be32(_ value: UInt32) -> [UInt8] { be16(UInt16(value >> 16)) + be16(UInt16(value & 0xFFFF)) }
    static func be48(_ value: UInt64) -> [UInt8] { be16(UInt16(value >> 32 & 0xFFFF)) + be32(UInt32(value & 0xFFFF_FFFF)) }
}
