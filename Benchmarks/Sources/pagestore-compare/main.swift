// Path: Benchmarks/Sources/pagestore-compare/main.swift — the page store's side of the
// fio comparison (scripts/bench-pagestore.sh): 4 KiB random reads or writes at a queue depth, O_DIRECT,
// through PageFile's slots (registered buffers and file; the loop is RandomIO.swift), for a fixed time. Prints one JSON line per run.
//   pagestore-compare fill PATH PAGES                  writes every page once (valid headers and CRCs)
//   pagestore-compare run PATH PAGES read|write DEPTH SECONDS [SUBMIT_BATCH [SEED]]
//   pagestore-compare pwrite PATH PAGES SECONDS        plain buffered pwrite(2) of random pages, one thread
// SUBMIT_BATCH is fio's iodepth_batch_submit (default 1, as fio's). BUFFERED=1 in the environment
// opens the page file without O_DIRECT (to measure io_uring's buffered-write fallback).
import Foundation
import SluicePageStore

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(2)
}

let arguments = CommandLine.arguments
guard arguments.count >= 4, let pages = UInt64(arguments[3]), pages > 0 else {
    fail("usage: pagestore-compare fill PATH PAGES | run PATH PAGES read|write DEPTH SECONDS [SUBMIT_BATCH [SEED]]")
}
let path = arguments[2]

do {
    switch arguments[1] {
    case "fill":
        var configuration = PageFileConfiguration(path: path)
        configuration.queueDepth = 32
        var file = try PageFile(configuration: configuration)
        let payload = [UInt8](repeating: 0xA5, count: file.payloadSizeBytes)
        var next: UInt64 = 0
        while next < pages {
            let count = Int(min(32, pages - next))
            let batch = (0..<UInt64(count)).map { next + $0 }
            try file.write(physicalPages: batch,
                           headers: batch.map { PageHeader(osn: 1, objectID: 0, pageIndex: $0) },
                           payloads: Array(repeating: payload, count: count))
            next += UInt64(count)
        }
        try file.sync()
        print("{\"filled\": \(pages)}")
    case "run":
        guard arguments.count >= 7, let depth = Int(arguments[5]), let seconds = Double(arguments[6]),
              ["read", "write"].contains(arguments[4])
        else { fail("run PATH PAGES read|write DEPTH SECONDS [SUBMIT_BATCH [SEED]]") }
        let submitBatch = arguments.count > 7 ? Int(arguments[7]) ?? 1 : 1
        let seed = arguments.count > 8 ? UInt64(arguments[8]) ?? 1 : UInt64(UInt32.random(in: 1...UInt32.max))
        var configuration = PageFileConfiguration(path: path)
        configuration.queueDepth = depth
        configuration.directIO = ProcessInfo.processInfo.environment["BUFFERED"] != "1"
        var file = try PageFile(configuration: configuration)
        let writes = arguments[4] == "write"
        let (operations, nanoseconds) = try randomIO(&file, writes: writes, pageCount: pages, depth: depth,
                                                     seconds: seconds, seed: seed, submitBatch: submitBatch)
        let iops = Double(operations) / (Double(nanoseconds) / 1e9)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)  // the whole process, set-up included, as fio's usr_cpu + sys_cpu
        let cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let cpu = cpuSeconds / (Double(nanoseconds) / 1e9)
        print("{\"rw\": \"\(arguments[4])\", \"depth\": \(depth), \"operations\": \(operations), "
              + "\"submitBatch\": \(submitBatch), \"nanoseconds\": \(nanoseconds), \"iops\": \(iops), \"cpu\": \(cpu)}")
    case "pwrite":
        guard arguments.count >= 5, let seconds = Double(arguments[4]) else { fail("pwrite PATH PAGES SECONDS") }
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { fail("open \(path): errno \(errno)") }
        var page = [UInt8](repeating: 0xA5, count: 4096)
        var generator = SystemRandomNumberGenerator()
        var operations: UInt64 = 0
        let start = DispatchTime.now().uptimeNanoseconds
        let end = start + UInt64(seconds * 1e9)
        var now = start
        while now < end {
            for _ in 0..<64 {
                let target = UInt64.random(in: 0..<pages, using: &generator)
                guard pwrite(fd, &page, 4096, off_t(target * 4096)) == 4096 else { fail("pwrite: errno \(errno)") }
                operations += 1
            }
            now = DispatchTime.now().uptimeNanoseconds
        }
        close(fd)
        let iops = Double(operations) / (Double(now - start) / 1e9)
        print("{\"rw\": \"pwrite\", \"operations\": \(operations), \"iops\": \(iops)}")
    default:
        fail("unknown command \(arguments[1])")
    }
} catch {
    fail("pagestore-compare: \(error)")
}
