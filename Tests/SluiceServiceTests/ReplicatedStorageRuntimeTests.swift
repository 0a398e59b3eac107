// Path: Tests/SluiceServiceTests/ReplicatedStorageRuntimeTests.swift — `storage.log: {kind: etcd}` in the
// service: StorageRuntime opens the node on a real etcd, serves it, exports the replication metrics
// (and `sluice stats` renders them), and closes the log on shutdown.
import Foundation
import Logging
import SluiceEtcdTestSupport
import SluiceStorageServer
import SluiceTestSupport
import Testing

@testable import SluiceService

/// Runs a blocking call on a plain thread (never on Swift concurrency's cooperative threads).
private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

@Suite(.enabled(if: etcdTestsEnabled, "etcd not installed (make deps)")) struct ReplicatedStorageRuntimeTests {
    @Test func etcdLogServesAndExportsMetrics() async throws {
        try await withEtcdCluster(members: 1) { cluster in
            let directory = "/var/tmp/sluice-runtime-etcd-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var settings = StorageSettings(dataDirectory: directory)
            settings.listen = ListenAddress(host: "127.0.0.1", port: 0)
            var log = EtcdLogSettings(endpoints: cluster.clientURLs)
            log.prefix = "runtime"
            log.callTimeoutMs = 1_000
            settings.log = .etcd(log)
            let logger = Logger(label: "test")
            let storage = try await StorageRuntime.open(settings, logger: logger)
            let replicated = try #require(storage.replicated)
            let port = storage.server.port
            let osns = try await onThread {
                let client = try StorageClient(host: "127.0.0.1", port: port)
                return try (0..<5).map { page in try client.write(objectID: 9, pageIndex: UInt64(page), payload: [UInt8(page)]) }
            }
            #expect(osns == osns.sorted() && Set(osns).count == 5)
            // The proposer counts a batch (and its round trip) when etcd's answer to its claim arrives; the
            // watch may deliver and apply that batch, answering the client, first. Bounded wait for the count.
            let stats = replicated.log.stats
            let settled = ContinuousClock.now + .seconds(5)
            while stats.batchedRecords.load(ordering: .relaxed) < 5 || stats.roundTrips.load(ordering: .relaxed) < 5,
                  ContinuousClock.now < settled {
                try await Task.sleep(for: .milliseconds(10))
            }
            let text = ServiceMetrics().render(dataplane: nil, storage: storage)
            let samples = try MetricsText.parse(text)
            func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
                samples.first { sample in sample.name == name && labels.allSatisfy { key, value in sample.labels[key] == value } }?.value
            }
            #expect(value("sluice_replication_proposals_total") == 5)
            #expect((value("sluice_replication_batches_total") ?? 0) >= 1)
            #expect(value("sluice_replication_batched_records_total") == 5)
            #expect((value("sluice_replication_applied_records_total") ?? 0) >= 5)
            #expect(value("sluice_replication_applied_osn") == Double(osns.last!))
            #expect(value("sluice_replication_apply_lag") == 0)
            #expect(value("sluice_replication_state") == 1)
            #expect((value("sluice_replication_contact_age_ms") ?? -1) >= 0)
            let trips = try #require(value("sluice_replication_round_trip_seconds_count"))
            #expect(trips >= 5)
            #expect(value("sluice_replication_round_trip_seconds_bucket", ["le": "+Inf"]) == trips)
            #expect((value("sluice_replication_round_trip_seconds_sum") ?? 0) > 0)
            for name in ["claims_lost", "unknown_outcomes", "settled_applied", "settled_not_applied", "refused",
                         "watch_restarts", "compactions"] {
                #expect(value("sluice_replication_\(name)_total") != nil, "\(name) missing")
            }
            let table = StatsTable.render(samples)
            #expect(table.contains("Replication: following, applied OSN \(osns.last!)"), "\(table)")
            #expect(table.contains("records/batch"))
            try await onThread { storage.shutdown(logger: logger) }
            #expect(replicated.log.status.state == .failed)  // stopped following
        }
    }
}

/// `sluice run` with `storage.log: {kind: etcd}`: the node serves, /metrics carries the replication
/// gauges, `sluice stats` prints the Replication lines, and SIGTERM stops it cleanly.
@Suite(.enabled(if: etcdTestsEnabled, "etcd not installed (make deps)")) struct ReplicatedServiceProcessTests {
    @Test func runWithEtcdLog() async throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        try await withEtcdCluster(members: 1) { cluster in
            let directory = "/var/tmp/sluice-run-etcd-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let endpoint = cluster.clientURLs[0]
            let service = try RunningService(binary: binary, yaml: """
                pipelines:
                  - name: p
                    source: {pcap: "\(samplePcap)", top_speed: true}
                    sink: {discard: true}
                metrics: {listen: "127.0.0.1:0"}
                storage:
                  data: \(directory)
                  listen: 127.0.0.1:0
                  log: {kind: etcd, endpoints: ["\(endpoint)"], prefix: run-test, call_timeout_ms: 1000}
                """)
            let storage = try #require(service.storage)
            let osn = try await onThread {
                try StorageClient(host: storage.host, port: storage.port).write(objectID: 1, pageIndex: 0, payload: [1])
            }
            let samples = try service.scrape()
            #expect(samples.value("sluice_replication_applied_osn", [:]) == Double(osn))
            #expect(samples.value("sluice_replication_proposals_total", [:]) == 1)
            let stats = try runCommand([binary, "stats", "--port", "\(service.metrics.port)"])
            #expect(stats.lines.contains { $0.hasPrefix("Replication: following, applied OSN \(osn)") }, "\(stats.lines)")
            let (status, _) = try service.terminate()
            #expect(status == 0, "\(service.child.stderrText)")
            #expect(service.child.stderrText.contains("storage node stopped following its log"))
        }
    }
}
