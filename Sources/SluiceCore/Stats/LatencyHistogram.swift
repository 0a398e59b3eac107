// Path: Sources/SluiceCore/Stats/LatencyHistogram.swift — fixed-size log-linear histogram.

/// A histogram of nanosecond values with 32 linear sub-buckets per power of two (about 3% error),
/// preallocated: recording is an index computation and an increment, no allocation.
/// One writer (through a `Recorder`); read percentiles after the writer is done.
public final class LatencyHistogram: @unchecked Sendable {  // unchecked: single writer, read after
    @usableFromInline static let subBucketBits = 5
    static let bucketCount = (64 - subBucketBits + 1) << subBucketBits
    let counts: UnsafeMutablePointer<UInt64>

    public init() {
        counts = .allocate(capacity: Self.bucketCount)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    deinit { counts.deallocate() }

    /// A copyable handle for the one writer (a sink stage's body). Holds a raw pointer, so recording
    /// touches no reference count; the histogram must outlive it.
    public struct Recorder: @unchecked Sendable {
        @usableFromInline let counts: UnsafeMutablePointer<UInt64>

        @inlinable public func record(_ value: UInt64) {
            counts[LatencyHistogram.bucket(of: value)] &+= 1
        }
    }

    public var recorder: Recorder { Recorder(counts: counts) }

    @inlinable static func bucket(of value: UInt64) -> Int {
        let sub = UInt64(1) << UInt64(subBucketBits)
        if value < sub { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // >= subBucketBits
        let shift = exponent - subBucketBits
        let mantissa = Int((value >> UInt64(shift)) & (sub - 1))
        return ((shift + 1) << subBucketBits) + mantissa
    }

    /// Smallest value that lands in `bucket` (the reported value for a percentile).
    static func lowerBound(of bucket: Int) -> UInt64 {
        let sub = 1 << subBucketBits
        if bucket < sub { return UInt64(bucket) }
        let shift = (bucket >> subBucketBits) - 1
        let mantissa = UInt64(bucket & (sub - 1)) | UInt64(sub)
        return mantissa << UInt64(shift)
    }

    /// Values recorded.
    public var count: UInt64 { (0..<Self.bucketCount).reduce(0) { $0 &+ counts[$1] } }

    /// The value at `percentile` (0...100), or 0 with nothing recorded.
    public func value(atPercentile percentile: Double) -> UInt64 {
        precondition(percentile >= 0 && percentile <= 100, "percentile outside 0...100")
        let total = count
        guard total > 0 else { return 0 }
        let rank = max(1, UInt64((percentile / 100 * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for bucket in 0..<Self.bucketCount {
            seen &+= counts[bucket]
            if seen >= rank { return Self.lowerBound(of: bucket) }
        }
        return Self.lowerBound(of: Self.bucketCount - 1)
    }

    /// Forgets every value. Only while no writer records.
    public func reset() { counts.update(repeating: 0, count: Self.bucketCount) }
}
