// Path: Sources/SluiceGateway/S3/S3RangeReading.swift — what a GET's answer means for the range it
// asked for: 206 with Content-Range (S3), 200 with Content-Range (rclone 1.75.2), or 200 with the
// whole object (servers that ignore Range), each checked against the request. Pure: no I/O.

enum S3RangeReading {
    /// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`). Nil when the value has another form.
    static func parseContentRange(_ value: String) -> (first: Int64, last: Int64, total: Int64?)? {
        let text = value.trimmingSpaces()
        guard text.hasPrefix("bytes ") else { return nil }
        let spec = text.dropFirst(6)
        let halves = spec.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count == 2 else { return nil }
        let bounds = halves[0].split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let first = Int64(bounds[0]), let last = Int64(bounds[1]), first >= 0 else { return nil }
        if halves[1] == "*" { return (first, last, nil) }
        guard let total = Int64(halves[1]), total >= 0 else { return nil }
        return (first, last, total)
    }

    /// The TOTAL of a 416's `bytes */TOTAL`, when sent.
    static func parseUnsatisfiedTotal(_ value: String?) -> Int64? {
        guard let text = value?.trimmingSpaces(), text.hasPrefix("bytes */") else { return nil }
        return Int64(text.dropFirst(8)).flatMap { $0 >= 0 ? $0 : nil }
    }

    /// The bytes a 200 or 206 answer to a GET gives for `range` (nil: the whole object). A partial
    /// answer must start at the range's offset and end at its last byte, or earlier only at the
    /// object's end; a whole object is cut to the range here. Throws what the caller wraps in `S3Error`.
    static func read(range: S3ByteRange?, status: Int, contentRange: String?, body: [UInt8],
                     etag: String?) throws(S3Error.Kind) -> S3ObjectData {
        guard let range else {
            guard status == 200 else { throw .malformedResponse("status \(status) to a GET without Range") }
            return S3ObjectData(bytes: body, offset: 0, objectSizeBytes: Int64(body.count), etag: etag,
                                answer: .wholeObject)
        }
        if let contentRange {
            return try partial(range, status: status, contentRange: contentRange, body: body, etag: etag)
        }
        guard status == 200 else { throw .malformedResponse("status \(status) without Content-Range") }
        // The server ignored Range and sent the whole object: cut the range out of it.
        let total = Int64(body.count)
        guard range.offset < total else { throw .rangeNotSatisfiable(range, objectSizeBytes: total) }
        let end = min(range.offset + range.length, total)
        return S3ObjectData(bytes: Array(body[Int(range.offset)..<Int(end)]), offset: range.offset,
                            objectSizeBytes: total, etag: etag, answer: .rangeIgnored)
    }

    private static func partial(_ range: S3ByteRange, status: Int, contentRange: String, body: [UInt8],
                                etag: String?) throws(S3Error.Kind) -> S3ObjectData {
        guard status == 206 || status == 200 else { throw .malformedResponse("status \(status) with Content-Range") }
        guard let (first, last, total) = parseContentRange(contentRange) else {
            throw .malformedResponse("Content-Range \"\(contentRange)\" unreadable")
        }
        let mismatch = S3Error.Kind.malformedResponse("Content-Range \"\(contentRange)\" answers \(range)")
        guard first == range.offset, last >= first, last <= range.last else { throw mismatch }
        if let total {
            // Shorter than asked only where the object ends.
            guard last < total, last == range.last || last == total - 1 else { throw mismatch }
        } else {
            guard last == range.last else { throw mismatch }
        }
        guard Int64(body.count) == last - first + 1 else {
            throw .malformedResponse("\(body.count) body bytes for Content-Range \"\(contentRange)\"")
        }
        return S3ObjectData(bytes: body, offset: first, objectSizeBytes: total, etag: etag,
                            answer: status == 206 ? .partial : .partialWithStatus200)
    }
}

extension String {
    func trimmingSpaces() -> String {
        var text = Substring(self)
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
