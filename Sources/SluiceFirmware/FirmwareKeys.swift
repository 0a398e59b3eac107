// Path: Sources/SluiceFirmware/FirmwareKeys.swift — the Ed25519 keys of the firmware flow (the node's,
// which signs records and incident reports; the vendor's, which signs images; the operator's, which
// signs readmissions), as hex files, and documents signed with them.
import Crypto
import Foundation

/// Key files: one line of hex (a private key's 32 raw bytes, or a public key's 32).
public enum FirmwareKeys {
    /// Makes a new private key at `path` (mode 0600) and its public key at `path.pub`; refuses to
    /// overwrite either.
    public static func generate(at path: String) throws(FirmwareError) -> Curve25519.Signing.PublicKey {
        guard !FileManager.default.fileExists(atPath: path), !FileManager.default.fileExists(atPath: path + ".pub") else {
            throw .invalid("\(path) or \(path).pub exists: not overwritten")
        }
        let key = Curve25519.Signing.PrivateKey()
        try FileIO.replace(path, with: Array((hex(Array(key.rawRepresentation)) + "\n").utf8))
        try FileIO.replace(path + ".pub", with: Array((hex(Array(key.publicKey.rawRepresentation)) + "\n").utf8))
        return key.publicKey
    }

    public static func privateKey(at path: String) throws(FirmwareError) -> Curve25519.Signing.PrivateKey {
        let raw = try hexFile(path)
        do { return try Curve25519.Signing.PrivateKey(rawRepresentation: raw) } catch {
            throw .invalid("\(path) is not an Ed25519 private key")
        }
    }

    public static func publicKey(at path: String) throws(FirmwareError) -> Curve25519.Signing.PublicKey {
        let raw = try hexFile(path)
        do { return try Curve25519.Signing.PublicKey(rawRepresentation: raw) } catch {
            throw .invalid("\(path) is not an Ed25519 public key")
        }
    }

    /// The software counter's MAC key, derived from the node's private key (so a node has one secret).
    public static func counterMACKey(_ node: Curve25519.Signing.PrivateKey) -> SymmetricKey {
        SymmetricKey(data: SHA256.hash(data: Array("sluice software counter v1".utf8) + Array(node.rawRepresentation)))
    }

    static func hexFile(_ path: String) throws(FirmwareError) -> [UInt8] {
        let text = String(decoding: try FileIO.read(path), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let bytes = unhex(text) else { throw .invalid("\(path) is not one line of hex") }
        return bytes
    }

    public static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    public static func unhex(_ text: some StringProtocol) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}

/// A JSON document followed by one line `ed25519 <hex signature of the JSON bytes>`.
enum SignedDocument {
    static func encode<T: Encodable>(_ value: T, signer: Curve25519.Signing.PrivateKey) throws(FirmwareError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json: [UInt8]
        do { json = Array(try encoder.encode(value)) } catch { throw .invalid("cannot encode: \(error)") }
        let signature: Data
        do { signature = try signer.signature(for: json) } catch { throw .invalid("cannot sign: \(error)") }
        return json + Array("\ned25519 \(FirmwareKeys.hex(Array(signature)))\n".utf8)
    }

    /// Decodes the document at `path` after checking its signature with `key`.
    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], path: String,
                                     key: Curve25519.Signing.PublicKey) throws(FirmwareError) -> T {
        guard let split = bytes.lastIndex(of: UInt8(ascii: "\n"), before: bytes.count - 1) else {
            throw .badSignature(path: path, reason: "no signature line")
        }
        let json = Array(bytes[..<split])
        let line = String(decoding: bytes[(split + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard line.hasPrefix("ed25519 "), let signature = FirmwareKeys.unhex(line.dropFirst(8)) else {
            throw .badSignature(path: path, reason: "no ed25519 signature line")
        }
        guard key.isValidSignature(signature, for: json) else {
            throw .badSignature(path: path, reason: "signature does not verify with the node's key")
        }
        do { return try JSONDecoder().decode(T.self, from: Data(json)) } catch {
            throw .badSignature(path: path, reason: "signed, but not a \(T.self): \(error)")
        }
    }
}

extension Array where Element == UInt8 {
    /// The last index of `byte` strictly before `end`.
    func lastIndex(of byte: UInt8, before end: Int) -> Int? {
        var index = Swift.min(end, count) - 1
        while index >= 0 {
            if self[index] == byte { return index }
            index -= 1
        }
        return nil
    }
}
