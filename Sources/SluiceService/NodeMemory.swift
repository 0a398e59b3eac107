// Path: Sources/SluiceService/NodeMemory.swift — the machine's free memory as the kernel reports it,
// exported by `sluice run` (`sluice_node_memory_available_bytes`) so that a migration manager on another
// machine reads this host's free memory from its metrics endpoint.
import Foundation

public enum NodeMemory {
    /// `MemAvailable` of `path` (/proc/meminfo) in bytes; nil when the file or the line cannot be read.
    public static func availableBytes(path: String = "/proc/meminfo") -> Double? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kib = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }
}
