#!/usr/bin/env bash
# AF_PACKET benchmarks (issue 3): builds Benchmarks/ in release, makes two throwaway network namespaces
# joined by a veth pair (198.18.0.1/30 and 198.18.0.2/30, IPv6 off), runs afpacket-compare in them and
# deletes them again on any exit. Prints a markdown table of medians and ratios on stdout (build
# output on stderr):
#   RX: Sluice's TPACKET_V3 receiver vs four C anchors (recvfrom(), recvmmsg() batch 32, a TPACKET_V3 ring, a TPACKET_V2
#       ring), same C TX-ring sender, same run; CPU per packet of the receiving thread, of the process
#       (sender + receiver threads, getrusage) and of all cores (/proc/stat), over the same span;
#   TX: Sluice's TX ring vs a plain C TX-ring loop, same frames, ring and QDISC_BYPASS.
# Needs root. Usage: scripts/bench-afpacket.sh [afpacket-compare options], e.g. --runs 7,
# --rx-packets 2000000, --scenario rx, --sender-cpu 0 --receiver-cpu 1, --verbose; `--help` lists them.
set -euo pipefail
args=("$@")  # kept: the loop below reuses the positional parameters
cd "$(dirname "$0")/../Benchmarks"
if [ "$(id -u)" != 0 ]; then
  echo "bench-afpacket.sh needs root (network namespaces, AF_PACKET)" >&2
  exit 1
fi
swift build -c release --product afpacket-compare >&2
binary="$(swift build -c release --show-bin-path)/afpacket-compare"

tag="$$"
ns_a="sluice-bench-$tag-a"
ns_b="sluice-bench-$tag-b"
if_a="slb${tag}a"
if_b="slb${tag}b"
cleanup() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add name "$if_a" netns "$ns_a" type veth peer name "$if_b" netns "$ns_b"
for pair in "$ns_a $if_a 02:53:4c:00:00:01 198.18.0.1/30" "$ns_b $if_b 02:53:4c:00:00:02 198.18.0.2/30"; do
  set -- $pair
  ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
  ip -n "$1" link set dev "$2" address "$3"
  ip -n "$1" address add "$4" dev "$2"
  ip -n "$1" link set dev "$2" up
done

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: ${model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r), load average" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run; $(swift --version 2>/dev/null | head -n 1)."
echo
"$binary" --netns-a "$ns_a" --netns-b "$ns_b" --iface-a "$if_a" --iface-b "$if_b" ${args[@]+"${args[@]}"}
