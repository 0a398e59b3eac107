// Path: Benchmarks/Sources/afpacket-compare/AFPacketCompare.swift — Sluice's AF_PACKET rings against
// plain-C anchors over a veth pair, same sender and same link in the same run.
//
// RX: a C TX-ring sender in namespace A floods 64-byte frames; in namespace B one receiver takes them:
// Sluice's TPACKET_V3 receiver (AFPacketReceiver, blocking receive) or a C anchor: recvfrom() (one
// syscall a frame), recvmmsg() (32 a call) a TPACKET_V2 ring or a TPACKET_V3 ring. On veth the sender's core does the
// kernel's receive work (the copy into a ring or socket queue included), so pps is the sender's, and
// CPU is reported three ways per packet: the receiving thread's, the process's (sender + receiver
// threads, getrusage) and every core's (/proc/stat: softirq and other tasks too), over the same span.
// TX: Sluice's AFPacketTransmitter against a plain C TX-ring loop, same frames, ring and
// QDISC_BYPASS. Variants alternate, first one rotating.
// scripts/bench-afpacket.sh makes the namespaces and veth pair (198.18.0.0/15) and removes them.
import ArgumentParser
import CPacketHarness
import Glibc
import SluiceCore
import SluicePacketIO

@main
struct AFPacketCompare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "AF_PACKET RX (TPACKET_V3 ring vs recvfrom) and TX (Sluice ring vs C ring) over veth.")

    @Option(help: "Runs per variant; the table shows medians.") var runs = 5
    @Option(help: "Frames per RX run.") var rxPackets = 1_000_000
    @Option(help: "Frames per TX run.") var txPackets = 1_000_000
    @Option(help: "Namespace holding the sending end.") var netnsA: String
    @Option(help: "Namespace holding the receiving end.") var netnsB: String
    @Option(help: "Sending interface (in netns-a).") var ifaceA: String
    @Option(help: "Receiving interface (in netns-b).") var ifaceB: String
    @Option(help: "Sender CPU.") var senderCPU = 0
    @Option(help: "Receiver CPU.") var receiverCPU = 1
    @Option(help: "Frames per burst (both senders).") var burst = 32
    @Option(help: "What to run: rx, tx or all.") var scenario = "all"
    @Flag(help: "Print every run to standard error.") var verbose = false

    func validate() throws {
        guard runs >= 1, rxPackets >= 1_000, txPackets >= 1_000 else {
            throw ValidationError("runs >= 1 and at least 1000 packets per run")
        }
        guard (1...Limits.burstCountMax).contains(burst) else { throw ValidationError("burst 1...\(Limits.burstCountMax)") }
        guard ["rx", "tx", "all"].contains(scenario) else { throw ValidationError("scenario is rx, tx or all") }
        guard geteuid() == 0 else { throw ValidationError("needs root (namespaces, AF_PACKET)") }
    }

    func run() throws {
        let frame = Frame.make()
        var rx: [RXVariant: [RXRun]] = [:]
        var tx: [TXVariant: [TXRun]] = [:]
        for runIndex in 0..<runs {
            if scenario != "tx" {
                for variant in RXVariant.allCases.rotated(by: runIndex) {
                    let result = try runRX(variant, frame: frame)
                    rx[variant, default: []].append(result)
                    log("rx \(variant.rawValue) run \(runIndex): \(result)")
                    usleep(100_000)
                }
            }
            if scenario != "rx" {
                for variant in TXVariant.allCases.rotated(by: runIndex) {
                    let result = try runTX(variant, frame: frame)
                    tx[variant, default: []].append(result)
                    log("tx \(variant.rawValue) run \(runIndex): \(result)")
                    usleep(100_000)
                }
            }
        }
        Report(runs: runs, rxPackets: rxPackets, txPackets: txPackets, burst: burst).print(rx: rx, tx: tx)
    }

    private func log(_ line: String) {
        guard verbose else { return }
        var text = line + "\n"
        text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
    }

    var pathA: String { "/var/run/netns/\(netnsA)" }
    var pathB: String { "/var/run/netns/\(netnsB)" }

    // MARK: RX

    /// One RX run: the receiver variant starts in B and signals ready; the C sender floods from A.
    func runRX(_ variant: RXVariant, frame: [UInt8]) throws -> RXRun {
        let flags = Flags()
        let receiverOutcome = ThreadOutcome<RXRun>()
        let expected = UInt64(rxPackets)
        let (pathB, ifaceB, receiverCPU) = (self.pathB, self.ifaceB, self.receiverCPU)
        let receiver = try Spawned {
            switch variant {
            case .sluiceRing:
                receiverOutcome.value = try sluiceReceive(pathB, ifaceB, cpu: receiverCPU, expected: expected, flags: flags)
            case .recvfrom, .recvmmsg, .v2Ring, .v3Ring:
                receiverOutcome.value = try cReceive(variant, pathB, ifaceB, cpu: receiverCPU, expected: expected,
                                                     flags: flags)
            }
        }
        guard flags.waitReady() else {
            pkth_flag_set(flags.senderDone, 1)
            _ = receiver.join()
            throw ValidationError("receiver \(variant.rawValue) never became ready: \(receiverOutcome.failure ?? "?")")
        }
        // The span for process and all-core CPU: from starting the sender (its socket and ring set-up
        // included, the same for every variant) to the receiver's end.
        let machine0 = pkth_system_busy_ns()
        let process0 = pkth_process_cpu_ns()
        let sender = try cSend(count: expected, frame: frame, qdiscBypass: true, start: nil)
        pkth_flag_set(flags.senderDone, 1)
        if let failure = receiver.join() ?? receiverOutcome.failure { throw ValidationError("receiver: \(failure)") }
        let processNs = pkth_process_cpu_ns() - process0
        let machineNs = pkth_system_busy_ns() - machine0
        var run = try receiverOutcome.value.unwrap("receiver result")
        run.sent = sender.sent
        run.senderWallNs = sender.wall_ns
        run.processCPUNs = processNs
        run.allCoresCPUNs = machineNs
        return run
    }

    /// Sends `count` frames from A with the plain C TX-ring loop on the sender CPU.
    func cSend(count: UInt64, frame: [UInt8], qdiscBypass: Bool, start: UnsafeMutablePointer<Int32>?) throws
        -> pkth_sender_result
    {
        let outcome = ThreadOutcome<pkth_sender_result>()
        let (pathA, ifaceA, senderCPU, burst) = (self.pathA, self.ifaceA, self.senderCPU, self.burst)
        let thread = try Spawned {
            var result = pkth_sender_result()
            let rc = pathA.withCString { path in
                ifaceA.withCString { iface in
                    frame.withUnsafeBufferPointer { bytes in
                        var config = pkth_sender_config(
                            netns_path: path, interface: iface, cpu: Int32(senderCPU), count: count, burst: UInt32(burst),
                            frame_size: 2048, frame_count: 4096, qdisc_bypass: qdiscBypass ? 1 : 0,
                            frame: bytes.baseAddress!, frame_length: UInt32(bytes.count),
                            sequence_offset: UInt32(Frame.sequenceOffset), start: UnsafePointer(start))
                        return pkth_txring_send(&config, &result)
                    }
                }
            }
            guard rc == 0 else { throw ValidationError("C sender: errno \(-rc)") }
            outcome.value = result
        }
        if let failure = thread.join() ?? outcome.failure { throw ValidationError(failure) }
        return try outcome.value.unwrap("sender result")
    }

    // MARK: TX

    func runTX(_ variant: TXVariant, frame: [UInt8]) throws -> TXRun {
        let count = UInt64(txPackets)
        let machine0 = pkth_system_busy_ns()
        var run: TXRun
        switch variant {
        case .cRing:
            let result = try cSend(count: count, frame: frame, qdiscBypass: true, start: nil)
            run = TXRun(sent: result.sent, wallNs: result.wall_ns, cpuNs: result.cpu_ns, retries: result.kick_retries)
        case .sluiceRing:
            let outcome = ThreadOutcome<TXRun>()
            let (pathA, ifaceA, senderCPU, burst) = (self.pathA, self.ifaceA, self.senderCPU, self.burst)
            let thread = try Spawned {
                outcome.value = try sluiceSend(pathA, ifaceA, cpu: senderCPU, count: count, burst: burst, frame: frame)
            }
            if let failure = thread.join() ?? outcome.failure { throw ValidationError(failure) }
            run = try outcome.value.unwrap("sluice sender result")
        }
        run.allCoresCPUNs = pkth_system_busy_ns() - machine0
        return run
    }
}

enum RXVariant: String, CaseIterable {
    case sluiceRing = "Sluice TPACKET_V3 ring"
    case recvfrom = "C recvfrom()"
    case recvmmsg = "C recvmmsg(), batch 32"
    case v2Ring = "C TPACKET_V2 ring"
    case v3Ring = "C TPACKET_V3 ring"
}
enum TXVariant: String, CaseIterable { case sluiceRing = "Sluice TX ring", cRing = "C TX ring loop" }

struct RXRun: CustomStringConvertible {
    var received: UInt64 = 0
    var kernelDrops: UInt64 = 0
    var cpuNs: UInt64 = 0
    var sent: UInt64 = 0
    var senderWallNs: UInt64 = 0
    var processCPUNs: UInt64 = 0   // sender + receiver threads (getrusage RUSAGE_SELF)
    var allCoresCPUNs: UInt64 = 0  // every core, /proc/stat (softirq included)

    var pps: Double { Double(received) / max(Double(senderWallNs) / 1e9, 1e-9) }
    var cpuNsPerPacket: Double { Double(cpuNs) / Double(max(received, 1)) }
    var processCPUNsPerPacket: Double { Double(processCPUNs) / Double(max(received, 1)) }
    var allCoresCPUNsPerPacket: Double { Double(allCoresCPUNs) / Double(max(received, 1)) }
    var lost: UInt64 { sent > received ? sent - received : 0 }
    var description: String {
        "received \(received)/\(sent), kernel drops \(kernelDrops), \(Int(pps)) pps, CPU ns/packet: receiver "
            + "\(String(format1: cpuNsPerPacket)), process \(String(format1: processCPUNsPerPacket)), all cores "
            + "\(String(format1: allCoresCPUNsPerPacket))"
    }
}

struct TXRun: CustomStringConvertible {
    var sent: UInt64
    var wallNs: UInt64
    var cpuNs: UInt64
    var retries: UInt64
    var allCoresCPUNs: UInt64 = 0  // every core, /proc/stat, over the whole run (set-up included)

    var pps: Double { Double(sent) / max(Double(wallNs) / 1e9, 1e-9) }
    var cpuNsPerPacket: Double { Double(cpuNs) / Double(max(sent, 1)) }
    var allCoresCPUNsPerPacket: Double { Double(allCoresCPUNs) / Double(max(sent, 1)) }
    var description: String {
        "sent \(sent), \(Int(pps)) pps, \(String(format1: cpuNsPerPacket)) ns CPU/packet (all cores "
            + "\(String(format1: allCoresCPUNsPerPacket))), \(retries) kick retries"
    }
}

/// Sluice's receiver: AFPacketReceiver.receive (burst, else poll) into pool buffers, each freed.
func sluiceReceive(_ path: String, _ iface: String, cpu: Int, expected: UInt64, flags: Flags) throws -> RXRun {
    try NetworkNamespace.enterOnCurrentThread(path: path)
    try CPU.pinCurrentThread(to: cpu)
    let pool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    var receiver = try AFPacketReceiver(
        configuration: AFPacketRXConfiguration(interface: iface, blockSizeBytes: 1 << 20, blockCount: 16,
                                               blockTimeoutMs: 1, ignoreOutgoing: true),
        pool: pool)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
    defer { items.deallocate() }
    pkth_flag_set(flags.ready, 1)
    let cpu0 = Clock.threadCPUNs()
    var received: UInt64 = 0
    var quietSince = Clock.monotonicNs()
    while received < expected {
        let count = try receiver.receive(into: items, timeoutMs: 20)
        for item in items[0..<count] { pool.freeIndex(UInt32(truncatingIfNeeded: item)) }
        received &+= UInt64(count)
        if count > 0 { continue }
        let now = Clock.monotonicNs()
        if pkth_flag_get(flags.senderDone) == 0 {
            quietSince = now
        } else if now - quietSince > 100_000_000 {
            break
        }
    }
    let cpuNs = Clock.threadCPUNs() - cpu0
    let counters = try receiver.refreshKernelCounters()
    return RXRun(received: received, kernelDrops: counters.kernelDrops, cpuNs: cpuNs)
}

/// The C anchor receivers: recvfrom() and recvmmsg() with SO_RCVBUF as large as Sluice's ring (16 MiB),
/// and TPACKET_V2 and V3 rings of the same size (16 blocks of 1 MiB).
func cReceive(_ variant: RXVariant, _ path: String, _ iface: String, cpu: Int, expected: UInt64, flags: Flags) throws
    -> RXRun
{
    var result = pkth_receiver_result()
    let rc = path.withCString { path in
        iface.withCString { iface in
            var config = pkth_receiver_config(
                netns_path: path, interface: iface, cpu: Int32(cpu), expected: expected,
                rcvbuf_bytes: variant == .v2Ring || variant == .v3Ring ? 0 : 16 << 20, quiet_ns: 100_000_000, ready: flags.ready,
                sender_done: flags.senderDone, batch: 32, ring_block_size: 1 << 20, ring_block_count: 16)
            switch variant {
            case .recvfrom: return pkth_recvfrom_receive(&config, &result)
            case .recvmmsg: return pkth_recvmmsg_receive(&config, &result)
            case .v2Ring: return pkth_v2ring_receive(&config, &result)
            case .v3Ring: return pkth_v3ring_receive(&config, &result)
            case .sluiceRing: preconditionFailure("Sluice's receiver is not a C anchor")
            }
        }
    }
    guard rc == 0 else { throw ValidationError("\(variant.rawValue) receiver: errno \(-rc)") }
    return RXRun(received: result.packets, kernelDrops: result.kernel_drops, cpuNs: result.cpu_ns)
}

/// Sluice's sender: pool buffers (pre-filled with the frame) through AFPacketTransmitter, `burst` at a
/// time, each burst writing the sequence numbers, then a flush until every frame completed.
func sluiceSend(_ path: String, _ iface: String, cpu: Int, count: UInt64, burst: Int, frame: [UInt8]) throws -> TXRun {
    try NetworkNamespace.enterOnCurrentThread(path: path)
    try CPU.pinCurrentThread(to: cpu)
    let pool = try BufferPool(bufferCount: 4096, bufferSizeBytes: 2048)
    for index in 0..<UInt32(pool.bufferCount) {
        pool.bytes(at: index).copyBytes(from: frame)
        pool.metadata(at: index).pointee.length = UInt32(frame.count)
    }
    var transmitter = try AFPacketTransmitter(
        configuration: AFPacketTXConfiguration(interface: iface, frameSizeBytes: 2048, frameCount: 4096, qdiscBypass: true),
        pool: pool)
    let indices = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: burst)
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burst)
    defer {
        indices.deallocate()
        items.deallocate()
    }
    let wall0 = Clock.monotonicNs()
    let cpu0 = Clock.threadCPUNs()
    var sent: UInt64 = 0
    while sent < count {
        let wanted = Int(min(UInt64(burst), count - sent))
        let taken = pool.allocateBulk(into: UnsafeMutableBufferPointer(rebasing: indices[0..<wanted]))
        precondition(taken == wanted, "pool of 4096 buffers ran dry with at most one burst out")
        for position in 0..<wanted {
            let index = indices[position]
            pool.bytes(at: index).storeBytes(of: (sent + UInt64(position)).bigEndian, toByteOffset: Frame.sequenceOffset,
                                            as: UInt64.self)
            items[position] = UInt64(index)
        }
        let result = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[0..<wanted]))
        for position in result.taken..<wanted { pool.freeIndex(indices[position]) }
        sent += UInt64(result.taken)
    }
    guard transmitter.flush(timeoutNs: 5_000_000_000) else { throw ValidationError("TX ring did not drain in 5 s") }
    let counters = transmitter.counters
    return TXRun(sent: sent, wallNs: Clock.monotonicNs() - wall0, cpuNs: Clock.threadCPUNs() - cpu0,
                 retries: counters.kickRetries)
}
