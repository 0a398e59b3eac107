#!/usr/bin/env bash
# VM migration (issue 13): total time and downtime of Sluice-driven moves (template: convergence chosen by
# the measured dirty rate; MigrationExecutor, agent confirmation included) against the same move driven by
# plain QMP commands with QEMU's default parameters (the anchor: migrate-incoming + migrate, max-bandwidth
# set to the link, nothing else) and with auto-converge switched on by hand (anchor-ac: the anchor's
# strongest common form for a busy guest); the stream over a Unix socket for all; one machine, tcg,
# interleaved (the order rotates per round):
#   idle guest, 256 MiB, link 128 MiB/s (QEMU's default max-bandwidth);
#   dirtying guest (64 MiB rewritten in a loop), 256 MiB, link 32 MiB/s; a move counts as not converging
#   after LIMIT seconds (default 60) for both drivers.
# Guests: scripts/guest/build-guest-image.sh (Debian's cloud kernel + busybox initramfs + agent), -cpu Nehalem.
# Usage: [LIMIT=60] [CASES="idle dirty"] scripts/bench-migration.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
limit=${LIMIT:-60}
cases=${CASES:-idle dirty}
command -v qemu-system-x86_64 >/dev/null || { echo "needs qemu-system-x86_64 (make deps)" >&2; exit 1; }
guest=${SLUICE_GUEST_DIR:-$PWD/.build/guest}
scripts/guest/build-guest-image.sh "$guest" >&2
[ -n "${NO_BUILD:-}" ] || (cd Benchmarks && swift build -c release -j 2 --product migration-bench >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/migration-bench"
results=$(mktemp /tmp/bench-migration.XXXXXX)
trap 'rm -f "$results"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(qemu-system-x86_64 --version | head -1)" >&2
for r in $(seq 1 "$rounds"); do
  case $((r % 3)) in 1) drivers="sluice anchor anchor-ac" ;; 2) drivers="anchor anchor-ac sluice" ;; *) drivers="anchor-ac sluice anchor" ;; esac
  for driver in $drivers; do
    if [[ " $cases " == *" idle "* ]]; then
      echo "round $r: $driver, idle" >&2
      "$binary" --driver "$driver" --kernel "$guest/vmlinuz" --initrd "$guest/initramfs.gz" --link-mibps 128 \
        --limit-seconds "$limit" | sed 's/^/case=idle /' | tee -a "$results" >&2
    fi
    if [[ " $cases " == *" dirty "* ]]; then
      echo "round $r: $driver, dirtying 64 MiB" >&2
      "$binary" --driver "$driver" --kernel "$guest/vmlinuz" --initrd "$guest/initramfs.gz" --link-mibps 32 --dirty-mib 64 \
        --limit-seconds "$limit" | sed 's/^/case=dirty /' | tee -a "$results" >&2
    fi
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$results" "$rounds" "$limit" <<'PY'
import statistics, sys
path, rounds, limit = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [dict(f.split("=", 1) for f in line.split()) for line in open(path) if line.strip()]
def med(case, driver, key):
    values = [float(r[key]) for r in rows if r["case"] == case and r["driver"] == driver and r.get("status") == "completed" and key in r]
    return f"{statistics.median(values):.0f}" if values else "-"
print(f"{rounds} rounds, medians of completed moves (downtime: also min/max); a move not done after {limit} s counts as not converged\n")
print("| guest | link | driver | completed | total ms (QEMU) | downtime ms (QEMU) | wall ms | CPU ms (all processes) | driver CPU ms | strategy | max throttle % |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
for case, link in (("idle", 128), ("dirty", 32)):
    for driver in ("sluice", "anchor", "anchor-ac"):
        runs = [r for r in rows if r["case"] == case and r["driver"] == driver]
        if not runs: continue
        done = sum(1 for r in runs if r.get("status") == "completed")
        strategy = ",".join(sorted({r.get("strategy", "default") for r in runs}))
        throttle = med(case, driver, "max_throttle_pct")
        print(f"| {case} | {link} MiB/s | {driver} | {done}/{len(runs)} | {med(case, driver, 'total_ms')} | {med(case, driver, 'downtime_ms')} "
              f"| {med(case, driver, 'wall_ms')} | {med(case, driver, 'cpu_ms')} | {med(case, driver, 'driver_cpu_ms')} | {strategy} | {throttle} |")
for case in ("idle", "dirty"):
    for driver in ("sluice", "anchor", "anchor-ac"):
        values = sorted(int(r["downtime_ms"]) for r in rows if r["case"] == case and r["driver"] == driver and "downtime_ms" in r)
        if values: print(f"- {case}, {driver}: downtime of each run (ms, sorted): {values}")
for case in ("idle", "dirty"):
    for anchor in ("anchor", "anchor-ac"):
        s, a = med(case, "sluice", "downtime_ms"), med(case, anchor, "downtime_ms")
        if s != "-" and a != "-":
            print(f"- {case}: downtime Sluice {s} ms vs {anchor} {a} ms -> {'no worse' if float(s) <= float(a) else 'WORSE'}")
        elif s != "-" and any(r["case"] == case and r["driver"] == anchor for r in rows):
            print(f"- {case}: Sluice completes (downtime {s} ms); {anchor} did not converge within {limit} s")
not_conv = [r for r in rows if r["case"] == "dirty" and r["driver"] == "anchor" and r.get("status") != "completed"]
if not_conv:
    print(f"- anchor, dirtying guest: {len(not_conv)} of its runs did not converge; remaining MiB at the limit: "
          + ", ".join(r.get("remaining_mib", "?") for r in not_conv)
          + "; QEMU's expected downtime then (ms): " + ", ".join(r.get("expected_downtime_ms", "?") for r in not_conv))
PY
