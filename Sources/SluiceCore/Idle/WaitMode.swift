// Path: Sources/SluiceCore/Idle/WaitMode.swift — how a worker spends turns that found no work.
import Synchronization

/// How a worker waits when its stages find no work. Switchable at runtime (`Worker.waitMode`).
public enum WaitMode: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Never sleeps while it has a stage: lowest latency, one full core whatever the load. A worker
    /// with no stage sleeps until one is posted to it.
    case busyPoll = 0
    /// Polls while items are in flight towards its stages, then spins a budget learned from the
    /// inter-arrival gaps and its load (`IdlePredictor`), then sleeps until a producer wakes it or
    /// shortly before the next arrival it predicts.
    case adaptive = 1
    /// Sleeps as soon as a turn finds no work; producers wake it.
    case interrupt = 2

    public var description: String {
        switch self {
        case .busyPoll: "busyPoll"
        case .adaptive: "adaptive"
        case .interrupt: "interrupt"
        }
    }

    /// Parses the CLI spelling (`busy-poll`, `adaptive`, `interrupt`, or the case name).
    public init?(argument: String) {
        switch argument.lowercased() {
        case "busypoll", "busy-poll", "poll": self = .busyPoll
        case "adaptive": self = .adaptive
        case "interrupt", "sleep": self = .interrupt
        default: return nil
        }
    }
}
