// Path: Tests/SluicePacketIOTests/ReplayFlagsTests.swift — `sluice replay`'s tcpreplay flags, run as
// the built binary: rate flags within a lenient tolerance, several captures in order, limits,
// preload, the client/server split (rule, cache file, two veths in test-made namespaces), usage
// errors naming the flag, and the sender's --json.
import Foundation
import Glibc
import SluiceCore
import SluicePacketIO
import SluiceTestSupport
import Testing

/// Frames and captures for these tests: Ethernet/IPv4/TCP between 198.18.0.0/15 addresses, each
/// frame tagged with a serial in its payload so order and side can be checked.
enum SenderFrames {
    static let client: [UInt8] = [198, 18, 1, 10]
    static let server: [UInt8] = [198, 19, 2, 20]

    /// A TCP frame of `length` bytes (>= 58) from `source`:`sourcePort` to `destination`:`destinationPort`.
    static func tcp(_ source: [UInt8], _ destination: [UInt8], sourcePort: UInt16, destinationPort: UInt16,
                    serial: Int, length: Int = 80) -> [UInt8] {
        var bytes: [UInt8] = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]
        let ipLength = UInt16(length - 14)
        bytes += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xFF), 0, 0, 0x40, 0, 64, 6, 0, 0]
        bytes += source + destination
        bytes += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xFF)]
        bytes += [0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xFF, 0xFF, 0, 0, 0, 0]
        bytes += withUnsafeBytes(of: UInt32(serial).bigEndian) { Array($0) }
        while bytes.count < length { bytes.append(0xA5) }
        return bytes
    }

    /// The serial a `tcp` frame carries.
    static func serial(_ frame: [UInt8]) -> Int {
        Int(frame[54]) << 24 | Int(frame[55]) << 16 | Int(frame[56]) << 8 | Int(frame[57])
    }

    /// A capture of `frames`, one every `gapUs` microseconds from t = 1000 s.
    static func write(_ frames: [[UInt8]], to path: String, gapUs: Int = 100) throws {
        var capture = RawCapture()
        capture.records = frames.enumerated().map { index, frame in
            let us = index * gapUs
            return .init(seconds: UInt32(1000 + us / 1_000_000), fraction: UInt32(us % 1_000_000), bytes: frame)
        }
        try capture.write(to: path)
    }

    /// Client->server (to port 80) for even serials, server->client (from port 80) for odd ones.
    static func conversation(count: Int, from: Int = 0, length: Int = 80) -> [[UInt8]] {
        (from..<(from + count)).map { serial in
            serial % 2 == 0
                ? tcp(client, server, sourcePort: 40_000, destinationPort: 80, serial: serial, length: length)
                : tcp(server, client, sourcePort: 80, destinationPort: 40_000, serial: serial, length: length)
        }
    }

    static func read(_ path: String) throws -> [[UInt8]] {
        var reader = try PcapReader(path: path)
        var frames: [[UInt8]] = []
        while let record = try reader.next() { frames.append(Array(record.bytes[0..<record.capturedLength])) }
        return frames
    }
}

/// The sender's --json, parsed.
struct SenderReport {
    let object: [String: Any]
    init(_ text: String) throws {
        let data = Data(text.utf8)
        object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "not a JSON object: \(text)")
    }

    func number(_ key: String) throws -> Double { try #require((object[key] as? NSNumber)?.doubleValue, "no \(key)") }
    func string(_ key: String) throws -> String { try #require(object[key] as? String, "no \(key)") }
}

@Suite(.serialized) struct ReplayFlagsTests {
    static let usageError: Int32 = 64

    @Test(arguments: [
        (["--mbps", "0"], "--mbps"), (["--mbps", "nan"], "--mbps"), (["--mbps", "10", "--pps", "5"], "give one of"),
        (["--pps", "1e-12"], "--pps"), (["--multiplier", "0"], "--multiplier"), (["--limit", "0"], "--limit"),
        (["--duration=-1"], "--duration"), (["--duration", "0"], "--duration"),
        (["--loopdelay-ms=-5"], "--loopdelay-ms"), (["--loop", "0"], "--loop 0"), (["--loop=-1"], "--loop"),
        (["--preload-max-mb", "5"], "--preload-max-mb"), (["--preload", "--preload-max-mb", "0"], "--preload-max-mb"),
        (["--iface2", "x"], "--iface2"), (["--out", "/tmp/x", "--out2", "/tmp/y"], "--out2"),
        (["--split-by", "port:80"], "--split-by"), (["--out", "/tmp/x", "--out2", "/tmp/y", "--split-by", "port:x"], "--split-by"),
        (["--out", "/tmp/x", "--out2", "/tmp/y", "--split-by", "cidr:10.0.0.1/8"], "--split-by"),
        (["--engine", "pipeline", "--limit", "5"], "--limit"), (["--limit", "5", "--shape", "1,1"], "--shape"),
        (["--limit", "5", "--rule", "{name: x, action: drop}"], "rules"), (["--engine", "sender", "--cores", "x"], "--cores"),
        (["--af-xdp"], "--af-xdp"), (["--af-xdp", "--out", "/tmp/x"], "--af-xdp"),
        (["--af-xdp", "--iface", "x", "--out2", "/tmp/y", "--split-by", "port:80"], "--af-xdp"),
        (["--af-xdp", "--iface", "x", "--shape", "1,1"], "--shape"),
    ] as [([String], String)])
    func badFlagsAreUsageErrorsNamingTheFlag(_ flags: [String], _ named: String) throws {
        let result = try runSluice(["replay", Captures.sample] + flags)
        #expect(result.status == Self.usageError, "\(flags): \(result.stderr)")
        #expect(result.stderr.contains(named), "\(flags): \(result.stderr)")
    }

    /// Three captures, twice: the output holds a, b, c, a, b, c, whole; --limit cuts across loops;
    /// --preload sends the same.
    @Test func severalCapturesGoInOrderPerLoop() throws {
        let paths = (0..<3).map { temporaryPath("multi-\($0).pcap") }
        let output = temporaryPath("multi-out.pcap")
        defer { for file in (paths + [output]) { unlink(file) } }
        var all: [[UInt8]] = []
        for (index, path) in paths.enumerated() {
            let frames = SenderFrames.conversation(count: 5 + index, from: 100 * index)
            try SenderFrames.write(frames, to: path)
            all += frames
        }
        for extra in [[], ["--preload"]] {
            let result = try runSluice(["replay"] + paths + ["--topspeed", "--loop", "2", "--out", output, "--json"] + extra)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try SenderFrames.read(output) == all + all)
            let report = try SenderReport(result.stdout)
            #expect(try report.number("packets") == Double(2 * all.count))
            #expect(try report.number("loopsCompleted") == 2)
            #expect(try report.string("stoppedBy") == "end")
            #expect(try report.number("flows") == 2)  // client->server and server->client
        }
        let limited = try runSluice(["replay"] + paths + ["--topspeed", "--loop", "3", "--limit", "20", "--out", output, "--json"])
        #expect(limited.status == 0, "\(limited.stderr)")
        #expect(try SenderFrames.read(output) == Array((all + all).prefix(20)))
        #expect(try SenderReport(limited.stdout).string("stoppedBy") == "limit")
    }

    /// --pps, --mbps and --multiplier within 10% of the target (lenient: a shared 2-core CI machine),
    /// measured by the sender's own report and, for the lower bound, by the test's clock.
    @Test func rateFlagsHoldTheirRates() throws {
        let path = temporaryPath("rate.pcap")
        let output = temporaryPath("rate-out.pcap")
        defer { unlink(path); unlink(output) }
        // 200 frames of 1000 bytes, 2 ms apart in the capture (0.398 s of capture time).
        try SenderFrames.write(SenderFrames.conversation(count: 200, length: 1000), to: path, gapUs: 2000)
        let cases: [(flags: [String], seconds: Double, key: String, target: Double)] = [
            // One capture and no sender-only flag runs the pipeline: --engine sender for its report.
            (["--pps", "1000", "--engine", "sender"], 0.2, "packetsPerSecond", 1000),
            (["--mbps", "8"], 0.2, "megabitsPerSecond", 8),  // 200 x 8000 bits at 8 Mbit/s
            (["--multiplier", "2", "--engine", "sender"], 0.199, "packetsPerSecond", 200 / 0.199),
            (["--rate", "2000", "--engine", "sender"], 0.1, "packetsPerSecond", 2000),
        ]
        for item in cases {
            let started = Clock.monotonicNs()
            let result = try runSluice(["replay", path, "--out", output, "--json"] + item.flags)
            let wall = Double(Clock.monotonicNs() - started) / 1e9
            #expect(result.status == 0, "\(item.flags): \(result.stderr)")
            let report = try SenderReport(result.stdout)
            let achieved = try report.number(item.key)
            #expect(abs(achieved / item.target - 1) < 0.10, "\(item.flags): \(item.key) \(achieved), target \(item.target)")
            #expect(abs(try report.number("seconds") / item.seconds - 1) < 0.10, "\(item.flags): \(result.stdout)")
            #expect(wall >= item.seconds * 0.9, "\(item.flags): the run took \(wall) s")
            #expect(try report.number("packets") == 200)
        }
    }

    /// --duration stops a --loop 0 run on time; the packets sent match the rate.
    @Test func durationStopsAnEndlessLoop() throws {
        let path = temporaryPath("duration.pcap")
        defer { unlink(path) }
        try SenderFrames.write(SenderFrames.conversation(count: 10), to: path)
        let started = Clock.monotonicNs()
        let result = try runSluice(["replay", path, "--loop", "0", "--duration", "0.3", "--pps", "1000", "--json",
                                    "--loopdelay-ms", "1"])
        let wall = Double(Clock.monotonicNs() - started) / 1e9
        #expect(result.status == 0, "\(result.stderr)")
        let report = try SenderReport(result.stdout)
        #expect(try report.string("stoppedBy") == "duration")
        let packets = try report.number("packets")
        #expect(packets > 240 && packets <= 300, "\(packets) packets in 0.3 s at 1000 pps with 1 ms between loops")
        #expect(wall < 3)
    }

    /// A capture with no frame under --loop 0 (nothing ever reaches a limit or a deadline) ends with a
    /// failure instead of reopening it for ever; frames all longer than a buffer at top speed give a
    /// summary of nothing sent, not a trap.
    @Test func capturesWithNothingToSendEnd() throws {
        let empty = temporaryPath("empty.pcap"), long = temporaryPath("long.pcap")
        defer { unlink(empty); unlink(long) }
        try SenderFrames.write([], to: empty)
        let started = Clock.monotonicNs()
        // --duration's deadline starts with the first frame sent, --limit counts frames: neither ever ends it.
        let endless = try runSluice(["replay", empty, "--loop", "0", "--duration", "1", "--limit", "5", "--pps", "1000", "--json"])
        #expect(Double(Clock.monotonicNs() - started) / 1e9 < 10)
        #expect(endless.status != 0, "\(endless.stdout)")
        #expect((endless.stderr + endless.stdout).contains("no frame to send"), "\(endless.stderr)")
        try SenderFrames.write([SenderFrames.tcp(SenderFrames.client, SenderFrames.server, sourcePort: 40_000,
                                                 destinationPort: 80, serial: 1, length: 9_300)], to: long)
        let oversize = try runSluice(["replay", long, "--topspeed", "--limit", "1", "--json"])
        #expect(oversize.status == 0 || oversize.status == 1, "status \(oversize.status): \(oversize.stderr)")
        #expect(!oversize.stderr.contains("Fatal error"), "\(oversize.stderr)")
        let report = try SenderReport(oversize.stdout)
        #expect(try report.number("packets") == 0)
        // Between frames that fit, a frame too long fails and counts no part of --limit: the limit of 2 sends
        // the two frames after it.
        let mixed = temporaryPath("mixed.pcap"), out = temporaryPath("mixed-out.pcap")
        defer { unlink(mixed); unlink(out) }
        let fitting = (2...4).map { SenderFrames.tcp(SenderFrames.client, SenderFrames.server, sourcePort: 40_000,
                                                     destinationPort: 80, serial: $0, length: 200) }
        try SenderFrames.write([SenderFrames.tcp(SenderFrames.client, SenderFrames.server, sourcePort: 40_000,
                                                 destinationPort: 80, serial: 1, length: 9_300)] + fitting, to: mixed)
        let limited = try runSluice(["replay", mixed, "--pps", "1000", "--limit", "2", "--out", out, "--json"])
        #expect(limited.status == 0 || limited.status == 1, "status \(limited.status): \(limited.stderr)")
        #expect(try SenderFrames.read(out) == Array(fitting.prefix(2)))
        #expect(limited.stdout.contains("\"failedPackets\":1"), "\(limited.stdout)")
    }

    /// --preload over its cap: a clear error naming the flag, nothing sent.
    @Test func preloadOverItsCapIsRefused() throws {
        let path = temporaryPath("big.pcap")
        defer { unlink(path) }
        try SenderFrames.write(SenderFrames.conversation(count: 1500, length: 1000), to: path)
        let result = try runSluice(["replay", path, "--preload", "--preload-max-mb", "1", "--topspeed"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("--preload"), "\(result.stderr)")
        #expect(result.stderr.contains("--preload-max-mb"), "\(result.stderr)")
    }

    /// The split, inline by port and through a `--write-cachefile` cache file by prefix: every
    /// client->server packet in the primary output, every server->client one in the secondary, in order.
    @Test func splitSendsEachSideToItsOutput() throws {
        let path = temporaryPath("split.pcap")
        let cache = temporaryPath("split.cache")
        let primary = temporaryPath("split-a.pcap")
        let secondary = temporaryPath("split-b.pcap")
        defer { for file in [path, cache, primary, secondary] { unlink(file) } }
        let frames = SenderFrames.conversation(count: 41)
        try SenderFrames.write(frames, to: path)
        let clientSide = frames.filter { SenderFrames.serial($0) % 2 == 0 }
        let serverSide = frames.filter { SenderFrames.serial($0) % 2 == 1 }

        let inline = try runSluice(["replay", path, "--topspeed", "--split-by", "port:80", "--out", primary,
                                    "--out2", secondary, "--json"])
        #expect(inline.status == 0, "\(inline.stderr)")
        #expect(try SenderFrames.read(primary) == clientSide)
        #expect(try SenderFrames.read(secondary) == serverSide)
        #expect(try SenderReport(inline.stdout).number("packets") == 41)

        let prep = try runSluice(["replay", path, "--split-by", "cidr:198.19.0.0/16", "--write-cachefile", cache])
        #expect(prep.status == 0, "\(prep.stderr)")
        #expect(prep.stdout.contains("21 client->server"), "\(prep.stdout)")
        let cached = try runSluice(["replay", path, "--pps", "20000", "--cachefile", cache, "--out", primary,
                                    "--out2", secondary])
        #expect(cached.status == 0, "\(cached.stderr)")
        #expect(try SenderFrames.read(primary) == clientSide)
        #expect(try SenderFrames.read(secondary) == serverSide)
        #expect(cached.stdout.contains("Actual: 41 packets"), "\(cached.stdout)")
        #expect(cached.stdout.contains("Statistics for network device: \(secondary)"), "\(cached.stdout)")
        #expect(cached.stdout.contains("Successful packets:        20"), "\(cached.stdout)")

        // A capture of the same size with other bytes (its last byte changed) is refused too.
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 1] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let changed = try runSluice(["replay", path, "--cachefile", cache, "--out", primary, "--out2", secondary])
        #expect(changed.status == 1)
        #expect(changed.stderr.contains("another capture of the same size"), "\(changed.stderr)")

        // A cache file made from another capture is refused.
        try SenderFrames.write(SenderFrames.conversation(count: 3), to: path)
        let stale = try runSluice(["replay", path, "--cachefile", cache, "--out", primary, "--out2", secondary])
        #expect(stale.status == 1)
        #expect(stale.stderr.contains("not the same capture"), "\(stale.stderr)")
        let bad = try runSluice(["replay", path, "--write-cachefile", cache])
        #expect(bad.status == Self.usageError)
        #expect(bad.stderr.contains("--write-cachefile"), "\(bad.stderr)")
    }
}

/// The split onto two veth pairs between two test-made namespaces (198.18.0.0/15 traffic only):
/// the sender in one, tcpdump on both peers in the other; every packet on the right side, in order.
@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NetnsReplaySplitTests {
    /// Through AF_PACKET TX rings, and through AF_XDP sockets (`--af-xdp`).
    @Test(arguments: [false, true]) func splitOntoTwoVeths(afXDP: Bool) throws {
        try NetnsEnvironment.requireRoot()
        let binary = try #require(sluiceBinary())
        let tcpdump = try #require(TwoVethLab.tcpdump, "needs tcpdump")
        let lab = try TwoVethLab(tag: afXDP ? "spx" : "sp")
        defer { lab.close() }
        let (sender, links) = (lab.sender, lab.links)
        let path = temporaryPath("veth-split.pcap")
        let outputs = [temporaryPath("veth-a.pcap"), temporaryPath("veth-b.pcap")]
        defer { for file in ([path] + outputs) { unlink(file) } }
        let sides = try TwoVethLab.writeConversation(to: path)
        let pids = lab.startCaptures(tcpdump: tcpdump, files: outputs, counts: sides.map(\.count))
        var stdout = ""
        let status = run(["/usr/sbin/ip", "netns", "exec", sender, binary, "replay", path, "--pps", "20000",
                          "--split-by", "port:80", "--iface", links[0].0, "--iface2", links[1].0] + (afXDP ? ["--af-xdp"] : []),
                         capture: &stdout)
        #expect(status == 0, "\(stdout)")
        #expect(stdout.contains("Actual: 400 packets"), "\(stdout)")
        lab.waitCaptures(pids)
        #expect(try SenderFrames.read(outputs[0]) == sides[0])
        #expect(try SenderFrames.read(outputs[1]) == sides[1])
    }
}
