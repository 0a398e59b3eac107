// Path: Sources/SluiceOverlay/OverlayAgentServer.swift — the leasing agent's request protocol over TCP
// (SwiftNIO): JSON lines, one request and one answer per line, versioned, frames bounded.
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// The agent protocol, version 1. A request is one JSON object on one line (`\n`-terminated), at most
/// `frameBytesMax` bytes; the answer is one line too, in request order on the connection.
///
///     {"v":1,"op":"grant","service":"web","consumerHost":"h1","consumerVM":"c1","requestID":"9f3a..."}
///     {"v":1,"op":"revoke","consumerHost":"h1","leaseID":7587}
///     {"v":1,"op":"renew","leaseID":7587}
///     {"v":1,"op":"stats"}
///     -> {"v":1,"ok":true,"grant":{"epoch":..,"record":{..}}}  or  {"v":1,"ok":false,"error":"no_capacity","message":".."}
///
/// A line that is not such a request gets `malformed_request` and the connection goes on; a line over
/// the bound gets `frame_too_long` and the agent closes the connection (it cannot find the next line).
public enum OverlayAgentProtocol {
    public static let version = 1
    public static let frameBytesMax = 16 * 1024
    /// Connections one agent serves at once; more are answered `agent_full` and closed.
    public static let connectionsMax = 256
    /// A connection with no request read and no answer written for this long is closed (a client that
    /// went quiet, or one that sends and never reads: its answers stop leaving, the agent stops reading).
    public static let idleTimeoutMsDefault: Int64 = 30_000
    /// Answers queued on one connection beyond what its socket took (and the socket's send buffer, set to the
    /// same, which the kernel doubles): past the high mark the connection's task waits (it reads no further
    /// request) until the client reads, or the idle timeout closes it.
    public static let outputBufferedBytesMax = 64 * 1024

    public struct Request: Codable, Sendable, Equatable {
        public var v: Int
        public var op: String
        public var service: String?
        public var consumerHost: String?
        public var consumerVM: String?
        public var leaseID: Int64?
        /// `grant`: names the request; every agent asked with the same ID answers the same grant.
        public var requestID: String?

        public init(op: String, service: String? = nil, consumerHost: String? = nil, consumerVM: String? = nil, leaseID: Int64? = nil,
                    requestID: String? = nil) {
            self.v = OverlayAgentProtocol.version
            self.requestID = requestID
            self.op = op
            self.service = service
            self.consumerHost = consumerHost
            self.consumerVM = consumerVM
            self.leaseID = leaseID
        }
    }

    public struct Response: Codable, Sendable, Equatable {
        public var v: Int
        public var ok: Bool
        public var grant: OverlayGrant?
        public var ttlSeconds: Int64?
        public var error: OverlayRefusal?
        public var message: String?
        /// `stats`: the agent's counters report.
        public var stats: String?

        static func refusal(_ reason: OverlayRefusal, _ message: String) -> Response {
            Response(v: version, ok: false, error: reason, message: message)
        }
    }

    static func encodeLine<T: Encodable>(_ value: T) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var bytes = Array(try! encoder.encode(value))  // our own Codable structs: cannot fail
        bytes.append(0x0a)
        return ByteBuffer(bytes: bytes)
    }

    /// Serves one request line with `agent`.
    static func serve(_ line: [UInt8], agent: OverlayLeasingAgent) async -> Response {
        let request: Request
        do {
            request = try JSONDecoder().decode(Request.self, from: Data(line))
        } catch {
            agent.counters.refused(.malformedRequest)
            return .refusal(.malformedRequest, "not a request object: \(String(describing: error).prefix(200))")
        }
        guard request.v == version else {
            agent.counters.refused(.unsupportedVersion)
            return .refusal(.unsupportedVersion, "protocol version \(request.v); this agent speaks \(version)")
        }
        do throws(OverlayLeasingError) {
            switch request.op {
            case "grant":
                guard let service = request.service, let host = request.consumerHost, let vm = request.consumerVM else {
                    agent.counters.refused(.malformedRequest)
                    return .refusal(.malformedRequest, "grant needs service, consumerHost and consumerVM")
                }
                let grant = try await agent.grant(service: service, consumerHost: host, consumerVM: vm, requestID: request.requestID)
                return Response(v: version, ok: true, grant: grant)
            case "revoke":
                guard let host = request.consumerHost, let id = request.leaseID else {
                    agent.counters.refused(.malformedRequest)
                    return .refusal(.malformedRequest, "revoke needs consumerHost and leaseID")
                }
                try await agent.revoke(consumerHost: host, leaseID: id)
                return Response(v: version, ok: true)
            case "renew":
                guard let id = request.leaseID else {
                    agent.counters.refused(.malformedRequest)
                    return .refusal(.malformedRequest, "renew needs leaseID")
                }
                return Response(v: version, ok: true, ttlSeconds: try await agent.renew(leaseID: id))
            case "stats":
                return Response(v: version, ok: true, stats: agent.counters.report)
            default:
                agent.counters.refused(.malformedRequest)
                return .refusal(.malformedRequest, "unknown op '\(request.op.prefix(40))'")
            }
        } catch {
            if case .refused(let reason, let message) = error { return .refusal(reason, message) }
            return .refusal(.etcdUnavailable, error.description)
        }
    }
}

/// Closes its channel on an idle event (from the `IdleStateHandler` before it).
final class OverlayIdleCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// An agent's TCP listener. `bind` opens it; `run` serves connections until the task is cancelled.
public final class OverlayAgentServer: Sendable {
    public let agent: OverlayLeasingAgent
    /// The port bound (the one asked for, or the kernel's choice for 0).
    public let port: Int
    private let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let open = Atomic(0)

    private init(agent: OverlayLeasingAgent, port: Int, channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>) {
        self.agent = agent
        self.port = port
        self.channel = channel
    }

    /// Connections being served now.
    public var openConnections: Int { open.load(ordering: .relaxed) }

    /// Listens on `host:port` (an IPv4 address; port 0: any free port). Connections idle for
    /// `idleTimeoutMs` (nothing read and nothing written) are closed.
    public static func bind(agent: OverlayLeasingAgent, host: String, port: Int,
                            idleTimeoutMs: Int64 = OverlayAgentProtocol.idleTimeoutMsDefault) async throws(OverlayLeasingError) -> OverlayAgentServer {
        guard OverlayIPv4.parse(host) != nil, (0...65535).contains(port) else {
            throw .invalidValue("listen address \(host.prefix(40)):\(port) is not IPv4:PORT")
        }
        guard (1...3_600_000).contains(idleTimeoutMs) else { throw .invalidValue("idle timeout \(idleTimeoutMs) ms not in 1...3600000") }
        do {
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 128)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: OverlayAgentProtocol.outputBufferedBytesMax / 2,
                                                                         high: OverlayAgentProtocol.outputBufferedBytesMax))
                .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: OverlayAgentProtocol.frameBytesMax))
                // The kernel's share too: without it the send buffer autotunes up to tcp_wmem's max (MBs).
                .childChannelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(OverlayAgentProtocol.outputBufferedBytesMax))
                .childChannelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(OverlayAgentProtocol.outputBufferedBytesMax))
                .bind(host: host, port: port) { child in
                    child.eventLoop.makeCompletedFuture {
                        // Idle = no read and no completed write (a write stuck on a full socket does not count).
                        try child.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: .milliseconds(idleTimeoutMs)))
                        try child.pipeline.syncOperations.addHandler(OverlayIdleCloser())
                        // Inbound bounded too: at most 4 reads of at most 16 KiB wait for the connection's task.
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: child,
                            configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 4)))
                    }
                }
            let bound = channel.channel.localAddress?.port ?? port
            return OverlayAgentServer(agent: agent, port: bound, channel: channel)
        } catch {
            throw .invalidValue("cannot listen on \(host):\(port): \(error)")
        }
    }

    /// Accepts and serves connections (each in a task of its own) until cancelled; then closes the listener.
    public func run() async {
        do {
            try await channel.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection) }
                    }
                }
            }
        } catch {
            // Cancelled, or the listener failed: either way it is closed now.
        }
    }

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        let count = open.add(1, ordering: .relaxed).newValue
        defer { open.subtract(1, ordering: .relaxed) }
        try? await connection.executeThenClose { inbound, outbound in
            guard count <= OverlayAgentProtocol.connectionsMax else {
                agent.counters.refused(.agentFull)
                try await outbound.write(OverlayAgentProtocol.encodeLine(
                    OverlayAgentProtocol.Response.refusal(.agentFull, "\(OverlayAgentProtocol.connectionsMax) connections open")))
                return
            }
            var pending: [UInt8] = []
            for try await chunk in inbound {
                pending.append(contentsOf: chunk.readableBytesView)
                while let newline = pending.firstIndex(of: 0x0a) {
                    let line = Array(pending[..<newline])
                    pending.removeFirst(newline + 1)
                    let response: OverlayAgentProtocol.Response
                    if line.count > OverlayAgentProtocol.frameBytesMax {
                        agent.counters.refused(.frameTooLong)
                        response = .refusal(.frameTooLong, "request of \(line.count) bytes, over \(OverlayAgentProtocol.frameBytesMax)")
                    } else {
                        response = await OverlayAgentProtocol.serve(line, agent: agent)
                    }
                    try await outbound.write(OverlayAgentProtocol.encodeLine(response))
                    if response.error == .frameTooLong { return }
                }
                if pending.count > OverlayAgentProtocol.frameBytesMax {
                    agent.counters.refused(.frameTooLong)
                    try await outbound.write(OverlayAgentProtocol.encodeLine(OverlayAgentProtocol.Response.refusal(
                        .frameTooLong, "request over \(OverlayAgentProtocol.frameBytesMax) bytes without a newline")))
                    return
                }
            }
        }
    }
}
