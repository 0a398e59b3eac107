// Path: Sources/SluiceService/StorageRuntime.swift — the service's storage node: its data directory
// opened (log replayed), served over TCP with per-request stats, and closed cleanly.
import Logging
import SluicePageStore
import SluiceStorageServer

/// An open, serving storage node. `open` blocks (log replay); `shutdown` stops accepting, waits for
/// running node calls, and writes a checkpoint. Control-plane object.
public final class StorageRuntime: Sendable {
    public let settings: StorageSettings
    public let node: StorageNode
    public let server: StorageServer
    public let stats: StorageRequestStats

    public static func open(_ settings: StorageSettings, logger: Logger) throws(ServiceError) -> StorageRuntime {
        let opened: (node: StorageNode, payloadSizeBytes: Int)
        do {
            opened = try openStorageNode(dataDirectory: settings.dataDirectory, pageSizeBytes: settings.pageSizeBytes,
                                         queueDepth: settings.queueDepth, directIO: settings.directIO)
        } catch { throw .storageOpen(dataDirectory: settings.dataDirectory, error) }
        var configuration = StorageServerConfiguration()
        configuration.frameBytesMax = settings.frameBytesMax
        configuration.blockingThreadCount = settings.blockingThreadCount
        let stats = StorageRequestStats()
        configuration.stats = stats
        let server: StorageServer
        do {
            server = try StorageServer.bind(host: settings.listen.host, port: settings.listen.port, node: opened.node,
                                            payloadSizeBytes: opened.payloadSizeBytes, configuration: configuration)
        } catch { throw .storageListen(error) }
        logger.info("storage node serving", metadata: [
            "listen": "\(server.host):\(server.port)", "data": "\(settings.dataDirectory)",
            "lastOSN": "\(opened.node.lastOSN)", "pageSize": "\(settings.pageSizeBytes)"])
        return StorageRuntime(settings: settings, node: opened.node, server: server, stats: stats)
    }

    private init(settings: StorageSettings, node: StorageNode, server: StorageServer, stats: StorageRequestStats) {
        self.settings = settings
        self.node = node
        self.server = server
        self.stats = stats
    }

    /// Stops accepting, closes connections after their running calls, then checkpoints (when
    /// configured). Every acknowledged write was already durable in the log; the checkpoint only
    /// spares the next start the replay. Blocks.
    public func shutdown(logger: Logger) {
        server.close()
        let lastOSN = node.lastOSN
        guard settings.checkpointOnShutdown else {
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
