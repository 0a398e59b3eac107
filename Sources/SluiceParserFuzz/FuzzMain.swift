// Path: Sources/SluiceParserFuzz/FuzzMain.swift — entry points: libFuzzer's (built with
// `-sanitize=fuzzer -DSLUICE_LIBFUZZER`, see scripts/fuzz-parser.sh) or a bounded, deterministic
// mutation loop (a normal build).
import Glibc
import SluicePacket

/// Bytes of scratch for the rewrite checks: inputs are capped below this by libFuzzer's -max_len and
/// by the loop's `inputSizeMax`; larger inputs skip the rewrite checks.
let scratchSizeBytes = 1 << 16
nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: scratchSizeBytes, alignment: 64)

/// libFuzzer's callback: one input, must not crash. Returns 0 (the input may be kept in the corpus).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size + 8 <= scratchSizeBytes else { return 0 }
    _ = FuzzHarness.run(UnsafeRawBufferPointer(start: data, count: size), scratch: scratch)
    return 0
}

/// Writes one seed file per valid packet kind into `directory` (which must exist): the input format's
/// two selector bytes, then the packet. Returns how many were written.
func writeCorpus(to directory: String) -> Int {
    var written = 0
    for (index, seed) in Seeds.all().enumerated() {
        let selector = UInt8(FuzzHarness.linkTypes.firstIndex(of: seed.link)!)
        for options: UInt8 in [0b0000_1100, 0b0111_0001] {
            let bytes = [selector, options] + seed.bytes
            guard let file = fopen("\(directory)/seed-\(index)-\(options)", "wb") else { continue }
            if fwrite(bytes, 1, bytes.count, file) == bytes.count { written += 1 }
            fclose(file)
        }
    }
    return written
}

#if SLUICE_LIBFUZZER
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// SwiftPM links executables with `main` aliased to `<module>_main`; under libFuzzer that is this
/// function, which hands control to libFuzzer's driver. `SLUICE_FUZZ_WRITE_CORPUS=dir` writes the seed
/// corpus and exits instead.
@_cdecl("SluiceParserFuzz_main")
func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    if let directory = getenv("SLUICE_FUZZ_WRITE_CORPUS") {
        let written = writeCorpus(to: String(cString: directory))
        print("wrote \(written) seeds")
        return written > 0 ? 0 : 1
    }
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzTestOneInput)
}
#else
@main
struct SluiceParserFuzz {
    static func main() {
        var options = LoopOptions()
        var arguments = CommandLine.arguments.dropFirst()
        while let flag = arguments.popFirst() {
            switch flag {
            case "--iterations": options.iterations = value(arguments.popFirst(), Int.init)
            case "--seed": options.seed = value(arguments.popFirst(), UInt64.init)
            case "--seconds": options.seconds = value(arguments.popFirst(), UInt64.init)
            case "--write-corpus": options.corpusDirectory = value(arguments.popFirst()) { $0 }
            case "--bench": options.benchmark = true
            default: usage()
            }
        }
        if let directory = options.corpusDirectory {
            let written = writeCorpus(to: directory)
            print("wrote \(written) seeds to \(directory)")
            exit(written > 0 ? 0 : 1)
        }
        if options.benchmark {
            Benchmark.run(iterations: options.iterations)
            return
        }
        MutationLoop.run(iterations: options.iterations, seed: options.seed, seconds: options.seconds)
    }

    /// The flag's value parsed by `parse`, or the usage text and exit 2.
    static func value<Value>(_ text: String?, _ parse: (String) -> Value?) -> Value {
        guard let text, let value = parse(text) else { usage() }
        return value
    }

    static func usage() -> Never {
        print("""
            usage: SluiceParserFuzz [--iterations N] [--seed S] [--seconds T]
                                                           bounded mutation run (default 200000 inputs,
                                                           seed 1, stops early after T seconds if given)
                   SluiceParserFuzz --write-corpus DIR             write the seed corpus
                   SluiceParserFuzz --bench [--iterations N]       parse + classify ns per packet
            """)
        exit(2)
    }
}

struct LoopOptions {
    var iterations = 200_000
    var seed: UInt64 = 1
    var seconds: UInt64?
    var corpusDirectory: String?
    var benchmark = false
}
#endif
