// Path: Sources/SluiceGateway/RequestBudget.swift — the bytes of requests in progress across every
// connection of a server (one server per process: the process's bound), and what the tests look at.
import Glibc
import NIOCore
import Synchronization

/// Bytes held by requests in progress across every connection of one server: from a request's start
/// until its reply's write completed (or failed), a request holds its cost (the most its reply can take,
/// plus a large request body such as an append). Past `bytesMax` a connection does not start its next
/// request: it keeps it queued, pauses reading and is woken when bytes are released. A request whose
/// cost alone is above `bytesMax` starts when nothing else is held (it is never refused).
///
/// Waiters: at most one per connection. Any thread may call.
public final class RequestBudget: Sendable {
    public let bytesMax: Int
    private let state: Mutex<State>
    private let outstandingMax = Atomic<Int>(0)

    public static let bytesMaxDefault = 256 << 20
    public static let bytesMaxRange = (64 << 10)...(64 << 30)

    private struct State {
        var held = 0
        var heldMax = 0
        var waiters: [UInt64: (EventLoop, @Sendable () -> Void)] = [:]
        var nextWaiter: UInt64 = 0
    }

    public init(bytesMax: Int = RequestBudget.bytesMaxDefault) {
        precondition(Self.bytesMaxRange.contains(bytesMax), "checked by the servers' bind")
        self.bytesMax = bytesMax
        state = Mutex(State())
    }

    /// Bytes held now by requests in progress.
    public var bytesInFlight: Int { state.withLock { $0.held } }
    /// The most bytes ever held at once (at most `max(bytesMax, the largest single cost)`).
    public var bytesInFlightHighWater: Int { state.withLock { $0.heldMax } }
    /// The most requests one connection ever had outstanding at once (arrived, reply not yet written).
    public var outstandingHighWater: Int { outstandingMax.load(ordering: .relaxed) }

    func noteOutstanding(_ count: Int) {
        var seen = outstandingMax.load(ordering: .relaxed)
        while count > seen {
            let (exchanged, original) = outstandingMax.compareExchange(expected: seen, desired: count, ordering: .relaxed)
            if exchanged { return }
            seen = original
        }
    }

    /// Takes `bytes` when they fit (or nothing is held); otherwise registers `wake` (run once on `loop`
    /// at the next release) and returns false. Atomic: no release is missed between the two.
    func acquire(_ bytes: Int, orWakeOn loop: EventLoop, _ wake: @escaping @Sendable () -> Void) -> Bool {
        precondition(bytes >= 0, "a cost is not negative")
        return state.withLock { state in
            if bytes == 0 || state.held == 0 || state.held + bytes <= bytesMax {
                state.held += bytes
                state.heldMax = max(state.heldMax, state.held)
                return true
            }
            state.waiters[state.nextWaiter] = (loop, wake)
            state.nextWaiter += 1
            return false
        }
    }

    /// Gives back `bytes` taken by `acquire`; wakes every waiter (each retries on its own loop, in the
    /// order they began to wait).
    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        let waiters = state.withLock { state in
            state.held -= bytes
            precondition(state.held >= 0, "only what was taken is released")
            defer { state.waiters.removeAll() }
            return state.waiters.sorted { $0.key < $1.key }.map(\.value)
        }
        for (loop, wake) in waiters { loop.execute(wake) }
    }
}

/// The start of requests of one connection under a `RequestBudget`: requests start in arrival order;
/// one that does not fit waits with every later one behind it. Event loop only (of the connection).
final class BudgetedStarts {
    private let budget: RequestBudget
    /// Run after a wake-up started what it could (the handler resumes reading).
    private let afterWake: (Channel) -> Void
    /// Requests arrived and not started: bounded by what one read of the socket decodes after reading
    /// paused (reading pauses while any waits).
    private var waiting: [(cost: Int, start: () -> Void)] = []
    private var head = 0
    private var asleep = false
    /// Costs of started requests by sequence, released when their reply's write completes.
    private var held: [UInt64: Int] = [:]

    init(budget: RequestBudget, afterWake: @escaping (Channel) -> Void) {
        self.budget = budget
        self.afterWake = afterWake
    }

    var isWaiting: Bool { head < waiting.count }

    /// Starts `start` now when nothing waits and `cost` fits, else queues it behind the others.
    func admit(sequence: UInt64, cost: Int, _ channel: Channel, _ start: @escaping () -> Void) {
        waiting.append((cost, { [unowned self] in
            if cost > 0 { self.held[sequence] = cost }
            start()
        }))
        drain(channel)
    }

    /// The reply of `sequence` was written (or its write failed): its bytes go back.
    func finished(_ sequence: UInt64) {
        if let cost = held.removeValue(forKey: sequence) { budget.release(cost) }
    }

    /// The connection is gone: nothing queued starts.
    func dropWaiting() {
        waiting.removeAll()
        head = 0
    }

    /// Starts queued requests while they fit; else sleeps until a release wakes it.
    private func drain(_ channel: Channel) {
        while head < waiting.count, !asleep {
            let next = waiting[head]
            let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
            let fits = budget.acquire(next.cost, orWakeOn: channel.eventLoop) {
                let starts = bound.value
                starts.asleep = false
                starts.drain(channel)
                starts.afterWake(channel)
            }
            guard fits else {
                asleep = true
                return
            }
            waiting[head] = (0, {})
            head += 1
            next.start()
        }
        if head == waiting.count {
            waiting.removeAll(keepingCapacity: true)
            head = 0
        }
    }
}

/// Request tasks of one server still running: `close` waits for them (bounded) before stopping the
/// event loops, so a request in progress finishes and its reply is written. Any thread may call.
public final class RequestTasks: Sendable {
    private let count = Atomic<Int>(0)

    public init() {}

    public var running: Int { count.load(ordering: .relaxed) }

    func started() { count.add(1, ordering: .relaxed) }

    func ended() {
        let left = count.subtract(1, ordering: .relaxed).newValue
        precondition(left >= 0, "each task ends once")
    }

    /// Blocks until no task runs or `timeoutNs` passed; returns whether none runs. Not from an event loop.
    func waitUntilIdle(timeoutNs: UInt64) -> Bool {
        let deadline = monotonicNs() &+ timeoutNs
        while running > 0 {
            guard monotonicNs() < deadline else { return false }
            usleep(1_000)
        }
        return true
    }
}
