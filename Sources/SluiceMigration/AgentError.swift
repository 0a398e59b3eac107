// Path: Sources/SluiceMigration/AgentError.swift — what can go wrong talking to a guest's migration agent.
import SluiceCore

/// A failed exchange with a guest's migration agent (`AgentChannel`). Every case names the operation
/// ("ping", "report", "online", "connect", ...) and, where it helps, the socket it concerns.
public enum AgentError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No answer to `op` within its deadline. The channel stays usable: a late answer is skipped.
    case timeout(op: String, afterMs: Int64)
    /// The agent answered `{"ok":false,"error":message}` to `op`.
    case agentError(op: String, message: String)
    /// The agent's answer to `op` is not what the protocol says (`reason`); `line` is its first 256 bytes.
    case malformedReply(op: String, reason: String, line: String)
    /// The agent speaks another protocol version than this host (`AgentReport.protocolVersion`).
    case versionMismatch(expected: Int, got: Int)
    /// A reply line longer than `AgentChannel.replyBytesMax`; the channel skips the rest of it.
    case replyTooLong(op: String, limitBytes: Int)
    /// The socket at `socketPath` closed (QEMU exited or closed its chardev) before `op` was answered.
    case disconnected(op: String, socketPath: String)
    /// The socket path does not fit `sockaddr_un` (`maxBytes` without the terminating NUL).
    case socketPathTooLong(String, maxBytes: Int)
    /// A system call failed; its operation names the socket (`connect(/path)`, `read(/path)`, ...).
    case system(SyscallError)

    public var description: String {
        switch self {
        case .timeout(let op, let afterMs):
            return "agent \(op): no answer after \(afterMs) ms"
        case .agentError(let op, let message):
            return "agent \(op) failed in the guest: \(message)"
        case .malformedReply(let op, let reason, let line):
            return "agent \(op): malformed reply (\(reason)): \(line)"
        case .versionMismatch(let expected, let got):
            return "agent speaks protocol version \(got), this host speaks \(expected)"
        case .replyTooLong(let op, let limitBytes):
            return "agent \(op): reply longer than \(limitBytes) bytes"
        case .disconnected(let op, let socketPath):
            return "agent \(op): \(socketPath) closed"
        case .socketPathTooLong(let path, let maxBytes):
            return "agent socket path longer than \(maxBytes) bytes: \(path)"
        case .system(let error):
            return "agent: \(error)"
        }
    }
}
