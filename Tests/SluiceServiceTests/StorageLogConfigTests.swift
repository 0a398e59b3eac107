// Path: Tests/SluiceServiceTests/StorageLogConfigTests.swift — `storage.log`: embedded by default, etcd
// with every key, and each bad key an error naming the key and its line.
import SluiceReplication
import Testing

@testable import SluiceService

@Suite struct StorageLogConfigTests {
    private func load(_ yaml: String) throws(ConfigError) -> ServiceConfiguration {
        try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
    }

    /// A storage section with `log` lines (each indented under `log:`) starting at line 4.
    private func yaml(_ logLines: [String]) -> String {
        "storage:\n  data: /var/tmp/x\n  log:\n" + logLines.map { "    " + $0 + "\n" }.joined()
    }

    private func failure(_ logLines: [String]) -> (key: String?, line: Int, text: String)? {
        do {
            _ = try load(yaml(logLines))
            return nil
        } catch {
            let line: Int
            switch error {
            case .invalid(_, let at, _), .outOfRange(_, let at, _, _), .unknownKey(_, let at, _): line = at
            default: line = -1
            }
            return (error.key, line, "\(error)")
        }
    }

    @Test func embeddedIsTheDefault() throws {
        #expect(try load("storage:\n  data: d\n").storage?.log == .embedded)
        #expect(try load(yaml(["kind: embedded"])).storage?.log == .embedded)
    }

    @Test func etcdWithEveryKey() throws {
        let configuration = try load(yaml([
            "kind: etcd", "endpoints: [http://127.0.0.1:2379, 127.0.0.2:2380]", "prefix: a/b",
            "call_timeout_ms: 700", "proposal_timeout_ms: 1500", "batch_records_max: 64", "batch_bytes_max: 65536",
            "batch_wait_us: 200",
        ]))
        guard case .etcd(let settings)? = configuration.storage?.log else {
            Issue.record("not an etcd log")
            return
        }
        #expect(settings.endpoints == ["http://127.0.0.1:2379", "http://127.0.0.2:2380"])
        #expect(settings.prefix == "a/b" && settings.callTimeoutMs == 700 && settings.proposalTimeoutMs == 1500)
        #expect(settings.batchRecordsMax == 64 && settings.batchBytesMax == 65536 && settings.batchWaitUs == 200)
        let log = settings.configuration
        #expect(log.client.endpoints == settings.endpoints && log.client.callTimeoutMs == 700 && log.prefix == "a/b")
        #expect(log.proposalTimeoutMs == 1500 && log.batchRecordsMax == 64 && log.batchBytesMax == 65536 && log.batchWaitUs == 200)
        #expect(throws: Never.self) { try log.validate() }
        // Defaults: the prefix `sluice serve --log` uses, and EtcdLogConfiguration's own.
        guard case .etcd(let plain)? = try load(yaml(["kind: etcd", "endpoints: [127.0.0.1:2379]"])).storage?.log else {
            Issue.record("not an etcd log")
            return
        }
        #expect(plain.prefix == "sluice/storage" && plain.proposalTimeoutMs == 5_000 && plain.batchRecordsMax == 256)
    }

    /// Each mistake names its key and line (the `log:` keys sit on lines 4 onward).
    @Test func badKeysAreNamedWithTheirLine() throws {
        let etcd = "kind: etcd"
        let cases: [([String], String, Int)] = [
            (["kind: raft"], "storage.log.kind", 4),
            (["kind: embedded", "endpoints: [a:1]"], "storage.log.endpoints", 5),
            ([etcd], "storage.log.endpoints", -1),
            ([etcd, "endpoints: []"], "storage.log.endpoints", 5),
            ([etcd, "endpoints: [nohost]"], "storage.log.endpoints[0]", 5),
            ([etcd, "endpoints: [http://h:1/x]"], "storage.log.endpoints[0]", 5),
            ([etcd, "endpoints: [h:99999]"], "storage.log.endpoints[0]", 5),
            ([etcd, "endpoints: [h:1]", "prefix: a/"], "storage.log.prefix", 6),
            ([etcd, "endpoints: [h:1]", "call_timeout_ms: 0"], "storage.log.call_timeout_ms", 6),
            ([etcd, "endpoints: [h:1]", "proposal_timeout_ms: 5"], "storage.log.proposal_timeout_ms", 6),
            ([etcd, "endpoints: [h:1]", "batch_records_max: 5000"], "storage.log.batch_records_max", 6),
            ([etcd, "endpoints: [h:1]", "batch_bytes_max: 10"], "storage.log.batch_bytes_max", 6),
            ([etcd, "endpoints: [h:1]", "batch_wait_us: -1"], "storage.log.batch_wait_us", 6),
            ([etcd, "endpoints: [h:1]", "batch_wait_uss: 1"], "storage.log.batch_wait_uss", 6),
        ]
        for (lines, key, line) in cases {
            let found = try #require(failure(lines), "\(lines) was accepted")
            #expect(found.key == key, "\(lines): \(found.text)")
            if line > 0 { #expect(found.line == line, "\(lines): \(found.text)") }
        }
    }
}
