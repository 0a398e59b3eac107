// Path: Tests/SluiceMigrationTestSupport/GuestImage.swift — the test guest's kernel and initramfs: found in
// $SLUICE_GUEST_DIR or .build/guest, built there by scripts/guest/build-guest-image.sh (cached) if needed.
import Foundation

/// The files a `TestGuest` boots.
public struct GuestImage: Sendable {
    public let directory: URL
    public var kernel: URL { directory.appendingPathComponent("vmlinuz") }
    public var initramfs: URL { directory.appendingPathComponent("initramfs.gz") }
    public var manifest: URL { directory.appendingPathComponent("manifest") }

    /// A failed image build: the script's exit status and the end of its output.
    public struct BuildError: Error, CustomStringConvertible {
        public let status: Int32
        public let output: String
        public var description: String { "scripts/guest/build-guest-image.sh exited \(status): \(output)" }
    }

    /// The package's root directory (this file is Tests/SluiceMigrationTestSupport/GuestImage.swift).
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `$SLUICE_GUEST_DIR`, else `<package>/.build/guest`.
    public static var directory: URL {
        if let dir = ProcessInfo.processInfo.environment["SLUICE_GUEST_DIR"], !dir.isEmpty {
            return URL(fileURLWithPath: dir)
        }
        return packageRoot.appendingPathComponent(".build/guest")
    }

    /// Runs the build script once per test process (it returns in a few seconds when the image is up to
    /// date) and returns the image. Blocks; every caller gets the first call's result.
    public static func prepared() throws -> GuestImage {
        try preparedOnce.get()
    }

    private static let preparedOnce: Result<GuestImage, BuildError> = {
        let dir = directory
        let script = packageRoot.appendingPathComponent("scripts/guest/build-guest-image.sh")
        let process = Process()
        process.executableURL = script
        process.arguments = [dir.path]
        process.currentDirectoryURL = packageRoot
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        do {
            try process.run()
        } catch {
            return .failure(BuildError(status: -1, output: "cannot run \(script.path): \(error)"))
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            return .failure(BuildError(status: process.terminationStatus, output: String(text.suffix(2000))))
        }
        return .success(GuestImage(directory: dir))
    }()
}
