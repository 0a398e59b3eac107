// Path: Tests/SluicePacketIOTests/AFPacketRingTests.swift — the C ring walkers on memory laid out the
// way the kernel lays out its rings, with the test playing the kernel. No root, no socket.
import CShims
import Glibc
import Testing

/// A fake TPACKET_V3 RX ring: `blockCount` blocks, each filled by `retire` the way the kernel fills
/// one (block header, then frames chained by next_offset), then handed over with TP_STATUS_USER.
private final class FakeRXRing {
    let blockSize = 4096
    let blockCount: Int
    let memory: UnsafeMutableRawPointer
    var cursor = sluice_afpacket_rx_cursor()

    init(blockCount: Int) {
        self.blockCount = blockCount
        memory = UnsafeMutableRawPointer.allocate(byteCount: blockSize * blockCount, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize * blockCount)
        cursor.ring = memory.assumingMemoryBound(to: UInt8.self)
        cursor.block_size = UInt32(blockSize)
        cursor.block_count = UInt32(blockCount)
    }

    deinit { memory.deallocate() }

    func header(_ block: Int) -> UnsafeMutablePointer<sluice_afpacket_block_header> {
        (memory + block * blockSize).assumingMemoryBound(to: sluice_afpacket_block_header.self)
    }

    /// Writes frames whose first byte is each value in `frames` (lengths 60 + i) into `block`.
    func retire(_ block: Int, frames: [UInt8]) {
        let base = memory + block * blockSize
        let first = 48
        var offset = first
        for (position, value) in frames.enumerated() {
            let frame = (base + offset).assumingMemoryBound(to: sluice_afpacket_v3_frame_header.self)
            let length = 60 + position
            let macOffset = 82
            frame.pointee = sluice_afpacket_v3_frame_header()
            frame.pointee.seconds = 1_700_000_000
            frame.pointee.nanoseconds = UInt32(position)
            frame.pointee.snap_length = UInt32(length)
            frame.pointee.wire_length = UInt32(length + 100)
            frame.pointee.mac_offset = UInt16(macOffset)
            (base + offset + macOffset).storeBytes(of: value, as: UInt8.self)
            let size = (macOffset + length + 15) & ~15
            frame.pointee.next_offset = position == frames.count - 1 ? 0 : UInt32(size)
            offset += size
        }
        header(block).pointee.packet_count = UInt32(frames.count)
        header(block).pointee.first_frame_offset = UInt32(first)
        header(block).pointee.block_status = SLUICE_AFPACKET_STATUS_USER
    }

    /// Takes frames until the walker says none are ready; returns each frame's first byte.
    func drain() -> [UInt8] {
        var values: [UInt8] = []
        var frame = sluice_afpacket_frame()
        for _ in 0..<1000 {
            guard sluice_afpacket_rx_next(&cursor, &frame) == 1 else { break }
            values.append(frame.data[0])
        }
        sluice_afpacket_rx_finish(&cursor)
        return values
    }
}

/// A fake TPACKET_V2 TX ring, the test acting as the kernel by rewriting slot statuses.
private final class FakeTXRing {
    let frameSize = 256
    let frameCount = 8
    let memory: UnsafeMutableRawPointer
    let tags: UnsafeMutablePointer<UInt32>
    var ring = sluice_afpacket_tx_ring()

    init() {
        memory = UnsafeMutableRawPointer.allocate(byteCount: frameSize * frameCount, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: frameSize * frameCount)
        tags = .allocate(capacity: frameCount)
        tags.initialize(repeating: 0, count: frameCount)
        ring.ring = memory.assumingMemoryBound(to: UInt8.self)
        ring.tags = tags
        ring.frame_size = UInt32(frameSize)
        ring.frame_count = UInt32(frameCount)
        ring.mask = UInt32(frameCount - 1)
        ring.data_size_max = UInt32(frameSize) - SLUICE_AFPACKET_TX_DATA_OFFSET
    }

    deinit {
        memory.deallocate()
        tags.deallocate()
    }

    func header(_ slot: Int) -> UnsafeMutablePointer<sluice_afpacket_v2_frame_header> {
        (memory + slot * frameSize).assumingMemoryBound(to: sluice_afpacket_v2_frame_header.self)
    }

    func fill(length: Int, tag: UInt32, byte: UInt8 = 0xAB) -> Int32 {
        var frame = [UInt8](repeating: byte, count: max(length, 1))
        return sluice_afpacket_tx_fill(&ring, &frame, UInt32(length), tag)
    }
}

/// What the completion hook saw, in order.
private struct CompletionLog {
    var slots: [UInt32] = []
    var tags: [UInt32] = []
    var lengths: [UInt32] = []
    var statuses: [UInt32] = []
}

private let recordCompletion: sluice_afpacket_tx_completion_fn = { context, slot, tag, length, status in
    let log = context!.assumingMemoryBound(to: CompletionLog.self)
    log.pointee.slots.append(slot)
    log.pointee.tags.append(tag)
    log.pointee.lengths.append(length)
    log.pointee.statuses.append(status)
}

@Suite struct AFPacketRingTests {
    @Test func rxWalkerTakesFramesOfRetiredBlocksInOrderAndReturnsThem() {
        let ring = FakeRXRing(blockCount: 4)
        #expect(ring.drain().isEmpty, "nothing retired yet")
        ring.retire(0, frames: [1, 2, 3])
        ring.retire(1, frames: [4, 5])
        #expect(sluice_afpacket_rx_ready(&ring.cursor) == 1)
        #expect(ring.drain() == [1, 2, 3, 4, 5])
        #expect(ring.header(0).pointee.block_status == SLUICE_AFPACKET_STATUS_KERNEL, "block 0 given back")
        #expect(ring.header(1).pointee.block_status == SLUICE_AFPACKET_STATUS_KERNEL, "block 1 given back at burst end")
        #expect(ring.cursor.blocks_taken == 2)
        #expect(ring.cursor.block_index == 2)
        #expect(sluice_afpacket_rx_ready(&ring.cursor) == 0)
    }

    @Test func rxWalkerFillsFrameFieldsFromTheHeader() {
        let ring = FakeRXRing(blockCount: 2)
        ring.retire(0, frames: [9, 8])
        var frame = sluice_afpacket_frame()
        #expect(sluice_afpacket_rx_next(&ring.cursor, &frame) == 1)
        #expect(frame.snap_length == 60)
        #expect(frame.wire_length == 160)
        #expect(frame.timestamp_ns == 1_700_000_000 * 1_000_000_000)
        #expect(frame.data[0] == 9)
        #expect(sluice_afpacket_rx_next(&ring.cursor, &frame) == 1)
        #expect(frame.snap_length == 61)
        #expect(frame.timestamp_ns == 1_700_000_000 * 1_000_000_000 + 1)
        #expect(frame.data[0] == 8)
        // The last frame's block stays held until the burst ends or the next frame is asked for.
        #expect(ring.header(0).pointee.block_status == SLUICE_AFPACKET_STATUS_USER)
        sluice_afpacket_rx_finish(&ring.cursor)
        #expect(ring.header(0).pointee.block_status == SLUICE_AFPACKET_STATUS_KERNEL)
    }

    @Test func rxWalkerResumesMidBlockAcrossBursts() {
        let ring = FakeRXRing(blockCount: 2)
        ring.retire(0, frames: [1, 2, 3, 4])
        var frame = sluice_afpacket_frame()
        #expect(sluice_afpacket_rx_next(&ring.cursor, &frame) == 1)
        sluice_afpacket_rx_finish(&ring.cursor)
        #expect(ring.header(0).pointee.block_status == SLUICE_AFPACKET_STATUS_USER, "frames left: still held")
        #expect(ring.drain() == [2, 3, 4])
    }

    @Test func rxWalkerWrapsAroundTheRingAndSkipsEmptyBlocks() {
        let ring = FakeRXRing(blockCount: 3)
        var seen: [UInt8] = []
        for round in 0..<5 {
            for block in 0..<3 {
                ring.retire(block, frames: block == 1 ? [] : [UInt8(round * 10 + block)])
            }
            seen += ring.drain()
        }
        #expect(seen == [0, 2, 10, 12, 20, 22, 30, 32, 40, 42])
        #expect(ring.cursor.blocks_taken == 15)
    }

    @Test func txFillCopiesAfterTheHeaderAndStopsWhenFull() {
        let ring = FakeTXRing()
        for slot in 0..<8 { #expect(ring.fill(length: 64, tag: UInt32(slot), byte: UInt8(slot)) == 1) }
        #expect(ring.fill(length: 64, tag: 99) == 0, "eight slots pending: full")
        #expect(sluice_afpacket_tx_free_count(&ring.ring) == 0)
        let header = ring.header(3)
        #expect(header.pointee.status == SLUICE_AFPACKET_STATUS_SEND_REQUEST)
        #expect(header.pointee.length == 64)
        let data = UnsafeRawPointer(header) + Int(SLUICE_AFPACKET_TX_DATA_OFFSET)
        #expect(data.load(as: UInt8.self) == 3)
        #expect(ring.tags[3] == 3)
    }

    @Test func txFillRefusesLengthsTheKernelWouldReject() {
        let ring = FakeTXRing()
        #expect(ring.fill(length: 13, tag: 0) == -EMSGSIZE)
        #expect(ring.fill(length: 0, tag: 0) == -EMSGSIZE)
        #expect(ring.fill(length: 256 - 32 + 1, tag: 0) == -EMSGSIZE)
        #expect(ring.fill(length: 256 - 32, tag: 0) == 1)
        #expect(ring.fill(length: 14, tag: 0) == 1)
    }

    @Test func completionScanReclaimsInOrderAndStopsAtTheFirstFrameTheKernelOwns() {
        let ring = FakeTXRing()
        for slot in 0..<6 { #expect(ring.fill(length: 60 + slot, tag: UInt32(100 + slot)) == 1) }
        // The kernel sent slots 0 and 1, rejected 2, sent 3, and still holds 4 (sending) and 5.
        ring.header(0).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE
        ring.header(1).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE | (1 << 29)  // + a timestamp bit
        ring.header(2).pointee.status = SLUICE_AFPACKET_STATUS_WRONG_FORMAT
        ring.header(3).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE
        ring.header(4).pointee.status = SLUICE_AFPACKET_STATUS_SENDING
        var log = CompletionLog()
        var scan = sluice_afpacket_tx_scan()
        let completed = withUnsafeMutablePointer(to: &log) { log in
            sluice_afpacket_tx_complete(&ring.ring, 8, recordCompletion, log, &scan)
        }
        #expect(completed == 4)
        #expect(scan.completed == 4)
        #expect(scan.wrong_format == 1)
        #expect(scan.bytes == UInt64(60 + 61 + 63))
        #expect(log.slots == [0, 1, 2, 3])
        #expect(log.tags == [100, 101, 102, 103])
        #expect(log.lengths == [60, 61, 62, 63])
        #expect(log.statuses == [0, 0, SLUICE_AFPACKET_STATUS_WRONG_FORMAT, 0])
        #expect(ring.header(2).pointee.status == SLUICE_AFPACKET_STATUS_AVAILABLE, "rejected slot made reusable")
        #expect(sluice_afpacket_tx_pending_count(&ring.ring) == 2)
        // Nothing more until the kernel lets go of slot 4.
        #expect(sluice_afpacket_tx_complete(&ring.ring, 8, nil, nil, &scan) == 0)
        ring.header(4).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE
        ring.header(5).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE
        #expect(sluice_afpacket_tx_complete(&ring.ring, 1, nil, nil, &scan) == 1, "bounded by max")
        #expect(sluice_afpacket_tx_complete(&ring.ring, 8, nil, nil, &scan) == 1)
        #expect(sluice_afpacket_tx_pending_count(&ring.ring) == 0)
    }

    @Test func txRingWrapsThroughManyRounds() {
        let ring = FakeTXRing()
        var scan = sluice_afpacket_tx_scan()
        var sent = 0
        for round in 0..<100 {
            var filled = 0
            while ring.fill(length: 64, tag: UInt32(round)) == 1 { filled += 1 }
            #expect(filled == 8)
            for slot in 0..<8 { ring.header(slot).pointee.status = SLUICE_AFPACKET_STATUS_AVAILABLE }
            sent += Int(sluice_afpacket_tx_complete(&ring.ring, 8, nil, nil, &scan))
        }
        #expect(sent == 800)
        #expect(ring.ring.head == 800)
        #expect(ring.ring.tail == 800)
    }
}
