// Path: Benchmarks/Sources/migration-bench/MigrationBench.swift — total time and downtime of a
// Sluice-driven move (template + MigrationExecutor) against the same move driven by plain QMP commands
// with QEMU's default parameters (the anchor), for an idle guest and a guest dirtying memory, on one
// machine, interleaved. One line per run (key=value), summarised by scripts/bench-migration.sh.
import ArgumentParser
import Foundation
import Glibc
import SluiceMigration

@main
struct MigrationBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migration-bench",
        abstract: "Sluice-driven migrations vs plain QMP with default parameters: total time, downtime, convergence.")

    enum Driver: String, ExpressibleByArgument, CaseIterable {
        /// Template (convergence by dirty rate) + MigrationExecutor (agent confirmation included).
        case sluice
        /// migrate-incoming + migrate with QEMU's defaults except max-bandwidth = the link; poll query-migrate.
        case anchor
        /// The anchor plus the one capability a user would add by hand for a busy guest: auto-converge.
        case anchorAutoConverge = "anchor-ac"
    }

    @Option(help: "sluice, anchor or anchor-ac.")
    var driver: Driver

    @Option(help: "Guest kernel (scripts/guest/build-guest-image.sh).")
    var kernel: String

    @Option(help: "Guest initramfs.")
    var initrd: String

    @Option(name: .customLong("dirty-mib"), help: "MiB the guest rewrites in a loop (0: idle guest).")
    var dirtyMiB = 0

    @Option(name: .customLong("link-mibps"), help: "The migration link, MiB/s (QMP max-bandwidth for both drivers; QEMU's default is 128).")
    var linkMiBps = 128

    @Option(name: .customLong("memory-mib"), help: "Guest memory, MiB.")
    var memoryMiB = 256

    @Option(help: "Seconds a move may take before it counts as not converging (both drivers).")
    var limitSeconds = 60.0

    @Option(help: "Scratch directory (short: Unix socket paths).")
    var scratch = "/tmp"

    func run() async throws {
        var template = Array("\(scratch)/mbench.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw ValidationError("mkdtemp in \(scratch) failed") }
        let root = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let spec = GuestLaunchSpec(
            cpuModel: "Nehalem",
            shape: VMShape(bootVCPUs: 1, maxVCPUs: 2, bootMemoryMiB: memoryMiB, memorySlots: 2, maxMemoryMiB: 1024),
            kernel: kernel, initrd: initrd,
            append: "console=ttyS0 panic=-1" + (dirtyMiB > 0 ? " sluice.dirty=\(dirtyMiB)" : ""))
        let sourceDirectory = root + "/src"
        let process = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: spec.arguments(runDirectory: sourceDirectory, incoming: false), runDirectory: sourceDirectory))
        let source = RunningGuest(name: "bench", spec: spec, process: process)
        let agent = try await AgentChannelConnection.connect(socketPath: source.agentSocketPath, timeout: .seconds(180))
        await agent.close()
        try await Task.sleep(for: .seconds(2))  // the dirtying workload is running
        let link = UInt64(linkMiBps) << 20
        let policy = MigrationPolicy(maxSeconds: limitSeconds)
        var fields: [String: String] = ["driver": driver.rawValue, "dirty_mib": "\(dirtyMiB)", "link_mibps": "\(linkMiBps)"]
        let hostType = HostType(name: "bench", cpuModel: "Westmere", maxVCPUs: 2, maxMemoryMiB: 1024,
                                migrationBandwidthBytesPerSecond: link)
        var inventory: HostInventory? = nil
        if driver == .sluice {  // the host's inventory is known before a move (not timed)
            let probe = try await QEMUProcess.launch(QEMUProcess.Configuration(
                arguments: ["-machine", "q35", "-nodefaults", "-display", "none", "-m", "64M", "-S"], runDirectory: root + "/probe"))
            inventory = try await HostInventory.read(from: probe.qmp, hostType: hostType)
            probe.kill()
            _ = await probe.waitForExit(timeout: .seconds(5))
        }
        // CPU: this process (driver, QMP polling) and every QEMU it reaps from here on (source and
        // destination run as its children), so the source's share counts though it quits mid-way.
        let cpuBefore = cpuNanoseconds(RUSAGE_SELF) + cpuNanoseconds(RUSAGE_CHILDREN)
        let selfBefore = cpuNanoseconds(RUSAGE_SELF)
        let sourceBefore = cpuTicks(process.pid)
        let start = ContinuousClock.now
        switch driver {
        case .sluice:
            let description = try await VMDescription.survey(source, connectAgent: AgentChannelConnection.connector)
            let built = MigrationTemplate.build(vms: [description], to: inventory!, hostType: hostType, policy: policy)
            guard let plan = built.plans.first else { throw ValidationError("refused: \(built.proofs)") }
            fields["strategy"] = plan.convergence.strategy.rawValue
            fields["measured_dirty_mibps"] = "\((description.hostDirtyBytesPerSecond ?? 0) >> 20)"
            let executor = MigrationExecutor(.init(runRoot: root + "/dst"), connectAgent: AgentChannelConnection.connector)
            switch await executor.migrate(source, plan: plan, proof: built.proofs[0], policy: policy) {
            case .success(let (outcome, moved)):
                fields["status"] = "completed"
                fields["total_ms"] = "\(outcome.totalTimeMs)"
                fields["downtime_ms"] = "\(outcome.downtimeMs)"
                fields["max_throttle_pct"] = "\(outcome.maxThrottlePercent)"
                fields["postcopy"] = "\(outcome.postcopyStarted)"
                fields["transferred_mib"] = "\(outcome.transferredBytes >> 20)"
                await moved.stop()
            case .failure(let failure):
                fields["status"] = "failed"
                fields["reason"] = failure.reason
                await source.stop()
            }
        case .anchor, .anchorAutoConverge:
            let destinationDirectory = root + "/dst"
            let destination = try await QEMUProcess.launch(QEMUProcess.Configuration(
                arguments: spec.arguments(runDirectory: destinationDirectory, incoming: true), runDirectory: destinationDirectory))
            // What a user types by hand: the link's bandwidth (and, for anchor-ac, auto-converge), nothing
            // else changed; the stream over a Unix socket, as the executor sends it.
            if driver == .anchorAutoConverge { try await process.qmp.migrateSetCapabilities([.autoConverge: true]) }
            try await process.qmp.migrateSetParameters(MigrationParameters(maxBandwidthBytesPerSecond: link))
            let uri = "unix:\(destinationDirectory)/migration.sock"
            try await destination.qmp.migrateIncoming(uri: uri)
            try await process.qmp.migrate(uri: uri)
            let info: MigrationInfo
            do {
                info = try await process.qmp.waitForMigrationEnd(interval: .milliseconds(100), timeout: .seconds(limitSeconds))
            } catch {
                let last = try? await process.qmp.queryMigrate()
                fields["status"] = "not_converged"
                fields["remaining_mib"] = "\((last?.ram?.remainingBytes ?? 0) >> 20)"
                fields["expected_downtime_ms"] = "\(last?.expectedDowntimeMs ?? 0)"
                _ = try? await process.qmp.migrateCancel()
                destination.kill()
                _ = await destination.waitForExit(timeout: .seconds(5))
                await source.stop()
                fields["wall_ms"] = "\(milliseconds(ContinuousClock.now - start))"
                report(fields, cpuBefore: cpuBefore, sourceBefore: sourceBefore, selfBefore: selfBefore)
                return
            }
            fields["status"] = info.status.rawValue
            fields["max_throttle_pct"] = "\(info.cpuThrottlePercentage ?? 0)"
            fields["total_ms"] = "\(info.totalTimeMs ?? 0)"
            fields["downtime_ms"] = "\(info.downtimeMs ?? 0)"
            fields["transferred_mib"] = "\((info.ram?.transferredBytes ?? 0) >> 20)"
            _ = await destination.terminate(grace: .seconds(2))
            await source.stop()
        }
        fields["wall_ms"] = "\(milliseconds(ContinuousClock.now - start))"
        report(fields, cpuBefore: cpuBefore, sourceBefore: sourceBefore, selfBefore: selfBefore)
    }

    /// Prints the run's line; CPU is counted once every QEMU of the run has been reaped.
    func report(_ fields: [String: String], cpuBefore: UInt64, sourceBefore: UInt64, selfBefore: UInt64) {
        var fields = fields
        // The source's CPU before the timed part (its boot) is not the move's: take it out.
        let sourceBoot = sourceBefore * 1_000_000_000 / UInt64(sysconf(Int32(_SC_CLK_TCK)))
        let after = cpuNanoseconds(RUSAGE_SELF) + cpuNanoseconds(RUSAGE_CHILDREN)
        fields["cpu_ms"] = "\((after &- cpuBefore &- sourceBoot) / 1_000_000)"
        // The driver alone (this process: template, executor, QMP polling), without the guests' own tcg work.
        fields["driver_cpu_ms"] = "\((cpuNanoseconds(RUSAGE_SELF) &- selfBefore) / 1_000_000)"
        print(fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}

/// utime + stime of a running process (clock ticks), 0 when it is gone.
func cpuTicks(_ pid: pid_t) -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return 0 }
    return user + system
}

/// CPU time (user + system) of `who` (RUSAGE_SELF or RUSAGE_CHILDREN: the reaped ones), nanoseconds.
func cpuNanoseconds(_ who: __rusage_who) -> UInt64 {
    var usage = rusage()
    getrusage(who.rawValue, &usage)
    let micros = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + usage.ru_utime.tv_usec + usage.ru_stime.tv_usec
    return UInt64(micros) * 1000
}

func milliseconds(_ duration: Duration) -> Int64 {
    duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
}
