// Path: Tests/SluiceWANTests/WANLab.swift — three throwaway namespaces joined through the emulator
// (nsA 198.18.0.1/24 — veth — nsW, no addresses — veth — nsB 198.18.0.2/24), an ICMP ping from
// nsA, and test frames sent and counted with AF_PACKET. NetnsSupport.swift (shared with
// SluicePacketIOTests) gives the environment check, the command runner and namespace threads.
import Glibc
import SluiceCore
import SluicePacketIO
import SluiceWAN
import Synchronization
import Testing

/// nsA — veth — nsW — veth — nsB. Names carry the pid and a counter; `destroy()` (also run by
/// deinit) deletes the namespaces and with them the veth pairs. Call it in a `defer`.
final class WANLab: @unchecked Sendable {  // unchecked: set-up and teardown happen on the test's thread
    private static let counter = Atomic<Int>(0)

    let namespaceA: String
    let namespaceW: String
    let namespaceB: String
    /// nsA's end, nsW's two ends (facing A and B), nsB's end.
    let interfaceA: String
    let interfaceWA: String
    let interfaceWB: String
    let interfaceB: String
    let macA: [UInt8] = [0x02, 0x53, 0x57, 0x00, 0x00, 0x01]
    let macB: [UInt8] = [0x02, 0x53, 0x57, 0x00, 0x00, 0x02]
    let addressA: [UInt8] = [198, 18, 0, 1]
    let addressB: [UInt8] = [198, 18, 0, 2]
    private var created: [String] = []

    init() throws {
        _ = Self.staleRemoved
        let serial = Self.counter.wrappingAdd(1, ordering: .relaxed).oldValue
        let pid = getpid()
        namespaceA = "sluicewan-\(pid)-\(serial)-a"
        namespaceW = "sluicewan-\(pid)-\(serial)-w"
        namespaceB = "sluicewan-\(pid)-\(serial)-b"
        interfaceA = "w\(pid)x\(serial)a"  // at most 1 + 7 + 1 + 3 + 2 = 14 bytes
        interfaceWA = "w\(pid)x\(serial)wa"
        interfaceWB = "w\(pid)x\(serial)wb"
        interfaceB = "w\(pid)x\(serial)b"
        do {
            try setUp()
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    var pathA: String { "/var/run/netns/\(namespaceA)" }
    var pathW: String { "/var/run/netns/\(namespaceW)" }
    var pathB: String { "/var/run/netns/\(namespaceB)" }

    private func setUp() throws {
        for namespace in [namespaceA, namespaceW, namespaceB] {
            try Self.ip(["netns", "add", namespace])
            created.append(namespace)
        }
        try Self.ip(["link", "add", "name", interfaceA, "netns", namespaceA, "type", "veth",
                     "peer", "name", interfaceWA, "netns", namespaceW])
        try Self.ip(["link", "add", "name", interfaceWB, "netns", namespaceW, "type", "veth",
                     "peer", "name", interfaceB, "netns", namespaceB])
        for (namespace, interface) in [(namespaceA, interfaceA), (namespaceW, interfaceWA), (namespaceW, interfaceWB),
                                       (namespaceB, interfaceB)] {
            try VethLab.command(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw",
                                 "net.ipv6.conf.\(interface).disable_ipv6=1"])
        }
        for (namespace, interface, mac, address) in [(namespaceA, interfaceA, macA, "198.18.0.1/24"),
                                                     (namespaceB, interfaceB, macB, "198.18.0.2/24")] {
            try Self.ip(["-n", namespace, "link", "set", "dev", interface, "address", VethLab.macString(mac)])
            try Self.ip(["-n", namespace, "address", "add", address, "dev", interface])
        }
        for (namespace, interface) in [(namespaceA, interfaceA), (namespaceW, interfaceWA), (namespaceW, interfaceWB),
                                       (namespaceB, interfaceB), (namespaceA, "lo"), (namespaceB, "lo")] {
            try Self.ip(["-n", namespace, "link", "set", "dev", interface, "up"])
        }
    }

    /// Once per test process: deletes namespaces a crashed earlier run left (this file's naming
    /// scheme and a pid that no longer exists).
    private static let staleRemoved: Bool = {
        guard let directory = opendir("/var/run/netns") else { return true }
        defer { closedir(directory) }
        var stale: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            let parts = name.split(separator: "-")
            guard parts.count == 4, parts[0] == "sluicewan", let pid = Int32(parts[1]), Int(parts[2]) != nil,
                  ["a", "w", "b"].contains(parts[3]), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            stale.append(name)
        }
        for name in stale { _ = try? ip(["netns", "del", name]) }
        return true
    }()

    /// Deletes the namespaces this lab made. Safe to call twice.
    func destroy() {
        for namespace in created.reversed() { _ = try? Self.ip(["netns", "del", namespace]) }
        created.removeAll()
    }

    private static func ip(_ arguments: [String]) throws { try VethLab.command(["/usr/sbin/ip"] + arguments) }

    /// The emulator's configuration for this lab (a: nsW's end facing nsA, b: the one facing nsB).
    func link(_ aToB: WANDirectionSettings, _ bToA: WANDirectionSettings? = nil, seed: UInt64 = 1) -> WANConfiguration {
        WANConfiguration(name: "lab", interfaceA: interfaceWA, interfaceB: interfaceWB, aToB: aToB, bToA: bToA ?? aToB,
                         seed: seed, namespacePath: pathW)
    }
}

/// ICMP echo from a thread in `namespace` to `destination`: `count` requests `intervalMs` apart,
/// each waiting up to `timeoutMs` for its reply. Returns the round-trip times (ns) of the replies
/// that came, in order; lost ones are left out. A raw ICMP socket (root).
func ping(from namespace: String, to destination: [UInt8], count: Int, intervalMs: Int, timeoutMs: Int) throws -> [UInt64] {
    let result = Outcome<[UInt64]>()
    try NamespaceThread.run(namespace: namespace) {
        let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP))
        guard fd >= 0 else { throw NetnsError(description: "socket(SOCK_RAW, ICMP): errno \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(destination[0]) | UInt32(destination[1]) << 8 | UInt32(destination[2]) << 16
            | UInt32(destination[3]) << 24
        let identifier = UInt16(truncatingIfNeeded: getpid())
        var rtts: [UInt64] = []
        var reply = [UInt8](repeating: 0, count: 2048)
        for sequence in 0..<count {
            var request = [UInt8](repeating: 0, count: 64)
            request[0] = 8  // echo request
            request[4] = UInt8(identifier >> 8)
            request[5] = UInt8(identifier & 0xFF)
            request[6] = UInt8(sequence >> 8)
            request[7] = UInt8(sequence & 0xFF)
            for index in 8..<64 { request[index] = UInt8(truncatingIfNeeded: index) }
            let checksum = internetChecksum(request)
            request[2] = UInt8(checksum >> 8)
            request[3] = UInt8(checksum & 0xFF)
            let sentNs = Clock.monotonicNs()
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, request, request.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard sent == request.count else { throw NetnsError(description: "sendto(ICMP): errno \(errno)") }
            // Wait for this sequence's reply (skipping anything else), bounded by the timeout.
            let deadlineNs = sentNs + UInt64(timeoutMs) * 1_000_000
            while Clock.monotonicNs() < deadlineNs {
                let received = recv(fd, &reply, reply.count, 0)
                guard received > 0 else { break }
                let headerBytes = Int(reply[0] & 0x0F) * 4
                guard received >= headerBytes + 8, reply[headerBytes] == 0,
                      UInt16(reply[headerBytes + 4]) << 8 | UInt16(reply[headerBytes + 5]) == identifier,
                      Int(UInt16(reply[headerBytes + 6]) << 8 | UInt16(reply[headerBytes + 7])) == sequence
                else { continue }
                rtts.append(Clock.monotonicNs() - sentNs)
                break
            }
            let nextNs = sentNs + UInt64(intervalMs) * 1_000_000
            let now = Clock.monotonicNs()
            if nextNs > now { usleep(useconds_t((nextNs - now) / 1_000)) }
        }
        result.value = rtts
    }
    return result.value ?? []
}

func internetChecksum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    for index in stride(from: 0, to: bytes.count - 1, by: 2) { sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1]) }
    if bytes.count % 2 == 1 { sum += UInt32(bytes[bytes.count - 1]) << 8 }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    return ~UInt16(sum)
}

/// Writes test frame `sequence` (TestFrames' layout: 64 bytes, magic and sequence number) from
/// nsA's MAC to nobody's MAC, so nsB's stack ignores it while AF_PACKET counts it.
func writeLabFrame(sequence: UInt64, lab: WANLab, into bytes: UnsafeMutableRawBufferPointer) {
    precondition(bytes.count >= TestFrames.lengthBytes)
    for index in 0..<TestFrames.lengthBytes { bytes[index] = 0 }
    for (index, byte) in TestFrames.destinationMAC.enumerated() { bytes[index] = byte }
    for (index, byte) in lab.macA.enumerated() { bytes[6 + index] = byte }
    bytes[12] = 0x08
    bytes[13] = 0x00
    var header: [UInt8] = [0x45, 0, 0, UInt8(TestFrames.lengthBytes - 14), 0, 0, 0x40, 0, 64, 17, 0, 0]
    header += lab.addressA + lab.addressB
    let checksum = internetChecksum(header)
    header[10] = UInt8(checksum >> 8)
    header[11] = UInt8(checksum & 0xFF)
    for (index, byte) in header.enumerated() { bytes[14 + index] = byte }
    let udp: [UInt8] = [0x9C, 0x40, 0x00, 0x09, 0, UInt8(TestFrames.lengthBytes - 34), 0, 0]
    for (index, byte) in udp.enumerated() { bytes[34 + index] = byte }
    bytes.storeBytes(of: TestFrames.magic.bigEndian, toByteOffset: TestFrames.magicOffset, as: UInt64.self)
    bytes.storeBytes(of: sequence.bigEndian, toByteOffset: TestFrames.sequenceOffset, as: UInt64.self)
}

/// Sends `total` test frames from nsA at about `ratePerSecond` (0: as fast as the ring takes
/// them) while a thread in nsB counts those that arrive, until `settleMs` after the last one is
/// sent. Returns (frames queued by the sender, the tally at nsB).
func sendAndCount(lab: WANLab, total: Int, ratePerSecond: Double, settleMs: Int) throws -> (sent: Int, tally: SequenceTally) {
    let tally = Outcome<SequenceTally>()
    let ready = Atomic<Bool>(false)
    let done = Atomic<Bool>(false)
    let receiverThread = try NamespaceThread.start(namespace: lab.pathB) {
        let pool = try BufferPool(bufferCount: 512, bufferSizeBytes: 2048)
        var receiver = try AFPacketReceiver(configuration: AFPacketRXConfiguration(interface: lab.interfaceB), pool: pool)
        var counted = SequenceTally(total: total)
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
        defer { items.deallocate() }
        ready.store(true, ordering: .releasing)
        // Bounded: stops once told to (after the settle time) or after 60 s.
        let deadline = Clock.monotonicNs() + 60_000_000_000
        while !done.load(ordering: .acquiring), Clock.monotonicNs() < deadline {
            let count = try receiver.receive(into: items, timeoutMs: 5)
            for position in 0..<count {
                let index = UInt32(items[position])
                counted.record(UnsafeRawBufferPointer(pool.bytes(at: index)), length: Int(pool.metadata(at: index).pointee.length))
                pool.freeIndex(index)
            }
        }
        tally.value = counted
    }
    while !ready.load(ordering: .acquiring) { usleep(1_000) }
    let sent = Outcome<Int>()
    try NamespaceThread.run(namespace: lab.pathA) {
        let pool = try BufferPool(bufferCount: 512, bufferSizeBytes: 2048)
        var transmitter = try AFPacketTransmitter(configuration: AFPacketTXConfiguration(interface: lab.interfaceA), pool: pool)
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 32)
        defer { items.deallocate() }
        let start = Clock.monotonicNs()
        let deadline = start + 30_000_000_000
        var queued = 0
        while queued < total, Clock.monotonicNs() < deadline {
            if ratePerSecond > 0, Double(Clock.monotonicNs() - start) * ratePerSecond / 1e9 <= Double(queued) {
                usleep(50)
                continue
            }
            let burst = ratePerSecond > 0 ? 1 : min(32, total - queued)
            var count = 0
            while count < burst, let buffer = pool.allocate() {
                let index = buffer.releaseIndex()
                writeLabFrame(sequence: UInt64(queued + count), lab: lab, into: pool.bytes(at: index))
                pool.metadata(at: index).pointee = PacketMetadata()
                pool.metadata(at: index).pointee.length = UInt32(TestFrames.lengthBytes)
                items[count] = UInt64(index)
                count += 1
            }
            let taken = transmitter.transmitOrDrop(UnsafeBufferPointer(rebasing: items[0..<count]))
            queued += taken
            if taken < count { usleep(100) }
        }
        _ = transmitter.flush(timeoutNs: 2_000_000_000)
        sent.value = queued
    }
    usleep(useconds_t(settleMs * 1_000))
    done.store(true, ordering: .releasing)
    if let failure = receiverThread.join() { throw NetnsError(description: failure) }
    return (sent.value ?? 0, tally.value ?? SequenceTally(total: total))
}
