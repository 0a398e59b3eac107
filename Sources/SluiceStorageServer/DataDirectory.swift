// Path: Sources/SluiceStorageServer/DataDirectory.swift — a storage node's files in one directory:
// `pages` (the page file), `log` (the embedded write-ahead log), `pages.checkpoint`, `pages.lock`
// (held by the open node) and `pages.format` (page size and format version).
import Glibc
import SluicePageStore

/// Why a data directory could not be opened.
public enum DataDirectoryError: Error, Equatable, CustomStringConvertible {
    case cannotCreate(path: String, errno: Int32)
    case store(ObjectStoreError)
    case log(LogError)

    public var description: String {
        switch self {
        case .cannotCreate(let path, let code): "cannot create or sync \(path): \(String(cString: strerror(code)))"
        case .store(let error): "\(error)"
        case .log(let error): "log: \(error)"
        }
    }
}

/// A node opened on `path` (created if missing). The page file must be on a filesystem with
/// O_DIRECT (not tmpfs) unless `directIO` is false. Blocks: replays the log and redoes pages.
/// The node holds `path/pages.lock` (with this process's pid) while it lives: a data directory open
/// in another node is `.store(.locked(lockPath:holderPID:))`; one created with another page size
/// is `.store(.format(path:_:))` (the size and version are recorded in `path/pages.format`).
public func openStorageNode(dataDirectory path: String, pageSizeBytes: Int = 4096, queueDepth: Int = 32,
                            directIO: Bool = true, parallelReadersMax: Int = 0)
    throws(DataDirectoryError) -> (node: StorageNode, payloadSizeBytes: Int) {
    if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .cannotCreate(path: path, errno: errno) }
    var pages = PageFileConfiguration(path: path + "/pages")
    pages.pageSizeBytes = pageSizeBytes
    pages.queueDepth = queueDepth
    pages.directIO = directIO
    // The lock comes first: opening the log truncates a torn tail another live node may be writing.
    let lock: StoreLock
    do { lock = try StoreLock(path: ObjectStore.lockPath(pages: pages.path)) } catch { throw .store(error) }
    let log: EmbeddedLog
    do { log = try EmbeddedLog(path: path + "/log") } catch { throw .log(error) }
    let store: ObjectStore
    do { store = try ObjectStore(pages: pages, log: log, lock: lock) } catch { throw .store(error) }
    // The files may be new: make their directory entries (and the directory's own) durable before
    // the first write is acknowledged.
    for directory in [path, parentDirectory(of: path)] {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            let code = errno
            if fd >= 0 { close(fd) }
            throw .cannotCreate(path: directory, errno: code)
        }
        close(fd)
    }
    return (StorageNode(store: store, parallelReadersMax: parallelReadersMax), store.payloadSizeBytes)
}

private func parentDirectory(of path: String) -> String {
    let trimmed = path.hasSuffix("/") ? String(path.dropLast()) : path
    guard let slash = trimmed.lastIndex(of: "/") else { return "." }
    return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
}
