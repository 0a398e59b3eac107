// swift-tools-version: 6.1
// etcd v3 transport measurement (issue 10): Sluice's etcd client (SluiceEtcd.EtcdClient, gRPC over HTTP/2
// plaintext through grpc-swift-2) against etcd's JSON gateway (GatewayClient here: Sluice's former client,
// async-http-client, HTTP/1.1), on one local etcd. A package of its own, outside Benchmarks/Sources, so
// neither Sluice nor its Benchmarks package depends on async-http-client. Run through
// scripts/bench-etcd-transport.sh at the repository root.
import PackageDescription

let package = Package(
    name: "EtcdTransport",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Sluice", path: "../.."),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "etcd-transport",
            dependencies: [
                .product(name: "SluiceEtcd", package: "Sluice"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
