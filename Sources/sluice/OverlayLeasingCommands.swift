// Path: Sources/sluice/OverlayLeasingCommands.swift — `sluice overlay` subcommands of the leasing side.
import ArgumentParser

let overlayLeasingSubcommands: [ParsableCommand.Type] = []
