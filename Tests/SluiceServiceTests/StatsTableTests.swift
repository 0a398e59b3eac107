// Path: Tests/SluiceServiceTests/StatsTableTests.swift — `sluice stats` tables from a realistic scrape.
import Testing
@testable import SluiceService

@Suite struct StatsTableTests {
    /// A scrape as swift-prometheus writes it: `# TYPE` lines, integer counters, `Double` gauges
    /// (`12.0`, `1.25e-05`), label sets in no particular order.
    static let scrape = """
        # TYPE sluice_up gauge
        sluice_up 1.0
        # TYPE sluice_uptime_seconds gauge
        sluice_uptime_seconds 3723.5
        # TYPE sluice_worker_utilisation gauge
        sluice_worker_utilisation{worker="1",core="3"} 0.25
        sluice_worker_utilisation{worker="0",core="2"} 0.875
        # TYPE sluice_worker_busy_polls_total counter
        sluice_worker_busy_polls_total{worker="0",core="2"} 120000
        sluice_worker_busy_polls_total{worker="1",core="3"} 4000
        # TYPE sluice_worker_empty_polls_total counter
        sluice_worker_empty_polls_total{worker="0",core="2"} 500
        sluice_worker_empty_polls_total{worker="1",core="3"} 98000
        # TYPE sluice_worker_items_total counter
        sluice_worker_items_total{worker="0",core="2"} 3840000
        sluice_worker_items_total{worker="1",core="3"} 64000
        # TYPE sluice_worker_sleeps_total counter
        sluice_worker_sleeps_total{worker="0",core="2"} 0
        sluice_worker_sleeps_total{worker="1",core="3"} 17
        # TYPE sluice_worker_lost_wakeups_total counter
        sluice_worker_lost_wakeups_total{worker="0",core="2"} 0
        sluice_worker_lost_wakeups_total{worker="1",core="3"} 0
        # TYPE sluice_stage_moves_total counter
        sluice_stage_moves_total 2
        # TYPE sluice_worker_cpu_seconds_total counter
        sluice_worker_cpu_seconds_total{worker="0",core="2"} 61.25
        sluice_worker_cpu_seconds_total{worker="1",core="3"} 3.5
        # TYPE sluice_stage_calls_total counter
        sluice_stage_calls_total{pipeline="edge",stage="pcap-rx",worker="0"} 120000
        sluice_stage_calls_total{pipeline="edge",stage="classify",worker="1"} 4000
        # TYPE sluice_stage_items_total counter
        sluice_stage_items_total{pipeline="edge",stage="pcap-rx",worker="0"} 3840000
        sluice_stage_items_total{pipeline="edge",stage="classify",worker="1"} 64000
        # TYPE sluice_stage_filtered_total counter
        sluice_stage_filtered_total{pipeline="edge",stage="classify",worker="1"} 12
        # TYPE sluice_stage_blocked_total counter
        sluice_stage_blocked_total{pipeline="edge",stage="pcap-rx",worker="0"} 3
        # TYPE sluice_stage_cycles_per_item gauge
        sluice_stage_cycles_per_item{pipeline="edge",stage="pcap-rx",worker="0"} 41.26
        sluice_stage_cycles_per_item{pipeline="edge",stage="classify",worker="1"} 180.0
        # TYPE sluice_stage_items_per_call gauge
        sluice_stage_items_per_call{pipeline="edge",stage="pcap-rx",worker="0"} 32.0
        sluice_stage_items_per_call{pipeline="edge",stage="classify",worker="1"} 16.0
        # TYPE sluice_ring_occupancy gauge
        sluice_ring_occupancy{pipeline="edge",ring="pcap-rx->classify"} 12.0
        # TYPE sluice_ring_capacity gauge
        sluice_ring_capacity{pipeline="edge",ring="pcap-rx->classify"} 1024.0
        # TYPE sluice_ring_full_total counter
        sluice_ring_full_total{pipeline="edge",ring="pcap-rx->classify"} 2
        # TYPE sluice_ring_drops_total counter
        sluice_ring_drops_total{pipeline="edge",ring="pcap-rx->classify"} 5
        # TYPE sluice_pipeline_packets_in_total counter
        sluice_pipeline_packets_in_total{pipeline="edge"} 3840000
        # TYPE sluice_pipeline_bytes_in_total counter
        sluice_pipeline_bytes_in_total{pipeline="edge"} 2457600000
        # TYPE sluice_pipeline_packets_out_total counter
        sluice_pipeline_packets_out_total{pipeline="edge"} 3839983
        # TYPE sluice_pipeline_filtered_total counter
        sluice_pipeline_filtered_total{pipeline="edge"} 12
        # TYPE sluice_pipeline_drops_total counter
        sluice_pipeline_drops_total{pipeline="edge",reason="ringFull"} 5
        sluice_pipeline_drops_total{pipeline="edge",reason="truncated"} 0
        # TYPE sluice_traffic_share_target gauge
        sluice_traffic_share_target{port="edge",source="10"} 0.25
        sluice_traffic_share_target{port="edge",source="2"} 0.75
        # TYPE sluice_traffic_share_achieved gauge
        sluice_traffic_share_achieved{port="edge",source="2"} 0.7312
        sluice_traffic_share_achieved{port="edge",source="10"} 0.2688
        # TYPE sluice_traffic_pending_packets gauge
        sluice_traffic_pending_packets{port="edge",source="2"} 4.0
        sluice_traffic_pending_packets{port="edge",source="10"} 0.0
        # TYPE sluice_traffic_delay_seconds gauge
        sluice_traffic_delay_seconds{port="edge",source="2"} 1.25e-05
        sluice_traffic_delay_seconds{port="edge",source="10"} 0.0
        # TYPE sluice_traffic_sent_bytes gauge
        sluice_traffic_sent_bytes{port="edge",source="2"} 1800000.0
        sluice_traffic_sent_bytes{port="edge",source="10"} 650000.0
        # TYPE sluice_traffic_port_capacity_bytes_per_second gauge
        sluice_traffic_port_capacity_bytes_per_second{port="edge"} 1250000000.0
        # TYPE sluice_traffic_port_in_flight_limit_bytes gauge
        sluice_traffic_port_in_flight_limit_bytes{port="edge"} 65536.0
        # TYPE sluice_traffic_port_stalled gauge
        sluice_traffic_port_stalled{port="edge"} 0.0
        # TYPE sluice_storage_requests_total counter
        sluice_storage_requests_total{op="write",status="ok"} 900
        sluice_storage_requests_total{op="write",status="conflict"} 7
        sluice_storage_requests_total{op="read",status="ok"} 2000
        sluice_storage_requests_total{op="read",status="notFound"} 3
        # TYPE sluice_storage_conflicts_total counter
        sluice_storage_conflicts_total{op="write"} 7
        # TYPE sluice_storage_latency_seconds gauge
        sluice_storage_latency_seconds{op="read",quantile="0.5"} 2.1e-05
        sluice_storage_latency_seconds{op="read",quantile="0.9"} 5e-05
        sluice_storage_latency_seconds{op="read",quantile="0.99"} 8.5e-05
        sluice_storage_latency_seconds{op="read",quantile="0.999"} 0.00012
        sluice_storage_latency_seconds{op="read",quantile="1"} 0.0004
        sluice_storage_latency_seconds{op="write",quantile="0.5"} 6e-05
        sluice_storage_latency_seconds{op="write",quantile="0.99"} 0.00025
        sluice_storage_latency_seconds{op="write",quantile="0.999"} 0.0011
        sluice_storage_latency_seconds{op="write",quantile="1"} 0.002
        # TYPE sluice_storage_latency_samples gauge
        sluice_storage_latency_samples{op="read"} 2003.0
        # TYPE sluice_storage_last_osn gauge
        sluice_storage_last_osn 907.0
        # TYPE sluice_storage_group_commits_total counter
        sluice_storage_group_commits_total 300
        # TYPE sluice_storage_commit_writes_total counter
        sluice_storage_commit_writes_total 907

        """

    @Test func realisticScrapeRendersEverySection() throws {
        let text = StatsTable.render(try MetricsText.parse(Self.scrape))
        let expected = """
            Service: up, uptime 1h02m03s, stage moves 2

            Workers
            Worker  Core  Util %  Busy polls  Empty polls    Items  Sleeps  Lost wakeups  CPU s
                 0     2    87.5      120000          500  3840000       0             0  61.25
                 1     3    25.0        4000        98000    64000      17             0   3.50

            Stages
            Name      Pipeline  Worker   Calls  Vectors  Filtered  Blocked  Clocks/Vector  Vectors/Call
            pcap-rx   edge           0  120000  3840000         -        3           41.3         32.00
            classify  edge           1    4000    64000        12        -          180.0         16.00

            Rings
            Pipeline  Ring               Occupancy  Full  Drops
            edge      pcap-rx->classify    12/1024     2      5

            Pipelines
            Pipeline  Packets in    Bytes in  Packets out  Filtered
            edge         3840000  2457600000      3839983        12

            Pipeline drops
            Pipeline  Reason    Drops
            edge      ringFull      5

            Traffic sources
            Port  Source  Target %  Achieved %  Pending  Delay us  Sent bytes
            edge       2      75.0        73.1        4      12.5     1800000
            edge      10      25.0        26.9        0       0.0      650000

            Traffic ports
            Port  Capacity B/s  In-flight limit B  Stalled
            edge    1250000000              65536       no

            Storage
            Op       ok  conflict  notFound  Conflicts  p50 us  p99 us  p999 us  max us
            read   2000         -         3          -    21.0    85.0    120.0   400.0
            write   900         7         -          7    60.0   250.0   1100.0  2000.0
            Last OSN 907  group commits 300  writes/flush 3.02

            """
        #expect(text == expected)
    }

    /// Workers sort by number, not text: worker 10 after worker 9.
    @Test func rowsSortNumerically() throws {
        let samples = try MetricsText.parse("""
            sluice_worker_items_total{worker="10",core="12"} 1
            sluice_worker_items_total{worker="9",core="11"} 2
            """)
        let lines = StatsTable.render(samples).split(separator: "\n").map(String.init)
        #expect(lines == [
            "Workers",
            "Worker  Core  Util %  Busy polls  Empty polls  Items  Sleeps  Lost wakeups  CPU s",
            "     9    11       -           -            -      2       -             -      -",
            "    10    12       -           -            -      1       -             -      -",
        ])
    }

    /// Stages and rings follow the data path the ring names spell, not the alphabet.
    @Test func stagesAndRingsInPipelineOrder() throws {
        let samples = try MetricsText.parse("""
            sluice_stage_calls_total{pipeline="p",stage="action",worker="1"} 1
            sluice_stage_calls_total{pipeline="p",stage="pcap-tx",worker="1"} 1
            sluice_stage_calls_total{pipeline="p",stage="classify",worker="1"} 1
            sluice_stage_calls_total{pipeline="p",stage="pcap-rx",worker="0"} 1
            sluice_stage_calls_total{pipeline="p",stage="orphan",worker="0"} 1
            sluice_ring_capacity{pipeline="p",ring="classify->action"} 8
            sluice_ring_capacity{pipeline="p",ring="action->pcap-tx"} 8
            sluice_ring_capacity{pipeline="p",ring="pcap-rx->classify"} 8
            """)
        let lines = StatsTable.render(samples).split(separator: "\n").map(String.init)
        let stages = lines.drop { $0 != "Stages" }.dropFirst(2).prefix { !$0.isEmpty && $0 != "Rings" }
        #expect(stages.map { String($0.prefix { $0 != " " }) } == ["pcap-rx", "classify", "action", "pcap-tx", "orphan"])
        let rings = lines.drop { $0 != "Rings" }.dropFirst(2)
        #expect(rings.map { $0.split(separator: " ")[1] } == ["pcap-rx->classify", "classify->action", "action->pcap-tx"])
    }

    @Test func sectionsWithoutSamplesAreLeftOut() throws {
        let samples = try MetricsText.parse("""
            sluice_ring_occupancy{pipeline="p",ring="a->b"} 0.0
            sluice_ring_capacity{pipeline="p",ring="a->b"} 64.0
            sluice_something_else_total 3
            """)
        let text = StatsTable.render(samples)
        #expect(text == "Rings\nPipeline  Ring  Occupancy  Full  Drops\np         a->b       0/64     -      -\n")
        #expect(StatsTable.render([]) == "")
    }

    @Test func zeroDropReasonsAreLeftOut() throws {
        let samples = try MetricsText.parse("""
            sluice_pipeline_packets_in_total{pipeline="p"} 10
            sluice_pipeline_drops_total{pipeline="p",reason="truncated"} 0
            """)
        let text = StatsTable.render(samples)
        #expect(text.hasPrefix("Pipelines\n"))
        #expect(!text.contains("Pipeline drops"))
    }

    @Test func storageOpsInProtocolOrderWithSummary() throws {
        let samples = try MetricsText.parse("""
            sluice_storage_requests_total{op="statNode",status="ok"} 1
            sluice_storage_requests_total{op="createObject",status="ok"} 2
            sluice_storage_requests_total{op="readPage",status="ok"} 3
            sluice_storage_group_commits_total 0
            """)
        let lines = StatsTable.render(samples).split(separator: "\n").map(String.init)
        #expect(lines.dropFirst(2).map { String($0.prefix(12)) } == ["readPage    ", "createObject", "statNode    ", "Last OSN -  "])
        #expect(lines.last == "Last OSN -  group commits 0  writes/flush -")
    }

    @Test func nonFiniteAndFractionalCells() {
        #expect(Cell.count(.nan) == "NaN")
        #expect(Cell.count(-.infinity) == "-Inf")
        #expect(Cell.count(2.5) == "2.50")
        #expect(Cell.count(nil) == "-")
        #expect(Cell.fixed(-0.04, digits: 1) == "0.0")
        #expect(Cell.fixed(-1.25, digits: 1) == "-1.3")
        #expect(Cell.fixed(0.005, digits: 2) == "0.01")
        #expect(Cell.fixed(7, digits: 0) == "7")
        #expect(Cell.duration(90_061) == "1d 01h01m01s")
        #expect(Cell.duration(59.9) == "59s")
    }
}
