import Glibc
import SluicePageStore
import Synchronization
import SluiceTestSupport
import SluiceReplicationTestSupport
import Testing

@testable import SluiceStorageServer

/// A `sluice storage serve` child process; `port` is parsed from its first stdout line.
struct ServeProcess {
    let pid: pid_t
    let port: Int

    static func spawn(binary: String, dataDirectory: String) throws -> ServeProcess {
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { throw SpawnError("pipe: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], STDOUT_FILENO)
        posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
        let arguments = [binary, "storage", "serve", "--data", dataDirectory, "--host", "127.0.0.1", "--port", "0"]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, binary, &actions, nil, &argv, environ)
        close(pipeEnds[1])
        defer { close(pipeEnds[0]) }
        guard result == 0 else { throw SpawnError("posix_spawn: \(result)") }
        // Read the "listening on HOST:PORT ..." line (bounded: 512 bytes).
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 512, read(pipeEnds[0], &byte, 1) == 1, byte != UInt8(ascii: "\n") { line.append(byte) }
        let text = String(decoding: line, as: UTF8.self)
        guard let colon = text.split(separator: " ").dropFirst(2).first?.split(separator: ":").last, let port = Int(colon) else {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw SpawnError("no port in '\(text)'")
        }
        return ServeProcess(pid: pid, port: port)
    }

    func kill9() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}

/// Payload of write number `sequence`: its number in the first 8 bytes, then bytes derived from it, so
/// a page that mixes two writes does not check out.
func patternPayload(_ sequence: UInt64, bytes: Int = 256) -> [UInt8] {
    var payload = withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
    for index in 8..<bytes { payload.append(UInt8(truncatingIfNeeded: sequence &* 31 &+ UInt64(index))) }
    return payload
}

@Suite(.serialized) struct CrashRecoveryTests {
    static let groupCount: UInt64 = 4
    static let pagesPerGroup: UInt64 = 4

    /// Streams 4-page unconditional writes from 4 clients (client g writes group g), kills the server with SIGKILL
    /// mid-stream, restarts it on the same directory, and checks every acknowledged write: each page's
    /// OSN is at least the acked OSN, its bytes are one whole write's pattern (never a mix), from the
    /// acked write or a later one. Three rounds on one directory.
    @Test func acknowledgedWritesSurviveKill9() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle (run `swift build --build-tests`)")
        let directory = "/var/tmp/sluice-kill9-\(getpid())"
        defer { removeDataDirectory(directory) }
        // Last acknowledged (sequence, osn) per group, across rounds.
        let acked = Mutex<[UInt64: (sequence: UInt64, osn: UInt64)]>([:])
        var nextSequence: UInt64 = Self.groupCount
        for round in 0..<3 {
            let server = try ServeProcess.spawn(binary: binary, dataDirectory: directory)
            try verify(port: server.port, acked: acked.withLock { $0 }, round: round)
            let stop = Atomic<Bool>(false)
            let start = nextSequence
            let sent = Atomic<UInt64>(0)
            let port = server.port
            // Threads 0..<4 each write their own group over their own connection (so the node's group
            // commits carry several clients' writes); the last thread kills the server.
            let writerCount = Int(Self.groupCount)
            runClientThreads(writerCount + 1) { thread in
                if thread == writerCount {
                    // Kill once some writes were acknowledged (a random number, so the kill lands at
                    // different points of a write), or after a bound.
                    let killAfter = UInt64.random(in: 50...400)
                    var waitedMs = 0
                    while sent.load(ordering: .relaxed) < killAfter && waitedMs < 5_000 {
                        usleep(1_000)
                        waitedMs += 1
                    }
                    server.kill9()
                    stop.store(true, ordering: .relaxed)
                    return
                }
                guard let client = try? StorageClient(host: "127.0.0.1", port: port, receiveTimeoutMs: 5_000) else { return }
                let group = UInt64(thread)
                var sequence = start + group  // sequence % groupCount == group: start is a multiple of it
                while !stop.load(ordering: .relaxed) {
                    let pages = (0..<Self.pagesPerGroup).map {
                        PageWrite(index: group * Self.pagesPerGroup + $0, payload: patternPayload(sequence), condition: .unconditional)
                    }
                    guard let osn = try? client.write(objectID: 1, pages: pages) else { return }
                    acked.withLock { $0[group] = (sequence, osn) }
                    sent.add(1, ordering: .relaxed)
                    sequence += Self.groupCount
                }
            }
            print("kill9 round \(round): \(sent.load(ordering: .relaxed)) writes acknowledged before SIGKILL")
            // Past any write of this round, acknowledged or in flight; a multiple of groupCount.
            nextSequence = start + (sent.load(ordering: .relaxed) + 1_000) * Self.groupCount
            #expect(sent.load(ordering: .relaxed) > 0, "round \(round): some writes were acknowledged before the kill")
        }
        let final = try ServeProcess.spawn(binary: binary, dataDirectory: directory)
        defer { final.kill9() }
        try verify(port: final.port, acked: acked.withLock { $0 }, round: 3)
    }

    func verify(port: Int, acked: [UInt64: (sequence: UInt64, osn: UInt64)], round: Int) throws {
        let client = try StorageClient(host: "127.0.0.1", port: port)
        for (group, write) in acked {
            var sequences: Set<UInt64> = []
            for offset in 0..<Self.pagesPerGroup {
                let page = try client.read(objectID: 1, pageIndex: group * Self.pagesPerGroup + offset)
                #expect(page.pageOSN >= write.osn, "round \(round): group \(group) page OSN \(page.pageOSN) < acked \(write.osn)")
                let sequence = page.payload.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
                #expect(sequence >= write.sequence, "round \(round): group \(group) holds write \(sequence), acked \(write.sequence)")
                #expect(sequence % Self.groupCount == group, "round \(round): write \(sequence) is not group \(group)'s")
                #expect(Array(page.payload.prefix(256)) == patternPayload(sequence), "round \(round): page bytes mix writes")
                sequences.insert(sequence)
            }
            // A 4-page write is all or nothing, across the crash too.
            #expect(sequences.count == 1, "round \(round): group \(group) pages hold writes \(sequences.sorted())")
        }
    }
}
