// Path: Sources/SluicePacketIO/AFPacket/AFPacketSocket.swift — the kernel objects behind a ring: an
// AF_PACKET socket and its mapping, each released by its owner's deinit.
import CShims
import SluiceCore
import SystemPackage

/// An open AF_PACKET socket. Closed when its owner goes away; move it, never copy it.
struct AFPacketSocket: ~Copyable {
    let fd: Int32

    /// A raw AF_PACKET socket bound to nothing (receives nothing yet). Wraps `socket(2)`.
    init() throws(AFPacketError) {
        let fd = sluice_afpacket_socket()
        guard fd >= 0 else { throw .syscall(SyscallError("socket(AF_PACKET)", negatedErrno: fd)) }
        self.fd = fd
    }

    deinit { _ = sluice_afpacket_close(fd) }

    /// Turns a CShims return value into a typed error naming `operation`.
    func check(_ rc: Int32, _ operation: String) throws(AFPacketError) {
        guard rc >= 0 else { throw .syscall(SyscallError(operation, negatedErrno: rc)) }
    }

    /// The index of `name` in the calling thread's network namespace.
    static func interfaceIndex(_ name: String) throws(AFPacketError) -> Int32 {
        let rc = sluice_afpacket_interface_index(name)
        // swift-system names ENODEV `operationNotSupportedByDevice`; if_nametoindex uses it for "no such interface".
        if rc == -Errno.operationNotSupportedByDevice.rawValue { throw .interfaceNotFound(name) }
        guard rc > 0 else { throw .syscall(SyscallError("if_nametoindex", negatedErrno: rc)) }
        return rc
    }
}

/// A ring mapped from a socket. Unmapped when its owner goes away.
struct AFPacketMapping: ~Copyable {
    let base: UnsafeMutableRawPointer
    let sizeBytes: Int

    /// Maps `sizeBytes` of the socket's ring(s), populated up front. Wraps `mmap(2)`.
    init(socket: borrowing AFPacketSocket, sizeBytes: Int) throws(AFPacketError) {
        var memory: UnsafeMutableRawPointer?
        let rc = sluice_afpacket_map(socket.fd, sizeBytes, &memory)
        guard rc == 0, let memory else { throw .syscall(SyscallError("mmap(PACKET ring)", negatedErrno: min(rc, -1))) }
        self.base = memory
        self.sizeBytes = sizeBytes
    }

    deinit { _ = sluice_afpacket_unmap(base, sizeBytes) }
}

/// Network namespaces, for tests, benchmarks and `--netns` style options.
public enum NetworkNamespace {
    /// Moves the calling thread, and only it, into the network namespace at `path` (for example
    /// `/var/run/netns/NAME`). Sockets the thread opens afterwards (AF_PACKET receivers and
    /// transmitters) belong to that namespace for their whole life, whichever thread uses them.
    /// Use a thread made for the purpose. Wraps `setns(CLONE_NEWNET)`.
    public static func enterOnCurrentThread(path: String) throws(SyscallError) {
        let rc = sluice_afpacket_enter_netns(path)
        guard rc == 0 else { throw SyscallError("setns(\(path))", negatedErrno: rc) }
    }
}
