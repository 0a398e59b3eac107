// Path: Tests/SluiceServiceTests/MetricsTextTests.swift — the Prometheus text parser behind `sluice stats`.
import Testing
@testable import SluiceService

@Suite struct MetricsTextTests {
    @Test func samplesWithAndWithoutLabels() throws {
        let text = """
            # HELP sluice_up 1 while the service runs.
            # TYPE sluice_up gauge
            sluice_up 1
            # TYPE sluice_stage_calls_total counter
            sluice_stage_calls_total{pipeline="edge",stage="classify",worker="1"} 12
            sluice_worker_utilisation{worker="0", core="2",} 0.25

            """
        let samples = try MetricsText.parse(text)
        #expect(samples == [
            MetricSample(name: "sluice_up", value: 1),
            MetricSample(name: "sluice_stage_calls_total",
                         labels: ["pipeline": "edge", "stage": "classify", "worker": "1"], value: 12),
            MetricSample(name: "sluice_worker_utilisation", labels: ["worker": "0", "core": "2"], value: 0.25),
        ])
    }

    @Test func labelValueEscapes() throws {
        let text = #"m{a="say \"hi\"",b="back\\slash",c="two\nlines",d="{,}= #"} 1"#
        let samples = try MetricsText.parse(text)
        #expect(samples.count == 1)
        #expect(samples.first?.labels == ["a": #"say "hi""#, "b": #"back\slash"#, "c": "two\nlines", "d": "{,}= #"])
    }

    @Test func specialValuesExponentsAndTimestamps() throws {
        let text = """
            a NaN
            b +Inf
            c -Inf
            d 1.5e-06
            e -2E+3
            f nan
            g inf
            h 7 1700000000000
            i 12.0
            """
        let samples = try MetricsText.parse(text)
        #expect(samples.count == 9)
        #expect(samples[0].value.isNaN)
        #expect(samples[1].value == .infinity)
        #expect(samples[2].value == -.infinity)
        #expect(samples[3].value == 1.5e-6)
        #expect(samples[4].value == -2000)
        #expect(samples[5].value.isNaN)
        #expect(samples[6].value == .infinity)
        #expect(samples[7].value == 7)
        #expect(samples[7].timestampMs == 1_700_000_000_000)
        #expect(samples[8].value == 12)
        #expect(samples[8].timestampMs == nil)
    }

    @Test func crlfLineEndingsAndBlankLines() throws {
        let samples = try MetricsText.parse("a 1\r\n\r\n  \r\nb{x=\"y\"} 2\r\n")
        #expect(samples == [MetricSample(name: "a", value: 1), MetricSample(name: "b", labels: ["x": "y"], value: 2)])
    }

    @Test(arguments: [
        ("ok 1\n{a=\"b\"} 1", 2, MetricsTextError.Reason.badMetricName),
        ("ok 1\nok 2\nm{a=\"b\" 1", 3, .expectedCommaOrBrace),
        ("m{a=\"b\\t\"} 1", 1, .badEscape("t")),
        ("m{a=\"unterminated} 1", 1, .unterminatedLabelValue),
        ("m{a=b} 1", 1, .expectedQuote),
        ("m{a} 1", 1, .expectedEquals),
        ("m{9a=\"b\"} 1", 1, .badLabelName),
        ("m{a=\"1\",a=\"2\"} 1", 1, .duplicateLabel("a")),
        ("# TYPE m counter\nm", 2, .missingValue),
        ("\n\nm 12abc", 3, .badValue("12abc")),
        ("m 0x10", 1, .badValue("0x10")),
        ("m infinity", 1, .badValue("infinity")),
        ("m 1 12.5", 1, .badTimestamp("12.5")),
        ("m 1 2 3", 1, .trailingText("3")),
        ("# TYPE m\nm 1", 1, .badTypeLine),
        ("# TYPE m countr\nm 1", 1, .badTypeLine),
    ])
    func malformedLineIsNamed(text: String, line: Int, reason: MetricsTextError.Reason) {
        #expect(throws: MetricsTextError(line: line, reason: reason)) { try MetricsText.parse(text) }
    }

    @Test func errorNamesTheLineAndTheValue() {
        #expect(throws: MetricsTextError(line: 2, reason: .badValue("one"))) { try MetricsText.parse("a 1\nb{x=\"1\"} one\n") }
    }

    @Test func labelCountIsBounded() {
        let labels = (0...MetricsText.labelCountMax).map { "l\($0)=\"v\"" }.joined(separator: ",")
        #expect(throws: MetricsTextError(line: 1, reason: .tooManyLabels)) { try MetricsText.parse("m{\(labels)} 1") }
        let fewer = (1...MetricsText.labelCountMax).map { "l\($0)=\"v\"" }.joined(separator: ",")
        #expect((try? MetricsText.parse("m{\(fewer)} 1"))?.first?.labels.count == MetricsText.labelCountMax)
    }

    @Test func helpTextAndOtherCommentsAreFree() throws {
        let samples = try MetricsText.parse("# HELP m anything {at all} \\\\ goes\n# just a comment\n#\nm 3\n")
        #expect(samples == [MetricSample(name: "m", value: 3)])
    }
}
