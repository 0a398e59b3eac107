#!/usr/bin/env bash
# AF_XDP vs AF_PACKET benchmark (issue 17): builds scripts/bench-afxdp.c with gcc -O2 against CShims'
# xdp.c and afpacket.c (Sluice's own ring code), makes two throwaway network namespaces joined by one
# veth pair (198.18.0.1/30 and 198.18.0.2/30, IPv6 off), runs interleaved rounds of
#   rx-xdp-native, rx-xdp-generic, rx-packet  (same AF_PACKET TX-ring sender at top speed in namespace A)
#   tx-xdp, tx-packet                         (one sender in namespace A, nothing receiving)
# and deletes the namespaces on any exit. Prints each run and a markdown table of medians (pps, CPU
# per packet over all cores from /proc/stat, and of this process from getrusage).
# Needs root. Usage: scripts/bench-afxdp.sh [ROUNDS (5)] [SECONDS per run (3)]
set -euo pipefail
rounds="${1:-5}"
seconds="${2:-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" != 0 ]; then
  echo "bench-afxdp.sh needs root (network namespaces, XDP, AF_PACKET)" >&2
  exit 1
fi
mkdir -p "$root/out"
binary="$root/out/bench-afxdp"
gcc -O2 -std=gnu11 -Wall -I"$root/CShims/include" "$root/scripts/bench-afxdp.c" "$root/CShims/xdp.c" \
  "$root/CShims/afpacket.c" -o "$binary" -lxdp -lbpf -lpthread

tag="$$"
ns_a="sluice-xbench-$tag-a"
ns_b="sluice-xbench-$tag-b"
if_a="slx${tag}a"
if_b="slx${tag}b"
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
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run; commit $(git -C "$root" rev-parse --short HEAD)."
echo "Rounds: $rounds, ${seconds} s per run, modes interleaved within each round."
echo
modes=(rx-xdp-native rx-xdp-generic rx-packet tx-xdp tx-packet)
results="$(mktemp)"
for round in $(seq 1 "$rounds"); do
  for mode in "${modes[@]}"; do
    line="$(timeout 60 "$binary" "$mode" "$ns_a" "$if_a" "$ns_b" "$if_b" "$seconds" 2>/dev/null)"
    echo "round=$round $line" | tee -a "$results"
  done
done
echo "Load average after: $(cut -d ' ' -f 1-3 /proc/loadavg)."
echo
echo "| mode | pps (median) | CPU ns/packet, all cores | CPU ns/packet, process | busy cores |"
echo "|---|---:|---:|---:|---:|"
for mode in "${modes[@]}"; do
  median() { grep " mode=$mode " "$results" | sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  echo "| $mode | $(median pps) | $(median cpu_all_ns_per_pkt) | $(median cpu_proc_ns_per_pkt) | $(median cores_busy) |"
done
rm -f "$results"
