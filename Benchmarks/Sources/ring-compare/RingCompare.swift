// Path: Benchmarks/Sources/ring-compare/RingCompare.swift — every ring variant in one run, for same-run ratios.
//
// Interleaves the variants (rotating their order each run) so drift in the machine hits them alike,
// then prints a markdown table of medians and the ratios docs/BENCHMARKS.md quotes.
import ArgumentParser
import Foundation
import RingHarness

@main
struct RingCompare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ring throughput and round-trip latency: Swift wrapper, C ring (128/64), rte_ring.")

    @Option(help: "Runs per measurement; the table shows medians.")
    var runs = 5

    @Option(help: "Producer CPU and consumer CPU, as FIRST,SECOND.")
    var cpus = "0,1"

    @Option(help: "Items per throughput run with burst calls.")
    var burstItems = 100_000_000

    @Option(help: "Items per throughput run with single-item calls.")
    var singleItems = 20_000_000

    @Option(help: "Round trips per latency run.")
    var rounds = 500_000

    @Flag(help: "Run the threads at normal priority even if SCHED_FIFO is permitted.")
    var normalPriority = false

    @Flag(help: "Print every measurement to standard error.")
    var verbose = false

    static let capacities = [1024, 65536]
    static let callShapes: [RingCalls] = [.single, .burst(32)]

    func validate() throws {
        guard runs >= 1, burstItems >= 1, singleItems >= 1, rounds >= 100 else {
            throw ValidationError("runs, item counts and rounds must be positive (rounds at least 100)")
        }
        _ = try threadPlacement()
    }

    func run() throws {
        let placement = try threadPlacement()
        var results = Results()
        warmUp(placement)
        for runIndex in 0..<runs {
            // Rotate which variant goes first, so none always runs on a machine just warmed by another.
            let variants = RingVariant.allCases.rotated(by: runIndex)
            for capacity in Self.capacities {
                for calls in Self.callShapes {
                    for variant in variants {
                        let items = calls == .single ? singleItems : burstItems
                        let rig = try ThroughputRig(variant, calls: calls, capacity: capacity, placement: placement)
                        let rate = try rig.run(items: items) / 1e6
                        results.add(.throughput(calls, capacity: capacity), variant, rate)
                        log("\(variant.rawValue) \(calls) capacity \(capacity): \(format(rate)) Mitems/s")
                        pause()
                    }
                }
            }
            for variant in variants {
                let latency = try measureRoundTrip(variant, rounds: rounds, placement: placement)
                results.add(.roundTripP50, variant, latency.p50Ns)
                results.add(.roundTripP99, variant, latency.p99Ns)
                log("\(variant.rawValue) round trip: p50 \(format(latency.p50Ns)) ns, p99 \(format(latency.p99Ns)) ns")
                pause()
            }
        }
        print(report(results, placement))
    }

    /// One short run of every variant first: faults in pages and lets the CPUs reach their clocks.
    private func warmUp(_ placement: ThreadPlacement) {
        for variant in RingVariant.allCases {
            _ = try? ThroughputRig(variant, calls: .burst(32), capacity: 1024, placement: placement)
                .run(items: 1_000_000)
        }
    }

    /// A gap after each run: keeps real-time threads well under the kernel's RT budget (95% of each
    /// second), so throttling never stalls a run, and lets the rest of the machine move.
    private func pause() {
        usleep(50_000)
    }

    private func threadPlacement() throws -> ThreadPlacement {
        let parts = cpus.split(separator: ",").compactMap { Int($0) }
        guard parts.count == 2, parts[0] >= 0, parts[1] >= 0, parts[0] != parts[1] else {
            throw ValidationError("--cpus takes two different CPU numbers, as 0,1")
        }
        let pinned = ThreadPlacement.pinned(parts[0], parts[1])
        guard normalPriority else { return pinned }
        return ThreadPlacement(firstCPU: parts[0], secondCPU: parts[1], realtimePriority: 0)
    }

    private func log(_ line: String) {
        if verbose { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }

    private func report(_ results: Results, _ placement: ThreadPlacement) -> String {
        let variants = RingVariant.allCases
        var lines = [
            "Ring benchmarks: medians of \(runs) run(s), threads on \(placement); " +
                "\(formatCount(burstItems)) items per burst run, \(formatCount(singleItems)) per single run, " +
                "\(formatCount(rounds)) round trips per latency run.",
            "",
            "| Measure | " + variants.map(\.rawValue).joined(separator: " | ") + " | Swift/C 128 | Swift/rte | C 64/C 128 |",
            "|---|" + String(repeating: "---:|", count: variants.count + 3),
        ]
        for measure in Measure.all {
            let medians = variants.map { results.median(measure, $0) }
            let digits = measure.isLatency ? 0 : 1
            let ratios = [(RingVariant.swift, RingVariant.c128), (.swift, .rte), (.c64, .c128)].map { top, bottom in
                format(results.medianRatio(measure, top, bottom), digits: 2)
            }
            let cells = medians.map { format($0, digits: digits) } + ratios
            lines.append("| \(measure) | " + cells.joined(separator: " | ") + " |")
        }
        lines.append("")
        lines.append(
            "Throughput in Mitems/s (higher is better), latency in ns (lower is better); each ratio is the median of the runs' own ratios " +
                "(variants run back to back, so a machine that drifts between runs moves both sides). " +
                "Round trips are timed with the TSC, which steps by \(format(cycleCounterStepNs())) ns here.")
        lines.append(contentsOf: goalLines(results))
        return lines.joined(separator: "\n")
    }

    /// The issue's goals, checked at burst 32: Swift >= 0.9x the C ring and >= 1.2x rte_ring.
    private func goalLines(_ results: Results) -> [String] {
        var lines: [String] = []
        for capacity in Self.capacities {
            let measure = Measure.throughput(.burst(32), capacity: capacity)
            let versusC = results.medianRatio(measure, .swift, .c128)
            let versusRte = results.medianRatio(measure, .swift, .rte)
            let c64 = results.medianRatio(measure, .c64, .c128)
            lines.append(
                "Goals, burst 32, capacity \(capacity): Swift/C 128 = \(format(versusC, digits: 3)) " +
                    "(≥ 0.90: \(versusC >= 0.9 ? "met" : "missed")), Swift/rte = \(format(versusRte, digits: 3)) " +
                    "(≥ 1.20: \(versusRte >= 1.2 ? "met" : "missed")); C 64/C 128 = \(format(c64, digits: 3)) " +
                    "(\(c64 > 1 ? "64" : "128") faster).")
        }
        return lines
    }
}

/// One row of the table.
enum Measure: Hashable, CustomStringConvertible {
    case throughput(RingCalls, capacity: Int)
    case roundTripP50
    case roundTripP99

    static var all: [Measure] {
        RingCompare.capacities.flatMap { capacity in
            RingCompare.callShapes.map { Measure.throughput($0, capacity: capacity) }
        } + [.roundTripP50, .roundTripP99]
    }

    var isLatency: Bool {
        switch self {
        case .throughput: false
        case .roundTripP50, .roundTripP99: true
        }
    }

    var description: String {
        switch self {
        case .throughput(let calls, let capacity): "\(calls), capacity \(capacity) (Mitems/s)"
        case .roundTripP50: "round trip p50 (ns)"
        case .roundTripP99: "round trip p99 (ns)"
        }
    }
}

/// Every run's value, by row and variant, in run order (each run adds one value to every cell).
struct Results {
    private var values: [Measure: [RingVariant: [Double]]] = [:]

    mutating func add(_ measure: Measure, _ variant: RingVariant, _ value: Double) {
        values[measure, default: [:]][variant, default: []].append(value)
    }

    func median(_ measure: Measure, _ variant: RingVariant) -> Double {
        Self.median(values[measure]?[variant] ?? [])
    }

    /// Median over runs of top/bottom within each run: paired, so drift between runs cancels out.
    func medianRatio(_ measure: Measure, _ top: RingVariant, _ bottom: RingVariant) -> Double {
        let tops = values[measure]?[top] ?? []
        let bottoms = values[measure]?[bottom] ?? []
        return Self.median(zip(tops, bottoms).map { $0 / $1 })
    }

    private static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

extension Array {
    func rotated(by offset: Int) -> [Element] {
        guard !isEmpty else { return self }
        let split = offset % count
        return Array(self[split...] + self[..<split])
    }
}

/// A count in millions when it is whole millions ("100M"), else as it is.
func formatCount(_ value: Int) -> String {
    value % 1_000_000 == 0 ? "\(value / 1_000_000)M" : "\(value)"
}

/// `value` with `digits` decimals, or a dash if there is none.
func format(_ value: Double, digits: Int = 1) -> String {
    value.isFinite ? String(format: "%.\(digits)f", value) : "–"
}
