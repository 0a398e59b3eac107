// Path: Sources/SluiceGateway/GatewayFiles.swift — the gateway's blocking file calls (EINTR retried,
// errno read at once) and the one way async code runs them: off the cooperative pool.
import Dispatch
import Glibc
import SluiceCore
import SystemPackage

/// Runs blocking `body` (file I/O) on a Dispatch worker, never on a Swift concurrency thread: those are
/// as many as the cores, and a thread blocked in `pread` there stalls every task behind it.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: body()) }
    }
}

enum GatewayFiles {
    /// `open(2)`, retrying EINTR. The error names `path`.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) -> Result<Int32, SyscallError> {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return .success(fd) }
            let code = errno
            if code != EINTR { return .failure(SyscallError("open(\(path))", Errno(rawValue: code))) }
        }
    }

    /// Reads exactly `count` bytes at `offset`; a file ending first is EIO ("short file"), named by `what`.
    static func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: Int64, what: String) -> SyscallError? {
        var done = 0
        while done < buffer.count {
            let got = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
            if got > 0 {
                done += got
                continue
            }
            if got == 0 { return SyscallError("pread(\(what)) at \(offset + Int64(done)): end of file", .ioError) }
            let code = errno
            if code != EINTR { return SyscallError("pread(\(what))", Errno(rawValue: code)) }
        }
        return nil
    }

    /// `count` bytes at `offset` as a new array.
    static func pread(_ fd: Int32, count: Int, offset: Int64, what: String) -> Result<[UInt8], SyscallError> {
        var failure: SyscallError?
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            failure = pread(fd, into: UnsafeMutableRawBufferPointer(buffer), offset: offset, what: what)
            initialized = failure == nil ? count : 0
        }
        if let failure { return .failure(failure) }
        return .success(bytes)
    }

    /// Writes all of `bytes` at `offset`.
    static func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, offset: Int64, what: String) -> SyscallError? {
        var done = 0
        while done < bytes.count {
            let wrote = Glibc.pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done)))
            if wrote > 0 {
                done += wrote
                continue
            }
            let code = wrote == 0 ? EIO : errno
            if code != EINTR { return SyscallError("pwrite(\(what))", Errno(rawValue: code)) }
        }
        return nil
    }

    /// `stat(2)`; nil with the errno on failure.
    static func stat(_ path: String) -> Result<Glibc.stat, Errno> {
        var info = Glibc.stat()
        // `fstatat`: Swift resolves `stat(...)` to the struct's initialiser.
        let rc = fstatat(AT_FDCWD, path, &info, 0)
        guard rc == 0 else { return .failure(Errno(rawValue: errno)) }
        return .success(info)
    }
}
