// Path: Sources/SluiceCore/Pipeline/Stage.swift — what a pipeline stage does with a burst of items.

/// The first stage of a pipeline: brings items in (from a NIC, a file, a generator).
/// Called only from the worker that currently runs the stage, one burst at a time.
public protocol SourceBody: Sendable {
    /// Writes up to `items.count` new items into `items`; returns how many. Must not block.
    mutating func produce(into items: UnsafeMutableBufferPointer<UInt64>) -> Int

    /// When `produce` returned 0: how long the worker may sleep before the next item can exist
    /// (a paced generator knows), or nil if items can appear at any time and must be polled for.
    func sleepHintNs(nowNs: UInt64) -> UInt64?

    /// True once the source will produce nothing more (end of file); the pipeline then drains.
    var isExhausted: Bool { get }
}

extension SourceBody {
    public func sleepHintNs(nowNs: UInt64) -> UInt64? { nil }
    public var isExhausted: Bool { false }
}

/// A middle or last stage: transforms, filters or consumes a burst in place.
/// Called only from the worker that currently runs the stage, one burst at a time.
public protocol StageBody: Sendable {
    /// Processes `items` in place and returns how many to pass on, compacted to the front
    /// (0...items.count). The rest count as filtered. The last stage's output is the pipeline's.
    mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int
}

/// A stage that passes every item on unchanged.
public struct PassThrough: StageBody {
    public init() {}
    @inlinable public mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int { items.count }
}
