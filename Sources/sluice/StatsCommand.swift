// Path: Sources/sluice/StatsCommand.swift — `sluice stats`: scrape a running `sluice run`'s
// `GET /metrics` and print it as `show runtime` style tables (SluiceService.StatsTable).
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
        let body: String
        do { body = try MetricsScrape.get(host: host, port: port) } catch {
            switch error {
            case .connect, .timeout:
                FileHandleStderr.write("sluice stats: \(error) (is `sluice run` running?)\n")
                throw ExitCode(1)
            case .badResponse:
                FileHandleStderr.write("sluice stats: \(error)\n")
                throw ExitCode(2)
            }
        }
        if raw { return body }
        do {
            let samples = try MetricsText.parse(body)
            return StatsTable.render(samples)
        } catch {
            FileHandleStderr.write("sluice stats: \(host):\(port)/metrics: \(error)\n")
            throw ExitCode(2)
        }
    }
}

/// Why a scrape failed; the description is the message for stderr.
enum ScrapeError: Error, CustomStringConvertible {
    case connect(endpoint: String, reason: String)
    case timeout(endpoint: String, operation: String)
    case badResponse(endpoint: String, reason: String)

    var description: String {
        switch self {
        case .connect(let endpoint, let reason): "cannot connect to \(endpoint): \(reason)"
        case .timeout(let endpoint, let operation):
            "\(endpoint): no progress \(operation) for \(MetricsScrape.timeoutSeconds) s"
        case .badResponse(let endpoint, let reason): "\(endpoint): bad response: \(reason)"
        }
    }
}

/// A plain blocking HTTP/1.0 `GET /metrics` over a TCP socket: connect, send, read to EOF.
enum MetricsScrape {
    /// Send and receive timeout on the socket (SO_SNDTIMEO, SO_RCVTIMEO; connect honours the former).
    static let timeoutSeconds = 2
    /// Most bytes read, headers included; a larger response is refused.
    static let responseSizeMax = 16 << 20

    /// The response body of `GET /metrics`. Blocks for at most a couple of timeouts per address tried.
    static func get(host: String, port: Int) throws(ScrapeError) -> String {
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let fd = try connect(host: host, port: port, endpoint: endpoint)
        defer { close(fd) }
        let request = "GET /metrics HTTP/1.0\r\nHost: \(endpoint)\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        try send(fd, Array(request.utf8), endpoint: endpoint)
        let response = try receive(fd, endpoint: endpoint)
        return try body(of: response, endpoint: endpoint)
    }

    static func connect(host: String, port: Int, endpoint: String) throws(ScrapeError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            throw .connect(endpoint: endpoint, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var lastError: Int32 = ECONNREFUSED
        var address: UnsafeMutablePointer<addrinfo>? = list
        while let info = address {
            address = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { lastError = errno; continue }
            var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            let size = socklen_t(MemoryLayout<timeval>.size)
            if setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, size) == 0,
               setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, size) == 0,
               Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                return fd
            }
            lastError = errno
            close(fd)
        }
        // Linux reports a connect that ran out of SO_SNDTIMEO as EINPROGRESS.
        if lastError == EINPROGRESS || lastError == EAGAIN { throw .timeout(endpoint: endpoint, operation: "connecting") }
        throw .connect(endpoint: endpoint, reason: String(cString: strerror(lastError)))
    }

    static func send(_ fd: Int32, _ bytes: [UInt8], endpoint: String) throws(ScrapeError) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { buffer in
                guard let base = buffer.baseAddress else { return 0 }
                return Glibc.send(fd, base + sent, buffer.count - sent, Int32(MSG_NOSIGNAL))
            }
            if n >= 0 { sent += n; continue }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN { throw .timeout(endpoint: endpoint, operation: "sending") }
            throw .connect(endpoint: endpoint, reason: "send: \(String(cString: strerror(error)))")
        }
    }

    /// Reads until EOF, or until the body is complete when the headers carry a Content-Length.
    static func receive(_ fd: Int32, endpoint: String) throws(ScrapeError) -> [UInt8] {
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var expectedSize: Int?
        var headersSeen = false
        while expectedSize.map({ response.count < $0 }) ?? true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                let error = errno
                if error == EINTR { continue }
                if error == EAGAIN { throw .timeout(endpoint: endpoint, operation: "reading") }
                throw .connect(endpoint: endpoint, reason: "recv: \(String(cString: strerror(error)))")
            }
            response.append(contentsOf: chunk[0..<n])
            guard response.count <= responseSizeMax else {
                throw .badResponse(endpoint: endpoint, reason: "larger than \(responseSizeMax >> 20) MiB")
            }
            if !headersSeen, let split = headerEnd(response) {
                headersSeen = true
                if let length = header("content-length", in: response[..<split]).flatMap({ Int($0) }), length >= 0 {
                    expectedSize = split + 4 + min(length, responseSizeMax)  // no overflow on a huge claim
                }
            }
        }
        return response
    }

    /// Checks the status line is 200 and returns what follows the blank line (de-chunked if need be).
    static func body(of response: [UInt8], endpoint: String) throws(ScrapeError) -> String {
        guard let split = headerEnd(response) else {
            throw .badResponse(endpoint: endpoint, reason: response.isEmpty ? "empty" : "no end of headers (CRLFCRLF)")
        }
        let head = response[..<split]
        let statusLine = String(decoding: head.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1.") else {
            throw .badResponse(endpoint: endpoint, reason: "not an HTTP/1 status line: '\(statusLine.prefix(80))'")
        }
        guard parts[1] == "200" else { throw .badResponse(endpoint: endpoint, reason: "status '\(statusLine)'") }
        var body = Array(response[(split + 4)...])
        if header("transfer-encoding", in: head)?.lowercased() == "chunked" {
            guard let plain = dechunk(body) else { throw .badResponse(endpoint: endpoint, reason: "malformed chunked body") }
            body = plain
        }
        return String(decoding: body, as: UTF8.self)
    }

    /// The index of the CRLFCRLF that ends the headers.
    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }

    /// A header's value by lower-case name, trimmed.
    static func header(_ name: String, in head: ArraySlice<UInt8>) -> String? {
        for line in String(decoding: head, as: UTF8.self).split(separator: "\r\n").dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            if pair.count == 2, pair[0].lowercased() == name { return pair[1].trimmingCharacters(in: .whitespaces) }
        }
        return nil
    }

    /// `size-in-hex[;ext] CRLF data CRLF` ... `0 CRLF`; nil when the framing is wrong.
    static func dechunk(_ bytes: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        var i = 0
        while true {
            var j = i
            while j + 1 < bytes.count, !(bytes[j] == 13 && bytes[j + 1] == 10) { j += 1 }
            guard j + 1 < bytes.count else { return nil }
            let sizeText = String(decoding: bytes[i..<j], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else { return nil }
            if size == 0 { return out }
            let start = j + 2
            guard size <= bytes.count, start + size + 2 <= bytes.count else { return nil }  // no overflow
            out.append(contentsOf: bytes[start..<(start + size)])
            i = start + size + 2
        }
    }
}
