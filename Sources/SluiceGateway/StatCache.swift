// Path: Sources/SluiceGateway/StatCache.swift — the intermediate device's cache of object sizes and etags
// (HEAD answers): fresh for a bounded time, single-flight, bounded table, dropped by invalidate.
import SluiceCore
import Synchronization

/// Sizes and etags of remote objects. An answer is used for `ttlNs` after it arrived; after that the
/// store is asked again, and if it does not answer the error is returned (never an expired answer).
/// Concurrent misses on one key ask once. Any task may call.
final class StatCache: Sendable {
    let ttlNs: UInt64
    let entriesMax: Int
    private let counters: GatewayCounters
    private let state: Mutex<State>

    typealias Stat = (size: UInt64, etag: String)

    private struct Entry {
        var size: UInt64
        var etag: String
        var fetchedNs: UInt64
    }

    private final class Flight: Sendable {
        let task: Task<Result<Stat, RemoteStoreError>, Never>
        /// Invalidated while in flight: answers its waiters, is not kept.
        let stale = Atomic<Bool>(false)
        init(task: Task<Result<Stat, RemoteStoreError>, Never>) { self.task = task }
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var order = LRUOrder<String>()
        var flights: [String: Flight] = [:]
    }

    init(ttlNs: UInt64, entriesMax: Int, counters: GatewayCounters) {
        precondition(entriesMax > 0, "the table holds an entry")
        self.ttlNs = ttlNs
        self.entriesMax = entriesMax
        self.counters = counters
        state = Mutex(State())
    }

    /// The cached answer for `key` while fresh, else nil (does not ask the store).
    func fresh(_ key: String) -> Stat? {
        let now = Clock.monotonicNs()
        return state.withLock { state -> Stat? in
            guard let entry = state.entries[key], now &- entry.fetchedNs < ttlNs else { return nil }
            return (entry.size, entry.etag)
        }
    }

    /// The size and etag of `key`: cached while fresh, else from `store` (one call for concurrent
    /// misses). A failed call is not cached; a `notFound` also drops any older answer.
    func stat(_ key: String, store: any RemoteObjectStore) async throws(RemoteStoreError) -> Stat {
        let now = Clock.monotonicNs()
        let counters = counters
        let (cached, flight) = state.withLock { state -> (Stat?, Flight?) in
            if let entry = state.entries[key], now &- entry.fetchedNs < ttlNs {
                state.order.touch(key)
                return ((entry.size, entry.etag), nil)
            }
            if let flight = state.flights[key] { return (nil, flight) }
            let flight = Flight(task: Task {
                counters.add(counters.remoteStats)
                do throws(RemoteStoreError) {
                    let stat = try await store.size(key: key)
                    // The protocol carries etags of etagBytesMax bytes at most: a longer one is the store's error.
                    guard stat.etag.utf8.count <= GatewayProtocol.etagBytesMax else {
                        throw .failed("etag of \(key) is \(stat.etag.utf8.count) bytes, over \(GatewayProtocol.etagBytesMax)")
                    }
                    return .success(stat)
                } catch {
                    if error.status == .remoteUnavailable {
                        counters.add(counters.remoteUnavailable)
                    } else {
                        counters.add(counters.remoteErrors)
                    }
                    return .failure(error)
                }
            })
            state.flights[key] = flight
            Task { await self.settle(key, flight) }
            return (nil, flight)
        }
        if let cached {
            counters.add(counters.statHits)
            return cached
        }
        counters.add(counters.statMisses)
        return try await flight!.task.value.get()
    }

    /// Keeps a flight's answer (unless invalidated meanwhile) and ends the flight.
    private func settle(_ key: String, _ flight: Flight) async {
        let result = await flight.task.value
        let now = Clock.monotonicNs()
        state.withLock { state in
            if state.flights[key] === flight { state.flights[key] = nil }
            switch result {
            case .success(let stat):
                guard !flight.stale.load(ordering: .relaxed) else { return }
                state.entries[key] = Entry(size: stat.size, etag: stat.etag, fetchedNs: now)
                state.order.touch(key)
                if state.entries.count > entriesMax, let oldest = state.order.oldest {
                    state.order.remove(oldest)
                    state.entries[oldest] = nil
                }
            case .failure(let error):
                if case .notFound = error {
                    state.entries[key] = nil
                    state.order.remove(key)
                }
            }
        }
    }

    /// Forgets `key`, and keeps a call in flight for it from being cached.
    func invalidate(_ key: String) {
        state.withLock { state in
            state.entries[key] = nil
            state.order.remove(key)
            // A later stat must not join a call that may have been answered before the write.
            state.flights[key]?.stale.store(true, ordering: .relaxed)
            state.flights[key] = nil
        }
    }

    var count: Int { state.withLock { $0.entries.count } }
}
