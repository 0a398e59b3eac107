// Path: Tests/SluiceGatewayTests/PredictorTests.swift — the predictor alone: sequential, stride and random
// patterns, the budget, held sectors, the chunk's and the object's end, the bounded table.
import Testing
@testable import SluiceGateway

@Suite struct PredictorTests {
    let units = GatewayUnits.standard  // 4 MiB chunks, 64 blocks of 16 sectors of 4 KiB
    let objectSize: UInt64 = 64 << 20

    func read(_ key: String = "obj", chunk: UInt64 = 0, block: Int, blocks: Int = 1, budget: Int,
              held: [HeldBlock] = []) -> ReadSectorsRequest {
        ReadSectorsRequest(key: key, chunk: chunk, extraBudgetBytes: UInt32(budget),
                           wanted: [SectorExtent(sectors: (block * 16)..<((block + blocks) * 16), units: units)], held: held)
    }

    /// Chunk-relative sectors of every extent, in order.
    func sectors(_ selection: PredictionSelection) -> [Int] {
        selection.extents.flatMap { Array($0.extent.sectors(units)) }
    }

    @Test func sequentialReadsGetTheSectorsAheadWithinTheBudget() {
        var predictor = Predictor(units: units)
        let first = predictor.observe(read(block: 0, budget: 256 << 10), objectSize: objectSize)
        #expect(first.criterion == .firstRead)
        #expect(first.extents.isEmpty)
        let second = predictor.observe(read(block: 1, budget: 256 << 10), objectSize: objectSize)
        #expect(second.criterion == .sequential(streak: 1))
        #expect(second.stop == .budget)
        #expect(second.payloadBytes == 256 << 10)
        #expect(sectors(second) == Array(32..<96))  // blocks 2...5
        #expect(second.extents.allSatisfy { $0.reason == .sequential })
        // The appliance now holds blocks 2...5 and next misses at block 6: still sequential.
        let third = predictor.observe(read(block: 6, budget: 128 << 10), objectSize: objectSize)
        #expect(third.criterion == .sequential(streak: 2))
        #expect(sectors(third) == Array(112..<144))
    }

    @Test func sequentialContinuesIntoTheNextChunk() {
        var predictor = Predictor(units: units)
        _ = predictor.observe(read(block: 62, budget: 0), objectSize: objectSize)
        let atEnd = predictor.observe(read(block: 63, budget: 1 << 20), objectSize: objectSize)
        #expect(atEnd.criterion == .sequential(streak: 1))
        #expect(atEnd.extents.isEmpty)  // nothing past the chunk
        #expect(atEnd.stop == .chunkEnd)
        let next = predictor.observe(read(chunk: 1, block: 0, budget: 64 << 10), objectSize: objectSize)
        #expect(next.criterion == .sequential(streak: 2))
        #expect(sectors(next) == Array(16..<32))
    }

    @Test func strideIsDetectedAndFollowed() {
        var predictor = Predictor(units: units)
        for block in [0, 4] {
            let selection = predictor.observe(read(block: block, budget: 1 << 20), objectSize: objectSize)
            #expect(selection.extents.isEmpty)
        }
        let third = predictor.observe(read(block: 8, budget: 3 * (64 << 10)), objectSize: objectSize)
        #expect(third.criterion == .stride(deltaSectors: 64))
        #expect(third.extents.map(\.extent) == [12, 16, 20].map { SectorExtent(block: UInt16($0), firstSector: 0, sectorCount: 16) })
        #expect(third.extents.allSatisfy { $0.reason == .stride })
        #expect(third.stop == .budget)
        // Blocks 12, 16, 20 were hits at the appliance; its next miss is block 24: the stride holds.
        let fourth = predictor.observe(read(block: 24, budget: 64 << 10), objectSize: objectSize)
        #expect(fourth.criterion == .stride(deltaSectors: 64))
        #expect(fourth.extents.map(\.extent) == [SectorExtent(block: 28, firstSector: 0, sectorCount: 16)])
        // Block 28 was a hit; at block 32 the strided extents run to the chunk's end and stop there.
        let fifth = predictor.observe(read(block: 32, budget: 1 << 20), objectSize: objectSize)
        #expect(fifth.criterion == .stride(deltaSectors: 64))
        #expect(fifth.extents.map(\.extent.block) == [36, 40, 44, 48, 52, 56, 60])
        #expect(fifth.stop == .chunkEnd)
        // A read off the stride ends it.
        #expect(predictor.observe(read(block: 61, budget: 1 << 20), objectSize: objectSize).criterion == .noPattern)
    }

    @Test func backwardStride() {
        var predictor = Predictor(units: units)
        for block in [40, 36] { _ = predictor.observe(read(block: block, budget: 1 << 20), objectSize: objectSize) }
        let third = predictor.observe(read(block: 32, budget: 2 * (64 << 10)), objectSize: objectSize)
        #expect(third.criterion == .stride(deltaSectors: -64))
        #expect(third.extents.map(\.extent.block) == [28, 24])
    }

    @Test func randomReadsGetNothingExtra() {
        var predictor = Predictor(units: units)
        var generator = SplitMix(seed: 42)
        var extras = 0
        for _ in 0..<500 {
            let chunk = generator.next() % 16
            let block = Int(generator.next() % 64)
            let sector = Int(generator.next() % 16)
            let request = ReadSectorsRequest(key: "obj", chunk: chunk, extraBudgetBytes: 1 << 20,
                                             wanted: [SectorExtent(block: UInt16(block), firstSector: UInt16(sector), sectorCount: 1)])
            extras += predictor.observe(request, objectSize: objectSize).extents.count
        }
        #expect(extras == 0)
    }

    @Test func zeroBudgetSendsNothingExtra() {
        var predictor = Predictor(units: units)
        for block in 0..<10 {
            let selection = predictor.observe(read(block: block, budget: 0), objectSize: objectSize)
            #expect(selection.extents.isEmpty)
            if block > 0 { #expect(selection.stop == .budget) }
        }
        for block in stride(from: 20, to: 60, by: 5) {
            #expect(predictor.observe(read(block: block, budget: 0), objectSize: objectSize).extents.isEmpty)
        }
    }

    @Test func heldSectorsAreNeverSent() {
        var predictor = Predictor(units: units)
        _ = predictor.observe(read(block: 0, budget: 0), objectSize: objectSize)
        // Holds all of block 2 and the odd sectors of block 3.
        let held = [HeldBlock(block: 2, sectorMask: 0xFFFF), HeldBlock(block: 3, sectorMask: 0xAAAA)]
        let selection = predictor.observe(read(block: 1, budget: 16 * 4096, held: held), objectSize: objectSize)
        #expect(selection.criterion == .sequential(streak: 1))
        let sent = Set(sectors(selection))
        #expect(sent.count == 16)
        #expect(sent.isDisjoint(with: 32..<48))
        #expect(sent.isDisjoint(with: stride(from: 49, to: 64, by: 2)))
        #expect(sent.isDisjoint(with: 16..<32))  // nor what it asked for
        #expect(selection.sectorsSkipped == 16 + 8)
        #expect(selection.payloadBytes == 16 * 4096)
    }

    @Test func neverPastTheObjectsEnd() {
        var predictor = Predictor(units: units)
        let size: UInt64 = (4 << 20) + 3 * 4096 + 100  // chunk 1 holds 3 sectors and 100 bytes
        _ = predictor.observe(read(block: 63, budget: 0), objectSize: size)
        let request = ReadSectorsRequest(key: "obj", chunk: 1, extraBudgetBytes: 1 << 20,
                                         wanted: [SectorExtent(block: 0, firstSector: 0, sectorCount: 1)])
        let selection = predictor.observe(request, objectSize: size)
        #expect(selection.criterion == .sequential(streak: 1))
        #expect(selection.stop == .objectEnd)
        #expect(sectors(selection) == [1, 2, 3])
        #expect(selection.payloadBytes == 2 * 4096 + 100)

        // Chosen before the size was known, then clipped to it.
        var blind = Predictor(units: units)
        _ = blind.observe(read(block: 63, budget: 0), objectSize: nil)
        let unclipped = blind.observe(request, objectSize: nil)
        #expect(unclipped.stop == .budget)
        let clipped = Predictor.clip(unclipped, chunk: 1, objectSize: size, units: units)
        #expect(clipped == selection)
    }

    @Test func historiesAreBounded() {
        var configuration = PredictorConfiguration()
        configuration.keysMax = 4
        var predictor = Predictor(configuration: configuration, units: units)
        for index in 0..<10 { _ = predictor.observe(read("key\(index)", block: 0, budget: 0), objectSize: objectSize) }
        #expect(predictor.trackedKeyCount == 4)
        // The oldest were forgotten: key0 reads as a first read again.
        #expect(predictor.observe(read("key0", block: 1, budget: 1 << 20), objectSize: objectSize).criterion == .firstRead)
        #expect(predictor.observe(read("key9", block: 1, budget: 1 << 20), objectSize: objectSize).criterion == .sequential(streak: 1))
    }

    @Test func extentsBoundHolds() {
        var configuration = PredictorConfiguration()
        configuration.predictedExtentsMax = 3
        var predictor = Predictor(configuration: configuration, units: units)
        _ = predictor.observe(read(block: 0, budget: 0), objectSize: objectSize)
        // Every other sector held: each free sector is an extent of its own.
        let held = (1..<64).map { HeldBlock(block: UInt16($0), sectorMask: 0xAAAA) }
        let selection = predictor.observe(read(block: 0, blocks: 1, budget: 1 << 20, held: held), objectSize: objectSize)
        #expect(selection.extents.count == 3)
        #expect(selection.stop == .extentsMax)
    }
}

/// A small deterministic generator for test patterns.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
