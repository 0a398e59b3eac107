// Path: Sources/SluiceMigration/GuestMemoryScan.swift — what a move's first pre-copy pass will send,
// read from the source host: the guest RAM pages that hold a non-zero byte. QEMU sends a zero page as a
// header only, so a mostly idle guest moves far fewer bytes than its memory size (measured: 98 MB sent
// for a 256 MiB test guest, 92 MiB of non-zero pages found by this scan).
import CShims
import Foundation
import SluiceCore
import SystemPackage

/// One scan of a running QEMU's guest RAM.
public struct GuestMemoryScan: Sendable, Equatable {
    /// The QEMU process (the listener on its QMP socket).
    public var qemuPID: Int32
    /// Guest RAM found and scanned: base memory plus hot-plugged DIMMs.
    public var ramBytes: UInt64
    /// Pages QEMU's process has touched (resident or swapped); the rest read as zero.
    public var presentBytes: UInt64
    /// Present pages with a non-zero byte: what the first pass sends in full.
    public var nonZeroBytes: UInt64

    public init(qemuPID: Int32, ramBytes: UInt64, presentBytes: UInt64, nonZeroBytes: UInt64) {
        precondition(nonZeroBytes <= presentBytes && presentBytes <= ramBytes, "scan counts \(nonZeroBytes) \(presentBytes) \(ramBytes)")
        self.qemuPID = qemuPID
        self.ramBytes = ramBytes
        self.presentBytes = presentBytes
        self.nonZeroBytes = nonZeroBytes
    }

    /// Bytes QEMU's first pass puts on the wire: non-zero pages whole, every other page as its header
    /// (`zeroPageHeaderBytes`, QEMU's RAM_SAVE_FLAG_ZERO record: an 8-byte address word and 1 byte).
    public var firstPassBytes: UInt64 {
        nonZeroBytes + (ramBytes - nonZeroBytes) / 4096 * Self.zeroPageHeaderBytes
    }

    public static let zeroPageHeaderBytes: UInt64 = 9
    /// Most RAM mappings one guest may have (base memory plus DIMMs): QEMU's own slot limit is 256.
    public static let mappingsMax = 257

    /// Scans the guest behind the QMP socket at `qmpSocketPath`: its pid from the socket's peer
    /// credentials (a qemu-system process, checked), its RAM backends' sizes from `query-memdev` (the
    /// machine's own RAM, DIMMs, NUMA nodes' and virtio-mem backends), the mappings of those sizes from
    /// `/proc/<pid>/maps`, then each page through `/proc/<pid>/pagemap` and `/proc/<pid>/mem`. Needs root
    /// (ptrace-read of QEMU) and the QMP socket free: a held socket fails at once (EAGAIN) or after
    /// `timeout`. Blocks the calling thread for the page scan (about 0.1 s per GiB resident). The guest
    /// runs on: the count is a snapshot, as QEMU's own first pass is.
    public static func scan(qmpSocketPath: String, timeout: Duration = .seconds(2)) async throws(GuestMemoryScanError) -> GuestMemoryScan {
        var pid: Int32 = 0
        let rc = sluice_unix_socket_peer_pid(qmpSocketPath, &pid)
        guard rc == 0 else { throw .syscall(SyscallError("SO_PEERCRED of \(qmpSocketPath)", negatedErrno: rc)) }
        // The listener must be QEMU itself, not a launcher holding the socket or another process.
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
        guard exe.split(separator: "/").last?.hasPrefix("qemu-system") == true else { throw .notQEMU(pid: pid, executable: exe) }
        let client: QMPClient
        do { client = try await QMPClient.connect(path: qmpSocketPath, timeout: timeout) } catch { throw .qmp(error) }
        let sizes: Result<[UInt64], QMPError>
        do {
            let backends = try await client.execute("query-memdev", timeout: timeout)
            let listed = (backends.arrayValue ?? []).prefix(mappingsMax).compactMap { $0["size"]?.uint64Value }
            sizes = .success(listed.isEmpty ? [try await client.queryMemorySizeSummary(timeout: timeout).baseMemoryBytes] : Array(listed))
        } catch {
            sizes = .failure(error)
        }
        await client.close()
        switch sizes {
        case .success(let sizes): return try scan(pid: pid, ramSizes: sizes)
        case .failure(let error): throw .qmp(error)
        }
    }

    /// Scans process `pid`'s guest RAM: one private or shared read-write mapping per size in `ramSizes`.
    public static func scan(pid: Int32, ramSizes: [UInt64]) throws(GuestMemoryScanError) -> GuestMemoryScan {
        precondition(!ramSizes.isEmpty && ramSizes.count <= mappingsMax, "ram sizes \(ramSizes.count)")
        let maps: String
        do {
            let fd = try FileDescriptor.open("/proc/\(pid)/maps", .readOnly, options: .closeOnExec)
            defer { try? fd.close() }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while bytes.count < 16 << 20 {
                let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
                if n == 0 { break }
                bytes += chunk[0..<n]
            }
            maps = String(decoding: bytes, as: UTF8.self)
        } catch {
            throw .syscall(SyscallError("read /proc/\(pid)/maps", (error as? Errno) ?? .ioError))
        }
        guard let ranges = ramMappings(maps: maps, sizes: ramSizes) else { throw .ramNotFound(pid: pid, sizes: ramSizes) }
        var scan = GuestMemoryScan(qemuPID: pid, ramBytes: 0, presentBytes: 0, nonZeroBytes: 0)
        for range in ranges {
            var counts = sluice_mem_scan()
            let rc = sluice_mem_scan_range(pid, range.start, range.length, &counts)
            guard rc == 0 else { throw .syscall(SyscallError("scan /proc/\(pid)/mem", negatedErrno: rc)) }
            scan.ramBytes += range.length
            scan.presentBytes += counts.present * 4096
            scan.nonZeroBytes += counts.nonzero * 4096
        }
        return scan
    }

    /// The mappings holding guest RAM: for each size, in order, the first read-write mapping of exactly
    /// that size not taken yet, anonymous ones before file-backed ones. Nil when a size has none.
    static func ramMappings(maps: String, sizes: [UInt64]) -> [(start: UInt64, length: UInt64)]? {
        struct Mapping { var start: UInt64; var length: UInt64; var anonymous: Bool }
        var candidates: [Mapping] = []
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 5, fields[1] == "rw-p" || fields[1] == "rw-s" else { continue }  // not TCG's rwx code buffer
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16), end > start else { continue }
            candidates.append(Mapping(start: start, length: end - start, anonymous: fields.count == 5 && fields[4] == "0"))
        }
        candidates.sort { $0.anonymous && !$1.anonymous }
        var taken = Set<UInt64>()
        var found: [(start: UInt64, length: UInt64)] = []
        for size in sizes {
            guard let mapping = candidates.first(where: { $0.length == size && !taken.contains($0.start) }) else { return nil }
            taken.insert(mapping.start)
            found.append((mapping.start, mapping.length))
        }
        return found
    }
}

public enum GuestMemoryScanError: Error, Equatable, Sendable, CustomStringConvertible {
    case syscall(SyscallError)
    case qmp(QMPError)
    /// No read-write mapping of one of the guest's RAM sizes in the process.
    case ramNotFound(pid: Int32, sizes: [UInt64])
    /// The socket's listener is not a qemu-system process.
    case notQEMU(pid: Int32, executable: String)

    public var description: String {
        switch self {
        case .syscall(let error): "guest memory scan: \(error)"
        case .qmp(let error): "guest memory scan: \(error)"
        case .ramNotFound(let pid, let sizes): "guest memory scan: process \(pid) has no read-write mapping of each RAM size \(sizes)"
        case .notQEMU(let pid, let executable): "guest memory scan: the QMP socket's listener \(pid) is '\(executable)', not qemu-system"
        }
    }
}
