// Path: Tests/SluiceMigrationTestSupport/MigrationTestSupport.swift — what the migration tests share:
// whether this machine may run them (QEMU present; CI=true makes absence a failure, not a skip).
import Foundation

public enum MigrationTestEnvironment {
    /// `qemu-system-x86_64` on PATH or in /usr/bin, nil when absent.
    public static let qemuBinary: String? = {
        let candidates = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// True in CI (`CI=true`): tests that need QEMU must run there, never skip.
    public static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Why a QEMU test cannot run here, or nil when it can. In CI a missing QEMU is reported, not skipped.
    public static var skipReason: String? {
        if qemuBinary != nil { return nil }
        return isCI ? nil : "qemu-system-x86_64 is not installed (make deps installs qemu-system-x86)"
    }
}
