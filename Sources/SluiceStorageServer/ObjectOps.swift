// Path: Sources/SluiceStorageServer/ObjectOps.swift — object operations (create, delete, truncate,
// stat, list) against the node.
import SluicePageStore

/// Runs an object operation. Blocks (mutex, disk): call on a pool thread. A list longer than one
/// reply frame holds is cut to what fits; the reply still carries the total count.
func executeObjectOp(_ request: StorageRequest, node: StorageNode, frameBytesMax: Int) throws(ObjectStoreError) -> StorageReply {
    switch request {
    case .createObject(let objectID): return .osn(try node.create(objectID: objectID))
    case .deleteObject(let objectID): return .osn(try node.delete(objectID: objectID))
    case .truncateObject(let objectID, let pageCount): return .osn(try node.truncate(objectID: objectID, pageCount: pageCount))
    case .statObject(let objectID): return .object(ObjectSummary(try node.stat(objectID: objectID)))
    case .listObjects:
        let all = node.list().sorted { $0.objectID < $1.objectID }
        // Reply header 11 bytes + two u32 counts, then 24 bytes per object.
        let fitCount = max(0, (frameBytesMax - StorageProtocol.replyHeaderBytes - 8) / 24)
        return .objects(totalCount: UInt32(clamping: all.count), objects: all.prefix(fitCount).map(ObjectSummary.init))
    case .readPage, .readPages, .writePages, .statNode, .syncNode:
        preconditionFailure("not an object operation: \(request.opcode)")
    }
}

/// The reply for an object error case, nil for any other.
func objectReply(for error: ObjectStoreError) -> StorageReply? {
    switch error {
    case .objectExists(let objectID): .objectExists(objectID: objectID)
    case .noSuchObject(let objectID): .noSuchObject(objectID: objectID)
    default: nil
    }
}

extension ObjectSummary {
    init(_ info: ObjectInfo) { self.init(objectID: info.objectID, pageCount: info.pageCount, lastOSN: info.lastOSN) }
}
