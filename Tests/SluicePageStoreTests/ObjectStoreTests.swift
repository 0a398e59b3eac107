import Glibc
import Testing

@testable import SluicePageStore

@Suite struct ObjectStoreTests {
    struct Paths {
        let pages: String
        let log: String
        init(_ name: String) {
            pages = "/var/tmp/sluice-store-\(getpid())-\(name).pages"
            log = "/var/tmp/sluice-store-\(getpid())-\(name).log"
        }
        func remove() {
            unlink(pages)
            unlink(log)
            unlink(log + ".lock")
            unlink(pages + ".checkpoint")
            unlink(ObjectStore.lockPath(pages: pages))
            unlink(ObjectStore.formatPath(pages: pages))
        }
        func open() throws -> ObjectStore {
            try ObjectStore(pages: PageFileConfiguration(path: pages), log: try EmbeddedLog(path: log))
        }
    }

    @Test func readsCarryTheirOSNsAndConditionalWritesObeyThem() throws {
        let paths = Paths("osn")
        defer { paths.remove() }
        let store = try paths.open()
        let empty = try store.read(objectID: 1, pageIndex: 0)
        #expect(empty == PageVersion(payload: [], pageOSN: 0, readOSN: 0))
        let first = try store.write(objectID: 1, pages: [(0, Array("a".utf8), .absent)])
        #expect(first == 1)
        let read = try store.read(objectID: 1, pageIndex: 0)
        #expect(read.pageOSN == 1 && read.readOSN == 1 && read.payload.first == UInt8(ascii: "a"))
        let second = try store.write(objectID: 1, pages: [(0, Array("b".utf8), .unmodifiedSince(read.pageOSN))])
        #expect(second == 2)
        // The same read's OSN is stale now: rejected, with the current OSN.
        #expect(throws: ObjectStoreError.conflict(objectID: 1, pageIndex: 0, currentOSN: 2)) {
            _ = try store.write(objectID: 1, pages: [(0, Array("c".utf8), .unmodifiedSince(read.pageOSN))])
        }
        #expect(throws: ObjectStoreError.conflict(objectID: 1, pageIndex: 0, currentOSN: 2)) {
            _ = try store.write(objectID: 1, pages: [(0, Array("d".utf8), .absent)])
        }
        // A write to another page does not move this page's OSN, only the read OSN.
        _ = try store.write(objectID: 1, pages: [(5, Array("x".utf8), .unconditional)])
        let again = try store.read(objectID: 1, pageIndex: 0)
        #expect(again.pageOSN == 2 && again.readOSN == 3 && again.payload.first == UInt8(ascii: "b"))
        #expect(store.pages(of: 1) == [0, 5])
        // A range read: one read OSN for all, each page its own OSN, absent pages empty.
        let range = try store.read(objectID: 1, pageRange: 0..<6)
        #expect(range.count == 6 && range.allSatisfy { $0.readOSN == 3 })
        #expect(range.map(\.pageOSN) == [2, 0, 0, 0, 0, 3])
        #expect(range[0].payload.first == UInt8(ascii: "b") && range[5].payload.first == UInt8(ascii: "x") && range[1].payload.isEmpty)
    }

    @Test func multiPageConditionalWriteIsAllOrNothing() throws {
        let paths = Paths("multi")
        defer { paths.remove() }
        let store = try paths.open()
        let osn = try store.write(objectID: 2, pages: [(0, [1], .unconditional), (1, [1], .unconditional)])
        _ = try store.write(objectID: 2, pages: [(1, [2], .unconditional)])
        #expect(throws: ObjectStoreError.conflict(objectID: 2, pageIndex: 1, currentOSN: osn + 1)) {
            _ = try store.write(objectID: 2, pages: [(0, [9], .unmodifiedSince(osn)), (1, [9], .unmodifiedSince(osn))])
        }
        #expect(try store.read(objectID: 2, pageIndex: 0).payload.first == 1, "page 0 untouched")
        #expect(store.lastOSN == osn + 1, "a rejected write takes no OSN")
    }

    @Test func reopeningRecoversEveryAcknowledgedWriteAndDropsATornTail() throws {
        let paths = Paths("recover")
        defer { paths.remove() }
        do {
            let store = try paths.open()
            for value in 0..<20 { _ = try store.write(objectID: 3, pages: [(UInt64(value % 5), [UInt8(value)], .unconditional)]) }
        }
        // A crash mid-append leaves half a record at the end of the log.
        let fd = open(paths.log, O_WRONLY | O_APPEND)
        let garbage: [UInt8] = [200, 0, 0, 0, 1, 2, 3]
        _ = garbage.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let store = try paths.open()
        #expect(store.lastOSN == 20)
        for index in 0..<5 {
            let page = try store.read(objectID: 3, pageIndex: UInt64(index))
            #expect(page.payload.first == UInt8(15 + index))
            #expect(page.pageOSN == UInt64(16 + index))
        }
        #expect(try store.write(objectID: 3, pages: [(0, [99], .unconditional)]) == 21, "OSNs stay gap-free")
    }

    /// A write acknowledged by the log whose page never reached the data file is redone on open.
    @Test func logAheadOfPagesIsRedone() throws {
        let paths = Paths("redo")
        defer { paths.remove() }
        do {
            let store = try paths.open()
            _ = try store.write(objectID: 4, pages: [(0, [1], .unconditional)])
        }
        do {
            let log = try EmbeddedLog(path: paths.log)
            #expect(try log.append(LogRecord(objectID: 4, pages: [(0, [2]), (1, [3])])) == 2)
        }
        let store = try paths.open()
        let redone = try store.read(objectID: 4, pageIndex: 0)
        #expect(redone.pageOSN == 2 && redone.readOSN == 2)
        #expect(redone.payload.first == 2)
        #expect(try store.read(objectID: 4, pageIndex: 1).payload.first == 3)
    }

    /// Create, truncate, delete and list: logged like writes, so a reopened store agrees, and a page
    /// removed by truncate or delete never looks unchanged to a write carrying an older OSN.
    @Test func objectLifecycleIsLoggedAndGuardsConditions() throws {
        let paths = Paths("lifecycle")
        defer { paths.remove() }
        do {
            let store = try paths.open()
            #expect(try store.create(objectID: 7) == 1)
            #expect(throws: ObjectStoreError.objectExists(7)) { _ = try store.create(objectID: 7) }
            #expect(try store.stat(objectID: 7) == ObjectInfo(objectID: 7, pageCount: 0, lastOSN: 1))
            _ = try store.write(objectID: 7, pages: [(0, [1], .unconditional), (1, [2], .unconditional), (2, [3], .unconditional)])
            let seen = try store.read(objectID: 7, pageIndex: 2)
            #expect(try store.truncate(objectID: 7, pageCount: 1) == 3)
            #expect(store.pages(of: 7) == [0])
            #expect(try store.stat(objectID: 7) == ObjectInfo(objectID: 7, pageCount: 1, lastOSN: 3))
            let cut = try store.read(objectID: 7, pageIndex: 2)
            #expect(cut.payload.isEmpty && cut.pageOSN == 3, "a truncated page reads empty, at the truncate's OSN")
            #expect(throws: ObjectStoreError.conflict(objectID: 7, pageIndex: 2, currentOSN: 3)) {
                _ = try store.write(objectID: 7, pages: [(2, [9], .unmodifiedSince(seen.pageOSN))])
            }
            _ = try store.write(objectID: 8, pages: [(0, [4], .unconditional)])  // created by its first write
            let eight = try store.read(objectID: 8, pageIndex: 0)
            #expect(try store.delete(objectID: 8) == 5)
            #expect(throws: ObjectStoreError.noSuchObject(8)) { _ = try store.delete(objectID: 8) }
            #expect(throws: ObjectStoreError.noSuchObject(8)) { _ = try store.stat(objectID: 8) }
            #expect(throws: ObjectStoreError.conflict(objectID: 8, pageIndex: 0, currentOSN: 5)) {
                _ = try store.write(objectID: 8, pages: [(0, [9], .unmodifiedSince(eight.pageOSN))])
            }
            // Re-created by a write after the delete: a page read before the delete still conflicts.
            _ = try store.write(objectID: 8, pages: [(1, [6], .unconditional)])
            #expect(throws: ObjectStoreError.conflict(objectID: 8, pageIndex: 0, currentOSN: 5)) {
                _ = try store.write(objectID: 8, pages: [(0, [9], .unmodifiedSince(eight.pageOSN))])
            }
            #expect(try store.delete(objectID: 8) == 7)
            // Page indices are bounded: a huge one is refused before it is logged.
            #expect(throws: ObjectStoreError.pageIndexOutOfRange(UInt64.max, max: ObjectStore.pageIndexMax)) {
                _ = try store.write(objectID: 9, pages: [(UInt64.max, [1], .unconditional)])
            }
            // The deleted object's physical page is reused by the next new page.
            _ = try store.write(objectID: 9, pages: [(0, [5], .absent)])
            #expect(store.list().map(\.objectID) == [7, 9])
        }
        let reopened = try paths.open()
        #expect(reopened.list() == [ObjectInfo(objectID: 7, pageCount: 1, lastOSN: 3), ObjectInfo(objectID: 9, pageCount: 1, lastOSN: 8)])
        #expect(try reopened.read(objectID: 7, pageIndex: 0).payload.first == 1)
        #expect(try reopened.read(objectID: 9, pageIndex: 0).payload.first == 5)
        #expect(try reopened.read(objectID: 8, pageIndex: 0).payload.isEmpty)
        #expect(reopened.lastOSN == 8)
    }

    /// A group commit checks each write against the ones before it in the batch: of two conditional
    /// writes from one read, only the first wins, and the loser learns the winner's OSN.
    @Test func groupCommitOrdersConditionsWithinTheBatch() throws {
        let paths = Paths("batch")
        defer { paths.remove() }
        let store = try paths.open()
        let base = try store.write(objectID: 1, pages: [(0, [0], .unconditional)])
        let results = store.write(batch: [
            (1, [(0, [1], .unmodifiedSince(base))]),
            (2, [(0, [7], .unconditional)]),
            (1, [(0, [2], .unmodifiedSince(base))]),
            (2, [(0, [8], .absent)]),
            (1, [(1, [Array(repeating: 0, count: store.payloadSizeBytes + 1)][0], .unconditional)]),
        ])
        #expect(try results[0].get() == base + 1)
        #expect(try results[1].get() == base + 2)
        #expect(results[2] == .failure(.conflict(objectID: 1, pageIndex: 0, currentOSN: base + 1)))
        #expect(results[3] == .failure(.conflict(objectID: 2, pageIndex: 0, currentOSN: base + 2)))
        #expect(results[4] == .failure(.payloadTooLarge(store.payloadSizeBytes + 1, max: store.payloadSizeBytes)))
        #expect(store.lastOSN == base + 2)
        #expect(try store.read(objectID: 1, pageIndex: 0).payload.first == 1)
        #expect(try store.read(objectID: 2, pageIndex: 0).payload.first == 7)
    }

    /// Every 10 records the page map is saved and the log compacted: a reopen replays only the
    /// records after the checkpoint, and sees everything. A checkpoint whose log compaction never
    /// happened (a crash between the two) and a corrupt checkpoint are handled.
    @Test func checkpointsBoundReplay() throws {
        let paths = Paths("checkpoint")
        defer { paths.remove() }
        func open() throws -> (ObjectStore, EmbeddedLog) {
            let log = try EmbeddedLog(path: paths.log)
            return (try ObjectStore(pages: PageFileConfiguration(path: paths.pages), log: log, checkpointEveryRecords: 10), log)
        }
        var logBeforeCheckpoint: [UInt8] = []
        do {
            let (store, log) = try open()
            for round in 0..<35 {
                if round == 29 { logBeforeCheckpoint = try readFile(paths.log) }
                switch round {
                case 12: _ = try store.delete(objectID: 2)
                case 21: _ = try store.truncate(objectID: 1, pageCount: 3)
                default: _ = try store.write(objectID: UInt64(round % 3), pages: [(UInt64(round % 5), [UInt8(round)], .unconditional)])
                }
            }
            #expect(store.checkpointOSN == 30 && log.compactions == 3)
            #expect(try log.records(after: 0).isEmpty && log.lastOSN == 35)
            #expect(log.recordBytes > 0 && log.recordBytes < 5 * 64, "only the 5 records after the checkpoint stay")
        }
        let expected = try { () throws -> [ObjectInfo] in let (store, _) = try open(); return store.list() }()
        do {  // the store holds its lock until freed: scoped, so the reopens below can take it
            let (store, log) = try open()
            #expect(try log.records(after: 0).count == 5, "replay starts after the checkpoint")
            #expect(store.list() == expected && store.lastOSN == 35)
            #expect(try store.read(objectID: 1, pageIndex: 3).payload.first == 28, "rewritten after the truncate")
            #expect(try store.read(objectID: 2, pageIndex: 0).payload.first == 20, "written after the delete")
            #expect(try store.read(objectID: 2, pageIndex: 2).payload.first == 32)
            let page = try store.read(objectID: 0, pageIndex: 3)
            #expect(page.payload.first == 33 && page.pageOSN == 34)
            #expect(try store.write(objectID: 0, pages: [(0, [99], .unconditional)]) == 36)
        }

        // The log as it was before the third checkpoint: base 20, records 21...29 (a crash after
        // the checkpoint file but before compaction would leave it with 21...30). Checkpoint 30
        // is ahead of it: records are missing, which must be an error, not silent loss.
        try writeFile(paths.log, logBeforeCheckpoint)
        let checkpointPath = paths.pages + ".checkpoint"
        #expect(throws: ObjectStoreError.checkpoint(path: checkpointPath, .logMismatch(checkpointOSN: 30, logOSN: 29))) {
            _ = try open()
        }

        var checkpoint = try readFile(checkpointPath)
        checkpoint[checkpoint.count / 2] ^= 0xFF
        try writeFile(checkpointPath, checkpoint)
        #expect(throws: ObjectStoreError.checkpoint(path: checkpointPath, .badFrame)) { _ = try open() }
    }

    /// A bad record at the end is a torn append (dropped); a bad record with good ones after it is
    /// corruption of acknowledged data: opening fails instead of truncating them away.
    @Test func corruptionInTheMiddleOfTheLogIsAnError() throws {
        let paths = Paths("midlog")
        defer { paths.remove() }
        do {
            let log = try EmbeddedLog(path: paths.log)
            for value in 0..<3 { _ = try log.append(LogRecord(objectID: 1, pages: [(0, [UInt8](repeating: UInt8(value), count: 100))])) }
        }
        var bytes = try readFile(paths.log)
        let recordBytes = (bytes.count - EmbeddedLog.headerBytes) / 3
        bytes[EmbeddedLog.headerBytes + recordBytes + 60] ^= 0x01  // inside the second record's payload
        try writeFile(paths.log, bytes)
        #expect(throws: LogError.notALog(path: paths.log, .corruptRecordBeforeValidOnes(offset: EmbeddedLog.headerBytes + recordBytes))) {
            _ = try EmbeddedLog(path: paths.log)
        }
        bytes[EmbeddedLog.headerBytes + recordBytes + 60] ^= 0x01
        bytes[bytes.count - 10] ^= 0x01  // the last record: a torn tail
        try writeFile(paths.log, bytes)
        let log = try EmbeddedLog(path: paths.log)
        #expect(log.lastOSN == 2 && log.recordBytes == 2 * recordBytes)
    }

    func readFile(_ path: String) throws -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        return Array(bytes[0..<max(got, 0)])
    }

    func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let fd = Glibc.open(path, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count)
    }

    @Test func oversizedWritesAreTypedErrors() throws {
        let paths = Paths("limits")
        defer { paths.remove() }
        let store = try paths.open()
        #expect(throws: ObjectStoreError.payloadTooLarge(5000, max: store.payloadSizeBytes)) {
            _ = try store.write(objectID: 1, pages: [(0, [UInt8](repeating: 0, count: 5000), .unconditional)])
        }
        #expect(throws: ObjectStoreError.tooManyPages(100, max: 32)) {
            _ = try store.write(objectID: 1, pages: (0..<100).map { (UInt64($0), [UInt8](), WriteCondition.unconditional) })
        }
        #expect(store.lastOSN == 0)
    }

    /// A single-page read at or above the page-index bound is refused, alone or in a read group.
    @Test func readAtTheIndexBoundIsOutOfRange() throws {
        let paths = Paths("readbound")
        defer { paths.remove() }
        let store = try paths.open()
        let max = ObjectStore.pageIndexMax
        _ = try store.write(objectID: 1, pages: [(0, [1], .unconditional)])
        #expect(throws: ObjectStoreError.pageIndexOutOfRange(max, max: max)) { try store.read(objectID: 1, pageIndex: max) }
        let results = store.read(batch: [(1, max), (1, 0)])
        #expect(throws: ObjectStoreError.pageIndexOutOfRange(max, max: max)) { try results[0].get() }
        #expect(try results[1].get().payload.first == 1)
    }

    /// One open store per page file: a second open (another file description, as another process
    /// would have) is refused; once the first is freed, the lock is free. Opened log first, as here,
    /// the log's own lock refuses it before its tail is read (the store's lock, which names the
    /// holder's pid, refuses openers that take it first: `openStorageNode`, DataDirectoryTests).
    @Test func aSecondOpenIsRefusedWhileTheFirstLives() throws {
        let paths = Paths("lock")
        defer { paths.remove() }
        do {
            let store = try paths.open()
            _ = try store.write(objectID: 1, pages: [(0, [1], .unconditional)])
            #expect(throws: LogError.inUse(path: paths.log)) { _ = try paths.open() }
            #expect(try store.write(objectID: 1, pages: [(0, [2], .unconditional)]) == 2)
        }
        #expect(try paths.open().read(objectID: 1, pageIndex: 0).payload.first == 2)
    }

    /// The page size is recorded at creation; opening with another is refused before anything is
    /// read or redone. A store from before the record is checked against its first page.
    @Test func pageSizeIsRecordedAndAMismatchRefused() throws {
        let paths = Paths("format")
        defer { paths.remove() }
        func open(_ pageSizeBytes: Int) throws -> ObjectStore {
            var configuration = PageFileConfiguration(path: paths.pages)
            configuration.pageSizeBytes = pageSizeBytes
            return try ObjectStore(pages: configuration, log: try EmbeddedLog(path: paths.log))
        }
        do { _ = try open(4096).write(objectID: 1, pages: [(0, [7], .unconditional)]) }
        let formatPath = ObjectStore.formatPath(pages: paths.pages)
        #expect(throws: ObjectStoreError.format(path: formatPath, .pageSizeMismatch(recorded: 4096, opened: 8192))) {
            _ = try open(8192)
        }
        #expect(try open(4096).read(objectID: 1, pageIndex: 0).payload.first == 7)
        // No record (a store made before records were kept): the first page decides.
        unlink(formatPath)
        #expect(throws: ObjectStoreError.format(path: formatPath, .unrecordedPageSizeMismatch(opened: 8192))) {
            _ = try open(8192)
        }
        #expect(try open(4096).read(objectID: 1, pageIndex: 0).payload.first == 7)
        #expect(access(formatPath, F_OK) == 0, "the record is written on the first good open")
        // A record from another format version is refused.
        try writeFile(formatPath, Array("sluice-store format 9 page-size 4096\n".utf8))
        #expect(throws: ObjectStoreError.format(path: formatPath, .unsupportedVersion(9, supported: 1))) { _ = try open(4096) }
    }
}

/// The embedded log takes its own exclusive lock before it reads or truncates anything: a second
/// opener (a store opened without taking its StoreLock first) cannot cut a live owner's tail.
@Suite struct LogLockTests {
    @Test func aSecondOpenerOfALiveLogIsRefused() throws {
        let paths = ObjectStoreTests.Paths("loglock")
        defer { paths.remove() }
        let first = try EmbeddedLog(path: paths.log)
        #expect(throws: LogError.inUse(path: paths.log)) { _ = try EmbeddedLog(path: paths.log) }
        _ = first
    }

    @Test func theLockGoesWithTheLog() throws {
        let paths = ObjectStoreTests.Paths("loglock-reopen")
        defer { paths.remove() }
        do { _ = try EmbeddedLog(path: paths.log) }
        _ = try EmbeddedLog(path: paths.log)  // the first one's descriptor is closed: free again
    }
}
