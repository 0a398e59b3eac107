// Path: Tests/SluiceServiceTests/ServiceSupport.swift — `sluice run` as a child process with a test
// config: started, waited for ("sluice: ready ..."), scraped, signalled.
import Glibc
import SluiceCore
import SluiceService
import SluicePacketIO
import SluiceTestSupport
import Testing

/// A started `sluice run`, with the endpoints it printed when ready.
final class RunningService {
    let child: ChildProcess
    let metrics: ListenAddress
    let storage: ListenAddress?
    let configPath: String

    /// Writes `yaml` to a temporary file and starts `sluice run --config` on it (plus `extra` flags);
    /// waits up to 60 s for the ready line.
    init(binary: String, yaml: String, extra: [String] = []) throws {
        var template = Array("/tmp/sluice-test-config-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw SpawnError("mkstemp: errno \(errno)") }
        configPath = String(cString: template)
        let bytes = Array(yaml.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw SpawnError("write config: errno \(errno)") }
        close(fd)
        child = try ChildProcess([binary, "run", "--config", configPath] + extra)
        guard let line = child.readLine(timeoutMs: 60_000), line.hasPrefix("sluice: ready ") else {
            throw SpawnError("no ready line; stderr:\n\(child.stderrText)")
        }
        var endpoints: [String: ListenAddress] = [:]
        for field in line.split(separator: " ").dropFirst(2) {
            let parts = field.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let colon = parts[1].lastIndex(of: ":"), let port = Int(parts[1][parts[1].index(after: colon)...]) else { continue }
            endpoints[String(parts[0])] = ListenAddress(host: String(parts[1][..<colon]), port: port)
        }
        guard let metrics = endpoints["metrics"] else { throw SpawnError("no metrics endpoint in '\(line)'") }
        self.metrics = metrics
        self.storage = endpoints["storage"]
    }

    deinit { unlink(configPath) }

    /// Scrapes /metrics and parses it.
    func scrape() throws -> [MetricSample] {
        let response = try HTTPClient.get(host: metrics.host, port: metrics.port, path: "/metrics")
        try #require(response.status == 200, "GET /metrics: \(response.status)")
        return try MetricsText.parse(response.body)
    }

    /// Sends SIGTERM and waits (60 s at most) for the exit; the exit code and the summary lines.
    func terminate() throws -> (status: Int32, lines: [String]) {
        child.signal(SIGTERM)
        guard let status = child.wait(timeoutMs: 60_000) else { throw SpawnError("no exit 60 s after SIGTERM") }
        return (status, child.remainingLines(timeoutMs: 5_000))
    }
}

extension Array where Element == MetricSample {
    /// The value of the sample `name` whose labels include `labels`, or nil.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        first { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }?.value
    }
}

/// Unique scratch paths for one test: a data directory on a disk filesystem (O_DIRECT), an output file.
struct ScratchPaths {
    let dataDirectory: String
    let outputPcap: String

    init(_ name: String) {
        let tag = "\(getpid())-\(name)"
        dataDirectory = "/var/tmp/sluice-service-\(tag)"
        outputPcap = "/tmp/sluice-service-\(tag).pcap"
        remove()
    }

    func remove() {
        _ = try? runCommand(["/bin/rm", "-rf", dataDirectory, outputPcap])
    }
}

let samplePcap = repositoryRoot + "/Tests/Fixtures/sample.pcap"

/// Records in a pcap file.
func pcapRecordCount(_ path: String) throws -> Int {
    var reader = try SluicePacketIO.PcapReader(path: path)
    var count = 0
    while try reader.next() != nil { count += 1 }
    return count
}

/// True under CI (`CI=true`), where a test that cannot run here must fail rather than skip.
let isCI = getenv("CI").map { String(cString: $0) == "true" } ?? false

/// Whether a test needing `count` CPUs should run: when the process may use that many, and always
/// under CI (where `cpusOrRecordIssue` then fails it, saying why), so it never vanishes there.
func runsWithCPUs(_ count: Int) -> Bool { isCI || ((try? CPU.allowedCPUs()) ?? []).count >= count }

/// The CPUs this process may use when there are at least `count`; otherwise nil after recording an
/// issue (the test fails, naming what it lacked).
func cpusOrRecordIssue(_ count: Int, sourceLocation: SourceLocation = #_sourceLocation) -> [Int]? {
    let allowed = (try? CPU.allowedCPUs()) ?? []
    guard allowed.count >= count else {
        Issue.record("needs \(count) CPUs, this process may use \(allowed): under CI=true this fails instead of skipping",
                     sourceLocation: sourceLocation)
        return nil
    }
    return allowed
}
