// Path: Sources/SluiceGateway/GatewayCounters.swift — the intermediate device's counters: cache hits,
// misses and coalesced waiters, remote traffic and failures, last-hop bytes by reason, integrity.
import Synchronization

/// Counters of one intermediate device (its chunk cache, stat cache and server). Any thread; relaxed
/// atomics, read together by `snapshot()` (not one instant: each counter is read on its own).
public final class GatewayCounters: Sendable {
    /// Chunk reads answered from the disk cache.
    let chunkHits = Atomic<UInt64>(0)
    /// Chunk reads that started a remote fetch (one per single-flight).
    let chunkMisses = Atomic<UInt64>(0)
    /// Chunk reads that joined a fetch already in flight instead of starting one.
    let chunkCoalesced = Atomic<UInt64>(0)
    let remoteReads = Atomic<UInt64>(0)
    let bytesFromRemote = Atomic<UInt64>(0)
    let remoteStats = Atomic<UInt64>(0)
    /// Remote calls that failed: unreachable store, and any other error (not found included).
    let remoteUnavailable = Atomic<UInt64>(0)
    let remoteErrors = Atomic<UInt64>(0)
    /// Cached chunks whose sectors failed their CRC when read back from disk (dropped and refetched).
    let corruptOnDisk = Atomic<UInt64>(0)
    /// Cache file reads or writes that failed with an errno (the chunk was then fetched or not kept).
    let diskErrors = Atomic<UInt64>(0)
    let evictions = Atomic<UInt64>(0)
    /// Fetched chunks not kept because every chunk in the cache was being read (the bound holds).
    let notStored = Atomic<UInt64>(0)
    let statHits = Atomic<UInt64>(0)
    let statMisses = Atomic<UInt64>(0)
    /// Payload bytes sent on the last hop, by reason (see `addLastHop`).
    let lastHopRequestedBytes = Atomic<UInt64>(0)
    let lastHopSequentialBytes = Atomic<UInt64>(0)
    let lastHopStrideBytes = Atomic<UInt64>(0)
    /// Every byte of every reply frame (headers, CRCs and payload).
    let lastHopFrameBytes = Atomic<UInt64>(0)
    let requests = Atomic<UInt64>(0)
    /// Replies with a status other than ok.
    let failedReplies = Atomic<UInt64>(0)
    /// Writes: uploads begun, completed (in the store), failed (a store error ended them), refused for a
    /// bound (`overloaded`); bytes that arrived intact; parts (or single puts) written to the store;
    /// pieces refused because a sector failed its CRC-32C on arrival.
    let uploadsBegun = Atomic<UInt64>(0)
    let uploadsCompleted = Atomic<UInt64>(0)
    let uploadsFailed = Atomic<UInt64>(0)
    let uploadsOverloaded = Atomic<UInt64>(0)
    let uploadBytesReceived = Atomic<UInt64>(0)
    let uploadPartsStored = Atomic<UInt64>(0)
    let uploadCorruptRefused = Atomic<UInt64>(0)

    public init() {}

    func add(_ counter: borrowing Atomic<UInt64>, _ value: Int = 1) {
        counter.add(UInt64(value), ordering: .relaxed)
    }

    func addLastHop(_ reason: ExtentReason, bytes: Int) {
        switch reason {
        case .requested: add(lastHopRequestedBytes, bytes)
        case .sequential: add(lastHopSequentialBytes, bytes)
        case .stride: add(lastHopStrideBytes, bytes)
        }
    }

    public func snapshot() -> GatewayCountersSnapshot {
        func load(_ counter: borrowing Atomic<UInt64>) -> UInt64 { counter.load(ordering: .relaxed) }
        return GatewayCountersSnapshot(
            chunkHits: load(chunkHits), chunkMisses: load(chunkMisses), chunkCoalesced: load(chunkCoalesced),
            remoteReads: load(remoteReads), bytesFromRemote: load(bytesFromRemote), remoteStats: load(remoteStats),
            remoteUnavailable: load(remoteUnavailable), remoteErrors: load(remoteErrors),
            corruptOnDisk: load(corruptOnDisk), diskErrors: load(diskErrors), evictions: load(evictions),
            notStored: load(notStored), statHits: load(statHits), statMisses: load(statMisses),
            lastHopRequestedBytes: load(lastHopRequestedBytes), lastHopSequentialBytes: load(lastHopSequentialBytes),
            lastHopStrideBytes: load(lastHopStrideBytes), lastHopFrameBytes: load(lastHopFrameBytes),
            requests: load(requests), failedReplies: load(failedReplies),
            uploadsBegun: load(uploadsBegun), uploadsCompleted: load(uploadsCompleted), uploadsFailed: load(uploadsFailed),
            uploadsOverloaded: load(uploadsOverloaded), uploadBytesReceived: load(uploadBytesReceived),
            uploadPartsStored: load(uploadPartsStored), uploadCorruptRefused: load(uploadCorruptRefused))
    }
}

/// The counters at one moment (see `GatewayCounters`).
public struct GatewayCountersSnapshot: Sendable, Equatable, CustomStringConvertible {
    public var chunkHits: UInt64
    public var chunkMisses: UInt64
    public var chunkCoalesced: UInt64
    public var remoteReads: UInt64
    public var bytesFromRemote: UInt64
    public var remoteStats: UInt64
    public var remoteUnavailable: UInt64
    public var remoteErrors: UInt64
    public var corruptOnDisk: UInt64
    public var diskErrors: UInt64
    public var evictions: UInt64
    public var notStored: UInt64
    public var statHits: UInt64
    public var statMisses: UInt64
    public var lastHopRequestedBytes: UInt64
    public var lastHopSequentialBytes: UInt64
    public var lastHopStrideBytes: UInt64
    public var lastHopFrameBytes: UInt64
    public var requests: UInt64
    public var failedReplies: UInt64
    public var uploadsBegun: UInt64
    public var uploadsCompleted: UInt64
    public var uploadsFailed: UInt64
    public var uploadsOverloaded: UInt64
    public var uploadBytesReceived: UInt64
    public var uploadPartsStored: UInt64
    public var uploadCorruptRefused: UInt64

    /// Payload bytes sent for `reason`.
    public func lastHopBytes(_ reason: ExtentReason) -> UInt64 {
        switch reason {
        case .requested: lastHopRequestedBytes
        case .sequential: lastHopSequentialBytes
        case .stride: lastHopStrideBytes
        }
    }

    /// `name value` pairs in a fixed order (the CLI prints them; a metrics exporter can map them).
    public var fields: [(String, UInt64)] {
        [("chunk_hits", chunkHits), ("chunk_misses", chunkMisses), ("chunk_coalesced", chunkCoalesced),
         ("remote_reads", remoteReads), ("remote_bytes", bytesFromRemote), ("remote_stats", remoteStats),
         ("remote_unavailable", remoteUnavailable), ("remote_errors", remoteErrors),
         ("corrupt_on_disk", corruptOnDisk), ("disk_errors", diskErrors), ("evictions", evictions),
         ("not_stored", notStored), ("stat_hits", statHits), ("stat_misses", statMisses),
         ("last_hop_requested_bytes", lastHopRequestedBytes), ("last_hop_sequential_bytes", lastHopSequentialBytes),
         ("last_hop_stride_bytes", lastHopStrideBytes), ("last_hop_frame_bytes", lastHopFrameBytes),
         ("requests", requests), ("failed_replies", failedReplies),
         ("uploads_begun", uploadsBegun), ("uploads_completed", uploadsCompleted), ("uploads_failed", uploadsFailed),
         ("uploads_overloaded", uploadsOverloaded), ("upload_bytes_received", uploadBytesReceived),
         ("upload_parts_stored", uploadPartsStored), ("upload_corrupt_refused", uploadCorruptRefused)]
    }

    public var description: String { fields.map { "\($0.0) \($0.1)" }.joined(separator: " ") }
}
