// Path: Tests/SluiceGatewayTests/IntermediateS3Tests.swift — the intermediate device over a real S3 server
// (`rclone serve s3` on 127.0.0.1, Tests/SluiceS3TestSupport) through S3RemoteStore: sectors served and
// verified, read-ahead, the store killed (a clear status) and back.
import SluiceS3TestSupport
import Testing
@testable import SluiceGateway

@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: s3TestsEnabled, Comment(rawValue: rcloneMissingReason)))
struct IntermediateS3Tests {
    @Test func intermediateServesAnS3Store() async throws {
        try await withRcloneS3Server { rclone in
            let s3Configuration = S3Configuration(endpoint: rclone.endpoint, accessKey: RcloneS3Server.accessKey,
                                                  secretKey: RcloneS3Server.secretKey, callTimeoutMs: 10_000)
            try await S3Client.with(s3Configuration) { s3 in try await serve(through: s3, rclone) }
        }
    }

    func serve(through s3: S3Client, _ rclone: RcloneS3Server) async throws {
        try await s3.createBucket("gateway")
        let object = objectBytes((9 << 20) + 777, seed: 21)  // chunks of 4 MiB, 4 MiB, 1 MiB + 777 bytes
        _ = try await s3.putObject(bucket: "gateway", key: "dir/object", bytes: object)
        let cacheDirectory = TemporaryDirectory("sluice-gw-cache")
        let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: 64 << 20))
        var configuration = IntermediateConfiguration(units: .standard)
        configuration.statTTLNs = 0  // every request asks the store: a killed store shows at once
        let server = try IntermediateServer.bind(host: "127.0.0.1", port: 0, store: S3RemoteStore(client: s3, bucket: "gateway"),
                                                 cache: cache, configuration: configuration)
        defer { server.close() }
        let client = try await GatewayClient.connect(host: "127.0.0.1", port: server.port)
        let units = GatewayUnits.standard

        #expect(try await client.stat(key: "dir/object").size == UInt64(object.count))
        await #expect(throws: GatewayClientError.self) { try await client.stat(key: "dir/missing") }
        for (chunk, sector) in [(0, 0), (1, 517), (2, 256)] as [(UInt64, Int)] {
            let extent = SectorExtent(sectors: sector..<(sector + 1), units: units)
            let reply = try await client.readSectors(ReadSectorsRequest(key: "dir/object", chunk: chunk, extraBudgetBytes: 0, wanted: [extent]))
            #expect(reply.extents[0].bytes == expectedBytes(object, chunk: chunk, run: extent.sectors(units), units: units))
        }
        // Two contiguous reads: the second gets read-ahead within its budget, up to the object's end.
        for block in [0, 1] {
            let extent = SectorExtent(block: UInt16(block), firstSector: 0, sectorCount: 16)
            let reply = try await client.readSectors(ReadSectorsRequest(key: "dir/object", chunk: 2, extraBudgetBytes: 1 << 20, wanted: [extent]))
            for payload in reply.extents {
                #expect(payload.bytes == expectedBytes(object, chunk: 2, run: payload.extent.sectors(units), units: units))
            }
            if block == 1 {
                #expect(reply.extents.dropFirst().allSatisfy { $0.reason == .sequential })
                #expect(reply.extents.dropFirst().reduce(0) { $0 + $1.bytes.count } == (1 << 20) + 777 - 2 * (64 << 10))
            }
        }
        var counters = server.counters.snapshot()
        #expect(counters.remoteReads == 3)
        #expect(counters.bytesFromRemote == UInt64(object.count))

        rclone.kill()
        let read = ReadSectorsRequest(key: "dir/object", chunk: 0, extraBudgetBytes: 0, wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1)])
        do throws(GatewayClientError) {
            _ = try await client.readSectors(read)
            Issue.record("a read served while the store is down")
        } catch {
            guard case .status(.remoteUnavailable, _) = error else {
                Issue.record("expected remoteUnavailable, got \(error)")
                return
            }
        }
        try rclone.restart()
        #expect(try await client.readSectors(read).extents[0].bytes == Array(object[0..<4096]))
        counters = server.counters.snapshot()
        #expect(counters.remoteUnavailable >= 1)
        await client.close()
    }
}
