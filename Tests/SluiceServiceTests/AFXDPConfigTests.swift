// Path: Tests/SluiceServiceTests/AFXDPConfigTests.swift — `kind: af_xdp` sources and sinks in `sluice
// run`'s config: every key parses, every mistake names its key, and the start-up decision (AF_XDP,
// fallback to AF_PACKET, or a refusal naming the key).
import Logging
import SluicePacketIO
import SluiceReplay
import Testing

@testable import SluiceService

@Suite struct AFXDPConfigTests {
    private func load(_ yaml: String) throws(ConfigError) -> ServiceConfiguration {
        try ServiceConfiguration.decode(try ConfigNode.parse(yaml: yaml), defaultCores: [0, 1])
    }

    private func failure(_ yaml: String) -> ConfigError? {
        do {
            _ = try load(yaml)
            return nil
        } catch { return error }
    }

    private func pipeline(source: String, sink: String = "discard: true") -> String {
        """
        pipelines:
          - name: x
            source: {\(source)}
            sink: {\(sink)}
        """
    }

    @Test func everyKeyParses() throws {
        let configuration = try load(pipeline(
            source: "kind: af_xdp, iface: veth0, queue: 1, mode: native, frames: 8192, frame_size: 4096, fallback: af_packet",
            sink: "kind: af_xdp, iface: veth1, mode: generic, frames: 1024"))
        let settings = try #require(configuration.pipelines.first)
        let source = try #require(settings.afXDPSource)
        #expect(source.configuration.interface == "veth0")
        #expect(source.configuration.queue == 1)
        #expect(source.configuration.mode == .native)
        #expect(source.configuration.frameCount == 8192)
        #expect(source.configuration.frameSizeBytes == 4096)
        #expect(source.fallbackToAFPacket)
        let sink = try #require(settings.afXDPSink)
        #expect(sink.configuration.interface == "veth1" && sink.configuration.mode == .generic)
        #expect(sink.configuration.frameCount == 1024 && sink.configuration.ringSize == 1024)
        #expect(!sink.fallbackToAFPacket)
        // The AF_PACKET stand-ins, used only under `fallback: af_packet`.
        #expect(settings.path.input == .interface(AFPacketRXConfiguration(interface: "veth0")))
        #expect(settings.path.output == .interface("veth1"))
    }

    @Test func defaultsAreAutoModeQueueZeroNoFallback() throws {
        let configuration = try load(pipeline(source: "kind: af_xdp, iface: veth0"))
        let source = try #require(configuration.pipelines.first?.afXDPSource)
        #expect(source.configuration == AFXDPConfiguration(interface: "veth0"))
        #expect(source.configuration.mode == .auto && !source.fallbackToAFPacket)
    }

    @Test(arguments: [
        ("kind: af_xdp", "pipelines[0].source.iface"),                                  // missing
        ("kind: af_xdp, iface: veth0, mode: turbo", "pipelines[0].source.mode"),
        ("kind: af_xdp, iface: veth0, queue: 5000", "pipelines[0].source.queue"),
        ("kind: af_xdp, iface: veth0, frames: 1000", "pipelines[0].source.frames"),
        ("kind: af_xdp, iface: veth0, frame_size: 3000", "pipelines[0].source.frame_size"),
        ("kind: af_xdp, iface: veth0, fallback: pcap", "pipelines[0].source.fallback"),
        ("kind: af_xdp, iface: 'a/b'", "pipelines[0].source.iface"),
        ("kind: af_xdp, iface: veth0, fanout_group: 3", "pipelines[0].source.fanout_group"),  // unknown key
        ("kind: dpdk, iface: veth0", "pipelines[0].source.kind"),
    ])
    func aBadKeyIsNamed(source: String, key: String) {
        let error = failure(pipeline(source: source))
        let named: String? = switch error {
        case .invalid(let key, _, _)?: key
        case .unknownKey(let key, _, _)?: key
        case .missingKey(let key)?: key
        case .outOfRange(let key, _, _, _)?: key
        default: nil
        }
        #expect(named == key, "\(source): \(String(describing: error))")
    }

    @Test func aBadSinkKeyIsNamed() {
        guard case .invalid(let key, _, _)? = failure(pipeline(source: "pcap: in.pcap", sink: "kind: af_xdp, iface: v, mode: x"))
        else {
            Issue.record("no invalid-key error")
            return
        }
        #expect(key == "pipelines[0].sink.mode")
    }

    @Test func withoutFallbackAnUnusablePortStopsTheStartNamingTheKey() throws {
        let configuration = try load(pipeline(source: "kind: af_xdp, iface: sluicenoif9"))
        let logger = Logger(label: "test")
        #expect {
            try Dataplane.resolveAFXDP(configuration.pipelines[0], index: 0, logger: logger)
        } throws: { error in
            guard case .afXDP(let pipeline, let key, let reason)? = error as? ServiceError else { return false }
            return pipeline == "x" && key == "pipelines[0].source" && reason.contains("sluicenoif9")
        }
    }

    @Test func withFallbackTheServiceGoesOnWithAFPacket() throws {
        let configuration = try load(pipeline(source: "kind: af_xdp, iface: sluicenoif9, fallback: af_packet"))
        try Dataplane.resolveAFXDP(configuration.pipelines[0], index: 0, logger: Logger(label: "test"))
        #expect(configuration.pipelines[0].path.input == .interface(AFPacketRXConfiguration(interface: "sluicenoif9")))
    }
}
