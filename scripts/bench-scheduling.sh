#!/usr/bin/env bash
# Migration scheduling (issue 14): the simulator at the issue's scale, Sluice against the oracle and
# both anchors on one generated world, in rounds. Prints each round and the medians of Sluice's wall and
# CPU time (single-threaded: the process's user+sys is all of it).
#   scripts/bench-scheduling.sh [rounds=3] [extra schedule-sim flags...]
set -euo pipefail
cd "$(dirname "$0")/../Benchmarks"
rounds=${1:-3}; shift || true
SWIFT=${SWIFT:-swift}
$SWIFT build -c release --product schedule-sim -j 2 >/dev/null
bin=.build/release/schedule-sim
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
walls=(); cpus=()
for round in $(seq 1 "$rounds"); do
    out=$(mktemp)
    TIMEFORMAT='%R %U %S'
    { time "$bin" --policies sluice "$@" >"$out"; } 2>"$out.time"
    read -r real user sys <"$out.time"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')
    echo "round $round (sluice alone): wall ${real}s, cpu ${cpu}s"
    walls+=("$real"); cpus+=("$cpu")
    rm -f "$out" "$out.time"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median wall $(median "${walls[@]}") s, median cpu $(median "${cpus[@]}") s (one process: generation of the world + a warm-up week + the measured week)"
echo "# all policies, same world:"
"$bin" "$@"
