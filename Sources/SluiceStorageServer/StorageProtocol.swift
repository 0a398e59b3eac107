// Path: Sources/SluiceStorageServer/StorageProtocol.swift — the wire format of docs/STORAGE-PROTOCOL.md:
// frames, opcodes, status codes, and the encoding of every request and reply body (big-endian).
import NIOCore
import SluicePageStore

/// Protocol constants and bounds. A frame is `u32 length` (of everything after it) + `u8 version` +
/// `u8 opcode` + `u64 requestID` + body; a reply adds `u8 status` before its body.
public enum StorageProtocol {
    public static let version: UInt8 = 1
    /// Bytes of a frame after the length word and before the body: version, opcode, request id.
    public static let requestHeaderBytes = 10
    /// Bytes of a reply after the length word and before the body: version, opcode, request id, status.
    public static let replyHeaderBytes = 11
    /// Default bound on a frame's length word, both directions.
    public static let frameBytesMaxDefault = 1 << 20
    /// Largest bound a server or client accepts (the length word is a u32; keep well under it).
    public static let frameBytesMaxLimit = 64 << 20
    /// Bytes of error text carried in a reply (longer text is cut).
    public static let messageBytesMax = 512
}

/// What a request asks for. Unknown values get `StatusCode.unknownOpcode`.
public enum Opcode: UInt8, Sendable, CaseIterable {
    case readPage = 0x01
    case writePages = 0x02
    case statNode = 0x03
    case readPages = 0x04
    case createObject = 0x10
    case deleteObject = 0x11
    case truncateObject = 0x12
    case statObject = 0x13
    case listObjects = 0x14
    /// Waits until the node applied its shared log through `minOSN` (bounded), then answers the
    /// node's replica status: how stale its reads are.
    case syncNode = 0x20
}

/// The outcome a reply carries, with the body documented per case in docs/STORAGE-PROTOCOL.md.
public enum StatusCode: UInt8, Sendable {
    case ok = 0
    case conflict = 1
    case payloadTooLarge = 2
    case tooManyPages = 3
    case objectExists = 4
    case noSuchObject = 5
    case corruptPage = 6
    case ioError = 7
    case malformedFrame = 8
    case frameTooLarge = 9
    case unsupportedVersion = 10
    case unknownOpcode = 11
    case pageIndexOutOfRange = 12
    /// Replicated node: the log could not be reached; the write was never put in it (safe to retry).
    case logUnavailable = 13
    /// Replicated node: the write may be in the log (do not blindly retry: read the page back).
    case outcomeUnknown = 14
    /// Replicated node: it had not applied through the wanted OSN when the wait ended.
    case behind = 15
    /// Replicated node: too many proposals already wait for the log; this one was not sent (retry later).
    case overloaded = 16
    /// Replicated node: it stopped following its log or cannot take this operation (compacted past,
    /// corrupt record, incompatible log, stopped, record too large for the log); message says which.
    case replicaFailed = 17
}

/// What a `syncNode` request asks: wait until `minOSN` is applied (0: no wait), at most `timeoutMs`.
public enum SyncBounds {
    /// Longest wait one `syncNode` request may ask for.
    public static let timeoutMsMax: UInt32 = 60_000
}

/// A node's replica status on the wire (`syncNode`'s reply): `ReplicaStatus` with `contactAgeMs`
/// `UInt64.max` for never.
public struct RemoteReplicaStatus: Sendable, Equatable {
    public var state: ReplicaStatus.State
    public var appliedOSN: UInt64
    public var logOSN: UInt64
    /// Milliseconds since the node's log last answered; nil when it never has.
    public var contactAgeMs: UInt64?

    public init(state: ReplicaStatus.State, appliedOSN: UInt64, logOSN: UInt64, contactAgeMs: UInt64?) {
        self.state = state
        self.appliedOSN = appliedOSN
        self.logOSN = logOSN
        self.contactAgeMs = contactAgeMs
    }

    public init(_ status: ReplicaStatus) {
        self.init(state: status.state, appliedOSN: status.appliedOSN, logOSN: status.logOSN, contactAgeMs: status.contactAgeMs)
    }

    /// `following`, `catchingUp`, `disconnected`, `failed`.
    public var stateName: String {
        switch state {
        case .following: "following"
        case .catchingUp: "catchingUp"
        case .disconnected: "disconnected"
        case .failed: "failed"
        }
    }
}

/// One page of a write request.
public struct PageWrite: Sendable, Equatable {
    public var index: UInt64
    public var payload: [UInt8]
    public var condition: WriteCondition
    public init(index: UInt64, payload: [UInt8], condition: WriteCondition) {
        self.index = index
        self.payload = payload
        self.condition = condition
    }
}

/// An object as `statObject` and `listObjects` report it.
public struct ObjectSummary: Sendable, Equatable {
    public var objectID: UInt64
    public var pageCount: UInt64
    public var lastOSN: UInt64
    public init(objectID: UInt64, pageCount: UInt64, lastOSN: UInt64) {
        self.objectID = objectID
        self.pageCount = pageCount
        self.lastOSN = lastOSN
    }
}

/// A decoded request body.
public enum StorageRequest: Sendable, Equatable {
    case readPage(objectID: UInt64, pageIndex: UInt64)
    /// `count` (>= 1) pages from `firstPage`, ordered at one OSN.
    case readPages(objectID: UInt64, firstPage: UInt64, count: UInt32)
    case writePages(objectID: UInt64, pages: [PageWrite])
    case statNode
    case createObject(objectID: UInt64)
    case deleteObject(objectID: UInt64)
    case truncateObject(objectID: UInt64, pageCount: UInt64)
    case statObject(objectID: UInt64)
    case listObjects
    /// Wait (at most `timeoutMs`, <= `SyncBounds.timeoutMsMax`) until `minOSN` is applied; 0: no wait.
    case syncNode(minOSN: UInt64, timeoutMs: UInt32)

    public var opcode: Opcode {
        switch self {
        case .readPage: .readPage
        case .readPages: .readPages
        case .writePages: .writePages
        case .statNode: .statNode
        case .createObject: .createObject
        case .deleteObject: .deleteObject
        case .truncateObject: .truncateObject
        case .statObject: .statObject
        case .listObjects: .listObjects
        case .syncNode: .syncNode
        }
    }
}

/// A decoded reply: success bodies per opcode, or an error status with its details.
public enum StorageReply: Sendable, Equatable {
    case page(payload: [UInt8], pageOSN: UInt64, readOSN: UInt64)
    /// A page range read at `readOSN` (each page's `readOSN` is that OSN).
    case pages(readOSN: UInt64, pages: [RemotePage])
    /// The OSN a mutation (write, create, delete, truncate) was ordered at.
    case osn(UInt64)
    case node(lastOSN: UInt64, payloadSizeBytes: UInt32)
    case object(ObjectSummary)
    /// `totalCount` objects exist; `objects` holds as many as fit in one frame.
    case objects(totalCount: UInt32, objects: [ObjectSummary])
    case conflict(objectID: UInt64, pageIndex: UInt64, currentOSN: UInt64)
    case payloadTooLarge(size: UInt32, max: UInt32)
    case tooManyPages(count: UInt32, max: UInt32)
    case objectExists(objectID: UInt64)
    case noSuchObject(objectID: UInt64)
    case corruptPage(message: String)
    case ioError(message: String)
    case malformedFrame(message: String)
    case frameTooLarge(length: UInt32, max: UInt32)
    case unsupportedVersion(UInt8)
    case unknownOpcode(UInt8)
    case pageIndexOutOfRange(index: UInt64, max: UInt64)
    /// `syncNode`'s answer.
    case replica(RemoteReplicaStatus)
    case logUnavailable(message: String)
    case outcomeUnknown(message: String)
    case behind(appliedOSN: UInt64, wantedOSN: UInt64)
    case overloaded(message: String)
    case replicaFailed(message: String)

    public var status: StatusCode {
        switch self {
        case .page, .pages, .osn, .node, .object, .objects, .replica: .ok
        case .conflict: .conflict
        case .payloadTooLarge: .payloadTooLarge
        case .tooManyPages: .tooManyPages
        case .objectExists: .objectExists
        case .noSuchObject: .noSuchObject
        case .corruptPage: .corruptPage
        case .ioError: .ioError
        case .malformedFrame: .malformedFrame
        case .frameTooLarge: .frameTooLarge
        case .unsupportedVersion: .unsupportedVersion
        case .unknownOpcode: .unknownOpcode
        case .pageIndexOutOfRange: .pageIndexOutOfRange
        case .logUnavailable: .logUnavailable
        case .outcomeUnknown: .outcomeUnknown
        case .behind: .behind
        case .overloaded: .overloaded
        case .replicaFailed: .replicaFailed
        }
    }
}

/// Why a body did not decode. The frame boundary is intact: the connection stays usable. `reason`
/// is the text a `malformedFrame` reply carries.
public enum MalformedBody: Error, Equatable, CustomStringConvertible {
    /// The body ends before this field (named as in docs/STORAGE-PROTOCOL.md).
    case missing(field: String)
    /// A variable-length field (a payload, a message) runs past the end of the body.
    case cutShort(field: String)
    /// A count (pages, objects) needs more bytes than the body has.
    case countPastEnd(field: String)
    case readOfZeroPages
    case writeOfZeroPages
    case payloadPastEnd(length: UInt32, bytesLeft: Int)
    case badConditionKind(UInt8)
    /// A `syncNode` timeout above `SyncBounds.timeoutMsMax`.
    case syncTimeoutTooLong(UInt32)
    /// A replica state byte that is not 1...4.
    case badReplicaState(UInt8)
    /// Bytes after the whole body of a request (or of a reply, when `reply`).
    case trailingBytes(Int, reply: Bool)
    /// A frame length word below the request header: the frame was skipped.
    case frameBelowHeader(length: UInt32)

    public var reason: String {
        switch self {
        case .missing(let field): "\(field) missing"
        case .cutShort(let field): "\(field) cut short"
        case .countPastEnd(let field): "\(field) exceeds the body"
        case .readOfZeroPages: "read of zero pages"
        case .writeOfZeroPages: "write of zero pages"
        case .payloadPastEnd(let length, let left): "payload length \(length) exceeds the \(left) bytes left"
        case .badConditionKind(let kind): "condition kind \(kind) is not 0, 1 or 2"
        case .syncTimeoutTooLong(let ms): "sync timeout \(ms) ms above \(SyncBounds.timeoutMsMax)"
        case .badReplicaState(let state): "replica state \(state) is not 1...4"
        case .trailingBytes(let count, let reply): "\(count) trailing bytes after the \(reply ? "reply" : "body")"
        case .frameBelowHeader(let length): "frame length \(length) is below the \(StorageProtocol.requestHeaderBytes)-byte header"
        }
    }

    public var description: String { reason }
}

// MARK: - Condition encoding

extension WriteCondition {
    /// Wire form: `u8 kind` (0 unconditional, 1 unmodifiedSince, 2 absent) + `u64 osn` (0 unless kind 1).
    var wireKind: UInt8 {
        switch self {
        case .unconditional: 0
        case .unmodifiedSince: 1
        case .absent: 2
        }
    }
    var wireOSN: UInt64 {
        if case .unmodifiedSince(let osn) = self { return osn }
        return 0
    }
}

// MARK: - Requests

extension StorageRequest {
    /// Appends the body (not the frame header) to `buffer`.
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .readPage(let objectID, let pageIndex):
            buffer.writeInteger(objectID)
            buffer.writeInteger(pageIndex)
        case .readPages(let objectID, let firstPage, let count):
            buffer.writeInteger(objectID)
            buffer.writeInteger(firstPage)
            buffer.writeInteger(count)
        case .writePages(let objectID, let pages):
            precondition(pages.count <= Int(UInt16.max), "page count fits the u16 field")
            buffer.writeInteger(objectID)
            buffer.writeInteger(UInt16(pages.count))
            for page in pages {
                precondition(page.payload.count <= Int(UInt32.max), "payload fits the u32 field")
                buffer.writeInteger(page.index)
                buffer.writeInteger(page.condition.wireKind)
                buffer.writeInteger(page.condition.wireOSN)
                buffer.writeInteger(UInt32(page.payload.count))
                buffer.writeBytes(page.payload)
            }
        case .statNode, .listObjects:
            break
        case .createObject(let objectID), .deleteObject(let objectID), .statObject(let objectID):
            buffer.writeInteger(objectID)
        case .truncateObject(let objectID, let pageCount):
            buffer.writeInteger(objectID)
            buffer.writeInteger(pageCount)
        case .syncNode(let minOSN, let timeoutMs):
            buffer.writeInteger(minOSN)
            buffer.writeInteger(timeoutMs)
        }
    }

    /// Decodes a body of a known opcode. The whole body must be consumed: trailing bytes are malformed.
    /// Payload lengths are checked against what is left, never trusted.
    public static func decode(opcode: Opcode, body: inout ByteBuffer) throws(MalformedBody) -> StorageRequest {
        let request: StorageRequest
        switch opcode {
        case .readPage:
            request = .readPage(objectID: try body.readU64("objectID"), pageIndex: try body.readU64("pageIndex"))
        case .readPages:
            let objectID = try body.readU64("objectID")
            let firstPage = try body.readU64("firstPage")
            let count = try body.readU32("count")
            guard count > 0 else { throw .readOfZeroPages }
            request = .readPages(objectID: objectID, firstPage: firstPage, count: count)
        case .writePages:
            let objectID = try body.readU64("objectID")
            guard let count = body.readInteger(as: UInt16.self) else { throw .missing(field: "page count") }
            guard count > 0 else { throw .writeOfZeroPages }
            var pages: [PageWrite] = []
            pages.reserveCapacity(min(Int(count), ObjectStore.pagesPerWriteMax + 1))
            for _ in 0..<count {
                let index = try body.readU64("page index")
                guard let kind = body.readInteger(as: UInt8.self) else { throw .missing(field: "condition kind") }
                let osn = try body.readU64("condition osn")
                guard let length = body.readInteger(as: UInt32.self) else { throw .missing(field: "payload length") }
                guard Int(length) <= body.readableBytes else {
                    throw .payloadPastEnd(length: length, bytesLeft: body.readableBytes)
                }
                let payload = body.readBytes(length: Int(length))!
                let condition: WriteCondition
                switch kind {
                case 0: condition = .unconditional
                case 1: condition = .unmodifiedSince(osn)
                case 2: condition = .absent
                default: throw .badConditionKind(kind)
                }
                pages.append(PageWrite(index: index, payload: payload, condition: condition))
            }
            request = .writePages(objectID: objectID, pages: pages)
        case .statNode: request = .statNode
        case .listObjects: request = .listObjects
        case .createObject: request = .createObject(objectID: try body.readU64("objectID"))
        case .deleteObject: request = .deleteObject(objectID: try body.readU64("objectID"))
        case .statObject: request = .statObject(objectID: try body.readU64("objectID"))
        case .truncateObject:
            request = .truncateObject(objectID: try body.readU64("objectID"), pageCount: try body.readU64("pageCount"))
        case .syncNode:
            let minOSN = try body.readU64("minOSN")
            let timeoutMs = try body.readU32("timeoutMs")
            guard timeoutMs <= SyncBounds.timeoutMsMax else { throw .syncTimeoutTooLong(timeoutMs) }
            request = .syncNode(minOSN: minOSN, timeoutMs: timeoutMs)
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes, reply: false) }
        return request
    }
}

// MARK: - Replies

extension StorageReply {
    /// Appends the body (after the status byte) to `buffer`.
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .page(let payload, let pageOSN, let readOSN):
            buffer.writeInteger(pageOSN)
            buffer.writeInteger(readOSN)
            buffer.writeInteger(UInt32(payload.count))
            buffer.writeBytes(payload)
        case .pages(let readOSN, let pages):
            precondition(pages.count <= Int(UInt32.max), "page count fits the u32 field")
            buffer.writeInteger(readOSN)
            buffer.writeInteger(UInt32(pages.count))
            for page in pages {
                buffer.writeInteger(page.pageOSN)
                buffer.writeInteger(UInt32(page.payload.count))
                buffer.writeBytes(page.payload)
            }
        case .osn(let osn): buffer.writeInteger(osn)
        case .node(let lastOSN, let payloadSizeBytes):
            buffer.writeInteger(lastOSN)
            buffer.writeInteger(payloadSizeBytes)
        case .object(let summary): summary.encode(into: &buffer)
        case .objects(let totalCount, let objects):
            buffer.writeInteger(totalCount)
            buffer.writeInteger(UInt32(objects.count))
            for summary in objects { summary.encode(into: &buffer) }
        case .conflict(let objectID, let pageIndex, let currentOSN):
            buffer.writeInteger(objectID)
            buffer.writeInteger(pageIndex)
            buffer.writeInteger(currentOSN)
        case .payloadTooLarge(let a, let b), .tooManyPages(let a, let b), .frameTooLarge(let a, let b):
            buffer.writeInteger(a)
            buffer.writeInteger(b)
        case .objectExists(let objectID), .noSuchObject(let objectID): buffer.writeInteger(objectID)
        case .corruptPage(let message), .ioError(let message), .malformedFrame(let message),
             .logUnavailable(let message), .outcomeUnknown(let message), .overloaded(let message),
             .replicaFailed(let message):
            let bytes = Array(message.utf8.prefix(StorageProtocol.messageBytesMax))
            buffer.writeInteger(UInt16(bytes.count))
            buffer.writeBytes(bytes)
        case .unsupportedVersion(let value), .unknownOpcode(let value): buffer.writeInteger(value)
        case .pageIndexOutOfRange(let index, let max):
            buffer.writeInteger(index)
            buffer.writeInteger(max)
        case .behind(let applied, let wanted):
            buffer.writeInteger(applied)
            buffer.writeInteger(wanted)
        case .replica(let status):
            buffer.writeInteger(status.state.rawValue)
            buffer.writeInteger(status.appliedOSN)
            buffer.writeInteger(status.logOSN)
            buffer.writeInteger(status.contactAgeMs ?? UInt64.max)
        }
    }

    /// Decodes a reply body given the request's opcode (which fixes the shape of an `ok` body).
    public static func decode(opcode: Opcode, status: StatusCode, body: inout ByteBuffer) throws(MalformedBody) -> StorageReply {
        let reply: StorageReply
        switch status {
        case .ok:
            switch opcode {
            case .readPage:
                let pageOSN = try body.readU64("pageOSN")
                let readOSN = try body.readU64("readOSN")
                let length = try body.readU32("payload length")
                guard let payload = body.readBytes(length: Int(length)) else { throw .cutShort(field: "payload") }
                reply = .page(payload: payload, pageOSN: pageOSN, readOSN: readOSN)
            case .readPages:
                let readOSN = try body.readU64("readOSN")
                let count = try body.readU32("count")
                // Each page is at least 12 bytes: a count past the body is not trusted for the allocation.
                guard Int(count) * 12 <= body.readableBytes else { throw .countPastEnd(field: "page count") }
                var pages: [RemotePage] = []
                pages.reserveCapacity(Int(count))
                for _ in 0..<count {
                    let pageOSN = try body.readU64("pageOSN")
                    let length = try body.readU32("payload length")
                    guard let payload = body.readBytes(length: Int(length)) else { throw .cutShort(field: "payload") }
                    pages.append(RemotePage(payload: payload, pageOSN: pageOSN, readOSN: readOSN))
                }
                reply = .pages(readOSN: readOSN, pages: pages)
            case .writePages, .createObject, .deleteObject, .truncateObject: reply = .osn(try body.readU64("osn"))
            case .statNode: reply = .node(lastOSN: try body.readU64("lastOSN"), payloadSizeBytes: try body.readU32("page size"))
            case .statObject: reply = .object(try ObjectSummary.decode(from: &body))
            case .listObjects:
                let total = try body.readU32("total count")
                let count = try body.readU32("count")
                guard Int(count) * 24 <= body.readableBytes else { throw .countPastEnd(field: "object count") }
                var objects: [ObjectSummary] = []
                for _ in 0..<count { objects.append(try ObjectSummary.decode(from: &body)) }
                reply = .objects(totalCount: total, objects: objects)
            case .syncNode:
                guard let raw = body.readInteger(as: UInt8.self) else { throw .missing(field: "state") }
                guard let state = ReplicaStatus.State(rawValue: raw) else { throw .badReplicaState(raw) }
                let applied = try body.readU64("appliedOSN")
                let logOSN = try body.readU64("logOSN")
                let age = try body.readU64("contactAgeMs")
                reply = .replica(RemoteReplicaStatus(state: state, appliedOSN: applied, logOSN: logOSN,
                                                     contactAgeMs: age == UInt64.max ? nil : age))
            }
        case .conflict:
            reply = .conflict(objectID: try body.readU64("objectID"), pageIndex: try body.readU64("pageIndex"),
                              currentOSN: try body.readU64("currentOSN"))
        case .payloadTooLarge: reply = .payloadTooLarge(size: try body.readU32("size"), max: try body.readU32("max"))
        case .tooManyPages: reply = .tooManyPages(count: try body.readU32("count"), max: try body.readU32("max"))
        case .frameTooLarge: reply = .frameTooLarge(length: try body.readU32("length"), max: try body.readU32("max"))
        case .objectExists: reply = .objectExists(objectID: try body.readU64("objectID"))
        case .noSuchObject: reply = .noSuchObject(objectID: try body.readU64("objectID"))
        case .corruptPage: reply = .corruptPage(message: try body.readMessage())
        case .ioError: reply = .ioError(message: try body.readMessage())
        case .malformedFrame: reply = .malformedFrame(message: try body.readMessage())
        case .unsupportedVersion:
            guard let value = body.readInteger(as: UInt8.self) else { throw .missing(field: "version") }
            reply = .unsupportedVersion(value)
        case .unknownOpcode:
            guard let value = body.readInteger(as: UInt8.self) else { throw .missing(field: "opcode") }
            reply = .unknownOpcode(value)
        case .pageIndexOutOfRange:
            reply = .pageIndexOutOfRange(index: try body.readU64("index"), max: try body.readU64("max"))
        case .logUnavailable: reply = .logUnavailable(message: try body.readMessage())
        case .outcomeUnknown: reply = .outcomeUnknown(message: try body.readMessage())
        case .overloaded: reply = .overloaded(message: try body.readMessage())
        case .replicaFailed: reply = .replicaFailed(message: try body.readMessage())
        case .behind: reply = .behind(appliedOSN: try body.readU64("appliedOSN"), wantedOSN: try body.readU64("wantedOSN"))
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes, reply: true) }
        return reply
    }
}

extension ObjectSummary {
    func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(objectID)
        buffer.writeInteger(pageCount)
        buffer.writeInteger(lastOSN)
    }
    static func decode(from buffer: inout ByteBuffer) throws(MalformedBody) -> ObjectSummary {
        ObjectSummary(objectID: try buffer.readU64("objectID"), pageCount: try buffer.readU64("pageCount"),
                      lastOSN: try buffer.readU64("lastOSN"))
    }
}

/// Writes a whole frame: length word, version, opcode, request id, then `body` (and `status` for a reply).
public func encodeFrame(version: UInt8 = StorageProtocol.version, opcode: UInt8, requestID: UInt64,
                        status: StatusCode? = nil, into buffer: inout ByteBuffer,
                        body: (inout ByteBuffer) -> Void) {
    let lengthIndex = buffer.writerIndex
    buffer.writeInteger(UInt32(0))
    buffer.writeInteger(version)
    buffer.writeInteger(opcode)
    buffer.writeInteger(requestID)
    if let status { buffer.writeInteger(status.rawValue) }
    body(&buffer)
    let length = buffer.writerIndex - lengthIndex - 4
    precondition(length <= Int(UInt32.max), "frame length fits the u32 length word")
    buffer.setInteger(UInt32(length), at: lengthIndex)
}

extension ByteBuffer {
    mutating func readU64(_ field: String) throws(MalformedBody) -> UInt64 {
        guard let value = readInteger(as: UInt64.self) else { throw .missing(field: field) }
        return value
    }
    mutating func readU32(_ field: String) throws(MalformedBody) -> UInt32 {
        guard let value = readInteger(as: UInt32.self) else { throw .missing(field: field) }
        return value
    }
    mutating func readMessage() throws(MalformedBody) -> String {
        guard let length = readInteger(as: UInt16.self), let text = readString(length: Int(length)) else {
            throw .cutShort(field: "message")
        }
        return text
    }
}
