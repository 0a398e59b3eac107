import Testing
import SluiceOverlay

@Suite struct OverlayLeaseTests {
    @Test func leasesCompareByEveryField() {
        let a = OverlayLease(leaseID: 7, epoch: 10, service: "web", consumerVM: "c1", producerVM: "p1", producerHost: "h2",
                             producerUnderlayIPv4: 0xC612_0202, producerOverlayIPv4: 0xC613_0102, producerPort: 8080, vni: 42)
        var b = a
        #expect(a == b)
        b.epoch = 11
        #expect(a != b)
    }
}
