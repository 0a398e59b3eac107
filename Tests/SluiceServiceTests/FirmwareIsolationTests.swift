// Path: Tests/SluiceServiceTests/FirmwareIsolationTests.swift — which pipelines an isolated device holds
// back: every interface a pipeline reads or writes counts, through AF_PACKET or AF_XDP alike.
import SluiceFirmware
import SluicePacketIO
import SluiceReplay
import Testing

@testable import SluiceService

@Suite struct FirmwareIsolationTests {
    /// nic0 (interface xdp7) isolated, nic1 (interface eth9) healthy.
    static func runtime() -> FirmwareRuntime {
        var settings = FirmwareSettings(store: "/nonexistent", nodeKey: "/nonexistent", vendorKey: "/nonexistent")
        var nic0 = FirmwareSettings.Device(name: "nic0")
        nic0.interfaces = ["xdp7"]
        var nic1 = FirmwareSettings.Device(name: "nic1")
        nic1.interfaces = ["eth9"]
        settings.devices = [nic0, nic1]
        return FirmwareRuntime(settings: settings,
                               checks: [DeviceCheck(device: "nic0", state: .isolated(reason: "counter rolled back")),
                                        DeviceCheck(device: "nic1", state: .healthy)],
                               checkNs: 0)
    }

    static func path(_ input: PacketInput, _ output: ReplayOutput) -> PacketPathConfiguration {
        PacketPathConfiguration(name: "p", input: input, output: output)
    }

    /// An AF_XDP source or sink on the isolated device's interface holds the pipeline back, as an
    /// AF_PACKET one does; the same pipeline on the healthy device's interface runs.
    @Test func anAFXDPPortOnAnIsolatedInterfaceIsolatesThePipeline() {
        let firmware = Self.runtime()
        let capture = PacketInput.capture(path: "/dev/null", pacing: .topSpeed, loopCount: 1)
        let cases: [(PacketPathConfiguration, String?)] = [
            (Self.path(.afXDP(AFXDPConfiguration(interface: "xdp7")), .discard), "nic0"),
            (Self.path(capture, .afXDP(AFXDPConfiguration(interface: "xdp7"))), "nic0"),
            (Self.path(.interface(AFPacketRXConfiguration(interface: "xdp7")), .discard), "nic0"),
            (Self.path(capture, .interface("xdp7")), "nic0"),
            (Self.path(.afXDP(AFXDPConfiguration(interface: "eth9")), .afXDP(AFXDPConfiguration(interface: "eth9"))), nil),
            (Self.path(capture, .discard), nil),
        ]
        for (pipeline, device) in cases {
            let isolation = firmware.isolation(of: pipeline)
            #expect(isolation?.device == device, "\(pipeline.input) -> \(pipeline.output)")
            if device != nil { #expect(isolation?.reason == "counter rolled back") }
        }
    }
}
