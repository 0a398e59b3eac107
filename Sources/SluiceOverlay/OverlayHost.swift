// Path: Sources/SluiceOverlay/OverlayHost.swift — one host's overlay data plane on its own thread:
// AF_PACKET rings on the VM-facing veths and the underlay interface, bursts through `OverlayRedirect`,
// lease events from a bounded inbox, counters published for other threads.
import CShims
import Glibc
import SluiceCore
import SluicePacket
import SluicePacketIO
import Synchronization

/// Why a host could not start.
public enum OverlayHostError: Error, CustomStringConvertible {
    case invalidConfig(String)
    case pool(PoolError)
    case port(interface: String, role: String, AFPacketError)
    case namespace(SyscallError)
    case threadCreate(Int32)
    case startTimedOut

    public var description: String {
        switch self {
        case .invalidConfig(let problem): "invalid overlay host config: \(problem)"
        case .pool(let error): "overlay buffer pool: \(error)"
        case .port(let interface, let role, let error): "\(interface) (\(role)): \(error)"
        case .namespace(let error): "entering the network namespace: \(error)"
        case .threadCreate(let rc): "pthread_create failed: \(rc)"
        case .startTimedOut: "the forwarding thread did not start within 10 s"
        }
    }
}

/// Fixed sizes of the host runner.
public enum OverlayHostLimits {
    /// Frames per receive burst and per transmit burst.
    public static let burstCountMax = 64
    /// Pool buffers shared by all ports (a frame plus the 50 outer bytes fits one buffer).
    public static let bufferCount = 2048
    public static let bufferSizeBytes = 2048
    public static let rxBlockSizeBytes = 1 << 16
    public static let rxBlockCount = 64
    public static let rxBlockTimeoutMs = 1
    public static let txFrameSizeBytes = 2048
    public static let txFrameCount = 512
    /// Lease events waiting for the forwarding thread.
    public static let eventInboxMax = 4096
    /// Idle turns before the loop sleeps `idleSleepNs` per turn.
    public static let idleSpinTurns = 32
    public static let idleSleepNs = 100_000
    /// How often the counters are published (the flows list every `flowsPublishEvery` publishes).
    public static let publishIntervalNs: UInt64 = 20_000_000
    public static let flowsPublishEvery = 25
    /// Flows listed in a snapshot at most.
    public static let flowsListedMax = 1024
}

/// A host to run: the data plane config, the interfaces behind it and where they live.
public struct OverlayHostConfiguration: Sendable {
    public var name: String
    public var dataplane: OverlayDataplaneConfig
    /// One interface per `dataplane.vmPorts` entry, same order.
    public var vmInterfaces: [String]
    public var underlayInterface: String
    /// Open the ports in this network namespace (`/var/run/netns/NAME`), or the caller's if nil.
    public var namespacePath: String?
    /// Bench baseline only: every frame takes `OverlayRedirect.forwardPlain` (parse, MAC rewrite, out on
    /// the other side) instead of the redirect; leases and flows are ignored.
    public var forwardOnly: Bool
    /// `OverlayRedirect.usesFastParse` (true; false only to measure the difference).
    public var usesFastParse: Bool

    public init(name: String, dataplane: OverlayDataplaneConfig, vmInterfaces: [String], underlayInterface: String,
                namespacePath: String? = nil, forwardOnly: Bool = false, usesFastParse: Bool = true) {
        self.forwardOnly = forwardOnly
        self.usesFastParse = usesFastParse
        self.name = name
        self.dataplane = dataplane
        self.vmInterfaces = vmInterfaces
        self.underlayInterface = underlayInterface
        self.namespacePath = namespacePath
    }
}

/// Counters of one port of a host.
public struct OverlayPortCounters: Sendable, Equatable, Codable {
    public var name: String
    public var interface: String
    public var receivedPackets: UInt64 = 0
    public var receivedBytes: UInt64 = 0
    public var sentPackets: UInt64 = 0
    public var sentBytes: UInt64 = 0
}

/// One lease as a snapshot reports it.
public struct OverlayLeaseReport: Sendable, Equatable, Codable {
    public var leaseID: Int64
    public var epoch: Int64
    public var service: String
    public var consumerVM: String
    public var producerVM: String
    public var producerHost: String
    public var flows: UInt64
    public var packets: UInt64
    public var bytes: UInt64
    /// CLOCK_MONOTONIC ns: grant applied by the forwarding thread, first packet of its first flow (0: none yet).
    public var appliedNs: UInt64 = 0
    public var firstPacketNs: UInt64 = 0
}

/// One service's counters as a snapshot reports them.
public struct OverlayServiceReport: Sendable, Equatable, Codable {
    public var name: String
    public var flows: UInt64
    public var packets: UInt64
    public var bytes: UInt64
    public var redirectMisses: UInt64
}

/// One flow as a snapshot lists it.
public struct OverlayFlowReport: Sendable, Equatable, Codable {
    public var kind: String
    public var source: String
    public var destination: String
    public var protocolName: String
    public var redirectedTo: String
    public var underlayPeer: String
    public var leaseID: Int64
    public var epoch: Int64
    public var isLive: Bool
    public var packets: UInt64
    public var bytes: UInt64
}

/// What a host's thread last published.
public struct OverlayHostSnapshot: Sendable, Equatable, Codable {
    public var host: String = ""
    public var ports: [OverlayPortCounters] = []
    public var drops: [String: UInt64] = [:]
    public var services: [OverlayServiceReport] = []
    public var leases: [OverlayLeaseReport] = []
    public var flowCount = 0
    public var flows: [OverlayFlowReport] = []
    public var eventsApplied: UInt64 = 0
    public var eventsIgnored: UInt64 = 0
    public var resetsSent: UInt64 = 0
    public var leaseRequests: UInt64 = 0
    /// First packets held while their lease was asked for, and those handed on after the grant.
    public var heldPackets: UInt64 = 0
    public var releasedPackets: UInt64 = 0
    /// Grants refused because every lease slot was taken (each handed to the refusal hook to give back).
    public var leaseSlotsFull: UInt64 = 0
    public init() {}

    /// The port named `name` (a VM name, or "underlay").
    public func port(_ name: String) -> OverlayPortCounters? { ports.first { $0.name == name } }
}

/// What the control side hands the forwarding thread through its inbox.
enum OverlayHostInput: Sendable {
    case event(OverlayLeaseEvent)
    case rearm(consumerVM: String, service: String)
}

/// A running host: one forwarding thread. `start()` returns once the ports are open (or with the
/// reason they are not); `stop()` ends the thread. Events go in through `submit`, a bounded inbox the
/// thread drains each turn.
public final class OverlayHost: @unchecked Sendable {  // unchecked: `thread` is touched by the control thread only
    public let configuration: OverlayHostConfiguration
    private let stopFlag = Atomic<Bool>(false)
    /// 0 starting, 1 running, 2 failed, 3 ended.
    private let state = Atomic<Int>(0)
    private let failure = Mutex<OverlayHostError?>(nil)
    private let inboxCount = Atomic<Int>(0)
    private let appliedAtNs = Atomic<UInt64>(0)
    private let appliedCount = Atomic<UInt64>(0)
    /// Inputs queued so far (numbered in inbox order, under the inbox's lock) and inputs applied so far.
    private let inputsQueued = Atomic<UInt64>(0)
    private let inputsApplied = Atomic<UInt64>(0)
    private let inbox = Mutex<[OverlayHostInput]>([])
    private let published = Mutex(OverlayHostSnapshot())
    private let requestHook = Mutex<(@Sendable (String, String) -> Void)?>(nil)
    private let refusalHook = Mutex<(@Sendable (OverlayLease) -> Void)?>(nil)
    private var thread: pthread_t?

    public init(configuration: OverlayHostConfiguration) throws(OverlayHostError) {
        if let problem = configuration.dataplane.problem { throw .invalidConfig(problem) }
        guard configuration.vmInterfaces.count == configuration.dataplane.vmPorts.count else {
            throw .invalidConfig("\(configuration.vmInterfaces.count) interfaces for \(configuration.dataplane.vmPorts.count) VM ports")
        }
        self.configuration = configuration
    }

    /// Called on the forwarding thread when a consumer VM's first packet to a service finds no lease
    /// (once per consumer VM and service until a grant arrives): the leasing side's cue to ask.
    public func onLeaseRequest(_ hook: @escaping @Sendable (_ consumerVM: String, _ service: String) -> Void) {
        requestHook.withLock { $0 = hook }
    }

    /// Called on the forwarding thread for a grant the data plane refused because every lease slot was
    /// taken: the leasing side's cue to give the lease back (revoke it) and, later, re-arm the pair
    /// (`rearmLeaseRequest`); until then the pair's packets drop as `leaseSlotsFull`.
    public func onGrantRefused(_ hook: @escaping @Sendable (OverlayLease) -> Void) {
        refusalHook.withLock { $0 = hook }
    }

    /// Queues a lease event for the forwarding thread. False if the inbox is full (`eventInboxMax`).
    @discardableResult
    public func submit(_ event: OverlayLeaseEvent) -> Bool { enqueue(.event(event)) != nil }

    /// `submit`, returning the event's number in inbox order (nil: the inbox is full). Once
    /// `inputsAppliedCount` reaches it the forwarding thread has applied the event.
    public func submitNumbered(_ event: OverlayLeaseEvent) -> UInt64? { enqueue(.event(event)) }

    /// Inputs (events, re-arms) the forwarding thread has applied, in inbox order.
    public var inputsAppliedCount: UInt64 { inputsApplied.load(ordering: .acquiring) }

    /// Lets the next packet of `consumerVM` to `service` ask for a lease again (the leasing side's last
    /// request failed). Goes through the inbox like events. False if the inbox is full.
    @discardableResult
    public func rearmLeaseRequest(consumerVM: String, service: String) -> Bool {
        enqueue(.rearm(consumerVM: consumerVM, service: service)) != nil
    }

    /// Queues `input`; its number in inbox order, or nil if the inbox is full.
    private func enqueue(_ input: OverlayHostInput) -> UInt64? {
        let number = inbox.withLock { events -> UInt64? in
            guard events.count < OverlayHostLimits.eventInboxMax else { return nil }
            events.append(input)
            return inputsQueued.wrappingAdd(1, ordering: .relaxed).newValue
        }
        if number != nil { inboxCount.wrappingAdd(1, ordering: .releasing) }
        return number
    }

    /// How many inbox drains applied events, and when the last one finished (CLOCK_MONOTONIC ns): from
    /// that moment every packet sees the events (a revoke's redirect and flows are gone).
    public var lastEventsApplied: (count: UInt64, atNs: UInt64) {
        (appliedCount.load(ordering: .acquiring), appliedAtNs.load(ordering: .acquiring))
    }

    /// The last published counters.
    public func snapshot() -> OverlayHostSnapshot { published.withLock { $0 } }

    /// Starts the forwarding thread and waits until its ports are open.
    public func start() throws(OverlayHostError) {
        precondition(thread == nil, "host started twice")
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let owner = Unmanaged<OverlayHost>.fromOpaque(context!).takeRetainedValue()
            owner.main()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<OverlayHost>.fromOpaque(context).release()
            throw .threadCreate(rc)
        }
        self.thread = thread
        let deadline = Clock.monotonicNs() &+ 10_000_000_000
        while true {
            switch state.load(ordering: .acquiring) {
            case 0:
                guard Clock.monotonicNs() < deadline else { throw .startTimedOut }
                usleep(200)
            case 2:
                join()
                throw failure.withLock { $0 } ?? .startTimedOut
            default: return
            }
        }
    }

    /// Stops the thread and waits for it.
    public func stop() {
        stopFlag.store(true, ordering: .relaxed)
        join()
    }

    private func join() {
        guard let thread else { return }
        pthread_join(thread, nil)
        self.thread = nil
    }

    private func fail(_ error: OverlayHostError) {
        failure.withLock { $0 = error }
        state.store(2, ordering: .releasing)
    }

    private func main() {
        if let path = configuration.namespacePath {
            do { try NetworkNamespace.enterOnCurrentThread(path: path) } catch {
                fail(.namespace(error))
                return
            }
        }
        var loop: OverlayHostLoop
        do { loop = try OverlayHostLoop(configuration: configuration) } catch {
            fail(error)
            return
        }
        state.store(1, ordering: .releasing)
        loop.run(host: self)
        state.store(3, ordering: .releasing)
    }

    // For the loop.
    var isStopping: Bool { stopFlag.load(ordering: .relaxed) }
    var hasEvents: Bool { inboxCount.load(ordering: .acquiring) > 0 }
    func takeEvents() -> [OverlayHostInput] {
        let events = inbox.withLock { events -> [OverlayHostInput] in
            let taken = events
            events.removeAll(keepingCapacity: true)
            return taken
        }
        inboxCount.wrappingSubtract(events.count, ordering: .relaxed)
        return events
    }
    func publish(_ snapshot: OverlayHostSnapshot) { published.withLock { $0 = snapshot } }
    /// After a drain applied `inputs` inputs: the time first, then the counts, so a reader that sees the
    /// counts (acquiring) sees this drain's time or a later one.
    func markApplied(nowNs: UInt64, inputs: Int) {
        appliedAtNs.store(nowNs, ordering: .releasing)
        appliedCount.wrappingAdd(1, ordering: .releasing)
        inputsApplied.wrappingAdd(UInt64(inputs), ordering: .releasing)
    }
    func refuseGrant(_ lease: OverlayLease) {
        let hook = refusalHook.withLock { $0 }
        hook?(lease)
    }
    func requestLease(consumerVM: String, service: String) {
        let hook = requestHook.withLock { $0 }
        hook?(consumerVM, service)
    }
}

/// The forwarding thread's state: ports, pool, redirect, counters. Made and run on that thread.
struct OverlayHostLoop: ~Copyable {
    let configuration: OverlayHostConfiguration
    let pool: BufferPool
    let portCount: Int  // VM ports + the underlay
    let receivers: UnsafeMutablePointer<AFPacketReceiver>
    let transmitters: UnsafeMutablePointer<AFPacketTransmitter>
    var redirect: OverlayRedirect
    let items: UnsafeMutableBufferPointer<UInt64>
    /// Per output port, the frames of this turn (`burstCountMax` each).
    let outItems: UnsafeMutablePointer<UInt64>
    let outCounts: UnsafeMutablePointer<Int>
    let counters: UnsafeMutablePointer<UInt64>  // per port: rx packets, rx bytes, tx packets, tx bytes
    var eventsApplied: UInt64 = 0
    var resetsSent: UInt64 = 0
    var leaseRequests: UInt64 = 0
    var txRingFullDrops: UInt64 = 0
    let forwardOnly: Bool

    init(configuration: OverlayHostConfiguration) throws(OverlayHostError) {
        let pool: BufferPool
        do {
            pool = try BufferPool(bufferCount: OverlayHostLimits.bufferCount,
                                  bufferSizeBytes: OverlayHostLimits.bufferSizeBytes)
        } catch { throw .pool(error) }
        let interfaces = configuration.vmInterfaces + [configuration.underlayInterface]
        let count = interfaces.count
        let receivers = UnsafeMutablePointer<AFPacketReceiver>.allocate(capacity: count)
        let transmitters = UnsafeMutablePointer<AFPacketTransmitter>.allocate(capacity: count)
        var opened = 0
        do {
            for interface in interfaces {
                let receiver: AFPacketReceiver
                do {
                    receiver = try AFPacketReceiver(
                        configuration: AFPacketRXConfiguration(
                            interface: interface, blockSizeBytes: OverlayHostLimits.rxBlockSizeBytes,
                            blockCount: OverlayHostLimits.rxBlockCount,
                            blockTimeoutMs: OverlayHostLimits.rxBlockTimeoutMs, ignoreOutgoing: true),
                        pool: pool)
                } catch { throw OverlayHostError.port(interface: interface, role: "receive", error) }
                let transmitter: AFPacketTransmitter
                do {
                    transmitter = try AFPacketTransmitter(
                        configuration: AFPacketTXConfiguration(interface: interface,
                                                               frameSizeBytes: OverlayHostLimits.txFrameSizeBytes,
                                                               frameCount: OverlayHostLimits.txFrameCount),
                        pool: pool)
                } catch { throw OverlayHostError.port(interface: interface, role: "send", error) }
                (receivers + opened).initialize(to: receiver)
                (transmitters + opened).initialize(to: transmitter)
                opened += 1
            }
        } catch let error as OverlayHostError {
            (receivers).deinitialize(count: opened)
            (transmitters).deinitialize(count: opened)
            receivers.deallocate()
            transmitters.deallocate()
            throw error
        } catch {
            preconditionFailure("only OverlayHostError is thrown here")
        }
        self.configuration = configuration
        self.forwardOnly = configuration.forwardOnly
        self.pool = pool
        self.portCount = count
        self.receivers = receivers
        self.transmitters = transmitters
        self.redirect = OverlayRedirect(config: configuration.dataplane)
        self.redirect.usesFastParse = configuration.usesFastParse
        self.items = .allocate(capacity: OverlayHostLimits.burstCountMax)
        self.items.initialize(repeating: 0)
        self.outItems = .allocate(capacity: count * OverlayHostLimits.burstCountMax)
        self.outCounts = .allocate(capacity: count)
        self.outCounts.initialize(repeating: 0, count: count)
        self.counters = .allocate(capacity: count * 4)
        self.counters.initialize(repeating: 0, count: count * 4)
    }

    deinit {
        receivers.deinitialize(count: portCount)
        transmitters.deinitialize(count: portCount)
        receivers.deallocate()
        transmitters.deallocate()
        items.deallocate()
        outItems.deallocate()
        outCounts.deallocate()
        counters.deallocate()
    }

    mutating func run(host: OverlayHost) {
        _ = sluice_thread_set_timer_slack_ns(1)  // the idle sleep wakes on time: events apply within ~0.1 ms
        var idleTurns = 0
        var lastPublishNs: UInt64 = 0
        var publishes = 0
        var dirty = true
        while !host.isStopping {
            let nowNs = Clock.monotonicNs()
            if host.hasEvents {
                let inputs = host.takeEvents()
                for input in inputs {
                    switch input {
                    case .event(let event): redirect.apply(event, nowNs: nowNs)
                    case .rearm(let vm, let service): redirect.rearmLeaseRequest(consumerVM: vm, service: service)
                    }
                }
                host.markApplied(nowNs: Clock.monotonicNs(), inputs: inputs.count)
                eventsApplied &+= 1
                dirty = true
            }
            if redirect.hasReleasedFrames { releaseHeld(nowNs: nowNs) }
            if redirect.hasResets { sendResets() }
            var moved = 0
            for port in 0..<portCount { moved += receive(port: port, nowNs: nowNs) }
            for port in 0..<portCount { flush(port: port) }
            for port in 0..<portCount { transmitters[port].kickIfNeeded() }
            let requests = redirect.takeLeaseRequests()
            for request in requests {
                leaseRequests &+= 1
                host.requestLease(consumerVM: request.consumerVM, service: request.service)
            }
            for lease in redirect.takeRefusedGrants() { host.refuseGrant(lease) }
            redirect.sweep(nowNs: nowNs)
            if moved > 0 { dirty = true }
            if dirty, nowNs &- lastPublishNs >= OverlayHostLimits.publishIntervalNs {
                publishes += 1
                host.publish(snapshot(listingFlows: publishes % OverlayHostLimits.flowsPublishEvery == 1))
                lastPublishNs = nowNs
                dirty = moved > 0
            }
            if moved == 0 {
                idleTurns += 1
                if idleTurns > OverlayHostLimits.idleSpinTurns {
                    var time = timespec(tv_sec: 0, tv_nsec: OverlayHostLimits.idleSleepNs)
                    _ = nanosleep(&time, nil)
                }
            } else {
                idleTurns = 0
            }
        }
        for port in 0..<portCount { _ = transmitters[port].flush(timeoutNs: 100_000_000) }
        host.publish(snapshot(listingFlows: true))
    }

    /// One receive burst from `port` through the redirect into the output lists. Returns frames taken.
    mutating func receive(port: Int, nowNs: UInt64) -> Int {
        let received = receivers[port].receiveBurst(into: items)
        guard received > 0 else { return 0 }
        for position in 0..<received {
            let index = UInt32(truncatingIfNeeded: items[position])
            let metadata = pool.metadata(at: index)
            let length = Int(metadata.pointee.length)
            counters[port * 4] &+= 1
            counters[port * 4 + 1] &+= UInt64(length)
            guard metadata.pointee.wireLength <= metadata.pointee.length else {
                redirect.countDrop(.tooLarge)
                pool.freeIndex(index)
                continue
            }
            if forwardOnly {
                dispatch(index, redirect.forwardPlain(pool.bytes(at: index), length: length, port: port))
            } else {
                dispatch(index, redirect.process(pool.bytes(at: index), length: length, port: port, nowNs: nowNs))
            }
        }
        return received
    }

    /// Frees the buffer at `index` or queues it on its output port, as the verdict says.
    @inline(__always) mutating func dispatch(_ index: UInt32, _ verdict: OverlayVerdict) {
        switch verdict {
        case .drop, .held:
            pool.freeIndex(index)
        case .forward(let output, let newLength):
            let metadata = pool.metadata(at: index)
            metadata.pointee.length = UInt32(newLength)
            metadata.pointee.wireLength = UInt32(newLength)
            if outCounts[output] == OverlayHostLimits.burstCountMax { flush(port: output) }
            outItems[output * OverlayHostLimits.burstCountMax + outCounts[output]] = UInt64(index)
            outCounts[output] += 1
        }
    }

    /// Runs the held first packets of newly granted pairs through the redirect (in arrival order). Stops
    /// early if the pool is empty; the rest go next turn.
    mutating func releaseHeld(nowNs: UInt64) {
        while redirect.hasReleasedFrames {
            guard let buffer = pool.allocate() else { return }
            let index = buffer.releaseIndex()
            guard let (port, length) = redirect.takeReleasedFrame(into: pool.bytes(at: index)) else {
                pool.freeIndex(index)
                return
            }
            var metadata = PacketMetadata()
            metadata.length = UInt32(length)
            metadata.wireLength = UInt32(length)
            pool.metadata(at: index).pointee = metadata
            dispatch(index, redirect.process(pool.bytes(at: index), length: length, port: port, nowNs: nowNs))
        }
    }

    /// Sends the frames gathered for `port`; what the ring does not take is freed and counted.
    mutating func flush(port: Int) {
        let count = outCounts[port]
        guard count > 0 else { return }
        let list = UnsafeBufferPointer(start: outItems + port * OverlayHostLimits.burstCountMax, count: count)
        var bytes: UInt64 = 0
        for item in list { bytes &+= UInt64(pool.metadata(at: UInt32(truncatingIfNeeded: item)).pointee.length) }
        let burst = transmitters[port].transmitBurst(list)
        if burst.taken < count {
            for position in burst.taken..<count {
                let index = UInt32(truncatingIfNeeded: list[position])
                bytes &-= UInt64(pool.metadata(at: index).pointee.length)
                pool.freeIndex(index)
            }
            redirect.countDrop(.txRingFull, UInt64(count - burst.taken))
        }
        counters[port * 4 + 2] &+= UInt64(burst.queued)
        counters[port * 4 + 3] &+= bytes
        outCounts[port] = 0
    }

    /// Builds and sends the queued TCP resets, each on its consumer VM's port.
    mutating func sendResets() {
        while let reset = redirect.takeReset() {
            guard let buffer = pool.allocate() else { break }
            let index = buffer.releaseIndex()
            let length = OverlayReset.write(reset, into: pool.bytes(at: index))
            var metadata = PacketMetadata()
            metadata.length = UInt32(length)
            metadata.wireLength = UInt32(length)
            pool.metadata(at: index).pointee = metadata
            let port = Int(reset.vmPort)
            if outCounts[port] == OverlayHostLimits.burstCountMax { flush(port: port) }
            outItems[port * OverlayHostLimits.burstCountMax + outCounts[port]] = UInt64(index)
            outCounts[port] += 1
            resetsSent &+= 1
        }
    }

    func snapshot(listingFlows: Bool) -> OverlayHostSnapshot {
        var snapshot = OverlayHostSnapshot()
        let dataplane = configuration.dataplane
        snapshot.host = configuration.name
        for port in 0..<portCount {
            let isUnderlay = port == portCount - 1
            snapshot.ports.append(OverlayPortCounters(
                name: isUnderlay ? "underlay" : dataplane.vmPorts[port].name,
                interface: isUnderlay ? configuration.underlayInterface : configuration.vmInterfaces[port],
                receivedPackets: counters[port * 4], receivedBytes: counters[port * 4 + 1],
                sentPackets: counters[port * 4 + 2], sentBytes: counters[port * 4 + 3]))
        }
        for (name, count) in redirect.drops.nonZero { snapshot.drops[name] = count }
        for (index, counts) in redirect.serviceCounters.enumerated() {
            snapshot.services.append(OverlayServiceReport(
                name: dataplane.services[index].name, flows: counts.flows, packets: counts.packets, bytes: counts.bytes,
                redirectMisses: counts.redirectMisses))
        }
        for (slot, lease) in redirect.leases.enumerated() {
            guard let lease else { continue }
            let counts = redirect.leaseCounters(slot: slot)
            snapshot.leases.append(OverlayLeaseReport(
                leaseID: lease.leaseID, epoch: lease.epoch, service: lease.service, consumerVM: lease.consumerVM,
                producerVM: lease.producerVM, producerHost: lease.producerHost, flows: counts.flows,
                packets: counts.packets, bytes: counts.bytes, appliedNs: counts.appliedNs,
                firstPacketNs: counts.firstPacketNs))
        }
        snapshot.flowCount = redirect.flows.count
        if listingFlows { snapshot.flows = redirect.flowReports(limit: OverlayHostLimits.flowsListedMax) }
        snapshot.eventsApplied = eventsApplied
        snapshot.eventsIgnored = redirect.eventsIgnored
        snapshot.resetsSent = resetsSent
        snapshot.leaseRequests = leaseRequests
        snapshot.heldPackets = redirect.holdCounters.held
        snapshot.releasedPackets = redirect.holdCounters.released
        snapshot.leaseSlotsFull = redirect.leaseSlotsFull
        return snapshot
    }
}

extension OverlayRedirect {
    /// Counts a drop the host decided (ring full, oversized capture).
    mutating func countDrop(_ reason: OverlayDropReason, _ count: UInt64 = 1) { drops.add(reason, count) }

    /// Up to `limit` flows, for reports (control path).
    public func flowReports(limit: Int) -> [OverlayFlowReport] {
        var reports: [OverlayFlowReport] = []
        for index in 0..<Int32(flows.highWater) where flows.isInUse(index) {
            guard reports.count < limit else { break }
            let flow = flows.flow(index).pointee
            let key = flow.forwardKey
            let source = UInt32(truncatingIfNeeded: key.addresses >> 32)
            let destination = UInt32(truncatingIfNeeded: key.addresses)
            let sourcePort = UInt16(truncatingIfNeeded: key.rest >> 48)
            let destinationPort = UInt16(truncatingIfNeeded: key.rest >> 32)
            let ipProtocol = UInt8(truncatingIfNeeded: key.rest >> 24)
            let isConsumer = flow.kind == .consumerForward
            reports.append(OverlayFlowReport(
                kind: isConsumer ? "redirect" : "producer",
                source: "\(IPAddress(ipv4: source)):\(sourcePort)",
                destination: "\(IPAddress(ipv4: destination)):\(destinationPort)",
                protocolName: ipProtocol == IPProtocol.tcp ? "tcp" : "udp",
                redirectedTo: isConsumer ? "\(IPAddress(ipv4: flow.producerIPv4)):\(flow.producerPort)" : "-",
                underlayPeer: "\(IPAddress(ipv4: flow.peerUnderlayIPv4)) vni \(flow.vni)",
                leaseID: flow.leaseID, epoch: flow.epoch,
                isLive: isConsumer ? isLive(flows.flow(index)) : true,
                packets: flow.packets, bytes: flow.bytes))
        }
        return reports
    }
}

extension OverlayReset {
    /// Writes the reset as an Ethernet/IPv4/TCP frame (54 bytes) into `buffer`; returns its length.
    /// RST+ACK from the service address, sequence = the consumer's last acknowledgment (what Linux
    /// accepts as in-window exactly), checksums computed.
    public static func write(_ reset: OverlayReset, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= 54, "buffer too small for a reset")
        let base = buffer.baseAddress!
        store48(base, 0, reset.vmMAC)
        store48(base, 6, reset.hostMAC)
        store16(base, 12, EtherType.ipv4)
        store16(base, 14, 0x4500)
        store16(base, 16, 40)
        store16(base, 18, 0)
        store16(base, 20, 0x4000)
        store16(base, 22, 64 << 8 | UInt16(IPProtocol.tcp))
        store16(base, 24, 0)
        store32(base, 26, reset.serviceIPv4)
        store32(base, 30, reset.consumerIPv4)
        store16(base, 24, Checksum.ipv4Header(PacketBytes(UnsafeRawBufferPointer(rebasing: buffer[0..<54])),
                                              at: 14, headerSize: 20))
        store16(base, 34, reset.servicePort)
        store16(base, 36, reset.consumerPort)
        store32(base, 38, reset.sequence)
        store32(base, 42, 0)
        store16(base, 46, 5 << 12 | 0x04)  // data offset 5 words, RST
        store16(base, 48, 0)
        store16(base, 50, 0)
        store16(base, 52, 0)
        var sum: UInt32 = reset.serviceIPv4 >> 16 &+ reset.serviceIPv4 & 0xFFFF
        sum &+= reset.consumerIPv4 >> 16 &+ reset.consumerIPv4 & 0xFFFF &+ UInt32(IPProtocol.tcp) &+ 20
        for offset in stride(from: 34, to: 54, by: 2) { sum &+= UInt32(load16(base, offset)) }
        store16(base, 50, ~OverlayVXLAN.fold(sum))
        return 54
    }
}
