// Path: Sources/SluiceWAN/WANReport.swift — a link's counters as text, for `sluice wan` (on exit and
// on SIGUSR1) and for logs.

public enum WANReport {
    /// One line per direction: frames and bytes in and out, what is held, the queue's peak, how late
    /// departures were, and every drop by reason. Words and numbers only, `key value` pairs, so
    /// scripts can pick fields out.
    public static func lines(_ snapshots: [WANDirectionSnapshot]) -> [String] {
        snapshots.map { snapshot in
            let c = snapshot.counters
            var line = "\(snapshot.direction): received \(c.receivedPackets) bytes \(c.receivedBytes)"
                + " forwarded \(c.forwardedPackets) bytes \(c.forwardedBytes)"
                + " held \(c.heldFrames) bytes \(c.heldBytes) held-max-bytes \(c.heldBytesMax)"
                + " queue-bytes \(c.queueBytes) queue-max-bytes \(c.queueBytesMax)"
                + " late-mean-us \(WANUnits.trimmed((snapshot.meanLateNs / 1_000 * 10).rounded() / 10))"
                + " late-max-us \(c.lateNsMax / 1_000)"
            let buckets = c.lateBucketCounts
            line += " late<=50us \(buckets[0]) late<=200us \(buckets[1]) late<=1ms \(buckets[2]) late>1ms \(buckets[3])"
            line += " corrupted \(c.corruptedPackets)"
            if c.arrivalClockFallbacks > 0 { line += " arrival-clock-fallbacks \(c.arrivalClockFallbacks)" }
            let drops = snapshot.drops()
            line += drops.isEmpty ? " drops 0" : drops.map { " drop-\($0.reason) \($0.count)" }.joined()
            return line
        }
    }
}
