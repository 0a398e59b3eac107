// Path: Tests/SluiceGatewayTests/ApplianceWriteCLITests.swift — `sluice gateway write` and serve-appliance's
// `--journal` as child processes: a write flushed to the store, then the appliance killed (-9) with one
// object closed but not uploaded and one write open, restarted: the closed object is uploaded, the open
// write is discarded and said so; SIGTERM flushes.
import Glibc
import SluiceTestSupport
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(2))) struct ApplianceWriteCLITests {
    func port(of line: String) -> Int? {
        line.split(separator: " ").dropFirst(2).first.flatMap { Int($0.split(separator: ":").last!) }
    }

    func startIntermediate(_ binary: String, store: String, cache: String) throws -> (ChildProcess, Int) {
        let child = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:" + store,
                                      "--cache-dir", cache, "--cache-bytes", "8mb", "--chunk-bytes", "256kb", "--stat-ttl-ms", "0"])
        let line = try #require(child.readLine(timeoutMs: 20_000), "stderr: \(child.stderrText)")
        return (child, try #require(port(of: line)))
    }

    func startAppliance(_ binary: String, intermediatePort: Int, journal: String) throws -> (ChildProcess, Int, String) {
        let child = try ChildProcess([binary, "gateway", "serve-appliance", "--listen", "127.0.0.1:0", "--intermediate", "127.0.0.1:\(intermediatePort)",
                                      "--cache-bytes", "16mb", "--stat-ttl-ms", "0", "--journal", journal, "--journal-bytes", "64mb",
                                      "--shutdown-flush-ms", "10000"])
        let line = try #require(child.readLine(timeoutMs: 20_000), "stderr: \(child.stderrText)")
        let journalLine = try #require(child.readLine(timeoutMs: 20_000), "stderr: \(child.stderrText)")
        return (child, try #require(port(of: line)), journalLine)
    }

    @Test func writeKillRestartAndFlush() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let store = TemporaryDirectory("sluice-wcli-store")
        let cache = TemporaryDirectory("sluice-wcli-cache")
        let work = TemporaryDirectory("sluice-wcli-work")
        let journal = work.path + "/journal"
        var (intermediate, intermediatePort) = try startIntermediate(binary, store: store.path, cache: cache.path + "/c")
        var (appliance, appliancePort, journalLine) = try startAppliance(binary, intermediatePort: intermediatePort, journal: journal)
        #expect(journalLine == "journal: 0 sealed object(s) to upload, 0 unclosed write(s) discarded")

        let first = objectBytes((2 << 20) + 5, seed: 31)
        writeObject(work.path, "first", first)
        let written = try runCommand([binary, "gateway", "write", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "first",
                                      "--in", work.path + "/first", "--flush"], timeoutMs: 20_000)
        #expect(written.status == 0, "stderr: \(written.stderr)")
        #expect(written.stderr.contains("wrote \(first.count) bytes as first (in the remote store)"), "stderr: \(written.stderr)")
        let stored = try ChildProcessFile.read(store.path + "/first")
        #expect(stored == first)

        // The store's side down: the next object is acknowledged (journal) but cannot be uploaded.
        intermediate.signal(SIGTERM)
        #expect(intermediate.wait(timeoutMs: 10_000) == 0)
        let second = objectBytes(700_000, seed: 32)
        writeObject(work.path, "second", second)
        let acknowledged = try runCommand([binary, "gateway", "write", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "second",
                                           "--in", work.path + "/second"], timeoutMs: 20_000)
        #expect(acknowledged.status == 0, "stderr: \(acknowledged.stderr)")
        let client = try await ApplianceClient.connect(host: "127.0.0.1", port: appliancePort)
        let open = try await client.beginWrite(key: "unclosed")
        #expect(try await client.append(writeID: open, offset: 0, bytes: [1, 2, 3]) == 3)
        appliance.signal(SIGKILL)
        _ = appliance.wait(timeoutMs: 10_000)
        await client.close()

        (intermediate, intermediatePort) = try startIntermediate(binary, store: store.path, cache: cache.path + "/c")
        (appliance, appliancePort, journalLine) = try startAppliance(binary, intermediatePort: intermediatePort, journal: journal)
        #expect(journalLine == "journal: 1 sealed object(s) to upload, 1 unclosed write(s) discarded")
        let again = try await ApplianceClient.connect(host: "127.0.0.1", port: appliancePort)
        try await again.flush(timeoutMs: 20_000)
        #expect(try ChildProcessFile.read(store.path + "/second") == second)
        #expect(fileSize(store.path + "/unclosed") == -1)
        await again.close()

        appliance.signal(SIGTERM)
        let rest = appliance.remainingLines(timeoutMs: 10_000)
        #expect(appliance.wait(timeoutMs: 10_000) == 0)
        #expect(rest.contains("journal: every closed object is in the remote store"), "\(rest)")
        let counters = try #require(rest.first { $0.hasPrefix("counters ") })
        #expect(counters.contains("uploads_done 1") && counters.contains("journal_discarded_open 1"), "\(counters)")
        intermediate.signal(SIGTERM)
        #expect(intermediate.wait(timeoutMs: 10_000) == 0)
    }
}

/// Whole files (the store's objects) for comparisons.
enum ChildProcessFile {
    static func read(_ path: String) throws -> [UInt8] {
        let size = fileSize(path)
        guard size >= 0 else { return [] }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: size)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) }
        return got == size ? bytes : []
    }
}
