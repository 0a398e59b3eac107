// Path: Sources/SluiceMigration/AgentConnection.swift — the executor's asynchronous view of a guest's
// agent over the blocking `AgentChannel`: each call runs on a Dispatch worker, never on the Swift
// concurrency pool, so a guest that takes seconds to answer blocks no task.
import Dispatch
import Synchronization

/// `GuestAgentConnection` over one `AgentChannel`. One call at a time (the channel's lock serializes them).
public final class AgentChannelConnection: GuestAgentConnection {
    private let channel: Mutex<AgentChannel?>
    public let socketPath: String

    private init(_ channel: consuming AgentChannel) {
        self.socketPath = channel.socketPath
        self.channel = Mutex(Optional(channel))
    }

    /// Connects and waits until the agent answers a ping, for at most `timeout` (the guest may still boot).
    public static func connect(socketPath: String, timeout: Duration) async throws -> AgentChannelConnection {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        return try await offPool { () throws(AgentError) -> AgentChannelConnection in
            AgentChannelConnection(try AgentChannel.waitUntilReady(socketPath: socketPath, deadline: deadline))
        }
    }

    /// The connector the executor takes.
    public static let connector: GuestAgentConnector = { socketPath, timeout in
        try await connect(socketPath: socketPath, timeout: timeout)
    }

    public func report() async throws -> AgentReport {
        try await offPool { () throws(AgentError) -> AgentReport in try self.withChannel { (channel: inout AgentChannel) throws(AgentError) in try channel.report() } }
    }

    public func online(timeout: Duration) async throws -> AgentReport {
        try await offPool { () throws(AgentError) -> AgentReport in
            try self.withChannel { (channel: inout AgentChannel) throws(AgentError) in try channel.online(timeout: timeout) }
        }
    }

    /// Closes the socket; later calls fail with `.disconnected`.
    public func close() async {
        channel.withLock { $0 = nil }
    }

    private func withChannel<T>(_ body: (inout AgentChannel) throws(AgentError) -> T) throws(AgentError) -> T {
        try channel.withLock { (slot: inout AgentChannel?) throws(AgentError) -> T in
            guard var open = slot.take() else { throw AgentError.disconnected(op: "call after close", socketPath: socketPath) }
            let result: Result<T, AgentError>
            do throws(AgentError) { result = .success(try body(&open)) } catch { result = .failure(error) }
            slot = consume open
            return try result.get()
        }
    }
}

/// Runs blocking `body` on a Dispatch worker and resumes the caller with its result.
private func offPool<T: Sendable>(_ body: @escaping @Sendable () throws(AgentError) -> T) async throws(AgentError) -> T {
    let result: Result<T, AgentError> = await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            do throws(AgentError) { continuation.resume(returning: .success(try body())) } catch {
                continuation.resume(returning: .failure(error))
            }
        }
    }
    return try result.get()
}
