import Testing
@testable import SluiceScheduling

/// Production given per minute by a closure (tests only).
struct FixedOutlook: ProductionOutlook {
    var production: @Sendable (Int, Int) -> Double
    func plannedProduction(host: Int, minute: Int, confidence: Double) -> Double { production(host, minute) }
}

@Suite struct SchedulerTests {
    static let gib = 1_073_741_824.0
    static let link = 1_000_000_000.0
    static func hosts(_ count: Int, slots: Int = 1) -> [HostResources] {
        Array(repeating: HostResources(linkBytesPerSecond: link, migrationSlots: slots, memoryBytes: 256 * gib), count: count)
    }
    static func request(_ id: Int, from source: Int = 0, to candidates: [Int] = [1], earliest: Int = 0, deadline: Int = 600,
                        memory: Double = 32 * gib) -> MigrationRequest {
        MigrationRequest(id: id, vm: "vm\(id)", source: source, candidates: candidates, earliestStart: earliest, deadline: deadline,
                         demand: MigrationDemand(memoryBytes: memory, dirtyBytesPerSecond: 10e6, maxBandwidth: 500e6))
    }

    /// The link is full until minute 120: the move is booked after it, and explain says why not now.
    @Test func booksAfterTheBusyPeriodAndSaysWhyNotNow() throws {
        let outlook = FixedOutlook { _, minute in minute < 120 ? 0.999 * SchedulerTests.link : 0.2 * SchedulerTests.link }
        var scheduler = MigrationScheduler(hosts: Self.hosts(2), now: 0)
        let explanation = scheduler.explain(Self.request(1), now: 0, outlook: outlook)
        guard case .linkBusy = explanation.atNow.first else { Issue.record("\(explanation.atNow)"); return }
        #expect(explanation.earliest?.start == 120)
        guard case .booked(let booking) = scheduler.plan(Self.request(1), now: 0, outlook: outlook) else {
            Issue.record("not booked"); return
        }
        #expect(booking.start == 120 && booking.destination == 1)
        #expect(booking.rates.allSatisfy { $0 <= 500e6 })
        #expect(scheduler.table.slots(host: 0, minute: 120) == 1 && scheduler.table.slots(host: 1, minute: 120) == 1)
        #expect(scheduler.table.bandwidth(host: 1, minute: 120) > 0)
    }

    /// One slot per host: a second move from the same source is booked after the first, never beside it.
    @Test func bookedMovesDoNotCollide() throws {
        let outlook = FixedOutlook { _, _ in 0 }
        var scheduler = MigrationScheduler(hosts: Self.hosts(3), now: 0)
        guard case .booked(let first) = scheduler.plan(Self.request(1), now: 0, outlook: outlook),
              case .booked(let second) = scheduler.plan(Self.request(2, to: [2]), now: 0, outlook: outlook) else {
            Issue.record("not booked"); return
        }
        #expect(second.start >= first.start + first.rates.count)
        scheduler.release(1)
        #expect(scheduler.table.slots(host: 0, minute: first.start) == 0)
        #expect(scheduler.bookings.count == 1)
    }

    @Test func refusesWhatCannotFinishInItsWindowAndSaysWhy() {
        var scheduler = MigrationScheduler(hosts: Self.hosts(2), now: 0)
        let busy = FixedOutlook { _, _ in 0.999 * SchedulerTests.link }
        guard case .refused(let verdicts) = scheduler.plan(Self.request(1, deadline: 60), now: 0, outlook: busy) else {
            Issue.record("booked on a full link"); return
        }
        guard case .linkBusy = verdicts.first else { Issue.record("\(verdicts)"); return }
        let idle = FixedOutlook { _, _ in 0 }
        // 200 GiB at 500 MB/s takes ~430 s: a 5-minute window is too short.
        guard case .refused(let late) = scheduler.plan(Self.request(2, deadline: 5, memory: 200 * Self.gib), now: 0, outlook: idle) else {
            Issue.record("booked past its deadline"); return
        }
        guard case .finishesLate = late.first else { Issue.record("\(late)"); return }
        // Too big for the destination's memory.
        guard case .refused(let memory) = scheduler.plan(Self.request(3, memory: 300 * Self.gib), now: 0, outlook: idle) else {
            Issue.record("booked without memory"); return
        }
        guard case .destinationMemory = memory.first else { Issue.record("\(memory)"); return }
        #expect(scheduler.bookings.isEmpty)
        #expect(scheduler.table.slots(host: 0, minute: 0) == 0)
    }

    /// A forecast that changes moves a pending booking out of what is now a busy period.
    @Test func replansWhenTheForecastChanges() {
        var scheduler = MigrationScheduler(hosts: Self.hosts(2), now: 0)
        let request = Self.request(1, earliest: 60, deadline: 600)
        guard case .booked(let before) = scheduler.plan(request, now: 0, outlook: FixedOutlook { _, _ in 0 }) else {
            Issue.record("not booked"); return
        }
        #expect(before.start == 60)
        let changed = scheduler.replan(now: 10, requests: [1: request],
                                       outlook: FixedOutlook { _, minute in minute < 200 ? SchedulerTests.link : 0 })
        #expect(changed == [1])
        #expect(scheduler.bookings[1]?.start == 200)
        #expect(scheduler.table.slots(host: 0, minute: 60) == 0)
    }

    @Test func theBookingTableSlidesAndForgets() {
        var table = BookingTable(hostCount: 2, horizonMinutes: 10, origin: 0)
        table.book(source: 0, destination: 1, start: 8, rates: [5, 6][...], memory: 1)
        #expect(table.bandwidth(host: 1, minute: 9) == 6)
        table.advance(to: 9)
        #expect(table.bandwidth(host: 0, minute: 9) == 6)
        #expect(table.bandwidth(host: 0, minute: 18) == 0)  // minute 8's ring cell, now minute 18, is clear
        #expect(table.slots(host: 0, minute: 8) == 0)  // outside the window
        table.release(source: 0, destination: 1, start: 8, rates: [5, 6][...], memory: 1)
        #expect(table.slots(host: 1, minute: 9) == 0 && table.reservedMemory[1] == 0)
    }
}
