// Path: Sources/SluiceWAN/WANSettings.swift — what a WAN link emulates (per direction: delay, jitter,
// rate, loss, corruption, queue), its bounds, and the checks made before any socket is opened.
import SluicePacketIO

/// Every bound of the emulator, one place. Sizes of rings, stores and bursts are fixed here, so a
/// link's memory is known when it is configured.
public enum WANLimits {
    /// Longest one-way delay, and widest jitter (10 s each).
    public static let delayNsMax: UInt64 = 10_000_000_000
    public static let jitterNsMax: UInt64 = 10_000_000_000
    /// Slowest and fastest rate limit (8 kbit/s, 100 Gbit/s). 0 in settings means no limit.
    public static let rateBitsPerSecondMin: UInt64 = 8_000
    public static let rateBitsPerSecondMax: UInt64 = 100_000_000_000
    /// Smallest queue limit: one frame of the largest size the link carries, rounded up.
    public static let queueBytesMin = 2048
    /// Largest queue limit (1 GiB).
    public static let queueBytesMax = 1 << 30
    /// Largest frame store of one direction (2 GiB - 1: offsets are 32-bit).
    public static let storeBytesMax = Int(Int32.max)
    /// Most frames one direction's store keeps (descriptors: 16 bytes each, 64 MiB at most).
    public static let storeFrameCountMax = 1 << 22
    /// Smallest frame the store plans for when it sizes its descriptors (an ARP frame on a veth is 42).
    public static let storeFrameBytesMin = 42
    /// TX ring slots: 2048 bytes each (frames up to 2016 bytes: MTU 1500 with two VLAN tags fits),
    /// 1024 of them per direction.
    public static let txFrameSizeBytes = 2048
    public static let txFrameCount = 1024
    /// Largest frame forwarded; longer ones are dropped as `tooLarge`.
    public static let frameBytesMax = txFrameSizeBytes - AFPacketLimits.txDataOffsetBytes
    /// RX ring: 256 blocks of 64 KiB (16 MiB), each retired after 1 ms when partly filled. On a
    /// quiet link every retired block holds a few frames, so the block count sets how long the
    /// thread may go unscheduled before the kernel drops (`rxRingFull`): 256 blocks ride out a
    /// quarter of a second (16 blocks lost frames on a loaded 2-core machine).
    public static let rxBlockSizeBytes = 1 << 16
    public static let rxBlockCount = 256
    public static let rxBlockTimeoutMs = 1
    /// Frames taken from the RX ring, or put on the TX ring, per turn.
    public static let burstCountMax = 64
    /// Staging buffers per direction (RX and TX copies pass through them; never more than two bursts).
    public static let stagingBufferCount = 2 * burstCountMax
    /// The thread sleeps (clock_nanosleep, 1 ns timer slack) until this long before a departure, then
    /// spins on the clock to it: at most this much busy-polling per wake-up. With it, departures on a
    /// quiet link went out 1-2 µs late on average here (docs/WAN.md).
    public static let spinWindowNs: UInt64 = 50_000
    /// With frames queued, the longest sleep before the RX ring is looked at again (admission stays
    /// prompt, the queue counters current and the kernel ring far from full).
    public static let receiveIntervalNsMax: UInt64 = 2_000_000
    /// With nothing queued, how long one poll() on the RX socket may block (also the stop latency).
    public static let idleWaitMs: Int32 = 10
    /// A kernel arrival timestamp further than this from the clock is not trusted (the arrival time
    /// becomes the time the frame was read; counted as `arrivalClockFallbacks`).
    public static let arrivalSkewNsMax: UInt64 = 10_000_000_000
    /// Upper bounds of the departure-lateness buckets (the last bucket is everything later).
    public static let latenessBucketBoundsNs: [UInt64] = [50_000, 200_000, 1_000_000]
    /// Longest link name (a metrics label and a log field).
    public static let nameLengthMax = 64
    /// SCHED_FIFO priorities the threads may take (`WANConfiguration.realtimePriority`).
    public static let realtimePriorityRange = 1...99
}

/// One direction of a link: how long frames take, how many are lost, how fast they leave and how
/// many bytes may wait. `rateBitsPerSecond` 0 means no rate limit.
public struct WANDirectionSettings: Sendable, Equatable {
    public var delayNs: UInt64
    /// Each frame's delay is `delayNs` plus a uniform sample in -jitterNs...+jitterNs (at least 0).
    public var jitterNs: UInt64
    public var rateBitsPerSecond: UInt64
    /// Probability that a frame is lost, 0...1 (independent per frame).
    public var loss: Double
    /// With a rate: the bottleneck queue, bytes waiting for or in serialisation. Without: every byte
    /// held in the delay line. See docs/WAN.md.
    public var queueBytes: Int
    /// Probability that a forwarded frame gets one bit flipped, 0...1 (independent per frame, drawn
    /// from a generator of its own): in the TCP/UDP payload with the checksum repaired, so the
    /// receiver's transport does not notice (`WANCorruption`); elsewhere after the L2 header.
    public var corrupt: Double

    public init(delayNs: UInt64 = 0, jitterNs: UInt64 = 0, rateBitsPerSecond: UInt64 = 0, loss: Double = 0,
                queueBytes: Int = WANDirectionSettings.queueBytesDefault, corrupt: Double = 0) {
        self.delayNs = delayNs
        self.jitterNs = jitterNs
        self.rateBitsPerSecond = rateBitsPerSecond
        self.loss = loss
        self.queueBytes = queueBytes
        self.corrupt = corrupt
    }

    /// 256 KiB, the queue when none is given.
    public static let queueBytesDefault = 256 * 1024

    /// Bytes of the frame store: everything the direction may hold at once. With a rate: twice the
    /// queue (the bottleneck queue, and frames in the delay line that will meet at most a queue's
    /// worth ahead of them) plus the rate times the longest delay plus 10 ms of lateness; without a
    /// rate, the queue. Then two largest frames for the store's wrap-around. See docs/WAN.md.
    public var storeBytes: Int {
        let frames = 2 * WANLimits.frameBytesMax
        guard rateBitsPerSecond > 0 else { return queueBytes + frames }
        let inFlightNs = Double(delayNs) + Double(jitterNs) + 10_000_000
        let inFlight = (Double(rateBitsPerSecond) * inFlightNs / 8e9).rounded(.up)
        return Int(min(Double(2 * queueBytes + frames) + inFlight, Double(Int.max / 2)))
    }

    /// Descriptors of the frame store: one per smallest frame that fits, a power of two, bounded.
    public var storeFrameCount: Int {
        let frames = storeBytes / WANLimits.storeFrameBytesMin + 1
        var count = 64
        while count < frames && count < WANLimits.storeFrameCountMax { count <<= 1 }
        return count
    }

    /// Checks every setting against `WANLimits`; `direction` names the direction in errors.
    public func validate(direction: String) throws(WANConfigurationError) {
        guard delayNs <= WANLimits.delayNsMax else {
            throw .outOfRange(setting: "\(direction) delay", value: WANUnits.formatDuration(delayNs),
                              allowed: "0...\(WANUnits.formatDuration(WANLimits.delayNsMax))")
        }
        guard jitterNs <= WANLimits.jitterNsMax else {
            throw .outOfRange(setting: "\(direction) jitter", value: WANUnits.formatDuration(jitterNs),
                              allowed: "0...\(WANUnits.formatDuration(WANLimits.jitterNsMax))")
        }
        let rates = WANLimits.rateBitsPerSecondMin...WANLimits.rateBitsPerSecondMax
        guard rateBitsPerSecond == 0 || rates.contains(rateBitsPerSecond) else {
            throw .outOfRange(setting: "\(direction) rate", value: WANUnits.formatRate(rateBitsPerSecond),
                              allowed: "\(WANUnits.formatRate(rates.lowerBound))...\(WANUnits.formatRate(rates.upperBound))")
        }
        guard loss >= 0, loss <= 1 else {
            throw .outOfRange(setting: "\(direction) loss", value: "\(loss * 100)%", allowed: "0%...100%")
        }
        guard corrupt >= 0, corrupt <= 1 else {
            throw .outOfRange(setting: "\(direction) corrupt", value: "\(corrupt * 100)%", allowed: "0%...100%")
        }
        guard queueBytes >= WANLimits.queueBytesMin, queueBytes <= WANLimits.queueBytesMax else {
            throw .outOfRange(setting: "\(direction) queue", value: "\(queueBytes) bytes",
                              allowed: "\(WANLimits.queueBytesMin)...\(WANLimits.queueBytesMax) bytes")
        }
        guard storeBytes <= WANLimits.storeBytesMax else {
            throw .storeTooLarge(direction: direction, bytes: storeBytes, max: WANLimits.storeBytesMax)
        }
    }
}

/// The settings as people type them, each one optional: what `sluice wan` flags and the `wan:`
/// config section give, before and after per-direction overrides.
public enum WANSetting: String, CaseIterable, Sendable {
    case delay, jitter, rate, loss, queue, corrupt

    /// What the setting takes, for help texts and errors.
    public var units: String {
        switch self {
        case .delay, .jitter: WANUnits.durationUnits
        case .rate: WANUnits.rateUnits + ", or unlimited"
        case .loss, .corrupt: WANUnits.percentUnits
        case .queue: WANUnits.sizeUnits
        }
    }
}

extension WANDirectionSettings {
    /// Sets one setting from its text (strict units, `WANUnits`); `rate` also takes `unlimited`.
    public mutating func set(_ setting: WANSetting, from text: String) throws(WANUnitError) {
        switch setting {
        case .delay: delayNs = try WANUnits.durationNs(text, maxNs: WANLimits.delayNsMax)
        case .jitter: jitterNs = try WANUnits.durationNs(text, maxNs: WANLimits.jitterNsMax)
        case .rate:
            rateBitsPerSecond = text == "unlimited" ? 0 : try WANUnits.rateBitsPerSecond(
                text, range: WANLimits.rateBitsPerSecondMin...WANLimits.rateBitsPerSecondMax)
        case .loss: loss = try WANUnits.probability(text)
        case .corrupt: corrupt = try WANUnits.probability(text)
        case .queue: queueBytes = try WANUnits.bytes(text, range: WANLimits.queueBytesMin...WANLimits.queueBytesMax)
        }
    }

    /// "delay 20ms jitter 0ms rate 20mbit loss 0.1% queue 262144b corrupt 0%", for logs and reports.
    public var summary: String {
        "delay \(WANUnits.formatDuration(delayNs)) jitter \(WANUnits.formatDuration(jitterNs)) "
            + "rate \(WANUnits.formatRate(rateBitsPerSecond)) loss \(WANUnits.trimmed(loss * 100))% queue \(queueBytes)b"
            + " corrupt \(WANUnits.trimmed(corrupt * 100))%"
    }
}

/// Why a link's configuration was refused, before anything was opened.
public enum WANConfigurationError: Error, Equatable, CustomStringConvertible {
    case invalidName(String)
    case invalidInterfaceName(String)
    /// Both sides name the same interface.
    case sameInterface(String)
    case outOfRange(setting: String, value: String, allowed: String)
    /// The frame store the settings need is larger than `max` (lower the queue, rate or delay).
    case storeTooLarge(direction: String, bytes: Int, max: Int)

    public var description: String {
        switch self {
        case let .invalidName(name): "link name '\(name)' must be 1...\(WANLimits.nameLengthMax) letters, digits, '-', '_' or '.'"
        case let .invalidInterfaceName(name): "'\(name)' is not an interface name (1...15 bytes, no '/', ':' or space)"
        case let .sameInterface(name): "both sides are '\(name)': a link joins two interfaces"
        case let .outOfRange(setting, value, allowed): "\(setting) \(value) is out of range (\(allowed))"
        case let .storeTooLarge(direction, bytes, max):
            "\(direction): the frame store would take \(bytes) bytes, more than \(max) (lower queue, rate or delay)"
        }
    }
}

/// One emulated link: frames from interface `a` go out on `b` after the `aToB` treatment, and the
/// other way round. Opened in the calling thread's network namespace, or in `namespacePath`.
public struct WANConfiguration: Sendable, Equatable {
    /// Names the link in logs and metrics (`link` label).
    public var name: String
    public var interfaceA: String
    public var interfaceB: String
    public var aToB: WANDirectionSettings
    public var bToA: WANDirectionSettings
    /// Seeds the loss, jitter and corruption generators (direction a-to-b uses `seed`, b-to-a `seed + 1`).
    public var seed: UInt64
    /// A network namespace to open the interfaces in (`/var/run/netns/NAME`); nil: the caller's.
    public var namespacePath: String?
    /// Run both threads SCHED_FIFO at this priority (1...99; root), so a busy machine does not
    /// delay departures; nil: the normal scheduler. Threads block between departures and spin at
    /// most `WANLimits.spinWindowNs`, so they cannot take a CPU for long.
    public var realtimePriority: Int?

    public init(name: String? = nil, interfaceA: String, interfaceB: String, aToB: WANDirectionSettings,
                bToA: WANDirectionSettings, seed: UInt64 = 1, namespacePath: String? = nil, realtimePriority: Int? = nil) {
        self.name = name ?? "\(interfaceA)-\(interfaceB)"
        self.interfaceA = interfaceA
        self.interfaceB = interfaceB
        self.aToB = aToB
        self.bToA = bToA
        self.seed = seed
        self.namespacePath = namespacePath
        self.realtimePriority = realtimePriority
    }

    /// Checks names and both directions; opens nothing.
    public func validate() throws(WANConfigurationError) {
        let nameBytes = Array(name.utf8)
        guard (1...WANLimits.nameLengthMax).contains(nameBytes.count), nameBytes.allSatisfy({ byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }) else { throw .invalidName(name) }
        for interface in [interfaceA, interfaceB] {
            let bytes = Array(interface.utf8)
            guard !bytes.isEmpty, bytes.count <= AFPacketLimits.interfaceNameLengthMax, interface != ".",
                  interface != "..", !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 })
            else { throw .invalidInterfaceName(interface) }
        }
        guard interfaceA != interfaceB else { throw .sameInterface(interfaceA) }
        if let priority = realtimePriority, !WANLimits.realtimePriorityRange.contains(priority) {
            throw .outOfRange(setting: "realtime priority", value: "\(priority)", allowed: "1...99")
        }
        try aToB.validate(direction: WANDirection.aToB.description)
        try bToA.validate(direction: WANDirection.bToA.description)
    }

    /// The settings of `direction`.
    public func settings(_ direction: WANDirection) -> WANDirectionSettings {
        direction == .aToB ? aToB : bToA
    }
}

/// Which way frames cross a link.
public enum WANDirection: Int, CaseIterable, Sendable, CustomStringConvertible {
    case aToB = 0
    case bToA = 1

    public var description: String { self == .aToB ? "a-to-b" : "b-to-a" }
}
