#!/usr/bin/env bash
# Pipeline benchmark: a 3-stage pipeline of 8-byte items (generator on worker 0; relay and sink
# run-to-completion on worker 1), for each wait mode at full load and at 10%, 50% and 100% of the
# busy-poll maximum rate. Reports medians of RUNS runs. Usage: scripts/bench-pipeline.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bin=.build/release/sluice
[ -x "$bin" ] || swift build -c release >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() {  # mode rate count tag
  for r in $(seq 1 "$runs"); do "$bin" pipeline --json --wait-mode "$1" --rate "$2" --count "$3" >>"$out/$4.jsonl"; done
}

for mode in busy-poll adaptive interrupt; do run "$mode" 0 20000000 "full-$mode"; done
peak=$(python3 - "$out/full-busy-poll.jsonl" <<'PY'
import json, statistics, sys
print(int(statistics.median(json.loads(l)["itemsPerSecond"] for l in open(sys.argv[1]))))
PY
)
for percent in 10 50 100; do
  rate=$((peak * percent / 100))
  for mode in busy-poll adaptive interrupt; do run "$mode" "$rate" "$rate" "p$percent-$mode"; done  # ~1 s each
done

python3 - "$out" "$peak" "$runs" <<'PY'
import glob, json, os, statistics, sys
out, peak, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def med(tag, key):
    rows = [json.loads(l) for l in open(os.path.join(out, tag + ".jsonl"))]
    return statistics.median(r[key] for r in rows)
print(f"busy-poll peak: {peak/1e6:.2f} M items/s (median of {runs}); CPU = CPU time of the worker running stages 2-3 / wall time\n")
print("| load | mode | M items/s | p50 us | p99 us | CPU % | CPU vs busyPoll | p99 - busyPoll p99 (us) |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for load in ["full", "p10", "p50", "p100"]:
    base_cpu = med(f"{load}-busy-poll", "pipelineCPUShare")
    base_p99 = med(f"{load}-busy-poll", "latencyP99Ns")
    base_tput = med(f"{load}-busy-poll", "itemsPerSecond")
    for mode in ["busy-poll", "adaptive", "interrupt"]:
        tag = f"{load}-{mode}"
        tput, cpu = med(tag, "itemsPerSecond"), med(tag, "pipelineCPUShare")
        p50, p99 = med(tag, "latencyP50Ns"), med(tag, "latencyP99Ns")
        print(f"| {load} | {mode} | {tput/1e6:.2f} ({tput/base_tput:.2f}x) | {p50/1e3:.1f} | {p99/1e3:.1f} | "
              f"{cpu*100:.1f} | {cpu/base_cpu:.2f}x | {(p99-base_p99)/1e3:+.1f} |")
PY
