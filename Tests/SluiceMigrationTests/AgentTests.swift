// Path: Tests/SluiceMigrationTests/AgentTests.swift — the migration agent in a real guest (QEMU, tcg):
// its report matches how the guest was started, bad requests are answered and survived, the host may
// disconnect and reconnect, and hot-added vCPUs and memory come online through `online()`.
import Foundation
import SluiceMigration
import SluiceMigrationTestSupport
import Testing

@Suite(.serialized, .enabled(if: MigrationTestEnvironment.skipReason == nil, "\(MigrationTestEnvironment.skipReason ?? "")"))
struct AgentTests {
    /// Boots a guest, waits for its agent, runs `body`, and always kills QEMU. On failure the serial log's
    /// end is attached to the test's output.
    static func withGuest(
        _ configuration: TestGuest.Configuration = TestGuest.Configuration(),
        _ body: (TestGuest, inout AgentChannel) throws -> Void
    ) throws {
        let guest = try TestGuest(configuration, image: try GuestImage.prepared())
        defer { guest.stop() }
        do {
            var channel = try guest.waitForAgent()
            print("AgentTests: agent ready \(ContinuousClock.now - guest.startedAt) after QEMU started (tcg)")
            try body(guest, &channel)
        } catch {
            Issue.record("guest failed: \(error)\n--- serial (end) ---\n\(guest.serialLog.suffix(2000))\n--- QEMU stderr ---\n\(guest.qemuStderr)")
            throw error
        }
    }

    @Test func reportMatchesHowTheGuestWasStarted() throws {
        var configuration = TestGuest.Configuration()
        configuration.vcpus = 1
        configuration.memoryMiB = 256
        // sse2 is in every x86-64 CPU model; avx512f is not in qemu64: the agent leaves it out and logs it.
        configuration.requiredFlags = ["sse2", "avx512f"]
        try Self.withGuest(configuration) { guest, channel in
            let first = try channel.report()
            #expect(first.version == AgentReport.protocolVersion)
            #expect(first.vcpusOnline == 1)
            #expect(first.vcpusPresent == 1)
            // 256 MiB minus what the kernel keeps for itself: between 100 MiB and 256 MiB.
            #expect(first.memoryTotalKiB > 100 << 10 && first.memoryTotalKiB <= 256 << 10)
            #expect(first.memoryBlockBytes == 128 << 20)
            #expect(first.memoryBlocksOnline == first.memoryBlocksTotal)
            #expect(first.cpuFlags.contains("sse2"))
            #expect(first.requiredFlags == ["sse2"])
            #expect(first.devices.contains("console"))
            #expect(!first.bootID.isEmpty)
            let counterBefore = try #require(first.workloadCounter)

            Thread.sleep(forTimeInterval: 1.5)
            let second = try channel.report()
            #expect(second.bootID == first.bootID)
            #expect(try #require(second.workloadCounter) > counterBefore)
            #expect(second.uptimeSeconds > first.uptimeSeconds)
            #expect(guest.serialLog.contains("required flag avx512f is not in this CPU's flags"))
        }
    }

    @Test func badRequestsAreAnsweredAndTheAgentKeepsServing() throws {
        try Self.withGuest { _, channel in
            let cases: [(String, String)] = [
                ("garbage", #"{"id":null,"ok":false,"error":"not a JSON object"}"#),
                (#"{"id":7,"op":"reboot"}"#, #"{"id":7,"ok":false,"error":"unknown op 'reboot' (ping, report, online)"}"#),
                (#"{"id":8}"#, #"{"id":8,"ok":false,"error":"no op"}"#),
                (#"{"op":"ping"}"#, #"{"id":null,"ok":false,"error":"no integer id"}"#),
                (#"{"id":9,"op":"ping""#, #"{"id":9,"ok":false,"error":"expected ',' or '}'"}"#),
                (#"{"id":10,"op":{"nested":1}}"#, #"{"id":10,"ok":false,"error":"unsupported value (only strings, integers, true, false, null)"}"#),
                (String(repeating: "x", count: 5000), #"{"id":null,"ok":false,"error":"request line longer than 4096 bytes"}"#),
            ]
            for (request, expected) in cases {
                #expect(try channel.exchangeRaw(request) == expected, "request \(request.prefix(40))")
            }
            try channel.ping()
            #expect(try channel.report().vcpusOnline == 1)
        }
    }

    @Test func theHostMayDisconnectAndReconnect() throws {
        try Self.withGuest { guest, channel in
            let before = try channel.report()
            for round in 1...3 {
                // A request whose reply is never read, then hang up: the agent's reply goes nowhere.
                _ = try? channel.ping(timeout: .zero)
                try channel.reconnect(deadline: .now + .seconds(30))
                let after = try channel.report()
                #expect(after.bootID == before.bootID, "round \(round)")
                let counterBefore = try #require(before.workloadCounter)
                let counterAfter = try #require(after.workloadCounter)
                #expect(counterAfter >= counterBefore, "round \(round)")
            }
            #expect(!guest.serialLog.contains("agent exited"))
        }
    }

    @Test func aTimeoutNamesTheOperationAndALateReplyIsSkipped() throws {
        try Self.withGuest { _, channel in
            // The agent answers in milliseconds, but not in zero: the first call times out, its reply
            // arrives later and the next call skips it by id.
            let skippedBefore = channel.staleRepliesSkipped
            do {
                try channel.ping(timeout: .zero)
                Issue.record("a zero timeout did not time out")
            } catch {
                #expect(error as? AgentError == .timeout(op: "ping", afterMs: 0))
            }
            try channel.ping()
            #expect(channel.staleRepliesSkipped == skippedBefore + 1)
        }
    }

    @Test func theAgentAnswersWhileTheGuestDirtiesMemory() throws {
        var configuration = TestGuest.Configuration()
        configuration.dirtyMiB = 64
        try Self.withGuest(configuration) { guest, channel in
            let first = try channel.report()
            Thread.sleep(forTimeInterval: 2)
            let second = try channel.report()
            let counterBefore = try #require(first.workloadCounter)
            let counterAfter = try #require(second.workloadCounter)
            #expect(counterAfter > counterBefore)
            #expect(guest.serialLog.contains("sluice-agent: dirtying 64 MiB"))
            #expect(!guest.serialLog.contains("dirtying workload exited"))
        }
    }

    @Test func aHotAddedDIMMComesOnlineThroughTheAgent() throws {
        try Self.withGuest { guest, channel in
            let before = try channel.report()
            try guest.qmp([
                #"{"execute":"object-add","arguments":{"qom-type":"memory-backend-ram","id":"m1","size":134217728}}"#,
                #"{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"d1","memdev":"m1"}}"#,
            ])
            // ACPI tells the guest asynchronously; the kernel does not online the block by itself.
            let seen = try Self.waitForReport(&channel) { $0.memoryBlocksTotal > before.memoryBlocksTotal }
            #expect(seen.memoryBlocksTotal == before.memoryBlocksTotal + 1)
            #expect(seen.memoryBlocksOnline == before.memoryBlocksOnline)

            let after = try channel.online()
            #expect(after.memoryBlocksOnline == after.memoryBlocksTotal)
            #expect(after.memoryTotalKiB >= before.memoryTotalKiB + (120 << 10))
            #expect(after.bootID == before.bootID)
            #expect(after.vcpusOnline == 1)
        }
    }

    @Test func aHotAddedVCPUComesOnlineThroughTheAgent() throws {
        try Self.withGuest { guest, channel in
            let before = try channel.report()
            #expect(before.vcpusOnline == 1)
            // A free CPU slot, as QEMU describes it, then the vCPU in it.
            let slots = try guest.qmp([#"{"execute":"query-hotpluggable-cpus"}"#])[0]
            let free = try #require(Self.firstFreeCPUSlot(slots))
            try guest.qmp([
                #"{"execute":"device_add","arguments":{"driver":"\#(free.driver)","id":"cpu1","socket-id":\#(free.socketID),"core-id":\#(free.coreID),"thread-id":\#(free.threadID)}}"#,
            ])
            let seen = try Self.waitForReport(&channel) { $0.vcpusPresent >= 2 }
            #expect(seen.vcpusPresent == 2)
            #expect(seen.vcpusOnline == 1)

            // The agent waits up to 60 s for the kernel's bring-up, then answers either way.
            let started = ContinuousClock.now
            let after: AgentReport
            do {
                after = try channel.online()
            } catch {
                // The stalled bring-up can also outlast the agent's answer (seen once: 61 s, then silence).
                print("AgentTests: online() of a hot-added vCPU failed after \(ContinuousClock.now - started): \(error)")
                withKnownIssue("bringing a hot-added vCPU up under tcg takes 13-20 s and sometimes never ends (docs/MIGRATION.md)",
                               isIntermittent: true) {
                    throw error
                }
                return
            }
            let took = ContinuousClock.now - started
            print("AgentTests: online() of a hot-added vCPU took \(took)")
            #expect(after.vcpusPresent == 2)
            #expect(after.bootID == before.bootID)
            if after.vcpusOnline == 2 {
                // The agent answers once the kernel is done. sysfs can already count the vCPU online while
                // its bring-up still stalls the guest (seen once: online() took 61 s, then a 10 s ping failed).
                do {
                    try channel.ping(timeout: .seconds(30))
                } catch {
                    print("AgentTests: ping after a vCPU bring-up failed: \(error)")
                    // Only a bring-up that already stalled (13 s and more) is the known issue.
                    guard took > .seconds(13) else { throw error }
                    withKnownIssue("bringing a hot-added vCPU up under tcg takes 13-20 s and sometimes never ends (docs/MIGRATION.md)",
                                   isIntermittent: true) {
                        throw error
                    }
                }
            } else {
                // The bring-up stalled: the guest nearly stops meanwhile, so even a ping may not be answered
                // in time. A known intermittent issue of this kernel under tcg (docs/MIGRATION.md).
                withKnownIssue("bringing a hot-added vCPU up under tcg takes 13-20 s and sometimes never ends (docs/MIGRATION.md)",
                               isIntermittent: true) {
                    Issue.record("vCPUs online \(after.vcpusOnline)/2 after online()")
                    try channel.ping(timeout: .seconds(30))
                }
            }
        }
    }

    /// Reports every half second until `condition` holds or 30 s pass; returns the last report.
    static func waitForReport(_ channel: inout AgentChannel, until condition: (AgentReport) -> Bool) throws -> AgentReport {
        let deadline = ContinuousClock.now + .seconds(30)
        var report = try channel.report()
        while !condition(report) && ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.5)
            report = try channel.report()
        }
        return report
    }

    /// The first slot of `query-hotpluggable-cpus` without a `qom-path` (no CPU in it yet).
    static func firstFreeCPUSlot(_ reply: String) -> (driver: String, socketID: Int, coreID: Int, threadID: Int)? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any],
              let slots = object["return"] as? [[String: Any]] else { return nil }
        for slot in slots where slot["qom-path"] == nil {
            guard let driver = slot["type"] as? String, let props = slot["props"] as? [String: Any] else { continue }
            return (driver, props["socket-id"] as? Int ?? 0, props["core-id"] as? Int ?? 0, props["thread-id"] as? Int ?? 0)
        }
        return nil
    }
}

/// What needs no guest: errors before any agent is reached.
@Suite struct AgentChannelTests {
    @Test func nothingListeningIsASystemErrorThatNamesTheSocket() {
        do {
            _ = try AgentChannel(socketPath: "/tmp/sluice-no-such-agent.sock")
            Issue.record("connected to nothing")
        } catch {
            guard case .system(let syscall) = error else { Issue.record("unexpected \(error)"); return }
            #expect(syscall.operation == "connect(/tmp/sluice-no-such-agent.sock)")
            #expect(syscall.errno == .noSuchFileOrDirectory)
        }
        let long = "/tmp/" + String(repeating: "a", count: 200)
        #expect(throws: AgentError.socketPathTooLong(long, maxBytes: 107)) { _ = try AgentChannel(socketPath: long) }
    }
}
