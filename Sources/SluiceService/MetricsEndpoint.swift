// Path: Sources/SluiceService/MetricsEndpoint.swift — `GET /metrics` (Prometheus text) and
// `GET /healthz` (200 "ok", or 503 with the reason) over HTTP/1.1 on one event loop thread.
import NIOCore
import NIOHTTP1
import NIOPosix

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
                            health: @escaping @Sendable () -> String? = { nil }) throws(ServiceError) -> MetricsEndpoint {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(render: render, health: health))
                }
            }
        do {
            let channel = try bootstrap.bind(host: address.host, port: address.port).wait()
            return MetricsEndpoint(host: address.host, port: channel.localAddress?.port ?? address.port,
                                   group: group, channel: channel)
        } catch {
            try? group.syncShutdownGracefully()
            throw .metrics("cannot listen on \(address): \(error)")
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

/// Answers each request when its head arrives (bodies are ignored); keep-alive as the client asks.
private final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> String
    private let health: @Sendable () -> String?
    private var keepAlive = false
    private var pending: (status: HTTPResponseStatus, body: String, contentType: String)?

    init(render: @escaping @Sendable () -> String, health: @escaping @Sendable () -> String?) {
        self.render = render
        self.health = health
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            keepAlive = head.isKeepAlive
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            switch (head.method, path) {
            case (.GET, "/metrics"):
                pending = (.ok, render(), "text/plain; version=0.0.4; charset=utf-8")
            case (.GET, "/healthz"):
                if let problem = health() {
                    pending = (.serviceUnavailable, "unhealthy: \(problem)\n", "text/plain; charset=utf-8")
                } else {
                    pending = (.ok, "ok\n", "text/plain; charset=utf-8")
                }
            case (.GET, _):
                pending = (.notFound, "not found: try /metrics\n", "text/plain; charset=utf-8")
            default:
                pending = (.methodNotAllowed, "only GET\n", "text/plain; charset=utf-8")
            }
        case .body:
            break
        case .end:
            guard let response = pending else { return }
            pending = nil
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: "\(response.body.utf8.count)")
            headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
            let head = HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: response.body.utf8.count)
            buffer.writeString(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let keepAlive = keepAlive
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { channel.close(promise: nil) }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
