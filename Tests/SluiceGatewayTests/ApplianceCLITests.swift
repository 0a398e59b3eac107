// Path: Tests/SluiceGatewayTests/ApplianceCLITests.swift — `sluice gateway serve-appliance` and `read` as
// child processes in front of `serve-intermediate`: bytes to a file, a clear error past the end, counters.
import Glibc
import SluiceTestSupport
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(2))) struct ApplianceCLITests {
    func port(of line: String) -> Int? {
        line.split(separator: " ").dropFirst(2).first.flatMap { Int($0.split(separator: ":").last!) }
    }

    @Test func serveApplianceAndReadThroughIt() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let store = TemporaryDirectory("sluice-app-store")
        let cache = TemporaryDirectory("sluice-app-cache")
        let output = TemporaryDirectory("sluice-app-out")
        let object = objectBytes((1 << 20) + 123, seed: 8)
        writeObject(store.path, "blob", object)
        let intermediate = try ChildProcess([binary, "gateway", "serve-intermediate", "--listen", "127.0.0.1:0", "--store", "dir:" + store.path,
                                             "--cache-dir", cache.path + "/c", "--cache-bytes", "8mb", "--chunk-bytes", "256kb"])
        let intermediateLine = try #require(intermediate.readLine(timeoutMs: 20_000), "stderr: \(intermediate.stderrText)")
        let intermediatePort = try #require(port(of: intermediateLine))
        let appliance = try ChildProcess([binary, "gateway", "serve-appliance", "--listen", "127.0.0.1:0",
                                          "--intermediate", "127.0.0.1:\(intermediatePort)", "--cache-bytes", "16mb", "--budget-ratio", "1.5"])
        let applianceLine = try #require(appliance.readLine(timeoutMs: 20_000), "stderr: \(appliance.stderrText)")
        #expect(applianceLine.contains("chunk 262144 B, block 65536 B, sector 4096 B"))
        let appliancePort = try #require(port(of: applianceLine))

        let file = output.path + "/out"
        let read = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "blob",
                                   "--offset", "1000", "--length", "300000", "--out", file], timeoutMs: 20_000)
        #expect(read.status == 0, "stderr: \(read.stderr)")
        let fd = open(file, O_RDONLY)
        var bytes = [UInt8](repeating: 0, count: 400_000)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        close(fd)
        #expect(count == 300_000 && Array(bytes[0..<300_000]) == Array(object[1000..<301_000]))

        let whole = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "blob",
                                    "--out", file], timeoutMs: 20_000)
        #expect(whole.status == 0 && fileSize(file) == object.count, "stderr: \(whole.stderr)")

        let past = try runCommand([binary, "gateway", "read", "--appliance", "127.0.0.1:\(appliancePort)", "--key", "blob",
                                   "--offset", "\(object.count - 10)", "--length", "11", "--out", file], timeoutMs: 20_000)
        #expect(past.status != 0)
        #expect(past.stderr.contains("rangeNotSatisfiable"), "stderr: \(past.stderr)")

        appliance.signal(SIGTERM)
        let rest = appliance.remainingLines(timeoutMs: 10_000)
        #expect(appliance.wait(timeoutMs: 10_000) == 0)
        let counters = try #require(rest.first { $0.hasPrefix("counters ") })
        #expect(counters.contains("read_errors 1"), "\(counters)")
        #expect(rest.contains { $0.hasPrefix("share default ") })
        intermediate.signal(SIGTERM)
        #expect(intermediate.wait(timeoutMs: 10_000) == 0)
    }

    @Test(arguments: [
        (["--budget-ratio", "-1"], "--budget-ratio"),
        (["--listen", "nowhere"], "--listen"),
        (["--intermediate", "127.0.0.1:0"], "--intermediate"),
        (["--cache-bytes", "lots"], "--cache-bytes"),
        (["--budget-bytes-per-s", "fast"], "--budget-bytes-per-s"),
    ])
    func badFlagsAreRefusedNamingThem(change: [String], expected: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        var flags = ["--listen": "127.0.0.1:0", "--intermediate": "127.0.0.1:1", "--cache-bytes": "64mb"]
        flags[change[0]] = change[1]
        let arguments = [binary, "gateway", "serve-appliance"] + flags.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
        let result = try runCommand(arguments, timeoutMs: 20_000)
        #expect(result.status != 0)
        #expect(result.stderr.contains(expected), "stderr: \(result.stderr)")
    }

    @Test func applianceWithoutIntermediateSaysSo() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let result = try runCommand([binary, "gateway", "serve-appliance", "--listen", "127.0.0.1:0", "--intermediate", "127.0.0.1:1",
                                     "--cache-bytes", "16mb"], timeoutMs: 20_000)
        #expect(result.status != 0)
        #expect(result.stderr.contains("intermediate unavailable"), "stderr: \(result.stderr)")
    }
}
