// Path: Sources/SluiceGateway/ApplianceClient.swift — a client of the appliance protocol v1 (the CLI's
// `gateway read`, tests): one pipelined TCP connection.
import NIOCore
import NIOPosix
import Synchronization

/// Why a call to the appliance failed.
public enum ApplianceClientError: Error, Equatable, CustomStringConvertible {
    case status(ApplianceStatus, message: String)
    case invalidRequest(String)
    /// Connecting, the connection, or the reply failed (what happened).
    case connection(String)
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .status(let status, let message): "\(status): \(message)"
        case .invalidRequest(let text): "invalid request: \(text)"
        case .connection(let text): "appliance connection: \(text)"
        case .protocolViolation(let text): "protocol violation: \(text)"
        }
    }
}

/// One connection to an appliance. `connect` says hello with the share. Any task may call concurrently:
/// requests are pipelined and answered in order.
public final class ApplianceClient: Sendable {
    /// The largest read the appliance serves in one request.
    public let readBytesMax: Int
    private let channel: Channel
    private let nextRequestID = ManagedRequestID()

    private init(channel: Channel, readBytesMax: Int) {
        self.channel = channel
        self.readBytesMax = readBytesMax
    }

    public static func connect(host: String, port: Int, share: String = "default", timeoutNs: UInt64 = 60_000_000_000,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws(ApplianceClientError) -> ApplianceClient {
        guard applianceShareIsValid(share) else { throw .invalidRequest("share of \(share.utf8.count) bytes not in 1...\(ApplianceProtocol.shareBytesMax)") }
        guard (1...65535).contains(port) else { throw .invalidRequest("port \(port) not in 1...65535") }
        var configuration = GatewayClientConfiguration()
        configuration.replyFrameBytesMax = ApplianceConfiguration.readBytesMaxLimit + ApplianceProtocol.readReplyOverheadBytes
        configuration.callTimeoutNs = timeoutNs
        let settings = configuration
        let bootstrap = ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(
                        GatewayFrameDecoder(frameBytesMax: settings.replyFrameBytesMax, withStatus: true)))
                    try channel.pipeline.syncOperations.addHandler(GatewayClientHandler(configuration: settings))
                }
            }
        let channel: Channel
        do { channel = try await bootstrap.connect(host: host, port: port).get() } catch {
            throw .connection("cannot connect to \(host):\(port): \(error)")
        }
        let reply = try await call(channel, .hello(share: share), requestID: 0)
        guard case .hello(let max) = reply else {
            channel.close(promise: nil)
            throw failure(reply, "hello")
        }
        return ApplianceClient(channel: channel, readBytesMax: Int(max))
    }

    public func close() async {
        try? await channel.close()
    }

    public func stat(key: String) async throws(ApplianceClientError) -> (size: UInt64, etag: String) {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        let reply = try await Self.call(channel, .stat(key: key), requestID: nextRequestID.next())
        guard case .stat(let size, let etag) = reply else { throw Self.failure(reply, "stat") }
        return (size, etag)
    }

    /// `length` bytes at `offset` (at most `readBytesMax`; the range must lie within the object).
    public func read(key: String, offset: UInt64, length: Int) async throws(ApplianceClientError) -> ApplianceReadResult {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        guard (0...readBytesMax).contains(length) else { throw .invalidRequest("length \(length) not in 0...\(readBytesMax)") }
        let reply = try await Self.call(channel, .read(key: key, offset: offset, length: UInt32(length)), requestID: nextRequestID.next())
        guard case .read(let result) = reply else { throw Self.failure(reply, "read") }
        guard result.bytes.count == length else { throw .protocolViolation("read of \(length) bytes answered with \(result.bytes.count)") }
        return result
    }

    /// The appliance's counters, by name.
    public func counters() async throws(ApplianceClientError) -> [(String, UInt64)] {
        let reply = try await Self.call(channel, .counters, requestID: nextRequestID.next())
        guard case .counters(let fields) = reply else { throw Self.failure(reply, "counters") }
        return fields
    }

    // MARK: Writes

    public func beginWrite(key: String) async throws(ApplianceClientError) -> UInt64 {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        let reply = try await Self.call(channel, .beginWrite(key: key), requestID: nextRequestID.next())
        guard case .writeBegun(let id) = reply else { throw Self.failure(reply, "beginWrite") }
        return id
    }

    /// Appends `bytes` (1...appendBytesMax) at `offset`, the write's length so far. Returns once durable.
    public func append(writeID: UInt64, offset: UInt64, bytes: [UInt8]) async throws(ApplianceClientError) -> UInt64 {
        guard !bytes.isEmpty, bytes.count <= ApplianceProtocol.appendBytesMax else {
            throw .invalidRequest("append of \(bytes.count) bytes not in 1...\(ApplianceProtocol.appendBytesMax)")
        }
        let reply = try await Self.call(channel, .append(writeID: writeID, offset: offset, bytes: bytes), requestID: nextRequestID.next())
        guard case .appended(let length) = reply else { throw Self.failure(reply, "append") }
        return length
    }

    /// Seals the write: acknowledged, it is an object (uploaded in the background).
    public func closeWrite(writeID: UInt64) async throws(ApplianceClientError) -> UInt64 {
        let reply = try await Self.call(channel, .closeWrite(writeID: writeID), requestID: nextRequestID.next())
        guard case .closed(let size) = reply else { throw Self.failure(reply, "closeWrite") }
        return size
    }

    public func abortWrite(writeID: UInt64) async throws(ApplianceClientError) {
        let reply = try await Self.call(channel, .abortWrite(writeID: writeID), requestID: nextRequestID.next())
        guard case .done = reply else { throw Self.failure(reply, "abortWrite") }
    }

    /// Waits until `key`'s closed writes (nil: every object's) are in the remote store, at most `timeoutMs`.
    public func flush(key: String? = nil, timeoutMs: UInt32 = 60_000) async throws(ApplianceClientError) {
        if let key, !gatewayKeyIsValid(key) { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        let reply = try await Self.call(channel, .flush(key: key, timeoutMs: timeoutMs), requestID: nextRequestID.next())
        guard case .done = reply else { throw Self.failure(reply, "flush") }
    }

    /// Writes all of `bytes` as `key` (begin, appends of at most `pieceBytes`, close). Returns the size.
    public func write(key: String, bytes: [UInt8], pieceBytes: Int = ApplianceProtocol.appendBytesMax) async throws(ApplianceClientError) -> UInt64 {
        let id = try await beginWrite(key: key)
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + min(pieceBytes, ApplianceProtocol.appendBytesMax))
            _ = try await append(writeID: id, offset: UInt64(offset), bytes: Array(bytes[offset..<end]))
            offset = end
        }
        return try await closeWrite(writeID: id)
    }

    private static func failure(_ reply: ApplianceReply, _ what: String) -> ApplianceClientError {
        if case .failure(let status, let message) = reply { return .status(status, message: message) }
        return .protocolViolation("\(what) answered with \(reply.status)")
    }

    private static func call(_ channel: Channel, _ request: ApplianceRequest, requestID: UInt64) async throws(ApplianceClientError) -> ApplianceReply {
        var frame = channel.allocator.buffer(capacity: 64)
        if case .append(_, _, let bytes) = request { frame.reserveCapacity(64 + bytes.count) }
        encodeGatewayFrame(version: ApplianceProtocol.version, opcode: request.opcode.rawValue, requestID: requestID, into: &frame) {
            request.encodeBody(into: &$0)
        }
        let promise = channel.eventLoop.makePromise(of: RawGatewayReply.self)
        channel.writeAndFlush(GatewayClientHandler.Call(frame: frame, opcode: request.opcode.rawValue, requestID: requestID, promise: promise))
            .whenFailure { error in promise.fail(error) }
        let raw: RawGatewayReply
        do { raw = try await promise.futureResult.get() } catch {
            throw .connection("\(error)")
        }
        guard let status = ApplianceStatus(rawValue: raw.status) else {
            channel.close(promise: nil)
            throw .protocolViolation("status \(raw.status) unknown")
        }
        var body = raw.body
        do throws(GatewayDecodeError) { return try ApplianceReply.decode(opcode: request.opcode, status: status, body: &body) } catch {
            channel.close(promise: nil)
            throw .protocolViolation("\(request.opcode) reply: \(error)")
        }
    }
}

/// Request ids of one connection.
private final class ManagedRequestID: Sendable {
    private let value = Atomic<UInt64>(1)
    func next() -> UInt64 { value.wrappingAdd(1, ordering: .relaxed).oldValue }
}
