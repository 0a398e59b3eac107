// Path: Sources/SluiceGateway/GatewayMetrics.swift — the gateway's counters as Prometheus text
// (exposition format 0.0.4), `sluice_gateway_*`: one page for the appliance, one for the intermediate.
// Pure: it formats snapshots; `sluice gateway serve-*` serves the pages with SluiceService's endpoint.

/// Renders the appliance's and the intermediate's counters. Names and labels (docs/GATEWAY.md, "Metrics"):
/// counters end in `_total`; bytes are bytes; the cache tiers count in their own units (the appliance's
/// block cache in sectors, the intermediate's chunk cache in chunk reads), named in the metric.
public enum GatewayMetrics {
    /// Shares beyond this many are left out of the page (the appliance bounds its shares too).
    public static let sharesMax = 4_096

    /// The appliance's page: reads, its block cache (hits and misses in sectors), bytes served, the
    /// last hop by kind, read amplification, budget use per share, corrupt sectors and errors.
    public static func appliance(_ counters: ApplianceCountersSnapshot, cache: BlockCacheStats, shares: [ShareSnapshot]) -> String {
        var page = Page()
        page.counter("sluice_gateway_appliance_reads_total", "Client reads the appliance answered (successful or not).", counters.reads)
        page.counter("sluice_gateway_appliance_read_errors_total", "Client reads answered with an error.", counters.readErrors)
        page.counter("sluice_gateway_appliance_cache_hit_sectors_total", "Sectors served from the appliance's block cache.", counters.hitSectors)
        page.counter("sluice_gateway_appliance_cache_miss_sectors_total", "Sectors a read had to ask the intermediate for.", counters.missSectors)
        page.counter("sluice_gateway_appliance_cache_coalesced_sectors_total",
                     "Missing sectors a read found already in flight for another read.", counters.coalescedSectors)
        page.counter("sluice_gateway_appliance_served_bytes_total", "Bytes served to clients.", counters.bytesServed)
        page.counter("sluice_gateway_appliance_fetches_total", "readSectors requests sent to the intermediate.", counters.fetches)
        page.counter("sluice_gateway_appliance_read_aheads_total", "Read-ahead requests the appliance started.", counters.readAheads)
        page.family("sluice_gateway_last_hop_payload_bytes_total", "counter",
                    "Payload bytes that crossed the last hop to the appliance, by why they were sent.",
                    [(["kind": "requested"], Double(counters.lastHopRequestedBytes)),
                     (["kind": "predicted"], Double(counters.lastHopPredictedBytes)),
                     (["kind": "read_ahead"], Double(counters.lastHopReadAheadBytes))])
        page.counter("sluice_gateway_last_hop_frame_bytes_total", "Reply frame bytes that crossed the last hop (headers, CRCs, payload).",
                     counters.lastHopFrameBytes)
        page.gauge("sluice_gateway_read_amplification", "Last-hop frame bytes over bytes served (0 before anything was served).",
                   counters.readAmplification)
        page.counter("sluice_gateway_corrupt_sectors_total", "Sectors that failed their CRC-32C on arrival (never served).",
                     counters.corruptSectorsRefused, labels: ["where": "wire"])
        page.counter("sluice_gateway_appliance_intermediate_errors_total", "Requests to the intermediate that failed.", counters.intermediateErrors)
        page.counter("sluice_gateway_appliance_intermediate_connects_total", "Connections made to the intermediate (reconnects included).",
                     counters.intermediateConnects)
        page.gauge("sluice_gateway_appliance_read_ahead_window_bytes", "Read-ahead window last used (fixed, or sized from the last hop).",
                   Double(counters.readAheadWindowBytes))
        page.gauge("sluice_gateway_last_hop_min_rtt_seconds", "Shortest recent round trip of the appliance's calls to the intermediate.",
                   Double(counters.lastHopMinRTTUs) / 1e6)
        page.gauge("sluice_gateway_last_hop_max_delivery_rate_bytes", "Fastest recent delivery rate of replies from the intermediate (bytes/s).",
                   Double(counters.lastHopMaxRateBytesPerSecond))
        page.counter("sluice_gateway_appliance_etag_changes_total", "Reads that met a new version of their object.", counters.etagChanges)
        page.counter("sluice_gateway_appliance_stats_total", "stat requests sent to the intermediate.", counters.stats)
        page.counter("sluice_gateway_appliance_written_bytes_total", "Bytes clients wrote (acknowledged once in the journal).", counters.bytesWritten)
        page.counter("sluice_gateway_appliance_writes_closed_total", "Writes closed (sealed objects, acknowledged).", counters.writesClosed)
        page.family("sluice_gateway_appliance_uploads_total", "counter", "Uploads of sealed objects to the remote store, by outcome.",
                    [(["outcome": "done"], Double(counters.uploadsDone)), (["outcome": "failed"], Double(counters.uploadsFailed)),
                     (["outcome": "retried"], Double(counters.uploadsRetried)), (["outcome": "superseded"], Double(counters.uploadsSuperseded))])
        page.counter("sluice_gateway_appliance_upload_bytes_total", "Payload bytes sent over the last hop by uploads.", counters.uploadBytes)
        page.counter("sluice_gateway_appliance_upload_pieces_total", "Upload pieces sent to the intermediate.", counters.uploadPieces)
        page.counter("sluice_gateway_appliance_upload_corrupt_resent_total", "Upload pieces the intermediate refused as corrupt and that were re-sent.",
                     counters.uploadCorruptResent)
        page.counter("sluice_gateway_appliance_journal_waits_total", "Appends that waited for journal space.", counters.uploadWaits)
        page.counter("sluice_gateway_appliance_journal_refusals_total", "Appends refused: the journal stayed full.", counters.journalRefusals)
        page.counter("sluice_gateway_appliance_journal_discarded_open_total", "Unclosed writes discarded at start (never acknowledged as closed).",
                     counters.journalDiscardedOpen)
        page.counter("sluice_gateway_appliance_journal_reads_total", "Reads served from a sealed, not yet uploaded journal.", counters.journalReads)
        page.gauge("sluice_gateway_appliance_journal_bytes", "Bytes the upload journal holds now.", Double(counters.journalBytes))
        page.gauge("sluice_gateway_appliance_cache_blocks", "Blocks the appliance's cache holds.", Double(cache.blocks))
        page.gauge("sluice_gateway_appliance_cache_capacity_blocks", "Blocks the appliance's cache can hold.", Double(cache.capacityBlocks))
        page.counter("sluice_gateway_appliance_cache_evictions_total", "Blocks evicted from the appliance's cache.", cache.evictions)
        page.counter("sluice_gateway_appliance_cache_dropped_blocks_total", "Blocks dropped for a new etag or an invalidation.", cache.dropped)
        let listed = shares.prefix(sharesMax)
        page.family("sluice_gateway_share_served_bytes_total", "counter", "Bytes served per share.",
                    listed.map { (["share": $0.name], Double($0.servedBytes)) })
        page.family("sluice_gateway_share_last_hop_bytes_total", "counter", "Last-hop payload bytes fetched per share, requested or predicted.",
                    listed.flatMap { [(["share": $0.name, "kind": "requested"], Double($0.requestedBytes)),
                                      (["share": $0.name, "kind": "predicted"], Double($0.predictedBytes))] })
        page.family("sluice_gateway_share_budget_granted_bytes_total", "counter", "Predicted bytes the share's last-hop budget allowed.",
                    listed.map { (["share": $0.name], Double($0.grantedBytes)) })
        page.family("sluice_gateway_share_budget_refused_total", "counter", "Grants the share's budget refused in full.",
                    listed.map { (["share": $0.name], Double($0.refusedGrants)) })
        page.family("sluice_gateway_share_fetched_over_served_ratio", "gauge",
                    "Last-hop payload bytes fetched over bytes served per share (the budget's ratio; 0 before anything was served).",
                    listed.map { share in
                        (["share": share.name], share.servedBytes == 0 ? 0
                            : Double(share.requestedBytes + share.predictedBytes) / Double(share.servedBytes))
                    })
        return page.text
    }

    /// The intermediate's page: its chunk cache (hits and misses in chunk reads), bytes from the remote
    /// store, the last hop by reason, remote failures, corrupt chunks on disk and errors.
    public static func intermediate(_ counters: GatewayCountersSnapshot) -> String {
        var page = Page()
        page.counter("sluice_gateway_intermediate_requests_total", "Block-protocol requests received.", counters.requests)
        page.counter("sluice_gateway_intermediate_failed_replies_total", "Replies with a status other than ok.", counters.failedReplies)
        page.family("sluice_gateway_intermediate_uploads_total", "counter", "Uploads from appliances, by outcome.",
                    [(["outcome": "begun"], Double(counters.uploadsBegun)), (["outcome": "completed"], Double(counters.uploadsCompleted)),
                     (["outcome": "failed"], Double(counters.uploadsFailed)), (["outcome": "overloaded"], Double(counters.uploadsOverloaded))])
        page.counter("sluice_gateway_intermediate_upload_bytes_total", "Upload payload bytes received over the last hop.", counters.uploadBytesReceived)
        page.counter("sluice_gateway_intermediate_upload_parts_total", "Parts stored in the remote store (puts and multipart parts).", counters.uploadPartsStored)
        page.counter("sluice_gateway_corrupt_sectors_total", "Sectors that failed their CRC-32C on arrival (never stored).",
                     counters.uploadCorruptRefused, labels: ["where": "upload"])
        page.counter("sluice_gateway_intermediate_cache_hits_total", "Chunk reads answered from the intermediate's disk cache.", counters.chunkHits)
        page.counter("sluice_gateway_intermediate_cache_misses_total", "Chunk reads that started a remote fetch.", counters.chunkMisses)
        page.counter("sluice_gateway_intermediate_cache_coalesced_total", "Chunk reads that joined a fetch in flight.", counters.chunkCoalesced)
        page.counter("sluice_gateway_intermediate_cache_evictions_total", "Chunks evicted from the disk cache.", counters.evictions)
        page.counter("sluice_gateway_intermediate_cache_not_stored_total", "Fetched chunks not kept (every cached chunk was in use).",
                     counters.notStored)
        page.counter("sluice_gateway_intermediate_stat_hits_total", "Object stats answered from the stat cache.", counters.statHits)
        page.counter("sluice_gateway_intermediate_stat_misses_total", "Object stats asked of the remote store.", counters.statMisses)
        page.counter("sluice_gateway_remote_reads_total", "Ranged reads from the remote store (one per chunk fetched).", counters.remoteReads)
        page.counter("sluice_gateway_remote_bytes_total", "Bytes read from the remote store (remote to intermediate).", counters.bytesFromRemote)
        page.counter("sluice_gateway_remote_stats_total", "Size and etag requests to the remote store.", counters.remoteStats)
        page.family("sluice_gateway_remote_failures_total", "counter", "Remote store calls that failed, by kind.",
                    [(["kind": "unavailable"], Double(counters.remoteUnavailable)), (["kind": "error"], Double(counters.remoteErrors))])
        page.family("sluice_gateway_last_hop_sent_payload_bytes_total", "counter",
                    "Payload bytes the intermediate sent on the last hop, by reason.",
                    [(["reason": "requested"], Double(counters.lastHopRequestedBytes)),
                     (["reason": "sequential"], Double(counters.lastHopSequentialBytes)),
                     (["reason": "stride"], Double(counters.lastHopStrideBytes))])
        page.counter("sluice_gateway_last_hop_sent_frame_bytes_total", "Reply frame bytes the intermediate sent (headers, CRCs, payload).",
                     counters.lastHopFrameBytes)
        let payload = counters.lastHopRequestedBytes + counters.lastHopSequentialBytes + counters.lastHopStrideBytes
        page.gauge("sluice_gateway_intermediate_predicted_share",
                   "Predicted payload bytes over all payload bytes sent on the last hop (0 before any).",
                   payload == 0 ? 0 : Double(counters.lastHopSequentialBytes + counters.lastHopStrideBytes) / Double(payload))
        page.counter("sluice_gateway_corrupt_chunks_total", "Cached chunks whose sectors failed their CRC-32C on disk (dropped, refetched).",
                     counters.corruptOnDisk, labels: ["where": "disk"])
        page.counter("sluice_gateway_intermediate_disk_errors_total", "Cache file reads or writes that failed with an errno.", counters.diskErrors)
        return page.text
    }

    /// `value` of a label, escaped as the text format wants (backslash, quote, newline).
    static func escaped(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    /// A page being written: `# HELP` and `# TYPE` once per family, then its samples.
    struct Page {
        var text = ""

        mutating func counter(_ name: String, _ help: String, _ value: UInt64, labels: [String: String] = [:]) {
            family(name, "counter", help, [(labels, Double(value))])
        }

        mutating func gauge(_ name: String, _ help: String, _ value: Double) {
            family(name, "gauge", help, [([:], value)])
        }

        /// A family with no samples writes only its HELP and TYPE lines.
        mutating func family(_ name: String, _ type: String, _ help: String, _ samples: [([String: String], Double)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples {
                text += name
                if !labels.isEmpty {
                    text += "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(GatewayMetrics.escaped($0.value))\"" }
                        .joined(separator: ",") + "}"
                }
                text += " " + Self.format(value) + "\n"
            }
        }

        /// Integers without a fraction (counters stay exact up to 2^53), others as Swift prints doubles.
        static func format(_ value: Double) -> String {
            if value.isNaN { return "NaN" }
            if value == value.rounded(), abs(value) < 9.0e15 { return String(Int64(value)) }
            return String(value)
        }
    }
}
