// Path: Sources/SluiceStorageServer/StorageServer.swift — the storage node over TCP: a SwiftNIO server
// whose frame decoder bounds every frame, and whose handler runs node calls on a thread pool.
import Glibc
import NIOCore
import SluiceCore
import NIOPosix
import SluicePageStore

/// Why the server could not start.
public enum StorageServerError: Error, Equatable {
    case invalidConfiguration(String)
    case bindFailed(host: String, port: Int, reason: String)
}

/// What the server accepts. Validated by `StorageServer.bind`.
public struct StorageServerConfiguration: Sendable {
    /// Largest frame length word accepted; a larger one is answered `frameTooLarge` and the connection closed.
    public var frameBytesMax = StorageProtocol.frameBytesMaxDefault
    /// Event loop threads (accept and framing only; no disk I/O runs there).
    public var eventLoopThreadCount = 1
    /// Threads running node calls (which lock the node's mutex and do disk I/O). Also the most writes
    /// from different connections that can wait in one of the node's group commits at once.
    public var blockingThreadCount = 16
    /// Where each request's reply status and latency are counted (nil: not counted).
    public var stats: StorageRequestStats?
    public init() {}
}

/// A frame as cut from the stream by `FrameDecoder`.
enum InboundFrame {
    case request(version: UInt8, opcode: UInt8, requestID: UInt64, body: ByteBuffer)
    /// Length word below the 10-byte header: the frame was skipped, the stream stays in sync.
    case tooShort(length: UInt32)
    /// Length word above the bound: nothing more is read from this connection.
    case tooLarge(length: UInt32, opcode: UInt8, requestID: UInt64)
}

/// Cuts frames by their length word. Never buffers more than `frameBytesMax + 4` bytes of one frame:
/// an oversized length is reported at once, and everything after it is discarded.
struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = InboundFrame
    let frameBytesMax: Int
    private var discarding = false

    init(frameBytesMax: Int) {
        precondition(frameBytesMax >= StorageProtocol.requestHeaderBytes, "a frame must fit its header")
        self.frameBytesMax = frameBytesMax
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        if Int(length) > frameBytesMax {
            // The opcode and request id are echoed when they already arrived; the body is never waited for.
            let header = buffer.readableBytes >= 4 + StorageProtocol.requestHeaderBytes
            let opcode = header ? buffer.getInteger(at: buffer.readerIndex + 5, as: UInt8.self)! : 0
            let requestID = header ? buffer.getInteger(at: buffer.readerIndex + 6, as: UInt64.self)! : 0
            discarding = true
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            context.fireChannelRead(NIOAny(InboundFrame.tooLarge(length: length, opcode: opcode, requestID: requestID)))
            return .needMoreData
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        guard Int(length) >= StorageProtocol.requestHeaderBytes else {
            buffer.moveReaderIndex(forwardBy: Int(length))
            context.fireChannelRead(NIOAny(InboundFrame.tooShort(length: length)))
            return .continue
        }
        let version = buffer.readInteger(as: UInt8.self)!
        let opcode = buffer.readInteger(as: UInt8.self)!
        let requestID = buffer.readInteger(as: UInt64.self)!
        let body = buffer.readSlice(length: Int(length) - StorageProtocol.requestHeaderBytes)!
        context.fireChannelRead(NIOAny(InboundFrame.request(version: version, opcode: opcode, requestID: requestID, body: body)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial frame at EOF is dropped: nothing of it was acted on.
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}

/// Answers frames of one connection, in order: each request waits for the previous one's node call,
/// so replies leave in request order. Node calls run on `pool`, never on the event loop, because they
/// block on the node's mutex and on fdatasync.
final class StorageHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    typealias OutboundOut = ByteBuffer

    private let node: StorageNode
    private let payloadSizeBytes: Int
    private let frameBytesMax: Int
    private let pool: NIOThreadPool
    private let stats: StorageRequestStats?
    /// The last reply scheduled on this connection; the next request chains after it.
    private var tail: EventLoopFuture<Void>?
    /// Requests received and not yet answered (event loop only).
    private var pendingCount = 0
    /// Queued requests per connection before reading pauses. Frames already read in one socket read
    /// are still queued, so the queue may pass this by what one read holds.
    static let pendingRequestsMax = 64

    init(node: StorageNode, payloadSizeBytes: Int, frameBytesMax: Int, pool: NIOThreadPool, stats: StorageRequestStats?) {
        self.stats = stats
        self.node = node
        self.payloadSizeBytes = payloadSizeBytes
        self.frameBytesMax = frameBytesMax
        self.pool = pool
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let channel = context.channel
        let eventLoop = context.eventLoop
        let frameBytesMax = frameBytesMax
        switch frame {
        case .tooLarge(let length, let opcode, let requestID):
            let reply = StorageReply.frameTooLarge(length: length, max: UInt32(frameBytesMax))
            stats?.recordRejected(status: reply.status)
            chain(eventLoop, channel) { eventLoop.makeSucceededFuture(reply) } send: { reply in
                let buffer = Self.encode(reply, opcode: opcode, requestID: requestID, allocator: channel.allocator)
                channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
            }
        case .tooShort(let length):
            let reply = StorageReply.malformedFrame(message: "frame length \(length) is below the 10-byte header")
            stats?.recordRejected(status: reply.status)
            chain(eventLoop, channel) { eventLoop.makeSucceededFuture(reply) } send: { reply in
                channel.writeAndFlush(Self.encode(reply, opcode: 0, requestID: 0, allocator: channel.allocator), promise: nil)
            }
        case .request(let version, let rawOpcode, let requestID, var body):
            let immediate: StorageReply?
            var request: StorageRequest?
            if version != StorageProtocol.version {
                immediate = .unsupportedVersion(version)
            } else if let opcode = Opcode(rawValue: rawOpcode) {
                do {
                    request = try StorageRequest.decode(opcode: opcode, body: &body)
                    immediate = nil
                } catch {
                    immediate = .malformedFrame(message: error.reason)
                }
            } else {
                immediate = .unknownOpcode(rawOpcode)
            }
            let decoded = request
            let node = node
            let payloadSizeBytes = payloadSizeBytes
            let pool = pool
            let stats = stats
            if let immediate { stats?.recordRejected(status: immediate.status) }
            chain(eventLoop, channel) {
                if let immediate { return eventLoop.makeSucceededFuture(immediate) }
                let request = decoded!
                return pool.runIfActive(eventLoop: eventLoop) {
                    let startNs = Clock.monotonicNs()
                    let reply = execute(request, node: node, payloadSizeBytes: payloadSizeBytes, frameBytesMax: frameBytesMax)
                    stats?.record(request.opcode, status: reply.status, latencyNs: Clock.monotonicNs() &- startNs)
                    return reply
                }
            } send: { reply in
                channel.writeAndFlush(Self.encode(reply, opcode: rawOpcode, requestID: requestID, allocator: channel.allocator),
                                      promise: nil)
            }
        }
    }

    /// Runs `work` after the previous request's reply was sent, then `send`s its reply. A failure
    /// (the pool shut down) closes the connection. At `pendingRequestsMax` queued requests the channel
    /// stops reading (TCP pushes back on the client) until the queue drains below it.
    private func chain(_ eventLoop: EventLoop, _ channel: Channel,
                       _ work: @escaping @Sendable () -> EventLoopFuture<StorageReply>,
                       send: @escaping @Sendable (StorageReply) -> Void) {
        let previous = tail ?? eventLoop.makeSucceededVoidFuture()
        pendingCount += 1
        if pendingCount == Self.pendingRequestsMax { channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let next = previous.flatMap { work() }.map { send($0) }
        next.whenComplete { result in
            let handler = bound.value
            handler.pendingCount -= 1
            precondition(handler.pendingCount >= 0, "each request completes once")
            if handler.pendingCount == Self.pendingRequestsMax - 1 {
                channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            }
            if case .failure = result { channel.close(promise: nil) }
        }
        tail = next
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    static func encode(_ reply: StorageReply, opcode: UInt8, requestID: UInt64, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        encodeFrame(opcode: opcode, requestID: requestID, status: reply.status, into: &buffer) { reply.encodeBody(into: &$0) }
        return buffer
    }
}

/// Runs one request against the node. Blocks (mutex, disk): call on a pool thread.
func execute(_ request: StorageRequest, node: StorageNode, payloadSizeBytes: Int, frameBytesMax: Int) -> StorageReply {
    do {
        switch request {
        case .readPage(let objectID, let pageIndex):
            let page = try node.read(objectID: objectID, pageIndex: pageIndex)
            return .page(payload: page.payload, pageOSN: page.pageOSN, readOSN: page.readOSN)
        case .readPages(let objectID, let firstPage, let count):
            return try readPages(objectID: objectID, firstPage: firstPage, count: count, node: node,
                                 payloadSizeBytes: payloadSizeBytes, frameBytesMax: frameBytesMax)
        case .writePages(let objectID, let pages):
            let osn = try node.write(objectID: objectID, pages: pages.map { ($0.index, $0.payload, $0.condition) })
            return .osn(osn)
        case .statNode:
            return .node(lastOSN: node.lastOSN, payloadSizeBytes: UInt32(payloadSizeBytes))
        case .createObject, .deleteObject, .truncateObject, .statObject, .listObjects:
            return try executeObjectOp(request, node: node, frameBytesMax: frameBytesMax)
        }
    } catch {
        return reply(for: error)
    }
}

/// A page range read. Checked before the node is called: the range within `ObjectStore.pageIndexMax`,
/// and the whole reply (every page at its full payload size) within `frameBytesMax` — a range that
/// would not fit is `tooManyPages` with the most that fits, never a half-sent reply.
func readPages(objectID: UInt64, firstPage: UInt64, count: UInt32, node: StorageNode,
               payloadSizeBytes: Int, frameBytesMax: Int) throws(ObjectStoreError) -> StorageReply {
    let (end, overflow) = firstPage.addingReportingOverflow(UInt64(count))
    guard !overflow, end <= ObjectStore.pageIndexMax else {
        return .pageIndexOutOfRange(index: overflow ? UInt64.max : end, max: ObjectStore.pageIndexMax)
    }
    // Reply header 11 bytes + u64 readOSN + u32 n, then per page u64 pageOSN + u32 length + payload.
    let fitCount = max(0, (frameBytesMax - StorageProtocol.replyHeaderBytes - 12) / (12 + payloadSizeBytes))
    let countMax = min(fitCount, ObjectStore.pagesPerReadMax)
    guard Int(count) <= countMax else { return .tooManyPages(count: count, max: UInt32(clamping: countMax)) }
    let versions = try node.read(objectID: objectID, pageRange: firstPage..<end)
    let readOSN = versions.first?.readOSN ?? 0
    precondition(versions.allSatisfy { $0.readOSN == readOSN }, "a range read is ordered at one OSN")
    let pages = versions.map { RemotePage(payload: $0.payload, pageOSN: $0.pageOSN, readOSN: readOSN) }
    let bytes = StorageProtocol.replyHeaderBytes + 12 + pages.reduce(0) { $0 + 12 + $1.payload.count }
    guard bytes <= frameBytesMax else {
        // Payloads are never longer than the page size, so this only trips on a node bug.
        return .ioError(message: "range reply of \(bytes) bytes exceeds frameBytesMax \(frameBytesMax)")
    }
    return .pages(readOSN: readOSN, pages: pages)
}

/// The reply for a node error. `default:` keeps new error cases from breaking the build: they are
/// reported as I/O errors with their description.
func reply(for error: ObjectStoreError) -> StorageReply {
    switch error {
    case .conflict(let objectID, let pageIndex, let currentOSN):
        return .conflict(objectID: objectID, pageIndex: pageIndex, currentOSN: currentOSN)
    case .payloadTooLarge(let size, let max):
        return .payloadTooLarge(size: UInt32(clamping: size), max: UInt32(clamping: max))
    case .tooManyPages(let count, let max):
        return .tooManyPages(count: UInt32(clamping: count), max: UInt32(clamping: max))
    case .pageIndexOutOfRange(let index, let max):
        return .pageIndexOutOfRange(index: index, max: max)
    case .page(let pageError):
        if case .corruptPage = pageError { return .corruptPage(message: "\(pageError)") }
        return .ioError(message: "\(pageError)")
    default:
        return objectReply(for: error) ?? .ioError(message: "\(error)")
    }
}

/// A listening storage server. `bind` starts it; `close` stops accepting, closes connections and
/// shuts its threads down. Not restartable.
public final class StorageServer: Sendable {
    public let configuration: StorageServerConfiguration
    /// The port actually bound (the kernel's choice when 0 was asked for).
    public let port: Int
    public let host: String
    private let group: MultiThreadedEventLoopGroup
    private let pool: NIOThreadPool
    private let channel: Channel

    /// Binds `host:port` (port 0: any free port, see `port`) and starts serving `node`.
    /// `payloadSizeBytes` is what `statNode` reports (the store's page payload size).
    public static func bind(host: String, port: Int, node: StorageNode, payloadSizeBytes: Int,
                            configuration: StorageServerConfiguration = .init()) throws(StorageServerError) -> StorageServer {
        guard configuration.frameBytesMax >= 64, configuration.frameBytesMax <= StorageProtocol.frameBytesMaxLimit else {
            throw .invalidConfiguration("frameBytesMax \(configuration.frameBytesMax) outside 64...\(StorageProtocol.frameBytesMaxLimit)")
        }
        guard (1...64).contains(configuration.eventLoopThreadCount), (1...256).contains(configuration.blockingThreadCount) else {
            throw .invalidConfiguration("thread counts outside 1...64 (event loops) or 1...256 (blocking)")
        }
        guard (0...65535).contains(port) else { throw .invalidConfiguration("port \(port) outside 0...65535") }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreadCount)
        let pool = NIOThreadPool(numberOfThreads: configuration.blockingThreadCount)
        pool.start()
        let frameBytesMax = configuration.frameBytesMax
        let stats = configuration.stats
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(frameBytesMax: frameBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(
                        StorageHandler(node: node, payloadSizeBytes: payloadSizeBytes, frameBytesMax: frameBytesMax, pool: pool,
                                       stats: stats))
                }
            }
        let channel: Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            try? pool.syncShutdownGracefully()
            throw .bindFailed(host: host, port: port, reason: "\(error)")
        }
        return StorageServer(configuration: configuration, host: host, port: channel.localAddress?.port ?? port,
                             group: group, pool: pool, channel: channel)
    }

    private init(configuration: StorageServerConfiguration, host: String, port: Int,
                 group: MultiThreadedEventLoopGroup, pool: NIOThreadPool, channel: Channel) {
        self.configuration = configuration
        self.host = host
        self.port = port
        self.group = group
        self.pool = pool
        self.channel = channel
    }

    /// Blocks until the listening socket is closed (by `close` from another thread or a signal).
    public func waitUntilClosed() {
        try? channel.closeFuture.wait()
    }

    /// Stops accepting, closes every connection, waits for running node calls, and stops the threads.
    /// Blocks; do not call from an event loop.
    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        try? pool.syncShutdownGracefully()
    }
}
