// Path: Tests/SluiceServiceTests/ServiceProcessTests.swift — `sluice run` from its binary: a capture
// replayed mid-stream and storage writers when SIGTERM arrives (nothing acknowledged lost, the
// drained packets all in the output file), the metrics endpoint's counters, `sluice stats`, the
// embedded default, and bad configs.
import Foundation
import Glibc
import SluiceCore
import SluicePageStore
import SluiceService
import SluiceStorageServer
import SluiceTestSupport
import Synchronization
import Testing

/// Payload of writer `writer`'s write number `sequence`: both numbers, then bytes derived from them.
func writerPayload(writer: UInt64, sequence: UInt64) -> [UInt8] {
    var payload = withUnsafeBytes(of: writer.littleEndian) { Array($0) } + withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
    for index in 16..<256 { payload.append(UInt8(truncatingIfNeeded: sequence &* 131 &+ writer &* 7 &+ UInt64(index))) }
    return payload
}

/// The last write a writer had acknowledged.
struct Acknowledged: Sendable {
    var sequence: UInt64 = 0
    var osn: UInt64 = 0
}

@Suite(.serialized) struct ServiceProcessTests {
    static let writerCount = 4

    @Test func sigtermMidStreamLosesNothingAcknowledged() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let paths = ScratchPaths("sigterm")
        defer { paths.remove() }
        // 30 loops of the 2000-packet sample at 4000 packets/s: 15 s of input, stopped after ~2 s.
        let yaml = """
            pipelines:
              - name: replay
                source: {pcap: "\(samplePcap)", rate: 4000, loop: 30}
                traffic: {weights: [1]}
                sink: {pcap: "\(paths.outputPcap)"}
            storage: {data: "\(paths.dataDirectory)", listen: "127.0.0.1:0"}
            metrics: {listen: "127.0.0.1:0"}
            """
        let service = try RunningService(binary: binary, yaml: yaml)
        let storage = try #require(service.storage)

        // Writers: writer w overwrites page w of object 1 until its connection fails.
        let setup = try StorageClient(host: storage.host, port: storage.port)
        _ = try setup.create(objectID: 1)
        let acknowledged = Mutex([Acknowledged](repeating: Acknowledged(), count: Self.writerCount))
        let finished = Atomic<Int>(0)
        for writer in 0..<Self.writerCount {
            // Threads of their own: the writers block on the network.
            Thread.detachNewThread {
                defer { finished.add(1, ordering: .releasing) }
                guard let client = try? StorageClient(host: storage.host, port: storage.port) else { return }
                defer { client.close() }
                var sequence: UInt64 = 1
                while sequence < 1_000_000 {
                    let payload = writerPayload(writer: UInt64(writer), sequence: sequence)
                    guard let osn = try? client.write(objectID: 1, pageIndex: UInt64(writer), payload: payload) else { return }
                    acknowledged.withLock { $0[writer] = Acknowledged(sequence: sequence, osn: osn) }
                    sequence += 1
                }
            }
        }
        // Five writes conditional on a page version that has since changed: five conflicts.
        let first = try setup.write(objectID: 1, pageIndex: 100, payload: [1])
        _ = try setup.write(objectID: 1, pageIndex: 100, payload: [2])
        for _ in 0..<5 {
            #expect(throws: StorageClientError.self) {
                _ = try setup.write(objectID: 1, pageIndex: 100, payload: [3], condition: .unmodifiedSince(first))
            }
        }
        let page = try setup.read(objectID: 1, pageIndex: 100)
        #expect(page.payload.first == 2)
        setup.close()

        usleep(1_000_000)
        let acknowledgedBeforeScrape = acknowledged.withLock { $0.reduce(0) { $0 + $1.sequence } }
        let samples = try service.scrape()
        #expect(samples.value("sluice_up") == 1)
        let packetsIn = try #require(samples.value("sluice_pipeline_packets_in_total", ["pipeline": "replay"]))
        #expect(packetsIn > 0 && packetsIn < 60_000, "mid-stream at the scrape: \(packetsIn)")
        // One render reads the stage's items before the pipeline's entered count (bumped first).
        let sourceItems = try #require(samples.value("sluice_stage_items_total", ["pipeline": "replay", "stage": "pcap-rx"]))
        #expect(sourceItems > 0 && sourceItems <= packetsIn, "\(sourceItems) items, \(packetsIn) entered")
        #expect(samples.value("sluice_ring_capacity", ["pipeline": "replay", "ring": "pcap-rx->classify"]) == 1024)
        #expect(samples.value("sluice_worker_utilisation", ["worker": "0"]) != nil)
        #expect((samples.value("sluice_stage_items_per_call", ["pipeline": "replay", "stage": "classify"]) ?? 0) >= 1)
        #expect(samples.value("sluice_traffic_share_target", ["port": "replay", "source": "0"]) != nil)
        #expect(samples.value("sluice_storage_conflicts_total", ["op": "writePages"]) == 5)
        #expect(samples.value("sluice_storage_requests_total", ["op": "writePages", "status": "conflict"]) == 5)
        let writesOK = try #require(samples.value("sluice_storage_requests_total", ["op": "writePages", "status": "ok"]))
        #expect(writesOK >= Double(acknowledgedBeforeScrape + 2), "\(writesOK) ok writes counted, \(acknowledgedBeforeScrape) acknowledged before")
        #expect(samples.value("sluice_storage_requests_total", ["op": "createObject", "status": "ok"]) == 1)
        #expect((samples.value("sluice_storage_latency_seconds", ["op": "writePages", "quantile": "0.99"]) ?? 0) > 0)
        #expect((samples.value("sluice_storage_group_commits_total") ?? 0) > 0)

        // `sluice stats` reads the same endpoint and prints the tables.
        let stats = try runCommand([binary, "stats", "--host", service.metrics.host, "--port", "\(service.metrics.port)"])
        #expect(stats.status == 0, "sluice stats: \(stats.stderr)")
        let table = stats.lines.joined(separator: "\n")
        #expect(table.contains("pcap-rx") && table.contains("classify") && table.contains("writePages"), "\(table)")

        let (status, lines) = try service.terminate()
        for _ in 0..<1000 where finished.load(ordering: .acquiring) < Self.writerCount { usleep(10_000) }
        #expect(finished.load(ordering: .acquiring) == Self.writerCount, "writers still blocked 10 s after the exit")
        #expect(status == 0, "exit \(status); stderr:\n\(service.child.stderrText)")
        let log = service.child.stderrText
        #expect(log.contains("stopping sources, draining pipelines"))
        #expect(log.contains("storage node closed, checkpoint written"))

        // The summary: every packet that entered was delivered, nothing left on a ring.
        let row = try #require(lines.first { $0.hasPrefix("replay ") }, "no summary row in \(lines)")
        let fields = row.split(separator: " ")
        let (entered, delivered, leftOnRings) = (Int(fields[1]) ?? -1, Int(fields[2]) ?? -1, Int(fields[4]) ?? -1)
        #expect(entered == delivered && leftOnRings == 0 && fields.last == "ok", "\(row)")
        #expect(entered >= Int(packetsIn) && entered < 60_000, "stopped mid-stream: \(row)")
        #expect(try pcapRecordCount(paths.outputPcap) == delivered)

        // Every acknowledged write is on disk: the page holds that write or a later one of the same writer.
        let reopened = try openStorageNode(dataDirectory: paths.dataDirectory)
        let final = acknowledged.withLock { $0 }
        for (writer, ack) in final.enumerated() {
            #expect(ack.sequence > 0, "writer \(writer) got no write acknowledged")
            let version = try reopened.node.read(objectID: 1, pageIndex: UInt64(writer))
            let head = version.payload.prefix(16)
            let sequence = head.suffix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            #expect(sequence >= ack.sequence, "writer \(writer): acknowledged \(ack.sequence), found \(sequence)")
            #expect(Array(version.payload.prefix(256)) == writerPayload(writer: UInt64(writer), sequence: sequence))
            #expect(version.pageOSN >= ack.osn)
            if sequence == ack.sequence { #expect(version.pageOSN == ack.osn) }
        }
        #expect(try reopened.node.read(objectID: 1, pageIndex: 100).payload.first == 2)
    }

    @Test func embeddedDefaultReplaysTheSampleAndServesStorage() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let paths = ScratchPaths("default")
        defer { paths.remove() }
        let child = try ChildProcess([binary, "run",
                                      "--set", "pipelines[0].source.pcap=\(samplePcap)",
                                      "--set", "pipelines[0].source.top_speed=true",
                                      "--set", "pipelines[0].source.speed=",
                                      "--set", "pipelines[0].sink.pcap=\(paths.outputPcap)",
                                      "--set", "storage.data=\(paths.dataDirectory)",
                                      "--set", "storage.listen=127.0.0.1:0", "--set", "metrics.listen=127.0.0.1:0",
                                      "--set", "shutdown.run_for_ms=3000"])
        let ready = try #require(child.readLine(timeoutMs: 60_000), "no ready line: \(child.stderrText)")
        #expect(ready.hasPrefix("sluice: ready metrics=127.0.0.1:") && ready.contains("storage=127.0.0.1:"))
        let status = try #require(child.wait(timeoutMs: 60_000), "run_for_ms did not end the service")
        #expect(status == 0, "\(child.stderrText)")
        let lines = child.remainingLines(timeoutMs: 5_000)
        #expect(lines.contains { $0.hasPrefix("sample ") && $0.contains(" 2000 ") && $0.hasSuffix("ok") }, "\(lines)")
        #expect(try pcapRecordCount(paths.outputPcap) == 2000)
        #expect(child.stderrText.contains("pipeline drained, sink flushed"))
    }

    @Test(arguments: [
        (["--set", "pipelines[0].source.speed=0"], "pipelines[0].source.speed: must be 1e-06...1000000000, got 0"),
        // Used to pass --check and then trap `sluice run` computing due times.
        (["--set", "pipelines[0].source.speed=1e-300"], "pipelines[0].source.speed: must be 1e-06...1000000000, got 1e-300"),
        (["--set", "pipelines[0].source.speed=", "--set", "pipelines[0].source.rate=1e-12"],
         "pipelines[0].source.rate: must be 0.001...1000000000, got 1e-12"),
        // Used to be read as core 1.
        (["--cores=-1"], "cores: '-1' is not a CPU number"),
        (["--set", "storage.listen=127.0.0.1"], "storage.listen: expected host:port"),
        (["--set", "pipelines[0].sinks.pcap=x"], "unknown key 'pipelines[0].sinks'"),
        (["--config", "/nonexistent/sluice.yaml"], "cannot read config /nonexistent/sluice.yaml"),
        (["--cores", "0,0"], "core 0 appears twice"),
        (["--log-level", "chatty"], "log_level: 'chatty' is not one of"),
        (["--cores", "1000"], "core 1000 is not one this process may use"),
    ])
    func badConfigsExitNonZeroNamingTheKey(arguments: [String], message: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let result = try runCommand([binary, "run"] + arguments + ["--check"], timeoutMs: 30_000)
        #expect(result.status == 2)
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
    }

    /// A part that cannot start (the storage port is taken) ends the service at once with exit 1,
    /// after stopping what had started.
    @Test func startupFailureExitsOne() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let paths = ScratchPaths("startup")
        defer { paths.remove() }
        let blocker = try RunningService(binary: binary, yaml: """
            storage: {data: "\(paths.dataDirectory)-a", listen: "127.0.0.1:0"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        defer { _ = try? runCommand(["/bin/rm", "-rf", paths.dataDirectory + "-a"]) }
        let taken = try #require(blocker.storage)
        let result = try runCommand([binary, "run", "--set", "pipelines=[]", "--set", "metrics.listen=127.0.0.1:0",
                                     "--set", "storage.data=\(paths.dataDirectory)",
                                     "--set", "storage.listen=127.0.0.1:\(taken.port)"], timeoutMs: 30_000)
        #expect(result.status == 1)
        #expect(result.stderr.contains("storage:") && result.stderr.contains("\(taken.port)"), "\(result.stderr)")
        let (status, _) = try blocker.terminate()
        #expect(status == 0)
    }

    /// A data directory held by another process (here `sluice storage serve`) is refused: exit 1 with
    /// the holder's pid, nothing opened. Two processes on one store used to hand out the same OSNs.
    @Test func aDataDirectoryInUseIsRefused() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let paths = ScratchPaths("heldstore")
        defer { paths.remove() }
        let holder = try ChildProcess([binary, "storage", "serve", "--data", paths.dataDirectory,
                                       "--host", "127.0.0.1", "--port", "0"])
        let line = try #require(holder.readLine(timeoutMs: 30_000), "stderr: \(holder.stderrText)")
        #expect(line.hasPrefix("listening on"), "\(line)")
        let result = try runCommand([binary, "run", "--set", "pipelines=[]", "--set", "metrics.listen=127.0.0.1:0",
                                     "--set", "storage.data=\(paths.dataDirectory)",
                                     "--set", "storage.listen=127.0.0.1:0"], timeoutMs: 30_000)
        #expect(result.status == 1)
        #expect(result.stderr.contains("locked by process \(holder.pid)"), "\(result.stderr)")
        holder.signal(SIGTERM)
        _ = holder.wait(timeoutMs: 10_000)
    }
}

extension ServiceProcessTests {
    /// `shutdown.exit_when_drained`: a replay job ends by itself, exit 0, every packet delivered.
    @Test func exitWhenDrainedEndsAReplayJob() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let result = try runCommand([binary, "run", "--set", "pipelines[0].source.pcap=\(samplePcap)",
                                     "--set", "pipelines[0].source.speed=", "--set", "pipelines[0].source.top_speed=true",
                                     "--set", "pipelines[0].source.loop=5", "--set", "pipelines[0].sink.pcap=",
                                     "--set", "pipelines[0].sink.discard=true", "--set", "storage=",
                                     "--set", "metrics.enabled=false", "--set", "shutdown.exit_when_drained=true"],
                                    timeoutMs: 60_000)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.lines.first == "sluice: ready metrics=off storage=off")
        let row = try #require(result.lines.first { $0.hasPrefix("sample ") }, "\(result.lines)")
        let fields = row.split(separator: " ")
        #expect(fields[1] == "10000" && fields[2] == "10000" && fields[4] == "0" && fields.last == "ok", "\(row)")
        #expect(result.stderr.contains("shutting down: every pipeline drained"))
    }
}

extension ServiceProcessTests {
    /// Workers run on `cores`, every other thread on `control_cores` (read from /proc/PID/task).
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func controlThreadsStayOffTheWorkerCores() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        guard let allowed = cpusOrRecordIssue(2) else { return }
        let (worker, control) = (allowed[1], allowed[0])
        let paths = ScratchPaths("affinity")
        defer { paths.remove() }
        let service = try RunningService(binary: binary, yaml: """
            cores: [\(worker)]
            control_cores: [\(control)]
            pipelines:
              - name: p
                source: {pcap: "\(samplePcap)", rate: 100, loop: 100}
                sink: {discard: true}
            storage: {data: "\(paths.dataDirectory)", listen: "127.0.0.1:0"}
            metrics: {listen: "127.0.0.1:0"}
            """)
        _ = try service.scrape()  // the metrics endpoint has served (its threads exist)
        var threads: [(name: String, cpus: String)] = []
        let taskDirectory = "/proc/\(service.child.pid)/task"
        for tid in try runCommand(["/bin/ls", taskDirectory]).lines {
            // A thread that ended between the listing and the reads is skipped.
            guard let name = try runCommand(["/bin/cat", "\(taskDirectory)/\(tid)/comm"]).lines.first,
                  let cpus = try runCommand(["/bin/cat", "\(taskDirectory)/\(tid)/status"]).lines
                    .first(where: { $0.hasPrefix("Cpus_allowed_list:") })?.split(separator: "\t").last.map(String.init)
            else { continue }
            threads.append((name, cpus))
        }
        let workers = threads.filter { $0.name.hasPrefix("sluice-w") }
        #expect(workers.count == 1 && workers.allSatisfy { $0.cpus == "\(worker)" }, "\(threads)")
        let others = threads.filter { !$0.name.hasPrefix("sluice-w") }
        #expect(others.count >= 3)
        #expect(others.allSatisfy { $0.cpus == "\(control)" }, "\(threads)")
        #expect(service.child.stderrText.contains("control threads confined"))
        let (status, _) = try service.terminate()
        #expect(status == 0)
    }
}

extension ServiceProcessTests {
    /// SIGTERM while a self-stopping trigger (run_for_ms, exit_when_drained) still waits: a clean
    /// stop, exit 0, the summary printed.
    @Test func sigtermBeforeTheTriggersFireIsClean() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: slow
                source: {pcap: "\(samplePcap)", rate: 200}
                sink: {discard: true}
            metrics: {listen: "127.0.0.1:0"}
            shutdown: {run_for_ms: 600000, exit_when_drained: true}
            """)
        usleep(300_000)
        let (status, lines) = try service.terminate()
        #expect(status == 0, "exit \(status): \(service.child.stderrText)")
        let row = try #require(lines.first { $0.hasPrefix("slow ") }, "\(lines)")
        let fields = row.split(separator: " ")
        #expect(fields[1] == fields[2] && fields[4] == "0" && fields.last == "ok", "\(row)")
        #expect(!lines.contains { $0.contains("ended with an error") }, "\(lines)")
    }
}

extension ServiceProcessTests {
    /// Every stage of a top-speed pipeline starts on one core; the rebalancer measures that core
    /// saturated and the other idle and moves a stage across while packets flow. Nothing is lost.
    @Test(.enabled(if: runsWithCPUs(2), "needs two CPUs (runs, and fails, under CI=true)"))
    func rebalancerMovesAStageOffAnOverloadedCore() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        guard let allowed = cpusOrRecordIssue(2) else { return }
        let (busy, idle) = (allowed[0], allowed[1])
        // Paced (200k packets/s for 2.5 s), so the pipeline outlives the first measurements however
        // fast the machine; a low threshold, so a fast machine's lighter load still counts as uneven.
        let child = try ChildProcess([binary, "run", "--set", "cores=[\(busy),\(idle)]",
                                      "--set", "rebalance.interval_ms=100", "--set", "rebalance.imbalance=0.02",
                                      "--set", "pipelines[0].source.pcap=\(samplePcap)",
                                      "--set", "pipelines[0].source.speed=", "--set", "pipelines[0].source.rate=200000",
                                      "--set", "pipelines[0].source.loop=250",
                                      "--set", "pipelines[0].stage_cores=[\(busy),\(busy),\(busy),\(busy)]",
                                      "--set", "pipelines[0].sink.pcap=", "--set", "pipelines[0].sink.discard=true",
                                      "--set", "storage=", "--set", "metrics.enabled=false",
                                      "--set", "shutdown.exit_when_drained=true"])
        let status = try #require(child.wait(timeoutMs: 120_000), "the replay job did not end")
        let lines = child.remainingLines(timeoutMs: 5_000)
        #expect(status == 0, "\(child.stderrText)")
        #expect(child.stderrText.contains("stage moved to even out load") && child.stderrText.contains("toCore=\(idle)"),
                "\(child.stderrText)")
        let row = try #require(lines.first { $0.hasPrefix("sample ") }, "\(lines)")
        let fields = row.split(separator: " ")
        #expect(fields[1] == "500000" && fields[2] == "500000" && fields[4] == "0" && fields.last == "ok", "\(row)")
    }
}

extension ServiceProcessTests {
    /// A capture cut mid-record: the pipeline takes the records before the cut, stops with an error
    /// naming the file, /healthz turns 503 with the reason (200 before), and the exit status is 3.
    @Test func truncatedCaptureMakesTheServiceUnhealthyAndExitThree() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let paths = ScratchPaths("truncated")
        defer { paths.remove() }
        let truncated = paths.outputPcap + ".in"
        defer { unlink(truncated) }
        // The sample cut at byte 100000 (mid-record), written with dd.
        let cut = try runCommand(["/bin/dd", "if=\(samplePcap)", "of=\(truncated)", "bs=100000", "count=1"])
        #expect(cut.status == 0, "\(cut.stderr)")
        let healthy = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: good
                source: {pcap: "\(samplePcap)", rate: 100}
                sink: {discard: true}
            metrics: {listen: "127.0.0.1:0"}
            """)
        let fine = try HTTPClient.get(host: healthy.metrics.host, port: healthy.metrics.port, path: "/healthz")
        #expect(fine.status == 200 && fine.body == "ok\n")
        #expect(try healthy.terminate().status == 0)

        let service = try RunningService(binary: binary, yaml: """
            pipelines:
              - name: bad
                source: {pcap: "\(truncated)", top_speed: true}
                sink: {discard: true}
            metrics: {listen: "127.0.0.1:0"}
            """)
        var health = HTTPClientResponse(status: 0, body: "")
        for _ in 0..<500 {
            health = try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz")
            if health.status != 200 { break }
            usleep(10_000)
        }
        #expect(health.status == 503 && health.body.hasPrefix("unhealthy: pipeline bad:") && health.body.contains(truncated),
                "\(health)")
        let (status, lines) = try service.terminate()
        #expect(status == 3, "\(service.child.stderrText)")
        let row = try #require(lines.first { $0.hasPrefix("bad ") }, "\(lines)")
        let fields = row.split(separator: " ")
        #expect(Int(fields[1]) ?? 0 > 0 && Int(fields[1]) ?? 0 < 2000 && fields[1] == fields[2], "records before the cut delivered: \(row)")
        #expect(!row.hasSuffix(" ok"), "\(row)")
        #expect(service.child.stderrText.contains("pipeline ended early"))
    }
}

extension ServiceProcessTests {
    /// A client pipelines thousands of `GET /metrics` and never reads a reply. The endpoint used to
    /// render and queue every one (+840 MB); now it holds the connection at a few outstanding
    /// replies, stops reading, and closes it once it has stayed stalled past the deadline (5 s).
    @Test func unreadPipelinedScrapesAreBoundedAndClosed() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        // One sleeping worker: the pipeline is there for its metrics (a reply of several kB), not its load.
        let core = (try? CPU.allowedCPUs())?.first ?? 0
        let service = try RunningService(binary: binary, yaml: """
            cores: [\(core)]
            wait_mode: interrupt
            pipelines:
              - name: slow
                source: {pcap: "\(samplePcap)", rate: 100, loop: 100}
                sink: {discard: true}
            metrics: {listen: "127.0.0.1:0"}
            """)
        let replyBytes = try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/metrics").body.utf8.count
        let rssBefore = try #require(try residentBytes(pid: service.child.pid))
        let flood = try UnreadPipeline(host: service.metrics.host, port: service.metrics.port)
        let sent = flood.send(requests: 20_000, forMs: 3_000)
        #expect(sent >= 2_000, "only \(sent) requests went out")
        let closedAfterMs = flood.waitForClose(timeoutMs: 20_000)
        let rssAfter = try #require(try residentBytes(pid: service.child.pid))
        #expect(closedAfterMs != nil, "the stalled connection was never closed")
        // Unbounded, this would be about sent x replyBytes (hundreds of MB); bounded, a few replies.
        let growth = rssAfter - rssBefore
        #expect(growth < 64 << 20, "service grew \(growth >> 20) MiB for \(sent) unread scrapes of \(replyBytes) bytes")
        // The endpoint still serves everyone else.
        #expect(try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz").status == 200)
        let (status, _) = try service.terminate()
        #expect(status == 0, "exit \(status): \(service.child.stderrText)")
    }
}

/// VmRSS of a process, in bytes.
func residentBytes(pid: pid_t) throws -> Int? {
    let status = try runCommand(["/bin/cat", "/proc/\(pid)/status"])
    guard let line = status.lines.first(where: { $0.hasPrefix("VmRSS:") }),
          let kilobytes = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap({ Int($0) })
    else { return nil }
    return kilobytes * 1024
}

/// A TCP connection that sends pipelined `GET /metrics` and never reads.
final class UnreadPipeline {
    let fd: Int32

    init(host: String, port: Int) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SpawnError("socket: errno \(errno)") }
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw SpawnError("bad address \(host)") }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw SpawnError("connect: errno \(errno)") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { close(fd) }

    /// Sends up to `requests` requests for at most `forMs` (less when the peer stops reading and the
    /// socket buffers fill); how many went out whole.
    func send(requests: Int, forMs: Int) -> Int {
        let request = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        let bytes = Array((0..<requests).map { _ in request }.joined())
        var offset = 0
        let deadline = ContinuousClock.now + .milliseconds(forMs)
        while offset < bytes.count, ContinuousClock.now < deadline {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0, errno != EAGAIN, errno != EINTR { break }  // closed under us: counted below
            usleep(10_000)
        }
        return offset / request.count
    }

    /// Waits, reading nothing, until the peer closes (FIN or RST); after how many ms, or nil.
    func waitForClose(timeoutMs: Int) -> Int? {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .milliseconds(timeoutMs) {
            let readHangUp: Int16 = 0x2000  // POLLRDHUP (Linux; glibc defines it only with _GNU_SOURCE)
            var descriptor = pollfd(fd: fd, events: readHangUp, revents: 0)
            if poll(&descriptor, 1, 100) > 0, descriptor.revents & (readHangUp | Int16(POLLHUP | POLLERR)) != 0 {
                let elapsed = ContinuousClock.now - start
                return Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
            }
        }
        return nil
    }
}
