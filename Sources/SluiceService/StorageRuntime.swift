// Path: Sources/SluiceService/StorageRuntime.swift — the service's storage node: its data directory
// opened (embedded log replayed, or caught up with its shared etcd log), served over TCP with
// per-request stats, and closed cleanly.
import Dispatch
import Logging
import SluicePageStore
import SluiceReplication
import SluiceStorageServer

/// An open, serving storage node. `open` blocks (log replay, or catching up with the shared log);
/// `shutdown` stops accepting, waits for running node calls, writes a checkpoint and (replicated)
/// stops following the log. Control-plane object.
public final class StorageRuntime: Sendable {
    public let settings: StorageSettings
    public let node: StorageNode
    public let server: StorageServer
    public let stats: StorageRequestStats
    /// The shared log's node when `settings.log` is etcd (its `log.stats` and `log.status` are metrics).
    public let replicated: ReplicatedStorage?

    /// Opens and serves `settings`. An etcd log is opened by bridging to `ReplicatedStorage.open` on
    /// a task and waiting for it: call from a plain thread, not from Swift concurrency's cooperative
    /// threads (async callers use the async overload).
    public static func open(_ settings: StorageSettings, logger: Logger) throws(ServiceError) -> StorageRuntime {
        switch settings.log {
        case .embedded: return try openEmbedded(settings, logger: logger)
        case .etcd(let log):
            let box = ResultBox()
            let done = DispatchSemaphore(value: 0)
            Task.detached {
                do throws(ServiceError) { box.result = .success(try await openReplicated(settings, log, logger: logger)) } catch {
                    box.result = .failure(error)
                }
                done.signal()
            }
            done.wait()
            return try box.result!.get()
        }
    }

    /// `open` for async callers: the etcd log is opened without blocking a cooperative thread.
    /// `isolation`: the storage device failed its firmware check; the node refuses writes from before
    /// it accepts its first client.
    public static func open(_ settings: StorageSettings, logger: Logger, isolation: String? = nil) async throws(ServiceError) -> StorageRuntime {
        switch settings.log {
        case .embedded: return try openEmbedded(settings, logger: logger, isolation: isolation)
        case .etcd(let log): return try await openReplicated(settings, log, logger: logger, isolation: isolation)
        }
    }

    private static func openEmbedded(_ settings: StorageSettings, logger: Logger, isolation: String? = nil) throws(ServiceError) -> StorageRuntime {
        let opened: (node: StorageNode, payloadSizeBytes: Int)
        do {
            opened = try openStorageNode(dataDirectory: settings.dataDirectory, pageSizeBytes: settings.pageSizeBytes,
                                         queueDepth: settings.queueDepth, directIO: settings.directIO)
        } catch { throw .storageOpen(dataDirectory: settings.dataDirectory, error) }
        return try serve(settings, node: opened.node, payloadSizeBytes: opened.payloadSizeBytes, replicated: nil, logger: logger,
                         isolation: isolation)
    }

    private static func openReplicated(_ settings: StorageSettings, _ log: EtcdLogSettings,
                                       logger: Logger, isolation: String? = nil) async throws(ServiceError) -> StorageRuntime {
        let replicated: ReplicatedStorage
        do {
            replicated = try await ReplicatedStorage.open(dataDirectory: settings.dataDirectory, configuration: log.configuration,
                                                          pageSizeBytes: settings.pageSizeBytes, queueDepth: settings.queueDepth,
                                                          directIO: settings.directIO)
        } catch { throw .storageReplicated(dataDirectory: settings.dataDirectory, error) }
        let status = replicated.log.status
        logger.info("storage node on a shared etcd log", metadata: [
            "endpoints": "\(log.endpoints)", "prefix": "\(log.prefix)", "node": "\(replicated.log.nodeName)",
            "state": "\(status.state)", "appliedOSN": "\(status.appliedOSN)", "logOSN": "\(status.logOSN)"])
        do {
            return try serve(settings, node: replicated.node, payloadSizeBytes: replicated.payloadSizeBytes,
                             replicated: replicated, logger: logger, isolation: isolation)
        } catch {
            await replicated.close()
            throw error
        }
    }

    private static func serve(_ settings: StorageSettings, node: StorageNode, payloadSizeBytes: Int,
                              replicated: ReplicatedStorage?, logger: Logger, isolation: String? = nil) throws(ServiceError) -> StorageRuntime {
        if let isolation { node.isolate(reason: isolation) }
        var configuration = StorageServerConfiguration()
        configuration.frameBytesMax = settings.frameBytesMax
        configuration.blockingThreadCount = settings.blockingThreadCount
        let stats = StorageRequestStats()
        configuration.stats = stats
        let server: StorageServer
        do {
            server = try StorageServer.bind(host: settings.listen.host, port: settings.listen.port, node: node,
                                            payloadSizeBytes: payloadSizeBytes, configuration: configuration)
        } catch { throw .storageListen(error) }
        logger.info("storage node serving", metadata: [
            "listen": "\(server.host):\(server.port)", "data": "\(settings.dataDirectory)",
            "lastOSN": "\(node.lastOSN)", "pageSize": "\(settings.pageSizeBytes)",
            "log": "\(replicated == nil ? "embedded" : "etcd")"])
        return StorageRuntime(settings: settings, node: node, server: server, stats: stats, replicated: replicated)
    }

    private init(settings: StorageSettings, node: StorageNode, server: StorageServer, stats: StorageRequestStats,
                 replicated: ReplicatedStorage?) {
        self.settings = settings
        self.node = node
        self.server = server
        self.stats = stats
        self.replicated = replicated
    }

    /// Stops accepting, closes connections after their running calls, then checkpoints (when
    /// configured). Every acknowledged write was already durable in the log; the checkpoint only
    /// spares the next start the replay. A replicated node then stops following its log (waiting
    /// proposals are answered) and closes its etcd client. Blocks: call from a plain thread.
    public func shutdown(logger: Logger) {
        server.close()
        let lastOSN = node.lastOSN
        defer {
            if let replicated {
                replicated.log.shutdownBlocking()
                logger.info("storage node stopped following its log", metadata: ["appliedOSN": "\(replicated.log.status.appliedOSN)"])
            }
        }
        // A checkpoint writes to the device: not while it is isolated.
        guard settings.checkpointOnShutdown, node.isolationReason == nil else {
            logger.info("storage node closed", metadata: ["lastOSN": "\(lastOSN)"])
            return
        }
        do {
            try node.checkpoint()
            logger.info("storage node closed, checkpoint written", metadata: ["lastOSN": "\(lastOSN)"])
        } catch {
            logger.error("storage checkpoint at shutdown failed; the log still holds every write",
                         metadata: ["error": "\(error)", "lastOSN": "\(lastOSN)"])
        }
    }
}

/// Hands a result from the opening task to the waiting thread (written before, read after the semaphore).
private final class ResultBox: @unchecked Sendable {
    var result: Result<StorageRuntime, ServiceError>?
}
