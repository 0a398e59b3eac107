// Path: Benchmarks/Sources/afpacket-compare/Support.swift — threads, flags, the test frame and the
// markdown report for afpacket-compare.
import ArgumentParser
import CPacketHarness
import Glibc

/// Ready and done flags shared by a run's threads (plain ints, touched through pkth_flag_*).
final class Flags: @unchecked Sendable {  // unchecked: the flags are only used through atomic builtins
    let ready = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    let senderDone = UnsafeMutablePointer<Int32>.allocate(capacity: 1)

    init() {
        ready.initialize(to: 0)
        senderDone.initialize(to: 0)
    }

    deinit {
        ready.deallocate()
        senderDone.deallocate()
    }

    /// Waits up to 10 s for the receiver.
    func waitReady() -> Bool {
        for _ in 0..<100_000 {
            if pkth_flag_get(ready) != 0 { return true }
            usleep(100)
        }
        return false
    }
}

/// What a thread leaves behind, read after joining it.
final class ThreadOutcome<Value>: @unchecked Sendable {  // unchecked: written before join, read after
    var value: Value?
    var failure: String?
}

/// A thread running `body`; `join` returns the error that ended it, if any.
final class Spawned: @unchecked Sendable {  // unchecked: `thread` is used by the spawner only
    private var thread = pthread_t()
    private let outcome = ThreadOutcome<Void>()

    private final class Start {
        let body: () throws -> Void
        let outcome: ThreadOutcome<Void>
        init(_ body: @escaping () throws -> Void, _ outcome: ThreadOutcome<Void>) {
            self.body = body
            self.outcome = outcome
        }
    }

    init(_ body: @escaping () throws -> Void) throws {
        let start = Unmanaged.passRetained(Start(body, outcome)).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            do { try start.body() } catch { start.outcome.failure = "\(error)" }
            return nil
        }, start)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw ValidationError("pthread_create: \(rc)")
        }
    }

    func join() -> String? {
        pthread_join(thread, nil)
        return outcome.failure
    }
}

extension Optional {
    func unwrap(_ what: String) throws -> Wrapped {
        guard let self else { throw ValidationError("missing \(what)") }
        return self
    }
}

extension Array {
    func rotated(by count: Int) -> [Element] {
        guard !isEmpty else { return self }
        let shift = count % self.count
        return Array(self[shift...] + self[..<shift])
    }
}

extension String {
    /// `value` with one decimal (no Foundation).
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }

    /// A non-negative `value` with two decimals (no Foundation).
    init(format2 value: Double) {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        self = "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// The benchmark's frame: 64 bytes of Ethernet/IPv4/UDP from 198.18.0.1 to 198.18.0.2, to a MAC
/// nobody has (PACKET_OTHERHOST on the far side, so its IP stack drops it without answering).
enum Frame {
    static let sequenceOffset = 42

    static func make() -> [UInt8] {
        var bytes: [UInt8] = [0x02, 0x53, 0x4C, 0xFF, 0xFF, 0xFE, 0x02, 0x53, 0x4C, 0x00, 0x00, 0x01, 0x08, 0x00]
        bytes += [0x45, 0x00, 0x00, 50, 0x00, 0x00, 0x40, 0x00, 64, 17, 0x00, 0x00, 198, 18, 0, 1, 198, 18, 0, 2]
        var sum: UInt32 = 0
        for index in stride(from: 14, to: 34, by: 2) { sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1]) }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        bytes[24] = UInt8(~sum >> 8 & 0xFF)
        bytes[25] = UInt8(~sum & 0xFF)
        bytes += [0x9C, 0x40, 0x00, 0x09, 0x00, 30, 0x00, 0x00]
        bytes += [UInt8](repeating: 0, count: 64 - bytes.count)
        return bytes
    }
}

/// Medians and ratios as a markdown table on standard output.
struct Report {
    let runs: Int
    let rxPackets: Int
    let txPackets: Int
    let burst: Int

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    func print(rx: [RXVariant: [RXRun]], tx: [TXVariant: [TXRun]]) {
        if !rx.isEmpty { printRX(rx) }
        if !tx.isEmpty { printTX(tx) }
    }

    private func printRX(_ rx: [RXVariant: [RXRun]]) {
        Swift.print("RX over veth, \(rxPackets) x 64-byte frames per run, C TX-ring sender (QDISC_BYPASS) on its own CPU;")
        Swift.print("medians of \(runs) interleaved runs. CPU per received packet, three ways over the same span (sender "
            + "start to receiver end): the receiving thread (CLOCK_THREAD_CPUTIME_ID), the process (sender + receiver "
            + "threads, getrusage) and all cores (/proc/stat busy time, softirq and anything else running included).")
        Swift.print("")
        Swift.print("| receiver | pps | received | lost, all runs | kernel drops, all runs "
            + "| receiver thread CPU ns/packet | sender + receiver threads ns/packet | all cores ns/packet |")
        Swift.print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for variant in RXVariant.allCases {
            guard let results = rx[variant] else { continue }
            Swift.print("| \(variant.rawValue) | \(Int(Self.median(results.map(\.pps)))) "
                + "| \(Int(Self.median(results.map { Double($0.received) }))) "
                + "| \(results.reduce(0) { $0 + $1.lost }) "
                + "| \(results.reduce(0) { $0 + $1.kernelDrops }) "
                + "| \(String(format1: Self.median(results.map(\.cpuNsPerPacket)))) "
                + "| \(String(format1: Self.median(results.map(\.processCPUNsPerPacket)))) "
                + "| \(String(format1: Self.median(results.map(\.allCoresCPUNsPerPacket)))) |")
        }
        guard let ring = rx[.sluiceRing] else { return }
        Swift.print("")
        Swift.print("Sluice ring / anchor, CPU per packet (median of per-run ratios; runs of a round pair up):")
        Swift.print("")
        Swift.print("| anchor | receiver thread | sender + receiver threads | all cores | lost, all runs: ring / anchor |")
        Swift.print("|---|---:|---:|---:|---:|")
        for variant in RXVariant.allCases where variant != .sluiceRing {
            guard let anchor = rx[variant] else { continue }
            let ratio = { (measure: KeyPath<RXRun, Double>) -> String in
                String(format2: Self.median(zip(ring, anchor).map { $0[keyPath: measure] / max($1[keyPath: measure], 1e-9) })) + "x"
            }
            Swift.print("| \(variant.rawValue) | \(ratio(\.cpuNsPerPacket)) | \(ratio(\.processCPUNsPerPacket)) "
                + "| \(ratio(\.allCoresCPUNsPerPacket)) | \(ring.reduce(0) { $0 + $1.lost }) / \(anchor.reduce(0) { $0 + $1.lost }) |")
        }
        if let plain = rx[.recvfrom] {
            let ratio = Self.median(zip(ring, plain).map { $0.cpuNsPerPacket / max($1.cpuNsPerPacket, 1e-9) })
            let ringLost = ring.reduce(0) { $0 + $1.lost }
            let plainLost = plain.reduce(0) { $0 + $1.lost }
            Swift.print("")
            Swift.print("Goal (issue 3), receiver thread CPU per packet, ring / recvfrom, at most 50%: "
                + "\(ratio <= 0.5 ? "met" : "NOT met") (\(String(format1: ratio * 100))%); lost, no more than recvfrom: "
                + "\(ringLost <= plainLost ? "met" : "NOT met") (\(ringLost) / \(plainLost)).")
        }
        Swift.print("")
    }

    private func printTX(_ tx: [TXVariant: [TXRun]]) {
        Swift.print("TX over veth, \(txPackets) x 64-byte frames per run, 4096 x 2048-byte slots, QDISC_BYPASS, "
            + "burst \(burst), one kick per burst; medians of \(runs) interleaved runs; "
            + "all cores: /proc/stat busy time over the run, set-up included.")
        Swift.print("")
        Swift.print("| sender | pps | sender thread CPU ns/packet | all cores ns/packet | kick retries (EAGAIN/ENOBUFS) |")
        Swift.print("|---|---:|---:|---:|---:|")
        for variant in TXVariant.allCases {
            guard let results = tx[variant] else { continue }
            Swift.print("| \(variant.rawValue) | \(Int(Self.median(results.map(\.pps)))) "
                + "| \(String(format1: Self.median(results.map(\.cpuNsPerPacket)))) "
                + "| \(String(format1: Self.median(results.map(\.allCoresCPUNsPerPacket)))) "
                + "| \(Int(Self.median(results.map { Double($0.retries) }))) |")
        }
        if let sluice = tx[.sluiceRing], let plain = tx[.cRing] {
            let ratio = Self.median(zip(sluice, plain).map { $0.pps / max($1.pps, 1e-9) })
            Swift.print("")
            Swift.print("TX pps, Sluice / C: \(String(format1: ratio * 100))% (goal >= 90%: \(ratio >= 0.9 ? "met" : "NOT met")).")
        }
        Swift.print("")
    }
}
