// Path: Sources/SluiceGateway/GatewayLRU.swift — recency order for the gateway's bounded tables (chunk
// cache, stat cache, predictor histories): a doubly linked list threaded through a dictionary.

/// Keys from least to most recently used. O(1) touch, remove and oldest; not thread-safe (its owner
/// locks). Holds each key once; the owner bounds how many.
struct LRUOrder<Key: Hashable & Sendable>: Sendable {
    private struct Link {
        var older: Key?
        var newer: Key?
    }

    private var links: [Key: Link] = [:]
    private(set) var oldest: Key?
    private(set) var newest: Key?

    var count: Int { links.count }

    func contains(_ key: Key) -> Bool { links[key] != nil }

    /// Makes `key` the most recently used, inserting it if absent.
    mutating func touch(_ key: Key) {
        if newest == key { return }
        if links[key] != nil { remove(key) }
        links[key] = Link(older: newest, newer: nil)
        if let newest { links[newest]!.newer = key }
        newest = key
        if oldest == nil { oldest = key }
    }

    /// Inserts `key` as the least recently used (for entries found at startup, oldest first... last).
    mutating func insertOldest(_ key: Key) {
        precondition(links[key] == nil, "a key is inserted once")
        links[key] = Link(older: nil, newer: oldest)
        if let oldest { links[oldest]!.older = key }
        oldest = key
        if newest == nil { newest = key }
    }

    mutating func remove(_ key: Key) {
        guard let link = links.removeValue(forKey: key) else { return }
        if let older = link.older { links[older]!.newer = link.newer } else { oldest = link.newer }
        if let newer = link.newer { links[newer]!.older = link.older } else { newest = link.older }
    }

    /// The least recently used key for which `eligible` holds, walking from the oldest.
    func oldest(where eligible: (Key) -> Bool) -> Key? {
        var cursor = oldest
        while let key = cursor {
            if eligible(key) { return key }
            cursor = links[key]!.newer
        }
        return nil
    }

    /// Keys from the oldest to the newest (for tests and reports).
    var keysOldestFirst: [Key] {
        var keys: [Key] = []
        keys.reserveCapacity(links.count)
        var cursor = oldest
        while let key = cursor {
            keys.append(key)
            cursor = links[key]!.newer
        }
        return keys
    }
}
