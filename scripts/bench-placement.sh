#!/usr/bin/env bash
# Placement benchmark (issue 18): the measured placement (`--placement auto`, the default) against every
# fixed placement on the same cores, and the 1-thread pcap_next_ex loop, on the same capture in the same
# run. Interleaved rounds (the order rotates), medians; ratios are medians of per-round ratios, except the
# two auto goals', which are auto's median against the median of the fixed placement with the highest one.
#
# Variants, all `sluice replay --topspeed --loop LOOPS --stages STAGES --wait-mode busy-poll` to a null sink
# (issue 18's command; STAGES 3 there):
#   one      --cores 0                      run to completion on one core, fused (fixed)
#   staged   --cores 0 --no-fuse            the same through the rings between stages (fixed, for the gain)
#   spread   --cores 0,1 --placement spread the source on core 0, the other stages on core 1 (fixed)
#   fanout   --cores 0,1 --placement fanout one instance per core, the capture split by flow (fixed)
#   auto     --cores 0,1 --placement auto   measured: fans out, or calibrates and moves stages, if it pays
#   fanblocks  --cores 0,1 --placement fanout --fanout-by blocks  one instance per core, the file's blocks
#            read in turn: every record read once (fixed; order kept within a block, not within a flow)
#   autoblocks --cores 0,1 --placement auto --fanout-by blocks    measured, allowed to fan out by blocks
#   anchor   the pcap_next_ex loop on core 0 over the same file LOOPS times (scripts/anchors/pcap_next_loop.c)
#   spread2, fanout2  spread and fanout run a second time in each round (a control: how far a fixed
#            placement falls below the best of three noisy runs of the same round by noise alone)
# Clock: from just before the capture is opened to the last packet (sluice's wallNsFromOpen: the
# calibration and any moves are inside it); CPU: the whole process (getrusage), same span.
# Goals: auto's median >= 0.95x the median of the best fixed placement (the fixed placement whose median is
# highest; auto by flow against one, spread and fanout by flow; auto by blocks against one, spread and
# fanout by blocks); two instances fanned out >= 1.6x one core; one core >= 0.8x the loop. Also printed:
# auto against the fastest of the three fixed runs of each round (the median of per-round ratios), with
# the best placement's second run's same ratio as its noise floor (spread's or fanout's, whichever has
# the best median): the best of three noisy runs is biased upward, so a fixed placement equal to the
# best one reads below 1 by that statistic alone.
# Usage: scripts/bench-placement.sh [RUNS] [PACKETS] [LOOPS] [STAGES]   (defaults 7, 1000000, 5, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
packets=${2:-1000000}
loops=${3:-5}
stages=${4:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# SLUICE_BIN: an already built release binary (skips the build).
sluice=${SLUICE_BIN:-.build/release/sluice}
[ -n "${SLUICE_BIN:-}" ] || swift build -c release --product sluice >&2
cc -O2 -o "$work/pcap_next_loop" scripts/anchors/pcap_next_loop.c -lpcap
python3 scripts/anchors/write_udp_capture.py "$work/udp.pcap" "$packets"
cat "$work/udp.pcap" >/dev/null

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: ${model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r), load average" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run."
echo

replay() { "$sluice" replay "$work/udp.pcap" --topspeed --json --wait-mode busy-poll --stages "$stages" \
  --loop "$loops" "$@"; }
for r in $(seq 1 "$runs"); do
  variants=(anchor one staged spread fanout auto fanblocks autoblocks spread2 fanout2)
  shift_by=$(( (r - 1) % ${#variants[@]} ))
  for v in "${variants[@]:shift_by}" "${variants[@]:0:shift_by}"; do
    case $v in
      anchor) taskset -c 0 "$work/pcap_next_loop" "$work/udp.pcap" "$loops" >>"$work/anchor.jsonl" ;;
      one) replay --cores 0 >>"$work/one.jsonl" ;;
      staged) replay --cores 0 --no-fuse >>"$work/staged.jsonl" ;;
      fanout) replay --cores 0,1 --placement fanout >>"$work/fanout.jsonl" ;;
      spread) replay --cores 0,1 --placement spread >>"$work/spread.jsonl" ;;
      spread2) replay --cores 0,1 --placement spread >>"$work/spread2.jsonl" ;;
      fanout2) replay --cores 0,1 --placement fanout >>"$work/fanout2.jsonl" ;;
      auto) replay --cores 0,1 --placement auto >>"$work/auto.jsonl" ;;
      fanblocks) replay --cores 0,1 --placement fanout --fanout-by blocks >>"$work/fanblocks.jsonl" ;;
      autoblocks) replay --cores 0,1 --placement auto --fanout-by blocks >>"$work/autoblocks.jsonl" ;;
    esac
  done
done

python3 - "$work" "$runs" "$((packets * loops))" "$stages" <<'PY'
import json, os, statistics, sys
work, runs, total, stages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rows(name): return [json.loads(l) for l in open(os.path.join(work, name + ".jsonl"))]
def measure(d):
    count = d.get("delivered", d.get("packets"))
    assert count == total, f"{count} packets of {total}: {d.get('failure')}"
    return count, d["wallNsFromOpen"], d["processCpuNs"]
med = statistics.median
pps = lambda m: m[0] / (m[1] / 1e9)
per_cpu = lambda m: m[0] / (m[2] / 1e9)
names = ["anchor", "one", "staged", "spread", "fanout", "auto", "fanblocks", "autoblocks", "spread2", "fanout2"]
data = {name: [measure(d) for d in rows(name)] for name in names}
print(f"{total} 64-byte UDP packets (a capture read LOOPS times), null sink, {stages} stages, "
      f"medians of {runs} interleaved rounds.\n")
print("| what | M packets/s | vs loop | cores busy | M packets per CPU-second |")
print("|---|---:|---:|---:|---:|")
labels = {"anchor": "C pcap_next_ex loop, core 0 (anchor)", "one": "fixed: 1 core, run to completion (fused)",
          "staged": "fixed: 1 core, through the rings (--no-fuse)", "spread": "fixed: 2 cores, spread",
          "fanout": "fixed: 2 instances fanned out by flow", "auto": "**measured (auto), 2 cores**",
          "fanblocks": "fixed: 2 instances fanned out by blocks",
          "autoblocks": "**measured (auto, --fanout-by blocks), 2 cores**",
          "spread2": "control: spread again (same round)", "fanout2": "control: fanned out by flow again (same round)"}
for name in names:
    rows_ = data[name]
    ratio = med(pps(d) / pps(a) for d, a in zip(rows_, data["anchor"]))
    print(f"| {labels[name]} | {med(map(pps, rows_))/1e6:.2f} | {ratio:.2f}x | {med(d[2]/d[1] for d in rows_):.2f} | "
          f"{med(map(per_cpu, rows_))/1e6:.2f} |")
def best_fixed(fixed):
    """The fixed placement whose median rate is highest: (name, median rate)."""
    return max(((name, med(map(pps, data[name]))) for name in fixed), key=lambda pair: pair[1])
auto_med = med(map(pps, data["auto"]))
best_name, best_med = best_fixed(["one", "spread", "fanout"])
vs_best = auto_med / best_med
print(f"\nGoal, auto at least 0.95x the best fixed placement ({best_name}, by median): "
      f"{'met' if vs_best >= 0.95 else 'NOT met'} ({vs_best:.3f}x).")
blocks_med = med(map(pps, data["autoblocks"]))
best_blocks_name, best_blocks_med = best_fixed(["one", "spread", "fanblocks"])
vs_best_blocks = blocks_med / best_blocks_med
print(f"Goal, auto --fanout-by blocks at least 0.95x the best fixed placement by blocks ({best_blocks_name}, by median): "
      f"{'met' if vs_best_blocks >= 0.95 else 'NOT met'} ({vs_best_blocks:.3f}x).")
best = [max(pps(o), pps(s), pps(f)) for o, s, f in zip(data["one"], data["spread"], data["fanout"])]
per_round = lambda name: med(pps(a) / b for a, b in zip(data[name], best))
twin = {"spread": "spread2", "fanout": "fanout2"}.get(best_name)
floor = f"; {best_name} run again, the same way: {per_round(twin):.3f}x" if twin else ""
print(f"Against the fastest of the three fixed runs of each round (median of per-round ratios): auto {per_round('auto'):.3f}x{floor}.")
best_blocks = [max(pps(o), pps(s), pps(f)) for o, s, f in zip(data["one"], data["spread"], data["fanblocks"])]
print(f"auto --fanout-by blocks against the fastest fixed run by blocks of each round: "
      f"{med(pps(a) / b for a, b in zip(data['autoblocks'], best_blocks)):.3f}x.")
if twin:
    print(f"{best_name} run twice in each round: its second run's median {med(map(pps, data[twin])) / best_med:.3f}x its first's.")
one_vs_loop = med(pps(o) / pps(a) for o, a in zip(data["one"], data["anchor"]))
print(f"Goal, 1 core at least 0.8x the one-thread loop: {'met' if one_vs_loop >= 0.8 else 'NOT met'} ({one_vs_loop:.3f}x).")
fan_vs_one = med(pps(f) / pps(o) for f, o in zip(data["fanout"], data["one"]))
print(f"2 instances fanned out by flow: {fan_vs_one:.3f}x one core.")
blocks_vs_one = med(pps(f) / pps(o) for f, o in zip(data["fanblocks"], data["one"]))
print(f"Goal, 2 instances fanned out (by blocks) at least 1.6x one core: {'met' if blocks_vs_one >= 1.6 else 'NOT met'} ({blocks_vs_one:.3f}x).")
fused_gain = med(pps(o) / pps(s) for o, s in zip(data["one"], data["staged"]))
print(f"Fusing one core's stages: {fused_gain:.3f}x the same core through the rings.")
decisions = [d for d in rows("auto")]
shapes = {}
for d in decisions:
    key = str(d.get("placement"))
    shapes[key] = shapes.get(key, 0) + 1
handoffs = [d['handoff']['handoffNsPerItem'] for d in decisions if d.get('handoff')]
others = [d['fanout']['othersNsPerRecord'] for d in decisions if d.get('fanout')]
mid = [d['fannedOutMidRun'] for d in decisions if d.get('fannedOutMidRun')]
if mid:
    print(f"auto fanned out mid-run in {len(mid)} of {len(decisions)} rounds, at " +
          ", ".join(f"{m['stoppedAtNs'] / 1e6:.0f} ms (its pace {(m['singleRecordsPerSecond'] or 0) / 1e6:.1f} M/s, "
                    f"the trial's {(m['trialRecordsPerSecond'] or 0) / 1e6:.1f}, paths made in {m['setUpNs'] / 1e6:.1f} ms)" for m in mid))
print(f"auto's final placements over the rounds: {shapes}; hand-off per side (ns/item), median: "
      f"{med(handoffs) if handoffs else float('nan'):.1f}; another instance's record (ns), median: "
      f"{med(others) if others else float('nan'):.1f}")
# auto's trials before each round's run (M records/s), next to what each fixed shape then ran.
trials = [d['fanout'].get('trials') or {} for d in decisions if d.get('fanout')]
def trial_median(key):
    values = [t[key] / 1e6 for t in trials if t.get(key)]
    return f"{med(values):.2f}" if values else "-"
print(f"auto's trials, median M records/s: one core {trial_median('oneCore')}, pipelined {trial_median('pipelined')}, "
      f"fanned out {trial_median('fannedOut')}")
# Each round (M packets/s), as the per-round ratios see them.
for r, (o, s_, f, a, d, s2, f2) in enumerate(zip(data["one"], data["spread"], data["fanout"], data["auto"], decisions,
                                                 data["spread2"], data["fanout2"]), 1):
    print(f"round {r}: one {pps(o)/1e6:.2f}, spread {pps(s_)/1e6:.2f} (again {pps(s2)/1e6:.2f}), fanout {pps(f)/1e6:.2f} "
          f"(again {pps(f2)/1e6:.2f}), auto {pps(a)/1e6:.2f} "
          f"({d.get('placement')}, hand-off {(d.get('handoff') or {}).get('handoffNsPerItem', float('nan')):.1f} ns): "
          f"{pps(a) / max(pps(o), pps(s_), pps(f)):.3f}x the fastest fixed run")
measuring = [d['fanout']['measuringNs'] / 1e6 for d in decisions if (d.get('fanout') or {}).get('measuringNs')]
if measuring:
    print(f"auto's measuring before its run (calibration, sample, trials), median: {med(measuring):.1f} ms "
          f"(rounds {min(measuring):.1f}-{max(measuring):.1f})")
PY
