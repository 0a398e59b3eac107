// Path: Sources/SluiceMigration/QMPError.swift — what can go wrong talking QMP to a QEMU process.

/// A failed QMP exchange. Every case says which command (or connection step) it concerns; a command
/// QEMU refused carries QEMU's own error class and text, unchanged, for the migration's failure report.
public enum QMPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// QEMU answered `{"error": {"class": ..., "desc": ...}}` to `command`.
    case commandFailed(command: String, errorClass: String, description: String)
    /// No answer to `command` within its deadline (`afterMs` milliseconds). The connection stays open; a
    /// late answer is dropped and counted (`QMPClient.lateRepliesDropped`).
    case timeout(command: String, afterMs: Int64)
    /// The connection closed (or was closed) before `command` was answered, or was already closed.
    case disconnected(command: String)
    /// QEMU sent something that is not QMP: not JSON, a line over the size bound, no greeting, an
    /// answer of an unknown shape. The connection is closed after it.
    case protocolViolation(String)
    /// Connecting to the Unix socket at `path` failed (`reason` is the system's text).
    case connect(path: String, reason: String)
    /// An answer came but its content is not what the typed wrapper for `command` expects.
    case unexpectedReply(command: String, detail: String)
    /// Too many calls pending at once (`QMPClient.pendingCallsMax`), or too many event waiters.
    case tooManyPending(command: String, max: Int)

    public var description: String {
        switch self {
        case .commandFailed(let command, let errorClass, let description):
            return "QMP \(command) failed: \(errorClass): \(description)"
        case .timeout(let command, let afterMs):
            return "QMP \(command): no answer after \(afterMs) ms"
        case .disconnected(let command):
            return "QMP \(command): connection closed"
        case .protocolViolation(let what):
            return "QMP protocol violation: \(what)"
        case .connect(let path, let reason):
            return "QMP connect to \(path): \(reason)"
        case .unexpectedReply(let command, let detail):
            return "QMP \(command): unexpected answer: \(detail)"
        case .tooManyPending(let command, let max):
            return "QMP \(command): more than \(max) calls pending"
        }
    }
}
