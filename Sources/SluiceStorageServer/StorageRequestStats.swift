// Path: Sources/SluiceStorageServer/StorageRequestStats.swift — what the server did, per opcode:
// requests by reply status, and service-time histograms (HdrHistogram, 3 significant digits).
import Histogram
import Synchronization

/// Per-opcode request counts by status and latency histograms, recorded by the server's pool
/// threads after each node call (a short mutex hold, off the dataplane) and read by any thread.
/// Latency is the node call's time: from a pool thread picking the request up to its reply.
public final class StorageRequestStats: Sendable {
    /// Latencies above this (ns) are recorded as this: one minute.
    public static let latencyNsMax: UInt64 = 60_000_000_000

    /// One opcode's view.
    public struct OpcodeSnapshot: Sendable {
        public var opcode: Opcode
        /// Replies by status code (only codes that occurred).
        public var statusCounts: [StatusCode: UInt64]
        public var latency: Histogram<UInt64>
        public var requests: UInt64 { statusCounts.values.reduce(0, +) }
    }

    private struct PerOpcode {
        var statusCounts: [StatusCode: UInt64] = [:]
        var latency = Histogram<UInt64>(lowestDiscernibleValue: 1_000, highestTrackableValue: StorageRequestStats.latencyNsMax,
                                        numberOfSignificantValueDigits: .three)
    }

    private let state: Mutex<[PerOpcode]>
    private let rejectedCounts = Mutex<[StatusCode: UInt64]>([:])

    public init() {
        state = Mutex(Array(repeating: PerOpcode(), count: Opcode.allCases.count))
    }

    /// Counts a frame answered without reaching the node (bad version, opcode, body or length).
    public func recordRejected(status: StatusCode) {
        rejectedCounts.withLock { $0[status, default: 0] += 1 }
    }

    /// Frames answered without reaching the node, by reply status.
    public var rejected: [StatusCode: UInt64] { rejectedCounts.withLock { $0 } }

    private static func slot(_ opcode: Opcode) -> Int { Opcode.allCases.firstIndex(of: opcode)! }

    /// Counts one reply and its latency. Any thread.
    public func record(_ opcode: Opcode, status: StatusCode, latencyNs: UInt64) {
        let slot = Self.slot(opcode)
        state.withLock { perOpcode in
            perOpcode[slot].statusCounts[status, default: 0] += 1
            _ = perOpcode[slot].latency.record(max(min(latencyNs, Self.latencyNsMax), 1_000))
        }
    }

    /// Opcodes that saw requests, in opcode order (copies; the histograms are a few KiB each).
    public func snapshot() -> [OpcodeSnapshot] {
        state.withLock { perOpcode in
            zip(Opcode.allCases, perOpcode).compactMap { opcode, entry in
                entry.statusCounts.isEmpty ? nil
                    : OpcodeSnapshot(opcode: opcode, statusCounts: entry.statusCounts, latency: entry.latency)
            }
        }
    }
}
