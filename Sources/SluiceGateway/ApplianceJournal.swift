// Path: Sources/SluiceGateway/ApplianceJournal.swift — the appliance's upload journal: one file per
// object being written, made durable before any append or close is acknowledged, byte-bounded.
import Glibc
import SluiceCore
import Synchronization
import SystemPackage

/// Where and how much the appliance journals. Validated by `ApplianceJournal.open`.
public struct ApplianceJournalConfiguration: Sendable {
    /// The journal directory (made if missing; locked against a second appliance).
    public var directory: String
    /// Bytes of object data the journal holds at most (open and sealed, not yet uploaded).
    public var bytesMax = 1 << 30
    /// How long an append waits for uploads to free space before it is refused `overloaded`.
    public var spaceWaitNs: UInt64 = 10_000_000_000
    /// Writes open at once; one more `beginWrite` is `overloaded`.
    public var openWritesMax = 256

    public init(directory: String) { self.directory = directory }
}

/// One journal file. `open`: being written (`<id>.open`); `sealed`: closed by its client, durable and
/// complete (`<id>.sealed`), waiting for (or in) its upload.
struct JournalEntry: Sendable {
    enum Phase: Sendable, Equatable { case open, sealed }
    var id: UInt64
    var key: String
    var phase: Phase
    var dataBytes: UInt64
    var fd: Int32
    /// Bytes reserved against the bound (open writes reserve as they append).
    var reserved: UInt64
    /// Removed while an append was in progress: that append deletes it when it ends.
    var abandoned = false
}

/// The journal. File format: `SLJRNL01` (8 bytes), `u16 keyLen` (little-endian), key, then the data.
/// A file is fsynced after every append before it is acknowledged; closing fsyncs it, renames
/// `.open` to `.sealed` and fsyncs the directory. At open, sealed files are kept (to upload again) and
/// open ones, never acknowledged as closed, are deleted and counted. Thread-safe.
final class ApplianceJournal: Sendable {
    static let magic: [UInt8] = Array("SLJRNL01".utf8)

    private struct State: ~Copyable {
        var entries: [UInt64: JournalEntry] = [:]
        var nextID: UInt64 = 1
        var usedBytes: UInt64 = 0
        /// Set by `closeFiles`: the descriptors and the directory lock are released.
        var closed = false
    }

    let configuration: ApplianceJournalConfiguration
    let counters: ApplianceCounters
    private let state: Mutex<State>
    private let lockFD: Int32
    /// Sealed journals found at open, and open ones deleted then.
    let recoveredSealed: Int
    let discardedOpen: Int

    /// Opens (or makes) the directory, locks it and reads back what a previous run left.
    init(configuration: ApplianceJournalConfiguration, counters: ApplianceCounters) throws(ApplianceError) {
        let directory = configuration.directory
        guard configuration.bytesMax > 0, (1...65_536).contains(configuration.openWritesMax) else {
            throw .invalidRequest("journal bytesMax \(configuration.bytesMax) or openWritesMax \(configuration.openWritesMax) out of bounds")
        }
        if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw .journal("mkdir(\(directory)): \(Errno(rawValue: errno))") }
        let lockFD: Int32
        switch GatewayFiles.open(directory + "/LOCK", O_RDWR | O_CREAT) {
        case .success(let fd): lockFD = fd
        case .failure(let error): throw .journal("\(error)")
        }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            Glibc.close(lockFD)
            throw .journal("\(directory) is in use by another appliance (flock: \(Errno(rawValue: errno)))")
        }
        var initial = State()
        var sealed = 0
        var discarded = 0
        for name in Self.names(in: directory) {
            let path = directory + "/" + name
            if name.hasSuffix(".open") || name.hasSuffix(".tmp") {
                unlink(path)
                discarded += 1
                continue
            }
            guard name.hasSuffix(".sealed"), let id = UInt64(name.dropLast(".sealed".count)) else { continue }
            guard case .success(let fd) = GatewayFiles.open(path, O_RDWR) else {
                rename(path, path + ".damaged")
                continue
            }
            guard let header = Self.readHeader(fd), case .success(let info) = GatewayFiles.stat(path) else {
                // A sealed file was fsynced before its rename: an unreadable one is damage, kept aside.
                Glibc.close(fd)
                rename(path, path + ".damaged")
                continue
            }
            let (key, headerBytes) = header
            let dataBytes = UInt64(info.st_size) - UInt64(headerBytes)
            initial.entries[id] = JournalEntry(id: id, key: key, phase: .sealed, dataBytes: dataBytes, fd: fd, reserved: dataBytes)
            initial.usedBytes += dataBytes
            initial.nextID = max(initial.nextID, id + 1)
            sealed += 1
        }
        if discarded > 0 { Self.syncDirectory(directory) }
        self.configuration = configuration
        self.counters = counters
        self.lockFD = lockFD
        recoveredSealed = sealed
        discardedOpen = discarded
        counters.add(counters.journalDiscardedOpen, discarded)
        counters.journalBytes.store(initial.usedBytes, ordering: .relaxed)
        state = Mutex(initial)
    }

    deinit { closeFiles() }

    /// Closes every journal file and releases the directory lock (another appliance may open it). The
    /// files stay: what is sealed is uploaded by the next appliance on this directory. Idempotent.
    func closeFiles() {
        let fds: [Int32]? = state.withLock { s in
            guard !s.closed else { return nil }
            s.closed = true
            return s.entries.values.map(\.fd)
        }
        guard let fds else { return }
        for fd in fds { Glibc.close(fd) }
        Glibc.close(lockFD)
    }

    private func path(_ id: UInt64, _ phase: JournalEntry.Phase) -> String {
        configuration.directory + "/" + String(id) + (phase == .open ? ".open" : ".sealed")
    }

    static func headerBytes(_ key: String) -> Int { magic.count + 2 + key.utf8.count }

    /// A new open journal for `key`, durable (file and directory fsynced) before it returns.
    func begin(key: String) async throws(ApplianceError) -> UInt64 {
        let openMax = configuration.openWritesMax
        let id: UInt64? = state.withLock { s in
            guard !s.closed, s.entries.values.lazy.filter({ $0.phase == .open }).count < openMax else { return nil }
            defer { s.nextID += 1 }
            return s.nextID
        }
        guard let id else { throw .overloaded("\(openMax) writes already open") }
        let path = path(id, .open)
        let directory = configuration.directory
        var header = Self.magic
        header += [UInt8(key.utf8.count & 0xFF), UInt8(key.utf8.count >> 8)]
        header += Array(key.utf8)
        let headerBytes = header
        let result = await runBlocking { () -> Result<Int32, SyscallError> in
            switch GatewayFiles.open(path, O_RDWR | O_CREAT | O_EXCL) {
            case .failure(let error): return .failure(error)
            case .success(let fd):
                if let error = headerBytes.withUnsafeBytes({ GatewayFiles.pwrite(fd, $0, offset: 0, what: path) }) {
                    Glibc.close(fd)
                    return .failure(error)
                }
                guard fdatasync(fd) == 0 else {
                    let error = SyscallError("fdatasync(\(path))", Errno(rawValue: errno))
                    Glibc.close(fd)
                    return .failure(error)
                }
                Self.syncDirectory(directory)
                return .success(fd)
            }
        }
        switch result {
        case .failure(let error): throw .journal("\(error)")
        case .success(let fd):
            state.withLock { s in s.entries[id] = JournalEntry(id: id, key: key, phase: .open, dataBytes: 0, fd: fd, reserved: 0) }
            return id
        }
    }

    /// Appends `bytes` to open journal `id` at `offset` (must be its length: appends come in order) and
    /// fdatasyncs. Waits up to `spaceWaitNs` for space under the bound, then `overloaded`.
    func append(_ id: UInt64, offset: UInt64, bytes: [UInt8]) async throws(ApplianceError) -> UInt64 {
        let count = UInt64(bytes.count)
        let deadline = monotonicNs() + configuration.spaceWaitNs
        var waited = false
        while true {
            enum Reserve { case ok(JournalEntry), full, notOpen, wrongOffset(UInt64), busy }
            let bytesMax = UInt64(configuration.bytesMax)
            let outcome = state.withLock { s -> Reserve in
                guard !s.closed, var entry = s.entries[id], entry.phase == .open else { return .notOpen }
                guard entry.dataBytes == offset else { return .wrongOffset(entry.dataBytes) }
                guard entry.reserved == entry.dataBytes else { return .busy }
                guard s.usedBytes + count <= bytesMax else { return .full }
                s.usedBytes += count
                entry.reserved += count
                s.entries[id] = entry
                return .ok(entry)
            }
            switch outcome {
            case .notOpen: throw .writeNotOpen(writeID: id)
            case .wrongOffset(let length): throw .invalidRequest("write \(id) holds \(length) bytes; an append at \(offset) is out of order")
            case .busy: throw .invalidRequest("write \(id) has an append in progress")
            case .full:
                if !waited { counters.add(counters.uploadWaits) }
                waited = true
                guard monotonicNs() < deadline else {
                    counters.add(counters.journalRefusals)
                    throw .overloaded("journal full: \(configuration.bytesMax) bytes await upload; \(count) more did not fit "
                                      + "within \(configuration.spaceWaitNs / 1_000_000) ms")
                }
                try? await Task.sleep(nanoseconds: 2_000_000)
                continue
            case .ok(let entry):
                let path = path(id, .open)
                let at = Int64(Self.headerBytes(entry.key)) + Int64(offset)
                let error = await runBlocking { () -> SyscallError? in
                    if let error = bytes.withUnsafeBytes({ GatewayFiles.pwrite(entry.fd, $0, offset: at, what: path) }) { return error }
                    return fdatasync(entry.fd) == 0 ? nil : SyscallError("fdatasync(\(path))", Errno(rawValue: errno))
                }
                let (length, abandoned): (UInt64, Bool) = state.withLock { s in
                    guard var current = s.entries[id] else { return (0, true) }
                    if error == nil { current.dataBytes += count } else {
                        current.reserved -= count
                        s.usedBytes -= count
                    }
                    s.entries[id] = current
                    return (current.dataBytes, current.abandoned)
                }
                if abandoned {
                    remove(id)
                    throw .writeNotOpen(writeID: id)
                }
                if let error { throw .journal("\(error)") }
                counters.add(counters.bytesWritten, bytes.count)
                counters.journalBytes.store(state.withLock { $0.usedBytes }, ordering: .relaxed)
                return length
            }
        }
    }

    /// Seals open journal `id`: fsync, rename to `.sealed`, fsync of the directory. Its size.
    func seal(_ id: UInt64) async throws(ApplianceError) -> UInt64 {
        let entry: JournalEntry? = state.withLock { s in
            guard !s.closed, let entry = s.entries[id], entry.phase == .open, entry.reserved == entry.dataBytes else { return nil }
            return entry
        }
        guard let entry else { throw .writeNotOpen(writeID: id) }
        let from = path(id, .open)
        let to = path(id, .sealed)
        let directory = configuration.directory
        let error = await runBlocking { () -> SyscallError? in
            guard fsync(entry.fd) == 0 else { return SyscallError("fsync(\(from))", Errno(rawValue: errno)) }
            guard rename(from, to) == 0 else { return SyscallError("rename(\(from))", Errno(rawValue: errno)) }
            Self.syncDirectory(directory)
            return nil
        }
        if let error { throw .journal("\(error)") }
        state.withLock { s in s.entries[id]?.phase = .sealed }
        return entry.dataBytes
    }

    /// Deletes journal `id` (uploaded, superseded, or an open write abandoned) and frees its bytes.
    func remove(_ id: UInt64) {
        let entry: JournalEntry? = state.withLock { s in
            guard var entry = s.entries[id] else { return nil }
            if entry.reserved != entry.dataBytes {
                // An append is writing to its file descriptor: it removes the entry when it ends.
                entry.abandoned = true
                s.entries[id] = entry
                return nil
            }
            s.entries[id] = nil
            s.usedBytes -= entry.reserved
            return entry
        }
        guard let entry else { return }
        if !state.withLock({ $0.closed }) { Glibc.close(entry.fd) }
        unlink(path(id, entry.phase))
        counters.journalBytes.store(state.withLock { $0.usedBytes }, ordering: .relaxed)
    }

    /// Sealed journals in seal order (ids grow with `begin`; a later begin of a key seals later or not
    /// at all — the order that matters is of sealed replacements of one key, by id).
    func sealed() -> [JournalEntry] {
        state.withLock { s in s.entries.values.filter { $0.phase == .sealed }.sorted { $0.id < $1.id } }
    }

    /// The newest sealed journal of `key` (what a read of `key` on this appliance sees until uploaded).
    func newestSealed(key: String) -> JournalEntry? {
        state.withLock { s in s.entries.values.filter { $0.phase == .sealed && $0.key == key }.max { $0.id < $1.id } }
    }

    func openEntry(_ id: UInt64) -> JournalEntry? {
        state.withLock { s in s.entries[id].flatMap { $0.phase == .open ? $0 : nil } }
    }

    func contains(_ id: UInt64) -> Bool { state.withLock { $0.entries[id] != nil } }
    var usedBytes: UInt64 { state.withLock { $0.usedBytes } }

    /// `count` data bytes at `offset` of sealed journal `entry`. Opens the file by name (a journal
    /// deleted meanwhile fails ENOENT; its descriptor, closed and maybe reused, is never read).
    func read(_ entry: JournalEntry, offset: UInt64, count: Int) async throws(ApplianceError) -> [UInt8] {
        let at = Int64(Self.headerBytes(entry.key)) + Int64(offset)
        let what = path(entry.id, .sealed)
        let result = await runBlocking { () -> Result<[UInt8], SyscallError> in
            switch GatewayFiles.open(what, O_RDONLY) {
            case .failure(let error): return .failure(error)
            case .success(let fd):
                defer { Glibc.close(fd) }
                return GatewayFiles.pread(fd, count: count, offset: at, what: what)
            }
        }
        switch result {
        case .success(let bytes): return bytes
        case .failure(let error): throw .journal("\(error)")
        }
    }

    static func readHeader(_ fd: Int32) -> (String, Int)? {
        guard case .success(let head) = GatewayFiles.pread(fd, count: magic.count + 2, offset: 0, what: "journal"),
              Array(head[0..<magic.count]) == magic else { return nil }
        let keyBytes = Int(head[magic.count]) | Int(head[magic.count + 1]) << 8
        guard (1...GatewayProtocol.keyBytesMax).contains(keyBytes),
              case .success(let key) = GatewayFiles.pread(fd, count: keyBytes, offset: Int64(magic.count + 2), what: "journal"),
              let text = String(validating: key, as: UTF8.self) else { return nil }
        return (text, magic.count + 2 + keyBytes)
    }

    static func syncDirectory(_ directory: String) {
        if case .success(let fd) = GatewayFiles.open(directory, O_RDONLY | O_DIRECTORY) {
            fsync(fd)
            Glibc.close(fd)
        }
    }

    static func names(in directory: String) -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
