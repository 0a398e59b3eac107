// Path: Sources/SluiceFirmware/FirmwareError.swift — what can go wrong with a device's firmware, its
// counter, its confirmation record and its store, each saying what and where.
import SluiceCore

/// A firmware operation's failure. Each case names the device or file it is about.
public enum FirmwareError: Error, Equatable, CustomStringConvertible {
    /// A system call on a store file failed.
    case system(SyscallError, path: String)
    /// The TPM (or the TSS stack in front of it) answered `code` to `operation`.
    case tpm(operation: String, code: UInt32, text: String)
    /// The TPM's counter index is not defined (never provisioned, or deleted).
    case counterMissing(index: UInt32)
    /// The counter index exists but is not what Sluice defines (type, attributes, size).
    case counterNotACounter(index: UInt32, attributes: UInt32, size: UInt16)
    /// A software counter file that does not decode or whose MAC does not match.
    case counterTampered(path: String, reason: String)
    /// A signed document (record, report) that does not decode or whose signature does not verify.
    case badSignature(path: String, reason: String)
    /// An image whose vendor signature does not verify.
    case imageSignatureInvalid(device: String, reason: String)
    /// Another update of this device holds its lock.
    case updateInProgress(device: String)
    /// A name, key or argument that cannot be used.
    case invalid(String)
    /// The device is not in this store (no directory, never provisioned).
    case unknownDevice(String)
    /// A readmission whose operator signature does not verify against the operator's public key.
    case operatorNotAuthenticated(device: String)
    /// A check of the device did not pass (readmission refused until it does).
    case checkFailed(device: String, reason: String)

    public var description: String {
        switch self {
        case .system(let error, let path): "\(error) (\(path))"
        case .tpm(let operation, let code, let text): "TPM \(operation): 0x\(String(code, radix: 16)) \(text)"
        case .counterMissing(let index): "TPM NV index 0x\(String(index, radix: 16)) is not defined"
        case .counterNotACounter(let index, let attributes, let size):
            "TPM NV index 0x\(String(index, radix: 16)) is not a Sluice counter (attributes 0x\(String(attributes, radix: 16)), \(size) bytes)"
        case .counterTampered(let path, let reason): "software counter \(path) tampered: \(reason)"
        case .badSignature(let path, let reason): "\(path): \(reason)"
        case .imageSignatureInvalid(let device, let reason): "\(device): image signature invalid: \(reason)"
        case .updateInProgress(let device): "\(device): another firmware update is in progress"
        case .invalid(let what): what
        case .unknownDevice(let device): "no firmware store for device \(device)"
        case .operatorNotAuthenticated(let device): "\(device): the readmission is not signed by the operator's key"
        case .checkFailed(let device, let reason): "\(device): \(reason)"
        }
    }
}
