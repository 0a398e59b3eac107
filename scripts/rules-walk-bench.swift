// scripts/rules-walk-bench.swift — the rule table's per-packet cost in process: key and walk
// (`RuleTable.apply`) over 64-byte UDP frames, for an empty table, 16 and 256 rules that each pass the
// packed-word check and fail on their /32 destination (the walk's worst case), and for 256 rules whose
// 128th matches. Built with SluicePacket's sources but its stages (no SluiceCore), -O -wmo, by
// scripts/bench-rules.sh --walk. Prints ns/packet (median of 7 rounds of 2M packets).
import Glibc

func nowNs() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

func frame(_ flow: Int) -> [UInt8] {
    var f: [UInt8] = [2, 0, 0, 0, 0, 0xB, 2, 0, 0, 0, 0, 0xA, 8, 0]
    f += [0x45, 0, 0, 46, 0, UInt8(flow), 0, 0, 64, 17, 0, 0, 198, 18, 0, UInt8(flow), 198, 19, 0, 1]
    f += [UInt8((1024 + flow) >> 8), UInt8((1024 + flow) & 0xFF), 0, 9, 0, 26, 0, 0] + [UInt8](repeating: 0, count: 18)
    return f
}

func rules(_ count: Int, matchAt: Int? = nil) -> [Rule] {
    (0..<count).map { i in
        let last = matchAt == i ? "198.19.0.1/32" : "198.19.\(i / 256 + 1).\(i % 256)/32"
        return Rule(RuleMatch(destinationPrefix: IPPrefix(last)!, ipProtocol: 17, destinationPort: 9), .forward, name: "r\(i)")
    }
}

let frames = (0..<256).map(frame)
let parser = PacketParser()
var keys: [RuleKey] = []
var layouts: [PacketLayout] = []
for f in frames {
    let packet = try! parser.parse(UnsafeRawBufferPointer(start: f.withUnsafeBytes { $0.baseAddress }, count: f.count), linkType: .ethernet).get()
    keys.append(RuleKey(sourceID: 0, ipProtocol: 17, ports: (packet.outer.sourcePort, packet.outer.destinationPort),
                        addresses: (packet.outer.sourceAddress, packet.outer.destinationAddress, 4)))
    layouts.append(PacketLayout(packet))
}
var buffer = [UInt8](repeating: 0, count: 128)
let variants: [(String, [Rule])] = [("empty", []), ("16 rules, none match", rules(16)), ("256 rules, none match", rules(256)),
                                    ("256 rules, #128 matches", rules(256, matchAt: 128))]
let packets = 2_000_000
var results: [(String, Double)] = []
for (name, list) in variants {
    let table = try! RuleTable(rules: list)
    var rounds: [Double] = []
    var sink = 0
    for _ in 0..<7 {
        let start = nowNs()
        buffer.withUnsafeMutableBytes { raw in
            for i in 0..<packets {
                var layout = layouts[i & 255]
                var matched = 0
                if case .forwarded = table.apply(keys[i & 255], to: raw, layout: &layout, matched: &matched) { sink &+= matched }
            }
        }
        rounds.append(Double(nowNs() - start) / Double(packets))
    }
    rounds.sort()
    results.append((name, rounds[3]))
    if sink == -1 { print(sink) }
}
let base = results[0].1
for (name, ns) in results {
    let pad = String(repeating: " ", count: max(0, 26 - name.count))
    print("\(name)\(pad) \(Double(Int(ns * 100)) / 100) ns/packet  \(Double(Int(ns / base * 10)) / 10)x empty")
}
