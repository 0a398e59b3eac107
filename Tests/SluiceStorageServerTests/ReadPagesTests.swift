import SluicePageStore
import SluiceReplicationTestSupport
import Testing

@testable import SluiceStorageServer

/// The `readPages` opcode: a page range read at one OSN, and its limits.
@Suite(.serialized) struct ReadPagesTests {
    @Test(arguments: StorageBackend.allCases) func rangeOverWrittenAndAbsentPagesIsOneSnapshot(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let first = try client.write(objectID: 3, pageIndex: 1, payload: Array("one".utf8))
            let second = try client.write(objectID: 3, pages: [PageWrite(index: 3, payload: [3], condition: .absent),
                                                               PageWrite(index: 4, payload: [4], condition: .absent)])
            let read = try client.read(objectID: 3, pageRange: 0..<6)
            #expect(read.readOSN >= second)
            #expect(read.pages.count == 6)
            #expect(read.pages.map(\.pageOSN) == [0, first, 0, second, second, 0])
            #expect(read.pages.allSatisfy { $0.readOSN == read.readOSN })
            // Written pages at their full payload size; absent ones empty.
            #expect(read.pages[1].payload == Array("one".utf8) + [UInt8](repeating: 0, count: served.payloadSizeBytes - 3))
            #expect(read.pages[3].payload.first == 3 && read.pages[3].payload.count == served.payloadSizeBytes)
            #expect(read.pages[4].payload.first == 4)
            for index in [0, 2, 5] { #expect(read.pages[index].payload.isEmpty) }
            // The same as page-at-a-time reads.
            for index in 0..<6 {
                let single = try client.read(objectID: 3, pageIndex: UInt64(index))
                #expect(single.payload == read.pages[index].payload)
                #expect(single.pageOSN == read.pages[index].pageOSN)
            }
            // A range over an object never written: every page absent.
            let empty = try client.read(objectID: 99, pageRange: 10..<12)
            #expect(empty.pages.map(\.pageOSN) == [0, 0])
            #expect(empty.pages.allSatisfy { $0.payload.isEmpty })
        }
    }

    @Test(arguments: StorageBackend.allCases) func zeroCountIsMalformedAndTheConnectionStaysUsable(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            _ = try client.write(objectID: 1, pageIndex: 0, payload: [1])
            try client.sendRaw(rawFrame(opcode: Opcode.readPages.rawValue, requestID: 21,
                                        body: bigEndian(1) + bigEndian(0) + [0, 0, 0, 0]))
            let reply = try client.receiveRaw()
            #expect(reply.requestID == 21)
            #expect(reply.opcode == Opcode.readPages.rawValue)
            #expect(try reply.decoded() == .malformedFrame(message: MalformedBody.readOfZeroPages.reason))
            // A body cut short is malformed too.
            try client.sendRaw(rawFrame(opcode: Opcode.readPages.rawValue, requestID: 22, body: bigEndian(1) + bigEndian(0) + [0, 1]))
            #expect(try client.receiveRaw().decoded() == .malformedFrame(message: MalformedBody.missing(field: "count").reason))
            let read = try client.read(objectID: 1, pageRange: 0..<2)
            #expect(read.pages.map { $0.payload.first } == [1, nil])
        }
    }

    @Test(arguments: StorageBackend.allCases) func rangeTooLargeForAFrameIsRefusedWhole(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            _ = try client.write(objectID: 2, pageIndex: 0, payload: [5])
            let perPage = 12 + served.payloadSizeBytes
            let fit = (StorageProtocol.frameBytesMaxDefault - StorageProtocol.replyHeaderBytes - 12) / perPage
            let countMax = min(fit, ObjectStore.pagesPerReadMax)
            #expect(throws: StorageClientError.tooManyPages(count: countMax + 1, max: countMax)) {
                try client.read(objectID: 2, pageRange: 0..<UInt64(countMax + 1))
            }
            // Past the node's own bound, the reply carries the lower of the two bounds.
            #expect(throws: StorageClientError.tooManyPages(count: ObjectStore.pagesPerReadMax + 1, max: countMax)) {
                try client.read(objectID: 2, pageRange: 0..<UInt64(ObjectStore.pagesPerReadMax + 1))
            }
            // The largest range that fits is answered, and the connection is still in sync.
            let read = try client.read(objectID: 2, pageRange: 0..<UInt64(countMax))
            #expect(read.pages.count == countMax)
            #expect(read.pages[0].payload.first == 5)
            #expect(try client.read(objectID: 2, pageIndex: 0).payload.first == 5)
        }
    }

    @Test(arguments: StorageBackend.allCases) func smallFrameBoundShrinksTheRange(backend: StorageBackend) async throws {
        var configuration = StorageServerConfiguration()
        configuration.frameBytesMax = 4096
        try await withServedNode(backend, configuration: configuration) { served in
            let client = try served.client()
            let fit = max(0, (4096 - StorageProtocol.replyHeaderBytes - 12) / (12 + served.payloadSizeBytes))
            #expect(throws: StorageClientError.tooManyPages(count: fit + 1, max: fit)) {
                try client.read(objectID: 1, pageRange: 0..<UInt64(fit + 1))
            }
            #expect(try client.statNode().lastOSN == 0)
        }
    }

    @Test(arguments: StorageBackend.allCases) func pageIndexOutOfRangeIsItsOwnStatus(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let max = ObjectStore.pageIndexMax
            #expect(throws: StorageClientError.pageIndexOutOfRange(index: max + 1, max: max)) {
                try client.read(objectID: 1, pageRange: max..<(max + 1))
            }
            // firstPage + count overflowing u64 is out of range, not a wrap-around.
            try client.sendRaw(rawFrame(opcode: Opcode.readPages.rawValue, requestID: 31,
                                        body: bigEndian(1) + bigEndian(UInt64.max) + [0, 0, 0, 2]))
            #expect(try client.receiveRaw().decoded() == .pageIndexOutOfRange(index: UInt64.max, max: max))
            // The last pages below the bound are readable.
            let read = try client.read(objectID: 1, pageRange: (max - 2)..<max)
            #expect(read.pages.count == 2)
        }
    }

    /// readPage at or above the bound is refused like readPages and writes (it once answered ok with
    /// an empty page), on both read paths: grouped (no pooled readers) and pooled.
    @Test(arguments: [0, 32], StorageBackend.allCases) func readPageAtTheBoundIsOutOfRange(parallelReadersMax: Int, backend: StorageBackend) async throws {
        try await withServedNode(backend, parallelReadersMax: parallelReadersMax) { served in
            let client = try served.client()
            let max = ObjectStore.pageIndexMax
            for index in [max, max + 1, UInt64.max] {
                #expect(throws: StorageClientError.pageIndexOutOfRange(index: index, max: max)) {
                    try client.read(objectID: 1, pageIndex: index)
                }
            }
            #expect(try client.read(objectID: 1, pageIndex: max - 1).pageOSN == 0)
            #expect(throws: ObjectStoreError.pageIndexOutOfRange(max, max: max)) {
                try served.node.read(objectID: 1, pageIndex: max)
            }
        }
    }

}
