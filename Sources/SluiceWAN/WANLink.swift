// Path: Sources/SluiceWAN/WANLink.swift — a link: two directions, each on a thread of its own,
// started and stopped together; their counters for anyone.
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization
import SystemPackage

/// Why a link could not start.
public enum WANError: Error, CustomStringConvertible {
    case configuration(WANConfigurationError)
    /// A port could not be opened (`role`: receive or send).
    case port(interface: String, role: String, AFPacketError)
    /// The staging pool could not be made.
    case pool(PoolError)
    /// The network namespace could not be entered.
    case namespace(SyscallError)
    /// SCHED_FIFO could not be set (not root, or RLIMIT_RTPRIO).
    case realtimePriority(SyscallError)
    case threadCreate(SyscallError)
    /// A direction's thread did not report within 10 s.
    case startTimedOut(WANDirection)
    /// `start` was called twice.
    case alreadyStarted

    public var description: String {
        switch self {
        case let .configuration(error): "\(error)"
        case let .port(interface, role, error): "cannot \(role) on \(interface): \(error)"
        case let .pool(error): "staging pool: \(error)"
        case let .namespace(error): "network namespace: \(error)"
        case let .realtimePriority(error): "realtime priority: \(error)"
        case let .threadCreate(error): "thread: \(error)"
        case let .startTimedOut(direction): "\(direction) thread did not start within 10 s"
        case .alreadyStarted: "link already started"
        }
    }
}

/// One emulated link. `start` opens the four ports (two RX, two TX) on two threads, one per
/// direction, in `configuration.namespacePath` if set; `stop` ends and joins them. Control-plane
/// object: start and stop from one thread; any thread may take snapshots.
public final class WANLink: Sendable {
    public let configuration: WANConfiguration
    private let directions: [DirectionThread]
    private let phase = Mutex<Phase>(.created)

    private enum Phase { case created, running, stopped }

    /// Checks the configuration; opens nothing yet.
    public init(configuration: WANConfiguration) throws(WANError) {
        do { try configuration.validate() } catch { throw .configuration(error) }
        self.configuration = configuration
        self.directions = WANDirection.allCases.map { DirectionThread(direction: $0, configuration: configuration) }
    }

    deinit { stop() }

    /// Starts both directions and returns once both forward, or throws the first failure (both
    /// threads stopped by then). Blocks up to 10 s.
    public func start() throws(WANError) {
        try phase.withLock { phase throws(WANError) in
            guard phase == .created else { throw .alreadyStarted }
            phase = .stopped  // until both run: a failure leaves it stopped
            for direction in directions {
                do throws(WANError) { try direction.launch() } catch {
                    stopThreads()
                    throw error
                }
            }
            for direction in directions {
                if let error = direction.waitUntilRunning() {
                    stopThreads()
                    throw error
                }
            }
            phase = .running
        }
    }

    /// Stops both directions (frames still held are counted as `stopped`) and joins their threads.
    /// Safe to call more than once, and before `start`.
    public func stop() {
        phase.withLock { phase in
            if phase == .running { stopThreads() }
            phase = .stopped
        }
    }

    private func stopThreads() {
        for direction in directions { direction.stopFlag.set() }
        for direction in directions { direction.join() }
    }

    /// Both directions' counters now (a-to-b first). Ports not open yet show zeros.
    public func snapshot() -> [WANDirectionSnapshot] {
        directions.map { $0.snapshot() }
    }
}

/// One direction's thread: opens its forwarder in the link's namespace, reports, runs it.
private final class DirectionThread: @unchecked Sendable {  // unchecked: `thread` is touched by the control thread only
    let direction: WANDirection
    let configuration: WANConfiguration
    let statistics = WANDirectionStatistics()
    let stopFlag = StopFlag()
    /// 0 starting, 1 running, 2 failed (the error in `failure`), 3 ended.
    private let state = Atomic<Int>(0)
    private let failure = Mutex<WANError?>(nil)
    private let ports = Mutex<(AFPacketRXStatistics, AFPacketTXStatistics)?>(nil)
    private var thread: pthread_t?

    init(direction: WANDirection, configuration: WANConfiguration) {
        self.direction = direction
        self.configuration = configuration
    }

    func launch() throws(WANError) {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let owner = Unmanaged<DirectionThread>.fromOpaque(context!).takeRetainedValue()
            owner.main()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<DirectionThread>.fromOpaque(context).release()
            throw .threadCreate(SyscallError("pthread_create", Errno(rawValue: rc)))
        }
        self.thread = thread
    }

    private func main() {
        if let path = configuration.namespacePath {
            do { try NetworkNamespace.enterOnCurrentThread(path: path) } catch {
                fail(.namespace(error))
                return
            }
        }
        if let priority = configuration.realtimePriority {
            var parameters = sched_param()
            parameters.sched_priority = Int32(priority)
            let rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &parameters)
            guard rc == 0 else {
                fail(.realtimePriority(SyscallError("pthread_setschedparam(SCHED_FIFO)", Errno(rawValue: rc))))
                return
            }
        }
        let (input, output) = direction == .aToB
            ? (configuration.interfaceA, configuration.interfaceB) : (configuration.interfaceB, configuration.interfaceA)
        var forwarder: WANForwarder
        do {
            forwarder = try WANForwarder(direction: direction, input: input, output: output,
                                         settings: configuration.settings(direction),
                                         seed: configuration.seed &+ UInt64(direction.rawValue), statistics: statistics)
        } catch {
            fail(error)
            return
        }
        ports.withLock { $0 = (forwarder.receiveStatistics, forwarder.transmitStatistics) }
        state.store(1, ordering: .releasing)
        forwarder.run(stop: stopFlag)
        state.store(3, ordering: .releasing)
    }

    private func fail(_ error: WANError) {
        failure.withLock { $0 = error }
        state.store(2, ordering: .releasing)
    }

    /// Waits for the thread to run or fail; returns its error, if any.
    func waitUntilRunning() -> WANError? {
        let deadline = Clock.monotonicNs() &+ 10_000_000_000
        while true {
            switch state.load(ordering: .acquiring) {
            case 0:
                guard Clock.monotonicNs() < deadline else { return .startTimedOut(direction) }
                usleep(200)
            case 2: return failure.withLock { $0 }
            default: return nil
            }
        }
    }

    func join() {
        guard let thread else { return }
        pthread_join(thread, nil)
        self.thread = nil
    }

    func snapshot() -> WANDirectionSnapshot {
        let ports = ports.withLock { $0 }
        try? ports?.0.refreshKernelCounters()  // the kernel's RX drops: one getsockopt
        return WANDirectionSnapshot(direction: direction, counters: statistics.snapshot(),
                                    receive: ports?.0.snapshot() ?? AFPacketRXCounters(),
                                    transmit: ports?.1.snapshot() ?? AFPacketTXCounters())
    }
}
