// Path: Tests/SluiceGatewayTests/UploadS3Tests.swift — a write through the appliance into a real S3 server
// (`rclone serve s3` on 127.0.0.1): a 12 MiB object goes up as a multipart upload of 5 MiB parts.
import SluiceS3TestSupport
import Testing
@testable import SluiceGateway

@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: s3TestsEnabled, Comment(rawValue: rcloneMissingReason)))
struct UploadS3Tests {
    @Test func multipartUploadThroughTheGateway() async throws {
        try await withRcloneS3Server { rclone in
            let s3Configuration = S3Configuration(endpoint: rclone.endpoint, accessKey: RcloneS3Server.accessKey,
                                                  secretKey: RcloneS3Server.secretKey, callTimeoutMs: 20_000)
            try await S3Client.with(s3Configuration) { s3 in
                try await s3.createBucket("gateway")
                let cacheDirectory = TemporaryDirectory("sluice-up-cache")
                let journalDirectory = TemporaryDirectory("sluice-up-journal")
                let cache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: cacheDirectory.path + "/c", capacityBytes: 64 << 20))
                var configuration = IntermediateConfiguration(units: .standard)
                configuration.statTTLNs = 0
                configuration.upload.partBytes = 5 << 20
                let server = try IntermediateServer.bind(host: "127.0.0.1", port: 0, store: S3RemoteStore(client: s3, bucket: "gateway"),
                                                         cache: cache, configuration: configuration)
                defer { server.close() }
                var applianceConfiguration = ApplianceConfiguration()
                applianceConfiguration.statTTLNs = 0
                applianceConfiguration.journal = ApplianceJournalConfiguration(directory: journalDirectory.path + "/j")
                let appliance = try await Appliance.start(intermediateHost: "127.0.0.1", port: server.port, configuration: applianceConfiguration)
                let object = objectBytes(12 << 20, seed: 12)
                try await write(appliance, "dir/big", object, pieceBytes: 1 << 20)
                try await appliance.flush(timeoutNs: 60_000_000_000)
                let stored = try await s3.getObject(bucket: "gateway", key: "dir/big", responseBytesMax: 16 << 20)
                #expect(stored.bytes == object)
                let counters = server.counters.snapshot()
                #expect(counters.uploadPartsStored == 3 && counters.uploadsCompleted == 1)
                // Read back through the gateway (the intermediate dropped its stat: the new object is served).
                #expect(try await appliance.read(key: "dir/big", offset: (5 << 20) - 100, length: 200).bytes == Array(object[((5 << 20) - 100)..<((5 << 20) + 100)]))
                print("S3 upload: 12 MiB in \(counters.uploadPartsStored) parts; intermediate \(counters)")
                await appliance.close()
            }
        }
    }
}
