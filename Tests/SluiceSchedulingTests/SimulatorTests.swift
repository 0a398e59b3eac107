import Testing
@testable import SluiceScheduling

@Suite struct SimulatorTests {
    static func small(seed: UInt64 = 7) -> SimulationConfig {
        var config = SimulationConfig()
        config.hosts = 40
        config.vms = 800
        config.requests = 300
        config.measuredMinutes = 2 * ScheduleLimits.minutesPerDay
        config.seed = seed
        return config
    }

    /// The three goals, on a small world (40 hosts, 300 requests over two measured days after a
    /// week of history): no window missed that the oracle meets; 90 % of finishes within 10 % of their
    /// prediction; at most half the production traffic delayed that starting at once delays.
    @Test func goalsHoldOnASmallWorld() {
        let world = SimulationWorld(config: Self.small())
        var results: [SimulationPolicy: SimulationResult] = [:]
        for policy in SimulationPolicy.allCases {
            let result = Simulator.run(world, policy: policy)
            results[policy] = result
            print("simulation \(policy.rawValue): met \(result.met)/\(result.outcomes.count), refused \(result.refused), "
                  + "production delayed \(Int(result.productionDelayedBytes / 1e9)) GB, "
                  + "within 10 %: \(result.predictedWithin10Percent.map { String(Int($0 * 100)) } ?? "-") %, replans \(result.replans), "
                  + "\(Int(result.wallSeconds * 1000)) ms")
        }
        let sluice = results[.sluice]!, oracle = results[.oracle]!, atOnce = results[.startAtOnce]!
        let missed = zip(sluice.outcomes, oracle.outcomes).filter { !$0.met && $1.met }.map(\.0.requestID)
        #expect(missed.isEmpty, "windows the oracle met and Sluice missed: \(missed)")
        #expect((sluice.predictedWithin10Percent ?? 0) >= 0.9)
        #expect(atOnce.productionDelayedBytes > 0)
        #expect(sluice.productionDelayedBytes <= 0.5 * atOnce.productionDelayedBytes)
        #expect(!sluice.forecastMAPE.isEmpty)
    }

    @Test func theSameSeedGivesTheSameRun() {
        var config = Self.small(seed: 11)
        config.hosts = 12
        config.vms = 120
        config.requests = 60
        config.warmupMinutes = ScheduleLimits.minutesPerDay
        config.measuredMinutes = ScheduleLimits.minutesPerDay
        let first = Simulator.run(SimulationWorld(config: config), policy: .sluice)
        let second = Simulator.run(SimulationWorld(config: config), policy: .sluice)
        #expect(first.outcomes == second.outcomes)
        #expect(first.productionDelayedBytes == second.productionDelayedBytes)
        config.seed = 12
        let other = Simulator.run(SimulationWorld(config: config), policy: .sluice)
        #expect(other.outcomes != first.outcomes)
    }

    @Test func tracesFollowTheirStatedPattern() {
        var pattern = TracePattern()
        pattern.noise = 0
        pattern.burstsPerDay = 0
        pattern.phaseJitterMinutes = 0
        pattern.peak = 0.8...0.8
        let traces = ProductionTraces.generate(capacities: [1000], minutes: ScheduleLimits.minutesPerWeek, pattern: pattern, seed: 3)
        #expect(abs(traces.value(host: 0, minute: 3 * 60) - 150) < 1e-3)  // Monday 03:00: night
        #expect(abs(traces.value(host: 0, minute: 15 * 60) - 800) < 1e-3)  // Monday 15:00: the peak
        let saturday = 5 * ScheduleLimits.minutesPerDay + 15 * 60
        #expect(abs(traces.value(host: 0, minute: saturday) - (150 + 650 * 0.5)) < 1e-3)
    }
}

