#!/usr/bin/env bash
# Replay benchmark (issue 3): a 1-million-packet capture of 64-byte UDP frames replayed to a null sink
# through a 3-stage pipeline (pcap RX -> parse/classify -> discard), against a plain C pcap_next_ex
# loop over the same file (scripts/anchors/pcap_next_loop.c), interleaved, medians of RUNS rounds.
# Usage: scripts/bench-replay.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swift build -c release --product sluice >&2
cc -O2 -o "$work/pcap_next_loop" scripts/anchors/pcap_next_loop.c -lpcap
python3 scripts/anchors/write_udp_capture.py "$work/udp1m.pcap" 1000000
cat "$work/udp1m.pcap" >/dev/null  # both sides read from the page cache
for r in $(seq 1 "$runs"); do
  "$work/pcap_next_loop" "$work/udp1m.pcap" >>"$work/anchor.jsonl"
  for stages in 3 4; do
    .build/release/sluice replay "$work/udp1m.pcap" --topspeed --json --wait-mode busy-poll --stages "$stages" \
      >>"$work/sluice-$stages.jsonl"
  done
  .build/release/sluice replay "$work/udp1m.pcap" --topspeed --json --wait-mode busy-poll --stages 3 --cores 0 \
    >>"$work/sluice-1core.jsonl"
done
python3 - "$work" "$runs" <<'PY'
import json, os, statistics, sys
work, runs = sys.argv[1], sys.argv[2]
def rows(name): return [json.loads(l) for l in open(os.path.join(work, name))]
anchor = rows("anchor.jsonl")
print(f"Replay of 1M 64-byte UDP packets, medians of {runs} interleaved rounds; ratio = median of per-round ratios.\n")
print("| what | M packets/s | vs pcap_next_ex loop | worker CPU / wall |")
print("|---|---:|---:|---:|")
print(f"| C pcap_next_ex loop (anchor) | {statistics.median(a['packetsPerSecond'] for a in anchor)/1e6:.2f} | 1.00x | |")
for name, label in [("sluice-3", "sluice replay, 3 stages, 2 cores"), ("sluice-4", "sluice replay, 4 stages, 2 cores"),
                    ("sluice-1core", "sluice replay, 3 stages, 1 core")]:
    data = rows(name + ".jsonl")
    ratio = statistics.median(d["packetsPerSecond"] / a["packetsPerSecond"] for d, a in zip(data, anchor))
    cpu = statistics.median(d["workers"][0]["cpuNs"] / d["elapsedNs"] for d in data)
    print(f"| {label} | {statistics.median(d['packetsPerSecond'] for d in data)/1e6:.2f} | {ratio:.2f}x | {cpu:.2f} |")
PY
