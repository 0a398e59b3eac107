// Path: Benchmarks/Sources/firmware-bench/FirmwareBench.swift — the firmware-update attempt counter's cost: a
// TPMCounter increment and read through ESAPI against tpm2_nvincrement / tpm2_nvread spawned per
// operation on the same swtpm (the anchor a shell-script implementation would be), and the boot check
// of N devices (FirmwareNode.check) with the TPM counter and the software counter. Rounds interleave
// every variant; prints a markdown table of per-operation medians and p90s (scripts/bench-firmware.sh).
import ArgumentParser
import Crypto  // the signing keys' type (a dependency of SluiceFirmware)
import Foundation
import Glibc
import SluiceFirmware

@main
struct FirmwareBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firmware-bench",
        abstract: "TPM counter via ESAPI vs tpm2-tools per operation, and the boot check of N devices, on an swtpm.")

    @Option(help: "The swtpm's server port on 127.0.0.1 (its control port is PORT + 1).") var port: Int
    @Option(help: "Interleaved rounds.") var rounds = 5
    @Option(help: "ESAPI operations per round and kind.") var esapiOps = 200
    @Option(help: "tpm2-tools spawns per round and kind.") var toolOps = 20
    @Option(help: "Boot checks of all devices per round and counter.") var checks = 20
    @Option(help: "Devices the boot check covers.") var devices = 4
    @Option(help: "Image bytes per device (the check hashes it and verifies its signature).") var imageBytes = 65536
    @Option(help: "NV index of the benchmark counter (owner range).") var index = "0x0150f000"
    @Option(help: "Directory for the two stores (emptied first).") var scratch = "/tmp/sluice-firmware-bench"

    func validate() throws {
        guard (1...64).contains(devices), rounds >= 1, esapiOps >= 1, toolOps >= 1, checks >= 1 else {
            throw ValidationError("--devices 1-64; --rounds, --esapi-ops, --tool-ops, --checks at least 1")
        }
        guard index.hasPrefix("0x"), UInt32(index.dropFirst(2), radix: 16) != nil else { throw ValidationError("--index: 0xHEX") }
    }

    func run() throws {
        let nvIndex = UInt32(index.dropFirst(2), radix: 16)!
        let tcti = TPMConnection.swtpm(host: "127.0.0.1", port: port)
        setenv("TPM2TOOLS_TCTI", tcti, 1)
        let connection = try TPMConnection(tcti: tcti)
        // Empty auth: the tools authorise with the owner hierarchy (empty owner auth), ESAPI with the index's.
        let counter = try TPMCounter(connection: connection, index: nvIndex, auth: [])
        _ = try counter.increment()  // defines it if needed

        // Two stores of `devices` devices each, updated once: one on TPM counters, one on software counters.
        try? FileManager.default.removeItem(atPath: scratch)
        let nodeKey = Curve25519.Signing.PrivateKey(), vendorKey = Curve25519.Signing.PrivateKey()
        let image = (0..<imageBytes).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let signature = Array(try vendorKey.signature(for: image))
        func makeNode(_ name: String, _ source: CounterSource) throws -> FirmwareNode {
            try FileManager.default.createDirectory(atPath: scratch + "/" + name, withIntermediateDirectories: true)
            return FirmwareNode(root: scratch + "/" + name, counterSource: source, nodeKey: nodeKey,
                                vendorKey: vendorKey.publicKey, operatorKey: nil)
        }
        let tpmNode = try makeNode("tpm", .tpm(connection, auth: [], indices: [:]))
        let softwareNode = try makeNode("software", .software)
        let names = (0..<devices).map { "bench\($0)" }
        for name in names {
            try tpmNode.update(device: name, image: image, signature: signature)
            try softwareNode.update(device: name, image: image, signature: signature)
        }

        var samples: [String: [Double]] = [:]  // microseconds per operation
        func time(_ kind: String, _ count: Int, _ body: () throws -> Void) rethrows {
            for _ in 0..<count {
                let start = ContinuousClock.now
                try body()
                samples[kind, default: []].append(microseconds(ContinuousClock.now - start))
            }
        }
        let indexText = "0x" + String(nvIndex, radix: 16)
        for _ in 0..<rounds {
            try time("increment: ESAPI (TPMCounter)", esapiOps) { _ = try counter.increment() }
            try time("increment: tpm2_nvincrement spawned", toolOps) { try spawn(["/usr/bin/tpm2_nvincrement", "-C", "o", indexText]) }
            try time("read: ESAPI (TPMCounter)", esapiOps) { _ = try counter.read() }
            try time("read: tpm2_nvread spawned", toolOps) { try spawn(["/usr/bin/tpm2_nvread", "-C", "o", "-s", "8", indexText]) }
            try time("boot check, \(devices) devices: TPM (connection open)", checks) {
                for name in names where tpmNode.check(device: name).isolated { throw ValidationError("\(name) isolated") }
            }
            try time("boot check, \(devices) devices: TPM incl. connect", checks) {
                let fresh = try TPMConnection(tcti: tcti)
                let node = FirmwareNode(root: scratch + "/tpm", counterSource: .tpm(fresh, auth: [], indices: [:]),
                                        nodeKey: nodeKey, vendorKey: vendorKey.publicKey, operatorKey: nil)
                for name in names where node.check(device: name).isolated { throw ValidationError("\(name) isolated") }
            }
            try time("boot check, \(devices) devices: software", checks) {
                for name in names where softwareNode.check(device: name).isolated { throw ValidationError("\(name) isolated") }
            }
        }

        print("| operation | samples | median | p90 |")
        print("|---|---:|---:|---:|")
        let order = samples.keys.sorted()
        for kind in order {
            let sorted = samples[kind]!.sorted()
            print("| \(kind) | \(sorted.count) | \(format(percentile(sorted, 0.5))) | \(format(percentile(sorted, 0.9))) |")
        }
        let median = { (kind: String) in percentile(samples[kind]!.sorted(), 0.5) }
        let incrementRatio = median("increment: tpm2_nvincrement spawned") / median("increment: ESAPI (TPMCounter)")
        let readRatio = median("read: tpm2_nvread spawned") / median("read: ESAPI (TPMCounter)")
        print("")
        print("ESAPI vs spawned tool (median): increment \(String(format: "%.1f", incrementRatio))x faster, "
              + "read \(String(format: "%.1f", readRatio))x faster (goal: at least 5x).")
        print("Image \(imageBytes) bytes per device; \(rounds) interleaved rounds; swtpm on 127.0.0.1:\(port).")
        try? FileManager.default.removeItem(atPath: scratch)
    }
}

func microseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
}

func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * fraction + 0.5))]
}

func format(_ microseconds: Double) -> String {
    microseconds >= 1000 ? String(format: "%.2f ms", microseconds / 1000) : String(format: "%.0f µs", microseconds)
}

/// Runs `arguments` (stdout and stderr to /dev/null) and waits; a non-zero exit is an error.
func spawn(_ arguments: [String]) throws {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0)
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
    guard result == 0 else { throw ValidationError("posix_spawn \(arguments[0]): \(result)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    guard status == 0 else { throw ValidationError("\(arguments.joined(separator: " ")): wait status \(status)") }
}
