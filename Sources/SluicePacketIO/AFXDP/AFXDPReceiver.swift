// Path: Sources/SluicePacketIO/AFXDP/AFXDPReceiver.swift — RX: an AF_XDP socket on one interface queue,
// its frames copied out of the UMEM into pool buffers a burst at a time, the UMEM frames refilled.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// Receives from one interface queue through an AF_XDP socket (copy mode; libxdp's default program
/// redirects the queue's frames to it). Owns its socket and UMEM: one thread at a time receives;
/// move it there, never share it. Frames are copied out of the UMEM into pool buffers, and the UMEM
/// frame goes back to the fill ring in the same burst: the pipeline's buffers never alias the UMEM,
/// so the kernel always holds every UMEM frame it was given and a slow stage cannot starve RX.
/// `receiveBurst` never blocks or allocates.
public struct AFXDPReceiver: ~Copyable {
    public let configuration: AFXDPConfiguration
    /// The mode the XDP program was attached in (native or generic), as the kernel reports it.
    public let mode: AFXDPMode
    public let statistics: AFXDPRXStatistics
    let pool: BufferPool
    private let port: UInt16
    private let socket: AFXDPSocket
    /// UMEM addresses going back to the fill ring at the end of a burst (`Limits.burstCountMax`).
    private let refill: UnsafeMutablePointer<UInt64>
    /// UMEM addresses the fill ring had no room for yet (at most the frames given), retried first.
    private let stash: UnsafeMutablePointer<UInt64>
    private var stashed = 0
    private let given: Int
    private let areaBytes: UInt64
    public private(set) var counters: AFXDPRXCounters

    /// Opens the socket on `configuration.interface` / `queue` in the calling thread's namespace,
    /// attaches the XDP program (`mode`; auto: native, else generic) and gives the kernel
    /// min(frameCount, ringSize) UMEM frames to fill. Allocates; blocks briefly.
    public init(configuration: AFXDPConfiguration, pool: BufferPool) throws(AFXDPError) {
        let socket = try AFXDPSocket(configuration: configuration, receive: true)
        let given = min(configuration.frameCount, configuration.ringSize)
        let addresses = UnsafeMutablePointer<UInt64>.allocate(capacity: given)
        defer { addresses.deallocate() }
        for frame in 0..<given { addresses[frame] = UInt64(frame * configuration.frameSizeBytes) }
        let filled = sluice_xdp_fill_burst(&socket.state.pointee.fill, addresses, UInt32(given))
        precondition(filled == UInt32(given), "a fresh fill ring of ringSize entries takes ringSize frames")
        // Mode as attached; the query is a check of what libxdp did, not a second source of truth.
        let reported = (try? AFXDPInterface.attachedMode(configuration.interface)) ?? nil
        self.mode = reported ?? socket.mode!
        self.statistics = AFXDPRXStatistics(fd: socket.fd)
        self.configuration = configuration
        self.pool = pool
        self.port = configuration.port
        self.socket = socket
        self.refill = .allocate(capacity: Limits.burstCountMax)
        self.stash = .allocate(capacity: given)
        self.given = given
        self.areaBytes = UInt64(configuration.frameCount) * UInt64(configuration.frameSizeBytes)
        self.counters = AFXDPRXCounters()
    }

    deinit {
        statistics.detach()
        refill.deallocate()
        stash.deallocate()
    }

    /// Takes up to `items.count` frames (at most `Limits.burstCountMax`), each copied into a fresh pool
    /// buffer whose index goes into `items`; returns how many. Every UMEM frame taken goes back to the
    /// fill ring before returning (one `recvfrom` when the kernel asks for a wakeup). Frames that find
    /// the pool empty are skipped and counted. Owner thread only; never blocks, never allocates.
    public mutating func receiveBurst(into items: UnsafeMutableBufferPointer<UInt64>) -> Int {
        precondition(items.count <= Limits.burstCountMax, "burst larger than Limits.burstCountMax")
        let state = socket.state
        // The kernel shows received frames before it advances the fill ring's consumer index: frames
        // that found no room last time go back first.
        if stashed > 0 {
            let pushed = Int(sluice_xdp_fill_burst(&state.pointee.fill, stash, UInt32(stashed)))
            if pushed > 0 {
                stashed -= pushed
                for index in 0..<stashed { stash[index] = stash[index + pushed] }  // forward: overlap-safe
            }
        }
        var first: UInt32 = 0
        let taken = Int(sluice_xdp_cons_peek(&state.pointee.rx, UInt32(items.count), &first))
        guard taken > 0 else { return 0 }
        let area = UnsafeRawPointer(state.pointee.area!)
        var timestamp = timespec()
        clock_gettime(CLOCK_REALTIME, &timestamp)
        let timestampNs = UInt64(timestamp.tv_sec) &* 1_000_000_000 &+ UInt64(timestamp.tv_nsec)
        let enqueueNs = sluice_monotonic_ns()
        var received = 0
        var skipped: UInt64 = 0
        var refills = 0
        for position in 0..<taken {
            let descriptor = sluice_xdp_desc_at(&state.pointee.rx, first &+ UInt32(position))!.pointee
            // The kernel's descriptor is checked before it is read: inside the UMEM, within one frame.
            let frameStart = descriptor.addr - descriptor.addr % UInt64(configuration.frameSizeBytes)
            guard descriptor.addr < areaBytes, UInt64(descriptor.len) <= areaBytes - descriptor.addr,
                  descriptor.addr + UInt64(descriptor.len) <= frameStart + UInt64(configuration.frameSizeBytes) else {
                counters.invalidDescriptors &+= 1
                if frameStart < areaBytes { refill[refills] = frameStart; refills += 1 }
                continue
            }
            // Copy mode: addr is the frame's start plus the kernel's headroom; the frame goes back whole.
            refill[refills] = frameStart
            refills += 1
            guard let buffer = pool.allocate() else {
                skipped &+= 1
                continue
            }
            let index = buffer.releaseIndex()
            copy(from: area + Int(descriptor.addr), length: Int(descriptor.len), into: index,
                 timestampNs: timestampNs, enqueueNs: enqueueNs)
            items[received] = UInt64(index)
            received += 1
        }
        sluice_xdp_cons_release(&state.pointee.rx, UInt32(taken))
        // Frames the fill ring has no room for yet (the kernel advances its consumer index after it
        // shows the RX descriptors) wait in the stash; with the kernel's, never more than were given.
        let refilled = Int(sluice_xdp_fill_burst(&state.pointee.fill, refill, UInt32(refills)))
        if refilled < refills {
            precondition(stashed + refills - refilled <= given, "more UMEM frames in flight than given")
            (stash + stashed).update(from: refill + refilled, count: refills - refilled)
            stashed += refills - refilled
            counters.refillsDeferred &+= UInt64(refills - refilled)
        }
        if sluice_xdp_needs_wakeup(&state.pointee.fill) != 0 {
            _ = sluice_xdp_kick_rx(state.pointee.fd)
            counters.fillWakeups &+= 1
        }
        counters.packets &+= UInt64(received)
        counters.poolExhausted &+= skipped
        statistics.publish(counters)
        return received
    }

    @inline(__always)
    private mutating func copy(from data: UnsafeRawPointer, length frameLength: Int, into index: UInt32,
                               timestampNs: UInt64, enqueueNs: UInt64) {
        let bytes = pool.bytes(at: index)
        let length = min(frameLength, bytes.count)
        if length < frameLength { counters.truncated &+= 1 }
        bytes.baseAddress!.copyMemory(from: data, byteCount: length)
        var metadata = PacketMetadata()
        metadata.length = UInt32(truncatingIfNeeded: length)
        metadata.wireLength = UInt32(truncatingIfNeeded: frameLength)
        metadata.timestampNs = timestampNs
        metadata.enqueueNs = enqueueNs
        metadata.linkType = 1  // DLT_EN10MB
        metadata.port = port
        pool.metadata(at: index).pointee = metadata
        counters.bytes &+= UInt64(length)
    }

    /// True if the RX ring holds frames now (no system call). Owner thread only.
    public var hasFrames: Bool {
        sluice_xdp_cons_ready(&socket.state.pointee.rx) > 0
    }

    /// Blocking receive for callers outside a pipeline: a burst if frames are ready, else one poll()
    /// of at most `timeoutMs` and a burst then. Returns 0 on timeout. Owner thread only.
    public mutating func receive(into items: UnsafeMutableBufferPointer<UInt64>, timeoutMs: Int32)
        throws(SyscallError) -> Int
    {
        let received = receiveBurst(into: items)
        if received > 0 { return received }
        let rc = sluice_xdp_poll_rx(socket.fd, timeoutMs)
        if rc == -Errno.interrupted.rawValue { return 0 }
        guard rc >= 0 else { throw SyscallError("poll(AF_XDP)", negatedErrno: rc) }
        return receiveBurst(into: items)
    }

    /// Reads XDP_STATISTICS into the counters and returns them. One system call.
    public mutating func refreshKernelCounters() throws(SyscallError) -> AFXDPRXCounters {
        try statistics.refreshKernelCounters()
        let kernel = statistics.snapshot()
        counters.kernelDropped = kernel.kernelDropped
        counters.kernelRingFull = kernel.kernelRingFull
        counters.fillRingEmpty = kernel.fillRingEmpty
        counters.kernelInvalid = kernel.kernelInvalid
        return counters
    }
}
