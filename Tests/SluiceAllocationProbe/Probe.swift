// Path: Tests/SluiceAllocationProbe/Probe.swift — counts mallocs on the hot paths, per packet.
//
// Run a release build (what ships; `make build-tests` builds it) with the malloc interposer preloaded,
// as SluiceAllocationTests does:
//   LD_PRELOAD=.build/release/libMallocInterposerSwift.so .build/release/SluiceAllocationProbe SCENARIO N
// (A debug build allocates on the adaptive wait mode's idle path, which release builds do not.)
// Each scenario warms its path up, then moves N and then 2N packets in steady state with counting on,
// and prints one line `SCENARIO N MALLOCS_N MALLOCS_2N`. A path that allocates per packet (or per
// burst) shows MALLOCS_2N well above MALLOCS_N; start-up allocations happen before either window.
// The interposer counts every thread: each scenario keeps all threads but the measured ones quiet
// (the main thread only sleeps while workers run, or drives the stages itself).
import Glibc
import MallocInterposerSwift
import SluiceCore
import SluicePacketIO
import SluiceTraffic
import Synchronization

/// One measurement window: counting on, `step` called until it has moved `count` packets, counting
/// off. Returns the mallocs counted meanwhile (every thread of the process). `between` runs before
/// each step with counting off (control-plane work that is not the path under test).
func mallocs(moving count: Int, between: () -> Void = {}, _ step: () -> Int) -> Int64 {
    MallocInterposerSwift.initialize()
    var moved = 0
    while moved < count {
        between()
        MallocInterposerSwift.hook()
        moved += step()
        MallocInterposerSwift.unhook()
    }
    return Int64(MallocInterposerSwift.getStatistics().mallocCount)
}

/// Warms up with `count / 4` packets, then measures `count` and `2 * count`.
func measure(_ count: Int, between: () -> Void = {}, _ step: () -> Int) -> (Int64, Int64) {
    var warmed = 0
    while warmed < count / 4 {
        between()
        warmed += step()
    }
    let single = mallocs(moving: count, between: between, step)
    let double = mallocs(moving: 2 * count, between: between, step)
    return (single, double)
}

func fail(_ message: String) -> Never {
    let line = "SluiceAllocationProbe: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(2)
}

let burstCount = 32

// MARK: - Scenarios

/// Proves the interposer is loaded and counting: one heap array per packet.
func canary(_ count: Int) -> (Int64, Int64) {
    measure(count) {
        var array = [UInt64]()
        array.append(UInt64(count))
        return array.count
    }
}

/// Bursts through one SPSC ring, both ends on this thread.
func ringBursts(_ count: Int) -> (Int64, Int64) {
    var ends = try! makeRing(capacity: 1024)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burstCount)
    defer { items.deallocate() }
    items.initialize(repeating: 7)
    return measure(count) {
        let (added, _) = ends.producer.enqueueBurst(UnsafeBufferPointer(items))
        let (taken, _) = ends.consumer.dequeueBurst(into: items)
        precondition(added == burstCount && taken == burstCount, "ring lost items")
        return taken
    }
}

/// A source that never ends: sequence numbers as fast as the pipeline takes them.
struct EndlessSource: SourceBody {
    var next: UInt64 = 0
    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        for index in items.indices {
            items[index] = next
            next &+= 1
        }
        return items.count
    }
}

/// A source of `ratePerSecond` items in bursts of 32 (the workers sleep and wake between bursts).
struct PacedSource: SourceBody {
    let ratePerSecond: UInt64
    var sent: UInt64 = 0
    var startNs: UInt64 = 0
    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let now = Clock.monotonicNs()
        if startNs == 0 { startNs = now }
        let due = (now - startNs) * ratePerSecond / 1_000_000_000
        guard due >= sent + UInt64(items.count) else { return 0 }
        for index in items.indices { items[index] = sent &+ UInt64(index) }
        sent &+= UInt64(items.count)
        return items.count
    }
    func sleepHintNs(nowNs: UInt64) -> UInt64? { 1_000_000_000 * UInt64(burstCount) / ratePerSecond / 2 }
}

/// A last stage that counts what it gets in raw memory the main thread reads.
struct CountingSink: StageBody, @unchecked Sendable {  // unchecked: one writer, the probe reads
    let delivered: UnsafeMutablePointer<UInt64>
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        delivered.pointee &+= UInt64(items.count)
        return items.count
    }
}

/// A running pipeline (source -> relay -> sink on two workers, or one with one CPU): the main thread
/// sleeps while it counts the workers' mallocs over N and 2N delivered items.
/// `fused`: all three stages on the first worker, run to completion in one call chain per burst.
func pipelineSteadyState(_ count: Int, waitMode: WaitMode, ratePerSecond: UInt64?, fused: Bool = false) -> (Int64, Int64) {
    let cores = Array(((try? CPU.allowedCPUs()) ?? [0]).prefix(fused ? 1 : 2))
    let runtime = try! Runtime(configuration: RuntimeConfiguration(cores: cores, waitMode: waitMode))
    try! runtime.start()
    let delivered = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    delivered.initialize(to: 0)
    var builder = PipelineBuilder(name: "alloc", burstCount: burstCount)
    if let ratePerSecond {
        builder.source(PacedSource(ratePerSecond: ratePerSecond))
    } else {
        builder.source(EndlessSource())
    }
    builder.stage(PassThrough())
    builder.stage(CountingSink(delivered: delivered))
    let pipeline = try! builder.build(ringCapacities: [1024, 1024])
    let last = cores.count - 1
    try! runtime.launch(pipeline, placement: [0, last, last])
    let atomicView = UnsafeMutableRawPointer(delivered)
    // One "step": sleep until more items arrived; the sink's counter is read racily, which at worst
    // moves a window's end by a burst.
    let result = measure(count) {
        let before = atomicView.load(as: UInt64.self)
        var now = before
        while now == before {
            usleep(200)
            now = atomicView.load(as: UInt64.self)
        }
        return Int(now - before)
    }
    runtime.stop()
    // The fused scenario must have run fused, or it measured the staged path.
    precondition(!fused || pipeline.fusedBursts.load(ordering: .relaxed) > 0, "the fused probe never fused")
    return result
}

/// Writes a capture of `count` 60-byte Ethernet frames to `path`.
func writeCapture(_ path: String, count: Int) {
    guard let file = fopen(path, "w") else { fail("cannot write \(path)") }
    defer { fclose(file) }
    func put32(_ value: UInt32) { var v = value; fwrite(&v, 4, 1, file) }
    func put16(_ value: UInt16) { var v = value; fwrite(&v, 2, 1, file) }
    put32(0xA1B2_C3D4); put16(2); put16(4); put32(0); put32(0); put32(65_535); put32(1)
    var frame = [UInt8](repeating: 0, count: 60)
    frame[12] = 0x88
    frame[13] = 0xB5
    for index in 0..<count {
        put32(UInt32(index / 1_000_000)); put32(UInt32(index % 1_000_000)); put32(60); put32(60)
        frame[14] = UInt8(truncatingIfNeeded: index)
        fwrite(frame, 1, frame.count, file)
    }
}

/// A pcap source (top speed, buffers recycled through a returns ring) into a pcap sink, both driven
/// from this thread: the replay path's two file stages.
func pcapSourceToSink(_ count: Int) -> (Int64, Int64) {
    let directory = "/tmp/sluice-alloc-\(getpid())"
    mkdir(directory, 0o700)
    defer {
        unlink(directory + "/in.pcap")
        unlink(directory + "/out.pcap")
        rmdir(directory)
    }
    writeCapture(directory + "/in.pcap", count: count * 4)  // warm-up, N and 2N all inside one loop
    let pool = try! BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    var returns = try! makeRing(capacity: 4096)
    let source = try! PcapSource(path: directory + "/in.pcap", pool: pool, pacing: .topSpeed,
                                 returns: returns.consumer)
    let sink = try! PcapSink(path: directory + "/out.pcap", pool: pool, linkType: 1, snapshotLength: 65_535,
                             nanosecond: true, returns: returns.producer)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burstCount)
    defer { items.deallocate() }
    let result = measure(count) {
        let produced = source.produce(into: items)
        precondition(produced > 0 || !source.isExhausted, "capture ran out")
        _ = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<produced]))
        return produced
    }
    try! sink.finish()
    return result
}

// MARK: - AF_PACKET over a veth pair in namespaces of its own

/// Two namespaces joined by a veth pair, 198.18.0.1/30 and 198.18.0.2/30; deleted by `destroy`.
struct Veth {
    let namespaceA = "sluice-alloc-\(getpid())-a"
    let namespaceB = "sluice-alloc-\(getpid())-b"
    let interfaceA = "sla\(getpid())a"
    let interfaceB = "sla\(getpid())b"

    /// Runs a set-up command to completion (without the interposer: a plain environment); its status.
    @discardableResult static func run(_ arguments: [String], mustSucceed: Bool = true) -> Int32 {
        var pid = pid_t()
        let argv = arguments.map { strdup($0) } + [nil]
        let environment = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer {
            argv.forEach { free($0) }
            environment.forEach { free($0) }
        }
        guard posix_spawn(&pid, arguments[0], nil, nil, argv, environment) == 0 else { fail("spawn \(arguments[0])") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if mustSucceed, status != 0 { fail("\(arguments.joined(separator: " ")) exited with \(status)") }
        return status
    }

    func create() {
        Self.run(["/usr/sbin/ip", "netns", "add", namespaceA])
        Self.run(["/usr/sbin/ip", "netns", "add", namespaceB])
        Self.run(["/usr/sbin/ip", "link", "add", "name", interfaceA, "netns", namespaceA, "type", "veth",
                  "peer", "name", interfaceB, "netns", namespaceB])
        for (namespace, interface, address) in [(namespaceA, interfaceA, "198.18.0.1/30"),
                                                (namespaceB, interfaceB, "198.18.0.2/30")] {
            Self.run(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw",
                      "net.ipv6.conf.\(interface).disable_ipv6=1"])
            Self.run(["/usr/sbin/ip", "-n", namespace, "address", "add", address, "dev", interface])
            Self.run(["/usr/sbin/ip", "-n", namespace, "link", "set", "dev", interface, "up"])
        }
    }

    /// Deletes both namespaces (and with them the veth pair); also runs at exit, a failed one included.
    func destroy() {
        for namespace in [namespaceA, namespaceB] { Self.run(["/usr/sbin/ip", "netns", "del", namespace], mustSucceed: false) }
    }

    func enter(_ namespace: String) {
        do { try NetworkNamespace.enterOnCurrentThread(path: "/var/run/netns/\(namespace)") } catch {
            fail("setns \(namespace): \(error)")
        }
    }
}

/// Fills `count` fresh pool buffers with a broadcast frame of a local experimental EtherType
/// (nothing but test traffic, ignored by the far side's stack) for `source`; returns how many.
func fillFrames(_ items: UnsafeMutableBufferPointer<UInt64>, pool: BufferPool, source: UInt16 = 0) -> Int {
    let taken = pool.takeFree(into: items)
    for position in 0..<taken {
        let index = UInt32(truncatingIfNeeded: items[position])
        let bytes = pool.bytes(at: index)
        for offset in 0..<6 { bytes[offset] = 0xFF }
        for offset in 6..<12 { bytes[offset] = 0x02 }
        bytes[12] = 0x88
        bytes[13] = 0xB5
        for offset in 14..<128 { bytes[offset] = UInt8(truncatingIfNeeded: offset) }
        let metadata = pool.metadata(at: index)
        metadata.pointee.length = 128
        metadata.pointee.wireLength = 128
        metadata.pointee.sourceID = source
        metadata.pointee.enqueueNs = Clock.monotonicNs()
    }
    return taken
}

/// AF_PACKET TX stage in namespace A and RX stage in namespace B, both driven from this thread:
/// each step sends a burst and receives what has arrived (frees it).
func afpacketTXAndRX(_ count: Int, veth: Veth) -> (Int64, Int64) {
    let txPool = try! BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    let rxPool = try! BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    veth.enter(veth.namespaceA)
    let sink = try! AFPacketSink(configuration: AFPacketTXConfiguration(interface: veth.interfaceA, qdiscBypass: true),
                                 pool: txPool)
    veth.enter(veth.namespaceB)
    let source = try! AFPacketSource(configuration: AFPacketRXConfiguration(interface: veth.interfaceB), pool: rxPool)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burstCount)
    defer { items.deallocate() }
    var received = 0
    let result = measure(count) {
        let filled = fillFrames(items, pool: txPool)
        _ = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<filled]))
        let got = source.produce(into: items)
        rxPool.freeBurst(UnsafeBufferPointer(rebasing: items[0..<got]))
        received += got
        return filled
    }
    _ = sink.finish()
    if received == 0 { fail("AF_PACKET RX received nothing: the RX path was not measured") }
    return result
}

/// The shaped TX stage (per-source backlogs, admission by the traffic controller, completion scan)
/// in namespace A, driven from this thread. The controller is polled between steps with counting
/// off: it is the control plane, not the TX stage.
func shapedTX(_ count: Int, veth: Veth) -> (Int64, Int64) {
    let pool = try! BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    let channel = try! makeCompletionChannel(eventCapacity: 65_536, sourceCountMax: 2)
    let controller = try! TrafficController(policy: TrafficPolicy(sources: [SourcePolicy(weight: 1), SourcePolicy(weight: 3)]),
                                            receiver: channel.receiver)
    veth.enter(veth.namespaceA)
    let sink = try! ShapedTXSink(configuration: AFPacketTXConfiguration(interface: veth.interfaceA, qdiscBypass: true),
                                 pool: pool, controller: controller, reporter: channel.reporter, sourceCount: 2)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burstCount)
    defer { items.deallocate() }
    var turn: UInt16 = 0
    let result = measure(count, between: { _ = controller.poll(nowNs: Clock.monotonicNs()) }) {
        turn &+= 1
        let filled = fillFrames(items, pool: pool, source: turn % 2)
        let kept = sink.process(UnsafeMutableBufferPointer(rebasing: items[0..<filled]))
        _ = sink.idle()
        return max(kept, 1)
    }
    _ = sink.finish()
    // The drop paths allocate nothing either; make sure the admitted path is what was measured.
    if sink.counters.admitted.load(ordering: .relaxed) == 0 { fail("shaped TX admitted nothing: its TX path was not measured") }
    return result
}

// MARK: - Main

let arguments = CommandLine.arguments
guard arguments.count == 3, let count = Int(arguments[2]), count > 0 else {
    fail("usage: SluiceAllocationProbe canary|ring|pipeline-busy-poll|pipeline-adaptive|pcap|afpacket|shaped-tx N")
}
let scenario = arguments[1]
let result: (Int64, Int64)
switch scenario {
case "canary": result = canary(count)
case "ring": result = ringBursts(count)
case "pipeline-busy-poll": result = pipelineSteadyState(count, waitMode: .busyPoll, ratePerSecond: nil)
case "pipeline-fused": result = pipelineSteadyState(count, waitMode: .busyPoll, ratePerSecond: nil, fused: true)
case "pipeline-adaptive": result = pipelineSteadyState(count, waitMode: .adaptive, ratePerSecond: 400_000)
case "pcap": result = pcapSourceToSink(count)
case "afpacket", "shaped-tx":
    let veth = Veth()
    atexit { Veth().destroy() }  // the names depend only on the pid: this deletes what `create` made
    veth.create()
    result = scenario == "afpacket" ? afpacketTXAndRX(count, veth: veth) : shapedTX(count, veth: veth)
default: fail("unknown scenario \(scenario)")
}
print("\(scenario) \(count) \(result.0) \(result.1)")
