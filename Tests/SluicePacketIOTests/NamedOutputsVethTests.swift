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
        try #require(access("/usr/bin/tcpdump", X_OK) == 0 || access("/usr/sbin/tcpdump", X_OK) == 0, "needs tcpdump")
        let tcpdump = access("/usr/bin/tcpdump", X_OK) == 0 ? "/usr/bin/tcpdump" : "/usr/sbin/tcpdump"
        let pid = getpid()
        let sender = "slout-\(pid)-s", receiver = "slout-\(pid)-r"
        let links = [("so\(pid)a", "so\(pid)A"), ("so\(pid)b", "so\(pid)B")]
        defer {
            _ = run(["/usr/sbin/ip", "netns", "del", sender])
            _ = run(["/usr/sbin/ip", "netns", "del", receiver])
        }
        try VethLab.command(["/usr/sbin/ip", "netns", "add", sender])
        try VethLab.command(["/usr/sbin/ip", "netns", "add", receiver])
        for (near, far) in links {
            try VethLab.command(["/usr/sbin/ip", "link", "add", "name", near, "netns", sender, "type", "veth",
                                 "peer", "name", far, "netns", receiver])
            for (namespace, interface) in [(sender, near), (receiver, far)] {
                try VethLab.command(["/usr/sbin/ip", "netns", "exec", namespace, "/usr/sbin/sysctl", "-qw",
                                     "net.ipv6.conf.\(interface).disable_ipv6=1"])
                try VethLab.command(["/usr/sbin/ip", "-n", namespace, "link", "set", "dev", interface, "up"])
            }
        }
        let path = temporaryPath("veth-outputs.pcap")
        let outputs = [temporaryPath("veth-outputs-a.pcap"), temporaryPath("veth-outputs-b.pcap")]
        defer { for file in ([path] + outputs) { unlink(file) } }
        let frames = SenderFrames.conversation(count: 400)
        try SenderFrames.write(frames, to: path)
        let sides = [frames.filter { SenderFrames.serial($0) % 2 == 0 }, frames.filter { SenderFrames.serial($0) % 2 == 1 }]

        // tcpdump on each receiving end, for exactly its side's count (bounded by timeout).
        var pids: [pid_t] = []
        for (index, (_, far)) in links.enumerated() {
            let arguments = ["/usr/sbin/ip", "netns", "exec", receiver, "/usr/bin/timeout", "15", tcpdump, "-i", far,
                             "-Q", "in", "-U", "-n", "-c", "\(sides[index].count)", "-w", outputs[index], "ip"]
            var argv = arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var child: pid_t = 0
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            #expect(posix_spawn(&child, arguments[0], &actions, nil, &argv, environ) == 0)
            posix_spawn_file_actions_destroy(&actions)
            pids.append(child)
        }
        usleep(1_500_000)  // tcpdump attaches
        var stdout = ""
        // Client->server (dst port 80) to the named output on the first veth, the rest to the sink on the second.
        let status = run(["/usr/sbin/ip", "netns", "exec", sender, binary, "replay", path, "--pps", "20000", "--cores", "0",
                          "--iface", links[1].0, "--output", "up=iface:\(links[0].0)",
                          "--rule", "{name: web, match: {protocol: tcp, dst_port: 80}, output: up}"], capture: &stdout)
        #expect(status == 0, "\(stdout)")
        #expect(stdout.contains("up") && stdout.contains("200 packets"), "\(stdout)")
        for child in pids {
            var childStatus: Int32 = 0
            waitpid(child, &childStatus, 0)
            #expect((childStatus >> 8) & 0xFF == 0, "tcpdump did not see its side's count in 15 s")
        }
        #expect(try SenderFrames.read(outputs[0]) == sides[0])
        #expect(try SenderFrames.read(outputs[1]) == sides[1])
    }
}
