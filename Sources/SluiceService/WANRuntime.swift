// Path: Sources/SluiceService/WANRuntime.swift — the service's WAN links (`wan:`): opened and
// started before the pipelines, stopped after them, counted in the metrics (`sluice_wan_*`).
import Logging
import SluiceWAN

/// The configured links. `start` starts them in order (a failure stops those started and throws);
/// `stop` stops them all. Control-plane object; any thread may read `links` for snapshots.
public final class WANRuntime: Sendable {
    public let links: [WANLink]

    /// Checks every link (they were validated with the config; this cannot fail for a loaded one).
    public init(configurations: [WANConfiguration]) throws(ServiceError) {
        var links: [WANLink] = []
        for configuration in configurations {
            do { links.append(try WANLink(configuration: configuration)) } catch {
                throw .wan(name: configuration.name, error)
            }
        }
        self.links = links
    }

    /// Opens and starts every link; logs each. Blocks up to 10 s per link.
    public func start(logger: Logger) throws(ServiceError) {
        for (index, link) in links.enumerated() {
            do { try link.start() } catch {
                for started in links[..<index] { started.stop() }
                throw .wan(name: link.configuration.name, error)
            }
            let configuration = link.configuration
            logger.info("wan link started", metadata: [
                "link": "\(configuration.name)", "a": "\(configuration.interfaceA)", "b": "\(configuration.interfaceB)",
                "netns": "\(configuration.namespacePath ?? "(service's)")",
                "aToB": "\(configuration.aToB.summary)", "bToA": "\(configuration.bToA.summary)"])
        }
    }

    /// Stops every link and logs its counters. Blocks until their threads end.
    public func stop(logger: Logger) {
        for link in links {
            link.stop()
            var metadata: Logger.Metadata = ["link": "\(link.configuration.name)"]
            for line in WANReport.lines(link.snapshot()) {
                let direction = String(line.prefix(while: { $0 != ":" }))
                metadata[direction] = "\(line.dropFirst(direction.count + 2))"
            }
            logger.info("wan link stopped", metadata: metadata)
        }
    }
}
