// Path: Tests/SluiceMigrationTests/LinkMonitorTests.swift — free migration bandwidth: /proc/net/dev parsing
// (real text from these machines), the bounded sample ring and its rate, the capacity from the speed file or
// config, a loopback burst seen as used bandwidth, and the plan saying where its bandwidth comes from.
import Foundation
import Glibc
import SluiceMigration
import Testing

@Suite struct LinkMonitorTests {
    /// /proc/net/dev as read on this machine kind (kernel 6.x), two samples a moment apart.
    static let netDevA = """
        Inter-|   Receive                                                |  Transmit
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
            lo: 150969535346 17901783    0    0    0     0          0         0 150969535346 17901783    0    0    0     0       0          0
          ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
          eth0: 562761062   15518    0    0    0     0          0         0   611196    8355    0    0    0     0       0          0

        """
    static let netDevB = """
        Inter-|   Receive                                                |  Transmit
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
            lo: 151069535346 17901983    0    0    0     0          0         0 151069535346 17901983    0    0    0     0       0          0
          ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
          eth0: 562861062   15618    0    0    0     0          0         0   611196    8355    0    0    0     0       0          0

        """

    @Test func parsesRealNetDevText() throws {
        let counters = try InterfaceCounters.parseNetDev(Self.netDevA)
        #expect(counters.map(\.interface) == ["lo", "ifb0", "eth0"])
        #expect(counters[0] == InterfaceCounters(interface: "lo", receivedBytes: 150_969_535_346, transmittedBytes: 150_969_535_346))
        #expect(counters[2] == InterfaceCounters(interface: "eth0", receivedBytes: 562_761_062, transmittedBytes: 611_196))
        // This machine's own file parses too and lists lo.
        let live = try String(contentsOfFile: "/proc/net/dev", encoding: .utf8)
        #expect(try InterfaceCounters.parseNetDev(live).contains { $0.interface == "lo" })
    }

    @Test func malformedNetDevLinesSayWhichLineAndWhy() {
        #expect(throws: LinkMonitorError.malformedNetDev(line: 3, reason: "3 counters for eth0, expected 16")) {
            try InterfaceCounters.parseNetDev("Inter-| a\n face | b\n eth0: 1 2 3\n")
        }
        #expect(throws: LinkMonitorError.malformedNetDev(line: 3, reason: "no ':' after the interface name")) {
            try InterfaceCounters.parseNetDev("Inter-| a\n face | b\n garbage\n")
        }
        #expect(throws: LinkMonitorError.malformedNetDev(line: 1, reason: "byte counters of lo are not numbers")) {
            try InterfaceCounters.parseNetDev("lo: x 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n")
        }
    }

    @Test func theRingIsBoundedAndItsRateCoversTheWindow() {
        var ring = LinkSampleRing(capacity: 4)
        let t0 = ContinuousClock.now
        for i in 0..<10 {  // 1 MiB received and 2 MiB sent per second
            ring.append(LinkSample(at: t0 + .seconds(i), counters: InterfaceCounters(
                interface: "x", receivedBytes: UInt64(i) << 20, transmittedBytes: UInt64(i) << 21)))
        }
        #expect(ring.count == 4)
        #expect(ring.samples.map { $0.counters.receivedBytes >> 20 } == [6, 7, 8, 9])
        let rate = ring.usedRate(window: .seconds(2))
        #expect(rate.bytesPerSecond == 2 << 20 && rate.seconds == 2 && rate.samples == 3)
        // A window longer than the ring: what the ring holds.
        #expect(ring.usedRate(window: .seconds(60)).seconds == 3)
        // A counter reset counts as nothing for that step, never as a huge number.
        ring.append(LinkSample(at: t0 + .seconds(10), counters: InterfaceCounters(interface: "x", receivedBytes: 0, transmittedBytes: 0)))
        #expect(ring.usedRate(window: .seconds(1)).bytesPerSecond == 0)
    }

    /// A monitor over fixture files: netdev and a speed file in a temporary directory.
    static func fixtureMonitor(speed: String?) throws -> (LinkMonitor, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("linkmon-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/net/eth0", withIntermediateDirectories: true)
        try netDevA.write(toFile: dir + "/dev", atomically: true, encoding: .utf8)
        if let speed { try speed.write(toFile: dir + "/net/eth0/speed", atomically: true, encoding: .utf8) }
        let monitor = LinkMonitor(.init(interface: "eth0", configuredCapacityBytesPerSecond: 10 << 20, sampleCapacity: 8,
                                        netDevPath: dir + "/dev", sysClassNetRoot: dir + "/net"))
        return (monitor, dir)
    }

    @Test func capacityComesFromTheKernelWhenItKnowsElseFromConfig() throws {
        let (known, dir1) = try Self.fixtureMonitor(speed: "1000\n")
        defer { try? FileManager.default.removeItem(atPath: dir1) }
        #expect(known.capacity().bytesPerSecond == 125_000_000 && known.capacity().source == .kernel)
        let (unknown, dir2) = try Self.fixtureMonitor(speed: "-1\n")
        defer { try? FileManager.default.removeItem(atPath: dir2) }
        #expect(unknown.capacity().bytesPerSecond == 10 << 20 && unknown.capacity().source == .configured)
        let (absent, dir3) = try Self.fixtureMonitor(speed: nil)
        defer { try? FileManager.default.removeItem(atPath: dir3) }
        #expect(absent.capacity().source == .configured)

        // Two samples 100 000 bytes apart in the fixture: used > 0, free = capacity - used.
        try unknown.sample()
        try Self.netDevB.write(toFile: dir2 + "/dev", atomically: true, encoding: .utf8)
        Thread.sleep(forTimeInterval: 0.2)
        try unknown.sample()
        let link = unknown.bandwidth(window: .seconds(10))
        #expect(link.samples == 2 && link.usedBytesPerSecond > 0)
        #expect(link.usedBytesPerSecond <= 100_000 * 5 + 1)
        #expect(link.freeBytesPerSecond == (10 << 20) - link.usedBytesPerSecond)
        #expect(LinkBandwidth(interface: "x", capacityBytesPerSecond: 5, capacitySource: .configured, usedBytesPerSecond: 9,
                              windowSeconds: 1, samples: 2).freeBytesPerSecond == 0)
        #expect(throws: LinkMonitorError.noSuchInterface("eth9")) {
            try LinkMonitor(.init(interface: "eth9", configuredCapacityBytesPerSecond: 1, netDevPath: dir2 + "/dev")).sample()
        }
    }

    @Test func theInterfaceTowardAnAddressIsTheRoutesDevice() throws {
        #expect(try LinkMonitor.interface(toward: "127.0.0.1") == "lo")
        #expect(try LinkMonitor.parseRouteGet("198.18.0.2 dev veth-a src 198.18.0.1 uid 0 \n    cache \n", address: "198.18.0.2") == "veth-a")
        #expect(throws: LinkMonitorError.self) { try LinkMonitor.parseRouteGet("unreachable", address: "x") }
        #expect(throws: LinkMonitorError.self) { try LinkMonitor.interface(toward: "not;an address") }
        // Whatever the machine routes 198.18.0.1 through exists in /proc/net/dev.
        let dev = try LinkMonitor.interface(toward: "198.18.0.1")
        let live = try String(contentsOfFile: "/proc/net/dev", encoding: .utf8)
        #expect(try InterfaceCounters.parseNetDev(live).contains { $0.interface == dev })
    }

    @Test func aLoopbackBurstShowsAsUsedBandwidthAndLessFree() async throws {
        let burstBytes = 256 << 20
        let monitor = LinkMonitor(.init(interface: "lo", configuredCapacityBytesPerSecond: 8 << 30))
        try monitor.sample()
        let sent = try await Self.loopbackBurst(bytes: burstBytes)
        try monitor.sample()
        let link = monitor.bandwidth(window: .seconds(600))
        #expect(sent == burstBytes)
        #expect(link.interface == "lo" && link.capacitySource == .configured && link.capacityBytesPerSecond == 8 << 30)
        // Every byte crossed lo within the window (other processes' traffic only adds).
        #expect(Double(link.usedBytesPerSecond) * link.windowSeconds >= Double(burstBytes))
        #expect(link.freeBytesPerSecond < link.capacityBytesPerSecond)
        #expect(link.freeBytesPerSecond == (link.capacityBytesPerSecond > link.usedBytesPerSecond ? link.capacityBytesPerSecond - link.usedBytesPerSecond : 0))
        #expect(link.description.hasPrefix("measured free ") && link.description.contains(" on lo"))

        // The plan's bandwidth is the measured free bandwidth (capped by the host type) and says so.
        var inventory = MigrationTemplateTests.westmereHost
        let type = HostType(name: "t", cpuModel: "Westmere", maxVCPUs: 8, maxMemoryMiB: 4096, migrationBandwidthBytesPerSecond: 1 << 40)
        inventory.link = LinkBandwidth(interface: "lo", capacityBytesPerSecond: 100 << 20, capacitySource: .configured,
                                       usedBytesPerSecond: 60 << 20, windowSeconds: 2, samples: 20)
        let template = MigrationTemplate.build(vms: [MigrationTemplateTests.vm("a", MigrationTemplateTests.nehalem)], to: inventory, hostType: type)
        let plan = try #require(template.plans.first)
        #expect(plan.convergence.maxBandwidthBytesPerSecond == 40 << 20)
        #expect(template.bandwidthBytesPerSecond == 40 << 20)
        #expect(plan.convergence.reason.contains("measured free 40.0 MiB/s of capacity 100.0 MiB/s (host type's configured rate) on lo"))
        #expect(plan.convergence.link == inventory.link)
        // A link freer than the type allows: the type's rate, and the plan says it capped it.
        let capped = MigrationTemplate.build(vms: [MigrationTemplateTests.vm("a", MigrationTemplateTests.nehalem)],
                                             to: inventory, hostType: MigrationTemplateTests.bigType.with(bandwidth: 10 << 20))
        #expect(capped.bandwidthBytesPerSecond == 10 << 20 && capped.bandwidthSource.contains("capped at host type big's 10.0 MiB/s"))
        // Nothing measured: the configured rate, said so.
        let configured = MigrationTemplate.build(vms: [MigrationTemplateTests.vm("a", MigrationTemplateTests.nehalem)],
                                                 to: MigrationTemplateTests.westmereHost, hostType: MigrationTemplateTests.bigType)
        #expect(configured.bandwidthSource.contains("not measured") && configured.bandwidthBytesPerSecond == 100 << 20)
    }

    @Test func aMovesAchievedRateIsRecordedBounded() {
        let monitor = LinkMonitor(.init(interface: "lo", configuredCapacityBytesPerSecond: 1, observationCapacity: 2))
        for rate: UInt64 in [10, 20, 30] { monitor.recordAchieved(destination: "d", bytesPerSecond: rate) }
        #expect(monitor.observations.map(\.bytesPerSecond) == [20, 30])
        #expect(monitor.bandwidth(window: .seconds(1)).lastAchievedBytesPerSecond == 30)
    }

    /// Sends `bytes` from one TCP socket to another over 127.0.0.1 and returns what the receiver read.
    static func loopbackBurst(bytes: Int) async throws -> Int {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        #expect(bound == 0 && listen(listener, 1) == 0)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = address.sin_port
        let sender = Task.detached { () -> Int in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var to = sockaddr_in()
            to.sin_family = sa_family_t(AF_INET)
            to.sin_addr.s_addr = inet_addr("127.0.0.1")
            to.sin_port = port
            let ok = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard ok == 0 else { return -1 }
            let chunk = [UInt8](repeating: 0x5a, count: 1 << 20)
            var sent = 0
            while sent < bytes {
                let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, min($0.count, bytes - sent), Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return -1 }
                sent += n
            }
            return sent
        }
        let fd = accept(listener, nil, nil)
        #expect(fd >= 0)
        defer { close(fd) }
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while received < bytes {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            received += n
        }
        #expect(await sender.value == bytes)
        return received
    }
}

extension HostType {
    func with(bandwidth: UInt64) -> HostType {
        var copy = self
        copy.migrationBandwidthBytesPerSecond = bandwidth
        return copy
    }
}
