// swift-tools-version: 6.1
// Sluice: a data plane in Swift with a C core. See README.md for the module map.
import PackageDescription

let package = Package(
    name: "Sluice",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SluiceCore", targets: ["SluiceCore"]),
        .executable(name: "sluice", targets: ["sluice"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // The only C: ring hot paths inline in include/, thin wrappers over the kernel and libnuma in *.c.
        .target(
            name: "CShims",
            path: "CShims",
            linkerSettings: [.linkedLibrary("numa"), .linkedLibrary("pthread")]
        ),
        .target(
            name: "SluiceCore",
            dependencies: [
                "CShims",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "sluice",
            dependencies: [
                "SluiceCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "SluiceCoreTests", dependencies: ["SluiceCore", "CShims"]),
    ],
    cLanguageStandard: .gnu11
)
