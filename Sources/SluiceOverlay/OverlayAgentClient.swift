// Path: Sources/SluiceOverlay/OverlayAgentClient.swift — the consumer host's side of the agent protocol:
// asks a set of agents in turn (a random first one) until one answers, with bounded tries and deadlines.
import Foundation
import NIOCore
import NIOPosix

/// A client of a set of leasing agents (`HOST:PORT` each). A request goes to one agent; when it cannot be
/// reached, does not answer within `callTimeoutMs`, or refuses for a reason another agent may not have
/// (`etcd_unavailable`, `agent_full`), the next one is asked, for at most `roundsMax` rounds over the set.
/// Any other refusal is final (agents share etcd: `no_capacity` from one is `no_capacity` from all).
public struct OverlayAgentClient: Sendable {
    public static let agentsMax = 16
    public static let roundsMaxLimit = 10

    public let agents: [(host: String, port: Int)]
    public var callTimeoutMs: Int64
    public var roundsMax: Int

    public init(agents: [String], callTimeoutMs: Int64 = 5_000, roundsMax: Int = 2) throws(OverlayLeasingError) {
        guard (1...Self.agentsMax).contains(agents.count) else {
            throw .invalidValue("agent count \(agents.count) not in 1...\(Self.agentsMax)")
        }
        guard (1...Self.roundsMaxLimit).contains(roundsMax), (1...60_000).contains(callTimeoutMs) else {
            throw .invalidValue("rounds \(roundsMax) not in 1...\(Self.roundsMaxLimit) or timeout \(callTimeoutMs) ms not in 1...60000")
        }
        var parsed: [(String, Int)] = []
        for agent in agents {
            guard let colon = agent.lastIndex(of: ":"), let port = Int(agent[agent.index(after: colon)...]),
                  (1...65535).contains(port), OverlayIPv4.parse(String(agent[..<colon])) != nil else {
                throw .invalidValue("agent '\(agent.prefix(60))' is not IPv4:PORT")
            }
            parsed.append((String(agent[..<colon]), port))
        }
        self.agents = parsed
        self.callTimeoutMs = callTimeoutMs
        self.roundsMax = roundsMax
    }

    /// One grant request: a fresh request ID goes to every agent tried, so an agent that timed out and
    /// still grants and the next agent asked answer the same grant (one slot, not two).
    public func grant(service: String, consumerHost: String, consumerVM: String,
                      requestID: String = OverlayAgentClient.makeRequestID()) async throws(OverlayLeasingError) -> OverlayGrant {
        let response = try await call(.init(op: "grant", service: service, consumerHost: consumerHost, consumerVM: consumerVM,
                                            requestID: requestID))
        guard let grant = response.grant else { throw .protocolError(peer: "agent", what: "grant answered without a grant") }
        return grant
    }

    /// 16 random hex digits.
    public static func makeRequestID() -> String {
        let value = UInt64.random(in: 0...UInt64.max)
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    public func revoke(consumerHost: String, leaseID: Int64) async throws(OverlayLeasingError) {
        _ = try await call(.init(op: "revoke", consumerHost: consumerHost, leaseID: leaseID))
    }

    public func renew(leaseID: Int64) async throws(OverlayLeasingError) -> Int64 {
        try await call(.init(op: "renew", leaseID: leaseID)).ttlSeconds ?? 0
    }

    /// Sends `request` to the agents in turn; returns the first answer that is final.
    public func call(_ request: OverlayAgentProtocol.Request) async throws(OverlayLeasingError) -> OverlayAgentProtocol.Response {
        var line = Array(OverlayAgentProtocol.encodeLine(request).readableBytesView)
        line.removeLast()
        let first = Int.random(in: 0..<agents.count)
        var failures: [String] = []
        for attempt in 0..<(roundsMax * agents.count) {
            let (host, port) = agents[(first + attempt) % agents.count]
            let answer: [UInt8]
            do {
                let lines = try await Self.exchange(host: host, port: port, bytes: line + [0x0a], linesWanted: 1,
                                                    timeoutMs: callTimeoutMs)
                guard let only = lines.first else { throw OverlayLeasingError.protocolError(peer: "\(host):\(port)", what: "closed without an answer") }
                answer = only
            } catch {
                failures.append("\(host):\(port): \(error)")
                continue
            }
            let response: OverlayAgentProtocol.Response
            do {
                response = try JSONDecoder().decode(OverlayAgentProtocol.Response.self, from: Data(answer))
            } catch {
                failures.append("\(host):\(port): undecodable answer")
                continue
            }
            if response.ok { return response }
            let reason = response.error ?? .malformedRequest
            let message = response.message ?? ""
            if reason == .etcdUnavailable || reason == .agentFull {
                failures.append("\(host):\(port): \(reason.rawValue): \(message)")
                continue
            }
            throw .refused(reason, message: message)
        }
        throw .agentsUnavailable(failures)
    }

    /// Connects to `host:port`, sends `bytes`, and reads up to `linesWanted` answer lines (each at most
    /// `frameBytesMax`), all within `timeoutMs`. For the client, and for tests sending malformed frames.
    public static func exchange(host: String, port: Int, bytes: [UInt8], linesWanted: Int,
                                timeoutMs: Int64) async throws -> [[UInt8]] {
        precondition(linesWanted >= 1)
        return try await withThrowingTaskGroup(of: [[UInt8]]?.self) { group in
            group.addTask {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connectTimeout(.milliseconds(min(timeoutMs, 2_000)))
                    .connect(host: host, port: port) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
                return try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(bytes: bytes))
                    var lines: [[UInt8]] = []
                    var pending: [UInt8] = []
                    for try await chunk in inbound {
                        pending.append(contentsOf: chunk.readableBytesView)
                        while let newline = pending.firstIndex(of: 0x0a) {
                            lines.append(Array(pending[..<newline]))
                            pending.removeFirst(newline + 1)
                            if lines.count == linesWanted { return lines }
                        }
                        if pending.count > OverlayAgentProtocol.frameBytesMax {
                            throw OverlayLeasingError.protocolError(peer: "\(host):\(port)", what: "answer over \(OverlayAgentProtocol.frameBytesMax) bytes")
                        }
                    }
                    return lines
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(timeoutMs))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let lines = first else {
                throw OverlayLeasingError.protocolError(peer: "\(host):\(port)", what: "no answer in \(timeoutMs) ms")
            }
            return lines
        }
    }
}
