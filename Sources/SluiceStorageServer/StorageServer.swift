// Path: Sources/SluiceStorageServer/StorageServer.swift — the storage node over TCP: a SwiftNIO server
// whose frame decoder bounds every frame, and whose handler runs node calls on a thread pool.
import Glibc
import NIOCore
import SluiceCore
import NIOPosix
import SluicePageStore
import Synchronization
import SystemPackage

/// Why the server could not start.
public enum StorageServerError: Error, Equatable, CustomStringConvertible {
    /// A configuration value (or the port) outside what `bind` accepts.
    case outOfRange(StorageServerSetting, value: Int, range: ClosedRange<Int>)
    /// The listening socket could not be made: the system call's errno, or the address did not resolve.
    case bindFailed(host: String, port: Int, BindFailure)

    public var description: String {
        switch self {
        case .outOfRange(let setting, let value, let range): "\(setting.rawValue) \(value) outside \(range)"
        case .bindFailed(let host, let port, let failure): "cannot listen on \(host):\(port): \(failure)"
        }
    }
}

/// What `StorageServerError.outOfRange` names.
public enum StorageServerSetting: String, Sendable {
    case frameBytesMax, eventLoopThreadCount, blockingThreadCount, port
    case outstandingRequestsMax, outstandingReplyBytesMax, stalledReplyDeadlineMs
}

/// Why binding failed, keeping the underlying error.
public enum BindFailure: Sendable, Equatable, CustomStringConvertible {
    case syscall(SyscallError)
    case address(SocketAddressError)
    /// Anything else NIO threw (its type name and description).
    case other(type: String, description: String)

    /// Classifies what a NIO `bind` threw: its errno, an address that did not resolve, or else its text.
    public init(_ error: any Error) {
        if let error = error as? IOError {
            self = .syscall(SyscallError("bind", Errno(rawValue: error.errnoCode)))
        } else if let error = error as? SocketAddressError {
            self = .address(error)
        } else {
            self = .other(type: "\(type(of: error))", description: "\(error)")
        }
    }

    public var description: String {
        switch self {
        case .syscall(let error): "\(error)"
        case .address(let error): "\(error)"
        case .other(_, let description): description
        }
    }
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
    /// Requests per connection received and not yet answered (waiting, running, or replies the socket
    /// has not taken). At this many, reading from the connection pauses.
    public var outstandingRequestsMax = 64
    /// Reply bytes per connection written and not yet taken by the socket. At this many, reading pauses
    /// and no request starts (one reply may pass it: a reply is never cut).
    public var outstandingReplyBytesMax = 8 << 20
    /// A connection whose untaken replies stay at a bound this long is closed (its client is not
    /// reading), and counted in `StorageServer.stalledConnectionsClosed`.
    public var stalledReplyDeadlineNs: UInt64 = 30_000_000_000
    /// Where each request's reply status and latency are counted (nil: not counted).
    public var stats: StorageRequestStats?
    public init() {}

    /// Largest values `StorageServer.bind` accepts.
    public static let outstandingRequestsMaxLimit = 4_096
    public static let outstandingReplyBytesMaxLimit = 1 << 30
    public static let stalledReplyDeadlineNsLimit: UInt64 = 3_600_000_000_000
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

/// Answers frames of one connection, in order: one node call at a time, so replies leave in request
/// order. Node calls run on `pool`, never on the event loop, because they block on the node's mutex
/// and on fdatasync. Replies are bounded: a reply counts as outstanding from its request's arrival
/// until the socket took it (its write completed), not when it was queued. At `outstandingRequestsMax`
/// outstanding, or `outstandingReplyBytesMax` bytes written and not yet taken, reading stops (TCP pushes
/// back on the client) and no node call starts; a connection whose unsent replies stay over either
/// bound for `stalledReplyDeadlineNs` is closed (the client is not reading) and counted.
final class StorageHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    typealias OutboundOut = ByteBuffer

    /// A request waiting for its turn: a reply already known, or a node call to run.
    private struct Work {
        var immediate: StorageReply?
        var request: StorageRequest?
        var opcode: UInt8
        var requestID: UInt64
        /// Close the connection once this reply is written (a frame too large to read past).
        var closeAfter = false
    }

    private let node: StorageNode
    private let payloadSizeBytes: Int
    private let limits: StorageServerConfiguration
    private let pool: NIOThreadPool
    private let stats: StorageRequestStats?
    private let stalledConnections: StalledConnectionCounter
    // Event loop only, all of it.
    private var waiting = CircularBuffer<Work>()
    private var running = false
    private var unsentCount = 0
    private var unsentBytes = 0
    private var readingPaused = false
    private var pumping = false
    private var stallTimer: Scheduled<Void>?

    init(node: StorageNode, payloadSizeBytes: Int, limits: StorageServerConfiguration, pool: NIOThreadPool,
         stalledConnections: StalledConnectionCounter) {
        self.stats = limits.stats
        self.node = node
        self.payloadSizeBytes = payloadSizeBytes
        self.limits = limits
        self.pool = pool
        self.stalledConnections = stalledConnections
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .tooLarge(let length, let opcode, let requestID):
            let reply = StorageReply.frameTooLarge(length: length, max: UInt32(limits.frameBytesMax))
            stats?.recordRejected(status: reply.status)
            waiting.append(Work(immediate: reply, opcode: opcode, requestID: requestID, closeAfter: true))
        case .tooShort(let length):
            let reply = StorageReply.malformedFrame(message: MalformedBody.frameBelowHeader(length: length).reason)
            stats?.recordRejected(status: reply.status)
            waiting.append(Work(immediate: reply, opcode: 0, requestID: 0))
        case .request(let version, let rawOpcode, let requestID, var body):
            var work = Work(opcode: rawOpcode, requestID: requestID)
            if version != StorageProtocol.version {
                work.immediate = .unsupportedVersion(version)
            } else if let opcode = Opcode(rawValue: rawOpcode) {
                do { work.request = try StorageRequest.decode(opcode: opcode, body: &body) } catch {
                    work.immediate = .malformedFrame(message: error.reason)
                }
            } else {
                work.immediate = .unknownOpcode(rawOpcode)
            }
            if let immediate = work.immediate { stats?.recordRejected(status: immediate.status) }
            waiting.append(work)
        }
        pump(context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stallTimer?.cancel()
        stallTimer = nil
        context.fireChannelInactive()
    }

    /// Starts what may start: immediate replies are sent at once, one node call runs at a time, and
    /// nothing starts while the unsent replies are at a bound. Then pauses or resumes reading.
    private func pump(_ channel: Channel) {
        if pumping { return }  // a write completed synchronously inside the loop below: it goes on
        pumping = true
        defer { pumping = false }
        while !running, unsentCount < limits.outstandingRequestsMax, unsentBytes < limits.outstandingReplyBytesMax,
              let work = waiting.popFirst() {
            if let reply = work.immediate {
                send(reply, work, channel)
                continue
            }
            running = true
            let request = work.request!
            let node = node
            let payloadSizeBytes = payloadSizeBytes
            let frameBytesMax = limits.frameBytesMax
            let stats = stats
            let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
            pool.runIfActive(eventLoop: channel.eventLoop) {
                let startNs = Clock.monotonicNs()
                let reply = execute(request, node: node, payloadSizeBytes: payloadSizeBytes, frameBytesMax: frameBytesMax)
                stats?.record(request.opcode, status: reply.status, latencyNs: Clock.monotonicNs() &- startNs)
                return reply
            }.whenComplete { result in
                let handler = bound.value
                handler.running = false
                switch result {
                case .success(let reply): handler.send(reply, work, channel)
                case .failure: channel.close(promise: nil)  // the pool shut down
                }
                handler.pump(channel)
            }
        }
        updateBounds(channel)
    }

    /// Writes a reply; it stays counted as unsent until the socket took it.
    private func send(_ reply: StorageReply, _ work: Work, _ channel: Channel) {
        let buffer = Self.encode(reply, opcode: work.opcode, requestID: work.requestID, allocator: channel.allocator)
        let bytes = buffer.readableBytes
        unsentCount += 1
        unsentBytes += bytes
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        let closeAfter = work.closeAfter
        channel.writeAndFlush(buffer).whenComplete { result in
            let handler = bound.value
            handler.unsentCount -= 1
            handler.unsentBytes -= bytes
            precondition(handler.unsentCount >= 0 && handler.unsentBytes >= 0, "each reply is taken once")
            if closeAfter { channel.close(promise: nil) }
            if case .failure = result { channel.close(promise: nil) }
            handler.pump(channel)
        }
    }

    /// Reading stops at either bound (requests outstanding, unsent bytes) and resumes below both; the
    /// stall deadline runs while the unsent replies alone are at a bound.
    private func updateBounds(_ channel: Channel) {
        let outstanding = waiting.count + (running ? 1 : 0) + unsentCount
        let full = outstanding >= limits.outstandingRequestsMax || unsentBytes >= limits.outstandingReplyBytesMax
        if full != readingPaused {
            readingPaused = full
            // Turning autoRead back on issues a read at once (NIO's BaseSocketChannel).
            channel.setOption(ChannelOptions.autoRead, value: !full).whenComplete { _ in }
        }
        let stalled = unsentCount >= limits.outstandingRequestsMax || unsentBytes >= limits.outstandingReplyBytesMax
        if stalled, stallTimer == nil {
            let stalledConnections = stalledConnections
            stallTimer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(limits.stalledReplyDeadlineNs))) {
                stalledConnections.count.add(1, ordering: .relaxed)
                channel.close(promise: nil)
            }
        } else if !stalled, let timer = stallTimer {
            timer.cancel()
            stallTimer = nil
        }
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

/// Connections closed because their client left replies unread past the deadline. Any thread.
final class StalledConnectionCounter: Sendable {
    let count = Atomic<UInt64>(0)
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
        case .syncNode(let minOSN, let timeoutMs):
            // An embedded node is always following: its catchUp answers at once.
            let status = minOSN == 0 ? node.replicaStatus : try node.catchUp(to: minOSN, timeoutMs: Int(timeoutMs))
            return .replica(RemoteReplicaStatus(status))
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
    case .replication(let problem):
        switch problem {
        case .logUnavailable: return .logUnavailable(message: "\(problem)")
        case .outcomeUnknown: return .outcomeUnknown(message: "\(problem)")
        case .behind(let applied, let wanted): return .behind(appliedOSN: applied, wantedOSN: wanted)
        case .overloaded: return .overloaded(message: "\(problem)")
        case .recordTooLarge, .compactedPast, .corruptRecord, .incompatibleLog, .stopped:
            return .replicaFailed(message: "\(problem)")
        }
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
    private let stalledConnections: StalledConnectionCounter

    /// Connections closed because their client left replies unread past `stalledReplyDeadlineNs`.
    public var stalledConnectionsClosed: UInt64 { stalledConnections.count.load(ordering: .relaxed) }

    /// Binds `host:port` (port 0: any free port, see `port`) and starts serving `node`.
    /// `payloadSizeBytes` is what `statNode` reports (the store's page payload size).
    public static func bind(host: String, port: Int, node: StorageNode, payloadSizeBytes: Int,
                            configuration: StorageServerConfiguration = .init()) throws(StorageServerError) -> StorageServer {
        typealias Limits = StorageServerConfiguration
        let deadlineMs = Int(clamping: configuration.stalledReplyDeadlineNs / 1_000_000)
        let checks: [(StorageServerSetting, Int, ClosedRange<Int>)] = [
            (.frameBytesMax, configuration.frameBytesMax, 64...StorageProtocol.frameBytesMaxLimit),
            (.eventLoopThreadCount, configuration.eventLoopThreadCount, 1...64),
            (.blockingThreadCount, configuration.blockingThreadCount, 1...256),
            (.port, port, 0...65535),
            (.outstandingRequestsMax, configuration.outstandingRequestsMax, 1...Limits.outstandingRequestsMaxLimit),
            (.outstandingReplyBytesMax, configuration.outstandingReplyBytesMax, 1...Limits.outstandingReplyBytesMaxLimit),
            (.stalledReplyDeadlineMs, deadlineMs, 1...Int(Limits.stalledReplyDeadlineNsLimit / 1_000_000)),
        ]
        for (setting, value, range) in checks where !range.contains(value) {
            throw .outOfRange(setting, value: value, range: range)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreadCount)
        let pool = NIOThreadPool(numberOfThreads: configuration.blockingThreadCount)
        pool.start()
        let frameBytesMax = configuration.frameBytesMax
        let stalledConnections = StalledConnectionCounter()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(frameBytesMax: frameBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(
                        StorageHandler(node: node, payloadSizeBytes: payloadSizeBytes, limits: configuration, pool: pool,
                                       stalledConnections: stalledConnections))
                }
            }
        let channel: Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            try? pool.syncShutdownGracefully()
            throw .bindFailed(host: host, port: port, BindFailure(error))
        }
        return StorageServer(configuration: configuration, host: host, port: channel.localAddress?.port ?? port,
                             group: group, pool: pool, channel: channel, stalledConnections: stalledConnections)
    }

    private init(configuration: StorageServerConfiguration, host: String, port: Int,
                 group: MultiThreadedEventLoopGroup, pool: NIOThreadPool, channel: Channel,
                 stalledConnections: StalledConnectionCounter) {
        self.stalledConnections = stalledConnections
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
