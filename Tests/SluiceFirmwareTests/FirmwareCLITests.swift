// `sluice firmware` run as a child process (the built binary next to the test bundle): keygen, sign,
// update, check, an update stopped midway or a tampered extra increment (tpm2_nvincrement on a real
// swtpm), check isolating with the reason, readmit, check healthy again; bad flags.
import Foundation
import SluiceFirmware
import SluiceFirmwareTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `<build>/debug/sluice` found from this test runner (which runs from `<build>/debug/`), or nil.
func firmwareCLIBinary() -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard count > 0 else { return nil }
    var path = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    for _ in 0..<4 {
        guard let slash = path.lastIndex(of: "/") else { return nil }
        path = String(path[..<slash])
        if access(path + "/sluice", X_OK) == 0 { return path + "/sluice" }
    }
    return nil
}

struct Ran: CustomStringConvertible {
    let status: Int32
    let stdout: String
    let stderr: String
    var description: String { "exit \(status)\n--- stdout\n\(stdout)--- stderr\n\(stderr)" }
}

/// Runs `executable` with `arguments` (bounded: killed after 60 s), output captured through files.
func runChild(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Ran {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = NSTemporaryDirectory() + "sluice-fwcli-out-\(UUID().uuidString)"
    let err = out + ".err"
    FileManager.default.createFile(atPath: out, contents: nil)
    FileManager.default.createFile(atPath: err, contents: nil)
    defer {
        unlink(out)
        unlink(err)
    }
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(60)
    while process.isRunning {
        if Date() > deadline {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw SwtpmError("\(executable) \(arguments) ran over 60 s")
        }
        usleep(5_000)
    }
    return Ran(status: process.terminationStatus,
               stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
               stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// A temp directory with node, vendor and operator keys made by `sluice firmware keygen`, an image
/// signed by `sluice firmware sign`, and the store.
final class CLIFixture: @unchecked Sendable {
    let binary: String
    let directory: String
    var store: String { directory + "/store" }
    var counterFlags: [String] = []

    init() throws {
        binary = try #require(firmwareCLIBinary(), "no built `sluice` next to the test bundle (swift build --build-tests)")
        directory = NSTemporaryDirectory() + "sluice-fwcli-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory + "/store", withIntermediateDirectories: true)
        for name in ["node", "vendor", "operator"] {
            let ran = try sluice(["keygen", "--out", directory + "/" + name + ".key"])
            #expect(ran.status == 0, "\(ran)")
        }
        for (name, seed) in [("one", 1), ("two", 2)] {
            let image = (0..<(32 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ seed) }
            try Data(image).write(to: URL(fileURLWithPath: directory + "/\(name).img"))
            let ran = try sluice(["sign", directory + "/\(name).img", "--vendor-key-private", directory + "/vendor.key",
                                  "--out", directory + "/\(name).sig"])
            #expect(ran.status == 0, "\(ran)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func sluice(_ arguments: [String]) throws -> Ran { try runChild(binary, ["firmware"] + arguments) }

    var common: [String] {
        ["--store", store, "--node-key", directory + "/node.key", "--vendor-key", directory + "/vendor.key.pub",
         "--operator-key", directory + "/operator.key.pub"] + counterFlags
    }

    func update(_ device: String, _ image: String = "one", extra: [String] = []) throws -> Ran {
        try sluice(["update"] + common + [device, directory + "/\(image).img", "--sig", directory + "/\(image).sig"] + extra)
    }

    func check(_ devices: String...) throws -> Ran { try sluice(["check"] + common + devices) }

    func readmit(_ device: String) throws -> Ran {
        try sluice(["readmit"] + common + [device, "--operator-key-private", directory + "/operator.key"])
    }
}

@Suite(.serialized) struct FirmwareCLISoftwareTests {
    @Test func updateCheckInterruptReadmitWithTheSoftwareCounter() throws {
        let cli = try CLIFixture()
        var ran = try cli.update("port0")
        #expect(ran.status == 0, "\(ran)")
        for step in UpdateStep.allCases { #expect(ran.stdout.contains("update port0: \(step.rawValue)"), "\(ran)") }
        #expect(ran.stdout.contains("confirmed: counter 1 (software), slot a"), "\(ran)")
        #expect(ran.stderr.contains("weaker: software counter"), "\(ran)")
        #expect(try cli.update("disk0").status == 0)
        ran = try cli.check()
        #expect(ran.status == 0 && ran.stdout.contains("port0: healthy (counter 1)") && ran.stdout.contains("2 healthy, 0 isolated"), "\(ran)")

        // An update stopped after the counter advance (a crash there): port0 isolated, disk0 not.
        ran = try cli.update("port0", "two", extra: ["--stop-after", "counter-advanced"])
        #expect(ran.status == 1 && ran.stdout.contains("stopped after counter advanced"), "\(ran)")
        ran = try cli.check()
        #expect(ran.status == 3, "\(ran)")
        #expect(ran.stdout.contains("port0: ISOLATED: counter 2, confirmed 1"), "\(ran)")
        #expect(ran.stdout.contains("disk0: healthy"), "\(ran)")
        let incident = try #require(ran.stdout.split(separator: "\n").first { $0.contains("incident: /") })
        #expect(FileManager.default.fileExists(atPath: String(incident.split(separator: " ").last ?? "")), "\(incident)")

        ran = try cli.sluice(["status"] + cli.common + ["port0"])
        #expect(ran.status == 0, "\(ran)")
        for expected in ["counter: software, value 2", "record: counter 1 (software), slot a", "active slot: a",
                         "refused attempts: 0", "counter advanced: attempt 2", "last incident: counter 2, confirmed 1"] {
            #expect(ran.stdout.contains(expected), "status lacks \"\(expected)\": \(ran)")
        }

        ran = try cli.readmit("port0")
        // Readmission is itself a counted change: the counter moves to 3 and 3 is recorded.
        #expect(ran.status == 0 && ran.stdout.contains("readmitted: counter 3 (software), slot a"), "\(ran)")
        #expect(try cli.check().status == 0)

        // A deleted record: isolated until readmitted.
        unlink(cli.store + "/disk0/record")
        ran = try cli.check("disk0")
        #expect(ran.status == 3 && ran.stdout.contains("disk0: ISOLATED: no confirmation record"), "\(ran)")
        #expect(try cli.readmit("disk0").status == 0)
        ran = try cli.check("disk0", "port0")
        #expect(ran.status == 0 && ran.stdout.contains("2 healthy, 0 isolated"), "\(ran)")
    }

    @Test func refusalsAndBadFlagsSayWhat() throws {
        let cli = try CLIFixture()
        // An image with another image's signature: refused, no attempt counted, nothing isolated.
        #expect(try cli.update("port0").status == 0)
        var ran = try cli.sluice(["update"] + cli.common + ["port0", cli.directory + "/two.img", "--sig", cli.directory + "/one.sig"])
        #expect(ran.status == 1 && ran.stderr.contains("image signature invalid"), "\(ran)")
        #expect(try cli.check("port0").status == 0)
        // A readmission signed by another key than the operator's.
        ran = try cli.sluice(["readmit"] + cli.common + ["port0", "--operator-key-private", cli.directory + "/vendor.key"])
        #expect(ran.status == 1 && ran.stderr.contains("not signed by the operator's key"), "\(ran)")

        let base = ["--store", cli.store, "--node-key", cli.directory + "/node.key", "--vendor-key", cli.directory + "/vendor.key.pub"]
        let bad: [([String], String)] = [
            (["check"] + base + ["--counter", "tpm"], "--counter tpm needs --tpm HOST:PORT"),
            (["check"] + base + ["--counter", "tpm", "--tpm", "localhost"], "is not HOST:PORT"),
            (["check"] + base + ["--tpm", "127.0.0.1:2321"], "go with --counter tpm"),
            (["check"] + base + ["--counter", "tpm", "--tpm", "127.0.0.1:2321", "--tpm-index", "port0=12"], "is not DEVICE=0xINDEX"),
            (["check"] + base + ["--counter", "tpm", "--tpm", "127.0.0.1:2321", "--tpm-index", "port0=0x81000000"], "outside the owner NV range"),
            (["check"] + base + ["--counter", "flash"], "flash"),
            (["readmit"] + base + ["port0", "--operator-key-private", cli.directory + "/operator.key"], "needs --operator-key"),
            (["check"] + base + ["../etc"], "device name"),
            (["check", "--store", cli.store, "--node-key", cli.directory + "/nope", "--vendor-key", cli.directory + "/vendor.key.pub"], "nope"),
            (["keygen", "--out", cli.directory + "/node.key"], "not overwritten"),
        ]
        for (arguments, message) in bad {
            ran = try cli.sluice(arguments)
            #expect(ran.status != 0 && ran.stderr.contains(message), "\(arguments): \(ran)")
        }
    }
}

@Suite(.serialized, .enabled(if: swtpmTestsEnabled, "swtpm not installed (/usr/bin/swtpm); `make deps` installs it"))
struct FirmwareCLITPMTests {
    /// With a real swtpm: update two devices (one at a given index, one at the default), then a
    /// tampered extra increment by tpm2_nvincrement (owner authorization, as anyone with the owner
    /// password could): that device is isolated with the counter ahead of the record; readmit.
    @Test func tamperedIncrementThroughTPMToolsIsolatesThenReadmit() throws {
        try withSwtpm { swtpm in
            let cli = try CLIFixture()
            try Data("cli-auth\n".utf8).write(to: URL(fileURLWithPath: cli.directory + "/auth"))
            let index: UInt32 = 0x0150_0abc
            cli.counterFlags = ["--counter", "tpm", "--tpm", "127.0.0.1:\(swtpm.port)", "--tpm-auth-file", cli.directory + "/auth",
                                "--tpm-index", "port0=0x\(String(index, radix: 16))"]
            var ran = try cli.update("port0")
            #expect(ran.status == 0 && ran.stdout.contains("(tpm), slot a"), "\(ran)")
            #expect(!ran.stderr.contains("weaker"), "\(ran)")
            #expect(try cli.update("disk0").status == 0)
            ran = try cli.check()
            #expect(ran.status == 0, "\(ran)")
            let confirmed = try #require(ran.stdout.split(separator: "\n").first { $0.hasPrefix("port0: healthy") })

            let tool = try runChild("/usr/bin/tpm2_nvincrement", ["-C", "o", "0x\(String(index, radix: 16))"],
                                    environment: ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(swtpm.port)"])
            #expect(tool.status == 0, "tpm2_nvincrement: \(tool)")
            ran = try cli.check()
            #expect(ran.status == 3, "\(ran)")
            #expect(ran.stdout.contains("port0: ISOLATED") && ran.stdout.contains("1 update attempt(s) not confirmed"), "\(ran)")
            #expect(ran.stdout.contains("disk0: healthy"), "\(ran)")
            ran = try cli.sluice(["status"] + cli.common + ["port0"])
            #expect(ran.stdout.contains("counter: tpm 0x\(String(index, radix: 16))"), "\(ran)")

            ran = try cli.readmit("port0")
            #expect(ran.status == 0 && ran.stdout.contains("readmitted"), "\(ran)")
            ran = try cli.check()
            #expect(ran.status == 0 && ran.stdout.contains("2 healthy, 0 isolated"), "\(ran) (before: \(confirmed))")

            // The TPM gone: every device isolated, counter unreadable.
            swtpm.kill()
            ran = try cli.check()
            #expect(ran.status == 3 && ran.stdout.contains("port0: ISOLATED: counter unreadable"), "\(ran)")
        }
    }

    /// TPM2_Clear (tpm2_clear with platform authorization, empty on swtpm) deletes every owner NV index,
    /// these counters included: every device is isolated as "not defined". An update does not lift the
    /// isolation (updated while isolated); the operator's readmission defines the counter again, and
    /// the first increment lands above any value a counter had before the clear.
    @Test func tpmClearIsolatesEveryDeviceUntilReadmitted() throws {
        try withSwtpm { swtpm in
            let cli = try CLIFixture()
            cli.counterFlags = ["--counter", "tpm", "--tpm", "127.0.0.1:\(swtpm.port)"]
            #expect(try cli.update("port0").status == 0)
            #expect(try cli.update("port0").status == 0)
            #expect(try cli.update("disk0").status == 0)
            #expect(try cli.check().status == 0)
            let tool = try runChild("/usr/bin/tpm2_clear", ["-c", "p"],
                                    environment: ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(swtpm.port)"])
            #expect(tool.status == 0, "tpm2_clear: \(tool)")
            var ran = try cli.check()
            #expect(ran.status == 3 && ran.stdout.contains("0 healthy, 2 isolated"), "\(ran)")
            #expect(ran.stdout.contains("port0: ISOLATED: counter unreadable") && ran.stdout.contains("is not defined"), "\(ran)")
            // An update alone does not readmit.
            #expect(try cli.update("disk0", "two").status == 0)
            ran = try cli.check("disk0")
            #expect(ran.status == 3 && ran.stdout.contains("updated while isolated"), "\(ran)")
            ran = try cli.readmit("port0")
            #expect(ran.status == 0, "\(ran)")
            let readmitted = ran.stdout.split(separator: "\n").first { $0.contains("readmitted: counter") }.map(String.init) ?? ""
            print("after TPM2_Clear (counters were at 2 and 1; disk0 updated since): \(readmitted)")
            #expect(try cli.readmit("disk0").status == 0)
            ran = try cli.check()
            #expect(ran.status == 0 && ran.stdout.contains("2 healthy, 0 isolated"), "\(ran)")
        }
    }
}
