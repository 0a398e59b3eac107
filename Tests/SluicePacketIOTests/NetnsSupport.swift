// Path: Tests/SluicePacketIOTests/NetnsSupport.swift — throwaway network namespaces joined by a veth
// pair (198.18.0.0/15 only), threads that live in one of them, and the test traffic's frames.
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization
import Testing

/// Whether namespace tests run here. They need root (CAP_NET_ADMIN for namespaces, CAP_NET_RAW for
/// AF_PACKET). As root they always run; in CI (CI=true) they run regardless and fail loudly without
/// root, so a CI job can never skip them silently.
enum NetnsEnvironment {
    static let isRoot = geteuid() == 0
    static let inCI = getenv("CI").map { String(cString: $0) == "true" } ?? false
    static var enabled: Bool { isRoot || inCI }

    /// Fails the test (loudly) when it runs without root, which only happens in CI.
    static func requireRoot() throws {
        try #require(isRoot, "CI=true: namespace and AF_PACKET tests need root (run the suite as root)")
    }
}

/// Failure of a namespace set-up command.
struct NetnsError: Error, CustomStringConvertible {
    let description: String
}

/// Two network namespaces joined by a veth pair: `interfaceA` (198.18.0.1/30) in `namespaceA`,
/// `interfaceB` (198.18.0.2/30) in `namespaceB`, IPv6 off so nothing but test traffic crosses.
/// Names carry the pid and a counter, so parallel runs never collide. `destroy()` (also run by
/// deinit) deletes both namespaces, which deletes the veth pair; call it in a `defer`.
final class VethLab: @unchecked Sendable {  // unchecked: set-up and teardown happen on the test's thread
    private static let counter = Atomic<Int>(0)

    let namespaceA: String
    let namespaceB: String
    let interfaceA: String
    let interfaceB: String
    /// Locally administered MACs for the two ends.
    let macA: [UInt8] = [0x02, 0x53, 0x4C, 0x00, 0x00, 0x01]
    let macB: [UInt8] = [0x02, 0x53, 0x4C, 0x00, 0x00, 0x02]
    let addressA: [UInt8] = [198, 18, 0, 1]
    let addressB: [UInt8] = [198, 18, 0, 2]
    private var created: [String] = []

    init() throws {
        _ = Self.staleRemoved
        let serial = Self.counter.wrappingAdd(1, ordering: .relaxed).oldValue
        let pid = getpid()
        namespaceA = "sluice-\(pid)-\(serial)-a"
        namespaceB = "sluice-\(pid)-\(serial)-b"
        interfaceA = "sl\(pid)x\(serial)a"  // at most 2 + 7 + 1 + 3 + 1 = 14 bytes (IFNAMSIZ - 1 is 15)
        interfaceB = "sl\(pid)x\(serial)b"
        do {
            try setUp()
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    var pathA: String { "/var/run/netns/\(namespaceA)" }
    var pathB: String { "/var/run/netns/\(namespaceB)" }

    private func setUp() throws {
        for namespace in [namespaceA, namespaceB] {
            try Self.ip(["netns", "add", namespace])
            created.append(namespace)
        }
        try Self.ip(["link", "add", "name", interfaceA, "netns", namespaceA, "type", "veth",
                     "peer", "name", interfaceB, "netns", namespaceB])
        for (namespace, interface, mac, address) in [(namespaceA, interfaceA, macA, "198.18.0.1/30"),
                                                     (namespaceB, interfaceB, macB, "198.18.0.2/30")] {
            try Self.command(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw",
                              "net.ipv6.conf.\(interface).disable_ipv6=1"])
            try Self.ip(["-n", namespace, "link", "set", "dev", interface, "address", Self.macString(mac)])
            try Self.ip(["-n", namespace, "address", "add", address, "dev", interface])
            try Self.ip(["-n", namespace, "link", "set", "dev", interface, "up"])
        }
    }

    /// Once per test process: deletes namespaces a crashed earlier run left behind, recognised by
    /// this file's naming scheme (`sluice-<pid>-<serial>-a|b`) and a pid that no longer exists.
    private static let staleRemoved: Bool = {
        guard let directory = opendir("/var/run/netns") else { return true }
        defer { closedir(directory) }
        var stale: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            let parts = name.split(separator: "-")
            guard parts.count == 4, parts[0] == "sluice", let pid = Int32(parts[1]), Int(parts[2]) != nil,
                  parts[3] == "a" || parts[3] == "b", pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            stale.append(name)
        }
        for name in stale { _ = try? ip(["netns", "del", name]) }
        return true
    }()

    /// Deletes the namespaces this lab made (and with them the veth pair). Safe to call twice.
    func destroy() {
        for namespace in created.reversed() { _ = try? Self.ip(["netns", "del", namespace]) }
        created.removeAll()
    }

    static func macString(_ mac: [UInt8]) -> String {
        mac.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    private static func ip(_ arguments: [String]) throws { try command(["/usr/sbin/ip"] + arguments) }

    /// Runs a program to completion; throws with its stderr when it exits non-zero.
    static func command(_ arguments: [String]) throws {
        var errorPipe: [Int32] = [-1, -1]
        guard pipe(&errorPipe) == 0 else { throw NetnsError(description: "pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, errorPipe[1], 2)
        posix_spawn_file_actions_addclose(&actions, errorPipe[0])
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
        close(errorPipe[1])
        defer { close(errorPipe[0]) }
        guard rc == 0 else { throw NetnsError(description: "\(arguments[0]): posix_spawn errno \(rc)") }
        var stderrBytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while stderrBytes.count < 1 << 16 {
            let count = read(errorPipe[0], &chunk, chunk.count)
            if count <= 0 { break }
            stderrBytes += chunk[0..<count]
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7F) == 0
        let code = (status >> 8) & 0xFF
        guard exited, code == 0 else {
            let message = String(decoding: stderrBytes, as: UTF8.self)
            throw NetnsError(description: "\(arguments.joined(separator: " ")) failed (\(status)): \(message)")
        }
    }
}

/// A thread that enters a network namespace first and then runs `body`. Sockets it opens belong to
/// that namespace. `join()` waits for it and returns the body's error, if any.
final class NamespaceThread: @unchecked Sendable {  // unchecked: `thread` is touched by the starter only
    private var thread: pthread_t
    private let failure = Mutex<String?>(nil)

    private final class Start {
        let path: String
        let cpu: Int?
        let body: () throws -> Void
        let owner: NamespaceThread
        init(path: String, cpu: Int?, body: @escaping () throws -> Void, owner: NamespaceThread) {
            self.path = path
            self.cpu = cpu
            self.body = body
            self.owner = owner
        }
    }

    private init() { thread = pthread_t() }

    /// Starts the thread: setns into `path`, pin to `cpu` if given, then `body`.
    static func start(namespace path: String, cpu: Int? = nil, _ body: @escaping () throws -> Void) throws
        -> NamespaceThread
    {
        let handle = NamespaceThread()
        let start = Unmanaged.passRetained(Start(path: path, cpu: cpu, body: body, owner: handle)).toOpaque()
        let rc = pthread_create(&handle.thread, nil, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            do {
                try NetworkNamespace.enterOnCurrentThread(path: start.path)
                if let cpu = start.cpu { try? CPU.pinCurrentThread(to: cpu) }
                try start.body()
            } catch {
                start.owner.failure.withLock { $0 = "\(error)" }
            }
            return nil
        }, start)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw NetnsError(description: "pthread_create failed: \(rc)")
        }
        return handle
    }

    /// Waits for the thread; returns the error that ended its body, if any.
    func join() -> String? {
        pthread_join(thread, nil)
        return failure.withLock { $0 }
    }

    /// Runs `body` on a fresh thread in the namespace and waits for it.
    static func run(namespace path: String, _ body: @escaping () throws -> Void) throws {
        let thread = try start(namespace: path, body)
        if let failure = thread.join() { throw NetnsError(description: failure) }
    }
}

/// Results a thread leaves behind; read only after joining it (pthread_join orders the accesses).
final class Outcome<Value>: @unchecked Sendable {
    var value: Value?
}

/// The test traffic: 64-byte Ethernet/IPv4/UDP frames from 198.18.0.1 to 198.18.0.2, each carrying
/// a magic word and a sequence number. The destination MAC is nobody's (PACKET_OTHERHOST on the
/// receiving side), so the receiving namespace's IP stack drops them without answering, while
/// AF_PACKET sockets still see every one.
enum TestFrames {
    static let lengthBytes = 64
    static let magic: UInt64 = 0x534C_5549_4345_4146  // "SLUICEAF"
    static let magicOffset = 42
    static let sequenceOffset = 50
    static let destinationMAC: [UInt8] = [0x02, 0x53, 0x4C, 0xFF, 0xFF, 0xFE]

    /// Writes frame `sequence` into `bytes` (at least 64 bytes); the UDP source port cycles over
    /// `flowCount` values so the fanout hash has flows to spread.
    static func write(sequence: UInt64, flowCount: Int, lab: VethLab, into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= lengthBytes)
        var offset = 0
        func put(_ value: UInt8) { bytes[offset] = value; offset += 1 }
        func put16(_ value: UInt16) { put(UInt8(value >> 8)); put(UInt8(value & 0xFF)) }
        for byte in destinationMAC { put(byte) }
        for byte in lab.macA { put(byte) }
        put16(0x0800)
        let ipStart = offset
        put(0x45); put(0); put16(UInt16(lengthBytes - 14)); put16(UInt16(truncatingIfNeeded: sequence))
        put16(0x4000); put(64); put(17); put16(0)
        for byte in lab.addressA { put(byte) }
        for byte in lab.addressB { put(byte) }
        var sum: UInt32 = 0
        for index in stride(from: ipStart, to: ipStart + 20, by: 2) {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        bytes[ipStart + 10] = UInt8(~sum >> 8 & 0xFF)
        bytes[ipStart + 11] = UInt8(~sum & 0xFF)
        put16(UInt16(40_000 + Int(sequence % UInt64(max(flowCount, 1)))))
        put16(9)  // discard
        put16(UInt16(lengthBytes - 34))
        put16(0)
        bytes.storeBytes(of: magic.bigEndian, toByteOffset: magicOffset, as: UInt64.self)
        bytes.storeBytes(of: sequence.bigEndian, toByteOffset: sequenceOffset, as: UInt64.self)
        for index in (sequenceOffset + 8)..<lengthBytes { bytes[index] = 0 }
    }

    /// The sequence number of a test frame, or nil for anything else.
    static func sequence(of bytes: UnsafeRawBufferPointer, length: Int) -> UInt64? {
        guard length == lengthBytes,
              UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: magicOffset, as: UInt64.self)) == magic
        else { return nil }
        return UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: sequenceOffset, as: UInt64.self))
    }
}

/// Which sequence numbers arrived, and how often. Owned by one receiving thread.
struct SequenceTally {
    let total: Int
    private(set) var seen: [UInt8]
    private(set) var matched = 0
    private(set) var duplicates = 0
    private(set) var outOfRange = 0
    private(set) var others = 0

    init(total: Int) {
        self.total = total
        self.seen = [UInt8](repeating: 0, count: total)
    }

    mutating func record(_ bytes: UnsafeRawBufferPointer, length: Int) {
        guard let sequence = TestFrames.sequence(of: bytes, length: length) else {
            others += 1
            return
        }
        guard sequence < UInt64(total) else {
            outOfRange += 1
            return
        }
        if seen[Int(sequence)] != 0 { duplicates += 1 } else { matched += 1 }
        seen[Int(sequence)] &+= 1
    }

    /// Sequence numbers never seen.
    var missing: Int { seen.reduce(0) { $0 + ($1 == 0 ? 1 : 0) } }
}

/// Sends `total` test frames through `transmitter` at about `ratePerSecond` (0: as fast as the ring
/// takes them), in bursts of `burstCount`, then flushes. Bounded by `deadlineNs` (monotonic).
/// Returns how many frames were queued.
func sendTestFrames(_ transmitter: inout AFPacketTransmitter, pool: BufferPool, lab: VethLab, total: Int,
                    ratePerSecond: Double, burstCount: Int = 32, flowCount: Int = 1, deadlineNs: UInt64) -> Int {
    let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burstCount)
    defer { items.deallocate() }
    let start = Clock.monotonicNs()
    var sent = 0
    var pending = 0  // buffers in `items` not yet taken by the transmitter
    while sent < total, Clock.monotonicNs() < deadlineNs {
        if ratePerSecond > 0 {
            let due = Int(Double(Clock.monotonicNs() - start) * ratePerSecond / 1e9)
            if due <= sent { usleep(50); continue }
        }
        while pending < min(burstCount, total - sent) {
            guard let buffer = pool.allocate() else { break }
            let index = buffer.releaseIndex()
            TestFrames.write(sequence: UInt64(sent + pending), flowCount: flowCount, lab: lab, into: pool.bytes(at: index))
            pool.metadata(at: index).pointee = PacketMetadata()
            pool.metadata(at: index).pointee.length = UInt32(TestFrames.lengthBytes)
            items[pending] = UInt64(index)
            pending += 1
        }
        let burst = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[0..<pending]))
        sent += burst.taken
        // Keep what the ring could not take, in order, for the next turn.
        for position in burst.taken..<pending { items[position - burst.taken] = items[position] }
        pending -= burst.taken
        if burst.taken == 0 { usleep(20) }
    }
    for position in 0..<pending { pool.freeIndex(UInt32(items[position])) }
    _ = transmitter.flush(timeoutNs: 2_000_000_000)
    return sent
}
