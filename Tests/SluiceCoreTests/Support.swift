import Glibc
import Testing
@testable import SluiceCore

/// Counters a test sink writes from its worker and the test reads after draining.
/// Raw memory, so the sink's hot path holds no reference.
final class SinkTracker: @unchecked Sendable {
    let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
    init() { slots.initialize(repeating: 0, count: 4) }
    deinit { slots.deallocate() }
    var received: UInt64 { slots[0] }
    var outOfOrder: UInt64 { slots[1] }
    var lastCPU: Int { Int(slots[2]) - 1 }
}

/// Checks items arrive as 0, 1, 2, ... (or, with `stride`, as 0, stride, 2 stride, ...).
struct OrderCheckSink: StageBody, @unchecked Sendable {  // unchecked: one worker writes, the test reads after draining
    let slots: UnsafeMutablePointer<UInt64>
    let stride: UInt64
    init(_ tracker: SinkTracker, stride: UInt64 = 1) {
        slots = tracker.slots
        self.stride = stride
    }
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        for item in items {
            if item != slots[3] { slots[1] &+= 1 }
            slots[3] = item &+ stride
            slots[0] &+= 1
        }
        slots[2] = UInt64(CPU.current() + 1)
        return items.count
    }
}

/// Drops odd items.
struct EvenFilter: StageBody {
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        var kept = 0
        for index in items.indices where items[index] % 2 == 0 {
            items[kept] = items[index]
            kept += 1
        }
        return kept
    }
}

/// Sends `total` sequence numbers in bursts, pausing a pseudo-random 0...maxPauseNs between bursts:
/// workers keep going to sleep and being woken.
struct PausingSource: SourceBody {
    let total: UInt64
    let maxPauseNs: UInt64
    var sent: UInt64 = 0
    var resumeNs: UInt64 = 0
    var random: UInt64 = 0x9E37_79B9_7F4A_7C15

    init(total: UInt64, maxPauseNs: UInt64) {
        self.total = total
        self.maxPauseNs = maxPauseNs
    }

    var isExhausted: Bool { sent >= total }

    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = Clock.monotonicNs()
        guard now >= resumeNs, sent < total else { return 0 }
        random ^= random << 13
        random ^= random >> 7
        random ^= random << 17
        let count = Int(min(UInt64(items.count), total - sent, random % 64 + 1))
        for offset in 0..<count { items[offset] = sent + UInt64(offset) }
        sent += UInt64(count)
        resumeNs = now + random % (maxPauseNs + 1)
        return count
    }

    func sleepHintNs(nowNs: UInt64) -> UInt64? { resumeNs > nowNs ? resumeNs - nowNs : 0 }
}

/// Set in CI (`CI=true`), where tests that need root or two CPUs must run, not skip.
let isCI = getenv("CI").map { String(cString: $0) } == "true"

/// CPUs this process may use.
let allowedCPUCount = (try? CPU.allowedCount()) ?? 0

/// Enables a test that needs two CPUs: on a machine with two or more, and always under CI=true, where
/// `requireTwoCPUs()` then records a failure if there is only one (CI machines have two: a test that
/// vanished there would hide a broken runner).
let twoCPUsOrCI = allowedCPUCount >= 2 || isCI

/// True with two CPUs; otherwise records an issue saying why the test cannot run, and returns false.
func requireTwoCPUs() -> Bool {
    guard allowedCPUCount < 2 else { return true }
    Issue.record("this test needs two CPUs and the process may use \(allowedCPUCount): CI=true requires them")
    return false
}

/// Up to two CPUs this process may use (CI machines have two).
func testCores(_ count: Int = 2) throws -> [Int] {
    Array(try CPU.allowedCPUs().prefix(count))
}

/// Builds source -> relay(s) -> order-checking sink.
func makeCountingPipeline(
    _ name: String, source: some SourceBody, relays: [any StageBody] = [PassThrough()], tracker: SinkTracker,
    stride: UInt64 = 1, ringCapacity: Int = 1024
) throws -> Pipeline {
    var builder = PipelineBuilder(name: name, burstCount: 32)
    builder.source(source)
    for relay in relays { builder.stage(relay) }
    builder.stage(OrderCheckSink(tracker, stride: stride), name: "sink")
    return try builder.build(ringCapacities: Array(repeating: ringCapacity, count: relays.count + 1))
}

/// Starts a runtime with one worker per test core in `mode`, runs `body`, and stops it.
func withRuntime<Result>(_ mode: WaitMode, _ body: (Runtime, [Int]) throws -> Result) throws -> Result {
    let cores = try testCores()
    let runtime = try Runtime(configuration: .init(cores: cores, waitMode: mode))
    try runtime.start()
    defer { runtime.stop() }
    return try body(runtime, cores)
}

let drainTimeoutNs: UInt64 = 60_000_000_000
