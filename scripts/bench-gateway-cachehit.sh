#!/usr/bin/env bash
# The gateway appliance's cache-hit path (issue 11: "MB/s served from the appliance's cache vs pread of
# the same bytes from a local file, goal at least 0.5x"), in one process and one run
# (Benchmarks/Sources/gateway-cachehit): (a) Appliance.read(into:) over an object held whole in the
# appliance's cache, (b) the same reads over loopback TCP from raw-socket clients against ApplianceServer
# on 127.0.0.1 (one connection per thread), (c) pread of the same bytes from the same file in the page
# cache. Same read sizes (1 MiB, 64 KiB), same thread counts (1, 4), rounds interleaved, medians; CPU of
# every thread of the process per MB. The object reaches the cache through an in-process intermediate over
# a directory store on 127.0.0.1 (no WAN, no root); the appliance's counters prove every timed read was a
# hit, and every byte is compared once per path before timing.
# Usage: scripts/bench-gateway-cachehit.sh [extra gateway-cachehit flags, e.g. --rounds 7 --object-mib 128]
#        NO_BUILD=1 uses the existing release build of the Benchmarks package.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${NO_BUILD:-}" ] || (cd Benchmarks && swift build -c release -j 2 --product gateway-cachehit >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/gateway-cachehit"
echo "bench-gateway-cachehit: $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$binary" "$@"
echo "bench-gateway-cachehit: load after $(cut -d' ' -f1-3 /proc/loadavg)" >&2
