// Path: Sources/SluiceStorageServer/DataDirectory.swift — a storage node's files in one directory:
// `pages` (the page file) and `log` (the embedded write-ahead log).
import Glibc
import SluicePageStore

/// Why a data directory could not be opened.
public enum DataDirectoryError: Error, Equatable {
    case cannotCreate(path: String, errno: Int32)
    case store(ObjectStoreError)
    case log(LogError)
}

/// A node opened on `path` (created if missing). The page file must be on a filesystem with
/// O_DIRECT (not tmpfs) unless `directIO` is false. Blocks: replays the log and redoes pages.
public func openStorageNode(dataDirectory path: String, pageSizeBytes: Int = 4096, queueDepth: Int = 32,
                            directIO: Bool = true, parallelReadersMax: Int = 32)
    throws(DataDirectoryError) -> (node: StorageNode, payloadSizeBytes: Int) {
    if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .cannotCreate(path: path, errno: errno) }
    var pages = PageFileConfiguration(path: path + "/pages")
    pages.pageSizeBytes = pageSizeBytes
    pages.queueDepth = queueDepth
    pages.directIO = directIO
    let log: EmbeddedLog
    do { log = try EmbeddedLog(path: path + "/log") } catch { throw .log(error) }
    let store: ObjectStore
    do { store = try ObjectStore(pages: pages, log: log) } catch { throw .store(error) }
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
