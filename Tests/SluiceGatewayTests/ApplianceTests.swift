// Path: Tests/SluiceGatewayTests/ApplianceTests.swift — the appliance end to end on 127.0.0.1: the real
// intermediate server over a directory store, the appliance's reads (every alignment, warm, random,
// sequential within a budget), a killed intermediate, a replaced object, concurrent readers, its TCP
// protocol.
import Glibc
import NIOPosix
import Testing
@testable import SluiceGateway

/// A store directory with one object, an intermediate on 127.0.0.1 (restartable on the same port) and
/// helpers to start appliances against it.
final class ApplianceFixture: @unchecked Sendable {  // unchecked: used by one test task at a time
    let storeDirectory = TemporaryDirectory("sluice-app-store")
    let cacheDirectory = TemporaryDirectory("sluice-app-cache")
    let units: GatewayUnits
    var object: [UInt8]
    let key = "dir/object"
    var server: IntermediateServer?
    var port = 0
    let statTTLNs: UInt64

    init(units: GatewayUnits = .standard, objectBytes count: Int, statTTLNs: UInt64 = 0) throws {
        self.units = units
        self.statTTLNs = statTTLNs
        object = objectBytes(count, seed: 21)
        mkdir(storeDirectory.path + "/dir", 0o755)
        writeObject(storeDirectory.path, key, object)
        try startIntermediate()
    }

    deinit { server?.close() }

    func startIntermediate() throws {
        let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: 64 << 20, units: units))
        var configuration = IntermediateConfiguration(units: units)
        configuration.statTTLNs = statTTLNs
        server = try IntermediateServer.bind(host: "127.0.0.1", port: port, store: DirectoryObjectStore(root: storeDirectory.path),
                                             cache: cache, configuration: configuration)
        port = server!.port
    }

    func stopIntermediate() {
        server?.close()
        server = nil
    }

    /// Replaces the object (a new file: a new inode, so a new etag).
    func replace(with bytes: [UInt8]) {
        writeObject(storeDirectory.path, key + ".new", bytes)
        precondition(rename(storeDirectory.path + "/" + key + ".new", storeDirectory.path + "/" + key) == 0, "rename")
        object = bytes
    }

    func appliance(budget: ApplianceBudget = .init(), cacheBytes: Int = 64 << 20, readAheadBytes: Int = 1 << 20,
                   statTTLNs: UInt64 = 0) async throws -> Appliance {
        var configuration = ApplianceConfiguration()
        configuration.cacheBytes = cacheBytes
        configuration.blockBytes = units.blockBytes
        configuration.budget = budget
        configuration.readAheadBytes = readAheadBytes
        configuration.statTTLNs = statTTLNs
        configuration.client.callTimeoutNs = 10_000_000_000
        return try await Appliance.start(intermediateHost: "127.0.0.1", port: port, configuration: configuration)
    }

    func expected(_ offset: UInt64, _ length: Int) -> [UInt8] {
        Array(object[Int(offset)..<(Int(offset) + length)])
    }
}

@Suite(.timeLimit(.minutes(2))) struct ApplianceTests {
    /// Small units (64 KiB chunks, 16 KiB blocks, 4 KiB sectors) so reads cross blocks and chunks often.
    @Test func readsOfEveryAlignment() async throws {
        let size = 5 * (64 << 10) + 777
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: size)
        let appliance = try await fixture.appliance(budget: ApplianceBudget(bytesPerSecond: 0))
        let s = UInt64(size)
        let cases: [(UInt64, Int)] = [
            (0, 1), (0, 4096), (1, 4095), (100, 5000), (4096, 4096), ((16 << 10) - 10, 20), ((64 << 10) - 100, 200),
            (10, 200 << 10), (s - 10, 10), (s - 777, 777), (s - 5000, 5000), (s, 0), (0, 0), (0, size),
            ((64 << 10) * 2 + 3, (64 << 10) * 2 + 5),
        ]
        for pass in 0..<2 {
            for (offset, length) in cases {
                let result = try await appliance.read(key: fixture.key, offset: offset, length: length)
                #expect(result.bytes == fixture.expected(offset, length), "pass \(pass): \(offset)+\(length)")
                #expect(result.size == s)
            }
        }
        await #expect(throws: ApplianceError.rangeNotSatisfiable(key: fixture.key, offset: s - 10, length: 11, size: s)) {
            try await appliance.read(key: fixture.key, offset: s - 10, length: 11)
        }
        await #expect(throws: ApplianceError.rangeNotSatisfiable(key: fixture.key, offset: s + 1, length: 0, size: s)) {
            try await appliance.read(key: fixture.key, offset: s + 1, length: 0)
        }
        await #expect(throws: ApplianceError.self) { try await appliance.read(key: "dir/missing", offset: 0, length: 1) }
        let counters = appliance.counters.snapshot()
        #expect(counters.lastHopPredictedBytes + counters.lastHopReadAheadBytes == 0)
        appliance.cache.checkInvariants()
        await appliance.close()
    }

    @Test func warmReadsNeedNoIntermediate() async throws {
        let fixture = try ApplianceFixture(objectBytes: 8 << 20)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        let ranges: [(UInt64, Int)] = [(0, 100_000), (5_000_000, 300_000), ((4 << 20) - 10, 20)]
        for (offset, length) in ranges { _ = try await appliance.read(key: fixture.key, offset: offset, length: length) }
        let cold = appliance.counters.snapshot()
        let intermediateCold = fixture.server!.counters.snapshot().requests
        fixture.stopIntermediate()
        for _ in 0..<3 {
            for (offset, length) in ranges {
                let result = try await appliance.read(key: fixture.key, offset: offset, length: length)
                #expect(result.bytes == fixture.expected(offset, length))
            }
        }
        let warm = appliance.counters.snapshot()
        #expect(warm.fetches == cold.fetches && warm.missSectors == cold.missSectors && warm.stats == cold.stats)
        #expect(warm.hitSectors > cold.hitSectors)
        print("warm reads: \(warm.reads - cold.reads) reads, 0 fetches, intermediate requests \(intermediateCold) before and no server after")
        await appliance.close()
    }

    /// The cache-hit path against `pread` of the same bytes from the store's file (debug build: a rough
    /// number, printed; the benchmark belongs to a release build).
    @Test func hitPathThroughput() async throws {
        let fixture = try ApplianceFixture(objectBytes: 8 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(budget: ApplianceBudget(bytesPerSecond: 0), statTTLNs: 60_000_000_000)
        _ = try await appliance.read(key: fixture.key, offset: 0, length: 8 << 20)
        let clock = ContinuousClock()
        let rounds = 64
        var started = clock.now
        for round in 0..<rounds {
            let result = try await appliance.read(key: fixture.key, offset: UInt64(round % 8) << 20, length: 1 << 20)
            #expect(result.bytes.count == 1 << 20)
        }
        let cacheSeconds = (clock.now - started) / .seconds(1)
        let reused = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { reused.deallocate() }
        started = clock.now
        for round in 0..<rounds {
            _ = try await appliance.read(key: fixture.key, offset: UInt64(round % 8) << 20, into: reused)
        }
        let intoSeconds = (clock.now - started) / .seconds(1)
        #expect(Array(UnsafeRawBufferPointer(reused)) == fixture.expected(UInt64((rounds - 1) % 8) << 20, 1 << 20))
        let fd = open(fixture.storeDirectory.path + "/" + fixture.key, O_RDONLY)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        started = clock.now
        for round in 0..<rounds {
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 1 << 20, off_t((round % 8) << 20)) }
            #expect(count == 1 << 20)
        }
        let preadSeconds = (clock.now - started) / .seconds(1)
        close(fd)
        let cacheMBs = Double(rounds) / cacheSeconds
        let preadMBs = Double(rounds) / preadSeconds
        let intoMBs = Double(rounds) / intoSeconds
        print("hit path, 1 MiB reads (debug build): appliance cache to a new array \(Int(cacheMBs)) MiB/s, into a reused buffer \(Int(intoMBs)) MiB/s, "
              + "pread \(Int(preadMBs)) MiB/s; ratios \(cacheMBs / preadMBs), \(intoMBs / preadMBs)")
        #expect(appliance.counters.snapshot().fetches > 0)
        await appliance.close()
    }

    @Test func randomSectorReadsKeepTheLastHopNearWhatIsServed() async throws {
        let fixture = try ApplianceFixture(objectBytes: 16 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        var generator = SplitMix(seed: 17)
        let reads = 600
        for _ in 0..<reads {
            let sector = generator.next() % UInt64((16 << 20) / 4096)
            let result = try await appliance.read(key: fixture.key, offset: sector * 4096, length: 4096)
            #expect(result.bytes == fixture.expected(sector * 4096, 4096))
        }
        let counters = appliance.counters.snapshot()
        let intermediate = fixture.server!.counters.snapshot()
        let ratio = Double(counters.lastHopFrameBytes) / Double(counters.bytesServed)
        let measured = Double(intermediate.lastHopFrameBytes) / Double(counters.bytesServed)
        print("random 4 KiB reads of 16 MiB: \(reads) reads, served \(counters.bytesServed), last-hop frames \(counters.lastHopFrameBytes) "
              + "(intermediate sent \(intermediate.lastHopFrameBytes) incl. hello/stat), ratio \(ratio) (\(measured)), \(counters), intermediate \(intermediate)")
        // The intermediate's count adds its hello and stat replies (a few dozen bytes).
        #expect(counters.lastHopFrameBytes <= intermediate.lastHopFrameBytes && intermediate.lastHopFrameBytes - counters.lastHopFrameBytes < 200)
        #expect(ratio <= 1.25)
        #expect(measured <= 1.25)
        await appliance.close()
    }

    @Test func sequentialReadReadsAheadWithinTheRatioBudget() async throws {
        let fixture = try ApplianceFixture(objectBytes: 12 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(budget: ApplianceBudget(ratio: 1.5), statTTLNs: 60_000_000_000)
        let step = 128 << 10
        var offset: UInt64 = 0
        while offset < UInt64(fixture.object.count) {
            let length = min(step, fixture.object.count - Int(offset))
            let result = try await appliance.read(key: fixture.key, offset: offset, length: length)
            #expect(result.bytes == fixture.expected(offset, length))
            offset += UInt64(length)
        }
        try await Task.sleep(for: .milliseconds(200))  // read-aheads in flight settle
        let counters = appliance.counters.snapshot()
        let share = appliance.shares.first!
        print("sequential 12 MiB in 128 KiB reads, ratio budget 1.5: \(counters) share \(share)")
        #expect(counters.lastHopPredictedBytes + counters.lastHopReadAheadBytes > 0)
        #expect(counters.hitSectors > counters.missSectors)
        #expect(Double(share.requestedBytes + share.predictedBytes) <= 1.5 * Double(share.servedBytes) + Double(step))
        await appliance.close()
    }

    @Test func sequentialReadWithinTheRateBudget() async throws {
        let fixture = try ApplianceFixture(objectBytes: 8 << 20, statTTLNs: 60_000_000_000)
        var budget = ApplianceBudget(bytesPerSecond: 1 << 20)
        budget.burstBytes = 512 << 10
        let appliance = try await fixture.appliance(budget: budget, statTTLNs: 60_000_000_000)
        let clock = ContinuousClock()
        let started = clock.now
        var offset: UInt64 = 0
        while offset < UInt64(fixture.object.count) {
            _ = try await appliance.read(key: fixture.key, offset: offset, length: 64 << 10)
            offset += 64 << 10
        }
        try await Task.sleep(for: .milliseconds(100))
        let elapsed = (clock.now - started) / .seconds(1)
        let counters = appliance.counters.snapshot()
        let predicted = counters.lastHopPredictedBytes + counters.lastHopReadAheadBytes
        let allowed = 512.0 * 1024 + elapsed * 1_048_576
        print("sequential 8 MiB, rate budget 1 MiB/s burst 512 KiB: predicted \(predicted) in \(elapsed) s (allowed \(allowed))")
        #expect(predicted > 0)
        #expect(Double(predicted) <= allowed + 64 * 1024)
        await appliance.close()
    }

    @Test func zeroBudgetMeansNoPredictedBytes() async throws {
        let fixture = try ApplianceFixture(objectBytes: 6 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(budget: ApplianceBudget(bytesPerSecond: 0), statTTLNs: 60_000_000_000)
        var offset: UInt64 = 0
        while offset < UInt64(fixture.object.count) {
            let result = try await appliance.read(key: fixture.key, offset: offset, length: 64 << 10)
            #expect(result.bytes == fixture.expected(offset, 64 << 10))
            offset += 64 << 10
        }
        let counters = appliance.counters.snapshot()
        let intermediate = fixture.server!.counters.snapshot()
        #expect(counters.lastHopPredictedBytes == 0 && counters.lastHopReadAheadBytes == 0)
        #expect(intermediate.lastHopSequentialBytes == 0 && intermediate.lastHopStrideBytes == 0)
        #expect(counters.lastHopRequestedBytes == UInt64(fixture.object.count))
        await appliance.close()
    }

    @Test func killedIntermediateIsAClearErrorAndRecovers() async throws {
        let fixture = try ApplianceFixture(objectBytes: 1 << 20)
        let appliance = try await fixture.appliance()
        _ = try await appliance.read(key: fixture.key, offset: 0, length: 4096)
        fixture.stopIntermediate()
        do {
            _ = try await appliance.read(key: fixture.key, offset: 500_000, length: 4096)
            Issue.record("a read with the intermediate down succeeded")
        } catch {
            guard case .intermediateUnavailable = error else { Issue.record("unexpected \(error)"); return }
            print("intermediate down: \(error)")
        }
        try fixture.startIntermediate()
        let result = try await appliance.read(key: fixture.key, offset: 500_000, length: 4096)
        #expect(result.bytes == fixture.expected(500_000, 4096))
        #expect(appliance.counters.snapshot().intermediateErrors >= 1)
        await appliance.close()
    }

    /// A read that fails (the intermediate down, its stat still fresh) is not counted as served to
    /// its share; the next one that succeeds is.
    @Test func failedReadsAreNotServedBytes() async throws {
        let fixture = try ApplianceFixture(objectBytes: 1 << 20)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        _ = try await appliance.read(key: fixture.key, offset: 0, length: 4096, share: "s")
        #expect(appliance.shares.first { $0.name == "s" }?.servedBytes == 4096)
        fixture.stopIntermediate()
        await #expect(throws: ApplianceError.self) { try await appliance.read(key: fixture.key, offset: 500_000, length: 8192, share: "s") }
        #expect(appliance.shares.first { $0.name == "s" }?.servedBytes == 4096)
        try fixture.startIntermediate()
        _ = try await appliance.read(key: fixture.key, offset: 500_000, length: 8192, share: "s")
        #expect(appliance.shares.first { $0.name == "s" }?.servedBytes == 4096 + 8192)
        await appliance.close()
    }

    /// Every insert into the appliance's stat table keeps its bound (the etag-change path did not).
    @Test func statTableInsertsKeepTheBound() {
        var stats: [String: (size: UInt64, etag: String, atNs: UInt64)] = [:]
        for index in 0..<100 {
            Appliance.insertStat("k\(index)", (UInt64(index), "e", 0), into: &stats, entriesMax: 8)
            #expect(stats.count == min(index + 1, 8))
            #expect(stats["k\(index)"]?.size == UInt64(index))
        }
        Appliance.insertStat("k99", (7, "f", 1), into: &stats, entriesMax: 8)  // an existing key evicts nothing
        #expect(stats.count == 8 && stats["k99"]?.etag == "f")
    }

    /// The stat table of a running appliance stays within `statEntriesMax` over many keys.
    @Test func statTableIsBounded() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 64 << 10)
        for index in 0..<6 { writeObject(fixture.storeDirectory.path, "dir/o\(index)", objectBytes(4096, seed: UInt64(index))) }
        var configuration = ApplianceConfiguration()
        configuration.blockBytes = smallUnits.blockBytes
        configuration.statEntriesMax = 2
        configuration.cacheBytes = 16 << 20
        configuration.statTTLNs = 60_000_000_000
        let appliance = try await Appliance.start(intermediateHost: "127.0.0.1", port: fixture.port, configuration: configuration)
        for index in 0..<6 {
            #expect(try await appliance.read(key: "dir/o\(index)", offset: 0, length: 4096).bytes == objectBytes(4096, seed: UInt64(index)))
            #expect(appliance.statEntryCount <= 2)
        }
        await appliance.close()
    }

    @Test func replacedObjectGivesNewBytesNeverAMix() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 256 << 10)
        let appliance = try await fixture.appliance(budget: ApplianceBudget(bytesPerSecond: 0))
        let old = try await appliance.read(key: fixture.key, offset: 0, length: 100 << 10)
        #expect(old.bytes == fixture.expected(0, 100 << 10))
        let replacement = objectBytes(256 << 10, seed: 99)
        fixture.replace(with: replacement)
        // Half of this range is cached under the old etag: every byte must come from the new object.
        let new = try await appliance.read(key: fixture.key, offset: 50 << 10, length: 150 << 10)
        #expect(new.etag != old.etag)
        #expect(new.bytes == Array(replacement[(50 << 10)..<(200 << 10)]))
        let again = try await appliance.read(key: fixture.key, offset: 0, length: 256 << 10)
        #expect(again.bytes == replacement)
        appliance.cache.checkInvariants()
        await appliance.close()
    }

    @Test func concurrentReadersOfOneBlockFetchItOnce() async throws {
        let fixture = try ApplianceFixture(objectBytes: 4 << 20, statTTLNs: 60_000_000_000)
        let appliance = try await fixture.appliance(statTTLNs: 60_000_000_000)
        _ = try await appliance.stat(key: fixture.key)
        let expected = fixture.expected(1 << 20, 64 << 10)
        let results = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for _ in 0..<16 { group.addTask { try await appliance.read(key: fixture.key, offset: 1 << 20, length: 64 << 10).bytes } }
            var all: [[UInt8]] = []
            for try await bytes in group { all.append(bytes) }
            return all
        }
        #expect(results.count == 16 && results.allSatisfy { $0 == expected })
        let counters = appliance.counters.snapshot()
        print("16 concurrent readers of one block: fetches \(counters.fetches), coalesced sectors \(counters.coalescedSectors), hits \(counters.hitSectors)")
        #expect(counters.fetches == 1)
        #expect(counters.lastHopRequestedBytes == 64 << 10)
        await appliance.close()
    }

    @Test func requestsStayWithinTheProtocolBounds() {
        let scattered = (0..<2500).map { ($0 * 2)..<($0 * 2 + 1) }
        let groups = protocolSized(scattered)
        #expect(groups.map(\.count) == [1024, 1024, 452] && Array(groups.joined()) == scattered)
        let long = protocolSized([3..<(3 + 70_000)])
        #expect(long == [[3..<(3 + 65_535), (3 + 65_535)..<(3 + 70_000)]])
        #expect(subtract([0..<10, 20..<30], [5..<25]) == [0..<5, 25..<30])
        #expect(subtract([0..<10], [0..<10]).isEmpty)
    }

    @Test func overTCP() async throws {
        let fixture = try ApplianceFixture(units: smallUnits, objectBytes: 300_000)
        let appliance = try await fixture.appliance()
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance)
        defer { server.close() }
        let client = try await ApplianceClient.connect(host: "127.0.0.1", port: server.port, share: "team-a")
        let stat = try await client.stat(key: fixture.key)
        #expect(stat.size == 300_000)
        let result = try await client.read(key: fixture.key, offset: 12_345, length: 100_000)
        #expect(result.bytes == fixture.expected(12_345, 100_000) && result.etag == stat.etag)
        await #expect(throws: ApplianceClientError.self) { try await client.read(key: fixture.key, offset: 299_999, length: 2) }
        do {
            _ = try await client.read(key: fixture.key, offset: 299_999, length: 2)
        } catch {
            guard case .status(.rangeNotSatisfiable, _) = error else { Issue.record("unexpected \(error)"); return }
        }
        do {
            _ = try await client.read(key: "dir/none", offset: 0, length: 2)
        } catch {
            guard case .status(.notFound, _) = error else { Issue.record("unexpected \(error)"); return }
        }
        // Pipelined reads on one connection.
        let parallel = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<8 {
                group.addTask {
                    let offset = UInt64(index * 30_000)
                    return try await client.read(key: fixture.key, offset: offset, length: 20_000).bytes == fixture.expected(offset, 20_000)
                }
            }
            var all = true
            for try await ok in group { all = all && ok }
            return all
        }
        #expect(parallel)
        let counters = try await client.counters()
        #expect(counters.first { $0.0 == "reads" }!.1 >= 10)
        #expect(counters.first { $0.0 == "share_team-a_served_bytes" }!.1 >= 100_000)
        #expect(appliance.shares.map(\.name) == ["team-a"])
        await client.close()
        await appliance.close()
    }
}
