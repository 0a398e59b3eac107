// `sluice run` with a `firmware:` section: the boot check runs before anything starts; an isolated
// device's pipeline never starts and its storage refuses writes, the others run; /healthz and the
// metrics name the device and the reason; readmission by the operator brings it back at the next start.
import Crypto
import Foundation
import Glibc
import SluiceFirmware
import SluiceFirmwareTestSupport
import SluiceService
import SluiceStorageServer
import SluiceTestSupport
import Testing

/// Keys and a provisioned software-counter store for devices nic0, nic1 (one pipeline each) and disk0.
final class FirmwareLab: @unchecked Sendable {
    let root: String
    var store: String { root + "/store" }
    let vendor = Curve25519.Signing.PrivateKey()
    let operatorKey = Curve25519.Signing.PrivateKey()

    init(_ name: String) throws {
        root = "/tmp/sluice-firmware-service-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        _ = try FirmwareKeys.generate(at: root + "/node.key")
        try (FirmwareKeys.hex(Array(vendor.publicKey.rawRepresentation)) + "\n").write(toFile: root + "/vendor.pub", atomically: true, encoding: .utf8)
        try (FirmwareKeys.hex(Array(operatorKey.publicKey.rawRepresentation)) + "\n").write(toFile: root + "/operator.pub", atomically: true, encoding: .utf8)
    }

    func node(_ source: CounterSource = .software) throws -> FirmwareNode {
        try FirmwareNode.load(root: store, counterSource: source, nodeKeyPath: root + "/node.key",
                              vendorKeyPath: root + "/vendor.pub", operatorKeyPath: root + "/operator.pub")
    }

    func provision(_ devices: [String], _ source: CounterSource = .software) throws {
        let image = (0..<4096).map { UInt8(truncatingIfNeeded: $0) }
        let signature = Array(try vendor.signature(for: image))
        for device in devices { try node(source).update(device: device, image: image, signature: signature) }
    }

    func yaml(paths: ScratchPaths, extra: String = "") -> String {
        """
        pipelines:
          - name: good
            source: {pcap: "\(samplePcap)", rate: 200}
            sink: {discard: true}
          - name: held
            source: {pcap: "\(samplePcap)", rate: 200}
            sink: {pcap: "\(paths.outputPcap)"}
        storage: {data: "\(paths.dataDirectory)", listen: "127.0.0.1:0"}
        metrics: {listen: "127.0.0.1:0"}
        firmware:
          store: "\(store)"
          node_key: "\(root)/node.key"
          vendor_key: "\(root)/vendor.pub"
          operator_key: "\(root)/operator.pub"
        \(extra)
          devices:
            - {name: nic0, pipelines: [good]}
            - {name: nic1, pipelines: [held]}
            - {name: disk0, storage: true}
        """
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }
}

@Suite(.serialized) struct FirmwareServiceTests {
    @Test func isolatedDeviceHoldsBackItsPipelineAndStorageUntilReadmitted() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try FirmwareLab("isolate")
        let paths = ScratchPaths("firmware")
        defer { paths.remove() }
        try lab.provision(["nic0", "nic1", "disk0"])
        // An update attempt on nic1 never confirmed; disk0's record deleted.
        _ = try lab.node().counter(for: "nic1").increment()
        unlink(lab.store + "/disk0/record")

        let service = try RunningService(binary: binary, yaml: lab.yaml(paths: paths))
        let health = try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz")
        #expect(health.status == 503 && health.body.contains("nic1: counter 2, confirmed 1") && health.body.contains("disk0"), "\(health)")
        let samples = try service.scrape()
        #expect(samples.value("sluice_firmware_device_isolated", ["device": "nic0"]) == 0)
        #expect(samples.value("sluice_firmware_device_isolated", ["device": "nic1"]) == 1)
        #expect(samples.value("sluice_firmware_device_isolated", ["device": "disk0"]) == 1)
        #expect(samples.value("sluice_firmware_attempt_counter", ["device": "nic1"]) == 2)
        let checkSeconds = try #require(samples.value("sluice_firmware_boot_check_seconds"))
        print("firmware boot check of 3 devices (software counter): \(checkSeconds * 1000) ms")
        // Storage: reads answer, writes are refused with the device and the reason.
        let storage = try #require(service.storage)
        let client = try StorageClient(host: storage.host, port: storage.port)
        do {
            _ = try client.create(objectID: 1)
            Issue.record("a write to an isolated storage device was accepted")
        } catch {
            #expect("\(error)".contains("isolated") && "\(error)".contains("disk0"), "\(error)")
        }
        client.close()
        let (status, lines) = try service.terminate()
        #expect(status == 0 || status == 3, "\(service.child.stderrText)")
        #expect(!lines.contains { $0.hasPrefix("held ") }, "the held pipeline ran: \(lines)")
        #expect(lines.contains { $0.hasPrefix("good ") }, "the good pipeline did not run: \(lines)")
        #expect(!FileManager.default.fileExists(atPath: paths.outputPcap), "the held pipeline opened its sink")
        #expect(service.child.stderrText.contains("pipeline not started"))
        // A signed incident report per isolated device.
        let reports = try FileManager.default.contentsOfDirectory(atPath: lab.store + "/nic1/incidents")
        let report = try lab.node().incident(at: lab.store + "/nic1/incidents/" + #require(reports.first))
        #expect(report.counter == 2 && report.record?.counter == 1)

        // The operator readmits both (signing what the node sees now): the next start runs everything.
        for device in ["nic1", "disk0"] {
            let node = try lab.node()
            try node.readmit(device: device, operatorSignature: Array(try lab.operatorKey.signature(for: node.readmissionStatement(device: device))))
        }
        let again = try RunningService(binary: binary, yaml: lab.yaml(paths: paths))
        let fine = try HTTPClient.get(host: again.metrics.host, port: again.metrics.port, path: "/healthz")
        #expect(fine.status == 200, "\(fine)")
        let writer = try StorageClient(host: again.storage!.host, port: again.storage!.port)
        #expect(throws: Never.self) { _ = try writer.create(objectID: 1) }
        writer.close()
        let (_, more) = try again.terminate()
        #expect(more.contains { $0.hasPrefix("held ") }, "\(more)")
    }

    /// The TPM counter on a real swtpm: provisioned through it, the service passes every device; with
    /// the TPM gone, every device is isolated as unreadable, nothing is on its pipelines.
    @Test(.enabled(if: swtpmTestsEnabled, "swtpm not installed"))
    func tpmCounterBootCheckAndTPMUnreachable() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try FirmwareLab("tpm")
        let paths = ScratchPaths("firmware-tpm")
        defer { paths.remove() }
        let swtpm = try Swtpm()
        defer { swtpm.remove() }
        try swtpm.start()
        try lab.provision(["nic0", "nic1", "disk0"], .tpm(try TPMConnection(tcti: swtpm.tcti), auth: [], indices: [:]))
        let tpmLines = "  counter: tpm\n  tpm: \"127.0.0.1:\(swtpm.port)\""
        let service = try RunningService(binary: binary, yaml: lab.yaml(paths: paths, extra: tpmLines))
        let health = try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz")
        #expect(health.status == 200, "\(health)")
        let samples = try service.scrape()
        #expect(samples.value("sluice_firmware_attempt_counter", ["device": "disk0", "counter": "tpm"]) == 1)
        print("firmware boot check of 3 devices (swtpm): \((samples.value("sluice_firmware_boot_check_seconds") ?? -1) * 1000) ms")
        _ = try service.terminate()

        swtpm.kill()
        let blind = try RunningService(binary: binary, yaml: lab.yaml(paths: paths, extra: tpmLines))
        let down = try HTTPClient.get(host: blind.metrics.host, port: blind.metrics.port, path: "/healthz")
        #expect(down.status == 503 && down.body.contains("TPM unreachable"), "\(down)")
        let (_, lines) = try blind.terminate()
        #expect(!lines.contains { $0.hasPrefix("good ") || $0.hasPrefix("held ") }, "\(lines)")
    }

    /// `recheck_ms`: a device whose counter moves while the service runs is isolated within an
    /// interval: its pipeline's source is stopped (it drains), its storage refuses writes, health says so.
    @Test func recheckIsolatesADeviceWhileRunning() throws {
        let binary = try #require(sluiceBinary(), "no built `sluice` next to the test bundle")
        let lab = try FirmwareLab("recheck")
        let paths = ScratchPaths("firmware-recheck")
        defer { paths.remove() }
        try lab.provision(["nic0", "nic1", "disk0"])
        var yaml = lab.yaml(paths: paths, extra: "  recheck_ms: 200")
        yaml = yaml.replacingOccurrences(of: "rate: 200}", with: "rate: 200, loop: 1000}")
        let service = try RunningService(binary: binary, yaml: yaml)
        let storage = try #require(service.storage)
        let client = try StorageClient(host: storage.host, port: storage.port)
        _ = try client.create(objectID: 1)
        #expect(try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz").status == 200)
        // An attempt on nic1 and disk0 that nobody confirms.
        _ = try lab.node().counter(for: "nic1").increment()
        _ = try lab.node().counter(for: "disk0").increment()
        var health = HTTPClientResponse(status: 0, body: "")
        for _ in 0..<300 where health.status != 503 {
            usleep(10_000)
            health = try HTTPClient.get(host: service.metrics.host, port: service.metrics.port, path: "/healthz")
        }
        #expect(health.status == 503 && health.body.contains("nic1") && health.body.contains("disk0"), "\(health)")
        do {
            _ = try client.write(objectID: 1, pageIndex: 0, payload: [1])
            Issue.record("a write was accepted after the storage device was isolated")
        } catch {
            #expect("\(error)".contains("isolated"), "\(error)")
        }
        client.close()
        let (_, lines) = try service.terminate()
        #expect(service.child.stderrText.contains("pipeline stopped: its device is isolated"), "\(service.child.stderrText)")
        #expect(lines.contains { $0.hasPrefix("held ") } && lines.contains { $0.hasPrefix("good ") }, "\(lines)")
        let incidents = try FileManager.default.contentsOfDirectory(atPath: lab.store + "/nic1/incidents")
        #expect(incidents.count == 1, "one incident for the transition, not one per re-check: \(incidents)")
    }

    @Test func firmwareConfigErrorsNameTheKey() throws {
        let base = "firmware: {store: /s, node_key: /k, vendor_key: /v, devices: [%@]}"
        for (devices, key) in [("{name: a, pipelines: [nope]}", "firmware.devices"), ("{name: 'a b'}", "firmware.devices"),
                               ("{name: a, storage: true}, {name: b, storage: true}", "storage"),
                               ("{name: a, tpm_index: 0x42}", "tpm_index")] {
            let yaml = base.replacingOccurrences(of: "%@", with: devices)
            do {
                _ = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0])
                Issue.record("\(devices) accepted")
            } catch {
                #expect("\(error)".contains(key), "\(devices): \(error)")
            }
        }
        let counterTPMWithoutAddress = "firmware: {store: /s, node_key: /k, vendor_key: /v, counter: tpm, devices: [{name: a}]}"
        #expect(throws: ConfigError.self) { _ = try ServiceConfiguration.decode(try ConfigNode.parse(yaml: counterTPMWithoutAddress), defaultCores: [0]) }
    }
}
