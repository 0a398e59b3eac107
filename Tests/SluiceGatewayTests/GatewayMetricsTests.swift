// Path: Tests/SluiceGatewayTests/GatewayMetricsTests.swift — the gateway's Prometheus pages: the text
// rendered from snapshots (names, labels, escaping), scraped over 127.0.0.1 from `serve-appliance` and
// `serve-intermediate --metrics`; and `serve-intermediate --store s3:` against rclone, its flag errors.
import Glibc
import SluiceS3TestSupport
import SluiceTestSupport
import Testing
@testable import SluiceGateway

/// `GET path` on 127.0.0.1:`port` with blocking sockets; the status line and the body.
func httpGet(port: Int, path: String = "/metrics") throws -> (status: String, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw GatewayLabError(description: "socket: errno \(errno)") }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw GatewayLabError(description: "connect 127.0.0.1:\(port): errno \(errno)") }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { throw GatewayLabError(description: "send: errno \(errno)") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while bytes.count < 16 << 20 {
        let count = recv(fd, &chunk, chunk.count, 0)
        guard count > 0 else { break }
        bytes += chunk[0..<count]
    }
    guard let split = (0..<max(bytes.count - 3, 0)).first(where: { bytes[$0..<($0 + 4)].elementsEqual([13, 10, 13, 10]) }) else {
        throw GatewayLabError(description: "no HTTP header end in \(String(decoding: bytes.prefix(200), as: UTF8.self))")
    }
    let status = String(decoding: bytes[..<split].prefix { $0 != 13 }, as: UTF8.self)
    return (status, String(decoding: bytes[(split + 4)...], as: UTF8.self))
}

/// The value of the sample `series` (`name` or `name{labels}` exactly as rendered) on a page.
func sample(_ page: String, _ series: String) -> Double? {
    for line in page.split(separator: "\n") where !line.hasPrefix("#") {
        guard line.hasPrefix(series + " ") else { continue }
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

/// The port of a `... on HOST:PORT ...` line (the third word).
func portOfLine(_ line: String) -> Int? {
    line.split(separator: " ").dropFirst(2).first.flatMap { Int($0.split(separator: ":").last!) }
}

@Suite(.timeLimit(.minutes(2))) struct GatewayMetricsTests {
    @Test func appliancePageNamesEveryTierAndShare() {
        // Built from a fresh snapshot, field by field: the snapshot grows (write counters) without breaking this.
        var counters = ApplianceCounters().snapshot()
        counters.reads = 10
        counters.readErrors = 1
        counters.hitSectors = 30
        counters.missSectors = 12
        counters.bytesServed = 40_960
        counters.lastHopRequestedBytes = 49_152
        counters.lastHopPredictedBytes = 8_192
        counters.lastHopReadAheadBytes = 4_096
        counters.lastHopFrameBytes = 51_200
        counters.corruptSectorsRefused = 3
        counters.intermediateErrors = 4
        let cache = BlockCacheStats(blocks: 7, capacityBlocks: 4096, objects: 2, evictions: 9, dropped: 1)
        let shares = [ShareSnapshot(name: "a\"b\\c\nd", servedBytes: 100, requestedBytes: 80, predictedBytes: 40, grantedBytes: 50, refusedGrants: 2)]
        let page = GatewayMetrics.appliance(counters, cache: cache, shares: shares)
        #expect(sample(page, "sluice_gateway_appliance_cache_hit_sectors_total") == 30)
        #expect(sample(page, "sluice_gateway_appliance_cache_miss_sectors_total") == 12)
        #expect(sample(page, "sluice_gateway_last_hop_payload_bytes_total{kind=\"predicted\"}") == 8_192)
        #expect(sample(page, "sluice_gateway_last_hop_frame_bytes_total") == 51_200)
        #expect(sample(page, "sluice_gateway_read_amplification") == 1.25)
        #expect(sample(page, "sluice_gateway_corrupt_sectors_total{where=\"wire\"}") == 3)
        #expect(sample(page, "sluice_gateway_appliance_intermediate_errors_total") == 4)
        let share = "share=\"a\\\"b\\\\c\\nd\""
        #expect(sample(page, "sluice_gateway_share_served_bytes_total{\(share)}") == 100)
        #expect(sample(page, "sluice_gateway_share_last_hop_bytes_total{kind=\"predicted\",\(share)}") == 40)
        #expect(sample(page, "sluice_gateway_share_budget_granted_bytes_total{\(share)}") == 50)
        #expect(sample(page, "sluice_gateway_share_fetched_over_served_ratio{\(share)}") == 1.2)
        // Every sample's family has HELP and TYPE lines before it, once.
        var declared = Set<String>()
        for line in page.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                #expect(declared.insert(name).inserted, "\(name) declared twice")
            } else if !line.hasPrefix("#") {
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                #expect(declared.contains(name), "\(name) has no TYPE line")
                #expect(name.hasPrefix("sluice_gateway_"))
            }
        }
    }

    @Test func intermediatePageCountsRemoteAndLastHop() {
        var counters = GatewayCounters().snapshot()
        counters.chunkHits = 5
        counters.chunkMisses = 2
        counters.bytesFromRemote = 8 << 20
        counters.remoteUnavailable = 1
        counters.corruptOnDisk = 1
        counters.lastHopRequestedBytes = 3_000
        counters.lastHopSequentialBytes = 1_000
        let page = GatewayMetrics.intermediate(counters)
        #expect(sample(page, "sluice_gateway_intermediate_cache_hits_total") == 5)
        #expect(sample(page, "sluice_gateway_intermediate_cache_misses_total") == 2)
        #expect(sample(page, "sluice_gateway_remote_bytes_total") == Double(8 << 20))
        #expect(sample(page, "sluice_gateway_remote_failures_total{kind=\"unavailable\"}") == 1)
        #expect(sample(page, "sluice_gateway_corrupt_chunks_total{where=\"disk\"}") == 1)
        #expect(sample(page, "sluice_gateway_last_hop_sent_payload_bytes_total{reason=\"sequential\"}") == 1_000)
        #expect(sample(page, "sluice_gateway_intermediate_predicted_share") == 0.25)
    }

    /// Both servers with `--metrics 127.0.0.1:0`, a read through them, then both pages scraped.
    @Test func serversExportTheirCountersOverHTTP() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let store = TemporaryDirectory("sluice-gm-store")
        let cache = TemporaryDirectory("sluice-gm-cache")
        let object = objectBytes(1 << 20, seed: 31)
        writeObject(store.path, "blob", object)
        let intermediate = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:" + store.path,
                                             "--cache-dir", cache.path + "/c", "--cache-bytes", "8mb", "--chunk-bytes", "256kb",
                                             "--metrics", "127.0.0.1:0"])
        let intermediateLine = try #require(intermediate.readLine(timeoutMs: 20_000), "stderr: \(intermediate.stderrText)")
        let intermediatePort = try #require(portOfLine(intermediateLine))
        let intermediateMetricsLine = try #require(intermediate.readLine(timeoutMs: 5_000))
        #expect(intermediateMetricsLine.hasPrefix("metrics on 127.0.0.1:"))
        let intermediateMetrics = try #require(portOfLine(intermediateMetricsLine))
        let appliance = try ChildProcess([binary, "gateway", "serve-appliance", "--listen", "127.0.0.1:0",
                                          "--intermediate", "127.0.0.1:\(intermediatePort)", "--cache-bytes", "16mb",
                                          "--metrics", "127.0.0.1:0"])
        let applianceLine = try #require(appliance.readLine(timeoutMs: 20_000), "stderr: \(appliance.stderrText)")
        let appliancePort = try #require(portOfLine(applianceLine))
        let applianceMetrics = try #require(appliance.readLine(timeoutMs: 5_000).flatMap(portOfLine))

        let output = TemporaryDirectory("sluice-gm-out")
        let read = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "blob",
                                   "--offset", "4096", "--length", "8192", "--share", "tenant-a", "--out", output.path + "/out"], timeoutMs: 20_000)
        #expect(read.status == 0, "stderr: \(read.stderr)")

        let (applianceStatus, appliancePage) = try httpGet(port: applianceMetrics)
        #expect(applianceStatus.hasPrefix("HTTP/1.1 200"), "\(applianceStatus)")
        #expect(sample(appliancePage, "sluice_gateway_appliance_served_bytes_total") == 8192)
        #expect(sample(appliancePage, "sluice_gateway_appliance_cache_miss_sectors_total") == 2)
        #expect(sample(appliancePage, "sluice_gateway_share_served_bytes_total{share=\"tenant-a\"}") == 8192)
        #expect((sample(appliancePage, "sluice_gateway_last_hop_frame_bytes_total") ?? 0) >= 8192)
        #expect((sample(appliancePage, "sluice_gateway_read_amplification") ?? 0) >= 1)

        let (intermediateStatus, intermediatePage) = try httpGet(port: intermediateMetrics)
        #expect(intermediateStatus.hasPrefix("HTTP/1.1 200"), "\(intermediateStatus)")
        #expect(sample(intermediatePage, "sluice_gateway_intermediate_cache_misses_total") == 1)
        #expect(sample(intermediatePage, "sluice_gateway_remote_bytes_total") == Double(256 << 10))
        #expect(sample(intermediatePage, "sluice_gateway_last_hop_sent_payload_bytes_total{reason=\"requested\"}") == 8192)

        appliance.signal(SIGTERM)
        #expect(appliance.wait(timeoutMs: 10_000) == 0)
        intermediate.signal(SIGTERM)
        #expect(intermediate.wait(timeoutMs: 10_000) == 0)
    }

    @Test func metricsFlagNeedsHostAndPort() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let result = try runCommand([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:/tmp",
                                     "--cache-dir", "/tmp/x", "--cache-bytes", "8mb", "--metrics", "9464"], timeoutMs: 20_000)
        #expect(result.status != 0)
        #expect(result.stderr.contains("--metrics"), "stderr: \(result.stderr)")
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: s3TestsEnabled, Comment(rawValue: rcloneMissingReason)))
struct GatewayS3StoreCLITests {
    /// serve-intermediate --store s3: with key files; an appliance and `gateway read` through it.
    @Test func intermediateReadsAnS3BucketFromTheCLI() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        try await withRcloneS3Server { rclone in
            let object = objectBytes((5 << 20) + 11, seed: 41)
            try await S3Client.with(S3Configuration(endpoint: rclone.endpoint, accessKey: RcloneS3Server.accessKey,
                                                    secretKey: RcloneS3Server.secretKey)) { s3 in
                try await s3.createBucket("cli-bucket")
                _ = try await s3.putObject(bucket: "cli-bucket", key: "dir/obj", bytes: object)
            }
            let files = TemporaryDirectory("sluice-gs3")
            writeObject(files.path, "access", Array(RcloneS3Server.accessKey.utf8) + [10])
            writeObject(files.path, "secret", Array(RcloneS3Server.secretKey.utf8))
            let intermediate = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0",
                                                 "--store", "s3:\(rclone.endpoint)/cli-bucket", "--s3-access-key-file", files.path + "/access",
                                                 "--s3-secret-key-file", files.path + "/secret", "--cache-dir", files.path + "/cache",
                                                 "--cache-bytes", "32mb"])
            let line = try #require(intermediate.readLine(timeoutMs: 20_000), "stderr: \(intermediate.stderrText)")
            let port = try #require(portOfLine(line))
            let appliance = try ChildProcess([binary, "gateway", "serve-appliance", "--listen", "127.0.0.1:0",
                                              "--intermediate", "127.0.0.1:\(port)", "--cache-bytes", "16mb"])
            let applianceLine = try #require(appliance.readLine(timeoutMs: 20_000), "stderr: \(appliance.stderrText)")
            let appliancePort = try #require(portOfLine(applianceLine))
            let out = files.path + "/out"
            let read = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "dir/obj",
                                       "--offset", "\((4 << 20) - 100)", "--length", "5000", "--out", out], timeoutMs: 20_000)
            #expect(read.status == 0, "stderr: \(read.stderr)")
            let fd = open(out, O_RDONLY)
            var bytes = [UInt8](repeating: 0, count: 5000)
            let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            close(fd)
            #expect(count == 5000 && bytes == Array(object[((4 << 20) - 100)..<((4 << 20) + 4900)]))
            let missing = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "dir/none",
                                          "--out", out], timeoutMs: 20_000)
            #expect(missing.status != 0 && missing.stderr.contains("notFound"), "stderr: \(missing.stderr)")
            appliance.signal(SIGTERM)
            #expect(appliance.wait(timeoutMs: 10_000) == 0)
            intermediate.signal(SIGTERM)
            let rest = intermediate.remainingLines(timeoutMs: 10_000)
            #expect(intermediate.wait(timeoutMs: 10_000) == 0, "stderr: \(intermediate.stderrText)")
            let counters = try #require(rest.first { $0.hasPrefix("counters ") })
            #expect((counterValue(counters, "remote_reads") ?? 0) >= 2, "\(counters)")
        }
    }

    @Test(arguments: [
        ("s3:https://127.0.0.1:9/b", "http://"),
        ("s3:http://127.0.0.1:9", "s3:http://HOST:PORT/BUCKET"),
        ("s3:http://127.0.0.1:9/b/k", "s3:http://HOST:PORT/BUCKET"),
        ("ftp:/x", "--store must be"),
    ])
    func badStoresAreRefusedNamingTheForm(store: String, expected: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let result = try runCommand([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", store,
                                     "--cache-dir", "/tmp/sluice-gs3-never", "--cache-bytes", "8mb"], timeoutMs: 20_000)
        #expect(result.status != 0)
        #expect(result.stderr.contains(expected), "stderr: \(result.stderr)")
    }

    @Test func missingCredentialsAreNamed() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let files = TemporaryDirectory("sluice-gs3-cred")
        writeObject(files.path, "empty", [10])
        // A key file that is empty, then one that does not exist.
        let empty = try runCommand([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "s3:http://127.0.0.1:9/bkt",
                                    "--s3-access-key-file", files.path + "/empty", "--s3-secret-key-file", files.path + "/empty",
                                    "--cache-dir", files.path + "/c", "--cache-bytes", "8mb"], timeoutMs: 20_000)
        #expect(empty.status != 0 && empty.stderr.contains("--s3-access-key-file") && empty.stderr.contains("empty"), "stderr: \(empty.stderr)")
        let absent = try runCommand([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "s3:http://127.0.0.1:9/bkt",
                                     "--s3-access-key-file", files.path + "/none", "--s3-secret-key-file", files.path + "/none",
                                     "--cache-dir", files.path + "/c", "--cache-bytes", "8mb"], timeoutMs: 20_000)
        #expect(absent.status != 0 && absent.stderr.contains("cannot read"), "stderr: \(absent.stderr)")
    }
}
