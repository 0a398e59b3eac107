// Path: Tests/SluiceGatewayTests/S3SignerTests.swift — SigV4 against AWS's published S3 examples
// (the "Signature Calculations for the Authorization Header" page of the S3 API reference:
// AKIAIOSFODNN7EXAMPLE, 2013-05-24, bucket examplebucket, virtual-hosted host name), and the URI
// encoding rules on their own.
import Testing
@testable import SluiceGateway

private let exampleSigner = S3Signer(accessKey: "AKIAIOSFODNN7EXAMPLE",
                                     secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
/// 2013-05-24T00:00:00Z.
private let exampleTime = S3Timestamp(secondsSince1970: 1_369_353_600)
private let exampleHost = "examplebucket.s3.amazonaws.com"

@Suite(.timeLimit(.minutes(1))) struct S3SignerTests {
    @Test func timestampIsBasicISO8601InUTC() {
        #expect(exampleTime.amzDate == "20130524T000000Z")
        #expect(exampleTime.dateStamp == "20130524")
        #expect(S3Timestamp(secondsSince1970: 0).amzDate == "19700101T000000Z")
        #expect(S3Timestamp(secondsSince1970: 1_700_000_000).amzDate == "20231114T221320Z")
    }

    /// AWS's "Example: GET Object": the first 10 bytes of test.txt, Range signed.
    @Test func getObjectExample() {
        let signature = exampleSigner.sign(
            method: "GET", path: "/test.txt", query: [],
            headers: [("Host", exampleHost), ("Range", "bytes=0-9"),
                      ("x-amz-content-sha256", S3Signer.emptyPayloadHash), ("x-amz-date", exampleTime.amzDate)],
            payloadHash: S3Signer.emptyPayloadHash, at: exampleTime)
        #expect(signature.canonicalRequest == """
            GET
            /test.txt

            host:examplebucket.s3.amazonaws.com
            range:bytes=0-9
            x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            x-amz-date:20130524T000000Z

            host;range;x-amz-content-sha256;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        #expect(signature.stringToSign == """
            AWS4-HMAC-SHA256
            20130524T000000Z
            20130524/us-east-1/s3/aws4_request
            7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972
            """)
        #expect(signature.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signature.authorization == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    /// AWS's "Example: PUT Object": `test$file.text` ($ encoded in the canonical URI), a signed body,
    /// a Date and an x-amz-storage-class header.
    @Test func putObjectExample() {
        let body = Array("Welcome to Amazon S3.".utf8)
        let hash = S3Signer.payloadHash(body)
        #expect(hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let signature = exampleSigner.sign(
            method: "PUT", path: "/test$file.text", query: [],
            headers: [("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("Host", exampleHost),
                      ("x-amz-date", exampleTime.amzDate), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                      ("x-amz-content-sha256", hash)],
            payloadHash: hash, at: exampleTime)
        #expect(signature.canonicalRequest == """
            PUT
            /test%24file.text

            date:Fri, 24 May 2013 00:00:00 GMT
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            x-amz-date:20130524T000000Z
            x-amz-storage-class:REDUCED_REDUNDANCY

            date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class
            44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            """)
        #expect(signature.stringToSign.hasSuffix("9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"))
        #expect(signature.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    /// AWS's "Example: GET Bucket Lifecycle": a query parameter without a value signs as `lifecycle=`.
    @Test func getBucketLifecycleExample() {
        let signature = exampleSigner.sign(
            method: "GET", path: "/", query: [("lifecycle", "")],
            headers: [("Host", exampleHost), ("x-amz-content-sha256", S3Signer.emptyPayloadHash),
                      ("x-amz-date", exampleTime.amzDate)],
            payloadHash: S3Signer.emptyPayloadHash, at: exampleTime)
        #expect(signature.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "lifecycle=")
        #expect(signature.stringToSign.hasSuffix("9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"))
        #expect(signature.signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    /// AWS's "Example: Get Bucket (List Objects)": query parameters sorted by name (given out of order here).
    @Test func listObjectsExample() {
        let signature = exampleSigner.sign(
            method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")],
            headers: [("Host", exampleHost), ("x-amz-content-sha256", S3Signer.emptyPayloadHash),
                      ("x-amz-date", exampleTime.amzDate)],
            payloadHash: S3Signer.emptyPayloadHash, at: exampleTime)
        #expect(signature.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2] == "max-keys=2&prefix=J")
        #expect(signature.stringToSign.hasSuffix("df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"))
        #expect(signature.signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    /// Path-style requests with keys and query values that need encoding, signed the same by botocore
    /// 1.43.11 (`S3SigV4Auth`, host 127.0.0.1:9000, 2026-12-06T08:30:00Z, payload signing turned off
    /// for the UNSIGNED-PAYLOAD case; how, in docs/GATEWAY.md).
    @Test(arguments: [
        ("GET", "/bkt/we ird/ke+y%=&~(1).bin", [(String, String)](), S3Signer.emptyPayloadHash,
         "7f3e217fceee52c0a8307ae677af72f95f5695991e249ac663eb334279fd7368"),
        ("GET", "/bkt", [("list-type", "2"), ("max-keys", "3"), ("encoding-type", "url"), ("prefix", "logs/2026 12/"),
                         ("continuation-token", "ZGlyL2Ex+/==")], S3Signer.emptyPayloadHash,
         "03d113e3fb7f51ee084079bdc9f292ed97893d3989b62d5965dcc6f13e3b5206"),
        ("PUT", "/bkt/unicode/é€😀", [("partNumber", "2"), ("uploadId", "f07244e4-a24d")], S3Signer.unsignedPayload,
         "5e512ea234e0ed5741d9cf8681a217505a54bfbc17322716b675ab50585cd347"),
        ("POST", "/bkt/odd/a?b#c[d]!$'*,;:@", [("uploads", "")], S3Signer.emptyPayloadHash,
         "fe769a1c6f871f2c7f1da13e9c13288581fcbbcef851d3b9c3b76e77b451b723"),
    ])
    func agreesWithBotocore(method: String, path: String, query: [(String, String)], payloadHash: String, expected: String) {
        let signer = S3Signer(accessKey: "sluice-test-access", secretKey: "sluice-test-secret-key")
        let time = S3Timestamp(secondsSince1970: 1_796_545_800)
        #expect(time.amzDate == "20261206T083000Z")
        let signature = signer.sign(method: method, path: path, query: query.map { (name: $0.0, value: $0.1) },
                                    headers: [("host", "127.0.0.1:9000"), ("x-amz-content-sha256", payloadHash),
                                              ("x-amz-date", time.amzDate)],
                                    payloadHash: payloadHash, at: time)
        #expect(signature.signature == expected)
        #expect(signature.signedHeaders == "host;x-amz-content-sha256;x-amz-date")
    }

    @Test func uriEncodingKeepsOnlyUnreservedBytes() {
        #expect(S3Signer.uriEncode("AZaz09-._~", keepSlash: false) == "AZaz09-._~")
        #expect(S3Signer.uriEncode("a b+c=d&e/f%g*h", keepSlash: false) == "a%20b%2Bc%3Dd%26e%2Ff%25g%2Ah")
        #expect(S3Signer.uriEncode("a b/c", keepSlash: true) == "a%20b/c")
        // UTF-8 bytes, uppercase hex.
        #expect(S3Signer.uriEncode("é€", keepSlash: true) == "%C3%A9%E2%82%AC")
        #expect(S3Signer.canonicalURI("") == "/")
        // S3 does not normalise paths: `//` and `.` segments stay.
        #expect(S3Signer.canonicalURI("/b//./k") == "/b//./k")
    }

    @Test func canonicalQuerySortsByEncodedNameThenValue() {
        let query = S3Signer.canonicalQuery([("prefix", "a/b c"), ("continuation-token", "x+y=="), ("list-type", "2"),
                                             ("b", "2"), ("b", "1")])
        #expect(query == "b=1&b=2&continuation-token=x%2By%3D%3D&list-type=2&prefix=a%2Fb%20c")
    }

    @Test func canonicalHeadersTrimAndMerge() {
        let headers = S3Signer.canonicalHeaders([("X-Amz-Meta-A", "  one   two  "), ("host", "h"), ("x-amz-meta-a", "three")])
        #expect(headers.map(\.name) == ["host", "x-amz-meta-a"])
        #expect(headers[1].value == "one two,three")
    }
}
