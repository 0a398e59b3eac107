#!/usr/bin/env bash
# Why the page store defaults to O_DIRECT: 4 KiB random writes through io_uring without O_DIRECT
# (ext4 punts buffered writes to io-wq kernel workers) against a plain buffered pwrite(2) loop, and
# O_DIRECT io_uring, on one 256 MiB file. Rounds interleaved; prints each run.
# Usage: scripts/bench-buffered-writes.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-3}
(cd Benchmarks && swift build -c release --product pagestore-compare >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/pagestore-compare"
mkdir -p "${DIR:-$PWD/out}"
file=$(mktemp "${DIR:-$PWD/out}/bench-buffered.XXXXXX")
trap 'rm -f "$file"' EXIT
"$binary" fill "$file" 65536 >/dev/null
iops() { python3 -c 'import json, sys; print(int(json.load(sys.stdin)["iops"]))'; }
for r in $(seq 1 "$rounds"); do
  echo "round $r: direct-qd32 $("$binary" run "$file" 65536 write 32 "$seconds" 1 | iops)" \
    "buffered-qd32 $(BUFFERED=1 "$binary" run "$file" 65536 write 32 "$seconds" 1 | iops)" \
    "buffered-qd1 $(BUFFERED=1 "$binary" run "$file" 65536 write 1 "$seconds" 1 | iops)" \
    "pwrite $("$binary" pwrite "$file" 65536 "$seconds" | iops)"
done
