// Path: Sources/SluiceEtcd/EtcdTransport.swift — the gRPC transport under EtcdClient: grpc-swift-nio-transport's
// HTTP/2 client (plaintext, one connection per endpoint), wrapped to record for each call whether its request
// may have left and whether etcd answered it with a status, and with etcd's PINGs answered in front of HTTP/2.
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import Synchronization

/// What one call has reached, for telling "never sent" from "in doubt" when it fails. The transport below
/// marks it; the call's task carries it as `CallProgress.current`.
///
/// How the two are told apart: a request can only leave on an HTTP/2 stream of an established connection
/// (TCP connected and etcd's SETTINGS received), and grpc-swift hands the call its stream only then, by
/// calling the closure given to `ClientTransport.withStream`. `EtcdTransport` marks the call `opened`
/// before it writes anything on that stream. A call that failed before it was opened (connection refused,
/// unreachable, no HTTP/2 handshake within the connect timeout, the channel in back-off after a failed
/// connect) is known not applied and may go to the next endpoint; one that failed after may have been
/// applied when it writes. The connect timeout abandons a call only while it is not opened, under the same
/// lock, so a call is either sent or known unsent, never both.
final class CallProgress: Sendable {
    @TaskLocal static var current: CallProgress?

    private enum Phase { case waiting, opened, abandoned }
    private struct State {
        var phase = Phase.waiting
        var status: Status?
    }
    private let state = Mutex(State())

    /// Called by the transport once the call has a stream, before anything is written. False when the
    /// call was abandoned meanwhile: the transport then writes nothing and fails the call.
    func open() -> Bool {
        state.withLock { state in
            guard state.phase == .waiting else { return state.phase == .opened }
            state.phase = .opened
            return true
        }
    }

    /// Abandons the call unless it has been opened; true when it was abandoned (nothing was, nor will
    /// be, sent).
    func abandonUnlessOpened() -> Bool {
        state.withLock { state in
            guard state.phase == .waiting else { return state.phase == .abandoned }
            state.phase = .abandoned
            return true
        }
    }

    /// True once the request may have left.
    var opened: Bool { state.withLock { $0.phase == .opened } }

    /// Records the status the call ended with (from the stream's last response part).
    func answered(_ status: Status) { state.withLock { $0.status = status } }

    /// The status etcd ended the call with; nil when the call ended without one (deadline, cancelled) or
    /// with one grpc-swift-nio-transport 2.9.2 made up itself: the stream broke ("Stream unexpectedly
    /// closed...", a connection problem, not etcd's answer) or a response message could not be decoded
    /// ("Failed to decode message...", see `isResponseTooLarge`).
    var serverStatus: Status? {
        guard let status = state.withLock({ $0.status }) else { return nil }
        if status.message.hasPrefix("Stream unexpectedly closed") || status.message.hasPrefix("Failed to decode message") {
            return nil
        }
        return status
    }

    /// The transport's error for a response message over its bound (`CallOptions.maxRequestMessageBytes`
    /// in 2.9.2: see `EtcdClient.callOptions`). On a call whose request side is closed (a unary call) it
    /// says "Failed to decode message ...: Message has exceeded the configured maximum payload size (max:
    /// M, actual: N)"; while the request side is open (a watch) only "Failed to decode message". The
    /// decoder's only other failure, a compressed message, cannot happen: the client asks for none.
    static func isResponseTooLarge(_ message: String) -> Bool {
        message.contains("maximum payload size") || message == "Failed to decode message"
    }
}

/// Thrown inside the transport when a call was abandoned by its connect timeout before it was opened.
struct CallAbandoned: Error, CustomStringConvertible {
    var description: String { "no HTTP/2 connection ready within the connect timeout" }
}

/// HTTP2ClientTransport.Posix with each call's progress recorded (see `CallProgress`). Everything else is
/// the wrapped transport's.
struct EtcdTransport: ClientTransport {
    typealias Bytes = HTTP2ClientTransport.Posix.Bytes
    let base: HTTP2ClientTransport.Posix

    var retryThrottle: RetryThrottle? { base.retryThrottle }
    func connect() async throws { try await base.connect() }
    func beginGracefulShutdown() { base.beginGracefulShutdown() }
    func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? { base.config(forMethod: descriptor) }

    func withStream<T: Sendable>(
        descriptor: MethodDescriptor, options: CallOptions,
        _ closure: (RPCStream<Inbound, Outbound>, ClientContext) async throws -> T
    ) async throws -> T {
        let progress = CallProgress.current
        return try await base.withStream(descriptor: descriptor, options: options) { stream, context in
            guard let progress else { return try await closure(stream, context) }
            guard progress.open() else { throw CallAbandoned() }
            let observed = RPCStream(
                descriptor: stream.descriptor,
                inbound: RPCAsyncSequence(wrapping: ObservedInbound(base: stream.inbound, progress: progress)),
                outbound: stream.outbound)
            return try await closure(observed, context)
        }
    }
}

/// A call's response parts, passed on unchanged; the status part is recorded in the call's progress.
struct ObservedInbound: AsyncSequence, Sendable {
    typealias Element = RPCResponsePart<EtcdTransport.Bytes>
    typealias Failure = any Error
    let base: RPCAsyncSequence<Element, any Error>
    let progress: CallProgress

    func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator(), progress: progress) }

    struct Iterator: AsyncIteratorProtocol {
        var base: RPCAsyncSequence<Element, any Error>.AsyncIterator
        let progress: CallProgress

        mutating func next(isolation actor: isolated (any Actor)?) async throws(any Error) -> Element? {
            let part = try await base.next(isolation: actor)
            if case .status(let status, _)? = part { progress.answered(status) }
            return part
        }

        mutating func next() async throws -> Element? { try await next(isolation: nil) }
    }
}

/// What one endpoint's transport did, for tests and diagnostics.
final class TransportCounters: Sendable {
    /// TCP connections made (one per connect attempt that got a socket).
    let connectionsOpened = Atomic(0)
    /// etcd's PINGs answered by `PingAnswerer`.
    let pingsAnswered = Atomic(0)
}

/// Answers etcd's HTTP/2 PINGs itself, in front of the HTTP/2 handler (installed first in the connection's
/// pipeline through the transport's `ChannelDebuggingCallbacks`).
///
/// Why: etcd 3.4's gRPC server (grpc-go's BDP estimator) sends a PING after nearly every request it reads,
/// one per call, and swift-nio-http2 1.46 (under grpc-swift-nio-transport 2.9.2) counts inbound PING and
/// SETTINGS frames and closes the connection past 200 of them in 30 s (a denial-of-service guard the gRPC
/// transport does not let us configure): call ~199 of a busy connection would fail with "Stream
/// unexpectedly closed". This handler takes each PING that is not an ACK out of the inbound bytes and
/// writes its ACK, which is what the HTTP/2 handler would have written. Every other frame passes through
/// unchanged, whole frames at a time: a partial frame waits for its rest, up to `frameBytesMax` (the
/// HTTP/2 frame size the client announced); a frame that says it is larger is etcd breaking HTTP/2, and
/// from there on every byte passes through as it comes for the HTTP/2 handler to refuse. Runs on the
/// connection's event loop only.
final class PingAnswerer: ChannelDuplexHandler, @unchecked Sendable {  // unchecked: one event loop
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private static let frameHeaderBytes = 9
    private static let pingType: UInt8 = 6
    private static let ackFlag: UInt8 = 1
    private let frameBytesMax: Int
    private let counters: TransportCounters
    private var pending = ByteBuffer()
    private var passThrough = false

    init(frameBytesMax: Int, counters: TransportCounters) {
        self.frameBytesMax = frameBytesMax
        self.counters = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !passThrough else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        pending.writeBuffer(&bytes)
        var forward = context.channel.allocator.buffer(capacity: pending.readableBytes)
        var answered = false
        while pending.readableBytes >= Self.frameHeaderBytes {
            let start = pending.readerIndex
            let length = Int(pending.getInteger(at: start, as: UInt32.self)! >> 8)  // 24-bit length
            guard length <= frameBytesMax else {
                passThrough = true
                forward.writeBuffer(&pending)
                break
            }
            guard pending.readableBytes >= Self.frameHeaderBytes + length else { break }
            let type = pending.getInteger(at: start + 3, as: UInt8.self)!
            let flags = pending.getInteger(at: start + 4, as: UInt8.self)!
            var frame = pending.readSlice(length: Self.frameHeaderBytes + length)!
            if type == Self.pingType, flags & Self.ackFlag == 0, length == 8 {
                var ack = context.channel.allocator.buffer(capacity: Self.frameHeaderBytes + 8)
                ack.writeBytes([0, 0, 8, Self.pingType, Self.ackFlag, 0, 0, 0, 0])
                ack.writeBytes(frame.getSlice(at: frame.readerIndex + Self.frameHeaderBytes, length: 8)!.readableBytesView)
                context.write(wrapOutboundOut(ack), promise: nil)
                counters.pingsAnswered.add(1, ordering: .relaxed)
                answered = true
            } else {
                forward.writeBuffer(&frame)
            }
        }
        pending.discardReadBytes()
        if answered { context.flush() }
        if forward.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(forward)) }
    }
}
