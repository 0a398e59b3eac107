// Path: Tests/SluicePacketIOTests/NamedOutputsVethTests.swift — `sluice replay --output NAME=iface:IF`:
// a rule's packets leave on the named output's veth, the rest on the sink's, each side complete and
// in order, between two test-made namespaces (198.18.0.0/15 traffic only).
import Glibc
import SluicePacketIO
import SluiceTestSupport
import Testing

@Suite(.serialized, .enabled(if: NetnsEnvironment.enabled,
                             "needs root (network namespaces, AF_PACKET); with CI=true it runs and fails without root"))
struct NamedOutputsVethTests {
    @Test func ruleSendsToANamedInterfaceOutput() throws {
        try NetnsEnvironment.requireRoot()
        let binary = try #require(sluiceBinary())
        let tcpdump = try #require(TwoVethLab.tcpdump, "needs tcpdump")
        let lab = try TwoVethLab(tag: "so")
        defer { lab.close() }
        let (sender, links) = (lab.sender, lab.links)
        let path = temporaryPath("veth-outputs.pcap")
        let outputs = [temporaryPath("veth-outputs-a.pcap"), temporaryPath("veth-outputs-b.pcap")]
        defer { for file in ([path] + outputs) { unlink(file) } }
        let sides = try TwoVethLab.writeConversation(to: path)
        let pids = lab.startCaptures(tcpdump: tcpdump, files: outputs, counts: sides.map(\.count))
        var stdout = ""
        // Client->server (dst port 80) to the named output on the first veth, the rest to the sink on the second.
        let status = run(["/usr/sbin/ip", "netns", "exec", sender, binary, "replay", path, "--pps", "20000", "--cores", "0",
                          "--iface", links[1].0, "--output", "up=iface:\(links[0].0)",
                          "--rule", "{name: web, match: {protocol: tcp, dst_port: 80}, output: up}"], capture: &stdout)
        #expect(status == 0, "\(stdout)")
        #expect(stdout.contains("up") && stdout.contains("200 packets"), "\(stdout)")
        lab.waitCaptures(pids)
        #expect(try SenderFrames.read(outputs[0]) == sides[0])
        #expect(try SenderFrames.read(outputs[1]) == sides[1])
    }
}
