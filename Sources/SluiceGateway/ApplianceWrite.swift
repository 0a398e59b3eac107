// Path: Sources/SluiceGateway/ApplianceWrite.swift — the appliance's writes: write-back through the
// journal (ApplianceJournal.swift), uploads to the intermediate in the background, flush, shutdown.
import NIOCore
import NIOPosix
import Synchronization

/// How the appliance uploads. Part of `ApplianceConfiguration`.
public struct ApplianceUploadConfiguration: Sendable {
    /// Bytes per `uploadData` piece (at most `GatewayProtocol.uploadDataBytesMax`).
    public var pieceBytes = GatewayProtocol.uploadDataBytesMax
    /// A piece refused as corrupt is sent again this many times before the upload starts over.
    public var corruptResendsMax = 3
    /// After a failed upload, the journal waits this long (doubling up to `retryMaxNs`) before the next try.
    public var retryMinNs: UInt64 = 50_000_000
    public var retryMaxNs: UInt64 = 2_000_000_000
    /// How often the uploader looks for sealed journals when it has nothing to do.
    public var idlePollNs: UInt64 = 5_000_000
    public init() {}
}

/// Uploads sealed journals, oldest first, one at a time, over a connection of its own to the
/// intermediate (its large frames never wait behind reads, nor reads behind them). A journal is
/// deleted only after `uploadComplete` said the object is in the remote store; a newer sealed journal
/// of the same key supersedes an older one not yet uploaded (the older is deleted unsent). Failures
/// are retried with backoff per journal; others go on meanwhile.
final class ApplianceUploader: Sendable {
    private struct State {
        var client: GatewayClient?
        var stopped = false
        var retryAtNs: [UInt64: UInt64] = [:]
        var backoffNs: [UInt64: UInt64] = [:]
    }

    let journal: ApplianceJournal
    let counters: ApplianceCounters
    let configuration: ApplianceUploadConfiguration
    let clientConfiguration: GatewayClientConfiguration
    let host: String
    let port: Int
    let group: any EventLoopGroup
    /// Called with the key after its upload completed, before its journal is deleted.
    private let uploaded = Mutex<(@Sendable (String) -> Void)?>(nil)
    private let state = Mutex(State())
    private let task = Mutex<Task<Void, Never>?>(nil)
    /// Test seam: the next this many pieces get one byte flipped after their CRCs are computed.
    let corruptNextPieces = Atomic<Int>(0)

    init(journal: ApplianceJournal, counters: ApplianceCounters, configuration: ApplianceUploadConfiguration,
         clientConfiguration: GatewayClientConfiguration, host: String, port: Int, group: any EventLoopGroup) {
        self.journal = journal
        self.counters = counters
        self.configuration = configuration
        self.clientConfiguration = clientConfiguration
        self.host = host
        self.port = port
        self.group = group
    }

    func setUploaded(_ hook: @escaping @Sendable (String) -> Void) {
        uploaded.withLock { $0 = hook }
    }

    func start() {
        task.withLock { $0 = Task { await self.run() } }
    }

    /// Stops after the upload in progress (if any) ends or fails; closes the connection.
    func stop() async {
        let (client, running) = state.withLock { s in
            s.stopped = true
            defer { s.client = nil }
            return (s.client, task.withLock { $0 })
        }
        await client?.close()
        await running?.value
    }

    private var stopped: Bool { state.withLock { $0.stopped } }

    private func run() async {
        while !stopped {
            let now = monotonicNs()
            let retryAt = state.withLock { $0.retryAtNs }
            var worked = false
            let sealed = journal.sealed()
            for entry in sealed where !stopped {
                if sealed.contains(where: { $0.key == entry.key && $0.id > entry.id }) {
                    counters.add(counters.uploadsSuperseded)
                    journal.remove(entry.id)
                    state.withLock { s in
                        s.retryAtNs[entry.id] = nil
                        s.backoffNs[entry.id] = nil
                    }
                    worked = true
                    continue
                }
                if let at = retryAt[entry.id], at > now { continue }
                worked = true
                do throws(ApplianceError) {
                    try await upload(entry)
                    let hook = uploaded.withLock { $0 }
                    hook?(entry.key)
                    journal.remove(entry.id)
                    counters.add(counters.uploadsDone)
                    state.withLock { s in
                        s.retryAtNs[entry.id] = nil
                        s.backoffNs[entry.id] = nil
                    }
                } catch {
                    counters.add(counters.uploadsFailed)
                    let configuration = configuration
                    state.withLock { s in
                        let backoff = min(configuration.retryMaxNs, (s.backoffNs[entry.id] ?? configuration.retryMinNs / 2) * 2)
                        s.backoffNs[entry.id] = backoff
                        s.retryAtNs[entry.id] = monotonicNs() + backoff
                    }
                }
            }
            if !worked { try? await Task.sleep(nanoseconds: configuration.idlePollNs) }
        }
    }

    /// One whole upload of `entry`: begin, the pieces in order (a corrupt one sent again), complete.
    private func upload(_ entry: JournalEntry) async throws(ApplianceError) {
        if state.withLock({ $0.backoffNs[entry.id] }) != nil { counters.add(counters.uploadsRetried) }
        let client = try await connection()
        var begun: UInt64?
        do throws(GatewayClientError) {
            let id = try await client.uploadBegin(key: entry.key, size: entry.dataBytes)
            begun = id
            var offset: UInt64 = 0
            while offset < entry.dataBytes {
                guard !stopped else { throw GatewayClientError.connectionClosed }
                let count = Int(min(UInt64(configuration.pieceBytes), entry.dataBytes - offset))
                let bytes = try await journalRead(entry, offset: offset, count: count)
                let crcs = sectorCRCs(bytes, sectorBytes: client.hello.units.sectorBytes)
                var resends = 0
                while true {
                    var sent = bytes
                    if corruptNextPieces.load(ordering: .relaxed) > 0 {
                        corruptNextPieces.subtract(1, ordering: .relaxed)
                        sent[sent.count / 2] ^= 0xFF
                    }
                    do throws(GatewayClientError) {
                        offset = try await client.uploadData(UploadDataRequest(uploadID: id, offset: offset, crcs: crcs, bytes: sent))
                        counters.add(counters.uploadPieces)
                        counters.add(counters.uploadBytes, count)
                        break
                    } catch {
                        if case .status(.corrupt, _) = error, resends < configuration.corruptResendsMax {
                            resends += 1
                            counters.add(counters.uploadCorruptResent)
                            continue
                        }
                        if case .status(.overloaded, _) = error, !stopped {
                            counters.add(counters.uploadWaits)
                            try? await Task.sleep(nanoseconds: configuration.retryMinNs)
                            continue
                        }
                        throw error
                    }
                }
            }
            _ = try await client.uploadComplete(uploadID: id)
        } catch {
            switch error {
            case .connectionClosed, .timedOut, .protocolViolation:
                drop(client)
            default:
                // The connection is fine: free the intermediate's session now rather than at its idle bound.
                if let begun { try? await client.uploadAbort(uploadID: begun) }
            }
            throw Appliance.map(error)
        }
    }

    private func journalRead(_ entry: JournalEntry, offset: UInt64, count: Int) async throws(GatewayClientError) -> [UInt8] {
        do throws(ApplianceError) { return try await journal.read(entry, offset: offset, count: count) } catch {
            throw .invalidRequest("journal: \(error)")
        }
    }

    private func drop(_ client: GatewayClient) {
        state.withLock { s in if s.client === client { s.client = nil } }
        Task { await client.close() }
    }

    private func connection() async throws(ApplianceError) -> GatewayClient {
        if let client = state.withLock({ $0.client }) { return client }
        let client: GatewayClient
        do { client = try await GatewayClient.connect(host: host, port: port, configuration: clientConfiguration, group: group) } catch {
            throw Appliance.map(error)
        }
        let kept = state.withLock { s -> Bool in
            guard !s.stopped, s.client == nil else { return false }
            s.client = client
            return true
        }
        if !kept {
            await client.close()
            throw .intermediateUnavailable("the uploader stopped")
        }
        return client
    }
}

extension Appliance {
    private func requireJournal() throws(ApplianceError) -> ApplianceJournal {
        guard let journal else { throw .invalidRequest("this appliance has no journal: writes are off (--journal DIR)") }
        return journal
    }

    /// Starts a write of the whole object `key` (create or replace). Durable before it returns.
    public func beginWrite(key: String) async throws(ApplianceError) -> UInt64 {
        guard gatewayKeyIsValid(key) else { throw .invalidRequest("key of \(key.utf8.count) bytes not in 1...\(GatewayProtocol.keyBytesMax)") }
        return try await requireJournal().begin(key: key)
    }

    /// Appends `bytes` at `offset` (the write's length so far) of write `writeID`. Returns once the
    /// bytes are in the journal and fdatasynced; waits for journal space up to its bound, then `overloaded`.
    public func append(writeID: UInt64, offset: UInt64, bytes: [UInt8]) async throws(ApplianceError) -> UInt64 {
        guard !bytes.isEmpty, bytes.count <= ApplianceProtocol.appendBytesMax else {
            throw .invalidRequest("append of \(bytes.count) bytes not in 1...\(ApplianceProtocol.appendBytesMax)")
        }
        return try await requireJournal().append(writeID, offset: offset, bytes: bytes)
    }

    /// Seals write `writeID`: from now on it is an object (durable in the journal; uploaded after).
    /// Reads on this appliance see it at once. Returns its size.
    public func closeWrite(writeID: UInt64) async throws(ApplianceError) -> UInt64 {
        let size = try await requireJournal().seal(writeID)
        counters.add(counters.writesClosed)
        return size
    }

    /// Drops an open write (its bytes never become an object). Sealed writes are not affected.
    public func abortWrite(writeID: UInt64) {
        guard let journal, let entry = journal.openEntry(writeID) else { return }
        _ = entry
        journal.remove(writeID)
    }

    /// Waits until every object of `key` (nil: every object) closed before this call is in the remote
    /// store, at most `timeoutNs`; then `flushTimedOut` naming what is left.
    public func flush(key: String? = nil, timeoutNs: UInt64 = 60_000_000_000) async throws(ApplianceError) {
        guard let journal else { return }
        let pending = journal.sealed().filter { key == nil || $0.key == key }.map(\.id)
        let deadline = monotonicNs() + timeoutNs
        while true {
            let left = pending.filter { journal.contains($0) }
            if left.isEmpty { return }
            guard monotonicNs() < deadline else {
                throw .flushTimedOut("\(left.count) object(s) not yet in the remote store after \(timeoutNs / 1_000_000) ms")
            }
            try? await Task.sleep(nanoseconds: 2_000_000)
        }
    }

    /// For SIGTERM: flushes every sealed journal within `timeoutNs`, stops the uploader and closes.
    /// Returns how many sealed objects are left in the journal (uploaded at the next start).
    public func shutdown(flushWithinNs timeoutNs: UInt64) async -> Int {
        try? await flush(key: nil, timeoutNs: timeoutNs)
        await uploader?.stop()
        let left = journal?.sealed().count ?? 0
        await close()
        return left
    }

    /// What the journal holds: sealed objects not yet uploaded, and their bytes.
    public var pendingUploads: (objects: Int, bytes: UInt64) {
        guard let journal else { return (0, 0) }
        let sealed = journal.sealed()
        return (sealed.count, sealed.reduce(0) { $0 + $1.dataBytes })
    }

    /// Sealed journals found at start (to upload again) and open ones deleted then.
    public var journalRecovery: (sealed: Int, discardedOpen: Int) {
        (journal?.recoveredSealed ?? 0, journal?.discardedOpen ?? 0)
    }

    /// Test seam: flip one byte in each of the next `count` upload pieces after their CRCs are taken.
    public func corruptNextUploadPieces(_ count: Int) {
        uploader?.corruptNextPieces.store(count, ordering: .relaxed)
    }

    /// Read-your-writes: `out.count` bytes at `offset` of the newest sealed, not yet uploaded journal
    /// of `key`, or nil when there is none (or it was uploaded and deleted meanwhile).
    func readJournal(key: String, offset: UInt64, into out: UnsafeMutableRawBufferPointer) async throws(ApplianceError) -> (size: UInt64, etag: String)? {
        guard let journal, let entry = journal.newestSealed(key: key) else { return nil }
        let etag = "journal-\(entry.id)"
        guard offset <= entry.dataBytes, UInt64(out.count) <= entry.dataBytes - offset else {
            throw .rangeNotSatisfiable(key: key, offset: offset, length: out.count, size: entry.dataBytes)
        }
        if out.count == 0 { return (entry.dataBytes, etag) }
        let bytes: [UInt8]
        do { bytes = try await journal.read(entry, offset: offset, count: out.count) } catch {
            // Deleted (uploaded) while read: the store has it now.
            guard journal.contains(entry.id) else { return nil }
            throw error
        }
        bytes.withUnsafeBytes { out.copyMemory(from: $0) }
        counters.add(counters.journalReads)
        return (entry.dataBytes, etag)
    }
}
