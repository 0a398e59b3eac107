// Path: Sources/SluiceGateway/RemoteObjectStore.swift — what the intermediate device needs of the remote
// store: an object's size and etag (HEAD) and a byte range of it (ranged GET).

/// A remote object store as the intermediate device sees it. Implementations: `DirectoryObjectStore`
/// (a local or NFS directory), `S3Client` (an extension in S3RemoteStore.swift, where built).
/// Any task may call; calls may run concurrently.
public protocol RemoteObjectStore: Sendable {
    /// The object's size in bytes and an etag that changes whenever its bytes may have changed.
    func size(key: String) async throws(RemoteStoreError) -> (size: UInt64, etag: String)
    /// Exactly the bytes of `range` (non-empty, within the object): a shorter answer is an error. With
    /// `etag`, of that version only: bytes of another version are `changed`, never returned.
    func read(key: String, range: Range<UInt64>, etag: String?) async throws(RemoteStoreError) -> [UInt8]

    // The write side (the intermediate's uploads). A store that cannot be written keeps the defaults,
    // which refuse (`failed`). A write replaces the whole object: readers see the old or the new bytes.

    /// Stores `bytes` as `key` in one call (small objects). Returns the new etag.
    func put(key: String, bytes: [UInt8]) async throws(RemoteStoreError) -> String
    /// Starts a multipart upload of `key`; every started upload is completed or aborted.
    func createUpload(key: String) async throws(RemoteStoreError) -> String
    /// Part `partNumber` (1, 2, ... in order) of an upload: all but the last at least 5 MiB on S3.
    func uploadPart(key: String, uploadID: String, partNumber: Int, bytes: [UInt8]) async throws(RemoteStoreError) -> RemoteUploadedPart
    /// Joins the parts (in part order) into the object, replacing it. Returns the new etag.
    func completeUpload(key: String, uploadID: String, parts: [RemoteUploadedPart]) async throws(RemoteStoreError) -> String
    /// Drops an upload and its parts (best effort: errors are ignored).
    func abortUpload(key: String, uploadID: String) async
}

/// A part a store took, to be passed back in order to `completeUpload`.
public struct RemoteUploadedPart: Sendable, Equatable {
    public var partNumber: Int
    public var etag: String
    public var bytes: Int
    public init(partNumber: Int, etag: String, bytes: Int) {
        self.partNumber = partNumber
        self.etag = etag
        self.bytes = bytes
    }
}

extension RemoteObjectStore {
    public func put(key: String, bytes: [UInt8]) async throws(RemoteStoreError) -> String {
        throw .failed("this store cannot be written")
    }
    public func createUpload(key: String) async throws(RemoteStoreError) -> String {
        throw .failed("this store cannot be written")
    }
    public func uploadPart(key: String, uploadID: String, partNumber: Int, bytes: [UInt8]) async throws(RemoteStoreError) -> RemoteUploadedPart {
        throw .failed("this store cannot be written")
    }
    public func completeUpload(key: String, uploadID: String, parts: [RemoteUploadedPart]) async throws(RemoteStoreError) -> String {
        throw .failed("this store cannot be written")
    }
    public func abortUpload(key: String, uploadID: String) async {}
}

/// Why the remote store did not answer with the object. Each maps to one status of the block protocol.
public enum RemoteStoreError: Error, Equatable, CustomStringConvertible {
    /// No object under this key (`notFound`).
    case notFound(key: String)
    /// The range is not within the object (`rangeNotSatisfiable`).
    case rangeNotSatisfiable(key: String, range: Range<UInt64>, size: UInt64)
    /// The store could not be reached or is gone (`remoteUnavailable`): nothing about the object is known.
    case unavailable(String)
    /// The store answered with an error, or bytes of another length than asked (`remoteError`).
    case failed(String)
    /// The key cannot name an object in this store (`badRequest`), e.g. `..` in a directory store.
    case invalidKey(key: String, reason: String)
    /// The object is no longer the version a read asked for (`remoteError`; a new stat finds the new one).
    case changed(key: String, expected: String, found: String)

    public var description: String {
        switch self {
        case .notFound(let key): "no object \(key)"
        case .rangeNotSatisfiable(let key, let range, let size): "range \(range) of \(key) is past its size \(size)"
        case .unavailable(let text): "remote store unavailable: \(text)"
        case .failed(let text): "remote store error: \(text)"
        case .invalidKey(let key, let reason): "key \(key): \(reason)"
        case .changed(let key, let expected, let found): "\(key) changed during the read (etag \(expected), now \(found)): read again"
        }
    }

    /// The block-protocol status this error is answered with.
    public var status: GatewayStatus {
        switch self {
        case .notFound: .notFound
        case .rangeNotSatisfiable: .rangeNotSatisfiable
        case .unavailable: .remoteUnavailable
        case .failed, .changed: .remoteError
        case .invalidKey: .badRequest
        }
    }
}
