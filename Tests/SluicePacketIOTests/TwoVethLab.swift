// Path: Tests/SluicePacketIOTests/TwoVethLab.swift — two test-made namespaces joined by two veth pairs, with
// tcpdump on each receiving end: the lab of the replay split and named-output tests (root, CI=true).
import Foundation
import Glibc
import SluicePacketIO
import SluiceTestSupport
import Testing

/// A sender namespace and a receiver namespace joined by two veth pairs (`links`: sender end, receiver
/// end), IPv6 off, no addresses: only what the test sends crosses them. `close()` deletes both namespaces
/// (and with them the veths). Names carry the pid and `tag`, so labs of one run stay apart.
struct TwoVethLab {
    let sender: String
    let receiver: String
    let links: [(near: String, far: String)]

    init(tag: String) throws {
        let pid = getpid()
        sender = "sl\(tag)-\(pid)-s"
        receiver = "sl\(tag)-\(pid)-r"
        links = [("\(tag)\(pid)a", "\(tag)\(pid)A"), ("\(tag)\(pid)b", "\(tag)\(pid)B")]
        do {
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
        } catch {
            close()
            throw error
        }
    }

    func close() {
        _ = run(["/usr/sbin/ip", "netns", "del", sender])
        _ = run(["/usr/sbin/ip", "netns", "del", receiver])
    }

    /// Writes a 400-frame conversation to `path`; returns its two sides in order: client->server
    /// (even serials, destination port 80) and server->client (odd).
    static func writeConversation(to path: String) throws -> [[[UInt8]]] {
        let frames = SenderFrames.conversation(count: 400)
        try SenderFrames.write(frames, to: path)
        return [frames.filter { SenderFrames.serial($0) % 2 == 0 }, frames.filter { SenderFrames.serial($0) % 2 == 1 }]
    }

    static var tcpdump: String? {
        ["/usr/bin/tcpdump", "/usr/sbin/tcpdump"].first { access($0, X_OK) == 0 }
    }

    /// Starts tcpdump on each receiving end for exactly `counts[i]` IPv4 packets into `files[i]` (at most
    /// 15 s each), then gives it 1.5 s to attach. Pass the result to `waitCaptures`.
    func startCaptures(tcpdump: String, files: [String], counts: [Int]) -> [pid_t] {
        var pids: [pid_t] = []
        for (index, link) in links.enumerated() {
            let arguments = ["/usr/sbin/ip", "netns", "exec", receiver, "/usr/bin/timeout", "15", tcpdump, "-i", link.far,
                             "-Q", "in", "-U", "-n", "-c", "\(counts[index])", "-w", files[index], "ip"]
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
        return pids
    }

    /// Waits for every capture; expects each saw its count.
    func waitCaptures(_ pids: [pid_t]) {
        for child in pids {
            var status: Int32 = 0
            waitpid(child, &status, 0)
            #expect((status >> 8) & 0xFF == 0, "tcpdump did not see its side's count in 15 s")
        }
    }
}
