// Path: Sources/SluiceGateway/DirectoryObjectStore.swift — a remote object store that is a directory
// (local or NFS): key `a/b` is the file `root/a/b`, read with pread.
import Glibc
import SluiceCore
import Synchronization
import SystemPackage

/// Objects as regular files under `root`. The etag is the file's inode, size and modification time
/// (nanoseconds), so rewriting or replacing a file changes it. A key names a path below `root` only:
/// no leading `/`, no empty, `.` or `..` component, no NUL. Blocking calls run off the cooperative pool.
/// `root` missing is `unavailable` (the store is gone), a missing file under it `notFound`.
public final class DirectoryObjectStore: RemoteObjectStore {
    public let root: String
    private let counters = Counters()
    /// Test seam: each `read` first sleeps this long (nanoseconds), e.g. to hold a fetch in flight.
    public let readDelayNs = Atomic<UInt64>(0)

    private final class Counters: Sendable {
        let reads = Atomic<UInt64>(0)
        let bytesRead = Atomic<UInt64>(0)
        let stats = Atomic<UInt64>(0)
    }

    /// `root` need not exist yet (a store that is down); it is looked up on every call.
    public init(root: String) {
        precondition(!root.isEmpty, "a directory store has a root")
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    /// `read` calls that reached the file system, and the bytes they returned; `size` calls.
    public var readCount: UInt64 { counters.reads.load(ordering: .relaxed) }
    public var bytesRead: UInt64 { counters.bytesRead.load(ordering: .relaxed) }
    public var statCount: UInt64 { counters.stats.load(ordering: .relaxed) }

    public func size(key: String) async throws(RemoteStoreError) -> (size: UInt64, etag: String) {
        let path = try path(of: key)
        counters.stats.add(1, ordering: .relaxed)
        let root = root
        let result = await runBlocking { () -> Result<(size: UInt64, etag: String), RemoteStoreError> in
            switch GatewayFiles.stat(path) {
            case .success(let info):
                guard info.st_mode & S_IFMT == S_IFREG else { return .failure(.notFound(key: key)) }
                return .success((UInt64(info.st_size), Self.etag(info)))
            case .failure(let errno):
                return .failure(Self.classify(errno, operation: "stat", path: path, key: key, root: root))
            }
        }
        return try result.get()
    }

    public func read(key: String, range: Range<UInt64>, etag expected: String? = nil) async throws(RemoteStoreError) -> [UInt8] {
        precondition(!range.isEmpty, "a read asks for a byte at least")
        precondition(range.count <= Int(Int32.max), "a read fits one buffer")
        let path = try path(of: key)
        let delayNs = readDelayNs.load(ordering: .relaxed)
        if delayNs > 0 { try? await Task.sleep(nanoseconds: delayNs) }
        counters.reads.add(1, ordering: .relaxed)
        let root = root
        let result = await runBlocking { () -> Result<[UInt8], RemoteStoreError> in
            let fd: Int32
            switch GatewayFiles.open(path, O_RDONLY) {
            case .success(let opened): fd = opened
            case .failure(let error): return .failure(Self.classify(error.errno, operation: "open", path: path, key: key, root: root))
            }
            defer { Glibc.close(fd) }
            var info = Glibc.stat()
            guard fstat(fd, &info) == 0 else { return .failure(.failed("fstat(\(path)): \(Errno(rawValue: errno))")) }
            guard info.st_mode & S_IFMT == S_IFREG else { return .failure(.notFound(key: key)) }
            if let expected, Self.etag(info) != expected {
                return .failure(.changed(key: key, expected: expected, found: Self.etag(info)))
            }
            let size = UInt64(info.st_size)
            guard range.upperBound <= size else { return .failure(.rangeNotSatisfiable(key: key, range: range, size: size)) }
            let bytes: [UInt8]
            switch GatewayFiles.pread(fd, count: range.count, offset: Int64(range.lowerBound), what: path) {
            case .success(let read): bytes = read
            case .failure(let error): return .failure(.failed("\(error)"))
            }
            // Written while it was read: the bytes may mix two versions.
            if let expected {
                guard fstat(fd, &info) == 0 else { return .failure(.failed("fstat(\(path)): \(Errno(rawValue: errno))")) }
                if Self.etag(info) != expected { return .failure(.changed(key: key, expected: expected, found: Self.etag(info))) }
            }
            return .success(bytes)
        }
        let bytes = try result.get()
        counters.bytesRead.add(UInt64(bytes.count), ordering: .relaxed)
        return bytes
    }

    // MARK: Writes: a temporary file, fsync, rename, fsync of the directory

    /// Where multipart uploads keep their parts until completed: `root/.sluice-uploads/ID/N`.
    static let uploadsDirectory = ".sluice-uploads"

    public func put(key: String, bytes: [UInt8]) async throws(RemoteStoreError) -> String {
        let path = try path(of: key)
        let root = root
        let result = await runBlocking { () -> Result<String, RemoteStoreError> in
            Self.replace(path: path, root: root, key: key) { fd, temporary in
                bytes.withUnsafeBytes { GatewayFiles.pwrite(fd, $0, offset: 0, what: temporary) }
            }
        }
        return try result.get()
    }

    public func createUpload(key: String) async throws(RemoteStoreError) -> String {
        _ = try path(of: key)
        let id = String(UInt64.random(in: 1...UInt64.max), radix: 16)
        let directory = root + "/" + Self.uploadsDirectory + "/" + id
        let root = root
        let result = await runBlocking { () -> Result<String, RemoteStoreError> in
            guard case .success = GatewayFiles.stat(root) else { return .failure(.unavailable("store directory \(root) is missing")) }
            mkdir(root + "/" + Self.uploadsDirectory, 0o755)
            guard mkdir(directory, 0o755) == 0 else { return .failure(.failed("mkdir(\(directory)): \(Errno(rawValue: errno))")) }
            return .success(id)
        }
        return try result.get()
    }

    public func uploadPart(key: String, uploadID: String, partNumber: Int, bytes: [UInt8]) async throws(RemoteStoreError) -> RemoteUploadedPart {
        _ = try path(of: key)
        guard !uploadID.isEmpty, uploadID.allSatisfy(\.isHexDigit), (1...10_000).contains(partNumber) else {
            throw .failed("upload \(uploadID) part \(partNumber): not an upload of this store")
        }
        let partPath = root + "/" + Self.uploadsDirectory + "/" + uploadID + "/" + String(partNumber)
        let result = await runBlocking { () -> Result<RemoteUploadedPart, RemoteStoreError> in
            let fd: Int32
            switch GatewayFiles.open(partPath, O_WRONLY | O_CREAT | O_TRUNC) {
            case .success(let opened): fd = opened
            case .failure(let error): return .failure(.failed("\(error)"))
            }
            defer { Glibc.close(fd) }
            if let error = bytes.withUnsafeBytes({ GatewayFiles.pwrite(fd, $0, offset: 0, what: partPath) }) {
                return .failure(.failed("\(error)"))
            }
            let etag = String(sectorCRCs(bytes, sectorBytes: max(bytes.count, 1)).first ?? 0, radix: 16)
            return .success(RemoteUploadedPart(partNumber: partNumber, etag: etag, bytes: bytes.count))
        }
        return try result.get()
    }

    public func completeUpload(key: String, uploadID: String, parts: [RemoteUploadedPart]) async throws(RemoteStoreError) -> String {
        let path = try path(of: key)
        guard !uploadID.isEmpty, uploadID.allSatisfy(\.isHexDigit) else { throw .failed("upload \(uploadID): not an upload of this store") }
        let directory = root + "/" + Self.uploadsDirectory + "/" + uploadID
        let root = root
        let result = await runBlocking { () -> Result<String, RemoteStoreError> in
            let written = Self.replace(path: path, root: root, key: key) { fd, temporary in
                var offset: Int64 = 0
                for part in parts {
                    let partPath = directory + "/" + String(part.partNumber)
                    let source: Int32
                    switch GatewayFiles.open(partPath, O_RDONLY) {
                    case .success(let opened): source = opened
                    case .failure(let error): return error
                    }
                    defer { Glibc.close(source) }
                    switch GatewayFiles.pread(source, count: part.bytes, offset: 0, what: partPath) {
                    case .success(let bytes):
                        if let error = bytes.withUnsafeBytes({ GatewayFiles.pwrite(fd, $0, offset: offset, what: temporary) }) { return error }
                        offset += Int64(bytes.count)
                    case .failure(let error): return error
                    }
                }
                return nil
            }
            if case .success = written { Self.removeUpload(directory) }
            return written
        }
        return try result.get()
    }

    public func abortUpload(key: String, uploadID: String) async {
        guard !uploadID.isEmpty, uploadID.allSatisfy(\.isHexDigit) else { return }
        let directory = root + "/" + Self.uploadsDirectory + "/" + uploadID
        await runBlocking { Self.removeUpload(directory) }
    }

    static func removeUpload(_ directory: String) {
        for number in 1...10_000 where unlink(directory + "/" + String(number)) != 0 && errno == ENOENT { break }
        rmdir(directory)
    }

    /// Writes a new file next to `path` with `fill`, fsyncs it, renames it over `path` and fsyncs the
    /// directory: a crash leaves the old object or the new one, never a mix. Missing directories of
    /// the key are made. Returns the new file's etag.
    static func replace(path: String, root: String, key: String,
                        fill: (Int32, String) -> SyscallError?) -> Result<String, RemoteStoreError> {
        guard case .success(let rootInfo) = GatewayFiles.stat(root), rootInfo.st_mode & S_IFMT == S_IFDIR else {
            return .failure(.unavailable("store directory \(root) is missing"))
        }
        let slash = path.lastIndex(of: "/")!
        let directory = String(path[..<slash])
        var made = root
        for component in key.split(separator: "/").dropLast() {
            made += "/" + component
            if mkdir(made, 0o755) != 0 && errno != EEXIST { return .failure(.failed("mkdir(\(made)): \(Errno(rawValue: errno))")) }
        }
        let temporary = directory + "/." + path[path.index(after: slash)...] + ".sluice-" + String(UInt64.random(in: 1...UInt64.max), radix: 16)
        let fd: Int32
        switch GatewayFiles.open(temporary, O_WRONLY | O_CREAT | O_EXCL) {
        case .success(let opened): fd = opened
        case .failure(let error): return .failure(.failed("\(error)"))
        }
        if let error = fill(fd, temporary) {
            Glibc.close(fd)
            unlink(temporary)
            return .failure(.failed("\(error)"))
        }
        guard fsync(fd) == 0 else {
            let code = Errno(rawValue: errno)
            Glibc.close(fd)
            unlink(temporary)
            return .failure(.failed("fsync(\(temporary)): \(code)"))
        }
        var info = Glibc.stat()
        fstat(fd, &info)
        Glibc.close(fd)
        guard rename(temporary, path) == 0 else {
            let code = Errno(rawValue: errno)
            unlink(temporary)
            return .failure(.failed("rename(\(temporary), \(path)): \(code)"))
        }
        if case .success(let directoryFD) = GatewayFiles.open(directory, O_RDONLY | O_DIRECTORY) {
            fsync(directoryFD)
            Glibc.close(directoryFD)
        }
        return .success(etag(info))
    }

    /// The file for `key`, refusing keys that would leave `root`.
    func path(of key: String) throws(RemoteStoreError) -> String {
        guard gatewayKeyIsValid(key) else { throw .invalidKey(key: key, reason: "not 1...\(GatewayProtocol.keyBytesMax) bytes") }
        guard !key.utf8.contains(0) else { throw .invalidKey(key: key, reason: "contains NUL") }
        guard !key.hasPrefix("/") else { throw .invalidKey(key: key, reason: "starts with /") }
        for component in key.split(separator: "/", omittingEmptySubsequences: false) {
            guard !component.isEmpty, component != ".", component != ".." else {
                throw .invalidKey(key: key, reason: "has an empty, . or .. path component")
            }
        }
        return root + "/" + key
    }

    /// Inode, size, mtime in nanoseconds, hex.
    static func etag(_ info: Glibc.stat) -> String {
        let mtimeNs = UInt64(bitPattern: Int64(info.st_mtim.tv_sec)) &* 1_000_000_000 &+ UInt64(info.st_mtim.tv_nsec)
        return String(UInt64(info.st_ino), radix: 16) + "-" + String(UInt64(info.st_size), radix: 16) + "-" + String(mtimeNs, radix: 16)
    }

    /// ENOENT with the root gone is the store being unavailable; with the root there, no such object.
    /// A path component that is a file (ENOTDIR) is no such object too.
    static func classify(_ errno: Errno, operation: String, path: String, key: String, root: String) -> RemoteStoreError {
        switch errno {
        case .noSuchFileOrDirectory, .notDirectory:
            if case .success(let info) = GatewayFiles.stat(root), info.st_mode & S_IFMT == S_IFDIR {
                return .notFound(key: key)
            }
            return .unavailable("store directory \(root) is missing")
        case .timedOut, .hostIsDown, .noRouteToHost, .connectionRefused, .staleNFSFileHandle:
            // What an NFS mount that lost its server answers.
            return .unavailable("\(operation)(\(path)): \(errno)")
        default:
            return .failed("\(operation)(\(path)): \(errno) (errno \(errno.rawValue))")
        }
    }
}
