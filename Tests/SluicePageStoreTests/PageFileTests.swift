import CShims
import Glibc
import SluiceCore
import SystemPackage
import Testing

@testable import SluicePageStore

@Suite struct PageFileTests {
    func temporaryPath(_ name: String) -> String {
        // On the machine's disk, not tmpfs: O_DIRECT needs a file system that supports it.
        "/var/tmp/sluice-pages-\(getpid())-\(name)"
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        let check = Array("123456789".utf8)
        #expect(sluice_crc32c(0, check, check.count) == 0xE306_9283)
        #expect(sluice_crc32c(sluice_crc32c(0, check, 4), Array(check[4...]), 5) == 0xE306_9283, "continues")
    }

    @Test(arguments: [true, false])
    func pagesRoundTripWithTheirOSN(directIO: Bool) throws {
        let path = temporaryPath("roundtrip-\(directIO)")
        defer { unlink(path) }
        var configuration = PageFileConfiguration(path: path)
        configuration.directIO = directIO
        var file = try PageFile(configuration: configuration)
        let pages = (0..<32).map { UInt64($0 * 3) }
        let headers = pages.map { PageHeader(osn: 1000 + $0, objectID: 7, pageIndex: $0 / 3) }
        let payloads = pages.map { page in [UInt8](repeating: UInt8(page % 251), count: 100 + Int(page)) }
        try file.write(physicalPages: pages, headers: headers, payloads: payloads)
        try file.sync()
        let read = try file.read(physicalPages: pages)
        for index in pages.indices {
            #expect(read[index].header == headers[index])
            #expect(Array(read[index].payload.prefix(payloads[index].count)) == payloads[index])
            #expect(read[index].payload.dropFirst(payloads[index].count).allSatisfy { $0 == 0 })
        }
        let holes = try file.read(physicalPages: [1, 2, 10_000])
        #expect(holes.allSatisfy { $0.header == nil }, "never-written pages (and past the end) read as empty")
    }

    /// A flipped byte anywhere in a page is caught on read and reported, never returned as data.
    @Test(arguments: [5, 12, 40, 4000])
    func corruptionIsDetected(offset: Int) throws {
        let path = temporaryPath("corrupt-\(offset)")
        defer { unlink(path) }
        var file = try PageFile(configuration: PageFileConfiguration(path: path))
        try file.write(physicalPages: [2], headers: [PageHeader(osn: 9, objectID: 1, pageIndex: 0)],
                       payloads: [[UInt8](repeating: 0xAB, count: 4000)])
        try file.sync()
        let fd = open(path, O_RDWR)
        var byte: UInt8 = 0
        #expect(pread(fd, &byte, 1, off_t(2 * 4096 + offset)) == 1)
        byte ^= 0x40
        #expect(pwrite(fd, &byte, 1, off_t(2 * 4096 + offset)) == 1)
        fsync(fd)
        close(fd)
        #expect(throws: PageStoreError.self) { _ = try file.read(physicalPages: [2]) }
        do {
            _ = try file.read(physicalPages: [2])
        } catch {
            guard case .corruptPage(let page, _) = error else {
                Issue.record("expected corruptPage, got \(error)")
                return
            }
            #expect(page == 2)
        }
    }

    /// The slot API (what benchmarks drive): sealed writes read back valid with their headers, a
    /// read's buffer checks out, and a flipped byte fails the check.
    @Test func slotWritesAndReadsRoundTrip() throws {
        let path = temporaryPath("slots")
        defer { unlink(path) }
        var configuration = PageFileConfiguration(path: path)
        configuration.queueDepth = 8
        var file = try PageFile(configuration: configuration)
        let completed = UnsafeMutableBufferPointer<PageFile.SlotCompletion>.allocate(capacity: 8)
        defer { completed.deallocate() }
        func runAll(_ file: inout PageFile) throws -> [PageFile.SlotCompletion] {
            try file.submit(waitCount: 8)
            var done: [PageFile.SlotCompletion] = []
            while done.count < 8 {
                let reaped = file.reap(into: completed)
                done += completed.prefix(reaped)
                if reaped == 0 { try file.submit(waitCount: 1) }
            }
            return done.sorted { $0.slot < $1.slot }
        }
        for slot in 0..<8 {
            let bytes = file.slotBuffer(slot)
            bytes.initializeMemory(as: UInt8.self, repeating: UInt8(slot))
            file.prepareWrite(slot: slot, physicalPage: UInt64(slot * 3), header: PageHeader(osn: 7, objectID: 9, pageIndex: UInt64(slot)))
        }
        #expect(try runAll(&file).map(\.result) == Array(repeating: 4096, count: 8))
        let pages = try file.read(physicalPages: (0..<8).map { UInt64($0 * 3) })
        #expect(pages.map(\.header) == (0..<8).map { PageHeader(osn: 7, objectID: 9, pageIndex: UInt64($0)) })
        #expect(pages[5].payload.allSatisfy { $0 == 5 })
        for slot in 0..<8 { file.prepareRead(slot: 7 - slot, physicalPage: UInt64(slot * 3)) }
        #expect(try runAll(&file).map(\.slot) == Array(0..<8))
        #expect((0..<8).allSatisfy { PageFile.pageChecksOut(UnsafeRawBufferPointer(file.slotBuffer($0))) })
        file.slotBuffer(2)[2000] ^= 0xFF
        #expect(!PageFile.pageChecksOut(UnsafeRawBufferPointer(file.slotBuffer(2))))
    }

    @Test func badConfigurationIsATypedError() {
        var configuration = PageFileConfiguration(path: temporaryPath("bad"))
        configuration.pageSizeBytes = 3000
        #expect(throws: PageStoreError.invalidPageSize(3000)) { _ = try PageFile(configuration: configuration) }
        configuration.pageSizeBytes = 4096
        configuration.queueDepth = 0
        #expect(throws: PageStoreError.invalidQueueDepth(0, max: PageFile.queueDepthMax)) {
            _ = try PageFile(configuration: configuration)
        }
        #expect(throws: PageStoreError.syscall(SyscallError("open(/nonexistent/dir/pages)", .noSuchFileOrDirectory))) {
            _ = try PageFile(configuration: PageFileConfiguration(path: "/nonexistent/dir/pages"))
        }
    }
}
