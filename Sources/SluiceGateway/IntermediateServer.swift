// Path: Sources/SluiceGateway/IntermediateServer.swift — the intermediate device: a SwiftNIO server of the
// gateway block protocol over a chunk cache and a remote object store.
import NIOCore
import NIOPosix
import SluiceCore
import Synchronization

/// What the intermediate server accepts. Validated by `IntermediateServer.bind`.
public struct IntermediateConfiguration: Sendable {
    /// Bound on reply frames (reported by `hello`); at least `units.frameBytesNeeded`. Request frames are
    /// bounded by `GatewayProtocol.requestFrameBytesMax`.
    public var frameBytesMax: Int
    /// Requests per connection received and not yet written to the socket (decoding, fetching, or
    /// waiting for an earlier reply: replies leave in request order). At this many, reading pauses.
    public var outstandingRequestsMax = 64
    /// Bytes of requests in progress across every connection (`RequestBudget`): a `readSectors` holds
    /// the most its reply can take, an `uploadData` its body. Past it, requests wait and reading pauses.
    public var requestBytesInFlightMax = RequestBudget.bytesMaxDefault
    /// How long a stat answer is used before the store is asked again (0: every request asks).
    public var statTTLNs: UInt64 = 1_000_000_000
    public var statEntriesMax = 65_536
    public var eventLoopThreadCount = 1
    public var predictor = PredictorConfiguration()
    /// Writes from the appliance (docs/GATEWAY.md, "Writes").
    public var upload = UploadConfiguration()

    public static let outstandingRequestsMaxLimit = 4_096
    public static let statTTLNsLimit: UInt64 = 3_600_000_000_000
    public static let statEntriesMaxLimit = 1 << 22

    /// Defaults for `units`: the smallest reply bound that carries a whole chunk, rounded to 64 KiB.
    public init(units: GatewayUnits) {
        frameBytesMax = (units.frameBytesNeeded + 0xFFFF) & ~0xFFFF
    }
}

/// Why the server could not start.
public enum IntermediateServerError: Error, Equatable, CustomStringConvertible {
    case setting(GatewaySettingError)
    case bindFailed(host: String, port: Int, reason: String)

    public var description: String {
        switch self {
        case .setting(let error): "\(error)"
        case .bindFailed(let host, let port, let reason): "cannot listen on \(host):\(port): \(reason)"
        }
    }
}

/// A listening intermediate device. `bind` starts it; `close` stops it. Not restartable.
///
/// Per request: `hello` answers the units; `stat` answers from the stat cache (fresh for `statTTLNs`) or
/// the store; `readSectors` checks the chunk and wanted sectors against the object's size, lets the
/// connection's `Predictor` choose extra extents, reads all of them from the chunk cache (one fetch of the
/// whole chunk on a miss) and answers them with per-sector CRCs; `invalidate` drops the key's chunks,
/// stat and history before any later request of the connection runs. Requests of one connection run
/// concurrently and are answered in order.
public final class IntermediateServer: Sendable {
    public let host: String
    /// The port actually bound (the kernel's choice when 0 was asked for).
    public let port: Int
    public let units: GatewayUnits
    public let counters: GatewayCounters
    public let cache: ChunkCache
    /// Bytes of requests in progress across connections, and the high-water marks tests look at.
    public let budget: RequestBudget
    /// Request tasks still running (`close` waits for them).
    public let tasks: RequestTasks
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let closed = Atomic<Bool>(false)

    /// Binds `host:port` (0: any free port) and serves `store` through `cache` (whose units it uses).
    public static func bind(host: String, port: Int, store: any RemoteObjectStore, cache: ChunkCache,
                            configuration: IntermediateConfiguration) throws(IntermediateServerError) -> IntermediateServer {
        let units = cache.configuration.units
        typealias Limits = IntermediateConfiguration
        let ttlMs = Int(clamping: configuration.statTTLNs / 1_000_000)
        let checks: [(String, Int, ClosedRange<Int>)] = [
            ("frameBytesMax", configuration.frameBytesMax, units.frameBytesNeeded...GatewayProtocol.frameBytesMaxLimit),
            ("outstandingRequestsMax", configuration.outstandingRequestsMax, 1...Limits.outstandingRequestsMaxLimit),
            ("requestBytesInFlightMax", configuration.requestBytesInFlightMax, RequestBudget.bytesMaxRange),
            ("statTTLMs", ttlMs, 0...Int(Limits.statTTLNsLimit / 1_000_000)),
            ("statEntriesMax", configuration.statEntriesMax, 1...Limits.statEntriesMaxLimit),
            ("eventLoopThreadCount", configuration.eventLoopThreadCount, 1...64),
            ("port", port, 0...65535),
            ("upload.partBytes", configuration.upload.partBytes, UploadConfiguration.partBytesRange),
            ("upload.uploadsMax", configuration.upload.uploadsMax, 1...4_096),
            ("upload.bufferedBytesMax", configuration.upload.bufferedBytesMax, GatewayProtocol.uploadDataBytesMax...(16 << 30)),
        ]
        for (setting, value, range) in checks where !range.contains(value) {
            throw .setting(.invalid(setting: setting, value: value, rule: "in \(range)"))
        }
        let predictor = configuration.predictor
        let predictorChecks: [(String, Int, ClosedRange<Int>)] = [
            ("predictor.keysMax", predictor.keysMax, 1...PredictorConfiguration.keysMaxLimit),
            ("predictor.historyLength", predictor.historyLength, 2...PredictorConfiguration.historyLengthLimit),
            ("predictor.sequentialStreakMin", predictor.sequentialStreakMin, 1...predictor.historyLength),
            ("predictor.strideReadsMin", predictor.strideReadsMin, 3...max(3, predictor.historyLength)),
            ("predictor.predictedExtentsMax", predictor.predictedExtentsMax, 1...PredictorConfiguration.predictedExtentsMaxLimit),
        ]
        for (setting, value, range) in predictorChecks where !range.contains(value) {
            throw .setting(.invalid(setting: setting, value: value, rule: "in \(range)"))
        }
        let budget = RequestBudget(bytesMax: configuration.requestBytesInFlightMax)
        let tasks = RequestTasks()
        let shared = ServerShared(store: store, cache: cache, units: units, configuration: configuration, counters: cache.counters,
                                  budget: budget, tasks: tasks,
                                  stats: StatCache(ttlNs: configuration.statTTLNs, entriesMax: configuration.statEntriesMax,
                                                   counters: cache.counters),
                                  uploads: UploadSessions(configuration: configuration.upload, units: units, counters: cache.counters))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreadCount)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(
                        GatewayFrameDecoder(frameBytesMax: GatewayProtocol.requestFrameBytesMax, withStatus: false,
                                            largeOpcodes: [GatewayOpcode.uploadData.rawValue],
                                            largeFrameBytesMax: GatewayProtocol.uploadFrameBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(IntermediateHandler(shared: shared))
                }
            }
        let channel: Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw .bindFailed(host: host, port: port, reason: "\(error)")
        }
        return IntermediateServer(host: host, port: channel.localAddress?.port ?? port, units: units, counters: cache.counters,
                                  cache: cache, budget: budget, tasks: tasks, group: group, channel: channel)
    }

    private init(host: String, port: Int, units: GatewayUnits, counters: GatewayCounters, cache: ChunkCache,
                 budget: RequestBudget, tasks: RequestTasks, group: MultiThreadedEventLoopGroup, channel: Channel) {
        self.budget = budget
        self.tasks = tasks
        self.host = host
        self.port = port
        self.units = units
        self.counters = counters
        self.cache = cache
        self.group = group
        self.channel = channel
    }

    /// Blocks until the listening socket is closed.
    public func waitUntilClosed() {
        try? channel.closeFuture.wait()
    }

    /// Stops accepting, waits up to `waitingUpToNs` for request tasks in progress to finish (their
    /// replies are written while the connections stay open), then closes every connection and stops
    /// the event loops. Blocks; do not call from an event loop.
    /// A second call does nothing.
    public func close(waitingUpToNs: UInt64 = 5_000_000_000) {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        try? channel.close().wait()
        _ = tasks.waitUntilIdle(timeoutNs: waitingUpToNs)
        try? group.syncShutdownGracefully()
    }
}

/// What every connection of one server shares.
struct ServerShared: Sendable {
    let store: any RemoteObjectStore
    let cache: ChunkCache
    let units: GatewayUnits
    let configuration: IntermediateConfiguration
    let counters: GatewayCounters
    let budget: RequestBudget
    let tasks: RequestTasks
    let stats: StatCache
    let uploads: UploadSessions
}

/// One connection: decodes requests in order, runs them concurrently, writes replies in request order.
/// Event loop only. A request is outstanding from its arrival until its reply's write completed; at
/// `outstandingRequestsMax` reading pauses (TCP pushes back on the appliance). Requests start in arrival
/// order under the server's `RequestBudget`; while one waits for bytes, reading pauses too.
final class IntermediateHandler: ChannelInboundHandler {
    typealias InboundIn = GatewayInboundFrame
    typealias OutboundOut = ByteBuffer

    private let shared: ServerShared
    private var predictor: Predictor
    private let replies: OrderedReplies

    init(shared: ServerShared) {
        self.shared = shared
        predictor = Predictor(configuration: shared.configuration.predictor, units: shared.units)
        replies = OrderedReplies(outstandingMax: shared.configuration.outstandingRequestsMax, budget: shared.budget)
        let counters = shared.counters
        replies.onWrite = { bytes in counters.add(counters.lastHopFrameBytes, bytes) }
        replies.handle = { [unowned self] frame, sequence, channel in self.handle(frame, sequence, channel) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        replies.receive(unwrapInboundIn(data), context.channel)
    }

    private func handle(_ frame: GatewayInboundFrame, _ sequence: UInt64, _ channel: Channel) {
        shared.counters.add(shared.counters.requests)
        switch frame {
        case .tooLarge(let length, let opcode, let requestID):
            let message = "frame length \(length) is above \(GatewayProtocol.requestFrameBytesMax)"
            complete(sequence, reply(.failure(.frameTooLarge, message: message), opcode: opcode, requestID: requestID, channel),
                     closeAfter: true, channel)
            replies.closeAfterReplies()
        case .tooShort(let length):
            let message = GatewayDecodeError.frameBelowHeader(length: length, header: GatewayProtocol.requestHeaderBytes).description
            complete(sequence, reply(.failure(.badRequest, message: message), opcode: 0, requestID: 0, channel), closeAfter: false, channel)
        case .frame(let version, let rawOpcode, let requestID, _, var body):
            guard version == GatewayProtocol.version else {
                let failure = GatewayReply.failure(.unsupportedVersion, message: "version \(version); this server speaks \(GatewayProtocol.version)")
                complete(sequence, reply(failure, opcode: rawOpcode, requestID: requestID, channel), closeAfter: false, channel)
                break
            }
            guard let opcode = GatewayOpcode(rawValue: rawOpcode) else {
                let failure = GatewayReply.failure(.unknownOpcode, message: "opcode \(rawOpcode)")
                complete(sequence, reply(failure, opcode: rawOpcode, requestID: requestID, channel), closeAfter: false, channel)
                break
            }
            do throws(GatewayDecodeError) {
                let request = try GatewayRequest.decode(opcode: opcode, body: &body, units: shared.units)
                replies.starts.admit(sequence: sequence, cost: cost(of: request), channel) { [unowned self] in
                    self.start(request, sequence: sequence, requestID: requestID, channel)
                }
            } catch {
                complete(sequence, reply(.failure(.badRequest, message: error.description), opcode: rawOpcode, requestID: requestID, channel),
                         closeAfter: false, channel)
            }
        }
    }

    /// What `request` holds of the budget: the most its reply can take (wanted sectors with their CRCs,
    /// the predicted bytes within `extraBudgetBytes`, at most a frame), or an upload's body.
    private func cost(of request: GatewayRequest) -> Int {
        let units = shared.units
        switch request {
        case .readSectors(let read):
            let wanted = read.wanted.reduce(0) { $0 + Int($1.sectorCount) }
            let predicted = min(Int(read.extraBudgetBytes), units.chunkBytes) / units.sectorBytes + 1
            let bound = (wanted + predicted) * (units.sectorBytes + 4) + (read.wanted.count + shared.configuration.predictor.predictedExtentsMax) * 16
                + GatewayProtocol.etagBytesMax + 64
            return min(bound, shared.configuration.frameBytesMax + 4)
        case .uploadData(let piece): return piece.bytes.count + piece.crcs.count * 4
        case .hello, .stat, .invalidate, .uploadBegin, .uploadComplete, .uploadAbort: return 0
        }
    }

    /// Answers at once what needs no I/O; runs the rest on a task and completes in order.
    private func start(_ request: GatewayRequest, sequence: UInt64, requestID: UInt64, _ channel: Channel) {
        let shared = shared
        let opcode = request.opcode.rawValue
        switch request {
        case .hello:
            let hello = GatewayHello(units: shared.units, frameBytesMax: shared.configuration.frameBytesMax)
            complete(sequence, reply(.hello(hello), opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
        case .invalidate(let key):
            // Before any later request of this connection starts: they see the store anew.
            shared.cache.invalidate(key: key)
            shared.stats.invalidate(key)
            predictor.forget(key)
            complete(sequence, reply(.invalidated, opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
        case .stat(let key):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                do throws(RemoteStoreError) {
                    let stat = try await shared.stats.stat(key, store: shared.store)
                    return .stat(size: stat.size, etag: stat.etag)
                } catch {
                    return failure(error, key: key, shared)
                }
            }
        case .uploadBegin(let key, let size):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                if case .invalidKey(let key, let reason)? = validWriteKey(key, shared) {
                    return .failure(.badRequest, message: "key \(key): \(reason)")
                }
                return await shared.uploads.begin(key: key, size: size, store: shared.store)
            }
        case .uploadData(let piece):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                await shared.uploads.data(piece, store: shared.store)
            }
        case .uploadComplete(let id):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                let (reply, key) = await shared.uploads.complete(id, store: shared.store)
                // The object is new in the store: nothing cached of the old one is served again.
                if let key {
                    shared.cache.invalidate(key: key)
                    shared.stats.invalidate(key)
                }
                return reply
            }
        case .uploadAbort(let id):
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                await shared.uploads.abort(id, store: shared.store)
            }
        case .readSectors(let read):
            // Chosen here, in arrival order, so the history sees reads as the appliance sent them.
            let selection = predictor.observe(read, objectSize: shared.stats.fresh(read.key)?.size)
            run(sequence, requestID: requestID, opcode: opcode, channel) {
                await readSectors(read, selection: selection, shared)
            }
        }
    }

    private func run(_ sequence: UInt64, requestID: UInt64, opcode: UInt8, _ channel: Channel,
                     _ work: @escaping @Sendable () async -> GatewayReply) {
        let promise = channel.eventLoop.makePromise(of: GatewayReply.self)
        let tasks = shared.tasks
        tasks.started()
        promise.completeWithTask {
            defer { tasks.ended() }
            return await work()
        }
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        promise.futureResult.whenComplete { result in
            let handler = bound.value
            let answer: GatewayReply
            switch result {
            case .success(let value): answer = value
            case .failure(let error): answer = .failure(.internal, message: "\(error)")
            }
            handler.complete(sequence, handler.reply(answer, opcode: opcode, requestID: requestID, channel), closeAfter: false, channel)
            handler.replies.updateReading(channel)
        }
    }

    private func reply(_ reply: GatewayReply, opcode: UInt8, requestID: UInt64, _ channel: Channel) -> ByteBuffer {
        if case .sectors(let sectors) = reply {
            for extent in sectors.extents { shared.counters.addLastHop(extent.reason, bytes: extent.bytes.count) }
        }
        if reply.status != .ok { shared.counters.add(shared.counters.failedReplies) }
        var buffer = channel.allocator.buffer(capacity: 64)
        encodeGatewayFrame(opcode: opcode, requestID: requestID, status: reply.status, into: &buffer) { reply.encodeBody(into: &$0) }
        precondition(buffer.readableBytes <= shared.configuration.frameBytesMax + 4, "a reply fits the frame bound (checked at bind)")
        return buffer
    }

    /// Queues reply `sequence`; writes every reply whose turn has come.
    private func complete(_ sequence: UInt64, _ buffer: ByteBuffer, closeAfter: Bool, _ channel: Channel) {
        replies.complete(sequence, buffer, closeAfter: closeAfter, channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        replies.dropPending()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// A `readSectors` after its prediction: the object's size and etag, the bounds of the chunk and the
/// wanted sectors, then the sectors from the chunk cache. Requested extents first, then predicted.
func readSectors(_ read: ReadSectorsRequest, selection: PredictionSelection, _ shared: ServerShared) async -> GatewayReply {
    let units = shared.units
    let stat: StatCache.Stat
    do throws(RemoteStoreError) { stat = try await shared.stats.stat(read.key, store: shared.store) } catch {
        return failure(error, key: read.key, shared)
    }
    let chunkLength = units.chunkLength(read.chunk, objectSize: stat.size)
    guard chunkLength > 0 else {
        return .failure(.rangeNotSatisfiable, message: "chunk \(read.chunk) of \(read.key) starts past its size \(stat.size)")
    }
    let sectorCount = (chunkLength + units.sectorBytes - 1) / units.sectorBytes
    for (index, extent) in read.wanted.enumerated() where extent.sectors(units).upperBound > sectorCount {
        return .failure(.rangeNotSatisfiable, message: "wanted[\(index)] (\(extent)) of chunk \(read.chunk) of \(read.key) "
                        + "ends past its size \(stat.size) (\(sectorCount) sectors in this chunk)")
    }
    let predicted = Predictor.clip(selection, chunk: read.chunk, objectSize: stat.size, units: units).extents
    let runs = read.wanted.map { $0.sectors(units) } + predicted.map { $0.extent.sectors(units) }
    let store = shared.store
    let key = read.key
    let start = read.chunk * UInt64(units.chunkBytes)
    let range = start..<(start + UInt64(chunkLength))
    let data: [SectorRunData]
    do throws(ChunkReadError) {
        data = try await shared.cache.read(key: key, etag: stat.etag, chunk: read.chunk, chunkLength: chunkLength, runs: runs) {
            () async throws(RemoteStoreError) -> [UInt8] in try await store.read(key: key, range: range, etag: stat.etag)
        }.runs
    } catch {
        switch error {
        case .remote(let remote): return failure(remote, key: key, shared)
        case .overloaded: return .failure(.overloaded, message: "\(error)")
        }
    }
    let reasons = Array(repeating: ExtentReason.requested, count: read.wanted.count) + predicted.map(\.reason)
    let extents = read.wanted + predicted.map(\.extent)
    precondition(data.count == extents.count, "one run of data per extent")
    let payloads = (0..<extents.count).map { ExtentPayload(reason: reasons[$0], extent: extents[$0], crcs: data[$0].crcs, bytes: data[$0].bytes) }
    return .sectors(SectorsReply(size: stat.size, etag: stat.etag, chunk: read.chunk, keyCRC: gatewayKeyCRC(read.key), extents: payloads))
}

/// A directory store refuses keys that leave its root: checked before any byte is taken.
func validWriteKey(_ key: String, _ shared: ServerShared) -> RemoteStoreError? {
    guard let directory = shared.store as? DirectoryObjectStore else { return nil }
    do throws(RemoteStoreError) { _ = try directory.path(of: key) } catch { return error }
    return nil
}

/// The reply for a store error. An object gone or shrunk drops what is cached of it: nothing stale is
/// served after the store said so.
func failure(_ error: RemoteStoreError, key: String, _ shared: ServerShared) -> GatewayReply {
    switch error {
    case .notFound, .rangeNotSatisfiable, .changed:
        shared.cache.invalidate(key: key)
        shared.stats.invalidate(key)
    case .unavailable, .failed, .invalidKey:
        break
    }
    return .failure(error.status, message: error.description)
}
