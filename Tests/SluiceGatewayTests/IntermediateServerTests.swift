// Path: Tests/SluiceGatewayTests/IntermediateServerTests.swift — the intermediate device end to end over
// TCP on 127.0.0.1 with a directory store: what crosses the last hop for random, sequential and strided
// reads, a store that loses the object or goes away, corruption on disk, bad frames.
import Glibc
import NIOCore
import SluiceCore
import Testing
@testable import SluiceGateway

/// A store directory with one object, a chunk cache and a server on 127.0.0.1, closed on deinit.
final class ServerFixture: Sendable {
    let storeDirectory = TemporaryDirectory("sluice-gw-store")
    let cacheDirectory = TemporaryDirectory("sluice-gw-cache")
    let store: DirectoryObjectStore
    let server: IntermediateServer
    let units: GatewayUnits
    let object: [UInt8]
    let key = "dir/object"

    init(units: GatewayUnits = .standard, objectBytes count: Int = (16 << 20) + 5000, cacheBytes: Int = 64 << 20,
         statTTLNs: UInt64 = 0, requestBytesInFlightMax: Int = RequestBudget.bytesMaxDefault) throws {
        self.units = units
        store = DirectoryObjectStore(root: storeDirectory.path)
        object = objectBytes(count, seed: 11)
        mkdir(storeDirectory.path + "/dir", 0o755)
        writeObject(storeDirectory.path, key, object)
        let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: cacheBytes, units: units))
        var configuration = IntermediateConfiguration(units: units)
        configuration.statTTLNs = statTTLNs
        configuration.requestBytesInFlightMax = requestBytesInFlightMax
        server = try IntermediateServer.bind(host: "127.0.0.1", port: 0, store: store, cache: cache, configuration: configuration)
    }

    deinit { server.close() }

    func client() async throws -> GatewayClient {
        try await GatewayClient.connect(host: "127.0.0.1", port: server.port)
    }

    func expected(chunk: UInt64, _ extent: SectorExtent) -> [UInt8] {
        expectedBytes(object, chunk: chunk, run: extent.sectors(units), units: units)
    }
}

@Suite(.timeLimit(.minutes(2))) struct IntermediateServerTests {
    @Test func helloAndStat() async throws {
        let fixture = try ServerFixture()
        let client = try await fixture.client()
        #expect(client.hello.units == .standard)
        #expect(client.hello.frameBytesMax >= GatewayUnits.standard.frameBytesNeeded)
        let stat = try await client.stat(key: fixture.key)
        let direct = try await fixture.store.size(key: fixture.key)
        #expect(stat.size == UInt64(fixture.object.count) && stat.etag == direct.etag)
        await #expect(throws: GatewayClientError.status(.notFound, message: "no object dir/missing")) { try await client.stat(key: "dir/missing") }
        await client.close()
    }

    /// 4 KiB random reads: one extent of 4 KiB each crosses the last hop, however large the budget.
    @Test func randomSectorReadsMoveOnlyWhatWasAsked() async throws {
        let fixture = try ServerFixture(statTTLNs: 60_000_000_000)
        let client = try await fixture.client()
        var generator = SplitMix(seed: 5)
        let reads = 300
        var served = 0
        for _ in 0..<reads {
            let chunk = generator.next() % 4
            let sector = Int(generator.next() % 1024)
            let extent = SectorExtent(sectors: sector..<(sector + 1), units: fixture.units)
            let reply = try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: chunk, extraBudgetBytes: 256 << 10, wanted: [extent]))
            #expect(reply.extents.count == 1)
            #expect(reply.extents[0].bytes == fixture.expected(chunk: chunk, extent))
            served += reply.extents[0].bytes.count
        }
        let counters = fixture.server.counters.snapshot()
        #expect(counters.lastHopRequestedBytes == UInt64(served))
        #expect(counters.lastHopSequentialBytes + counters.lastHopStrideBytes == 0)
        // Every byte of every reply frame (headers, etag, CRC) over the bytes the reads asked for.
        let ratio = Double(counters.lastHopFrameBytes) / Double(served)
        print("random 4 KiB reads: \(reads) reads, \(served) bytes served, \(counters.lastHopFrameBytes) reply bytes, ratio \(ratio)")
        #expect(ratio < 1.03)
        #expect(counters.remoteReads == 4)  // each chunk fetched once
        // Warm: every chunk is on the intermediate's disk; one read in flight at a time over loopback.
        var latenciesNs: [UInt64] = []
        for _ in 0..<reads {
            let chunk = generator.next() % 4
            let sector = Int(generator.next() % 1024)
            let request = ReadSectorsRequest(key: fixture.key, chunk: chunk, extraBudgetBytes: 0,
                                             wanted: [SectorExtent(sectors: sector..<(sector + 1), units: fixture.units)])
            let start = Clock.monotonicNs()
            _ = try await client.readSectors(request)
            latenciesNs.append(Clock.monotonicNs() - start)
        }
        latenciesNs.sort()
        print("warm 4 KiB reads over loopback (debug build): p50 \(latenciesNs[reads / 2] / 1000) us, p99 \(latenciesNs[reads * 99 / 100] / 1000) us")
        #expect(fixture.server.counters.snapshot().remoteReads == 4)
        await client.close()
    }

    /// An appliance reading 64 KiB blocks in order, asking only for sectors it lacks: read-ahead comes
    /// within the budget, nothing crosses twice, and far fewer requests are needed than blocks read.
    @Test func sequentialReadsGetReadAheadWithinTheBudget() async throws {
        let fixture = try ServerFixture(statTTLNs: 60_000_000_000)
        let client = try await fixture.client()
        let units = fixture.units
        let budget = 256 << 10
        var held: [UInt64: SectorSet] = [:]
        var requests = 0
        var payload = 0
        let blocks = (8 << 20) / units.blockBytes
        for index in 0..<blocks {
            let chunk = UInt64(index / units.blocksPerChunk)
            let block = index % units.blocksPerChunk
            var have = held[chunk] ?? SectorSet(count: units.sectorsPerChunk)
            let missing = (block * 16..<(block + 1) * 16).filter { !have.contains($0) }
            guard !missing.isEmpty else { continue }
            let wanted = runs(missing).map { SectorExtent(sectors: $0, units: units) }
            let reply = try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: chunk, extraBudgetBytes: UInt32(budget),
                                                                        wanted: wanted, held: heldBitmap(have, units: units)))
            requests += 1
            let predicted = reply.extents.dropFirst(wanted.count)
            #expect(predicted.reduce(0) { $0 + $1.bytes.count } <= budget)
            #expect(predicted.allSatisfy { $0.reason == .sequential })
            for payloadExtent in reply.extents {
                #expect(payloadExtent.bytes == fixture.expected(chunk: chunk, payloadExtent.extent))
                for sector in payloadExtent.extent.sectors(units) {
                    #expect(!have.contains(sector), "sector \(sector) of chunk \(chunk) sent twice")
                    have.insert(sector)
                }
                payload += payloadExtent.bytes.count
            }
            held[chunk] = have
        }
        let counters = fixture.server.counters.snapshot()
        print("sequential 8 MiB in 64 KiB blocks, budget \(budget): \(requests) requests for \(blocks) blocks, "
              + "requested \(counters.lastHopRequestedBytes) B, sequential \(counters.lastHopSequentialBytes) B")
        #expect(payload == 8 << 20)
        #expect(counters.lastHopRequestedBytes + counters.lastHopSequentialBytes == UInt64(8 << 20))
        #expect(counters.lastHopSequentialBytes >= UInt64(5 << 20))
        #expect(requests <= 30)
        await client.close()
    }

    @Test func stridedReadsGetTheNextStrides() async throws {
        let fixture = try ServerFixture(statTTLNs: 60_000_000_000)
        let client = try await fixture.client()
        var last: SectorsReply?
        for block in [0, 8, 16] {
            let wanted = [SectorExtent(block: UInt16(block), firstSector: 0, sectorCount: 4)]
            last = try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: 1, extraBudgetBytes: 8 * 4096, wanted: wanted))
        }
        let predicted = try #require(last).extents.dropFirst()
        #expect(predicted.map(\.reason) == [.stride, .stride])
        #expect(predicted.map(\.extent) == [SectorExtent(block: 24, firstSector: 0, sectorCount: 4), SectorExtent(block: 32, firstSector: 0, sectorCount: 4)])
        #expect(fixture.server.counters.snapshot().lastHopStrideBytes == 8 * 4096)
        await client.close()
    }

    /// The store loses the object, then goes away entirely: clear statuses, never the cached bytes; and
    /// everything is served again when they return.
    @Test func storeGoneIsAClearStatusNotStaleData() async throws {
        let fixture = try ServerFixture(statTTLNs: 0)
        let client = try await fixture.client()
        let read = ReadSectorsRequest(key: fixture.key, chunk: 0, extraBudgetBytes: 0, wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1)])
        _ = try await client.readSectors(read)
        await fixture.server.cache.waitUntilSettled()
        #expect(fixture.server.cache.chunkCount == 1)

        unlink(fixture.storeDirectory.path + "/" + fixture.key)
        await #expect(throws: GatewayClientError.status(.notFound, message: "no object dir/object")) { try await client.readSectors(read) }
        #expect(fixture.server.cache.chunkCount == 0)  // dropped, not kept for later
        writeObject(fixture.storeDirectory.path, fixture.key, fixture.object)
        #expect(try await client.readSectors(read).extents[0].bytes == fixture.expected(chunk: 0, read.wanted[0]))

        let away = fixture.storeDirectory.path + ".away"
        #expect(rename(fixture.storeDirectory.path, away) == 0)
        await #expect(throws: GatewayClientError.status(.remoteUnavailable,
                                                         message: "remote store unavailable: store directory \(fixture.storeDirectory.path) is missing")) {
            try await client.readSectors(read)
        }
        await #expect(throws: GatewayClientError.self) { try await client.stat(key: fixture.key) }
        #expect(rename(away, fixture.storeDirectory.path) == 0)
        #expect(try await client.readSectors(read).extents[0].bytes == fixture.expected(chunk: 0, read.wanted[0]))
        let counters = fixture.server.counters.snapshot()
        #expect(counters.remoteUnavailable >= 2)
        await client.close()
    }

    /// With a long stat lifetime the cached answer stands until the appliance invalidates the object.
    @Test func invalidateMakesTheStoreAskedAgain() async throws {
        let fixture = try ServerFixture(statTTLNs: 3_600_000_000_000)
        let client = try await fixture.client()
        let read = ReadSectorsRequest(key: fixture.key, chunk: 0, extraBudgetBytes: 0, wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 2)])
        let before = try await client.readSectors(read)
        var rewritten = fixture.object
        rewritten[100] ^= 0x5A
        try await Task.sleep(nanoseconds: 5_000_000)
        writeObject(fixture.storeDirectory.path, fixture.key, rewritten)
        #expect(try await client.readSectors(read) == before)  // within the stat lifetime, by design
        try await client.invalidate(key: fixture.key)
        let after = try await client.readSectors(read)
        #expect(after.etag != before.etag)
        #expect(after.extents[0].bytes == Array(rewritten[0..<8192]))
        await client.close()
    }

    @Test func rewrittenObjectIsServedWithItsNewEtag() async throws {
        let fixture = try ServerFixture(statTTLNs: 0)
        let client = try await fixture.client()
        let read = ReadSectorsRequest(key: fixture.key, chunk: 2, extraBudgetBytes: 0, wanted: [SectorExtent(block: 5, firstSector: 3, sectorCount: 20)])
        let before = try await client.readSectors(read)
        let rewritten = objectBytes(fixture.object.count, seed: 99)
        try await Task.sleep(nanoseconds: 5_000_000)
        writeObject(fixture.storeDirectory.path, fixture.key, rewritten)
        let after = try await client.readSectors(read)
        #expect(after.etag != before.etag)
        #expect(after.extents[0].bytes == expectedBytes(rewritten, chunk: 2, run: read.wanted[0].sectors(fixture.units), units: fixture.units))
        await client.close()
    }

    @Test func rangesPastTheEndAreNotSatisfiable() async throws {
        let fixture = try ServerFixture()  // 16 MiB + 5000: chunk 4 holds 2 sectors
        let client = try await fixture.client()
        let lastChunk = ReadSectorsRequest(key: fixture.key, chunk: 4, extraBudgetBytes: 1 << 20, wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 2)])
        let reply = try await client.readSectors(lastChunk)
        #expect(reply.extents.map(\.bytes.count) == [5000])
        await #expect(throws: GatewayClientError.status(.rangeNotSatisfiable,
                                                         message: "wanted[0] (block 0 sector 1 +2) of chunk 4 of dir/object ends past its size 16782216 (2 sectors in this chunk)")) {
            try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: 4, extraBudgetBytes: 0,
                                                            wanted: [SectorExtent(block: 0, firstSector: 1, sectorCount: 2)]))
        }
        await #expect(throws: GatewayClientError.status(.rangeNotSatisfiable, message: "chunk 5 of dir/object starts past its size 16782216")) {
            try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: 5, extraBudgetBytes: 0, wanted: lastChunk.wanted))
        }
        await client.close()
    }

    @Test func badFramesAreAnsweredAndTheConnectionStays() async throws {
        let fixture = try ServerFixture()
        let client = try await fixture.client()
        var body = ByteBuffer()
        body.writeInteger(UInt16(3))
        body.writeString("key")
        body.writeInteger(UInt64(0))
        body.writeInteger(UInt32(0))
        body.writeInteger(UInt16(0))  // no wanted extent
        body.writeInteger(UInt16(0))
        let noWanted = try await client.sendRaw(opcode: GatewayOpcode.readSectors.rawValue, body: Array(body.readableBytesView))
        #expect(noWanted.status == GatewayStatus.badRequest.rawValue)
        #expect(message(noWanted) == "wanted is empty")
        let unknown = try await client.sendRaw(opcode: 0x7F, body: [])
        #expect(unknown.status == GatewayStatus.unknownOpcode.rawValue)
        let version = try await client.sendRaw(version: 2, opcode: GatewayOpcode.hello.rawValue, body: [])
        #expect(version.status == GatewayStatus.unsupportedVersion.rawValue)
        await #expect(throws: GatewayClientError.status(.badRequest, message: "key ../etc/passwd: has an empty, . or .. path component")) {
            try await client.stat(key: "../etc/passwd")
        }
        await #expect(throws: GatewayClientError.invalidRequest("wanted is empty")) {
            try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: 0, extraBudgetBytes: 0, wanted: []))
        }
        #expect(try await client.stat(key: fixture.key).size == UInt64(fixture.object.count))
        // A frame above the request bound is answered, then the server closes the connection.
        let oversized = try await client.sendRaw(opcode: GatewayOpcode.stat.rawValue, body: [UInt8](repeating: 0, count: 70 << 10))
        #expect(oversized.status == GatewayStatus.frameTooLarge.rawValue)
        await #expect(throws: GatewayClientError.connectionClosed) { try await client.stat(key: fixture.key) }
        let other = try await fixture.client()
        #expect(try await other.stat(key: fixture.key).size == UInt64(fixture.object.count))
        await other.close()
    }

    @Test func corruptCacheFileIsNeverServed() async throws {
        let fixture = try ServerFixture(statTTLNs: 60_000_000_000)
        let client = try await fixture.client()
        let read = ReadSectorsRequest(key: fixture.key, chunk: 1, extraBudgetBytes: 0, wanted: [SectorExtent(block: 0, firstSector: 3, sectorCount: 1)])
        _ = try await client.readSectors(read)
        await fixture.server.cache.waitUntilSettled()
        let path = try #require(fixture.server.cache.filePath(key: fixture.key, chunk: 1))
        flipByte(path, at: fileSize(path) - (4 << 20) + 3 * 4096 + 1)  // sector 3 of the data
        let reply = try await client.readSectors(read)
        #expect(reply.extents[0].bytes == fixture.expected(chunk: 1, read.wanted[0]))
        let counters = fixture.server.counters.snapshot()
        #expect(counters.corruptOnDisk == 1)
        #expect(counters.remoteReads == 2)
        await client.close()
    }

    /// Many reads in flight on one connection (a slow store holds the misses): all answered, in order.
    @Test func pipelinedReadsAreAllAnswered() async throws {
        let fixture = try ServerFixture(statTTLNs: 60_000_000_000)
        fixture.store.readDelayNs.store(50_000_000, ordering: .relaxed)
        let client = try await fixture.client()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let chunk = UInt64(index % 4)
                    let extent = SectorExtent(sectors: (index * 5 % 1000)..<(index * 5 % 1000 + 3), units: fixture.units)
                    let reply = try await client.readSectors(ReadSectorsRequest(key: fixture.key, chunk: chunk, extraBudgetBytes: 0, wanted: [extent]))
                    #expect(reply.extents[0].bytes == fixture.expected(chunk: chunk, extent))
                }
            }
            try await group.waitForAll()
        }
        let counters = fixture.server.counters.snapshot()
        #expect(counters.remoteReads == 4)
        #expect(counters.chunkMisses + counters.chunkCoalesced + counters.chunkHits == 200)
        await client.close()
    }

    /// `close` waits for a request in progress (a slow store holds it) before it stops the loops.
    @Test func closeWaitsForRequestsInProgress() async throws {
        let fixture = try ServerFixture(units: smallUnits, objectBytes: 1 << 20, statTTLNs: 60_000_000_000)
        fixture.store.readDelayNs.store(400_000_000, ordering: .relaxed)
        let socket = RawSocket(port: fixture.server.port)
        socket.send(GatewayBackpressureTests.chunkReads(fixture, count: 1))
        #expect(try await eventually { fixture.server.tasks.running == 1 })
        let started = monotonicNs()
        try await offPool { fixture.server.close() }
        #expect(fixture.server.tasks.running == 0)
        #expect(monotonicNs() - started >= 100_000_000)
    }

    func message(_ reply: RawGatewayReply) -> String? {
        var body = reply.body
        guard let length = body.readInteger(as: UInt16.self) else { return nil }
        return body.readString(length: Int(length))
    }
}

/// Consecutive runs of ascending sector indices.
func runs(_ sectors: [Int]) -> [Range<Int>] {
    var result: [Range<Int>] = []
    for sector in sectors {
        if let last = result.last, last.upperBound == sector {
            result[result.count - 1] = last.lowerBound..<(sector + 1)
        } else {
            result.append(sector..<(sector + 1))
        }
    }
    return result
}

/// The held bitmap of a chunk's sector set: one entry per block holding any sector.
func heldBitmap(_ set: SectorSet, units: GatewayUnits) -> [HeldBlock] {
    (0..<units.blocksPerChunk).compactMap { block in
        var mask: UInt16 = 0
        for bit in 0..<units.sectorsPerBlock where set.contains(block * units.sectorsPerBlock + bit) { mask |= 1 << bit }
        return mask == 0 ? nil : HeldBlock(block: UInt16(block), sectorMask: mask)
    }
}
