// Path: Tests/SluiceGatewayTests/ApplianceWriteTests.swift — the appliance's writes end to end on
// 127.0.0.1: journal, upload to the real intermediate over a directory store, read back through another
// appliance, replace (never a mix), the journal bound, a restart mid-write, the intermediate down during
// an upload, a corrupt piece on the wire, and the client protocol over TCP.
import Glibc
import Testing
@testable import SluiceGateway

/// A store directory, an intermediate on 127.0.0.1 (restartable on its port) that takes uploads in
/// parts of `partBytes`, and appliances with or without a journal.
final class WriteFixture: @unchecked Sendable {  // unchecked: used by one test task at a time
    let storeDirectory = TemporaryDirectory("sluice-wr-store")
    let cacheDirectory = TemporaryDirectory("sluice-wr-cache")
    let journalDirectory = TemporaryDirectory("sluice-wr-journal")
    let units = smallUnits
    let partBytes: Int
    var server: IntermediateServer?
    var port = 0

    init(partBytes: Int = 1 << 20) throws {
        self.partBytes = partBytes
        mkdir(storeDirectory.path + "/dir", 0o755)
        try startIntermediate()
    }

    deinit { server?.close() }

    func startIntermediate() throws {
        let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: 64 << 20, units: units))
        var configuration = IntermediateConfiguration(units: units)
        configuration.statTTLNs = 0
        configuration.upload.partBytes = partBytes
        server = try IntermediateServer.bind(host: "127.0.0.1", port: port, store: DirectoryObjectStore(root: storeDirectory.path),
                                             cache: cache, configuration: configuration)
        port = server!.port
    }

    func stopIntermediate() {
        server?.close()
        server = nil
    }

    func appliance(journal: Bool = true, journalBytes: Int = 64 << 20, spaceWaitNs: UInt64 = 10_000_000_000) async throws -> Appliance {
        var configuration = ApplianceConfiguration()
        configuration.cacheBytes = 32 << 20
        configuration.blockBytes = units.blockBytes
        configuration.statTTLNs = 0
        configuration.client.callTimeoutNs = 10_000_000_000
        configuration.upload.retryMaxNs = 200_000_000
        if journal {
            var journalConfiguration = ApplianceJournalConfiguration(directory: journalDirectory.path + "/j")
            journalConfiguration.bytesMax = journalBytes
            journalConfiguration.spaceWaitNs = spaceWaitNs
            configuration.journal = journalConfiguration
        }
        return try await Appliance.start(intermediateHost: "127.0.0.1", port: port, configuration: configuration)
    }

    /// The object as the store directory holds it (nil: no such file).
    func stored(_ key: String) -> [UInt8]? {
        let path = storeDirectory.path + "/" + key
        let size = fileSize(path)
        guard size >= 0 else { return nil }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: size)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) }
        return got == size ? bytes : nil
    }
}

/// Writes `bytes` as `key` through `appliance`'s API in appends of `pieceBytes`.
@discardableResult
func write(_ appliance: Appliance, _ key: String, _ bytes: [UInt8], pieceBytes: Int = 300_000) async throws -> UInt64 {
    let id = try await appliance.beginWrite(key: key)
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + pieceBytes)
        #expect(try await appliance.append(writeID: id, offset: UInt64(offset), bytes: Array(bytes[offset..<end])) == UInt64(end))
        offset = end
    }
    return try await appliance.closeWrite(writeID: id)
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct ApplianceWriteTests {
    @Test func writeThenReadBackThroughAnotherAppliance() async throws {
        let fixture = try WriteFixture()
        let writer = try await fixture.appliance()
        let object = objectBytes((3 << 20) + 123, seed: 5)  // 3 parts of 1 MiB and 123 bytes
        #expect(try await write(writer, "dir/new", object) == UInt64(object.count))
        // Read-your-writes on the writer, uploaded or not.
        #expect(try await writer.read(key: "dir/new", offset: 1000, length: 70_000).bytes == Array(object[1000..<71_000]))
        try await writer.flush(key: "dir/new", timeoutNs: 20_000_000_000)
        #expect(writer.pendingUploads.objects == 0)
        #expect(fixture.stored("dir/new") == object)
        let reader = try await fixture.appliance(journal: false)
        #expect(try await reader.read(key: "dir/new", offset: 0, length: object.count).bytes == object)
        #expect(try await writer.read(key: "dir/new", offset: 0, length: object.count).bytes == object)
        let counters = writer.counters.snapshot()
        #expect(counters.bytesWritten == UInt64(object.count) && counters.uploadsDone == 1 && counters.uploadBytes == UInt64(object.count))
        #expect(counters.journalBytes == 0)
        let intermediate = fixture.server!.counters.snapshot()
        #expect(intermediate.uploadsCompleted == 1 && intermediate.uploadPartsStored == 4 && intermediate.uploadBytesReceived == UInt64(object.count))
        // An empty object and a one-byte one: a single put each.
        try await write(writer, "dir/empty", [])
        try await write(writer, "dir/one", [7])
        try await writer.flush(timeoutNs: 20_000_000_000)
        #expect(fixture.stored("dir/empty") == [] && fixture.stored("dir/one") == [7])
        #expect(try await reader.read(key: "dir/one", offset: 0, length: 1).bytes == [7])
        print("write: \(object.count) bytes, appliance \(writer.counters.snapshot()), intermediate \(fixture.server!.counters.snapshot())")
        await reader.close()
        await writer.close()
    }

    /// Readers of another appliance see the old object or the new one, whole, never a mix.
    @Test func replaceIsNeverSeenMixed() async throws {
        let fixture = try WriteFixture()
        let writer = try await fixture.appliance()
        let reader = try await fixture.appliance(journal: false)
        let old = objectBytes(1 << 20, seed: 1)
        let new = objectBytes(1 << 20, seed: 2)
        try await write(writer, "dir/x", old)
        try await writer.flush(timeoutNs: 20_000_000_000)
        #expect(try await reader.read(key: "dir/x", offset: 0, length: old.count).bytes == old)
        let reads = Task { () -> (old: Int, new: Int, mixed: Int, errors: Int) in
            var counts = (old: 0, new: 0, mixed: 0, errors: 0)
            while counts.new < 3 {
                let offset = UInt64.random(in: 0..<UInt64(old.count - 200_000))
                let bytes: [UInt8]
                do { bytes = try await reader.read(key: "dir/x", offset: offset, length: 200_000).bytes } catch {
                    // Replaced between the stat and the store read: a clear error, never bytes of both.
                    counts.errors += 1
                    continue
                }
                let range = Int(offset)..<(Int(offset) + 200_000)
                if bytes[...] == old[range] { counts.old += 1 } else if bytes[...] == new[range] { counts.new += 1 } else { counts.mixed += 1 }
            }
            return counts
        }
        try await Task.sleep(nanoseconds: 20_000_000)
        try await write(writer, "dir/x", new)
        try await writer.flush(timeoutNs: 20_000_000_000)
        let counts = await reads.value
        #expect(counts.mixed == 0)
        #expect(fixture.stored("dir/x") == new)
        print("replace: reads of the old object \(counts.old), of the new \(counts.new), mixed \(counts.mixed), refused \(counts.errors)")
        await reader.close()
        await writer.close()
    }

    @Test func journalBoundWaitsThenRefuses() async throws {
        let fixture = try WriteFixture()
        let appliance = try await fixture.appliance(journalBytes: 1 << 20, spaceWaitNs: 300_000_000)
        fixture.stopIntermediate()  // nothing is uploaded: the journal stays full
        let first = objectBytes(1 << 20, seed: 3)
        try await write(appliance, "dir/a", first)
        let id = try await appliance.beginWrite(key: "dir/b")
        let started = monotonicNs()
        await #expect(throws: ApplianceError.self) { try await appliance.append(writeID: id, offset: 0, bytes: [1, 2, 3]) }
        let waitedMs = (monotonicNs() - started) / 1_000_000
        #expect(waitedMs >= 300 && waitedMs < 3_000)
        var counters = appliance.counters.snapshot()
        #expect(counters.uploadWaits >= 1 && counters.journalRefusals == 1 && counters.journalBytes == 1 << 20)
        // The intermediate back: the upload frees the space and the append goes through.
        try fixture.startIntermediate()
        try await appliance.flush(timeoutNs: 20_000_000_000)
        #expect(try await appliance.append(writeID: id, offset: 0, bytes: [1, 2, 3]) == 3)
        #expect(try await appliance.closeWrite(writeID: id) == 3)
        try await appliance.flush(timeoutNs: 20_000_000_000)
        #expect(fixture.stored("dir/a") == first && fixture.stored("dir/b") == [1, 2, 3])
        counters = appliance.counters.snapshot()
        print("journal bound: refused after \(waitedMs) ms; waits \(counters.uploadWaits), refusals \(counters.journalRefusals), uploads failed \(counters.uploadsFailed)")
        await appliance.close()
    }

    /// Stopped without a flush, with one object closed and one write open: after the restart the closed
    /// one is uploaded, the open one is gone and said so.
    @Test func restartMidWrite() async throws {
        let fixture = try WriteFixture()
        let before = try await fixture.appliance()
        fixture.stopIntermediate()
        let sealed = objectBytes((2 << 20) + 5, seed: 4)
        try await write(before, "dir/sealed", sealed)
        let open = try await before.beginWrite(key: "dir/open")
        _ = try await before.append(writeID: open, offset: 0, bytes: objectBytes(100_000, seed: 6))
        await before.close()  // as a crash: no flush, the journal files stay
        #expect(fixture.stored("dir/sealed") == nil)
        try fixture.startIntermediate()
        let after = try await fixture.appliance()
        #expect(after.journalRecovery.sealed == 1 && after.journalRecovery.discardedOpen == 1)
        #expect(try await after.read(key: "dir/sealed", offset: 0, length: sealed.count).bytes == sealed)
        try await after.flush(timeoutNs: 20_000_000_000)
        #expect(fixture.stored("dir/sealed") == sealed)
        #expect(fixture.stored("dir/open") == nil)
        await #expect(throws: ApplianceError.writeNotOpen(writeID: open)) {
            try await after.append(writeID: open, offset: 100_000, bytes: [1])
        }
        #expect(after.counters.snapshot().journalDiscardedOpen == 1)
        await after.close()
    }

    @Test func intermediateDownDuringUploadIsRetried() async throws {
        let fixture = try WriteFixture()
        let appliance = try await fixture.appliance()
        fixture.stopIntermediate()
        let object = objectBytes(3 << 20, seed: 8)
        try await write(appliance, "dir/retry", object)
        await #expect(throws: ApplianceError.self) { try await appliance.flush(timeoutNs: 300_000_000) }
        #expect(appliance.counters.snapshot().uploadsFailed >= 1)
        try fixture.startIntermediate()
        try await appliance.flush(timeoutNs: 20_000_000_000)
        #expect(fixture.stored("dir/retry") == object)
        let counters = appliance.counters.snapshot()
        #expect(counters.uploadsDone == 1 && counters.uploadsRetried >= 1)
        print("intermediate down: uploads failed \(counters.uploadsFailed), retried \(counters.uploadsRetried), done \(counters.uploadsDone)")
        await appliance.close()
    }

    @Test func corruptPieceIsRefusedAndSentAgain() async throws {
        let fixture = try WriteFixture()
        let appliance = try await fixture.appliance()
        appliance.corruptNextUploadPieces(2)
        let object = objectBytes((2 << 20) + 4096, seed: 9)
        try await write(appliance, "dir/corrupt", object)
        try await appliance.flush(timeoutNs: 20_000_000_000)
        #expect(fixture.stored("dir/corrupt") == object)
        #expect(fixture.server!.counters.snapshot().uploadCorruptRefused == 2)
        #expect(appliance.counters.snapshot().uploadCorruptResent == 2)
        await appliance.close()
    }

    /// Not a benchmark (debug build, shared machine, loopback, no WAN): how long acknowledgement and
    /// upload take for 32 MiB in 1 MiB appends, each fdatasynced.
    @Test func writeTimesOnLoopback() async throws {
        let fixture = try WriteFixture(partBytes: 8 << 20)
        let appliance = try await fixture.appliance()
        let object = objectBytes(32 << 20, seed: 13)
        let start = monotonicNs()
        try await write(appliance, "dir/timed", object, pieceBytes: 1 << 20)
        let closed = monotonicNs()
        try await appliance.flush(timeoutNs: 60_000_000_000)
        let flushed = monotonicNs()
        #expect(fixture.stored("dir/timed") == object)
        let mb = Double(object.count) / 1e6
        print(String(format: "write times: 32 MiB acknowledged (journal, fdatasync per 1 MiB append) in %.0f ms (%.0f MB/s); uploaded in %.0f ms more (%.0f MB/s)",
                     Double(closed - start) / 1e6, mb / (Double(closed - start) / 1e9), Double(flushed - closed) / 1e6,
                     mb / (Double(flushed - closed) / 1e9)))
        await appliance.close()
    }

    @Test func writesOverTheClientProtocol() async throws {
        let fixture = try WriteFixture()
        let appliance = try await fixture.appliance()
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance)
        defer { server.close() }
        let client = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port)
        let object = objectBytes((2 << 20) + 99, seed: 10)
        #expect(try await client.write(key: "dir/tcp", bytes: object) == UInt64(object.count))
        try await client.flush(key: "dir/tcp", timeoutMs: 20_000)
        #expect(fixture.stored("dir/tcp") == object)
        #expect(try await client.read(key: "dir/tcp", offset: 5, length: 1000).bytes == Array(object[5..<1005]))
        // Out of order, unknown writes, aborted writes.
        let id = try await client.beginWrite(key: "dir/bad")
        await #expect(throws: ApplianceClientError.self) { try await client.append(writeID: id, offset: 10, bytes: [1]) }
        try await client.abortWrite(writeID: id)
        await #expect(throws: ApplianceClientError.self) { try await client.closeWrite(writeID: id) }
        // A write left open by a client that goes away is not an object.
        let other = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port)
        let left = try await other.beginWrite(key: "dir/left")
        _ = try await other.append(writeID: left, offset: 0, bytes: [1, 2])
        await other.close()
        try await Task.sleep(nanoseconds: 100_000_000)
        await #expect(throws: ApplianceError.writeNotOpen(writeID: left)) { try await appliance.closeWrite(writeID: left) }
        let counters = try await client.counters()
        #expect(counters.contains { $0.0 == "uploads_done" && $0.1 == 1 })
        await client.close()
        await appliance.close()
    }
}
