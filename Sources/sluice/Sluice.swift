// Path: Sources/sluice/Sluice.swift — the command line: parses flags, builds a configuration and
// calls the modules. No logic of its own.
import ArgumentParser
import SluiceCore

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sluice: a data plane in Swift with a C core.",
        subcommands: [RunCommand.self, ReplayCommand.self, StorageCommand.self, StatsCommand.self])
}

/// Parses a core list: "0,1", "0-3", "0-1,4".
func parseCores(_ text: String) throws(ValidationError) -> [Int] {
    var cores: [Int] = []
    for part in text.split(separator: ",") {
        let bounds = part.split(separator: "-", maxSplits: 1).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard let low = bounds.first ?? nil, low >= 0, bounds.count <= 2 else {
            throw ValidationError("--cores: '\(part)' is not a core id or a range like 0-3")
        }
        let high = bounds.count == 2 ? bounds[1] : low
        guard let high, high >= low else { throw ValidationError("--cores: range '\(part)' is empty or malformed") }
        cores.append(contentsOf: low...high)
    }
    guard !cores.isEmpty else { throw ValidationError("--cores: no cores given") }
    return cores
}

extension WaitMode: ExpressibleByArgument {}

extension String {
    func trimmingCharacters(in _: CharacterSetLike) -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

enum CharacterSetLike { case whitespaces }

extension Substring {
    func trimmingCharacters(in set: CharacterSetLike) -> String { String(self).trimmingCharacters(in: set) }
}
