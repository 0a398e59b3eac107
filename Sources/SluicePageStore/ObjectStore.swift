// Path: Sources/SluicePageStore/ObjectStore.swift — file-store objects over pages, with the OSN
// contract: every read says at which OSN it was ordered and when its page last changed; a write
// carrying an OSN is applied only if the page has not changed since, else rejected with the current OSN.

/// A page as read: its bytes, the OSN of the write that last changed it (0: never written) and the
/// OSN at which the read was ordered (every write up to it is visible).
public struct PageVersion: Sendable, Equatable {
    public var payload: [UInt8]
    public var pageOSN: UInt64
    public var readOSN: UInt64
}

/// When a page write may be applied.
public enum WriteCondition: Sendable, Equatable {
    case unconditional
    /// Only if the page has not been modified after this OSN (the `pageOSN` a read returned).
    case unmodifiedSince(UInt64)
    /// Only if the page was never written (create-if-absent).
    case absent
}

public enum ObjectStoreError: Error, Equatable {
    /// The page changed after the write's OSN (or exists, for `.absent`): nothing was written.
    case conflict(objectID: UInt64, pageIndex: UInt64, currentOSN: UInt64)
    case payloadTooLarge(Int, max: Int)
    case tooManyPages(Int, max: Int)
    case page(PageStoreError)
    case log(LogError)
}

/// Objects made of pages in one `PageFile`, ordered by an `OperationLog`. A write goes to the log
/// first (durable, OSN assigned), then to its pages; opening replays the log and redoes any page the
/// crash left behind. One thread at a time (the page file's ring is not shared).
public final class ObjectStore {
    public static let pagesPerWriteMax = 64
    private var file: PageFile
    private let log: OperationLog
    /// (object, page index) -> physical page and the OSN that last wrote it.
    private var map: [PageKey: (physical: UInt64, osn: UInt64)] = [:]
    private var nextPhysical: UInt64 = 0

    private struct PageKey: Hashable {
        var object: UInt64
        var index: UInt64
    }

    public var payloadSizeBytes: Int { file.payloadSizeBytes }
    public var lastOSN: UInt64 { log.lastOSN }

    /// Opens the page file and the log, rebuilds the page map from the log and redoes pages whose
    /// on-disk OSN is older than the log's (a write acknowledged by the log, cut off before its pages).
    public init(pages: PageFileConfiguration, log: OperationLog) throws(ObjectStoreError) {
        do { file = try PageFile(configuration: pages) } catch { throw .page(error) }
        self.log = log
        let records: [(osn: UInt64, record: LogRecord)]
        do { records = try log.records(after: 0) } catch { throw .log(error) }
        var latest: [PageKey: (osn: UInt64, payload: [UInt8])] = [:]
        for (osn, record) in records {
            for page in record.pages {
                let key = PageKey(object: record.objectID, index: page.index)
                if map[key] == nil {
                    map[key] = (nextPhysical, osn)
                    nextPhysical += 1
                }
                map[key]!.osn = osn
                latest[key] = (osn, page.payload)
            }
        }
        try redo(latest)
    }

    private func redo(_ latest: [PageKey: (osn: UInt64, payload: [UInt8])]) throws(ObjectStoreError) {
        let keys = Array(latest.keys)
        var start = 0
        while start < keys.count {
            let batch = Array(keys[start..<min(start + file.configuration.queueDepth, keys.count)])
            let physical = batch.map { map[$0]!.physical }
            let onDisk: [PageFile.PageRead]
            do { onDisk = try file.read(physicalPages: physical) } catch {
                // A torn page is expected after a crash mid-write: the log has its content.
                guard case .corruptPage = error else { throw .page(error) }
                try rewrite(batch.map { ($0, latest[$0]!) })
                start += batch.count
                continue
            }
            let stale = batch.indices.filter { (onDisk[$0].header?.osn ?? 0) < latest[batch[$0]]!.osn }
            if !stale.isEmpty { try rewrite(stale.map { (batch[$0], latest[batch[$0]]!) }) }
            start += batch.count
        }
        do { try file.sync() } catch { throw .page(error) }
    }

    private func rewrite(_ pages: [(PageKey, (osn: UInt64, payload: [UInt8]))]) throws(ObjectStoreError) {
        do {
            try file.write(physicalPages: pages.map { map[$0.0]!.physical },
                           headers: pages.map { PageHeader(osn: $0.1.osn, objectID: $0.0.object, pageIndex: $0.0.index) },
                           payloads: pages.map { $0.1.payload })
        } catch { throw .page(error) }
    }

    /// Reads one page. A page never written reads as empty with `pageOSN` 0. A corrupt page throws.
    public func read(objectID: UInt64, pageIndex: UInt64) throws(ObjectStoreError) -> PageVersion {
        let readOSN = log.lastOSN
        guard let entry = map[PageKey(object: objectID, index: pageIndex)] else {
            return PageVersion(payload: [], pageOSN: 0, readOSN: readOSN)
        }
        let pages: [PageFile.PageRead]
        do { pages = try file.read(physicalPages: [entry.physical]) } catch { throw .page(error) }
        return PageVersion(payload: pages[0].payload, pageOSN: pages[0].header?.osn ?? 0, readOSN: readOSN)
    }

    /// Writes pages of one object, all or nothing: every condition is checked first; if any fails,
    /// nothing is written and the first conflict is thrown with the page's current OSN. Returns the
    /// write's OSN once it is durable in the log (and on its pages).
    public func write(objectID: UInt64, pages: [(index: UInt64, payload: [UInt8], condition: WriteCondition)])
        throws(ObjectStoreError) -> UInt64
    {
        guard pages.count <= min(Self.pagesPerWriteMax, file.configuration.queueDepth) else {
            throw .tooManyPages(pages.count, max: min(Self.pagesPerWriteMax, file.configuration.queueDepth))
        }
        for page in pages {
            guard page.payload.count <= file.payloadSizeBytes else {
                throw .payloadTooLarge(page.payload.count, max: file.payloadSizeBytes)
            }
            let current = map[PageKey(object: objectID, index: page.index)]?.osn ?? 0
            switch page.condition {
            case .unconditional: break
            case .unmodifiedSince(let osn) where current > osn:
                throw .conflict(objectID: objectID, pageIndex: page.index, currentOSN: current)
            case .absent where current != 0:
                throw .conflict(objectID: objectID, pageIndex: page.index, currentOSN: current)
            default: break
            }
        }
        let osn: UInt64
        do { osn = try log.append(LogRecord(objectID: objectID, pages: pages.map { ($0.index, $0.payload) })) } catch {
            throw .log(error)
        }
        var latest: [(PageKey, (osn: UInt64, payload: [UInt8]))] = []
        for page in pages {
            let key = PageKey(object: objectID, index: page.index)
            if map[key] == nil {
                map[key] = (nextPhysical, osn)
                nextPhysical += 1
            }
            map[key]!.osn = osn
            latest.append((key, (osn, page.payload)))
        }
        try rewrite(latest)
        return osn
    }

    /// Page indices written so far in `objectID`, ascending.
    public func pages(of objectID: UInt64) -> [UInt64] {
        map.keys.filter { $0.object == objectID }.map(\.index).sorted()
    }
}
