// Path: Sources/sluice/StatsCommand.swift — `sluice stats`: scrape a running `sluice run`'s
// `GET /metrics` (through SluiceService.HTTPClient) and print it as `show runtime` style tables (StatsTable).
import ArgumentParser
import Glibc
import SluiceService

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a running `sluice run`'s metrics as tables (workers, stages, rings, pipelines, traffic, storage).",
        discussion: "Exit status: 1 when the endpoint cannot be reached, 2 when its response is not a 200 with valid metrics text.")

    @Option(help: "Metrics endpoint address (an IP literal or a host name).")
    var host = "127.0.0.1"

    @Option(help: "Metrics endpoint port.")
    var port = 9464

    @Flag(help: "Print the scraped Prometheus text as is.")
    var raw = false

    @Option(help: ArgumentHelp("Redraw every SECONDS until interrupted (or --count times).", valueName: "SECONDS"))
    var watch: Double?

    @Option(help: "With --watch: how many times to draw (default: until interrupted).")
    var count: Int?

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
        if let watch {
            guard watch >= 0.1, watch <= 3600 else { throw ValidationError("--watch must be 0.1...3600 seconds, got \(watch)") }
        }
        if let count {
            guard watch != nil else { throw ValidationError("--count needs --watch") }
            guard count > 0 else { throw ValidationError("--count must be positive, got \(count)") }
        }
    }

    func run() throws {
        guard let watch else {
            print(try frame(), terminator: "")
            return
        }
        let clear = isatty(STDOUT_FILENO) == 1
        var drawn = 0
        while count.map({ drawn < $0 }) ?? true {
            let text = try frame()
            // Clearing is the only escape code, and only on a terminal; a pipe gets frames one after another.
            print((clear ? "\u{1B}[H\u{1B}[2J" : (drawn > 0 ? "\n" : "")) + text, terminator: "")
            drawn += 1
            if count.map({ drawn >= $0 }) ?? false { break }
            var delay = timespec(tv_sec: Int(watch), tv_nsec: Int((watch - watch.rounded(.down)) * 1e9))
            var left = timespec()
            while nanosleep(&delay, &left) == -1 && errno == EINTR { delay = left }
        }
    }

    /// One scrape, rendered (or raw). A failure goes to stderr and exits 1 (connection) or 2 (response).
    func frame() throws -> String {
        let response: HTTPClientResponse
        do { response = try HTTPClient.get(host: host, port: port, path: "/metrics") } catch {
            FileHandleStderr.write("sluice stats: \(error)" + (error.isUnreachable ? " (is `sluice run` running?)\n" : "\n"))
            throw ExitCode(error.isUnreachable ? 1 : 2)
        }
        guard response.status == 200 else {
            FileHandleStderr.write("sluice stats: \(host):\(port)/metrics: status \(response.status)\n")
            throw ExitCode(2)
        }
        if raw { return response.body }
        do {
            let samples = try MetricsText.parse(response.body)
            return StatsTable.render(samples)
        } catch {
            FileHandleStderr.write("sluice stats: \(host):\(port)/metrics: \(error)\n")
            throw ExitCode(2)
        }
    }
}
