#!/usr/bin/env bash
# Pipeline benchmark: a 3-stage pipeline of 8-byte items (generator alone on worker 0; relay and sink
# run-to-completion on worker 1), each wait mode at full load and at 1%, 10%, 50% and 100% of the
# busy-poll peak. Modes are interleaved within each round so drift in machine speed hits all alike;
# the table holds medians of RUNS rounds of Benchmarks' `pipeline-load` (once `sluice pipeline`). The
# futex wake-up latency between the two cores (the floor under any mode that sleeps) is measured in the
# same run. Usage: scripts/bench-pipeline.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
modes="busy-poll adaptive interrupt"
(cd Benchmarks && swift build -c release --product pipeline-load >&2 && swift build -c release --product wake-latency >&2)
bench_bin="$(cd Benchmarks && swift build -c release --show-bin-path)"
bin="$bench_bin/pipeline-load"
wake_bin="$bench_bin/wake-latency"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

round() {  # tag rate count: one run of every mode
  for mode in $modes; do "$bin" --json --wait-mode "$mode" --rate "$2" --count "$3" >>"$out/$1-$mode.jsonl"; done
}

for r in $(seq 1 "$runs"); do round full 0 20000000; done
peak=$(python3 -c 'import json,statistics,sys; print(int(statistics.median(json.loads(l)["itemsPerSecond"] for l in open(sys.argv[1]))))' "$out/full-busy-poll.jsonl")
for r in $(seq 1 "$runs"); do
  for percent in 1 10 50 100; do
    rate=$((peak * percent / 100))
    round "p$percent" "$rate" $((rate / 2))  # half a second each
  done
done
"$wake_bin" "$runs" 2 >"$out/wake-short.json"
"$wake_bin" "$runs" 50 >"$out/wake-long.json"

python3 - "$out" "$peak" "$runs" <<'PY'
import json, os, statistics, sys
out, peak, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def med(tag, key):
    return statistics.median(json.loads(l)[key] for l in open(os.path.join(out, tag + ".jsonl")))
short = json.load(open(os.path.join(out, "wake-short.json")))
long = json.load(open(os.path.join(out, "wake-long.json")))
print(f"busy-poll peak: {peak/1e6:.1f} M items/s (median of {runs}). CPU: CPU time of the worker running stages 2-3 "
      "over wall time. Ratios are against busy-poll at the same load.")
print(f"Anchor, same run: futex wake-up latency core 0 -> core 1 after 2 us idle p50 {short['wakeP50Ns']/1e3:.1f} us, "
      f"p99 {short['wakeP99Ns']/1e3:.1f} us; after 50 us idle p50 {long['wakeP50Ns']/1e3:.1f} us, p99 {long['wakeP99Ns']/1e3:.1f} us.\n")
print("| load | mode | M items/s | vs busy-poll | p50 us | p99 us | p99 vs busy-poll (us) | CPU % | CPU vs busy-poll |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for load in ["full", "p1", "p10", "p50", "p100"]:
    base = {k: med(f"{load}-busy-poll", k) for k in ["itemsPerSecond", "latencyP99Ns", "pipelineCPUShare"]}
    for mode in ["busy-poll", "adaptive", "interrupt"]:
        tag = f"{load}-{mode}"
        tput, cpu = med(tag, "itemsPerSecond"), med(tag, "pipelineCPUShare")
        p50, p99 = med(tag, "latencyP50Ns"), med(tag, "latencyP99Ns")
        print(f"| {load} | {mode} | {tput/1e6:.2f} | {tput/base['itemsPerSecond']:.2f}x | {p50/1e3:.1f} | {p99/1e3:.1f} | "
              f"{(p99-base['latencyP99Ns'])/1e3:+.1f} | {cpu*100:.1f} | {cpu/base['pipelineCPUShare']:.2f}x |")
PY
