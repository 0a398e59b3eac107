#!/usr/bin/env bash
# `sluice replay` against Debian's tcpreplay (issue 17), same capture, same veth pair, same run:
#   top speed: sluice replay --topspeed --iface (the pipeline engine; the sender engine, streamed and
#              --preload) vs tcpreplay --topspeed and tcpreplay --topspeed --preload-pcap, rounds
#              interleaved, medians of pps (as each tool reports it), process CPU per packet (user +
#              system of the tool, /usr/bin/time) and all-core CPU per packet (/proc/stat busy time
#              over the run, every core: the kernel's veth and softirq work included); the sender also
#              with --preload --af-xdp (AF_XDP TX socket, copy mode, instead of the AF_PACKET TX ring);
#   accuracy:  --mbps 10, 100 and 1000 for both tools (1000-byte frames, --limit for ~2 s), the
#              Mbps each reports against the target; and --mbps 1000 again with 8000-byte frames on
#              the veth pair at MTU 9000 (the same rate at an eighth of the packets: where a loaded
#              2-vCPU veth cannot carry 1000 Mbit/s of 1000-byte frames, this one still can).
# Makes the veth pair (one end here, the other in a namespace of its own, no addresses, IPv6 off)
# and the captures (64-byte and 1000-byte UDP frames, 198.18.0.1 -> 198.18.0.2) and removes them
# on any exit. Prints markdown on stdout. Needs root, tcpreplay and python3.
# Usage: scripts/bench-tcpreplay.sh [--rounds N] [--packets N] [--loops N]
#        SLUICE=path/to/sluice skips the release build; SLUICE_SENDER=path runs the sender runs with a
#        binary that takes `sluice replay`'s sender flags without `replay --engine sender` (a release
#        build of SluiceReplay alone, when the full release build is not at hand: say so in the results).
set -euo pipefail
rounds=5
packets=100000
loops=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --packets) packets="$2"; shift 2 ;;
    --loops) loops="$2"; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--packets N] [--loops N]" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" != 0 ]; then echo "bench-tcpreplay.sh needs root (namespaces, AF_PACKET)" >&2; exit 1; fi
command -v tcpreplay >/dev/null || { echo "needs tcpreplay (make deps)" >&2; exit 1; }
if [ -z "${SLUICE:-}" ]; then
  (cd "$root" && swift build -c release --product sluice >&2)
  SLUICE="$(cd "$root" && swift build -c release --show-bin-path)/sluice"
fi
. "$root/scripts/veth-lib.sh"

tag="$$"
ns="sluice-tcpr-$tag"
inside="stri$tag"
outside="stro$tag"
work="$(mktemp -d /tmp/sluice-tcpreplay-XXXXXX)"
cleanup() { veth_down "$ns" "$outside"; rm -rf "$work"; }
trap cleanup EXIT INT TERM
veth_up "$ns" "$inside" "$outside"
ip link set dev "$outside" mtu 9000
ip -n "$ns" link set dev "$inside" mtu 9000

python3 - "$work" "$packets" <<'EOF'
import struct, sys
def capture(path, count, length):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(count):
            ip_len = length - 14
            eth = bytes([0x02, 0x53, 0x4C, 0, 0, 2, 0x02, 0x53, 0x4C, 0, 0, 1, 0x08, 0x00])
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, i & 0xFFFF, 0, 64, 17, 0,
                             bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
            udp = struct.pack("!HHHH", 1024 + i % 1000, 9, ip_len - 20, 0)
            frame = (eth + ip + udp).ljust(length, b"\xa5")
            t = i * 10  # 10 us apart
            f.write(struct.pack("<IIII", 1000 + t // 1000000, t % 1000000, length, length) + frame)
capture(sys.argv[1] + "/small.pcap", int(sys.argv[2]), 64)
capture(sys.argv[1] + "/large.pcap", 1000, 1000)
capture(sys.argv[1] + "/jumbo.pcap", 1000, 8000)
EOF

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
hz=$(getconf CLK_TCK)
# run NAME COMMAND...: one run; appends "name pps packets proc_ns_per_packet allcore_ns_per_packet mbps" to $work/results.
run() {
  local name="$1"; shift
  local before after out
  before=$(busy_jiffies)
  out=$(/usr/bin/time -f "TIME %e %U %S" "$@" 2>&1) || { echo "$name failed: $out" >&2; return 1; }
  after=$(busy_jiffies)
  echo "$out" | awk -v name="$name" -v busy=$((after - before)) -v hz="$hz" '
    /^Actual:/ { packets = $2 }
    /^replay:/ { for (i = 2; i <= NF; i++) { if ($i == "delivered") packets = $(i - 1); if ($i == "pps,") pps = $(i - 1) } }
    /^Rated:/ { gsub(",", ""); mbps = $4; pps = $6 }
    /^TIME/ { cpu = $3 + $4 }
    END { if (packets == 0) packets = 1;
          printf "%s %.0f %d %.1f %.1f %.3f\n", name, pps, packets, cpu * 1e9 / packets, busy * 1e9 / hz / packets, mbps }' \
    >> "$work/results"
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [ -n "${SLUICE_SENDER:-}" ]; then sender=("$SLUICE_SENDER"); else sender=("$SLUICE" replay --engine sender); fi
small="$work/small.pcap"
large="$work/large.pcap"
jumbo="$work/jumbo.pcap"
total=$((packets * loops))
echo "sluice: $SLUICE, sender: ${sender[*]} ($(cd "$root" && git rev-parse --short HEAD)); tcpreplay: $(tcpreplay -V 2>&1 | head -1)" >&2
echo "load before: $(uptime)" >&2
for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  run sluice-pipeline "$SLUICE" replay "$small" --topspeed --loop "$loops" --iface "$outside"
  run tcpreplay tcpreplay -i "$outside" --topspeed --loop "$loops" "$small"
  run sluice-sender "${sender[@]}" "$small" --topspeed --loop "$loops" --iface "$outside"
  run tcpreplay-preload tcpreplay -i "$outside" --topspeed --preload-pcap --loop "$loops" "$small"
  run sluice-sender-preload "${sender[@]}" "$small" --topspeed --loop "$loops" --iface "$outside" --preload
  run sluice-sender-afxdp "${sender[@]}" "$small" --topspeed --loop "$loops" --iface "$outside" --preload --af-xdp
done
for mbps in 10 100 1000; do
  limit=$((mbps * 1000000 * 2 / 8000))  # ~2 s of 1000-byte frames
  for round in $(seq 3); do
    run "sluice-mbps-$mbps" "${sender[@]}" "$large" --mbps "$mbps" --loop 0 --limit "$limit" --iface "$outside" --preload
    run "tcpreplay-mbps-$mbps" tcpreplay -i "$outside" --mbps "$mbps" --loop 0 --limit "$limit" --preload-pcap "$large"
  done
done
jumbo_limit=$((1000 * 1000000 * 2 / 64000))  # ~2 s of 8000-byte frames at 1000 Mbps
for round in $(seq 3); do
  run "sluice-mbps-1000-jumbo" "${sender[@]}" "$jumbo" --mbps 1000 --loop 0 --limit "$jumbo_limit" --iface "$outside" --preload
  run "tcpreplay-mbps-1000-jumbo" tcpreplay -i "$outside" --mbps 1000 --loop 0 --limit "$jumbo_limit" --preload-pcap "$jumbo"
done
echo "load after: $(uptime)" >&2

echo "Top speed, $packets 64-byte frames x $loops loops = $total packets a run, $rounds interleaved rounds, medians:"
echo
echo "| tool | pps | process CPU ns/packet | all-core CPU ns/packet | pps vs tcpreplay | pps vs tcpreplay --preload-pcap |"
echo "|---|---|---|---|---|---|"
base=$(awk '$1 == "tcpreplay" { print $2 }' "$work/results" | median)
base_preload=$(awk '$1 == "tcpreplay-preload" { print $2 }' "$work/results" | median)
for name in sluice-pipeline sluice-sender sluice-sender-preload sluice-sender-afxdp tcpreplay tcpreplay-preload; do
  pps=$(awk -v n="$name" '$1 == n { print $2 }' "$work/results" | median)
  proc=$(awk -v n="$name" '$1 == n { print $4 }' "$work/results" | median)
  all=$(awk -v n="$name" '$1 == n { print $5 }' "$work/results" | median)
  echo "| $name | $pps | $proc | $all | $(awk -v a="$pps" -v b="$base" 'BEGIN { printf "%.2fx", a / b }') | $(awk -v a="$pps" -v b="$base_preload" 'BEGIN { printf "%.2fx", a / b }') |"
done
echo
echo "Rate accuracy, 1000-byte frames, ~2 s a run, 3 rounds, median of the Mbps each tool reports:"
echo
echo "| target Mbps | sluice Mbps | sluice error | tcpreplay Mbps | tcpreplay error |"
echo "|---|---|---|---|---|"
for mbps in 10 100 1000 1000-jumbo; do
  target=${mbps%-jumbo}
  s=$(awk -v n="sluice-mbps-$mbps" '$1 == n { print $6 }' "$work/results" | median)
  t=$(awk -v n="tcpreplay-mbps-$mbps" '$1 == n { print $6 }' "$work/results" | median)
  label=$mbps; [ "$mbps" = "$target" ] || label="$target (8000-byte frames, MTU 9000)"
  echo "| $label | $s | $(awk -v a="$s" -v b="$target" 'BEGIN { printf "%+.2f%%", (a / b - 1) * 100 }') | $t | $(awk -v a="$t" -v b="$target" 'BEGIN { printf "%+.2f%%", (a / b - 1) * 100 }') |"
done
echo
echo "Raw runs (name pps packets process-ns/packet all-core-ns/packet Mbps):"
echo
echo '```'
cat "$work/results"
echo '```'
