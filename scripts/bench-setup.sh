#!/bin/bash
# Path: scripts/bench-setup.sh. Set-up time (wallNsFromOpen - elapsedNs) of one instance vs two fanned-out instances, interleaved.
BIN=${BIN:-.build-rel/release/sluice}; CAP=${1:-/tmp/udp.pcap}; ROUNDS=${2:-7}
for r in $(seq $ROUNDS); do
  for v in one fanout; do
    if [ $v = one ]; then args="--cores 0"; else args="--cores 0,1 --placement fanout ${FANOUT_BY:+--fanout-by $FANOUT_BY}"; fi
    $BIN replay $CAP --topspeed --json --wait-mode busy-poll --stages 3 --loop 5 $args 2>/dev/null \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print('$v', (d['wallNsFromOpen']-d['elapsedNs'])/1e6)"
  done
done | python3 -c "
import sys, statistics as st
rows=[l.split() for l in sys.stdin]; one=[float(v) for k,v in rows if k=='one']; fan=[float(v) for k,v in rows if k=='fanout']
print(f'set-up ms, median of {len(one)} interleaved rounds: one instance {st.median(one):.1f}, two fanned-out instances {st.median(fan):.1f}; ratio {st.median(f/o for f,o in zip(fan,one)):.2f}x')
"
