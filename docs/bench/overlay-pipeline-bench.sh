#!/bin/sh
# Redirect vs forwarding through the real pipeline (issue 15): the consumer host's OverlayHost loop
# (AF_PACKET RX on the VM veth -> redirect -> AF_PACKET TX on the underlay veth) in redirect mode against
# the same loop forwarding the same frames without redirect (`forwardOnly`: parse + MAC rewrite + TX),
# driven by one generator at top speed (`sluice replay --topspeed --iface`, AF_PACKET TX ring).
#
#   gen ns: G0 ==veth== CV (ch ns, the consumer VM port) ... host ... CU (ch ns, underlay) ==veth== S0 (sink ns)
#
# Per round and mode: the host (pinned to CPU 1) and the generator (CPU 0) start, WARMUP s later the counters
# are read, SECONDS later again. Reported per round: offered pps (CV rx), forwarded pps (CU tx), host
# process CPU ns per forwarded frame, whole-machine busy CPU ns per forwarded frame (/proc/stat, all cores).
# Modes (MODES, default "redirect forward kernel"; also redirect-fullparse, forward-fullparse: PacketParser for
# every frame instead of OverlayFastParse) run in turn each round, the order rotated every round; medians at the end.
# `kernel` is the anchor: no host process; the consumer host namespace's kernel routes the same frames
# (ip_forward on, CV given the frames' destination MAC and 198.19.1.1/24, a route to the service's /24 via
# the sink's veth with a static neighbour), with RPS steering CV's receive work to CPU 1, where the host
# thread runs in the other modes; all of it is undone after the round. Its CPU is softirq time: compare
# machine_ns_per_frame (all cores, generator included in every mode), not host_ns_per_frame.
# usage (root): overlay-pipeline-bench.sh DRIVER SLUICE [FLOWS] [PAYLOAD] [ROUNDS] [SECONDS] [WARMUP]
#   DRIVER: docs/bench/overlay-bench-build.sh's output; SLUICE: a release sluice with `replay --iface`.
set -eu
DRIVER=$1; SLUICE=$2; FLOWS=${3:-1024}; PAYLOAD=${4:-64}; ROUNDS=${5:-5}; SECS=${6:-4}; WARM=${7:-1}
P=ovp$$
G=${P}g; C=${P}c; S=${P}s
PCAP=/tmp/$P.pcap
cleanup() {
  for n in $G $C $S; do ip netns del $n 2>/dev/null || true; done
  rm -f $PCAP /tmp/$P.results /tmp/$P.host
}
trap cleanup EXIT INT TERM
for n in $G $C $S; do ip netns add $n; ip -n $n link set lo up; done
ip link add ${P}g0 netns $G type veth peer name ${P}cv netns $C
ip link add ${P}cu netns $C type veth peer name ${P}s0 netns $S
for pair in "$G ${P}g0" "$C ${P}cv" "$C ${P}cu" "$S ${P}s0"; do
  set -- $pair
  ip -n $1 link set $2 up
  ip netns exec $1 ethtool -K $2 tx off tso off gso off gro off >/dev/null 2>&1 || true
done
"$DRIVER" pcap $PCAP "$FLOWS" "$PAYLOAD"
stat_of() { ip netns exec $1 cat /sys/class/net/$2/statistics/$3; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
proc_cpu() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
CV_MAC=$(ip netns exec $C cat /sys/class/net/${P}cv/address)
S0_MAC=$(ip netns exec $S cat /sys/class/net/${P}s0/address)
kernel_route() {  # on|off: the kernel-forwarding anchor's routing in the consumer host namespace
  if [ "$1" = on ]; then
    ip -n $C link set ${P}cv address 02:53:4c:01:00:01
    ip -n $C addr add 198.19.1.1/24 dev ${P}cv
    ip -n $C addr add 198.18.0.1/30 dev ${P}cu
    ip -n $C neigh replace 198.18.0.2 lladdr $S0_MAC dev ${P}cu nud permanent
    ip -n $C route add 198.19.100.0/24 via 198.18.0.2 dev ${P}cu
    ip netns exec $C sysctl -qw net.ipv4.ip_forward=1
    ip netns exec $C sh -c "echo 2 > /sys/class/net/${P}cv/queues/rx-0/rps_cpus"
  else
    ip netns exec $C sh -c "echo 0 > /sys/class/net/${P}cv/queues/rx-0/rps_cpus"
    ip netns exec $C sysctl -qw net.ipv4.ip_forward=0
    ip -n $C route del 198.19.100.0/24 via 198.18.0.2 dev ${P}cu 2>/dev/null || true
    ip -n $C addr flush dev ${P}cv
    ip -n $C addr flush dev ${P}cu
    ip -n $C neigh flush dev ${P}cu 2>/dev/null || true
    ip -n $C link set ${P}cv address $CV_MAC
  fi
}
HZ=$(getconf CLK_TCK)
RESULTS=/tmp/$P.results
: > $RESULTS
MODES=${MODES:-redirect forward kernel}
one() {  # mode
  mode=$1
  base=${mode%-fullparse}; fast=1; [ "$base" = "$mode" ] || fast=0
  if [ "$mode" = kernel ]; then
    kernel_route on
    sleep "$((WARM + SECS + 2))" > /tmp/$P.host 2>&1 &
  else
    taskset -c 1 "$DRIVER" host $base $C ${P}cv ${P}cu $((WARM + SECS + 2)) $fast > /tmp/$P.host 2>&1 &
  fi
  hpid=$!
  sleep 0.5
  ip netns exec $G "$SLUICE" replay --topspeed --iface ${P}g0 --loop 1000000 --cores 0 --stages 2 $PCAP >/dev/null 2>&1 &
  gpid=$!
  sleep "$WARM"
  o0=$(stat_of $C ${P}cv rx_packets); f0=$(stat_of $C ${P}cu tx_packets); b0=$(busy); h0=$(proc_cpu $hpid); t0=$(date +%s.%N)
  sleep "$SECS"
  o1=$(stat_of $C ${P}cv rx_packets); f1=$(stat_of $C ${P}cu tx_packets); b1=$(busy); h1=$(proc_cpu $hpid); t1=$(date +%s.%N)
  kill $gpid 2>/dev/null || true; wait $gpid 2>/dev/null || true
  wait $hpid || true
  [ "$mode" = kernel ] && kernel_route off
  echo "$mode $o0 $o1 $f0 $f1 $b0 $b1 $h0 $h1 $t0 $t1" | awk -v hz=$HZ '{
    dt=$11-$10; f=$5-$4; o=$3-$2;
    printf "%s offered_pps %.0f forwarded_pps %.0f host_ns_per_frame %.0f machine_ns_per_frame %.0f\n",
      $1, o/dt, f/dt, (f>0 ? ($9-$8)/hz*1e9/f : 0), (f>0 ? ($7-$6)/hz*1e9/f : 0) }' | tee -a $RESULTS
  sed 's/^/  /' /tmp/$P.host
}
echo "flows $FLOWS payload $PAYLOAD rounds $ROUNDS seconds $SECS warmup $WARM load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M) UTC"
r=1
while [ $r -le "$ROUNDS" ]; do
  set -- $MODES
  i=1; while [ $i -lt $r ]; do m=$1; shift; set -- "$@" $m; i=$((i + 1)); done  # rotate by r-1
  for m in "$@"; do one $m; done
  r=$((r + 1))
done
med() { grep "^$1 " $RESULTS | awk -v k=$2 '{for(i=2;i<NF;i+=2) if($i==k) print $(i+1)}' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for k in offered_pps forwarded_pps host_ns_per_frame machine_ns_per_frame; do
  line="median $k"; for m in $MODES; do line="$line $m $(med $m $k)"; done; echo "$line"
done
case " $MODES " in *" kernel "*)
  for m in $MODES; do
    [ "$m" = kernel ] && continue
    echo "ratio machine_ns_per_frame kernel/$m $(echo "$(med kernel machine_ns_per_frame) $(med $m machine_ns_per_frame)" | awk '{printf "%.3f", ($2>0 ? $1/$2 : 0)}')"
    echo "ratio forwarded_pps $m/kernel $(echo "$(med $m forwarded_pps) $(med kernel forwarded_pps)" | awk '{printf "%.3f", ($2>0 ? $1/$2 : 0)}')"
  done;;
esac
case " $MODES " in *" redirect "*" forward "*|*" forward "*" redirect "*)
  echo "ratio forwarded_pps redirect/forward $(echo "$(med redirect forwarded_pps) $(med forward forwarded_pps)" | awk '{printf "%.3f", $1/$2}')"
  echo "ratio host_ns_per_frame forward/redirect $(echo "$(med forward host_ns_per_frame) $(med redirect host_ns_per_frame)" | awk '{printf "%.3f", $1/$2}')";;
esac
rm -f $RESULTS /tmp/$P.host
