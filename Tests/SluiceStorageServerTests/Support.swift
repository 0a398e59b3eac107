import Glibc
import SluicePageStore
import Synchronization

@testable import SluiceStorageServer

/// A node on a real filesystem (/var/tmp: O_DIRECT needs one, tmpfs refuses it) served on 127.0.0.1
/// at a kernel-chosen port. `close()` stops the server and removes the files.
final class ServedNode: @unchecked Sendable {  // unchecked: fields are set once in init
    let node: StorageNode
    let server: StorageServer
    let pagesPath: String
    let logPath: String
    let payloadSizeBytes: Int
    private static let counter = Atomic<Int>(0)

    init(configuration: StorageServerConfiguration = .init(), parallelReadersMax: Int = 0,
         checkpointEveryRecords: UInt64 = 4_096) throws {
        let unique = "\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
        pagesPath = "/var/tmp/sluice-server-\(unique).pages"
        logPath = "/var/tmp/sluice-server-\(unique).log"
        let store = try ObjectStore(pages: PageFileConfiguration(path: pagesPath), log: try EmbeddedLog(path: logPath),
                                    checkpointEveryRecords: checkpointEveryRecords)
        payloadSizeBytes = store.payloadSizeBytes
        node = StorageNode(store: store, parallelReadersMax: parallelReadersMax)
        server = try StorageServer.bind(host: "127.0.0.1", port: 0, node: node, payloadSizeBytes: payloadSizeBytes,
                                        configuration: configuration)
    }

    func client() throws -> StorageClient { try StorageClient(host: "127.0.0.1", port: server.port) }

    func close() {
        server.close()
        for path in [pagesPath, logPath, pagesPath + ".checkpoint", ObjectStore.lockPath(pages: pagesPath),
                     ObjectStore.formatPath(pages: pagesPath)] { unlink(path) }
    }
}

/// Removes a data directory `openStorageNode` made, and every file a node keeps in it.
func removeDataDirectory(_ path: String) {
    for name in ["pages", "log", "pages.checkpoint", "pages.checkpoint.tmp", "pages.lock", "pages.format"] {
        unlink(path + "/" + name)
    }
    rmdir(path)
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all.
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Context {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    var threads: [pthread_t] = []
    for index in 0..<count {
        let context = Context { body(index) }
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(context).toOpaque())
        precondition(result == 0, "pthread_create")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
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
