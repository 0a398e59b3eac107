// Path: Tests/SluiceMigrationTests/VMCommandTests.swift — `sluice vm` end to end on one real guest: inventory,
// describe, template, plan (a refused host type exits 3 and names the missing flags), migrate (the guest
// moves, changes type, and the outcome is printed).
import Foundation
import Glibc
import SluiceMigration
import SluiceMigrationTestSupport
import SluiceTestSupport
import Testing

@Suite(.serialized) struct VMCommandTests {
    static func write<T: Encodable>(_ value: T, to path: String) throws {
        try JSONEncoder().encode(value).write(to: URL(fileURLWithPath: path))
    }

    @Test(.timeLimit(.minutes(6)))
    func inventoryDescribeTemplatePlanAndMigrate() async throws {
        if let reason = MigrationTestEnvironment.skipReason { print("skipped: \(reason)"); return }
        guard let sluice = sluiceBinary() else {
            Issue.record("the sluice binary is not built (swift build --product sluice)")
            return
        }
        let image = try GuestImage.prepared()
        let root = try MigrationExecutorTests.scratch()
        defer {
            // `sluice vm migrate` leaves its destination running when it is stopped (the destination holds
            // the guest): kill every QEMU whose files are under this test's directory, whatever happened.
            Self.killQEMUs(under: root)
            try? FileManager.default.removeItem(atPath: root)
        }
        let spec = MigrationExecutorTests.spec(image, cpu: "Westmere", vcpus: 1, memoryMiB: 256)
        let source = try await MigrationExecutorTests.boot("cli", spec, in: root + "/src")
        let probe = try await QEMUProcess.launch(QEMUProcess.Configuration(
            arguments: ["-machine", "q35", "-nodefaults", "-display", "none", "-m", "64M", "-S",
                        "-qmp", "unix:\(root)/probe-ops.sock,server=on,wait=off"], runDirectory: root + "/probe"))
        defer { probe.kill() }
        try Self.write(spec, to: root + "/spec.json")
        try Self.write(MigrationExecutorTests.bigType, to: root + "/big.json")
        try Self.write(MigrationExecutorTests.oldType, to: root + "/old.json")
        guard let process = source.process else { return }

        for (type, file) in [("big", "inv-big.json"), ("old", "inv-old.json")] {
            let inventory = try runCommand([sluice, "vm", "inventory", "--qmp", "\(root)/probe-ops.sock", "--host-type", "\(root)/\(type).json"])
            #expect(inventory.status == 0, "\(inventory.stderr)")
            try inventory.lines.joined(separator: "\n").write(toFile: "\(root)/\(file)", atomically: true, encoding: .utf8)
        }
        // Free migration bandwidth, measured on the link toward the destination (127.0.0.1: lo, whose speed
        // the kernel does not know: the host type's rate is its capacity).
        let measured = try runCommand([sluice, "vm", "inventory", "--qmp", "\(root)/probe-ops.sock", "--host-type", "\(root)/big.json",
                                       "--toward", "127.0.0.1", "--sample-seconds", "1", "--models"])
        #expect(measured.status == 0, "\(measured.stderr)")
        #expect(measured.lines.contains { $0.hasPrefix("free migration bandwidth: measured free ") && $0.contains("of capacity 256.0 MiB/s (host type's configured rate) on lo") },
                "\(measured.lines.prefix(3))")
        let noType = try runCommand([sluice, "vm", "inventory", "--qmp", "\(root)/probe-ops.sock", "--toward", "127.0.0.1"])
        #expect(noType.status != 0 && noType.stderr.contains("--toward needs --host-type"))
        let described = try runCommand([sluice, "vm", "describe", "--name", "cli", "--qmp", GuestLaunchSpec.operatorQMPPath(runDirectory: process.runDirectory),
                                        "--agent", source.agentSocketPath, "--spec", root + "/spec.json"])
        #expect(described.status == 0, "\(described.stderr)")
        try described.lines.joined(separator: "\n").write(toFile: root + "/cli.json", atomically: true, encoding: .utf8)
        let report = try JSONDecoder().decode(VMDescription.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/cli.json")))
        #expect(report.report.cpuFlags.contains("aes"))

        // The older host type cannot take a Westmere guest: plan says why and exits 3.
        let refused = try runCommand([sluice, "vm", "plan", "--vm", root + "/cli.json", "--inventory", root + "/inv-old.json",
                                      "--host-type", root + "/old.json"])
        #expect(refused.status == 3)
        #expect(refused.lines.contains { $0.contains("REFUSED") })
        #expect(refused.lines.contains { $0.contains("aes") && $0.contains("Nehalem") })

        let template = try runCommand([sluice, "vm", "template", "--vm", root + "/cli.json", "--inventory", root + "/inv-big.json",
                                       "--host-type", root + "/big.json", "--vm-type", "2x512:2:512"])
        #expect(template.status == 0, "\(template.stderr)")
        try template.lines.joined(separator: "\n").write(toFile: root + "/template.json", atomically: true, encoding: .utf8)
        let planned = try runCommand([sluice, "vm", "plan", "--vm", root + "/cli.json", "--inventory", root + "/inv-big.json",
                                      "--host-type", root + "/big.json", "--vm-type", "2x512:2:512"])
        #expect(planned.status == 0)
        #expect(planned.lines.contains { $0.contains("cli: moves on -cpu Westmere,enforce; 1 -> 2 vCPUs, 256 -> 512 MiB") })
        #expect(planned.lines.contains { $0.hasPrefix("bandwidth 256.0 MiB/s: configured 256.0 MiB/s of host type big-westmere (not measured)") },
                "\(planned.lines)")
        #expect(planned.lines.first?.hasSuffix("devices: virtio-serial-pci") == true, "\(planned.lines)")

        // The move: the command prints the outcome, then stays with the destination as its child.
        let migrate = try ChildProcess([sluice, "vm", "migrate", "--name", "cli", "--qmp", GuestLaunchSpec.operatorQMPPath(runDirectory: process.runDirectory),
                                        "--agent", source.agentSocketPath, "--spec", root + "/spec.json",
                                        "--template", root + "/template.json", "--run-root", root + "/dst",
                                        "--metrics", "127.0.0.1:0", "--toward", "127.0.0.1"])
        var lines: [String] = []
        let deadline = ContinuousClock.now + .seconds(180)
        while ContinuousClock.now < deadline, !lines.contains(where: { $0.hasPrefix("destination:") }) {
            if let line = migrate.readLine(timeoutMs: 1000) { lines.append(line) }
            if migrate.wait(timeoutMs: 0) != nil { break }
        }
        if migrate.wait(timeoutMs: 0) == 4, migrate.stderrText.contains("vCPUs online 1/2") {
            // The executor refused to confirm a guest whose hot-added vCPU did not come up (tcg): see
            // MigrationExecutorTests.record. The source runs on; nothing else to check here.
            withKnownIssue("hot-added vCPU bring-up under tcg can stall", isIntermittent: true) {
                Issue.record("\(migrate.stderrText)")
            }
            return
        }
        let outcomeText = lines.prefix { !$0.hasPrefix("destination:") }.filter { !$0.hasPrefix("metrics on ") && !$0.hasPrefix("link: ") }
            .joined(separator: "\n")
        let outcome = try? JSONDecoder().decode(MigrationOutcome.self, from: Data(outcomeText.utf8))
        #expect(outcome?.after.vcpusOnline == 2, "stdout: \(lines.joined(separator: "\n")); stderr: \(migrate.stderrText)")
        #expect(outcome?.after.bootID == outcome?.before.bootID)
        // The rate QEMU achieved is recorded on the link toward the destination (127.0.0.1: lo).
        #expect(lines.contains { $0.hasPrefix("link: lo: QEMU achieved ") && $0.contains("(planned 256.0 MiB/s)") }, "\(lines)")
        // The metrics endpoint counts the move (scraped with curl while the command holds the destination).
        if let address = lines.first(where: { $0.hasPrefix("metrics on ") })?.dropFirst("metrics on ".count) {
            let scrape = try runCommand(["/usr/bin/curl", "-sf", "http://\(address)/metrics"])
            #expect(scrape.status == 0, "\(scrape.stderr)")
            #expect(scrape.lines.contains("sluice_migration_completed_total 1"), "\(scrape.lines)")
            #expect(scrape.lines.contains("sluice_migration_running 0"))
            #expect(scrape.lines.contains("sluice_migration_failures_total{reason=\"not_confirmed\"} 0"))
        } else {
            Issue.record("no 'metrics on' line: \(lines)")
        }
        let sourceEnded = await process.waitForExit(timeout: .seconds(10))
        #expect(sourceEnded != nil)  // the source quit once the destination was confirmed
        migrate.signal(SIGTERM)
        _ = migrate.wait(timeoutMs: 10_000)
    }

    /// SIGKILLs every qemu-system process whose command line names a path under `root`.
    static func killQEMUs(under root: String) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return }
        for entry in entries {
            guard let pid = Int32(entry),
                  let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
            let arguments = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard arguments.first?.hasSuffix("qemu-system-x86_64") == true,
                  arguments.contains(where: { $0.contains(root + "/") }) else { continue }
            kill(pid, SIGKILL)
        }
    }
}

/// `sluice vm` on bad input: no guest or QEMU needed; each is refused with a message naming the flag.
@Suite struct VMCommandBadInputTests {
    @Test func badInputIsRefusedNamingTheFlag() throws {
        guard let sluice = sluiceBinary() else {
            Issue.record("the sluice binary is not built (swift build --product sluice)")
            return
        }
        let root = try MigrationExecutorTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A file far larger than any description: refused before it is read.
        FileManager.default.createFile(atPath: root + "/huge.json", contents: Data(count: (4 << 20) + 1))
        try "{\"name\": 1}".write(toFile: root + "/wrong.json", atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["template", "--vm", root + "/huge.json", "--inventory", root + "/huge.json", "--host-type", root + "/huge.json"],
             "more than the"),
            (["template", "--vm", root + "/wrong.json", "--inventory", root + "/wrong.json", "--host-type", root + "/wrong.json"],
             "not a"),
            (["template", "--vm", root + "/missing.json", "--inventory", root + "/m.json", "--host-type", root + "/m.json"],
             "cannot read"),
            (["template", "--inventory", root + "/m.json", "--host-type", root + "/m.json"], "at least one --vm"),
            (["describe", "--name", "x", "--qmp", root + "/q", "--agent", root + "/a", "--spec", root + "/s",
              "--dirty-seconds", "9999999999"], "--dirty-seconds"),
            (["migrate", "--name", "x", "--qmp", root + "/q", "--agent", root + "/a", "--spec", root + "/s",
              "--template", root + "/t", "--run-root", root, "--metrics", "127.0.0.1:99999999"], "--metrics"),
        ]
        for (arguments, expected) in cases {
            let result = try runCommand([sluice, "vm"] + arguments)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
        let planned = try runCommand([sluice, "vm", "plan", "--vm", root + "/m.json", "--inventory", root + "/m.json",
                                      "--host-type", root + "/m.json", "--vm-type", "big:0:512"])
        #expect(planned.status != 0 && planned.stderr.contains("--vm-type"), "\(planned.stderr)")
    }

    @Test func guestNamesThatWouldEscapeTheRunRootAreRefused() {
        for bad in ["", "../x", ".hidden", "a/b", String(repeating: "a", count: 65), "sp ace"] {
            #expect(!MigrationExecutor.isValidGuestName(bad), "\(bad)")
        }
        for good in ["web-1", "small_nehalem.2", String(repeating: "a", count: 64)] {
            #expect(MigrationExecutor.isValidGuestName(good), "\(good)")
        }
    }
}
