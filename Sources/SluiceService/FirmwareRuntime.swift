// Path: Sources/SluiceService/FirmwareRuntime.swift — the firmware boot check of `sluice run`: every
// configured device checked before anything starts; an isolated device's pipelines are held back and
// its storage takes no writes; /healthz and the metrics say which device and why.
import Foundation
import Logging
import SluiceCore
import SluiceFirmware
import SluiceReplay

/// The boot check's outcome, for the service's lifetime. Read by the metrics and health closures.
public final class FirmwareRuntime: Sendable {
    public let settings: FirmwareSettings
    /// One per configured device, in configuration order.
    public let checks: [DeviceCheck]
    /// "tpm" or "software".
    public let counterKind: String
    /// How long the check of every device took.
    public let checkNs: UInt64

    init(settings: FirmwareSettings, checks: [DeviceCheck], counterKind: String, checkNs: UInt64) {
        self.settings = settings
        self.checks = checks
        self.counterKind = counterKind
        self.checkNs = checkNs
    }

    /// Loads the keys, connects the counter (a TPM that does not answer isolates every device: its
    /// counters are unreadable), checks every device and logs each outcome. Throws only for keys that
    /// cannot be read (a configuration error, not a device's state).
    public static func boot(_ settings: FirmwareSettings, logger: Logger) throws(ServiceError) -> FirmwareRuntime {
        let started = Clock.monotonicNs()
        var checks: [DeviceCheck] = []
        let source: CounterSource
        var unreachable: String?
        switch settings.counter {
        case .software:
            source = .software
            logger.warning("firmware: software attempt counter (weaker than a TPM: a rollback of the store is not detected)")
        case .tpm:
            let address = settings.tpm ?? ""
            let colon = address.lastIndex(of: ":") ?? address.endIndex
            let tcti = TPMConnection.swtpm(host: String(address[..<colon]), port: Int(address[address.index(after: colon)...]) ?? 0)
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
        for device in settings.devices {
            let check: DeviceCheck
            if let unreachable {
                check = DeviceCheck(device: device.name, state: .isolated(reason: "counter unreadable: TPM unreachable: \(unreachable)"))
            } else {
                check = node.check(device: device.name)
            }
            checks.append(check)
            if let reason = check.reason {
                logger.error("firmware: device isolated", metadata: [
                    "device": "\(device.name)", "reason": "\(reason)", "incident": "\(check.incidentPath ?? "none")"])
            } else {
                logger.info("firmware: device passed", metadata: ["device": "\(device.name)", "counter": "\(check.counter.map(String.init) ?? "-")"])
            }
        }
        let elapsed = Clock.monotonicNs() &- started
        logger.info("firmware: boot check done", metadata: [
            "devices": "\(checks.count)", "isolated": "\(checks.filter(\.isolated).count)", "ms": "\(Double(elapsed) / 1e6)"])
        return FirmwareRuntime(settings: settings, checks: checks, counterKind: settings.counter.rawValue, checkNs: elapsed)
    }

    /// The isolated device `pipeline` runs on (by name, or one of its interfaces), with why.
    public func isolation(of pipeline: PipelineSettings) -> (device: String, reason: String)? {
        var interfaces: [String] = []
        if case .interface(let rx) = pipeline.path.input { interfaces.append(rx.interface) }
        if case .interface(let name) = pipeline.path.output { interfaces.append(name) }
        for (device, check) in zip(settings.devices, checks) {
            guard let reason = check.reason else { continue }
            if device.pipelines.contains(pipeline.path.name) || device.interfaces.contains(where: interfaces.contains) {
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
