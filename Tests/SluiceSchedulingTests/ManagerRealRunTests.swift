// Path: Tests/SluiceSchedulingTests/ManagerRealRunTests.swift — the manager with real parts, on a time
// scale of one tick per second: a QEMU guest (tcg, the test image and its agent) on "host a", production
// traffic toward "host b" from a real `sluice run` (1514-byte frames at a known rate into a discard sink)
// that keeps a's link busy for the first 45 s, history that shows the same busy period on the two days
// before, a move asked for at once that is booked after the busy period and run through the executor
// (QMP) at the booked max-bandwidth, and a request whose window closes in the busy period refused up front.
// The recorded actual time is printed next to the prediction; the bound is lenient (see docs/SCHEDULING.md).
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SluiceMigration
import SluiceMigrationTestSupport
import SluiceScheduling
import SluiceService
import SluiceTestSupport
import Testing

@Suite(.serialized) struct ManagerRealRunTests {
    static let day = 1440
    static let link = 13_000_000.0  // host a's link (bytes/s): busy traffic leaves less than 1 MiB/s of it
    static let frameBytes = 1514
    static let busyRate = 8_000     // frames/s: 12.1 MB/s
    static let busySeconds = 45

    /// A classic pcap of `count` Ethernet/IPv4/UDP frames of `frameBytes` (198.18.0.1 -> 198.19.0.1).
    static func writeCapture(_ path: String, count: Int) {
        var bytes: [UInt8] = []
        func le32(_ v: UInt32) { bytes += [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)] }
        le32(0xa1b2_c3d4); bytes += [2, 0, 4, 0]; le32(0); le32(0); le32(65_535); le32(1)
        var frame = [UInt8](repeating: 0, count: frameBytes)
        frame[0..<12] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]
        frame[12] = 0x08
        let ipLength = frameBytes - 14
        frame[14..<34] = [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0,
                          198, 18, 0, 1, 198, 19, 0, 1]
        let udpLength = ipLength - 20
        frame[34..<42] = [0x30, 0x39, 0x30, 0x3a, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]
        for index in 0..<count {
            le32(UInt32(index / 1000)); le32(UInt32(index % 1000) * 1000); le32(UInt32(frameBytes)); le32(UInt32(frameBytes))
            bytes += frame
        }
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    /// `sluice run` on `yaml`; its metrics endpoint from the ready line.
    static func startService(_ binary: String, yaml: String, config: String) throws -> (ChildProcess, ListenAddress) {
        FileManager.default.createFile(atPath: config, contents: Data(yaml.utf8))
        let child = try ChildProcess([binary, "run", "--config", config])
        guard let line = child.readLine(timeoutMs: 60_000), line.hasPrefix("sluice: ready "),
              let field = line.split(separator: " ").first(where: { $0.hasPrefix("metrics=") }),
              let colon = field.lastIndex(of: ":"), let port = Int(field[field.index(after: colon)...]) else {
            child.signal(SIGKILL)
            _ = child.wait(timeoutMs: 5_000)
            throw SpawnError("sluice run not ready; stderr:\n\(child.stderrText)")
        }
        return (child, ListenAddress(host: String(field[field.index(field.startIndex, offsetBy: 8)..<colon]), port: port))
    }

    static func write<T: Encodable>(_ value: T, _ path: String) throws {
        try JSONEncoder().encode(value).write(to: URL(fileURLWithPath: path))
    }

    @Test(.timeLimit(.minutes(5)))
    func aMoveIsBookedAfterTheBusyPeriodAndRunThroughQMP() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let image = try GuestImage.prepared()
        var template = Array("/tmp/sluice-mgr.XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: root) }

        // The guest on "host a", its description and its template for "host b" (same CPU model, no type change).
        let spec = GuestLaunchSpec(cpuModel: "Nehalem",
                                   shape: VMShape(bootVCPUs: 1, maxVCPUs: 2, bootMemoryMiB: 256, memorySlots: 2, maxMemoryMiB: 1024),
                                   kernel: image.kernel.path, initrd: image.initramfs.path, append: "console=ttyS0 panic=-1")
        let sourceDirectory = root + "/guest"
        let process = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: spec.arguments(runDirectory: sourceDirectory, incoming: false), runDirectory: sourceDirectory))
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

        // Production toward b: `sluice run` at busyRate frames/s for busySeconds, then nothing.
        Self.writeCapture(root + "/busy.pcap", count: 1_000)
        let (service, endpoint) = try Self.startService(binary, yaml: """
            pipelines:
              - name: toward-b
                source: {pcap: "\(root)/busy.pcap", rate: \(Self.busyRate), loop: \(Self.busyRate * Self.busySeconds / 1_000)}
                sink: {discard: true}
            metrics: {listen: "127.0.0.1:0"}
            """, config: root + "/service.yaml")
        defer {
            service.signal(SIGTERM)
            if service.wait(timeoutMs: 20_000) == nil { service.signal(SIGKILL); _ = service.wait(timeoutMs: 5_000) }
        }

        // History: the two days before, a's link busy for the busy period's ticks of the day.
        let scale = TimeScale(tickSeconds: 1)
        let now = scale.tick(atUnixSeconds: Date().timeIntervalSince1970)
        var hosts: [ScheduleHost] = []
        for name in ["a", "b"] {
            var lines = ""
            for tick in (now - 2 * Self.day)..<now {
                let busy = name == "a" && ((tick - now) % Self.day + Self.day) % Self.day < Self.busySeconds
                lines += HistoryFile.line(minute: tick, production: busy ? Double(Self.busyRate * Self.frameBytes) : 0.02 * Self.link,
                                          freeMemory: 8 * 1_073_741_824, slots: 0) + "\n"
            }
            FileManager.default.createFile(atPath: "\(root)/\(name).history", contents: Data(lines.utf8))
            hosts.append(ScheduleHost(name: name, linkBytesPerSecond: name == "a" ? Self.link : 1e9, migrationSlots: 1,
                                      memoryBytes: 8 * 1_073_741_824, history: "\(root)/\(name).history", runRoot: root + "/dst-\(name)"))
        }
        var configuration = MigrationManager.Configuration(hosts: ScheduleHostsFile(hosts: hosts), timeScale: scale,
                                                           statePath: root + "/state.json")
        configuration.minimumRateBytesPerSecond = 1_048_576
        let runner = ExecutorMoveRunner()
        defer { Task { await runner.stopAll() } }
        let samplers: [any HostSampler] = [
            DataplaneSampler(endpoint: endpoint, port: "toward-b", memoryCapBytes: 8 * 1_073_741_824,
                             fallback: ProcNetDevSampler(interface: "lo", memoryCapBytes: 8 * 1_073_741_824)),
            ProcNetDevSampler(interface: "lo", memoryCapBytes: 8 * 1_073_741_824),
        ]
        let manager = try MigrationManager(configuration, samplers: samplers, runner: runner)
        let ticking = Task { await manager.run() }
        defer { ticking.cancel() }
        try await Task.sleep(for: .seconds(2.5))

        // Asked at once: 256 MiB, an idle guest. A window of 20 s closes in the busy period: refused.
        func request(_ id: Int, window: Int) -> ManagerRequestFile {
            ManagerRequestFile(request: ScheduleRequestFile(
                id: id, vm: "mover", source: "a", candidates: ["b"], earliestStart: now, deadline: now + window,
                memoryBytes: Double(256 << 20), dirtyBytesPerSecond: Double(report.dirtiedPagesPerSecond * 4096),
                maxBandwidth: Double(16 << 20), autoConverge: false), guest: files)
        }
        let short = await manager.submit(request(1, window: 20))
        guard case .success(.refused(let verdicts)) = short else { Issue.record("short window: \(short)"); return }
        print("refused request 1: \(verdicts)")
        let asked = await manager.submit(request(2, window: 240))
        guard case .success(.booked(let booking)) = asked else { Issue.record("not booked: \(asked)"); return }
        let sample = await manager.lastSample(host: 0)
        print("host a sample: \(sample.map { "\(Int($0.usedBytesPerSecond ?? -1)) B/s from \($0.source)" } ?? "none")")
        print("booked request 2 at tick +\(booking.start - now), predicted \(scale.realSeconds(booking.prediction.totalSeconds)) s, "
              + "cap \(booking.rates.prefix(3).map { Int(scale.realRate($0)) }) B/s")
        #expect(sample?.source == .dataplane(rx: true, tx: false))
        #expect(booking.start - now >= Self.busySeconds - 12, "booked inside the busy period")

        // Wait for the move to run and finish.
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(200)
        while await manager.finished.isEmpty, clock.now < deadline { try await Task.sleep(for: .seconds(1)) }
        let done = try #require(await manager.finished.first, "the move did not finish in 200 s")
        if let pid = done.report?.destinationPID { print("destination pid \(pid)") }
        print("request 2: predicted \(String(format: "%.1f", done.predictedSeconds)) s (finish \(String(format: "%.1f", done.predictedFinishUnix))), "
              + "actual \(done.actualSeconds.map { String(format: "%.1f", $0) } ?? "-") s (finish \(done.finishedUnix.map { String(format: "%.1f", $0) } ?? "-")), "
              + "started \(String(format: "%+.1f", done.startedUnix - done.bookedStartUnix)) s after the booked start, wall \(String(format: "%.1f", done.wallSeconds)) s, "
              + "\(done.report?.transferredBytes ?? 0) bytes, downtime \(done.report?.downtimeMs ?? 0) ms; failure: \(done.failure ?? "none")")
        #expect(done.failure == nil)
        let actual = try #require(done.actualSeconds)
        // The model sends all of memory; QEMU sends zero pages as markers. The prediction for the bytes
        // QEMU did send (same cap), for comparison:
        let transferred = Double(done.report?.transferredBytes ?? 0)
        print("prediction scaled to the bytes QEMU sent (\(Int(transferred)) of \(256 << 20)): "
              + String(format: "%.1f s against %.1f s actual", done.predictedSeconds * transferred / Double(256 << 20), actual))
        #expect(done.startedUnix - done.bookedStartUnix < 3)
        // Lenient: QEMU sends zero pages as markers, so an idle guest moves faster than its memory over the cap.
        #expect(actual <= 1.5 * done.predictedSeconds + 5)
        #expect((done.finishedUnix ?? .infinity) <= scale.unixSeconds(ofTick: now + 240))
        print(manager.metrics.withLock { $0 }.split(separator: "\n").filter { $0.contains("request=") || $0.contains("mape") || $0.contains("refusals") }
            .joined(separator: "\n"))
        await runner.stopAll()
    }
}
