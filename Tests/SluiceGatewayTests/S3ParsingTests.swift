// Path: Tests/SluiceGatewayTests/S3ParsingTests.swift — the pure parts of the S3 client: its XML
// reader, range answers (206, 200 with Content-Range, 200 with the whole object), listings, names
// and part checks; valid input and input going bad.
import Testing
@testable import SluiceGateway

@Suite(.timeLimit(.minutes(1))) struct S3XMLTests {
    @Test func readsElementsTextEntitiesAndCDATA() throws {
        let text = """
            <?xml version="1.0" encoding="UTF-8"?>
            <!-- a comment -->
            <s3:Error xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/" a='x>y'>
              <Code>NoSuchKey</Code><Message>a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos; &#65;&#x42;</Message>
              <Data><![CDATA[<raw & text>]]></Data><Empty/>
            </s3:Error>
            """
        let root = try S3XML.parse(Array(text.utf8))
        #expect(root.name == "Error")
        #expect(root.text("Code") == "NoSuchKey")
        #expect(root.text("Message") == "a <b> & \"c\" 'd' AB")
        #expect(root.text("Data") == "<raw & text>")
        #expect(root.child("Empty")?.text == "")
    }

    @Test(arguments: [
        "", "text only", "<a>", "<a></b>", "<a>&unknown;</a>", "<a>&amp</a>", "<a/><b/>",
        "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>", "<a b=\"unterminated></a>", "<a><!-- open </a>",
    ])
    func refusesMalformedDocuments(text: String) {
        #expect(throws: S3XMLError.self) { try S3XML.parse(Array(text.utf8)) }
    }

    @Test func boundsNestingDepth() {
        let deep = String(repeating: "<a>", count: S3XML.depthMax + 1) + String(repeating: "</a>", count: S3XML.depthMax + 1)
        #expect(throws: S3XMLError.self) { try S3XML.parse(Array(deep.utf8)) }
        let fits = String(repeating: "<a>", count: S3XML.depthMax) + String(repeating: "</a>", count: S3XML.depthMax)
        #expect(throws: Never.self) { try S3XML.parse(Array(fits.utf8)) }
    }

    @Test func escapeRoundTrips() throws {
        let value = "\"etag\" <&> 'x'"
        let root = try S3XML.parse(Array("<a>\(S3XML.escape(value))</a>".utf8))
        #expect(root.text == value)
    }
}

@Suite(.timeLimit(.minutes(1))) struct S3RangeReadingTests {
    private let object: [UInt8] = (0..<100).map { UInt8($0) }
    private let range = S3ByteRange(offset: 10, length: 5)

    @Test func partialContentIsUsedAsIs() throws {
        let data = try S3RangeReading.read(range: range, status: 206, contentRange: "bytes 10-14/100",
                                           body: Array(object[10..<15]), etag: "e")
        #expect(data == S3ObjectData(bytes: Array(object[10..<15]), offset: 10, objectSizeBytes: 100, etag: "e",
                                     answer: .partial))
    }

    @Test func status200WithContentRangeIsARangeAnswer() throws {
        let data = try S3RangeReading.read(range: range, status: 200, contentRange: "bytes 10-14/100",
                                           body: Array(object[10..<15]), etag: nil)
        #expect(data.answer == .partialWithStatus200)
        #expect(data.bytes == Array(object[10..<15]))
    }

    @Test func wholeObjectIsCutToTheRange() throws {
        let data = try S3RangeReading.read(range: range, status: 200, contentRange: nil, body: object, etag: nil)
        #expect(data == S3ObjectData(bytes: Array(object[10..<15]), offset: 10, objectSizeBytes: 100, etag: nil,
                                     answer: .rangeIgnored))
        // Past the end: what there is.
        let tail = try S3RangeReading.read(range: S3ByteRange(offset: 98, length: 10), status: 200, contentRange: nil,
                                           body: object, etag: nil)
        #expect(tail.bytes == [98, 99])
        #expect(throws: S3Error.Kind.rangeNotSatisfiable(S3ByteRange(offset: 100, length: 1), objectSizeBytes: 100)) {
            try S3RangeReading.read(range: S3ByteRange(offset: 100, length: 1), status: 200, contentRange: nil,
                                    body: object, etag: nil)
        }
    }

    @Test func shortAnswerOnlyAtTheObjectsEnd() throws {
        let tail = try S3RangeReading.read(range: S3ByteRange(offset: 95, length: 10), status: 206,
                                           contentRange: "bytes 95-99/100", body: Array(object[95...]), etag: nil)
        #expect(tail.bytes.count == 5)
        // Short in the middle of the object: not what was asked.
        #expect(throws: S3Error.Kind.self) {
            try S3RangeReading.read(range: range, status: 206, contentRange: "bytes 10-12/100",
                                    body: Array(object[10..<13]), etag: nil)
        }
    }

    @Test(arguments: [
        ("bytes 11-15/100", 5), ("bytes 10-20/100", 11), ("bytes 10-14/12", 5), ("bytes 10-14/100", 4),
        ("bytes 10-14", 5), ("items 10-14/100", 5), ("bytes a-b/100", 5), ("bytes 14-10/100", 5),
    ])
    func mismatchedPartialAnswersAreMalformed(contentRange: String, bodyCount: Int) {
        #expect(throws: S3Error.Kind.self) {
            try S3RangeReading.read(range: range, status: 206, contentRange: contentRange,
                                    body: [UInt8](repeating: 0, count: bodyCount), etag: nil)
        }
    }

    @Test func statusesThatDoNotFitAreMalformed() {
        #expect(throws: S3Error.Kind.self) {  // 206 without Content-Range
            try S3RangeReading.read(range: range, status: 206, contentRange: nil, body: [1, 2, 3, 4, 5], etag: nil)
        }
        #expect(throws: S3Error.Kind.self) {  // 206 to a GET without Range
            try S3RangeReading.read(range: nil, status: 206, contentRange: "bytes 0-0/1", body: [1], etag: nil)
        }
    }

    @Test func unsatisfiedTotal() {
        #expect(S3RangeReading.parseUnsatisfiedTotal("bytes */1000") == 1000)
        #expect(S3RangeReading.parseUnsatisfiedTotal("bytes 0-1/1000") == nil)
        #expect(S3RangeReading.parseUnsatisfiedTotal(nil) == nil)
    }
}

@Suite(.timeLimit(.minutes(1))) struct S3ResponsesTests {
    @Test func listPageDecodesURLEncodedKeys() throws {
        let text = """
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
            <IsTruncated>true</IsTruncated><Contents><Key>we+ird/ke%2By%25%3D%26%7E%281%29.bin</Key>
            <ETag>&quot;abc&quot;</ETag><Size>1000</Size></Contents><EncodingType>url</EncodingType>
            <NextContinuationToken>ZGlyL2Ex</NextContinuationToken></ListBucketResult>
            """
        let page = try S3Responses.listPage(try S3XML.parse(Array(text.utf8)))
        #expect(page.entries == [S3ListEntry(key: "we ird/ke+y%=&~(1).bin", sizeBytes: 1000, etag: "abc", lastModified: nil)])
        #expect(page.isTruncated)
        #expect(page.nextContinuationToken == "ZGlyL2Ex")
    }

    @Test(arguments: [
        "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        "<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",
        "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>",
        "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
        "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>%zz</Key><Size>1</Size></Contents></ListBucketResult>",
    ])
    func malformedListings(text: String) {
        #expect(throws: S3Error.Kind.self) { try S3Responses.listPage(try S3XML.parse(Array(text.utf8))) }
    }

    @Test func bucketAndKeyNames() {
        #expect(S3Responses.bucketProblem("my-bucket.1") == nil)
        for bad in ["ab", "Upper", "-lead", "trail-", "under_score", String(repeating: "a", count: 64)] {
            #expect(S3Responses.bucketProblem(bad) != nil, "\(bad)")
        }
        #expect(S3Responses.keyProblem("a/b c+é") == nil)
        #expect(S3Responses.keyProblem("") != nil)
        #expect(S3Responses.keyProblem(String(repeating: "k", count: S3Limits.keyBytesMax + 1)) != nil)
        #expect(S3Responses.keyProblem("tab\there") != nil)
    }

    @Test func partRules() {
        let minimum = S3Limits.partSizeMinBytes
        func part(_ number: Int, _ size: Int) -> S3UploadedPart { S3UploadedPart(partNumber: number, etag: "e", sizeBytes: size) }
        #expect(S3Responses.partsProblem([part(1, minimum), part(2, 1)], sizeMinBytes: minimum) == nil)
        #expect(S3Responses.partsProblem([part(1, 1)], sizeMinBytes: minimum) == nil)  // the only part is the last
        #expect(S3Responses.partsProblem([part(1, minimum - 1), part(2, 1)], sizeMinBytes: minimum) != nil)
        #expect(S3Responses.partsProblem([part(2, minimum), part(1, 1)], sizeMinBytes: minimum) != nil)
        #expect(S3Responses.partsProblem([part(1, minimum), part(1, 1)], sizeMinBytes: minimum) != nil)
        #expect(S3Responses.partsProblem([part(S3Limits.partNumberMax + 1, 1)], sizeMinBytes: minimum) != nil)
        #expect(S3Responses.partsProblem([], sizeMinBytes: minimum) != nil)
    }

    @Test func completeBodyQuotesAndEscapesETags() throws {
        let body = S3Responses.completeBody([S3UploadedPart(partNumber: 1, etag: "a&b", sizeBytes: 1)])
        let root = try S3XML.parse(Array(body.utf8))
        #expect(root.child("Part")?.text("ETag") == "\"a&b\"")
        #expect(root.child("Part")?.text("PartNumber") == "1")
    }

    @Test func etagsLoseTheirQuotes() {
        #expect(S3Client.unquoted("\"abc\"") == "abc")
        #expect(S3Client.unquoted("abc") == "abc")
        #expect(S3Client.unquoted("W/\"abc-2\"") == "abc-2")
    }

    @Test func configurationIsChecked() async {
        func make(_ change: (inout S3Configuration) -> Void) async -> S3ConfigurationError? {
            var configuration = S3Configuration(endpoint: "http://127.0.0.1:9000", accessKey: "a", secretKey: "s")
            change(&configuration)
            do {
                let client = try S3Client(configuration)
                await client.shutdown()  // async-http-client asserts a client is shut down before deinit
                return nil
            } catch {
                return error
            }
        }
        #expect(await make { _ in } == nil)
        #expect(await make { $0.endpoint = "https://127.0.0.1:9000" } != nil)
        #expect(await make { $0.endpoint = "http://127.0.0.1:9000/path" } != nil)
        #expect(await make { $0.callTimeoutMs = 0 } != nil)
        #expect(await make { $0.responseBytesMax = S3Limits.responseBytesMaxLimit + 1 } != nil)
        #expect(await make { $0.connectionsMax = 0 } != nil)
        #expect(await make { $0.secretKey = "" } != nil)
    }
}
