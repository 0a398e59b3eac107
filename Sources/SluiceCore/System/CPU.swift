// Path: Sources/SluiceCore/System/CPU.swift — which CPUs exist and pinning threads to them.
import CShims
import Glibc
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

    /// Restricts the calling thread to `cpus`; returns the CPUs it was allowed before (to restore
    /// with another call), or nil when either step failed (the thread then keeps its set).
    public static func confineCurrentThread(to cpus: [Int]) -> [Int]? {
        guard !cpus.isEmpty, let before = try? allowedCPUs() else { return nil }
        let set = cpus.map { Int32($0) }
        return sluice_thread_set_affinity(0, set, Int32(set.count)) == 0 ? before : nil
    }

    /// Moves every thread of this process now running (each entry of /proc/self/task) onto `cpus`;
    /// threads created later inherit their creator's set. For a service's housekeeping threads:
    /// call before starting workers, which then pin themselves elsewhere. A thread that exits
    /// meanwhile is skipped. Returns how many threads were moved.
    public static func confineAllThreads(to cpus: [Int]) throws(SyscallError) -> Int {
        let set = cpus.map { Int32($0) }
        var moved: Set<Int32> = []
        // A thread not yet moved may start another while the directory is read: read it again
        // until a pass finds nobody new (bounded).
        for _ in 0..<8 {
            guard let directory = opendir("/proc/self/task") else {
                throw SyscallError("opendir(/proc/self/task)", negatedErrno: -errno)
            }
            defer { closedir(directory) }
            var foundNew = false
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard let tid = Int32(name), !moved.contains(tid) else { continue }  // also skips "." and ".."
                let rc = sluice_thread_set_affinity(tid, set, Int32(set.count))
                if rc == -ESRCH { continue }
                guard rc == 0 else { throw SyscallError("sched_setaffinity(\(tid))", negatedErrno: rc) }
                moved.insert(tid)
                foundNew = true
            }
            if !foundNew { break }
        }
        return moved.count
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
