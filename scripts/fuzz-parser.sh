#!/usr/bin/env bash
# Path: scripts/fuzz-parser.sh — fuzzes SluicePacket's parser, classifier and rewriter for a bounded
# time with libFuzzer (+ AddressSanitizer), starting from a seed corpus of valid packets of every kind.
#
#   FUZZ_SECONDS=30 scripts/fuzz-parser.sh      # `make test` runs it short, `make soak` longer
#   scripts/fuzz-parser.sh --build-only         # only the libFuzzer build; exits with its status
#
# `make test` runs the --build-only part beside the release probe's build, then this script with
# FUZZ_PREBUILT=1 when that build succeeded: the binary is then used as built (a no-op `swift build` of
# the package still costs ~12 s of planning). Without FUZZ_PREBUILT=1 it always builds first.
#
# Builds the fuzz variant into its own scratch path (.build-fuzz) so the normal build stays untouched.
# Exits non-zero on a crash or broken invariant; the input is saved under .build-fuzz/artifacts/ and can
# be replayed with `.build-fuzz/release/SluiceParserFuzz <file>`. If the libFuzzer build fails (no
# libclang_rt.fuzzer in the toolchain), falls back to the normal build's bounded mutation loop for the
# same time, and says so (FUZZ_FALLBACK=1 forces that path). Under CI=true there is no fallback: CI's
# toolchain has libFuzzer, so a failed libFuzzer build (or FUZZ_FALLBACK=1) fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"

SWIFT=${SWIFT:-swift}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
SCRATCH=.build-fuzz
CORPUS=$SCRATCH/corpus            # grows across runs: soak runs start where the last one stopped
SEEDS=$SCRATCH/seeds
ARTIFACTS=$SCRATCH/artifacts
BINARY=$SCRATCH/release/SluiceParserFuzz

# The libFuzzer variant's build, in one place for both modes.
fuzz_build() {
    "$SWIFT" build -c release --scratch-path "$SCRATCH" --product SluiceParserFuzz \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSLUICE_LIBFUZZER
}

if [ "${1:-}" = --build-only ]; then
    fuzz_build
    exit $?
fi

fallback() {
    if [ "${CI:-}" = true ]; then
        echo "fuzz-parser: FAILED: the libFuzzer build failed (or FUZZ_FALLBACK=1), and under CI=true the" \
             "random mutation loop is no substitute for coverage-guided fuzzing; see the build output above" >&2
        return 1
    fi
    echo "fuzz-parser: no libFuzzer build; running the bounded mutation loop instead (not coverage-guided)" >&2
    "$SWIFT" build -c release --product SluiceParserFuzz
    local seed=$(( $(date +%s) % 100000 ))
    echo "fuzz-parser: seed $seed (reproduce: .build/release/SluiceParserFuzz --seed $seed --iterations N)"
    .build/release/SluiceParserFuzz --seed "$seed" --iterations 2000000000 --seconds "$FUZZ_SECONDS"
}

if [ "${FUZZ_FALLBACK:-0}" != 1 ] && [ "${FUZZ_PREBUILT:-0}" = 1 ] && [ -x "$BINARY" ]; then
    echo "fuzz-parser: using the libFuzzer variant built just before (FUZZ_PREBUILT=1): $BINARY (build output: $SCRATCH/prebuild.log)"
else
    [ "${FUZZ_FALLBACK:-0}" = 1 ] || echo "fuzz-parser: building the libFuzzer variant into $SCRATCH"
    if [ "${FUZZ_FALLBACK:-0}" = 1 ] || ! fuzz_build; then
        fallback
        exit $?
    fi
fi

mkdir -p "$CORPUS" "$SEEDS" "$ARTIFACTS"
SLUICE_FUZZ_WRITE_CORPUS="$SEEDS" "$BINARY"

echo "fuzz-parser: fuzzing for ${FUZZ_SECONDS}s (corpus $CORPUS, seeds $SEEDS)"
status=0
# The Swift runtime's backtracer would take the crash signal before libFuzzer can save the input.
SWIFT_BACKTRACE=enable=no "$BINARY" "$CORPUS" "$SEEDS" \
    -max_total_time="$FUZZ_SECONDS" -max_len=2048 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 ${FUZZ_FLAGS:-} || status=$?
if [ "$status" -ne 0 ]; then
    echo "fuzz-parser: FAILED (exit $status); crashing inputs:" >&2
    ls -l "$ARTIFACTS" >&2 || true
    exit "$status"
fi
echo "fuzz-parser: no crash in ${FUZZ_SECONDS}s"
