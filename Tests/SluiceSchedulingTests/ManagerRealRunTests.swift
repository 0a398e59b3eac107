// Path: Tests/SluiceSchedulingTests/ManagerRealRunTests.swift — the issue's real run, one tick per half second:
// two network namespaces ("host a", "host b") joined by a veth pair (198.18.77.1/24 - .2/24); a QEMU guest
// (tcg, the test image and its agent) in a; `sluice replay --iface <a's veth> --shape 3,1` (the traffic
// controller dividing the port between two sources) makes the link busy for the first `busyTicks` of
// every `seasonTicks`-tick season; the manager samples both veths' /proc/<pid>/net/dev live (no history
// written beforehand), learns the season over two of them, books a move asked for in the third season's
// busy period after that period, and runs it through the executor over TCP across the same veth into a
// destination QEMU started in b (`ip netns exec`); a request whose window closes in the busy period is
// refused up front with the reason. Namespaces, QEMU and replay processes are always cleaned up.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SluiceMigration
import SluiceMigrationTestSupport
import SluiceScheduling
import SluiceService
import SluiceTestSupport
import Synchronization
import Testing

@Suite(.serialized) struct ManagerRealRunTests {
    /// Real seconds per tick: the shortest `TimeScale` allows, so that two learnt seasons cost 44 s, not 60.
    static let tickSeconds = 0.5
    /// 44 ticks (22 s): 12 busy (6 s), 32 free (16 s), room for the idle guest's ~10 s move (its first
    /// pass is measured; ~21 ticks): booked at tick 14 in the runs that set this (2 ticks after the busy
    /// period, the first 5-tick step after the request at tick 4), it ended a few seconds before the next.
    static let seasonTicks = 44
    static let busyTicks = 12
    /// A season and its busy period in real seconds (what the traffic thread waits and sends for).
    static var seasonSeconds: Double { Double(seasonTicks) * tickSeconds }
    static var busySeconds: Double { Double(busyTicks) * tickSeconds }
    static let link = 10_000_000.0  // both hosts' link (bytes/s): a's veth is shaped to it (tbf)
    static let frameBytes = 1514
    static let busyRate = 6_000     // frames/s: 9.1 MB/s offered, leaving under 1 MB/s of the link

    /// A classic pcap of `count` Ethernet/IPv4/UDP frames of `frameBytes` (198.18.77.1 -> a MAC nobody has),
    /// from two source MACs (02:00:00:00:00:01 three frames in four, :02 the fourth): two traffic sources.
    static func writeCapture(_ path: String, count: Int) {
        var bytes: [UInt8] = []
        func le32(_ v: UInt32) { bytes += [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)] }
        le32(0xa1b2_c3d4); bytes += [2, 0, 4, 0]; le32(0); le32(0); le32(65_535); le32(1)
        var frame = [UInt8](repeating: 0, count: frameBytes)
        frame[0..<12] = [2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1]
        frame[12] = 0x08
        let ipLength = frameBytes - 14
        frame[14..<34] = [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0,
                          198, 18, 77, 1, 198, 18, 77, 2]
        let udpLength = ipLength - 20
        frame[34..<42] = [0x30, 0x39, 0x30, 0x3a, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]
        for index in 0..<count {
            le32(UInt32(index / 1000)); le32(UInt32(index % 1000) * 1000); le32(UInt32(frameBytes)); le32(UInt32(frameBytes))
            frame[11] = index % 4 == 3 ? 2 : 1
            bytes += frame
        }
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    static func write<T: Encodable>(_ value: T, _ path: String) throws {
        try JSONEncoder().encode(value).write(to: URL(fileURLWithPath: path))
    }

    /// Runs `argv`, waits (at most 30 s); its exit status, or nil.
    @discardableResult
    static func run(_ argv: [String]) -> Int32? {
        guard let child = try? ChildProcess(argv) else { return nil }
        if let status = child.wait(timeoutMs: 30_000) { return status }
        child.signal(SIGKILL)
        _ = child.wait(timeoutMs: 5_000)
        return nil
    }

    /// RX and TX bytes of `interface` in /proc/<pid>/net/dev (the process's network namespace).
    static func counters(pid: pid_t, interface: String) -> (rx: UInt64, tx: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/net/dev", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == interface else { continue }
            let fields = parts[1].split(separator: " ")
            guard fields.count >= 9, let rx = UInt64(fields[0]), let tx = UInt64(fields[8]) else { return nil }
            return (rx, tx)
        }
        return nil
    }

    /// Set by the test, read by the traffic thread.
    final class Flag: Sendable {
        let value = Mutex(false)
        let done = Mutex(false)
        let log = Mutex<[String]>([])
    }

    /// The schedule: at the start of every season (tick % seasonTicks == 0, ticks of `tickSeconds` since the
    /// Unix epoch) one `sluice replay` on `veth` in `netns` sends busyRate frames/s for busySeconds through
    /// the traffic controller (`--shape 3,1`). At most `seasons` busy periods; stops when `stop` is set.
    static func startTraffic(binary: String, capture: String, netns: String, veth: String, seasons: Int, stop: Flag) {
        let thread = Thread {
            defer { stop.done.withLock { $0 = true } }
            for _ in 0..<seasons {
                let now = Date().timeIntervalSince1970
                let boundary = (now / seasonSeconds).rounded(.up) * seasonSeconds
                while Date().timeIntervalSince1970 < boundary - 0.15 {
                    if stop.value.withLock({ $0 }) { return }
                    usleep(50_000)
                }
                guard let child = try? ChildProcess(["/usr/sbin/ip", "netns", "exec", netns, binary, "replay", capture,
                                                     "--iface", veth, "--rate", "\(busyRate)", "--loop", "\(Int(Double(busyRate) * busySeconds) / 1_000)",
                                                     "--wait-mode", "interrupt", "--source", "02:00:00:00:00:01=0",
                                                     "--source", "02:00:00:00:00:02=1", "--shape", "3,1"]) else {
                    stop.log.withLock { $0.append("replay did not start") }
                    return
                }
                var status: Int32?
                for _ in 0..<(Int(busySeconds) + 10) * 10 where status == nil {
                    status = child.wait(timeoutMs: 100)
                    if stop.value.withLock({ $0 }) { break }
                }
                if status == nil { child.signal(SIGKILL); _ = child.wait(timeoutMs: 5_000) }
                let lines = child.remainingLines(timeoutMs: 200).filter { $0.hasPrefix("traffic:") || $0.hasPrefix("         0") || $0.hasPrefix("         1") }
                stop.log.withLock { $0.append("season at \(Int(boundary)): status \(status.map(String.init) ?? "killed"); \(lines.prefix(3).joined(separator: " | "))") }
                if stop.value.withLock({ $0 }) { return }
            }
        }
        thread.start()
    }

    @Test(.timeLimit(.minutes(7)))
    func aMoveIsBookedAfterTheLearntBusyPeriodAndCrossesTheVeth() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else {
            if MigrationTestEnvironment.isCI { Issue.record("the real run needs root and ip(8)") } else { print("skipped: needs root and ip(8)") }
            return
        }
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let qemu = try #require(MigrationTestEnvironment.qemuBinary)
        let image = try GuestImage.prepared()
        var template = Array("/tmp/sluice-mgr.XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: root) }

        // Two namespaces joined by a veth pair.
        let tag = Int(getpid()) % 100_000
        let nsA = "slmA\(tag)", nsB = "slmB\(tag)", vethA = "slva\(tag)", vethB = "slvb\(tag)"
        defer { Self.run(["/usr/sbin/ip", "netns", "del", nsA]); Self.run(["/usr/sbin/ip", "netns", "del", nsB]) }
        for argv in [["netns", "add", nsA], ["netns", "add", nsB], ["link", "add", vethA, "type", "veth", "peer", "name", vethB],
                     ["link", "set", vethA, "netns", nsA], ["link", "set", vethB, "netns", nsB],
                     ["-n", nsA, "addr", "add", "198.18.77.1/24", "dev", vethA], ["-n", nsB, "addr", "add", "198.18.77.2/24", "dev", vethB],
                     ["-n", nsA, "link", "set", vethA, "up"], ["-n", nsB, "link", "set", vethB, "up"],
                     ["-n", nsA, "link", "set", "lo", "up"], ["-n", nsB, "link", "set", "lo", "up"]] {
            try #require(Self.run(["/usr/sbin/ip"] + argv) == 0, "ip \(argv.joined(separator: " "))")
        }
        // The link is real, not notional: a's side sends at most `link` bytes/s (tbf; the replayed traffic
        // goes through the qdisc, the migration stream too), so the two contend for it.
        let shaping = ["-n", nsA, "qdisc", "add", "dev", vethA, "root", "tbf", "rate", "\(Int(Self.link) * 8 / 1_000_000)mbit",
                       "burst", "32kb", "latency", "100ms"]
        try #require(Self.run(["/usr/sbin/tc"] + shaping) == 0, "tc \(shaping.joined(separator: " "))")
        // A process in each namespace whose /proc/<pid>/net/dev the samplers read.
        let holderA = try ChildProcess(["/usr/sbin/ip", "netns", "exec", nsA, "sleep", "900"])
        let holderB = try ChildProcess(["/usr/sbin/ip", "netns", "exec", nsB, "sleep", "900"])
        defer { for holder in [holderA, holderB] { holder.signal(SIGKILL); _ = holder.wait(timeoutMs: 5_000) } }

        // The guest on "host a" (in a's namespace), its template for "host b".
        let spec = GuestLaunchSpec(cpuModel: "Nehalem",
                                   shape: VMShape(bootVCPUs: 1, maxVCPUs: 2, bootMemoryMiB: 256, memorySlots: 2, maxMemoryMiB: 1024),
                                   kernel: image.kernel.path, initrd: image.initramfs.path, append: "console=ttyS0 panic=-1")
        let sourceDirectory = root + "/guest"
        let process = try await QEMUProcess.launch(QEMUProcess.Configuration(
            binary: "/usr/sbin/ip", arguments: ["netns", "exec", nsA, qemu] + spec.arguments(runDirectory: sourceDirectory, incoming: false),
            runDirectory: sourceDirectory))
        defer { process.kill() }
        let guest = RunningGuest(name: "mover", spec: spec, process: process)
        let agent: AgentChannelConnection
        do { agent = try await AgentChannelConnection.connect(socketPath: guest.agentSocketPath, timeout: .seconds(180)) } catch {
            let serial = (try? String(contentsOfFile: GuestLaunchSpec.serialLogPath(runDirectory: sourceDirectory), encoding: .utf8)) ?? ""
            Issue.record("the guest's agent did not answer: \(error)\n--- serial ---\n\(serial.suffix(3000))")
            return
        }
        let report = try await agent.report()
        await agent.close()
        let probe = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: ["-machine", "q35", "-nodefaults", "-display", "none", "-m", "64M", "-S"], runDirectory: root + "/probe"))
        let hostType = HostType(name: "b", cpuModel: "Westmere", maxVCPUs: 4, maxMemoryMiB: 2048, migrationBandwidthBytesPerSecond: 16 << 20)
        let inventory = try await HostInventory.read(from: probe.qmp, hostType: hostType)
        probe.kill()
        let description = VMDescription(name: "mover", report: report, cpuModel: spec.cpuModel, shape: spec.shape, devices: ["virtio-serial-pci"])
        let moveTemplate = MigrationTemplate.build(vms: [description], to: inventory, hostType: hostType,
                                                   policy: MigrationPolicy(allowPostcopy: false))
        try #require(moveTemplate.plans.count == 1, "\(moveTemplate.proofs)")
        try Self.write(spec, root + "/spec.json")
        try Self.write(moveTemplate, root + "/template.json")
        let files = GuestFiles(qmp: GuestLaunchSpec.operatorQMPPath(runDirectory: sourceDirectory), agent: guest.agentSocketPath,
                               spec: root + "/spec.json", template: root + "/template.json")

        // Start 6 ticks (3 s) before a season begins: the manager then sees two whole seasons before the request.
        let scale = TimeScale(tickSeconds: Self.tickSeconds)
        let season = Self.seasonTicks
        let lead = 6
        while scale.tick(atUnixSeconds: Date().timeIntervalSince1970) % season != season - lead { try await Task.sleep(for: .milliseconds(50)) }
        let first = scale.tick(atUnixSeconds: Date().timeIntervalSince1970) + lead  // the first season's start

        // The busy schedule: `sluice replay` shaped by the traffic controller, on for busyTicks of each season.
        Self.writeCapture(root + "/busy.pcap", count: 1_000)
        let traffic = Flag()
        Self.startTraffic(binary: binary, capture: root + "/busy.pcap", netns: nsA, veth: vethA, seasons: 4, stop: traffic)
        defer {
            traffic.value.withLock { $0 = true }
            for _ in 0..<300 where !traffic.done.withLock({ $0 }) { usleep(100_000) }
        }

        // No history: the manager learns from live samples only (history files start empty).
        let hosts = [
            ScheduleHost(name: "a", linkBytesPerSecond: Self.link, migrationSlots: 1, memoryBytes: 8 * 1_073_741_824,
                         history: root + "/a.history", interface: vethA, runRoot: root + "/dst-a"),
            ScheduleHost(name: "b", linkBytesPerSecond: Self.link, migrationSlots: 1, memoryBytes: 8 * 1_073_741_824,
                         history: root + "/b.history", interface: vethB, runRoot: root + "/dst-b",
                         netns: nsB, migrationAddress: "198.18.77.2:4444"),
        ]
        var configuration = MigrationManager.Configuration(hosts: ScheduleHostsFile(hosts: hosts), timeScale: scale,
                                                           statePath: root + "/state.json")
        configuration.seasonTicks = season
        configuration.minimumRateBytesPerSecond = 3 * 1_048_576
        let runner = ExecutorMoveRunner(qemuBinary: qemu)
        var destinationPID: Int32?
        defer { if let destinationPID { kill(destinationPID, SIGKILL) } }
        let samplers: [any HostSampler] = [
            ProcNetDevSampler(interface: vethA, memoryCapBytes: 8 * 1_073_741_824, netDevPath: "/proc/\(holderA.pid)/net/dev"),
            ProcNetDevSampler(interface: vethB, memoryCapBytes: 8 * 1_073_741_824, netDevPath: "/proc/\(holderB.pid)/net/dev"),
        ]
        let manager = try MigrationManager(configuration, samplers: samplers, runner: runner)
        let ticking = Task { await manager.run() }
        defer { ticking.cancel() }

        // Two seasons observed live; the request comes 4 ticks (2 s) into the third season's busy period.
        let seasonStart = first + 2 * season
        let asking = seasonStart + 4
        while scale.tick(atUnixSeconds: Date().timeIntervalSince1970) < asking { try await Task.sleep(for: .milliseconds(100)) }
        let now = scale.tick(atUnixSeconds: Date().timeIntervalSince1970)
        let sample = await manager.lastSample(host: 0)
        print("host a sample 4 ticks into the busy period: \(sample.map { "\(Int($0.usedBytesPerSecond ?? -1)) B/s from \($0.source)" } ?? "none")")
        for line in traffic.log.withLock({ $0 }) { print("traffic: \(line)") }
        func request(_ id: Int, window: Int) -> ManagerRequestFile {
            ManagerRequestFile(request: ScheduleRequestFile(
                id: id, vm: "mover", source: "a", candidates: ["b"], earliestStart: now, deadline: now + window,
                memoryBytes: Double(256 << 20), dirtyBytesPerSecond: Double(report.dirtiedPagesPerSecond * 4096),
                maxBandwidth: Double(16 << 20), autoConverge: false), guest: files)
        }
        // A window of 6 ticks (3 s) closes inside the busy period (at its tick 10): refused up front, with the reason.
        let short = await manager.submit(request(1, window: 6))
        guard case .success(.refused(let verdicts)) = short else { Issue.record("short window: \(short)"); return }
        print("refused request 1: \(verdicts)")
        #expect("\(verdicts)".contains("link"), "refused for the busy link")
        let asked = await manager.submit(request(2, window: 90))
        guard case .success(.booked(let booking)) = asked else { Issue.record("not booked: \(asked)"); return }
        let busyEnds = seasonStart + Self.busyTicks
        print("booked request 2 at tick \(booking.start - seasonStart) of the season (busy: 0-\(Self.busyTicks - 1)), "
              + "predicted \(scale.realSeconds(booking.prediction.totalSeconds)) s, cap \(booking.rates.prefix(3).map { Int(scale.realRate($0)) }) B/s")
        #expect(booking.start >= busyEnds - 1, "booked inside the learnt busy period")
        let before = Self.counters(pid: holderB.pid, interface: vethB)

        // Wait for the move to run and finish.
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(120)
        while await manager.finished.isEmpty, clock.now < deadline { try await Task.sleep(for: .seconds(1)) }
        let done = try #require(await manager.finished.first, "the move did not finish in 120 s")
        destinationPID = done.report?.destinationPID
        let after = Self.counters(pid: holderB.pid, interface: vethB)
        print("request 2: predicted \(String(format: "%.1f", done.predictedSeconds)) s (finish \(String(format: "%.1f", done.predictedFinishUnix))), "
              + "actual \(done.actualSeconds.map { String(format: "%.1f", $0) } ?? "-") s (finish \(done.finishedUnix.map { String(format: "%.1f", $0) } ?? "-")), "
              + "started \(String(format: "%+.1f", done.startedUnix - done.bookedStartUnix)) s after the booked start, wall \(String(format: "%.1f", done.wallSeconds)) s, "
              + "\(done.report?.transferredBytes ?? 0) bytes, downtime \(done.report?.downtimeMs ?? 0) ms; failure: \(done.failure ?? "none")")
        #expect(done.failure == nil)
        let actual = try #require(done.actualSeconds)
        let transferred = Double(done.report?.transferredBytes ?? 0)
        let crossed = Double((after?.rx ?? 0) &- (before?.rx ?? 0))
        print("\(vethB) received \(Int(crossed)) bytes during the move (QEMU sent \(Int(transferred)))")
        #expect(crossed >= 0.9 * transferred, "the migration stream crossed the veth")
        #expect(done.startedUnix - done.bookedStartUnix < 3)
        #expect(actual <= 1.5 * done.predictedSeconds + 5)
        // The first pass was measured on the guest (non-zero pages), so the prediction is close, not 3x.
        let scans = await manager.firstPassScans
        #expect(scans.measured == 2 && scans.failed == 0, "first pass scans (both requests): \(scans)")
        #expect(abs(done.predictedSeconds - actual) <= 0.3 * actual, "predicted \(done.predictedSeconds) s, actual \(actual) s")
        #expect((done.finishedUnix ?? .infinity) <= scale.unixSeconds(ofTick: now + 90))
        print(manager.metrics.withLock { $0 }.split(separator: "\n").filter { $0.contains("request=") || $0.contains("mape") || $0.contains("refusals") }
            .joined(separator: "\n"))
        for line in traffic.log.withLock({ $0 }) { print("traffic: \(line)") }
        await runner.stopAll()
    }
}
