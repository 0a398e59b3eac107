// Path: Tests/SluiceMigrationTests/GuestMemoryScanTests.swift — the first-pass scan: which mappings are a
// guest's RAM, and, on a real tcg guest, that the scan says what QEMU's migration then sends.
import Foundation
@testable import SluiceMigration
import SluiceMigrationTestSupport
import Testing

@Suite struct GuestMemoryScanMappingTests {
    static let maps = """
        55d0c0a00000-55d0c0e00000 r-xp 00000000 fd:01 1234                       /usr/bin/qemu-system-x86_64
        7f3300000000-7f3310000000 rwxp 00000000 00:00 0
        7f3400000000-7f3410000000 rw-s 00000000 00:01 77                         /memfd:dimm0 (deleted)
        7f3410000000-7f3418000000 rw-p 00000000 00:00 0
        7f3427e00000-7f3437e00000 rw-p 00000000 00:00 0
        7f3437e00000-7f3447e00000 r--p 00000000 00:00 0
        7f3450000000-7f3460000000 rw-p 00000000 00:00 0
        """

    @Test func eachSizeTakesItsOwnReadWriteMappingAnonymousFirst() throws {
        let mib: UInt64 = 1 << 20
        // 256 MiB three times: the two anonymous rw mappings of that size first (TCG's rwx code buffer and
        // the read-only one skipped), then the file-backed one; 128 MiB: its one anonymous mapping.
        let found = try #require(GuestMemoryScan.ramMappings(maps: Self.maps, sizes: [256 * mib, 128 * mib, 256 * mib, 256 * mib]))
        #expect(found.map(\.start) == [0x7f34_27e0_0000, 0x7f34_1000_0000, 0x7f34_5000_0000, 0x7f34_0000_0000])
        #expect(GuestMemoryScan.ramMappings(maps: Self.maps, sizes: [512 * mib]) == nil)
        #expect(GuestMemoryScan.ramMappings(maps: Self.maps, sizes: Array(repeating: 128 * mib, count: 2)) == nil)
    }

    @Test func theFirstPassIsNonZeroPagesAndAHeaderPerOtherPage() {
        let scan = GuestMemoryScan(qemuPID: 1, ramBytes: 256 << 20, presentBytes: 184 << 20, nonZeroBytes: 92 << 20)
        #expect(scan.firstPassBytes == (92 << 20) + (164 << 20) / 4096 * 9)
    }

    @Test func aSocketWithoutListenerIsATypedError() async {
        await #expect(throws: GuestMemoryScanError.self) {
            _ = try await GuestMemoryScan.scan(qmpSocketPath: "/tmp/sluice-no-such-qmp.sock")
        }
    }
}

@Suite(.serialized, .enabled(if: MigrationTestEnvironment.skipReason == nil, "\(MigrationTestEnvironment.skipReason ?? "")"))
struct GuestMemoryScanTests {
    /// An idle 256 MiB guest: the scan finds its RAM, far from all of it holds data, and a migration to
    /// /dev/null right after sends what the scan said, within 10 % (QEMU's stream adds section headers;
    /// the guest keeps running meanwhile).
    @Test func theScanSaysWhatTheFirstPassSends() async throws {
        let guest = try TestGuest(TestGuest.Configuration(), image: try GuestImage.prepared())
        defer { guest.stop() }
        _ = try guest.waitForAgent()
        let scan = try await GuestMemoryScan.scan(qmpSocketPath: guest.qmpSocketPath)
        print("GuestMemoryScanTests: ram \(scan.ramBytes >> 20) MiB, present \(scan.presentBytes >> 20) MiB, "
              + "non-zero \(scan.nonZeroBytes >> 20) MiB, first pass \(scan.firstPassBytes) B")
        #expect(scan.ramBytes == 256 << 20)
        #expect(scan.nonZeroBytes > 4 << 20 && scan.nonZeroBytes < scan.presentBytes && scan.presentBytes <= scan.ramBytes)

        let client = try await QMPClient.connect(path: guest.qmpSocketPath)
        try await client.migrate(uri: "exec:cat > /dev/null")
        var info = try await client.queryMigrate()
        let deadline = ContinuousClock.now + .seconds(60)
        while !info.status.isFinal, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            info = try await client.queryMigrate()
        }
        await client.close()
        #expect(info.status == .completed)
        let sent = Double(try #require(info.ram?.transferredBytes))
        print("GuestMemoryScanTests: QEMU sent \(Int(sent)) B; the scan said \(scan.firstPassBytes) B (\(String(format: "%.3f", sent / Double(scan.firstPassBytes)))x)")
        #expect(abs(sent - Double(scan.firstPassBytes)) <= 0.1 * Double(scan.firstPassBytes))
    }
}
