import Glibc
import SluiceCore
import Testing

@testable import SluicePacketIO
import SluiceReplay

/// Captures and flags that crashed, cut, destroyed or refused what libpcap reads (issue 19 items 2,
/// 3, 4, 7, 8, 12), each made here byte by byte.
@Suite(.serialized) struct CaptureEdgeTests {
    static let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(2))

    func replay(_ input: String, to output: ReplayOutput, pacing: ReplayPacing = .topSpeed,
                stages: ReplayStages = .classifyAndAct, bufferSizeBytes: Int? = nil) throws -> ReplaySummary {
        var configuration = ReplayConfiguration(capturePath: input, output: output, pacing: pacing, cores: Self.cores)
        configuration.poolBufferCount = 4096
        configuration.stages = stages
        configuration.bufferSizeBytes = bufferSizeBytes
        return try Replay(configuration).run()
    }

    // MARK: due times (item 2)

    /// Two records 2^32 - 2 s apart at speed 0.1: the second is due past the clock's range. The source
    /// releases the first and holds the second (due never) instead of trapping on the conversion.
    @Test(arguments: [ReplayPacing.capture(speed: 0.1), .capture(speed: 1e-300), .rate(packetsPerSecond: 1e-12)])
    func dueTimesPastTheClockSaturate(pacing: ReplayPacing) throws {
        let path = temporaryPath("jump.pcap")
        defer { unlink(path) }
        var capture = RawCapture()
        capture.records = [.init(seconds: 1, fraction: 0, bytes: RawCapture.frame(length: 64)),
                           .init(seconds: UInt32.max - 1, fraction: 0, bytes: RawCapture.frame(length: 64))]
        try capture.write(to: path)
        let pool = try BufferPool(bufferCount: 64, bufferSizeBytes: 2048)
        let source = try PcapSource(path: path, pool: pool, pacing: pacing)
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { items.deallocate() }
        #expect(source.produce(into: items) == 1)
        pool.freeIndex(UInt32(items[0]))
        #expect(source.produce(into: items) == 0)
        #expect(source.sleepHintNs(nowNs: Clock.monotonicNs())! > 1_000_000_000_000, "due in more than 1000 s")
        #expect(!source.isExhausted)
    }

    @Test func dueTimeArithmeticSaturates() {
        #expect(DueTime.capture(startNs: 5, offsetNs: UInt64.max, speed: 1e-6) == UInt64.max)
        #expect(DueTime.capture(startNs: UInt64.max - 1, offsetNs: 10, speed: 1) == UInt64.max)
        #expect(DueTime.capture(startNs: 5, offsetNs: 10, speed: 2) == 10)
        #expect(DueTime.rate(startNs: 0, sequence: 3, packetsPerSecond: 1e-12) == UInt64.max)
        #expect(DueTime.rate(startNs: 7, sequence: 0, packetsPerSecond: 1e-12) == 7)
        #expect(DueTime.saturating(.nan) == UInt64.max)
        #expect(DueTime.saturating(-1) == 0)
    }

    /// The bounds every front end checks (the CLI at parse time, `PacketPath.validate` for the service).
    @Test func pacingBoundsAreTypedErrors() throws {
        try ReplayPacing.capture(speed: 1).validate()
        try ReplayPacing.rate(packetsPerSecond: 20_000).validate()
        try ReplayPacing.capture(speed: ReplayPacing.speedMin).validate()
        try ReplayPacing.rate(packetsPerSecond: ReplayPacing.packetsPerSecondMax).validate()
        for speed in [1e-300, 0, -1, .infinity, 1e10] {
            #expect(throws: PacingError.speedOutOfRange(speed, min: ReplayPacing.speedMin, max: ReplayPacing.speedMax)) {
                try ReplayPacing.capture(speed: speed).validate()
            }
        }
        #expect(throws: PacingError.rateOutOfRange(1e-12, min: ReplayPacing.packetsPerSecondMin,
                                                   max: ReplayPacing.packetsPerSecondMax)) {
            try ReplayPacing.rate(packetsPerSecond: 1e-12).validate()
        }
        #expect(throws: PacingError.self) { try ReplayPacing.capture(speed: .nan).validate() }
        #expect(throws: ReplayError.invalidConfiguration(.pacing(
            .speedOutOfRange(1e-300, min: ReplayPacing.speedMin, max: ReplayPacing.speedMax)))) {
            _ = try Replay(ReplayConfiguration(capturePath: Captures.sample, output: .discard,
                                               pacing: .capture(speed: 1e-300), cores: Self.cores))
        }
    }

    // MARK: frames longer than the buffer (item 3)

    /// 9000-byte frames: the pool's buffers follow the capture's snapshot length, so the output is
    /// the input byte for byte. With buffers set to 2048 bytes, every frame is a counted drop.
    @Test func jumboFramesAreCarriedWhole() throws {
        let input = temporaryPath("jumbo.pcap")
        let output = temporaryPath("jumbo-out.pcap")
        defer { unlink(input); unlink(output) }
        var capture = RawCapture()
        capture.records = (0..<20).map { .init(seconds: 1_700_000_000, fraction: UInt32($0) * 100,
                                                bytes: RawCapture.frame(length: 9000, seed: $0)) }
        try capture.write(to: input)
        let summary = try replay(input, to: .pcapFile(output))
        #expect(summary.failure == nil)
        #expect(summary.drops.isEmpty)
        #expect(summary.delivered == 20)
        #expect(fileBytes(output) == capture.bytes)
        let small = try replay(input, to: .pcapFile(output), bufferSizeBytes: 2048)
        #expect(small.failure == nil)
        #expect(small.delivered == 0)
        #expect(small.drops.map(\.reason) == ["frame-larger-than-buffer"])
        #expect(small.drops.map(\.count) == [20])
    }

    /// Frames above the largest buffer are dropped and counted by reason, never cut; the frames around
    /// them go through whole.
    @Test(arguments: [ReplayPacing.topSpeed, .rate(packetsPerSecond: 100_000)])
    func framesAboveTheLargestBufferAreCountedDrops(pacing: ReplayPacing) throws {
        let input = temporaryPath("oversize.pcap")
        let output = temporaryPath("oversize-out.pcap")
        defer { unlink(input); unlink(output) }
        let big = PacketPathConfiguration.captureBufferSizeBytesMax + 1000
        var capture = RawCapture()
        capture.records = (0..<30).map { index in
            .init(seconds: 1_700_000_000, fraction: UInt32(index),
                  bytes: RawCapture.frame(length: index % 3 == 0 ? big : 200, seed: index))
        }
        try capture.write(to: input)
        let summary = try replay(input, to: .pcapFile(output), pacing: pacing)
        #expect(summary.failure == nil)
        #expect(summary.delivered == 20)
        #expect(summary.drops.map(\.reason) == ["frame-larger-than-buffer"])
        #expect(summary.drops.map(\.count) == [10])
        var kept = capture
        kept.records = capture.records.enumerated().filter { $0.offset % 3 != 0 }.map(\.element)
        #expect(fileBytes(output) == kept.bytes)
    }

    // MARK: output over input (item 4)

    /// The output is the input under the same name or through a hard link: refused before the output
    /// is opened, the capture untouched.
    @Test func outputThatIsTheInputIsRefused() throws {
        let input = temporaryPath("self.pcap")
        let alias = temporaryPath("self-link.pcap")
        defer { unlink(input); unlink(alias) }
        var capture = RawCapture()
        capture.records = [.init(seconds: 1, fraction: 0, bytes: RawCapture.frame(length: 100))]
        try capture.write(to: input)
        #expect(link(input, alias) == 0)
        for output in [input, alias] {
            #expect(throws: ReplayError.outputIsInput(path: output)) { _ = try replay(input, to: .pcapFile(output)) }
            #expect(fileBytes(input) == capture.bytes)
        }
    }

    // MARK: libpcap's reading (items 7, 8)

    /// A snapshot length of 60 under 74-byte records: libpcap cuts each record to 60 bytes and skips
    /// the rest; so does the chunked reader, and tcpdump reads the replayed file as it reads the input.
    /// (No parse stage: it drops a cut IPv4 packet, whose total length runs past the captured bytes.)
    @Test func recordsLongerThanTheSnapshotAreCutAsLibpcapCutsThem() throws {
        let input = temporaryPath("smallsnap.pcap")
        let output = temporaryPath("smallsnap-out.pcap")
        defer { unlink(input); unlink(output) }
        var capture = RawCapture()
        capture.snapshotLength = 60
        capture.records = (0..<50).map { .init(seconds: 1_700_000_000, fraction: UInt32($0),
                                                bytes: RawCapture.frame(length: 74 + $0 % 3, seed: $0)) }
        try capture.write(to: input)
        var fast = try PcapReader(path: input)
        var slow = try PcapReader(path: input, libpcapRecords: true)
        var count = 0
        while let a = try fast.next() {
            let b = try #require(try slow.next())
            #expect(a.capturedLength == 60 && b.capturedLength == 60)
            #expect(a.wireLength == b.wireLength && a.timestampNs == b.timestampNs)
            #expect(a.bytes.elementsEqual(b.bytes))
            count += 1
        }
        #expect(try slow.next() == nil)
        #expect(count == 50)
        let summary = try replay(input, to: .pcapFile(output), stages: .none)
        #expect(summary.failure == nil)
        #expect(summary.delivered == 50)
        try expectToolsReadTheSame(input, output)
    }

    /// Records far longer than the snapshot length (150 000 bytes under 1000): the skipped part spans
    /// several reads, on a file and on a FIFO; the same records as libpcap's.
    @Test func longCutRecordsAreSkippedAcrossReads() throws {
        let input = temporaryPath("longcut.pcap")
        let fifo = temporaryPath("longcut.fifo")
        defer { unlink(input); unlink(fifo) }
        var capture = RawCapture()
        capture.snapshotLength = 1000
        capture.records = (0..<6).map { .init(seconds: 1_700_000_000, fraction: UInt32($0),
                                               bytes: RawCapture.frame(length: $0 % 2 == 0 ? 150_000 : 300, seed: $0)) }
        try capture.write(to: input)
        #expect(mkfifo(fifo, 0o600) == 0)
        let writer = try FIFOWriter(path: fifo, bytes: capture.bytes)
        var slow = try PcapReader(path: input, libpcapRecords: true)
        var file = try PcapReader(path: input)
        var stream = try PcapReader(path: fifo)
        var count = 0
        while let expected = try slow.next() {
            let a = try #require(try file.next())
            let b = try #require(try stream.next())
            #expect(expected.capturedLength == min(capture.records[count].bytes.count, 1000))
            #expect(a.capturedLength == expected.capturedLength && b.capturedLength == expected.capturedLength)
            #expect(a.wireLength == expected.wireLength && b.wireLength == expected.wireLength)
            #expect(a.bytes.elementsEqual(expected.bytes) && b.bytes.elementsEqual(expected.bytes))
            count += 1
        }
        #expect(try file.next() == nil)
        #expect(try stream.next() == nil)
        #expect(count == 6)
        writer.join()
    }

    /// Upper bits of the link-type field: libpcap keeps the FCS bits out of the link type (Ethernet
    /// here) and reports a reserved bit as part of it (65537, which tcpdump does not decode). The
    /// output keeps the field as it was, so it opens, and libpcap (and tcpdump, where it decodes the
    /// link type) reads it as it reads the input.
    @Test(arguments: [UInt32(0x1400_0001), 0x0001_0001])
    func linkTypeUpperBitsMatchLibpcap(field: UInt32) throws {
        let input = temporaryPath("lt-\(field).pcap")
        let output = temporaryPath("lt-\(field)-out.pcap")
        defer { unlink(input); unlink(output) }
        var capture = RawCapture()
        capture.linkTypeField = field
        capture.records = (0..<5).map { .init(seconds: 1_700_000_000, fraction: UInt32($0),
                                               bytes: RawCapture.frame(length: 80, seed: $0)) }
        try capture.write(to: input)
        let reader = try PcapReader(path: input)
        let libpcap = try PcapReader(path: input, libpcapRecords: true)
        #expect(reader.linkType == libpcap.linkType)
        #expect(reader.linkType == (field == 0x1400_0001 ? 1 : 65537))
        #expect(reader.linkTypeField == field)
        let summary = try replay(input, to: .pcapFile(output), stages: .none)
        #expect(summary.failure == nil)
        #expect(summary.delivered == 5)
        #expect(fileBytes(output) == capture.bytes)
        var original = try PcapReader(path: input, libpcapRecords: true)
        var replayed = try PcapReader(path: output, libpcapRecords: true)
        #expect(original.linkType == replayed.linkType)
        while let a = try original.next() {
            let b = try #require(try replayed.next())
            #expect(a.timestampNs == b.timestampNs && a.bytes.elementsEqual(b.bytes))
        }
        #expect(try replayed.next() == nil)
        if field == 0x1400_0001 { try expectToolsReadTheSame(input, output) }
    }

    func expectToolsReadTheSame(_ input: String, _ output: String) throws {
        guard access("/usr/bin/tcpdump", X_OK) == 0 else {
            #expect(!Captures.inCI, "CI installs tcpdump")
            return
        }
        var expected = ""
        var actual = ""
        #expect(run(["/usr/bin/tcpdump", "-nn", "-xx", "-tt", "-r", input], capture: &expected) == 0)
        #expect(run(["/usr/bin/tcpdump", "-nn", "-xx", "-tt", "-r", output], capture: &actual) == 0)
        #expect(!expected.isEmpty)
        #expect(expected == actual)
    }

    // MARK: pipes (item 12)

    /// A FIFO carrying classic pcap is read front to back, as `tcpdump -r` reads it: the same records
    /// as the file. pcapng on a FIFO is a typed refusal, not a hang.
    @Test func captureFromAFIFOIsReadOnce() throws {
        let fifo = temporaryPath("capture.fifo")
        let output = temporaryPath("fifo-out.pcap")
        defer { unlink(fifo); unlink(output) }
        #expect(mkfifo(fifo, 0o600) == 0)
        let sample = try #require(fileBytes(Captures.sample))
        let writer = try FIFOWriter(path: fifo, bytes: sample)
        let summary = try replay(fifo, to: .pcapFile(output))
        writer.join()
        #expect(summary.failure == nil)
        #expect(summary.delivered == 2000)
        #expect(fileBytes(output) == sample)

        var looped = ReplayConfiguration(capturePath: fifo, output: .discard, loopCount: 2, cores: Self.cores)
        looped.poolBufferCount = 4096
        let second = try FIFOWriter(path: fifo, bytes: sample)
        #expect(throws: ReplayError.invalidConfiguration(.loopOnStream(path: fifo))) { _ = try Replay(looped) }
        second.join()

        let pcapng = try FIFOWriter(path: fifo, bytes: [0x0A, 0x0D, 0x0D, 0x0A] + [UInt8](repeating: 0, count: 60))
        #expect(throws: PcapError.pcapngFromPipe(path: fifo)) { _ = try PcapReader(path: fifo) }
        pcapng.join()
    }

    // MARK: what --json reports (issue 16)

    /// The span from opening the capture covers the workers' span, and the process's CPU over it is
    /// counted.
    @Test func summaryTimesTheRunFromOpeningTheCapture() throws {
        let summary = try replay(Captures.sample, to: .discard)
        #expect(summary.wallNsFromOpen >= summary.elapsedNs)
        #expect(summary.wallNsFromOpen < 60_000_000_000)
        #expect(summary.processCpuNs > 0)
    }
}

/// Writes `bytes` into a FIFO from a thread of its own, once a reader has opened it, then closes it.
/// `join` waits for it.
final class FIFOWriter: @unchecked Sendable {  // unchecked: fields are set before the thread starts
    private var thread = pthread_t()
    private let path: String
    private let bytes: [UInt8]

    init(path: String, bytes: [UInt8]) throws {
        signal(SIGPIPE, SIG_IGN)  // a reader that closes early makes the write fail with EPIPE instead
        self.path = path
        self.bytes = bytes
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let writer = Unmanaged<FIFOWriter>.fromOpaque(context!).takeRetainedValue()
            writer.write()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<FIFOWriter>.fromOpaque(context).release()
            throw SpawnFailure("pthread_create: \(rc)")
        }
    }

    /// Waits at most 10 s for a reader (a non-blocking open fails with ENXIO until one comes), so a
    /// test whose reader never opens the FIFO still ends.
    private func write() {
        var fd: Int32 = -1
        for _ in 0..<10_000 {
            fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
            if fd >= 0 || errno != ENXIO { break }
            usleep(1_000)
        }
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, min(4096, $0.count - offset)) }
            if count <= 0 { break }  // the reader went away (EPIPE): done
            offset += count
        }
        close(fd)
    }

    func join() { pthread_join(thread, nil) }
}
