// Path: Tests/SluiceGatewayTests/IntermediateCLITests.swift — `sluice gateway serve-intermediate` as a
// child process: its start line, a client against it, SIGTERM and its counters; bad flags refused.
import Glibc
import SluiceTestSupport
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(2))) struct IntermediateCLITests {
    @Test func serveIntermediateAnswersAndReportsItsCounters() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let store = TemporaryDirectory("sluice-gw-store")
        let cache = TemporaryDirectory("sluice-gw-cache")
        let object = objectBytes((1 << 20) + 10, seed: 3)
        writeObject(store.path, "blob", object)
        let child = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:" + store.path,
                                      "--cache-dir", cache.path + "/c", "--cache-bytes", "8mb", "--chunk-bytes", "256kb"])
        let line = try #require(child.readLine(timeoutMs: 20_000), "no start line; stderr: \(child.stderrText)")
        #expect(line.contains("chunk 262144 B, block 65536 B, sector 4096 B"))
        #expect(line.contains("cache kept 0 chunks"))
        let port = try #require(line.split(separator: " ").dropFirst(2).first.flatMap { Int($0.split(separator: ":").last!) })
        let client = try await GatewayClient.connect(host: "127.0.0.1", port: port)
        #expect(try await client.stat(key: "blob").size == UInt64(object.count))
        let reply = try await client.readSectors(ReadSectorsRequest(key: "blob", chunk: 4, extraBudgetBytes: 0,
                                                                    wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1)]))
        #expect(reply.extents[0].bytes == Array(object[(1 << 20)...]))
        await client.close()
        child.signal(SIGTERM)
        let rest = child.remainingLines(timeoutMs: 10_000)
        #expect(child.wait(timeoutMs: 10_000) == 0)
        let counters = try #require(rest.first { $0.hasPrefix("counters ") })
        #expect(counters.contains("chunk_misses 1"))
        #expect(counters.contains("last_hop_requested_bytes 10"))

        // Restarted on the same cache directory: the chunk is kept, verified.
        let again = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:" + store.path,
                                      "--cache-dir", cache.path + "/c", "--cache-bytes", "8mb", "--chunk-bytes", "256kb"])
        let second = try #require(again.readLine(timeoutMs: 20_000))
        #expect(second.contains("cache kept 1 chunks"))
        again.signal(SIGTERM)
        #expect(again.wait(timeoutMs: 10_000) == 0)
    }

    @Test(arguments: [
        (["--store", "s3:http://127.0.0.1:9000/bucket"], "s3: needs credential flags"),
        (["--store", "dir:relative"], "absolute path"),
        (["--cache-bytes", "lots"], "--cache-bytes"),
        (["--chunk-bytes", "3mb"], "chunkBytes"),
        (["--block-bytes", "128kb"], "blockBytes"),
        (["--listen", "127.0.0.1"], "--listen"),
        (["--cache-bytes", "1mb"], "capacityBytes"),
    ])
    func badFlagsAreRefusedNamingThem(change: [String], expected: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let cache = TemporaryDirectory("sluice-gw-cache")
        var flags = ["--listen": "127.0.0.1:0", "--store": "dir:/tmp", "--cache-dir": cache.path + "/c", "--cache-bytes": "64mb"]
        flags[change[0]] = change[1]
        let arguments = [binary, "gateway", "serve-intermediate"] + flags.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
        let result = try runCommand(arguments, timeoutMs: 20_000)
        #expect(result.status != 0)
        #expect(result.stderr.contains(expected), "stderr: \(result.stderr)")
    }
}
