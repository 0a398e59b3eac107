import Foundation
import SluiceService
import Testing
import SluiceTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `sluice vm schedule|explain|bookings` over files: two days of history in which host a's link is busy
/// every day from 08:00 to 18:00; a move asked for at 07:00 books after the busy period, explain says why
/// not now, a window that ends before the link frees is refused up front with the reason (exit 3).
@Suite struct ScheduleCommandTests {
    static let day = 1440
    // Minute 0 of the Unix epoch is 00:00 UTC; day 20000 is an arbitrary recent day.
    static let firstDay = 20_000 * 1440

    static func write(_ path: String, _ text: String) {
        let file = fopen(path, "w")!
        fputs(text, file)
        fclose(file)
    }

    @Test func booksAfterTheBusyPeriodAndRefusesWhatCannotFit() throws {
        guard let sluice = sluiceBinary() else { Issue.record("the sluice binary is not built"); return }
        var template = Array("/tmp/sluice-schedule-XXXXXX".utf8CString)
        let directory = String(cString: mkdtemp(&template)!)
        defer { _ = try? runCommand(["/bin/rm", "-rf", directory]) }
        let link = 1_000_000_000.0
        for host in ["a", "b"] {
            var lines = ""
            for minute in Self.firstDay..<(Self.firstDay + 2 * Self.day) {
                let hour = (minute % Self.day) / 60
                let busy = host == "a" && hour >= 8 && hour < 18
                lines += "\(minute),\(Int(busy ? 0.995 * link : 0.1 * link)),\(200 << 30),0\n"
            }
            Self.write("\(directory)/\(host).history", lines)
        }
        Self.write("\(directory)/hosts.json", """
            {"hosts": [{"name": "a", "linkBytesPerSecond": \(link), "migrationSlots": 1, "memoryBytes": \(256 << 30), "history": "\(directory)/a.history"},
                       {"name": "b", "linkBytesPerSecond": \(link), "migrationSlots": 1, "memoryBytes": \(256 << 30), "history": "\(directory)/b.history"}]}
            """)
        let now = Self.firstDay + 2 * Self.day + 7 * 60  // day 3, 07:00
        Self.write("\(directory)/request.json", """
            {"id": 1, "vm": "g1", "source": "a", "candidates": ["b"], "earliestStart": \(now + 60), "deadline": \(now + 14 * 60),
             "memoryBytes": \(16 << 30), "dirtyBytesPerSecond": 5000000, "maxBandwidth": 500000000}
            """)
        Self.write("\(directory)/tight.json", """
            {"id": 2, "vm": "g2", "source": "a", "candidates": ["b"], "earliestStart": \(now + 60), "deadline": \(now + 5 * 60),
             "memoryBytes": \(16 << 30), "dirtyBytesPerSecond": 5000000, "maxBandwidth": 500000000}
            """)
        let common = ["--hosts", "\(directory)/hosts.json", "--state", "\(directory)/state.json", "--now", "\(now)"]

        let explain = try runCommand([sluice, "vm", "explain"] + common + ["--request", "\(directory)/request.json"])
        #expect(explain.status == 0, "\(explain.lines) \(explain.stderr)")
        #expect(explain.lines.contains { $0.contains("the window opens at minute \(now + 60)") }, "\(explain.lines)")
        let busyEnds = Self.firstDay + 2 * Self.day + 18 * 60
        #expect(explain.lines.contains { $0.contains("earliest feasible: minute \(busyEnds)") }, "\(explain.lines)")

        let booked = try runCommand([sluice, "vm", "schedule"] + common + ["--request", "\(directory)/request.json"])
        #expect(booked.status == 0, "\(booked.lines) \(booked.stderr)")
        #expect(booked.lines.first?.contains("booked request 1 (g1): start minute \(busyEnds)") == true, "\(booked.lines)")

        // Two runs at once on one state file, each booking its own request: both bookings are kept.
        for id in [3, 4] {
            Self.write("\(directory)/r\(id).json", """
                {"id": \(id), "vm": "g\(id)", "source": "b", "candidates": ["a"], "earliestStart": \(now + 20 * 60), "deadline": \(now + 40 * 60),
                 "memoryBytes": \(1 << 30), "dirtyBytesPerSecond": 0, "maxBandwidth": 100000000}
                """)
        }
        let racers = try [3, 4].map { try ChildProcess([sluice, "vm", "schedule"] + common + ["--request", "\(directory)/r\($0).json"]) }
        for racer in racers { #expect(racer.wait(timeoutMs: 60_000) == 0, "\(racer.stderrText)") }
        let listed = try runCommand([sluice, "vm", "bookings", "--state", "\(directory)/state.json"])
        #expect(listed.lines.filter { $0.hasPrefix("3\t") || $0.hasPrefix("4\t") }.count == 2, "\(listed.lines)")

        let refused = try runCommand([sluice, "vm", "schedule"] + common + ["--request", "\(directory)/tight.json"])
        #expect(refused.status == 3, "\(refused.lines) \(refused.stderr)")
        #expect(refused.lines.contains { $0.contains("b:") && $0.contains("predicted to have") }, "\(refused.lines)")

        let again = try runCommand([sluice, "vm", "schedule"] + common + ["--request", "\(directory)/request.json"])
        #expect(again.status != 0 && again.stderr.contains("booked already"), "\(again.stderr)")

        let finished = try runCommand([sluice, "vm", "schedule"] + common + ["--finished", "1", "--actual-seconds", "40"])
        #expect(finished.status == 0 && finished.lines.first?.contains("actual 40.0 s") == true, "\(finished.lines) \(finished.stderr)")
        let metrics = try runCommand([sluice, "vm", "bookings", "--state", "\(directory)/state.json", "--prometheus"])
        #expect(metrics.lines.contains("sluice_schedule_finished_total 1"), "\(metrics.lines)")
        #expect(metrics.lines.contains("sluice_schedule_actual_seconds{request=\"1\",vm=\"g1\"} 40.0"), "\(metrics.lines)")
        // With --hosts, the forecast error per host from the histories, the state file being the real one.
        let withHosts = try runCommand([sluice, "vm", "bookings", "--state", "\(directory)/state.json", "--prometheus",
                                        "--hosts", "\(directory)/hosts.json"])
        #expect(withHosts.status == 0 && withHosts.lines.contains { $0.hasPrefix("sluice_schedule_forecast_mape{host=\"a\"}") },
                "\(withHosts.lines) \(withHosts.stderr)")
    }

    /// `sluice vm manager` for a few half-second ticks: a spooled request that fits is booked (and, naming
    /// no guest files, fails at its start, recorded as such), one whose window is too short is refused
    /// with the reason; host a's dataplane endpoint does not answer, so its samples fall back to
    /// /proc/net/dev and say so; the metrics endpoint serves all of it.
    @Test func managerTakesSpooledRequestsAndServesMetrics() throws {
        guard let sluice = sluiceBinary() else { Issue.record("the sluice binary is not built"); return }
        var template = Array("/tmp/sluice-manager-cli-XXXXXX".utf8CString)
        let directory = String(cString: mkdtemp(&template)!)
        defer { _ = try? runCommand(["/bin/rm", "-rf", directory]) }
        mkdir("\(directory)/spool", 0o755)
        Self.write("\(directory)/hosts.json", """
            {"hosts": [{"name": "a", "linkBytesPerSecond": 1e9, "migrationSlots": 1, "memoryBytes": 8e9, "history": "\(directory)/a.history",
                        "metrics": "127.0.0.1:1", "port": "p"},
                       {"name": "b", "linkBytesPerSecond": 1e9, "migrationSlots": 1, "memoryBytes": 8e9, "history": "\(directory)/b.history"}]}
            """)
        let now = Int(Date().timeIntervalSince1970 / 0.5)
        for (id, window) in [(7, 200), (8, 3)] {
            Self.write("\(directory)/spool/\(id).json", """
                {"request": {"id": \(id), "vm": "v\(id)", "source": "a", "candidates": ["b"], "earliestStart": \(now), "deadline": \(now + window),
                 "memoryBytes": 1e9, "dirtyBytesPerSecond": 1e6, "maxBandwidth": 1e8}}
                """)
        }
        let manager = try ChildProcess([sluice, "vm", "manager", "--hosts", "\(directory)/hosts.json", "--state", "\(directory)/state.json",
                                        "--spool", "\(directory)/spool", "--metrics", "127.0.0.1:0", "--period", "0.5", "--ticks", "8",
                                        "--season-ticks", "20"])
        let line = try #require(manager.readLine(timeoutMs: 30_000), "\(manager.stderrText)")
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0) }, "\(line)")
        // A second manager on the same state is refused at once, naming the lock, instead of waiting behind it.
        let second = try runCommand([sluice, "vm", "manager", "--hosts", "\(directory)/hosts.json", "--state", "\(directory)/state.json",
                                     "--period", "0.5", "--ticks", "1"])
        #expect(second.status != 0 && second.stderr.contains("another process holds"), "\(second.stderr)")
        usleep(2_500_000)
        let body: String = try HTTPClient.get(host: "127.0.0.1", port: port, path: "/metrics").body
        #expect(manager.wait(timeoutMs: 30_000) == 0, "\(manager.stderrText)")
        let booked = try String(contentsOfFile: "\(directory)/spool/done/7.json.result", encoding: .utf8)
        let refused = try String(contentsOfFile: "\(directory)/spool/done/8.json.result", encoding: .utf8)
        #expect(booked.hasPrefix("booked request 7"), "\(booked)")
        #expect(refused.hasPrefix("refused request 8") && refused.contains("b: "), "\(refused)")
        #expect(body.contains("sluice_manager_refusals_total{reason=\"finishes_late\"} 1"), "\(body)")
        #expect(body.contains("sluice_manager_samples_total{host=\"a\",source=\"proc_net_dev\"}"), "\(body)")
        #expect(body.contains("sluice_manager_finished_total{result=\"failed\"} 1"), "\(body)")
        let history = try String(contentsOfFile: "\(directory)/a.history", encoding: .utf8)
        #expect(history.split(separator: "\n").count >= 5, "\(history)")
    }

    @Test func badFilesAreNamed() throws {
        guard let sluice = sluiceBinary() else { Issue.record("the sluice binary is not built"); return }
        var template = Array("/tmp/sluice-schedule-XXXXXX".utf8CString)
        let directory = String(cString: mkdtemp(&template)!)
        defer { _ = try? runCommand(["/bin/rm", "-rf", directory]) }
        Self.write("\(directory)/h.history", "1,2,3\n")
        Self.write("\(directory)/hosts.json", """
            {"hosts": [{"name": "a", "linkBytesPerSecond": 1e9, "migrationSlots": 1, "memoryBytes": 1e9, "history": "\(directory)/h.history"}]}
            """)
        Self.write("\(directory)/request.json", """
            {"id": 1, "vm": "g", "source": "a", "candidates": ["zz"], "earliestStart": 1, "deadline": 2, "memoryBytes": 1, "dirtyBytesPerSecond": 0, "maxBandwidth": 1}
            """)
        let badHistory = try runCommand([sluice, "vm", "explain", "--hosts", "\(directory)/hosts.json", "--state", "\(directory)/s.json",
                                         "--request", "\(directory)/request.json", "--now", "10"])
        #expect(badHistory.status != 0 && badHistory.stderr.contains("h.history:1"), "\(badHistory.stderr)")
        Self.write("\(directory)/h.history", "1,2,3,0\n")
        let unknownHost = try runCommand([sluice, "vm", "schedule", "--hosts", "\(directory)/hosts.json", "--state", "\(directory)/s.json",
                                          "--request", "\(directory)/request.json", "--now", "10"])
        #expect(unknownHost.status != 0 && unknownHost.stderr.contains("no host named 'zz'"), "\(unknownHost.stderr)")
        let both = try runCommand([sluice, "vm", "schedule", "--hosts", "x", "--state", "y"])
        #expect(both.status != 0 && both.stderr.contains("give --request or --finished"), "\(both.stderr)")
        let season = try runCommand([sluice, "vm", "manager", "--hosts", "\(directory)/hosts.json", "--state", "\(directory)/s.json",
                                     "--season-ticks", "3"])
        #expect(season.status != 0 && season.stderr.contains("--season-ticks must be 4...1440"), "\(season.stderr)")
    }
}
