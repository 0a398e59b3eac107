// Path: Sources/SluiceGateway/S3RemoteStore.swift — the S3 client as the intermediate device's remote
// store: HEAD for size and etag, one ranged GET per chunk.

/// One bucket of an S3 server as a `RemoteObjectStore`. A wrapper, not an extension of `S3Client`:
/// the store needs the bucket, the client serves any. Errors map to block-protocol statuses: 404 is
/// `notFound`, 416 `rangeNotSatisfiable`, a server that cannot be reached or answers 5xx (slow down,
/// unavailable) `unavailable`, anything else `failed`.
public struct S3RemoteStore: RemoteObjectStore {
    public let client: S3Client
    public let bucket: String

    public init(client: S3Client, bucket: String) {
        self.client = client
        self.bucket = bucket
    }

    public func size(key: String) async throws(RemoteStoreError) -> (size: UInt64, etag: String) {
        do throws(S3Error) {
            let info = try await client.headObject(bucket: bucket, key: key)
            return (UInt64(info.sizeBytes), info.etag)
        } catch {
            throw Self.storeError(error, key: key)
        }
    }

    /// With `etag`, the GET's own ETag must be it: an object replaced between the HEAD and the GET is
    /// `changed`. A server that sends no ETag with a GET cannot be checked (S3 and rclone send one).
    public func read(key: String, range: Range<UInt64>, etag expected: String? = nil) async throws(RemoteStoreError) -> [UInt8] {
        precondition(!range.isEmpty, "a read asks for a byte at least")
        let data: S3ObjectData
        do throws(S3Error) {
            let byteRange = S3ByteRange(offset: Int64(range.lowerBound), length: Int64(range.count))
            data = try await client.getObject(bucket: bucket, key: key, range: byteRange)
        } catch {
            throw Self.storeError(error, key: key)
        }
        if let expected, let found = data.etag, found != expected {
            throw .changed(key: key, expected: expected, found: found)
        }
        let bytes = data.bytes
        // A range running past the end answers up to it: the caller asked within the size it knew.
        guard bytes.count == range.count else {
            throw .rangeNotSatisfiable(key: key, range: range, size: range.lowerBound + UInt64(bytes.count))
        }
        return bytes
    }

    // MARK: Writes

    public func put(key: String, bytes: [UInt8]) async throws(RemoteStoreError) -> String {
        do throws(S3Error) { return try await client.putObject(bucket: bucket, key: key, bytes: bytes) } catch {
            throw Self.storeError(error, key: key)
        }
    }

    public func createUpload(key: String) async throws(RemoteStoreError) -> String {
        do throws(S3Error) { return try await client.createMultipartUpload(bucket: bucket, key: key) } catch {
            throw Self.storeError(error, key: key)
        }
    }

    public func uploadPart(key: String, uploadID: String, partNumber: Int, bytes: [UInt8]) async throws(RemoteStoreError) -> RemoteUploadedPart {
        do throws(S3Error) {
            let part = try await client.uploadPart(bucket: bucket, key: key, uploadID: uploadID, partNumber: partNumber, bytes: bytes)
            return RemoteUploadedPart(partNumber: part.partNumber, etag: part.etag, bytes: part.sizeBytes)
        } catch {
            throw Self.storeError(error, key: key)
        }
    }

    public func completeUpload(key: String, uploadID: String, parts: [RemoteUploadedPart]) async throws(RemoteStoreError) -> String {
        let s3Parts = parts.map { S3UploadedPart(partNumber: $0.partNumber, etag: $0.etag, sizeBytes: $0.bytes) }
        do throws(S3Error) {
            _ = try await client.completeMultipartUpload(bucket: bucket, key: key, uploadID: uploadID, parts: s3Parts)
            // The object's etag as a HEAD reports it (what `size` and reads compare against).
            return try await client.headObject(bucket: bucket, key: key).etag
        } catch {
            throw Self.storeError(error, key: key)
        }
    }

    public func abortUpload(key: String, uploadID: String) async {
        try? await client.abortMultipartUpload(bucket: bucket, key: key, uploadID: uploadID)
    }

    static func storeError(_ error: S3Error, key: String) -> RemoteStoreError {
        switch error.kind {
        case .service(404, _, _):
            return .notFound(key: key)
        case .rangeNotSatisfiable(let range, let size):
            let start = UInt64(range.offset)
            return .rangeNotSatisfiable(key: key, range: start..<(start + UInt64(range.length)), size: size.map { UInt64($0) } ?? 0)
        case .connectFailed, .timedOut, .connectionLost:
            return .unavailable(error.description)
        case .service(let status, _, _) where status >= 500:
            return .unavailable(error.description)
        default:
            return .failed(error.description)
        }
    }
}
