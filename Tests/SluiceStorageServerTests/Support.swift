import Glibc
import SluicePageStore
import SluiceReplicationTestSupport
import Synchronization

@testable import SluiceStorageServer

/// A node on `backend` (see SluiceReplicationTestSupport's StorageBackend) served on 127.0.0.1 at a
/// kernel-chosen port. Made by `withServedNode`, which stops the server and closes the node after.
final class ServedNode: @unchecked Sendable {  // unchecked: fields are set once in init
    let backend: StorageBackend
    let node: StorageNode
    let server: StorageServer
    let pagesPath: String
    let payloadSizeBytes: Int

    init(_ opened: OpenedNode, configuration: StorageServerConfiguration) throws {
        backend = opened.backend
        node = opened.node
        pagesPath = opened.pagesPath
        payloadSizeBytes = opened.payloadSizeBytes
        server = try StorageServer.bind(host: "127.0.0.1", port: 0, node: node, payloadSizeBytes: payloadSizeBytes,
                                        configuration: configuration)
    }

    func client() throws -> StorageClient { try StorageClient(host: "127.0.0.1", port: server.port) }
}

/// Serves a node on `backend` and runs `body` with it on a thread of its own (client and node calls
/// block; the etcd log's tasks need Swift concurrency's threads; the test's context goes along, so
/// expectations in `body` count for the test), then stops the server and closes
/// the node. Skipped (with the reason printed) when the backend is not available here.
func withServedNode(_ backend: StorageBackend, configuration: StorageServerConfiguration = .init(),
                    parallelReadersMax: Int = 0, checkpointEveryRecords: UInt64 = 4_096,
                    _ body: @escaping @Sendable (ServedNode) throws -> Void) async throws {
    try await withStorageNode(backend, parallelReadersMax: parallelReadersMax,
                              checkpointEveryRecords: checkpointEveryRecords) { opened in
        let served = try ServedNode(opened, configuration: configuration)
        defer { served.server.close() }
        try await onOwnThread { try body(served) }
    }
}

/// Removes a data directory `openStorageNode` made, and every file a node keeps in it.
func removeDataDirectory(_ path: String) {
    for name in ["pages", "log", "pages.checkpoint", "pages.checkpoint.tmp", "pages.lock", "pages.format"] {
        unlink(path + "/" + name)
    }
    rmdir(path)
}

/// A frame with any header values, for feeding the server bad input.
func rawFrame(length: UInt32? = nil, version: UInt8 = 1, opcode: UInt8, requestID: UInt64, body: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = []
    let actual = UInt32(StorageProtocol.requestHeaderBytes + body.count)
    bytes += withUnsafeBytes(of: (length ?? actual).bigEndian) { Array($0) }
    bytes += [version, opcode]
    bytes += withUnsafeBytes(of: requestID.bigEndian) { Array($0) }
    bytes += body
    return bytes
}

func bigEndian(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }

func counterValue(_ bytes: [UInt8]) -> UInt64 {
    bytes.count >= 8 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } : 0
}
