// Path: Sources/sluice/VMCommand.swift — `sluice vm`: host inventory through QMP, a guest's description
// from its agent, templates and migratability proofs, and a move run through QMP. Flags and JSON files in,
// SluiceMigration called, its result printed (docs/MIGRATION.md).
import ArgumentParser
import Foundation
import Glibc
import SluiceMigration
import SluiceService

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "VM migration across heterogeneous hosts: inventory, templates, proofs, moves.",
        discussion: """
            Files are JSON: a host type (name, cpuModel, maxVCPUs, maxMemoryMiB, \
            migrationBandwidthBytesPerSecond, optional devices), a guest's launch spec (how its QEMU was started), a guest's \
            description (`describe`), an inventory (`inventory`), a template (`template`). `plan` prints the \
            proofs and exits 3 when a guest cannot move. See docs/MIGRATION.md.
            """,
        subcommands: [Inventory.self, Describe.self, Template.self, Plan.self, Migrate.self,
                      Monitor.self, Schedule.self, Bookings.self, Explain.self, FirstPass.self, Manager.self])

    /// Reads a JSON file into `T`, naming the file and the flag in the error.
    /// The largest JSON file read (an inventory of every CPU model is about 200 KiB).
    static let fileBytesMax = 4 << 20

    static func load<T: Decodable>(_ type: T.Type, _ path: String, flag: String) throws -> T {
        let data: Data
        do {
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
            guard size <= fileBytesMax else {
                throw ValidationError("\(flag) \(path): \(size) bytes, more than the \(fileBytesMax) a \(T.self) may take")
            }
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch let error as ValidationError {
            throw error
        } catch {
            throw ValidationError("\(flag) \(path): cannot read: \(error.localizedDescription)")
        }
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw ValidationError("\(flag) \(path): not a \(T.self): \(error)")
        }
    }

    /// Runs `body` with a QMP connection to `path`, closed afterwards whatever `body` does.
    static func withQMP<T>(_ path: String, _ body: (QMPClient) async throws -> T) async throws -> T {
        let client = try await QMPClient.connect(path: path)
        let result: Result<T, any Error>
        do { result = .success(try await body(client)) } catch { result = .failure(error) }
        await client.close()
        return try result.get()
    }

    static func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    /// `--vm-type NAME:VCPUS:MEMORY_MIB` (either number may be `-` to keep the guest's).
    static func parseVMType(_ text: String) throws -> VMType {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, !parts[0].isEmpty else {
            throw ValidationError("--vm-type '\(text)': expected NAME:VCPUS:MEMORY_MIB (a number may be '-')")
        }
        func number(_ part: String, _ what: String) throws -> Int? {
            if part == "-" { return nil }
            guard let value = Int(part), value > 0 else { throw ValidationError("--vm-type '\(text)': \(what) '\(part)' is not a positive number") }
            return value
        }
        return VMType(name: parts[0], vcpus: try number(parts[1], "vCPUs"), memoryMiB: try number(parts[2], "memory MiB"))
    }

    struct Inventory: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What a host offers, read through QMP from a QEMU running on it (JSON).")

        @Option(help: ArgumentHelp("QMP socket of a QEMU on the host.", valueName: "path"))
        var qmp: String

        @Option(help: ArgumentHelp("Restrict to what this host type offers (JSON).", valueName: "file"))
        var hostType: String?

        @Flag(help: "Print the offered CPU models as a table instead of JSON.")
        var models = false

        @Option(help: ArgumentHelp("Measure the free migration bandwidth of the link toward this address (127.0.0.1: lo); needs --host-type.",
                                   valueName: "address"))
        var toward: String?

        @Option(help: "Seconds the link's byte counters are sampled (every 100 ms), 1...60.")
        var sampleSeconds = 2

        func validate() throws {
            guard (1...60).contains(sampleSeconds) else { throw ValidationError("--sample-seconds must be 1...60") }
            if toward != nil, hostType == nil {
                throw ValidationError("--toward needs --host-type (its configured rate is the capacity of a link whose speed the kernel does not know)")
            }
        }

        func run() async throws {
            let type = try hostType.map { try VMCommand.load(HostType.self, $0, flag: "--host-type") }
            var inventory = try await VMCommand.withQMP(qmp) { try await HostInventory.read(from: $0, hostType: type) }
            if let toward, let type {
                let monitor: LinkMonitor
                do {
                    monitor = try LinkMonitor.toward(toward, configuredCapacityBytesPerSecond: type.migrationBandwidthBytesPerSecond)
                    inventory.link = try await monitor.measure(for: .seconds(sampleSeconds))
                } catch {
                    throw ValidationError("--toward \(toward): \(error)")
                }
            }
            guard models else { return try VMCommand.printJSON(inventory) }
            print("QEMU \(inventory.qemuVersion); host model \(inventory.hostCPUModel) (\(inventory.hostCPUFeatures.count) features)")
            if let link = inventory.link { print("free migration bandwidth: \(link)") }
            if let devices = type?.devices { print("devices offered: \(devices.joined(separator: ", "))") }
            for model in inventory.cpuModels {
                print("\(model.name)\t\(model.vendor ?? "?")\t\(model.features?.count ?? 0) features\t\(model.migrationSafe ? "migration-safe" : "not migration-safe")")
            }
        }
    }

    struct Describe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A running guest as a template sees it: its agent's report and its host's dirty-rate measurement (JSON).")

        @Option(help: "The guest's name.")
        var name: String

        @Option(help: ArgumentHelp("The guest's QMP socket.", valueName: "path"))
        var qmp: String

        @Option(help: ArgumentHelp("The guest's agent chardev socket.", valueName: "path"))
        var agent: String

        @Option(help: ArgumentHelp("How the guest's QEMU was started (JSON launch spec).", valueName: "file"))
        var spec: String

        @Option(help: "Seconds QEMU measures the dirty rate (calc-dirty-rate), 0 to skip, at most 60.")
        var dirtySeconds = 1

        func validate() throws {
            guard (0...60).contains(dirtySeconds) else { throw ValidationError("--dirty-seconds must be 0...60") }
        }

        func run() async throws {
            let launch = try VMCommand.load(GuestLaunchSpec.self, spec, flag: "--spec")
            let description = try await VMCommand.withQMP(qmp) { client in
                try await VMDescription.survey(RunningGuest(name: name, spec: launch, qmp: client, agentSocketPath: agent),
                                               connectAgent: AgentChannelConnection.connector, dirtyRateSeconds: dirtySeconds)
            }
            try VMCommand.printJSON(description)
        }
    }

    /// What `template` and `plan` both take.
    struct TemplateOptions: ParsableArguments {
        @Option(name: .customLong("vm"), help: ArgumentHelp("A guest's description (`describe`); repeat for a set.", valueName: "file"))
        var vms: [String] = []

        @Option(help: ArgumentHelp("The target host's inventory (`inventory`).", valueName: "file"))
        var inventory: String

        @Option(help: ArgumentHelp("The target host type.", valueName: "file"))
        var hostType: String

        @Option(help: ArgumentHelp("The type to change to on the way.", valueName: "name:vcpus:memory-mib"))
        var vmType: String?

        @Option(help: ArgumentHelp("The migration policy (JSON; default: 300 ms downtime, post-copy allowed).", valueName: "file"))
        var policy: String?

        func validate() throws {
            guard !vms.isEmpty else { throw ValidationError("give at least one --vm") }
            if let vmType { _ = try VMCommand.parseVMType(vmType) }
        }

        func build() throws -> MigrationTemplate {
            let descriptions = try vms.map { try VMCommand.load(VMDescription.self, $0, flag: "--vm") }
            return MigrationTemplate.build(
                vms: descriptions, to: try VMCommand.load(HostInventory.self, inventory, flag: "--inventory"),
                hostType: try VMCommand.load(HostType.self, hostType, flag: "--host-type"),
                vmType: try vmType.map(VMCommand.parseVMType),
                policy: try policy.map { try VMCommand.load(MigrationPolicy.self, $0, flag: "--policy") } ?? MigrationPolicy())
        }
    }

    struct Template: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The migration template of a set of guests for a host type (JSON, with each guest's proof).")

        @OptionGroup var options: TemplateOptions

        func run() async throws { try VMCommand.printJSON(try options.build()) }
    }

    struct Plan: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The template's proofs and moves in words; exit status 3 when a guest cannot move.")

        @OptionGroup var options: TemplateOptions

        func run() async throws {
            let template = try options.build()
            print("host type \(template.hostType); CPU model for the set: \(template.cpuModel ?? "none"); devices: "
                  + (template.devices.isEmpty ? "none" : template.devices.joined(separator: ", ")))
            print("bandwidth \(formatRate(template.bandwidthBytesPerSecond)): \(template.bandwidthSource)")
            for proof in template.proofs {
                guard proof.canMove, let plan = template.plans.first(where: { $0.vm == proof.vm }) else {
                    print("\(proof.vm): REFUSED")
                    for blocker in proof.blockers { print("  - \(blocker)") }
                    continue
                }
                print("\(proof.vm): moves on -cpu \(plan.cpuModel),enforce; \(plan.destinationShape.vcpus) -> \(plan.targetVCPUs) vCPUs, "
                      + "\(plan.destinationShape.memoryMiB) -> \(plan.targetMemoryMiB) MiB; \(plan.convergence.strategy.rawValue): "
                      + "\(plan.convergence.reason); about \(Int(plan.convergence.predictedSeconds.rounded(.up))) s")
            }
            if template.proofs.contains(where: { !$0.canMove }) { throw ExitCode(3) }
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move one guest as its template says; the destination QEMU runs as this command's child.",
            discussion: """
                Starts the destination from the template (-incoming defer, -cpu MODEL,enforce), migrates, \
                follows query-migrate, grows the guest to its target type, confirms through its agent, then \
                quits the source. On failure the source keeps running and the reason is printed with QEMU's \
                own words (exit 4). On success the outcome is printed (JSON) and the command stays until \
                the destination exits.
                """)

        @Option(help: "The guest's name (as in the template).")
        var name: String

        @Option(help: ArgumentHelp("The source guest's QMP socket.", valueName: "path"))
        var qmp: String

        @Option(help: ArgumentHelp("The source guest's agent chardev socket.", valueName: "path"))
        var agent: String

        @Option(help: ArgumentHelp("How the source's QEMU was started (JSON launch spec).", valueName: "file"))
        var spec: String

        @Option(help: ArgumentHelp("The template (`template`).", valueName: "file"))
        var template: String

        @Option(help: ArgumentHelp("Where the destination's run directory goes.", valueName: "dir"))
        var runRoot: String

        @Option(help: "QEMU binary.")
        var qemu = "/usr/bin/qemu-system-x86_64"

        @Option(help: "Serve Prometheus metrics on GET /metrics at HOST:PORT during and after the move (port 0: any, printed).")
        var metrics: String?

        @Option(help: ArgumentHelp("Record the rate QEMU achieves on the link toward this address (printed as `link: ...`).",
                                   valueName: "address"))
        var toward: String?

        func validate() throws {
            if let metrics { _ = try hostPort(metrics, flag: "--metrics", portZero: true) }
        }

        func run() async throws {
            let launch = try VMCommand.load(GuestLaunchSpec.self, spec, flag: "--spec")
            let loaded = try VMCommand.load(MigrationTemplate.self, template, flag: "--template")
            guard let proof = loaded.proofs.first(where: { $0.vm == name }) else {
                throw ValidationError("--template \(template) has no guest named \(name)")
            }
            let client = try await QMPClient.connect(path: qmp)
            let source = RunningGuest(name: name, spec: launch, qmp: client, agentSocketPath: agent)
            var configuration = MigrationExecutor.Configuration(qemuBinary: qemu, runRoot: runRoot)
            if let toward {
                do {
                    configuration.linkMonitor = try LinkMonitor.toward(toward, configuredCapacityBytesPerSecond: loaded.bandwidthBytesPerSecond)
                } catch {
                    throw ValidationError("--toward \(toward): \(error)")
                }
            }
            let executor = MigrationExecutor(configuration, connectAgent: AgentChannelConnection.connector)
            var endpoint: MetricsEndpoint?
            if let metrics {
                let (host, port) = try hostPort(metrics, flag: "--metrics", portZero: true)
                let counters = executor.counters
                endpoint = try MetricsEndpoint.bind(ListenAddress(host: host, port: port), render: { counters.prometheusText() })
                print("metrics on \(endpoint!.host):\(endpoint!.port)")
                fflush(nil)
            }
            defer { endpoint?.close() }
            let result: Result<(MigrationOutcome, RunningGuest), MigrationFailure>
            if let plan = loaded.plans.first(where: { $0.vm == name }) {
                result = await executor.migrate(source, plan: plan, proof: proof, policy: loaded.policy)
            } else {
                result = .failure(.refused(vm: name, blockers: proof.blockers))
            }
            switch result {
            case .failure(let failure):
                await client.close()
                FileHandle.standardError.write(Data("sluice vm migrate: \(failure)\n".utf8))
                throw ExitCode(4)
            case .success(let (outcome, moved)):
                try VMCommand.printJSON(outcome)
                if let monitor = configuration.linkMonitor, let observation = monitor.observations.last {
                    print("link: \(monitor.configuration.interface): QEMU achieved \(formatRate(observation.bytesPerSecond)) "
                          + "(planned \(formatRate(loaded.bandwidthBytesPerSecond)))")
                }
                if let process = moved.process {
                    print("destination: QMP \(GuestLaunchSpec.operatorQMPPath(runDirectory: process.runDirectory)), "
                          + "agent \(moved.agentSocketPath), pid \(process.pid)")
                    fflush(nil)  // the outcome must reach a pipe now, not when the destination exits
                    while await process.waitForExit(timeout: .seconds(3600)) == nil {}
                }
            }
        }
    }
}
