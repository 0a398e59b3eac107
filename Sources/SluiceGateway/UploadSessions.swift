// Path: Sources/SluiceGateway/UploadSessions.swift — the intermediate's side of writes: uploads the
// appliance streams over the last hop (`uploadBegin`, `uploadData`, `uploadComplete`), checked sector by
// sector on arrival, assembled into parts and written to the remote store (one put, or multipart).
import Synchronization

/// Bounds of the intermediate's uploads. Validated by `IntermediateServer.bind`.
public struct UploadConfiguration: Sendable {
    /// Objects up to this size go to the store in one put; larger ones in multipart parts of this size
    /// (the last one shorter). S3 needs at least 5 MiB for every part but the last.
    public var partBytes = 8 << 20
    /// Uploads open at once (over every connection); one more `uploadBegin` is `overloaded`.
    public var uploadsMax = 64
    /// Bytes held in memory over every upload (the part being assembled); a piece that would pass it
    /// is `overloaded` (the appliance waits and sends it again).
    public var bufferedBytesMax = 256 << 20
    /// An upload untouched this long is aborted when another begins.
    public var idleNs: UInt64 = 300_000_000_000

    public static let partBytesRange = (64 << 10)...(1 << 30)
    public init() {}
}

/// The uploads of one intermediate. Each upload has one piece at a time in progress (the appliance
/// sends them in order), so at most one part per upload is in flight to the store: parts in flight are
/// bounded by `uploadsMax`, memory by `bufferedBytesMax`.
final class UploadSessions: Sendable {
    private struct Session {
        var key: String
        var size: UInt64
        var received: UInt64 = 0
        /// Bytes of the part being assembled (received, not yet in the store).
        var pending: [UInt8] = []
        var storeUploadID: String?
        var parts: [RemoteUploadedPart] = []
        var busy = false
        var touchedNs: UInt64
    }

    private struct State {
        var sessions: [UInt64: Session] = [:]
        var nextID: UInt64 = 1
        var bufferedBytes = 0
    }

    let configuration: UploadConfiguration
    let units: GatewayUnits
    let counters: GatewayCounters
    private let state = Mutex(State())

    init(configuration: UploadConfiguration, units: GatewayUnits, counters: GatewayCounters) {
        self.configuration = configuration
        self.units = units
        self.counters = counters
    }

    var bufferedBytes: Int { state.withLock { $0.bufferedBytes } }
    var openUploads: Int { state.withLock { $0.sessions.count } }

    func begin(key: String, size: UInt64, store: any RemoteObjectStore) async -> GatewayReply {
        let now = monotonicNs()
        let idleNs = configuration.idleNs
        let uploadsMax = configuration.uploadsMax
        let (id, expired) = state.withLock { s -> (UInt64?, [Session]) in
            var expired: [Session] = []
            for (id, session) in s.sessions where !session.busy && now &- session.touchedNs > idleNs {
                expired.append(session)
                s.bufferedBytes -= session.pending.count
                s.sessions[id] = nil
            }
            guard s.sessions.count < uploadsMax else { return (nil, expired) }
            let id = s.nextID
            s.nextID += 1
            s.sessions[id] = Session(key: key, size: size, touchedNs: now)
            return (id, expired)
        }
        for session in expired {
            if let remote = session.storeUploadID { await store.abortUpload(key: session.key, uploadID: remote) }
        }
        guard let id else {
            counters.add(counters.uploadsOverloaded)
            return .failure(.overloaded, message: "\(uploadsMax) uploads already open")
        }
        counters.add(counters.uploadsBegun)
        return .uploadBegun(uploadID: id)
    }

    /// One piece: checked (in order, within the size, every sector's CRC), appended; a full part goes
    /// to the store before the reply. A store failure ends the upload (the appliance begins again).
    func data(_ piece: UploadDataRequest, store: any RemoteObjectStore) async -> GatewayReply {
        let count = piece.bytes.count
        let bufferedMax = configuration.bufferedBytesMax
        enum Take { case take(Session), ack(UInt64), fail(GatewayStatus, String) }
        let take = state.withLock { s -> Take in
            guard var session = s.sessions[piece.uploadID] else { return .fail(.noSuchUpload, "no upload \(piece.uploadID)") }
            guard !session.busy else { return .fail(.badRequest, "upload \(piece.uploadID) has a piece in progress") }
            let end = piece.offset + UInt64(count)
            if end <= session.received { return .ack(session.received) }  // a re-send after a lost reply
            guard piece.offset == session.received else {
                return .fail(.badRequest, "upload \(piece.uploadID): piece at \(piece.offset), expected \(session.received)")
            }
            guard end <= session.size else {
                return .fail(.badRequest, "upload \(piece.uploadID): piece ends at \(end), past the size \(session.size)")
            }
            guard s.bufferedBytes + count <= bufferedMax else {
                return .fail(.overloaded, "\(s.bufferedBytes) bytes of uploads buffered; \(count) more would pass \(bufferedMax)")
            }
            s.bufferedBytes += count
            session.busy = true
            s.sessions[piece.uploadID] = session
            return .take(session)
        }
        var session: Session
        switch take {
        case .ack(let received): return .uploadReceived(bytes: received)
        case .fail(let status, let message):
            if status == .overloaded { counters.add(counters.uploadsOverloaded) }
            return .failure(status, message: message)
        case .take(let taken): session = taken
        }
        let computed = sectorCRCs(piece.bytes, sectorBytes: units.sectorBytes)
        if let bad = computed.indices.first(where: { computed[$0] != piece.crcs[$0] }) {
            counters.add(counters.uploadCorruptRefused)
            release(piece.uploadID, session: nil, unbuffer: count)
            return .failure(.corrupt, message: "upload \(piece.uploadID): sector \(bad) of the piece at \(piece.offset) failed its CRC-32C; send it again")
        }
        counters.add(counters.uploadBytesReceived, count)
        session.pending += piece.bytes
        session.received += UInt64(count)
        var stored = 0
        // Full parts go now, unless this is the object's last byte (complete sends the rest).
        while session.pending.count >= configuration.partBytes && session.received < session.size
            || session.pending.count > configuration.partBytes {
            let part = Array(session.pending[0..<configuration.partBytes])
            do throws(RemoteStoreError) {
                if session.storeUploadID == nil { session.storeUploadID = try await store.createUpload(key: session.key) }
                let number = session.parts.count + 1
                session.parts.append(try await store.uploadPart(key: session.key, uploadID: session.storeUploadID!, partNumber: number, bytes: part))
                counters.add(counters.uploadPartsStored)
            } catch {
                await fail(piece.uploadID, session, unbuffer: session.pending.count + stored, store: store)
                return .failure(error.status, message: "upload \(piece.uploadID) of \(session.key): \(error)")
            }
            session.pending.removeFirst(configuration.partBytes)
            stored += configuration.partBytes
        }
        let received = session.received
        release(piece.uploadID, session: session, unbuffer: stored)
        return .uploadReceived(bytes: received)
    }

    /// The last part (or the whole object in one put), then the store's etag. The key's chunks and stat
    /// are dropped by the caller.
    func complete(_ id: UInt64, store: any RemoteObjectStore) async -> (GatewayReply, key: String?) {
        enum Taken { case session(Session), refused(GatewayReply) }
        let taken = state.withLock { s -> Taken in
            guard var session = s.sessions[id] else { return .refused(.failure(.noSuchUpload, message: "no upload \(id)")) }
            guard !session.busy else { return .refused(.failure(.badRequest, message: "upload \(id) has a piece in progress")) }
            guard session.received == session.size else {
                return .refused(.failure(.badRequest, message: "upload \(id) holds \(session.received) of \(session.size) bytes"))
            }
            session.busy = true
            s.sessions[id] = session
            return .session(session)
        }
        let session: Session
        switch taken {
        case .refused(let reply): return (reply, nil)
        case .session(let value): session = value
        }
        let etag: String
        do throws(RemoteStoreError) {
            if let remote = session.storeUploadID {
                var parts = session.parts
                if !session.pending.isEmpty {
                    parts.append(try await store.uploadPart(key: session.key, uploadID: remote, partNumber: parts.count + 1, bytes: session.pending))
                    counters.add(counters.uploadPartsStored)
                }
                etag = try await store.completeUpload(key: session.key, uploadID: remote, parts: parts)
            } else {
                etag = try await store.put(key: session.key, bytes: session.pending)
                counters.add(counters.uploadPartsStored)
            }
        } catch {
            await fail(id, session, unbuffer: session.pending.count, store: store)
            return (.failure(error.status, message: "upload \(id) of \(session.key): \(error)"), nil)
        }
        state.withLock { s in
            s.bufferedBytes -= session.pending.count
            s.sessions[id] = nil
        }
        counters.add(counters.uploadsCompleted)
        // An etag longer than the protocol carries is cut (the next stat reports the store's own).
        let carried = etag.utf8.count <= GatewayProtocol.etagBytesMax ? etag : String(etag.prefix(GatewayProtocol.etagBytesMax / 4))
        return (.uploadCompleted(size: session.size, etag: carried), session.key)
    }

    func abort(_ id: UInt64, store: any RemoteObjectStore) async -> GatewayReply {
        let session = state.withLock { s -> Session? in
            guard let session = s.sessions[id], !session.busy else { return nil }
            s.bufferedBytes -= session.pending.count
            s.sessions[id] = nil
            return session
        }
        if let remote = session?.storeUploadID { await store.abortUpload(key: session!.key, uploadID: remote) }
        return .uploadAborted
    }

    private func release(_ id: UInt64, session: Session?, unbuffer: Int) {
        state.withLock { s in
            s.bufferedBytes -= unbuffer
            precondition(s.bufferedBytes >= 0, "buffered bytes are counted once")
            if var kept = session ?? s.sessions[id] {
                kept.busy = false
                kept.touchedNs = monotonicNs()
                s.sessions[id] = kept
            }
        }
    }

    /// Ends an upload whose store call failed; `unbuffer` is what it had counted in `bufferedBytes`.
    private func fail(_ id: UInt64, _ session: Session, unbuffer: Int, store: any RemoteObjectStore) async {
        counters.add(counters.uploadsFailed)
        state.withLock { s in
            s.bufferedBytes -= unbuffer
            precondition(s.bufferedBytes >= 0, "buffered bytes are counted once")
            s.sessions[id] = nil
        }
        if let remote = session.storeUploadID { await store.abortUpload(key: session.key, uploadID: remote) }
    }
}
