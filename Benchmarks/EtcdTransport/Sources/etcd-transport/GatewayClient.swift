// Path: Benchmarks/EtcdTransport/Sources/etcd-transport/GatewayClient.swift — etcd v3 over its JSON gateway
// (`POST /v3/kv/...`, served by etcd 3.4 and later) through async-http-client, HTTP/1.1 keep-alive: Sluice's
// client before it moved to gRPC, kept here, cut down to the two calls the measurement makes (put-if-absent
// as a txn, a one-key range), so the gateway stays measurable against SluiceEtcd's gRPC client.
// Same request shapes, same hand-written JSON encoder, same deadline handling (the body raced against a
// timer) as Sluice's gateway client had.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// A failed gateway call: what, and why. The measurement stops at the first one.
struct GatewayError: Error, CustomStringConvertible {
    var description: String
}

/// One etcd endpoint over the JSON gateway. Safe to share between tasks: calls run concurrently over
/// pooled keep-alive connections (at most `connectionsMax`). Call `shutdown()` once done.
final class GatewayClient: Sendable {
    static let connectionsMax = 32
    static let responseBytesMax = 8 << 20
    private let http: HTTPClient
    private let endpoint: String
    private let timeout: Duration

    /// `endpoint` is `http://HOST:PORT`; `timeoutMs` bounds each call, its response body included.
    init(endpoint: String, timeoutMs: Int64 = 2_000) {
        var settings = HTTPClient.Configuration()
        settings.timeout = .init(connect: .milliseconds(500))
        settings.connectionPool.retryConnectionEstablishment = false
        settings.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = Self.connectionsMax
        settings.httpVersion = .http1Only
        settings.decompression = .disabled
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: settings)
        self.endpoint = endpoint
        self.timeout = .milliseconds(timeoutMs)
    }

    func shutdown() async { try? await http.shutdown() }

    /// Puts `value` at `key` only if the key does not exist (txn: create_revision == 0); returns whether it did.
    func putIfAbsent(_ key: [UInt8], _ value: [UInt8]) async throws -> Bool {
        let request: [String: Any] = [
            "compare": [["key": GatewayJSON.base64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"]],
            "success": [["request_put": ["key": GatewayJSON.base64(key), "value": GatewayJSON.base64(value)]]],
            "failure": [[String: Any]](),
        ]
        let object = try await call("/v3/kv/txn", request)
        return (object["succeeded"] as? Bool) ?? false
    }

    /// The value of `key` (a linearizable range of one key), or nil when it does not exist.
    func get(_ key: [UInt8]) async throws -> [UInt8]? {
        let object = try await call("/v3/kv/range", ["key": GatewayJSON.base64(key)])
        guard let kvs = object["kvs"] as? [[String: Any]], let first = kvs.first else { return nil }
        guard let text = first["value"] as? String else { return [] }
        guard let data = Data(base64Encoded: text) else { throw GatewayError(description: "range value is not base64") }
        return [UInt8](data)
    }

    private struct DeadlinePassed: Error {}

    /// One POST with a JSON body; the JSON object answered. The whole of it is bounded by the deadline
    /// (async-http-client's own deadline ends at the response head, so the body is raced against a timer).
    private func call(_ path: String, _ request: [String: Any]) async throws -> [String: Any] {
        var prepared = HTTPClientRequest(url: endpoint + path)
        prepared.method = .POST
        prepared.headers.add(name: "Content-Type", value: "application/json")
        prepared.body = .bytes(GatewayJSON.encode(request))
        let httpRequest = prepared
        let http = self.http
        let deadline = ContinuousClock.now + timeout
        let (seconds, attoseconds) = timeout.components
        let nioDeadline = NIODeadline.now() + .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        let (status, body) = try await withThrowingTaskGroup(of: (UInt, ByteBuffer).self) { group in
            group.addTask {
                let response = try await http.execute(httpRequest, deadline: nioDeadline)
                return (response.status.code, try await response.body.collect(upTo: Self.responseBytesMax))
            }
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                throw DeadlinePassed()
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
        guard status == 200 else {
            throw GatewayError(description: "\(path): HTTP \(status): \(String(decoding: body.readableBytesView.prefix(512), as: UTF8.self))")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
            throw GatewayError(description: "\(path): answer is not a JSON object")
        }
        return object
    }
}

/// etcd's gateway JSON: bytes as base64, 64-bit integers as decimal strings (proto3's JSON mapping).
/// The encoder is hand-written (bytes appended), as Sluice's was: Foundation's JSONSerialization spent
/// most of a replicated node's CPU escaping base64 payloads character by character.
enum GatewayJSON {
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
}
