// Path: Sources/SluiceWAN/WANForwarder.swift — one direction of a link on its own thread: frames
// from the RX ring on the input side, through the schedule into the store, out of the TX ring on
// the output side when due.
import CShims
import Glibc
import SluiceCore
import SluicePacketIO
import Synchronization

/// One direction's data path. Owns its receiver (input interface, PACKET_IGNORE_OUTGOING), its
/// transmitter (output interface), a small staging pool both copy through (SluicePacketIO's ports
/// speak pool buffers), its schedule and its store. One thread runs it: move it there.
/// The loop takes no lock and allocates nothing; counters go to `statistics` after each busy turn.
struct WANForwarder: ~Copyable {
    let direction: WANDirection
    private var receiver: AFPacketReceiver
    private var transmitter: AFPacketTransmitter
    private let pool: BufferPool
    private var schedule: WANSchedule
    private var corrupter: WANCorrupter
    private var store: WANFrameStore
    private var counters = WANDirectionCounters()
    let statistics: WANDirectionStatistics
    let receiveStatistics: AFPacketRXStatistics
    let transmitStatistics: AFPacketTXStatistics
    private let items: UnsafeMutableBufferPointer<UInt64>
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (ns), to turn the kernel's arrival stamps into
    /// monotonic time; refreshed every second.
    private var realtimeOffsetNs: Int64 = 0
    private var offsetSampledNs: UInt64 = 0

    /// Opens both ports in the calling thread's network namespace and allocates everything the loop
    /// uses. Throws if an interface is missing or a socket cannot be set up.
    init(direction: WANDirection, input: String, output: String, settings: WANDirectionSettings, seed: UInt64,
         statistics: WANDirectionStatistics) throws(WANError) {
        let pool: BufferPool
        do {
            pool = try BufferPool(bufferCount: WANLimits.stagingBufferCount, bufferSizeBytes: WANLimits.frameBytesMax)
        } catch { throw .pool(error) }
        let receiver: AFPacketReceiver
        do {
            receiver = try AFPacketReceiver(
                configuration: AFPacketRXConfiguration(interface: input, blockSizeBytes: WANLimits.rxBlockSizeBytes,
                                                       blockCount: WANLimits.rxBlockCount,
                                                       blockTimeoutMs: WANLimits.rxBlockTimeoutMs, ignoreOutgoing: true),
                pool: pool)
        } catch { throw .port(interface: input, role: "receive", error) }
        let transmitter: AFPacketTransmitter
        do {
            transmitter = try AFPacketTransmitter(
                configuration: AFPacketTXConfiguration(interface: output, frameSizeBytes: WANLimits.txFrameSizeBytes,
                                                       frameCount: WANLimits.txFrameCount),
                pool: pool)
        } catch { throw .port(interface: output, role: "send", error) }
        self.direction = direction
        self.receiveStatistics = receiver.statistics
        self.transmitStatistics = transmitter.statistics
        self.receiver = receiver
        self.transmitter = transmitter
        self.pool = pool
        self.schedule = WANSchedule(settings: settings, seed: seed)
        self.corrupter = WANCorrupter(probability: settings.corrupt, seed: seed)
        self.store = WANFrameStore(capacityBytes: settings.storeBytes, frameCapacity: settings.storeFrameCount)
        self.statistics = statistics
        self.items = .allocate(capacity: WANLimits.burstCountMax)
        self.items.initialize(repeating: 0)
    }

    deinit { items.deallocate() }

    /// The loop: receive and admit, send what is due, then sleep until the next departure (at most
    /// `WANLimits.receiveIntervalNsMax`) or, with nothing held, block in poll() on the RX socket
    /// (at most `WANLimits.idleWaitMs`). Returns once `stop` is set; frames still held are dropped
    /// and counted as `stopped`.
    mutating func run(stop: borrowing StopFlag) {
        _ = sluice_thread_set_timer_slack_ns(1)
        refreshClockOffset(nowNs: Clock.monotonicNs())
        while !stop.isSet {
            let received = receiveAndAdmit()
            let nowNs = Clock.monotonicNs()
            let sent = transmitDue(nowNs: nowNs)
            transmitter.kickIfNeeded()
            if received > 0 || sent > 0 { publish() }
            if nowNs &- offsetSampledNs > 1_000_000_000 { refreshClockOffset(nowNs: nowNs) }
            if received == WANLimits.burstCountMax { continue }
            guard let next = store.front?.departureNs else {
                _ = try? receiver.waitForFrames(timeoutMs: WANLimits.idleWaitMs)
                continue
            }
            if next > nowNs {
                let wakeNs = min(next, nowNs &+ WANLimits.receiveIntervalNsMax)
                sleep(untilNs: wakeNs, spin: wakeNs == next)
            }
        }
        drainAtStop()
    }

    /// Takes a burst from the RX ring and decides each frame's fate. Returns frames taken.
    private mutating func receiveAndAdmit() -> Int {
        let received = receiver.receiveBurst(into: items)
        guard received > 0 else { return 0 }
        let nowNs = Clock.monotonicNs()
        for position in 0..<received {
            let index = UInt32(truncatingIfNeeded: items[position])
            admit(index, nowNs: nowNs)
            pool.freeIndex(index)
        }
        return received
    }

    /// One frame: too large, or through the schedule into the store (a frame the schedule admits
    /// but the store has no room for is taken back and dropped as `storeFull`). A frame admitted
    /// may then be corrupted (`WANCorrupter`, `WANCorruption`) before it is stored.
    @inline(__always)
    private mutating func admit(_ index: UInt32, nowNs: UInt64) {
        let metadata = pool.metadata(at: index).pointee
        let length = Int(metadata.length)
        counters.receivedPackets &+= 1
        counters.receivedBytes &+= UInt64(length)
        guard metadata.wireLength <= metadata.length, transmitter.canCarry(index) else {
            counters.add(.tooLarge)
            return
        }
        let arrivalNs = arrivalTime(realtimeNs: metadata.timestampNs, nowNs: nowNs)
        switch schedule.admit(arrivalNs: arrivalNs, bytes: length, heldBytes: store.heldBytes) {
        case .drop(let reason):
            counters.add(reason)
        case .depart(let departureNs):
            if let draw = corrupter.next() {
                let bytes = UnsafeMutableRawBufferPointer(rebasing: pool.bytes(at: index)[0..<length])
                if WANCorruption.corrupt(bytes, draw: draw) != nil { counters.corruptedPackets &+= 1 }
            }
            let frame = UnsafeRawBufferPointer(start: pool.bytes(at: index).baseAddress, count: length)
            guard store.append(frame, departureNs: departureNs) else {
                schedule.revertLastAdmission()
                counters.add(.storeFull)
                return
            }
            counters.queueBytes = UInt64(schedule.lastQueueBytes)
            if counters.queueBytes > counters.queueBytesMax { counters.queueBytesMax = counters.queueBytes }
            counters.heldBytes = UInt64(store.heldBytes)
            counters.heldFrames = UInt64(store.count)
            if counters.heldBytes > counters.heldBytesMax { counters.heldBytesMax = counters.heldBytes }
        }
    }

    /// The kernel's arrival stamp (CLOCK_REALTIME) as monotonic time; `nowNs` when the stamp is
    /// missing, in the future, or implausibly old (counted).
    @inline(__always)
    private mutating func arrivalTime(realtimeNs: UInt64, nowNs: UInt64) -> UInt64 {
        let arrival = Int64(bitPattern: realtimeNs) &- realtimeOffsetNs
        let now = Int64(bitPattern: nowNs)
        if arrival > now { return nowNs }  // a few ns of offset error; never in the future
        if realtimeNs == 0 || arrival < 0 || now &- arrival > Int64(WANLimits.arrivalSkewNsMax) {
            counters.arrivalClockFallbacks &+= 1
            return nowNs
        }
        return UInt64(arrival)
    }

    /// Copies every due frame (departure <= now) to the TX ring, a burst at a time, and records how
    /// late each went. Frames the ring cannot take are dropped (`txRingFull`). Returns frames sent.
    private mutating func transmitDue(nowNs: UInt64) -> Int {
        var sent = 0
        while let due = store.front?.departureNs, due <= nowNs {
            var count = 0
            var bytes: UInt64 = 0
            while count < WANLimits.burstCountMax, let descriptor = store.front, descriptor.departureNs <= nowNs {
                guard let buffer = pool.allocate() else { break }
                let index = buffer.releaseIndex()
                let frame = store.frameBytes(descriptor)
                pool.bytes(at: index).baseAddress!.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
                var metadata = PacketMetadata()
                metadata.length = descriptor.length
                metadata.wireLength = descriptor.length
                pool.metadata(at: index).pointee = metadata
                items[count] = UInt64(index)
                count += 1
                bytes &+= UInt64(descriptor.length)
                counters.recordLateness(nowNs &- descriptor.departureNs)
                store.popFront()
            }
            precondition(count > 0, "the staging pool holds two bursts; one is always free here")
            let burst = transmitter.transmitBurst(UnsafeBufferPointer(rebasing: items[0..<count]))
            if burst.taken < count {
                for position in burst.taken..<count {
                    let index = UInt32(truncatingIfNeeded: items[position])
                    bytes &-= UInt64(pool.metadata(at: index).pointee.length)
                    pool.freeIndex(index)
                }
                counters.add(.txRingFull, UInt64(count - burst.taken))
            }
            counters.forwardedPackets &+= UInt64(burst.taken)
            counters.forwardedBytes &+= bytes
            sent += count
        }
        if sent > 0 {
            counters.heldBytes = UInt64(store.heldBytes)
            counters.heldFrames = UInt64(store.count)
            if store.isEmpty { counters.queueBytes = 0 }
        }
        return sent
    }

    /// Sleeps until `deadlineNs` (CLOCK_MONOTONIC): clock_nanosleep to `WANLimits.spinWindowNs`
    /// before it, then, if `spin`, spins on the clock the rest of the way.
    private func sleep(untilNs deadlineNs: UInt64, spin: Bool) {
        let window = spin ? WANLimits.spinWindowNs : 0
        if deadlineNs > Clock.monotonicNs() &+ window {
            let wakeNs = deadlineNs - window
            var time = timespec(tv_sec: Int(wakeNs / 1_000_000_000), tv_nsec: Int(wakeNs % 1_000_000_000))
            // EINTR ends the sleep early; the loop comes back here if it is still too soon.
            _ = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &time, nil)
        }
        if spin { while Clock.monotonicNs() < deadlineNs {} }
    }

    private mutating func refreshClockOffset(nowNs: UInt64) {
        // Bracket the realtime read between two monotonic reads and use their midpoint.
        var realtime = timespec()
        let before = Clock.monotonicNs()
        clock_gettime(CLOCK_REALTIME, &realtime)
        let after = Clock.monotonicNs()
        let realtimeNs = Int64(realtime.tv_sec) * 1_000_000_000 + Int64(realtime.tv_nsec)
        realtimeOffsetNs = realtimeNs - Int64(bitPattern: before / 2 + after / 2)
        offsetSampledNs = nowNs
    }

    /// After the stop: what is still held is dropped (`stopped`); what is on the TX ring is flushed
    /// (at most 100 ms).
    private mutating func drainAtStop() {
        counters.add(.stopped, UInt64(store.count))
        while !store.isEmpty { store.popFront() }
        counters.heldBytes = 0
        counters.heldFrames = 0
        counters.queueBytes = 0
        _ = transmitter.flush(timeoutNs: 100_000_000)
        publish()
    }

    private func publish() { statistics.publish(counters) }
}

/// Set once by the link's owner to stop its threads. Read each turn (relaxed is enough: the thread
/// only needs to see it eventually; join orders everything after).
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}
