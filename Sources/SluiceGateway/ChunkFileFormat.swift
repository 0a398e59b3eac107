// Path: Sources/SluiceGateway/ChunkFileFormat.swift — the chunk cache's file: header (key, etag, lengths,
// per-sector CRC-32Cs, its own CRC) then the chunk's bytes; writing one, and reading a directory back.
import CShims
import Glibc
import SluiceCore
import SystemPackage

/// One chunk per file, big-endian:
///
///     0  magic "SLGWCHK1"        24 u64 chunk index
///     8  u32 format version (1)  32 u32 data bytes (1...chunkBytes)
///    12  u32 header bytes        36 u16 key bytes, 38 u16 etag bytes
///    16  u32 chunk bytes         40 key, etag, one u32 CRC-32C per data sector,
///    20  u32 sector bytes           u32 CRC-32C of all the above; zeros up to `header bytes` (4 KiB aligned)
///
/// then the data. The sector CRCs are the ones taken when the chunk was fetched; the header CRC
/// keeps a damaged table from vouching for damaged data.
enum ChunkFileFormat {
    static let magic: [UInt8] = Array("SLGWCHK1".utf8)
    static let formatVersion: UInt32 = 1
    static let fixedBytes = 40
    /// Headers are padded to this, so data reads start page aligned.
    static let alignment = 4096
    static let suffix = ".chunk"
    static let temporarySuffix = ".tmp"

    static func headerBytes(keyBytes: Int, etagBytes: Int, sectorCount: Int) -> Int {
        let used = fixedBytes + keyBytes + etagBytes + sectorCount * 4 + 4
        return (used + alignment - 1) / alignment * alignment
    }

    /// `<crc32c(key), 8 hex>-<chunk, 16 hex>-<sequence, 16 hex>.chunk`. The sequence makes every file
    /// name new, so a reader holding an old name never opens a newer file of the same chunk.
    static func fileName(key: String, chunk: UInt64, sequence: UInt64) -> String {
        let keyCRC = Array(key.utf8).withUnsafeBytes { sluice_crc32c(0, $0.baseAddress, $0.count) }
        return hex(UInt64(keyCRC), digits: 8) + "-" + hex(chunk, digits: 16) + "-" + hex(sequence, digits: 16) + suffix
    }

    /// The sequence number of a chunk file's name, nil when the name is not of that form.
    static func sequence(ofFileName name: String) -> UInt64? {
        guard name.hasSuffix(suffix) else { return nil }
        let parts = name.dropLast(suffix.count).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 8, parts[1].count == 16, parts[2].count == 16 else { return nil }
        return UInt64(parts[2], radix: 16)
    }

    static func hex(_ value: UInt64, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }

    static func encodeHeader(key: String, etag: String, chunk: UInt64, dataBytes: Int, crcs: [UInt32], units: GatewayUnits) -> [UInt8] {
        let keyBytes = Array(key.utf8)
        let etagBytes = Array(etag.utf8)
        let total = headerBytes(keyBytes: keyBytes.count, etagBytes: etagBytes.count, sectorCount: crcs.count)
        var out: [UInt8] = []
        out.reserveCapacity(total)
        out += magic
        put(formatVersion, &out)
        put(UInt32(total), &out)
        put(UInt32(units.chunkBytes), &out)
        put(UInt32(units.sectorBytes), &out)
        put(chunk, &out)
        put(UInt32(dataBytes), &out)
        put(UInt16(keyBytes.count), &out)
        put(UInt16(etagBytes.count), &out)
        out += keyBytes
        out += etagBytes
        for crc in crcs { put(crc, &out) }
        put(out.withUnsafeBytes { sluice_crc32c(0, $0.baseAddress, $0.count) }, &out)
        out += [UInt8](repeating: 0, count: total - out.count)
        return out
    }

    struct Header {
        var key: String
        var etag: String
        var chunk: UInt64
        var dataBytes: Int
        var headerBytes: Int
        var crcs: [UInt32]
    }

    /// Checks the fixed part (the first `fixedBytes`): magic, version, units, bounds. Returns the
    /// header length to read, or why the file is discarded.
    static func checkFixed(_ bytes: [UInt8], units: GatewayUnits) -> Result<Int, ChunkDiscard> {
        guard bytes.count >= fixedBytes, Array(bytes[0..<8]) == magic, get(UInt32.self, bytes, 8) == formatVersion else {
            return .failure(.badHeader)
        }
        guard get(UInt32.self, bytes, 16) == UInt32(units.chunkBytes), get(UInt32.self, bytes, 20) == UInt32(units.sectorBytes) else {
            return .failure(.otherUnits)
        }
        let total = Int(get(UInt32.self, bytes, 12))
        let dataBytes = Int(get(UInt32.self, bytes, 32))
        let keyBytes = Int(get(UInt16.self, bytes, 36))
        let etagBytes = Int(get(UInt16.self, bytes, 38))
        guard (1...units.chunkBytes).contains(dataBytes), (1...GatewayProtocol.keyBytesMax).contains(keyBytes),
              etagBytes <= GatewayProtocol.etagBytesMax else { return .failure(.badHeader) }
        let sectorCount = (dataBytes + units.sectorBytes - 1) / units.sectorBytes
        guard total == headerBytes(keyBytes: keyBytes, etagBytes: etagBytes, sectorCount: sectorCount) else { return .failure(.badHeader) }
        return .success(total)
    }

    /// Decodes a whole header whose fixed part passed `checkFixed`, checking its CRC.
    static func decodeHeader(_ bytes: [UInt8], units: GatewayUnits) -> Result<Header, ChunkDiscard> {
        let dataBytes = Int(get(UInt32.self, bytes, 32))
        let keyBytes = Int(get(UInt16.self, bytes, 36))
        let etagBytes = Int(get(UInt16.self, bytes, 38))
        let sectorCount = (dataBytes + units.sectorBytes - 1) / units.sectorBytes
        let crcAt = fixedBytes + keyBytes + etagBytes + sectorCount * 4
        let computed = bytes.withUnsafeBytes { sluice_crc32c(0, $0.baseAddress, crcAt) }
        guard computed == get(UInt32.self, bytes, crcAt) else { return .failure(.badHeader) }
        guard let key = String(validating: bytes[fixedBytes..<(fixedBytes + keyBytes)], as: UTF8.self),
              let etag = String(validating: bytes[(fixedBytes + keyBytes)..<(fixedBytes + keyBytes + etagBytes)], as: UTF8.self) else {
            return .failure(.badHeader)
        }
        let crcStart = fixedBytes + keyBytes + etagBytes
        let crcs = (0..<sectorCount).map { get(UInt32.self, bytes, crcStart + $0 * 4) }
        return .success(Header(key: key, etag: etag, chunk: get(UInt64.self, bytes, 24), dataBytes: dataBytes,
                               headerBytes: bytes.count, crcs: crcs))
    }

    /// Writes `fileName.tmp`, then renames it to `fileName`: the name appears only once complete.
    static func write(directory: String, fileName: String, header: [UInt8], data: [UInt8]) -> SyscallError? {
        let path = directory + "/" + fileName
        let temporary = path + temporarySuffix
        let fd: Int32
        switch GatewayFiles.open(temporary, O_WRONLY | O_CREAT | O_TRUNC) {
        case .success(let opened): fd = opened
        case .failure(let error): return error
        }
        var failure = header.withUnsafeBytes { GatewayFiles.pwrite(fd, $0, offset: 0, what: temporary) }
        if failure == nil {
            failure = data.withUnsafeBytes { GatewayFiles.pwrite(fd, $0, offset: Int64(header.count), what: temporary) }
        }
        Glibc.close(fd)
        if failure == nil, rename(temporary, path) != 0 { failure = SyscallError("rename(\(temporary))", Errno(rawValue: errno)) }
        if failure != nil { unlink(temporary) }
        return failure
    }

    // MARK: Reading a directory back

    struct Found {
        var id: ChunkCache.ChunkID
        var entry: ChunkCache.Entry
        var sequence: UInt64
        var mtimeNs: UInt64
    }

    struct Loaded {
        /// Kept chunks, least recently written first, within the byte bound.
        var entries: [Found]
        var report: ChunkCacheOpenReport
        var sequenceMax: UInt64
    }

    /// Reads every chunk file of `directory`, verifying headers and every data sector, and deletes what
    /// fails, `.tmp` leftovers, older duplicates, and the least recently written chunks above
    /// `capacityBytes`. Other files are left alone. Blocks.
    static func load(directory: String, units: GatewayUnits, capacityBytes: Int) throws(SyscallError) -> Loaded {
        var report = ChunkCacheOpenReport()
        var sequenceMax: UInt64 = 0
        var byChunk: [ChunkCache.ChunkID: Found] = [:]
        func discard(_ name: String, _ reason: ChunkDiscard) {
            Glibc.unlink(directory + "/" + name)
            report.discarded[reason, default: 0] += 1
        }
        for name in try listDirectory(directory) {
            if name.hasSuffix(temporarySuffix) {
                discard(name, .unfinishedWrite)
                continue
            }
            guard let sequence = sequence(ofFileName: name) else { continue }
            sequenceMax = max(sequenceMax, sequence)
            switch verify(path: directory + "/" + name, units: units) {
            case .failure(let reason):
                discard(name, reason)
            case .success(let (header, mtimeNs)):
                let id = ChunkCache.ChunkID(key: header.key, chunk: header.chunk)
                let entry = ChunkCache.Entry(etag: header.etag, dataBytes: header.dataBytes, headerBytes: header.headerBytes,
                                             fileName: name, crcs: header.crcs)
                let found = Found(id: id, entry: entry, sequence: sequence, mtimeNs: mtimeNs)
                if let other = byChunk[id] {
                    let (keep, drop) = other.sequence > sequence ? (other, found) : (found, other)
                    discard(drop.entry.fileName, .duplicate)
                    byChunk[id] = keep
                } else {
                    byChunk[id] = found
                }
            }
        }
        // Newest first: keep while they fit, then discard the older rest.
        let newestFirst = byChunk.values.sorted { ($0.mtimeNs, $0.sequence) > ($1.mtimeNs, $1.sequence) }
        var kept: [Found] = []
        var bytes = 0
        for found in newestFirst {
            if bytes + found.entry.fileBytes <= capacityBytes {
                bytes += found.entry.fileBytes
                kept.append(found)
            } else {
                discard(found.entry.fileName, .overCapacity)
            }
        }
        report.kept = kept.count
        report.keptBytes = bytes
        return Loaded(entries: kept.reversed(), report: report, sequenceMax: sequenceMax)
    }

    /// Verifies one chunk file completely: header, length, every sector. Returns its header and mtime.
    static func verify(path: String, units: GatewayUnits) -> Result<(Header, UInt64), ChunkDiscard> {
        guard case .success(let fd) = GatewayFiles.open(path, O_RDONLY) else { return .failure(.unreadable) }
        defer { Glibc.close(fd) }
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0 else { return .failure(.unreadable) }
        guard info.st_size >= fixedBytes, case .success(let fixed) = GatewayFiles.pread(fd, count: fixedBytes, offset: 0, what: path) else {
            return .failure(.badHeader)
        }
        let headerBytes: Int
        switch checkFixed(fixed, units: units) {
        case .success(let total): headerBytes = total
        case .failure(let reason): return .failure(reason)
        }
        guard info.st_size >= headerBytes, case .success(let raw) = GatewayFiles.pread(fd, count: headerBytes, offset: 0, what: path) else {
            return .failure(.wrongLength)
        }
        let header: Header
        switch decodeHeader(raw, units: units) {
        case .success(let decoded): header = decoded
        case .failure(let reason): return .failure(reason)
        }
        guard Int(info.st_size) == headerBytes + header.dataBytes else { return .failure(.wrongLength) }
        guard case .success(let data) = GatewayFiles.pread(fd, count: header.dataBytes, offset: Int64(headerBytes), what: path) else {
            return .failure(.unreadable)
        }
        guard sectorCRCs(data, sectorBytes: units.sectorBytes) == header.crcs else { return .failure(.corruptData) }
        let mtimeNs = UInt64(bitPattern: Int64(info.st_mtim.tv_sec)) &* 1_000_000_000 &+ UInt64(info.st_mtim.tv_nsec)
        return .success((header, mtimeNs))
    }

    /// The names in `directory` (not `.` and `..`).
    static func listDirectory(_ directory: String) throws(SyscallError) -> [String] {
        guard let handle = opendir(directory) else { throw SyscallError("opendir(\(directory))", Errno(rawValue: errno)) }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func put<T: FixedWidthInteger>(_ value: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out += $0 }
    }

    static func get<T: FixedWidthInteger>(_ type: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value = value << 8 | T(bytes[offset + index]) }
        return value
    }
}
