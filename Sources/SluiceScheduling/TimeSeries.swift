// Path: Sources/SluiceScheduling/TimeSeries.swift — a bounded series of one-minute samples.

/// One resource of one host over time, at one-minute steps, keeping at most `capacity` samples
/// (the oldest go first). Minutes must not go backwards; a gap is filled with the last value so that
/// index arithmetic stays exact. Value type: the owner mutates it, nothing is shared.
public struct TimeSeries: Sendable, Equatable {
    public let capacity: Int
    private var values: [Double]
    private var head = 0  // index of the oldest sample in `values`
    public private(set) var count = 0
    /// Minute of the newest sample; meaningless while `count == 0`.
    public private(set) var lastMinute = 0

    public init(capacity: Int = ScheduleLimits.seriesSamplesMax) {
        precondition(capacity > 0 && capacity <= ScheduleLimits.seriesSamplesMax, "series capacity \(capacity)")
        self.capacity = capacity
        values = [Double](repeating: 0, count: capacity)
    }

    /// Records `value` at `minute`. Returns false (and records nothing) for a minute before the newest.
    @discardableResult
    public mutating func append(minute: Int, value: Double) -> Bool {
        precondition(value.isFinite, "series value \(value)")
        if count > 0 {
            guard minute > lastMinute else { return minute == lastMinute ? replaceLast(value) : false }
            let fill = values[(head + count - 1) % capacity]
            for _ in 0..<min(minute - lastMinute - 1, capacity) { push(fill) }
        }
        push(value)
        lastMinute = minute
        return true
    }

    /// The sample at `minute`, if the series still holds it.
    public func value(at minute: Int) -> Double? {
        guard count > 0, minute <= lastMinute, lastMinute - minute < count else { return nil }
        return values[(head + count - 1 - (lastMinute - minute)) % capacity]
    }

    /// Mean of the samples in the last `minutes` minutes (fewer if the series is shorter).
    public func mean(lastMinutes minutes: Int) -> Double? {
        let n = min(minutes, count)
        guard n > 0 else { return nil }
        var sum = 0.0
        for back in 0..<n { sum += values[(head + count - 1 - back) % capacity] }
        return sum / Double(n)
    }

    private mutating func push(_ value: Double) {
        if count == capacity {
            values[head] = value
            head = (head + 1) % capacity
        } else {
            values[(head + count) % capacity] = value
            count += 1
        }
    }

    private mutating func replaceLast(_ value: Double) -> Bool {
        values[(head + count - 1) % capacity] = value
        return true
    }
}
