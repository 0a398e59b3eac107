// Path: Tests/SluiceGatewayTests/GatewayNamespaceSupport.swift — the gateway over an emulated WAN in
// throwaway namespaces: nsA (appliance, 198.18.0.1/24) — veth — nsW (`sluice wan`, no addresses) — veth —
// nsS (intermediate and `rclone serve s3`, 198.18.0.2/24), and a side door root — veth — nsA
// (198.18.1.x/30) through which the test process talks to the appliances without crossing the WAN.
import Glibc
import SluiceS3TestSupport
import SluiceTestSupport
import Synchronization
import Testing

/// Whether the namespace tests run: as root, or in CI (CI=true), where they fail without root.
enum GatewayNetns {
    static let isRoot = geteuid() == 0
    static let inCI = getenv("CI").map { String(cString: $0) == "true" } ?? false
    static var enabled: Bool { (isRoot && rcloneInstalled) || inCI }
    static let reason = "needs root (namespaces, veths, AF_PACKET) and rclone; CI=true runs it and fails without them"
}

struct GatewayLabError: Error, CustomStringConvertible {
    let description: String
}

/// Runs a set-up command; a non-zero exit is an error naming it.
func labCommand(_ arguments: [String]) throws {
    let result = try runCommand(arguments, timeoutMs: 20_000)
    guard result.status == 0 else {
        throw GatewayLabError(description: "\(arguments.joined(separator: " ")): exit \(result.status): \(result.stderr)")
    }
}

/// The namespaces and veths of one test. `destroy()` (also by deinit) deletes them: deleting a
/// namespace deletes its veth ends, and with them the peers (the side door's root end too).
final class GatewayLab: @unchecked Sendable {  // unchecked: set-up and teardown on the test's thread
    private static let counter = Atomic<Int>(0)

    let namespaceA: String
    let namespaceW: String
    let namespaceS: String
    let interfaceA: String
    let interfaceWA: String
    let interfaceWS: String
    let interfaceS: String
    let interfaceRoot: String
    let interfaceSide: String
    /// The appliance side's address on the side door (the root end is one below it).
    let sideAddress: String
    let rootAddress: String
    let addressA = "198.18.0.1"
    let addressS = "198.18.0.2"
    private var created: [String] = []

    init() throws {
        let serial = Self.counter.wrappingAdd(1, ordering: .relaxed).oldValue
        precondition(serial < 60, "side-door /30s are numbered in 198.18.1.0/24")
        let pid = getpid()
        namespaceA = "sluicegw-\(pid)-\(serial)-a"
        namespaceW = "sluicegw-\(pid)-\(serial)-w"
        namespaceS = "sluicegw-\(pid)-\(serial)-s"
        interfaceA = "g\(pid)x\(serial)a"  // at most 1 + 7 + 1 + 2 + 2 = 13 bytes
        interfaceWA = "g\(pid)x\(serial)wa"
        interfaceWS = "g\(pid)x\(serial)ws"
        interfaceS = "g\(pid)x\(serial)s"
        interfaceRoot = "g\(pid)x\(serial)r"
        interfaceSide = "g\(pid)x\(serial)ra"
        rootAddress = "198.18.1.\(4 * serial + 1)"
        sideAddress = "198.18.1.\(4 * serial + 2)"
        do {
            try setUp()
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    private func ip(_ arguments: [String]) throws { try labCommand(["/usr/sbin/ip"] + arguments) }

    private func exec(_ namespace: String, _ arguments: [String]) throws {
        try labCommand(["/usr/sbin/ip", "netns", "exec", namespace] + arguments)
    }

    private func setUp() throws {
        for namespace in [namespaceA, namespaceW, namespaceS] {
            try ip(["netns", "add", namespace])
            created.append(namespace)
        }
        try ip(["link", "add", "name", interfaceA, "netns", namespaceA, "type", "veth", "peer", "name", interfaceWA, "netns", namespaceW])
        try ip(["link", "add", "name", interfaceWS, "netns", namespaceW, "type", "veth", "peer", "name", interfaceS, "netns", namespaceS])
        try ip(["link", "add", "name", interfaceRoot, "type", "veth", "peer", "name", interfaceSide, "netns", namespaceA])
        for (namespace, interface) in [(namespaceA, interfaceA), (namespaceW, interfaceWA), (namespaceW, interfaceWS),
                                       (namespaceS, interfaceS), (namespaceA, interfaceSide)] {
            try exec(namespace, ["/usr/sbin/sysctl", "-qw", "net.ipv6.conf.\(interface).disable_ipv6=1"])
        }
        try labCommand(["/usr/sbin/sysctl", "-qw", "net.ipv6.conf.\(interfaceRoot).disable_ipv6=1"])
        try ip(["-n", namespaceA, "address", "add", "\(addressA)/24", "dev", interfaceA])
        try ip(["-n", namespaceS, "address", "add", "\(addressS)/24", "dev", interfaceS])
        try ip(["-n", namespaceA, "address", "add", "\(sideAddress)/30", "dev", interfaceSide])
        try ip(["address", "add", "\(rootAddress)/30", "dev", interfaceRoot])
        for (namespace, interface) in [(namespaceA, interfaceA), (namespaceW, interfaceWA), (namespaceW, interfaceWS),
                                       (namespaceS, interfaceS), (namespaceA, interfaceSide), (namespaceA, "lo"), (namespaceS, "lo")] {
            try ip(["-n", namespace, "link", "set", "dev", interface, "up"])
        }
        try ip(["link", "set", "dev", interfaceRoot, "up"])
        // Frames cross the emulator as bytes: the senders into it must finish checksums and segments (docs/WAN.md).
        try exec(namespaceA, ["/usr/sbin/ethtool", "-K", interfaceA, "tx", "off"])
        try exec(namespaceS, ["/usr/sbin/ethtool", "-K", interfaceS, "tx", "off"])
    }

    /// Deletes the namespaces this lab made. Safe to call twice.
    func destroy() {
        for namespace in created.reversed() { _ = try? runCommand(["/usr/sbin/ip", "netns", "del", namespace], timeoutMs: 20_000) }
        created.removeAll()
    }

    /// `arguments` as a child in `namespace` (`ip netns exec` execs it: the child's pid is the program's).
    func spawn(in namespace: String, _ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(["/usr/sbin/ip", "netns", "exec", namespace] + arguments)
    }
}

/// A child that printed `listening on HOST:PORT ...` (the gateway's servers) within `timeoutMs`.
func awaitListening(_ child: ChildProcess, _ what: String, timeoutMs: Int = 30_000) throws -> String {
    guard let line = child.readLine(timeoutMs: timeoutMs), line.hasPrefix("listening on ") else {
        throw GatewayLabError(description: "\(what) did not start: \(child.stderrText)")
    }
    return line
}

/// SIGTERM, then its remaining stdout lines (the counters); SIGKILL if it does not exit in 10 s.
func stop(_ child: ChildProcess) -> [String] {
    child.signal(SIGTERM)
    let lines = child.remainingLines(timeoutMs: 10_000)
    if child.wait(timeoutMs: 10_000) == nil { child.signal(SIGKILL) }
    _ = child.wait(timeoutMs: 5_000)
    return lines
}

/// The value of `name` in a `name value name value ...` line.
func counterValue(_ line: String, _ name: String) -> UInt64? {
    let words = line.split(separator: " ")
    guard let index = words.firstIndex(where: { $0 == name }), index + 1 < words.count else { return nil }
    return UInt64(words[index + 1])
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
