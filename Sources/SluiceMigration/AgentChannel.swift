// Path: Sources/SluiceMigration/AgentChannel.swift — the host side of the migration agent's protocol:
// one JSON request per line to the Unix socket of the guest's virtio-serial chardev, one reply line back
// (docs/MIGRATION.md, "The agent's protocol"; the guest side is scripts/guest/agent.c).
import Foundation
import Glibc
import SluiceCore
import Synchronization
import SystemPackage

/// A connection to one guest's migration agent through QEMU's chardev socket
/// (`-chardev socket,id=agent0,path=SOCK,server=on,wait=off -device virtserialport,chardev=agent0,name=org.sluice.agent.0`).
///
/// Blocking: every call waits in `poll(2)` for at most its timeout, on the calling thread. Owns its socket
/// (closed in `deinit`); one caller at a time. Replies are matched to requests by id (unique in the
/// process): a late reply to an earlier request that timed out, a ping queued while the guest was still
/// booting, or a reply written for an earlier connection is skipped.
public struct AgentChannel: ~Copyable, Sendable {
    /// Longest reply line accepted (a report is about 2 KiB; cpuinfo flags are most of it).
    public static let replyBytesMax = 64 << 10
    /// Longest request line the agent accepts (its `AGENT_LINE_BYTES_MAX`).
    public static let requestBytesMax = 4096
    /// Replies to earlier requests one call may skip before it gives up on the channel's order.
    public static let staleRepliesMax = 64
    /// How long `report` and `ping` wait by default; `online` waits longer (bringing a hot-added vCPU up
    /// under tcg takes 13-20 s, and the agent bounds each CPU at 60 s: docs/MIGRATION.md).
    public static let timeoutDefault: Duration = .seconds(10)
    public static let onlineTimeoutDefault: Duration = .seconds(120)

    /// The chardev's Unix socket.
    public let socketPath: String
    /// -1 only between `reconnect`'s close and its new connection.
    private var fd: Int32
    /// The first request on a connection starts with a newline: it ends any partial line an earlier
    /// connection left in the agent's buffer (the agent ignores blank lines).
    private var sentOnThisConnection = false
    private var pending: [UInt8] = []
    /// Inside an over-long reply: skip bytes up to its newline before reading the next line.
    private var skippingLongLine = false
    /// Request ids are unique in this process, across channels: a reply the agent wrote for an earlier
    /// connection can reach the next one (the guest does not always see the hang-up in between), and
    /// must not match a new request by chance.
    private static let nextID = Atomic<Int64>(1)
    /// Replies skipped because they answered an earlier request (late or queued before the agent ran).
    public private(set) var staleRepliesSkipped = 0

    /// Connects to the chardev's socket; the agent need not be running yet (see `waitUntilReady`).
    /// Fails with `.system` when nothing listens at `socketPath` (ENOENT, ECONNREFUSED).
    public init(socketPath: String) throws(AgentError) {
        self.fd = try Self.connectSocket(socketPath)
        self.socketPath = socketPath
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Connects and pings until the guest's agent answers, retrying both until `deadline` (a guest under
    /// tcg needs 5 to 30 s to boot). Throws `.timeout(op: "waitUntilReady(<socketPath>)", ...)` with the
    /// time waited. While another client holds QEMU's chardev, this waits in vain: QEMU serves one at a time.
    public static func waitUntilReady(
        socketPath: String, deadline: ContinuousClock.Instant, pingTimeout: Duration = .seconds(2)
    ) throws(AgentError) -> AgentChannel {
        let started = ContinuousClock.now
        while ContinuousClock.now < deadline {
            var channel: AgentChannel
            do {
                channel = try AgentChannel(socketPath: socketPath)
            } catch .system(let error) where error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused {
                Thread.sleep(forTimeInterval: 0.1)  // QEMU is not listening yet
                continue
            }
            // Pings sent before the agent opened its port wait in QEMU and are answered later, in order:
            // the id match skips them.
            while ContinuousClock.now < deadline {
                let left = deadline - ContinuousClock.now
                do {
                    try channel.ping(timeout: min(pingTimeout, left))
                    return channel
                } catch .timeout {
                    continue
                } catch .disconnected {
                    break
                }
            }
        }
        throw .timeout(op: "waitUntilReady(\(socketPath))", afterMs: Self.milliseconds(ContinuousClock.now - started))
    }

    /// Closes this connection and connects again until the agent answers a ping or `deadline` passes
    /// (`waitUntilReady`). QEMU's chardev takes one client at a time: the old connection goes first.
    public mutating func reconnect(deadline: ContinuousClock.Instant) throws(AgentError) {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        pending.removeAll()
        skippingLongLine = false
        sentOnThisConnection = false
        var fresh = try AgentChannel.waitUntilReady(socketPath: socketPath, deadline: deadline)
        fd = fresh.fd
        fresh.fd = -1
        sentOnThisConnection = true
        staleRepliesSkipped += fresh.staleRepliesSkipped
    }

    /// Asks the agent to answer; proves the guest runs and reads its port.
    public mutating func ping(timeout: Duration = AgentChannel.timeoutDefault) throws(AgentError) {
        _ = try call(op: "ping", timeout: timeout)
    }

    /// What the guest uses now (`AgentReport`). Throws `.versionMismatch` for another protocol version.
    public mutating func report(timeout: Duration = AgentChannel.timeoutDefault) throws(AgentError) -> AgentReport {
        try Self.decodeReport(op: "report", try call(op: "report", timeout: timeout))
    }

    /// Brings every offline CPU and memory block of the guest online (after a hot-add), then reports.
    /// A block the kernel refuses stays offline: compare `vcpusOnline`/`memoryBlocksOnline` with the totals.
    public mutating func online(timeout: Duration = AgentChannel.onlineTimeoutDefault) throws(AgentError) -> AgentReport {
        try Self.decodeReport(op: "online", try call(op: "online", timeout: timeout))
    }

    /// Sends `line` as it is (a newline is appended) and returns the next reply line, unmatched. For tests
    /// of the agent's handling of bad input, oversized lines included; `line` must hold no newline.
    public mutating func exchangeRaw(_ line: String, timeout: Duration = AgentChannel.timeoutDefault) throws(AgentError) -> String {
        precondition(!line.contains("\n"), "one request per line")
        precondition(line.utf8.count <= Self.replyBytesMax, "a raw line, even an oversized one, is bounded")
        let deadline = ContinuousClock.now + timeout
        try send(Array(line.utf8) + [0x0A], op: "raw", deadline: deadline)
        return String(decoding: try readLine(op: "raw", deadline: deadline, timeout: timeout), as: UTF8.self)
    }

    // MARK: - Requests and replies

    /// The shape of every reply; `report` is decoded separately, after its version is checked.
    private struct Envelope: Decodable {
        struct Version: Decodable { let version: Int }
        let id: Int64?
        let ok: Bool
        let error: String?
        let report: Version?
    }

    /// Sends `{"id":N,"op":op}` and returns the reply line that carries id N (`ok` checked).
    private mutating func call(op: String, timeout: Duration) throws(AgentError) -> [UInt8] {
        let id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let deadline = ContinuousClock.now + timeout
        let request = Array(#"{"id":\#(id),"op":"\#(op)"}"#.utf8) + [0x0A]
        precondition(request.count <= Self.requestBytesMax, "request longer than the agent accepts")
        try send(request, op: op, deadline: deadline)
        var skipped = 0
        // A line that is no reply object may be the tail of a reply cut by an earlier connection's
        // hang-up: skipped, but if no answer comes it is what the timeout reports.
        var undecodable: (line: [UInt8], error: String)? = nil
        while true {
            let line: [UInt8]
            do {
                line = try readLine(op: op, deadline: deadline, timeout: timeout)
            } catch .timeout(let op, let afterMs) {
                guard let undecodable else { throw .timeout(op: op, afterMs: afterMs) }
                throw .malformedReply(op: op, reason: "not a reply object: \(undecodable.error)", line: Self.excerpt(undecodable.line))
            }
            let envelope: Envelope
            do {
                envelope = try JSONDecoder().decode(Envelope.self, from: Data(line))
            } catch {
                undecodable = (line, "\(error)")
                skipped += 1
                staleRepliesSkipped += 1
                guard skipped <= Self.staleRepliesMax else {
                    throw .malformedReply(op: op, reason: "more than \(Self.staleRepliesMax) lines that are no reply", line: Self.excerpt(line))
                }
                continue
            }
            // Another id answers an earlier request (timed out, or sent on an earlier connection); a null
            // id answers a line the agent could not parse, and ours always parse: bytes an earlier
            // connection or `exchangeRaw` left behind. Both are skipped, up to `staleRepliesMax` per call.
            if envelope.id != id {
                skipped += 1
                staleRepliesSkipped += 1
                guard skipped <= Self.staleRepliesMax else {
                    throw .malformedReply(op: op, reason: "more than \(Self.staleRepliesMax) replies to other requests", line: Self.excerpt(line))
                }
                continue
            }
            guard envelope.ok else {
                throw .agentError(op: op, message: envelope.error ?? "(no error text)")
            }
            if let version = envelope.report?.version, version != AgentReport.protocolVersion {
                throw .versionMismatch(expected: AgentReport.protocolVersion, got: version)
            }
            return line
        }
    }

    private static func decodeReport(op: String, _ line: [UInt8]) throws(AgentError) -> AgentReport {
        struct WithReport: Decodable { let report: AgentReport }
        do {
            return try JSONDecoder().decode(WithReport.self, from: Data(line)).report
        } catch {
            throw .malformedReply(op: op, reason: "report: \(error)", line: excerpt(line))
        }
    }

    // MARK: - Socket I/O

    private mutating func send(_ line: [UInt8], op: String, deadline: ContinuousClock.Instant) throws(AgentError) {
        guard fd >= 0 else { throw .disconnected(op: op, socketPath: socketPath) }
        let bytes = sentOnThisConnection ? line : [0x0A] + line
        sentOnThisConnection = true
        var sent = 0
        while sent < bytes.count {
            let rc = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if rc > 0 {
                sent += rc
                continue
            }
            let errno = Self.lastErrno()
            if errno == .interrupted { continue }
            if errno == .brokenPipe || errno == .connectionReset { throw .disconnected(op: op, socketPath: socketPath) }
            guard errno == .wouldBlock else { throw .system(SyscallError("send(\(socketPath))", errno)) }
            try waitFor(Int16(POLLOUT), op: op, deadline: deadline, timeout: deadline - ContinuousClock.now)
        }
    }

    /// The next complete line (without its newline), reading until `deadline`.
    private mutating func readLine(op: String, deadline: ContinuousClock.Instant, timeout: Duration) throws(AgentError) -> [UInt8] {
        while true {
            if skippingLongLine, let newline = pending.firstIndex(of: 0x0A) {
                pending.removeSubrange(...newline)
                skippingLongLine = false
            } else if skippingLongLine {
                pending.removeAll(keepingCapacity: true)
            }
            if !skippingLongLine, let newline = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                return line
            }
            if !skippingLongLine && pending.count > Self.replyBytesMax {
                pending.removeAll(keepingCapacity: true)
                skippingLongLine = true
                throw .replyTooLong(op: op, limitBytes: Self.replyBytesMax)
            }
            try waitFor(Int16(POLLIN), op: op, deadline: deadline, timeout: timeout)
            var chunk = [UInt8](repeating: 0, count: 4096)
            let rc = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if rc > 0 {
                pending.append(contentsOf: chunk[..<rc])
                continue
            }
            if rc == 0 { throw .disconnected(op: op, socketPath: socketPath) }
            let errno = Self.lastErrno()
            if errno == .interrupted || errno == .wouldBlock { continue }
            if errno == .connectionReset { throw .disconnected(op: op, socketPath: socketPath) }
            throw .system(SyscallError("read(\(socketPath))", errno))
        }
    }

    /// Waits in poll(2) for `events` until `deadline`; `.timeout` names the call's whole `timeout`.
    private func waitFor(_ events: Int16, op: String, deadline: ContinuousClock.Instant, timeout: Duration) throws(AgentError) {
        while true {
            let left = deadline - ContinuousClock.now
            if left <= .zero { throw .timeout(op: op, afterMs: Self.milliseconds(timeout)) }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let rc = Glibc.poll(&pfd, 1, Int32(clamping: Self.milliseconds(left) + 1))
            if rc > 0 { return }  // readable, writable, or hung up: the read or send says which
            if rc == 0 { continue }
            let errno = Self.lastErrno()
            guard errno == .interrupted else { throw .system(SyscallError("poll(\(socketPath))", errno)) }
        }
    }

    private static func connectSocket(_ path: String) throws(AgentError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let maxBytes = MemoryLayout.size(ofValue: address.sun_path) - 1
        let pathBytes = Array(path.utf8)
        guard pathBytes.count <= maxBytes, !pathBytes.isEmpty else { throw .socketPathTooLong(path, maxBytes: maxBytes) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(SyscallError("socket(AF_UNIX)", lastErrno())) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let errno = lastErrno()
            Glibc.close(fd)
            throw .system(SyscallError("connect(\(path))", errno))
        }
        // Non-blocking from here: every wait is a poll(2) with the call's deadline.
        let flags = Glibc.fcntl(fd, F_GETFL)
        guard flags >= 0, Glibc.fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else {
            let errno = lastErrno()
            Glibc.close(fd)
            throw .system(SyscallError("fcntl(\(path), O_NONBLOCK)", errno))
        }
        return fd
    }

    /// Reads errno right after the failed call, before anything else can change it.
    @inline(never) private static func lastErrno() -> Errno { Errno(rawValue: Glibc.errno) }

    private static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    private static func excerpt(_ line: [UInt8]) -> String {
        String(decoding: line.prefix(256), as: UTF8.self)
    }
}
