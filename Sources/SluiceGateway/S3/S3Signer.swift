// Path: Sources/SluiceGateway/S3/S3Signer.swift — AWS Signature Version 4, header form, for S3:
// canonical request, string to sign, signing key, Authorization header (swift-crypto's SHA256, HMAC).
import Crypto
import Glibc

/// A UTC second as SigV4 writes it: `amzDate` is ISO 8601 basic (`20130524T000000Z`), `dateStamp`
/// its day (`20130524`), which scopes the signing key.
public struct S3Timestamp: Sendable, Equatable {
    public let amzDate: String
    public var dateStamp: String { String(amzDate.prefix(8)) }

    /// The UTC time `secondsSince1970` (the Unix epoch). Pure: no clock, no time zone.
    public init(secondsSince1970: Int64) {
        var seconds = time_t(secondsSince1970)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func digits(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        amzDate = digits(parts.tm_year + 1900, 4) + digits(parts.tm_mon + 1, 2) + digits(parts.tm_mday, 2) + "T"
            + digits(parts.tm_hour, 2) + digits(parts.tm_min, 2) + digits(parts.tm_sec, 2) + "Z"
    }

    /// The current time from the system's real-time clock (SigV4 signs wall-clock time: S3 refuses a
    /// request more than 15 minutes off its own clock).
    public static func now() -> S3Timestamp {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return S3Timestamp(secondsSince1970: Int64(now.tv_sec))
    }
}

/// Everything a signature was computed from, kept so tests can compare each step with AWS's examples.
public struct S3Signature: Sendable, Equatable {
    public let canonicalRequest: String
    public let stringToSign: String
    /// Lowercase hex HMAC-SHA256 of `stringToSign` under the day's signing key.
    public let signature: String
    /// The signed header names, lowercase, sorted, joined by `;`.
    public let signedHeaders: String
    /// The value of the `Authorization` header.
    public let authorization: String
}

/// Signs S3 requests with one access key (AWS SigV4, `Authorization` header form). A value type:
/// share it freely. Never blocks; allocates the strings it returns.
public struct S3Signer: Sendable {
    public static let algorithm = "AWS4-HMAC-SHA256"
    /// SHA-256 of no bytes: the payload hash of a request without a body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// The payload hash of a request whose body is not covered by the signature.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"

    public let accessKey: String
    private let secretKey: String
    public let region: String
    public let service: String

    public init(accessKey: String, secretKey: String, region: String = "us-east-1", service: String = "s3") {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.region = region
        self.service = service
    }

    /// The credential scope: `DATE/REGION/SERVICE/aws4_request`.
    public func scope(_ time: S3Timestamp) -> String { "\(time.dateStamp)/\(region)/\(service)/aws4_request" }

    /// Signs one request. `path` is the raw path (`/bucket/key`, not encoded: encoded here once per
    /// segment, as S3 wants); `query` raw names and values; `headers` every header to sign (names in
    /// any case; `host`, `x-amz-date` and `x-amz-content-sha256` among them, as S3 requires);
    /// `payloadHash` the hex SHA-256 of the body or `unsignedPayload`.
    public func sign(method: String, path: String, query: [(name: String, value: String)],
                     headers: [(name: String, value: String)], payloadHash: String,
                     at time: S3Timestamp) -> S3Signature {
        let canonicalHeaders = Self.canonicalHeaders(headers)
        let signedHeaders = canonicalHeaders.map(\.name).joined(separator: ";")
        let canonicalRequest = [
            method,
            Self.canonicalURI(path),
            Self.canonicalQuery(query),
            canonicalHeaders.map { "\($0.name):\($0.value)\n" }.joined(),
            signedHeaders,
            payloadHash,
        ].joined(separator: "\n")
        let stringToSign = [
            Self.algorithm, time.amzDate, scope(time), Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8))),
        ].joined(separator: "\n")
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(
            for: Array(stringToSign.utf8), using: SymmetricKey(data: signingKey(time))))
        let authorization = "\(Self.algorithm) Credential=\(accessKey)/\(scope(time)),"
            + "SignedHeaders=\(signedHeaders),Signature=\(signature)"
        return S3Signature(canonicalRequest: canonicalRequest, stringToSign: stringToSign, signature: signature,
                           signedHeaders: signedHeaders, authorization: authorization)
    }

    /// HMAC chain `AWS4`+secret → date → region → service → `aws4_request`.
    func signingKey(_ time: S3Timestamp) -> [UInt8] {
        var key = Array("AWS4\(secretKey)".utf8)
        for part in [time.dateStamp, region, service, "aws4_request"] {
            key = Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: SymmetricKey(data: key)))
        }
        return key
    }

    // MARK: Canonical forms (pure; the client builds its URLs with the same functions, so what is
    // sent is what was signed)

    /// The path with each byte outside `A-Z a-z 0-9 - . _ ~ /` as `%XX` (uppercase hex). S3 encodes
    /// once and keeps `/`; `//`, `.` and `..` segments are not normalised.
    public static func canonicalURI(_ path: String) -> String {
        path.isEmpty ? "/" : uriEncode(path, keepSlash: true)
    }

    /// `name=value` pairs, both URI-encoded (`/` too), sorted by encoded name then value, joined by `&`;
    /// a name without a value is `name=`.
    public static func canonicalQuery(_ query: [(name: String, value: String)]) -> String {
        query.map { (uriEncode($0.name, keepSlash: false), uriEncode($0.value, keepSlash: false)) }
            .sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    /// Lowercase names, values trimmed with inner runs of spaces made one, sorted by name; values of
    /// a name given twice are joined by `,` in the order given.
    static func canonicalHeaders(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        var merged: [(name: String, value: String)] = []
        for (name, value) in headers {
            let lower = name.lowercased()
            let clean = trimAll(value)
            if let index = merged.firstIndex(where: { $0.name == lower }) {
                merged[index].value += "," + clean
            } else {
                merged.append((lower, clean))
            }
        }
        return merged.sorted { $0.name < $1.name }
    }

    private static func trimAll(_ value: String) -> String {
        value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
    }

    /// SigV4's URI encoding of the UTF-8 bytes of `text`: unreserved characters as they are, `/` kept
    /// when `keepSlash`, every other byte `%XX` with uppercase hex.
    public static func uriEncode(_ text: String, keepSlash: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            if isUnreserved(byte) || (keepSlash && byte == UInt8(ascii: "/")) {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hexDigitsUpper[Int(byte >> 4)])
                out.append(hexDigitsUpper[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
             UInt8(ascii: "~"):
            true
        default:
            false
        }
    }

    private static let hexDigitsUpper = Array("0123456789ABCDEF".utf8)
    private static let hexDigitsLower = Array("0123456789abcdef".utf8)

    /// Lowercase hex of `bytes`.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        for byte in bytes {
            out.append(hexDigitsLower[Int(byte >> 4)])
            out.append(hexDigitsLower[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Hex SHA-256 of `bytes`: the `x-amz-content-sha256` of a signed payload.
    public static func payloadHash(_ bytes: [UInt8]) -> String {
        hex(SHA256.hash(data: bytes))
    }
}
