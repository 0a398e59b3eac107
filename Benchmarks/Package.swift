// swift-tools-version: 6.1
// Sluice benchmarks: a package of its own, so benchmark dependencies never reach the root package.
// From this folder: `swift package benchmark --target RingBench` (package-benchmark), or
// `swift run -c release ring-compare` (same-run medians and ratios for docs; scripts/bench-ring.sh).
import PackageDescription

// DPDK's headers (libdpdk-dev) for the rte_ring anchor: search paths only, no EAL and no -march, so
// every ring in the harness is compiled for the same baseline CPU as the Swift code.
let dpdkHeaderFlags = ["-I/usr/include/dpdk", "-I/usr/include/x86_64-linux-gnu/dpdk"]
// The ring under test, read from the root package's headers so one file can rebuild it at another
// SLUICE_SPSC_ALIGN (CShims is not a product, so it cannot be a dependency; it links in via SluiceCore).
let cshimsHeaderFlags = ["-I\(Context.packageDirectory)/../CShims/include"]

let package = Package(
    name: "SluiceBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Sluice", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // The C rings (Sluice's at two alignments, DPDK's rte_ring) driven by one loop shape, and the
        // two-pinned-threads runner that the Swift loops use too.
        .target(
            name: "CRingHarness",
            cSettings: [.unsafeFlags(dpdkHeaderFlags + cshimsHeaderFlags)],
            linkerSettings: [.linkedLibrary("rte_ring"), .linkedLibrary("rte_eal"), .linkedLibrary("pthread")]
        ),
        // The Swift wrapper's loops (same shape as the C ones) and the measurement API both drivers use.
        .target(
            name: "RingHarness",
            dependencies: ["CRingHarness", .product(name: "SluiceCore", package: "Sluice")]
        ),
        // Every ring variant interleaved, N runs each; prints a markdown table of medians and ratios.
        .executableTarget(
            name: "ring-compare",
            dependencies: ["RingHarness", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // Futex wake-up latency between two pinned threads: the floor under sleeping wait modes.
        .target(name: "CWakeHarness", linkerSettings: [.linkedLibrary("pthread")]),
        .executableTarget(name: "wake-latency", dependencies: ["CWakeHarness"]),
        // Plain-C AF_PACKET anchors (a TX-ring sender, a recvfrom receiver) and the driver that runs
        // them against Sluice's AF_PACKET rings over a veth pair (scripts/bench-afpacket.sh).
        .target(name: "CPacketHarness", linkerSettings: [.linkedLibrary("pthread")]),
        .executableTarget(
            name: "afpacket-compare",
            dependencies: [
                "CPacketHarness",
                .product(name: "SluiceCore", package: "Sluice"),
                .product(name: "SluicePacketIO", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The traffic controller: TX cost on vs off, and byte shares against Linux htb (scripts/bench-traffic.sh).
        // CPacketHarness for its CPU clocks (/proc/stat, getrusage).
        .executableTarget(
            name: "traffic-compare",
            dependencies: [
                "CPacketHarness",
                .product(name: "SluiceCore", package: "Sluice"),
                .product(name: "SluicePacketIO", package: "Sluice"),
                .product(name: "SluiceTraffic", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The page store's 4 KiB random reads and writes at a queue depth, O_DIRECT, for fio to be
        // compared against on the same file (scripts/bench-pagestore.sh).
        .executableTarget(
            name: "pagestore-compare",
            dependencies: [.product(name: "SluicePageStore", package: "Sluice")]
        ),
        // The storage node over loopback: a node served in-process, N client threads, ops/s and latency
        // percentiles (scripts/bench-storage.sh, scripts/bench-storage-reads.sh).
        .executableTarget(
            name: "storage-bench",
            dependencies: [
                .product(name: "SluicePageStore", package: "Sluice"),
                .product(name: "SluiceStorageServer", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Conditional writes through a node on the embedded log or on etcd, vs etcd transactions by
        // hand on the same cluster and client stack; fail-over after a leader kill (scripts/bench-replication.sh).
        .executableTarget(
            name: "replication-bench",
            dependencies: [
                .product(name: "SluicePageStore", package: "Sluice"),
                .product(name: "SluiceStorageServer", package: "Sluice"),
                .product(name: "SluiceReplication", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The firmware-update attempt counter: TPMCounter through ESAPI vs tpm2_nvincrement/tpm2_nvread spawned
        // per operation on the same swtpm, and the boot check of N devices (scripts/bench-firmware.sh).
        // VM migration (issue 13): Sluice-driven moves against plain QMP with default parameters, idle and
        // dirtying guests under tcg (scripts/bench-migration.sh).
        .executableTarget(
            name: "migration-bench",
            dependencies: [
                .product(name: "SluiceMigration", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "firmware-bench",
            dependencies: [
                .product(name: "SluiceFirmware", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The gateway appliance's cache-hit path: in process, over loopback TCP (ApplianceServer + a Swift
        // client), and pread of the same bytes from a local file, same run (scripts/bench-gateway-cachehit.sh).
        .executableTarget(
            name: "gateway-cachehit",
            dependencies: [
                .product(name: "SluiceGateway", package: "Sluice"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The migration scheduler's simulator at scale (issue 14): Sluice, the oracle and both anchors on
        // one generated world; scripts/bench-scheduling.sh.
        .executableTarget(
            name: "schedule-sim",
            dependencies: [.product(name: "SluiceScheduling", package: "Sluice"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The core runtime's 3-stage load test (generator -> relay -> latency sink): benchmark code kept
        // out of SluiceCore, run by `pipeline-load` (scripts/bench-pipeline.sh) and PipelineBench.
        .target(name: "PipelineLoad", dependencies: [.product(name: "SluiceCore", package: "Sluice")]),
        .executableTarget(
            name: "pipeline-load",
            dependencies: ["PipelineLoad", .product(name: "SluiceCore", package: "Sluice"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // package-benchmark suites: one folder each beside this file (the plugin looks for a parent
        // folder named Benchmarks).
        .executableTarget(
            name: "RingBench",
            dependencies: ["RingHarness", .product(name: "Benchmark", package: "benchmark")],
            path: "RingBench",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "PipelineBench",
            dependencies: ["PipelineLoad", .product(name: "SluiceCore", package: "Sluice"),
                           .product(name: "Benchmark", package: "benchmark")],
            path: "PipelineBench",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    cLanguageStandard: .gnu11
)
