import ArgumentParser
import SluiceCore

@main
struct Sluice: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Sluice: a data plane in Swift with a C core.")
}
