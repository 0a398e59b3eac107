// Path: Sources/SluiceMigration/GuestLaunchSpec.swift — how a guest's QEMU is started: one description
// gives the source's and the destination's command lines, so the two match where migration needs them to.

/// The QEMU configuration of one guest (direct kernel boot, virtio-serial agent port, CPU and memory
/// slots). A destination is the same spec with the template's CPU model and the source's current shape
/// (hot-plugged vCPUs and DIMMs become `-device`s), started with `-incoming defer`.
public struct GuestLaunchSpec: Codable, Sendable, Equatable {
    /// `-machine` ("q35" by default, as the test guest is verified with); the same QEMU binary resolves
    /// it alike on both ends.
    public var machine: String
    /// `-cpu` model (started with `enforce`: a host that cannot provide it refuses to start).
    public var cpuModel: String
    public var shape: VMShape
    public var kernel: String
    public var initrd: String
    /// The kernel command line.
    public var append: String
    /// The virtio-serial port name the guest's agent looks for.
    public var agentPortName: String
    /// Appended as they are (e.g. `-netdev` pairs); the same on both ends.
    public var extraArguments: [String]
    /// Extra devices by QEMU driver (`virtio-rng-pci`, ...), each started as `-device DRIVER,id=devN` in
    /// this order on both ends (the template's devices; the agent's port needs none of them).
    public var devices: [String]

    public static let defaultAgentPortName = "org.sluice.agent.0"

    public init(machine: String = "q35", cpuModel: String, shape: VMShape, kernel: String, initrd: String, append: String,
                agentPortName: String = GuestLaunchSpec.defaultAgentPortName, extraArguments: [String] = [],
                devices: [String] = []) {
        precondition(devices.allSatisfy { !$0.isEmpty && !$0.contains(",") && !$0.contains(" ") }, "device drivers are bare names")
        self.devices = devices
        self.machine = machine
        self.cpuModel = cpuModel
        self.shape = shape
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.agentPortName = agentPortName
        self.extraArguments = extraArguments
    }

    private enum CodingKeys: String, CodingKey {
        case machine, cpuModel, shape, kernel, initrd, append, agentPortName, extraArguments, devices
    }

    /// Decodes a spec; `devices` may be absent (specs written before it existed: no extra devices).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let devices = try c.decodeIfPresent([String].self, forKey: .devices) ?? []
        guard devices.allSatisfy({ !$0.isEmpty && !$0.contains(",") && !$0.contains(" ") }) else {
            throw DecodingError.dataCorruptedError(forKey: .devices, in: c, debugDescription: "device drivers are bare names (no ',' or spaces)")
        }
        self.init(machine: try c.decode(String.self, forKey: .machine), cpuModel: try c.decode(String.self, forKey: .cpuModel),
                  shape: try c.decode(VMShape.self, forKey: .shape), kernel: try c.decode(String.self, forKey: .kernel),
                  initrd: try c.decode(String.self, forKey: .initrd), append: try c.decode(String.self, forKey: .append),
                  agentPortName: try c.decode(String.self, forKey: .agentPortName),
                  extraArguments: try c.decode([String].self, forKey: .extraArguments),
                  devices: devices)
    }

    /// The agent's chardev socket of a QEMU run in `runDirectory`.
    public static func agentSocketPath(runDirectory: String) -> String { runDirectory + "/agent.sock" }
    /// The guest's serial console log of a QEMU run in `runDirectory`.
    public static func serialLogPath(runDirectory: String) -> String { runDirectory + "/serial.log" }

    /// A second QMP monitor of a QEMU run in `runDirectory`, for operators' tools (`sluice vm` while the
    /// process that started QEMU holds the first: a QMP socket serves one client at a time).
    public static func operatorQMPPath(runDirectory: String) -> String { runDirectory + "/ops-qmp.sock" }

    /// The `-device` id of the `index`th hot-plugged vCPU, DIMM and its memory backend.
    public static func hotCPUID(_ index: Int) -> String { "cpu-hot-\(index)" }
    public static func hotDIMMID(_ index: Int) -> String { "dimm-hot-\(index)" }
    public static func hotMemoryID(_ index: Int) -> String { "mem-hot-\(index)" }

    /// The QEMU device drivers a guest of this spec has, sorted: the agent's `virtio-serial-pci`, `devices`,
    /// and each `-device DRIVER,...` of `extraArguments` (hot-plugged vCPUs and DIMMs are not devices here).
    public var deviceDrivers: [String] {
        var drivers: Set<String> = ["virtio-serial-pci"]
        drivers.formUnion(devices)
        for (flag, value) in zip(extraArguments, extraArguments.dropFirst()) where flag == "-device" {
            if let driver = value.split(separator: ",").first, !driver.hasPrefix("driver=") { drivers.insert(String(driver)) }
        }
        return drivers.sorted()
    }

    /// QEMU's arguments (without `-qmp` and `-accel`, which `QEMUProcess` adds) for a process whose
    /// files live in `runDirectory`; `incoming` adds `-incoming defer` (a destination).
    public func arguments(runDirectory: String, incoming: Bool) -> [String] {
        var memory = "size=\(shape.bootMemoryMiB)M"
        if shape.memorySlots > 0 { memory += ",slots=\(shape.memorySlots),maxmem=\(shape.maxMemoryMiB)M" }
        var arguments = [
            "-machine", machine, "-nodefaults", "-no-user-config", "-display", "none",
            "-cpu", cpuModel + ",enforce",
            "-smp", "cpus=\(shape.bootVCPUs),maxcpus=\(shape.maxVCPUs)",
            "-m", memory,
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-serial", "file:" + Self.serialLogPath(runDirectory: runDirectory),
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=agent0,path=\(Self.agentSocketPath(runDirectory: runDirectory)),server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=\(agentPortName)",
            "-chardev", "socket,id=ops,path=\(Self.operatorQMPPath(runDirectory: runDirectory)),server=on,wait=off",
            "-mon", "chardev=ops,mode=control",
        ]
        for (index, driver) in devices.enumerated() { arguments += ["-device", "\(driver),id=dev\(index)"] }
        // What was hot-plugged on the source exists on the destination from the start.
        for index in 0..<shape.hotAddedVCPUs {
            arguments += ["-device", "\(cpuModel)-x86_64-cpu,id=\(Self.hotCPUID(index)),socket-id=\(shape.bootVCPUs + index),core-id=0,thread-id=0"]
        }
        for (index, mib) in shape.dimmsMiB.enumerated() {
            arguments += ["-object", "memory-backend-ram,id=\(Self.hotMemoryID(index)),size=\(mib)M",
                          "-device", "pc-dimm,id=\(Self.hotDIMMID(index)),memdev=\(Self.hotMemoryID(index))"]
        }
        if incoming { arguments += ["-incoming", "defer"] }
        return arguments + extraArguments
    }
}
