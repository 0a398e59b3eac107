// Path: Sources/SluiceCore/Limits.swift — every bound Sluice's core enforces, in one place.
import CShims

/// Explicit bounds for every ring, burst, pool, worker and table in the core runtime.
/// The C twins (`SLUICE_SPSC_SIZE_MAX`, `SLUICE_BURST_MAX`) are checked against these by a test.
public enum Limits {
    /// Largest ring, in slots. A power of two; indices are masked.
    public static let ringCapacityMax = 1 << 20
    /// Largest burst a single ring call moves.
    public static let burstCountMax = 256
    /// Largest buffer pool, in buffers.
    public static let poolBufferCountMax = 1 << 22
    /// Largest buffer, in bytes.
    public static let poolBufferSizeMax = 1 << 20
    /// Most workers one runtime starts.
    public static let workerCountMax = 256
    /// Most stages one worker runs (run-to-completion on a shared core).
    public static let stagesPerWorkerMax = 32
    /// Most stages in one pipeline.
    public static let pipelineStageCountMax = 16
    /// Most control requests queued for one worker at once.
    public static let workerMailboxCountMax = 64
    /// Longest a sleeping worker waits before re-checking on its own: a safety net, counted when it
    /// fires, so a lost wake-up shows up in `WorkerCounters.lostWakeups` instead of as a hang.
    public static let sleepTimeoutNsMax: Int64 = 1_000_000_000
}
