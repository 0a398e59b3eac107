// Path: Sources/SluiceFirmware/TPMCounter.swift — the firmware-update attempt counter as a TPM 2.0 NV
// counter index through tpm2-tss ESAPI (CShims/tpm.c), one connection per node shared by its devices.
import CShims
import Synchronization

/// One ESAPI context over one TCTI connection (e.g. swtpm on 127.0.0.1). ESAPI allows one caller at a
/// time: every TPM command runs under this object's lock. Closed when released.
public final class TPMConnection: Sendable {
    /// The TCTI configuration it was opened with (`swtpm:host=127.0.0.1,port=2321`).
    public let tcti: String
    private struct Context: @unchecked Sendable {  // the pointer is only used under `context`'s lock
        var tpm: OpaquePointer?
        var handles: [UInt32: UInt32] = [:]
    }
    private let context: Mutex<Context>

    /// Connects and runs TPM2_Startup. Throws `.tpm` when nothing answers at `tcti`.
    public init(tcti: String) throws(FirmwareError) {
        var tpm: OpaquePointer?
        let rc = sluice_tpm_open(tcti, &tpm)
        guard rc == 0, let tpm else { throw Self.error("connect to \(tcti)", rc) }
        self.tcti = tcti
        self.context = Mutex(Context(tpm: tpm))
    }

    /// `host:port` of an swtpm (or any TPM simulator speaking the swtpm protocol) as a TCTI string.
    public static func swtpm(host: String, port: Int) -> String { "swtpm:host=\(host),port=\(port)" }

    deinit { context.withLock { sluice_tpm_close($0.tpm) } }

    static func error(_ operation: String, _ rc: UInt32) -> FirmwareError {
        .tpm(operation: operation, code: rc, text: String(cString: sluice_tpm_rc_text(rc)))
    }

    /// Runs `body` with the ESAPI context and the ESAPI handle of `index` (looked up once, with `auth`
    /// set). A lookup that finds no index is `counterMissing`. Any TPM error drops the cached handle, so
    /// the next call looks the index up again (it may have been deleted and redefined meanwhile).
    func withIndex<T>(_ index: UInt32, auth: [UInt8], _ body: (OpaquePointer, UInt32) -> (T?, UInt32))
        throws(FirmwareError) -> T {
        let result: Result<T, FirmwareError> = context.withLock { context in
            guard let tpm = context.tpm else { return .failure(.invalid("TPM connection closed")) }
            let handle: UInt32
            if let cached = context.handles[index] {
                handle = cached
            } else {
                var found: UInt32 = 0
                let rc = auth.withUnsafeBufferPointer { sluice_tpm_nv_handle(tpm, index, $0.baseAddress, $0.count, &found) }
                if rc == SLUICE_TPM_RC_HANDLE { return .failure(.counterMissing(index: index)) }
                guard rc == 0 else { return .failure(Self.error("look up NV index 0x\(String(index, radix: 16))", rc)) }
                handle = found
                context.handles[index] = found
            }
            let (value, rc) = body(tpm, handle)
            if rc != 0, context.handles.removeValue(forKey: index) != nil { sluice_tpm_nv_close_handle(tpm, handle) }
            if let value { return .success(value) }
            return .failure(Self.error("NV index 0x\(String(index, radix: 16))", rc))
        }
        return try result.get()
    }

    /// Defines `index` as a Sluice counter (not orderly). `TPM2_RC_NV_DEFINED` when it exists.
    func defineCounter(_ index: UInt32, auth: [UInt8]) throws(FirmwareError) {
        let rc: UInt32 = context.withLock { context in
            guard let tpm = context.tpm else { return UInt32.max }
            context.handles[index] = nil
            return auth.withUnsafeBufferPointer { sluice_tpm_nv_define_counter(tpm, index, $0.baseAddress, $0.count) }
        }
        guard rc == 0 else { throw Self.error("define NV counter 0x\(String(index, radix: 16))", rc) }
    }

    /// Deletes `index` (owner authorization). For tests and for the documented TPM lessons.
    public func undefine(_ index: UInt32, auth: [UInt8]) throws(FirmwareError) {
        let _: Bool = try withIndex(index, auth: auth) { tpm, handle in
            let rc = sluice_tpm_nv_undefine(tpm, handle)
            return (rc == 0 ? true : nil, rc)
        }
        context.withLock { _ = $0.handles.removeValue(forKey: index) }
    }
}

/// A device's attempt counter in a TPM NV counter index. Checks on every read that the index is a
/// counter with exactly the attributes Sluice defines (a look-alike index is refused).
public struct TPMCounter: MonotonicCounter {
    public let connection: TPMConnection
    public let index: UInt32
    let auth: [UInt8]
    public var kind: String { "tpm" }

    /// The owner-defined NV range the node's counters live in: `indexBase + device number`.
    public static let indexBase: UInt32 = 0x0150_0000

    /// `auth`: the index's auth value (its password: the stated policy is "owner or this password",
    /// with an empty authPolicy), at most 64 bytes.
    public init(connection: TPMConnection, index: UInt32, auth: [UInt8]) throws(FirmwareError) {
        guard (0x0100_0000...0x01BF_FFFF).contains(index) else {
            throw .invalid("NV index 0x\(String(index, radix: 16)) is outside the owner NV range")
        }
        guard auth.count <= 64 else { throw .invalid("a TPM auth value is at most 64 bytes") }
        self.connection = connection
        self.index = index
        self.auth = auth
    }

    public func read() throws(FirmwareError) -> UInt64? {
        try checkPublic()
        var value: UInt64 = 0
        let initialized: Bool = try connection.withIndex(index, auth: auth) { tpm, handle in
            let rc = sluice_tpm_nv_read_counter(tpm, handle, &value)
            if rc == SLUICE_TPM_RC_NV_UNINITIALIZED { return (false, 0) }
            return (rc == 0 ? true : nil, rc)
        }
        return initialized ? value : nil
    }

    public func increment() throws(FirmwareError) -> UInt64 {
        do {
            try checkPublic()
        } catch .counterMissing {
            try connection.defineCounter(index, auth: auth)
        }
        let _: Bool = try connection.withIndex(index, auth: auth) { tpm, handle in
            let rc = sluice_tpm_nv_increment(tpm, handle)
            return (rc == 0 ? true : nil, rc)
        }
        guard let value = try read() else { throw .invalid("TPM counter 0x\(String(index, radix: 16)) uninitialised after an increment") }
        return value
    }

    /// The index's public area is Sluice's counter: type counter, the defined attributes (plus WRITTEN),
    /// 8 bytes. Not orderly, so a power loss cannot move it.
    func checkPublic() throws(FirmwareError) {
        var attributes: UInt32 = 0
        var size: UInt16 = 0
        let _: Bool = try connection.withIndex(index, auth: auth) { tpm, handle in
            let rc = sluice_tpm_nv_read_public(tpm, handle, &attributes, &size)
            return (rc == 0 ? true : nil, rc)
        }
        let written: UInt32 = 0x2000_0000  // TPMA_NV_WRITTEN
        guard attributes & ~written == sluice_tpm_counter_attributes(), size == 8 else {
            throw .counterNotACounter(index: index, attributes: attributes, size: size)
        }
    }
}
