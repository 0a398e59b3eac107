// swift-tools-version: 6.1
// etcd v3 transport measurement (issue 10): Sluice's JSON-gateway client (SluiceReplication.EtcdClient,
// async-http-client) against etcd's gRPC API (grpc-swift-2 over HTTP/2 plaintext), on one local etcd.
// A package of its own, outside Benchmarks/Sources, so neither Sluice nor its Benchmarks package
// depends on gRPC. Run through scripts/bench-etcd-transport.sh at the repository root.
import PackageDescription

let package = Package(
    name: "EtcdTransport",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Sluice", path: "../.."),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // etcd's KV subset as Swift, generated once by scripts/gen-etcd-grpc.sh from protos/ and committed.
        .target(
            name: "EtcdGRPC",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .executableTarget(
            name: "etcd-transport",
            dependencies: [
                "EtcdGRPC",
                .product(name: "SluiceReplication", package: "Sluice"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
