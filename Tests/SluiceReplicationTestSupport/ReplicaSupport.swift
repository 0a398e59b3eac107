// Path: Tests/SluiceReplicationTestSupport/ReplicaSupport.swift — storage nodes on a shared etcd log for
// tests: temp data directories, short-deadline log configurations, and blocking node calls run off
// Swift concurrency's cooperative threads.
import Foundation
import SluiceEtcdTestSupport
import SluicePageStore
import SluiceReplication

/// A fresh temp directory for one node's data, removed after `body`.
public func withTempDirectories<Result>(_ count: Int, _ body: ([String]) async throws -> Result) async throws -> Result {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-repl-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    return try await body((0..<count).map { "\(root)/node\($0)" })
}

/// A log configuration for `cluster` with short deadlines (tests wait on them).
public func logConfiguration(_ cluster: EtcdCluster, prefix: String = "t", proposalTimeoutMs: Int64 = 3_000) -> EtcdLogConfiguration {
    var configuration = EtcdLogConfiguration(
        client: EtcdClientConfiguration(endpoints: cluster.clientURLs, callTimeoutMs: 1_000, connectTimeoutMs: 300),
        prefix: prefix)
    configuration.proposalTimeoutMs = proposalTimeoutMs
    configuration.heartbeatMs = 100
    return configuration
}

public func openNode(_ path: String, _ configuration: EtcdLogConfiguration, checkpointEveryRecords: UInt64 = 4_096) async throws -> ReplicatedStorage {
    try await ReplicatedStorage.open(dataDirectory: path, configuration: configuration, directIO: false,
                                     checkpointEveryRecords: checkpointEveryRecords, catchUpTimeoutMs: 5_000)
}

/// Runs a blocking node call off Swift concurrency's cooperative threads (it waits on a semaphore).
public func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

