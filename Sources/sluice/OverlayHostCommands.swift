// Path: Sources/sluice/OverlayHostCommands.swift — `sluice overlay` subcommands of the host data plane.
import ArgumentParser

let overlayHostSubcommands: [ParsableCommand.Type] = []
