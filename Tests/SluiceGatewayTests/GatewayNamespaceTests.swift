// Path: Tests/SluiceGatewayTests/GatewayNamespaceTests.swift — the gateway's two hops over an emulated WAN
// (GatewayNamespaceSupport.swift): rclone and the intermediate in nsS, `sluice wan` in nsW, appliances
// in nsA, every server the built `sluice` binary. What crosses the last hop for random reads (against a
// gateway that forwards whole chunks), sequential throughput against the link rate, and faults.
import Glibc
import SluiceS3TestSupport
import SluiceTestSupport
import Testing
@testable import SluiceGateway

/// The processes of one lab and the files they use: rclone's data directory (objects are written into
/// it directly: bucket `bkt` is its subdirectory), the intermediate's cache, the S3 key files.
final class GatewayWorld {
    static let bucket = "bkt"
    static let rclonePort = 9000
    static let intermediatePort = 7100

    let lab: GatewayLab
    let binary: String
    let rclone: String
    let root = TemporaryDirectory("sluice-gwns")
    var dataDir: String { root.path + "/s3" }
    var cacheDir: String { root.path + "/intermediate-cache" }
    let statTTLMs: Int

    init(lab: GatewayLab, statTTLMs: Int = 1_000) throws {
        self.lab = lab
        binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        rclone = try #require(rcloneBinary, "\(rcloneMissingReason)")
        self.statTTLMs = statTTLMs
        mkdir(dataDir, 0o755)
        mkdir(dataDir + "/" + Self.bucket, 0o755)
        writeObject(root.path, "access", Array(RcloneS3Server.accessKey.utf8) + [10])
        writeObject(root.path, "secret", Array(RcloneS3Server.secretKey.utf8) + [10])
    }

    func put(_ key: String, _ bytes: [UInt8]) { writeObject(dataDir + "/" + Self.bucket, key, bytes) }

    func startRclone() throws -> ChildProcess {
        try lab.spawn(in: lab.namespaceS, [rclone, "serve", "s3", "--config", "", "--cache-dir", root.path + "/rclone-cache",
                                           "--addr", "127.0.0.1:\(Self.rclonePort)",
                                           "--auth-key", "\(RcloneS3Server.accessKey),\(RcloneS3Server.secretKey)",
                                           "--log-level", "NOTICE", dataDir])
    }

    func startIntermediate() throws -> ChildProcess {
        let child = try lab.spawn(in: lab.namespaceS, [
            binary, "gateway", "serve-intermediate", "--listen", "\(lab.addressS):\(Self.intermediatePort)",
            "--store", "s3:http://127.0.0.1:\(Self.rclonePort)/\(Self.bucket)",
            "--s3-access-key-file", root.path + "/access", "--s3-secret-key-file", root.path + "/secret",
            "--cache-dir", cacheDir, "--cache-bytes", "512mb", "--stat-ttl-ms", "\(statTTLMs)"])
        _ = try awaitListening(child, "serve-intermediate")
        return child
    }

    /// `sluice wan` between nsA (its side a) and nsS (side b), the same settings both ways unless
    /// `extra` overrides them (`--b-to-a-*` is the intermediate-to-appliance direction).
    func startWAN(delay: String, rate: String, _ extra: [String] = []) throws -> ChildProcess {
        let child = try ChildProcess([binary, "wan", "--netns", lab.namespaceW, "--a", lab.interfaceWA, "--b", lab.interfaceWS,
                                      "--delay", delay, "--rate", rate, "--queue", "512kb", "--name", "gwns"] + extra)
        guard let ready = child.readLine(timeoutMs: 30_000), ready.hasPrefix("sluice: ready wan") else {
            throw GatewayLabError(description: "sluice wan did not start: \(child.stderrText)")
        }
        return child
    }

    func startAppliance(port: Int, _ extra: [String] = []) throws -> ChildProcess {
        let child = try lab.spawn(in: lab.namespaceA, [
            binary, "gateway", "serve-appliance", "--listen", "0.0.0.0:\(port)",
            "--intermediate", "\(lab.addressS):\(Self.intermediatePort)", "--cache-bytes", "256mb",
            "--stat-ttl-ms", "\(statTTLMs)"] + extra)
        _ = try awaitListening(child, "serve-appliance")
        return child
    }

    /// A client of the appliance at `port` (through the side door), once `key` can be stat'ed (rclone
    /// may still be starting): tries for up to 20 s.
    func connect(port: Int, share: String = "default", key: String) async throws -> ApplianceClient {
        let client = try await ApplianceClient.connect(host: lab.sideAddress, port: port, share: share)
        var lastError = ""
        for _ in 0..<100 {
            do {
                _ = try await client.stat(key: key)
                return client
            } catch {
                lastError = "\(error)"
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        throw GatewayLabError(description: "stat \(key) through the appliance kept failing: \(lastError)")
    }
}

/// The running `sluice wan`'s counters of `direction` ("a-to-b" or "b-to-a"), asked for with SIGUSR1:
/// the `direction: ...` line it prints.
func wanCounters(_ wan: ChildProcess, _ direction: String) throws -> String {
    wan.signal(SIGUSR1)
    while let line = wan.readLine(timeoutMs: 5_000) {
        let trimmed = line.drop { $0 == " " }
        if trimmed.hasPrefix(direction + ":") { return String(trimmed) }
    }
    throw GatewayLabError(description: "sluice wan printed no \(direction) counters: \(wan.stderrText)")
}

/// Frame bytes a `wanCounters` line says the direction forwarded (`forwarded P bytes B`).
func forwardedBytes(_ line: String) -> UInt64? {
    let words = line.split(separator: " ")
    guard let index = words.firstIndex(of: "forwarded"), index + 3 < words.count, words[index + 2] == "bytes" else { return nil }
    return UInt64(words[index + 3])
}

/// The appliance's counter `name` (its `counters` request).
func applianceCounter(_ client: ApplianceClient, _ name: String) async throws -> UInt64 {
    let counters = try await client.counters()
    return try #require(counters.first { $0.0 == name }?.1, "no counter \(name) in \(counters)")
}

/// A read that fails: its status (the test expects one).
func failedRead(_ client: ApplianceClient, key: String, offset: UInt64, length: Int) async -> (ApplianceStatus, String)? {
    do {
        _ = try await client.read(key: key, offset: offset, length: length)
        return nil
    } catch {
        if case .status(let status, let message) = error { return (status, message) }
        return (.internal, "\(error)")
    }
}

/// Retries a read for up to `seconds` until it succeeds; its bytes.
func readEventually(_ client: ApplianceClient, key: String, offset: UInt64, length: Int, seconds: Int = 20) async throws -> [UInt8] {
    var lastError = ""
    for _ in 0..<(seconds * 5) {
        do {
            return try await client.read(key: key, offset: offset, length: length).bytes
        } catch {
            lastError = "\(error)"
            try await Task.sleep(for: .milliseconds(200))
        }
    }
    throw GatewayLabError(description: "read \(key) at \(offset) kept failing for \(seconds) s: \(lastError)")
}

@Suite(.serialized, .timeLimit(.minutes(4))) struct GatewayNamespaceTests {
    static let sectorBytes = 4_096
    static let chunkBytes = 4 << 20

    /// (a) 4 KiB random reads of a 64 MiB object: last-hop frame bytes over bytes served <= 1.25, against
    /// a gateway forwarding each missed chunk whole (an appliance without predictions whose client reads
    /// the whole chunk of every read); (b) a sequential read keeps the WAN (restarted at 20 Mbit/s) at >= 80% of its rate.
    @Test(.enabled(if: GatewayNetns.enabled, "\(GatewayNetns.reason)"))
    func randomReadsMoveSectorsAndSequentialReadsFillTheLink() async throws {
        try #require(GatewayNetns.isRoot, "CI=true: the namespace tests need root")
        let lab = try GatewayLab()
        defer { lab.destroy() }
        let world = try GatewayWorld(lab: lab)
        let random = objectBytes(64 << 20, seed: 11)
        let sequential = objectBytes(32 << 20, seed: 12)
        world.put("random.bin", random)
        world.put("sequential.bin", sequential)
        let rclone = try world.startRclone()
        let intermediate = try world.startIntermediate()
        var wan = try world.startWAN(delay: "5ms", rate: "100mbit")
        let readAhead = "4mb"
        let sectorAppliance = try world.startAppliance(port: 7200, ["--read-ahead-bytes", readAhead])
        let chunkAppliance = try world.startAppliance(port: 7201, ["--budget-bytes-per-s", "0"])
        // The sequential readers size their read-ahead from the last hop (no --read-ahead-bytes).
        let secondAppliance = try world.startAppliance(port: 7202)
        defer {
            for child in [sectorAppliance, chunkAppliance, secondAppliance, intermediate, rclone] { _ = stop(child) }
            print("gateway-netns wan: " + stop(wan).joined(separator: " | "))
        }
        let client = try await world.connect(port: 7200, key: "random.bin")
        let baseline = try await world.connect(port: 7201, key: "random.bin")
        let second = try await world.connect(port: 7202, key: "sequential.bin")

        // (a) random 4 KiB reads, one at a time.
        let reads = 256
        var generator = SplitMix(seed: 42)  // PredictorTests.swift
        let offsets = (0..<reads).map { _ in generator.next() % UInt64(random.count / Self.sectorBytes) * UInt64(Self.sectorBytes) }
        let frameBefore = try await applianceCounter(client, "last_hop_frame_bytes")
        let servedBefore = try await applianceCounter(client, "bytes_served")
        var latenciesMs: [Double] = []
        for offset in offsets {
            let start = monotonicSeconds()
            let result = try await client.read(key: "random.bin", offset: offset, length: Self.sectorBytes)
            latenciesMs.append((monotonicSeconds() - start) * 1000)
            #expect(result.bytes == Array(random[Int(offset)..<(Int(offset) + Self.sectorBytes)]), "bytes at \(offset)")
        }
        let frame = try await applianceCounter(client, "last_hop_frame_bytes") - frameBefore
        let served = try await applianceCounter(client, "bytes_served") - servedBefore
        #expect(served == UInt64(reads * Self.sectorBytes))
        let amplification = Double(frame) / Double(served)
        latenciesMs.sort()

        // The whole-chunk baseline: the same reads, each bringing its whole chunk on a miss.
        var chunksRead = Set<Int>()
        for offset in offsets where chunksRead.insert(Int(offset) / Self.chunkBytes).inserted {
            let chunk = Int(offset) / Self.chunkBytes
            let result = try await baseline.read(key: "random.bin", offset: UInt64(chunk * Self.chunkBytes), length: Self.chunkBytes)
            #expect(result.bytes.count == Self.chunkBytes)
        }
        let baselineFrame = try await applianceCounter(baseline, "last_hop_frame_bytes")
        let baselineAmplification = Double(baselineFrame) / Double(reads * Self.sectorBytes)
        print("gateway-netns random 4 KiB x \(reads) over 5 ms / 100 Mbit: last-hop frame bytes \(frame) / served \(served) = "
              + "\(fixed(amplification, 3)) (goal <= 1.25); whole-chunk baseline \(baselineFrame) / \(reads * Self.sectorBytes) = "
              + "\(fixed(baselineAmplification, 1)) (\(chunksRead.count) chunks); latency p50 \(fixed(latenciesMs[reads / 2], 2)) ms "
              + "p99 \(fixed(latenciesMs[reads * 99 / 100], 2)) ms")
        #expect(amplification <= 1.25, "random reads: \(frame) last-hop bytes for \(served) served")
        #expect(baselineAmplification > 10 * amplification)

        // (b) a sequential read, 1 MiB at a time: the appliance's read-ahead keeps the link busy. First with
        // the intermediate cold (it fetches each chunk from S3 as the read reaches it), then from a second
        // cold appliance with the intermediate warm: the last hop alone.
        func readSequentially(_ reader: ApplianceClient) async throws -> Double {
            let pieceBytes = 1 << 20
            let start = monotonicSeconds()
            var position = 0
            while position < sequential.count {
                let result = try await reader.read(key: "sequential.bin", offset: UInt64(position), length: pieceBytes)
                #expect(result.bytes.elementsEqual(sequential[position..<(position + pieceBytes)]), "bytes at \(position)")
                position += pieceBytes
            }
            return Double(sequential.count) * 8 / (monotonicSeconds() - start)
        }
        // At 20 Mbit/s (the benchmark's rate): a debug build sharing 2 cores cannot keep 100 Mbit/s of
        // emulator, intermediate and appliance busy (measured 14-30 Mbit/s there, no drops, late departures).
        // The emulator restarts in place; the connections across it live on.
        let rateBitsPerS = 20_000_000.0
        print("gateway-netns wan (100 Mbit/s part): " + stop(wan).joined(separator: " | "))
        wan = try world.startWAN(delay: "5ms", rate: "20mbit")
        let coldBitsPerS = try await readSequentially(client)
        // "Keeps the WAN busy": frame bytes the emulator sent towards the appliance (b-to-a) over the
        // read's span, against the link rate; client goodput beside it.
        let linkBefore = try #require(forwardedBytes(try wanCounters(wan, "b-to-a")))
        let spanStart = monotonicSeconds()
        let bitsPerS = try await readSequentially(second)
        let spanSeconds = monotonicSeconds() - spanStart
        let linkAfter = try #require(forwardedBytes(try wanCounters(wan, "b-to-a")))
        let utilisation = Double(linkAfter - linkBefore) * 8 / (spanSeconds * rateBitsPerS)
        let secondCounters = try await second.counters()
        let window = secondCounters.first { $0.0 == "read_ahead_window_bytes" }?.1 ?? 0
        let rttUs = secondCounters.first { $0.0 == "last_hop_min_rtt_us" }?.1 ?? 0
        let rate = secondCounters.first { $0.0 == "last_hop_max_rate_bytes_per_s" }?.1 ?? 0
        print("gateway-netns sequential 32 MiB in 1 MiB reads over 5 ms / 20 Mbit: intermediate cold (read-ahead \(readAhead)) "
              + "\(fixed(coldBitsPerS / 1e6, 1)) Mbit/s goodput; warm, read-ahead sized from the last hop "
              + "(min RTT \(rttUs) us, max delivery \(fixed(Double(rate) * 8 / 1e6, 1)) Mbit/s, window \(window) bytes): "
              + "link busy \(fixed(100 * utilisation, 1))% (\(linkAfter - linkBefore) frame bytes in \(fixed(spanSeconds, 2)) s; goal >= 80%), "
              + "goodput \(fixed(bitsPerS / 1e6, 1)) Mbit/s = \(fixed(100 * bitsPerS / rateBitsPerS, 1))% of the link rate")
        #expect(utilisation >= 0.8, "sequential read kept the link \(100 * utilisation)% busy")
        #expect(window >= UInt64(Self.chunkBytes), "read-ahead window \(window)")
        await second.close()
        await client.close()
        await baseline.close()
    }

    /// (c) The appliance killed (-9) mid-write across the WAN: what it acknowledged as closed reaches the
    /// remote store after its restart (from its journal), the write it had not closed is discarded, and
    /// nothing acknowledged is lost. The intermediate is down meanwhile, so the closed object is still
    /// only in the journal when the appliance dies.
    @Test(.enabled(if: GatewayNetns.enabled, "\(GatewayNetns.reason)"))
    func applianceKilledMidWriteLosesNothingAcknowledged() async throws {
        try #require(GatewayNetns.isRoot, "CI=true: the namespace tests need root")
        let lab = try GatewayLab()
        defer { lab.destroy() }
        let world = try GatewayWorld(lab: lab, statTTLMs: 300)
        world.put("seed.bin", objectBytes(4096, seed: 40))
        let rclone = try world.startRclone()
        var intermediate = try world.startIntermediate()
        let wan = try world.startWAN(delay: "5ms", rate: "100mbit")
        let journal = ["--journal", world.root.path + "/journal", "--journal-bytes", "64mb", "--shutdown-flush-ms", "10000"]
        var appliance = try world.startAppliance(port: 7200, journal)
        defer {
            for child in [appliance, intermediate, rclone, wan] { _ = stop(child) }
        }
        let client = try await world.connect(port: 7200, key: "seed.bin")
        let uploaded = objectBytes((3 << 20) + 17, seed: 41)
        _ = try await client.write(key: "uploaded.bin", bytes: uploaded)
        try await client.flush(key: "uploaded.bin", timeoutMs: 30_000)
        #expect(try ChildProcessFile.read(world.dataDir + "/" + GatewayWorld.bucket + "/uploaded.bin") == uploaded)

        // The intermediate down: the next object is acknowledged (closed in the journal) but not uploaded.
        intermediate.signal(SIGKILL)
        _ = intermediate.wait(timeoutMs: 5_000)
        let acknowledged = objectBytes((1 << 20) + 3, seed: 42)
        _ = try await client.write(key: "acknowledged.bin", bytes: acknowledged)
        let open = try await client.beginWrite(key: "unclosed.bin")
        #expect(try await client.append(writeID: open, offset: 0, bytes: objectBytes(70_000, seed: 43)) == 70_000)
        appliance.signal(SIGKILL)
        _ = appliance.wait(timeoutMs: 10_000)
        await client.close()

        intermediate = try world.startIntermediate()
        appliance = try world.startAppliance(port: 7200, journal)
        let again = try await world.connect(port: 7200, key: "seed.bin")
        try await again.flush(timeoutMs: 60_000)
        let path = world.dataDir + "/" + GatewayWorld.bucket
        #expect(try ChildProcessFile.read(path + "/acknowledged.bin") == acknowledged, "the acknowledged object reached the store")
        #expect(fileSize(path + "/unclosed.bin") == -1, "the unclosed write was discarded")
        let read = try await readEventually(again, key: "acknowledged.bin", offset: 1 << 20, length: 3)
        #expect(read == Array(acknowledged[(1 << 20)...]), "read back across the WAN")
        let counters = try await again.counters()
        print("gateway-netns appliance killed mid-write: acknowledged object uploaded after restart, unclosed discarded; counters \(counters)")
        await again.close()
    }

    /// (c) S3 down: a clear error, nothing stale (an object replaced meanwhile is read new after);
    /// the intermediate down: a clear error, recovery on its restart; a sector flipped in the
    /// intermediate's chunk file is never served (it is refetched).
    @Test(.enabled(if: GatewayNetns.enabled, "\(GatewayNetns.reason)"))
    func faultsAcrossTheWAN() async throws {
        try #require(GatewayNetns.isRoot, "CI=true: the namespace tests need root")
        let lab = try GatewayLab()
        defer { lab.destroy() }
        let world = try GatewayWorld(lab: lab, statTTLMs: 300)
        let first = objectBytes(8 << 20, seed: 21)
        world.put("f.bin", first)
        var rclone = try world.startRclone()
        var intermediate = try world.startIntermediate()
        let wan = try world.startWAN(delay: "5ms", rate: "100mbit")
        let appliance = try world.startAppliance(port: 7200)
        defer {
            for child in [appliance, intermediate, rclone, wan] { _ = stop(child) }
        }
        let client = try await world.connect(port: 7200, key: "f.bin")
        #expect(try await client.read(key: "f.bin", offset: 0, length: 4096).bytes == Array(first[0..<4096]))

        // S3 down: cached or not, nothing is served once the version cannot be confirmed.
        rclone.signal(SIGKILL)
        _ = rclone.wait(timeoutMs: 5_000)
        let second = objectBytes(8 << 20, seed: 22)
        world.put("f.bin", second)  // replaced while the store is down: the old bytes are stale now
        try await Task.sleep(for: .milliseconds(800))
        for offset: UInt64 in [0, 1 << 20] {
            let failure = await failedRead(client, key: "f.bin", offset: offset, length: 4096)
            #expect(failure?.0 == .remoteUnavailable, "read at \(offset) with S3 down: \(String(describing: failure))")
            #expect(failure.map { !$0.1.isEmpty } == true)
        }
        rclone = try world.startRclone()
        let fresh = try await readEventually(client, key: "f.bin", offset: 0, length: 4096)
        #expect(fresh == Array(second[0..<4096]), "after the store came back, the new version is served")

        // The intermediate down: a clear error; its restart (same cache) brings reads back.
        intermediate.signal(SIGKILL)
        _ = intermediate.wait(timeoutMs: 5_000)
        try await Task.sleep(for: .milliseconds(500))
        let down = await failedRead(client, key: "f.bin", offset: 2 << 20, length: 4096)
        #expect(down?.0 == .intermediateUnavailable, "read with the intermediate down: \(String(describing: down))")
        intermediate = try world.startIntermediate()
        let back = try await readEventually(client, key: "f.bin", offset: 2 << 20, length: 4096)
        #expect(back == Array(second[(2 << 20)..<((2 << 20) + 4096)]))

        // A sector corrupted in the intermediate's chunk file: detected, refetched, never served.
        let chunk = 1
        _ = try await client.read(key: "f.bin", offset: UInt64(chunk * (4 << 20)), length: 4096)
        var chunkFile: String?
        for _ in 0..<50 where chunkFile == nil {
            // `<crc32c(key)>-<chunk, 16 hex digits>-<sequence>.chunk`
            chunkFile = chunkFiles(world.cacheDir).first { path in
                let parts = path.split(separator: "/").last!.split(separator: "-")
                return parts.count == 3 && UInt64(parts[1], radix: 16) == UInt64(chunk)
            }
            if chunkFile == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let path = try #require(chunkFile, "no chunk file for chunk \(chunk) in \(chunkFiles(world.cacheDir))")
        let dataStart = fileSize(path) - (4 << 20)
        let sector = 7
        flipByte(path, at: dataStart + sector * 4096 + 100)
        let offset = chunk * (4 << 20) + sector * 4096
        let repaired = try await client.read(key: "f.bin", offset: UInt64(offset), length: 4096)
        #expect(repaired.bytes == Array(second[offset..<(offset + 4096)]), "a corrupt cached sector was served")
        let lines = stop(intermediate)
        let counters = try #require(lines.first { $0.hasPrefix("counters ") }, "\(lines)")
        #expect((counterValue(counters, "corrupt_on_disk") ?? 0) >= 1, "\(counters)")
        print("gateway-netns faults: S3 down -> remoteUnavailable, intermediate down -> intermediateUnavailable, "
              + "corrupt chunk on disk refetched (\(counters))")
        await client.close()
    }
}

extension GatewayNamespaceTests {
    /// (d) Corruption on the wire: the WAN flips one bit in 0.4% of the frames from the intermediate to
    /// the appliance, TCP/UDP checksums repaired (only the gateway's CRC-32C can see it). 250 random 64 KiB
    /// reads of an object with known bytes (at 0.4%, about as many corrupted frames as 500 reads at 0.2%
    /// took, in half the time): each returns exactly the right bytes or fails with a clear
    /// error, never wrong bytes; the appliance refused corrupt sectors (and refetched); a read after a
    /// failure works (a broken connection is replaced). Then the WAN without corruption: everything
    /// read again (cache included) is right, every read succeeds.
    @Test(.enabled(if: GatewayNetns.enabled, "\(GatewayNetns.reason)"), .timeLimit(.minutes(3)))
    func corruptionOnTheWireIsNeverServed() async throws {
        try #require(GatewayNetns.isRoot, "CI=true: the namespace tests need root")
        let lab = try GatewayLab()
        defer { lab.destroy() }
        let world = try GatewayWorld(lab: lab)
        let object = objectBytes(48 << 20, seed: 41)
        world.put("c.bin", object)
        let rclone = try world.startRclone()
        let intermediate = try world.startIntermediate()
        var wan = try world.startWAN(delay: "5ms", rate: "100mbit", ["--b-to-a-corrupt", "0.4%", "--seed", "7"])
        // A short call timeout: a corrupted length word leaves the reply stream waiting for bytes that never come.
        let appliance = try world.startAppliance(port: 7200, ["--call-timeout-ms", "3000"])
        defer {
            for child in [appliance, intermediate, rclone] { _ = stop(child) }
            print("gateway-netns corruption wan: " + stop(wan).joined(separator: " | "))
        }
        let client = try await world.connect(port: 7200, key: "c.bin")
        let blockBytes = 64 << 10
        var generator = SplitMix(seed: 4_141)
        let reads = 250
        let offsets = (0..<reads).map { _ in Int(generator.next() % UInt64(object.count / blockBytes)) * blockBytes }
        var good = 0
        var wrong = 0
        var failures: [String] = []
        var recoveredAfterFailure = 0
        var lastFailed = false
        let start = monotonicSeconds()
        for offset in offsets {
            do {
                let result = try await client.read(key: "c.bin", offset: UInt64(offset), length: blockBytes)
                if result.bytes.elementsEqual(object[offset..<(offset + blockBytes)]) { good += 1 } else { wrong += 1 }
                if lastFailed { recoveredAfterFailure += 1 }
                lastFailed = false
            } catch {
                failures.append("\(error)")
                lastFailed = true
            }
            if monotonicSeconds() - start > 75 { break }
        }
        let wanLine = try wanCounters(wan, "b-to-a")
        let corruptedFrames = counterValue(wanLine, "corrupted") ?? 0
        let refused = try await applianceCounter(client, "corrupt_sectors_refused")
        let connects = try await applianceCounter(client, "intermediate_connects")
        print("gateway-netns corruption 0.4% b-to-a, \(good + wrong + failures.count) random 64 KiB reads: \(good) right, "
              + "\(wrong) wrong, \(failures.count) failed, \(recoveredAfterFailure) recovered on the next read; "
              + "WAN corrupted \(corruptedFrames) frames; appliance refused \(refused) corrupt sectors, "
              + "\(connects) connections to the intermediate; failures: \(Set(failures).sorted().prefix(5))")
        #expect(wrong == 0, "wrong bytes were served")
        #expect(corruptedFrames > 0)
        #expect(refused > 0, "no corrupt sector was caught (and refetched)")
        #expect(failures.allSatisfy { !$0.isEmpty })
        #expect(failures.count <= (good + wrong + failures.count) / 10, "too many failed reads: \(failures.count)")
        #expect(!lastFailed, "the last read failed")

        // Without corruption: every byte read again is right (cached or not), and every read succeeds.
        print("gateway-netns corruption wan (corrupting part): " + stop(wan).joined(separator: " | "))
        wan = try world.startWAN(delay: "5ms", rate: "100mbit")
        var clean = 0
        // Half of the offsets again (cached or refetched) and half shifted by 5 blocks (mostly not read yet).
        for offset in offsets.prefix(reads / 2) + offsets.suffix(reads / 2).map({ ($0 + 5 * blockBytes) % object.count }) {
            let bytes = try await client.read(key: "c.bin", offset: UInt64(offset), length: blockBytes).bytes
            #expect(bytes.elementsEqual(object[offset..<(offset + blockBytes)]), "bytes at \(offset) after corruption stopped")
            clean += 1
        }
        print("gateway-netns corruption off: \(clean) reads, all right")
        await client.close()
    }
}

/// The `.chunk` files in `directory` (full paths).
func chunkFiles(_ directory: String) -> [String] {
    guard let handle = opendir(directory) else { return [] }
    defer { closedir(handle) }
    var names: [String] = []
    while let entry = readdir(handle) {
        let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name.hasSuffix(".chunk") { names.append(directory + "/" + name) }
    }
    return names
}

func fixed(_ value: Double, _ digits: Int) -> String {
    var factor = 1.0
    for _ in 0..<digits { factor *= 10 }
    let rounded = (value * factor).rounded() / factor
    return "\(rounded)"
}
