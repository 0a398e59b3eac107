// Path: Sources/SluiceCore/System/CPU.swift — which CPUs exist and pinning threads to them.
import CShims
import SystemPackage

/// CPU topology and affinity, as the kernel reports it for this process.
public enum CPU {
    /// CPUs configured in the system.
    public static var configuredCount: Int { Int(sluice_cpu_count_configured()) }

    /// CPUs this process may run on (its affinity mask, which a container or taskset narrows).
    public static func allowedCount() throws(SyscallError) -> Int {
        let rc = sluice_cpu_count_allowed()
        guard rc >= 0 else { throw SyscallError("sched_getaffinity", negatedErrno: rc) }
        return Int(rc)
    }

    /// Whether this process may run on `cpu`.
    public static func isAllowed(_ cpu: Int) throws(SyscallError) -> Bool {
        guard cpu >= 0, cpu < Int(Int32.max) else { return false }
        let rc = sluice_cpu_is_allowed(Int32(cpu))
        guard rc >= 0 else { throw SyscallError("sched_getaffinity", negatedErrno: rc) }
        return rc == 1
    }

    /// CPUs this process may run on, ascending.
    public static func allowedCPUs() throws(SyscallError) -> [Int] {
        var cpus: [Int] = []
        for cpu in 0..<max(configuredCount, 1) where try isAllowed(cpu) { cpus.append(cpu) }
        return cpus
    }

    /// Pins the calling thread to `cpu`. Wraps `pthread_setaffinity_np`.
    public static func pinCurrentThread(to cpu: Int) throws(SyscallError) {
        let rc = sluice_thread_pin_self(Int32(cpu))
        guard rc == 0 else { throw SyscallError("pthread_setaffinity_np", negatedErrno: rc) }
    }

    /// The CPU the calling thread is on now.
    public static func current() -> Int { Int(sluice_thread_current_cpu()) }

    /// NUMA node of `cpu`; 0 when NUMA is unavailable or `cpu` is not a CPU.
    public static func numaNode(of cpu: Int) -> Int {
        guard cpu >= 0, cpu < Int(Int32.max) else { return 0 }
        return max(0, Int(sluice_numa_node_of_cpu(Int32(cpu))))
    }

    /// Highest NUMA node number (0 without NUMA).
    public static var numaNodeMax: Int { Int(sluice_numa_max_node()) }

    /// Whether libnuma can place memory (`numa_available() >= 0`).
    public static var numaAvailable: Bool { sluice_numa_available() >= 0 }
}
