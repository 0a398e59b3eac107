// Path: Sources/SluiceGateway/ApplianceProtocol.swift — the appliance's client protocol v1 (docs/GATEWAY.md,
// "Appliance"): what clients send the appliance over TCP, its bounds and codec. Framing as the gateway
// block protocol: u32 length, u8 version, u8 opcode, u64 request id, body; a reply adds u8 status.
import NIOCore

public enum ApplianceProtocol {
    public static let version: UInt8 = 1
    /// Share names are 1...64 bytes of UTF-8.
    public static let shareBytesMax = 64
    /// A request frame above this is refused (requests are small).
    public static let requestFrameBytesMax = 8 << 10
    /// Reply header, size, etag and byte count around the bytes of a read.
    public static let readReplyOverheadBytes = GatewayProtocol.replyHeaderBytes + 8 + 2 + GatewayProtocol.etagBytesMax + 4
    /// Counter entries in a `counters` reply (the appliance's, then five per share while they fit).
    public static let counterEntriesMax = 1_024
    /// Bytes of one `append`.
    public static let appendBytesMax = 1 << 20
    /// `append` frames only (the one large request): its bytes and fields.
    public static let appendFrameBytesMax = appendBytesMax + 64
}

public enum ApplianceOpcode: UInt8, Sendable, CaseIterable {
    /// {u16 n, share} -> {u32 readBytesMax}: later requests of this connection count against that share.
    case hello = 0x01
    /// {u16 n, key} -> {u64 size, u16 n, etag}
    case stat = 0x02
    /// {u16 n, key, u64 offset, u32 length} -> {u64 size, u16 n, etag, u32 n, bytes}
    case read = 0x03
    /// {} -> {u16 n, n x (u16 n, name, u64 value)}: the appliance's counters.
    case counters = 0x04
    /// {u16 n, key} -> {u64 writeID}: starts writing the whole object (create or replace).
    case beginWrite = 0x05
    /// {u64 writeID, u64 offset, u32 n, bytes} -> {u64 length}: acknowledged once durable in the journal.
    case append = 0x06
    /// {u64 writeID} -> {u64 size}: seals the write; it is an object from now on (uploaded after).
    case closeWrite = 0x07
    /// {u16 n, key (n = 0: every object), u32 timeoutMs} -> {}: waits until closed objects are in the store.
    case flush = 0x08
    /// {u64 writeID} -> {}: drops an open write.
    case abortWrite = 0x09
}

/// A reply's outcome; every status but `ok` carries `u16 n, n bytes UTF-8 message`.
public enum ApplianceStatus: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case notFound = 1
    case rangeNotSatisfiable = 2
    /// The appliance cannot reach the intermediate.
    case intermediateUnavailable = 3
    /// The intermediate cannot reach the remote store.
    case remoteUnavailable = 4
    /// Any other failure the intermediate reported.
    case intermediateError = 5
    /// A sector failed its CRC twice: nothing of it was returned.
    case corrupt = 6
    case badRequest = 7
    case overloaded = 8
    /// The object changed during every attempt of the read.
    case objectChanging = 9
    case `internal` = 10
    case frameTooLarge = 11
    case unsupportedVersion = 12
    case unknownOpcode = 13
    /// No open write of that ID (closed, aborted, or lost with a restart of the appliance).
    case writeNotOpen = 14
    /// The journal's file system failed.
    case journalError = 15
    /// `flush` waited its bound and objects are still not in the remote store.
    case flushTimedOut = 16

    public var description: String {
        switch self {
        case .ok: "ok"
        case .notFound: "notFound"
        case .rangeNotSatisfiable: "rangeNotSatisfiable"
        case .intermediateUnavailable: "intermediateUnavailable"
        case .remoteUnavailable: "remoteUnavailable"
        case .intermediateError: "intermediateError"
        case .corrupt: "corrupt"
        case .badRequest: "badRequest"
        case .overloaded: "overloaded"
        case .objectChanging: "objectChanging"
        case .internal: "internal"
        case .frameTooLarge: "frameTooLarge"
        case .unsupportedVersion: "unsupportedVersion"
        case .unknownOpcode: "unknownOpcode"
        case .writeNotOpen: "writeNotOpen"
        case .journalError: "journalError"
        case .flushTimedOut: "flushTimedOut"
        }
    }

    /// The status a read error is answered with.
    public init(_ error: ApplianceError) {
        switch error {
        case .notFound: self = .notFound
        case .rangeNotSatisfiable: self = .rangeNotSatisfiable
        case .intermediateUnavailable: self = .intermediateUnavailable
        case .intermediate(.notFound, _): self = .notFound
        case .intermediate(.rangeNotSatisfiable, _): self = .rangeNotSatisfiable
        case .intermediate(.remoteUnavailable, _): self = .remoteUnavailable
        case .intermediate(.overloaded, _): self = .overloaded
        case .intermediate: self = .intermediateError
        case .corrupt: self = .corrupt
        case .overloaded: self = .overloaded
        case .invalidRequest: self = .badRequest
        case .objectKeptChanging: self = .objectChanging
        case .journal: self = .journalError
        case .writeNotOpen: self = .writeNotOpen
        case .flushTimedOut: self = .flushTimedOut
        }
    }
}

public enum ApplianceRequest: Sendable, Equatable {
    case hello(share: String)
    case stat(key: String)
    case read(key: String, offset: UInt64, length: UInt32)
    case counters
    case beginWrite(key: String)
    case append(writeID: UInt64, offset: UInt64, bytes: [UInt8])
    case closeWrite(writeID: UInt64)
    /// `key` nil: every object.
    case flush(key: String?, timeoutMs: UInt32)
    case abortWrite(writeID: UInt64)

    public var opcode: ApplianceOpcode {
        switch self {
        case .hello: .hello
        case .stat: .stat
        case .read: .read
        case .counters: .counters
        case .beginWrite: .beginWrite
        case .append: .append
        case .closeWrite: .closeWrite
        case .flush: .flush
        case .abortWrite: .abortWrite
        }
    }

    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let share):
            precondition(applianceShareIsValid(share), "share name within 1...shareBytesMax bytes")
            buffer.writeInteger(UInt16(share.utf8.count))
            buffer.writeString(share)
        case .stat(let key):
            buffer.writeKey(key)
        case .read(let key, let offset, let length):
            buffer.writeKey(key)
            buffer.writeInteger(offset)
            buffer.writeInteger(length)
        case .counters:
            break
        case .beginWrite(let key):
            buffer.writeKey(key)
        case .append(let id, let offset, let bytes):
            buffer.writeInteger(id)
            buffer.writeInteger(offset)
            buffer.writeInteger(UInt32(bytes.count))
            buffer.writeBytes(bytes)
        case .closeWrite(let id), .abortWrite(let id):
            buffer.writeInteger(id)
        case .flush(let key, let timeoutMs):
            if let key { buffer.writeKey(key) } else { buffer.writeInteger(UInt16(0)) }
            buffer.writeInteger(timeoutMs)
        }
    }

    /// Decodes a whole body; trailing bytes are an error.
    public static func decode(opcode: ApplianceOpcode, body: inout ByteBuffer) throws(GatewayDecodeError) -> ApplianceRequest {
        let request: ApplianceRequest
        switch opcode {
        case .hello:
            let length = Int(try body.readField(UInt16.self, "share length"))
            guard length > 0 else { throw .emptyList(field: "share") }
            guard length <= ApplianceProtocol.shareBytesMax else {
                throw .tooMany(field: "share bytes", count: length, max: ApplianceProtocol.shareBytesMax)
            }
            guard let bytes = body.readBytes(length: length) else { throw .cutShort(field: "share", length: length, bytesLeft: body.readableBytes) }
            guard let share = String(validating: bytes, as: UTF8.self) else { throw .notUTF8(field: "share") }
            request = .hello(share: share)
        case .stat:
            request = .stat(key: try body.readKey())
        case .read:
            request = .read(key: try body.readKey(), offset: try body.readField(UInt64.self, "offset"),
                            length: try body.readField(UInt32.self, "length"))
        case .counters:
            request = .counters
        case .beginWrite:
            request = .beginWrite(key: try body.readKey())
        case .append:
            let id = try body.readField(UInt64.self, "writeID")
            let offset = try body.readField(UInt64.self, "offset")
            let count = Int(try body.readField(UInt32.self, "byte count"))
            guard count > 0, count <= ApplianceProtocol.appendBytesMax else {
                throw .tooMany(field: "append bytes", count: count, max: ApplianceProtocol.appendBytesMax)
            }
            guard let bytes = body.readBytes(length: count) else { throw .cutShort(field: "bytes", length: count, bytesLeft: body.readableBytes) }
            request = .append(writeID: id, offset: offset, bytes: bytes)
        case .closeWrite:
            request = .closeWrite(writeID: try body.readField(UInt64.self, "writeID"))
        case .abortWrite:
            request = .abortWrite(writeID: try body.readField(UInt64.self, "writeID"))
        case .flush:
            let key: String?
            if body.getInteger(at: body.readerIndex, as: UInt16.self) == 0 {
                body.moveReaderIndex(forwardBy: 2)
                key = nil
            } else {
                key = try body.readKey()
            }
            request = .flush(key: key, timeoutMs: try body.readField(UInt32.self, "timeoutMs"))
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes) }
        return request
    }
}

public enum ApplianceReply: Sendable, Equatable {
    case hello(readBytesMax: UInt32)
    case stat(size: UInt64, etag: String)
    case read(ApplianceReadResult)
    case counters([(String, UInt64)])
    case writeBegun(writeID: UInt64)
    /// The write's length after the append.
    case appended(length: UInt64)
    case closed(size: UInt64)
    /// flush and abortWrite.
    case done
    case failure(ApplianceStatus, message: String)

    public static func == (lhs: ApplianceReply, rhs: ApplianceReply) -> Bool {
        switch (lhs, rhs) {
        case (.hello(let a), .hello(let b)): a == b
        case (.stat(let a, let b), .stat(let c, let d)): a == c && b == d
        case (.read(let a), .read(let b)): a == b
        case (.counters(let a), .counters(let b)): a.elementsEqual(b) { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.failure(let a, let b), .failure(let c, let d)): a == c && b == d
        case (.writeBegun(let a), .writeBegun(let b)): a == b
        case (.appended(let a), .appended(let b)): a == b
        case (.closed(let a), .closed(let b)): a == b
        case (.done, .done): true
        default: false
        }
    }

    public var status: ApplianceStatus {
        if case .failure(let status, _) = self { return status }
        return .ok
    }

    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let max):
            buffer.writeInteger(max)
        case .stat(let size, let etag):
            buffer.writeInteger(size)
            buffer.writeEtag(etag)
        case .read(let result):
            buffer.writeInteger(result.size)
            buffer.writeEtag(result.etag)
            buffer.writeInteger(UInt32(result.bytes.count))
            buffer.writeBytes(result.bytes)
        case .counters(let fields):
            precondition(fields.count <= ApplianceProtocol.counterEntriesMax, "counter entries bounded")
            buffer.writeInteger(UInt16(fields.count))
            for (name, value) in fields {
                buffer.writeInteger(UInt16(name.utf8.count))
                buffer.writeString(name)
                buffer.writeInteger(value)
            }
        case .writeBegun(let id):
            buffer.writeInteger(id)
        case .appended(let length):
            buffer.writeInteger(length)
        case .closed(let size):
            buffer.writeInteger(size)
        case .done:
            break
        case .failure(_, let message):
            let bytes = Array(message.utf8)
            var count = min(bytes.count, GatewayProtocol.messageBytesMax)
            while count > 0, count < bytes.count, bytes[count] & 0xC0 == 0x80 { count -= 1 }
            buffer.writeInteger(UInt16(count))
            buffer.writeBytes(bytes[0..<count])
        }
    }

    public static func decode(opcode: ApplianceOpcode, status: ApplianceStatus, body: inout ByteBuffer) throws(GatewayDecodeError) -> ApplianceReply {
        let reply: ApplianceReply
        if status != .ok {
            guard let length = body.readInteger(as: UInt16.self) else { throw .missing(field: "message length") }
            guard let text = body.readBytes(length: Int(length)) else {
                throw .cutShort(field: "message", length: Int(length), bytesLeft: body.readableBytes)
            }
            reply = .failure(status, message: String(decoding: text, as: UTF8.self))
        } else {
            switch opcode {
            case .hello:
                reply = .hello(readBytesMax: try body.readField(UInt32.self, "readBytesMax"))
            case .stat:
                reply = .stat(size: try body.readField(UInt64.self, "size"), etag: try body.readEtag())
            case .read:
                let size = try body.readField(UInt64.self, "size")
                let etag = try body.readEtag()
                let count = Int(try body.readField(UInt32.self, "byte count"))
                guard let bytes = body.readBytes(length: count) else { throw .cutShort(field: "bytes", length: count, bytesLeft: body.readableBytes) }
                reply = .read(ApplianceReadResult(size: size, etag: etag, bytes: bytes))
            case .counters:
                let count = Int(try body.readField(UInt16.self, "counter count"))
                guard count <= ApplianceProtocol.counterEntriesMax else {
                    throw .tooMany(field: "counters", count: count, max: ApplianceProtocol.counterEntriesMax)
                }
                var fields: [(String, UInt64)] = []
                for index in 0..<count {
                    let length = Int(try body.readField(UInt16.self, "counters[\(index)] name length"))
                    guard let name = body.readString(length: length) else {
                        throw .cutShort(field: "counters[\(index)] name", length: length, bytesLeft: body.readableBytes)
                    }
                    fields.append((name, try body.readField(UInt64.self, "counters[\(index)] value")))
                }
                reply = .counters(fields)
            case .beginWrite:
                reply = .writeBegun(writeID: try body.readField(UInt64.self, "writeID"))
            case .append:
                reply = .appended(length: try body.readField(UInt64.self, "length"))
            case .closeWrite:
                reply = .closed(size: try body.readField(UInt64.self, "size"))
            case .flush, .abortWrite:
                reply = .done
            }
        }
        guard body.readableBytes == 0 else { throw .trailingBytes(body.readableBytes) }
        return reply
    }
}

/// 1...shareBytesMax bytes.
public func applianceShareIsValid(_ share: String) -> Bool {
    !share.utf8.isEmpty && share.utf8.count <= ApplianceProtocol.shareBytesMax
}
