#!/usr/bin/env bash
# Ring benchmarks (issue 2): builds Benchmarks/ in release and runs ring-compare, which interleaves the
# Swift wrapper, the C ring (ends 128 and 64 bytes apart) and DPDK's rte_ring, pinned to two CPUs, and
# prints a markdown table of medians and same-run ratios on stdout (build output goes to stderr).
# Needs libdpdk-dev (`make bench-deps`). Usage: scripts/bench-ring.sh [ring-compare options], e.g.
# --runs 7, --cpus 2,3, --verbose (every run on stderr); `--help` lists them.
set -euo pipefail
cd "$(dirname "$0")/../Benchmarks"
swift build -c release --product ring-compare >&2
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: ${model:-unknown CPU}, $(nproc) CPUs, load average $(cut -d ' ' -f 1-3 /proc/loadavg) before the run;" \
  "$(swift --version 2>/dev/null | head -n 1)."
echo
"$(swift build -c release --show-bin-path)/ring-compare" "$@"
