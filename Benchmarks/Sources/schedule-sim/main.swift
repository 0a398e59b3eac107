// schedule-sim: one generated world (hosts, traces, VMs, requests) run under each policy; prints a table
// row per policy and one JSON line per policy (for scripts/bench-scheduling.sh). Single-threaded: the
// wall time of a policy is its CPU time on one core.
import ArgumentParser
import SluiceScheduling

@main
struct ScheduleSim: ParsableCommand {
    @Option(help: "Hosts.") var hosts = 1000
    @Option(help: "VMs.") var vms = 20_000
    @Option(help: "Migration requests in the measured span.") var requests = 5000
    @Option(help: "Days of history before the measured span.") var warmupDays = 7
    @Option(help: "Days measured.") var days = 7
    @Option(help: "Seed of the world.") var seed: UInt64 = 1
    @Option(help: "Policies, comma-separated: sluice,oracle,start-at-once,off-peak.") var policies = "sluice,oracle,start-at-once,off-peak"
    @Option(help: "Forecast confidence Sluice plans at.") var confidence = 0.9

    mutating func run() throws {
        var config = SimulationConfig()
        config.hosts = hosts
        config.vms = vms
        config.requests = requests
        config.warmupMinutes = warmupDays * ScheduleLimits.minutesPerDay
        config.measuredMinutes = days * ScheduleLimits.minutesPerDay
        config.seed = seed
        config.confidence = confidence
        let chosen = try policies.split(separator: ",").map { name -> SimulationPolicy in
            guard let policy = SimulationPolicy(rawValue: String(name)) else {
                throw ValidationError("--policies: unknown policy '\(name)'")
            }
            return policy
        }
        let world = SimulationWorld(config: config)
        var results: [SimulationPolicy: SimulationResult] = [:]
        print("policy          met     refused  delayed GB  within10%  replans  MAPE(p50)  wall s")
        for policy in chosen {
            let result = Simulator.run(world, policy: policy)
            results[policy] = result
            let mape = result.forecastMAPE.sorted()
            let median = mape.isEmpty ? "-" : String(format3(mape[mape.count / 2]))
            print(pad(policy.rawValue, 15), pad("\(result.met)/\(result.outcomes.count)", 8), pad("\(result.refused)", 8),
                  pad(format1(result.productionDelayedBytes / 1e9), 11),
                  pad(result.predictedWithin10Percent.map { format1($0 * 100) } ?? "-", 10), pad("\(result.replans)", 8),
                  pad(median, 10), format1(result.wallSeconds))
        }
        if let sluice = results[.sluice], let oracle = results[.oracle] {
            let missed = zip(sluice.outcomes, oracle.outcomes).filter { !$0.met && $1.met }
            print("windows the oracle met and Sluice missed: \(missed.count)")
            for (mine, theirs) in missed.prefix(5) {
                let request = world.requests[mine.requestID]
                print("  request \(mine.requestID): window \(request.earliestStart)-\(request.deadline), "
                      + "\(Int(request.demand.memoryBytes / 1_073_741_824)) GiB, dirty \(Int(request.demand.dirtyBytesPerSecond / 1e6)) MB/s; "
                      + "Sluice: \(mine.refused ? "refused: " + mine.refusal.joined(separator: "; ") : "started \(mine.start.map(String.init) ?? "-") finished \(mine.finishSecond.map { String(Int($0 / 60)) } ?? "-")"); "
                      + "oracle started \(theirs.start.map(String.init) ?? "-")")
            }
        }
        if let sluice = results[.sluice], let atOnce = results[.startAtOnce], atOnce.productionDelayedBytes > 0 {
            print("production delayed, Sluice / start-at-once: \(format3(sluice.productionDelayedBytes / atOnce.productionDelayedBytes))")
        }
        for policy in chosen {
            let r = results[policy]!
            print("{\"policy\":\"\(policy.rawValue)\",\"met\":\(r.met),\"requests\":\(r.outcomes.count),\"refused\":\(r.refused),"
                  + "\"delayed_bytes\":\(r.productionDelayedBytes),\"within10\":\(r.predictedWithin10Percent ?? -1),"
                  + "\"replans\":\(r.replans),\"wall_s\":\(r.wallSeconds)}")
        }
    }
}

func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text : text + String(repeating: " ", count: width - text.count) }
func format1(_ x: Double) -> String { String(Double(Int((x * 10).rounded())) / 10) }
func format3(_ x: Double) -> String { String(Double(Int((x * 1000).rounded())) / 1000) }
