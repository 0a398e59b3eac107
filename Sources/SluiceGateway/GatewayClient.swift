// Path: Sources/SluiceGateway/GatewayClient.swift — the appliance's side of the last hop: an async client
// of the gateway block protocol over one pipelined TCP connection, verifying every sector on arrival.
import CShims
import NIOCore
import NIOPosix
import Synchronization

/// What a client accepts and how long it waits. Validated by `GatewayClient.connect`.
public struct GatewayClientConfiguration: Sendable {
    /// Requests written and not yet answered; more wait in the client's queue (pipelining depth).
    public var outstandingRequestsMax = 64
    /// Requests waiting for a slot; one more is refused `.queueFull`.
    public var queuedRequestsMax = 4_096
    /// Largest reply frame accepted; the server's `hello` must not announce more.
    public var replyFrameBytesMax = GatewayProtocol.frameBytesMaxLimit
    /// From a request's write to its reply. Passing it closes the connection (its stream position is lost).
    public var callTimeoutNs: UInt64 = 30_000_000_000
    public var connectTimeoutNs: UInt64 = 5_000_000_000

    public static let outstandingRequestsMaxLimit = 4_096
    public static let queuedRequestsMaxLimit = 1 << 16
    public static let timeoutNsLimit: UInt64 = 3_600_000_000_000

    public init() {}
}

/// Why a call failed.
public enum GatewayClientError: Error, Equatable, CustomStringConvertible {
    /// The server answered this status (its message).
    case status(GatewayStatus, message: String)
    /// A sector's bytes did not match the CRC-32C beside it: chunk-relative block and sector.
    case corruptSector(key: String, chunk: UInt64, block: Int, sector: Int)
    /// The request breaks a rule of the protocol; nothing was sent.
    case invalidRequest(String)
    case connectFailed(host: String, port: Int, reason: String)
    /// The connection closed (by the server, by `close`, or after a timeout or violation).
    case connectionClosed
    /// No reply within `callTimeoutNs`; the connection was closed.
    case timedOut(afterNs: UInt64)
    /// The reply broke the protocol (what and where); the connection was closed.
    case protocolViolation(String)
    /// `queuedRequestsMax` requests already wait.
    case queueFull(max: Int)

    public var description: String {
        switch self {
        case .status(let status, let message): "\(status): \(message)"
        case .corruptSector(let key, let chunk, let block, let sector):
            "sector \(sector) of block \(block) of chunk \(chunk) of \(key) failed its CRC-32C"
        case .invalidRequest(let text): "invalid request: \(text)"
        case .connectFailed(let host, let port, let reason): "cannot connect to \(host):\(port): \(reason)"
        case .connectionClosed: "connection closed"
        case .timedOut(let ns): "no reply within \(ns / 1_000_000) ms"
        case .protocolViolation(let text): "protocol violation: \(text)"
        case .queueFull(let max): "\(max) requests already queued"
        }
    }
}

/// A reply frame before its body is read (what `GatewayClient.sendRaw` returns).
public struct RawGatewayReply: Sendable {
    public var opcode: UInt8
    public var requestID: UInt64
    public var status: UInt8
    public var body: ByteBuffer
}

/// One connection to an intermediate device. `connect` says hello and keeps the server's units. Any
/// task may call, concurrently: requests are pipelined (up to `outstandingRequestsMax` in flight, the
/// rest queued) and answered in order. Every sector of a `readSectors` reply is checked against its
/// CRC before it is returned; a mismatch throws `.corruptSector` (the caller may ask again).
public final class GatewayClient: Sendable {
    /// The server's units and frame bound.
    public let hello: GatewayHello
    public let configuration: GatewayClientConfiguration
    private let channel: Channel
    private let nextRequestID = Atomic<UInt64>(1)

    private init(hello: GatewayHello, configuration: GatewayClientConfiguration, channel: Channel) {
        self.hello = hello
        self.configuration = configuration
        self.channel = channel
    }

    /// Connects to `host:port` and exchanges `hello`. `group` runs the connection's I/O.
    public static func connect(host: String, port: Int, configuration: GatewayClientConfiguration = .init(),
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws(GatewayClientError) -> GatewayClient {
        typealias Limits = GatewayClientConfiguration
        let checks: [(String, Bool)] = [
            ("outstandingRequestsMax", (1...Limits.outstandingRequestsMaxLimit).contains(configuration.outstandingRequestsMax)),
            ("queuedRequestsMax", (0...Limits.queuedRequestsMaxLimit).contains(configuration.queuedRequestsMax)),
            ("replyFrameBytesMax", (64...GatewayProtocol.frameBytesMaxLimit).contains(configuration.replyFrameBytesMax)),
            ("callTimeoutNs", (1...Limits.timeoutNsLimit).contains(configuration.callTimeoutNs)),
            ("connectTimeoutNs", (1...Limits.timeoutNsLimit).contains(configuration.connectTimeoutNs)),
            ("port", (1...65535).contains(port)),
        ]
        if let bad = checks.first(where: { !$0.1 }) { throw .invalidRequest("\(bad.0) out of bounds") }
        let bootstrap = ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.nanoseconds(Int64(configuration.connectTimeoutNs)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(
                        GatewayFrameDecoder(frameBytesMax: configuration.replyFrameBytesMax, withStatus: true)))
                    try channel.pipeline.syncOperations.addHandler(GatewayClientHandler(configuration: configuration))
                }
            }
        let channel: Channel
        do { channel = try await bootstrap.connect(host: host, port: port).get() } catch {
            throw .connectFailed(host: host, port: port, reason: "\(error)")
        }
        let raw = try await call(channel, .hello, requestID: 0)
        let reply = try decode(raw, opcode: .hello, units: nil, channel: channel)
        guard case .hello(let hello) = reply else {
            channel.close(promise: nil)
            throw reply.clientError ?? .protocolViolation("hello answered with \(reply)")
        }
        guard hello.frameBytesMax <= configuration.replyFrameBytesMax, hello.frameBytesMax >= hello.units.frameBytesNeeded else {
            channel.close(promise: nil)
            throw .protocolViolation("server frame bound \(hello.frameBytesMax) not within \(hello.units.frameBytesNeeded)...\(configuration.replyFrameBytesMax)")
        }
        return GatewayClient(hello: hello, configuration: configuration, channel: channel)
    }

    /// Closes the connection; calls in flight fail `.connectionClosed`.
    public func close() async {
        try? await channel.close()
    }

    // MARK: Operations

    /// The object's size and etag (the server's stat cache, or the store).
    public func stat(key: String) async throws(GatewayClientError) -> (size: UInt64, etag: String) {
        try checkKey(key)
        let reply = try await request(.stat(key: key))
        guard case .stat(let size, let etag) = reply else { throw reply.clientError ?? .protocolViolation("stat answered with \(reply)") }
        return (size, etag)
    }

    /// The wanted sectors (in full, first) and the predicted ones, every sector verified, and the
    /// object's size and etag as served.
    public func readSectors(_ read: ReadSectorsRequest) async throws(GatewayClientError) -> SectorsReply {
        try checkKey(read.key)
        try validate(read)
        let reply = try await request(.readSectors(read))
        guard case .sectors(let sectors) = reply else { throw reply.clientError ?? .protocolViolation("readSectors answered with \(reply)") }
        try Self.verify(sectors, for: read, units: hello.units)
        return sectors
    }

    /// Tells the intermediate the object changed: it drops its chunks and stat.
    public func invalidate(key: String) async throws(GatewayClientError) {
        try checkKey(key)
        let reply = try await request(.invalidate(key: key))
        guard case .invalidated = reply else { throw reply.clientError ?? .protocolViolation("invalidate answered with \(reply)") }
    }

    // MARK: Writes

    /// Opens an upload of `size` bytes to `key`; returns its ID (valid on any connection to this server).
    public func uploadBegin(key: String, size: UInt64) async throws(GatewayClientError) -> UInt64 {
        try checkKey(key)
        let reply = try await request(.uploadBegin(key: key, size: size))
        guard case .uploadBegun(let id) = reply else { throw reply.clientError ?? .protocolViolation("uploadBegin answered with \(reply)") }
        return id
    }

    /// Sends one piece (at most `uploadDataBytesMax` bytes, at a sector boundary, with the CRC-32C of
    /// each sector as the caller computed it). Returns the bytes the intermediate now holds. A piece
    /// whose sector failed its CRC on arrival is refused `.status(.corrupt, ...)`: send it again.
    public func uploadData(_ piece: UploadDataRequest) async throws(GatewayClientError) -> UInt64 {
        let sectorBytes = hello.units.sectorBytes
        guard !piece.bytes.isEmpty, piece.bytes.count <= GatewayProtocol.uploadDataBytesMax,
              piece.offset % UInt64(sectorBytes) == 0,
              piece.crcs.count == (piece.bytes.count + sectorBytes - 1) / sectorBytes else {
            throw .invalidRequest("upload piece of \(piece.bytes.count) bytes at \(piece.offset) with \(piece.crcs.count) CRCs")
        }
        let reply = try await request(.uploadData(piece))
        guard case .uploadReceived(let bytes) = reply else { throw reply.clientError ?? .protocolViolation("uploadData answered with \(reply)") }
        return bytes
    }

    /// Ends an upload: the object is in the remote store (replaced whole). Its size and new etag.
    public func uploadComplete(uploadID: UInt64) async throws(GatewayClientError) -> (size: UInt64, etag: String) {
        let reply = try await request(.uploadComplete(uploadID: uploadID))
        guard case .uploadCompleted(let size, let etag) = reply else {
            throw reply.clientError ?? .protocolViolation("uploadComplete answered with \(reply)")
        }
        return (size, etag)
    }

    public func uploadAbort(uploadID: UInt64) async throws(GatewayClientError) {
        let reply = try await request(.uploadAbort(uploadID: uploadID))
        guard case .uploadAborted = reply else { throw reply.clientError ?? .protocolViolation("uploadAbort answered with \(reply)") }
    }

    /// Sends a frame as given (any version, opcode and body) and returns the reply undecoded. For tests.
    public func sendRaw(version: UInt8 = GatewayProtocol.version, opcode: UInt8, body: [UInt8]) async throws(GatewayClientError) -> RawGatewayReply {
        let requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue
        var frame = channel.allocator.buffer(capacity: 16 + body.count)
        encodeGatewayFrame(version: version, opcode: opcode, requestID: requestID, into: &frame) { $0.writeBytes(body) }
        return try await Self.send(channel, frame, opcode: opcode, requestID: requestID)
    }

    private func request(_ request: GatewayRequest) async throws(GatewayClientError) -> GatewayReply {
        let requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue
        let raw = try await Self.call(channel, request, requestID: requestID)
        return try Self.decode(raw, opcode: request.opcode, units: hello.units, channel: channel)
    }

    private static func call(_ channel: Channel, _ request: GatewayRequest, requestID: UInt64) async throws(GatewayClientError) -> RawGatewayReply {
        var frame = channel.allocator.buffer(capacity: 64)
        encodeGatewayFrame(opcode: request.opcode.rawValue, requestID: requestID, into: &frame) { request.encodeBody(into: &$0) }
        return try await send(channel, frame, opcode: request.opcode.rawValue, requestID: requestID)
    }

    private static func send(_ channel: Channel, _ frame: ByteBuffer, opcode: UInt8, requestID: UInt64) async throws(GatewayClientError) -> RawGatewayReply {
        let promise = channel.eventLoop.makePromise(of: RawGatewayReply.self)
        channel.writeAndFlush(GatewayClientHandler.Call(frame: frame, opcode: opcode, requestID: requestID, promise: promise))
            .whenFailure { error in promise.fail(error as? GatewayClientError ?? .connectionClosed) }
        do { return try await promise.futureResult.get() } catch {
            throw error as? GatewayClientError ?? .connectionClosed
        }
    }

    private static func decode(_ raw: RawGatewayReply, opcode: GatewayOpcode, units: GatewayUnits?, channel: Channel) throws(GatewayClientError) -> GatewayReply {
        guard let status = GatewayStatus(rawValue: raw.status) else {
            channel.close(promise: nil)
            throw .protocolViolation("status \(raw.status) unknown (request \(raw.requestID))")
        }
        var body = raw.body
        do throws(GatewayDecodeError) { return try GatewayReply.decode(opcode: opcode, status: status, body: &body, units: units) } catch {
            channel.close(promise: nil)
            throw .protocolViolation("\(opcode) reply: \(error)")
        }
    }

    // MARK: Checks

    private func checkKey(_ key: String) throws(GatewayClientError) {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
    }

    /// The server's own decoder run on the request: what it would refuse is refused here, unsent.
    private func validate(_ read: ReadSectorsRequest) throws(GatewayClientError) {
        guard read.wanted.count <= Int(UInt16.max), read.held.count <= Int(UInt16.max) else {
            throw .invalidRequest("\(read.wanted.count) wanted extents, \(read.held.count) held entries above u16")
        }
        var body = ByteBuffer()
        GatewayRequest.readSectors(read).encodeBody(into: &body)
        do throws(GatewayDecodeError) { _ = try GatewayRequest.decode(opcode: .readSectors, body: &body, units: hello.units) } catch {
            throw .invalidRequest("\(error)")
        }
    }

    /// Checks a `readSectors` reply against its request: the wanted extents first, in full, in order;
    /// predicted extents outside what was wanted or held and not overlapping each other; every extent's
    /// byte count as the object's size implies; every sector's CRC-32C.
    public static func verify(_ reply: SectorsReply, for read: ReadSectorsRequest, units: GatewayUnits) throws(GatewayClientError) {
        // A request corrupted on its way answers another chunk or key with valid sectors: refuse it as
        // corrupt, so it is asked for again and never stored.
        guard reply.chunk == read.chunk, reply.keyCRC == gatewayKeyCRC(read.key) else {
            let first = read.wanted.first.map { Int($0.block) * units.sectorsPerBlock + Int($0.firstSector) } ?? 0
            throw .corruptSector(key: read.key, chunk: read.chunk, block: first / units.sectorsPerBlock, sector: first % units.sectorsPerBlock)
        }
        guard reply.extents.count >= read.wanted.count else {
            throw .protocolViolation("\(reply.extents.count) extents for \(read.wanted.count) wanted")
        }
        let chunkLength = units.chunkLength(read.chunk, objectSize: reply.size)
        var covered = SectorSet(read, units: units)
        for (index, payload) in reply.extents.enumerated() {
            let sectors = payload.extent.sectors(units)
            if index < read.wanted.count {
                guard payload.reason == .requested, payload.extent == read.wanted[index] else {
                    throw .protocolViolation("extents[\(index)] is \(payload.reason) \(payload.extent), wanted \(read.wanted[index])")
                }
            } else {
                guard payload.reason != .requested else { throw .protocolViolation("extents[\(index)] requested beyond the wanted ones") }
                guard !sectors.contains(where: { covered.contains($0) }) else {
                    throw .protocolViolation("extents[\(index)] (\(payload.extent)) overlaps what was wanted, held or sent")
                }
                for sector in sectors { covered.insert(sector) }
            }
            let expected = min(sectors.upperBound * units.sectorBytes, chunkLength) - sectors.lowerBound * units.sectorBytes
            guard payload.bytes.count == expected else {
                throw .protocolViolation("extents[\(index)] has \(payload.bytes.count) bytes, \(expected) expected for size \(reply.size)")
            }
            let computed = sectorCRCs(payload.bytes, sectorBytes: units.sectorBytes)
            if let bad = computed.indices.first(where: { computed[$0] != payload.crcs[$0] }) {
                let sector = sectors.lowerBound + bad
                throw .corruptSector(key: read.key, chunk: read.chunk, block: sector / units.sectorsPerBlock,
                                     sector: sector % units.sectorsPerBlock)
            }
        }
    }
}

extension GatewayReply {
    /// The client error a failure status stands for; nil for `ok` replies.
    var clientError: GatewayClientError? {
        if case .failure(let status, let message) = self { return .status(status, message: message) }
        return nil
    }
}

/// Writes calls in order, at most `outstandingRequestsMax` at once (the rest queue), and answers each
/// reply to the oldest call written. Event loop only. A reply out of order, a frame the decoder
/// refused, a timeout or the connection's end fail every call and close the channel.
final class GatewayClientHandler: ChannelDuplexHandler {
    typealias InboundIn = GatewayInboundFrame
    typealias OutboundIn = Call
    typealias OutboundOut = ByteBuffer

    struct Call: Sendable {
        var frame: ByteBuffer
        var opcode: UInt8
        var requestID: UInt64
        var promise: EventLoopPromise<RawGatewayReply>
    }

    private struct Sent {
        var call: Call
        var timer: Scheduled<Void>
    }

    private let configuration: GatewayClientConfiguration
    private var sent = CircularBuffer<Sent>()
    private var queued = CircularBuffer<Call>()
    private var failed: GatewayClientError?

    init(configuration: GatewayClientConfiguration) {
        self.configuration = configuration
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let call = unwrapOutboundIn(data)
        promise?.succeed()
        if let failed {
            call.promise.fail(failed)
        } else if sent.count < configuration.outstandingRequestsMax {
            transmit(call, context)
        } else if queued.count < configuration.queuedRequestsMax {
            queued.append(call)
        } else {
            call.promise.fail(GatewayClientError.queueFull(max: configuration.queuedRequestsMax))
        }
    }

    private func transmit(_ call: Call, _ context: ChannelHandlerContext) {
        let timeoutNs = configuration.callTimeoutNs
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeoutNs))) {
            let (handler, context) = bound.value
            handler.failAll(.timedOut(afterNs: timeoutNs), context)
        }
        sent.append(Sent(call: call, timer: timer))
        context.writeAndFlush(wrapOutboundOut(call.frame), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .tooLarge(let length, _, _):
            failAll(.protocolViolation("reply frame of \(length) bytes above \(configuration.replyFrameBytesMax)"), context)
        case .tooShort(let length):
            failAll(.protocolViolation("reply frame of \(length) bytes below the \(GatewayProtocol.replyHeaderBytes)-byte header"), context)
        case .frame(let version, let opcode, let requestID, let status, let body):
            guard let head = sent.popFirst() else {
                failAll(.protocolViolation("reply to request \(requestID) when none is waiting"), context)
                return
            }
            head.timer.cancel()
            guard version == GatewayProtocol.version, opcode == head.call.opcode, requestID == head.call.requestID else {
                sent.prepend(head)
                failAll(.protocolViolation("reply v\(version) opcode \(opcode) id \(requestID) for opcode \(head.call.opcode) id \(head.call.requestID)"), context)
                return
            }
            head.call.promise.succeed(RawGatewayReply(opcode: opcode, requestID: requestID, status: status!, body: body))
            if let next = queued.popFirst() { transmit(next, context) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connectionClosed, context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(.connectionClosed, context)
    }

    private func failAll(_ error: GatewayClientError, _ context: ChannelHandlerContext) {
        if failed == nil { failed = error }
        while let waiting = sent.popFirst() {
            waiting.timer.cancel()
            waiting.call.promise.fail(error)
        }
        while let call = queued.popFirst() { call.promise.fail(error) }
        context.close(promise: nil)
    }
}
