// Path: Tests/SluiceCoreTests/CoreBrokerTests.swift — which core moves between pipelines, and why.
import Testing
@testable import SluiceCore

@Suite struct CoreBrokerTests {
    let broker = CoreBroker()

    private func pipeline(_ name: String, weight: Double = 1, workers: Set<Int>, demand: Double,
                          backlogged: Bool = false, load: [Int: Double] = [:], movable: Bool = true) -> PipelineCoreDemand {
        PipelineCoreDemand(name: name, weight: weight, workers: workers, demandCores: demand, backlogged: backlogged,
                           loadByWorker: load, movable: movable)
    }

    @Test func aBusyPipelineGetsACoreFromOneWithSlack() throws {
        let quiet = pipeline("quiet", workers: [0, 1, 2], demand: 0.3, load: [0: 0.2, 1: 0.1, 2: 0])
        let busy = pipeline("busy", workers: [3], demand: 0.97)
        let move = try #require(broker.propose([quiet, busy], workerCount: 4))
        #expect(move.from == 0 && move.to == 1 && move.reason == .demand)
        #expect(move.worker == 2, "the giver's least loaded core")
        #expect(move.detail.contains("busy (demand 0.97 cores on 1") && move.detail.contains("quiet"), "\(move.detail)")
    }

    /// A pipeline placed by measured cost takes its cores as its own: it is not given a core another
    /// measured pipeline holds, even when that core is a spread pipeline's slack too.
    @Test func aMeasuredPipelineIsGivenNoCoreAnotherMeasuredOneHolds() throws {
        let spread = pipeline("spread", workers: [0, 1, 2], demand: 0.05)
        var busy = pipeline("busy", workers: [0], demand: 0.97)
        busy.measured = true
        busy.usableWorkers = 2
        var other = pipeline("other", workers: [2], demand: 0.1)
        other.measured = true
        let move = try #require(broker.propose([spread, busy, other], workerCount: 3))
        #expect(move.to == 1 && move.worker == 1, "core 2 is the other measured pipeline's: \(move)")
        other.workers = [1, 2]
        #expect(broker.propose([spread, busy, other], workerCount: 3) == nil, "every spare core is another measured one's")
        busy.measured = false
        #expect(try #require(broker.propose([spread, busy, other], workerCount: 3)).worker == 2)
    }

    @Test func aBackedUpInputCountsAsNeedEvenBelowTheHighWaterMark() throws {
        let quiet = pipeline("quiet", workers: [0, 1], demand: 0.1)
        let pushedBack = pipeline("pushed-back", workers: [2], demand: 0.5, backlogged: true)
        #expect(try #require(broker.propose([quiet, pushedBack], workerCount: 3)).to == 1)
    }

    @Test func nothingMovesWithoutNeedOrWithoutSlack() {
        // Nobody needs more.
        #expect(broker.propose([pipeline("a", workers: [0, 1], demand: 0.2), pipeline("b", workers: [2], demand: 0.5)],
                               workerCount: 3) == nil)
        // The only other pipeline cannot give a core and stay under its low-water mark.
        #expect(broker.propose([pipeline("a", workers: [0, 1], demand: 0.9), pipeline("b", workers: [2], demand: 1.0)],
                               workerCount: 3) == nil)
        // A pipeline with one core never gives it away.
        #expect(broker.propose([pipeline("a", workers: [0], demand: 0), pipeline("b", workers: [1], demand: 1.0)],
                               workerCount: 2) == nil)
        // Fixed pipelines neither give nor take.
        #expect(broker.propose([pipeline("a", workers: [0, 1], demand: 0, movable: false),
                                pipeline("b", workers: [2], demand: 1.0)], workerCount: 3) == nil)
        #expect(broker.propose([pipeline("a", workers: [0, 1], demand: 0),
                                pipeline("b", workers: [2], demand: 1.0, movable: false)], workerCount: 3) == nil)
    }

    /// A pipeline with as many cores as stages gains nothing from another; one holding more cores
    /// than stages gives the extra away whatever its load.
    @Test func coresGoOnlyWhereAStageCanUseThem() throws {
        let full = PipelineCoreDemand(name: "full", weight: 1, workers: [0, 1], demandCores: 2.0, backlogged: true,
                                      usableWorkers: 2)
        let quiet = pipeline("quiet", workers: [2, 3], demand: 0.1)
        #expect(broker.propose([full, quiet], workerCount: 4) == nil)
        let hoarder = PipelineCoreDemand(name: "hoarder", weight: 1, workers: [0, 1, 2], demandCores: 2.0,
                                         backlogged: true, usableWorkers: 2)
        let busy = pipeline("busy", workers: [3], demand: 1.0)
        let move = try #require(broker.propose([hoarder, busy], workerCount: 4))
        #expect(move.from == 0 && move.to == 1 && move.reason == .demand)
    }

    /// Sharing: a core the receiver already has is no gift; another one is.
    @Test func theGiftIsACoreTheReceiverDoesNotHave() throws {
        let quiet = pipeline("quiet", workers: [0, 1], demand: 0.05)
        let busy = pipeline("busy", workers: [0], demand: 1.0)
        let move = try #require(broker.propose([quiet, busy], workerCount: 2))
        #expect(move.worker == 1)
        let sharedOnly = pipeline("quiet", workers: [0, 1], demand: 0.05)
        #expect(broker.propose([sharedOnly, pipeline("busy", workers: [0, 1], demand: 2.0)], workerCount: 2) == nil)
    }

    @Test func whenEveryoneIsBusyCoresFollowTheWeights() throws {
        // Four cores, weights 3:1: shares 3 and 1. "heavy" holds 1, "light" holds 3; both busy.
        let heavy = pipeline("heavy", weight: 3, workers: [0], demand: 1.0)
        let light = pipeline("light", weight: 1, workers: [1, 2, 3], demand: 2.9, load: [1: 1, 2: 1, 3: 0.9])
        let move = try #require(broker.propose([heavy, light], workerCount: 4))
        #expect(move.from == 1 && move.to == 0 && move.reason == .weight && move.worker == 3)
        // At the shares (3 and 1) nothing moves, however busy both are.
        let settled = [pipeline("heavy", weight: 3, workers: [0, 1, 2], demand: 3.0),
                       pipeline("light", weight: 1, workers: [3], demand: 1.0)]
        #expect(broker.propose(settled, workerCount: 4) == nil)
        // Equal weights, 2 and 2 of 4 cores: no ping-pong.
        #expect(broker.propose([pipeline("a", workers: [0, 1], demand: 2.0), pipeline("b", workers: [2, 3], demand: 2.0)],
                               workerCount: 4) == nil)
    }

    /// A load shift: the core goes to the busy one, and after the load moves it comes back.
    @Test func aLoadShiftMovesTheCoreToWhereTheLoadIs() throws {
        var a = pipeline("a", workers: [0, 1], demand: 0.1)
        var b = pipeline("b", workers: [2], demand: 1.0)
        let first = try #require(broker.propose([a, b], workerCount: 3))
        #expect(first.from == 0 && first.to == 1 && first.worker == 1)
        a.workers.remove(first.worker)
        b.workers.insert(first.worker)
        // The load shifts from b to a.
        a.demandCores = 1.0
        b.demandCores = 0.2
        let back = try #require(broker.propose([a, b], workerCount: 3))
        #expect(back.from == 1 && back.to == 0 && back.reason == .demand)
    }
}
