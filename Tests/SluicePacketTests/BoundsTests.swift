// Path: Tests/SluicePacketTests/BoundsTests.swift — bugs trap (in release too); packets never do.
import SluiceCore
import Testing

@testable import SluicePacket

@Suite struct BoundsTests {
    @Test func readingPastTheBytesTraps() async {
        await #expect(processExitsWith: .failure) {
            let bytes: [UInt8] = [1, 2, 3]
            _ = bytes.withUnsafeBytes { PacketBytes($0).u32(0) }
        }
    }

    @Test func boundsCheckRejectsEveryOutOfRangeSpan() {
        let bytes = [UInt8](repeating: 0, count: 10)
        bytes.withUnsafeBytes { raw in
            let view = PacketBytes(raw)
            #expect(view.contains(0, size: 10, limit: 10))
            #expect(view.contains(10, size: 0, limit: 10))
            #expect(!view.contains(1, size: 10, limit: 10))
            #expect(!view.contains(-1, size: 2, limit: 10))
            #expect(!view.contains(0, size: -1, limit: 10))
            #expect(!view.contains(0, size: 4, limit: 11), "a limit past the bytes")
            #expect(!view.contains(Int.max, size: 2, limit: 10), "no overflow")
            #expect(view.u16(8) == 0)
        }
    }

    @Test func metadataLengthPastItsBufferTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(bufferCount: 2, bufferSizeBytes: 64)
            let index = pool.allocate()!.releaseIndex()
            pool.metadata(at: index).pointee.length = 65
            var stage = ParseClassifyStage(
                pool: pool, classifier: Classifier(try! ClassifierConfiguration(key: .inputPort)),
                drops: DropCounterTable())
            var items: [UInt64] = [UInt64(index)]
            _ = items.withUnsafeMutableBufferPointer { stage.process($0) }
        }
    }

    @Test func headerOffsetsFitSixteenBits() throws {
        // The deepest legal header start: IPv6 with eight 2 KiB extension headers, in a VXLAN tunnel
        // whose outer IPv6 packet has the same. Offsets stay below the absent marker.
        func longChain(_ upper: UInt8, _ payload: [UInt8]) -> [UInt8] {
            var chain = payload
            for index in 0..<PacketLimits.ipv6ExtensionHeaderCountMax {
                chain = Build.ipv6Options(next: index == 0 ? upper : 60, lengthUnits: 255, payload: chain)
            }
            return chain
        }
        let inner = Build.ethernet(tags: [(0x88A8, 1), (0x8100, 2)], etherType: 0x86DD,
                                   payload: Build.ipv6(next: 60, payload: longChain(6, Build.tcp())))
        let udp = Build.udp(destination: 4789, payload: Build.vxlan(vni: 1, inner: inner))
        let frame = Build.ethernet(etherType: 0x86DD, payload: Build.ipv6(next: 60, payload: longChain(17, udp)))
        let packet = try #require(parsed(frame))
        let chainSize = PacketLimits.ipv6ExtensionHeaderCountMax * 2048
        #expect(packet.isTunnel)
        #expect(Int(packet.outer.l4Offset) == 14 + 40 + chainSize)
        #expect(Int(packet.inner.payloadOffset) == 14 + 40 + chainSize + 16 + 22 + 40 + chainSize + 20)
        #expect(packet.inner.payloadOffset < PacketHeaders.absentOffset)
    }
}

@Suite struct RewriteBoundsTests {
    @Test func invalidRewriteValueTraps() async {
        await #expect(processExitsWith: .failure) {
            var storage = Sample.ipv4TCP() + [0, 0, 0, 0]
            var layout = PacketLayout(parsed(Sample.ipv4TCP())!)
            _ = storage.withUnsafeMutableBytes { PacketRewriter.apply(.setDSCP(64), to: $0, layout: &layout) }
        }
    }

    @Test func validityMatchesTheRuleTableChecks() {
        #expect(Rewrite.setVLAN(id: 4095).isValid)
        #expect(!Rewrite.setVLAN(id: 4096).isValid)
        #expect(Rewrite.pushVLAN(id: 1, priority: 7, tpid: 0x9100).isValid)
        #expect(!Rewrite.pushVLAN(id: 1, priority: 8, tpid: 0x8100).isValid)
        #expect(!Rewrite.pushVLAN(id: 1, priority: 0, tpid: 0x0800).isValid)
        #expect(!Rewrite.setDSCP(64).isValid)
        #expect(Rewrite.decrementTTL.isValid)
    }
}
