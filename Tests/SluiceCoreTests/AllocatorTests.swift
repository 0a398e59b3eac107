import Glibc
import Testing

@testable import SluiceCore

@Suite struct AllocatorTests {
    let allocator = ResourceAllocator(configuration: .init(workerCount: 2))

    @Test func weightsAloneSpreadStagesAndSizeRings() {
        let plan = allocator.plan([
            PipelineDemand(name: "heavy", weight: 3, stages: Array(repeating: StageLoad(), count: 3)),
            PipelineDemand(name: "light", weight: 1, stages: Array(repeating: StageLoad(), count: 3)),
        ])
        #expect(plan.placement.count == 2)
        #expect(plan.placement.allSatisfy { $0.allSatisfy { (0..<2).contains($0) } })
        #expect(abs(plan.workerLoad[0] - plan.workerLoad[1]) <= 1.0 + 1e-9)
        #expect(plan.ringCapacities[0].allSatisfy { $0.nonzeroBitCount == 1 })
        #expect(plan.ringCapacities[0][0] > plan.ringCapacities[1][0], "the heavier pipeline gets deeper rings")
        #expect(plan.poolBufferCounts[0] == plan.ringCapacities[0].reduce(0, +) + 32 * 3)
    }

    @Test func measuredLoadSizesRingsForTheBufferingTime() {
        let stages = [StageLoad(), StageLoad(serviceNsPerItem: 50, arrivalPerSecond: 2_000_000),
                      StageLoad(serviceNsPerItem: 50, arrivalPerSecond: 2_000_000, queueGrowthPerSecond: 10)]
        let plan = allocator.plan([PipelineDemand(name: "p", stages: stages)])
        #expect(plan.ringCapacities[0] == [2048, 4096], "2000 items per ms, doubled when the queue grows")
    }

    @Test func rebalanceMovesLoadOffTheBusiestWorker() {
        let light = StageLoad(serviceNsPerItem: 10, arrivalPerSecond: 1_000_000)   // 0.01 core
        let heavy = StageLoad(serviceNsPerItem: 300, arrivalPerSecond: 1_000_000)  // 0.3 core
        let current = Allocation(placement: [[0, 0, 0]], ringCapacities: [[1024, 1024]], poolBufferCounts: [0],
                                 workerLoad: [0, 0])
        let moves = allocator.rebalance(current, measured: [PipelineDemand(name: "p", stages: [light, heavy, heavy])])
        #expect(moves == [StageMove(pipeline: 0, stage: 1, fromWorker: 0, toWorker: 1)])
    }

    @Test func rebalanceKeepsEachPipelineOnItsWorkers() {
        let heavy = StageLoad(serviceNsPerItem: 300, arrivalPerSecond: 1_000_000)  // 0.3 core
        let three = ResourceAllocator(configuration: .init(workerCount: 3))
        // Pipeline 0 may use workers 0 and 1; worker 2 (idle, pipeline 1's) is not an option for it.
        let current = Allocation(placement: [[0, 0, 0], [2]], ringCapacities: [[1024, 1024], []], poolBufferCounts: [0, 0])
        let demands = [PipelineDemand(name: "a", stages: [heavy, heavy, heavy]), PipelineDemand(name: "b", stages: [StageLoad()])]
        let moves = three.rebalance(current, measured: demands, allowedWorkers: [[0, 1], [2]])
        #expect(!moves.isEmpty && moves.allSatisfy { $0.pipeline == 0 && $0.toWorker == 1 }, "\(moves)")
        // Unrestricted, the first move goes to the lowest of the equally idle workers 1 and 2; with
        // worker 1 busier than 2, to worker 2.
        #expect(three.rebalance(current, measured: demands).first?.toWorker == 1)
        let busyOne = Allocation(placement: [[0, 0, 1]], ringCapacities: [[1024, 1024]], poolBufferCounts: [0])
        #expect(three.rebalance(busyOne, measured: [demands[0]]).first?.toWorker == 2)
        // A frozen pipeline's stages stay.
        #expect(three.rebalance(current, measured: demands, frozen: [0]).isEmpty)
    }

    @Test func stagesThatDidNothingDoNotMove() {
        // A quiet interval: nothing measured anywhere, whatever the placement.
        let current = Allocation(placement: [[0, 1, 1, 1]], ringCapacities: [[1024, 1024, 1024]], poolBufferCounts: [0])
        let quiet = PipelineDemand(name: "p", weight: 4, stages: Array(repeating: StageLoad(), count: 4))
        #expect(allocator.rebalance(current, measured: [quiet]).isEmpty)
    }

    @Test func balancedLoadIsLeftAlone() {
        let load = StageLoad(serviceNsPerItem: 100, arrivalPerSecond: 1_000_000)
        let current = Allocation(placement: [[0, 1]], ringCapacities: [[1024]], poolBufferCounts: [0], workerLoad: [0, 0])
        #expect(allocator.rebalance(current, measured: [PipelineDemand(name: "p", stages: [load, load])]).isEmpty)
    }

    /// The allocator's moves, applied to a running pipeline, keep every item.
    @Test(.enabled(if: twoCPUsOrCI, "needs two CPUs (CI=true: fails without them) to move a stage between"))
    func appliedRebalanceKeepsEveryItem() throws {
        guard requireTwoCPUs() else { return }
        try withRuntime(.adaptive) { runtime, _ in
            let tracker = SinkTracker()
            let pipeline = try makeCountingPipeline(
                "rebalance",
                source: GeneratorSource(ratePerSecond: 5_000_000, totalCount: 1_000_000, payload: .sequence),
                relays: [PassThrough()], tracker: tracker)
            let plan = Allocation(placement: [[0, 0, 0]], ringCapacities: [[1024, 1024]], poolBufferCounts: [0],
                                  workerLoad: [0, 0])
            try runtime.launch(pipeline, placement: plan.placement[0])
            let before = pipeline.snapshot()
            usleep(50_000)
            let loads = StageLoad.between(before, pipeline.snapshot(), intervalNs: 50_000_000)
            var strict = ResourceAllocator.Configuration(workerCount: 2)
            strict.imbalanceThreshold = 0
            let moves = ResourceAllocator(configuration: strict)
                .rebalance(plan, measured: [PipelineDemand(name: "p", stages: loads)])
            #expect(!moves.isEmpty)
            try runtime.apply(moves, to: [pipeline])
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == 1_000_000)
            #expect(tracker.outOfOrder == 0)
        }
    }
}
