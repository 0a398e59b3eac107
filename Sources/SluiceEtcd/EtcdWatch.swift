// Path: Sources/SluiceEtcd/EtcdWatch.swift — one etcd watch: a Watch RPC (a bidirectional gRPC stream)
// read by a task of its own, its events handed on in order through a bounded buffer.
import GRPCCore
import Synchronization

/// The events of one watch, in revision order. One consumer iterates it. It ends with an `EtcdError`
/// when etcd cancels the watch (`compacted` below the compaction revision; `watchCanceled` when the
/// member lost its leader: the watch asks etcd to require one), or the connection breaks; it ends
/// without one after `cancel()` or the client's `shutdown()`. Dropping the iterator cancels it too. A
/// consumer that falls `EtcdLimits.watchEventsBufferedMax` events or `watchBytesBufferedMax` bytes
/// behind holds the reader back (nothing is dropped).
public struct EtcdWatch: AsyncSequence, Sendable {
    public typealias Element = EtcdWatchEvent
    public typealias Failure = EtcdError

    private let events: AsyncThrowingStream<EtcdWatchEvent, any Error>
    /// One element once etcd has created the watch; ends with the reader's error if it stops before.
    private let created: AsyncThrowingStream<Void, any Error>
    private let reader: Task<Void, Never>
    private let progress: WatchProgress

    /// True once the reader has stopped (etcd ended the watch, an error, an overflow or `cancel()`);
    /// what it buffered may still be unread. For tests that must wait for the reader deterministically.
    var readerFinished: Bool { progress.finished.load(ordering: .acquiring) }

    /// Stops reading and ends the watch's stream (its HTTP/2 stream is reset; the connection stays).
    /// The sequence then ends after what it buffered.
    public func cancel() { reader.cancel() }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: events.makeAsyncIterator(), progress: progress, lifetime: IteratorLifetime(reader: reader))
    }

    /// Cancels the reader when the last copy of its iterator goes away (the consumer stopped iterating).
    final class IteratorLifetime: Sendable {
        let reader: Task<Void, Never>
        init(reader: Task<Void, Never>) { self.reader = reader }
        deinit { reader.cancel() }
    }

    /// Events read from etcd and not yet taken by the consumer (for tests of the back-pressure).
    var bufferedEvents: Int { progress.bufferedEvents.load(ordering: .relaxed) }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<EtcdWatchEvent, any Error>.AsyncIterator
        let progress: WatchProgress
        let lifetime: IteratorLifetime

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(EtcdError) -> EtcdWatchEvent? {
            do {
                let event = try await base.next(isolation: actor)
                if let event { progress.taken(event) }
                return event
            } catch let error as EtcdError {
                throw error
            } catch {
                throw .connectionLost(operation: .watch, outcomeUnknown: false, underlying: error)
            }
        }

        public mutating func next() async throws(EtcdError) -> EtcdWatchEvent? {
            try await next(isolation: nil)
        }
    }

    /// Starts the reader: the Watch RPC on `endpoint` with `request` (a create request), its call's
    /// progress recorded in `call`. Returns at once; `waitCreated` waits for etcd's answer.
    static func start(_ endpoint: EtcdEndpoint, _ request: Etcdserverpb_WatchRequest, fromRevision: Int64,
                      progress call: CallProgress, registry: WatchRegistry) throws(EtcdError) -> EtcdWatch {
        let (events, eventsOut) = AsyncThrowingStream<EtcdWatchEvent, any Error>.makeStream(
            bufferingPolicy: .bufferingOldest(EtcdLimits.watchEventsBufferedMax))
        let (created, createdOut) = AsyncThrowingStream<Void, any Error>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let progress = WatchProgress()
        let reader = try registry.add { id in
            Task {
                await CallProgress.$current.withValue(call) {
                    await Self.read(endpoint, request, fromRevision: fromRevision, events: eventsOut, created: createdOut,
                                    progress: progress)
                }
                progress.finished.store(true, ordering: .releasing)
                registry.remove(id)
            }
        }
        eventsOut.onTermination = { _ in reader.cancel() }
        return EtcdWatch(events: events, created: created, reader: reader, progress: progress)
    }

    enum Creation {
        case created
        /// The calling task was cancelled.
        case cancelled
        case timedOut
        /// The reader stopped before etcd created the watch; `opened` says whether its request may have
        /// left (when not, another endpoint may be tried).
        case failed(EtcdError, opened: Bool)
    }

    private struct DeadlinePassed: Error {}

    /// Waits until etcd has created the watch, the reader has stopped, or a deadline passed: `connectBy`
    /// while the RPC has no stream yet (then the call is abandoned: see `CallProgress`), else `deadline`.
    func waitCreated(connectBy: ContinuousClock.Instant, deadline: ContinuousClock.Instant,
                     progress call: CallProgress) async -> Creation {
        let created = self.created
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await _ in created { return }
                    throw EtcdError.watchCanceled(reason: "stream ended before the watch was created")
                }
                group.addTask {
                    try await Task.sleep(until: connectBy, clock: .continuous)
                    if call.abandonUnlessOpened() { throw CallAbandoned() }
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DeadlinePassed()
                }
                defer { group.cancelAll() }
                try await group.next()
            }
            return .created
        } catch {
            if Task.isCancelled { return .cancelled }
            if error is DeadlinePassed { return .timedOut }
            if let error = error as? EtcdError { return .failed(error, opened: call.opened) }
            return .failed(.connectionLost(operation: .watch, outcomeUnknown: false, underlying: error), opened: call.opened)
        }
    }

    /// The reader: runs the RPC until etcd or the connection ends it, or the reader is cancelled, and
    /// finishes both streams with why (nothing when cancelled).
    private static func read(
        _ endpoint: EtcdEndpoint, _ request: Etcdserverpb_WatchRequest, fromRevision: Int64,
        events: AsyncThrowingStream<EtcdWatchEvent, any Error>.Continuation,
        created: AsyncThrowingStream<Void, any Error>.Continuation,
        progress: WatchProgress
    ) async {
        let options = EtcdClient.callOptions(responseBytesMax: EtcdLimits.watchMessageBytesMax)
        var failure: (any Error)?
        do {
            // etcd's WithRequireLeader: a member cut off from its cluster cancels the watch ("no
            // leader") instead of going silent, so the consumer watches again elsewhere.
            try await endpoint.watch.watch(metadata: ["hasleader": "true"], options: options) { writer in
                try await writer.write(request)
                // The request side stays open for the watch's life: etcd may take its end for the
                // watch's. The RPC's end cancels this.
                while true { try await Task.sleep(for: .seconds(3_600)) }
            } onResponse: { response in
                for try await message in response.messages {
                    try await handle(message, fromRevision: fromRevision, events: events, created: created, progress: progress)
                }
                throw EtcdError.watchCanceled(reason: "etcd closed the watch stream")
            }
        } catch {
            failure = Task.isCancelled ? nil : classify(error)
        }
        events.finish(throwing: failure)
        created.finish(throwing: failure)
    }

    /// One WatchResponse (or fragment of one): creation, events (in order, into the bounded buffer,
    /// waiting while it is full), cancellation.
    private static func handle(
        _ message: Etcdserverpb_WatchResponse, fromRevision: Int64,
        events: AsyncThrowingStream<EtcdWatchEvent, any Error>.Continuation,
        created: AsyncThrowingStream<Void, any Error>.Continuation,
        progress: WatchProgress
    ) async throws {
        if message.created { created.yield(()) }
        for event in message.events {
            let decoded = try EtcdProto.watchEvent(event)
            // Back-pressure: the consumer is behind. Not reading holds etcd back through HTTP/2 flow control.
            while progress.full {
                try await Task.sleep(for: .milliseconds(1))
            }
            progress.added(decoded)
            let result = events.yield(decoded)
            if case .dropped = result { preconditionFailure("a watch buffer below its bound dropped an event") }
        }
        if message.canceled {
            if message.compactRevision > 0 {
                throw EtcdError.compacted(requestedRevision: fromRevision, compactRevision: message.compactRevision)
            }
            throw EtcdError.watchCanceled(reason: message.cancelReason.isEmpty ? "no reason given" : message.cancelReason)
        }
    }

    private static func classify(_ error: any Error) -> EtcdError {
        if let error = error as? EtcdError { return error }
        if let status = CallProgress.current?.serverStatus, status.code != .ok {
            return .status(operation: .watch, code: status.code.rawValue, message: status.message)
        }
        if let rpc = error as? RPCError, CallProgress.isResponseTooLarge(rpc.message) {
            return .responseTooLarge(operation: .watch, limitBytes: EtcdLimits.watchMessageBytesMax)
        }
        // The connection broke, etcd was killed, or nothing could be sent: the consumer watches again
        // from its next revision.
        return .connectionLost(operation: .watch, outcomeUnknown: false, underlying: error)
    }
}

final class WatchProgress: Sendable {
    let finished = Atomic(false)
    let bufferedEvents = Atomic(0)
    let bufferedBytes = Atomic(0)

    /// At a bound: the reader waits. One event is always let in, however large.
    var full: Bool {
        let events = bufferedEvents.load(ordering: .acquiring)
        return events >= EtcdLimits.watchEventsBufferedMax
            || (events > 0 && bufferedBytes.load(ordering: .acquiring) >= EtcdLimits.watchBytesBufferedMax)
    }

    func added(_ event: EtcdWatchEvent) {
        bufferedBytes.add(Self.bytes(event), ordering: .releasing)
        bufferedEvents.add(1, ordering: .releasing)
    }

    func taken(_ event: EtcdWatchEvent) {
        bufferedEvents.subtract(1, ordering: .releasing)
        bufferedBytes.subtract(Self.bytes(event), ordering: .releasing)
    }

    static func bytes(_ event: EtcdWatchEvent) -> Int { event.kv.key.count + event.kv.value.count }
}

/// The readers of a client's open watches (at most `EtcdLimits.watchesOpenMax`), so `shutdown()` can end
/// them. A reader removes itself when it stops.
final class WatchRegistry: Sendable {
    private struct Table {
        var nextID: UInt64 = 0
        var readers: [UInt64: Task<Void, Never>] = [:]
        var closed = false
    }
    private let table = Mutex(Table())

    /// Makes a reader with `make` (given its id) and records it; refused after `closeAll` or at the bound.
    /// `make` runs under the lock, so the reader's `remove` always comes after it was recorded.
    func add(_ make: (UInt64) -> Task<Void, Never>) throws(EtcdError) -> Task<Void, Never> {
        let added: Result<Task<Void, Never>, EtcdError> = table.withLock { table in
            guard !table.closed else { return .failure(.invalidArgument("watch on a client that was shut down")) }
            guard table.readers.count < EtcdLimits.watchesOpenMax else {
                return .failure(.invalidArgument("\(EtcdLimits.watchesOpenMax) watches already open on this client"))
            }
            let id = table.nextID
            table.nextID += 1
            let reader = make(id)
            table.readers[id] = reader
            return .success(reader)
        }
        return try added.get()
    }

    func remove(_ id: UInt64) { _ = table.withLock { $0.readers.removeValue(forKey: id) } }

    /// Refuses new watches from now on; returns the readers of the open ones.
    func closeAll() -> [Task<Void, Never>] {
        table.withLock { table in
            table.closed = true
            return Array(table.readers.values)
        }
    }
}
