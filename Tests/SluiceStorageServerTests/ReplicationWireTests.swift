// Path: Tests/SluiceStorageServerTests/ReplicationWireTests.swift — the replication additions to the
// wire: syncNode's request and reply, the statuses of ReplicationProblem, their client errors, and
// syncNode against an embedded node over TCP.
import NIOCore
import SluicePageStore
import Testing

@testable import SluiceStorageServer

@Suite struct ReplicationWireTests {
    /// Encodes a reply and decodes it back for `opcode`.
    func roundTrip(_ reply: StorageReply, opcode: Opcode) throws -> StorageReply {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        reply.encodeBody(into: &buffer)
        return try StorageReply.decode(opcode: opcode, status: reply.status, body: &buffer)
    }

    @Test func syncRequestRoundTripsAndIsBounded() throws {
        for request in [StorageRequest.syncNode(minOSN: 0, timeoutMs: 0), .syncNode(minOSN: UInt64.max, timeoutMs: 60_000)] {
            var buffer = ByteBufferAllocator().buffer(capacity: 16)
            request.encodeBody(into: &buffer)
            #expect(buffer.readableBytes == 12)
            #expect(try StorageRequest.decode(opcode: .syncNode, body: &buffer) == request)
        }
        var tooLong = ByteBuffer(bytes: bigEndian(7) + [0, 0, 0xEA, 0x61])  // 60001
        #expect(throws: MalformedBody.syncTimeoutTooLong(60_001)) { try StorageRequest.decode(opcode: .syncNode, body: &tooLong) }
        var short = ByteBuffer(bytes: bigEndian(7))
        #expect(throws: MalformedBody.missing(field: "timeoutMs")) { try StorageRequest.decode(opcode: .syncNode, body: &short) }
        #expect(Opcode.syncNode.rawValue == 0x20)
    }

    @Test func replicaStatusRoundTrips() throws {
        let statuses = [
            RemoteReplicaStatus(state: .following, appliedOSN: 5, logOSN: 5, contactAgeMs: 0),
            RemoteReplicaStatus(state: .catchingUp, appliedOSN: 3, logOSN: 9, contactAgeMs: 12),
            RemoteReplicaStatus(state: .disconnected, appliedOSN: 9, logOSN: 9, contactAgeMs: 4_000),
            RemoteReplicaStatus(state: .failed, appliedOSN: 1, logOSN: 2, contactAgeMs: nil),
        ]
        for status in statuses {
            var buffer = ByteBufferAllocator().buffer(capacity: 32)
            StorageReply.replica(status).encodeBody(into: &buffer)
            #expect(buffer.readableBytes == 25)
            #expect(try StorageReply.decode(opcode: .syncNode, status: .ok, body: &buffer) == .replica(status))
        }
        var nothing = ByteBuffer(bytes: [9] + bigEndian(1) + bigEndian(1) + bigEndian(1))
        #expect(throws: MalformedBody.badReplicaState(9)) { try StorageReply.decode(opcode: .syncNode, status: .ok, body: &nothing) }
    }

    /// Every ReplicationProblem gets a status of its own kind (never ioError), round-trips, and
    /// becomes the matching client error.
    @Test func replicationProblemsMapToStatuses() throws {
        let cases: [(ReplicationProblem, StatusCode)] = [
            (.logUnavailable(reason: "connection refused"), .logUnavailable),
            (.outcomeUnknown(proposalID: "ab:7"), .outcomeUnknown),
            (.behind(appliedOSN: 4, wantedOSN: 9), .behind),
            (.overloaded(pendingMax: 4096), .overloaded),
            (.recordTooLarge(bytes: 2_000_000, max: 1_000_000), .replicaFailed),
            (.compactedPast(appliedOSN: 1, floorOSN: 50), .replicaFailed),
            (.corruptRecord(key: "p/log/01", reason: "bad"), .replicaFailed),
            (.incompatibleLog(reason: "page size"), .replicaFailed),
            (.stopped, .replicaFailed),
        ]
        for (problem, status) in cases {
            let reply = reply(for: .replication(problem))
            #expect(reply.status == status, "\(problem)")
            let decoded = try roundTrip(reply, opcode: .writePages)
            #expect(decoded == reply)
            let error = StorageClientError(decoded)
            switch (problem, error) {
            case (.logUnavailable, .logUnavailable(let message)?): #expect(message.contains("connection refused"))
            case (.outcomeUnknown, .outcomeUnknown(let message)?): #expect(message.contains("ab:7"))
            case (.behind, .behind(let applied, let wanted)?): #expect(applied == 4 && wanted == 9)
            case (.overloaded, .overloaded(let message)?): #expect(message.contains("4096"))
            case (_, .replicaFailed(let message)?): #expect(message == "\(problem)")
            default: Issue.record("\(problem) became \(String(describing: error))")
            }
        }
        #expect(StatusCode.logUnavailable.rawValue == 13 && StatusCode.replicaFailed.rawValue == 17)
    }

    /// An embedded node is always following at its last OSN; a wait past it is `behind`.
    @Test func syncAgainstEmbeddedNode() async throws {
        try await withServedNode(.embedded) { served in
        let client = try served.client()
        let osn = try client.write(objectID: 1, pageIndex: 0, payload: [1, 2, 3])
        let status = try client.sync()
        #expect(status == RemoteReplicaStatus(state: .following, appliedOSN: osn, logOSN: osn, contactAgeMs: 0))
        #expect(try client.sync(minOSN: osn, timeoutMs: 100).appliedOSN == osn)
        #expect(throws: StorageClientError.behind(appliedOSN: osn, wantedOSN: osn + 5)) {
            try client.sync(minOSN: osn + 5, timeoutMs: 10)
        }
        // The connection stays usable after `behind`, and a too-long wait is a malformed frame.
        try client.sendRaw(rawFrame(opcode: 0x20, requestID: 99, body: bigEndian(0) + [0, 1, 0, 0]))
        #expect(try client.receiveRaw().decoded() == .malformedFrame(message: MalformedBody.syncTimeoutTooLong(65_536).reason))
        #expect(try client.read(objectID: 1, pageIndex: 0).pageOSN == osn)
        }
    }
}
