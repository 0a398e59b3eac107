// Path: Sources/SluiceGateway/ApplianceServer.swift — the appliance's client-facing server (SwiftNIO):
// the appliance protocol v1 over TCP, pipelined, answered in order.
import NIOCore
import NIOPosix
import Synchronization

public enum ApplianceServerError: Error, Equatable, CustomStringConvertible {
    case bindFailed(host: String, port: Int, reason: String)
    case setting(GatewaySettingError)

    public var description: String {
        switch self {
        case .bindFailed(let host, let port, let reason): "cannot listen on \(host):\(port): \(reason)"
        case .setting(let error): "\(error)"
        }
    }
}

/// Serves an `Appliance` to clients. Each connection has a share (default `default`, set by `hello`).
public final class ApplianceServer: Sendable {
    public let host: String
    /// The port bound (the kernel's choice when 0 was asked for).
    public let port: Int
    public let appliance: Appliance
    /// Bytes of requests in progress across connections (a read holds its length, an append its
    /// bytes), and the high-water marks tests look at.
    public let budget: RequestBudget
    /// Request tasks still running (`close` waits for them).
    public let tasks: RequestTasks
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let closed = Atomic<Bool>(false)

    /// Requests per connection received and not yet answered before reading pauses.
    public static let outstandingRequestsMax = 64

    /// Binds `host:port` (0: any free port). `requestBytesInFlightMax` bounds the bytes of requests in
    /// progress across connections (`RequestBudget`).
    public static func bind(host: String, port: Int, appliance: Appliance,
                            requestBytesInFlightMax: Int = RequestBudget.bytesMaxDefault) throws(ApplianceServerError) -> ApplianceServer {
        guard (0...65535).contains(port) else { throw .setting(.invalid(setting: "port", value: port, rule: "in 0...65535")) }
        guard RequestBudget.bytesMaxRange.contains(requestBytesInFlightMax) else {
            throw .setting(.invalid(setting: "requestBytesInFlightMax", value: requestBytesInFlightMax, rule: "in \(RequestBudget.bytesMaxRange)"))
        }
        let budget = RequestBudget(bytesMax: requestBytesInFlightMax)
        let tasks = RequestTasks()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(
                        GatewayFrameDecoder(frameBytesMax: ApplianceProtocol.requestFrameBytesMax, withStatus: false,
                                            largeOpcodes: [ApplianceOpcode.append.rawValue],
                                            largeFrameBytesMax: ApplianceProtocol.appendFrameBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(ApplianceHandler(appliance: appliance, budget: budget, tasks: tasks))
                }
            }
        let channel: Channel
        do { channel = try bootstrap.bind(host: host, port: port).wait() } catch {
            try? group.syncShutdownGracefully()
            throw .bindFailed(host: host, port: port, reason: "\(error)")
        }
        return ApplianceServer(host: host, port: channel.localAddress?.port ?? port, appliance: appliance, budget: budget, tasks: tasks,
                               group: group, channel: channel)
    }

    private init(host: String, port: Int, appliance: Appliance, budget: RequestBudget, tasks: RequestTasks,
                 group: MultiThreadedEventLoopGroup, channel: Channel) {
        self.budget = budget
        self.tasks = tasks
        self.host = host
        self.port = port
        self.appliance = appliance
        self.group = group
        self.channel = channel
    }

    /// Stops accepting, waits up to `waitingUpToNs` for request tasks in progress to finish (their
    /// replies are written while the connections stay open), then closes every connection. Blocks;
    /// not from an event loop.
    /// A second call does nothing.
    public func close(waitingUpToNs: UInt64 = 5_000_000_000) {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        try? channel.close().wait()
        _ = tasks.waitUntilIdle(timeoutNs: waitingUpToNs)
        try? group.syncShutdownGracefully()
    }
}

/// One client connection: requests run concurrently, replies go out in request order. At
/// `outstandingRequestsMax` unanswered requests reading pauses. Requests start in arrival order under
/// the server's `RequestBudget`; while one waits for bytes, reading pauses too. Event loop only.
final class ApplianceHandler: ChannelInboundHandler {
    typealias InboundIn = GatewayInboundFrame
    typealias OutboundOut = ByteBuffer

    private let appliance: Appliance
    private var share = "default"
    /// Writes this connection began and has not closed or aborted: aborted when it ends (bounded by
    /// the journal's `openWritesMax`).
    private var openWrites: Set<UInt64> = []
    private let tasks: RequestTasks
    private let replies: OrderedReplies

    init(appliance: Appliance, budget: RequestBudget, tasks: RequestTasks) {
        self.appliance = appliance
        self.tasks = tasks
        replies = OrderedReplies(outstandingMax: ApplianceServer.outstandingRequestsMax, budget: budget)
        replies.handle = { [unowned self] frame, sequence, channel in self.handle(frame, sequence, channel) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        replies.receive(unwrapInboundIn(data), context.channel)
    }

    private func handle(_ frame: GatewayInboundFrame, _ sequence: UInt64, _ channel: Channel) {
        switch frame {
        case .tooLarge(let length, let opcode, let requestID):
            let message = "frame length \(length) is above \(ApplianceProtocol.requestFrameBytesMax)"
            complete(sequence, encode(.failure(.frameTooLarge, message: message), opcode: opcode, requestID: requestID, channel), closeAfter: true, channel)
            replies.closeAfterReplies()
        case .tooShort(let length):
            let message = GatewayDecodeError.frameBelowHeader(length: length, header: GatewayProtocol.requestHeaderBytes).description
            complete(sequence, encode(.failure(.badRequest, message: message), opcode: 0, requestID: 0, channel), closeAfter: false, channel)
        case .frame(let version, let rawOpcode, let requestID, _, var body):
            if version != ApplianceProtocol.version {
                let failure = ApplianceReply.failure(.unsupportedVersion, message: "version \(version); this server speaks \(ApplianceProtocol.version)")
                complete(sequence, encode(failure, opcode: rawOpcode, requestID: requestID, channel), closeAfter: false, channel)
            } else if let opcode = ApplianceOpcode(rawValue: rawOpcode) {
                do throws(GatewayDecodeError) {
                    let request = try ApplianceRequest.decode(opcode: opcode, body: &body)
                    replies.starts.admit(sequence: sequence, cost: cost(of: request), channel) { [unowned self] in
                        self.start(request, sequence: sequence, requestID: requestID, channel)
                    }
                } catch {
                    complete(sequence, encode(.failure(.badRequest, message: error.description), opcode: rawOpcode, requestID: requestID, channel),
                             closeAfter: false, channel)
                }
            } else {
                complete(sequence, encode(.failure(.unknownOpcode, message: "opcode \(rawOpcode)"), opcode: rawOpcode, requestID: requestID, channel),
                         closeAfter: false, channel)
            }
        }
    }

    /// What `request` holds of the budget: a read the most its reply can take, an append its bytes.
    private func cost(of request: ApplianceRequest) -> Int {
        switch request {
        case .read(_, _, let length): Int(min(length, UInt32(appliance.configuration.readBytesMax))) + GatewayProtocol.etagBytesMax + 64
        case .append(_, _, let bytes): bytes.count
        case .hello, .counters, .stat, .beginWrite, .closeWrite, .abortWrite, .flush: 0
        }
    }

    private func start(_ request: ApplianceRequest, sequence: UInt64, requestID: UInt64, _ channel: Channel) {
        let appliance = appliance
        let opcode = request.opcode.rawValue
        switch request {
        case .hello(let name):
            // Before any later request of this connection starts.
            share = name
            let max = UInt32(appliance.configuration.readBytesMax)
            complete(sequence, encode(.hello(readBytesMax: max), opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
        case .counters:
            var fields = appliance.counters.snapshot().fields
            for share in appliance.shares where fields.count + 5 <= ApplianceProtocol.counterEntriesMax {
                fields += [("share_\(share.name)_served_bytes", share.servedBytes), ("share_\(share.name)_requested_bytes", share.requestedBytes),
                           ("share_\(share.name)_predicted_bytes", share.predictedBytes),
                           ("share_\(share.name)_granted_bytes", share.grantedBytes), ("share_\(share.name)_refused_grants", share.refusedGrants)]
            }
            complete(sequence, encode(.counters(fields), opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
        case .stat(let key):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    let stat = try await appliance.stat(key: key)
                    return .stat(size: stat.size, etag: stat.etag)
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        case .beginWrite(let key):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    return .writeBegun(writeID: try await appliance.beginWrite(key: key))
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        case .append(let id, let offset, let bytes):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    return .appended(length: try await appliance.append(writeID: id, offset: offset, bytes: bytes))
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        case .closeWrite(let id):
            openWrites.remove(id)
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    return .closed(size: try await appliance.closeWrite(writeID: id))
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        case .abortWrite(let id):
            openWrites.remove(id)
            appliance.abortWrite(writeID: id)
            complete(sequence, encode(.done, opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
        case .flush(let key, let timeoutMs):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    try await appliance.flush(key: key, timeoutNs: UInt64(timeoutMs) * 1_000_000)
                    return .done
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        case .read(let key, let offset, let length):
            let share = share
            if let reply = cachedRead(key: key, offset: offset, length: Int(length), share: share, requestID: requestID, channel) {
                complete(sequence, reply, closeAfter: false, channel)
                return
            }
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(ApplianceError) {
                    return .read(try await appliance.read(key: key, offset: offset, length: Int(length), share: share))
                } catch {
                    return .failure(ApplianceStatus(error), message: error.description)
                }
            }
        }
    }

    /// A read the cache answers whole (`Appliance.readIfCached`), copied on the event loop straight
    /// from the cache into the reply buffer behind room for the largest header; the header is then
    /// written right before the bytes (the frame `encode` makes for `.read`, with no other copy). nil:
    /// the read needs the intermediate, or fails (`run` then answers it).
    private func cachedRead(key: String, offset: UInt64, length: Int, share: String, requestID: UInt64, _ channel: Channel) -> ByteBuffer? {
        guard length <= appliance.configuration.readBytesMax else { return nil }
        let prefixMax = 4 + GatewayProtocol.replyHeaderBytes + 8 + 2 + GatewayProtocol.etagBytesMax + 4
        var buffer = channel.allocator.buffer(capacity: prefixMax + length)
        buffer.writeRepeatingByte(0, count: prefixMax)
        var stat: (size: UInt64, etag: String)?
        let appliance = appliance
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { target in
            stat = appliance.readIfCached(key: key, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: target[0..<length]), share: share)
            return stat == nil ? 0 : length
        }
        guard let stat else { return nil }
        let etagBytes = stat.etag.utf8.count
        precondition(etagBytes <= GatewayProtocol.etagBytesMax, "etags are bounded where they are decoded")
        let prefix = 4 + GatewayProtocol.replyHeaderBytes + 8 + 2 + etagBytes + 4
        var at = prefixMax - prefix
        buffer.moveReaderIndex(to: at)
        at += buffer.setInteger(UInt32(prefix - 4 + length), at: at)
        at += buffer.setInteger(ApplianceProtocol.version, at: at)
        at += buffer.setInteger(ApplianceOpcode.read.rawValue, at: at)
        at += buffer.setInteger(requestID, at: at)
        at += buffer.setInteger(ApplianceStatus.ok.rawValue, at: at)
        at += buffer.setInteger(stat.size, at: at)
        at += buffer.setInteger(UInt16(etagBytes), at: at)
        at += buffer.setString(stat.etag, at: at)
        at += buffer.setInteger(UInt32(length), at: at)
        precondition(at == prefixMax && buffer.readableBytes == prefix + length, "the header ends where the bytes start")
        return buffer
    }

    private func run(_ sequence: UInt64, requestID: UInt64, opcode: UInt8, _ channel: Channel,
                     _ work: @escaping @Sendable () async -> ApplianceReply) {
        let promise = channel.eventLoop.makePromise(of: ApplianceReply.self)
        let tasks = tasks
        tasks.started()
        promise.completeWithTask {
            defer { tasks.ended() }
            return await work()
        }
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        promise.futureResult.whenComplete { result in
            let handler = bound.value
            let answer: ApplianceReply
            switch result {
            case .success(let value): answer = value
            case .failure(let error): answer = .failure(.internal, message: "\(error)")
            }
            if case .writeBegun(let id) = answer { handler.openWrites.insert(id) }
            handler.complete(sequence, handler.encode(answer, opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
            handler.replies.updateReading(channel)
        }
    }

    private func encode(_ reply: ApplianceReply, opcode: UInt8, requestID: UInt64, _ channel: Channel) -> ByteBuffer {
        var capacity = 64
        if case .read(let result) = reply { capacity += result.bytes.count + result.etag.utf8.count }
        var buffer = channel.allocator.buffer(capacity: capacity)
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(ApplianceProtocol.version)
        buffer.writeInteger(opcode)
        buffer.writeInteger(requestID)
        buffer.writeInteger(reply.status.rawValue)
        reply.encodeBody(into: &buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - lengthIndex - 4), at: lengthIndex)
        return buffer
    }

    private func complete(_ sequence: UInt64, _ buffer: ByteBuffer, closeAfter: Bool, _ channel: Channel) {
        replies.complete(sequence, buffer, closeAfter: closeAfter, channel)
    }

    /// A client gone with writes open: they never become objects.
    func channelInactive(context: ChannelHandlerContext) {
        replies.dropPending()
        for id in openWrites { appliance.abortWrite(writeID: id) }
        openWrites.removeAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
