// Path: Sources/SluiceStorageServer/ObjectOps.swift — object operations (create, delete, truncate,
// stat, list) against the node. Until the node offers them they answer `unknownOpcode`.
import SluicePageStore

/// Runs an object operation. Blocks (mutex, disk): call on a pool thread.
func executeObjectOp(_ request: StorageRequest, node: StorageNode, frameBytesMax: Int) throws(ObjectStoreError) -> StorageReply {
    .unknownOpcode(request.opcode.rawValue)
}

/// The reply for an object error case, nil for any other.
func objectReply(for error: ObjectStoreError) -> StorageReply? {
    nil
}
