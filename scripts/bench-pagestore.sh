#!/usr/bin/env bash
# Page store benchmark (issue 5): 4 KiB random reads and writes, O_DIRECT, at queue depth 1 and 32,
# PageFile (Benchmarks/Sources/pagestore-compare) against fio's io_uring engine on the same
# pre-allocated file with the same settings (direct=1, bs=4k, registered buffers and file, uniform
# random offsets). Interleaved rounds, medians; ratio = median of per-round ratios (ours / fio).
# PageFile submits each refilled operation at once, as fio does by default (iodepth_batch_submit=1);
# at depth 32 it also runs submitting all refills of a reap in one call (a row of its own).
# All read rounds run before any write: fio's writes do not carry page headers, our reads check them.
# Needs fio (make bench-deps) and a file system with O_DIRECT (not tmpfs): set DIR to choose one.
# Usage: scripts/bench-pagestore.sh [RUNS] [SECONDS] [FILE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-5}
mib=${3:-1024}
pages=$((mib * 256))
command -v fio >/dev/null || { echo "bench-pagestore.sh needs fio (apt-get install fio)" >&2; exit 1; }
(cd Benchmarks && swift build -c release --product pagestore-compare >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/pagestore-compare"
mkdir -p "${DIR:-$PWD/out}"
work=$(mktemp -d "${DIR:-$PWD/out}/bench-pagestore.XXXXXX")
trap 'rm -rf "$work"' EXIT
file="$work/pages.dat"
echo "filling $file: $mib MiB ($pages pages) through PageFile" >&2
"$binary" fill "$file" "$pages" >&2

fio_run() {  # rw depth -> one JSON line {"iops", "cpu"}
  fio --name=pagestore --filename="$file" --size="${mib}M" --ioengine=io_uring --direct=1 --bs=4k \
    --rw="$1" --iodepth="$2" --fixedbufs --registerfiles --norandommap --randrepeat=0 \
    --time_based --runtime="$seconds" --output-format=json |
    python3 -c 'import json, sys; j = json.load(sys.stdin)["jobs"][0]; io = j["read"] if j["read"]["iops"] else j["write"]
print(json.dumps({"iops": io["iops"], "cpu": (j["usr_cpu"] + j["sys_cpu"]) / 100}))'
}

for op in read write; do
  for r in $(seq 1 "$runs"); do
    for depth in 1 32; do
      echo "round $r: $op, depth $depth" >&2
      if [ $((r % 2)) = 1 ]; then  # alternate who goes first
        fio_run "rand$op" "$depth" >>"$work/fio-$op-$depth.jsonl"
        "$binary" run "$file" "$pages" "$op" "$depth" "$seconds" >>"$work/ours-$op-$depth.jsonl"
        [ "$depth" = 1 ] || "$binary" run "$file" "$pages" "$op" "$depth" "$seconds" "$depth" >>"$work/batched-$op-$depth.jsonl"
      else
        [ "$depth" = 1 ] || "$binary" run "$file" "$pages" "$op" "$depth" "$seconds" "$depth" >>"$work/batched-$op-$depth.jsonl"
        "$binary" run "$file" "$pages" "$op" "$depth" "$seconds" >>"$work/ours-$op-$depth.jsonl"
        fio_run "rand$op" "$depth" >>"$work/fio-$op-$depth.jsonl"
      fi
    done
  done
done

python3 - "$work" "$runs" "$seconds" "$mib" <<'PY'
import json, os, statistics, sys
work, runs, seconds, mib = sys.argv[1:]
def rows(name): return [json.loads(l) for l in open(os.path.join(work, name))]
print(f"4 KiB random I/O, O_DIRECT, {mib} MiB file, {seconds} s per run; medians of {runs} interleaved rounds;")
print("ratio = median of per-round ratios (PageFile / fio); CPU = process CPU time / wall time.\n")
print("| workload | queue depth | fio io_uring IOPS | PageFile IOPS | ratio | fio CPU | PageFile CPU |")
print("|---|---:|---:|---:|---:|---:|---:|")
for op in ("read", "write"):
    for depth in (1, 32):
        fio, ours = rows(f"fio-{op}-{depth}.jsonl"), rows(f"ours-{op}-{depth}.jsonl")
        ratio = statistics.median(o["iops"] / f["iops"] for o, f in zip(ours, fio))
        med = lambda xs, key: statistics.median(x[key] for x in xs)
        print(f"| random {op} | {depth} | {med(fio, 'iops'):.0f} | {med(ours, 'iops'):.0f} | {ratio:.2f}x "
              f"| {med(fio, 'cpu'):.2f} | {med(ours, 'cpu'):.2f} |")
        if depth > 1:
            batched = rows(f"batched-{op}-{depth}.jsonl")
            ratio = statistics.median(o["iops"] / f["iops"] for o, f in zip(batched, fio))
            print(f"| random {op}, PageFile submitting {depth} at once | {depth} | {med(fio, 'iops'):.0f} "
                  f"| {med(batched, 'iops'):.0f} | {ratio:.2f}x | {med(fio, 'cpu'):.2f} | {med(batched, 'cpu'):.2f} |")
PY
