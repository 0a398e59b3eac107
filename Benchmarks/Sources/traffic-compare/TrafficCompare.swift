// Path: Benchmarks/Sources/traffic-compare/TrafficCompare.swift — the traffic controller against its
// anchors on a veth pair that scripts/bench-traffic.sh makes (198.18.0.0/15) and removes:
//   cost:   TX through the shaped stage (completion tap, admission, controller thread) against the
//           plain AFPacketTransmitter, same frames, same link (no qdisc, QDISC_BYPASS), same run: pps,
//           and CPU per frame of the whole process (sender and controller threads, getrusage) and of
//           every core (/proc/stat, the veth peer's receive softirq included). The frames are written
//           into the pool once before the clock starts; per frame both variants only take a buffer
//           and set its source id; the shaped one stamps enqueueNs, one clock read per burst, as an
//           RX stage does (the controller needs it for completion delays);
//   shares: four backlogged sources at weights 1:1:2:4 on an 80 Mbit/s link: Sluice's controller over
//           `tc tbf` against Linux `htb` with the same weights (four classes, u32 on the source byte),
//           each source's received bytes counted by an RX ring on the far side.
import ArgumentParser
import CPacketHarness
import Glibc
import SluiceCore
import SluicePacketIO
import SluiceTraffic
import Synchronization

@main
struct TrafficCompare: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Traffic controller: cost on the TX path, shares vs htb.")

    @Option var runs = 3
    @Option var netnsA: String
    @Option var netnsB: String
    @Option var ifaceA: String
    @Option var ifaceB: String
    @Option(help: "Frames per cost run.") var frames = 500_000

    func validate() throws {
        guard runs >= 1, frames >= 1_000 else { throw ValidationError("runs >= 1 and frames >= 1000") }
    }

    func run() throws {
        var plain: [CostRun] = []
        var shaped: [CostRun] = []
        for index in 0..<runs {
            for variant in (index % 2 == 0 ? [false, true] : [true, false]) {
                let result = try costRun(shaped: variant)
                if variant { shaped.append(result) } else { plain.append(result) }
                FileHandleErr.write("cost run \(index) shaped=\(variant): \(result)\n")
            }
        }
        printCost(plain: plain, shaped: shaped)
        let weights = [1.0, 1, 2, 4]
        var sluiceShares: [[Double]] = []
        var htbShares: [[Double]] = []
        for index in 0..<runs {
            for useHTB in (index % 2 == 0 ? [false, true] : [true, false]) {
                let shares = try shareRun(weights: weights, htb: useHTB)
                if useHTB { htbShares.append(shares) } else { sluiceShares.append(shares) }
                FileHandleErr.write("share run \(index) htb=\(useHTB): \(shares.map { format($0) })\n")
            }
        }
        print("Byte shares of 4 backlogged sources, weights 1:1:2:4, 80 Mbit/s link, 2 s; medians of \(runs) runs:\n")
        print("| source | weight | target | Sluice (tbf + controller) | Linux htb |")
        print("|---:|---:|---:|---:|---:|")
        for source in 0..<4 {
            let target = weights[source] / weights.reduce(0, +)
            print("| \(source) | \(Int(weights[source])) | \(format(target)) | \(format(median(sluiceShares.map { $0[source] }))) | "
                + "\(format(median(htbShares.map { $0[source] }))) |")
        }
        let worst = { (runs: [[Double]]) -> Double in
            (0..<4).map { source in
                let target = weights[source] / weights.reduce(0, +)
                return abs(median(runs.map { $0[source] }) - target) / target
            }.max()!
        }
        print("\nLargest deviation from target: Sluice \(format(worst(sluiceShares) * 100))%, htb \(format(worst(htbShares) * 100))%.")
    }

    // MARK: cost

    /// One cost run: `frames` frames through the plain transmitter, or through the shaped stage with
    /// the controller polling on CPU 1. The clocks run from the first frame to the flush.
    func costRun(shaped: Bool) throws -> CostRun {
        try sh(["/usr/sbin/tc", "qdisc", "del", "dev", ifaceA, "root"], namespace: netnsA, allowFailure: true)
        let pool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
        prepare(pool, size: 64)
        let outcome = Outcome<CostRun>()
        let stop = Atomic<Bool>(false)
        let channel = try makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: 4)
        var policy = TrafficPolicy(sources: Array(repeating: SourcePolicy(), count: 4))
        policy.probeHeadroom = 4  // grants far above capacity: this measures the mechanism, not shaping
        let controller = try TrafficController(policy: policy, receiver: channel.receiver)
        let reporter = Box(channel.reporter)
        // The plain path has no controller: its thread exists only in the shaped variant.
        var controllerThread: Spawn?
        if shaped {
            controllerThread = try Spawn.start(namespace: nil, cpu: 1) {
                while !stop.load(ordering: .relaxed) {
                    controller.poll(nowNs: Clock.monotonicNs())
                    usleep(100)
                }
            }
        }
        let sender = try Spawn.start(namespace: netnsA, cpu: 0) {
            let configuration = AFPacketTXConfiguration(interface: ifaceA, frameCount: 4096, qdiscBypass: true)
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            var sent = 0
            let start: CostClocks
            if shaped {
                let sink = try ShapedTXSink(configuration: configuration, pool: pool, controller: controller,
                                            reporter: reporter.value.take()!, sourceCount: 4, backlogCountMax: 64)
                start = CostClocks.now()
                while sent < frames {
                    let count = take(items, pool: pool, first: sent, enqueueNs: Clock.monotonicNs())
                    sent += sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<count]))
                }
                _ = sink.finish(timeoutNs: 2_000_000_000)
            } else {
                var transmitter = try AFPacketTransmitter(configuration: configuration, pool: pool)
                start = CostClocks.now()
                while sent < frames {
                    let count = take(items, pool: pool, first: sent, enqueueNs: nil)
                    sent += transmitter.transmitOrDrop(UnsafeBufferPointer(rebasing: items[0..<count]))
                }
                _ = transmitter.flush(timeoutNs: 2_000_000_000)
            }
            outcome.value = CostRun(frames: sent, since: start)
        }
        let failure = sender.join()
        stop.store(true, ordering: .relaxed)
        _ = controllerThread?.join()
        if let failure { throw ValidationError(failure) }
        return try outcome.value ?? { throw ValidationError("sender left no result") }()
    }

    func printCost(plain: [CostRun], shaped: [CostRun]) {
        let ratio = { (measure: KeyPath<CostRun, Double>) -> String in
            format(median(zip(shaped, plain).map { $0[keyPath: measure] / max($1[keyPath: measure], 1e-9) })) + "x"
        }
        print("TX cost, \(frames) x 64-byte frames, QDISC_BYPASS, no qdisc; medians of \(runs) interleaved runs, "
            + "ratios = median of per-run ratios. CPU per frame over the same span (first frame to flush): the whole "
            + "process (sender and, when shaped, controller threads; getrusage) and every core (/proc/stat busy time, "
            + "the veth peer's softirq included).\n")
        print("| TX path | pps | vs plain | process CPU ns/frame | vs plain | all cores ns/frame | vs plain |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print("| plain AFPacketTransmitter | \(Int(median(plain.map(\.pps)))) | 1.00x "
            + "| \(formatTenths(median(plain.map(\.processNsPerFrame)))) | 1.00x "
            + "| \(formatTenths(median(plain.map(\.allCoresNsPerFrame)))) | 1.00x |")
        print("| shaped stage + completion tap + controller | \(Int(median(shaped.map(\.pps)))) | \(ratio(\.pps)) "
            + "| \(formatTenths(median(shaped.map(\.processNsPerFrame)))) | \(ratio(\.processNsPerFrame)) "
            + "| \(formatTenths(median(shaped.map(\.allCoresNsPerFrame)))) | \(ratio(\.allCoresNsPerFrame)) |")
        print("")
    }

    /// Writes a frame of `size` bytes (Ethernet header, EtherType 0x88B5) and its length into every
    /// buffer of `pool`, once, before any clock starts; `take` then only sets the source id.
    func prepare(_ pool: BufferPool, size: Int) {
        let header: [UInt8] = [0x02, 0x53, 0x4C, 0, 0, 2, 0x02, 0x53, 0x4C, 0, 0, 1, 0x88, 0xB5, 0]
        for index in 0..<UInt32(pool.bufferCount) {
            let bytes = pool.bytes(at: index)
            for (position, byte) in header.enumerated() { bytes[position] = byte }
            var metadata = PacketMetadata()
            metadata.length = UInt32(size)
            metadata.wireLength = UInt32(size)
            pool.metadata(at: index).pointee = metadata
        }
    }

    /// Takes up to `items.count` prepared buffers; the source id (frame index mod 4) goes in metadata
    /// and in the first byte after the Ethernet header. `enqueueNs`, when given, is stamped on each
    /// (one clock read per burst, by the caller). No allocation, no clock read.
    func take(_ items: UnsafeMutableBufferPointer<UInt64>, pool: BufferPool, first: Int, enqueueNs: UInt64?) -> Int {
        var count = 0
        while count < items.count, let buffer = pool.allocate() {
            let index = buffer.releaseIndex()
            let source = (first + count) % 4
            pool.bytes(at: index)[14] = UInt8(source)
            let metadata = pool.metadata(at: index)
            metadata.pointee.sourceID = UInt16(source)
            if let enqueueNs { metadata.pointee.enqueueNs = enqueueNs }
            items[count] = UInt64(index)
            count += 1
        }
        return count
    }

    /// Fills `items` with frames of one source.
    func fillSource(_ items: UnsafeMutableBufferPointer<UInt64>, pool: BufferPool, source: Int, size: Int) -> Int {
        let count = take(items, pool: pool, first: 0, enqueueNs: Clock.monotonicNs())
        for item in items[0..<count] {
            let index = UInt32(truncatingIfNeeded: item)
            pool.bytes(at: index)[14] = UInt8(source)
            pool.metadata(at: index).pointee.sourceID = UInt16(source)
        }
        return count
    }

    // MARK: shares

    func shareRun(weights: [Double], htb: Bool) throws -> [Double] {
        try sh(["/usr/sbin/tc", "qdisc", "del", "dev", ifaceA, "root"], namespace: netnsA, allowFailure: true)
        if htb {
            try sh(["/usr/sbin/tc", "qdisc", "add", "dev", ifaceA, "root", "handle", "1:", "htb", "default", "14"], namespace: netnsA)
            try sh(["/usr/sbin/tc", "class", "add", "dev", ifaceA, "parent", "1:", "classid", "1:1", "htb", "rate", "80mbit"], namespace: netnsA)
            let total = weights.reduce(0, +)
            for (source, weight) in weights.enumerated() {
                let rate = "\(Int(80_000 * weight / total))kbit"
                try sh(["/usr/sbin/tc", "class", "add", "dev", ifaceA, "parent", "1:1", "classid", "1:1\(source + 1)", "htb",
                        "rate", rate, "ceil", "80mbit"], namespace: netnsA)
                try sh(["/usr/sbin/tc", "filter", "add", "dev", ifaceA, "parent", "1:", "protocol", "all", "u32", "match",
                        "u8", "\(source)", "0xff", "at", "0", "flowid", "1:1\(source + 1)"], namespace: netnsA)
            }
        } else {
            try sh(["/usr/sbin/tc", "qdisc", "add", "dev", ifaceA, "root", "tbf", "rate", "80mbit", "burst", "32kb",
                    "latency", "50ms"], namespace: netnsA)
        }
        let received = Counters()
        let stop = Atomic<Bool>(false)
        let rxPool = try BufferPool(bufferCount: 8192, bufferSizeBytes: 2048)
        let receiver = try Spawn.start(namespace: netnsB, cpu: 1) {
            var rx = try AFPacketReceiver(configuration: AFPacketRXConfiguration(interface: ifaceB, ignoreOutgoing: true),
                                          pool: rxPool)
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
            defer { items.deallocate() }
            while !stop.load(ordering: .relaxed) {
                let count = try rx.receive(into: items, timeoutMs: 10)
                for item in items[0..<count] {
                    let index = UInt32(truncatingIfNeeded: item)
                    let bytes = rxPool.bytes(at: index)
                    if bytes[12] == 0x88, bytes[13] == 0xB5, bytes[14] < 4 {
                        received.add(source: Int(bytes[14]), bytes: Int(rxPool.metadata(at: index).pointee.length))
                    }
                    rxPool.freeIndex(index)
                }
            }
        }
        let pool = try BufferPool(bufferCount: 8192, bufferSizeBytes: 2048)
        prepare(pool, size: 1000)
        let senderStop = Atomic<Bool>(false)
        let channel = try makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: 4)
        let controller = try TrafficController(policy: TrafficPolicy(sources: weights.map { SourcePolicy(weight: $0) }),
                                               receiver: channel.receiver)
        let reporter = Box(channel.reporter)
        let sender = try Spawn.start(namespace: netnsA, cpu: 0) {
            let configuration = AFPacketTXConfiguration(interface: ifaceA, frameCount: 1024, qdiscBypass: false)
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
            defer { items.deallocate() }
            var next = 0
            if htb {
                // One socket per source, as htb's users would have: a shared socket's send buffer
                // would hold every source back to the slowest class and make the shares equal.
                var t0 = try AFPacketTransmitter(configuration: configuration, pool: pool)
                var t1 = try AFPacketTransmitter(configuration: configuration, pool: pool)
                var t2 = try AFPacketTransmitter(configuration: configuration, pool: pool)
                var t3 = try AFPacketTransmitter(configuration: configuration, pool: pool)
                func offer(_ transmitter: inout AFPacketTransmitter, _ source: Int) -> Bool {
                    let count = fillSource(items, pool: pool, source: source, size: 1000)
                    let burst = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[0..<count]))
                    for item in items[burst.taken..<count] { pool.freeIndex(UInt32(truncatingIfNeeded: item)) }
                    return burst.taken == count
                }
                while !senderStop.load(ordering: .relaxed) {
                    let progressed = [offer(&t0, 0), offer(&t1, 1), offer(&t2, 2), offer(&t3, 3)]
                    if !progressed.contains(true) { usleep(50) }
                }
            } else {
                let sink = try ShapedTXSink(configuration: configuration, pool: pool, controller: controller,
                                            reporter: reporter.value.take()!, sourceCount: 4)
                while !senderStop.load(ordering: .relaxed) {
                    let count = take(items, pool: pool, first: next, enqueueNs: Clock.monotonicNs())
                    next += count
                    _ = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<count]))
                    usleep(20)  // offered ~1.6x the link: every source stays backlogged
                }
            }
        }
        let start = Clock.monotonicNs()
        var atStart: [UInt64]?
        var atEnd: [UInt64]?
        while Clock.monotonicNs() - start < 2_600_000_000 {
            if !htb { controller.poll(nowNs: Clock.monotonicNs()) }
            let elapsed = Clock.monotonicNs() - start
            if atStart == nil, elapsed >= 500_000_000 { atStart = received.snapshot() }
            if atEnd == nil, elapsed >= 2_500_000_000 { atEnd = received.snapshot() }
            usleep(100)
        }
        senderStop.store(true, ordering: .relaxed)
        let sendFailure = sender.join()
        stop.store(true, ordering: .relaxed)
        let receiveFailure = receiver.join()
        if let failure = sendFailure ?? receiveFailure { throw ValidationError(failure) }
        let bytes = zip(atEnd!, atStart!).map { Double($0 - $1) }
        let total = bytes.reduce(0, +)
        return bytes.map { total > 0 ? $0 / total : 0 }
    }
}

/// The three clocks of a cost run, read together at its start.
struct CostClocks {
    var wallNs: UInt64
    var processNs: UInt64   // getrusage RUSAGE_SELF: every thread of this process
    var allCoresNs: UInt64  // /proc/stat busy time of every core

    static func now() -> CostClocks {
        CostClocks(wallNs: Clock.monotonicNs(), processNs: pkth_process_cpu_ns(), allCoresNs: pkth_system_busy_ns())
    }
}

/// One cost run: frames sent and the clocks' advance from the first frame to the flush.
struct CostRun: CustomStringConvertible {
    var frames: Int
    var elapsed: CostClocks

    init(frames: Int, since start: CostClocks) {
        let end = CostClocks.now()
        self.frames = frames
        elapsed = CostClocks(wallNs: end.wallNs - start.wallNs, processNs: end.processNs - start.processNs,
                             allCoresNs: end.allCoresNs - start.allCoresNs)
    }

    var pps: Double { Double(frames) / (Double(elapsed.wallNs) / 1e9) }
    var processNsPerFrame: Double { Double(elapsed.processNs) / Double(max(frames, 1)) }
    var allCoresNsPerFrame: Double { Double(elapsed.allCoresNs) / Double(max(frames, 1)) }
    var description: String {
        "\(Int(pps)) pps, process \(format(processNsPerFrame)) ns/frame, all cores \(format(allCoresNsPerFrame)) ns/frame"
    }
}

final class Counters: @unchecked Sendable {
    let bytes: InlineArray<4, Atomic<UInt64>> = InlineArray { _ in Atomic(0) }
    func add(source: Int, bytes count: Int) { bytes[source].wrappingAdd(UInt64(count), ordering: .relaxed) }
    func snapshot() -> [UInt64] { (0..<4).map { bytes[$0].load(ordering: .relaxed) } }
}

final class Box<Value: ~Copyable>: @unchecked Sendable {
    var value: Value?
    init(_ value: consuming Value) { self.value = consume value }
}

final class Outcome<Value>: @unchecked Sendable { var value: Value? }

/// A thread that optionally enters a network namespace and pins itself, then runs `body`.
final class Spawn: @unchecked Sendable {
    private var thread = pthread_t()
    private let failure = Mutex<String?>(nil)
    private var body: (() throws -> Void)?
    private var namespace: String?
    private var cpu: Int?

    static func start(namespace: String?, cpu: Int?, _ body: @escaping () throws -> Void) throws -> Spawn {
        let spawn = Spawn()
        spawn.body = body
        spawn.namespace = namespace
        spawn.cpu = cpu
        let rc = pthread_create(&spawn.thread, nil, { context in
            let spawn = Unmanaged<Spawn>.fromOpaque(context!).takeRetainedValue()
            do {
                if let namespace = spawn.namespace {
                    try NetworkNamespace.enterOnCurrentThread(path: "/var/run/netns/\(namespace)")
                }
                if let cpu = spawn.cpu { try? CPU.pinCurrentThread(to: cpu) }
                try spawn.body!()
            } catch {
                spawn.failure.withLock { $0 = "\(error)" }
            }
            return nil
        }, Unmanaged.passRetained(spawn).toOpaque())
        guard rc == 0 else { throw ValidationError("pthread_create: \(rc)") }
        return spawn
    }

    func join() -> String? {
        pthread_join(thread, nil)
        return failure.withLock { $0 }
    }
}

/// Runs a command (in a namespace: `ip netns exec`), waits, throws on failure unless allowed.
func sh(_ arguments: [String], namespace: String? = nil, allowFailure: Bool = false) throws {
    let full = namespace.map { ["/usr/sbin/ip", "netns", "exec", $0] + arguments } ?? arguments
    var pid: pid_t = 0
    var argv = full.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    guard posix_spawn(&pid, full[0], &actions, nil, &argv, environ) == 0 else { throw ValidationError("cannot run \(full[0])") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    if status != 0, !allowFailure { throw ValidationError("\(full.joined(separator: " ")) failed (\(status))") }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
}

func format(_ value: Double) -> String { String(Double(Int((value * 1000).rounded())) / 1000) }

func formatTenths(_ value: Double) -> String { String(Double(Int((value * 10).rounded())) / 10) }

enum FileHandleErr {
    static func write(_ text: String) {
        var text = text
        text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
