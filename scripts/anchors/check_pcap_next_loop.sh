#!/usr/bin/env bash
# Checks the replay anchor (pcap_next_loop.c) before it is trusted as one: it must read every packet
# of every pass, report a span and a CPU time that fit each other, and fail on a bad capture or bad
# arguments instead of printing a rate. Exits non-zero with a message on the first failed check.
# Usage: scripts/anchors/check_pcap_next_loop.sh [BINARY]   (builds it when no binary is given)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
binary=${1:-}
if [ -z "$binary" ]; then
  binary="$work/pcap_next_loop"
  cc -O2 -Wall -Wextra -Werror -o "$binary" "$here/pcap_next_loop.c" -lpcap
fi
fail() { echo "check_pcap_next_loop: $*" >&2; exit 1; }

python3 "$here/write_udp_capture.py" "$work/udp.pcap" 20000
for loops in 1 3; do
  "$binary" "$work/udp.pcap" "$loops" >"$work/out.json" || fail "exit $? on a good capture, $loops loop(s)"
  python3 - "$work/out.json" "$loops" <<'PY' || fail "wrong report for $loops loop(s): $(cat "$work/out.json")"
import json, sys
report, loops = json.load(open(sys.argv[1])), int(sys.argv[2])
assert report["packets"] == 20000 * loops, "every packet of every pass"
assert report["loops"] == loops
assert report["checksum"] == report["packets"] * 2, "first and last byte of each (0x02 and 0x00 in the test frames)"
assert 0 < report["wallNsFromOpen"] == report["elapsedNs"], "one span, from before the open"
# Process CPU over the span of one thread: at most the span plus getrusage's tick rounding (4 ms).
assert 0 <= report["processCpuNs"] <= report["wallNsFromOpen"] + 4_000_000, "one thread's CPU fits its span"
assert abs(report["packetsPerSecond"] - report["packets"] / (report["wallNsFromOpen"] / 1e9)) < 1
PY
done

head -c 100000 "$work/udp.pcap" >"$work/truncated.pcap"
if "$binary" "$work/truncated.pcap" >"$work/out.json" 2>/dev/null; then fail "a truncated capture passed"; fi
[ ! -s "$work/out.json" ] || fail "a truncated capture printed a report"
if "$binary" "$work/udp.pcap" 0 >/dev/null 2>&1; then fail "0 loops accepted"; fi
if "$binary" "$work/missing.pcap" >/dev/null 2>&1; then fail "a missing file passed"; fi
echo "check_pcap_next_loop: ok"
