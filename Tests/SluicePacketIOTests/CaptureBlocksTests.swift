// Path: Tests/SluicePacketIOTests/CaptureBlocksTests.swift — one classic pcap file read in blocks by
// several readers (`CaptureBlocks`, `PcapBlockReader`): every record once, libpcap's records and errors.
import Glibc
import SluiceCore
import SluicePacketIO
import Testing

@Suite struct CaptureBlocksTests {
    /// What a reader returned for one record.
    struct Seen: Equatable, Comparable {
        var loop: Int
        var index: Int64
        var timestampNs: UInt64
        var wireLength: Int
        var bytes: [UInt8]
        static func < (a: Seen, b: Seen) -> Bool { (a.loop, a.index) < (b.loop, b.index) }
    }

    /// Records of lengths 42...1514 (some above the snapshot length when `snapshotLength` is small).
    private func capture(records: Int, snapshotLength: UInt32 = 65_535, magic: UInt32 = 0xA1B2_C3D4,
                         seed: Int = 0) -> RawCapture {
        var capture = RawCapture(snapshotLength: snapshotLength, magic: magic)
        var state = UInt64(0x9E37_79B9 &+ seed)
        for index in 0..<records {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let length = 42 + Int(state >> 33) % 1_473
            capture.records.append(.init(seconds: UInt32(1_000 + index), fraction: UInt32(index * 7),
                                         bytes: RawCapture.frame(length: length, seed: index)))
        }
        return capture
    }

    /// Every record `PcapReader` reads, `loops` times over.
    private func reference(_ path: String, loops: Int) throws -> [Seen] {
        var reader = try PcapReader(path: path)
        var once: [Seen] = []
        while let record = try reader.next() {
            once.append(Seen(loop: 0, index: Int64(once.count), timestampNs: record.timestampNs,
                             wireLength: record.wireLength, bytes: Array(record.bytes)))
        }
        return (0..<loops).flatMap { loop in once.map { var seen = $0; seen.loop = loop; return seen } }
    }

    /// Round-robin over the readers, a few calls each, until every one has ended (bounded). Returns
    /// each reader's records in the order it returned them, and the errors thrown.
    private func readAll(_ path: String, readers count: Int, loops: Int, blockSizeBytes: Int) throws
        -> (perReader: [[Seen]], errors: [PcapError], blocks: CaptureBlocks) {
        let blocks = try CaptureBlocks(path: path, readerCount: count, loopCount: loops, blockSizeBytes: blockSizeBytes)
        var readers: [PcapBlockReaderBox] = []
        for index in 0..<count {
            let file = try PcapReader(path: path)
            readers.append(PcapBlockReaderBox(try file.blockReader(CaptureBlockShare(blocks: blocks, index: index))))
        }
        var perReader = [[Seen]](repeating: [], count: count)
        var errors: [PcapError] = []
        var ended = [Bool](repeating: false, count: count)
        var rounds = 0
        var random = UInt64(blockSizeBytes &* 31 &+ count)  // reads ahead at varied points, the same each run
        while ended.contains(false), rounds < 1_000_000 {
            rounds += 1
            for index in 0..<count where !ended[index] {
                random = random &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                if random >> 62 == 0 { readers[index].reader.readAhead() }
                for _ in 0..<Int(random >> 60 & 3) + 1 {
                    do {
                        switch try readers[index].reader.next() {
                        case .record(let record):
                            perReader[index].append(Seen(
                                loop: readers[index].reader.lastLoop, index: readers[index].reader.lastRecordIndex,
                                timestampNs: record.timestampNs, wireLength: record.wireLength, bytes: Array(record.bytes)))
                            continue
                        case .waiting: break
                        case .end: ended[index] = true
                        }
                    } catch {
                        errors.append(error)
                    }
                    break
                }
            }
        }
        #expect(!ended.contains(false), "every reader ends")
        return (perReader, errors, blocks)
    }

    @Test(arguments: [(64, 2, 1), (1_000, 2, 3), (4_096, 3, 2), (CaptureBlocks.blockSizeBytesDefault, 2, 2),
                      (100_000, 4, 1), (1_500, 1, 2)])
    func readersTogetherReadEveryRecordOnceInOrderWithinEach(blockSize: Int, readers: Int, loops: Int) throws {
        let path = temporaryPath("blocks-\(blockSize)-\(readers)-\(loops).pcap")
        defer { unlink(path) }
        try capture(records: 400, seed: blockSize).write(to: path)
        let expected = try reference(path, loops: loops)
        let (perReader, errors, blocks) = try readAll(path, readers: readers, loops: loops, blockSizeBytes: blockSize)
        #expect(errors.isEmpty, "\(errors)")
        #expect(perReader.flatMap { $0 }.sorted() == expected)
        for records in perReader {
            #expect(records == records.sorted(), "a reader returns its records in capture order")
        }
        if blocks.blockCount * loops >= 2 * readers {
            #expect(perReader.allSatisfy { !$0.isEmpty }, "every reader had blocks")
        }
    }

    @Test(arguments: [UInt32(0xA1B2_C3D4), 0xD4C3_B2A1, 0xA1B2_3C4D])
    func recordsAboveTheSnapshotLengthAreCutAndEitherByteOrderReads(magic: UInt32) throws {
        let path = temporaryPath("blocks-cut-\(magic).pcap")
        defer { unlink(path) }
        var raw = capture(records: 300, snapshotLength: 600, magic: magic)
        if magic == 0xD4C3_B2A1 {  // written big-endian: swap every field RawCapture writes little-endian
            raw.magic = 0xA1B2_C3D4
            var bytes = raw.bytes
            func swap32(_ at: Int) { bytes[at..<(at + 4)].reverse() }
            swap32(0); bytes[4..<6].reverse(); bytes[6..<8].reverse(); swap32(8); swap32(12); swap32(16); swap32(20)
            var offset = 24
            while offset < bytes.count {
                let captured = Int(bytes[offset + 8]) | Int(bytes[offset + 9]) << 8 | Int(bytes[offset + 10]) << 16
                for field in 0..<4 { swap32(offset + 4 * field) }
                offset += 16 + captured
            }
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            #expect(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count)
            close(fd)
        } else {
            try raw.write(to: path)
        }
        let expected = try reference(path, loops: 2)
        #expect(expected.contains { $0.bytes.count == 600 && $0.wireLength > 600 }, "some records were cut")
        let (perReader, errors, _) = try readAll(path, readers: 2, loops: 2, blockSizeBytes: 2_000)
        #expect(errors.isEmpty)
        #expect(perReader.flatMap { $0 }.sorted() == expected)
    }

    /// A capture whose end is cut (mid-header, mid-record) or which holds a record of an impossible
    /// length: exactly one reader throws libpcap's error for it, every record before it comes out
    /// once, none after it, and every reader ends.
    @Test(arguments: ["header", "data", "cut", "length"])
    func aBadRecordEndsTheCaptureAfterEveryRecordBeforeIt(damage: String) throws {
        let path = temporaryPath("blocks-bad-\(damage).pcap")
        defer { unlink(path) }
        var raw = capture(records: 200, snapshotLength: damage == "cut" ? 100 : 65_535)
        if damage == "cut" { raw.records[199].bytes = RawCapture.frame(length: 1_000) }
        var bytes = raw.bytes
        var badIndex = 199
        switch damage {
        case "header": bytes += [1, 2, 3, 4, 5]; badIndex = 200
        case "data": bytes.removeLast(10)
        case "cut": bytes.removeLast(500)  // the kept 100 bytes are there, the skipped rest is short
        default:
            // Record 120's captured length set above libpcap's maximum.
            var offset = 24
            for _ in 0..<120 {
                offset += 16 + (Int(bytes[offset + 8]) | Int(bytes[offset + 9]) << 8 | Int(bytes[offset + 10]) << 16)
            }
            bytes.replaceSubrange((offset + 8)..<(offset + 12), with: [0, 0, 0, 0x10])
            badIndex = 120
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count)
        close(fd)
        var reader = try PcapReader(path: path)
        var good: [[UInt8]] = []
        var libpcapError: PcapError?
        do { while let record = try reader.next() { good.append(Array(record.bytes)) } } catch { libpcapError = error }
        #expect(good.count == badIndex)
        for blockSize in [512, 7_000] {
            let (perReader, errors, _) = try readAll(path, readers: 2, loops: 3, blockSizeBytes: blockSize)
            #expect(errors == [try #require(libpcapError)])
            let all = perReader.flatMap { $0 }.sorted()
            #expect(all.map(\.bytes) == good, "every record before the bad one once, none after, no second loop")
        }
    }

    @Test func aFileOfItsHeaderOnlyHasNoBlocks() throws {
        let path = temporaryPath("blocks-empty.pcap")
        defer { unlink(path) }
        try RawCapture().write(to: path)
        let (perReader, errors, blocks) = try readAll(path, readers: 2, loops: 4, blockSizeBytes: 1_024)
        #expect(blocks.blockCount == 0 && errors.isEmpty && perReader.allSatisfy(\.isEmpty))
    }

    @Test func aPcapngCaptureIsNotReadInBlocks() throws {
        let path = temporaryPath("blocks-refused.pcap")
        defer { unlink(path) }
        var raw = capture(records: 3)
        raw.magic = 0x0A0D_0D0A  // not classic pcap: libpcap refuses it outright
        try raw.write(to: path)
        #expect(throws: PcapError.self) { _ = try PcapReader(path: path) }
        // Version 2.3 (libpcap reads its records itself) is not read in blocks either.
        var old = capture(records: 3).bytes
        old[6] = 3
        let oldPath = temporaryPath("blocks-2.3.pcap")
        defer { unlink(oldPath) }
        let fd = open(oldPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(old.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == old.count)
        close(fd)
        let older = try PcapReader(path: oldPath)
        let olderInBlocks = older.readsInBlocks
        #expect(!olderInBlocks)
        let oldBlocks = try CaptureBlocks(path: oldPath, readerCount: 2, loopCount: 1)
        #expect(throws: PcapError.self) { _ = try older.blockReader(CaptureBlockShare(blocks: oldBlocks, index: 0)) }
        if Captures.available {
            let pcapng = try PcapReader(path: Captures.path("mixed.pcapng"))
            let inBlocks = pcapng.readsInBlocks
            #expect(!inBlocks)
            let blocks = try CaptureBlocks(path: Captures.path("mixed.pcapng"), readerCount: 2, loopCount: 1)
            #expect(throws: PcapError.self) { _ = try pcapng.blockReader(CaptureBlockShare(blocks: blocks, index: 0)) }
        }
    }

    /// One source's run on its own thread; read after the join.
    final class SourceRun: @unchecked Sendable {
        let source: PcapSource
        let pool: BufferPool
        var taken: [[UInt8]] = []
        var timedOut = false
        init(source: PcapSource, pool: BufferPool) {
            self.source = source
            self.pool = pool
        }
        func run() {
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            let deadline = Clock.monotonicNs() + 60_000_000_000  // bounded: a stuck reader fails the test
            while !source.isExhausted {
                if Clock.monotonicNs() > deadline {
                    timedOut = true
                    return
                }
                let count = source.produce(into: items)
                if count == 0 { sched_yield() }  // waiting on the other reader's walk
                for item in items[0..<count] {
                    let buffer = UInt32(truncatingIfNeeded: item)
                    let length = Int(pool.metadata(at: buffer).pointee.length)
                    taken.append(Array(UnsafeRawBufferPointer(rebasing: pool.bytes(at: buffer)[0..<length])))
                    pool.freeIndex(buffer)
                }
            }
        }
    }

    /// `readers` sources over `path` in blocks, each on its own thread, all made before any starts.
    private func runSources(_ path: String, readers: Int, loops: Int, blockSizeBytes: Int) throws -> [SourceRun] {
        let blocks = try CaptureBlocks(path: path, readerCount: readers, loopCount: loops, blockSizeBytes: blockSizeBytes)
        var runs: [SourceRun] = []
        for index in 0..<readers {
            let pool = try BufferPool(bufferCount: 256, bufferSizeBytes: 2_048)
            let source = try PcapSource(reader: try PcapReader(path: path), pool: pool,
                                        blocks: CaptureBlockShare(blocks: blocks, index: index))
            runs.append(SourceRun(source: source, pool: pool))
        }
        var threads: [pthread_t] = []
        for run in runs {
            var thread = pthread_t()
            #expect(pthread_create(&thread, nil, { context in
                Unmanaged<SourceRun>.fromOpaque(context!).takeRetainedValue().run()
                return nil
            }, Unmanaged.passRetained(run).toOpaque()) == 0)
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
        #expect(runs.allSatisfy { !$0.timedOut })
        return runs
    }

    private func sorted(_ records: [[UInt8]]) -> [[UInt8]] { records.sorted { $0.lexicographicallyPrecedes($1) } }

    /// Two sources on two threads, each with its own pool: every record once, all loops, counted.
    @Test func twoSourcesOnTwoThreadsReplayEveryRecordOnce() throws {
        let path = temporaryPath("blocks-sources.pcap")
        defer { unlink(path) }
        try capture(records: 3_000).write(to: path)
        let expected = try reference(path, loops: 3)
        let runs = try runSources(path, readers: 2, loops: 3, blockSizeBytes: 16_384)
        #expect(runs.allSatisfy { $0.source.failure == nil && $0.source.isExhausted })
        #expect(runs.allSatisfy { $0.source.counters.loopsDone.load(ordering: .relaxed) == 3 })
        #expect(sorted(runs.flatMap(\.taken)) == sorted(expected.map(\.bytes)))
    }

    /// The race a bad record must win: two threads over a capture of about a dozen 4 KiB blocks
    /// looped three times, a bad record in the fifth or so. Every record before it once, nothing of a later
    /// loop, one source reporting it; repeated, so the readers meet it in varied interleavings.
    @Test func twoThreadsStopAtABadRecordInEveryInterleaving() throws {
        let path = temporaryPath("blocks-race.pcap")
        defer { unlink(path) }
        var bytes = capture(records: 60, seed: 3).bytes
        var offset = 24
        for _ in 0..<25 {  // record 25 (past the first 4 KiB block: ~760 bytes a record) gets an impossible length
            offset += 16 + (Int(bytes[offset + 8]) | Int(bytes[offset + 9]) << 8 | Int(bytes[offset + 10]) << 16)
        }
        bytes.replaceSubrange((offset + 8)..<(offset + 12), with: [0, 0, 0, 0x10])
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count)
        close(fd)
        var reader = try PcapReader(path: path)
        var good: [[UInt8]] = []
        do { while let record = try reader.next() { good.append(Array(record.bytes)) } } catch {}
        #expect(good.count == 25)
        for _ in 0..<40 {
            let runs = try runSources(path, readers: 2, loops: 3, blockSizeBytes: 4_096)
            #expect(sorted(runs.flatMap(\.taken)) == sorted(good))
            #expect(runs.filter { $0.source.failure != nil }.count == 1)
            #expect(runs.allSatisfy { $0.source.isExhausted && $0.source.counters.loopsDone.load(ordering: .relaxed) == 0 })
        }
    }
}

/// Holds a non-copyable reader in an array.
final class PcapBlockReaderBox {
    var reader: PcapBlockReader
    init(_ reader: consuming PcapBlockReader) { self.reader = reader }
}
