#!/usr/bin/env bash
# Rule table benchmark (issue 17): the action stage's cycles per packet with an empty table, 16 and 256
# rules, on the same 64-byte UDP capture (scripts/anchors/write_udp_capture.py), replayed to a null
# sink through all 4 stages (`sluice replay --stages 4 --json`, the action stage's cycles/items).
# The rules are the walk's worst case: each passes the packed-word check (udp, has ports, IPv4) and
# fails on its /32 destination, so every packet walks every rule and matches none.
# Rounds rotate the variants; medians of RUNS rounds.
# Usage: scripts/bench-rules.sh [RUNS] [PACKETS]   (defaults 5 and 1000000); BIN=path skips the build.
#        scripts/bench-rules.sh --walk   the table walk alone, in process (scripts/rules-walk-bench.swift,
#                                        SluicePacket's sources without its stages, swiftc -O -wmo), on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --walk ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp scripts/rules-walk-bench.swift "$work/main.swift"
  swiftc -O -wmo -module-name RulesWalk Sources/SluicePacket/{Action,Bytes,Classify,Parse}/*.swift \
    Sources/SluicePacket/PacketLimits.swift "$work/main.swift" -o "$work/walk"
  echo "load average $(cut -d ' ' -f 1-3 /proc/loadavg) before the run"
  exec taskset -c 1 "$work/walk"
fi
runs=${1:-5}
packets=${2:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${BIN:-}" ]; then swift build -c release --product sluice >&2; BIN=.build/release/sluice; fi
python3 scripts/anchors/write_udp_capture.py "$work/udp.pcap" "$packets"
for n in 16 256; do
  { echo "rules:"
    for i in $(seq 0 $((n - 1))); do
      echo "  - {name: r$i, match: {protocol: udp, dst_prefix: 198.19.$((i / 256 + 1)).$((i % 256))/32, dst_port: 9}, action: drop}"
    done; } > "$work/rules$n.yaml"
done
echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) CPUs," \
  "load average $(cut -d ' ' -f 1-3 /proc/loadavg) before the run; binary $BIN."
for r in $(seq 1 "$runs"); do
  variants=(0 16 256)
  shift_by=$(( (r - 1) % 3 ))
  for n in "${variants[@]:shift_by}" "${variants[@]:0:shift_by}"; do
    flags=()
    [ "$n" != 0 ] && flags=(--rules "$work/rules$n.yaml")
    "$BIN" replay "$work/udp.pcap" --topspeed --json --stages 4 --cores 0,1 --wait-mode busy-poll "${flags[@]}" \
      | python3 -c '
import json, sys
s = json.load(sys.stdin)
action = [st for st in s["stages"] if st["name"] == "action"][0]
print(sys.argv[1], action["cycles"] / action["items"], s["packets"] / (s["elapsedNs"] / 1e9))' "$n" >> "$work/results"
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    n, cycles, pps = line.split()
    rows.setdefault(int(n), []).append((float(cycles), float(pps)))
base = statistics.median(c for c, _ in rows[0])
print(f"{'rules':>6} {'action cycles/pkt':>18} {'vs empty':>9} {'replay Mpps':>12}   (medians of {len(rows[0])})")
for n in sorted(rows):
    c = statistics.median(x for x, _ in rows[n]); p = statistics.median(y for _, y in rows[n])
    print(f"{n:>6} {c:>18.1f} {c / base:>8.2f}x {p / 1e6:>12.2f}")
PY
