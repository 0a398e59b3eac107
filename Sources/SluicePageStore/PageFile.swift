// Path: Sources/SluicePageStore/PageFile.swift — fixed-size pages in one data file, read and written
// through io_uring with registered buffers and file, O_DIRECT by default; every page carries its
// last-modified OSN and a CRC-32C, checked on every read.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// Why a page operation failed.
public enum PageStoreError: Error, Equatable, CustomStringConvertible {
    /// The page size is not a power of two in `PageFile.pageSizeBytesRange`.
    case invalidPageSize(Int)
    /// The queue depth is outside 1...`PageFile.queueDepthMax`.
    case invalidQueueDepth(Int, max: Int)
    case syscall(SyscallError)
    /// A page read back does not check out: never returned as data.
    case corruptPage(physicalPage: UInt64, reason: String)
    /// The kernel moved fewer bytes than a page (or failed) for this page.
    case io(physicalPage: UInt64, result: Int32)

    public var description: String {
        switch self {
        case .invalidPageSize(let size):
            "page store: page size must be a power of two in \(PageFile.pageSizeBytesRange), got \(size)"
        case .invalidQueueDepth(let depth, let max): "page store: queue depth must be 1...\(max), got \(depth)"
        case .syscall(let error): "page store: \(error)"
        case .corruptPage(let page, let reason): "page \(page) is corrupt: \(reason)"
        case .io(let page, let result):
            result < 0 ? "page \(page): I/O error \(Errno(rawValue: -result))" : "page \(page): short I/O of \(result) bytes"
        }
    }
}

/// What a page says about itself, in its first 32 bytes: magic, CRC-32C of the rest, the OSN of the
/// write that produced it, and the object and index it belongs to.
@frozen
public struct PageHeader: Sendable, Equatable {
    public var osn: UInt64
    public var objectID: UInt64
    public var pageIndex: UInt64

    public init(osn: UInt64, objectID: UInt64, pageIndex: UInt64) {
        self.osn = osn
        self.objectID = objectID
        self.pageIndex = pageIndex
    }

    public static let sizeBytes = 32
    static let magic: UInt32 = 0x534C_5047  // "SLPG"
}

public struct PageFileConfiguration: Sendable {
    public var path: String
    public var pageSizeBytes = 4096
    /// Operations in flight at once (and registered buffers): 1...PageFile.queueDepthMax.
    public var queueDepth = 32
    /// O_DIRECT: bypass the page cache (buffered io_uring writes fall back to kernel workers).
    public var directIO = true

    public init(path: String) { self.path = path }
}

/// One data file of pages. Owned by one thread (its io_uring is not shared); closes on deinit.
public struct PageFile: ~Copyable {
    public static let queueDepthMax = 256
    /// Page sizes a file may have (powers of two only).
    public static let pageSizeBytesRange = 512...(1 << 20)
    public let configuration: PageFileConfiguration
    private let fd: Int32
    private let ring: OpaquePointer
    private let buffers: UnsafeMutableRawPointer
    private let completions: UnsafeMutablePointer<sluice_uring_completion>
    /// Set when a submit failed: SQEs may still be queued and buffers in the kernel's hands, so the
    /// file takes no more I/O (every call throws this) until it is reopened.
    private var ringFailure: PageStoreError?

    public var payloadSizeBytes: Int { configuration.pageSizeBytes - PageHeader.sizeBytes }

    /// True once a submit failed: the file takes no more I/O (reopen it).
    public var isFailed: Bool { ringFailure != nil }

    public init(configuration: PageFileConfiguration) throws(PageStoreError) {
        let size = configuration.pageSizeBytes
        guard Self.pageSizeBytesRange.contains(size), size.nonzeroBitCount == 1 else { throw .invalidPageSize(size) }
        guard (1...Self.queueDepthMax).contains(configuration.queueDepth) else {
            throw .invalidQueueDepth(configuration.queueDepth, max: Self.queueDepthMax)
        }
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | (configuration.directIO ? sluice_open_flag_direct() : 0)
        let fd = open(configuration.path, flags, 0o644)
        guard fd >= 0 else { throw .syscall(SyscallError("open(\(configuration.path))", Errno(rawValue: errno))) }
        var error: Int32 = 0
        guard let ring = sluice_uring_new(UInt32(configuration.queueDepth * 2), &error) else {
            close(fd)
            throw .syscall(SyscallError("io_uring_queue_init", negatedErrno: error))
        }
        var memory: UnsafeMutableRawPointer?
        guard posix_memalign(&memory, 4096, size * configuration.queueDepth) == 0, let memory else {
            sluice_uring_delete(ring)
            close(fd)
            throw .syscall(SyscallError("posix_memalign", .noMemory))
        }
        var vectors = (0..<configuration.queueDepth).map { slot in
            iovec(iov_base: memory + slot * size, iov_len: size)
        }
        var rc = sluice_uring_register_buffers(ring, &vectors, UInt32(vectors.count))
        if rc == 0 {
            var fds = [fd]
            rc = sluice_uring_register_files(ring, &fds, 1)
        }
        guard rc == 0 else {
            free(memory)
            sluice_uring_delete(ring)
            close(fd)
            throw .syscall(SyscallError("io_uring_register", negatedErrno: rc))
        }
        self.configuration = configuration
        self.fd = fd
        self.ring = ring
        self.buffers = memory
        self.completions = .allocate(capacity: configuration.queueDepth)
    }

    deinit {
        completions.deallocate()
        sluice_uring_delete(ring)
        free(buffers)
        close(fd)
    }

    private func buffer(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffers + slot * configuration.pageSizeBytes, count: configuration.pageSizeBytes)
    }

    /// Writes up to `queueDepth` pages in one submission and waits for all: page `i` goes to
    /// `physicalPages[i]` with `headers[i]` and `payloads[i]` (at most `payloadSizeBytes`, zero-padded).
    /// Blocks until the kernel completes them (not until they are durable: see `sync`).
    public mutating func write(physicalPages: [UInt64], headers: [PageHeader], payloads: [[UInt8]]) throws(PageStoreError) {
        if let ringFailure { throw ringFailure }
        precondition(physicalPages.count == headers.count, "one header per page")
        precondition(physicalPages.count == payloads.count, "one payload per page")
        precondition(physicalPages.count <= configuration.queueDepth, "more pages than the queue depth")
        for (slot, page) in physicalPages.enumerated() {
            precondition(payloads[slot].count <= payloadSizeBytes, "payload larger than a page's payload")
            let bytes = buffer(slot)
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes.storeBytes(of: PageHeader.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: headers[slot].osn.littleEndian, toByteOffset: 8, as: UInt64.self)
            bytes.storeBytes(of: headers[slot].objectID.littleEndian, toByteOffset: 16, as: UInt64.self)
            bytes.storeBytes(of: headers[slot].pageIndex.littleEndian, toByteOffset: 24, as: UInt64.self)
            payloads[slot].withUnsafeBytes { payload in
                UnsafeMutableRawBufferPointer(rebasing: bytes[PageHeader.sizeBytes...]).copyMemory(from: payload)
            }
            let crc = sluice_crc32c(0, bytes.baseAddress! + 8, bytes.count - 8)
            bytes.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            let rc = sluice_uring_prep_write_fixed(ring, 0, bytes.baseAddress, UInt32(bytes.count),
                                                   page * UInt64(bytes.count), Int32(slot), UInt64(slot))
            precondition(rc == 0, "a submission slot per queued page")
        }
        try submitAndCheck(physicalPages)
    }

    /// A page read back: its header and payload, or `nil` header for a page never written (all zeros).
    public struct PageRead: Sendable, Equatable {
        public var header: PageHeader?
        public var payload: [UInt8]
    }

    /// Reads up to `queueDepth` pages in one submission; each is checked (magic, CRC-32C, and that it
    /// claims to be where it was read from when `expect` gives object and index). A torn or corrupt
    /// page throws `corruptPage`, never comes back as data.
    public mutating func read(physicalPages: [UInt64]) throws(PageStoreError) -> [PageRead] {
        if let ringFailure { throw ringFailure }
        precondition(physicalPages.count <= configuration.queueDepth, "more pages than the queue depth")
        for (slot, page) in physicalPages.enumerated() {
            let bytes = buffer(slot)
            let rc = sluice_uring_prep_read_fixed(ring, 0, bytes.baseAddress, UInt32(bytes.count),
                                                  page * UInt64(bytes.count), Int32(slot), UInt64(slot))
            precondition(rc == 0, "a submission slot per queued page")
        }
        try submitAndCheck(physicalPages, allowShortReadAtEnd: true)
        var pages: [PageRead] = []
        pages.reserveCapacity(physicalPages.count)
        for (slot, page) in physicalPages.enumerated() {
            pages.append(try check(buffer(slot), page: page))
        }
        return pages
    }

    /// Makes written pages durable (fdatasync through the ring).
    public mutating func sync() throws(PageStoreError) {
        if let ringFailure { throw ringFailure }
        let rc = sluice_uring_prep_fsync(ring, 0, 1, 1, UInt64.max)
        precondition(rc == 0, "a free submission slot")
        var submitted = sluice_uring_submit(ring, 1)
        // Wait for the fsync's own completion (the only one outstanding while the ring is healthy).
        while submitted >= 0 {
            if sluice_uring_reap(ring, completions, 1) == 1 {
                precondition(completions[0].user_data == UInt64.max, "only the fsync is in flight")
                break
            }
            submitted = sluice_uring_submit(ring, 1)
        }
        guard submitted >= 0 else {
            let error = PageStoreError.syscall(SyscallError("io_uring_submit", negatedErrno: submitted))
            ringFailure = error
            throw error
        }
        guard completions[0].result >= 0 else {
            throw .syscall(SyscallError("fdatasync", negatedErrno: completions[0].result))
        }
    }

    // MARK: Slots: I/O kept in flight by the caller (benchmarks, scrubs)

    /// The registered buffer of `slot` (0..<queueDepth), a whole page: fill it before `prepareWrite`,
    /// read it after a `prepareRead` completed. Valid while the file lives; owned by the file's thread.
    public func slotBuffer(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        precondition((0..<configuration.queueDepth).contains(slot), "slot within the queue depth")
        return buffer(slot)
    }

    /// Queues a read of `physicalPage` into `slot`'s buffer; `submit` sends it, `reap` reports it
    /// with `slot`. At most `queueDepth` prepared and in flight. Never blocks.
    public mutating func prepareRead(slot: Int, physicalPage: UInt64) {
        let bytes = slotBuffer(slot)
        let rc = sluice_uring_prep_read_fixed(ring, 0, bytes.baseAddress, UInt32(bytes.count),
                                              physicalPage * UInt64(bytes.count), Int32(slot), UInt64(slot))
        precondition(rc == 0, "a submission slot per prepared page")
    }

    /// Seals the page in `slot`'s buffer (magic, `header`, CRC-32C over the rest; the payload bytes
    /// are whatever the buffer holds) and queues its write to `physicalPage`. Never blocks.
    public mutating func prepareWrite(slot: Int, physicalPage: UInt64, header: PageHeader) {
        let bytes = slotBuffer(slot)
        bytes.storeBytes(of: PageHeader.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        bytes.storeBytes(of: header.osn.littleEndian, toByteOffset: 8, as: UInt64.self)
        bytes.storeBytes(of: header.objectID.littleEndian, toByteOffset: 16, as: UInt64.self)
        bytes.storeBytes(of: header.pageIndex.littleEndian, toByteOffset: 24, as: UInt64.self)
        let crc = sluice_crc32c(0, bytes.baseAddress! + 8, bytes.count - 8)
        bytes.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
        let rc = sluice_uring_prep_write_fixed(ring, 0, bytes.baseAddress, UInt32(bytes.count),
                                               physicalPage * UInt64(bytes.count), Int32(slot), UInt64(slot))
        precondition(rc == 0, "a submission slot per prepared page")
    }

    /// Sends the prepared operations and waits until `waitCount` completions are ready (0: no wait).
    /// Returns how many the kernel took. A failed submit fails the file. Wraps `io_uring_submit_and_wait`.
    @discardableResult
    public mutating func submit(waitCount: Int) throws(PageStoreError) -> Int {
        if let ringFailure { throw ringFailure }
        let submitted = sluice_uring_submit(ring, UInt32(waitCount))
        guard submitted >= 0 else {
            let error = PageStoreError.syscall(SyscallError("io_uring_submit", negatedErrno: submitted))
            ringFailure = error
            throw error
        }
        return Int(submitted)
    }

    /// One finished slot operation: the slot and the kernel's result (the page size when whole, else
    /// a short count or `-errno`).
    public struct SlotCompletion: Sendable {
        public var slot: Int
        public var result: Int32
        public init(slot: Int, result: Int32) {
            self.slot = slot
            self.result = result
        }
    }

    /// Takes up to `into.count` (at most `queueDepth`) completions without waiting. Returns how many
    /// it wrote to the front of `into`. Never allocates.
    public mutating func reap(into completed: UnsafeMutableBufferPointer<SlotCompletion>) -> Int {
        let reaped = Int(sluice_uring_reap(ring, completions, UInt32(min(completed.count, configuration.queueDepth))))
        for index in 0..<reaped {
            completed[index] = SlotCompletion(slot: Int(completions[index].user_data), result: completions[index].result)
        }
        return reaped
    }

    /// True when `bytes` (a whole page) checks out: magic and CRC-32C, or all zeros (never written).
    public static func pageChecksOut(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let magic = UInt32(littleEndian: bytes.load(fromByteOffset: 0, as: UInt32.self))
        guard magic == PageHeader.magic else { return magic == 0 && bytes.allSatisfy { $0 == 0 } }
        let stored = UInt32(littleEndian: bytes.load(fromByteOffset: 4, as: UInt32.self))
        return stored == sluice_crc32c(0, bytes.baseAddress! + 8, bytes.count - 8)
    }

    private mutating func submitAndCheck(_ pages: [UInt64], allowShortReadAtEnd: Bool = false) throws(PageStoreError) {
        guard !pages.isEmpty else { return }
        let submitted = sluice_uring_submit(ring, UInt32(pages.count))
        guard submitted >= 0 else {
            let error = PageStoreError.syscall(SyscallError("io_uring_submit", negatedErrno: submitted))
            ringFailure = error
            throw error
        }
        var done = 0
        var failure: PageStoreError?
        while done < pages.count {
            let reaped = Int(sluice_uring_reap(ring, completions + done, UInt32(pages.count - done)))
            if reaped == 0 {
                let rc = sluice_uring_submit(ring, 1)
                guard rc >= 0 else {
                    let error = PageStoreError.syscall(SyscallError("io_uring_submit", negatedErrno: rc))
                    ringFailure = error
                    throw error
                }
                continue
            }
            done += reaped
        }
        for index in 0..<pages.count {
            let completion = completions[index]
            let slot = Int(completion.user_data)
            let full = Int32(configuration.pageSizeBytes)
            if completion.result == full { continue }
            if allowShortReadAtEnd, completion.result == 0 {
                buffer(slot).initializeMemory(as: UInt8.self, repeating: 0)  // past the end: never written
                continue
            }
            if failure == nil { failure = .io(physicalPage: pages[slot], result: completion.result) }
        }
        if let failure { throw failure }
    }

    private func check(_ bytes: UnsafeMutableRawBufferPointer, page: UInt64) throws(PageStoreError) -> PageRead {
        let magic = UInt32(littleEndian: bytes.load(fromByteOffset: 0, as: UInt32.self))
        if magic == 0, bytes.allSatisfy({ $0 == 0 }) { return PageRead(header: nil, payload: []) }
        guard magic == PageHeader.magic else {
            throw .corruptPage(physicalPage: page, reason: "bad magic \(String(magic, radix: 16))")
        }
        let stored = UInt32(littleEndian: bytes.load(fromByteOffset: 4, as: UInt32.self))
        let computed = sluice_crc32c(0, bytes.baseAddress! + 8, bytes.count - 8)
        guard stored == computed else {
            throw .corruptPage(physicalPage: page, reason: "CRC-32C \(String(computed, radix: 16)), stored \(String(stored, radix: 16))")
        }
        let header = PageHeader(osn: UInt64(littleEndian: bytes.load(fromByteOffset: 8, as: UInt64.self)),
                                objectID: UInt64(littleEndian: bytes.load(fromByteOffset: 16, as: UInt64.self)),
                                pageIndex: UInt64(littleEndian: bytes.load(fromByteOffset: 24, as: UInt64.self)))
        return PageRead(header: header, payload: Array(bytes[PageHeader.sizeBytes...]))
    }
}
