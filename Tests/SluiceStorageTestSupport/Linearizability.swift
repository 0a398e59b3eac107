// Path: Tests/SluiceStorageTestSupport/Linearizability.swift — a checker for histories of one page used as a
// versioned register: reads, and conditional writes that succeed with a new OSN or fail with the
// current one. Wing & Gong's search with memoisation of (linearized set, register state), as in Lowe's
// and Knossos' checkers.

/// One operation of a client, from invocation to response (any consistent clock, e.g. CLOCK_MONOTONIC).
public struct RegisterOperation: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Returned this value at this page OSN.
        case read(value: UInt64, osn: UInt64)
        /// Write of `value` on condition of `expectedOSN`: succeeded as `osn`, or met a newer `osn`.
        case conditionalWrite(value: UInt64, expectedOSN: UInt64, succeeded: Bool, osn: UInt64)
    }

    public var invokeNs: UInt64
    public var responseNs: UInt64
    public var kind: Kind

    public init(invokeNs: UInt64, responseNs: UInt64, kind: Kind) {
        self.invokeNs = invokeNs
        self.responseNs = responseNs
        self.kind = kind
    }
}

/// Whether the history has a linearization: a total order, consistent with real time (an operation
/// that responded before another was invoked comes first), in which every operation's result is what
/// the register would have given. `initial` is the register before the history. Searches at most
/// `stepsMax` states (then answers false: unknown counts as a failure).
public func isLinearizable(_ history: [RegisterOperation], initial: (value: UInt64, osn: UInt64),
                           stepsMax: Int = 5_000_000) -> Bool {
    let operations = history.sorted { $0.invokeNs < $1.invokeNs }
    let count = operations.count
    guard count > 0 else { return true }
    let words = (count + 63) / 64
    struct Key: Hashable {
        var done: [UInt64]
        var value: UInt64
        var osn: UInt64
    }
    var seen = Set<Key>()
    var steps = 0

    func apply(_ operation: RegisterOperation, to state: (value: UInt64, osn: UInt64)) -> (value: UInt64, osn: UInt64)? {
        switch operation.kind {
        case .read(let value, let osn):
            return value == state.value && osn == state.osn ? state : nil
        case .conditionalWrite(let value, let expected, let succeeded, let osn):
            if succeeded {
                // Applied only if unmodified since `expected`, and it became the new version.
                return state.osn <= expected && osn > state.osn ? (value, osn) : nil
            }
            return state.osn > expected && osn == state.osn ? state : nil
        }
    }

    func search(_ done: inout [UInt64], _ doneCount: Int, _ state: (value: UInt64, osn: UInt64)) -> Bool {
        if doneCount == count { return true }
        steps += 1
        if steps > stepsMax { return false }
        guard seen.insert(Key(done: done, value: state.value, osn: state.osn)).inserted else { return false }
        // Candidates: pending operations invoked before every pending operation's response.
        var earliestResponse = UInt64.max
        for index in 0..<count where done[index / 64] & (1 << UInt64(index % 64)) == 0 {
            earliestResponse = min(earliestResponse, operations[index].responseNs)
        }
        // A candidate that fits the state and leaves it as it is (a read, a failed write) is taken
        // without branching: moving it to the front of any linearization from here keeps it valid,
        // as it changes nothing and was invoked before every pending response.
        for index in 0..<count where done[index / 64] & (1 << UInt64(index % 64)) == 0 {
            if operations[index].invokeNs > earliestResponse { break }
            guard let next = apply(operations[index], to: state), next == state else { continue }
            done[index / 64] |= 1 << UInt64(index % 64)
            defer { done[index / 64] &= ~(1 << UInt64(index % 64)) }
            return search(&done, doneCount + 1, next)
        }
        for index in 0..<count where done[index / 64] & (1 << UInt64(index % 64)) == 0 {
            if operations[index].invokeNs > earliestResponse { break }  // sorted by invocation
            guard let next = apply(operations[index], to: state) else { continue }
            done[index / 64] |= 1 << UInt64(index % 64)
            if search(&done, doneCount + 1, next) { return true }
            done[index / 64] &= ~(1 << UInt64(index % 64))
        }
        return false
    }

    var done = [UInt64](repeating: 0, count: words)
    return search(&done, 0, initial)
}
