// Path: Sources/SluiceScheduling/MoveRunner.swift — how the live manager runs a booked move: the
// migration module's executor over QMP (`ExecutorMoveRunner`), with QEMU's max-bandwidth following the
// booking minute by minute.
import Foundation
import Synchronization
import SluiceMigration

/// The files that let the manager reach a running guest: its QMP socket (an operator's, not the one its
/// launcher holds), its agent's socket, its launch spec and its template (`sluice vm template`) for the
/// destinations' host type.
public struct GuestFiles: Codable, Sendable, Equatable {
    public var qmp: String
    public var agent: String
    public var spec: String
    public var template: String

    public init(qmp: String, agent: String, spec: String, template: String) {
        self.qmp = qmp
        self.agent = agent
        self.spec = spec
        self.template = template
    }
}

/// One move to run now: the guest, where to, and the cap (real bytes/s) to hold it to, which the
/// manager changes as the booking's minutes pass (`cap.load`).
public struct MoveOrder: Sendable {
    public var requestID: Int
    public var vm: String
    public var guest: GuestFiles?
    public var destination: String
    /// Where the destination's QEMU run directory goes.
    public var destinationRunRoot: String
    public var cap: RateCell
    /// QEMU's `ram.transferred` of this move so far (real bytes), stored by the runner while it runs: the
    /// manager takes the move's own stream out of its hosts' bandwidth samples.
    public var sent = RateCell(0)
    /// The booking's predicted real seconds: the executor's deadline is counted from it (never from
    /// less than the template's own prediction).
    public var predictedSeconds: Double
    /// The destination's QEMU is started after these words (its host's `netns`: `ip netns exec NAME`).
    public var destinationLaunchPrefix: [String] = []
    /// The migration stream's TCP address on the destination ("HOST:PORT"); nil: a Unix socket.
    public var streamAddress: String?

    public init(requestID: Int, vm: String, guest: GuestFiles?, destination: String, destinationRunRoot: String, cap: RateCell,
                predictedSeconds: Double) {
        self.requestID = requestID
        self.vm = vm
        self.guest = guest
        self.destination = destination
        self.destinationRunRoot = destinationRunRoot
        self.cap = cap
        self.predictedSeconds = predictedSeconds
    }
}

/// A rate shared between the manager (writer) and a running move (reader). Lock-free: one atomic word.
public final class RateCell: Sendable {
    private let bits: Atomic<UInt64>
    public init(_ value: Double) { bits = Atomic(value.bitPattern) }
    public func load() -> Double { Double(bitPattern: bits.load(ordering: .relaxed)) }
    public func store(_ value: Double) { bits.store(value.bitPattern, ordering: .relaxed) }
}

/// How a move went: QEMU's own total time of the migration (the figure the prediction is for), the
/// wall time of the whole run (destination start and the agent's confirmation included), the downtime.
public struct MoveReport: Sendable, Equatable {
    public var migrationSeconds: Double
    public var wallSeconds: Double
    public var downtimeMs: UInt64
    public var transferredBytes: UInt64
    public var method: String
    /// The destination QEMU (a child of this process), which now runs the guest.
    public var destinationPID: Int32?

    public init(migrationSeconds: Double, wallSeconds: Double, downtimeMs: UInt64, transferredBytes: UInt64, method: String,
                destinationPID: Int32? = nil) {
        self.migrationSeconds = migrationSeconds
        self.wallSeconds = wallSeconds
        self.downtimeMs = downtimeMs
        self.transferredBytes = transferredBytes
        self.method = method
        self.destinationPID = destinationPID
    }
}

/// Why a move did not complete (the executor's reason, or a file that could not be read).
public struct MoveRunError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A short label for metrics (`refused`, `no_convergence`, `qmp`, `files`, ...).
    public var reason: String
    public var description: String

    public init(reason: String, description: String) {
        self.reason = reason
        self.description = description
    }
}

/// Runs moves for the manager. `run` blocks (asynchronously) for the whole move.
public protocol MoveRunner: Sendable {
    func run(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError>
}

/// The destinations a runner started and still owns, by VM name, at most `capacity`: a slot is reserved
/// before a move starts and filled (or given back) when it ends, so a full table refuses the move up front
/// and never drops a guest it holds (dropping a `RunningGuest` kills the QEMU that runs the guest).
public struct KeptGuests<Guest> {
    public let capacity: Int
    public private(set) var guests: [String: Guest] = [:]
    /// Slots promised to moves still running.
    public private(set) var reserved = 0

    public init(capacity: Int) {
        precondition(capacity >= 0, "capacity must not be negative")
        self.capacity = capacity
    }

    /// Takes a slot for a move about to start; false when every slot is held or promised.
    public mutating func reserve() -> Bool {
        guard guests.count + reserved < capacity else { return false }
        reserved += 1
        return true
    }

    /// Gives back a reserved slot (the move failed: no destination to keep).
    public mutating func release() {
        precondition(reserved > 0, "release without reserve")
        reserved -= 1
    }

    /// Fills a reserved slot with the destination now running `vm`. A guest kept under the same name is
    /// returned, not dropped here: it was this move's source (the executor has quit it).
    public mutating func fill(_ vm: String, _ guest: Guest) -> Guest? {
        precondition(reserved > 0, "fill without reserve")
        reserved -= 1
        return guests.updateValue(guest, forKey: vm)  // a replaced entry's slot is reused: the count stays
    }

    /// Takes every guest out of the table.
    public mutating func removeAll() -> [Guest] {
        defer { guests = [:] }
        return Array(guests.values)
    }
}

/// Runs each move through `MigrationExecutor` (QMP): reads the guest's spec and template, connects to
/// its QMP socket, sets the plan's max-bandwidth to the order's cap, and while the move runs applies
/// each change of the cap with `migrate-set-parameters` and stores QEMU's bytes sent (`MoveOrder.sent`),
/// both every `capPoll`. The destinations it
/// started are kept (a dropped `QEMUProcess` is killed), at most `keptMax` of them counting the moves
/// running: once full, a move is refused (`kept_full`) before it starts; `stopAll` stops them all.
public final class ExecutorMoveRunner: MoveRunner {
    public let qemuBinary: String
    public let accel: String
    public let capPoll: Duration
    public static let keptMaxDefault = 1_024
    private let kept: Mutex<KeptGuests<RunningGuest>>

    public init(qemuBinary: String = "/usr/bin/qemu-system-x86_64", accel: String = "tcg", capPoll: Duration = .milliseconds(250),
                keptMax: Int = ExecutorMoveRunner.keptMaxDefault) {
        self.qemuBinary = qemuBinary
        self.accel = accel
        self.capPoll = capPoll
        kept = Mutex(KeptGuests(capacity: keptMax))
    }

    /// Destinations kept, and slots promised to running moves.
    public var keptCount: (guests: Int, reserved: Int) { kept.withLock { ($0.guests.count, $0.reserved) } }

    /// Stops every destination this runner started (QMP quit, then the process).
    public func stopAll() async {
        let guests = kept.withLock { $0.removeAll() }
        for guest in guests { await guest.stop() }
    }

    public func run(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError> {
        guard kept.withLock({ $0.reserve() }) else {
            let capacity = kept.withLock { $0.capacity }
            return .failure(MoveRunError(reason: "kept_full", description: "request \(order.requestID): this runner already keeps "
                + "\(capacity) destination QEMUs (its most, moves running included); \(order.vm) not moved"))
        }
        let result = await runReserved(order)
        if case .failure = result { kept.withLock { $0.release() } }
        return result
    }

    /// `run` with a slot of `kept` reserved: filled on success, given back by the caller on failure.
    private func runReserved(_ order: MoveOrder) async -> Result<MoveReport, MoveRunError> {
        guard let files = order.guest else {
            return .failure(MoveRunError(reason: "files", description: "request \(order.requestID) names no guest files"))
        }
        let spec: GuestLaunchSpec, template: MigrationTemplate
        do {
            spec = try JSONDecoder().decode(GuestLaunchSpec.self, from: Data(contentsOf: URL(fileURLWithPath: files.spec)))
            template = try JSONDecoder().decode(MigrationTemplate.self, from: Data(contentsOf: URL(fileURLWithPath: files.template)))
        } catch {
            return .failure(MoveRunError(reason: "files", description: "request \(order.requestID): spec or template: \(error)"))
        }
        guard let proof = template.proofs.first(where: { $0.vm == order.vm }), var plan = template.plans.first(where: { $0.vm == order.vm }) else {
            return .failure(MoveRunError(reason: "refused", description: "template \(files.template) has no plan for \(order.vm)"))
        }
        let qmp: QMPClient
        do { qmp = try await QMPClient.connect(path: files.qmp) } catch {
            return .failure(MoveRunError(reason: "qmp", description: "connect \(files.qmp): \(error)"))
        }
        let initialCap = UInt64(max(1, order.cap.load().rounded()))
        plan.convergence.maxBandwidthBytesPerSecond = initialCap
        plan.convergence.predictedSeconds = max(plan.convergence.predictedSeconds, order.predictedSeconds)
        let chosenPlan = plan
        var configuration = MigrationExecutor.Configuration(qemuBinary: qemuBinary, runRoot: order.destinationRunRoot, accel: accel)
        configuration.deadlineFactor = 4
        configuration.destinationLaunchPrefix = order.destinationLaunchPrefix
        configuration.streamAddress = order.streamAddress
        let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
        let source = RunningGuest(name: order.vm, spec: spec, qmp: qmp, agentSocketPath: files.agent)
        let started = ContinuousClock.now
        let poll = capPoll
        let result = await withTaskGroup(of: Result<(MigrationOutcome, RunningGuest), MigrationFailure>?.self) { group in
            group.addTask { await executor.migrate(source, plan: chosenPlan, proof: proof, policy: template.policy) }
            group.addTask {
                // Follows the booking: a new cap is sent to the source while the move runs.
                var applied = initialCap
                while !Task.isCancelled {
                    try? await Task.sleep(for: poll)
                    // Only this move's figures: before `migrate` the status is none, or an earlier attempt's end.
                    if let info = try? await qmp.queryMigrate(), info.status != .none, !info.status.isFinal,
                       let transferred = info.ram?.transferredBytes {
                        order.sent.store(Double(transferred))
                    }
                    let cap = UInt64(max(1, order.cap.load().rounded()))
                    if cap != applied, (try? await qmp.migrateSetParameters(MigrationParameters(maxBandwidthBytesPerSecond: cap))) != nil {
                        applied = cap
                    }
                }
                return nil
            }
            var outcome: Result<(MigrationOutcome, RunningGuest), MigrationFailure>?
            for await next in group {
                if let next { outcome = next; group.cancelAll() }
            }
            return outcome!
        }
        await qmp.close()
        let wall = ContinuousClock.now - started
        switch result {
        case .success(let (outcome, moved)):
            // The destination QEMU keeps running as this process's child: it holds the guest now.
            // The same name kept already: that QEMU was this move's source, which the executor quit;
            // it is dropped here, outside the lock.
            let previous = kept.withLock { $0.fill(order.vm, moved) }
            _ = previous
            return .success(MoveReport(migrationSeconds: Double(outcome.totalTimeMs) / 1000,
                                       wallSeconds: Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18,
                                       downtimeMs: outcome.downtimeMs, transferredBytes: outcome.transferredBytes,
                                       method: outcome.strategy.rawValue, destinationPID: moved.process.map { Int32($0.pid) }))
        case .failure(let failure):
            return .failure(MoveRunError(reason: failure.reason, description: failure.description))
        }
    }
}
