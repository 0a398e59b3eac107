// Path: Sources/SluicePacket/Action/Outputs.swift — named outputs a rule can send to: their bound,
// the per-packet output tag the action stage leaves, and per-output counters.
import SluiceCore
import Synchronization

/// Bounds of a pipeline's named outputs.
public enum OutputLimits {
    /// Named outputs a pipeline may declare besides its sink.
    public static let outputCountMax = 8
    /// The sink's name in counters and reports (so no named output may take it).
    public static let sinkName = "default"
}

extension PacketMetadata {
    /// Which output the packet goes to: 0 the pipeline's sink, n the table's `outputs[n - 1]`.
    /// Written by `ActionStage` only when its table has named outputs, over `port`: the input port
    /// is read by the classify and action stages only, so past the action stage the field is free.
    @inlinable public var outputIndex: UInt16 {
        get { port }
        set { port = newValue }
    }
}

/// Per-output counters: packets and bytes handed to each output (index 0 the sink, n the named
/// output n - 1) by the dispatch stage, as relaxed atomic adds once per burst; read from any thread.
public final class OutputCounters: @unchecked Sendable {  // unchecked: atomics behind a raw pointer
    @usableFromInline let slots: UnsafeMutablePointer<Atomic<UInt64>>
    /// Outputs counted, the sink included.
    public let outputCount: Int

    public init(outputCount: Int) {
        precondition(outputCount >= 1, "the sink is always counted")
        precondition(outputCount <= OutputLimits.outputCountMax + 1, "more outputs than the bound")
        self.outputCount = outputCount
        slots = .allocate(capacity: 2 * outputCount)
        for slot in 0..<(2 * outputCount) { (slots + slot).initialize(to: Atomic<UInt64>(0)) }
    }

    deinit {
        slots.deinitialize(count: 2 * outputCount)
        slots.deallocate()
    }

    /// Adds to output `index`'s counters.
    @inlinable public func add(output index: Int, packets: UInt64, bytes: UInt64) {
        precondition(index >= 0 && index < outputCount, "output index out of range")
        slots[2 * index].wrappingAdd(packets, ordering: .relaxed)
        slots[2 * index + 1].wrappingAdd(bytes, ordering: .relaxed)
    }

    /// Packets and bytes handed to output `index`.
    public func counts(output index: Int) -> (packets: UInt64, bytes: UInt64) {
        precondition(index >= 0 && index < outputCount, "output index out of range")
        return (slots[2 * index].load(ordering: .relaxed), slots[2 * index + 1].load(ordering: .relaxed))
    }
}
