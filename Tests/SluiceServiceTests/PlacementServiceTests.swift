// Path: Tests/SluiceServiceTests/PlacementServiceTests.swift — `sluice run` places a pipeline's stages by
// measured cost by default, and `sluice stats` says where they are and why.
import Foundation
import SluiceCore
import SluiceTestSupport
import Testing
@testable import SluiceService

@Suite struct PlacementServiceTests {
    /// The default placement: the hand-off is calibrated before the workers start, the pipeline starts
    /// run to completion, every packet arrives whatever the allocator then decides, and a move (if any)
    /// is logged with its reason.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func runPlacesStagesByMeasuredCostAndLosesNothing() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        guard let allowed = cpusOrRecordIssue(2) else { return }
        let child = try ChildProcess([binary, "run", "--set", "cores=[\(allowed[0]),\(allowed[1])]",
                                      "--set", "pipelines[0].source.pcap=\(samplePcap)",
                                      "--set", "pipelines[0].source.speed=", "--set", "pipelines[0].source.top_speed=true",
                                      "--set", "pipelines[0].source.loop=100",
                                      "--set", "pipelines[0].sink.pcap=", "--set", "pipelines[0].sink.discard=true",
                                      "--set", "storage=", "--set", "metrics.enabled=false",
                                      "--set", "shutdown.exit_when_drained=true"])
        let status = try #require(child.wait(timeoutMs: 120_000), "the replay job did not end")
        let lines = child.remainingLines(timeoutMs: 5_000)
        #expect(status == 0, "\(child.stderrText)")
        #expect(child.stderrText.contains("hand-off measured"), "\(child.stderrText)")
        #expect(child.stderrText.contains("cores=\"[\(allowed[0]), \(allowed[0]), \(allowed[0]), \(allowed[0])]\"")
                    || child.stderrText.contains("cores=[\(allowed[0]), \(allowed[0]), \(allowed[0]), \(allowed[0])]"),
                "a measured pipeline starts run to completion on its first core: \(child.stderrText)")
        if child.stderrText.contains("stages placed by measured cost") {
            #expect(child.stderrText.contains("why="), "\(child.stderrText)")
        }
        let row = try #require(lines.first { $0.hasPrefix("sample ") }, "\(lines)")
        let fields = row.split(separator: " ")
        #expect(fields[1] == "200000" && fields[2] == "200000" && fields[4] == "0" && fields.last == "ok", "\(row)")
    }

    @Test func statsShowWherePlacedStagesRunAndWhy() throws {
        let scrape = """
            # TYPE sluice_placement_changes_total counter
            sluice_placement_changes_total{pipeline="edge"} 1
            # TYPE sluice_placement_handoff_ns_per_item gauge
            sluice_placement_handoff_ns_per_item{pipeline="edge"} 21.5
            # TYPE sluice_placement_cores_used gauge
            sluice_placement_cores_used{pipeline="edge"} 2.0
            # TYPE sluice_placement_predicted_items_per_second gauge
            sluice_placement_predicted_items_per_second{pipeline="edge",cores_used="1"} 4000000.0
            sluice_placement_predicted_items_per_second{pipeline="edge",cores_used="2"} 7000000.0
            """
        let text = StatsTable.render(try MetricsText.parse(scrape))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("Placement") }, "\(text)")
        let row = try #require(lines.first { $0.hasPrefix("edge") }, "\(text)")
        #expect(row.split(separator: " ").map(String.init) == ["edge", "2", "1", "21.5", "7000000", "4000000"], "\(row)")
    }
}
