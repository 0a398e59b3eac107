// Path: Sources/SluiceCore/Pipeline/Pipeline.swift — a chain of stages joined by SPSC rings.
import CShims
import Synchronization

/// Why a pipeline could not be built.
public enum PipelineError: Error, Equatable {
    /// A pipeline needs a source and at least one more stage, and at most `max` stages.
    case invalidStageCount(Int, max: Int)
    /// One ring capacity per link is needed.
    case ringCapacityCount(given: Int, links: Int)
    case invalidBurstCount(Int, max: Int)
    case ring(RingError)
}

/// A built pipeline: its stages (source first) and the rings between them. Hand it to a
/// `Runtime` to run; its counters can be read from any thread.
public final class Pipeline: @unchecked Sendable {  // unchecked: stages are handed over by mailbox
    private static let nextID = Atomic<Int>(0)

    public let name: String
    public let id: Int
    /// Items that entered stage 1 (the source put them on the first ring).
    public let entered = Atomic<UInt64>(0)
    /// Set (release) by the source's worker once its body is exhausted and its last items are counted.
    public let sourceExhausted = Atomic<Bool>(false)
    /// Bursts that went from the source through every stage in one call chain, without a ring
    /// (run to completion on one worker, `RuntimeConfiguration.fusesRunToCompletion`). Written by the
    /// worker running the source, read by anyone.
    public let fusedBursts = Atomic<UInt64>(0)
    /// Set when a runtime launches the pipeline; a pipeline runs once.
    let launched = Atomic<Bool>(false)
    /// Stages in order, the source first. Set once by the builder.
    public internal(set) var stages: [StageTask] = []
    /// Capacity of each ring, in link order. Any thread; changed by `Runtime.resizeRing`.
    public internal(set) var ringCapacities: [Int] {
        get { capacities.withLock { $0 } }
        set { capacities.withLock { $0 = newValue } }
    }
    private let capacities = Mutex<[Int]>([])
    /// The NUMA node the builder put the rings on (nil: no node asked); resized rings go there too.
    public internal(set) var numaNode: Int?
    var links: [Link] = []
    /// The pool whose buffer indices this pipeline's rings carry, if the builder was told
    /// (`PipelineBuilder.carriesBuffers(of:)`): debug builds then account for its buffers at teardown.
    public internal(set) var bufferPool: BufferPool?

    init(name: String) {
        self.name = name
        self.id = Pipeline.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    deinit {
        #if DEBUG
        // Items still on the rings were in flight when the pipeline stopped (a live source stopped
        // without a drain): not leaked by any stage. Mark them so the pool's leak check, when the
        // pool goes away after the stages that hold its other buffers, counts only real leaks.
        // Nobody runs a stage any more (they are only referenced from here), so taking the
        // consumer's role on each ring is safe.
        guard let bufferPool else { return }
        var item: UInt64 = 0
        for link in links {
            while sluice_spsc_dequeue_burst(link.observer.ring, &item, 1, nil) == 1 {
                bufferPool.markInFlightAtTeardown(UInt32(truncatingIfNeeded: item))
            }
        }
        #endif
    }

    /// Items the last stage delivered.
    public var delivered: UInt64 {
        guard let sink = stages.last as? SinkTaskProtocol else { return 0 }
        return sink.deliveredCount
    }

    /// Items filtered by any stage (acquire: pairs with the sink's release, see `isDrained`).
    public var filtered: UInt64 {
        stages.reduce(0) { $0 &+ $1.counters.filtered.load(ordering: .acquiring) }
    }

    /// Items queued on the pipeline's rings now.
    public var queued: Int { links.reduce(0) { $0 + $1.observer.count } }

    /// True when the source is exhausted and every item that entered was delivered or filtered.
    /// Any thread: reads the exhausted flag (acquire) before `entered`, which the source counted first.
    /// The sink stores its `delivered` and `filtered` counts with release after each burst and they
    /// are loaded with acquire here, so a thread that sees true also sees all the sink body did.
    public var isDrained: Bool {
        guard sourceExhausted.load(ordering: .acquiring) else { return false }
        return delivered &+ filtered == entered.load(ordering: .acquiring)
    }

    /// Observers of the pipeline's rings, in link order (metrics, tests). Any thread; an observer
    /// taken before a resize keeps reading the replaced ring, which stays valid while it is held.
    public var ringObservers: [RingObserver] { links.map(\.observer) }
}

protocol SinkTaskProtocol { var deliveredCount: UInt64 { get } }

extension SinkTask: SinkTaskProtocol {
    var deliveredCount: UInt64 { delivered.load(ordering: .acquiring) }
}

/// Assembles a pipeline: one source, then stages; the last stage is the sink.
/// `build` makes the rings (one per link, capacities from the caller or a `ResourceAllocator`).
public struct PipelineBuilder {
    public let name: String
    public let burstCount: Int
    private var source: (any SourceBody)?
    private var sourceName = "source"
    private var stages: [(name: String, body: any StageBody)] = []
    private var bufferPool: BufferPool?

    public init(name: String, burstCount: Int = 32) {
        self.name = name
        self.burstCount = burstCount
    }

    public mutating func source(_ body: some SourceBody, name: String = "source") {
        source = body
        sourceName = name
    }

    public mutating func stage(_ body: some StageBody, name: String? = nil) {
        stages.append((name ?? "stage\(stages.count + 2)", body))
    }

    /// Declares that the pipeline's items are buffer indices of `pool`, which serves no other
    /// pipeline. Debug builds then check, when the pool goes away after the pipeline, that every
    /// buffer came back: one neither free nor in flight on a ring at the pipeline's teardown is a
    /// leak and traps with the count (double frees trap at the free in any case).
    public mutating func carriesBuffers(of pool: BufferPool) {
        bufferPool = pool
    }

    /// Stages so far, the source included.
    public var stageCount: Int { (source == nil ? 0 : 1) + stages.count }

    /// Builds the pipeline with one ring per link (`ringCapacities.count == stageCount - 1`),
    /// on `numaNode` when given.
    public func build(ringCapacities: [Int], numaNode: Int? = nil) throws(PipelineError) -> Pipeline {
        guard let source, !stages.isEmpty, stageCount <= Limits.pipelineStageCountMax else {
            throw .invalidStageCount(stageCount, max: Limits.pipelineStageCountMax)
        }
        guard ringCapacities.count == stages.count else {
            throw .ringCapacityCount(given: ringCapacities.count, links: stages.count)
        }
        guard burstCount > 0, burstCount <= Limits.burstCountMax else {
            throw .invalidBurstCount(burstCount, max: Limits.burstCountMax)
        }
        var producers: [RingProducerBox] = []
        var consumers: [RingConsumerBox] = []
        let pipeline = Pipeline(name: name)
        for capacity in ringCapacities {
            do {
                let ends = try makeRing(capacity: capacity, numaNode: numaNode)
                pipeline.links.append(Link(observer: ends.producer.observer))
                producers.append(RingProducerBox(ends.producer))
                consumers.append(RingConsumerBox(ends.consumer))
            } catch { throw .ring(error) }
        }
        pipeline.ringCapacities = ringCapacities
        pipeline.numaNode = numaNode
        if let bufferPool {
            pipeline.bufferPool = bufferPool
            bufferPool.armLeakCheck()
        }
        var tasks: [StageTask] = [
            makeSourceTask(source, output: producers[0].take(), pipeline: pipeline, link: pipeline.links[0])
        ]
        for (offset, stage) in stages.enumerated() {
            let position = offset + 1
            let upstreamRings = pipeline.links[0..<position].map(\.observer.ring)
            let upstreamCounters = tasks.map(\.counters)
            let input = consumers[offset].take()
            if position == stages.count {
                tasks.append(makeSinkTask(stage.body, input: input, name: stage.name, position: position,
                                          pipeline: pipeline, upstreamRings: upstreamRings,
                                          upstreamCounters: upstreamCounters))
            } else {
                tasks.append(makeRelayTask(stage.body, input: input, output: producers[position].take(),
                                           name: stage.name, position: position, pipeline: pipeline,
                                           upstreamRings: upstreamRings, upstreamCounters: upstreamCounters))
            }
        }
        pipeline.stages = tasks
        return pipeline
    }

    // Generic helpers: passing `any SourceBody` / `any StageBody` opens the existential into a generic
    // task. Swift does not specialise at run time, so each burst makes one witness-table call into
    // the body (not one per item); the body's own loop over the burst is compiled for its type.
    private func makeSourceTask<Body: SourceBody>(_ body: Body, output: consuming RingProducer, pipeline: Pipeline,
                                                  link: Link) -> StageTask {
        SourceTask(body: body, output: output, name: sourceName, pipeline: pipeline, outputLink: link,
                   burstCount: burstCount)
    }

    private func makeRelayTask<Body: StageBody>(
        _ body: Body, input: consuming RingConsumer, output: consuming RingProducer, name: String, position: Int,
        pipeline: Pipeline, upstreamRings: [OpaquePointer], upstreamCounters: [StageCounters]
    ) -> StageTask {
        RelayTask(body: body, input: input, output: output, name: name, position: position, pipeline: pipeline,
                  inputLink: pipeline.links[position - 1], outputLink: pipeline.links[position],
                  burstCount: burstCount, upstreamRings: upstreamRings, upstreamCounters: upstreamCounters)
    }

    private func makeSinkTask<Body: StageBody>(
        _ body: Body, input: consuming RingConsumer, name: String, position: Int, pipeline: Pipeline,
        upstreamRings: [OpaquePointer], upstreamCounters: [StageCounters]
    ) -> StageTask {
        SinkTask(body: body, input: input, name: name, position: position, pipeline: pipeline,
                 inputLink: pipeline.links[position - 1], burstCount: burstCount, upstreamRings: upstreamRings,
                 upstreamCounters: upstreamCounters)
    }
}

/// Holds a ring end between creation and hand-over to its task (arrays cannot hold ~Copyable values).
private final class RingProducerBox {
    private var end: RingProducer?
    init(_ end: consuming RingProducer) { self.end = consume end }
    func take() -> RingProducer { end.take()! }
}

private final class RingConsumerBox {
    private var end: RingConsumer?
    init(_ end: consuming RingConsumer) { self.end = consume end }
    func take() -> RingConsumer { end.take()! }
}
