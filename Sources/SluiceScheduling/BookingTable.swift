// Path: Sources/SluiceScheduling/BookingTable.swift — what booked moves hold, per host and minute:
// link bandwidth and migration slots, over a fixed horizon that slides with time.

/// Per host, per minute of the horizon: bandwidth (bytes/s) and slots that booked moves hold. Minutes
/// are absolute; the table keeps [origin, origin + horizon) in a ring and forgets what falls behind.
/// Memory on destinations is reserved per host until the move ends. Value type, one owner.
public struct BookingTable: Sendable {
    public let hostCount: Int
    public let horizonMinutes: Int
    public private(set) var origin: Int
    private var bandwidth: [Float]
    private var slots: [UInt8]
    public private(set) var reservedMemory: [Double]

    public init(hostCount: Int, horizonMinutes: Int = ScheduleLimits.horizonMinutesMax, origin: Int = 0) {
        precondition(hostCount > 0 && hostCount <= ScheduleLimits.hostCountMax, "hosts \(hostCount)")
        precondition(horizonMinutes > 0 && horizonMinutes <= ScheduleLimits.horizonMinutesMax, "horizon \(horizonMinutes)")
        self.hostCount = hostCount
        self.horizonMinutes = horizonMinutes
        self.origin = origin
        bandwidth = Array(repeating: 0, count: hostCount * horizonMinutes)
        slots = Array(repeating: 0, count: hostCount * horizonMinutes)
        reservedMemory = Array(repeating: 0, count: hostCount)
    }

    /// Moves the window's start to `minute`, clearing the minutes that enter at its end.
    public mutating func advance(to minute: Int) {
        guard minute > origin else { return }
        let steps = min(minute - origin, horizonMinutes)
        for step in 0..<steps {
            let cleared = (origin + horizonMinutes + step) % horizonMinutes  // == (origin + step) % horizon
            for host in 0..<hostCount {
                bandwidth[host * horizonMinutes + cleared] = 0
                slots[host * horizonMinutes + cleared] = 0
            }
        }
        origin = minute
    }

    @inline(__always) public func contains(_ minute: Int) -> Bool { minute >= origin && minute < origin + horizonMinutes }

    @inline(__always) private func index(_ host: Int, _ minute: Int) -> Int {
        precondition(host >= 0 && host < hostCount && contains(minute), "booking index host \(host) minute \(minute)")
        return host * horizonMinutes + minute % horizonMinutes
    }

    public func bandwidth(host: Int, minute: Int) -> Double { contains(minute) ? Double(bandwidth[index(host, minute)]) : 0 }
    public func slots(host: Int, minute: Int) -> Int { contains(minute) ? Int(slots[index(host, minute)]) : 0 }

    /// Holds `rates[i]` bytes/s on both hosts at minute `start + i`, and one slot on each, for every
    /// minute of the move. Minutes past the horizon are not held (the move must fit in it).
    public mutating func book(source: Int, destination: Int, start: Int, rates: ArraySlice<Double>, memory: Double) {
        precondition(source != destination, "a move from host \(source) to itself")
        var minute = start
        for rate in rates {
            precondition(contains(minute), "booking at minute \(minute) outside [\(origin), \(origin + horizonMinutes))")
            let s = index(source, minute), d = index(destination, minute)
            bandwidth[s] += Float(rate); bandwidth[d] += Float(rate)
            slots[s] += 1; slots[d] += 1
            minute += 1
        }
        reservedMemory[destination] += memory
    }

    /// Gives back what `book` held (for the minutes still in the window).
    public mutating func release(source: Int, destination: Int, start: Int, rates: ArraySlice<Double>, memory: Double) {
        var minute = start
        for rate in rates {
            if contains(minute) {
                for i in [index(source, minute), index(destination, minute)] {
                    bandwidth[i] = max(0, bandwidth[i] - Float(rate))
                    precondition(slots[i] > 0, "slot released twice at minute \(minute)")
                    slots[i] -= 1
                }
            }
            minute += 1
        }
        reservedMemory[destination] = max(0, reservedMemory[destination] - memory)
    }
}
