// Path: Sources/SluiceService/MetricsEndpoint.swift — `GET /metrics` (Prometheus text) and
// `GET /healthz` (200 "ok", or 503 with the reason) over HTTP/1.1 on one event loop thread, with a
// bound on the replies a connection may leave unread.
import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceStorageServer

/// What one connection may have written but not yet taken by the kernel. Past either bound the next
/// request waits (and with it reading: pipelined requests stay in the socket); a connection still
/// over a bound `stalledTimeoutMs` later is closed.
public struct MetricsEndpointLimits: Sendable, Equatable {
    /// Responses written and not yet in the socket.
    public var responsesOutstandingMax = 4
    /// Bytes of those responses (a larger single response still goes out, alone).
    public var responseBytesOutstandingMax = 4 << 20
    /// How long a connection may stay over a bound (its client not reading) before it is closed.
    public var stalledTimeoutMs = 5_000
    public init() {}
}

/// A listening metrics endpoint. `bind` starts it; `close` stops it. Requests run `render` on the
/// event loop: keep it quick (it copies counters; it does no I/O).
public final class MetricsEndpoint: Sendable {
    public let host: String
    /// The port actually bound (the kernel's choice when 0 was asked for).
    public let port: Int
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel

    /// `health` returns nil when healthy, else why not (a 503 for load balancers and probes).
    public static func bind(_ address: ListenAddress, render: @escaping @Sendable () -> String,
                            health: @escaping @Sendable () -> String? = { nil },
                            limits: MetricsEndpointLimits = .init()) throws(ServiceError) -> MetricsEndpoint {
        precondition(limits.responsesOutstandingMax > 0)
        precondition(limits.responseBytesOutstandingMax > 0)
        precondition(limits.stalledTimeoutMs > 0)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(render: render, health: health, limits: limits))
                }
            }
        do {
            let channel = try bootstrap.bind(host: address.host, port: address.port).wait()
            return MetricsEndpoint(host: address.host, port: channel.localAddress?.port ?? address.port,
                                   group: group, channel: channel)
        } catch {
            try? group.syncShutdownGracefully()
            throw .metricsListen(address, BindFailure(error))
        }
    }

    private init(host: String, port: Int, group: MultiThreadedEventLoopGroup, channel: Channel) {
        self.host = host
        self.port = port
        self.group = group
        self.channel = channel
    }

    /// Stops listening and closes open connections. Blocks; not from an event loop.
    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// Answers each request at its end (bodies are ignored); keep-alive as the client asks. While the
/// connection is over its `MetricsEndpointLimits`, the request is held: `HTTPServerPipelineHandler`
/// then buffers the few already decoded and stops reading, so an unread client costs a bounded amount.
private final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private struct Response {
        var status: HTTPResponseStatus
        var body: String
        var contentType: String
    }

    private let render: @Sendable () -> String
    private let health: @Sendable () -> String?
    private let limits: MetricsEndpointLimits
    private var keepAlive = false
    private var request: (method: HTTPMethod, path: String)?
    /// A request that arrived while over a bound; answered when the writes drain.
    private var held: (method: HTTPMethod, path: String, keepAlive: Bool)?
    private var responsesOutstanding = 0
    private var bytesOutstanding = 0
    /// Closes the connection if it is still over a bound when it fires.
    private var stallTimer: Scheduled<Void>?

    init(render: @escaping @Sendable () -> String, health: @escaping @Sendable () -> String?, limits: MetricsEndpointLimits) {
        self.render = render
        self.health = health
        self.limits = limits
    }

    private var isOverBound: Bool {
        responsesOutstanding >= limits.responsesOutstandingMax || bytesOutstanding >= limits.responseBytesOutstandingMax
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            keepAlive = head.isKeepAlive
            request = (head.method, head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri)
        case .body:
            break
        case .end:
            guard let request else { return }
            self.request = nil
            precondition(held == nil, "HTTPServerPipelineHandler delivered a request before the last was answered")
            if isOverBound {
                held = (request.method, request.path, keepAlive)
                armStallTimer(context: context)
            } else {
                respond(context: context, method: request.method, path: request.path, keepAlive: keepAlive)
            }
        }
    }

    private func respond(context: ChannelHandlerContext, method: HTTPMethod, path: String, keepAlive: Bool) {
        let response = answer(method: method, path: path)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.utf8.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)
        let size = response.body.utf8.count + 256  // the head, about
        responsesOutstanding += 1
        bytesOutstanding += size
        // At a bound already: a client that sends nothing more but never reads is closed too.
        if isOverBound { armStallTimer(context: context) }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.utf8.count)
        buffer.writeString(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let channel = context.channel
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { result in
            let (handler, context) = loopBound.value
            handler.written(context: context, size: size, succeeded: (try? result.get()) != nil)
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    /// A response left for the kernel (or failed): answer a held request once under the bounds.
    private func written(context: ChannelHandlerContext, size: Int, succeeded: Bool) {
        responsesOutstanding -= 1
        bytesOutstanding -= size
        precondition(responsesOutstanding >= 0 && bytesOutstanding >= 0)
        guard succeeded, context.channel.isActive, !isOverBound else { return }
        stallTimer?.cancel()
        stallTimer = nil
        if let held {
            self.held = nil
            respond(context: context, method: held.method, path: held.path, keepAlive: held.keepAlive)
        }
    }

    private func armStallTimer(context: ChannelHandlerContext) {
        guard stallTimer == nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        stallTimer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(limits.stalledTimeoutMs))) {
            let (handler, context) = loopBound.value
            handler.stallTimer = nil
            guard handler.isOverBound || handler.held != nil else { return }
            // Abort (RST): a plain close would queue the FIN behind replies the client never reads,
            // and the kernel would keep them until its own orphan timeout.
            guard let socket = context.channel as? SocketOptionProvider else {
                context.close(promise: nil)
                return
            }
            socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in context.close(promise: nil) }
        }
    }

    private func answer(method: HTTPMethod, path: String) -> Response {
        switch (method, path) {
        case (.GET, "/metrics"):
            return Response(status: .ok, body: render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case (.GET, "/healthz"):
            if let problem = health() {
                return Response(status: .serviceUnavailable, body: "unhealthy: \(problem)\n", contentType: "text/plain; charset=utf-8")
            }
            return Response(status: .ok, body: "ok\n", contentType: "text/plain; charset=utf-8")
        case (.GET, _):
            return Response(status: .notFound, body: "not found: try /metrics\n", contentType: "text/plain; charset=utf-8")
        default:
            return Response(status: .methodNotAllowed, body: "only GET\n", contentType: "text/plain; charset=utf-8")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        stallTimer?.cancel()
        stallTimer = nil
        held = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
