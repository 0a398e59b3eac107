import Glibc
import NIOCore
import SluicePageStore
import SluiceReplicationTestSupport
import Synchronization
import Testing

@testable import SluiceStorageServer

@Suite(.serialized) struct StorageServerTests {
    @Test(arguments: StorageBackend.allCases) func statNodeReportsOSNAndPageSize(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let stat = try client.statNode()
            #expect(stat.lastOSN == served.node.lastOSN)
            #expect(stat.payloadSizeBytes == served.payloadSizeBytes)
        }
    }

    @Test(arguments: StorageBackend.allCases) func pagesRoundTripWithEveryCondition(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let never = try client.read(objectID: 7, pageIndex: 3)
            #expect(never.pageOSN == 0)
            #expect(never.payload.isEmpty)

            let first = try client.write(objectID: 7, pageIndex: 3, payload: Array("hello".utf8), condition: .absent)
            let read = try client.read(objectID: 7, pageIndex: 3)
            #expect(Array(read.payload.prefix(5)) == Array("hello".utf8))
            #expect(read.pageOSN == first)
            // A page reads back at its full payload size, zero-padded past what was written.
            #expect(read.payload.count == served.payloadSizeBytes)
            #expect(read.readOSN >= first)

            #expect(throws: StorageClientError.conflict(objectID: 7, pageIndex: 3, currentOSN: first)) {
                try client.write(objectID: 7, pageIndex: 3, payload: [1], condition: .absent)
            }
            let second = try client.write(objectID: 7, pageIndex: 3, payload: [2], condition: .unmodifiedSince(first))
            #expect(second > first)
            // A stale OSN: the conflict carries the page's current OSN, and nothing is written.
            #expect(throws: StorageClientError.conflict(objectID: 7, pageIndex: 3, currentOSN: second)) {
                try client.write(objectID: 7, pageIndex: 3, payload: [3], condition: .unmodifiedSince(first))
            }
            #expect(try client.read(objectID: 7, pageIndex: 3).payload.first == 2)
            let third = try client.write(objectID: 7, pageIndex: 3, payload: [4], condition: .unconditional)
            #expect(try client.read(objectID: 7, pageIndex: 3).pageOSN == third)

            // Multi-page: all or nothing.
            let pages = (0..<4).map { PageWrite(index: UInt64(10 + $0), payload: [UInt8($0)], condition: .absent) }
            let multi = try client.write(objectID: 7, pages: pages)
            for page in pages { #expect(try client.read(objectID: 7, pageIndex: page.index).pageOSN == multi) }
            let before = try client.statNode().lastOSN
            #expect(throws: StorageClientError.conflict(objectID: 7, pageIndex: 10, currentOSN: multi)) {
                try client.write(objectID: 7, pages: [PageWrite(index: 20, payload: [9], condition: .absent),
                                                      PageWrite(index: 10, payload: [9], condition: .absent)])
            }
            // On a shared log the refused write was decided at apply time: it spent an OSN (by design).
            #expect(try client.statNode().lastOSN == before + (served.backend.replicated ? 1 : 0))
            #expect(try client.read(objectID: 7, pageIndex: 20).pageOSN == 0)
        }
    }

    @Test(arguments: StorageBackend.allCases) func limitsComeBackTyped(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let size = served.payloadSizeBytes
            #expect(throws: StorageClientError.payloadTooLarge(size: size + 1, max: size)) {
                try client.write(objectID: 1, pageIndex: 0, payload: [UInt8](repeating: 1, count: size + 1))
            }
            let many = (0..<(ObjectStore.pagesPerWriteMax + 1)).map { PageWrite(index: UInt64($0), payload: [1], condition: .unconditional) }
            #expect {
                try client.write(objectID: 1, pages: many)
            } throws: { error in
                guard case StorageClientError.tooManyPages(let count, _) = error else { return false }
                return count == many.count
            }
            #expect(try client.statNode().lastOSN == 0)
        }
    }

    @Test(arguments: StorageBackend.allCases) func objectOpsRoundTrip(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let created = try client.create(objectID: 42)
            #expect(throws: StorageClientError.objectExists(42)) { try client.create(objectID: 42) }
            #expect(try client.stat(objectID: 42) == ObjectSummary(objectID: 42, pageCount: 0, lastOSN: created))
            let written = try client.write(objectID: 42, pages: (0..<3).map { PageWrite(index: UInt64($0), payload: [1], condition: .unconditional) })
            #expect(try client.stat(objectID: 42) == ObjectSummary(objectID: 42, pageCount: 3, lastOSN: written))
            let truncated = try client.truncate(objectID: 42, pageCount: 1)
            #expect(try client.stat(objectID: 42) == ObjectSummary(objectID: 42, pageCount: 1, lastOSN: truncated))
            #expect(try client.read(objectID: 42, pageIndex: 2).payload.isEmpty)
            _ = try client.create(objectID: 43)
            let listed = try client.list()
            #expect(listed.totalCount == 2)
            #expect(listed.objects.map(\.objectID) == [42, 43])
            let deleted = try client.delete(objectID: 42)
            #expect(deleted > truncated)
            #expect(throws: StorageClientError.noSuchObject(42)) { try client.stat(objectID: 42) }
            #expect(throws: StorageClientError.noSuchObject(42)) { try client.delete(objectID: 42) }
            #expect(throws: StorageClientError.noSuchObject(42)) { try client.truncate(objectID: 42, pageCount: 0) }
            #expect(try client.list().objects.map(\.objectID) == [43])
        }
    }

    // MARK: Bad input: an error reply, nothing written, and the connection usable (or closed if oversized).

    /// Sends `bytes`, expects one reply with `expected`, that lastOSN did not move, and that the
    /// connection still serves a request.
    func expectRejected(_ backend: StorageBackend, _ bytes: [UInt8], requestID: UInt64, _ expected: StorageReply) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            _ = try client.write(objectID: 1, pageIndex: 0, payload: [1])
            let before = served.node.lastOSN
            try client.sendRaw(bytes)
            let reply = try client.receiveRaw()
            #expect(reply.requestID == requestID)
            #expect(try reply.decoded() == expected)
            #expect(served.node.lastOSN == before)
            #expect(try client.read(objectID: 1, pageIndex: 0).payload.first == 1)
            #expect(try client.statNode().lastOSN == before)
        }
    }

    @Test(arguments: StorageBackend.allCases) func malformedBodyIsRejected(backend: StorageBackend) async throws {
        // A write whose payload length runs past the frame.
        var body = bigEndian(1) + [0, 1] + bigEndian(0) + [0] + bigEndian(0)
        body += [0, 0, 0, 200] + [1, 2, 3]
        try await expectRejected(backend, rawFrame(opcode: Opcode.writePages.rawValue, requestID: 9, body: body), requestID: 9,
                           .malformedFrame(message: MalformedBody.payloadPastEnd(length: 200, bytesLeft: 3).reason))
    }

    @Test(arguments: StorageBackend.allCases) func trailingBytesAndBadConditionAreRejected(backend: StorageBackend) async throws {
        try await expectRejected(backend, rawFrame(opcode: Opcode.readPage.rawValue, requestID: 5, body: bigEndian(1) + bigEndian(0) + [0]),
                           requestID: 5, .malformedFrame(message: MalformedBody.trailingBytes(1, reply: false).reason))
        let body = bigEndian(1) + [0, 1] + bigEndian(0) + [7] + bigEndian(0) + [0, 0, 0, 1] + [9]
        try await expectRejected(backend, rawFrame(opcode: Opcode.writePages.rawValue, requestID: 6, body: body), requestID: 6,
                           .malformedFrame(message: MalformedBody.badConditionKind(7).reason))
    }

    @Test(arguments: StorageBackend.allCases) func lengthBelowHeaderIsRejected(backend: StorageBackend) async throws {
        try await expectRejected(backend, [0, 0, 0, 3, 1, 2, 3], requestID: 0,
                           .malformedFrame(message: MalformedBody.frameBelowHeader(length: 3).reason))
    }

    @Test(arguments: StorageBackend.allCases) func unknownVersionIsRejected(backend: StorageBackend) async throws {
        let body = bigEndian(1) + [0, 1] + bigEndian(0) + [0] + bigEndian(0) + [0, 0, 0, 1] + [9]
        try await expectRejected(backend, rawFrame(version: 2, opcode: Opcode.writePages.rawValue, requestID: 11, body: body),
                           requestID: 11, .unsupportedVersion(2))
    }

    @Test(arguments: StorageBackend.allCases) func unknownOpcodeIsRejected(backend: StorageBackend) async throws {
        try await expectRejected(backend, rawFrame(opcode: 0x7f, requestID: 12, body: bigEndian(1)), requestID: 12, .unknownOpcode(0x7f))
    }

    @Test(arguments: StorageBackend.allCases) func oversizedFrameIsAnsweredThenClosed(backend: StorageBackend) async throws {
        var configuration = StorageServerConfiguration()
        configuration.frameBytesMax = 4096
        try await withServedNode(backend, configuration: configuration) { served in
            let client = try served.client()
            let before = served.node.lastOSN
            // A well-formed write whose frame is larger than the bound; only its first bytes are sent.
            let body = bigEndian(1) + [0, 1] + bigEndian(0) + [0] + bigEndian(0) + [0, 0, 0x20, 0] + [UInt8](repeating: 7, count: 100)
            try client.sendRaw(rawFrame(length: 4097 + 8192, opcode: Opcode.writePages.rawValue, requestID: 13, body: body))
            let reply = try client.receiveRaw()
            #expect(reply.requestID == 13)
            #expect(try reply.decoded() == .frameTooLarge(length: 4097 + 8192, max: 4096))
            #expect(throws: StorageClientError.connectionClosed) { try client.receiveRaw() }
            #expect(throws: StorageClientError.connectionClosed) { try client.statNode() }
            #expect(served.node.lastOSN == before)
            // The server still serves new connections.
            #expect(try served.client().statNode().lastOSN == before)
        }
    }

    /// A peer that dies mid-frame: the half-sent write is never applied, the server goes on serving.
    @Test(arguments: StorageBackend.allCases) func peerDyingMidFrameWritesNothing(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let before = served.node.lastOSN
            for _ in 0..<3 {
                let dying = try served.client()
                let body = bigEndian(1) + [0, 1] + bigEndian(0) + [0] + bigEndian(0) + [0, 0, 0, 100] + [UInt8](repeating: 7, count: 100)
                let frame = rawFrame(opcode: Opcode.writePages.rawValue, requestID: 21, body: body)
                try dying.sendRaw(Array(frame.prefix(frame.count - 40)))  // the last 40 bytes never come
                dying.close()
            }
            let client = try served.client()
            #expect(try client.statNode().lastOSN == before, "nothing of a half-sent write was applied")
            #expect(try client.read(objectID: 1, pageIndex: 0).pageOSN == 0)
            #expect(try client.write(objectID: 1, pageIndex: 0, payload: [1]) == before + 1)
        }
    }

    /// More pipelined requests than `pendingRequestsMax`: reading pauses and resumes, every one is answered.
    /// Through the client: a write larger than the server's frame bound is a typed error, then closed.
    @Test(arguments: StorageBackend.allCases) func clientSeesFrameTooLarge(backend: StorageBackend) async throws {
        var configuration = StorageServerConfiguration()
        configuration.frameBytesMax = 4096
        try await withServedNode(backend, configuration: configuration) { served in
            let client = try served.client()
            #expect(throws: StorageClientError.frameTooLarge(length: 4105, max: 4096)) {
                try client.write(objectID: 1, pageIndex: 0, payload: [UInt8](repeating: 1, count: 4064))
            }
            #expect(throws: StorageClientError.connectionClosed) { try client.statNode() }
            #expect(served.node.lastOSN == 0)
        }
    }

    /// More pipelined requests than `pendingRequestsMax`: reading pauses and resumes, every one is answered.
    @Test(arguments: StorageBackend.allCases) func pipelinedRequestsAreAnsweredInOrder(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            var bytes: [UInt8] = []
            for id in 1...200 as ClosedRange<UInt64> {
                bytes += rawFrame(opcode: Opcode.writePages.rawValue, requestID: id,
                                  body: bigEndian(1) + [0, 1] + bigEndian(0) + [0] + bigEndian(0) + [0, 0, 0, 1] + [UInt8(id)])
            }
            try client.sendRaw(bytes)
            var osns: [UInt64] = []
            for id in 1...200 as ClosedRange<UInt64> {
                let reply = try client.receiveRaw()
                #expect(reply.requestID == id)
                guard case .osn(let osn) = try reply.decoded() else { Issue.record("not an OSN"); return }
                osns.append(osn)
            }
            #expect(osns == osns.sorted())
            #expect(try client.read(objectID: 1, pageIndex: 0).payload.first == 200)
        }
    }

    // MARK: Concurrency

    /// Every attempt meets a newer version (another client writes inside the transform, for the test's
    /// sake): the helper gives up after `attemptsMax` with the last conflict's OSN.
    @Test(arguments: StorageBackend.allCases) func updatePageGivesUpAfterAttemptsMax(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            let rival = try served.client()
            let lastRivalOSN = Mutex<UInt64>(0)
            // On a shared log each refused attempt spends an OSN too (decided at apply time, by design):
            // the rival's writes are OSNs 1, 3, 5 there; 1, 2, 3 on the embedded log.
            let rivalLast: UInt64 = served.backend.replicated ? 5 : 3
            #expect(throws: StorageClientError.tooManyConflicts(attempts: 3, lastOSN: rivalLast)) {
                try client.updatePage(objectID: 2, pageIndex: 0, attemptsMax: 3, backoffNsMin: 1_000, backoffNsMax: 4_000) { bytes in
                    let osn = try! rival.write(objectID: 2, pageIndex: 0, payload: [9])
                    lastRivalOSN.withLock { $0 = osn }
                    return bytes
                }
            }
            #expect(lastRivalOSN.withLock { $0 } == rivalLast)
            #expect(try client.read(objectID: 2, pageIndex: 0).payload.first == 9)
        }
    }

    /// 16 clients, each its own connection, increment one counter through `updatePage`: the final
    /// value is the number of acknowledged increments (no lost updates over TCP).
    @Test(arguments: StorageBackend.allCases) func concurrentIncrementsAreNotLost(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let clientCount = 16
            let incrementsPerClient = 10
            let acknowledged = Atomic<Int>(0)
            let failures = Mutex<[String]>([])
            let port = served.server.port
            runClientThreads(clientCount) { _ in
                do {
                    let client = try StorageClient(host: "127.0.0.1", port: port)
                    for _ in 0..<incrementsPerClient {
                        _ = try client.updatePage(objectID: 5, pageIndex: 0, attemptsMax: 500) { bytes in
                            withUnsafeBytes(of: counterValue(bytes) + 1) { Array($0) }
                        }
                        acknowledged.add(1, ordering: .relaxed)
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            let final = try served.client().read(objectID: 5, pageIndex: 0)
            #expect(counterValue(final.payload) == UInt64(acknowledged.load(ordering: .relaxed)))
            #expect(acknowledged.load(ordering: .relaxed) == clientCount * incrementsPerClient)
        }
    }

    /// A write durable in the log is answered ok at its OSN even when its checkpoint failed after it
    /// (it once got ioError, an applied write looking failed); updatePage goes through likewise.
    @Test(arguments: StorageBackend.allCases)
    func aDurableWriteIsAcknowledgedWhenItsCheckpointFails(backend: StorageBackend) async throws {
        try await withServedNode(backend, checkpointEveryRecords: 1) { served in
            let blocker = served.pagesPath + ".checkpoint.tmp"
            #expect(mkdir(blocker, 0o755) == 0)  // the checkpoint cannot write its file aside: EISDIR
            defer { rmdir(blocker) }
            let client = try served.client()
            #expect(try client.write(objectID: 1, pageIndex: 1, payload: [1]) == 1)
            let updated = try client.updatePage(objectID: 1, pageIndex: 0) { _ in [42] }
            #expect(updated.osn == 2 && updated.payload == [42])
            let page = try client.read(objectID: 1, pageIndex: 0)
            #expect(page.pageOSN == 2 && page.payload.first == 42)
        }
    }

    /// Request bodies that do not decode are typed errors, one case per way of being malformed.
    @Test func requestDecodingErrorsAreTyped() {
        func decode(_ opcode: Opcode, _ bytes: [UInt8]) throws(MalformedBody) -> StorageRequest {
            var body = ByteBuffer(bytes: bytes)
            return try StorageRequest.decode(opcode: opcode, body: &body)
        }
        #expect(throws: MalformedBody.missing(field: "pageIndex")) { try decode(.readPage, bigEndian(1)) }
        #expect(throws: MalformedBody.readOfZeroPages) { try decode(.readPages, bigEndian(1) + bigEndian(0) + [0, 0, 0, 0]) }
        #expect(throws: MalformedBody.writeOfZeroPages) { try decode(.writePages, bigEndian(1) + [0, 0]) }
        let page = bigEndian(0) + [3] + bigEndian(0) + [0, 0, 0, 1] + [9]
        #expect(throws: MalformedBody.badConditionKind(3)) { try decode(.writePages, bigEndian(1) + [0, 1] + page) }
        let long = bigEndian(0) + [0] + bigEndian(0) + [0, 0, 0, 9] + [9]
        #expect(throws: MalformedBody.payloadPastEnd(length: 9, bytesLeft: 1)) { try decode(.writePages, bigEndian(1) + [0, 1] + long) }
        #expect(throws: MalformedBody.trailingBytes(2, reply: false)) { try decode(.statNode, [1, 2]) }
    }

    /// A reply for another request is a typed protocol violation, and closes the client.
    @Test(arguments: StorageBackend.allCases) func aMismatchedReplyIsATypedViolation(backend: StorageBackend) async throws {
        try await withServedNode(backend) { served in
            let client = try served.client()
            // Request 1 (the client's next id) is answered to this raw frame first: the call sees it.
            try client.sendRaw(rawFrame(opcode: Opcode.statNode.rawValue, requestID: 77, body: []))
            #expect(throws: StorageClientError.protocolViolation(.replyMismatch(requestID: 77, opcode: Opcode.statNode.rawValue,
                                                                                expectedRequestID: 1,
                                                                                expectedOpcode: Opcode.statNode.rawValue))) {
                try client.statNode()
            }
            #expect(throws: StorageClientError.connectionClosed) { try client.statNode() }
            #expect(throws: StorageClientError.invalidAddress(host: "nowhere", port: 1)) { try StorageClient(host: "nowhere", port: 1) }
        }
    }
}
