// Path: Sources/SluiceEtcd/EtcdProto.swift — SluiceEtcd's types to and from etcd's protobuf messages
// (Generated/, from scripts/etcd-protos/). Pure conversions: no I/O, no state.
import Foundation

enum EtcdProto {
    // MARK: Requests

    static func rangeRequest(_ range: EtcdKeyRange, revision: Int64, limit: Int64,
                             serializable: Bool) -> Etcdserverpb_RangeRequest {
        let (key, rangeEnd) = range.bounds
        var request = Etcdserverpb_RangeRequest()
        request.key = Data(key)
        request.rangeEnd = Data(rangeEnd)
        request.revision = revision
        request.limit = limit
        request.serializable = serializable
        return request
    }

    static func putRequest(key: [UInt8], value: [UInt8], lease: Int64, previous: Bool) -> Etcdserverpb_PutRequest {
        var request = Etcdserverpb_PutRequest()
        request.key = Data(key)
        request.value = Data(value)
        request.lease = lease
        request.prevKv = previous
        return request
    }

    static func deleteRequest(_ range: EtcdKeyRange, previous: Bool) -> Etcdserverpb_DeleteRangeRequest {
        let (key, rangeEnd) = range.bounds
        var request = Etcdserverpb_DeleteRangeRequest()
        request.key = Data(key)
        request.rangeEnd = Data(rangeEnd)
        request.prevKv = previous
        return request
    }

    static func compare(_ compare: EtcdCompare) -> Etcdserverpb_Compare {
        var message = Etcdserverpb_Compare()
        message.key = Data(compare.key)
        switch compare.relation {
        case .equal: message.result = .equal
        case .notEqual: message.result = .notEqual
        case .less: message.result = .less
        case .greater: message.result = .greater
        }
        switch compare.target {
        case .value(let value):
            message.target = .value
            message.value = Data(value)
        case .version(let version):
            message.target = .version
            message.version = version
        case .createRevision(let revision):
            message.target = .create
            message.createRevision = revision
        case .modRevision(let revision):
            message.target = .mod
            message.modRevision = revision
        }
        return message
    }

    static func txnOp(_ op: EtcdTxnOp) -> Etcdserverpb_RequestOp {
        var message = Etcdserverpb_RequestOp()
        switch op {
        case .put(let key, let value, let lease):
            message.requestPut = putRequest(key: key, value: value, lease: lease, previous: false)
        case .get(let range):
            message.requestRange = rangeRequest(range, revision: 0, limit: 0, serializable: false)
        case .getFirst(let range, let limit):
            message.requestRange = rangeRequest(range, revision: 0, limit: limit, serializable: false)
        case .delete(let range):
            message.requestDeleteRange = deleteRequest(range, previous: false)
        }
        return message
    }

    static func txnRequest(compare: [EtcdCompare], success: [EtcdTxnOp], failure: [EtcdTxnOp]) -> Etcdserverpb_TxnRequest {
        var request = Etcdserverpb_TxnRequest()
        request.compare = compare.map(Self.compare)
        request.success = success.map(txnOp)
        request.failure = failure.map(txnOp)
        return request
    }

    static func watchCreateRequest(_ range: EtcdKeyRange, fromRevision: Int64) -> Etcdserverpb_WatchRequest {
        let (key, rangeEnd) = range.bounds
        var create = Etcdserverpb_WatchCreateRequest()
        create.key = Data(key)
        create.rangeEnd = Data(rangeEnd)
        create.startRevision = fromRevision
        // A response larger than etcd's request bound comes in pieces, each below our message bound.
        create.fragment = true
        var request = Etcdserverpb_WatchRequest()
        request.createRequest = create
        return request
    }

    // MARK: Responses

    static func keyValue(_ message: Mvccpb_KeyValue) -> EtcdKeyValue {
        EtcdKeyValue(
            key: [UInt8](message.key), value: [UInt8](message.value), createRevision: message.createRevision,
            modRevision: message.modRevision, version: message.version, lease: message.lease)
    }

    /// etcd sets a header on every response; one without is not etcd's.
    static func revision(_ header: Etcdserverpb_ResponseHeader, present: Bool, _ what: String) throws(EtcdError) -> Int64 {
        guard present else { throw .malformedResponse("\(what) without header") }
        return header.revision
    }

    static func rangeResult(_ message: Etcdserverpb_RangeResponse) throws(EtcdError) -> EtcdRangeResult {
        EtcdRangeResult(
            revision: try revision(message.header, present: message.hasHeader, "range response"),
            kvs: message.kvs.map(keyValue), more: message.more, count: message.count)
    }

    static func putResult(_ message: Etcdserverpb_PutResponse) throws(EtcdError) -> EtcdPutResult {
        EtcdPutResult(
            revision: try revision(message.header, present: message.hasHeader, "put response"),
            previous: message.hasPrevKv ? keyValue(message.prevKv) : nil)
    }

    static func deleteResult(_ message: Etcdserverpb_DeleteRangeResponse) throws(EtcdError) -> EtcdDeleteResult {
        EtcdDeleteResult(
            revision: try revision(message.header, present: message.hasHeader, "delete response"),
            deleted: message.deleted, previous: message.prevKvs.map(keyValue))
    }

    static func txnResult(_ message: Etcdserverpb_TxnResponse) throws(EtcdError) -> EtcdTxnResult {
        var results: [EtcdTxnOpResult] = []
        results.reserveCapacity(message.responses.count)
        for response in message.responses {
            switch response.response {
            case .responsePut(let put)?: results.append(.put(try putResult(put)))
            case .responseRange(let range)?: results.append(.get(try rangeResult(range)))
            case .responseDeleteRange(let delete)?: results.append(.delete(try deleteResult(delete)))
            case .responseTxn?: throw .malformedResponse("nested txn response to a txn without nested txns")
            case nil: throw .malformedResponse("txn response op of unknown kind")
            }
        }
        return EtcdTxnResult(
            revision: try revision(message.header, present: message.hasHeader, "txn response"),
            succeeded: message.succeeded, results: results)
    }

    static func status(_ message: Etcdserverpb_StatusResponse, endpoint: String) throws(EtcdError) -> EtcdStatus {
        guard message.hasHeader else { throw .malformedResponse("status without header") }
        return EtcdStatus(
            version: message.version, memberID: message.header.memberID, leaderID: message.leader,
            revision: message.header.revision, raftTerm: message.raftTerm, raftIndex: message.raftIndex,
            dbSizeBytes: message.dbSize, endpoint: endpoint)
    }

    static func watchEvent(_ message: Mvccpb_Event) throws(EtcdError) -> EtcdWatchEvent {
        guard message.hasKv else { throw .malformedResponse("watch event without kv") }
        let kind: EtcdWatchEvent.Kind
        switch message.type {
        case .put: kind = .put
        case .delete: kind = .delete
        case .UNRECOGNIZED(let value): throw .malformedResponse("watch event type \(value)")
        }
        return EtcdWatchEvent(kind: kind, kv: keyValue(message.kv))
    }
}
