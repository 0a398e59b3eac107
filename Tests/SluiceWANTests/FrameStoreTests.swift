// Path: Tests/SluiceWANTests/FrameStoreTests.swift — the store against a model: FIFO order, bytes
// intact across wrap-around, full exactly when no contiguous run or descriptor is free.
import Testing

@testable import SluiceWAN

@Suite struct FrameStoreTests {
    private func frame(_ seed: Int, length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
    }

    @Test func wrapsAroundAndKeepsOrder() {
        var store = WANFrameStore(capacityBytes: 1_000, frameCapacity: 64)
        for index in 0..<3 {
            #expect(frame(index, length: 300).withUnsafeBytes { store.append($0, departureNs: UInt64(index)) })
        }
        // 100 bytes left at the end: a 300-byte frame does not fit until the front leaves.
        #expect(store.placement(forLength: 300) == nil)
        #expect(store.placement(forLength: 100) == 900)
        store.popFront()
        #expect(store.placement(forLength: 300) == 0)
        #expect(frame(3, length: 300).withUnsafeBytes { store.append($0, departureNs: 3) })
        #expect(store.count == 3 && store.heldBytes == 900)
        var expected = 1
        while let front = store.front {
            #expect(Array(store.frameBytes(front)) == frame(expected, length: 300))
            #expect(front.departureNs == UInt64(expected))
            store.popFront()
            expected += 1
        }
        #expect(expected == 4 && store.heldBytes == 0)
        #expect(store.placement(forLength: 1_000) == 0)
        #expect(store.placement(forLength: 1_001) == nil)
    }

    @Test func descriptorsBoundTheFrameCount() {
        var store = WANFrameStore(capacityBytes: 10_000, frameCapacity: 4)
        for index in 0..<4 { #expect(frame(index, length: 10).withUnsafeBytes { store.append($0, departureNs: 0) }) }
        #expect(store.placement(forLength: 10) == nil)
        #expect(!frame(9, length: 10).withUnsafeBytes { store.append($0, departureNs: 0) })
    }

    @Test func randomTrafficMatchesAModel() {
        var store = WANFrameStore(capacityBytes: 8_192, frameCapacity: 256)
        var model: [(seed: Int, length: Int)] = []
        var random = WANRandom(seed: 11)
        var appended = 0
        var refused = 0
        for step in 0..<50_000 {
            if random.next(below: 2) == 0 {
                let length = Int(random.next(below: 1_514)) + 1
                let stored = frame(step, length: length).withUnsafeBytes { store.append($0, departureNs: UInt64(step)) }
                if stored {
                    model.append((step, length))
                    appended += 1
                } else {
                    // Refused only when it could not fit: the wrap-around wastes less than one frame.
                    let held = store.heldBytes
                    #expect(held + 2 * length > 8_192 || held + length + 1_514 > 8_192 || store.count == 256)
                    refused += 1
                }
            } else if let front = store.front {
                let expected = model.removeFirst()
                #expect(Int(front.length) == expected.length)
                #expect(Array(store.frameBytes(front)) == frame(expected.seed, length: expected.length))
                store.popFront()
            }
            #expect(store.count == model.count)
            #expect(store.heldBytes == model.reduce(0) { $0 + $1.length })
        }
        #expect(appended > 10_000 && refused > 100)
    }
}
