import Glibc
import SluicePageStore
import SluiceReplicationTestSupport
import SluiceTestSupport
import Testing

@testable import SluiceStorageServer

/// A client that pipelines requests and never reads its replies: the server's memory stays bounded
/// (replies count until the socket takes them, reading pauses at the bound), the connection is closed
/// after the stall deadline, and other clients are served meanwhile.
@Suite(.serialized) struct BackPressureTests {
    static let pagesPerRead: UInt32 = 257  // a reply of about 1 MiB: the most a default frame holds

    /// Fills pages 0..<257 of `objectID` with full payloads, so each range read is a ~1 MiB reply.
    static func fill(_ client: StorageClient, objectID: UInt64) throws {
        let payloadSizeBytes = try client.statNode().payloadSizeBytes
        let payload = [UInt8](repeating: 0xA5, count: payloadSizeBytes)
        for first in stride(from: UInt64(0), to: UInt64(pagesPerRead), by: 32) {
            let pages = (first..<min(first + 32, UInt64(pagesPerRead))).map { PageWrite(index: $0, payload: payload, condition: .unconditional) }
            _ = try client.write(objectID: objectID, pages: pages)
        }
    }

    /// `count` readPages frames of the whole filled range, back to back.
    static func pipelinedReads(objectID: UInt64, count: Int) -> [UInt8] {
        var frames: [UInt8] = []
        let body = bigEndian(objectID) + bigEndian(0) + withUnsafeBytes(of: pagesPerRead.bigEndian) { Array($0) }
        for requestID in 1...count {
            frames += rawFrame(opcode: Opcode.readPages.rawValue, requestID: UInt64(requestID), body: body)
        }
        return frames
    }

    /// The resident set of `pid` in KiB (/proc/PID/status VmRSS), nil when unreadable.
    static func residentKiB(_ pid: pid_t) -> Int? {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("VmRSS:") else { continue }
            return text.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        return nil
    }

    /// Reads replies until the connection closes; how many whole replies came first (nil: still open
    /// after `repliesMax`).
    static func repliesBeforeClose(_ client: StorageClient, repliesMax: Int) -> Int? {
        for received in 0..<repliesMax {
            do { _ = try client.receiveRaw() } catch {
                return error == .connectionClosed ? received : nil
            }
        }
        return nil
    }

    /// The reproduction against a real `sluice storage serve`: 2,000 readPages of 257 pages
    /// (about 2 GiB of replies) pipelined by a client that never reads. Before the bound, the server
    /// grew by hundreds of MiB a second; now its RSS stays within the reply-bytes bound plus slack.
    @Test func aClientThatNeverReadsLeavesTheServerBoundedAndIsClosed() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        let directory = "/var/tmp/sluice-backpressure-\(getpid())"
        defer { removeDataDirectory(directory) }
        let deadlineMs = 2_000
        let server = try ChildProcess([binary, "storage", "serve", "--data", directory, "--host", "127.0.0.1", "--port", "0",
                                       "--stalled-reply-deadline-ms", "\(deadlineMs)"])
        let line = try #require(server.readLine(timeoutMs: 30_000), "stderr: \(server.stderrText)")
        let port = try #require(line.split(separator: " ").dropFirst(2).first?.split(separator: ":").last.flatMap { Int($0) })
        let normal = try StorageClient(host: "127.0.0.1", port: port)
        try Self.fill(normal, objectID: 1)
        let baselineKiB = try #require(Self.residentKiB(server.pid))

        let stalled = try StorageClient(host: "127.0.0.1", port: port)
        try stalled.sendRaw(Self.pipelinedReads(objectID: 1, count: 2_000))
        // Watch the server while the stall lasts; a normal client is served meanwhile.
        var peakKiB = baselineKiB
        let watchUntilMs = Self.nowMs() + deadlineMs - 500
        var normalOSN: UInt64 = 0
        while Self.nowMs() < watchUntilMs {
            peakKiB = max(peakKiB, Self.residentKiB(server.pid) ?? 0)
            if peakKiB - baselineKiB > 128 << 10 { break }  // over the bound: fail now, not after 2 GiB
            if normalOSN == 0 { normalOSN = try normal.write(objectID: 2, pageIndex: 0, payload: [7]) }
            usleep(50_000)
        }
        print("storage server RSS with a client that never reads: \(baselineKiB) KiB before, \(peakKiB) KiB at most")
        #expect(peakKiB - baselineKiB < 128 << 10, "server grew from \(baselineKiB) KiB to \(peakKiB) KiB")
        #expect(normalOSN > 0)
        #expect(try normal.read(objectID: 2, pageIndex: 0).payload.first == 7)

        // Past the deadline the server has closed the stalled connection: what the kernel buffered
        // arrives, then the close (a handful of replies, never the 2,000).
        usleep(1_000_000)
        let received = Self.repliesBeforeClose(stalled, repliesMax: 64)
        #expect(received != nil, "the stalled connection is still open after the deadline")
        #expect(try normal.read(objectID: 2, pageIndex: 0).payload.first == 7, "other connections live on")
    }

    /// In-process, with small bounds: the close is counted in the server's stats, and a request on
    /// another connection is answered while the stalled one is over its bound.
    @Test(arguments: StorageBackend.allCases) func aStalledConnectionIsClosedAndCounted(backend: StorageBackend) async throws {
        var configuration = StorageServerConfiguration()
        configuration.outstandingReplyBytesMax = 1 << 20
        configuration.outstandingRequestsMax = 8
        configuration.stalledReplyDeadlineNs = 500_000_000
        try await withServedNode(backend, configuration: configuration) { served in
            let normal = try served.client()
            try Self.fill(normal, objectID: 1)
            let stalled = try served.client()
            try stalled.sendRaw(Self.pipelinedReads(objectID: 1, count: 200))
            #expect(try normal.read(objectID: 1, pageIndex: 3).payload.first == 0xA5)
            let giveUpMs = Self.nowMs() + 10_000
            while served.server.stalledConnectionsClosed == 0, Self.nowMs() < giveUpMs { usleep(20_000) }
            #expect(served.server.stalledConnectionsClosed == 1)
            #expect(Self.repliesBeforeClose(stalled, repliesMax: 200) != nil)
            #expect(try normal.statNode().lastOSN > 0)
        }
    }

    /// A client that reads slowly but does read is never closed, however many requests it pipelines.
    @Test(arguments: StorageBackend.allCases) func aSlowReaderIsServedInFull(backend: StorageBackend) async throws {
        var configuration = StorageServerConfiguration()
        configuration.outstandingReplyBytesMax = 1 << 20
        configuration.outstandingRequestsMax = 8
        configuration.stalledReplyDeadlineNs = 2_000_000_000
        try await withServedNode(backend, configuration: configuration) { served in
            let client = try served.client()
            try Self.fill(client, objectID: 1)
            try client.sendRaw(Self.pipelinedReads(objectID: 1, count: 40))
            for requestID in 1...40 {
                if requestID % 10 == 0 { usleep(100_000) }
                #expect(try client.receiveRaw().requestID == UInt64(requestID))
            }
            #expect(served.server.stalledConnectionsClosed == 0)
        }
    }

    static func nowMs() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000 + now.tv_nsec / 1_000_000
    }
}
