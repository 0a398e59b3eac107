// Path: Benchmarks/Sources/gateway-cachehit/main.swift — the gateway appliance's cache-hit path (issue 11),
// like for like in one process and one run: (a) `Appliance.read(key:offset:into:)` over an object held
// whole in the appliance's block cache, and `Appliance.readIfCached` (the call the server makes for a
// read on its event loop: hits only, no task), (b) the same reads over loopback TCP from raw-socket clients
// (one thread and one connection each, a reused buffer) against `ApplianceServer` on 127.0.0.1, and
// (c) `pread` of the same bytes from the same file in the page cache. Same read size, same thread
// count, rounds interleaved, medians; CPU of every thread of the process (getrusage) per MB.
// The object reaches the appliance's cache through an in-process intermediate over a directory store on
// 127.0.0.1 (no WAN: this measures hits only); the counters prove the timed reads were all hits.
import ArgumentParser
import Glibc
import SluiceGateway

@main
struct GatewayCacheHit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway-cachehit",
        abstract: "Appliance cache hits in process and over loopback TCP vs pread of the same bytes.")

    @Option(name: .customLong("object-mib"), help: "Object size in MiB (held whole in the appliance's cache).")
    var objectMiB = 64
    @Option(help: "Interleaved rounds; the table shows medians.")
    var rounds = 5
    @Option(name: .customLong("cell-mib"), help: "Bytes read per cell (all threads together), MiB.")
    var cellMiB = 1024
    @Option(name: .customLong("read-kib"), help: "Read sizes in KiB, comma separated.")
    var readKiB = "1024,64"
    @Option(help: "Thread counts (TCP: one connection per thread), comma separated.")
    var threads = "1,4"
    @Option(help: "Folder for the store, the intermediate's chunks and the pread file.")
    var directory = "/tmp"

    mutating func run() async throws {
        let readSizes = readKiB.split(separator: ",").map { Int($0)! << 10 }
        let threadCounts = threads.split(separator: ",").map { Int($0)! }
        let objectBytes = objectMiB << 20
        precondition(readSizes.allSatisfy { $0 > 0 && $0 % 4096 == 0 && objectBytes % $0 == 0 }, "read sizes: sectors dividing the object")
        precondition(threadCounts.allSatisfy { (1...64).contains($0) }, "threads in 1...64")
        let setup = try await Setup.make(directory: directory, objectBytes: objectBytes)
        defer { setup.tearDown() }
        let threadsMax = threadCounts.max()!
        let readMax = readSizes.max()!
        let buffers = (0..<threadsMax).map { _ in Buffer(bytes: readMax + 4096) }
        var connections: [Int32] = []
        for _ in 0..<threadsMax { connections.append(try RawClient.connect(port: setup.server.port)) }
        defer { for fd in connections { close(fd) } }

        // Every path once over the whole object, every byte compared.
        for path in Path.allCases {
            try await setup.verify(path, readBytes: readMax, buffer: buffers[0], connection: connections[0])
        }
        print("verified: every byte of the \(objectMiB) MiB object through each path")

        let before = setup.appliance.counters.snapshot()
        var expectedHitSectors: UInt64 = 0
        var results: [CellKey: [Sample]] = [:]
        for round in 0..<rounds {
            for size in readSizes {
                for count in threadCounts {
                    for path in Path.allCases {
                        let sample = try await setup.measure(path, readBytes: size, threads: count, cellBytes: cellMiB << 20,
                                                             buffers: buffers, connections: connections)
                        results[CellKey(path: path, readBytes: size, threads: count), default: []].append(sample)
                        if path != .pread { expectedHitSectors += UInt64(sample.bytes / 4096) }
                    }
                }
            }
            print("round \(round + 1)/\(rounds) done")
        }
        let after = setup.appliance.counters.snapshot()
        let hitDelta = after.hitSectors - before.hitSectors
        let missDelta = after.missSectors - before.missSectors
        let fetchDelta = after.fetches - before.fetches
        print("appliance counters over the timed rounds: hit_sectors +\(hitDelta) (expected \(expectedHitSectors)), "
              + "miss_sectors +\(missDelta), fetches +\(fetchDelta), stats +\(after.stats - before.stats)")
        precondition(hitDelta == expectedHitSectors && missDelta == 0 && fetchDelta == 0, "every timed read was a hit")

        print("")
        print("| read | threads | path | MB/s (median) | CPU µs/MB (median) | vs pread |")
        print("|---|---|---|---|---|---|")
        for size in readSizes {
            for count in threadCounts {
                let anchor = median(results[CellKey(path: .pread, readBytes: size, threads: count)]!.map(\.mbPerSecond))
                for path in Path.allCases {
                    let samples = results[CellKey(path: path, readBytes: size, threads: count)]!
                    let rate = median(samples.map(\.mbPerSecond))
                    let cpu = median(samples.map(\.cpuMicrosPerMB))
                    print("| \(size >> 10) KiB | \(count) | \(path.label) | \(format(rate, 0)) | \(format(cpu, 1)) | \(format(rate / anchor, 2))x |")
                }
            }
        }
        print("")
        print("MB = 10^6 bytes; \(rounds) rounds, \(cellMiB) MiB per cell; CPU = user + system of every thread of this process "
              + "(TCP: server and client sides) over bytes read. Object \(objectMiB) MiB, sectors 4 KiB, blocks 64 KiB.")
    }
}

enum Path: CaseIterable, Hashable {
    case inProcess, hitOnly, tcp, pread
    var label: String {
        switch self {
        case .inProcess: "(a) Appliance.read(into:)"
        case .hitOnly: "(a) Appliance.readIfCached"
        case .tcp: "(b) loopback TCP"
        case .pread: "(c) pread"
        }
    }
}

struct CellKey: Hashable {
    var path: Path
    var readBytes: Int
    var threads: Int
}

struct Sample {
    var bytes: Int
    var mbPerSecond: Double
    var cpuMicrosPerMB: Double
}

/// A reused read buffer (one per thread). unchecked: each is used by one worker at a time.
final class Buffer: @unchecked Sendable {
    let raw: UnsafeMutableRawBufferPointer
    init(bytes: Int) {
        raw = .allocate(byteCount: bytes, alignment: 4096)
        raw.initializeMemory(as: UInt8.self, repeating: 0)
    }
    deinit { raw.deallocate() }
}

/// The object's bytes, for checks. unchecked: read only after `init`.
final class Expected: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int) {
        bytes = .allocate(byteCount: count, alignment: 64)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let words = bytes.bindMemory(to: UInt64.self)
        for index in 0..<words.count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            words[index] = state
        }
    }
    deinit { bytes.deallocate() }

    /// Spot check of a timed read: its first and last 8 bytes.
    func matchesEnds(_ got: UnsafeRawPointer, offset: Int, count: Int) -> Bool {
        memcmp(got, bytes.baseAddress! + offset, 8) == 0 && memcmp(got + count - 8, bytes.baseAddress! + offset + count - 8, 8) == 0
    }

    func matches(_ got: UnsafeRawPointer, offset: Int, count: Int) -> Bool {
        memcmp(got, bytes.baseAddress! + offset, count) == 0
    }
}

struct Setup {
    let root: String
    let key = "bench/object"
    let filePath: String
    let objectBytes: Int
    let expected: Expected
    let intermediate: IntermediateServer
    let appliance: Appliance
    let server: ApplianceServer
    let fd: Int32

    static func make(directory: String, objectBytes: Int) async throws -> Setup {
        var template = Array("\(directory)/sluice-cachehit-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchError("mkdtemp in \(directory): errno \(errno)") }
        let root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        mkdir(root + "/store", 0o755)
        mkdir(root + "/store/bench", 0o755)
        let expected = Expected(count: objectBytes)
        let filePath = root + "/store/bench/object"
        let out = open(filePath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard out >= 0, write(out, expected.bytes.baseAddress, objectBytes) == objectBytes else { throw BenchError("writing \(filePath)") }
        close(out)
        let units = GatewayUnits.standard
        let chunkCache = try ChunkCache(configuration: ChunkCacheConfiguration(directory: root + "/chunks", capacityBytes: objectBytes + (64 << 20),
                                                                               units: units))
        let intermediate = try IntermediateServer.bind(host: "127.0.0.1", port: 0, store: DirectoryObjectStore(root: root + "/store"),
                                                       cache: chunkCache, configuration: IntermediateConfiguration(units: units))
        var configuration = ApplianceConfiguration()
        configuration.cacheBytes = objectBytes + (64 << 20)
        // The timed reads use the cached stat: a hit needs nothing from the intermediate.
        configuration.statTTLNs = 3_600_000_000_000
        let appliance = try await Appliance.start(intermediateHost: "127.0.0.1", port: intermediate.port, configuration: configuration)
        // Fill the cache: the whole object through the appliance (4 MiB reads), then let read-aheads settle.
        let fill = Buffer(bytes: 4 << 20)
        var offset = 0
        while offset < objectBytes {
            let length = min(4 << 20, objectBytes - offset)
            _ = try await appliance.read(key: "bench/object", offset: UInt64(offset), into: UnsafeMutableRawBufferPointer(rebasing: fill.raw[0..<length]))
            offset += length
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        let server = try ApplianceServer.bind(host: "127.0.0.1", port: 0, appliance: appliance)
        let fd = open(filePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BenchError("open \(filePath): errno \(errno)") }
        // The file into the page cache.
        offset = 0
        while offset < objectBytes {
            let got = Glibc.pread(fd, fill.raw.baseAddress, 4 << 20, off_t(offset))
            guard got > 0 else { throw BenchError("pread \(filePath): errno \(errno)") }
            offset += got
        }
        return Setup(root: root, filePath: filePath, objectBytes: objectBytes, expected: expected, intermediate: intermediate,
                     appliance: appliance, server: server, fd: fd)
    }

    func tearDown() {
        server.close()
        intermediate.close()
        close(fd)
        _ = system("rm -rf '\(root)'")
    }

    /// Reads the whole object through `path` and compares every byte.
    func verify(_ path: Path, readBytes: Int, buffer: Buffer, connection: Int32) async throws {
        var offset = 0
        var requestID: UInt64 = 1 << 40
        while offset < objectBytes {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer.raw[0..<readBytes])
            let got: UnsafeRawPointer
            switch path {
            case .inProcess:
                _ = try await appliance.read(key: key, offset: UInt64(offset), into: target)
                got = UnsafeRawPointer(target.baseAddress!)
            case .hitOnly:
                guard appliance.readIfCached(key: key, offset: UInt64(offset), into: target) != nil else { throw BenchError("readIfCached missed at \(offset)") }
                got = UnsafeRawPointer(target.baseAddress!)
            case .tcp:
                requestID += 1
                got = try RawClient.read(connection, key: key, offset: offset, length: readBytes, requestID: requestID, frame: buffer.raw)
            case .pread:
                guard Glibc.pread(fd, target.baseAddress, readBytes, off_t(offset)) == readBytes else { throw BenchError("short pread") }
                got = UnsafeRawPointer(target.baseAddress!)
            }
            guard expected.matches(got, offset: offset, count: readBytes) else { throw BenchError("\(path.label): bytes at \(offset) differ") }
            offset += readBytes
        }
    }

    /// One cell: `threads` workers read `cellBytes` together in `readBytes` pieces, each from its own
    /// start in the object, wrapping around.
    func measure(_ path: Path, readBytes: Int, threads: Int, cellBytes: Int, buffers: [Buffer], connections: [Int32]) async throws -> Sample {
        let readsPerWorker = max(1, cellBytes / threads / readBytes)
        let objectBytes = objectBytes
        let slots = objectBytes / readBytes
        let starts = (0..<threads).map { ($0 * slots / threads) }
        let failures = FailureCount()
        let cpuBefore = cpuMicros()
        let startNs = monotonicNanos()
        switch path {
        case .inProcess:
            let appliance = appliance
            let key = key
            let expected = expected
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<threads {
                    let buffer = buffers[worker]
                    let start = starts[worker]
                    group.addTask {
                        let target = UnsafeMutableRawBufferPointer(rebasing: buffer.raw[0..<readBytes])
                        for index in 0..<readsPerWorker {
                            let offset = ((start + index) % slots) * readBytes
                            do {
                                _ = try await appliance.read(key: key, offset: UInt64(offset), into: target)
                            } catch {
                                failures.add()
                                continue
                            }
                            if !expected.matchesEnds(target.baseAddress!, offset: offset, count: readBytes) { failures.add() }
                        }
                    }
                }
            }
        case .hitOnly:
            let appliance = appliance
            let key = key
            let expected = expected
            runThreads(threads) { worker in
                let target = UnsafeMutableRawBufferPointer(rebasing: buffers[worker].raw[0..<readBytes])
                for index in 0..<readsPerWorker {
                    let offset = ((starts[worker] + index) % slots) * readBytes
                    guard appliance.readIfCached(key: key, offset: UInt64(offset), into: target) != nil,
                          expected.matchesEnds(target.baseAddress!, offset: offset, count: readBytes) else {
                        failures.add()
                        continue
                    }
                }
            }
        case .tcp:
            let key = key
            let expected = expected
            runThreads(threads) { worker in
                let frame = buffers[worker].raw
                let fd = connections[worker]
                for index in 0..<readsPerWorker {
                    let offset = ((starts[worker] + index) % slots) * readBytes
                    guard let got = try? RawClient.read(fd, key: key, offset: offset, length: readBytes, requestID: UInt64(index + 1), frame: frame),
                          expected.matchesEnds(got, offset: offset, count: readBytes) else {
                        failures.add()
                        continue
                    }
                }
            }
        case .pread:
            let fd = fd
            let expected = expected
            runThreads(threads) { worker in
                let target = buffers[worker].raw.baseAddress!
                for index in 0..<readsPerWorker {
                    let offset = ((starts[worker] + index) % slots) * readBytes
                    guard Glibc.pread(fd, target, readBytes, off_t(offset)) == readBytes,
                          expected.matchesEnds(target, offset: offset, count: readBytes) else {
                        failures.add()
                        continue
                    }
                }
            }
        }
        let elapsedNs = monotonicNanos() - startNs
        let cpu = cpuMicros() - cpuBefore
        guard failures.value == 0 else { throw BenchError("\(path.label): \(failures.value) reads failed or differed") }
        let bytes = readsPerWorker * threads * readBytes
        let mb = Double(bytes) / 1e6
        return Sample(bytes: bytes, mbPerSecond: mb / (Double(elapsedNs) / 1e9), cpuMicrosPerMB: Double(cpu) / mb)
    }
}

/// A blocking raw-socket client of the appliance protocol v1: one request at a time, the reply read
/// whole into the caller's reused buffer.
enum RawClient {
    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw BenchError("connect 127.0.0.1:\(port): errno \(errno)") }
        // hello "default"
        var request: [UInt8] = []
        let share = Array("default".utf8)
        append(&request, UInt32(10 + 2 + share.count))
        request += [ApplianceProtocol.version, ApplianceOpcode.hello.rawValue]
        append(&request, UInt64(0))
        append(&request, UInt16(share.count))
        request += share
        try sendAll(fd, request)
        var reply = [UInt8](repeating: 0, count: 64)
        try reply.withUnsafeMutableBytes { raw in
            try receiveAll(fd, raw.baseAddress!, 4)
            let length = Int(load(UInt32.self, raw.baseAddress!))
            guard length <= 60 else { throw BenchError("hello reply of \(length) bytes") }
            try receiveAll(fd, raw.baseAddress! + 4, length)
            guard raw[14] == ApplianceStatus.ok.rawValue else { throw BenchError("hello refused: status \(raw[14])") }
        }
        return fd
    }

    /// Sends a read and receives its reply into `frame`; returns where its bytes start.
    static func read(_ fd: Int32, key: String, offset: Int, length: Int, requestID: UInt64,
                     frame: UnsafeMutableRawBufferPointer) throws -> UnsafeRawPointer {
        let keyBytes = key.utf8.count
        let requestBytes = 4 + 10 + 2 + keyBytes + 8 + 4
        precondition(requestBytes <= 512 && frame.count >= length + 4 + 11 + 8 + 2 + GatewayProtocol.etagBytesMax + 4, "buffers hold the frames")
        try withUnsafeTemporaryAllocation(byteCount: 512, alignment: 8) { request in
            let base = request.baseAddress!
            var at = 0
            func put<T: FixedWidthInteger>(_ value: T) {
                withUnsafeBytes(of: value.bigEndian) { (base + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                at += MemoryLayout<T>.size
            }
            put(UInt32(requestBytes - 4))
            put(ApplianceProtocol.version)
            put(ApplianceOpcode.read.rawValue)
            put(requestID)
            put(UInt16(keyBytes))
            var key = key
            key.withUTF8 { (base + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            at += keyBytes
            put(UInt64(offset))
            put(UInt32(length))
            try sendAll(fd, UnsafeRawBufferPointer(start: base, count: at))
        }
        let base = frame.baseAddress!
        try receiveAll(fd, base, 4)
        let frameLength = Int(load(UInt32.self, base))
        guard frameLength + 4 <= frame.count else { throw BenchError("reply of \(frameLength) bytes") }
        try receiveAll(fd, base + 4, frameLength)
        guard base.load(fromByteOffset: 5, as: UInt8.self) == ApplianceOpcode.read.rawValue,
              load(UInt64.self, base + 6) == requestID else { throw BenchError("reply out of order") }
        guard base.load(fromByteOffset: 14, as: UInt8.self) == ApplianceStatus.ok.rawValue else {
            throw BenchError("read refused: status \(base.load(fromByteOffset: 14, as: UInt8.self))")
        }
        let etagBytes = Int(load(UInt16.self, base + 15 + 8))
        let countAt = 15 + 8 + 2 + etagBytes
        guard Int(load(UInt32.self, base + countAt)) == length, countAt + 4 + length == frameLength + 4 else {
            throw BenchError("read answered with another length")
        }
        return UnsafeRawPointer(base + countAt + 4)
    }

    static func load<T: FixedWidthInteger>(_ type: T.Type, _ at: UnsafeRawPointer) -> T {
        T(bigEndian: at.loadUnaligned(as: T.self))
    }

    static func append<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try sendAll(fd, $0) }
    }

    static func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let sent = send(fd, bytes.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            if sent > 0 { done += sent; continue }
            if sent < 0 && errno == EINTR { continue }
            throw BenchError("send: errno \(errno)")
        }
    }

    static func receiveAll(_ fd: Int32, _ into: UnsafeMutableRawPointer, _ count: Int) throws {
        var done = 0
        while done < count {
            let got = recv(fd, into + done, count - done, Int32(MSG_WAITALL))
            if got > 0 { done += got; continue }
            if got < 0 && errno == EINTR { continue }
            throw BenchError(got == 0 ? "connection closed" : "recv: errno \(errno)")
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

final class FailureCount: @unchecked Sendable {  // unchecked: guarded by its mutex
    private var lock = pthread_mutex_t()
    private var count = 0
    init() { pthread_mutex_init(&lock, nil) }
    func add() {
        pthread_mutex_lock(&lock)
        count += 1
        pthread_mutex_unlock(&lock)
    }
    var value: Int {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return count
    }
}

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body(0..<count)` on `count` new threads and joins them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    var threads: [pthread_t] = []
    for index in 0..<count {
        let box = Unmanaged.passRetained(ThreadBody { body(index) }).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { argument in
            Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create: \(rc)")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}

func cpuMicros() -> Int {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + Int(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

func monotonicNanos() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec * 1_000_000_000 + now.tv_nsec
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func format(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    if digits == 0 { return String(Int(rounded)) }
    var text = String(rounded)
    let decimals = text.split(separator: ".").last?.count ?? 0
    if decimals < digits { text += String(repeating: "0", count: digits - decimals) }
    return text
}
