// Path: Sources/SluiceFirmware/FirmwareNode.swift — a node's firmware store: per device A/B image slots,
// the attempt counter, the signed confirmation record, the update journal; the update flow, the boot
// check that isolates a device, signed incident reports and the operator's readmission.
import Crypto
import Foundation
import SluiceCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What the update flow confirmed: the counter value of the attempt, the slot and image, signed by the
/// node's key (a tampered or foreign record does not verify).
public struct ConfirmationRecord: Codable, Equatable, Sendable {
    public static let currentFormat = "sluice-firmware-record v1"
    public var format = ConfirmationRecord.currentFormat
    public var device: String
    public var counter: UInt64
    /// "tpm" or "software", and the TPM NV index (0 for software).
    public var counterKind: String
    public var counterIndex: UInt32
    public var slot: String
    public var imageSHA256: String
    public var confirmedAtUnixMs: Int64
    /// "update", "readmit", or "update-while-isolated" (an update of a device that did not pass its
    /// check: it stays isolated until the operator readmits it).
    public var how: String
}

/// A signed record of why a device was isolated and what the node saw.
public struct IncidentReport: Codable, Equatable, Sendable {
    public var format = "sluice-firmware-incident v1"
    public var device: String
    public var reason: String
    public var counter: UInt64?
    public var counterKind: String
    public var record: ConfirmationRecord?
    public var activeSlot: String?
    public var activeImageSHA256: String?
    public var timeUnixMs: Int64
    public var node: String
}

/// The outcome of a device's check.
public struct DeviceCheck: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case healthy
        /// Nothing may run on the device until a readmission or an update passes.
        case isolated(reason: String)
    }
    public var device: String
    public var state: State
    public var counter: UInt64?
    public var record: ConfirmationRecord?
    /// The signed incident report written for an isolation.
    public var incidentPath: String?
    public var isolated: Bool { if case .isolated = state { true } else { false } }
    public var reason: String? { if case .isolated(let reason) = state { reason } else { nil } }

    public init(device: String, state: State, counter: UInt64? = nil, record: ConfirmationRecord? = nil, incidentPath: String? = nil) {
        self.device = device
        self.state = state
        self.counter = counter
        self.record = record
        self.incidentPath = incidentPath
    }
}

/// Steps of an update, in order (journaled; tests may stop after one to play a crash there).
public enum UpdateStep: String, Sendable, CaseIterable {
    case signatureVerified = "signature verified"
    case counterAdvanced = "counter advanced"
    case imageWritten = "image written"
    case imageValidated = "image validated"
    case slotActivated = "slot activated"
    case confirmed = "confirmed"
}

/// Where a device's counter lives.
public enum CounterSource: Sendable {
    /// A file per device under the store, MAC'd with a key derived from the node's key. Weaker: see
    /// `SoftwareCounter`.
    case software
    /// An NV counter index per device in the TPM behind `connection`, with auth value `auth`;
    /// `indices[device]`, else `TPMCounter.indexBase` + a hash of the device name.
    case tpm(TPMConnection, auth: [UInt8], indices: [String: UInt32])
}

/// A node's firmware store (a directory: one subdirectory per device). Every method may be called from
/// any thread; updates of one device are serialised by a lock file (a second one at once is refused and
/// counted), across processes too.
public final class FirmwareNode: Sendable {
    public let root: String
    public let counterSource: CounterSource
    let nodeKey: Curve25519.Signing.PrivateKey
    public let vendorKey: Curve25519.Signing.PublicKey
    public let operatorKey: Curve25519.Signing.PublicKey?
    /// Incident reports kept per device (the oldest are deleted).
    public static let incidentsKeptMax = 64

    public init(root: String, counterSource: CounterSource, nodeKey: Curve25519.Signing.PrivateKey,
                vendorKey: Curve25519.Signing.PublicKey, operatorKey: Curve25519.Signing.PublicKey?) {
        self.root = root
        self.counterSource = counterSource
        self.nodeKey = nodeKey
        self.vendorKey = vendorKey
        self.operatorKey = operatorKey
    }

    /// A node with its keys read from files: the node's private key, the vendor's and the operator's
    /// public keys (`FirmwareKeys` format).
    public static func load(root: String, counterSource: CounterSource, nodeKeyPath: String, vendorKeyPath: String,
                            operatorKeyPath: String?) throws(FirmwareError) -> FirmwareNode {
        let node = try FirmwareKeys.privateKey(at: nodeKeyPath)
        let vendor = try FirmwareKeys.publicKey(at: vendorKeyPath)
        let operatorKey = try operatorKeyPath.map { path throws(FirmwareError) in try FirmwareKeys.publicKey(at: path) }
        return FirmwareNode(root: root, counterSource: counterSource, nodeKey: node, vendorKey: vendor, operatorKey: operatorKey)
    }

    // MARK: Devices and files

    public static func validate(device: String) throws(FirmwareError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !device.isEmpty, device.utf8.count <= FirmwareLimits.deviceNameBytesMax, device.allSatisfy(allowed.contains),
              device != ".", device != ".." else {
            throw .invalid("device name \"\(device)\": 1...\(FirmwareLimits.deviceNameBytesMax) of letters, digits, - _ .")
        }
    }

    func directory(_ device: String) -> String { root + "/" + device }
    func path(_ device: String, _ name: String) -> String { directory(device) + "/" + name }

    /// The counter of `device`.
    public func counter(for device: String) throws(FirmwareError) -> any MonotonicCounter {
        switch counterSource {
        case .software:
            return SoftwareCounter(path: path(device, "counter"), key: FirmwareKeys.counterMACKey(nodeKey))
        case .tpm(let connection, let auth, let indices):
            return try TPMCounter(connection: connection, index: indices[device] ?? Self.defaultIndex(device), auth: auth)
        }
    }

    /// `TPMCounter.indexBase` + the low 16 bits of the name's CRC-32C: stable per name.
    public static func defaultIndex(_ device: String) -> UInt32 {
        var hash: UInt32 = 0x811C_9DC5  // FNV-1a
        for byte in device.utf8 { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return TPMCounter.indexBase + (hash & 0xFFFF)
    }

    func counterIndex(_ counter: any MonotonicCounter) -> UInt32 { (counter as? TPMCounter)?.index ?? 0 }

    /// Appends a step to the device's journal (fsync'd): what happened, when.
    func journal(_ device: String, _ line: String) throws(FirmwareError) {
        try FileIO.appendLine(path(device, "journal"), "\(Self.nowMs()) \(line)")
    }

    static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func sha256(_ bytes: [UInt8]) -> String { FirmwareKeys.hex(Array(SHA256.hash(data: bytes))) }

    func verifyImage(_ device: String, _ image: [UInt8], _ signature: [UInt8]) throws(FirmwareError) {
        guard signature.count == 64 else { throw .imageSignatureInvalid(device: device, reason: "\(signature.count) bytes, want 64") }
        guard vendorKey.isValidSignature(signature, for: image) else {
            throw .imageSignatureInvalid(device: device, reason: "does not verify with the vendor's key")
        }
    }

    func activeSlot(_ device: String) throws(FirmwareError) -> String? {
        guard let bytes = try FileIO.readIfExists(path(device, "active")) else { return nil }
        let slot = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard slot == "a" || slot == "b" else { throw .invalid("\(path(device, "active")): \"\(slot)\" is not a slot") }
        return slot
    }

    /// The confirmation record, checked against the node's key; nil when there is none.
    public func record(_ device: String) throws(FirmwareError) -> ConfirmationRecord? {
        let file = path(device, "record")
        guard let bytes = try FileIO.readIfExists(file) else { return nil }
        return try SignedDocument.decode(ConfirmationRecord.self, bytes, path: file, key: nodeKey.publicKey)
    }

    func writeRecord(_ record: ConfirmationRecord) throws(FirmwareError) {
        try FileIO.replace(path(record.device, "record"), with: try SignedDocument.encode(record, signer: nodeKey))
    }

    /// Holds the device's update lock (flock, non-blocking, on the device directory itself, which a
    /// store writer cannot swap for another file) while `body` runs. A held lock is `updateInProgress`,
    /// journaled as a refused attempt.
    func withDeviceLock<T>(_ device: String, _ body: () throws(FirmwareError) -> T) throws(FirmwareError) -> T {
        let lockPath = directory(device)
        let fd = open(lockPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw .system(SyscallError("open", Errno(rawValue: errno)), path: lockPath) }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            if code == EWOULDBLOCK {
                try journal(device, "refused: another update in progress")
                throw .updateInProgress(device: device)
            }
            throw .system(SyscallError("flock", Errno(rawValue: code)), path: lockPath)
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    /// The device's directory exists and is a directory, not a symlink (which would send every file
    /// of the flow elsewhere).
    func requireDeviceDirectory(_ device: String) throws(FirmwareError) {
        switch try FileIO.isRealDirectory(directory(device)) {
        case nil: throw .unknownDevice(device)
        case false?: throw .invalid("\(directory(device)) is not a directory (a symlink?): refused")
        case true?: return
        }
    }

    func makeDirectory(_ device: String) throws(FirmwareError) {
        let directory = directory(device)
        if try FileIO.isRealDirectory(directory) != nil { return try requireDeviceDirectory(device) }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try FileIO.syncDirectory(of: directory)
        } catch let error as Errno {
            throw .system(SyscallError("mkdir", error), path: directory)
        } catch {
            throw .invalid("\(directory): \(error)")
        }
    }

    // MARK: Update

    /// Installs `image` on `device`: verifies the vendor's signature, advances the counter **before**
    /// writing, writes the inactive slot, reads it back and verifies it, activates it, then records the
    /// counter value as confirmed (signed). Every step is journaled; a crash between steps leaves the
    /// counter ahead of the record, which the check isolates. Blocks on file and TPM I/O.
    /// `stopAfter` (tests) ends the flow after that step, as a crash there would.
    @discardableResult
    public func update(device: String, image: [UInt8], signature: [UInt8],
                       stopAfter: UpdateStep? = nil, onStep: (@Sendable (UpdateStep) -> Void)? = nil) throws(FirmwareError) -> ConfirmationRecord? {
        try Self.validate(device: device)
        // An update does not lift an isolation by itself: a device that fails its check now keeps
        // failing it after the update, until the operator readmits it.
        let provisioned = try FileIO.isRealDirectory(directory(device)) != nil
        let priorIsolation = provisioned ? check(device: device, writeIncident: false).reason : nil
        try makeDirectory(device)
        let digest = Self.sha256(image)
        if let priorIsolation { try journal(device, "update of an isolated device (\(priorIsolation)): readmission needed after it") }
        try journal(device, "update requested: image sha256 \(digest), \(image.count) bytes")
        do {
            try verifyImage(device, image, signature)
        } catch {
            try journal(device, "refused: \(error)")
            throw error
        }
        return try withDeviceLock(device) { () throws(FirmwareError) -> ConfirmationRecord? in
            func step(_ done: UpdateStep, _ detail: String) throws(FirmwareError) -> Bool {
                try journal(device, "\(done.rawValue): \(detail)")
                onStep?(done)
                return done == stopAfter
            }
            if try step(.signatureVerified, "vendor key") { return nil }
            let counter = try counter(for: device)
            let before = try? counter.read()
            let attempt = try counter.increment()
            // Exactly one more than before: an increment by anyone else in between is not taken for ours
            // (the device stays with its counter ahead of its record: isolated).
            if let before = before ?? nil, attempt != before + 1 {
                try journal(device, "aborted: the counter went from \(before) to \(attempt) across one increment")
                throw .checkFailed(device: device, reason: "the counter went from \(before) to \(attempt) across one increment")
            }
            if try step(.counterAdvanced, "attempt \(attempt) (\(counter.kind) counter)") { return nil }
            let slot = (try activeSlot(device)) == "a" ? "b" : "a"
            try FileIO.replace(path(device, "slot-\(slot).img"), with: image)
            try FileIO.replace(path(device, "slot-\(slot).sig"), with: signature)
            if try step(.imageWritten, "attempt \(attempt), slot \(slot)") { return nil }
            let back = try FileIO.read(path(device, "slot-\(slot).img"))
            guard Self.sha256(back) == digest else {
                try journal(device, "attempt \(attempt): slot \(slot) reads back different bytes")
                throw .checkFailed(device: device, reason: "slot \(slot) reads back different bytes")
            }
            try verifyImage(device, back, try FileIO.read(path(device, "slot-\(slot).sig")))
            if try step(.imageValidated, "attempt \(attempt), slot \(slot)") { return nil }
            try FileIO.replace(path(device, "active"), with: Array("\(slot)\n".utf8))
            if try step(.slotActivated, "attempt \(attempt), slot \(slot)") { return nil }
            let record = ConfirmationRecord(device: device, counter: attempt, counterKind: counter.kind,
                                            counterIndex: counterIndex(counter), slot: slot, imageSHA256: digest,
                                            confirmedAtUnixMs: Self.nowMs(), how: priorIsolation == nil ? "update" : "update-while-isolated")
            try writeRecord(record)
            _ = try step(.confirmed, "attempt \(attempt), counter value recorded")
            return record
        }
    }

    // MARK: Check

    /// Compares the device's counter with its confirmation record and verifies the active image. On any
    /// mismatch, unreadable counter, bad record or failed image check the device is isolated: the
    /// result says why, and a signed incident report is written (its path in the result) unless
    /// `writeIncident` is false (a re-check of a device already reported). Never throws: every failure
    /// is an isolation reason.
    public func check(device: String, writeIncident: Bool = true) -> DeviceCheck {
        var result = DeviceCheck(device: device, state: .healthy)
        var report = IncidentReport(device: device, reason: "", counterKind: "unknown", timeUnixMs: Self.nowMs(),
                                    node: ProcessInfo.processInfo.hostName)
        func isolate(_ reason: String) -> DeviceCheck {
            result.state = .isolated(reason: reason)
            report.reason = reason
            report.counter = result.counter
            report.record = result.record
            if writeIncident { result.incidentPath = try? self.writeIncident(report) }
            return result
        }
        do { try Self.validate(device: device) } catch { return isolate("\(error)") }
        do { try requireDeviceDirectory(device) } catch .unknownDevice {
            return isolate("no firmware store for the device (never provisioned)")
        } catch {
            return isolate("\(error)")
        }
        let counter: any MonotonicCounter
        let value: UInt64?
        do {
            counter = try self.counter(for: device)
            report.counterKind = counter.kind
            value = try counter.read()
        } catch {
            return isolate("counter unreadable: \(error)")
        }
        result.counter = value
        let record: ConfirmationRecord
        do {
            guard let found = try self.record(device) else { return isolate("no confirmation record (never confirmed, or deleted)") }
            record = found
        } catch {
            return isolate("confirmation record invalid: \(error)")
        }
        result.record = record
        guard record.device == device else { return isolate("the confirmation record is for device \(record.device)") }
        guard record.format == ConfirmationRecord.currentFormat else { return isolate("the confirmation record's format is \(record.format)") }
        if record.how == "update-while-isolated" {
            return isolate("updated while isolated: awaiting the operator's readmission")
        }
        guard record.counterKind == counter.kind, record.counterIndex == counterIndex(counter) else {
            return isolate("the record was made with the \(record.counterKind) counter 0x\(String(record.counterIndex, radix: 16)), "
                           + "this node uses the \(counter.kind) counter 0x\(String(counterIndex(counter), radix: 16))")
        }
        guard let value else {
            return isolate("counter uninitialised (the index was deleted and redefined?); the record says \(record.counter)")
        }
        if value > record.counter {
            return isolate("counter \(value), confirmed \(record.counter): \(value - record.counter) update attempt(s) not "
                           + "confirmed (interrupted update or tampering)")
        }
        if value < record.counter {
            return isolate("counter \(value) below the confirmed \(record.counter): rolled back or redefined")
        }
        do {
            let slot = try activeSlot(device)
            report.activeSlot = slot
            guard let slot, slot == record.slot else {
                return isolate("active slot \(slot ?? "none"), confirmed slot \(record.slot)")
            }
            let image = try FileIO.read(path(device, "slot-\(slot).img"))
            let digest = Self.sha256(image)
            report.activeImageSHA256 = digest
            guard digest == record.imageSHA256 else {
                return isolate("image in slot \(slot) (sha256 \(digest)) is not the confirmed one (\(record.imageSHA256))")
            }
            try verifyImage(device, image, try FileIO.read(path(device, "slot-\(slot).sig")))
        } catch {
            return isolate("image check failed: \(error)")
        }
        return result
    }

    /// Writes `report`, signed, under the device's `incidents/`; keeps the newest `incidentsKeptMax`
    /// (only files of its own naming are pruned; a symlinked directory is refused).
    func writeIncident(_ report: IncidentReport) throws(FirmwareError) -> String {
        let directory = (try? FileIO.isRealDirectory(self.directory(report.device))) == true
            ? path(report.device, "incidents") : root + "/incidents-" + report.device
        switch try FileIO.isRealDirectory(directory) {
        case nil:
            do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw .invalid("\(directory): \(error)")
            }
            do { try FileIO.syncDirectory(of: directory) } catch { throw .system(SyscallError("fsync", error), path: directory) }
        case false?: throw .invalid("\(directory) is not a directory (a symlink?): refused")
        case true?: break
        }
        let file = directory + "/\(report.timeUnixMs)-\(UInt32.random(in: 0...UInt32.max)).json"
        try FileIO.replace(file, with: try SignedDocument.encode(report, signer: nodeKey))
        let reports = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { name in
            // `<ms>-<random>.json`, as written above.
            let parts = name.dropLast(5).split(separator: "-")
            return name.hasSuffix(".json") && parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
        }.sorted {
            (Int64($0.split(separator: "-").first ?? "") ?? 0) < (Int64($1.split(separator: "-").first ?? "") ?? 0)
        }
        for old in reports.dropLast(Self.incidentsKeptMax) { unlink(directory + "/" + old) }
        return file
    }

    /// Reads a signed incident report back (verified with the node's key).
    public func incident(at path: String) throws(FirmwareError) -> IncidentReport {
        try SignedDocument.decode(IncidentReport.self, try FileIO.read(path), path: path, key: nodeKey.publicKey)
    }

    // MARK: Readmission

    /// What the operator signs to readmit `device` as it is now: this node's key, the device's counter
    /// value ("missing" after its index was deleted, "uninitialised" before its first increment), the
    /// active slot and the SHA-256 of its image. Readmission advances the counter, so a signature is
    /// good for one readmission of one state on one node.
    public func readmissionStatement(device: String) throws(FirmwareError) -> [UInt8] {
        try Self.validate(device: device)
        try requireDeviceDirectory(device)
        return try readmissionState(device).statement
    }

    /// The device's state as a readmission sees it, read once.
    private func readmissionState(_ device: String) throws(FirmwareError)
        -> (statement: [UInt8], counter: UInt64?, slot: String?, image: [UInt8]?) {
        let value: UInt64?
        var counterText: String
        do {
            value = try counter(for: device).read()
            counterText = value.map(String.init) ?? "uninitialised"
        } catch .counterMissing {
            value = nil
            counterText = "missing"
        }
        let slot = try activeSlot(device)
        let image = try slot.map { slot throws(FirmwareError) in try FileIO.read(path(device, "slot-\(slot).img")) }
        let node = FirmwareKeys.hex(Array(nodeKey.publicKey.rawRepresentation))
        let statement = Array(("sluice-firmware-readmit v2 node=\(node) device=\(device) counter=\(counterText) "
                               + "slot=\(slot ?? "none") sha256=\(image.map(Self.sha256) ?? "none")").utf8)
        return (statement, value, slot, image)
    }

    /// Readmits an isolated device: the operator's signature over `readmissionStatement(device:)` must
    /// verify with the operator's key, and the active image must pass its checks (vendor signature).
    /// The counter is advanced (defined again if it was deleted) and its new value recorded as
    /// confirmed, so the readmission is itself a counted change and an older record can never pass
    /// again. Everything is read once, under the device's lock.
    @discardableResult
    public func readmit(device: String, operatorSignature: [UInt8]) throws(FirmwareError) -> ConfirmationRecord {
        guard let operatorKey else { throw .invalid("no operator key configured: readmission is disabled") }
        try Self.validate(device: device)
        try requireDeviceDirectory(device)
        return try withDeviceLock(device) { () throws(FirmwareError) -> ConfirmationRecord in
            let state = try readmissionState(device)
            guard operatorKey.isValidSignature(operatorSignature, for: state.statement) else {
                try journal(device, "readmission refused: operator signature does not verify")
                throw .operatorNotAuthenticated(device: device)
            }
            guard let slot = state.slot, let image = state.image else { throw .checkFailed(device: device, reason: "no active slot") }
            do { try verifyImage(device, image, try FileIO.read(path(device, "slot-\(slot).sig"))) } catch {
                try journal(device, "readmission refused: \(error)")
                throw .checkFailed(device: device, reason: "\(error)")
            }
            let counter = try counter(for: device)
            let value = try counter.increment()
            if let before = state.counter, value != before + 1 {
                try journal(device, "readmission aborted: the counter went from \(before) to \(value) across one increment")
                throw .checkFailed(device: device, reason: "the counter moved during the readmission")
            }
            let record = ConfirmationRecord(device: device, counter: value, counterKind: counter.kind,
                                            counterIndex: counterIndex(counter), slot: slot, imageSHA256: Self.sha256(image),
                                            confirmedAtUnixMs: Self.nowMs(), how: "readmit")
            try writeRecord(record)
            try journal(device, "readmitted by the operator: counter \(value), slot \(slot)")
            return record
        }
    }

    // MARK: Status

    /// The last `lines` journal lines of the device, and how many update attempts were refused.
    public func journalTail(device: String, lines: Int = 20) throws(FirmwareError) -> (lines: [String], refused: Int) {
        guard let bytes = try FileIO.readIfExists(path(device, "journal")) else { return ([], 0) }
        let all = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        return (Array(all.suffix(lines)), all.filter { $0.contains(" refused") }.count)
    }
}
