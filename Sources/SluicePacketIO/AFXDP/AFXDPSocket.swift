// Path: Sources/SluicePacketIO/AFXDP/AFXDPSocket.swift — the kernel objects behind an AF_XDP port: the
// UMEM, its fill and completion rings, the socket and (for a receiver) the XDP program libxdp attached.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// An open AF_XDP socket with its UMEM. Deleted (program detached, UMEM unmapped) when its owner goes
/// away; move it, never copy it. The rings inside are touched by the one thread that owns the port.
struct AFXDPSocket: ~Copyable {
    /// The C state (rings, UMEM, fd), at a fixed address: the ring cursors live in it.
    let state: UnsafeMutablePointer<sluice_xdp_socket>
    /// The mode the program runs in (receivers), or nil for a TX-only socket (no program).
    let mode: AFXDPMode?

    /// Opens a socket on `configuration.interface` and queue in the calling thread's namespace. A
    /// receiver (`receive`) attaches libxdp's default XSK program: in `auto` mode native first, then
    /// generic when native fails. A transmitter attaches nothing. Allocates and blocks briefly.
    init(configuration: AFXDPConfiguration, receive: Bool) throws(AFXDPError) {
        try configuration.validate()
        _ = AFXDPLibraryLogs.silenced
        let modes: [AFXDPMode] = !receive ? [.auto]
            : configuration.mode == .auto ? [.native, .generic] : [configuration.mode]
        let state = UnsafeMutablePointer<sluice_xdp_socket>.allocate(capacity: 1)
        state.initialize(to: sluice_xdp_socket())
        var lastError = SyscallError("xsk_socket__create", Errno(rawValue: 0))
        var opened: AFXDPMode?
        for mode in modes {
            var step: Int32 = 0
            let flag: Int32 = !receive ? SLUICE_XDP_MODE_NONE
                : mode == .native ? SLUICE_XDP_MODE_NATIVE : SLUICE_XDP_MODE_GENERIC
            var rc: Int32 = 0
            // A socket just closed on this queue (the service's probe) frees the queue from a kernel
            // work item a little later (xp_release_deferred): EBUSY until then, so try again briefly.
            for attempt in 0...Self.busyRetriesMax {
                rc = sluice_xdp_open(state, configuration.interface, configuration.queue, receive ? 1 : 0, flag,
                                     UInt32(configuration.frameCount), UInt32(configuration.frameSizeBytes),
                                     UInt32(configuration.ringSize), Int32(configuration.numaNode ?? -1), &step)
                guard rc == -Errno.resourceBusy.rawValue, step == SLUICE_XDP_STEP_SOCKET, attempt < Self.busyRetriesMax else { break }
                usleep(Self.busyRetryIntervalUs)
            }
            if rc == 0 {
                opened = mode
                break
            }
            switch step {
            case SLUICE_XDP_STEP_IFINDEX:
                state.deallocate()
                // swift-system names ENODEV `operationNotSupportedByDevice`: "no such interface" here.
                if rc == -Errno.operationNotSupportedByDevice.rawValue { throw .interfaceNotFound(configuration.interface) }
                throw .syscall(SyscallError("if_nametoindex", negatedErrno: rc))
            case SLUICE_XDP_STEP_MMAP:
                state.deallocate()
                throw .syscall(SyscallError("mmap(UMEM)", negatedErrno: rc))
            case SLUICE_XDP_STEP_UMEM:
                state.deallocate()
                throw .syscall(SyscallError("xsk_umem__create", negatedErrno: rc))
            default:
                lastError = SyscallError("xsk_socket__create(\(receive ? "\(mode) XDP" : "TX only"))", negatedErrno: rc)
            }
        }
        guard let opened else {
            state.deallocate()
            throw .attachFailed(interface: configuration.interface, tried: receive ? modes : [], error: lastError)
        }
        self.state = state
        self.mode = receive ? opened : nil
    }

    /// Tries after EBUSY from xsk_socket__create, `busyRetryIntervalUs` apart (200 ms in all).
    static let busyRetriesMax = 40
    static let busyRetryIntervalUs: UInt32 = 5_000

    deinit {
        sluice_xdp_close(state)
        state.deallocate()
    }

    var fd: Int32 { state.pointee.fd }
    var area: UnsafeMutableRawPointer { UnsafeMutableRawPointer(state.pointee.area) }
    var frameSizeBytes: Int { Int(state.pointee.frame_size) }

    /// XDP_STATISTICS: the kernel's running totals for this socket. Any thread holding the fd.
    static func statistics(fd: Int32) throws(SyscallError) -> sluice_xdp_stats {
        var stats = sluice_xdp_stats()
        let rc = sluice_xdp_statistics(fd, &stats)
        guard rc == 0 else { throw SyscallError("getsockopt(XDP_STATISTICS)", negatedErrno: rc) }
        return stats
    }
}

/// libbpf and libxdp would print to stderr (no bpffs, dispatcher fallback); errors reach us as errnos.
enum AFXDPLibraryLogs {
    static let silenced: Bool = {
        sluice_xdp_silence_library_logs()
        return true
    }()
}

/// What the kernel says about XDP on an interface.
public enum AFXDPInterface {
    /// The mode of the XDP program attached to `interface` in the calling thread's namespace (nil:
    /// none). Wraps `bpf_xdp_query`.
    public static func attachedMode(_ interface: String) throws(SyscallError) -> AFXDPMode? {
        let rc = sluice_xdp_attached_mode(interface)
        guard rc >= 0 else { throw SyscallError("bpf_xdp_query(\(interface))", negatedErrno: rc) }
        return rc == SLUICE_XDP_MODE_NATIVE ? .native : rc == SLUICE_XDP_MODE_GENERIC ? .generic : nil
    }

    /// Where libxdp loads its default XSK program (`xsk_def_xdp_prog*.o`) from.
    public static var objectPath: String { String(cString: sluice_xdp_object_path()) }
}
