// Path: Sources/SluiceService/ServiceRunner.swift — `sluice run` as a swift-service-lifecycle
// service group: the metrics endpoint, the storage node and the dataplane start in that order and
// stop in the reverse one on SIGTERM/SIGINT (dataplane drained and flushed first, metrics last).
import Dispatch
import Foundation
import Synchronization
import Logging
import ServiceLifecycle
import SluiceCore

/// What the service did, for its last log lines and its exit status.
public struct ServiceSummary: Sendable {
    public var pipelines: [PipelineOutcome]
    public var storageLastOSN: UInt64?
    /// The service group's error, if it ended with one (every part was still stopped).
    public var groupError: String?
    /// True when every pipeline ended without an input/output error, nothing was left on a ring and
    /// the group ended without error.
    public var isClean: Bool {
        groupError == nil && pipelines.allSatisfy { $0.failure == nil && $0.leftOnRings == 0 }
    }
}

/// Where the service listens, once everything is up (ports as bound: 0 in the config means any).
public struct ServiceEndpoints: Sendable, CustomStringConvertible {
    public var metrics: ListenAddress?
    public var storage: ListenAddress?
    public var description: String {
        "metrics=\(metrics.map(\.description) ?? "off") storage=\(storage.map(\.description) ?? "off")"
    }
}

public enum ServiceRunner {
    /// Starts every configured part, calls `ready` once all are up, then runs until SIGTERM or
    /// SIGINT (or `runForMs`), and shuts down gracefully. A part that cannot start stops those
    /// already started and throws.
    public static func run(_ configuration: ServiceConfiguration, logger: Logger,
                           ready: @escaping @Sendable (ServiceEndpoints) -> Void) async throws(ServiceError) -> ServiceSummary {
        let metrics = ServiceMetrics()
        let parts = PartsBox()
        // The firmware check first: an isolated device's pipelines are never built, its storage never
        // takes a write.
        let firmware = try configuration.firmware.map { settings throws(ServiceError) in try FirmwareRuntime.boot(settings, logger: logger) }
        var checked = configuration
        if let firmware {
            checked.pipelines = configuration.pipelines.filter { pipeline in
                guard let (device, reason) = firmware.isolation(of: pipeline.path) else { return true }
                logger.error("pipeline not started: its device is isolated", metadata: [
                    "pipeline": "\(pipeline.path.name)", "device": "\(device)", "reason": "\(reason)"])
                return false
            }
        }
        let configuration = checked
        var endpoint: MetricsEndpoint?
        var storage: StorageRuntime?
        // Built first: the runtime checks the worker cores against the process's CPUs, before the
        // threads are confined to the control cores.
        let dataplane = try Dataplane(configuration: configuration, logger: logger)
        let wan = try WANRuntime(configurations: configuration.wan.filter { link in
            guard let (device, reason) = firmware?.isolation(ofInterfaces: [link.interfaceA, link.interfaceB]) else { return true }
            logger.error("wan link not started: its device is isolated", metadata: [
                "link": "\(link.name)", "device": "\(device)", "reason": "\(reason)"])
            return false
        })
        var wanStarted = false
        let overlay = try configuration.overlay.map { settings throws(ServiceError) in try OverlayRuntime(settings: settings) }
        var overlayStarted = false
        try confineControlThreads(configuration, logger: logger)
        do {
            if let address = configuration.metrics {
                endpoint = try MetricsEndpoint.bind(address, render: {
                    let (dataplane, storage) = parts.current
                    return metrics.render(dataplane: dataplane, storage: storage, wan: wan, firmware: firmware)
                        + (overlay?.metricsText() ?? "")
                }, health: {
                    let (dataplane, storage) = parts.current
                    return firmware?.healthProblem ?? healthProblem(dataplane: dataplane, storage: storage)
                })
                logger.info("metrics endpoint listening", metadata: ["listen": "\(endpoint!.host):\(endpoint!.port)"])
            }
            if let settings = configuration.storage {
                let isolation = firmware?.storageIsolation
                if let (device, reason) = isolation {
                    logger.error("storage takes no writes: its device is isolated", metadata: ["device": "\(device)", "reason": "\(reason)"])
                }
                storage = try await StorageRuntime.open(settings, logger: logger,
                                                        isolation: isolation.map { "device \($0.device): \($0.reason)" })
                parts.setStorage(storage!)
            }
            // The links first, so the pipelines' first frames find them up.
            try wan.start(logger: logger)
            wanStarted = true
            try overlay?.start(logger: logger)
            overlayStarted = true
            try dataplane.start()
            parts.setDataplane(dataplane)
        } catch {
            if overlayStarted { overlay?.stop(logger: logger) }
            if wanStarted { wan.stop(logger: logger) }
            storage?.shutdown(logger: logger)
            endpoint?.close()
            throw error
        }
        let summary = SummaryBox()
        let groupBox = GroupBox()
        // Shut down in reverse order: the dataplane first (drain, flush), then storage, then metrics.
        // The ready line and the self-stopping triggers stay until the end and never fail the group.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        let endpoints = ServiceEndpoints(metrics: endpoint.map { ListenAddress(host: $0.host, port: $0.port) },
                                         storage: storage.map { ListenAddress(host: $0.server.host, port: $0.server.port) })
        // Announced from inside the group: its signal handlers are installed by then, so a SIGTERM
        // sent on seeing the ready line is a graceful stop, never the default (kill).
        services.append(.init(service: Announcer { ready(endpoints) }, serviceName: "ready"))
        if let firmware, let recheckMs = firmware.settings.recheckMs {
            services.append(.init(service: FirmwareRecheck(firmware: firmware, intervalMs: recheckMs, dataplane: dataplane,
                                                           storage: storage, logger: logger), serviceName: "firmware-recheck"))
        }
        if let runForMs = configuration.runForMs {
            services.append(.init(service: StopTrigger(group: groupBox, reason: "run_for_ms elapsed") {
                try await Task.sleep(for: .milliseconds(runForMs))
            }, serviceName: "run-for"))
        }
        if configuration.exitWhenDrained {
            services.append(.init(service: StopTrigger(group: groupBox, reason: "every pipeline drained (exit_when_drained)") {
                while !dataplane.allDrained { try await Task.sleep(for: .milliseconds(5)) }
            }, serviceName: "exit-when-drained"))
        }
        if let endpoint {
            services.append(.init(service: Part(name: "metrics") { endpoint.close() }, serviceName: "metrics"))
        }
        if let storage {
            services.append(.init(service: Part(name: "storage") {
                storage.shutdown(logger: logger)
                summary.setStorageOSN(storage.node.lastOSN)
            }, serviceName: "storage"))
        }
        if !wan.links.isEmpty {
            // Stopped after the dataplane (the group stops services in reverse order), before storage.
            services.append(.init(service: Part(name: "wan") { wan.stop(logger: logger) }, serviceName: "wan"))
        }
        if let overlay {
            services.append(.init(service: Part(name: "overlay") { overlay.stop(logger: logger) }, serviceName: "overlay"))
        }
        let drainTimeoutNs = UInt64(configuration.drainTimeoutMs) * 1_000_000
        services.append(.init(service: Part(name: "dataplane") {
            logger.info("stopping sources, draining pipelines", metadata: ["timeoutMs": "\(configuration.drainTimeoutMs)"])
            summary.setPipelines(dataplane.stop(drainTimeoutNs: drainTimeoutNs))
        }, serviceName: "dataplane"))
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        groupBox.set(group)
        do { try await group.run() } catch {
            // Every part's stop has run (they stop on cancellation too); report, do not lose the summary.
            logger.error("service group ended with an error", metadata: ["error": "\(error)"])
            summary.setGroupError("\(error)")
        }
        return summary.value
    }
}

/// Why the service is not healthy, or nil: a poisoned storage node (it refuses everything until a
/// restart recovers it from its log), a pipeline whose input failed (a bad record) or whose pcap
/// output had write errors.
func healthProblem(dataplane: Dataplane?, storage: StorageRuntime?) -> String? {
    if let poisoned = storage?.node.poisoned { return "storage node: \(poisoned)" }
    for path in dataplane?.paths ?? [] {
        if let failure = path.inputFailure { return "pipeline \(path.configuration.name): \(failure)" }
        if let errors = path.dropCounts().first(where: { $0.reason == "write-error" }) {
            return "pipeline \(path.configuration.name): \(errors.count) write errors on its output"
        }
    }
    return nil
}

/// Moves every thread there is (and so every thread they start, but the workers, which pin
/// themselves) onto the control cores, as DPDK keeps its control threads off the lcores.
private func confineControlThreads(_ configuration: ServiceConfiguration, logger: Logger) throws(ServiceError) {
    let allowed: [Int]
    do { allowed = try CPU.allowedCPUs() } catch { throw .affinity(error) }
    let control = configuration.controlCores ?? allowed.filter { !configuration.cores.contains($0) }
    guard !control.isEmpty else {
        logger.notice("no CPU left beside the worker cores: control threads share them",
                      metadata: ["cores": "\(configuration.cores)", "allowed": "\(allowed)"])
        return
    }
    for core in control where !allowed.contains(core) {
        throw .controlCoreNotAllowed(core: core, allowed: allowed)
    }
    do {
        let moved = try CPU.confineAllThreads(to: control)
        logger.info("control threads confined", metadata: ["controlCores": "\(control)", "threads": "\(moved)"])
    } catch { throw .affinity(error) }
}

/// A started part: waits for graceful shutdown, then runs its blocking `stop` off the async pool.
private struct Part: Service, CustomStringConvertible {
    let name: String
    let stop: @Sendable () -> Void
    var description: String { name }

    func run() async throws {
        // Cancellation (a second signal, or a failed sibling) also ends the wait: stop either way.
        try? await gracefulShutdown()
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detach(name: "sluice-stop-\(name)") {
                stop()
                done.resume()
            }
        }
    }
}

/// Checks the devices every `intervalMs`; a device isolated meanwhile has its pipelines' sources
/// stopped (they drain and flush as at the end of a capture) and, if it holds the storage, the node
/// refuses writes from then on; one that passes again gets its storage writes back.
private struct FirmwareRecheck: Service {
    let firmware: FirmwareRuntime
    let intervalMs: Int
    let dataplane: Dataplane
    let storage: StorageRuntime?
    let logger: Logger

    func run() async throws {
        _ = try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: .milliseconds(intervalMs))
                // TPM commands and fsyncs block: off the cooperative pool.
                let isolated = await withCheckedContinuation { (done: CheckedContinuation<[String], Never>) in
                    Thread.detach(name: "sluice-firmware") { done.resume(returning: firmware.recheck(logger: logger)) }
                }
                for path in dataplane.paths {
                    guard let (device, reason) = firmware.isolation(of: path.configuration), isolated.contains(device) else { continue }
                    path.stopSignal.stop()
                    logger.error("pipeline stopped: its device is isolated", metadata: [
                        "pipeline": "\(path.configuration.name)", "device": "\(device)", "reason": "\(reason)"])
                }
                if !isolated.isEmpty { dataplane.runtime.wakeAll() }
                if let storage {
                    let isolation = firmware.storageIsolation
                    storage.node.isolate(reason: isolation.map { "device \($0.device): \($0.reason)" })
                }
            }
        }
        try? await gracefulShutdown()
    }
}

/// Calls `announce` once the group runs, then waits for the shutdown.
private struct Announcer: Service {
    let announce: @Sendable () -> Void

    func run() async throws {
        announce()
        try? await gracefulShutdown()
    }
}

/// Starts the group's graceful shutdown when `condition` returns (a timer, a drained dataplane), then
/// waits for it like every part. A shutdown that comes first cancels the wait; nothing here fails.
private struct StopTrigger: Service {
    let group: GroupBox
    let reason: String
    let condition: @Sendable () async throws -> Void

    func run() async throws {
        let fired: Void? = try? await cancelWhenGracefulShutdown { try await condition() }
        if fired != nil, let group = group.value {
            Logger(label: "sluice").info("shutting down: \(reason)")
            await group.triggerGracefulShutdown()
        }
        try? await gracefulShutdown()
    }
}

/// The group, for triggers created before it.
private final class GroupBox: Sendable {
    private let group = Mutex<ServiceGroup?>(nil)
    var value: ServiceGroup? { group.withLock { $0 } }
    func set(_ value: ServiceGroup) { group.withLock { $0 = value } }
}

/// The running parts, for the metrics endpoint's render closure (set once each, read often).
private final class PartsBox: Sendable {
    private let parts = Mutex<(Dataplane?, StorageRuntime?)>((nil, nil))
    var current: (Dataplane?, StorageRuntime?) { parts.withLock { $0 } }
    func setDataplane(_ dataplane: Dataplane) { parts.withLock { $0.0 = dataplane } }
    func setStorage(_ storage: StorageRuntime) { parts.withLock { $0.1 = storage } }
}

private final class SummaryBox: Sendable {
    private let summary = Mutex(ServiceSummary(pipelines: [], storageLastOSN: nil, groupError: nil))
    var value: ServiceSummary { summary.withLock { $0 } }
    func setPipelines(_ outcomes: [PipelineOutcome]) { summary.withLock { $0.pipelines = outcomes } }
    func setStorageOSN(_ osn: UInt64) { summary.withLock { $0.storageLastOSN = osn } }
    func setGroupError(_ error: String) { summary.withLock { $0.groupError = error } }
}
