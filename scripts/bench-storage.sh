#!/usr/bin/env bash
# Storage node over loopback (issue 5): reads/s, unconditional and conditional writes/s with 1 and 16
# clients, p50/p99, through `storage-bench` (Benchmarks package; server and clients in one process, TCP on
# 127.0.0.1). Interleaved rounds, medians. The OSN check's cost is conditional vs unconditional writes
# of the same rounds. Anchor for reads: fio's io_uring 4 KiB random read at depth 1 on a file in the
# same directory (what one page read costs the disk), when fio is installed.
# Needs a file system with O_DIRECT (not tmpfs): set DIR to choose one.
# Usage: scripts/bench-storage.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-2}
(cd Benchmarks && swift build -c release --product storage-bench >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/storage-bench"
mkdir -p "${DIR:-$PWD/out}"
work=$(mktemp -d "${DIR:-$PWD/out}/bench-storage.XXXXXX")
trap 'rm -rf "$work"' EXIT

for r in $(seq 1 "$runs"); do
  for clients in 1 16; do
    ops="read write conditional"
    [ $((r % 2)) = 1 ] || ops="conditional write read"  # alternate who goes first
    for op in $ops; do
      echo "round $r: $op, $clients clients" >&2
      "$binary" --data "$work/node" --op "$op" --clients "$clients" --seconds "$seconds" \
        >>"$work/$op-$clients.txt"
    done
  done
  if command -v fio >/dev/null; then
    fio --name=anchor --filename="$work/fio.dat" --size=256M --ioengine=io_uring --direct=1 --bs=4k \
      --rw=randread --iodepth=1 --time_based --runtime="$seconds" --output-format=json 2>/dev/null |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["jobs"][0]["read"]["iops"])' >>"$work/fio.txt"
  fi
done

python3 - "$work" "$runs" <<'PY'
import os, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def rows(op, clients):
    out = []
    for line in open(os.path.join(work, f"{op}-{clients}.txt")):
        out.append({k: float(v) for k, v in (f.split("=") for f in line.split() if not f.startswith("op="))})
    return out
fio = os.path.join(work, "fio.txt")
fio_iops = statistics.median(float(x) for x in open(fio)) if os.path.exists(fio) else None
print(f"storage node over loopback, {runs} rounds, medians")
print(f"{'op':<12}{'clients':>8}{'ops/s':>10}{'p50 us':>10}{'p99 us':>10}{'writes/flush':>14}")
for clients in (1, 16):
    for op in ("read", "write", "conditional"):
        r = rows(op, clients)
        med = lambda k: statistics.median(x[k] for x in r)
        print(f"{op:<12}{clients:>8}{med('ops_per_s'):>10.0f}{med('p50_us'):>10.0f}{med('p99_us'):>10.0f}{med('writes_per_flush'):>14.2f}")
    w, c = rows("write", clients), rows("conditional", clients)
    ratios = [cc["ops_per_s"] / ww["ops_per_s"] for ww, cc in zip(w, c)]
    print(f"  conditional / unconditional writes/s, {clients} clients: {statistics.median(ratios):.3f}x "
          f"(cost of the OSN check: {100 * (1 - statistics.median(ratios)):+.1f}%)")
if fio_iops:
    r = rows("read", 1)
    print(f"anchor: fio io_uring randread depth 1: {fio_iops:.0f} IOPS; node read, 1 client: "
          f"{statistics.median(x['ops_per_s'] for x in r) / fio_iops:.2f}x of it")
PY
