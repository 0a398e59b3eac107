// Path: Sources/SluiceCore/Pipeline/HandoffCalibration.swift — what handing an item to another core
// costs on this machine, measured rather than assumed.
import CShims
import Glibc
import Synchronization
import SystemPackage

/// The measured cost of passing items between two cores, against the same work on one core.
public struct HandoffCost: Sendable, Equatable, CustomStringConvertible {
    public var fromCore: Int
    public var toCore: Int
    /// Nanoseconds per item with producer and consumer interleaved on one thread on `fromCore`.
    public var localNsPerItem: Double
    /// Nanoseconds per item streamed from `fromCore` to `toCore` (the slower side's pace).
    public var crossNsPerItem: Double

    public init(fromCore: Int, toCore: Int, localNsPerItem: Double, crossNsPerItem: Double) {
        self.fromCore = fromCore
        self.toCore = toCore
        self.localNsPerItem = localNsPerItem
        self.crossNsPerItem = crossNsPerItem
    }

    /// What each side of a crossing pays per item beyond its share of the local work: the streamed
    /// pace minus half the local cost (each side did half of it), at least 0.
    public var handoffNsPerItem: Double { max(crossNsPerItem - localNsPerItem / 2, 0) }

    public var description: String {
        "cores \(fromCore)->\(toCore): \(fixed(crossNsPerItem, 1)) ns/item across, \(fixed(localNsPerItem, 1)) ns/item on one core, "
            + "hand-off \(fixed(handoffNsPerItem, 1)) ns/item per side"
    }
}

/// Why a calibration could not run.
public enum HandoffCalibrationError: Error, Equatable, CustomStringConvertible {
    case sameCore(Int)
    case coreUnavailable(Int)
    case itemCount(Int, max: Int)
    case ring(RingError)
    case thread(SyscallError)
    case pin(core: Int, SyscallError)
    /// The consumer did not see every item within the time bound (a core that never ran us).
    case timedOut(core: Int)

    public var description: String {
        switch self {
        case .sameCore(let core): "a hand-off calibration needs two cores, got \(core) twice"
        case .coreUnavailable(let core): "core \(core) is not one this process may use"
        case .itemCount(let count, let max): "items per round must be 1024...\(max), got \(count)"
        case .ring(let error): "calibration ring: \(error)"
        case .thread(let error): "calibration thread: \(error)"
        case .pin(let core, let error): "pinning the calibration thread to core \(core): \(error)"
        case .timedOut(let core): "the calibration thread on core \(core) did not finish within 10 s"
        }
    }
}

/// Streams items through an SPSC ring the way a pipeline does: the producer writes one cache line of
/// "packet" per item and enqueues its index in bursts, the consumer reads that line and returns the
/// index on a second ring, as a sink frees buffers back to the source's pool. Timed across two cores
/// and interleaved on one; the difference is the hand-off. Control plane: blocks about
/// `rounds` x (two runs of `itemCount` items): about 20 ns x items x rounds in a release build;
/// allocates; starts two threads.
public enum HandoffCalibration {
    public static let itemCountMax = 1 << 24
    static let slotCount = 4_096  // buffers in flight, as a pool of that size would allow
    static let slotBytes = 128
    static let ringCapacity = 1_024
    static let burst = 32

    /// Median of `rounds` measurements between `fromCore` and `toCore`, made on two threads of its
    /// own pinned to those cores (the caller's affinity is left alone).
    public static func measure(fromCore: Int, toCore: Int, itemCount: Int = 1 << 20,
                               rounds: Int = 3) throws(HandoffCalibrationError) -> HandoffCost {
        guard fromCore != toCore else { throw .sameCore(fromCore) }
        for core in [fromCore, toCore] where !((try? CPU.isAllowed(core)) ?? false) { throw .coreUnavailable(core) }
        guard itemCount >= 1_024, itemCount <= itemCountMax else { throw .itemCount(itemCount, max: itemCountMax) }
        precondition(rounds >= 1 && rounds <= 15, "rounds outside 1...15")
        let outcome = try onPinnedThread(core: fromCore) { () throws(HandoffCalibrationError) -> HandoffCost in
            var local: [Double] = []
            var cross: [Double] = []
            // One set of slots for every round: each allocation faults in its pages.
            let slots = Slots()
            for _ in 0..<rounds {
                local.append(try runLocal(itemCount: itemCount, slots: slots))
                cross.append(try runCross(toCore: toCore, itemCount: itemCount, slots: slots))
            }
            return HandoffCost(fromCore: fromCore, toCore: toCore, localNsPerItem: median(local),
                               crossNsPerItem: median(cross))
        }
        return try outcome.get()
    }

    /// Runs `body` on a new thread pinned to `core` and waits for it.
    private static func onPinnedThread(
        core: Int, _ body: @escaping () throws(HandoffCalibrationError) -> HandoffCost
    ) throws(HandoffCalibrationError) -> Result<HandoffCost, HandoffCalibrationError> {
        final class Box: @unchecked Sendable {  // unchecked: written by the thread, read after the join
            let core: Int
            let body: () throws(HandoffCalibrationError) -> HandoffCost
            var result: Result<HandoffCost, HandoffCalibrationError>?
            init(core: Int, body: @escaping () throws(HandoffCalibrationError) -> HandoffCost) {
                self.core = core
                self.body = body
            }
            func run() {
                do { try CPU.pinCurrentThread(to: core) } catch {
                    result = .failure(.pin(core: core, error))
                    return
                }
                do throws(HandoffCalibrationError) { result = .success(try body()) } catch { result = .failure(error) }
            }
        }
        let box = Box(core: core, body: body)
        pthread_join(try spawn(box.run), nil)
        return box.result!
    }

    /// Starts a thread running `body` (which holds its own state); the caller joins it.
    private static func spawn(_ body: @escaping () -> Void) throws(HandoffCalibrationError) -> pthread_t {
        final class Start { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
        var thread = pthread_t()
        let retained = Unmanaged.passRetained(Start(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, retained)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(retained).release()
            throw .thread(SyscallError("pthread_create", Errno(rawValue: rc)))
        }
        return thread
    }

    private static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// Slots of `slotBytes`, cache-line aligned.
    private final class Slots: @unchecked Sendable {  // unchecked: each slot is written then read, ring-ordered
        let base: UnsafeMutableRawPointer
        init() {
            var memory: UnsafeMutableRawPointer?
            let rc = posix_memalign(&memory, 64, HandoffCalibration.slotCount * HandoffCalibration.slotBytes)
            precondition(rc == 0 && memory != nil, "out of memory for calibration slots")
            base = memory!
            base.initializeMemory(as: UInt8.self, repeating: 0, count: HandoffCalibration.slotCount * HandoffCalibration.slotBytes)
        }
        deinit { free(base) }

        @inline(__always) func write(_ index: UInt64, value: UInt64) {
            let line = (base + Int(index) * HandoffCalibration.slotBytes).assumingMemoryBound(to: UInt64.self)
            for word in 0..<8 { line[word] = value &+ UInt64(word) }
        }

        @inline(__always) func read(_ index: UInt64) -> UInt64 {
            let line = (base + Int(index) * HandoffCalibration.slotBytes).assumingMemoryBound(to: UInt64.self)
            var sum: UInt64 = 0
            for word in 0..<8 { sum &+= line[word] }
            return sum
        }
    }

    /// Producer half: takes free slots back from `returns`, fills and sends up to a burst. Returns items sent.
    @inline(__always)
    private static func produce(_ out: inout RingProducer, _ returns: inout RingConsumer, free: inout [UInt64],
                                slots: Slots, burstItems: UnsafeMutableBufferPointer<UInt64>, sent: Int, total: Int) -> Int {
        let back = returns.dequeueBurst(into: burstItems)
        free.append(contentsOf: burstItems[0..<back.count])
        let want = min(burst, total - sent, free.count)
        guard want > 0 else { return 0 }
        for position in 0..<want {
            let index = free[free.count - 1 - position]
            slots.write(index, value: UInt64(sent + position))
            burstItems[position] = index
        }
        let taken = out.enqueueBurst(UnsafeBufferPointer(rebasing: burstItems[0..<want])).count
        free.removeLast(taken)
        return taken
    }

    /// Consumer half: reads a burst and returns the slots. Returns items consumed.
    @inline(__always)
    private static func consume(_ input: inout RingConsumer, _ returns: inout RingProducer, slots: Slots,
                                burstItems: UnsafeMutableBufferPointer<UInt64>, checksum: inout UInt64) -> Int {
        let count = input.dequeueBurst(into: burstItems).count
        for position in 0..<count { checksum &+= slots.read(burstItems[position]) }
        var returned = 0
        while returned < count {
            returned += returns.enqueueBurst(UnsafeBufferPointer(rebasing: burstItems[returned..<count])).count
        }
        return count
    }

    private static func ring(_ capacity: Int) throws(HandoffCalibrationError) -> RingEnds {
        do { return try makeRing(capacity: capacity) } catch { throw .ring(error) }
    }

    /// Both halves interleaved on the calling thread.
    private static func runLocal(itemCount: Int, slots: Slots) throws(HandoffCalibrationError) -> Double {
        var forward = try ring(ringCapacity)
        var backward = try ring(slotCount)
        var free = (0..<UInt64(slotCount)).map { $0 }
        let producerBurst = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burst)
        let consumerBurst = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burst)
        defer { producerBurst.deallocate(); consumerBurst.deallocate() }
        var sent = 0
        var received = 0
        var checksum: UInt64 = 0
        let start = Clock.monotonicNs()
        while received < itemCount {
            sent += produce(&forward.producer, &backward.consumer, free: &free, slots: slots,
                            burstItems: producerBurst, sent: sent, total: itemCount)
            received += consume(&forward.consumer, &backward.producer, slots: slots, burstItems: consumerBurst,
                                checksum: &checksum)
        }
        let elapsed = Clock.monotonicNs() - start
        precondition(checksum != 0 || itemCount == 0, "the consumer read the slots")
        return Double(elapsed) / Double(itemCount)
    }

    /// What the consumer thread needs; the ring ends are moved in through boxes.
    private final class ConsumerContext: @unchecked Sendable {  // unchecked: handed to one thread, joined after
        var input: RingConsumer?
        var returns: RingProducer?
        let slots: Slots
        let core: Int
        let itemCount: Int
        let started = Atomic<Bool>(false)
        let go = Atomic<Bool>(false)
        var pinError: SyscallError?
        var finishedNs: UInt64 = 0
        var timedOut = false

        init(input: consuming RingConsumer, returns: consuming RingProducer, slots: Slots, core: Int, itemCount: Int) {
            self.input = consume input
            self.returns = consume returns
            self.slots = slots
            self.core = core
            self.itemCount = itemCount
        }

        func run() {
            do { try CPU.pinCurrentThread(to: core) } catch {
                pinError = error
                started.store(true, ordering: .releasing)
                return
            }
            var input = self.input.take()!
            var returns = self.returns.take()!
            let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: HandoffCalibration.burst)
            defer { items.deallocate() }
            started.store(true, ordering: .releasing)
            while !go.load(ordering: .acquiring) {}
            var received = 0
            var checksum: UInt64 = 0
            let deadline = Clock.monotonicNs() &+ 10_000_000_000
            var turns = 0
            while received < itemCount {
                received += HandoffCalibration.consume(&input, &returns, slots: slots, burstItems: items,
                                                       checksum: &checksum)
                turns &+= 1
                if turns & 0xFFFF == 0, Clock.monotonicNs() > deadline {
                    timedOut = true
                    break
                }
            }
            finishedNs = Clock.monotonicNs()
            precondition(checksum != 0 || timedOut, "the consumer read the slots")
        }
    }

    /// Producer on the calling thread, consumer on a thread pinned to `toCore`.
    private static func runCross(toCore: Int, itemCount: Int, slots: Slots) throws(HandoffCalibrationError) -> Double {
        let forward = try ring(ringCapacity)
        let backward = try ring(slotCount)
        var out = forward.producer
        var returns = backward.consumer
        let context = ConsumerContext(input: forward.consumer, returns: backward.producer, slots: slots, core: toCore,
                                      itemCount: itemCount)
        let thread = try spawn(context.run)
        while !context.started.load(ordering: .acquiring) { sched_yield() }
        if let error = context.pinError {
            pthread_join(thread, nil)
            throw .pin(core: toCore, error)
        }
        var free = (0..<UInt64(slotCount)).map { $0 }
        let items = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: burst)
        defer { items.deallocate() }
        var sent = 0
        let deadline = Clock.monotonicNs() &+ 10_000_000_000
        let start = Clock.monotonicNs()
        context.go.store(true, ordering: .releasing)
        while sent < itemCount, Clock.monotonicNs() < deadline {
            sent += produce(&out, &returns, free: &free, slots: slots, burstItems: items, sent: sent, total: itemCount)
        }
        if sent < itemCount {
            // The consumer stops at its own deadline; let it.
            pthread_join(thread, nil)
            throw .timedOut(core: toCore)
        }
        pthread_join(thread, nil)
        if context.timedOut { throw .timedOut(core: toCore) }
        return Double(context.finishedNs &- start) / Double(itemCount)
    }
}
