// Path: Sources/SluiceWAN/WANRandom.swift — the seeded generator behind emulated loss and jitter.

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64 so that any 64-bit seed, 0 included,
/// gives a well-mixed state. A few ns per draw, no allocation; one generator per direction, owned by
/// that direction's thread. The same seed gives the same sequence on every machine.
public struct WANRandom: Sendable {
    @usableFromInline var s0: UInt64
    @usableFromInline var s1: UInt64
    @usableFromInline var s2: UInt64
    @usableFromInline var s3: UInt64

    public init(seed: UInt64) {
        var state = seed
        func splitmix() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix()
        s1 = splitmix()
        s2 = splitmix()
        s3 = splitmix()
    }

    /// The next 64 random bits.
    @inlinable @inline(__always)
    public mutating func next() -> UInt64 {
        let result = Self.rotate(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = Self.rotate(s3, 45)
        return result
    }

    /// A uniform value in 0..<bound (bound > 0), by Lemire's multiply-high (bias below 2^-64 * bound).
    @inlinable @inline(__always)
    public mutating func next(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "empty range")
        return next().multipliedFullWidth(by: bound).high
    }

    @inlinable @inline(__always)
    static func rotate(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
}
