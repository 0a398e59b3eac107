// Path: Sources/SluiceReplication/ReplicatedStorage.swift — a storage node whose operation log is
// shared through etcd: its data directory (pages, checkpoint, lock, and `replica`, the node's name and
// log prefix), opened, caught up with the log, and closed.
import Glibc
import SluiceCore
import SluicePageStore
import SystemPackage

/// Why a replicated node could not be opened.
public enum ReplicatedStorageError: Error, CustomStringConvertible {
    /// A configuration value out of bounds, or a bad endpoint.
    case configuration(EtcdError)
    case cannotCreate(path: String, SyscallError)
    case store(ObjectStoreError)
    /// The directory holds an embedded log with records in it: its writes were never in the shared log.
    case embeddedLogPresent(path: String, sizeBytes: Int)
    /// The directory was a replica of another log (`recorded` prefix) than the one asked for.
    case otherLog(path: String, recorded: String, requested: String)
    /// The `replica` file could not be read or written, or does not parse.
    case identity(path: String, reason: String)

    public var description: String {
        switch self {
        case .configuration(let error): "replicated log configuration: \(error)"
        case .cannotCreate(let path, let error): "cannot create \(path): \(error)"
        case .store(let error): "\(error)"
        case .embeddedLogPresent(let path, let size):
            "\(path) is an embedded log of \(size) bytes: this data directory was served with the embedded log and cannot join a shared one"
        case .otherLog(let path, let recorded, let requested):
            "\(path): this data directory is a replica of log prefix \"\(recorded)\", not \"\(requested)\""
        case .identity(let path, let reason): "\(path): \(reason)"
        }
    }
}

/// A storage node on a shared etcd log: `node` serves reads and takes writes like any `StorageNode`
/// (writes are proposed to `log`). Made by `open`; `close` once done.
public final class ReplicatedStorage: Sendable {
    public let node: StorageNode
    public let log: EtcdLog
    public let payloadSizeBytes: Int
    public let dataDirectory: String

    private init(node: StorageNode, log: EtcdLog, payloadSizeBytes: Int, dataDirectory: String) {
        self.node = node
        self.log = log
        self.payloadSizeBytes = payloadSizeBytes
        self.dataDirectory = dataDirectory
    }

    /// Opens (creating if missing) the data directory at `path` as a replica of the log at
    /// `configuration`, starts following the log, and waits up to `catchUpTimeoutMs` for the node to
    /// apply what the log holds. etcd unreachable is no error here: the node then serves reads as of
    /// its checkpoint (its status says how stale), refuses writes, and catches up once etcd answers;
    /// `log.status` tells which. A node's name is made once and kept in `path/replica`.
    public static func open(dataDirectory path: String, configuration: EtcdLogConfiguration, pageSizeBytes: Int = 4096,
                            queueDepth: Int = 32, directIO: Bool = true, parallelReadersMax: Int = 0,
                            checkpointEveryRecords: UInt64 = 4_096,
                            catchUpTimeoutMs: Int64 = 10_000) async throws(ReplicatedStorageError) -> ReplicatedStorage {
        do { try configuration.validate() } catch { throw .configuration(error) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw .cannotCreate(path: path, SyscallError("mkdir(\(path))", Errno(rawValue: errno)))
        }
        var pages = PageFileConfiguration(path: path + "/pages")
        pages.pageSizeBytes = pageSizeBytes
        pages.queueDepth = queueDepth
        pages.directIO = directIO
        let lock: StoreLock
        do { lock = try StoreLock(path: ObjectStore.lockPath(pages: pages.path)) } catch { throw .store(error) }
        var info = stat()
        if stat(path + "/log", &info) == 0, info.st_size > 16 {  // more than the embedded log's header
            throw .embeddedLogPresent(path: path + "/log", sizeBytes: Int(info.st_size))
        }
        let name = try identity(path: path + "/replica", prefix: configuration.prefix)
        let store: ObjectStore
        do {
            store = try ObjectStore(replicaPages: pages, checkpointEveryRecords: checkpointEveryRecords, lock: lock)
        } catch { throw .store(error) }
        let log: EtcdLog
        do { log = try EtcdLog(configuration: configuration, nodeName: name, payloadSizeBytes: store.payloadSizeBytes) } catch {
            throw .configuration(error)
        }
        let node = StorageNode(store: store, parallelReadersMax: parallelReadersMax, sequencer: log)
        log.start(node: node, appliedOSN: store.lastOSN)
        _ = await log.waitCaughtUp(timeoutMs: catchUpTimeoutMs)
        return ReplicatedStorage(node: node, log: log, payloadSizeBytes: store.payloadSizeBytes, dataDirectory: path)
    }

    /// Checkpoints (when `checkpoint`; a failure is returned, not thrown: the log still has every
    /// write), then stops following the log and closes its client. Blocks for both.
    @discardableResult
    public func close(checkpoint: Bool = true) async -> ObjectStoreError? {
        var failure: ObjectStoreError?
        if checkpoint {
            do { try node.checkpoint() } catch { failure = error }
        }
        await log.shutdown()
        return failure
    }

    /// The node's name from `path` (`prefix=...` and `name=...` lines), or a new one written there.
    private static func identity(path: String, prefix: String) throws(ReplicatedStorageError) -> String {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            defer { Glibc.close(fd) }
            var bytes = [UInt8](repeating: 0, count: 4096)
            let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard got > 0 else { throw .identity(path: path, reason: "empty or unreadable (\(String(cString: strerror(errno))))") }
            var fields: [String: String] = [:]
            for line in String(decoding: bytes[..<got], as: UTF8.self).split(separator: "\n") {
                guard let equals = line.firstIndex(of: "=") else { continue }
                fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
            }
            guard let recorded = fields["prefix"], let name = fields["name"], !name.isEmpty else {
                throw .identity(path: path, reason: "no prefix= and name= lines")
            }
            guard recorded == prefix else { throw .otherLog(path: path, recorded: recorded, requested: prefix) }
            return name
        }
        guard errno == ENOENT else { throw .identity(path: path, reason: String(cString: strerror(errno))) }
        let name = String(UInt64.random(in: 1...UInt64.max), radix: 16)
        let text = Array("prefix=\(prefix)\nname=\(name)\n".utf8)
        let temporary = path + ".tmp"
        let out = Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard out >= 0 else { throw .identity(path: temporary, reason: String(cString: strerror(errno))) }
        let written = text.withUnsafeBytes { Glibc.write(out, $0.baseAddress, $0.count) }
        let synced = fsync(out) == 0
        Glibc.close(out)
        guard written == text.count, synced, rename(temporary, path) == 0 else {
            throw .identity(path: path, reason: "cannot write: \(String(cString: strerror(errno)))")
        }
        let directory = String(path[..<path.lastIndex(of: "/")!])
        let dirFD = Glibc.open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            Glibc.close(dirFD)
        }
        return name
    }
}
