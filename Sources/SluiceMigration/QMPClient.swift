// Path: Sources/SluiceMigration/QMPClient.swift — a QMP client over a Unix socket (SwiftNIO): greeting,
// capabilities negotiation, commands with an `id` each (so calls may overlap) and a deadline each,
// asynchronous events in a bounded buffer.
import NIOCore
import NIOPosix
import Synchronization

/// One asynchronous QMP event (`{"event": NAME, "data": {...}, "timestamp": {...}}`).
public struct QMPEvent: Sendable, Equatable {
    /// "STOP", "RESUME", "MIGRATION", "SHUTDOWN", ...
    public var name: String
    /// The event's `data` object, `.null` when the event has none.
    public var data: QMPValue
    /// QEMU's timestamp, seconds since the Unix epoch (microsecond resolution).
    public var timestampSeconds: Double

    public init(name: String, data: QMPValue, timestampSeconds: Double) {
        self.name = name
        self.data = data
        self.timestampSeconds = timestampSeconds
    }
}

/// A connection to one QEMU's QMP monitor.
///
/// Contract:
/// - `connect` reads QEMU's greeting (`greetingVersion`) and negotiates capabilities; the client is then
///   in command mode.
/// - Every `execute` carries its own `id` and deadline: calls may overlap, each answer goes to its
///   call. At most `pendingCallsMax` calls pending at once (more fail with `.tooManyPending`).
/// - A call that times out fails with `.timeout`; the connection stays open and a late answer is dropped
///   (counted in `lateRepliesDropped`). When the connection closes, every pending call and event waiter
///   fails with `.disconnected` (or `.protocolViolation` when QEMU broke the protocol), and later calls
///   fail at once.
/// - Events go to a buffer of `eventBufferMax` (the oldest is dropped when full, counted in
///   `eventsDropped`), unless an event waiter takes them first. `waitForEvent` and `events` consume them.
/// - A message longer than `messageBytesMax` is a protocol violation and closes the connection.
public final class QMPClient: Sendable {
    /// The longest QMP message accepted (one line); `query-cpu-model-expansion` type full is ~20 KB.
    public static let messageBytesMax = 4 << 20
    /// Calls pending at once on one connection.
    public static let pendingCallsMax = 64
    /// Callers of `waitForEvent` / `events` waiting at once.
    public static let eventWaitersMax = 16
    /// The default bound of the event buffer.
    public static let eventBufferMaxDefault = 256

    /// The socket path this client connected to.
    public let path: String
    /// QEMU's version from the greeting.
    public let greetingVersion: QEMUVersion
    /// Capabilities QEMU offered in its greeting (e.g. ["oob"]); none is enabled by this client.
    public let greetingCapabilities: [String]
    /// The bound of the event buffer for this connection.
    public let eventBufferMax: Int

    private let channel: any Channel
    private let core: QMPCore

    private init(path: String, greeting: QMPValue, channel: any Channel, core: QMPCore) throws(QMPError) {
        guard let qmp = greeting["QMP"], let version = qmp["version"], let qemu = version["qemu"],
            let major = qemu["major"]?.int64Value, let minor = qemu["minor"]?.int64Value,
            let micro = qemu["micro"]?.int64Value
        else { throw .protocolViolation("greeting without QMP.version.qemu: \(greeting.jsonText.prefix(200))") }
        self.path = path
        self.greetingVersion = QEMUVersion(
            major: Int(major), minor: Int(minor), micro: Int(micro), package: version["package"]?.stringValue ?? "")
        self.greetingCapabilities = qmp["capabilities"]?.arrayValue?.compactMap(\.stringValue) ?? []
        self.eventBufferMax = core.eventBufferMax
        self.channel = channel
        self.core = core
    }

    /// Dropping the last reference closes the connection.
    deinit {
        channel.close(promise: nil)
    }

    /// Connects to the QMP socket at `path`, reads the greeting and sends `qmp_capabilities`, all within
    /// `timeout`. `eventBufferMax` bounds the event buffer (> 0).
    public static func connect(
        path: String, timeout: Duration = .seconds(5), eventBufferMax: Int = QMPClient.eventBufferMaxDefault,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(QMPError) -> QMPClient {
        precondition(eventBufferMax > 0)
        let core = QMPCore(eventBufferMax: eventBufferMax)
        let timeoutMs = Self.milliseconds(timeout)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.milliseconds(timeoutMs))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(QMPLineDecoder(messageBytesMax: QMPClient.messageBytesMax)))
                        try channel.pipeline.syncOperations.addHandler(QMPChannelHandler(core: core))
                    }
                }
                .connect(unixDomainSocketPath: path)
                .get()
        } catch {
            throw .connect(path: path, reason: "\(error)")
        }
        let greeting: QMPValue
        do {
            greeting = try await core.waitForGreeting(eventLoop: channel.eventLoop, timeoutMs: timeoutMs)
        } catch {
            channel.close(promise: nil)
            throw error
        }
        let client: QMPClient
        do {
            client = try QMPClient(path: path, greeting: greeting, channel: channel, core: core)
            _ = try await client.execute("qmp_capabilities", timeout: timeout)
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return client
    }

    /// Sends `command` with `arguments` and returns QEMU's `return` value.
    ///
    /// Fails with `.commandFailed` carrying QEMU's error class and text, `.timeout` after `timeout`,
    /// `.disconnected` when the connection closes first, `.tooManyPending` beyond `pendingCallsMax`.
    public func execute(
        _ command: String, arguments: [String: QMPValue]? = nil, timeout: Duration = .seconds(5)
    ) async throws(QMPError) -> QMPValue {
        let timeoutMs = Self.milliseconds(timeout)
        let result: Result<QMPValue, QMPError> = await withCheckedContinuation { continuation in
            core.start(
                command: command, arguments: arguments, timeoutMs: timeoutMs, channel: channel,
                continuation: continuation)
        }
        return try result.get()
    }

    /// Waits for the next event named `name` (any event when nil), taking it out of the buffer (older
    /// events with other names stay). Fails with `.timeout(command: "event NAME")` after `timeout`,
    /// `.disconnected` when the connection closes first.
    public func waitForEvent(name: String?, timeout: Duration) async throws(QMPError) -> QMPEvent {
        let timeoutMs = Self.milliseconds(timeout)
        let result: Result<QMPEvent, QMPError> = await withCheckedContinuation { continuation in
            core.waitForEvent(name: name, timeoutMs: timeoutMs, eventLoop: channel.eventLoop, continuation: continuation)
        }
        return try result.get()
    }

    /// Takes every buffered event out of the buffer, oldest first.
    public func drainEvents() -> [QMPEvent] { core.drainEvents() }

    /// The events as they come, oldest buffered first; ends when the connection closes. One consumer
    /// at a time (it competes with `waitForEvent` for the same events).
    public var events: QMPEventSequence { QMPEventSequence(client: self) }

    /// Events dropped because the buffer was full (the oldest goes first).
    public var eventsDropped: Int { core.counters.eventsDropped }
    /// Answers that came after their call timed out, or with an `id` no call has.
    public var lateRepliesDropped: Int { core.counters.lateRepliesDropped }
    /// True once the connection has closed.
    public var isClosed: Bool { core.isClosed }

    /// Closes the connection; pending calls fail with `.disconnected`.
    public func close() async {
        try? await channel.close()
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        precondition(seconds >= 0, "negative timeout")
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// `QMPClient.events`: each `next()` waits for the next event, nil once the connection closed.
public struct QMPEventSequence: AsyncSequence, Sendable {
    public typealias Element = QMPEvent
    let client: QMPClient

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: QMPClient
        public mutating func next() async -> QMPEvent? {
            try? await client.waitForEvent(name: nil, timeout: .seconds(Int64(Int32.max)))
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(client: client) }
}

// MARK: - Connection state

/// The state shared by the channel handler (event loop) and callers (any thread), under one mutex.
/// Continuations are always resumed outside the lock.
final class QMPCore: Sendable {
    struct Pending {
        var command: String
        var continuation: CheckedContinuation<Result<QMPValue, QMPError>, Never>
        var timeout: Scheduled<Void>?
    }

    struct Waiter {
        var name: String?
        var continuation: CheckedContinuation<Result<QMPEvent, QMPError>, Never>
        var timeout: Scheduled<Void>?
    }

    struct Counters {
        var eventsDropped = 0
        var lateRepliesDropped = 0
    }

    struct State {
        var greeting: QMPValue?
        var greetingWaiter: CheckedContinuation<Result<QMPValue, QMPError>, Never>?
        var pending: [Int64: Pending] = [:]
        var nextID: Int64 = 1
        var events: [QMPEvent] = []
        var waiters: [Int64: Waiter] = [:]
        var nextWaiterID: Int64 = 1
        var counters = Counters()
        /// Why the connection closed; nil while open.
        var closedBecause: QMPError?
    }

    let eventBufferMax: Int
    private let state = Mutex(State())

    init(eventBufferMax: Int) {
        self.eventBufferMax = eventBufferMax
    }

    var counters: Counters { state.withLock { $0.counters } }
    var isClosed: Bool { state.withLock { $0.closedBecause != nil } }

    func waitForGreeting(eventLoop: any EventLoop, timeoutMs: Int64) async throws(QMPError) -> QMPValue {
        let result: Result<QMPValue, QMPError> = await withCheckedContinuation { continuation in
            let immediate: Result<QMPValue, QMPError>? = state.withLock { state in
                if let greeting = state.greeting { return .success(greeting) }
                if let reason = state.closedBecause { return .failure(Self.failure(reason, command: "greeting")) }
                state.greetingWaiter = continuation
                return nil
            }
            if let immediate {
                continuation.resume(returning: immediate)
                return
            }
            eventLoop.scheduleTask(in: .milliseconds(timeoutMs)) { [self] in
                let waiter = state.withLock { state in
                    defer { state.greetingWaiter = nil }
                    return state.greetingWaiter
                }
                waiter?.resume(returning: .failure(.timeout(command: "greeting", afterMs: timeoutMs)))
            }
        }
        return try result.get()
    }

    func start(
        command: String, arguments: [String: QMPValue]?, timeoutMs: Int64, channel: any Channel,
        continuation: CheckedContinuation<Result<QMPValue, QMPError>, Never>
    ) {
        let admitted: Result<Int64, QMPError> = state.withLock { state in
            if let reason = state.closedBecause { return .failure(Self.failure(reason, command: command)) }
            if state.pending.count >= QMPClient.pendingCallsMax {
                return .failure(.tooManyPending(command: command, max: QMPClient.pendingCallsMax))
            }
            let id = state.nextID
            state.nextID += 1
            state.pending[id] = Pending(command: command, continuation: continuation, timeout: nil)
            return .success(id)
        }
        let id: Int64
        switch admitted {
        case .failure(let error):
            continuation.resume(returning: .failure(error))
            return
        case .success(let admittedID):
            id = admittedID
        }
        var message: [String: QMPValue] = ["execute": .string(command), "id": .int(id)]
        if let arguments { message["arguments"] = .object(arguments) }
        let line = QMPValue.object(message).jsonText + "\n"
        let timeout = channel.eventLoop.scheduleTask(in: .milliseconds(timeoutMs)) { [self] in
            _ = finish(id: id, with: .failure(.timeout(command: command, afterMs: timeoutMs)))
        }
        let stillPending = state.withLock { state in
            guard state.pending[id] != nil else { return false }
            state.pending[id]!.timeout = timeout
            return true
        }
        if !stillPending {
            timeout.cancel()
            return
        }
        channel.writeAndFlush(ByteBuffer(string: line)).whenFailure { [self] _ in
            _ = finish(id: id, with: .failure(.disconnected(command: command)))
        }
    }

    /// Completes call `id` (if still pending) with `result`; false when no such call was pending.
    @discardableResult
    private func finish(id: Int64, with result: Result<QMPValue, QMPError>) -> Bool {
        let pending = state.withLock { $0.pending.removeValue(forKey: id) }
        guard let pending else { return false }
        pending.timeout?.cancel()
        pending.continuation.resume(returning: result)
        return true
    }

    func waitForEvent(
        name: String?, timeoutMs: Int64, eventLoop: any EventLoop,
        continuation: CheckedContinuation<Result<QMPEvent, QMPError>, Never>
    ) {
        let label = "event \(name ?? "*")"
        enum Admission {
            case found(QMPEvent)
            case refused(QMPError)
            case waiting(Int64)
        }
        let admission: Admission = state.withLock { state in
            if let index = state.events.firstIndex(where: { name == nil || $0.name == name }) {
                return .found(state.events.remove(at: index))
            }
            if let reason = state.closedBecause { return .refused(Self.failure(reason, command: label)) }
            if state.waiters.count >= QMPClient.eventWaitersMax {
                return .refused(.tooManyPending(command: label, max: QMPClient.eventWaitersMax))
            }
            let id = state.nextWaiterID
            state.nextWaiterID += 1
            state.waiters[id] = Waiter(name: name, continuation: continuation, timeout: nil)
            return .waiting(id)
        }
        let id: Int64
        switch admission {
        case .found(let event):
            continuation.resume(returning: .success(event))
            return
        case .refused(let error):
            continuation.resume(returning: .failure(error))
            return
        case .waiting(let waiterID):
            id = waiterID
        }
        let timeout = eventLoop.scheduleTask(in: .milliseconds(timeoutMs)) { [self] in
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(returning: .failure(.timeout(command: label, afterMs: timeoutMs)))
        }
        let stillWaiting = state.withLock { state in
            guard state.waiters[id] != nil else { return false }
            state.waiters[id]!.timeout = timeout
            return true
        }
        if !stillWaiting { timeout.cancel() }
    }

    func drainEvents() -> [QMPEvent] {
        state.withLock { state in
            defer { state.events.removeAll() }
            return state.events
        }
    }

    /// One message from QEMU (called on the event loop).
    func receive(_ message: QMPValue) throws(QMPError) {
        guard case .object(let members) = message else {
            throw .protocolViolation("message is not an object: \(message.jsonText.prefix(200))")
        }
        if members["QMP"] != nil {
            let waiter: CheckedContinuation<Result<QMPValue, QMPError>, Never>? = state.withLock { state in
                guard state.greeting == nil else { return nil }
                state.greeting = message
                defer { state.greetingWaiter = nil }
                return state.greetingWaiter
            }
            waiter?.resume(returning: .success(message))
            return
        }
        if let name = members["event"]?.stringValue {
            let timestamp = members["timestamp"]
            let seconds = (timestamp?["seconds"]?.doubleValue ?? 0) + (timestamp?["microseconds"]?.doubleValue ?? 0) / 1e6
            deliver(QMPEvent(name: name, data: members["data"] ?? .null, timestampSeconds: seconds))
            return
        }
        let result: Result<QMPValue, QMPError>
        if let value = members["return"] {
            result = .success(value)
        } else if let error = members["error"] {
            let errorClass = error["class"]?.stringValue ?? "?"
            let description = error["desc"]?.stringValue ?? error.jsonText
            // The command name is filled in by `finish` from the pending call.
            result = .failure(.commandFailed(command: "", errorClass: errorClass, description: description))
        } else {
            throw .protocolViolation("message is neither return, error nor event: \(message.jsonText.prefix(200))")
        }
        guard let id = members["id"]?.int64Value else {
            // Only a command sent without an id gets an answer without one; this client sends none.
            state.withLock { $0.counters.lateRepliesDropped += 1 }
            return
        }
        let pending = state.withLock { $0.pending.removeValue(forKey: id) }
        guard let pending else {
            state.withLock { $0.counters.lateRepliesDropped += 1 }
            return
        }
        pending.timeout?.cancel()
        switch result {
        case .failure(.commandFailed(_, let errorClass, let description)):
            pending.continuation.resume(
                returning: .failure(.commandFailed(command: pending.command, errorClass: errorClass, description: description)))
        default:
            pending.continuation.resume(returning: result)
        }
    }

    private func deliver(_ event: QMPEvent) {
        let waiter: Waiter? = state.withLock { state in
            if let (id, _) = state.waiters.sorted(by: { $0.key < $1.key }).first(where: {
                $0.value.name == nil || $0.value.name == event.name
            }) {
                return state.waiters.removeValue(forKey: id)
            }
            if state.events.count >= eventBufferMax {
                state.events.removeFirst()
                state.counters.eventsDropped += 1
            }
            state.events.append(event)
            return nil
        }
        if let waiter {
            waiter.timeout?.cancel()
            waiter.continuation.resume(returning: .success(event))
        }
    }

    /// The connection closed (`reason` nil for an ordinary close): fail everything pending.
    func closed(reason: QMPError?) {
        let (greetingWaiter, pending, waiters, why) = state.withLock { state in
            if state.closedBecause == nil {
                state.closedBecause = reason ?? .disconnected(command: "")
            }
            let taken = (state.greetingWaiter, state.pending, state.waiters, state.closedBecause!)
            state.greetingWaiter = nil
            state.pending.removeAll()
            state.waiters.removeAll()
            return taken
        }
        greetingWaiter?.resume(returning: .failure(Self.failure(why, command: "greeting")))
        for (_, call) in pending {
            call.timeout?.cancel()
            call.continuation.resume(returning: .failure(Self.failure(why, command: call.command)))
        }
        for (_, waiter) in waiters {
            waiter.timeout?.cancel()
            waiter.continuation.resume(
                returning: .failure(Self.failure(why, command: "event \(waiter.name ?? "*")")))
        }
    }

    /// The error a call on `command` gets from a connection closed because of `reason`.
    private static func failure(_ reason: QMPError, command: String) -> QMPError {
        if case .protocolViolation = reason { return reason }
        return .disconnected(command: command)
    }
}

// MARK: - Channel handlers

/// Splits QEMU's output into lines ("\r\n" or "\n"), each at most `messageBytesMax` bytes.
struct QMPLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let messageBytesMax: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let view = buffer.readableBytesView
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > messageBytesMax {
                throw QMPError.protocolViolation("message longer than \(messageBytesMax) bytes")
            }
            return .needMoreData
        }
        let length = newline - view.startIndex
        if length > messageBytesMax {
            throw QMPError.protocolViolation("message of \(length) bytes, more than \(messageBytesMax)")
        }
        var line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
            line.moveWriterIndex(to: line.writerIndex - 1)
        }
        if line.readableBytes > 0 {
            context.fireChannelRead(Self.wrapInboundOut(line))
        }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Hands each line to the `QMPCore`; closes the connection on a protocol violation.
final class QMPChannelHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let core: QMPCore

    init(core: QMPCore) {
        self.core = core
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = Self.unwrapInboundIn(data)
        do {
            let message = try QMPValue.parse(line.readableBytesView)
            try core.receive(message)
        } catch {
            core.closed(reason: error)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.closed(reason: nil)
        context.fireChannelInactive()
    }

    /// A decoder's `QMPError` (an over-long line) is a protocol violation; an I/O error (e.g.
    /// ECONNRESET when QEMU dies) is a disconnect.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        core.closed(reason: error as? QMPError)
        context.close(promise: nil)
    }
}
