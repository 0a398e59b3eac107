// Path: Sources/sluice/Sluice.swift — the command line: parses flags, builds a configuration and
// calls the modules. No logic of its own.
import ArgumentParser
import SluiceCore

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sluice: a data plane in Swift with a C core.",
        subcommands: [RunCommand.self, ReplayCommand.self, StorageCommand.self, StatsCommand.self, WanCommand.self,
                      GatewayCommand.self, FirmwareCommand.self, VMCommand.self, OverlayCommand.self])
}

/// Parses a core list: "0,1", "0-3", "0-1,4". Core ids are 0...`CPU.coreIDMax`; a negative id,
/// an empty part, a reversed range or anything else is an error naming the part.
func parseCores(_ text: String) throws(ValidationError) -> [Int] {
    var cores: [Int] = []
    for part in text.split(separator: ",", omittingEmptySubsequences: false) {
        let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            .map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard bounds.count <= 2, let low = bounds[0], let high = bounds.count == 2 ? bounds[1] : low,
              low >= 0, high <= coreIDMax else {
            throw ValidationError("--cores: '\(part)' is not a core id 0...\(coreIDMax) or a range like 0-3 (in '\(text)')")
        }
        guard high >= low else { throw ValidationError("--cores: range '\(part)' goes backwards (in '\(text)')") }
        cores.append(contentsOf: low...high)
    }
    guard !cores.isEmpty else { throw ValidationError("--cores: no cores given") }
    return cores
}

/// Highest core id a core list may name (CPU_SETSIZE - 1).
let coreIDMax = 1023

/// Parsed by name with `WaitMode.init?(argument:)` (SluiceCore) and listed by name in help and errors
/// (`busy-poll`, `adaptive`, `interrupt`), never by raw value.
extension WaitMode: ExpressibleByArgument {
    var argumentName: String {
        switch self {
        case .busyPoll: "busy-poll"
        case .adaptive: "adaptive"
        case .interrupt: "interrupt"
        }
    }

    public static var allValueStrings: [String] { allCases.map(\.argumentName) }
    public var defaultValueDescription: String { argumentName }
}

extension String {
    func trimmingCharacters(in _: CharacterSetLike) -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

enum CharacterSetLike { case whitespaces }

extension Substring {
    func trimmingCharacters(in set: CharacterSetLike) -> String { String(self).trimmingCharacters(in: set) }
}
