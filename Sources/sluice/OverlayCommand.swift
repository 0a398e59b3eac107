// Path: Sources/sluice/OverlayCommand.swift — `sluice overlay`: producer leasing through etcd and the
// consumer/producer host's redirect data plane (docs/OVERLAY.md). The subcommands live in
// OverlayLeasingCommands.swift (producers, leases, agents) and OverlayHostCommands.swift (hosts, flows).
import ArgumentParser

struct OverlayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overlay",
        abstract: "Overlay network: lease producer VMs to consumers through etcd, redirect on the consumer host.",
        subcommands: overlayLeasingSubcommands + overlayHostSubcommands)
}
