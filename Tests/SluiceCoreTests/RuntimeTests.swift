import Testing

@testable import SluiceCore

@Suite(.serialized) struct RuntimeTests {
    @Test func emptyCoreListIsAnError() {
        #expect(throws: RuntimeError.noCores) { _ = try Runtime(configuration: .init(cores: [])) }
    }

    @Test func missingCoreIsAnError() {
        #expect(throws: RuntimeError.coreUnavailable(4095)) { _ = try Runtime(configuration: .init(cores: [4095])) }
        #expect(throws: RuntimeError.coreUnavailable(-1)) { _ = try Runtime(configuration: .init(cores: [-1])) }
    }

    @Test func duplicateCoreIsAnError() throws {
        let core = try testCores(1)[0]
        #expect(throws: RuntimeError.duplicateCore(core)) { _ = try Runtime(configuration: .init(cores: [core, core])) }
    }

    @Test func moreWorkersThanCoresIsAnError() throws {
        let allowed = try CPU.allowedCount()
        let cores = Array(0...allowed)
        #expect(throws: RuntimeError.tooManyWorkers(requested: allowed + 1, available: allowed)) {
            _ = try Runtime(configuration: .init(cores: cores))
        }
    }

    @Test func launchBeforeStartAndBadPlacementAreErrors() throws {
        let runtime = try Runtime(configuration: .init(cores: try testCores(1)))
        let tracker = SinkTracker()
        let pipeline = try makeCountingPipeline(
            "p", source: GeneratorSource(ratePerSecond: 0, totalCount: 10, payload: .sequence), tracker: tracker)
        #expect(throws: RuntimeError.notRunning) { try runtime.launch(pipeline, placement: [0, 0, 0]) }
        try runtime.start()
        defer { runtime.stop() }
        #expect(throws: RuntimeError.placementCount(given: 2, stages: 3)) {
            try runtime.launch(pipeline, placement: [0, 0])
        }
        #expect(throws: RuntimeError.noSuchWorker(stage: "source", worker: 5, workerCount: 1)) {
            try runtime.launch(pipeline, placement: [5, 0, 0])
        }
        try runtime.launch(pipeline, placement: [0, 0, 0])
        #expect(throws: RuntimeError.noSuchWorker(stage: "stage2", worker: 7, workerCount: 1)) {
            try runtime.move(pipeline.stages[1], toWorker: 7)
        }
        let stray = StageMove(pipeline: 1, stage: 0, fromWorker: 0, toWorker: 0)
        #expect(throws: RuntimeError.noSuchStage(pipeline: 1, stage: 0)) { try runtime.apply([stray], to: [pipeline]) }
        #expect(runtime.drain(timeoutNs: drainTimeoutNs))
    }

    @Test func workersRunOnTheirPinnedCore() throws {
        try withRuntime(.interrupt) { runtime, cores in
            let tracker = SinkTracker()
            let pipeline = try makeCountingPipeline(
                "pin", source: GeneratorSource(ratePerSecond: 0, totalCount: 1000, payload: .sequence), tracker: tracker)
            let last = cores.count - 1
            try runtime.launch(pipeline, placement: [0, 0, last])
            #expect(runtime.drain(timeoutNs: 10_000_000_000))
            #expect(tracker.lastCPU == cores[last])
        }
    }

    @Test func stopWithoutStartAndTwiceIsSafeAndARuntimeStartsOnce() throws {
        let runtime = try Runtime(configuration: .init(cores: try testCores(1)))
        runtime.stop()
        try runtime.start()
        runtime.stop()
        runtime.stop()
        #expect(throws: RuntimeError.alreadyStarted) { try runtime.start() }
    }

    @Test func aPipelineLaunchesOnce() throws {
        try withRuntime(.interrupt) { runtime, cores in
            let tracker = SinkTracker()
            let pipeline = try makeCountingPipeline(
                "once", source: GeneratorSource(ratePerSecond: 0, totalCount: 100, payload: .sequence), tracker: tracker)
            try runtime.launch(pipeline, placement: [0, 0, 0])
            #expect(throws: RuntimeError.alreadyLaunched(pipeline: "once")) {
                try runtime.launch(pipeline, placement: [cores.count - 1, 0, 0])
            }
            #expect(runtime.drain(timeoutNs: drainTimeoutNs))
            #expect(tracker.received == 100)
        }
    }

    /// Back-to-back launches count stages still on their way, so the bound is a typed error.
    @Test func stageBoundHoldsAcrossLaunches() throws {
        try withRuntime(.interrupt) { runtime, _ in
            let tracker = SinkTracker()
            let stagesEach = Limits.pipelineStageCountMax
            var launched = 0
            var refused = false
            for index in 0..<(Limits.stagesPerWorkerMax / stagesEach + 1) {
                let pipeline = try makeCountingPipeline(
                    "wide\(index)", source: GeneratorSource(ratePerSecond: 0, totalCount: 0, payload: .sequence),
                    relays: Array(repeating: PassThrough(), count: stagesEach - 2), tracker: tracker, ringCapacity: 64)
                do {
                    try runtime.launch(pipeline, placement: Array(repeating: 0, count: stagesEach))
                    launched += stagesEach
                } catch let error as RuntimeError {
                    #expect(error == .tooManyStages(worker: 0, max: Limits.stagesPerWorkerMax))
                    refused = true
                }
            }
            #expect(refused)
            #expect(launched <= Limits.stagesPerWorkerMax)
        }
    }

    @Test func movingAStageOfAnotherRuntimeIsATypedError() throws {
        let tracker = SinkTracker()
        let stray = try makeCountingPipeline(
            "stray", source: GeneratorSource(ratePerSecond: 0, totalCount: 1, payload: .sequence), tracker: tracker)
        try withRuntime(.interrupt) { runtime, _ in
            #expect(throws: RuntimeError.unknownStage(name: "stage2", position: 1)) { try runtime.move(stray.stages[1], toWorker: 0) }
        }
    }
}
