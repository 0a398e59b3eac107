// Path: Sources/SluiceParserFuzz/MutationLoop.swift — the bounded, deterministic fuzz loop of a normal
// build, and a parse benchmark.
import Glibc
import SluicePacket

/// A deterministic generator (SplitMix64): the same seed gives the same run.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(max(bound, 1))) }
}

/// Mutates seed packets (bit flips, interesting values at header offsets, truncation, insertion,
/// deletion, splicing) and runs each through the harness. Bounded by `iterations`; inputs by
/// `inputSizeMax`.
enum MutationLoop {
    static let inputSizeMax = 4096
    static let interesting: [UInt8] = [0x00, 0x01, 0x05, 0x06, 0x08, 0x11, 0x2C, 0x3A, 0x40, 0x45, 0x60, 0x7F, 0x80,
                                       0x81, 0x86, 0x88, 0x91, 0xDD, 0xFF]

    /// Runs `iterations` inputs from `seed`, or fewer if `seconds` pass first (checked every 4096 inputs).
    static func run(iterations: Int, seed: UInt64, seconds: UInt64? = nil) {
        var random = SplitMix64(state: seed)
        let seeds = Seeds.all().map { [UInt8(FuzzHarness.linkTypes.firstIndex(of: $0.link)!), 0] + $0.bytes }
        var drops = DropCounters()
        var parsedCount = 0
        let start = Clock.nowNs()
        let deadline = seconds.map { start &+ $0 &* 1_000_000_000 } ?? UInt64.max
        var done = 0
        for iteration in 0..<iterations {
            if iteration & 4095 == 0, Clock.nowNs() >= deadline { break }
            done += 1
            var input = seeds[random.below(seeds.count)]
            let mutationCount = 1 + random.below(6)
            for _ in 0..<mutationCount { mutate(&input, &random, seeds: seeds) }
            if input.count > inputSizeMax { input.removeLast(input.count - inputSizeMax) }
            let outcome = input.withUnsafeBytes { FuzzHarness.run($0, scratch: scratch) }
            switch outcome {
            case .tooShort: break
            case .parsed: parsedCount += 1
            case .dropped(let reason): drops.count(reason)
            }
        }
        let seconds = Double(Clock.nowNs() - start) / 1e9
        print("SluiceParserFuzz: \(done) inputs, seed \(seed), \(parsedCount) parsed, \(drops.total) dropped, "
              + "no invariant broken (\(fixed1(seconds)) s)")
        for reason in DropReason.allCases where drops[reason] > 0 { print("  \(reason): \(drops[reason])") }
    }

    static func mutate(_ input: inout [UInt8], _ random: inout SplitMix64, seeds: [[UInt8]]) {
        guard !input.isEmpty else {
            input = [UInt8(truncatingIfNeeded: random.next())]
            return
        }
        switch random.below(8) {
        case 0: input[random.below(input.count)] ^= 1 << UInt8(random.below(8))
        case 1: input[random.below(input.count)] = UInt8(truncatingIfNeeded: random.next())
        case 2: input[random.below(input.count)] = interesting[random.below(interesting.count)]
        case 3: input.removeLast(random.below(input.count))
        case 4: input.insert(contentsOf: [UInt8](repeating: UInt8(truncatingIfNeeded: random.next()), count: 1 + random.below(16)),
                             at: random.below(input.count + 1))
        case 5:
            let start = random.below(input.count)
            input.removeSubrange(start..<min(input.count, start + 1 + random.below(8)))
        case 6:
            let other = seeds[random.below(seeds.count)]
            let cut = random.below(min(input.count, other.count))
            input = Array(input.prefix(cut)) + other.dropFirst(cut)
        default:
            // A 16-bit length or type field set to a boundary value.
            let offset = random.below(input.count)
            let value = [0, 1, 7, 8, 20, 40, 0x05DC, 0x0800, 0x86DD, 0x8100, 0xFFFF][random.below(11)]
            input[offset] = UInt8(value >> 8)
            if offset + 1 < input.count { input[offset + 1] = UInt8(value & 0xFF) }
        }
    }
}

/// Parse and classify of the seed packets in a tight loop: ns per packet, for the "few tens of ns"
/// budget. Release builds only give meaningful numbers.
enum Benchmark {
    static func run(iterations: Int) {
        let seeds = Seeds.all()
        let parser = PacketParser()
        let classifier = FuzzHarness.classifier
        print("packet                              parse ns   parse+classify ns")
        for seed in seeds {
            var packet = ParsedPacket()
            var sink: UInt64 = 0
            let (parseNs, bothNs) = seed.bytes.withUnsafeBytes { raw -> (Double, Double) in
                let start = Clock.nowNs()
                for _ in 0..<iterations {
                    let reason = parser.parse(PacketBytes(raw), linkType: seed.link, into: &packet)
                    sink &+= UInt64(packet.outer.destinationPort) &+ UInt64(reason?.rawValue ?? 0)
                }
                let middle = Clock.nowNs()
                for index in 0..<iterations {
                    let reason = parser.parse(PacketBytes(raw), linkType: seed.link, into: &packet)
                    let classification = classifier.classify(packet, inputPort: UInt16(truncatingIfNeeded: index))
                    sink &+= UInt64(classification.flowHash) &+ UInt64(reason?.rawValue ?? 0)
                }
                let end = Clock.nowNs()
                return (Double(middle - start) / Double(iterations), Double(end - middle) / Double(iterations))
            }
            var name = "link \(seed.link.rawValue), \(seed.bytes.count) B, L4 \(packet.outer.ipProtocol)"
                + (packet.isTunnel ? " vxlan" : "")
            while name.count < 36 { name += " " }
            print("\(name)\(fixed1(parseNs))       \(fixed1(bothNs))   (\(sink & 1))")
        }
    }
}

enum Clock {
    static func nowNs() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// `value` with one decimal, without Foundation.
func fixed1(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(abs(tenths % 10))"
}
