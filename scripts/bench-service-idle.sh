#!/usr/bin/env bash
# What an interface pipeline costs when its link is quiet (issue 6): `sluice run` with an AF_PACKET
# source on a test-made veth (the peer in a namespace of its own, no addresses), its process CPU
# time over 2 s idle and over 2 s of the 2000-packet sample replayed into it at 1000 packets/s
# (198.18.0.0/15 frames), in the busy-poll wait mode (the anchor: one core spinning) and in the
# adaptive one (the source tells the worker to sleep half a TPACKET_V3 block timeout between empty
# polls); then 1M 64-byte frames replayed into it as fast as the sender goes, to check the sleeping
# receiver loses nothing at full rate. Interleaved rounds, medians. Needs root.
# Usage: scripts/bench-service-idle.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/veth-lib.sh
runs=${1:-3}
work=$(mktemp -d)
ns="sluice-idle-$$"
inside="idl$$i"
outside="idl$$o"
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  veth_down "$ns" "$outside"
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${NO_BUILD:-}" ] || swift build -c release --product sluice >&2
veth_up "$ns" "$inside" "$outside"
ticks=$(getconf CLK_TCK)
python3 scripts/anchors/write_udp_capture.py "$work/udp1m.pcap" 1000000

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for r in $(seq 1 "$runs"); do
  for mode in busy-poll adaptive; do
    cat >"$work/idle.yaml" <<YAML
wait_mode: $mode
log_level: warning
metrics: {listen: "127.0.0.1:0"}
pipelines:
  - name: wire
    source: {interface: "$outside"}
    stages: classify-and-act
    sink: {discard: true}
YAML
    .build/release/sluice run --config "$work/idle.yaml" >"$work/run.out" &
    pid=$!
    for _ in $(seq 300); do grep -q '^sluice: ready' "$work/run.out" && break; sleep 0.1; done
    port=$(sed -n 's/^sluice: ready metrics=127.0.0.1:\([0-9]*\).*/\1/p' "$work/run.out")
    sleep 0.5
    t0=$(cpu_ticks "$pid"); sleep 2; t1=$(cpu_ticks "$pid")
    ip netns exec "$ns" .build/release/sluice replay Tests/Fixtures/sample.pcap --iface "$inside" --rate 1000 \
      >/dev/null 2>&1 & sender=$!
    t2=$(cpu_ticks "$pid"); sleep 2; t3=$(cpu_ticks "$pid")
    wait $sender
    sleep 0.2
    got=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^sluice_pipeline_packets_in_total/ {print $2}')
    fast=$(ip netns exec "$ns" .build/release/sluice replay "$work/udp1m.pcap" --iface "$inside" --topspeed --json \
      2>/dev/null | python3 -c 'import json, sys; print(int(json.load(sys.stdin)["packetsPerSecond"]))')
    sleep 0.5
    total=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^sluice_pipeline_packets_in_total/ {print $2}')
    kill -TERM "$pid"; wait "$pid" || true; pid=""
    echo "$mode $(( (t1 - t0) )) $(( (t3 - t2) )) $got $fast $(( total - got ))" >>"$work/rows"
  done
done

python3 - "$work/rows" "$runs" "$ticks" <<'PY'
import statistics, sys
rows, runs, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = {}
for line in open(rows):
    mode, idle, busy, got, fast, fastGot = line.split()
    data.setdefault(mode, []).append((int(idle) / ticks / 2 * 100, int(busy) / ticks / 2 * 100, float(got),
                                      int(fast), int(float(fastGot))))
print(f"`sluice run`, one interface pipeline (4 stages, 2 workers), process CPU in % of one core; medians of {runs} interleaved rounds.\n")
print("| wait mode | idle link | 1000 packets/s | vs busy-poll (idle / loaded) | packets received | 1M at sender's top speed: pps, received |")
print("|---|---:|---:|---:|---:|---:|")
base = data["busy-poll"]
for mode in ["busy-poll", "adaptive"]:
    d = data[mode]
    idle = statistics.median(x[0] for x in d); busy = statistics.median(x[1] for x in d)
    ri = statistics.median(x[0] / b[0] for x, b in zip(d, base)); rb = statistics.median(x[1] / b[1] for x, b in zip(d, base))
    fast = statistics.median(x[3] for x in d)
    print(f"| {mode} | {idle:.1f} | {busy:.1f} | {ri:.2f}x / {rb:.2f}x | {min(int(x[2]) for x in d)}-{max(int(x[2]) for x in d)} of 2000 "
          f"| {fast/1e3:.0f}k, {min(x[4] for x in d)}-{max(x[4] for x in d)} of 1000000 |")
PY
