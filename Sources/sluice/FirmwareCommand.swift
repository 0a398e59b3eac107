// Path: Sources/sluice/FirmwareCommand.swift — `sluice firmware`: keys, image signatures (the vendor's side,
// for demos), and the node's update / status / check / readmit over SluiceFirmware. Flags in, a
// FirmwareNode built, its result printed; the flow and the checks are SluiceFirmware's (docs/FIRMWARE.md).
import ArgumentParser
import Crypto
import Foundation
import Glibc
import SluiceFirmware

struct FirmwareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firmware",
        abstract: "Firmware of the node's devices: update with an attempt counter, boot check, isolation, readmission.",
        discussion: """
            Every update attempt advances the device's counter (a TPM 2.0 NV counter, or a weaker \
            software counter) before the image is written; a confirmed update records the value in a \
            record signed with the node's key. `check` compares the two and isolates a device on any \
            mismatch, writing a signed incident report; `readmit` needs the operator's signature. \
            Exit status of `check`: 0 all healthy, 3 any isolated. See docs/FIRMWARE.md.
            """,
        subcommands: [FirmwareKeygen.self, FirmwareSign.self, FirmwareUpdate.self, FirmwareStatus.self,
                      FirmwareCheck.self, FirmwareReadmit.self])
}

/// Where the attempt counters live.
enum FirmwareCounterKind: String, ExpressibleByArgument, CaseIterable {
    case software, tpm
}

/// The store, keys and counter every node-side subcommand needs.
struct FirmwareNodeOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The firmware store: one directory per device.", valueName: "dir"))
    var store: String

    @Option(help: ArgumentHelp("The node's Ed25519 private key (signs records and incident reports).", valueName: "file"))
    var nodeKey: String

    @Option(help: ArgumentHelp("The vendor's Ed25519 public key (verifies images).", valueName: "file.pub"))
    var vendorKey: String

    @Option(help: ArgumentHelp("The operator's Ed25519 public key (verifies readmissions; without it readmission is off).",
                               valueName: "file.pub"))
    var operatorKey: String?

    @Option(help: "Attempt counter: tpm (a TPM 2.0 NV counter index per device) or software (weaker: a MAC'd file).")
    var counter: FirmwareCounterKind = .software

    @Option(help: ArgumentHelp("The TPM: HOST:PORT of an swtpm (its control port is PORT + 1), or a TCTI string "
                               + "(device:/dev/tpmrm0, tabrmd:, swtpm:host=H,port=P, mssim:...). With --counter tpm.",
                               valueName: "host:port|tcti"))
    var tpm: String?

    /// TCTI prefixes taken as they are (as in `sluice run`'s `firmware: tpm:`).
    static let tctiPrefixes = ["device:", "tabrmd:", "swtpm:", "mssim:", "cmd:"]

    /// `--tpm` as a TCTI configuration string.
    func tcti() throws(ValidationError) -> String {
        let text = tpm ?? ""
        if Self.tctiPrefixes.contains(where: text.hasPrefix) { return text }
        let (host, port) = try parseTPMAddress(text)
        return TPMConnection.swtpm(host: host, port: port)
    }

    @Option(help: ArgumentHelp("File whose bytes are the NV indices' auth value (at most 64; a final newline is dropped). Default: empty.",
                               valueName: "file"))
    var tpmAuthFile: String?

    @Option(help: ArgumentHelp("NV index of a device's counter (repeatable). Default: 0x01500000 + a hash of the name.",
                               valueName: "device=0xindex"))
    var tpmIndex: [String] = []

    func validate() throws {
        switch counter {
        case .tpm:
            guard tpm != nil else { throw ValidationError("--counter tpm needs --tpm HOST:PORT (or a TCTI string)") }
            _ = try tcti()
            _ = try parseIndices()
        case .software:
            guard tpm == nil, tpmAuthFile == nil, tpmIndex.isEmpty else {
                throw ValidationError("--tpm, --tpm-auth-file and --tpm-index go with --counter tpm")
            }
        }
    }

    func parseTPMAddress(_ text: String) throws(ValidationError) -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65534).contains(port), colon != text.startIndex else {
            throw ValidationError("--tpm: '\(text)' is not HOST:PORT (port 1-65534; the control port is PORT + 1) or a TCTI string")
        }
        return (String(text[..<colon]), port)
    }

    func parseIndices() throws(ValidationError) -> [String: UInt32] {
        var indices: [String: UInt32] = [:]
        for entry in tpmIndex {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, parts[1].lowercased().hasPrefix("0x"), let index = UInt32(parts[1].dropFirst(2), radix: 16) else {
                throw ValidationError("--tpm-index: '\(entry)' is not DEVICE=0xINDEX")
            }
            do { try FirmwareNode.validate(device: parts[0]) } catch { throw ValidationError("--tpm-index: \(error)") }
            guard (0x0100_0000...0x01BF_FFFF).contains(index) else {
                throw ValidationError("--tpm-index: 0x\(String(index, radix: 16)) is outside the owner NV range 0x01000000-0x01bfffff")
            }
            guard indices.updateValue(index, forKey: parts[0]) == nil else {
                throw ValidationError("--tpm-index: device \(parts[0]) given twice")
            }
        }
        return indices
    }

    /// The node over the store. Prints the software counter's warning (stderr) when it is the one used.
    func makeNode() throws -> FirmwareNode {
        do {
            let node = try FirmwareKeys.privateKey(at: nodeKey)
            let vendor = try FirmwareKeys.publicKey(at: vendorKey)
            var `operator`: Curve25519.Signing.PublicKey?
            if let operatorKey { `operator` = try FirmwareKeys.publicKey(at: operatorKey) }
            let source: CounterSource
            switch counter {
            case .software:
                FileHandleStderr.write("warning: weaker: software counter (a file MAC'd with the node's key; a rollback of the "
                                       + "counter and record files to an older valid copy is not detected). Use --counter tpm.\n")
                source = .software
            case .tpm:
                let tcti = try tcti()
                var auth: [UInt8] = []
                if let tpmAuthFile {
                    guard let data = FileManager.default.contents(atPath: tpmAuthFile) else {
                        throw ValidationError("--tpm-auth-file: cannot read \(tpmAuthFile)")
                    }
                    auth = Array(data)
                    if auth.last == UInt8(ascii: "\n") { auth.removeLast() }
                    guard auth.count <= 64 else { throw ValidationError("--tpm-auth-file: \(auth.count) bytes, at most 64") }
                }
                let connection: TPMConnection
                do { connection = try TPMConnection(tcti: tcti) } catch {
                    throw FirmwareTPMUnreachable(error: error)
                }
                source = .tpm(connection, auth: auth, indices: try parseIndices())
            }
            return FirmwareNode(root: store, counterSource: source, nodeKey: node, vendorKey: vendor, operatorKey: `operator`)
        } catch let error as FirmwareError {
            throw ValidationError("\(error)")
        }
    }

    /// `devices`, or every device directory in the store (sorted) when none is named.
    func devices(_ named: [String]) throws -> [String] {
        if !named.isEmpty {
            for device in named {
                do { try FirmwareNode.validate(device: device) } catch { throw ValidationError("\(error)") }
            }
            guard named.count <= FirmwareLimits.devicesMax else {
                throw ValidationError("\(named.count) devices named, at most \(FirmwareLimits.devicesMax)")
            }
            return named
        }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: store) else {
            throw ValidationError("--store: cannot list \(store)")
        }
        var isDirectory: ObjCBool = false
        let found = entries.filter {
            !$0.hasPrefix("incidents-") && (try? FirmwareNode.validate(device: $0)) != nil
                && FileManager.default.fileExists(atPath: store + "/" + $0, isDirectory: &isDirectory) && isDirectory.boolValue
        }.sorted()
        guard found.count <= FirmwareLimits.devicesMax else {
            throw ValidationError("\(store) holds \(found.count) devices, at most \(FirmwareLimits.devicesMax)")
        }
        return found
    }
}

/// No TPM answered at --tpm: `check` isolates every device (counter unreadable), the others fail.
struct FirmwareTPMUnreachable: Error, CustomStringConvertible {
    let error: FirmwareError
    var description: String { "\(error)" }
}

/// Reads a whole file for the CLI (images, signature files); a clear error names the flag.
func readWholeFile(_ path: String, what: String) throws(ValidationError) -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(what): cannot read \(path)") }
    return Array(data)
}

/// A file holding one line of hex (a signature): its bytes.
func readHexFile(_ path: String, what: String) throws(ValidationError) -> [UInt8] {
    let text = String(decoding: try readWholeFile(path, what: what), as: UTF8.self)
        .trimmingCharacters(in: .whitespacesAndNewlines)
    guard let bytes = FirmwareKeys.unhex(text) else { throw ValidationError("\(what): \(path) is not one line of hex") }
    return bytes
}

struct FirmwareKeygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen", abstract: "Make an Ed25519 key pair: FILE (private, mode 0600) and FILE.pub.")

    @Option(help: ArgumentHelp("The private key's path; the public key goes to FILE.pub. Neither is overwritten.", valueName: "file"))
    var out: String

    func run() throws {
        do {
            let key = try FirmwareKeys.generate(at: out)
            print("wrote \(out) (private) and \(out).pub (public \(FirmwareKeys.hex(Array(key.rawRepresentation))))")
        } catch {
            throw ValidationError("\(error)")
        }
    }
}

struct FirmwareSign: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign", abstract: "Sign an image with the vendor's private key (the vendor's side; for demos and tests).")

    @Argument(help: "The image file.") var image: String

    @Option(help: ArgumentHelp("The vendor's Ed25519 private key.", valueName: "file"))
    var vendorKeyPrivate: String

    @Option(help: ArgumentHelp("Where the signature goes (one line of hex).", valueName: "sig"))
    var out: String

    func run() throws {
        let bytes = try readWholeFile(image, what: "IMAGE")
        let key: Curve25519.Signing.PrivateKey
        do { key = try FirmwareKeys.privateKey(at: vendorKeyPrivate) } catch { throw ValidationError("--vendor-key-private: \(error)") }
        let signature = Array(try key.signature(for: bytes))
        guard FileManager.default.createFile(atPath: out, contents: Data((FirmwareKeys.hex(signature) + "\n").utf8)) else {
            throw ValidationError("--out: cannot write \(out)")
        }
        print("signed \(image) (\(bytes.count) bytes): \(out)")
    }
}

/// The update steps by their journal names (`signature-verified`, ...), for the hidden --stop-after.
extension UpdateStep: ExpressibleByArgument {
    public init?(argument: String) {
        guard let step = Self.allCases.first(where: { $0.rawValue.replacingOccurrences(of: " ", with: "-") == argument }) else { return nil }
        self = step
    }

    public static var allValueStrings: [String] { allCases.map { $0.rawValue.replacingOccurrences(of: " ", with: "-") } }
}

struct FirmwareUpdate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update",
        abstract: "Install a signed image on a device: verify, advance the counter, write the inactive slot, validate, activate, confirm.",
        discussion: "Prints every step. Exit 0 once the update is confirmed; 1 when it is refused or fails (the check then says what state it left).")

    @OptionGroup var node: FirmwareNodeOptions
    @Argument(help: "The device.") var device: String
    @Argument(help: "The image file.") var image: String
    @Option(help: ArgumentHelp("The vendor's signature of the image (one line of hex).", valueName: "sig"))
    var sig: String
    @Option(help: .hidden) var stopAfter: UpdateStep?

    func run() throws {
        do { try FirmwareNode.validate(device: device) } catch { throw ValidationError("\(error)") }
        let bytes = try readWholeFile(image, what: "IMAGE")
        let signature = try readHexFile(sig, what: "--sig")
        let firmware = try node.makeNode()
        let name = device
        print("update \(name): image \(image), \(bytes.count) bytes")
        do {
            let record = try firmware.update(device: name, image: bytes, signature: signature, stopAfter: stopAfter,
                                             onStep: { step in print("update \(name): \(step.rawValue)") })
            guard let record else {
                print("update \(device): stopped after \(stopAfter?.rawValue ?? "?") (--stop-after: as a crash there would)")
                throw ExitCode(1)
            }
            print("update \(device): confirmed: counter \(record.counter) (\(record.counterKind)), slot \(record.slot), "
                  + "sha256 \(record.imageSHA256)")
        } catch let error as FirmwareError {
            FileHandleStderr.write("sluice firmware update: \(error)\n")
            throw ExitCode(1)
        }
    }
}

struct FirmwareStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Per device: counter kind and value, record, active slot, refused attempts, journal tail, last incident.")

    @OptionGroup var node: FirmwareNodeOptions
    @Argument(help: "Devices (default: every device in the store).") var devices: [String] = []
    @Option(help: "Journal lines shown per device (1-1000).") var journalLines: Int = 10

    func validate() throws {
        guard (1...1000).contains(journalLines) else { throw ValidationError("--journal-lines: 1-1000") }
    }

    func run() throws {
        let firmware = try node.makeNode()
        for device in try node.devices(devices) {
            print("\(device):")
            do {
                let counter = try firmware.counter(for: device)
                let value = try counter.read()
                print("  counter: \(counter.kind)\((counter as? TPMCounter).map { " 0x" + String($0.index, radix: 16) } ?? ""), "
                      + "value \(value.map(String.init) ?? "uninitialised")")
            } catch {
                print("  counter: unreadable: \(error)")
            }
            do {
                if let record = try firmware.record(device) {
                    print("  record: counter \(record.counter) (\(record.counterKind)), slot \(record.slot), sha256 \(record.imageSHA256), "
                          + "by \(record.how) at \(record.confirmedAtUnixMs) ms")
                } else {
                    print("  record: none")
                }
            } catch {
                print("  record: invalid: \(error)")
            }
            // FirmwareNode keeps the active slot's name in `active` (its reader is not public).
            let active = FileManager.default.contents(atPath: node.store + "/" + device + "/active")
                .map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
            print("  active slot: \(active ?? "none")")
            do {
                let (lines, refused) = try firmware.journalTail(device: device, lines: journalLines)
                print("  refused attempts: \(refused)")
                print("  journal (last \(lines.count)):")
                for line in lines { print("    \(line)") }
            } catch {
                print("  journal: unreadable: \(error)")
            }
            if let last = lastIncident(device) {
                do {
                    let report = try firmware.incident(at: last)
                    print("  last incident: \(report.reason) (at \(report.timeUnixMs) ms, \(last))")
                } catch {
                    print("  last incident: \(last): \(error)")
                }
            } else {
                print("  last incident: none")
            }
        }
    }

    /// The newest report under the device's `incidents/` (or the store's `incidents-DEVICE/` for a device
    /// never provisioned): files are named `<unix ms>-<random>.json`.
    func lastIncident(_ device: String) -> String? {
        for directory in [node.store + "/" + device + "/incidents", node.store + "/incidents-" + device] {
            let reports = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }
            if let newest = reports.max(by: { (Int64($0.split(separator: "-")[0]) ?? 0) < (Int64($1.split(separator: "-")[0]) ?? 0) }) {
                return directory + "/" + newest
            }
        }
        return nil
    }
}

struct FirmwareCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Run the boot check: counter against record, active image against record and vendor signature.",
        discussion: "Exit 0 when every device is healthy, 3 when any is isolated (each printed with its reason and incident report).")

    @OptionGroup var node: FirmwareNodeOptions
    @Argument(help: "Devices (default: every device in the store).") var devices: [String] = []

    func run() throws {
        let targets = try node.devices(devices)
        guard !targets.isEmpty else { throw ValidationError("no devices in \(node.store) and none named") }
        let firmware: FirmwareNode
        do { firmware = try node.makeNode() } catch let unreachable as FirmwareTPMUnreachable {
            // No node without a counter source: no signed incident report either (the check's reason is printed).
            for device in targets { print("\(device): ISOLATED: counter unreadable: \(unreachable)\n  incident: not written (no TPM)") }
            print("0 healthy, \(targets.count) isolated")
            throw ExitCode(3)
        }
        var isolated = 0
        for device in targets {
            let result = firmware.check(device: device)
            switch result.state {
            case .healthy:
                print("\(device): healthy (counter \(result.counter.map(String.init) ?? "?"))")
            case .isolated(let reason):
                isolated += 1
                print("\(device): ISOLATED: \(reason)")
                print("  incident: \(result.incidentPath ?? "not written")")
            }
        }
        print("\(targets.count - isolated) healthy, \(isolated) isolated")
        if isolated > 0 { throw ExitCode(3) }
    }
}

struct FirmwareReadmit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "readmit",
        abstract: "Readmit an isolated device: the operator signs what the node sees now (counter, active image).",
        discussion: "Needs --operator-key (the public key the node trusts). The active image must still verify.")

    @OptionGroup var node: FirmwareNodeOptions
    @Argument(help: "The device.") var device: String
    @Option(help: ArgumentHelp("The operator's Ed25519 private key.", valueName: "file"))
    var operatorKeyPrivate: String

    func validate() throws {
        guard node.operatorKey != nil else { throw ValidationError("readmit needs --operator-key FILE.pub (the key the node trusts)") }
    }

    func run() throws {
        do { try FirmwareNode.validate(device: device) } catch { throw ValidationError("\(error)") }
        let key: Curve25519.Signing.PrivateKey
        do { key = try FirmwareKeys.privateKey(at: operatorKeyPrivate) } catch { throw ValidationError("--operator-key-private: \(error)") }
        let firmware = try node.makeNode()
        do {
            let statement = try firmware.readmissionStatement(device: device)
            print("readmit \(device): operator signs \"\(String(decoding: statement, as: UTF8.self))\"")
            let record = try firmware.readmit(device: device, operatorSignature: Array(try key.signature(for: statement)))
            print("readmit \(device): readmitted: counter \(record.counter) (\(record.counterKind)), slot \(record.slot)")
        } catch let error as FirmwareError {
            FileHandleStderr.write("sluice firmware readmit: \(error)\n")
            throw ExitCode(1)
        }
    }
}
