// Path: Sources/SluiceMigration/GuestSurvey.swift — what the template needs to know about a running guest:
// its agent's report and the dirty rate its host measures.

extension VMDescription {
    /// Describes `guest` for a template: its agent's report (within `agentTimeout`), its spec's CPU model and
    /// shape and devices (`devices`, else its spec's `deviceDrivers`), and, when `dirtyRateSeconds` > 0, the
    /// dirty rate QEMU measures over that many seconds.
    public static func survey(
        _ guest: RunningGuest, connectAgent: GuestAgentConnector, dirtyRateSeconds: Int = 1,
        agentTimeout: Duration = .seconds(30), devices: [String]? = nil
    ) async throws -> VMDescription {
        let agent = try await connectAgent(guest.agentSocketPath, agentTimeout)
        let answer: Result<AgentReport, any Error>
        do { answer = .success(try await agent.report()) } catch { answer = .failure(error) }
        await agent.close()
        let dirty = dirtyRateSeconds > 0 ? try await measureDirtyRate(guest.qmp, seconds: dirtyRateSeconds) : nil
        return VMDescription(name: guest.name, report: try answer.get(), cpuModel: guest.spec.cpuModel,
                             shape: guest.spec.shape, devices: devices ?? guest.spec.deviceDrivers, hostDirtyBytesPerSecond: dirty)
    }
}

/// The guest's dirty rate as QEMU measures it (`calc-dirty-rate` over `seconds`, 1...60), bytes per second.
/// Blocks (asynchronously) for the measurement.
public func measureDirtyRate(_ qmp: QMPClient, seconds: Int) async throws(QMPError) -> UInt64 {
    try await qmp.calcDirtyRate(seconds: seconds)
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: .seconds(seconds + 10))
    try? await Task.sleep(for: .seconds(seconds))
    while true {
        let info = try await qmp.queryDirtyRate()
        if info.status == "measured", let mib = info.dirtyRateMiBPerSecond { return UInt64(max(0, mib)) << 20 }
        if clock.now >= deadline {
            throw .timeout(command: "query-dirty-rate until measured (last \(info.status))", afterMs: Int64(seconds + 10) * 1000)
        }
        try? await Task.sleep(for: .milliseconds(100))
    }
}
