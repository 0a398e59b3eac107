// Path: Sources/SluiceService/FirmwareRuntime.swift — the firmware boot check of `sluice run`: every
// configured device checked before anything starts; an isolated device's pipelines are held back and
// its storage takes no writes; /healthz and the metrics say which device and why.
import Foundation
import Logging
import SluiceCore
import SluiceFirmware
import SluiceReplay
import Synchronization

/// The firmware checks' outcome, for the service's lifetime: the boot check's, then each re-check's.
/// Read by the metrics and health closures; `recheck` runs on one task.
public final class FirmwareRuntime: Sendable {
    public let settings: FirmwareSettings
    /// "tpm" or "software".
    public let counterKind: String
    /// How long the boot check of every device took.
    public let checkNs: UInt64
    private let state: Mutex<[DeviceCheck]>
    /// One per configured device, in configuration order: the latest check.
    public var checks: [DeviceCheck] { state.withLock { $0 } }

    init(settings: FirmwareSettings, checks: [DeviceCheck], checkNs: UInt64) {
        self.settings = settings
        self.counterKind = settings.counter.rawValue
        self.checkNs = checkNs
        self.state = Mutex(checks)
    }

    /// Loads the keys, connects the counter (a TPM that does not answer isolates every device: its
    /// counters are unreadable), checks every device and logs each outcome. Throws only for keys that
    /// cannot be read (a configuration error, not a device's state).
    public static func boot(_ settings: FirmwareSettings, logger: Logger) throws(ServiceError) -> FirmwareRuntime {
        let started = Clock.monotonicNs()
        let checks = try checkAll(settings, previous: nil, logger: logger)
        let elapsed = Clock.monotonicNs() &- started
        logger.info("firmware: boot check done", metadata: [
            "devices": "\(checks.count)", "isolated": "\(checks.filter(\.isolated).count)", "ms": "\(Double(elapsed) / 1e6)"])
        return FirmwareRuntime(settings: settings, checks: checks, checkNs: elapsed)
    }

    /// Checks every device again; returns the devices isolated now that passed before (their pipelines
    /// are to be stopped). A device that passes again (readmitted meanwhile) is logged; its storage takes
    /// writes again, its stopped pipelines start at the next start of the service.
    public func recheck(logger: Logger) -> [String] {
        let previous = checks
        let now: [DeviceCheck]
        do { now = try Self.checkAll(settings, previous: previous, logger: logger) } catch {
            // The check itself cannot run (a key file gone): nothing is known, so nothing passes.
            logger.error("firmware: re-check failed; every device isolated", metadata: ["error": "\(error)"])
            now = settings.devices.map { DeviceCheck(device: $0.name, state: .isolated(reason: "the firmware check could not run: \(error)")) }
        }
        state.withLock { $0 = now }
        var newlyIsolated: [String] = []
        for (before, after) in zip(previous, now) {
            if !before.isolated, after.isolated { newlyIsolated.append(after.device) }
            if before.isolated, !after.isolated {
                logger.notice("firmware: device passes again (readmitted); restart to start its pipelines", metadata: ["device": "\(after.device)"])
            }
        }
        return newlyIsolated
    }

    /// One check of every device, logged where it changed (or at boot).
    private static func checkAll(_ settings: FirmwareSettings, previous: [DeviceCheck]?, logger: Logger) throws(ServiceError) -> [DeviceCheck] {
        let source: CounterSource
        var unreachable: String?
        switch settings.counter {
        case .software:
            source = .software
            if previous == nil {
                logger.warning("firmware: software attempt counter (weaker than a TPM: a rollback of the store is not detected)")
            }
        case .tpm:
            let tcti = settings.tcti
            var auth: [UInt8] = []
            if let file = settings.tpmAuthFile {
                do { auth = Array(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .newlines).utf8) } catch {
                    throw .firmware(.invalid("tpm_auth_file \(file): \(error)"))
                }
            }
            do {
                let connection = try TPMConnection(tcti: tcti)
                var indices: [String: UInt32] = [:]
                for device in settings.devices { if let index = device.tpmIndex { indices[device.name] = index } }
                source = .tpm(connection, auth: auth, indices: indices)
            } catch {
                unreachable = "\(error)"
                source = .software  // not used: every device is isolated below
            }
        }
        let node: FirmwareNode
        do {
            node = try FirmwareNode.load(root: settings.store, counterSource: source, nodeKeyPath: settings.nodeKey,
                                         vendorKeyPath: settings.vendorKey, operatorKeyPath: settings.operatorKey)
        } catch { throw .firmware(error) }
        var checks: [DeviceCheck] = []
        for (position, device) in settings.devices.enumerated() {
            let check = unreachable.map { DeviceCheck(device: device.name, state: .isolated(reason: "counter unreadable: TPM unreachable: \($0)")) }
                ?? node.check(device: device.name, writeIncident: previous?[position].isolated != true)
            checks.append(check)
            let before = previous?[position]
            guard before == nil || before!.isolated != check.isolated || before!.reason != check.reason else { continue }
            if let reason = check.reason {
                logger.error("firmware: device isolated", metadata: [
                    "device": "\(device.name)", "reason": "\(reason)", "incident": "\(check.incidentPath ?? "none")"])
            } else {
                logger.info("firmware: device passed", metadata: ["device": "\(device.name)", "counter": "\(check.counter.map(String.init) ?? "-")"])
            }
        }
        return checks
    }

    /// The isolated device a pipeline runs on (by name, or one of the interfaces it reads or writes,
    /// through AF_PACKET or AF_XDP), with why.
    public func isolation(of pipeline: PacketPathConfiguration) -> (device: String, reason: String)? {
        var interfaces: [String] = []
        switch pipeline.input {
        case .interface(let rx): interfaces.append(rx.interface)
        case .afXDP(let rx): interfaces.append(rx.interface)
        case .capture: break
        }
        switch pipeline.output {
        case .interface(let name): interfaces.append(name)
        case .afXDP(let tx): interfaces.append(tx.interface)
        case .pcapFile, .discard: break
        }
        return isolation(ofInterfaces: interfaces, pipeline: pipeline.name)
    }

    /// The isolated device that owns one of `interfaces` (or the pipeline named `pipeline`), with why.
    public func isolation(ofInterfaces interfaces: [String], pipeline: String? = nil) -> (device: String, reason: String)? {
        for (device, check) in zip(settings.devices, checks) {
            guard let reason = check.reason else { continue }
            if pipeline.map(device.pipelines.contains) == true || device.interfaces.contains(where: interfaces.contains) {
                return (device.name, reason)
            }
        }
        return nil
    }

    /// The storage device's isolation, if it is isolated.
    public var storageIsolation: (device: String, reason: String)? {
        for (device, check) in zip(settings.devices, checks) where device.storage {
            if let reason = check.reason { return (device.name, reason) }
        }
        return nil
    }

    /// "device: reason; ..." of every isolated device, or nil.
    public var healthProblem: String? {
        let isolated = checks.compactMap { check in check.reason.map { "\(check.device): \($0)" } }
        return isolated.isEmpty ? nil : "firmware: isolated \(isolated.joined(separator: "; "))"
    }
}
