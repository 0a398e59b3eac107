import Glibc
import SluicePageStore
import SluiceReplicationTestSupport
import SluiceTestSupport
import Testing

@testable import SluiceStorageServer

/// Opening a data directory: one node per directory (in a process and across processes), its page
/// size recorded and enforced, and the CLI's payload file checks.
@Suite(.serialized) struct DataDirectoryTests {
    static func directory(_ name: String) -> String { "/var/tmp/sluice-datadir-\(getpid())-\(name)" }

    @Test func aSecondNodeInOneProcessIsRefusedWithThePid() throws {
        let directory = Self.directory("inprocess")
        defer { removeDataDirectory(directory) }
        do {
            let first = try openStorageNode(dataDirectory: directory)
            _ = try first.node.write(objectID: 1, pages: [(0, [1], .unconditional)])
            #expect(throws: DataDirectoryError.store(.locked(lockPath: directory + "/pages.lock", holderPID: getpid()))) {
                _ = try openStorageNode(dataDirectory: directory)
            }
            #expect(try first.node.write(objectID: 1, pages: [(0, [2], .unconditional)]) == 2)
        }
        let reopened = try openStorageNode(dataDirectory: directory)
        #expect(try reopened.node.read(objectID: 1, pageIndex: 0).payload.first == 2)
    }

    @Test func pageSizeMismatchIsRefused() throws {
        let directory = Self.directory("pagesize")
        defer { removeDataDirectory(directory) }
        do { _ = try openStorageNode(dataDirectory: directory).node.write(objectID: 1, pages: [(0, [5], .unconditional)]) }
        #expect(throws: DataDirectoryError.store(.format(path: directory + "/pages.format",
                                                         .pageSizeMismatch(recorded: 4096, opened: 8192)))) {
            _ = try openStorageNode(dataDirectory: directory, pageSizeBytes: 8192)
        }
        #expect(try openStorageNode(dataDirectory: directory).node.read(objectID: 1, pageIndex: 0).payload.first == 5)
    }

    /// Two `sluice storage serve` processes on one directory: the second exits 1 naming the first's
    /// pid, and the first keeps serving. Once the first is gone, a new one starts.
    @Test func aSecondServeProcessIsRefused() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        let directory = Self.directory("twoserve")
        defer { removeDataDirectory(directory) }
        let serve = [binary, "storage", "serve", "--data", directory, "--host", "127.0.0.1", "--port", "0"]
        let first = try ChildProcess(serve)
        let line = try #require(first.readLine(timeoutMs: 30_000))
        let port = try #require(line.split(separator: " ").dropFirst(2).first?.split(separator: ":").last.flatMap { Int($0) })
        let second = try ChildProcess(serve)
        #expect(second.wait(timeoutMs: 30_000) == 1)
        #expect(second.stderrText.contains("locked by process \(first.pid)"), "stderr: \(second.stderrText)")
        let client = try StorageClient(host: "127.0.0.1", port: port)
        #expect(try client.write(objectID: 1, pageIndex: 0, payload: [9]) == 1)
        client.close()
        first.signal(SIGKILL)
        _ = first.wait(timeoutMs: 10_000)
        let third = try ChildProcess(serve)
        #expect(third.readLine(timeoutMs: 30_000)?.hasPrefix("listening on") == true, "stderr: \(third.stderrText)")
    }

    /// A directory as `storage put`'s payload is an error (it once wrote an empty page).
    @Test func putOfADirectoryIsRefused() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        try await withServedNode(.embedded) { served in
            let result = try runCommand([binary, "storage", "put", "--port", "\(served.server.port)", "3", "0", "/var/tmp"],
                                        timeoutMs: 30_000)
            #expect(result.status == 1)
            #expect(result.stderr.contains("/var/tmp is a directory"), "stderr: \(result.stderr)")
            #expect(try served.client().read(objectID: 3, pageIndex: 0).pageOSN == 0, "nothing was written")
        }
    }
}
