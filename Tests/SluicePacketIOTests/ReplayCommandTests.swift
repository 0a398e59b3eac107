import Glibc
import SluiceTestSupport
import Testing

/// `sluice replay`'s flags, run as the built binary: bad values are usage errors (exit 64, as
/// ArgumentParser reports every bad flag) with a message naming the flag, never a trap.
@Suite(.serialized) struct ReplayCommandTests {
    static let usageError: Int32 = 64

    @Test(arguments: [["--speed", "1e-300"], ["--rate", "1e-12"], ["--speed", "nan"], ["--rate", "1e300"]])
    func pacingOutsideItsBoundsIsAUsageError(_ flags: [String]) throws {
        let result = try runSluice(["replay", Captures.sample] + flags)
        #expect(result.status == Self.usageError, "\(result.stderr)")
        #expect(result.stderr.contains(flags[0]))
        #expect(result.stderr.contains("must be in"))
    }

    @Test(arguments: ["-1", "0,-1", "0,,1", "3-1", "x", "0-", "99999"])
    func badCoreListsAreUsageErrors(_ cores: String) throws {
        let result = try runSluice(["replay", Captures.sample, "--cores=\(cores)"])
        #expect(result.status == Self.usageError, "\(result.stderr)")
        #expect(result.stderr.contains("--cores"))
    }

    /// Wait modes go by name in help and errors; raw values are refused.
    @Test func waitModesAreNamed() throws {
        let bad = try runSluice(["replay", Captures.sample, "--wait-mode", "0"])
        #expect(bad.status == Self.usageError)
        #expect(bad.stderr.contains("busy-poll"))
        #expect(bad.stderr.contains("interrupt"))
        #expect(!bad.stderr.contains("0, 1, 2"))
        let help = try runSluice(["replay", "--help"])
        #expect(help.stdout.contains("busy-poll"))
        #expect(help.stdout.contains("wallNsFromOpen"))
        #expect(help.stdout.contains("processCpuNs"))
        let good = try runSluice(["replay", Captures.sample, "--wait-mode", "interrupt", "--topspeed", "--json"])
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout.contains("\"wallNsFromOpen\":"))
        #expect(good.stdout.contains("\"processCpuNs\":"))
    }

    /// `--out X` on the capture X: refused, the capture intact.
    @Test func outputOverTheInputIsRefused() throws {
        let input = temporaryPath("cli-self.pcap")
        defer { unlink(input) }
        let sample = try #require(fileBytes(Captures.sample))
        var capture = RawCapture()
        capture.records = [.init(seconds: 1, fraction: 0, bytes: RawCapture.frame(length: 100))]
        try capture.write(to: input)
        let result = try runSluice(["replay", input, "--out", input])
        #expect(result.status == 1)
        #expect(result.stderr.contains("refusing to overwrite"))
        #expect(fileBytes(input) == capture.bytes)
        #expect(fileBytes(Captures.sample) == sample)
    }

    /// `-` reads classic pcap from standard input (a pipe), as `tcpdump -r -` does.
    @Test func captureFromStandardInput() throws {
        let binary = try #require(sluiceBinary())
        let output = temporaryPath("stdin-out.pcap")
        defer { unlink(output) }
        let status = run(["/bin/sh", "-c", "cat \"$1\" | exec \"$0\" replay - --topspeed --wait-mode interrupt --out \"$2\"",
                          binary, Captures.sample, output])
        #expect(status == 0)
        #expect(fileBytes(output) == fileBytes(Captures.sample))
    }

    /// An output that cannot be created is named as the output, with the errno's words.
    @Test func unwritableOutputNamesTheOutputAndTheErrno() throws {
        let result = try runSluice(["replay", Captures.sample, "--out", "/nonexistent/dir/out.pcap"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("/nonexistent/dir/out.pcap: cannot create output capture"))
        #expect(result.stderr.contains("No such file or directory"))
        #expect(!result.stderr.contains("cannot open capture"))
    }
}
