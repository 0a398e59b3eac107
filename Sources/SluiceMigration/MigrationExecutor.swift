// Path: Sources/SluiceMigration/MigrationExecutor.swift — runs one planned move through QMP: starts the
// destination from the template, sets the convergence parameters, migrates, follows it, cuts over, grows
// the guest to its target type, confirms through the agent, and only then stops the source.
import Glibc
import SluiceCore
import Synchronization
import SystemPackage

/// A connection to a guest's migration agent (the host end of its virtio-serial port).
public protocol GuestAgentConnection: Sendable {
    /// The agent's report now.
    func report() async throws -> AgentReport
    /// Brings hot-added vCPUs and memory online in the guest, then reports; waits at most `timeout`.
    func online(timeout: Duration) async throws -> AgentReport
    func close() async
}

/// Connects to the agent behind a chardev socket, retrying until `timeout` (the guest may still boot).
public typealias GuestAgentConnector = @Sendable (_ socketPath: String, _ timeout: Duration) async throws -> any GuestAgentConnection

/// A guest running in a QEMU process, with the spec it was started from.
///
/// `process` is set when this process started QEMU (tests, `sluice vm` with `--start`); otherwise the
/// guest is reached through its QMP socket only and stopped with QMP `quit`.
public struct RunningGuest: Sendable {
    public var name: String
    public var spec: GuestLaunchSpec
    public var qmp: QMPClient
    public var agentSocketPath: String
    public var process: QEMUProcess?

    public init(name: String, spec: GuestLaunchSpec, process: QEMUProcess) {
        self.name = name
        self.spec = spec
        self.qmp = process.qmp
        self.agentSocketPath = GuestLaunchSpec.agentSocketPath(runDirectory: process.runDirectory)
        self.process = process
    }

    public init(name: String, spec: GuestLaunchSpec, qmp: QMPClient, agentSocketPath: String) {
        self.name = name
        self.spec = spec
        self.qmp = qmp
        self.agentSocketPath = agentSocketPath
        self.process = nil
    }

    /// Stops the guest's QEMU: through the process when it is ours, else QMP `quit`.
    public func stop() async {
        if let process { _ = await process.terminate(grace: .seconds(3)) } else { _ = try? await qmp.quit() }
    }
}

/// Why a move failed. In every case but `postcopyLost` the source still runs the guest.
public enum MigrationFailure: Error, Sendable, CustomStringConvertible {
    /// The proof refused the move: nothing was started.
    case refused(vm: String, blockers: [MigrationBlocker])
    /// The source's agent did not answer before the move (nothing was started).
    case sourceAgentSilent(vm: String, error: String)
    /// The destination did not start (QEMU's own words, e.g. a CPU model's missing features).
    case destinationDidNotStart(vm: String, reason: String)
    /// A QMP command failed (which, and QEMU's answer).
    case qmp(vm: String, step: String, error: QMPError)
    /// QEMU reported the migration failed: the source's `error-desc` and the destination's stderr
    /// (the source alone often says only "Broken pipe").
    case migrationFailed(vm: String, sourceError: String, destinationStderr: String)
    /// The migration did not complete within its deadline and was cancelled.
    case noConvergence(vm: String, afterMs: Int64, lastStatus: String, remainingBytes: UInt64)
    /// The destination ran the guest but its agent did not confirm it (silent, restarted, or short of
    /// the target capacity); the destination was stopped and the source resumed.
    case notConfirmed(vm: String, reason: String)
    /// Post-copy had started when the move failed or was not confirmed: the source cannot resume (its
    /// memory went over), so the destination is kept as it is, never killed, for the operator:
    /// `destination` is nil only when it died.
    case postcopyLost(vm: String, reason: String, destination: RunningGuest?)
    /// The move failed and the source could not be resumed safely (the destination did not exit after
    /// SIGKILL, or the source's state is unknown): `cause` says why the move failed.
    case sourceNotResumed(vm: String, reason: String, cause: String)

    /// A short label for metrics (`sluice_migration_failures_total{reason=...}`).
    public var reason: String {
        switch self {
        case .refused: "refused"
        case .sourceAgentSilent: "source_agent_silent"
        case .destinationDidNotStart: "destination_did_not_start"
        case .qmp: "qmp"
        case .migrationFailed: "migration_failed"
        case .noConvergence: "no_convergence"
        case .notConfirmed: "not_confirmed"
        case .postcopyLost: "postcopy_lost"
        case .sourceNotResumed: "source_not_resumed"
        }
    }

    public var description: String {
        switch self {
        case .refused(let vm, let blockers):
            "\(vm): refused before start: \(blockers.map(\.description).joined(separator: "; "))"
        case .sourceAgentSilent(let vm, let error): "\(vm): the source's agent did not answer: \(error)"
        case .destinationDidNotStart(let vm, let reason): "\(vm): the destination did not start: \(reason)"
        case .qmp(let vm, let step, let error): "\(vm): \(step): \(error)"
        case .migrationFailed(let vm, let sourceError, let stderr):
            "\(vm): migration failed: source says \"\(sourceError)\"; destination stderr: \(stderr.isEmpty ? "(empty)" : stderr)"
        case .noConvergence(let vm, let ms, let status, let remaining):
            "\(vm): not done after \(ms) ms (status \(status), \(remaining) bytes remaining): cancelled"
        case .notConfirmed(let vm, let reason): "\(vm): the destination's guest was not confirmed: \(reason)"
        case .postcopyLost(let vm, let reason, let destination):
            "\(vm): failed after post-copy started (the source cannot resume): \(reason); "
                + (destination.map { "the destination is kept (QMP \($0.process.map { GuestLaunchSpec.operatorQMPPath(runDirectory: $0.runDirectory) } ?? "?"))" }
                    ?? "the destination is gone")
        case .sourceNotResumed(let vm, let reason, let cause): "\(vm): \(cause); the source was NOT resumed: \(reason)"
        }
    }
}

/// What a completed move did and measured.
public struct MigrationOutcome: Sendable, Codable, Equatable {
    public var vm: String
    public var strategy: ConvergenceStrategy
    /// Whether post-copy was switched on (post-copy strategy, after the first pass).
    public var postcopyStarted: Bool
    /// QEMU's own figures from `query-migrate` on the source once completed.
    public var totalTimeMs: UInt64
    public var downtimeMs: UInt64
    public var setupTimeMs: UInt64
    public var transferredBytes: UInt64
    public var dirtySyncCount: UInt64
    /// The highest auto-converge throttle seen, percent.
    public var maxThrottlePercent: UInt64
    /// From the executor's start to the agent's confirmation on the destination, ms.
    public var wallTimeMs: Int64
    /// The agent's reports before the move (source) and after the type change (destination).
    public var before: AgentReport
    public var after: AgentReport
}

/// Runs planned moves. One executor may run several moves at once (each its own source and destination).
///
/// Contract: `migrate` never leaves two running copies of a guest and never stops the source before the
/// destination's agent has confirmed the guest (same boot, counter moving, target capacity online),
/// except after post-copy started, when the source cannot resume (`MigrationFailure.postcopyLost`).
public final class MigrationExecutor: Sendable {
    public struct Configuration: Sendable {
        public var qemuBinary: String
        /// Destinations' run directories go under it (`<root>/<vm>-<n>`); made when missing (its parent
        /// must exist).
        public var runRoot: String
        public var accel: String
        /// How often `query-migrate` is polled.
        public var pollInterval: Duration
        /// How long the destination's agent may take to confirm after cut-over.
        public var confirmTimeout: Duration
        /// The move's deadline: the plan's prediction times `deadlineFactor` plus `deadlineSlack`,
        /// at most the policy's `maxSeconds`.
        public var deadlineFactor: Double
        public var deadlineSlack: Duration
        /// How long post-copy may run past the move's deadline before it is reported (the destination is
        /// then kept, never killed: it holds the guest).
        public var postcopyGrace: Duration
        /// Called once the destination's QEMU answers, before the migration starts (tests kill it mid-move).
        public var onDestinationStarted: (@Sendable (QEMUProcess) -> Void)?
        /// The link toward the destinations: each completed move records the rate QEMU achieved on it
        /// (`MigrationOutcome.achievedBytesPerSecond`) as an observation. Nil: nothing recorded.
        public var linkMonitor: LinkMonitor?
        /// Words run before the destination's QEMU binary, e.g. `["/usr/sbin/ip", "netns", "exec", "b"]` to
        /// start it in another network namespace (the command must exec QEMU: its pid is the one kept).
        /// Empty: QEMU is started directly.
        public var destinationLaunchPrefix: [String] = []
        /// The migration stream over TCP: the destination listens on `tcp:<streamAddress>` ("HOST:PORT",
        /// e.g. "198.18.0.2:4444") and the source connects to it. Nil: a Unix socket in the destination's
        /// run directory (no port to race for; the default). Over TCP any process that reaches the port
        /// first could feed the destination a state: use it on a link only the two hosts share.
        public var streamAddress: String?

        public init(qemuBinary: String = "/usr/bin/qemu-system-x86_64", runRoot: String, accel: String = "tcg",
                    pollInterval: Duration = .milliseconds(100), confirmTimeout: Duration = .seconds(60),
                    deadlineFactor: Double = 3, deadlineSlack: Duration = .seconds(30)) {
            self.qemuBinary = qemuBinary
            self.runRoot = runRoot
            self.accel = accel
            self.pollInterval = pollInterval
            self.confirmTimeout = confirmTimeout
            self.deadlineFactor = deadlineFactor
            self.deadlineSlack = deadlineSlack
            self.onDestinationStarted = nil
            self.linkMonitor = nil
            self.postcopyGrace = .seconds(120)
        }
    }

    public let configuration: Configuration
    let connectAgent: GuestAgentConnector
    let sequence = Atomic<Int>(0)

    /// What this executor has done (`sluice vm migrate --metrics` serves them).
    public let counters = MigrationCounters()

    public init(_ configuration: Configuration, connectAgent: @escaping GuestAgentConnector) {
        self.configuration = configuration
        self.connectAgent = connectAgent
    }

    /// Moves `source` as `plan` says, under `proof`. Returns the outcome and the guest on its destination
    /// (whose spec has the new shape), or why it failed, with the source still running (but see
    /// `MigrationFailure.postcopyLost`). Blocks (asynchronously) for the whole move.
    public func migrate(_ source: RunningGuest, plan: VMMovePlan, proof: MigratabilityProof,
                        policy: MigrationPolicy) async -> Result<(MigrationOutcome, RunningGuest), MigrationFailure> {
        counters.started.add(1, ordering: .relaxed)
        counters.running.add(1, ordering: .relaxed)
        defer { counters.running.subtract(1, ordering: .relaxed) }
        let result = await move(source, plan: plan, proof: proof, policy: policy)
        switch result {
        case .success(let (outcome, moved)):
            counters.completed(outcome)
            configuration.linkMonitor?.recordAchieved(destination: moved.process?.runDirectory ?? moved.name,
                                                      bytesPerSecond: outcome.achievedBytesPerSecond)
        case .failure(let failure):
            counters.failed(failure.reason)
        }
        return result
    }

    /// Moves the guests of a template's set: each with its plan, at most `concurrently` at once (each move
    /// runs two QEMU processes). A guest the template refused, or with no plan, gets `.refused` without
    /// anything started. Results come in the order of `guests`.
    public func migrate(_ guests: [RunningGuest], template: MigrationTemplate,
                        concurrently: Int = 1) async -> [(vm: String, result: Result<(MigrationOutcome, RunningGuest), MigrationFailure>)] {
        precondition(concurrently >= 1, "at least one move at a time")
        typealias Moved = Result<(MigrationOutcome, RunningGuest), MigrationFailure>
        var results = [Moved?](repeating: nil, count: guests.count)
        await withTaskGroup(of: (Int, Moved).self) { group in
            var next = 0
            func start(_ index: Int) {
                let guest = guests[index]
                let proof = template.proofs.first { $0.vm == guest.name }
                    ?? MigratabilityProof(vm: guest.name, hostType: template.hostType, blockers: [.notInTemplate])
                guard proof.canMove, let plan = template.plans.first(where: { $0.vm == guest.name }) else {
                    group.addTask { (index, .failure(.refused(vm: guest.name, blockers: proof.blockers))) }
                    return
                }
                group.addTask { (index, await self.migrate(guest, plan: plan, proof: proof, policy: template.policy)) }
            }
            while next < min(concurrently, guests.count) { start(next); next += 1 }
            for await (index, result) in group {
                results[index] = result
                if next < guests.count { start(next); next += 1 }
            }
        }
        return zip(guests, results).map { ($0.name, $1!) }
    }

    private func move(_ source: RunningGuest, plan: VMMovePlan, proof: MigratabilityProof,
                      policy: MigrationPolicy) async -> Result<(MigrationOutcome, RunningGuest), MigrationFailure> {
        let vm = source.name
        // The name becomes a path: letters, digits, '.', '_', '-', not starting with '.', at most 64 bytes.
        guard MigrationExecutor.isValidGuestName(vm) else { return .failure(.refused(vm: vm, blockers: [.invalidName])) }
        guard plan.vm == vm, proof.vm == vm else { return .failure(.refused(vm: vm, blockers: [.notInTemplate])) }
        guard proof.canMove else { return .failure(.refused(vm: vm, blockers: proof.blockers)) }
        // The plan must be for the guest as it runs now (a stale or edited template is refused).
        guard plan.destinationShape == source.spec.shape else {
            return .failure(.refused(vm: vm, blockers: [.stalePlan("the guest's shape changed since the template")]))
        }
        // The destination starts from the guest's launch spec, so it carries the spec's devices: the proof
        // must have considered every one of them (devices the agent sees without a -device of their own,
        // such as a -drive if=virtio, are in the plan but not in the spec, and that is fine).
        let planned = Set(plan.devices)
        if let missing = source.spec.deviceDrivers.first(where: { !planned.contains($0) }) {
            return .failure(.refused(vm: vm, blockers: [.stalePlan("the guest's device \(missing) is not in the plan")]))
        }
        // Whether the source runs now: only then is it resumed after a failed move.
        let sourceWasRunning: Bool
        do { sourceWasRunning = try await source.qmp.queryStatus().running } catch {
            return .failure(.qmp(vm: vm, step: "query-status of the source", error: error))
        }
        let clock = ContinuousClock()
        let start = clock.now

        // Before: the source's agent answers (baseline boot id and counter).
        let before: AgentReport
        do {
            let agent = try await connectAgent(source.agentSocketPath, .seconds(10))
            let answer: Result<AgentReport, any Error>
            do { answer = .success(try await agent.report()) } catch { answer = .failure(error) }
            await agent.close()
            before = try answer.get()
        } catch {
            return .failure(.sourceAgentSilent(vm: vm, error: "\(error)"))
        }

        // The destination, from the template: same shape, the template's CPU model, enforced.
        var destinationSpec = source.spec
        destinationSpec.cpuModel = plan.cpuModel
        destinationSpec.shape = plan.destinationShape
        // The pid keeps two processes on one run root (same guest name) out of each other's directories.
        let runDirectory = "\(configuration.runRoot)/\(vm)-\(getpid())-\(sequence.add(1, ordering: .relaxed).newValue)"
        if mkdir(configuration.runRoot, 0o755) != 0, errno != EEXIST {
            return .failure(.destinationDidNotStart(
                vm: vm, reason: "\(SyscallError("mkdir \(configuration.runRoot)", Errno(rawValue: errno)))"))
        }
        let destination: QEMUProcess
        do {
            let prefix = configuration.destinationLaunchPrefix
            let arguments = destinationSpec.arguments(runDirectory: runDirectory, incoming: true)
            destination = try await QEMUProcess.launch(QEMUProcess.Configuration(
                binary: prefix.first ?? configuration.qemuBinary,
                arguments: prefix.isEmpty ? arguments : Array(prefix.dropFirst()) + [configuration.qemuBinary] + arguments,
                runDirectory: runDirectory, accel: configuration.accel))
        } catch {
            return .failure(.destinationDidNotStart(vm: vm, reason: "\(error)"))
        }
        configuration.onDestinationStarted?(destination)
        let target = RunningGuest(name: vm, spec: destinationSpec, process: destination)

        /// Stops the destination and, once it is gone, resumes the source if it ran before; returns
        /// `failure`, or `sourceNotResumed` when that could not be done safely. Never before post-copy.
        func abandon(_ failure: MigrationFailure) async -> Result<(MigrationOutcome, RunningGuest), MigrationFailure> {
            destination.kill()
            guard await destination.waitForExit(timeout: .seconds(10)) != nil else {
                return .failure(.sourceNotResumed(vm: vm, reason: "the destination (pid \(destination.pid)) did not exit after SIGKILL",
                                                  cause: failure.description))
            }
            guard sourceWasRunning else { return .failure(failure) }  // it was paused: it stays so
            do {
                if try await source.qmp.queryStatus().running == false { try await source.qmp.cont() }
            } catch {
                return .failure(.sourceNotResumed(vm: vm, reason: "resuming it failed: \(error)", cause: failure.description))
            }
            return .failure(failure)
        }

        let convergence = plan.convergence
        let source_ = source.qmp, destination_ = destination.qmp
        // By default the stream goes over a Unix socket in the destination's run directory: no port to race
        // for, and no other local process can connect first and feed the destination a guest state. With
        // `streamAddress` it goes over TCP (another network namespace or machine).
        let streamURI = configuration.streamAddress.map { "tcp:\($0)" } ?? "unix:\(runDirectory)/migration.sock"
        do {
            // Every capability the executor uses is set on every move, on or off (a source keeps them from
            // an earlier try); progress is polled, so no MIGRATION events.
            // Auto-converge keeps post-copy armed where the policy allows it: the fallback below.
            let postcopy = convergence.strategy == .postcopy || (convergence.strategy == .autoConverge && policy.allowPostcopy)
            try await source_.migrateSetCapabilities([.autoConverge: convergence.strategy == .autoConverge, .postcopyRAM: postcopy])
            try await destination_.migrateSetCapabilities([.postcopyRAM: postcopy])
            try await source_.migrateSetParameters(convergence.qmpParameters)
            try await destination_.migrateIncoming(uri: streamURI)
            try await source_.migrate(uri: streamURI)
        } catch {
            return await abandon(.qmp(vm: vm, step: "setting up the migration", error: error))
        }

        // Follow it to the end (or the deadline).
        let predicted = Duration.milliseconds(Int64(convergence.predictedSeconds * configuration.deadlineFactor * 1000))
        let deadline = start.advanced(by: min(predicted + configuration.deadlineSlack, .seconds(policy.maxSeconds)))
        var postcopyStarted = false
        // Auto-converge that has not converged by half the deadline (a guest dirtying faster than the
        // throttle model assumed: tcg on a faster host) switches to post-copy when the policy allows it.
        let autoConvergeFallback = start.advanced(by: (deadline - start) / 2)
        var maxThrottle: UInt64 = 0
        var info: MigrationInfo
        while true {
            do {
                info = try await source_.queryMigrate()
            } catch .timeout where clock.now < deadline {
                continue  // a busy source (tcg on few cores) answers late: ask again until the deadline
            } catch {
                if postcopyStarted {
                    return .failure(.postcopyLost(vm: vm, reason: "source QMP: \(error)", destination: target))
                }
                return await abandon(.qmp(vm: vm, step: "query-migrate", error: error))
            }
            maxThrottle = max(maxThrottle, info.cpuThrottlePercentage ?? 0)
            if info.status.isFinal { break }
            let autoConvergeStalled = convergence.strategy == .autoConverge && policy.allowPostcopy
                && clock.now >= autoConvergeFallback
            if convergence.strategy == .postcopy || autoConvergeStalled, !postcopyStarted, info.status == .active,
               (info.ram?.dirtySyncCount ?? 0) >= 2 {
                // The first full pass is over: switch to post-copy so the guest runs on the destination.
                do { try await source_.migrateStartPostcopy() } catch {
                    return await abandon(.qmp(vm: vm, step: "migrate-start-postcopy", error: error))
                }
                postcopyStarted = true
            }
            if info.status == .postcopyPaused {
                return .failure(.postcopyLost(vm: vm, reason: "postcopy-paused; destination: \(destination.stderrTail(maxBytes: 1024))",
                                              destination: destination.exitStatus == nil ? target : nil))
            }
            if postcopyStarted, clock.now >= deadline.advanced(by: configuration.postcopyGrace) {
                return .failure(.postcopyLost(vm: vm, reason: "post-copy still \(info.status) after its deadline",
                                              destination: destination.exitStatus == nil ? target : nil))
            }
            if clock.now >= deadline, !postcopyStarted {
                _ = try? await source_.migrateCancel()
                _ = try? await source_.waitForMigrationEnd(timeout: .seconds(10))
                return await abandon(.noConvergence(
                    vm: vm, afterMs: Self.milliseconds(clock.now - start), lastStatus: info.status.rawValue,
                    remainingBytes: info.ram?.remainingBytes ?? 0))
            }
            try? await Task.sleep(for: configuration.pollInterval)
        }
        guard info.status == .completed else {
            // Give the destination a moment to print why it gave up, then quote it.
            _ = await destination.waitForExit(timeout: .milliseconds(500))
            let stderr = destination.stderrTail(maxBytes: 2048)
            let failure = MigrationFailure.migrationFailed(
                vm: vm, sourceError: info.errorDescription ?? info.status.rawValue, destinationStderr: stderr)
            if postcopyStarted {
                return .failure(.postcopyLost(vm: vm, reason: failure.description, destination: destination.exitStatus == nil ? target : nil))
            }
            return await abandon(failure)
        }

        // Cut over: the destination runs the guest; grow it to the target type.
        var grown = destinationSpec.shape
        do {
            try await waitUntilRunning(destination_, timeout: .seconds(10))
            let free = try await destination_.queryHotpluggableCPUs().filter { !$0.isPlugged }
                .sorted { ($0.socketID ?? 0, $0.coreID ?? 0) < ($1.socketID ?? 0, $1.coreID ?? 0) }
            guard free.count >= plan.addVCPUs else {
                throw QMPError.unexpectedReply(command: "query-hotpluggable-cpus",
                                               detail: "\(plan.addVCPUs) vCPUs to add, \(free.count) free slots")
            }
            for slot in free.prefix(plan.addVCPUs) {
                try await destination_.deviceAdd(arguments: slot.deviceAddArguments(id: GuestLaunchSpec.hotCPUID(grown.hotAddedVCPUs)))
                grown.hotAddedVCPUs += 1
            }
            for mib in plan.addDIMMsMiB {
                let index = grown.dimmsMiB.count
                try await destination_.addMemoryBackendRAM(id: GuestLaunchSpec.hotMemoryID(index), sizeBytes: UInt64(mib) << 20)
                try await destination_.deviceAdd(arguments: [
                    "driver": .string("pc-dimm"), "id": .string(GuestLaunchSpec.hotDIMMID(index)),
                    "memdev": .string(GuestLaunchSpec.hotMemoryID(index))])
                grown.dimmsMiB.append(mib)
            }
        } catch {
            if postcopyStarted {
                return .failure(.postcopyLost(vm: vm, reason: "growing to the target type: \(error)", destination: target))
            }
            return await abandon(.notConfirmed(vm: vm, reason: "growing to the target type: \(error)"))
        }

        // Confirm through the agent on the destination: same boot, counter moving, capacity online.
        let after: AgentReport
        switch await confirm(target, before: before, plan: plan, until: clock.now.advanced(by: configuration.confirmTimeout)) {
        case .confirmed(let report): after = report
        case .notConfirmed(let reason):
            // After post-copy the destination holds the only copy: keep it, never kill it.
            if postcopyStarted { return .failure(.postcopyLost(vm: vm, reason: reason, destination: target)) }
            return await abandon(.notConfirmed(vm: vm, reason: reason))
        }

        // Only now is the source no longer needed.
        await source.stop()
        var moved = target
        moved.spec.shape = grown
        let outcome = MigrationOutcome(
            vm: vm, strategy: convergence.strategy, postcopyStarted: postcopyStarted, totalTimeMs: info.totalTimeMs ?? 0,
            downtimeMs: info.downtimeMs ?? 0, setupTimeMs: info.setupTimeMs ?? 0,
            transferredBytes: info.ram?.transferredBytes ?? 0, dirtySyncCount: info.ram?.dirtySyncCount ?? 0,
            maxThrottlePercent: maxThrottle, wallTimeMs: Self.milliseconds(clock.now - start), before: before, after: after)
        return .success((outcome, moved))
    }

    /// Polls the destination's agent until it confirms the guest, or says why not by `deadline`.
    private func confirm(_ guest: RunningGuest, before: AgentReport, plan: VMMovePlan,
                         until deadline: ContinuousClock.Instant) async -> Confirmation {
        let clock = ContinuousClock()
        var last = "no answer"
        while clock.now < deadline {
            if let process = guest.process, let status = process.exitStatus {
                return .notConfirmed("destination \(status): \(process.stderrTail(maxBytes: 1024))")
            }
            do {
                let remaining = clock.now.duration(to: deadline)
                let agent = try await connectAgent(guest.agentSocketPath, min(remaining, .seconds(10)))
                let answer: Result<(AgentReport, AgentReport), any Error>
                do {
                    let report = try await agent.online(timeout: max(clock.now.duration(to: deadline), .seconds(1)))
                    try? await Task.sleep(for: .milliseconds(500))
                    answer = .success((report, try await agent.report()))
                } catch { answer = .failure(error) }
                await agent.close()
                let (report, later) = try answer.get()
                if report.bootID != before.bootID {
                    return .notConfirmed("the guest restarted (boot id \(before.bootID) → \(report.bootID))")
                }
                // Memory by online blocks when the guest has them (MemTotal loses ~1.6% of added memory
                // to page structures), else by MemTotal within that loss.
                // The agent's numbers are the guest's: never trusted not to overflow.
                let added = UInt64(clamping: plan.addDIMMsMiB.reduce(0, +)) << 20
                let memoryMiB = Int(clamping: report.memoryTotalKiB / 1024)
                let expectedMemoryMiB = Int(clamping: before.memoryTotalKiB / 1024) + Int(added >> 20)
                func bytes(_ blocks: Int, _ blockBytes: UInt64) -> UInt64 {
                    let (product, overflow) = UInt64(clamping: blocks).multipliedReportingOverflow(by: blockBytes)
                    return overflow ? .max : product
                }
                let memoryOnline = report.memoryBlockBytes > 0
                    ? bytes(report.memoryBlocksOnline, report.memoryBlockBytes)
                        >= bytes(before.memoryBlocksOnline, before.memoryBlockBytes) &+ added
                    : report.memoryTotalKiB &* 1024 &+ added / 32 >= before.memoryTotalKiB &* 1024 &+ added
                // The workload runs here: its counter rose between two reports of the destination (the
                // copied memory alone would match the report from before the move).
                let counterMoving = before.workloadCounter == nil
                    || (later.workloadCounter ?? 0) > (report.workloadCounter ?? 0)
                if later.bootID != before.bootID {
                    return .notConfirmed("the guest restarted (boot id \(before.bootID) → \(later.bootID))")
                }
                if report.vcpusOnline >= plan.targetVCPUs, memoryOnline, counterMoving {
                    return .confirmed(later)
                }
                last = "vCPUs online \(report.vcpusOnline)/\(plan.targetVCPUs), memory \(memoryMiB)/\(expectedMemoryMiB) MiB, "
                    + "counter \(report.workloadCounter.map(String.init) ?? "none") then \(later.workloadCounter.map(String.init) ?? "none")"
            } catch {
                last = "\(error)"
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return .notConfirmed("agent did not confirm within \(Self.milliseconds(configuration.confirmTimeout)) ms: \(last)")
    }

    /// Whether `name` may name a guest (it becomes part of a run directory's path).
    public static func isValidGuestName(_ name: String) -> Bool {
        guard (1...64).contains(name.utf8.count), name.first != "." else { return false }
        return name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
            || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    enum Confirmation {
        case confirmed(AgentReport)
        case notConfirmed(String)
    }

    private func waitUntilRunning(_ qmp: QMPClient, timeout: Duration) async throws(QMPError) {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let state = try await qmp.queryStatus()
            if state.running { return }
            if clock.now >= deadline {
                throw .unexpectedReply(command: "query-status", detail: "destination \(state.status), not running, after cut-over")
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }
}
