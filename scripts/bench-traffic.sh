#!/usr/bin/env bash
# Traffic controller benchmarks (issue 4): builds Benchmarks/ in release, makes two throwaway network
# namespaces joined by a veth pair (198.18.0.1/30 and 198.18.0.2/30, IPv6 off), runs traffic-compare in
# them and deletes them again on any exit. Prints markdown tables of medians on stdout:
#   cost:   TX through the shaped stage + completion tap + controller vs the plain transmitter: pps and
#           CPU per frame of the whole process (sender + controller threads, getrusage) and of every core
#           (/proc/stat); frames written into the pool before the clock starts, no per-frame clock read;
#   shares: 4 backlogged sources at weights 1:1:2:4 on 80 Mbit/s, Sluice (tbf + controller) vs htb.
# Needs root and tc (iproute2). Usage: scripts/bench-traffic.sh [--runs N] [--frames N].
set -euo pipefail
args=("$@")  # kept: the loop below reuses the positional parameters
cd "$(dirname "$0")/../Benchmarks"
if [ "$(id -u)" != 0 ]; then
  echo "bench-traffic.sh needs root (network namespaces, AF_PACKET)" >&2
  exit 1
fi
swift build -c release --product traffic-compare >&2
binary="$(swift build -c release --show-bin-path)/traffic-compare"

tag="$$"
ns_a="sluice-traffic-$tag-a"
ns_b="sluice-traffic-$tag-b"
if_a="slt${tag}a"
if_b="slt${tag}b"
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
