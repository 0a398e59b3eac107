// Path: Sources/SluiceGateway/Predictor.swift — what else crosses the last hop: per (connection, key)
// access history, sequential and stride detection, and the choice of extra extents within the budget.

/// Bounds and thresholds of a `Predictor`. Validated by `Predictor.init` (a bad value is a bug).
public struct PredictorConfiguration: Sendable, Equatable {
    /// Objects with a history per connection; the least recently read is forgotten beyond it.
    public var keysMax = 64
    /// Reads remembered per object.
    public var historyLength = 8
    /// Consecutive reads each starting within or right after what the one before read (or was sent
    /// ahead of it) before sequential read-ahead starts. 1: from the second contiguous read.
    public var sequentialStreakMin = 1
    /// Reads whose starts step by one constant stride before strided extents are predicted (3: two equal steps).
    public var strideReadsMin = 3
    /// Predicted extents in one reply at most.
    public var predictedExtentsMax = 256

    public static let keysMaxLimit = 4_096
    public static let historyLengthLimit = 64
    public static let predictedExtentsMaxLimit = 1_024

    public init() {}
}

/// An extent chosen besides the requested ones, and why.
public struct PredictedExtent: Sendable, Equatable, CustomStringConvertible {
    public var reason: ExtentReason
    public var extent: SectorExtent
    /// Payload bytes (the last sector of an object may be short).
    public var bytes: Int

    public var description: String { "\(reason) \(extent) (\(bytes) B)" }
}

/// Which criterion matched a read, and what the selection stopped at.
public struct PredictionSelection: Sendable, Equatable {
    public enum Criterion: Sendable, Equatable {
        /// No read of this object before on this connection.
        case firstRead
        /// Neither contiguous nor strided: random, no extras.
        case noPattern
        /// `streak` reads in a row were contiguous.
        case sequential(streak: Int)
        /// Starts kept stepping by `deltaSectors` (negative: backwards).
        case stride(deltaSectors: Int64)
    }

    /// Why the selection ended.
    public enum Stop: Sendable, Equatable {
        /// Nothing was to be selected (no pattern).
        case nothingToSelect
        /// The next sector would pass `extraBudgetBytes` (0: no budget at all).
        case budget
        /// The chunk's end (the appliance asks for the next chunk itself).
        case chunkEnd
        /// The object's end.
        case objectEnd
        /// `predictedExtentsMax` extents chosen.
        case extentsMax
    }

    public var criterion: Criterion
    public var extents: [PredictedExtent]
    public var stop: Stop
    /// Sectors passed over because the appliance holds them or asked for them.
    public var sectorsSkipped: Int

    public var payloadBytes: Int { extents.reduce(0) { $0 + $1.bytes } }
}

/// One connection's predictor. Not thread-safe: the connection's handler owns it. Pure: no I/O, no clock.
/// Positions are global sector numbers (chunk × sectorsPerChunk + sector), so a sequential read runs on
/// across chunks. Every extra extent is outside what the appliance holds or asked for, within the chunk,
/// within the object and within the request's `extraBudgetBytes`.
public struct Predictor: Sendable {
    public let configuration: PredictorConfiguration
    public let units: GatewayUnits
    private var histories: [String: History] = [:]
    private var order = LRUOrder<String>()

    /// What the predictor remembers of one object on this connection.
    struct History: Sendable {
        /// Starts of the last reads, oldest first (at most `historyLength`).
        var starts: [UInt64] = []
        var lastStart: UInt64 = 0
        /// Where the last read, what was sent ahead of it, and what the appliance holds right after it end.
        var aheadEnd: UInt64 = 0
        var streak = 0
        /// A stride in force: its step, the last read's start, how many strided extents were sent after it.
        var stride: (delta: Int64, anchor: UInt64, sent: Int)?
    }

    public init(configuration: PredictorConfiguration = .init(), units: GatewayUnits) {
        precondition((1...PredictorConfiguration.keysMaxLimit).contains(configuration.keysMax), "keysMax within its limit")
        precondition((2...PredictorConfiguration.historyLengthLimit).contains(configuration.historyLength), "historyLength within its limit")
        precondition(configuration.sequentialStreakMin >= 1, "sequential needs one contiguous read at least")
        precondition((3...configuration.historyLength).contains(configuration.strideReadsMin), "stride needs two steps, within the history")
        precondition((1...PredictorConfiguration.predictedExtentsMaxLimit).contains(configuration.predictedExtentsMax), "extents bounded")
        self.configuration = configuration
        self.units = units
    }

    /// Objects with a history now (at most `keysMax`).
    public var trackedKeyCount: Int { histories.count }

    /// Records `request` as a read of its object and chooses the extra extents to send with it.
    /// `objectSize` bounds them when known; nil: only the chunk does (clip later with `clip`).
    /// `request.wanted` must be valid for `units` (decoded requests are).
    public mutating func observe(_ request: ReadSectorsRequest, objectSize: UInt64?) -> PredictionSelection {
        let spc = UInt64(units.sectorsPerChunk)
        let base = request.chunk &* spc
        let first = request.wanted.first!.sectors(units)
        let last = request.wanted.last!.sectors(units)
        let start = base + UInt64(first.lowerBound)
        let end = base + UInt64(last.upperBound)
        let excluded = SectorSet(request, units: units)

        var history = histories[request.key] ?? History()
        let known = histories[request.key] != nil
        let contiguous = known && start >= history.lastStart && start <= history.aheadEnd
        history.streak = contiguous ? history.streak + 1 : 0
        var strideDelta: Int64?
        if let stride = history.stride, let steps = Self.steps(from: stride.anchor, to: start, by: stride.delta),
           (1...(stride.sent + 1)).contains(steps) {
            strideDelta = stride.delta  // the appliance read on along the stride (the sent extents were hits)
        }
        history.starts.append(start)
        if history.starts.count > configuration.historyLength { history.starts.removeFirst() }
        if strideDelta == nil { strideDelta = detectStride(history.starts, length: end - start) }

        let criterion: PredictionSelection.Criterion
        var selection: (extents: [PredictedExtent], stop: PredictionSelection.Stop, cursor: UInt64, skipped: Int)
        let bounds = Bounds(base: base, spc: spc, objectSize: objectSize, units: units)
        if !known {
            criterion = .firstRead
            selection = ([], .nothingToSelect, end, 0)
        } else if history.streak >= configuration.sequentialStreakMin {
            criterion = .sequential(streak: history.streak)
            selection = selectAhead(from: end, bounds: bounds, excluded: excluded, budget: Int(request.extraBudgetBytes))
        } else if let delta = strideDelta {
            criterion = .stride(deltaSectors: delta)
            let strided = selectStrided(anchor: start, delta: delta, length: end - start, bounds: bounds, excluded: excluded,
                                        budget: Int(request.extraBudgetBytes))
            selection = (strided.extents, strided.stop, end, strided.skipped)
        } else {
            criterion = .noPattern
            selection = ([], .nothingToSelect, end, 0)
        }

        history.lastStart = start
        history.aheadEnd = excluded.endOfRun(from: max(selection.cursor, end) - base, upTo: units.sectorsPerChunk) + base
        if case .stride(let delta) = criterion {
            history.stride = (delta, start, selection.extents.count)
        } else {
            history.stride = nil
        }
        remember(request.key, history)
        return PredictionSelection(criterion: criterion, extents: selection.extents, stop: selection.stop, sectorsSkipped: selection.skipped)
    }

    /// Drops extents (or their tails) past an object of `size` bytes, for a selection made before the size
    /// was known. The stop becomes `objectEnd` when anything was cut.
    public static func clip(_ selection: PredictionSelection, chunk: UInt64, objectSize size: UInt64,
                            units: GatewayUnits) -> PredictionSelection {
        var clipped = selection
        let bounds = Bounds(base: chunk &* UInt64(units.sectorsPerChunk), spc: UInt64(units.sectorsPerChunk), objectSize: size, units: units)
        clipped.extents = selection.extents.compactMap { predicted in
            let sectors = predicted.extent.sectors(units)
            let end = min(sectors.upperBound, Int(bounds.limitEnd - bounds.base))
            guard end > sectors.lowerBound else { return nil }
            let range = sectors.lowerBound..<end
            return PredictedExtent(reason: predicted.reason, extent: SectorExtent(sectors: range, units: units),
                                   bytes: range.reduce(0) { $0 + bounds.bytes(ofSector: bounds.base + UInt64($1)) })
        }
        if clipped.extents != selection.extents { clipped.stop = .objectEnd }
        return clipped
    }

    /// Forgets `key` (the object was invalidated).
    public mutating func forget(_ key: String) {
        histories[key] = nil
        order.remove(key)
    }

    private mutating func remember(_ key: String, _ history: History) {
        histories[key] = history
        order.touch(key)
        if histories.count > configuration.keysMax, let oldest = order.oldest {
            order.remove(oldest)
            histories[oldest] = nil
        }
        precondition(histories.count <= configuration.keysMax, "the history table is bounded")
    }

    // MARK: Detection

    /// The stride of the last `strideReadsMin` starts when all their steps are equal, not zero, and not
    /// a contiguous step (that is sequential); nil otherwise.
    func detectStride(_ starts: [UInt64], length: UInt64) -> Int64? {
        let needed = configuration.strideReadsMin
        guard starts.count >= needed else { return nil }
        let recent = starts.suffix(needed)
        let deltas = zip(recent.dropFirst(), recent).map { Int64(bitPattern: $0 &- $1) }
        guard let delta = deltas.first, delta != 0, deltas.allSatisfy({ $0 == delta }) else { return nil }
        guard delta < 0 || UInt64(delta) > length else { return nil }
        return delta
    }

    /// k when `to == from + k × delta` for some k >= 1.
    static func steps(from: UInt64, to: UInt64, by delta: Int64) -> Int? {
        let distance = Int64(bitPattern: to &- from)
        guard delta != 0, distance != 0, distance % delta == 0 else { return nil }
        let steps = distance / delta
        return steps > 0 ? Int(steps) : nil
    }

    // MARK: Selection

    /// The chunk's global sector range clipped to the object's end, and per-sector byte counts.
    struct Bounds {
        var base: UInt64
        var limitEnd: UInt64
        var chunkEnd: UInt64
        var objectSize: UInt64?
        var sectorBytes: Int

        init(base: UInt64, spc: UInt64, objectSize: UInt64?, units: GatewayUnits) {
            self.base = base
            self.chunkEnd = base + spc
            self.sectorBytes = units.sectorBytes
            self.objectSize = objectSize
            if let objectSize {
                let objectEnd = (objectSize + UInt64(units.sectorBytes) - 1) / UInt64(units.sectorBytes)
                limitEnd = max(base, min(chunkEnd, objectEnd))
            } else {
                limitEnd = chunkEnd
            }
        }

        /// What reached `limitEnd` stops as: the object's end when it comes before the chunk's.
        var endStop: PredictionSelection.Stop { limitEnd < chunkEnd ? .objectEnd : .chunkEnd }

        func bytes(ofSector sector: UInt64) -> Int {
            guard let objectSize else { return sectorBytes }
            let start = sector * UInt64(sectorBytes)
            return Int(min(UInt64(sectorBytes), objectSize - start))
        }
    }

    /// Sectors from `start` onwards that the appliance neither holds nor asked for, until the budget,
    /// the chunk's end, the object's end or the extents bound. Returns where the walk stopped.
    func selectAhead(from start: UInt64, bounds: Bounds, excluded: SectorSet,
                     budget: Int) -> (extents: [PredictedExtent], stop: PredictionSelection.Stop, cursor: UInt64, skipped: Int) {
        var builder = ExtentBuilder(reason: .sequential, base: bounds.base, units: units, extentsMax: configuration.predictedExtentsMax)
        var remaining = budget
        var cursor = start
        var skipped = 0
        var stop = bounds.endStop
        while cursor < bounds.limitEnd {
            if excluded.contains(Int(cursor - bounds.base)) {
                builder.close()
                skipped += 1
                cursor += 1
                continue
            }
            let bytes = bounds.bytes(ofSector: cursor)
            guard bytes <= remaining else {
                stop = .budget
                break
            }
            guard builder.add(cursor, bytes: bytes) else {
                stop = .extentsMax
                break
            }
            remaining -= bytes
            cursor += 1
        }
        return (builder.finish(), stop, cursor, skipped)
    }

    /// The next extents along the stride (each `length` sectors from `anchor + k × delta`, k = 1, 2, ...),
    /// without held or wanted sectors, within the chunk, the object, the budget and the extents bound.
    func selectStrided(anchor: UInt64, delta: Int64, length: UInt64, bounds: Bounds, excluded: SectorSet,
                       budget: Int) -> (extents: [PredictedExtent], stop: PredictionSelection.Stop, skipped: Int) {
        var builder = ExtentBuilder(reason: .stride, base: bounds.base, units: units, extentsMax: configuration.predictedExtentsMax)
        var remaining = budget
        var skipped = 0
        var next = Int64(bitPattern: anchor)
        // Each step moves at least one sector, so a chunk's worth of steps leaves the chunk.
        for _ in 0..<units.sectorsPerChunk {
            next += delta
            let extentStart = max(next, Int64(bounds.base))
            let extentEnd = min(next + Int64(length), Int64(bounds.limitEnd))
            if delta > 0 ? next >= Int64(bounds.limitEnd) : next + Int64(length) <= Int64(bounds.base) {
                return (builder.finish(), delta > 0 ? bounds.endStop : .chunkEnd, skipped)
            }
            guard extentStart < extentEnd else { continue }
            builder.close()
            for sector in UInt64(extentStart)..<UInt64(extentEnd) {
                if excluded.contains(Int(sector - bounds.base)) {
                    builder.close()
                    skipped += 1
                    continue
                }
                let bytes = bounds.bytes(ofSector: sector)
                guard bytes <= remaining else { return (builder.finish(), .budget, skipped) }
                guard builder.add(sector, bytes: bytes) else { return (builder.finish(), .extentsMax, skipped) }
                remaining -= bytes
            }
        }
        return (builder.finish(), .chunkEnd, skipped)
    }
}

/// Grows runs of consecutive sectors into extents, at most `extentsMax` of them.
struct ExtentBuilder {
    let reason: ExtentReason
    let base: UInt64
    let units: GatewayUnits
    let extentsMax: Int
    private var extents: [PredictedExtent] = []
    private var run: (start: UInt64, end: UInt64, bytes: Int)?

    init(reason: ExtentReason, base: UInt64, units: GatewayUnits, extentsMax: Int) {
        self.reason = reason
        self.base = base
        self.units = units
        self.extentsMax = extentsMax
    }

    /// Adds sector `sector` (global) to the open run, or opens one; false when that would pass `extentsMax`.
    mutating func add(_ sector: UInt64, bytes: Int) -> Bool {
        if var open = run, open.end == sector, open.end - open.start < UInt64(UInt16.max) {
            open.end += 1
            open.bytes += bytes
            run = open
            return true
        }
        close()
        guard extents.count < extentsMax else { return false }
        run = (sector, sector + 1, bytes)
        return true
    }

    mutating func close() {
        guard let open = run else { return }
        let range = Int(open.start - base)..<Int(open.end - base)
        extents.append(PredictedExtent(reason: reason, extent: SectorExtent(sectors: range, units: units), bytes: open.bytes))
        run = nil
    }

    mutating func finish() -> [PredictedExtent] {
        close()
        return extents
    }
}

/// A set of a chunk's sectors: what the appliance holds plus what it asked for.
struct SectorSet {
    private var words: [UInt64]
    let count: Int

    init(count: Int) {
        self.count = count
        words = [UInt64](repeating: 0, count: (count + 63) / 64)
    }

    /// Held sectors (the bitmap) and wanted extents of `request`.
    init(_ request: ReadSectorsRequest, units: GatewayUnits) {
        self.init(count: units.sectorsPerChunk)
        for held in request.held {
            for bit in 0..<units.sectorsPerBlock where held.sectorMask & (1 << bit) != 0 {
                insert(Int(held.block) * units.sectorsPerBlock + bit)
            }
        }
        for extent in request.wanted {
            for sector in extent.sectors(units) { insert(sector) }
        }
    }

    mutating func insert(_ sector: Int) {
        precondition(sector >= 0 && sector < count, "a sector of the chunk")
        words[sector >> 6] |= 1 << UInt64(sector & 63)
    }

    func contains(_ sector: Int) -> Bool {
        guard sector >= 0, sector < count else { return false }
        return words[sector >> 6] & (1 << UInt64(sector & 63)) != 0
    }

    /// The first sector at or after `sector` (below `limit`) not in the set.
    func endOfRun(from sector: UInt64, upTo limit: Int) -> UInt64 {
        var cursor = Int(sector)
        while cursor < limit, contains(cursor) { cursor += 1 }
        return UInt64(cursor)
    }
}
