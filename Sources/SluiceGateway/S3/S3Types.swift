// Path: Sources/SluiceGateway/S3/S3Types.swift — what the S3 client takes and returns: bounds,
// configuration, operations, errors, byte ranges and results.

/// Bounds of the S3 client. Every buffer and every wait it has is below one of these; the S3 ones
/// are the limits AWS documents for S3 (multipart: 1...10,000 parts of 5 MiB...5 GiB, the last smaller).
public enum S3Limits {
    /// Longest deadline a call may be given, and the default one.
    public static let callTimeoutMsMax: Int64 = 600_000
    public static let callTimeoutMsDefault: Int64 = 30_000
    /// Connection establishment, so a dead server costs little of a call's deadline.
    public static let connectTimeoutMsDefault: Int64 = 1_000
    /// Largest response body a call reads unless configured otherwise, and the most a configuration
    /// or a call may set. A larger body is `responseTooLarge`, never buffered whole.
    public static let responseBytesMaxDefault = 64 << 20
    public static let responseBytesMaxLimit = 1 << 30
    /// Largest error body read (S3's XML `<Error>`): the rest is not read.
    public static let errorBodyBytesMax = 64 << 10
    /// HTTP/1.1 keep-alive connections kept to the server.
    public static let connectionsMaxDefault = 16
    public static let connectionsMaxLimit = 256
    /// S3 key length in UTF-8 bytes, bucket name length.
    public static let keyBytesMax = 1024
    public static let bucketNameBytesMin = 3
    public static let bucketNameBytesMax = 63
    /// Most keys one ListObjectsV2 page holds (S3 answers at most 1000).
    public static let listKeysMax = 1000
    /// Multipart upload: part numbers 1...partNumberMax; every part but the last at least
    /// `partSizeMinBytes`, every part at most `partSizeMaxBytes`.
    public static let partNumberMax = 10_000
    public static let partSizeMinBytes = 5 << 20
    public static let partSizeMaxBytes = 5 << 30
    /// Largest single PUT S3 takes.
    public static let putObjectBytesMax = 5 << 30
}

/// How the body of a PUT is covered by the signature: its SHA-256 (`x-amz-content-sha256` is the
/// hash; the server refuses a body changed on the way), or `UNSIGNED-PAYLOAD` (no hashing cost).
public enum S3PayloadSigning: Sendable, Equatable {
    case sha256
    case unsigned
}

/// Where the client connects, as whom, and how long and how much it waits and reads.
public struct S3Configuration: Sendable {
    /// `http://HOST:PORT`; requests go path-style to `http://HOST:PORT/BUCKET/KEY`.
    public var endpoint: String
    public var region: String
    public var accessKey: String
    public var secretKey: String
    /// Deadline of each call, from its start to the last byte of its response.
    public var callTimeoutMs: Int64
    public var connectTimeoutMs: Int64
    /// Largest response body read by one call (a ranged GET's 200 answer with the whole object included).
    public var responseBytesMax: Int
    /// Keep-alive connections kept to the server (calls beyond this many wait for one).
    public var connectionsMax: Int
    public var payloadSigning: S3PayloadSigning
    /// Smallest part a multipart upload sends, but for the last: S3's 5 MiB unless lowered for a
    /// server that takes smaller ones (rclone's `serve s3` does).
    public var partSizeMinBytes: Int

    public init(endpoint: String, accessKey: String, secretKey: String, region: String = "us-east-1",
                callTimeoutMs: Int64 = S3Limits.callTimeoutMsDefault,
                connectTimeoutMs: Int64 = S3Limits.connectTimeoutMsDefault,
                responseBytesMax: Int = S3Limits.responseBytesMaxDefault,
                connectionsMax: Int = S3Limits.connectionsMaxDefault,
                payloadSigning: S3PayloadSigning = .sha256,
                partSizeMinBytes: Int = S3Limits.partSizeMinBytes) {
        self.endpoint = endpoint
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.region = region
        self.callTimeoutMs = callTimeoutMs
        self.connectTimeoutMs = connectTimeoutMs
        self.responseBytesMax = responseBytesMax
        self.connectionsMax = connectionsMax
        self.payloadSigning = payloadSigning
        self.partSizeMinBytes = partSizeMinBytes
    }
}

/// One S3 call, as named in errors. `mayWrite` says whether it can change the store, which decides
/// whether a failure after sending leaves its outcome unknown.
public enum S3Operation: String, Sendable, Equatable, CustomStringConvertible {
    case createBucket, putObject, getObject, headObject, deleteObject, listObjectsV2
    case createMultipartUpload, uploadPart, completeMultipartUpload, abortMultipartUpload

    public var mayWrite: Bool {
        switch self {
        case .getObject, .headObject, .listObjectsV2: false
        default: true
        }
    }

    public var description: String { rawValue }
}

/// `length` bytes from `offset` of an object: `Range: bytes=offset-(offset+length-1)`.
public struct S3ByteRange: Sendable, Equatable, Hashable, CustomStringConvertible {
    public let offset: Int64
    public let length: Int64

    /// Traps on a negative offset or a length below 1 (the client checks ranges it is given first).
    public init(offset: Int64, length: Int64) {
        precondition(offset >= 0, "negative range offset")
        precondition(length >= 1, "empty range")
        precondition(offset <= Int64.max - length, "range end overflows")
        self.offset = offset
        self.length = length
    }

    /// The last byte's offset.
    public var last: Int64 { offset + length - 1 }
    public var header: String { "bytes=\(offset)-\(last)" }
    public var description: String { "bytes \(offset)-\(last)" }
}

/// A failed S3 call: which operation on which bucket and key, and what went wrong.
public struct S3Error: Error, Equatable, CustomStringConvertible {
    /// What went wrong (an `Error` itself only so the pure readers can throw it typed; the client
    /// always throws it wrapped in an `S3Error`).
    public enum Kind: Error, Sendable, Equatable {
        /// A bad argument from the caller, caught before anything was sent.
        case invalidArgument(String)
        /// The server answered with an error status. `code` and `message` come from S3's XML
        /// `<Error>` body (nil when there is none, as for HEAD).
        case service(status: Int, code: String?, message: String?)
        /// The range starts at or past the object's end (HTTP 416, or a 200 answer with a shorter object).
        case rangeNotSatisfiable(S3ByteRange, objectSizeBytes: Int64?)
        /// The call's deadline passed (connection, request and response together).
        case timedOut(afterMs: Int64)
        /// No connection could be made (refused, unreachable, connect timeout): nothing was sent.
        case connectFailed(String)
        /// The connection broke after the request may have been sent.
        case connectionLost(String)
        /// An answer that is not what S3 sends: bad XML, a missing header, a Content-Range that does
        /// not match the request, a body of another length than announced.
        case malformedResponse(String)
        /// A response body larger than the call's bound, refused before it was read whole.
        case responseTooLarge(limitBytes: Int)
        /// The calling task was cancelled.
        case cancelled
    }

    public let operation: S3Operation
    public let bucket: String
    public let key: String?
    public let kind: Kind

    public init(_ operation: S3Operation, bucket: String, key: String?, _ kind: Kind) {
        self.operation = operation
        self.bucket = bucket
        self.key = key
        self.kind = kind
    }

    /// S3's error code (`NoSuchKey`, `SignatureDoesNotMatch`, ...), when the server sent one.
    public var code: String? {
        if case .service(_, let code, _) = kind { return code }
        return nil
    }

    /// The HTTP status of a server's error answer.
    public var status: Int? {
        switch kind {
        case .service(let status, _, _): status
        case .rangeNotSatisfiable: 416
        default: nil
        }
    }

    /// The server refused the credentials or the signature (HTTP 403 with an authentication code,
    /// or a 403 without a body, as HEAD answers).
    public var isAuthFailure: Bool {
        guard case .service(403, let code, _) = kind else { return false }
        guard let code else { return true }
        return ["AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationHeaderMalformed",
                "RequestTimeTooSkewed", "InvalidToken", "ExpiredToken"].contains(code)
    }

    /// The bucket, key or upload does not exist (HTTP 404).
    public var isNotFound: Bool { status == 404 }

    /// True when the call may have changed the store although it failed: a write whose request may
    /// have reached the server (deadline, lost connection, cancellation, or a 5xx answer).
    public var outcomeUnknown: Bool {
        guard operation.mayWrite else { return false }
        switch kind {
        case .timedOut, .connectionLost, .cancelled: return true
        case .service(let status, _, _): return status >= 500
        default: return false
        }
    }

    public var description: String {
        let target = key.map { "\(bucket)/\($0)" } ?? bucket
        let what: String
        switch kind {
        case .invalidArgument(let text): what = "invalid argument: \(text)"
        case .service(let status, let code, let message):
            what = "HTTP \(status)" + (code.map { " \($0)" } ?? "") + (message.map { ": \($0)" } ?? "")
        case .rangeNotSatisfiable(let range, let size):
            what = "range \(range) not satisfiable" + (size.map { " (object is \($0) bytes)" } ?? "")
        case .timedOut(let ms): what = "no answer within the \(ms) ms deadline"
        case .connectFailed(let text): what = "cannot connect: \(text)"
        case .connectionLost(let text): what = "connection lost: \(text)"
        case .malformedResponse(let text): what = "malformed answer: \(text)"
        case .responseTooLarge(let limit): what = "response larger than the \(limit)-byte bound"
        case .cancelled: what = "cancelled"
        }
        return "S3 \(operation) \(target): \(what)"
    }
}

/// Size and ETag of an object (HEAD). `etag` is without its quotes.
public struct S3ObjectInfo: Sendable, Equatable {
    public let sizeBytes: Int64
    public let etag: String
    public let lastModified: String?
}

/// How the server answered a ranged GET.
public enum S3RangeAnswer: Sendable, Equatable {
    /// No range was asked for: the whole object, 200.
    case wholeObject
    /// 206 Partial Content with a matching Content-Range: S3's answer.
    case partial
    /// 200 OK carrying the range alone with a matching Content-Range (what rclone 1.75.2 answers).
    case partialWithStatus200
    /// 200 OK with the whole object: the range was ignored; the client cut the range out.
    case rangeIgnored
}

/// Bytes of an object read by a GET: `bytes` start at `offset` of the object. Fewer bytes than asked
/// come back only when the range runs past the object's end.
public struct S3ObjectData: Sendable, Equatable {
    public let bytes: [UInt8]
    public let offset: Int64
    /// The object's size, when the answer says it (Content-Range, or the whole object's length).
    public let objectSizeBytes: Int64?
    public let etag: String?
    public let answer: S3RangeAnswer
}

/// One object of a listing. `etag` is without its quotes.
public struct S3ListEntry: Sendable, Equatable {
    public let key: String
    public let sizeBytes: Int64
    public let etag: String
    public let lastModified: String?
}

/// One page of ListObjectsV2. When `isTruncated`, `nextContinuationToken` fetches the next page.
public struct S3ListPage: Sendable, Equatable {
    public let entries: [S3ListEntry]
    public let isTruncated: Bool
    public let nextContinuationToken: String?
}

/// A part the server took: pass them all, in order, to `completeMultipartUpload`.
public struct S3UploadedPart: Sendable, Equatable {
    public let partNumber: Int
    public let etag: String
    public let sizeBytes: Int
}

/// The client's counters since it was made (monotonic; the gateway reports them).
public struct S3ClientStats: Sendable, Equatable {
    /// Requests sent, and those that ended in an error (an error status, a transport failure, or an
    /// answer that could not be used; arguments refused before sending are not counted).
    public var requests: UInt64 = 0
    public var failures: UInt64 = 0
    /// Request and response body bytes.
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// GETs that asked for a range.
    public var rangeRequests: UInt64 = 0
    /// Ranged GETs answered with the whole object (200, no Content-Range), and the bytes of those
    /// answers outside the range (read, then dropped).
    public var rangeIgnoredByServer: UInt64 = 0
    public var rangeBytesDiscarded: UInt64 = 0
    /// Ranged GETs answered with the range alone but status 200 instead of 206.
    public var rangePartialWithStatus200: UInt64 = 0
}
