// Path: Sources/SluiceStorageServer/StorageClient.swift — a blocking client of the storage protocol
// over one TCP connection, and its retry helper (read, transform, conditional write, backoff).
import Glibc
import NIOCore
import SluiceCore
import SluicePageStore
import Synchronization
import SystemPackage

/// Why a client call failed: a status the server replied with, or the connection.
public enum StorageClientError: Error, Equatable {
    case conflict(objectID: UInt64, pageIndex: UInt64, currentOSN: UInt64)
    case payloadTooLarge(size: Int, max: Int)
    case tooManyPages(count: Int, max: Int)
    case objectExists(UInt64)
    case noSuchObject(UInt64)
    case corruptPage(String)
    case ioError(String)
    case malformedFrame(String)
    case frameTooLarge(length: Int, max: Int)
    case unsupportedVersion(UInt8)
    case unknownOpcode(UInt8)
    /// A page index (or range end) beyond the node's bound.
    case pageIndexOutOfRange(index: UInt64, max: UInt64)
    /// Replicated node: the write was never put in the log (nothing applied anywhere): safe to retry.
    case logUnavailable(String)
    /// Replicated node: the write may be in the log. Do not blindly retry: read the page to tell.
    case outcomeUnknown(String)
    /// Replicated node: it had applied only through `appliedOSN` when the wait for `wantedOSN` ended.
    case behind(appliedOSN: UInt64, wantedOSN: UInt64)
    /// Replicated node: too many writes wait for the log; this one was not sent (safe to retry later).
    case overloaded(String)
    /// Replicated node: stopped following its log, or the operation does not fit the log.
    case replicaFailed(String)
    /// `updatePage` met a newer version on every attempt (the last conflict's OSN).
    case tooManyConflicts(attempts: Int, lastOSN: UInt64)
    /// Not an IPv4 literal (or "localhost") and a port in 0...65535.
    case invalidAddress(host: String, port: Int)
    /// A socket call failed (its name and errno); the connection is closed.
    case socket(SyscallError)
    /// The server closed the connection (or it was closed locally).
    case connectionClosed
    /// No reply within the receive timeout; the connection is closed (its stream position is unknown).
    case timedOut
    /// The reply broke the protocol (bad version, wrong request id, bad body); the connection is closed.
    case protocolViolation(ProtocolViolation)
}

/// How a reply broke the protocol.
public enum ProtocolViolation: Sendable, Equatable {
    case unknownStatus(UInt8)
    /// An `ok` reply to an opcode the client does not know (its body cannot be read).
    case okToUnknownOpcode(UInt8)
    case badBody(MalformedBody)
    case replyLength(Int, range: ClosedRange<Int>)
    case replyVersion(UInt8)
    /// The reply answers another request than the one waiting.
    case replyMismatch(requestID: UInt64, opcode: UInt8, expectedRequestID: UInt64, expectedOpcode: UInt8)
    /// An `ok` reply of another shape than the request's opcode has.
    case unexpectedReply(to: Opcode)
    /// A range read answered with another number of pages.
    case pageCount(Int, expected: Int)
}

/// A page as a server returned it (the remote twin of `PageVersion`).
public struct RemotePage: Sendable, Equatable {
    public var payload: [UInt8]
    /// OSN of the write that last changed the page (0: never written).
    public var pageOSN: UInt64
    /// OSN at which the read was ordered.
    public var readOSN: UInt64
}

/// A reply frame as read off the wire, before its body is interpreted (for tests and tools).
public struct RawReply: Sendable, Equatable {
    public var version: UInt8
    public var opcode: UInt8
    public var requestID: UInt64
    public var status: UInt8
    public var body: [UInt8]

    /// The body decoded for this reply's opcode and status.
    public func decoded() throws(StorageClientError) -> StorageReply {
        guard let status = StatusCode(rawValue: status) else { throw .protocolViolation(.unknownStatus(status)) }
        // Error bodies do not depend on the opcode; `ok` bodies need a known one.
        guard let opcode = Opcode(rawValue: opcode) ?? (status == .ok ? nil : .statNode) else {
            throw .protocolViolation(.okToUnknownOpcode(opcode))
        }
        var buffer = ByteBuffer(bytes: body)
        do { return try StorageReply.decode(opcode: opcode, status: status, body: &buffer) } catch {
            throw .protocolViolation(.badBody(error))
        }
    }
}

/// One connection to a storage server. Blocking: each call sends a request and waits for its reply.
/// Any thread may call; calls on one client are serialised by a mutex (use one client per thread for
/// parallelism). After a socket error, timeout or protocol violation the client stays closed.
public final class StorageClient: Sendable {
    /// Bound on the replies this client accepts (the length word), like the server's `frameBytesMax`.
    public let frameBytesMax: Int
    private let state: Mutex<State>

    private struct State: ~Copyable {
        var fd: Int32
        var nextRequestID: UInt64 = 1
        deinit { if fd >= 0 { Glibc.close(fd) } }
    }

    /// Connects to `host` (an IPv4 literal or "localhost") on `port`. A reply not arriving within
    /// `receiveTimeoutMs` is `.timedOut`.
    public init(host: String, port: Int, frameBytesMax: Int = StorageProtocol.frameBytesMaxDefault,
                receiveTimeoutMs: Int = 10_000) throws(StorageClientError) {
        precondition(frameBytesMax >= 64, "a reply must fit its header")
        precondition(receiveTimeoutMs > 0, "a timeout bounds every wait")
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(clamping: port)).bigEndian
        let literal = host == "localhost" ? "127.0.0.1" : host
        guard (0...65535).contains(port), inet_pton(AF_INET, literal, &address.sin_addr) == 1 else {
            throw .invalidAddress(host: host, port: port)
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .socket(SyscallError("socket", Errno(rawValue: errno))) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var timeout = timeval(tv_sec: receiveTimeoutMs / 1000, tv_usec: (receiveTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            Glibc.close(fd)
            throw .socket(SyscallError("connect", Errno(rawValue: code)))
        }
        self.frameBytesMax = frameBytesMax
        state = Mutex(State(fd: fd))
    }

    /// Closes the connection. Later calls throw `.connectionClosed`.
    public func close() {
        state.withLock { state in
            if state.fd >= 0 { Glibc.close(state.fd) }
            state.fd = -1
        }
    }

    // MARK: Operations

    /// Reads one page: its bytes, the OSN that last changed it (0: never written) and the read's OSN.
    public func read(objectID: UInt64, pageIndex: UInt64) throws(StorageClientError) -> RemotePage {
        guard case .page(let payload, let pageOSN, let readOSN) = try call(.readPage(objectID: objectID, pageIndex: pageIndex)) else {
            throw .protocolViolation(.unexpectedReply(to: .readPage))
        }
        return RemotePage(payload: payload, pageOSN: pageOSN, readOSN: readOSN)
    }

    /// Reads `pageRange` (non-empty) at one OSN: the read's OSN and every page in order, absent pages
    /// with empty payloads (pageOSN 0). A range too long for one reply frame is `.tooManyPages`.
    public func read(objectID: UInt64, pageRange: Range<UInt64>) throws(StorageClientError) -> (readOSN: UInt64, pages: [RemotePage]) {
        precondition(!pageRange.isEmpty, "a range read asks for at least one page")
        guard pageRange.count <= Int(UInt32.max) else {
            throw .tooManyPages(count: pageRange.count, max: Int(UInt32.max))
        }
        let request = StorageRequest.readPages(objectID: objectID, firstPage: pageRange.lowerBound, count: UInt32(pageRange.count))
        guard case .pages(let readOSN, let pages) = try call(request) else {
            throw .protocolViolation(.unexpectedReply(to: .readPages))
        }
        guard pages.count == pageRange.count else { throw .protocolViolation(.pageCount(pages.count, expected: pageRange.count)) }
        return (readOSN, pages)
    }

    /// Writes pages of one object, all or nothing. Returns the write's OSN once it is durable.
    public func write(objectID: UInt64, pages: [PageWrite]) throws(StorageClientError) -> UInt64 {
        try osn(of: .writePages(objectID: objectID, pages: pages))
    }

    /// Writes one page under `condition`.
    public func write(objectID: UInt64, pageIndex: UInt64, payload: [UInt8],
                      condition: WriteCondition = .unconditional) throws(StorageClientError) -> UInt64 {
        try write(objectID: objectID, pages: [PageWrite(index: pageIndex, payload: payload, condition: condition)])
    }

    /// The node's last OSN and its page payload size.
    public func statNode() throws(StorageClientError) -> (lastOSN: UInt64, payloadSizeBytes: Int) {
        guard case .node(let lastOSN, let size) = try call(.statNode) else { throw .protocolViolation(.unexpectedReply(to: .statNode)) }
        return (lastOSN, Int(size))
    }

    /// Waits (at most `timeoutMs`, <= `SyncBounds.timeoutMsMax`) until the node applied its log through
    /// `minOSN` (0: no wait), then its replica status; `.behind` when the wait ended first. For reads
    /// that must see a write another node acknowledged at `minOSN`. The receive timeout must exceed
    /// `timeoutMs`.
    public func sync(minOSN: UInt64 = 0, timeoutMs: UInt32 = 0) throws(StorageClientError) -> RemoteReplicaStatus {
        precondition(timeoutMs <= SyncBounds.timeoutMsMax, "sync wait bounded by SyncBounds.timeoutMsMax")
        guard case .replica(let status) = try call(.syncNode(minOSN: minOSN, timeoutMs: timeoutMs)) else {
            throw .protocolViolation(.unexpectedReply(to: .syncNode))
        }
        return status
    }

    public func create(objectID: UInt64) throws(StorageClientError) -> UInt64 { try osn(of: .createObject(objectID: objectID)) }
    public func delete(objectID: UInt64) throws(StorageClientError) -> UInt64 { try osn(of: .deleteObject(objectID: objectID)) }
    public func truncate(objectID: UInt64, pageCount: UInt64) throws(StorageClientError) -> UInt64 {
        try osn(of: .truncateObject(objectID: objectID, pageCount: pageCount))
    }

    public func stat(objectID: UInt64) throws(StorageClientError) -> ObjectSummary {
        guard case .object(let summary) = try call(.statObject(objectID: objectID)) else { throw .protocolViolation(.unexpectedReply(to: .statObject)) }
        return summary
    }

    /// Objects in id order, as many as fit in one reply frame, and how many exist.
    public func list() throws(StorageClientError) -> (totalCount: Int, objects: [ObjectSummary]) {
        guard case .objects(let total, let objects) = try call(.listObjects) else { throw .protocolViolation(.unexpectedReply(to: .listObjects)) }
        return (Int(total), objects)
    }

    private func osn(of request: StorageRequest) throws(StorageClientError) -> UInt64 {
        guard case .osn(let osn) = try call(request) else { throw .protocolViolation(.unexpectedReply(to: request.opcode)) }
        return osn
    }

    /// Sends `request`, waits for its reply, and turns an error status into its typed error.
    public func call(_ request: StorageRequest) throws(StorageClientError) -> StorageReply {
        let raw = try state.withLock { state throws(StorageClientError) -> RawReply in
            let requestID = state.nextRequestID
            state.nextRequestID &+= 1
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            encodeFrame(opcode: request.opcode.rawValue, requestID: requestID, into: &buffer) { request.encodeBody(into: &$0) }
            try Self.send(Array(buffer.readableBytesView), state: &state)
            let reply = try Self.receive(state: &state, frameBytesMax: frameBytesMax)
            guard reply.requestID == requestID, reply.opcode == request.opcode.rawValue else {
                Self.shut(&state)
                throw .protocolViolation(.replyMismatch(requestID: reply.requestID, opcode: reply.opcode,
                                                        expectedRequestID: requestID, expectedOpcode: request.opcode.rawValue))
            }
            return reply
        }
        let reply: StorageReply
        do { reply = try raw.decoded() } catch {
            close()
            throw error
        }
        if let error = StorageClientError(reply) { throw error }
        return reply
    }

    // MARK: Raw frames (tests and tools)

    /// Sends bytes as they are, with no framing: for testing how the server treats bad input.
    public func sendRaw(_ bytes: [UInt8]) throws(StorageClientError) {
        try state.withLock { state throws(StorageClientError) in try Self.send(bytes, state: &state) }
    }

    /// Waits for the next reply frame, whatever its request id.
    public func receiveRaw() throws(StorageClientError) -> RawReply {
        try state.withLock { state throws(StorageClientError) in try Self.receive(state: &state, frameBytesMax: frameBytesMax) }
    }

    // MARK: Socket I/O (under the mutex)

    private static func shut(_ state: inout State) {
        if state.fd >= 0 { Glibc.close(state.fd) }
        state.fd = -1
    }

    private static func send(_ bytes: [UInt8], state: inout State) throws(StorageClientError) {
        guard state.fd >= 0 else { throw .connectionClosed }
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(state.fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                shut(&state)
                throw code == EPIPE || code == ECONNRESET ? .connectionClosed : .socket(SyscallError("send", Errno(rawValue: code)))
            }
            sent += count
        }
    }

    private static func receiveExactly(_ count: Int, state: inout State) throws(StorageClientError) -> [UInt8] {
        guard state.fd >= 0 else { throw .connectionClosed }
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let result = bytes.withUnsafeMutableBytes { Glibc.recv(state.fd, $0.baseAddress! + received, count - received, 0) }
            if result == 0 {
                shut(&state)
                throw .connectionClosed
            }
            if result < 0 {
                let code = errno
                if code == EINTR { continue }
                shut(&state)
                if code == EAGAIN || code == EWOULDBLOCK { throw .timedOut }
                throw code == ECONNRESET ? .connectionClosed : .socket(SyscallError("recv", Errno(rawValue: code)))
            }
            received += result
        }
        return bytes
    }

    private static func receive(state: inout State, frameBytesMax: Int) throws(StorageClientError) -> RawReply {
        let lengthBytes = try receiveExactly(4, state: &state)
        let length = lengthBytes.reduce(0) { $0 << 8 | Int($1) }
        guard length >= StorageProtocol.replyHeaderBytes, length <= frameBytesMax else {
            shut(&state)
            throw .protocolViolation(.replyLength(length, range: StorageProtocol.replyHeaderBytes...frameBytesMax))
        }
        var frame = ByteBuffer(bytes: try receiveExactly(length, state: &state))
        let version = frame.readInteger(as: UInt8.self)!
        guard version == StorageProtocol.version else {
            shut(&state)
            throw .protocolViolation(.replyVersion(version))
        }
        return RawReply(version: version, opcode: frame.readInteger()!, requestID: frame.readInteger()!,
                        status: frame.readInteger()!, body: frame.readBytes(length: frame.readableBytes)!)
    }
}

extension StorageClientError {
    /// The typed error an error reply stands for; nil for `ok` replies.
    init?(_ reply: StorageReply) {
        switch reply {
        case .page, .pages, .osn, .node, .object, .objects, .replica: return nil
        case .conflict(let objectID, let pageIndex, let currentOSN):
            self = .conflict(objectID: objectID, pageIndex: pageIndex, currentOSN: currentOSN)
        case .payloadTooLarge(let size, let max): self = .payloadTooLarge(size: Int(size), max: Int(max))
        case .tooManyPages(let count, let max): self = .tooManyPages(count: Int(count), max: Int(max))
        case .objectExists(let objectID): self = .objectExists(objectID)
        case .noSuchObject(let objectID): self = .noSuchObject(objectID)
        case .corruptPage(let message): self = .corruptPage(message)
        case .ioError(let message): self = .ioError(message)
        case .malformedFrame(let message): self = .malformedFrame(message)
        case .frameTooLarge(let length, let max): self = .frameTooLarge(length: Int(length), max: Int(max))
        case .unsupportedVersion(let version): self = .unsupportedVersion(version)
        case .unknownOpcode(let opcode): self = .unknownOpcode(opcode)
        case .pageIndexOutOfRange(let index, let max): self = .pageIndexOutOfRange(index: index, max: max)
        case .logUnavailable(let message): self = .logUnavailable(message)
        case .outcomeUnknown(let message): self = .outcomeUnknown(message)
        case .behind(let applied, let wanted): self = .behind(appliedOSN: applied, wantedOSN: wanted)
        case .overloaded(let message): self = .overloaded(message)
        case .replicaFailed(let message): self = .replicaFailed(message)
        }
    }
}

extension StorageClient {
    /// Bounds of `updatePage`'s retry loop.
    public static let updateAttemptsMax = 1_000
    public static let backoffNsLimit: UInt64 = 1_000_000_000

    /// Read-modify-write of one page with optimistic concurrency: read the page and its OSN, compute
    /// the new bytes, write them on condition the page is unmodified since that OSN; on a conflict wait
    /// (exponential backoff from `backoffNsMin` to `backoffNsMax`, full jitter in the upper half) and
    /// start again. Returns the write's OSN and the bytes written. `transform` may run several times.
    /// Any error but a conflict is thrown, never retried: `ioError` to a write is an unknown outcome or
    /// a refusal (docs/STORAGE-PROTOCOL.md), and retrying the transform could apply it twice. Blocks
    /// (sleeps between attempts).
    public func updatePage(objectID: UInt64, pageIndex: UInt64, attemptsMax: Int = 64,
                           backoffNsMin: UInt64 = 50_000, backoffNsMax: UInt64 = 20_000_000,
                           _ transform: ([UInt8]) -> [UInt8]) throws(StorageClientError) -> (osn: UInt64, payload: [UInt8]) {
        precondition(attemptsMax > 0, "at least one attempt")
        precondition(attemptsMax <= Self.updateAttemptsMax, "retry loop bounded by updateAttemptsMax")
        precondition(backoffNsMin > 0, "backoff grows from a positive base")
        precondition(backoffNsMin <= backoffNsMax, "backoff range is ordered")
        precondition(backoffNsMax <= Self.backoffNsLimit, "backoff bounded by backoffNsLimit")
        var backoffNs = backoffNsMin
        var lastOSN: UInt64 = 0
        for _ in 0..<attemptsMax {
            let current = try read(objectID: objectID, pageIndex: pageIndex)
            let next = transform(current.payload)
            do {
                let osn = try write(objectID: objectID, pageIndex: pageIndex, payload: next,
                                    condition: .unmodifiedSince(current.pageOSN))
                return (osn, next)
            } catch {
                // `ioError` to a write is an unknown outcome or a refusal (docs/STORAGE-PROTOCOL.md): thrown,
                // never retried, since retrying the transform could apply it twice.
                guard case .conflict(_, _, let osn) = error else { throw error }
                lastOSN = osn
            }
            let sleepNs = backoffNs / 2 + UInt64.random(in: 0...backoffNs / 2)
            var remaining = timespec(tv_sec: Int(sleepNs / 1_000_000_000), tv_nsec: Int(sleepNs % 1_000_000_000))
            var left = timespec()
            while nanosleep(&remaining, &left) != 0 && errno == EINTR { remaining = left }
            backoffNs = min(backoffNs * 2, backoffNsMax)
        }
        throw .tooManyConflicts(attempts: attemptsMax, lastOSN: lastOSN)
    }
}
