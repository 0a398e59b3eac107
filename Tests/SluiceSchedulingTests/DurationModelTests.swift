import Testing
@testable import SluiceScheduling

@Suite struct DurationModelTests {
    static let gib = 1_073_741_824.0
    static let mib = 1_048_576.0
    static func flat(_ rate: Double, minutes: Int = 60) -> BandwidthProfile {
        BandwidthProfile(rates: Array(repeating: rate, count: minutes))
    }

    @Test func anIdleGuestIsOnePass() throws {
        let demand = MigrationDemand(memoryBytes: 8 * Self.gib, dirtyBytesPerSecond: 0, maxBandwidth: 10 * Self.gib)
        let p = try DurationModel.predict(demand, allowance: .init(), bandwidth: Self.flat(Self.gib)).get()
        #expect(p.method == .precopy && p.rounds == 1)
        #expect(abs(p.totalSeconds - 8) < 1e-9)
    }

    /// QEMU sends a zero page as a header: the first pass is the measured non-zero part, not all memory.
    /// 8 GiB with 2 GiB of data at 1 GiB/s dirtying 100 MiB/s: round 1 takes 2 s and leaves 200 MiB,
    /// which fits a 0.3 s stop (0.195 s): the 8 GiB guest would need a second round (preCopyRoundsByHand).
    @Test func theFirstPassSendsWhatWasMeasured() throws {
        let idle = MigrationDemand(memoryBytes: 8 * Self.gib, firstPassBytes: 2 * Self.gib, dirtyBytesPerSecond: 0,
                                   maxBandwidth: 10 * Self.gib)
        let p = try DurationModel.predict(idle, allowance: .init(), bandwidth: Self.flat(Self.gib)).get()
        #expect(p.rounds == 1 && abs(p.totalSeconds - 2) < 1e-9)
        let dirtying = MigrationDemand(memoryBytes: 8 * Self.gib, firstPassBytes: 2 * Self.gib, dirtyBytesPerSecond: 100 * Self.mib,
                                       maxBandwidth: 10 * Self.gib)
        let q = try DurationModel.predict(dirtying, allowance: .init(), bandwidth: Self.flat(Self.gib)).get()
        #expect(q.rounds == 1)
        #expect(abs(q.totalSeconds - (2 + 0.1953125)) < 1e-6)
        #expect(abs(q.downtimeSeconds - 0.1953125) < 1e-9)
        // More than the memory is not believed: the first pass is at most all of it.
        #expect(MigrationDemand(memoryBytes: Self.gib, firstPassBytes: 4 * Self.gib, dirtyBytesPerSecond: 0, maxBandwidth: Self.gib)
            .firstPassBytes == Self.gib)
    }

    /// Extreme first-pass values in a request file are refused with the field named, never trapped on
    /// (the manager formats the booked value; 1e30 used to reach an Int conversion).
    @Test func extremeFirstPassValuesAreRefused() throws {
        let hosts = ScheduleHostsFile(hosts: ["a", "b"].map {
            ScheduleHost(name: $0, linkBytesPerSecond: 1e8, migrationSlots: 1, memoryBytes: 1e10, history: "/dev/null")
        })
        for value in [1e30, 0, -1, Double.infinity, Double.nan, 2 * Self.gib] {
            let file = ScheduleRequestFile(id: 1, vm: "v", source: "a", candidates: ["b"], earliestStart: 0, deadline: 10,
                                           memoryBytes: Self.gib, firstPassBytes: value, dirtyBytesPerSecond: 0, maxBandwidth: 1e8)
            #expect(throws: ScheduleFileError.self, "firstPassBytes \(value)") { _ = try file.request(hosts: hosts) }
        }
        let fine = ScheduleRequestFile(id: 1, vm: "v", source: "a", candidates: ["b"], earliestStart: 0, deadline: 10,
                                       memoryBytes: Self.gib, firstPassBytes: Self.gib / 4, dirtyBytesPerSecond: 0, maxBandwidth: 1e8)
        #expect(try fine.request(hosts: hosts).demand.firstPassBytes == Self.gib / 4)
    }

    /// 8 GiB at 1 GiB/s dirtying 100 MiB/s: round 1 takes 8 s and leaves 800 MiB; round 2 takes 0.78 s and
    /// leaves 78.1 MiB, which fits a 0.3 s stop (0.076 s).
    @Test func preCopyRoundsByHand() throws {
        let demand = MigrationDemand(memoryBytes: 8 * Self.gib, dirtyBytesPerSecond: 100 * Self.mib,
                                     downtimeLimitSeconds: 0.3, maxBandwidth: 10 * Self.gib)
        let p = try DurationModel.predict(demand, allowance: .init(), bandwidth: Self.flat(Self.gib)).get()
        #expect(p.method == .precopy && p.rounds == 2)
        #expect(abs(p.totalSeconds - (8 + 0.78125 + 0.0762939453125)) < 1e-6)
        #expect(abs(p.downtimeSeconds - 0.0762939453125) < 1e-9)
    }

    @Test func theMoveIsCappedAtItsMaxBandwidth() throws {
        let demand = MigrationDemand(memoryBytes: 8 * Self.gib, dirtyBytesPerSecond: 0, maxBandwidth: 0.5 * Self.gib)
        let p = try DurationModel.predict(demand, allowance: .init(), bandwidth: Self.flat(Self.gib)).get()
        #expect(abs(p.totalSeconds - 16) < 1e-9)
    }

    @Test func aFastDirtierNeedsAutoConvergeOrPostCopy() throws {
        let demand = MigrationDemand(memoryBytes: 4 * Self.gib, dirtyBytesPerSecond: 300 * Self.mib,
                                     maxBandwidth: 10 * Self.gib)
        let bandwidth = Self.flat(200 * Self.mib)
        let none = DurationModel.predict(demand, allowance: .init(autoConverge: false, postcopy: false), bandwidth: bandwidth)
        guard case .failure(.wontConverge) = none else { Issue.record("plain pre-copy: \(none)"); return }
        let throttled = try DurationModel.predict(demand, allowance: .init(autoConverge: true), bandwidth: bandwidth).get()
        #expect(throttled.method == .autoConverge && throttled.throttle >= 0.2)
        let post = try DurationModel.predict(demand, allowance: .init(autoConverge: false, postcopy: true), bandwidth: bandwidth).get()
        #expect(post.method == .postcopy && post.downtimeSeconds == DurationModel.postcopySwitchSeconds)
        #expect(post.totalSeconds > 20.48 && post.totalSeconds < 45)  // one 4 GiB pass at 200 MiB/s, then the working set
    }

    @Test func aMoveLongerThanTheProfileIsBeyondTheHorizon() {
        let demand = MigrationDemand(memoryBytes: 64 * Self.gib, dirtyBytesPerSecond: 0, maxBandwidth: 10 * Self.gib)
        let result = DurationModel.predict(demand, allowance: .init(), bandwidth: Self.flat(10 * Self.mib, minutes: 5))
        #expect(result == .failure(.beyondHorizon(minutes: 5)))
    }

    @Test func bandwidthThatChangesMinuteByMinute() {
        let profile = BandwidthProfile(rates: [0, 100, 50], start: 0, count: 3)
        #expect(profile.secondsToSend(6000, from: 0) == 120)  // nothing in minute 0, all of minute 1
        #expect(profile.secondsToSend(6000 + 1500, from: 0) == 150)
        #expect(profile.secondsToSend(1e9, from: 0) == nil)
        let window = BandwidthProfile(rates: [0, 100, 50], start: 1, count: 2, cap: 60)
        #expect(window.rate(minute: 0) == 60 && window.rate(minute: 1) == 50 && window.rate(minute: 2) == 0)
    }
}
