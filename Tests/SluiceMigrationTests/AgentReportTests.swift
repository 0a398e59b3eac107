// Path: Tests/SluiceMigrationTests/AgentReportTests.swift — the agent's report decodes from the JSON the
// agent writes, and a missing field is an error, not a default.
import Foundation
import SluiceMigration
import Testing

@Suite struct AgentReportTests {
    static let line = #"""
    {"version":1,"bootID":"5c0e0d2e-8f43-4a8b-9d2a-1f0b8c3e7a11","uptimeSeconds":12.5,"cpuModelName":"QEMU Virtual CPU version 2.5+","cpuFlags":["fpu","sse2","sse4_2"],"requiredFlags":["sse4_2"],"vcpusOnline":1,"vcpusPresent":2,"memoryTotalKiB":245000,"memoryBlocksOnline":2,"memoryBlocksTotal":4,"memoryBlockBytes":134217728,"devices":["console","net"],"dirtiedPagesPerSecond":3.5,"workloadCounter":42}
    """#

    @Test func decodesTheAgentsLine() throws {
        let report = try JSONDecoder().decode(AgentReport.self, from: Data(Self.line.utf8))
        #expect(report.version == AgentReport.protocolVersion)
        #expect(report.requiredFlags == ["sse4_2"])
        #expect(report.vcpusPresent == 2 && report.vcpusOnline == 1)
        #expect(report.memoryBlockBytes == 128 << 20)
        #expect(report.workloadCounter == 42)
    }

    @Test func aMissingFieldIsAnError() {
        let truncated = Self.line.replacingOccurrences(of: #""vcpusOnline":1,"#, with: "")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(AgentReport.self, from: Data(truncated.utf8)) }
    }

    @Test func noCounterIsNil() throws {
        let noCounter = Self.line.replacingOccurrences(of: #","workloadCounter":42"#, with: "")
        #expect(try JSONDecoder().decode(AgentReport.self, from: Data(noCounter.utf8)).workloadCounter == nil)
    }
}
