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

    /// True for a last stage that holds work back (a shaped TX stage's backlogs and TX completions):
    /// its worker then calls `idle` on turns that find its input empty, and sleeps no longer than
    /// `idleHintNs`. A constant; false by default, so other stages pay nothing.
    static var hasIdleWork: Bool { get }

    /// On a turn with nothing to take: do the held-back work. Returns how much it moved (0: none).
    /// Called by the worker running the stage, only when `hasIdleWork`; keep the nothing-held case cheap.
    mutating func idle() -> Int

    /// How long the worker may sleep before `idle` has work again; nil when the stage holds nothing
    /// (then the worker sleeps until new input). Note the difference to `SourceBody.sleepHintNs`,
    /// where nil means "poll": a stage with nothing held has nothing to poll for.
    func idleHintNs(nowNs: UInt64) -> UInt64?
}

extension StageBody {
    public static var hasIdleWork: Bool { false }
    public mutating func idle() -> Int { 0 }
    public func idleHintNs(nowNs: UInt64) -> UInt64? { nil }
}

/// A stage that passes every item on unchanged.
public struct PassThrough: StageBody {
    public init() {}
    @inlinable public mutating func process(_ items: UnsafeMutableBufferPointer<UInt64>) -> Int { items.count }
}
