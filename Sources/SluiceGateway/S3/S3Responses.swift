// Path: Sources/SluiceGateway/S3/S3Responses.swift — checks of names and parts before a call, the
// bodies the client sends, and the XML answers it reads (ListObjectsV2). Pure: no I/O.

enum S3Responses {
    /// Why `bucket` is not an S3 bucket name (3...63 of `a-z 0-9 . -`, starting and ending with a
    /// letter or digit), or nil.
    static func bucketProblem(_ bucket: String) -> String? {
        let bytes = Array(bucket.utf8)
        guard (S3Limits.bucketNameBytesMin...S3Limits.bucketNameBytesMax).contains(bytes.count) else {
            return "bucket name \"\(bucket)\" not \(S3Limits.bucketNameBytesMin)...\(S3Limits.bucketNameBytesMax) bytes"
        }
        func isAlnum(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        let allowed = bytes.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
        guard allowed, isAlnum(bytes[0]), isAlnum(bytes[bytes.count - 1]) else {
            return "bucket name \"\(bucket)\" not lowercase letters, digits, '.' and '-'"
        }
        return nil
    }

    /// Why `key` cannot be sent (empty, longer than `S3Limits.keyBytesMax` bytes, or holding a NUL
    /// or a control character, which no store takes back), or nil.
    static func keyProblem(_ key: String) -> String? {
        let count = key.utf8.count
        guard count >= 1, count <= S3Limits.keyBytesMax else {
            return "key of \(count) bytes not 1...\(S3Limits.keyBytesMax)"
        }
        guard !key.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return "key holds a control character" }
        return nil
    }

    /// Why `parts` cannot complete an upload, or nil: numbers strictly increasing in 1...10,000, each
    /// part at most `partSizeMaxBytes`, every one but the last at least `sizeMinBytes`.
    static func partsProblem(_ parts: [S3UploadedPart], sizeMinBytes: Int) -> String? {
        guard !parts.isEmpty, parts.count <= S3Limits.partNumberMax else {
            return "\(parts.count) parts, not 1...\(S3Limits.partNumberMax)"
        }
        var previous = 0
        for (index, part) in parts.enumerated() {
            guard part.partNumber > previous, part.partNumber <= S3Limits.partNumberMax else {
                return "part numbers must increase within 1...\(S3Limits.partNumberMax) (part \(part.partNumber) after \(previous))"
            }
            guard part.sizeBytes <= S3Limits.partSizeMaxBytes else {
                return "part \(part.partNumber) of \(part.sizeBytes) bytes is larger than \(S3Limits.partSizeMaxBytes)"
            }
            if index < parts.count - 1, part.sizeBytes < sizeMinBytes {
                return "part \(part.partNumber) of \(part.sizeBytes) bytes is smaller than \(sizeMinBytes) and not the last"
            }
            previous = part.partNumber
        }
        return nil
    }

    /// The CompleteMultipartUpload body: each part's number and quoted ETag, in order.
    static func completeBody(_ parts: [S3UploadedPart]) -> String {
        var body = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for part in parts {
            body += "<Part><PartNumber>\(part.partNumber)</PartNumber>"
                + "<ETag>\(S3XML.escape("\"\(part.etag)\""))</ETag></Part>"
        }
        return body + "</CompleteMultipartUpload>"
    }

    /// A `<ListBucketResult>`: every `<Contents>` (Key and Size required), IsTruncated and
    /// NextContinuationToken (required when truncated). Keys are URL-decoded when EncodingType is url.
    static func listPage(_ root: S3XMLElement) throws(S3Error.Kind) -> S3ListPage {
        let encoded = root.text("EncodingType") == "url"
        var entries: [S3ListEntry] = []
        let contents = root.children("Contents")
        guard contents.count <= S3Limits.listKeysMax else {
            throw .malformedResponse("\(contents.count) keys in one page, more than \(S3Limits.listKeysMax)")
        }
        for content in contents {
            guard let rawKey = content.text("Key"), let size = content.text("Size").flatMap({ Int64($0) }), size >= 0 else {
                throw .malformedResponse("a <Contents> without Key or Size")
            }
            guard let key = encoded ? urlDecode(rawKey) : rawKey else {
                throw .malformedResponse("key \"\(rawKey)\" is not URL-encoded")
            }
            entries.append(S3ListEntry(key: key, sizeBytes: size, etag: S3Client.unquoted(content.text("ETag") ?? ""),
                                       lastModified: content.text("LastModified")))
        }
        let truncated: Bool
        switch root.text("IsTruncated") {
        case "true": truncated = true
        case "false", nil: truncated = false
        case let other?: throw .malformedResponse("IsTruncated \"\(other)\"")
        }
        let token = root.text("NextContinuationToken").flatMap { $0.isEmpty ? nil : $0 }
        guard !truncated || token != nil else { throw .malformedResponse("truncated listing without NextContinuationToken") }
        return S3ListPage(entries: entries, isTruncated: truncated, nextContinuationToken: truncated ? token : nil)
    }

    /// `%XX` to bytes and `+` to a space (S3's `encoding-type=url`). Nil on a bad escape or bytes
    /// that are not UTF-8.
    static func urlDecode(_ text: String) -> String? {
        var out: [UInt8] = []
        var bytes = text.utf8.makeIterator()
        while let byte = bytes.next() {
            switch byte {
            case UInt8(ascii: "+"):
                out.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard let high = bytes.next().flatMap(hexValue), let low = bytes.next().flatMap(hexValue) else { return nil }
                out.append(high << 4 | low)
            default:
                out.append(byte)
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
