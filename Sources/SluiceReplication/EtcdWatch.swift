// Path: Sources/SluiceReplication/EtcdWatch.swift — one etcd watch: the gateway's stream of JSON
// lines read by a task of its own, its events handed on in order through a bounded buffer.
import AsyncHTTPClient
import NIOCore
import Synchronization

/// The events of one watch, in revision order. One consumer iterates it. It ends with an `EtcdError`
/// when etcd cancels the watch (`compacted` below the compaction revision), the connection breaks or
/// the consumer falls `EtcdLimits.watchEventsBufferedMax` events behind; it ends without one after
/// `cancel()`. Dropping the iterator cancels it too.
public struct EtcdWatch: AsyncSequence, Sendable {
    public typealias Element = EtcdWatchEvent
    public typealias Failure = EtcdError

    private let events: AsyncThrowingStream<EtcdWatchEvent, any Error>
    private let reader: Task<Void, Never>
    private let progress: WatchProgress

    /// True once the reader has stopped (etcd ended the watch, an error, an overflow or `cancel()`);
    /// what it buffered may still be unread. For tests that must wait for the reader deterministically.
    var readerFinished: Bool { progress.finished.load(ordering: .acquiring) }

    /// Stops reading and closes the watch's connection. The sequence then ends after what it buffered.
    public func cancel() { reader.cancel() }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: events.makeAsyncIterator()) }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<EtcdWatchEvent, any Error>.AsyncIterator

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(EtcdError) -> EtcdWatchEvent? {
            do {
                return try await base.next(isolation: actor)
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

    /// Starts the reader of `response` and returns once etcd says the watch is created.
    /// Called within the call's deadline: cancelling it cancels the reader too.
    static func start(_ response: HTTPClientResponse, fromRevision: Int64) async throws -> EtcdWatch {
        let (events, eventsOut) = AsyncThrowingStream<EtcdWatchEvent, any Error>.makeStream(
            bufferingPolicy: .bufferingOldest(EtcdLimits.watchEventsBufferedMax))
        let (created, createdOut) = AsyncThrowingStream<Void, any Error>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let progress = WatchProgress()
        let reader = Task {
            var state = ReaderState(events: eventsOut, created: createdOut, fromRevision: fromRevision)
            await state.read(response.body)
            progress.finished.store(true, ordering: .releasing)
        }
        eventsOut.onTermination = { _ in reader.cancel() }
        try await withTaskCancellationHandler {
            for try await _ in created { return }
            // The stream ended before etcd created the watch: the reader says why through `events`.
            throw EtcdError.watchCanceled(reason: "stream ended before the watch was created")
        } onCancel: {
            reader.cancel()
        }
        return EtcdWatch(events: events, reader: reader, progress: progress)
    }
}

final class WatchProgress: Sendable {
    let finished = Atomic(false)
}

/// The reader's side: splits the body into lines (one gateway message each) and acts on each.
private struct ReaderState {
    let events: AsyncThrowingStream<EtcdWatchEvent, any Error>.Continuation
    let created: AsyncThrowingStream<Void, any Error>.Continuation
    let fromRevision: Int64
    var pending: [UInt8] = []

    init(events: AsyncThrowingStream<EtcdWatchEvent, any Error>.Continuation,
         created: AsyncThrowingStream<Void, any Error>.Continuation, fromRevision: Int64) {
        self.events = events
        self.created = created
        self.fromRevision = fromRevision
    }

    mutating func read(_ body: HTTPClientResponse.Body) async {
        do {
            for try await chunk in body {
                pending.append(contentsOf: chunk.readableBytesView)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    try handle(pending[..<newline])
                    pending.removeSubrange(...newline)
                }
                guard pending.count <= EtcdLimits.watchMessageBytesMax else {
                    throw EtcdError.responseTooLarge(operation: .watch, limitBytes: EtcdLimits.watchMessageBytesMax)
                }
            }
            if !pending.isEmpty { try handle(pending[...]) }
            finish(Task.isCancelled ? nil : EtcdError.watchCanceled(reason: "etcd closed the watch stream"))
        } catch let error as EtcdError {
            finish(Task.isCancelled ? nil : error)
        } catch {
            // The connection broke or etcd was killed: the consumer watches again from its next revision.
            finish(Task.isCancelled ? nil : EtcdError.connectionLost(operation: .watch, outcomeUnknown: false, underlying: error))
        }
    }

    private func finish(_ error: (any Error)?) {
        events.finish(throwing: error)
        created.finish(throwing: error)
    }

    /// One gateway message: `{"result": WatchResponse}` or `{"error": {...}}`.
    private func handle(_ line: ArraySlice<UInt8>) throws {
        guard line.contains(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\r") }) else { return }
        let message = try EtcdJSON.decodeObject(line, "watch message")
        if let error = message["error"] as? [String: Any] {
            throw EtcdError.watchCanceled(reason: (error["message"] as? String) ?? "\(error)")
        }
        guard let result = message["result"] as? [String: Any] else {
            throw EtcdError.malformedResponse("watch message without result")
        }
        if EtcdJSON.bool(result, "created") { created.yield(()) }
        for object in try EtcdJSON.objects(result, "events") {
            let event = try EtcdJSON.watchEvent(object)
            if case .dropped = events.yield(event) {
                throw EtcdError.watchBufferOverflow(max: EtcdLimits.watchEventsBufferedMax)
            }
        }
        if EtcdJSON.bool(result, "canceled") {
            let compactRevision = try EtcdJSON.int64(result, "compact_revision")
            if compactRevision > 0 {
                throw EtcdError.compacted(requestedRevision: fromRevision, compactRevision: compactRevision)
            }
            throw EtcdError.watchCanceled(reason: (result["cancel_reason"] as? String) ?? "no reason given")
        }
    }
}
