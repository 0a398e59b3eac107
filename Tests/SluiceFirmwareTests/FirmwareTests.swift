// The firmware flow against real counters: the software counter, and TPM NV counters in a real swtpm on
// 127.0.0.1 (started, killed -9, restarted by the tests). Each failure isolates the right device with
// the right reason; the other devices keep passing.
import Crypto
import Foundation
@testable import SluiceFirmware
import SluiceFirmwareTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A store in a temp directory with fresh node, vendor and operator keys.
final class Fixture: @unchecked Sendable {
    let root: String
    let nodeKey = Curve25519.Signing.PrivateKey()
    let vendorKey = Curve25519.Signing.PrivateKey()
    let operatorKey = Curve25519.Signing.PrivateKey()

    init() throws {
        root = NSTemporaryDirectory() + "sluice-firmware-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func node(_ source: CounterSource = .software, nodeKey: Curve25519.Signing.PrivateKey? = nil) -> FirmwareNode {
        FirmwareNode(root: root, counterSource: source, nodeKey: nodeKey ?? self.nodeKey, vendorKey: vendorKey.publicKey,
                     operatorKey: operatorKey.publicKey)
    }

    func image(_ seed: UInt8, bytes: Int = 64 << 10) -> (image: [UInt8], signature: [UInt8]) {
        let image = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
        return (image, Array(try! vendorKey.signature(for: image)))
    }

    func path(_ device: String, _ name: String) -> String { root + "/" + device + "/" + name }
}

func tpmSource(_ swtpm: Swtpm) throws -> CounterSource {
    .tpm(try TPMConnection(tcti: swtpm.tcti), auth: Array("counter-auth".utf8), indices: [:])
}

@Suite struct SoftwareCounterTests {
    @Test func countsUpAndDetectsEdits() throws {
        let fixture = try Fixture()
        let counter = SoftwareCounter(path: fixture.root + "/c", key: FirmwareKeys.counterMACKey(fixture.nodeKey))
        #expect(try counter.read() == nil)
        #expect(try counter.increment() == 1)
        #expect(try counter.increment() == 2)
        #expect(try counter.read() == 2)
        let text = try String(contentsOfFile: fixture.root + "/c", encoding: .utf8)
        try text.replacingOccurrences(of: "value 2", with: "value 1").write(toFile: fixture.root + "/c", atomically: true, encoding: .utf8)
        #expect(throws: FirmwareError.self) { try counter.read() }
        // Another node's key does not verify it either.
        try text.write(toFile: fixture.root + "/c", atomically: true, encoding: .utf8)
        let other = SoftwareCounter(path: fixture.root + "/c", key: FirmwareKeys.counterMACKey(Curve25519.Signing.PrivateKey()))
        #expect(throws: FirmwareError.self) { try other.read() }
    }
}

@Suite struct FirmwareFlowTests {
    @Test func updateThenCheckPassesAndKeepsAandBSlots() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let first = fixture.image(1), second = fixture.image(2)
        let record = try #require(try node.update(device: "port0", image: first.image, signature: first.signature))
        #expect(record.counter == 1 && record.slot == "a")
        #expect(node.check(device: "port0").state == .healthy)
        let next = try #require(try node.update(device: "port0", image: second.image, signature: second.signature))
        #expect(next.counter == 2 && next.slot == "b")
        #expect(node.check(device: "port0").state == .healthy)
        // The A slot still holds the first image (a fall-back), the journal holds every step.
        #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.path("port0", "slot-a.img"))) == Data(first.image))
        let (lines, refused) = try node.journalTail(device: "port0", lines: 100)
        #expect(refused == 0)
        for step in UpdateStep.allCases { #expect(lines.contains { $0.contains(step.rawValue) }, "journal lacks \(step)") }
    }

    @Test func badImageSignatureIsRefusedWithoutAnAttempt() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let good = fixture.image(1)
        try node.update(device: "disk0", image: good.image, signature: good.signature)
        var forged = good.signature
        forged[0] ^= 1
        #expect(throws: FirmwareError.self) { try node.update(device: "disk0", image: fixture.image(2).image, signature: forged) }
        #expect(try node.counter(for: "disk0").read() == 1, "a refused image advanced the counter")
        #expect(node.check(device: "disk0").state == .healthy)
    }

    /// An update stopped after each step in turn (a crash there): from the counter advance on, the
    /// check isolates the device (counter ahead of the record) and only that device; readmission by the
    /// operator brings it back.
    @Test func interruptedUpdatesIsolateOnlyTheirDevice() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "port1", image: image.image, signature: image.signature)
        for (number, step) in UpdateStep.allCases.dropLast().enumerated() {
            let device = "dev\(number)"
            try node.update(device: device, image: image.image, signature: image.signature)
            _ = try node.update(device: device, image: fixture.image(3).image, signature: fixture.image(3).signature, stopAfter: step)
            let check = node.check(device: device)
            if step == .signatureVerified {
                #expect(check.state == .healthy, "stopped before the counter moved: \(check)")
                continue
            }
            #expect(check.reason?.contains("not confirmed") == true, "stopped after \(step): \(check)")
            #expect(node.check(device: "port1").state == .healthy)
            // The incident report is signed by the node and says why.
            let report = try node.incident(at: try #require(check.incidentPath))
            #expect(report.device == device && report.counter == 2 && report.record?.counter == 1)
            // Readmission: the operator signs what the node sees now.
            let statement = try node.readmissionStatement(device: device)
            #expect(throws: FirmwareError.self) {
                try node.readmit(device: device, operatorSignature: Array(try Curve25519.Signing.PrivateKey().signature(for: statement)))
            }
            try node.readmit(device: device, operatorSignature: Array(try fixture.operatorKey.signature(for: statement)))
            #expect(node.check(device: device).state == .healthy)
        }
    }

    @Test func extraIncrementIsATamperedAttempt() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        try node.update(device: "b", image: image.image, signature: image.signature)
        _ = try node.counter(for: "a").increment()
        #expect(node.check(device: "a").reason?.contains("counter 2, confirmed 1") == true)
        #expect(node.check(device: "b").state == .healthy)
    }

    @Test func recordCorruptedOrSignedWithAnotherKeyIsolates() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        let recordPath = fixture.path("a", "record")
        let original = try Data(contentsOf: URL(fileURLWithPath: recordPath))
        var corrupt = original
        let at = try #require(corrupt.firstIndex(of: UInt8(ascii: "1")))
        corrupt[at] = UInt8(ascii: "7")
        try corrupt.write(to: URL(fileURLWithPath: recordPath))
        #expect(node.check(device: "a").reason?.contains("confirmation record invalid") == true)
        // The same record, signed by another node's key.
        try original.write(to: URL(fileURLWithPath: recordPath))
        #expect(node.check(device: "a").state == .healthy)
        let record = try #require(try node.record("a"))
        try fixture.node(nodeKey: Curve25519.Signing.PrivateKey()).writeRecord(record)
        #expect(node.check(device: "a").reason?.contains("does not verify") == true, "\(node.check(device: "a"))")
        // Deleted.
        unlink(recordPath)
        #expect(node.check(device: "a").reason?.contains("no confirmation record") == true)
    }

    /// Readmission is a counted change: the counter moves, so the record it replaces (and any older
    /// one) can never pass again; an update of an isolated device leaves it isolated until readmitted.
    @Test func readmissionAdvancesTheCounterAndUpdatesDoNotReadmit() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        let oldRecord = try Data(contentsOf: URL(fileURLWithPath: fixture.path("a", "record")))
        _ = try node.counter(for: "a").increment()  // an attempt nobody confirmed: counter 2, record 1
        try node.update(device: "a", image: fixture.image(2).image, signature: fixture.image(2).signature)
        #expect(node.check(device: "a").reason?.contains("awaiting the operator's readmission") == true, "\(node.check(device: "a"))")
        let statement = try node.readmissionStatement(device: "a")
        let readmitted = try node.readmit(device: "a", operatorSignature: Array(try fixture.operatorKey.signature(for: statement)))
        #expect(readmitted.counter == 4, "counter 3 after the update, 4 after the readmission: \(readmitted)")
        #expect(node.check(device: "a").state == .healthy)
        // The same signature again: the state it named is gone.
        #expect(throws: FirmwareError.operatorNotAuthenticated(device: "a")) {
            try node.readmit(device: "a", operatorSignature: Array(try fixture.operatorKey.signature(for: statement)))
        }
        // The first record put back (with its slot): the counter has moved past it.
        try oldRecord.write(to: URL(fileURLWithPath: fixture.path("a", "record")))
        try "a\n".write(toFile: fixture.path("a", "active"), atomically: true, encoding: .utf8)
        #expect(node.check(device: "a").reason?.contains("counter 4, confirmed 1") == true, "\(node.check(device: "a"))")
    }

    /// Files planted in the store are never written through: a symlink at a temporary name is replaced,
    /// a symlinked device directory is refused.
    @Test func symlinksInTheStoreAreNotFollowed() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        let victim = fixture.root + "/victim"
        try "keep me".write(toFile: victim, atomically: true, encoding: .utf8)
        #expect(symlink(victim, fixture.path("a", "record.tmp")) == 0)
        try node.update(device: "a", image: image.image, signature: image.signature)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me")
        #expect(node.check(device: "a").state == .healthy)
        try FileManager.default.createDirectory(atPath: fixture.root + "/elsewhere", withIntermediateDirectories: true)
        #expect(symlink(fixture.root + "/elsewhere", fixture.root + "/b") == 0)
        #expect(node.check(device: "b").reason?.contains("not a directory") == true, "\(node.check(device: "b"))")
        #expect(throws: FirmwareError.self) { try node.update(device: "b", image: image.image, signature: image.signature) }
    }

    @Test func softwareCounterRolledBackIsDetected() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        let old = try Data(contentsOf: URL(fileURLWithPath: fixture.path("a", "counter")))
        try node.update(device: "a", image: fixture.image(2).image, signature: fixture.image(2).signature)
        try old.write(to: URL(fileURLWithPath: fixture.path("a", "counter")))  // a valid, older copy
        #expect(node.check(device: "a").reason?.contains("below the confirmed") == true)
    }

    @Test func imageChangedInItsSlotIsolates() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        var changed = image.image
        changed[100] ^= 0xff
        try Data(changed).write(to: URL(fileURLWithPath: fixture.path("a", "slot-a.img")))
        #expect(node.check(device: "a").reason?.contains("is not the confirmed one") == true)
        #expect(node.check(device: "never-provisioned").reason?.contains("never provisioned") == true)
    }

    /// Two updates of one device at once: the second finds the first holding the device's lock and
    /// is refused and counted; the first completes.
    @Test func concurrentUpdatesOneWinsTheOtherIsRefusedAndCounted() throws {
        let fixture = try Fixture()
        let node = fixture.node()
        let image = fixture.image(1)
        try node.update(device: "a", image: image.image, signature: image.signature)
        let reached = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let first = Thread {
            _ = try? node.update(device: "a", image: image.image, signature: image.signature, onStep: { step in
                if step == .counterAdvanced {
                    reached.signal()
                    release.wait()
                }
            })
        }
        first.start()
        #expect(reached.wait(timeout: .now() + 10) == .success)
        #expect(throws: FirmwareError.updateInProgress(device: "a")) {
            try node.update(device: "a", image: image.image, signature: image.signature)
        }
        release.signal()
        // The first finishes: confirmed at attempt 2; the refused one never advanced the counter.
        var healthy = false
        for _ in 0..<500 where !healthy {
            healthy = (try? node.record("a"))??.counter == 2
            if !healthy { usleep(10_000) }
        }
        #expect(healthy)
        #expect(node.check(device: "a").state == .healthy)
        #expect(try node.journalTail(device: "a").refused == 1)
    }
}

@Suite(.serialized, .enabled(if: swtpmTestsEnabled, "swtpm not installed (/usr/bin/swtpm); `make deps` installs it"))
struct TPMCounterTests {
    @Test func tpmCounterUpdateCheckAndUninitialisedRead() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let source = try tpmSource(swtpm)
            let node = fixture.node(source)
            let counter = try node.counter(for: "port0")
            #expect(throws: FirmwareError.counterMissing(index: FirmwareNode.defaultIndex("port0"))) { try counter.read() }
            let image = fixture.image(1)
            let record = try #require(try node.update(device: "port0", image: image.image, signature: image.signature))
            #expect(record.counterKind == "tpm" && record.counterIndex == FirmwareNode.defaultIndex("port0"))
            #expect(node.check(device: "port0").state == .healthy)
            // A second device, its own index.
            try node.update(device: "disk0", image: image.image, signature: image.signature)
            #expect(node.check(device: "disk0").state == .healthy)
        }
    }

    /// swtpm killed with -9 between the counter advance and the image write, then restarted on its
    /// state: while it is down the check says the counter is unreadable; once back, the counter (not
    /// orderly, so it survived) is ahead of the record: not confirmed. The other device passes again.
    @Test func swtpmKilledMidUpdateThenRestarted() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let image = fixture.image(1)
            do {
                let node = fixture.node(try tpmSource(swtpm))
                try node.update(device: "a", image: image.image, signature: image.signature)
                try node.update(device: "b", image: image.image, signature: image.signature)
                _ = try node.update(device: "a", image: fixture.image(2).image, signature: fixture.image(2).signature,
                                    stopAfter: .counterAdvanced)
            }
            swtpm.kill()
            #expect(throws: FirmwareError.self) { try TPMConnection(tcti: swtpm.tcti) }
            // A node whose TPM connection broke: every device is isolated as unreadable.
            let stale = fixture.node(try {
                try swtpm.start()
                let source = try tpmSource(swtpm)
                swtpm.kill()
                return source
            }())
            #expect(stale.check(device: "b").reason?.contains("counter unreadable") == true)
            try swtpm.start()
            let node = fixture.node(try tpmSource(swtpm))
            #expect(node.check(device: "a").reason?.contains("counter 2, confirmed 1") == true)
            #expect(node.check(device: "b").state == .healthy)
        }
    }

    /// The counter index deleted and defined again (what an attacker with owner rights can do): the
    /// new counter reads "uninitialised" until incremented, then not the recorded value. Both isolate.
    @Test func counterDeletedAndRedefinedIsDetected() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let connection = try TPMConnection(tcti: swtpm.tcti)
            let auth = Array("counter-auth".utf8)
            let node = fixture.node(.tpm(connection, auth: auth, indices: [:]))
            let image = fixture.image(1)
            try node.update(device: "a", image: image.image, signature: image.signature)
            try node.update(device: "a", image: image.image, signature: image.signature)
            let index = FirmwareNode.defaultIndex("a")
            try connection.undefine(index, auth: auth)
            #expect(node.check(device: "a").reason?.contains("counter unreadable") == true)
            let counter = try TPMCounter(connection: connection, index: index, auth: auth)
            let redefined = try counter.increment()  // defines, then increments
            // What the TPM taught: a new counter starts at the highest value any counter had (here 2) + 1.
            #expect(redefined > 2, "a redefined counter started at \(redefined)")
            print("redefined counter 0x\(String(index, radix: 16)) reads \(redefined) after its first increment (was 2)")
            #expect(node.check(device: "a").reason?.contains("not confirmed") == true)
        }
    }

    /// TPM2_Clear (what `tpm2_clear` does with the lockout hierarchy) deletes every owner-hierarchy NV
    /// index, these counters among them: the node then finds no counter and isolates every device.
    @Test func tpmClearIsolatesEveryDevice() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let image = fixture.image(1)
            do {
                let node = fixture.node(try tpmSource(swtpm))
                try node.update(device: "a", image: image.image, signature: image.signature)
                try node.update(device: "b", image: image.image, signature: image.signature)
            }
            let clear = Process()
            clear.executableURL = URL(fileURLWithPath: "/usr/bin/tpm2_clear")
            clear.arguments = ["-T", swtpm.tcti]
            clear.standardOutput = FileHandle.nullDevice
            try clear.run()
            clear.waitUntilExit()
            #expect(clear.terminationStatus == 0, "tpm2_clear failed")
            let node = fixture.node(try tpmSource(swtpm))
            for device in ["a", "b"] {
                #expect(node.check(device: device).reason?.contains("is not defined") == true, "\(node.check(device: device))")
            }
        }
    }

    /// A counter defined but never incremented reads "uninitialised"; an older record with its slot put
    /// back after a newer update does not pass (the TPM counter has moved on).
    @Test func uninitialisedCounterAndReplayedRecord() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let connection = try TPMConnection(tcti: swtpm.tcti)
            let auth = Array("counter-auth".utf8)
            let node = fixture.node(.tpm(connection, auth: auth, indices: [:]))
            let image = fixture.image(1)
            try node.update(device: "a", image: image.image, signature: image.signature)
            let first = try Data(contentsOf: URL(fileURLWithPath: fixture.path("a", "record")))
            try node.update(device: "a", image: fixture.image(2).image, signature: fixture.image(2).signature)
            try first.write(to: URL(fileURLWithPath: fixture.path("a", "record")))
            try "a\n".write(toFile: fixture.path("a", "active"), atomically: true, encoding: .utf8)
            #expect(node.check(device: "a").reason?.contains("counter 2, confirmed 1") == true, "\(node.check(device: "a"))")
            // A fresh index, defined, never incremented.
            try node.update(device: "u", image: image.image, signature: image.signature)
            let index = FirmwareNode.defaultIndex("u")
            try connection.undefine(index, auth: auth)
            try connection.defineCounter(index, auth: auth)
            #expect(node.check(device: "u").reason?.contains("counter uninitialised") == true, "\(node.check(device: "u"))")
            // Readmission after a redefinition: the operator signs "counter=uninitialised"; the counter is advanced.
            let statement = try node.readmissionStatement(device: "u")
            #expect(String(decoding: statement, as: UTF8.self).contains("counter=uninitialised"))
            try node.readmit(device: "u", operatorSignature: Array(try fixture.operatorKey.signature(for: statement)))
            #expect(node.check(device: "u").state == .healthy)
        }
    }

    /// The counter cannot be rewritten: the TPM refuses TPM2_NV_Write on a counter index (tpm2_nvwrite
    /// with owner authorization), and the value is unchanged after the attempt.
    @Test func counterCannotBeRewritten() throws {
        try withSwtpm { swtpm in
            let fixture = try Fixture()
            let node = fixture.node(try tpmSource(swtpm))
            let image = fixture.image(1)
            try node.update(device: "a", image: image.image, signature: image.signature)
            try node.update(device: "a", image: image.image, signature: image.signature)
            let zeros = fixture.root + "/zeros"
            try Data(count: 8).write(to: URL(fileURLWithPath: zeros))
            let write = Process()
            write.executableURL = URL(fileURLWithPath: "/usr/bin/tpm2_nvwrite")
            write.arguments = ["-T", swtpm.tcti, "-C", "o", "-i", zeros, "0x" + String(FirmwareNode.defaultIndex("a"), radix: 16)]
            write.standardOutput = FileHandle.nullDevice
            write.standardError = FileHandle.nullDevice
            try write.run()
            write.waitUntilExit()
            #expect(write.terminationStatus != 0, "the TPM let a counter index be written")
            #expect(try node.counter(for: "a").read() == 2)
            #expect(node.check(device: "a").state == .healthy)
        }
    }

    @Test func tpmUnreachableIsAClearError() throws {
        let ports = try Swtpm.freePorts(1)
        #expect(throws: FirmwareError.self) { try TPMConnection(tcti: TPMConnection.swtpm(host: "127.0.0.1", port: ports[0])) }
    }
}
