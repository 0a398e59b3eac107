// Path: Sources/SluiceGateway/S3/S3Client.swift — an S3 client over async-http-client: path-style
// URLs, SigV4 (S3Signer), one pool of keep-alive connections, a deadline and a body bound on every
// call, typed errors. Operations: buckets, objects (ranged GETs), listings, multipart uploads.
import AsyncHTTPClient
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A configuration the client cannot work with, refused by `S3Client.init`.
public struct S3ConfigurationError: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public var description: String { "S3 configuration: \(reason)" }
}

/// An S3 client. Safe to share between tasks: calls run concurrently over pooled keep-alive
/// connections (at most `connectionsMax`). Never retries: a failed call says whether a write may have
/// been applied (`S3Error.outcomeUnknown`). `S3Client.with` runs a body with one and shuts it down; a
/// client made with `init` must be shut down with `shutdown()` once done.
public final class S3Client: Sendable {
    public let configuration: S3Configuration
    private let signer: S3Signer
    private let http: HTTPClient
    /// The `Host` header: the endpoint's `HOST:PORT` exactly as configured (it is signed).
    private let authority: String
    private let counters = S3Counters()

    /// Runs `body` with a client for `configuration`, and shuts the client down after it, thrown or not.
    public static func with<Result>(
        _ configuration: S3Configuration, _ body: (S3Client) async throws -> Result
    ) async throws -> Result {
        let client = try S3Client(configuration)
        let result: Result
        do {
            result = try await body(client)
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
        return result
    }

    /// Checks `configuration` and makes the connection pool; connects nothing yet. Never blocks.
    public init(_ configuration: S3Configuration) throws(S3ConfigurationError) {
        authority = try Self.authority(of: configuration.endpoint)
        guard (1...S3Limits.callTimeoutMsMax).contains(configuration.callTimeoutMs),
              (1...S3Limits.callTimeoutMsMax).contains(configuration.connectTimeoutMs) else {
            throw S3ConfigurationError(reason: "timeouts must be in 1...\(S3Limits.callTimeoutMsMax) ms")
        }
        guard (1...S3Limits.responseBytesMaxLimit).contains(configuration.responseBytesMax) else {
            throw S3ConfigurationError(reason: "responseBytesMax not in 1...\(S3Limits.responseBytesMaxLimit)")
        }
        guard (1...S3Limits.connectionsMaxLimit).contains(configuration.connectionsMax) else {
            throw S3ConfigurationError(reason: "connectionsMax not in 1...\(S3Limits.connectionsMaxLimit)")
        }
        guard (1...S3Limits.partSizeMaxBytes).contains(configuration.partSizeMinBytes) else {
            throw S3ConfigurationError(reason: "partSizeMinBytes not in 1...\(S3Limits.partSizeMaxBytes)")
        }
        guard !configuration.accessKey.isEmpty, !configuration.secretKey.isEmpty, !configuration.region.isEmpty else {
            throw S3ConfigurationError(reason: "access key, secret key and region must not be empty")
        }
        var settings = HTTPClient.Configuration()
        settings.timeout = .init(connect: .milliseconds(configuration.connectTimeoutMs))
        // A refused connection fails the call at once instead of being retried until the deadline.
        settings.connectionPool.retryConnectionEstablishment = false
        settings.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = configuration.connectionsMax
        settings.httpVersion = .http1Only
        settings.decompression = .disabled
        self.configuration = configuration
        self.signer = S3Signer(accessKey: configuration.accessKey, secretKey: configuration.secretKey,
                               region: configuration.region)
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: settings)
    }

    /// Closes every connection. Call once, after the last call.
    public func shutdown() async {
        try? await http.shutdown()
    }

    /// The counters so far (each read atomically; together, not one instant).
    public var stats: S3ClientStats { counters.snapshot() }

    // MARK: Buckets and objects

    /// Creates `bucket` (with a LocationConstraint outside us-east-1). An existing bucket is a
    /// `.service` error with code `BucketAlreadyOwnedByYou` or `BucketAlreadyExists`.
    public func createBucket(_ bucket: String, timeoutMs: Int64? = nil) async throws(S3Error) {
        var call = try Call(.createBucket, bucket, nil, .PUT, timeoutMs: timeoutMs, configuration)
        if configuration.region != "us-east-1" {
            call.body = Array(("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + "<LocationConstraint>\(S3XML.escape(configuration.region))</LocationConstraint>"
                + "</CreateBucketConfiguration>").utf8)
        }
        _ = try await perform(call)
    }

    /// Stores `bytes` as `key` in one PUT (at most `S3Limits.putObjectBytesMax`). Returns the ETag.
    public func putObject(bucket: String, key: String, bytes: [UInt8], timeoutMs: Int64? = nil) async throws(S3Error) -> String {
        var call = try Call(.putObject, bucket, key, .PUT, timeoutMs: timeoutMs, configuration)
        guard bytes.count <= S3Limits.putObjectBytesMax else {
            throw call.error(.invalidArgument("\(bytes.count) bytes: one PUT takes at most \(S3Limits.putObjectBytesMax)"))
        }
        call.body = bytes
        return try etag(try await perform(call), call)
    }

    /// Reads `key`, or `range` of it. Answers with the range alone (206, or 200 with Content-Range)
    /// are checked against the range; a 200 with the whole object is cut to the range here (and
    /// counted in `rangeIgnoredByServer`), never read past `responseBytesMax` (this call's, at most
    /// `S3Limits.responseBytesMaxLimit`; the configuration's when nil). A range that starts at or past
    /// the end is `.rangeNotSatisfiable`; one that runs past the end answers the bytes up to it.
    public func getObject(bucket: String, key: String, range: S3ByteRange? = nil, responseBytesMax: Int? = nil,
                          timeoutMs: Int64? = nil) async throws(S3Error) -> S3ObjectData {
        var call = try Call(.getObject, bucket, key, .GET, timeoutMs: timeoutMs, configuration)
        if let responseBytesMax {
            guard (1...S3Limits.responseBytesMaxLimit).contains(responseBytesMax) else {
                throw call.error(.invalidArgument("responseBytesMax \(responseBytesMax) not in 1...\(S3Limits.responseBytesMaxLimit)"))
            }
            call.responseBytesMax = responseBytesMax
        }
        call.range = range
        if range != nil { counters.rangeRequests.add(1, ordering: .relaxed) }
        let answer = try await perform(call)
        let data: S3ObjectData
        do {
            data = try S3RangeReading.read(range: range, status: answer.status,
                                           contentRange: answer.headers.first(name: "content-range"),
                                           body: answer.body, etag: answer.headers.first(name: "etag").map(Self.unquoted))
        } catch {
            throw failed(call, error)
        }
        switch data.answer {
        case .rangeIgnored:
            counters.rangeIgnoredByServer.add(1, ordering: .relaxed)
            counters.rangeBytesDiscarded.add(UInt64(answer.body.count - data.bytes.count), ordering: .relaxed)
        case .partialWithStatus200:
            counters.rangePartialWithStatus200.add(1, ordering: .relaxed)
        case .partial, .wholeObject:
            break
        }
        return data
    }

    /// Size and ETag of `key`. A missing key is a `.service` error with status 404 (HEAD has no body,
    /// so no S3 code).
    public func headObject(bucket: String, key: String, timeoutMs: Int64? = nil) async throws(S3Error) -> S3ObjectInfo {
        let call = try Call(.headObject, bucket, key, .HEAD, timeoutMs: timeoutMs, configuration)
        let answer = try await perform(call)
        guard let length = answer.headers.first(name: "content-length").flatMap({ Int64($0) }), length >= 0 else {
            throw failed(call, .malformedResponse("no Content-Length"))
        }
        return S3ObjectInfo(sizeBytes: length, etag: try etag(answer, call),
                            lastModified: answer.headers.first(name: "last-modified"))
    }

    /// Deletes `key`. Deleting a key that does not exist succeeds, as on S3.
    public func deleteObject(bucket: String, key: String, timeoutMs: Int64? = nil) async throws(S3Error) {
        _ = try await perform(try Call(.deleteObject, bucket, key, .DELETE, timeoutMs: timeoutMs, configuration))
    }

    /// One page of the keys under `prefix` (all when empty), in key order, at most `maxKeys`
    /// (1...1000); pass the page's `nextContinuationToken` for the next one. Keys travel URL-encoded
    /// (`encoding-type=url`) and are decoded here.
    public func listObjectsV2(bucket: String, prefix: String = "", continuationToken: String? = nil,
                              maxKeys: Int = S3Limits.listKeysMax, timeoutMs: Int64? = nil) async throws(S3Error) -> S3ListPage {
        var call = try Call(.listObjectsV2, bucket, nil, .GET, timeoutMs: timeoutMs, configuration)
        guard (1...S3Limits.listKeysMax).contains(maxKeys) else {
            throw call.error(.invalidArgument("maxKeys \(maxKeys) not in 1...\(S3Limits.listKeysMax)"))
        }
        guard prefix.utf8.count <= S3Limits.keyBytesMax else {
            throw call.error(.invalidArgument("prefix longer than \(S3Limits.keyBytesMax) bytes"))
        }
        call.query = [("list-type", "2"), ("max-keys", String(maxKeys)), ("encoding-type", "url")]
        if !prefix.isEmpty { call.query.append(("prefix", prefix)) }
        if let continuationToken { call.query.append(("continuation-token", continuationToken)) }
        let root = try xml(try await perform(call), call, expecting: "ListBucketResult")
        do throws(S3Error.Kind) {
            return try S3Responses.listPage(root)
        } catch {
            throw failed(call, error)
        }
    }

    // MARK: Multipart upload

    /// Starts a multipart upload of `key`; returns its upload ID. Every started upload must be
    /// completed or aborted (the server keeps its parts until then).
    public func createMultipartUpload(bucket: String, key: String, timeoutMs: Int64? = nil) async throws(S3Error) -> String {
        var call = try Call(.createMultipartUpload, bucket, key, .POST, timeoutMs: timeoutMs, configuration)
        call.query = [("uploads", "")]
        // rclone 1.75.2 names the root <InitiateMultipartUpload>, S3 <InitiateMultipartUploadResult>.
        let root = try xml(try await perform(call), call,
                           expecting: "InitiateMultipartUploadResult", or: "InitiateMultipartUpload")
        guard let uploadID = root.text("UploadId"), !uploadID.isEmpty else {
            throw failed(call, .malformedResponse("no UploadId"))
        }
        return uploadID
    }

    /// Sends part `partNumber` (1...10,000) of an upload: at most `S3Limits.partSizeMaxBytes`; all
    /// parts but the last at least `partSizeMinBytes` (checked by `completeMultipartUpload`).
    public func uploadPart(bucket: String, key: String, uploadID: String, partNumber: Int, bytes: [UInt8],
                           timeoutMs: Int64? = nil) async throws(S3Error) -> S3UploadedPart {
        var call = try Call(.uploadPart, bucket, key, .PUT, timeoutMs: timeoutMs, configuration)
        guard (1...S3Limits.partNumberMax).contains(partNumber) else {
            throw call.error(.invalidArgument("part number \(partNumber) not in 1...\(S3Limits.partNumberMax)"))
        }
        guard (1...S3Limits.partSizeMaxBytes).contains(bytes.count) else {
            throw call.error(.invalidArgument("part of \(bytes.count) bytes not in 1...\(S3Limits.partSizeMaxBytes)"))
        }
        guard !uploadID.isEmpty else { throw call.error(.invalidArgument("empty upload ID")) }
        call.query = [("partNumber", String(partNumber)), ("uploadId", uploadID)]
        call.body = bytes
        let etag = try self.etag(try await perform(call), call)
        return S3UploadedPart(partNumber: partNumber, etag: etag, sizeBytes: bytes.count)
    }

    /// Joins `parts` (in increasing part number, every one but the last at least `partSizeMinBytes`)
    /// into the object. Returns its ETag. S3 may answer 200 with an `<Error>` body: that is an error here.
    public func completeMultipartUpload(bucket: String, key: String, uploadID: String, parts: [S3UploadedPart],
                                        timeoutMs: Int64? = nil) async throws(S3Error) -> String {
        var call = try Call(.completeMultipartUpload, bucket, key, .POST, timeoutMs: timeoutMs, configuration)
        if let reason = S3Responses.partsProblem(parts, sizeMinBytes: configuration.partSizeMinBytes) {
            throw call.error(.invalidArgument(reason))
        }
        guard !uploadID.isEmpty else { throw call.error(.invalidArgument("empty upload ID")) }
        call.query = [("uploadId", uploadID)]
        call.headers = [("content-type", "application/xml")]
        call.body = Array(S3Responses.completeBody(parts).utf8)
        let root = try xml(try await perform(call), call, expecting: "CompleteMultipartUploadResult")
        return root.text("ETag").map(Self.unquoted) ?? ""
    }

    /// Abandons an upload and its parts. Aborting an unknown upload is a 404 `NoSuchUpload`.
    public func abortMultipartUpload(bucket: String, key: String, uploadID: String, timeoutMs: Int64? = nil) async throws(S3Error) {
        var call = try Call(.abortMultipartUpload, bucket, key, .DELETE, timeoutMs: timeoutMs, configuration)
        guard !uploadID.isEmpty else { throw call.error(.invalidArgument("empty upload ID")) }
        call.query = [("uploadId", uploadID)]
        _ = try await perform(call)
    }

    /// Stores `bytes` as `key` by a multipart upload of `partSizeBytes` parts (the last one shorter),
    /// sent one after the other in part order. On any failure the upload is aborted (best effort,
    /// within its own deadline) and the first error is thrown. Returns the object's ETag.
    public func putObjectMultipart(bucket: String, key: String, bytes: [UInt8], partSizeBytes: Int,
                                   timeoutMs: Int64? = nil) async throws(S3Error) -> String {
        guard partSizeBytes >= configuration.partSizeMinBytes, partSizeBytes <= S3Limits.partSizeMaxBytes,
              !bytes.isEmpty, (bytes.count + partSizeBytes - 1) / partSizeBytes <= S3Limits.partNumberMax else {
            throw S3Error(.createMultipartUpload, bucket: bucket, key: key, .invalidArgument(
                "\(bytes.count) bytes in parts of \(partSizeBytes): parts must be \(configuration.partSizeMinBytes)"
                + "...\(S3Limits.partSizeMaxBytes) bytes, at most \(S3Limits.partNumberMax) of them"))
        }
        let uploadID = try await createMultipartUpload(bucket: bucket, key: key, timeoutMs: timeoutMs)
        do {
            var parts: [S3UploadedPart] = []
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + partSizeBytes, bytes.count)
                parts.append(try await uploadPart(bucket: bucket, key: key, uploadID: uploadID,
                                                  partNumber: parts.count + 1, bytes: Array(bytes[offset..<end]),
                                                  timeoutMs: timeoutMs))
                offset = end
            }
            return try await completeMultipartUpload(bucket: bucket, key: key, uploadID: uploadID, parts: parts,
                                                     timeoutMs: timeoutMs)
        } catch {
            try? await abortMultipartUpload(bucket: bucket, key: key, uploadID: uploadID, timeoutMs: timeoutMs)
            throw error
        }
    }

    // MARK: Calls

    /// One request as the operations describe it; `perform` signs and sends it.
    private struct Call {
        let operation: S3Operation
        let bucket: String
        let key: String?
        let method: HTTPMethod
        let timeoutMs: Int64
        var responseBytesMax: Int
        var query: [(name: String, value: String)] = []
        /// Headers signed in addition to host, x-amz-date and x-amz-content-sha256.
        var headers: [(name: String, value: String)] = []
        var body: [UInt8]? = nil
        /// Sent as `Range`, not signed (see docs/GATEWAY.md: a proxy may rewrite it; the answer is
        /// checked against it).
        var range: S3ByteRange? = nil

        /// Checks the bucket name, key and timeout before anything is sent.
        init(_ operation: S3Operation, _ bucket: String, _ key: String?, _ method: HTTPMethod,
             timeoutMs: Int64?, _ configuration: S3Configuration) throws(S3Error) {
            self.operation = operation
            self.bucket = bucket
            self.key = key
            self.method = method
            self.timeoutMs = timeoutMs ?? configuration.callTimeoutMs
            self.responseBytesMax = configuration.responseBytesMax
            if let reason = S3Responses.bucketProblem(bucket) ?? key.flatMap(S3Responses.keyProblem) {
                throw error(.invalidArgument(reason))
            }
            guard (1...S3Limits.callTimeoutMsMax).contains(self.timeoutMs) else {
                throw error(.invalidArgument("timeout \(self.timeoutMs) ms not in 1...\(S3Limits.callTimeoutMsMax)"))
            }
        }

        func error(_ kind: S3Error.Kind) -> S3Error { S3Error(operation, bucket: bucket, key: key, kind) }

        var path: String { "/\(bucket)" + (key.map { "/\($0)" } ?? "") }
    }

    /// An answer with its body read: a 2xx body within the call's bound, an error body cut at
    /// `S3Limits.errorBodyBytesMax`.
    private struct Answer: Sendable {
        let status: Int
        let headers: HTTPHeaders
        let body: [UInt8]
    }

    private struct DeadlinePassed: Error {}

    /// Signs `call`, sends it and reads the answer, all within the call's deadline. A non-2xx status
    /// is thrown as S3's error (416 as `.rangeNotSatisfiable`). Counts requests, bytes and failures.
    private func perform(_ call: Call) async throws(S3Error) -> Answer {
        let request = prepare(call)
        counters.requests.add(1, ordering: .relaxed)
        counters.bytesSent.add(UInt64(call.body?.count ?? 0), ordering: .relaxed)
        let outcome = await Self.exchange(http, request, call.timeoutMs, call.responseBytesMax)
        switch outcome {
        case .answered(let answer) where (200...299).contains(answer.status):
            counters.bytesReceived.add(UInt64(answer.body.count), ordering: .relaxed)
            return answer
        case .answered(let answer):
            counters.bytesReceived.add(UInt64(answer.body.count), ordering: .relaxed)
            throw failed(call, Self.statusError(answer, range: call.range))
        case .failed(let kind):
            throw failed(call, kind)
        }
    }

    /// The signed request: path-style URL built with the signer's own encoding, so what is sent is
    /// what was signed.
    private func prepare(_ call: Call) -> HTTPClientRequest {
        let body = call.body ?? []
        let payloadHash = body.isEmpty ? S3Signer.emptyPayloadHash
            : configuration.payloadSigning == .sha256 ? S3Signer.payloadHash(body) : S3Signer.unsignedPayload
        let time = S3Timestamp.now()
        let signed = [("host", authority), ("x-amz-content-sha256", payloadHash), ("x-amz-date", time.amzDate)]
            + call.headers
        let signature = signer.sign(method: call.method.rawValue, path: call.path, query: call.query,
                                    headers: signed, payloadHash: payloadHash, at: time)
        var url = configuration.endpoint.trimmingTrailingSlash() + S3Signer.canonicalURI(call.path)
        if !call.query.isEmpty { url += "?" + S3Signer.canonicalQuery(call.query) }
        var request = HTTPClientRequest(url: url)
        request.method = call.method
        request.headers.add(name: "Host", value: authority)
        for (name, value) in signed where name != "host" { request.headers.add(name: name, value: value) }
        request.headers.add(name: "Authorization", value: signature.authorization)
        if let range = call.range { request.headers.add(name: "Range", value: range.header) }
        if call.body != nil || call.method == .PUT || call.method == .POST { request.body = .bytes(body) }
        return request
    }

    private enum Outcome: Sendable {
        case answered(Answer)
        case failed(S3Error.Kind)
    }

    /// One request raced against the deadline (async-http-client's own deadline stops at the response
    /// head; the race also bounds reading the body).
    private static func exchange(_ http: HTTPClient, _ request: HTTPClientRequest, _ timeoutMs: Int64,
                                 _ bodyMax: Int) async -> Outcome {
        let deadline = ContinuousClock.now + .milliseconds(timeoutMs)
        let nioDeadline = NIODeadline.now() + .milliseconds(timeoutMs)
        let head = request.method == .HEAD
        do {
            return try await withThrowingTaskGroup(of: Outcome.self) { group in
                group.addTask {
                    let response = try await http.execute(request, deadline: nioDeadline)
                    let status = Int(response.status.code)
                    let success = (200...299).contains(status)
                    let limit = success ? bodyMax : S3Limits.errorBodyBytesMax
                    let length = response.headers.first(name: "content-length").flatMap { Int($0) }
                    if success, !head, let length, length > limit {
                        return .failed(.responseTooLarge(limitBytes: limit))  // refused before reading it
                    }
                    let body = head ? [] : try await readBody(response.body, limit: limit, truncate: !success,
                                                              expectedBytes: length ?? 0)
                    guard let body else { return .failed(.responseTooLarge(limitBytes: limit)) }
                    return .answered(Answer(status: status, headers: response.headers, body: body))
                }
                group.addTask {
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DeadlinePassed()
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } catch {
            return .failed(failureKind(error, timeoutMs))
        }
    }

    /// The body, at most `limit` bytes: nil past it, or the first `limit` bytes when `truncate`
    /// (error bodies: the rest is left unread and the connection closed).
    private static func readBody(_ body: HTTPClientResponse.Body, limit: Int, truncate: Bool,
                                 expectedBytes: Int) async throws -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(max(expectedBytes, 0), limit))
        for try await buffer in body {
            guard bytes.count + buffer.readableBytes <= limit else {
                if truncate {
                    bytes.append(contentsOf: buffer.readableBytesView.prefix(limit - bytes.count))
                    return bytes
                }
                return nil
            }
            bytes.append(contentsOf: buffer.readableBytesView)
        }
        return bytes
    }

    private static func failureKind(_ error: any Error, _ timeoutMs: Int64) -> S3Error.Kind {
        if error is DeadlinePassed { return .timedOut(afterMs: timeoutMs) }
        if let error = error as? HTTPClientError {
            if error == .deadlineExceeded { return .timedOut(afterMs: timeoutMs) }
            if error == .cancelled || Task.isCancelled { return .cancelled }
            if error == .connectTimeout { return .connectFailed("connect timeout") }
        }
        if error is CancellationError || Task.isCancelled { return .cancelled }
        if error is NIOConnectionError { return .connectFailed(String(describing: error)) }
        if let error = error as? ChannelError, case .connectTimeout = error { return .connectFailed("connect timeout") }
        if let error = error as? IOError, [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH].contains(error.errnoCode) {
            return .connectFailed(String(describing: error))
        }
        return .connectionLost(String(describing: error))
    }

    /// S3's `<Error><Code>...<Message>...` as `.service`; a 416 as `.rangeNotSatisfiable`.
    private static func statusError(_ answer: Answer, range: S3ByteRange?) -> S3Error.Kind {
        if answer.status == 416, let range {
            return .rangeNotSatisfiable(range, objectSizeBytes: S3RangeReading.parseUnsatisfiedTotal(
                answer.headers.first(name: "content-range")))
        }
        let root = try? S3XML.parse(answer.body)
        if let root, root.name == "Error" {
            return .service(status: answer.status, code: root.text("Code"), message: root.text("Message"))
        }
        let text = String(decoding: answer.body.prefix(256), as: UTF8.self)
        return .service(status: answer.status, code: nil, message: text.isEmpty ? nil : text)
    }

    /// The XML body's root, which must be `expecting` (or `alternative`). An `<Error>` root, which S3
    /// may send with 200 for CompleteMultipartUpload, is thrown as S3's error.
    private func xml(_ answer: Answer, _ call: Call, expecting: String,
                     or alternative: String? = nil) throws(S3Error) -> S3XMLElement {
        let root: S3XMLElement
        do {
            root = try S3XML.parse(answer.body)
        } catch {
            throw failed(call, .malformedResponse("\(error)"))
        }
        if root.name == "Error" {
            throw failed(call, .service(status: answer.status, code: root.text("Code"), message: root.text("Message")))
        }
        guard root.name == expecting || root.name == alternative else {
            throw failed(call, .malformedResponse("<\(root.name)> where <\(expecting)> was expected"))
        }
        return root
    }

    private func etag(_ answer: Answer, _ call: Call) throws(S3Error) -> String {
        guard let etag = answer.headers.first(name: "etag") else { throw failed(call, .malformedResponse("no ETag")) }
        return Self.unquoted(etag)
    }

    /// The error of a request whose answer could not be used, counted in `failures`.
    private func failed(_ call: Call, _ kind: S3Error.Kind) -> S3Error {
        counters.failures.add(1, ordering: .relaxed)
        return call.error(kind)
    }

    /// An ETag without its surrounding quotes (S3 quotes it in headers; rclone lists it bare).
    static func unquoted(_ etag: String) -> String {
        var text = Substring(etag.trimmingSpaces())
        if text.hasPrefix("W/") { text = text.dropFirst(2) }
        if text.count >= 2, text.first == "\"", text.last == "\"" { text = text.dropFirst().dropLast() }
        return String(text)
    }

    /// `HOST:PORT` of an `http://HOST[:PORT][/]` endpoint.
    private static func authority(of endpoint: String) throws(S3ConfigurationError) -> String {
        guard endpoint.hasPrefix("http://") else {
            throw S3ConfigurationError(reason: "endpoint \(endpoint) is not an http:// URL")
        }
        let authority = String(endpoint.dropFirst(7)).trimmingTrailingSlash()
        guard !authority.isEmpty, !authority.contains("/"), !authority.contains("?"), !authority.contains("@") else {
            throw S3ConfigurationError(reason: "endpoint \(endpoint) must be http://HOST[:PORT] without a path")
        }
        return authority
    }
}

extension String {
    func trimmingTrailingSlash() -> String { hasSuffix("/") ? String(dropLast()) : self }
}

/// The client's counters (relaxed atomics: each a monotonic count, read on its own).
final class S3Counters: Sendable {
    let requests = Atomic<UInt64>(0)
    let failures = Atomic<UInt64>(0)
    let bytesSent = Atomic<UInt64>(0)
    let bytesReceived = Atomic<UInt64>(0)
    let rangeRequests = Atomic<UInt64>(0)
    let rangeIgnoredByServer = Atomic<UInt64>(0)
    let rangeBytesDiscarded = Atomic<UInt64>(0)
    let rangePartialWithStatus200 = Atomic<UInt64>(0)

    func snapshot() -> S3ClientStats {
        S3ClientStats(
            requests: requests.load(ordering: .relaxed), failures: failures.load(ordering: .relaxed),
            bytesSent: bytesSent.load(ordering: .relaxed), bytesReceived: bytesReceived.load(ordering: .relaxed),
            rangeRequests: rangeRequests.load(ordering: .relaxed),
            rangeIgnoredByServer: rangeIgnoredByServer.load(ordering: .relaxed),
            rangeBytesDiscarded: rangeBytesDiscarded.load(ordering: .relaxed),
            rangePartialWithStatus200: rangePartialWithStatus200.load(ordering: .relaxed))
    }
}
