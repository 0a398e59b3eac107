// Path: Sources/SluiceGateway/S3/S3XML.swift — the XML S3 answers with (elements, text, the five
// predefined entities, character references, CDATA, comments), read into a small tree. No DTDs, no
// entity definitions, no namespaces beyond dropping a prefix: what S3 sends, bounded in depth and size.

/// One element: its local name (a `prefix:` dropped), its text (every text child joined, entities
/// decoded, whitespace kept) and its child elements in order.
struct S3XMLElement: Sendable, Equatable {
    var name: String
    var text: String
    var children: [S3XMLElement]

    func child(_ name: String) -> S3XMLElement? { children.first { $0.name == name } }
    func children(_ name: String) -> [S3XMLElement] { children.filter { $0.name == name } }
    /// The text of the first child called `name`.
    func text(_ name: String) -> String? { child(name)?.text }
}

/// Why a body is not the XML S3 sends. `offset` is the byte where reading stopped.
struct S3XMLError: Error, Equatable, CustomStringConvertible {
    let reason: String
    let offset: Int
    var description: String { "XML: \(reason) at byte \(offset)" }
}

enum S3XML {
    /// Deepest nesting read (S3 answers nest 3 deep) and most elements in one document (a full
    /// ListObjectsV2 page has about 7000).
    static let depthMax = 32
    static let elementCountMax = 200_000

    /// Reads one document: an optional `<?xml ...?>` declaration and comments, one root element,
    /// then only whitespace and comments. A `<!DOCTYPE` is refused (no entity expansion, ever).
    static func parse(_ bytes: [UInt8]) throws(S3XMLError) -> S3XMLElement {
        var reader = Reader(bytes: bytes)
        try reader.skipMisc()
        guard reader.peek("<") else { throw reader.error("no root element") }
        let root = try reader.element(depth: 1)
        try reader.skipMisc()
        guard reader.atEnd else { throw reader.error("content after the root element") }
        return root
    }

    /// `text` with `&`, `<`, `>`, `"` and `'` escaped, for request bodies.
    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(character)
            }
        }
        return out
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0
        var elementCount = 0

        var atEnd: Bool { index >= bytes.count }

        func error(_ reason: String) -> S3XMLError { S3XMLError(reason: reason, offset: index) }

        func peek(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard index + count <= bytes.count else { return false }
            return text.withUTF8Buffer { prefix in
                for offset in 0..<count where bytes[index + offset] != prefix[offset] { return false }
                return true
            }
        }

        mutating func skipWhitespace() {
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        }

        /// Moves past the first `terminator` from here; throws when there is none.
        mutating func skip(past terminator: StaticString, _ what: String) throws(S3XMLError) {
            while index < bytes.count {
                if peek(terminator) {
                    index += terminator.utf8CodeUnitCount
                    return
                }
                index += 1
            }
            throw error("unterminated \(what)")
        }

        /// Whitespace, comments and processing instructions (the declaration among them).
        mutating func skipMisc() throws(S3XMLError) {
            while true {
                skipWhitespace()
                if peek("<?") {
                    try skip(past: "?>", "processing instruction")
                } else if peek("<!--") {
                    try skip(past: "-->", "comment")
                } else if peek("<!") {
                    throw error("DOCTYPE or other declaration refused")
                } else {
                    return
                }
            }
        }

        mutating func name() throws(S3XMLError) -> String {
            let start = index
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: ">") || byte == UInt8(ascii: "/") || [0x20, 0x09, 0x0A, 0x0D].contains(byte) {
                    break
                }
                index += 1
            }
            guard index > start else { throw error("empty element name") }
            let full = String(decoding: bytes[start..<index], as: UTF8.self)
            if let colon = full.lastIndex(of: ":") { return String(full[full.index(after: colon)...]) }
            return full
        }

        /// Attributes are read past (quoted values may hold `>`) and dropped: S3's answers carry
        /// only namespace declarations.
        mutating func skipAttributes() throws(S3XMLError) {
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: ">") || byte == UInt8(ascii: "/") { return }
                if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                    index += 1
                    while index < bytes.count, bytes[index] != byte { index += 1 }
                    guard index < bytes.count else { throw error("unterminated attribute value") }
                }
                index += 1
            }
            throw error("unterminated start tag")
        }

        /// The element starting here (at `<`), its content and its end tag.
        mutating func element(depth: Int) throws(S3XMLError) -> S3XMLElement {
            guard depth <= S3XML.depthMax else { throw error("nested deeper than \(S3XML.depthMax)") }
            elementCount += 1
            guard elementCount <= S3XML.elementCountMax else { throw error("more than \(S3XML.elementCountMax) elements") }
            index += 1  // "<"
            var element = S3XMLElement(name: try name(), text: "", children: [])
            try skipAttributes()
            if peek("/>") {
                index += 2
                return element
            }
            index += 1  // ">"
            var text: [UInt8] = []
            while true {
                guard index < bytes.count else { throw error("unterminated element \(element.name)") }
                if peek("</") {
                    index += 2
                    let closing = try name()
                    skipWhitespace()
                    guard closing == element.name, peek(">") else { throw error("end tag \(closing) closes \(element.name)") }
                    index += 1
                    element.text = String(decoding: text, as: UTF8.self)
                    return element
                } else if peek("<!--") {
                    try skip(past: "-->", "comment")
                } else if peek("<![CDATA[") {
                    index += 9
                    let start = index
                    try skip(past: "]]>", "CDATA section")
                    text.append(contentsOf: bytes[start..<(index - 3)])
                } else if peek("<?") {
                    try skip(past: "?>", "processing instruction")
                } else if peek("<!") {
                    throw error("declaration inside an element")
                } else if peek("<") {
                    element.children.append(try self.element(depth: depth + 1))
                } else if peek("&") {
                    try entity(into: &text)
                } else {
                    text.append(bytes[index])
                    index += 1
                }
            }
        }

        /// One `&...;` reference: the five predefined entities and `&#N;` / `&#xH;` character references.
        mutating func entity(into text: inout [UInt8]) throws(S3XMLError) {
            let start = index
            while index < bytes.count, bytes[index] != UInt8(ascii: ";"), index - start < 12 { index += 1 }
            guard index < bytes.count, bytes[index] == UInt8(ascii: ";") else {
                index = start
                throw error("unterminated entity reference")
            }
            let body = String(decoding: bytes[(start + 1)..<index], as: UTF8.self)
            index += 1
            let scalar: Unicode.Scalar?
            switch body {
            case "amp": scalar = "&"
            case "lt": scalar = "<"
            case "gt": scalar = ">"
            case "quot": scalar = "\""
            case "apos": scalar = "'"
            default:
                if body.hasPrefix("#x") || body.hasPrefix("#X") {
                    scalar = UInt32(body.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                } else if body.hasPrefix("#") {
                    scalar = UInt32(body.dropFirst(1), radix: 10).flatMap(Unicode.Scalar.init)
                } else {
                    scalar = nil
                }
            }
            guard let scalar else {
                index = start
                throw error("unknown entity &\(body);")
            }
            text.append(contentsOf: Array(String(Character(scalar)).utf8))
        }
    }
}
