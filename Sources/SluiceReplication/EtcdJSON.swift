// Path: Sources/SluiceReplication/EtcdJSON.swift — etcd's JSON gateway encoding: bytes as base64,
// 64-bit integers as decimal strings, fields left out when zero (proto3's JSON mapping).
import Foundation

enum EtcdJSON {
    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func encode(_ object: [String: Any]) -> [UInt8] {
        // Only dictionaries of strings, numbers, bools and arrays built here: anything else is a bug.
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(object, into: &out)
        return out
    }

    private static func write(_ value: Any, into out: inout [UInt8]) {
        switch value {
        case let string as String:
            out.append(UInt8(ascii: "\""))
            for byte in string.utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    out.append(UInt8(ascii: "\\")); out.append(byte)
                case 0..<0x20:
                    out.append(contentsOf: Array("\\u00".utf8))
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(hex[Int(byte >> 4)]); out.append(hex[Int(byte & 15)])
                default: out.append(byte)
                }
            }
            out.append(UInt8(ascii: "\""))
        case let bool as Bool: out.append(contentsOf: Array((bool ? "true" : "false").utf8))
        case let int as Int: out.append(contentsOf: Array(String(int).utf8))
        case let int as Int64: out.append(contentsOf: Array(String(int).utf8))
        case let array as [Any]:
            out.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case let dictionary as [String: Any]:
            out.append(UInt8(ascii: "{"))
            for (index, (key, element)) in dictionary.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                write(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        default:
            preconditionFailure("etcd request JSON: unsupported value \(type(of: value))")
        }
    }

    static func decodeObject(_ bytes: some Collection<UInt8>, _ what: String) throws(EtcdError) -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)),
              let dictionary = object as? [String: Any] else {
            throw .malformedResponse("\(what): not a JSON object")
        }
        return dictionary
    }

    /// A proto3 int64 (a string) or a JSON number; absent means 0.
    static func int64(_ object: [String: Any], _ field: String) throws(EtcdError) -> Int64 {
        guard let raw = object[field] else { return 0 }
        if let string = raw as? String, let value = Int64(string) { return value }
        if let number = raw as? NSNumber, !(raw is Bool) { return number.int64Value }
        throw .malformedResponse("field \(field) is not an int64")
    }

    static func uint64(_ object: [String: Any], _ field: String) throws(EtcdError) -> UInt64 {
        guard let raw = object[field] else { return 0 }
        if let string = raw as? String, let value = UInt64(string) { return value }
        if let number = raw as? NSNumber, !(raw is Bool) { return number.uint64Value }
        throw .malformedResponse("field \(field) is not a uint64")
    }

    static func bool(_ object: [String: Any], _ field: String) -> Bool { (object[field] as? Bool) ?? false }

    static func bytes(_ object: [String: Any], _ field: String) throws(EtcdError) -> [UInt8] {
        guard let raw = object[field] else { return [] }
        guard let string = raw as? String, let data = Data(base64Encoded: string) else {
            throw .malformedResponse("field \(field) is not base64")
        }
        return [UInt8](data)
    }

    static func objects(_ object: [String: Any], _ field: String) throws(EtcdError) -> [[String: Any]] {
        guard let raw = object[field] else { return [] }
        guard let array = raw as? [[String: Any]] else { throw .malformedResponse("field \(field) is not a list") }
        return array
    }

    static func headerRevision(_ object: [String: Any]) throws(EtcdError) -> Int64 {
        guard let header = object["header"] as? [String: Any] else { throw .malformedResponse("no header") }
        return try int64(header, "revision")
    }

    static func keyValue(_ object: [String: Any]) throws(EtcdError) -> EtcdKeyValue {
        EtcdKeyValue(
            key: try bytes(object, "key"), value: try bytes(object, "value"),
            createRevision: try int64(object, "create_revision"), modRevision: try int64(object, "mod_revision"),
            version: try int64(object, "version"), lease: try int64(object, "lease"))
    }

    // MARK: Requests

    static func rangeRequest(_ range: EtcdKeyRange, revision: Int64, limit: Int64, serializable: Bool) -> [String: Any] {
        let (key, rangeEnd) = range.bounds
        var request: [String: Any] = ["key": base64(key)]
        if !rangeEnd.isEmpty { request["range_end"] = base64(rangeEnd) }
        if revision > 0 { request["revision"] = String(revision) }
        if limit > 0 { request["limit"] = String(limit) }
        if serializable { request["serializable"] = true }
        return request
    }

    static func putRequest(key: [UInt8], value: [UInt8], lease: Int64, previous: Bool) -> [String: Any] {
        var request: [String: Any] = ["key": base64(key), "value": base64(value)]
        if lease != 0 { request["lease"] = String(lease) }
        if previous { request["prev_kv"] = true }
        return request
    }

    static func deleteRequest(_ range: EtcdKeyRange, previous: Bool) -> [String: Any] {
        let (key, rangeEnd) = range.bounds
        var request: [String: Any] = ["key": base64(key)]
        if !rangeEnd.isEmpty { request["range_end"] = base64(rangeEnd) }
        if previous { request["prev_kv"] = true }
        return request
    }

    static func compare(_ compare: EtcdCompare) -> [String: Any] {
        var object: [String: Any] = ["key": base64(compare.key), "result": compare.relation.rawValue]
        switch compare.target {
        case .value(let value):
            object["target"] = "VALUE"
            object["value"] = base64(value)
        case .version(let version):
            object["target"] = "VERSION"
            object["version"] = String(version)
        case .createRevision(let revision):
            object["target"] = "CREATE"
            object["create_revision"] = String(revision)
        case .modRevision(let revision):
            object["target"] = "MOD"
            object["mod_revision"] = String(revision)
        }
        return object
    }

    static func txnOp(_ op: EtcdTxnOp) -> [String: Any] {
        switch op {
        case .put(let key, let value, let lease):
            ["request_put": putRequest(key: key, value: value, lease: lease, previous: false)]
        case .get(let range):
            ["request_range": rangeRequest(range, revision: 0, limit: 0, serializable: false)]
        case .getFirst(let range, let limit):
            ["request_range": rangeRequest(range, revision: 0, limit: limit, serializable: false)]
        case .delete(let range):
            ["request_delete_range": deleteRequest(range, previous: false)]
        }
    }

    // MARK: Responses

    static func rangeResult(_ object: [String: Any]) throws(EtcdError) -> EtcdRangeResult {
        var kvs: [EtcdKeyValue] = []
        for kv in try objects(object, "kvs") { kvs.append(try keyValue(kv)) }
        return EtcdRangeResult(
            revision: try headerRevision(object), kvs: kvs, more: bool(object, "more"), count: try int64(object, "count"))
    }

    static func putResult(_ object: [String: Any]) throws(EtcdError) -> EtcdPutResult {
        let previous: EtcdKeyValue?
        if let prev = object["prev_kv"] as? [String: Any] { previous = try keyValue(prev) } else { previous = nil }
        return EtcdPutResult(revision: try headerRevision(object), previous: previous)
    }

    static func deleteResult(_ object: [String: Any]) throws(EtcdError) -> EtcdDeleteResult {
        var previous: [EtcdKeyValue] = []
        for kv in try objects(object, "prev_kvs") { previous.append(try keyValue(kv)) }
        return EtcdDeleteResult(revision: try headerRevision(object), deleted: try int64(object, "deleted"), previous: previous)
    }

    static func txnResult(_ object: [String: Any]) throws(EtcdError) -> EtcdTxnResult {
        var results: [EtcdTxnOpResult] = []
        for response in try objects(object, "responses") {
            if let put = response["response_put"] as? [String: Any] {
                results.append(.put(try putResult(put)))
            } else if let range = response["response_range"] as? [String: Any] {
                results.append(.get(try rangeResult(range)))
            } else if let delete = response["response_delete_range"] as? [String: Any] {
                results.append(.delete(try deleteResult(delete)))
            } else {
                throw .malformedResponse("txn response of unknown kind: \(response.keys.sorted())")
            }
        }
        return EtcdTxnResult(revision: try headerRevision(object), succeeded: bool(object, "succeeded"), results: results)
    }

    static func watchEvent(_ object: [String: Any]) throws(EtcdError) -> EtcdWatchEvent {
        guard let kv = object["kv"] as? [String: Any] else { throw .malformedResponse("watch event without kv") }
        let kind: EtcdWatchEvent.Kind
        switch object["type"] as? String {
        case nil, "PUT": kind = .put
        case "DELETE": kind = .delete
        case let other?: throw .malformedResponse("watch event type \(other)")
        }
        return EtcdWatchEvent(kind: kind, kv: try keyValue(kv))
    }
}
