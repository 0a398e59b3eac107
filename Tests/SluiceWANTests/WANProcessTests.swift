// Path: Tests/SluiceWANTests/WANProcessTests.swift — the built `sluice` binary: `sluice wan` refuses
// bad units before anything opens, runs until SIGINT with counters on SIGUSR1 and at exit; and
// `sluice run` with a `wan:` link, its counters in the Prometheus endpoint.
import Glibc
import SluiceService
import SluiceTestSupport
import Testing

@Suite(.serialized) struct WANProcessTests {
    @Test(arguments: [
        (["--delay", "20", "--rate", "1mbit"], "--delay: '20' has no unit (us, ms or s"),
        (["--delay", "20ms", "--rate", "1Mbit"], "--rate: '1Mbit': unknown unit 'Mbit'"),
        (["--delay", "20ms", "--rate", "1mbit", "--loss", "5"], "--loss: '5' has no unit (a percentage"),
        (["--delay", "20ms", "--rate", "1mbit", "--queue", "10"], "--queue: '10' has no unit"),
        (["--delay", "20ms", "--rate", "1mbit", "--corrupt", "0.1"], "--corrupt: '0.1' has no unit (a percentage"),
        (["--delay", "20ms", "--rate", "1mbit", "--a-to-b-corrupt", "150%"], "--a-to-b-corrupt: '150%' is out of range (0%...100%)"),
        (["--delay", "20ms", "--rate", "1mbit", "--b-to-a-jitter=-1ms"], "--b-to-a-jitter: '-1ms' is not a number"),
        (["--delay", "20ms", "--rate", "1mbit", "--netns", "a/b"], "--netns: 'a/b' is not a namespace name"),
        (["--delay", "20ms", "--rate", "1mbit", "--b", "x0"], "both sides are 'x0'"),
        (["--delay", "20ms", "--rate", "1mbit", "--realtime-priority", "0"], "realtime priority 0 is out of range (1...99)"),
        (["--delay", "11s", "--rate", "1mbit"], "--delay: '11s' is out of range (at most 10s)"),
    ])
    func badFlagsAreRefusedNamingTheFlag(extra: [String], phrase: String) throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        var arguments = [binary, "wan", "--a", "x0", "--b", "x1"] + extra
        if let index = extra.firstIndex(of: "--b") {
            arguments = [binary, "wan", "--a", "x0"] + extra[..<index] + extra[(index + 2)...] + ["--b", extra[index + 1]]
        }
        let result = try runCommand(arguments, timeoutMs: 20_000)
        #expect(result.status == 64, "exit \(result.status): \(result.stderr)")
        #expect(result.stderr.contains(phrase), "\(result.stderr)")
    }

    @Test(.enabled(if: NetnsEnvironment.enabled, "needs root for network namespaces and AF_PACKET (CI=true runs it)"))
    func cliRunsUntilSIGINTWithCounters() throws {
        try NetnsEnvironment.requireRoot()
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try WANLab()
        defer { lab.destroy() }
        let child = try ChildProcess([binary, "wan", "--a", lab.interfaceWA, "--b", lab.interfaceWB, "--delay", "5ms",
                                      "--rate", "10mbit", "--b-to-a-delay", "15ms", "--netns", lab.namespaceW, "--name", "lab"])
        let ready = try #require(child.readLine(timeoutMs: 30_000), "no ready line: \(child.stderrText)")
        #expect(ready.hasPrefix("sluice: ready wan lab a=\(lab.interfaceWA) b=\(lab.interfaceWB) a-to-b: delay 5ms"), "\(ready)")
        #expect(ready.contains("b-to-a: delay 15ms jitter 0ms rate 10mbit loss 0% queue 262144b"), "\(ready)")
        let rtts = try ping(from: lab.pathA, to: lab.addressB, count: 5, intervalMs: 30, timeoutMs: 1_000)
        #expect(rtts.count == 5)
        #expect(rtts.allSatisfy { $0 >= 20_000_000 }, "\(rtts)")
        child.signal(SIGUSR1)
        let heading = try #require(child.readLine(timeoutMs: 5_000))
        #expect(heading.hasPrefix("sluice wan: counters after "), "\(heading)")
        let aToB = try #require(child.readLine(timeoutMs: 5_000))
        #expect(aToB.hasPrefix("  a-to-b: received "), "\(aToB)")
        #expect(try #require(child.readLine(timeoutMs: 5_000)).hasPrefix("  b-to-a: received "))
        child.signal(SIGINT)
        let lines = child.remainingLines(timeoutMs: 10_000)
        #expect(child.wait(timeoutMs: 10_000) == 0, "stderr: \(child.stderrText)")
        #expect(lines.first?.hasPrefix("sluice wan: stopped; counters after ") == true, "\(lines)")
        let forwarded = lines.compactMap { line -> Int? in
            let words = line.split(separator: " ")
            guard let index = words.firstIndex(of: "forwarded"), index + 1 < words.count else { return nil }
            return Int(words[index + 1])
        }
        #expect(forwarded.count == 2 && forwarded.allSatisfy { $0 >= 5 }, "\(lines)")
    }

    @Test(.enabled(if: NetnsEnvironment.enabled, "needs root for network namespaces and AF_PACKET (CI=true runs it)"))
    func serviceRunsALinkAndExportsItsCounters() throws {
        try NetnsEnvironment.requireRoot()
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try WANLab()
        defer { lab.destroy() }
        var template = Array("/tmp/sluice-wan-config-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { unlink(path) }
        let yaml = """
            metrics: {listen: "127.0.0.1:0"}
            wan:
              - name: lab
                a: \(lab.interfaceWA)
                b: \(lab.interfaceWB)
                netns: \(lab.namespaceW)
                delay: 5ms
                rate: 10mbit
                a_to_b: {loss: 0%, queue: 64kb}

            """
        _ = yaml.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        let child = try ChildProcess([binary, "run", "--config", path, "--cores", "0"])
        let ready = try #require(child.readLine(timeoutMs: 60_000), "no ready line: \(child.stderrText)")
        let metricsField = try #require(ready.split(separator: " ").first { $0.hasPrefix("metrics=") })
        let address = metricsField.dropFirst("metrics=".count)
        let colon = try #require(address.lastIndex(of: ":"))
        let port = try #require(Int(address[address.index(after: colon)...]))
        let rtts = try ping(from: lab.pathA, to: lab.addressB, count: 5, intervalMs: 20, timeoutMs: 1_000)
        #expect(rtts.count == 5 && rtts.allSatisfy { $0 >= 10_000_000 }, "\(rtts)")
        let body = try HTTPClient.get(host: "127.0.0.1", port: port, path: "/metrics").body
        let labels = "link=\"lab\",direction=\"a-to-b\""
        let forwarded = body.split(separator: "\n").first { $0.hasPrefix("sluice_wan_forwarded_packets_total{\(labels)}") }
        let count = try #require(forwarded.flatMap { Double($0.split(separator: " ").last ?? "") }, "\(body)")
        #expect(count >= 5)
        #expect(body.contains("sluice_wan_drops_total{\(labels),reason=\"queueFull\"} 0"), "\(body)")
        #expect(body.contains("sluice_wan_queue_limit_bytes{\(labels)} 65536.0"), "\(body)")
        #expect(body.contains("sluice_wan_delay_seconds{link=\"lab\",direction=\"b-to-a\"} 0.005"), "\(body)")
        #expect(body.contains("sluice_wan_corrupted_packets_total{\(labels)} 0"), "\(body)")
        #expect(body.contains("sluice_wan_corrupt_ratio{\(labels)} 0.0"), "\(body)")
        child.signal(SIGTERM)
        #expect(child.wait(timeoutMs: 20_000) == 0, "stderr: \(child.stderrText)")
        #expect(child.stderrText.contains("wan link stopped"), "\(child.stderrText)")
    }
}
