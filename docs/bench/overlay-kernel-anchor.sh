#!/bin/sh
# The kernel-forwarding anchor of the overlay bench (issue 15): consumer -> router -> producer namespaces
# joined by veths (198.18.200.0/24, 198.18.201.0/24), the router forwarding by plain IPv4 routing; iperf3
# UDP with 64-byte payloads from the consumer to the producer, FLOWS parallel streams, SECONDS long.
# Prints the packets the router forwarded per second and the machine's CPU busy share over the run.
# usage (root): overlay-kernel-anchor.sh [FLOWS] [SECONDS]
set -eu
FLOWS=${1:-1}; SECONDS_=${2:-5}
P=ovk$$
cleanup() { ip netns del ${P}c 2>/dev/null || true; ip netns del ${P}r 2>/dev/null || true; ip netns del ${P}p 2>/dev/null || true; }
trap cleanup EXIT
for n in c r p; do ip netns add ${P}$n; ip -n ${P}$n link set lo up; done
ip link add ${P}c0 netns ${P}c type veth peer name ${P}r0 netns ${P}r
ip link add ${P}r1 netns ${P}r type veth peer name ${P}p0 netns ${P}p
ip -n ${P}c addr add 198.18.200.2/24 dev ${P}c0; ip -n ${P}c link set ${P}c0 up
ip -n ${P}r addr add 198.18.200.1/24 dev ${P}r0; ip -n ${P}r link set ${P}r0 up
ip -n ${P}r addr add 198.18.201.1/24 dev ${P}r1; ip -n ${P}r link set ${P}r1 up
ip -n ${P}p addr add 198.18.201.2/24 dev ${P}p0; ip -n ${P}p link set ${P}p0 up
ip -n ${P}c route add default via 198.18.200.1
ip -n ${P}p route add default via 198.18.201.1
ip netns exec ${P}r sysctl -qw net.ipv4.ip_forward=1
ip netns exec ${P}p iperf3 -s -1 -B 198.18.201.2 >/dev/null 2>&1 &
sleep 0.5
tx() { ip netns exec ${P}r cat /sys/class/net/${P}r1/statistics/tx_packets; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
before=$(tx); cpu0=$(busy); t0=$(date +%s.%N)
ip netns exec ${P}c iperf3 -c 198.18.201.2 -u -l 64 -b 0 -P "$FLOWS" -t "$SECONDS_" >/dev/null
t1=$(date +%s.%N); cpu1=$(busy); after=$(tx)
echo "$before $after $t0 $t1 $cpu0 $cpu1" | awk -v f="$FLOWS" '{pps=($2-$1)/($4-$3); printf "kernel routing, %d flows: %.0f pps forwarded (router veth tx), CPU busy %.0f%% of 2 cores over the run\n", f, pps, 100*($7-$5)/($8-$6)}'
