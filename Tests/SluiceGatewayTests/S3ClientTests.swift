// Path: Tests/SluiceGatewayTests/S3ClientTests.swift — the S3 client against a real `rclone serve s3`
// on 127.0.0.1 (Tests/SluiceS3TestSupport): round trips of binary objects, listings, ranged reads
// (and a server that ignores Range, made by a proxy that drops the header), multipart uploads, a
// wrong secret, a server killed, stopped (SIGSTOP) and restarted. No root needed.
import Crypto
import Foundation
import SluiceS3TestSupport
import Testing
@testable import SluiceGateway

/// Random bytes, 8 at a time (a byte-by-byte loop is slow in debug builds).
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < count {
            var word = generator.next()
            let take = min(8, count - offset)
            withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: take) }
            offset += take
        }
    }
    return bytes
}

func sha256Hex(_ bytes: [UInt8]) -> String { S3Signer.hex(SHA256.hash(data: bytes)) }

/// A client for `endpoint` (the server's own unless given), with `change` applied to its configuration.
func withClient<Result>(_ server: RcloneS3Server, endpoint: String? = nil,
                        _ change: (inout S3Configuration) -> Void = { _ in },
                        _ body: (S3Client) async throws -> Result) async throws -> Result {
    var configuration = S3Configuration(endpoint: endpoint ?? server.endpoint, accessKey: RcloneS3Server.accessKey,
                                        secretKey: RcloneS3Server.secretKey, callTimeoutMs: 10_000)
    change(&configuration)
    return try await S3Client.with(configuration, body)
}

/// The error `body` throws, or a failed expectation when it returns.
func s3Error(_ body: () async throws(S3Error) -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> S3Error? {
    do {
        try await body()
        Issue.record("expected an S3Error", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

@Suite(.serialized, .timeLimit(.minutes(1)), .enabled(if: s3TestsEnabled, Comment(rawValue: rcloneMissingReason)))
struct S3ClientTests {
    @Test func binaryObjectsRoundTrip() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("sluice")
                let keys = ["plain", "dir/sub/file.bin", "we ird/ke+y%=&~(1).bin", "unicode/é€😀", "odd/a?b#c[d]!$'*,;:@"]
                var stored: [String: [UInt8]] = [:]
                for (index, key) in keys.enumerated() {
                    let bytes = randomBytes(1 + index * 100_003)
                    let etag = try await client.putObject(bucket: "sluice", key: key, bytes: bytes)
                    // A single PUT's ETag is the MD5 of the bytes (S3 and rclone alike).
                    #expect(etag == S3Signer.hex(Insecure.MD5.hash(data: bytes)), "\(key)")
                    stored[key] = bytes
                }
                for (key, bytes) in stored {
                    let data = try await client.getObject(bucket: "sluice", key: key)
                    #expect(data.bytes == bytes, "\(key)")
                    #expect(data.answer == .wholeObject)
                    let info = try await client.headObject(bucket: "sluice", key: key)
                    #expect(info.sizeBytes == Int64(bytes.count))
                    #expect(info.etag == data.etag)
                }
                // Overwrite, then delete.
                _ = try await client.putObject(bucket: "sluice", key: "plain", bytes: [0, 255, 0])
                #expect(try await client.getObject(bucket: "sluice", key: "plain").bytes == [0, 255, 0])
                try await client.deleteObject(bucket: "sluice", key: "plain")
                let head = await s3Error { () async throws(S3Error) in _ = try await client.headObject(bucket: "sluice", key: "plain") }
                #expect(head?.isNotFound == true)
                let get = await s3Error { () async throws(S3Error) in _ = try await client.getObject(bucket: "sluice", key: "plain") }
                #expect(get?.code == "NoSuchKey")
                #expect(get?.description.contains("getObject sluice/plain") == true)
                // Deleting what is not there succeeds, as on S3.
                try await client.deleteObject(bucket: "sluice", key: "plain")
                let stats = client.stats
                #expect(stats.failures == 2)
                #expect(stats.bytesSent >= UInt64(stored.values.map(\.count).reduce(0, +)))
            }
        }
    }

    @Test func listingsPageWithPrefixAndContinuation() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("lists")
                let keys = (0..<7).map { "logs/2026 12/part+\($0).log" } + ["other/x", "logs-not-prefix"]
                for key in keys { _ = try await client.putObject(bucket: "lists", key: key, bytes: Array(key.utf8)) }
                var seen: [S3ListEntry] = []
                var token: String?
                var pages = 0
                repeat {
                    let page = try await client.listObjectsV2(bucket: "lists", prefix: "logs/", continuationToken: token, maxKeys: 3)
                    #expect(page.entries.count <= 3)
                    seen += page.entries
                    token = page.nextContinuationToken
                    pages += 1
                } while token != nil && pages < 10
                #expect(pages == 3)
                #expect(seen.map(\.key) == (0..<7).map { "logs/2026 12/part+\($0).log" })
                #expect(seen.allSatisfy { $0.sizeBytes == Int64($0.key.utf8.count) })
                let all = try await client.listObjectsV2(bucket: "lists")
                #expect(Set(all.entries.map(\.key)) == Set(keys))
                #expect(!all.isTruncated)
                let none = try await client.listObjectsV2(bucket: "lists", prefix: "absent/")
                #expect(none.entries.isEmpty)
                let noBucket = await s3Error { () async throws(S3Error) in _ = try await client.listObjectsV2(bucket: "absent") }
                #expect(noBucket?.code == "NoSuchBucket")
                let again = await s3Error { () async throws(S3Error) in try await client.createBucket("lists") }
                #expect(["BucketAlreadyExists", "BucketAlreadyOwnedByYou"].contains(again?.code ?? ""))
            }
        }
    }

    @Test func rangedReadsAtStartMiddleEndAndPastTheEnd() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("ranges")
                let bytes = randomBytes((1 << 20) + 7)
                let size = Int64(bytes.count)
                _ = try await client.putObject(bucket: "ranges", key: "blob", bytes: bytes)
                for (offset, length) in [(Int64(0), Int64(4096)), (500_000, 65_536), (size - 100, 100), (size - 1, 1)] {
                    let data = try await client.getObject(bucket: "ranges", key: "blob",
                                                          range: S3ByteRange(offset: offset, length: length))
                    #expect(data.bytes == Array(bytes[Int(offset)..<Int(offset + length)]))
                    #expect(data.offset == offset)
                    #expect(data.objectSizeBytes == size)
                    #expect(data.answer == .partial || data.answer == .partialWithStatus200)
                }
                // Running past the end: the bytes up to it.
                let tail = try await client.getObject(bucket: "ranges", key: "blob", range: S3ByteRange(offset: size - 10, length: 100))
                #expect(tail.bytes == Array(bytes[(bytes.count - 10)...]))
                // Starting at or past the end: a clear error, with the object's size.
                for offset in [size, size + 1000] {
                    let error = await s3Error { () async throws(S3Error) in
                        _ = try await client.getObject(bucket: "ranges", key: "blob", range: S3ByteRange(offset: offset, length: 10))
                    }
                    #expect(error?.kind == .rangeNotSatisfiable(S3ByteRange(offset: offset, length: 10), objectSizeBytes: nil)
                        || error?.kind == .rangeNotSatisfiable(S3ByteRange(offset: offset, length: 10), objectSizeBytes: size))
                    #expect(error?.status == 416)
                }
                let stats = client.stats
                #expect(stats.rangeRequests == 7)
                #expect(stats.rangeIgnoredByServer == 0)
            }
        }
    }

    /// A server that ignores Range (rclone behind a proxy that deletes the header): the whole object
    /// comes back with 200, is cut to the range and counted; one larger than the bound is refused.
    @Test func rangeIgnoredByServerIsCutAndCounted() async throws {
        try await withRcloneS3Server { server in
            let proxy = try HTTPRelay(upstreamPort: server.port, dropRangeHeaders: true)
            defer { proxy.stop() }
            let bytes = randomBytes(300_000)
            try await withClient(server) { client in
                try await client.createBucket("ignored")
                _ = try await client.putObject(bucket: "ignored", key: "blob", bytes: bytes)
            }
            try await withClient(server, endpoint: proxy.endpoint, { $0.responseBytesMax = 1 << 20 }) { client in
                let data = try await client.getObject(bucket: "ignored", key: "blob", range: S3ByteRange(offset: 1000, length: 4096))
                #expect(data.bytes == Array(bytes[1000..<5096]))
                #expect(data.answer == .rangeIgnored)
                #expect(data.objectSizeBytes == 300_000)
                let past = await s3Error { () async throws(S3Error) in
                    _ = try await client.getObject(bucket: "ignored", key: "blob", range: S3ByteRange(offset: 300_000, length: 1))
                }
                #expect(past?.kind == .rangeNotSatisfiable(S3ByteRange(offset: 300_000, length: 1), objectSizeBytes: 300_000))
                // The same read with a bound below the object's size: refused, not read whole.
                let tooLarge = await s3Error { () async throws(S3Error) in
                    _ = try await client.getObject(bucket: "ignored", key: "blob", range: S3ByteRange(offset: 0, length: 10),
                                                   responseBytesMax: 100_000)
                }
                #expect(tooLarge?.kind == .responseTooLarge(limitBytes: 100_000))
                let stats = client.stats
                #expect(stats.rangeIgnoredByServer == 1)
                #expect(stats.rangeBytesDiscarded == 300_000 - 4096)
                #expect(stats.rangeRequests == 3)
            }
            #expect(proxy.rangeHeadersDropped == 3)
        }
    }

    /// One pool of keep-alive connections: sequential calls share one connection, concurrent ones
    /// open at most `connectionsMax` (counted by a relay in front of rclone).
    @Test func connectionsAreReused() async throws {
        try await withRcloneS3Server { server in
            let relay = try HTTPRelay(upstreamPort: server.port, dropRangeHeaders: false)
            defer { relay.stop() }
            try await withClient(server, endpoint: relay.endpoint, { $0.connectionsMax = 4 }) { client in
                try await client.createBucket("reuse")
                let bytes = randomBytes(10_000)
                _ = try await client.putObject(bucket: "reuse", key: "k", bytes: bytes)
                for index in 0..<50 {
                    let range = S3ByteRange(offset: Int64(index * 100), length: 100)
                    #expect(try await client.getObject(bucket: "reuse", key: "k", range: range).bytes
                        == Array(bytes[(index * 100)..<(index * 100 + 100)]))
                }
                #expect(relay.connectionsAccepted == 1)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<32 {
                        group.addTask {
                            let data = try await client.getObject(bucket: "reuse", key: "k")
                            #expect(data.bytes == bytes)
                        }
                    }
                    try await group.waitForAll()
                }
                #expect(relay.connectionsAccepted <= 4)
                #expect(client.stats.requests == 84)
            }
        }
    }

    @Test func multipartUploadOfSeveralParts() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("multi")
                // Three full 5 MiB parts and a shorter last one.
                let bytes = randomBytes(3 * S3Limits.partSizeMinBytes + 1_500_000)
                let etag = try await client.putObjectMultipart(bucket: "multi", key: "big/object", bytes: bytes,
                                                               partSizeBytes: S3Limits.partSizeMinBytes)
                #expect(etag.hasSuffix("-4"))  // S3's multipart ETag: MD5 of the part MD5s, dash, part count
                let info = try await client.headObject(bucket: "multi", key: "big/object")
                #expect(info.sizeBytes == Int64(bytes.count))
                let data = try await client.getObject(bucket: "multi", key: "big/object", responseBytesMax: 32 << 20)
                #expect(sha256Hex(data.bytes) == sha256Hex(bytes))
                // A non-last part below 5 MiB is refused here, before anything is sent.
                let uploadID = try await client.createMultipartUpload(bucket: "multi", key: "small-parts")
                let first = try await client.uploadPart(bucket: "multi", key: "small-parts", uploadID: uploadID,
                                                        partNumber: 1, bytes: randomBytes(1000))
                let second = try await client.uploadPart(bucket: "multi", key: "small-parts", uploadID: uploadID,
                                                         partNumber: 2, bytes: randomBytes(10))
                let refused = await s3Error { () async throws(S3Error) in
                    _ = try await client.completeMultipartUpload(bucket: "multi", key: "small-parts", uploadID: uploadID,
                                                                 parts: [first, second])
                }
                guard case .invalidArgument? = refused?.kind else {
                    Issue.record("small part not refused: \(String(describing: refused))")
                    return
                }
                // Abandoned: its object never appears; a second abort finds no upload.
                try await client.abortMultipartUpload(bucket: "multi", key: "small-parts", uploadID: uploadID)
                let gone = await s3Error { () async throws(S3Error) in _ = try await client.headObject(bucket: "multi", key: "small-parts") }
                #expect(gone?.isNotFound == true)
                let again = await s3Error { () async throws(S3Error) in
                    try await client.abortMultipartUpload(bucket: "multi", key: "small-parts", uploadID: uploadID)
                }
                #expect(again?.code == "NoSuchUpload")
                let unknown = await s3Error { () async throws(S3Error) in
                    _ = try await client.uploadPart(bucket: "multi", key: "x", uploadID: "no-such-upload", partNumber: 1, bytes: [1])
                }
                #expect(unknown?.code == "NoSuchUpload")
            }
        }
    }

    /// rclone takes parts smaller than S3's 5 MiB: with the bound lowered, 1000- and 10-byte parts complete.
    @Test func rcloneAcceptsPartsBelowFiveMiB() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server, { $0.partSizeMinBytes = 1 }) { client in
                try await client.createBucket("tiny")
                let bytes = randomBytes(4010)
                _ = try await client.putObjectMultipart(bucket: "tiny", key: "parts", bytes: bytes, partSizeBytes: 1000)
                #expect(try await client.getObject(bucket: "tiny", key: "parts").bytes == bytes)
            }
        }
    }

    @Test func wrongCredentialsAreATypedAuthError() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in try await client.createBucket("auth") }
            try await withClient(server, { $0.secretKey = "not-the-secret" }) { client in
                let put = await s3Error { () async throws(S3Error) in _ = try await client.putObject(bucket: "auth", key: "k", bytes: [1]) }
                #expect(put?.isAuthFailure == true)
                #expect(put?.code == "SignatureDoesNotMatch")
                #expect(put?.outcomeUnknown == false)
                // HEAD answers without a body: still an authentication failure.
                let head = await s3Error { () async throws(S3Error) in _ = try await client.headObject(bucket: "auth", key: "k") }
                #expect(head?.isAuthFailure == true)
            }
            try await withClient(server, { $0.accessKey = "unknown-access-key" }) { client in
                let list = await s3Error { () async throws(S3Error) in _ = try await client.listObjectsV2(bucket: "auth") }
                #expect(list?.isAuthFailure == true)
                #expect(list?.code == "InvalidAccessKeyId")
            }
        }
    }

    /// kill -9 with a GET in flight, calls while it is down, and the same client after a restart.
    @Test func serverKilledMidRunThenRestarted() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("crash")
                let bytes = randomBytes(100_000)
                _ = try await client.putObject(bucket: "crash", key: "k", bytes: bytes)
                // The request reaches a stopped server (the kernel takes it), which then dies.
                server.pause()
                let inFlight = Task { () async -> S3Error? in
                    await s3Error { () async throws(S3Error) in _ = try await client.getObject(bucket: "crash", key: "k") }
                }
                try await Task.sleep(for: .milliseconds(300))
                server.kill()
                let lost = await inFlight.value
                guard case .connectionLost? = lost?.kind else {
                    Issue.record("in-flight GET: \(String(describing: lost))")
                    return
                }
                #expect(lost?.outcomeUnknown == false)  // a GET changes nothing
                // Down: refused at connect, nothing sent, a write known not applied.
                let down = await s3Error { () async throws(S3Error) in _ = try await client.putObject(bucket: "crash", key: "k2", bytes: [1]) }
                guard case .connectFailed? = down?.kind else {
                    Issue.record("call to a dead server: \(String(describing: down))")
                    return
                }
                #expect(down?.outcomeUnknown == false)
                #expect(down?.description.contains("putObject crash/k2: cannot connect") == true)
                try server.restart()
                #expect(try await client.getObject(bucket: "crash", key: "k").bytes == bytes)
                _ = try await client.putObject(bucket: "crash", key: "k2", bytes: [1])
            }
        }
    }

    /// A stopped server (SIGSTOP) accepts connections and answers nothing: the deadline ends the call.
    @Test func deadlineHonouredAgainstAStoppedServer() async throws {
        try await withRcloneS3Server { server in
            try await withClient(server) { client in
                try await client.createBucket("stall")
                _ = try await client.putObject(bucket: "stall", key: "k", bytes: [1, 2, 3])
                server.pause()
                defer { server.resume() }
                let clock = ContinuousClock()
                let start = clock.now
                let get = await s3Error { () async throws(S3Error) in _ = try await client.getObject(bucket: "stall", key: "k", timeoutMs: 500) }
                let elapsed = clock.now - start
                #expect(get?.kind == .timedOut(afterMs: 500))
                #expect(get?.outcomeUnknown == false)
                #expect(elapsed >= .milliseconds(450) && elapsed < .milliseconds(1500), "\(elapsed)")
                let put = await s3Error { () async throws(S3Error) in
                    _ = try await client.putObject(bucket: "stall", key: "k-put", bytes: randomBytes(1 << 20), timeoutMs: 300)
                }
                #expect(put?.kind == .timedOut(afterMs: 300))
                #expect(put?.outcomeUnknown == true)  // the PUT may still land
                server.resume()
                #expect(try await client.getObject(bucket: "stall", key: "k", timeoutMs: 5_000).bytes.count == 3)
            }
        }
    }
}
