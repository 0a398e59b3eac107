import Glibc
import Testing

@testable import SluicePacketIO

@Suite(needsCaptures) struct PcapReaderTests {
    struct Expected: Sendable, CustomTestStringConvertible {
        var file: String
        var records: Int
        var linkType: Int
        var container: PcapFormat.Container
        var nanosecond = false
        var testDescription: String { file }
    }

    static let captures: [Expected] = [
        Expected(file: "eth_udp.pcap", records: 100, linkType: 1, container: .pcap),
        Expected(file: "eth_udp_ns.pcap", records: 100, linkType: 1, container: .pcap, nanosecond: true),
        Expected(file: "vlan_qinq.pcap", records: 50, linkType: 1, container: .pcap),
        Expected(file: "ipv6_ext.pcap", records: 35, linkType: 1, container: .pcap),
        Expected(file: "fragments.pcap", records: 9, linkType: 1, container: .pcap),
        Expected(file: "sll.pcap", records: 25, linkType: 113, container: .pcap),
        Expected(file: "rawip.pcap", records: 25, linkType: 12,  // DLT_RAW: libpcap maps LINKTYPE_RAW 101 to it
                  container: .pcap),
        Expected(file: "vxlan.pcap", records: 10, linkType: 1, container: .pcap),
        Expected(file: "mixed.pcapng", records: 50, linkType: 1, container: .pcapng),
    ]

    @Test(arguments: captures)
    func readsEveryRecordOfToolMadeCaptures(_ expected: Expected) throws {
        try #require(Captures.available, "scapy did not make the captures")
        var reader = try PcapReader(path: Captures.path(expected.file))
        #expect(reader.linkType == expected.linkType)
        #expect(reader.format == PcapFormat(container: expected.container, nanosecond: expected.nanosecond))
        var count = 0
        var previous: UInt64 = 0
        while let record = try reader.next() {
            #expect(record.capturedLength > 0 && record.capturedLength == record.bytes.count)
            #expect(record.timestampNs >= previous, "timestamps do not go back")
            previous = record.timestampNs
            count += 1
        }
        #expect(count == expected.records)
        #expect(reader.recordIndex == expected.records)
    }

    /// The chunked reader and libpcap return the same records and fail on the same record.
    @Test(arguments: ["eth_udp.pcap", "eth_udp_ns.pcap", "vlan_qinq.pcap", "ipv6_ext.pcap", "fragments.pcap",
                      "sll.pcap", "rawip.pcap", "vxlan.pcap", "truncated.pcap", "corrupt.pcap"])
    func chunkedReaderMatchesLibpcap(_ file: String) throws {
        try #require(Captures.available)
        var fast = try PcapReader(path: Captures.path(file))
        var slow = try PcapReader(path: Captures.path(file), libpcapRecords: true)
        while true {
            var fastError: PcapError?
            var slowError: PcapError?
            var fastRecord: PcapRecord?
            var slowRecord: PcapRecord?
            do { fastRecord = try fast.next() } catch { fastError = error }
            do { slowRecord = try slow.next() } catch { slowError = error }
            if let fastError, let slowError {
                guard case .badRecord(_, let fastIndex, let fastOffset, _) = fastError,
                      case .badRecord(_, let slowIndex, let slowOffset, _) = slowError else {
                    Issue.record("unexpected errors \(fastError) / \(slowError)")
                    return
                }
                #expect(fastIndex == slowIndex)
                #expect(fastOffset == slowOffset)
                return
            }
            #expect(fastError == nil && slowError == nil, "both fail or neither: \(String(describing: fastError)) vs \(String(describing: slowError))")
            guard let a = fastRecord, let b = slowRecord else {
                #expect(fastRecord == nil && slowRecord == nil, "both end together")
                return
            }
            #expect(a.timestampNs == b.timestampNs)
            #expect(a.capturedLength == b.capturedLength && a.wireLength == b.wireLength)
            #expect(a.bytes.elementsEqual(b.bytes))
        }
    }

    @Test func nanosecondTimestampsSurvive() throws {
        try #require(Captures.available)
        var reader = try PcapReader(path: Captures.path("eth_udp_ns.pcap"))
        let first = try #require(try reader.next())
        #expect(first.timestampNs % 1_000_000_000 == 123_456_789)
    }

    @Test func truncatedFileNamesTheRecordAfterReadingTheOnesBefore() throws {
        try #require(Captures.available)
        let path = Captures.path("truncated.pcap")
        var reader = try PcapReader(path: path)
        var count = 0
        do {
            while try reader.next() != nil { count += 1 }
            Issue.record("a truncated file must not end cleanly")
        } catch {
            // 30 bytes of the 100th record are there: its 16-byte header and 14 of its bytes.
            guard case .badRecord(let errorPath, let index, let offset, .truncatedData(let length, let got)) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(errorPath == path)
            #expect(index == 99)
            #expect(offset > 24)
            #expect(got == 14)
            #expect(length > got)
        }
        #expect(count == 99, "the 99 whole records come first")
    }

    @Test func corruptRecordLengthIsAnErrorNotACrash() throws {
        try #require(Captures.available)
        var reader = try PcapReader(path: Captures.path("corrupt.pcap"))
        var count = 0
        #expect {
            while try reader.next() != nil { count += 1 }
        } throws: { error in
            guard case .badRecord(_, 3, _, let problem) = error as? PcapError else { return false }
            return problem == .lengthAboveMax(capturedLength: 0x7FFF_FFF0, max: 262_144)
        }
        #expect(count == 3)
    }

    @Test func missingOrNonCaptureFileIsAnOpenError() throws {
        #expect(throws: PcapError.openFailed(path: "/nonexistent/capture.pcap", errno: .noSuchFileOrDirectory)) {
            _ = try PcapReader(path: "/nonexistent/capture.pcap")
        }
        let notACapture = Captures.packageRoot + "/Package.swift"
        #expect {
            _ = try PcapReader(path: notACapture)
        } throws: { error in
            guard case .notACapture(let path, _) = error as? PcapError else { return false }
            return path == notACapture
        }
    }
}

@Suite(needsCaptures) struct PcapWriterTests {
    /// Read a capture and write every record back with the same header: the files are byte-identical.
    @Test(arguments: ["eth_udp.pcap", "eth_udp_ns.pcap", "sll.pcap", "rawip.pcap", "vlan_qinq.pcap"])
    func rewritingACaptureIsByteIdentical(_ file: String) throws {
        try #require(Captures.available)
        let input = Captures.path(file)
        let output = Captures.output(file)
        defer { unlink(output) }
        var reader = try PcapReader(path: input)
        var writer = try PcapWriter(path: output, linkType: reader.linkType, snapshotLength: reader.snapshotLength,
                                    nanosecond: reader.format.nanosecond)
        while let record = try reader.next() {
            try writer.write(timestampNs: record.timestampNs, wireLength: record.wireLength, bytes: record.bytes)
        }
        try writer.close()
        #expect(run(["/usr/bin/cmp", "-s", input, output]) == 0)
    }

    /// The error names the output (not "cannot open capture") and keeps the errno.
    @Test func unwritablePathIsACreateError() {
        #expect(throws: PcapError.createFailed(path: "/nonexistent/dir/out.pcap", errno: .noSuchFileOrDirectory)) {
            _ = try PcapWriter(path: "/nonexistent/dir/out.pcap", linkType: 1, nanosecond: false)
        }
    }

    @Test func recordLongerThanTheSnapshotIsRefused() throws {
        let output = "/tmp/sluice-snap-\(getpid()).pcap"
        defer { unlink(output) }
        var writer = try PcapWriter(path: output, linkType: 1, snapshotLength: 64, nanosecond: false)
        let bytes = [UInt8](repeating: 0, count: 65)
        #expect(throws: PcapError.recordTooLong(path: output, length: 65)) {
            try bytes.withUnsafeBytes { try writer.write(timestampNs: 0, wireLength: 65, bytes: $0) }
        }
        try writer.close()
    }

    @Test func fullDiskIsReportedNotLost() throws {
        guard access("/dev/full", W_OK) == 0 else { return }
        var writer = try PcapWriter(path: "/dev/full", linkType: 1, nanosecond: false)
        let bytes = [UInt8](repeating: 0, count: 60)
        for _ in 0..<2000 {
            try bytes.withUnsafeBytes { try writer.write(timestampNs: 0, wireLength: 60, bytes: $0) }
        }
        #expect(throws: PcapError.writeFailed(path: "/dev/full", errno: .noSpace)) { try writer.close() }
    }
}
