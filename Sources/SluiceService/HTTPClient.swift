// Path: Sources/SluiceService/HTTPClient.swift — one blocking HTTP/1.1 GET over swift-nio's client
// pipeline (NIOHTTP1), bounded in time and size: what `sluice stats` and the tests scrape with.
import NIOCore
import NIOHTTP1
import NIOPosix
import SystemPackage

/// Why a GET failed. `endpoint` is `host:port` as asked for.
public enum HTTPClientError: Error, Equatable, CustomStringConvertible {
    /// The host name did not resolve.
    case unresolved(endpoint: String)
    /// Nothing listens there or the network refused: the error of the connect.
    case connect(endpoint: String, errno: Errno)
    /// No complete response within the deadline (connecting included).
    case timeout(endpoint: String, deadlineMs: Int)
    /// The response is larger than `responseBytesMax`; reading stopped there.
    case responseTooLarge(endpoint: String, responseBytesMax: Int)
    /// The server closed the connection before the response ended.
    case closedEarly(endpoint: String)
    /// The bytes are not an HTTP/1 response (swift-nio's decoder error).
    case malformed(endpoint: String, HTTPParserError)

    public var description: String {
        switch self {
        case let .unresolved(endpoint): "cannot resolve \(endpoint)"
        case let .connect(endpoint, errno): "cannot connect to \(endpoint): \(errno)"
        case let .timeout(endpoint, deadlineMs): "\(endpoint): no complete response within \(deadlineMs) ms"
        case let .responseTooLarge(endpoint, bytesMax): "\(endpoint): response larger than \(bytesMax) bytes"
        case let .closedEarly(endpoint): "\(endpoint): connection closed before the response ended"
        case let .malformed(endpoint, error): "\(endpoint): not an HTTP/1 response (\(error))"
        }
    }

    /// The endpoint could not be reached at all (as opposed to answering badly).
    public var isUnreachable: Bool {
        switch self {
        case .unresolved, .connect, .timeout: true
        case .responseTooLarge, .closedEarly, .malformed: false
        }
    }
}

/// A complete response: the status code and the body (de-chunked by the decoder).
public struct HTTPClientResponse: Sendable, Equatable {
    public var status: Int
    public var body: String
    public init(status: Int, body: String) {
        self.status = status
        self.body = body
    }
}

/// GET over swift-nio's HTTP/1.1 client pipeline on the process's shared event loop group.
public enum HTTPClient {
    /// Largest response taken by default (status line, headers and body); metrics are far smaller.
    public static let responseBytesMaxDefault = 16 << 20
    /// Deadline of a whole request by default: connect, send, read to the end.
    public static let deadlineMsDefault = 5_000

    /// `GET path` from `host:port` (an IP literal or a name). Blocks the calling thread (never call it
    /// from an event loop) for at most `deadlineMs`. Any status is a response; only transport and
    /// framing problems throw.
    public static func get(host: String, port: Int, path: String, deadlineMs: Int = deadlineMsDefault,
                           responseBytesMax: Int = responseBytesMaxDefault) throws(HTTPClientError) -> HTTPClientResponse {
        precondition((0...65535).contains(port), "port out of range")
        precondition(deadlineMs > 0)
        precondition(responseBytesMax > 0)
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let group = MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        let done = loop.makePromise(of: HTTPClientResponse.self)
        let deadline = NIODeadline.now() + .milliseconds(Int64(deadlineMs))
        let timer = loop.scheduleTask(deadline: deadline) {
            done.fail(HTTPClientError.timeout(endpoint: endpoint, deadlineMs: deadlineMs))
        }
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(Int64(deadlineMs)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        ResponseCollector(endpoint: endpoint, responseBytesMax: responseBytesMax, done: done))
                }
            }
        let connected = bootstrap.connect(host: host, port: port)
        connected.whenFailure { error in done.fail(connectError(error, endpoint: endpoint, deadlineMs: deadlineMs)) }
        connected.whenSuccess { channel in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: endpoint)
            headers.add(name: "Accept", value: "text/plain")
            headers.add(name: "Connection", value: "close")
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            // However the request ends (answer, timeout, error), the connection goes with it.
            done.futureResult.whenComplete { _ in channel.close(promise: nil) }
        }
        defer { timer.cancel() }
        do {
            return try done.futureResult.wait()
        } catch let error as HTTPClientError {
            throw error
        } catch {
            preconditionFailure("the response promise fails with HTTPClientError only, got \(error)")
        }
    }

    /// A failed connect as a typed error (errors from the resolver, the connect, the timeout).
    static func connectError(_ error: any Error, endpoint: String, deadlineMs: Int) -> HTTPClientError {
        if case ChannelError.connectTimeout = error { return .timeout(endpoint: endpoint, deadlineMs: deadlineMs) }
        if let error = error as? IOError { return .connect(endpoint: endpoint, errno: Errno(rawValue: error.errnoCode)) }
        if let error = error as? NIOConnectionError {
            for failure in error.connectionErrors {
                if case ChannelError.connectTimeout = failure.error { return .timeout(endpoint: endpoint, deadlineMs: deadlineMs) }
                if let io = failure.error as? IOError { return .connect(endpoint: endpoint, errno: Errno(rawValue: io.errnoCode)) }
            }
            return .unresolved(endpoint: endpoint)
        }
        if error is SocketAddressError { return .unresolved(endpoint: endpoint) }
        return .connect(endpoint: endpoint, errno: .ioError)
    }
}

/// Gathers one response and completes `done` at its end, or fails it (too large, closed early,
/// malformed). Stops reading from the moment the bound is passed.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let endpoint: String
    private let responseBytesMax: Int
    private let done: EventLoopPromise<HTTPClientResponse>
    private var status = 0
    private var body: ByteBuffer?
    private var responseBytes = 0

    init(endpoint: String, responseBytesMax: Int, done: EventLoopPromise<HTTPClientResponse>) {
        self.endpoint = endpoint
        self.responseBytesMax = responseBytesMax
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            // The head's size as sent, about: the status line and each header line.
            responseBytes += 16 + head.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
            checkSize(context: context)
        case .body(var part):
            responseBytes += part.readableBytes
            guard checkSize(context: context) else { return }
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            let text = body.map { String(buffer: $0) } ?? ""
            done.succeed(HTTPClientResponse(status: status, body: text))
        }
    }

    @discardableResult
    private func checkSize(context: ChannelHandlerContext) -> Bool {
        guard responseBytes > responseBytesMax else { return true }
        done.fail(HTTPClientError.responseTooLarge(endpoint: endpoint, responseBytesMax: responseBytesMax))
        body = nil
        context.close(promise: nil)
        return false
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.fail(HTTPClientError.closedEarly(endpoint: endpoint))  // a no-op once completed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            done.fail(HTTPClientError.malformed(endpoint: endpoint, error))
        } else if let error = error as? IOError {
            done.fail(HTTPClientError.connect(endpoint: endpoint, errno: Errno(rawValue: error.errnoCode)))
        } else {
            done.fail(HTTPClientError.closedEarly(endpoint: endpoint))
        }
        context.close(promise: nil)
    }
}
