#!/usr/bin/env bash
# Storage node reads (issue 5's left-out, done later): single-page reads with the I/O outside the
# node's mutex on pooled readers (each its own io_uring) vs every read grouped under the mutex (one
# submission per group, the issue-5 design), 1 and 16 clients over loopback through
# `storage-bench --op read [--parallel-readers 0]` (Benchmarks package). Interleaved rounds, medians, same run;
# fio's io_uring 4 KiB random read at depth 1 and 16 in the same directory as the anchor.
# Needs a file system with O_DIRECT (not tmpfs): set DIR to choose one.
# Usage: scripts/bench-storage-reads.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-2}
(cd Benchmarks && swift build -c release --product storage-bench >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/storage-bench"
mkdir -p "${DIR:-$PWD/out}"
work=$(mktemp -d "${DIR:-$PWD/out}/bench-reads.XXXXXX")
trap 'rm -rf "$work"' EXIT
for r in $(seq 1 "$runs"); do
  for clients in 1 16; do
    order="32 0"
    [ $((r % 2)) = 1 ] || order="0 32"  # alternate who goes first
    for readers in $order; do
      "$binary" --data "$work/node" --op read --clients "$clients" --seconds "$seconds" \
        --parallel-readers "$readers" >>"$work/read-$clients-$readers.txt"
    done
    if command -v fio >/dev/null; then
      fio --name=anchor --filename="$work/fio.dat" --size=256M --ioengine=io_uring --direct=1 --bs=4k \
        --rw=randread --iodepth="$clients" --time_based --runtime="$seconds" --output-format=json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["jobs"][0]["read"]["iops"])' >>"$work/fio-$clients.txt"
    fi
  done
done
python3 - "$work" "$runs" <<'PY'
import os, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def rows(clients, readers):
    return [{k: float(v) for k, v in (f.split("=") for f in line.split() if not f.startswith("op="))}
            for line in open(os.path.join(work, f"read-{clients}-{readers}.txt"))]
print(f"Storage node single-page reads over loopback, {runs} interleaved rounds, medians; ratio = median of per-round ratios.\n")
print("| clients | grouped under the mutex: reads/s (p50 / p99 us) | parallel readers: reads/s (p50 / p99 us) | parallel / grouped | fio randread, same depth (IOPS) |")
print("|---:|---:|---:|---:|---:|")
for clients in (1, 16):
    g, p = rows(clients, 0), rows(clients, 32)
    med = lambda rs, k: statistics.median(x[k] for x in rs)
    ratio = statistics.median(pp["ops_per_s"] / gg["ops_per_s"] for gg, pp in zip(g, p))
    fio = os.path.join(work, f"fio-{clients}.txt")
    anchor = f"{statistics.median(float(x) for x in open(fio)):.0f}" if os.path.exists(fio) else "-"
    print(f"| {clients} | {med(g, 'ops_per_s'):.0f} ({med(g, 'p50_us'):.0f} / {med(g, 'p99_us'):.0f}) "
          f"| {med(p, 'ops_per_s'):.0f} ({med(p, 'p50_us'):.0f} / {med(p, 'p99_us'):.0f}) | {ratio:.2f}x | {anchor} |")
PY
