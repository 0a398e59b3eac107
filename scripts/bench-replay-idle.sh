#!/usr/bin/env bash
# Idle prediction on a replayed capture (issue 3): 64-byte UDP packets replayed at 10% and 100% of the
# busy-poll peak (pcap RX on worker 0; parse/classify, action and discard on worker 1), for each wait
# mode, interleaved, medians of RUNS rounds: worker 1's CPU time over wall time, and the p99 time from
# the source releasing a packet to the sink. Usage: scripts/bench-replay-idle.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swift build -c release --product sluice >&2
python3 scripts/anchors/write_udp_capture.py "$work/udp.pcap" 500000
bin=.build/release/sluice
for r in $(seq 1 "$runs"); do
  "$bin" replay "$work/udp.pcap" --topspeed --json --wait-mode busy-poll --loop 4 >>"$work/peak.jsonl"
done
peak=$(python3 -c 'import json,statistics,sys; print(int(statistics.median(json.loads(l)["packetsPerSecond"] for l in open(sys.argv[1]))))' "$work/peak.jsonl")
for r in $(seq 1 "$runs"); do
  for mode in busy-poll adaptive interrupt; do
    "$bin" replay "$work/udp.pcap" --json --latency --wait-mode "$mode" --rate $((peak / 10)) >>"$work/p10-$mode.jsonl"
    "$bin" replay "$work/udp.pcap" --json --latency --wait-mode "$mode" --rate "$peak" --loop 4 >>"$work/p100-$mode.jsonl"
  done
done
python3 - "$work" "$peak" "$runs" <<'PY'
import json, os, statistics, sys
work, peak, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rows(tag): return [json.loads(l) for l in open(os.path.join(work, tag + ".jsonl"))]
def cpu(d): return d["workers"][1]["cpuNs"] / d["elapsedNs"]
print(f"busy-poll replay peak {peak/1e6:.2f} M packets/s (median of {runs}); CPU = worker 1 (stages 2-4) CPU time / wall time.\n")
print("| load | mode | M packets/s | p50 us | p99 us | p99 vs busy-poll (us) | CPU % | CPU vs busy-poll |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for load in ["p10", "p100"]:
    base = rows(f"{load}-busy-poll")
    base_cpu = statistics.median(cpu(d) for d in base)
    base_p99 = statistics.median(d["latencyP99Ns"] for d in base)
    for mode in ["busy-poll", "adaptive", "interrupt"]:
        data = rows(f"{load}-{mode}")
        c = statistics.median(cpu(d) for d in data)
        p50 = statistics.median(d["latencyP50Ns"] for d in data)
        p99 = statistics.median(d["latencyP99Ns"] for d in data)
        pps = statistics.median(d["packetsPerSecond"] for d in data)
        print(f"| {load[1:]}% | {mode} | {pps/1e6:.2f} | {p50/1e3:.1f} | {p99/1e3:.1f} | {(p99-base_p99)/1e3:+.1f} | "
              f"{c*100:.1f} | {c/base_cpu:.2f}x |")
PY
