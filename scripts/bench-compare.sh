#!/usr/bin/env bash
# Two sluice binaries (an older build and a newer one) on the same capture, same cores, same run:
# `sluice replay --topspeed --loop LOOPS --stages STAGES --wait-mode busy-poll` to a null sink, one core
# fused (--cores 0), two instances fanned out by blocks and spread over two cores, and the 1-thread
# pcap_next_ex loop on core 0 (the anchor). Interleaved rounds (the order rotates), medians; the ratio
# of the newer to the older binary is the median of per-round ratios. Output goes to files while a
# variant runs (nothing else started beside it). Clock: sluice's wallNsFromOpen (capture open to
# last packet), the loop's own from pcap_open_offline; CPU: each process's whole CPU time over the
# same span (getrusage, every thread), as packets per CPU-second.
# VARIANTS (default "one blocks spread") may also name `flows` (two instances fanned out by flow) and
# `auto` (--placement auto, by flow); with auto, each build's auto is also given against the best of
# its own one, spread and flows of the round (whichever of those VARIANTS names), and auto's
# measuring time (fanout.measuringNs).
# Usage: [VARIANTS="..."] scripts/bench-compare.sh OLD_BIN NEW_BIN [ROUNDS] [PACKETS] [LOOPS] [STAGES]  (7, 1000000, 5, 3)
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
cd "$(dirname "$0")/.."
rounds=${3:-7}
packets=${4:-1000000}
loops=${5:-5}
stages=${6:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/pcap_next_loop" scripts/anchors/pcap_next_loop.c -lpcap
python3 scripts/anchors/write_udp_capture.py "$work/udp.pcap" "$packets"
cat "$work/udp.pcap" >/dev/null
echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) CPUs, load average" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run. old: $old, new: $new"
read -r -a kinds <<<"${VARIANTS:-one blocks spread}"
variants=(anchor)
for kind in "${kinds[@]}"; do
  case $kind in one|blocks|spread|flows|auto) variants+=("old-$kind" "new-$kind") ;;
    *) echo "bench-compare: unknown variant $kind (one, blocks, spread, flows, auto)" >&2; exit 2 ;; esac
done
for r in $(seq 1 "$rounds"); do
  shift_by=$(( (r - 1) % ${#variants[@]} ))
  for v in "${variants[@]:shift_by}" "${variants[@]:0:shift_by}"; do
    bin=$old; [[ $v == new-* ]] && bin=$new
    args=(replay "$work/udp.pcap" --topspeed --json --wait-mode busy-poll --stages "$stages" --loop "$loops")
    case $v in
      anchor) taskset -c 0 "$work/pcap_next_loop" "$work/udp.pcap" "$loops" >"$work/$v.$r" ;;
      *-one) "$bin" "${args[@]}" --cores 0 >"$work/$v.$r" ;;
      *-blocks) "$bin" "${args[@]}" --cores 0,1 --placement fanout --fanout-by blocks >"$work/$v.$r" ;;
      *-spread) "$bin" "${args[@]}" --cores 0,1 --placement spread >"$work/$v.$r" ;;
      *-flows) "$bin" "${args[@]}" --cores 0,1 --placement fanout >"$work/$v.$r" ;;
      *-auto) "$bin" "${args[@]}" --cores 0,1 --placement auto >"$work/$v.$r" ;;
    esac
  done
done
python3 - "$work" "$rounds" "$((packets * loops))" "${kinds[@]}" <<'PY'
import json, statistics, sys
work, rounds, total, kinds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def load(name, r):
    d = json.load(open(f"{work}/{name}.{r}"))
    count = d.get("delivered", d.get("packets"))
    assert count == total, f"{name}: {count} packets of {total}"
    return d, count
def rate(name, r):
    d, count = load(name, r)
    return count / (d["wallNsFromOpen"] / 1e9) / 1e6
def per_cpu(name, r):
    d, count = load(name, r)
    return count / (d["processCpuNs"] / 1e9) / 1e6
med = statistics.median
rs = range(1, rounds + 1)
print(f"{total} 64-byte UDP packets, null sink, medians of {rounds} interleaved rounds (M packets/s):")
anchor = [rate("anchor", r) for r in rs]
print(f"  pcap_next_ex loop, core 0: {med(anchor):.2f} ({med([per_cpu('anchor', r) for r in rs]):.2f} per CPU-second)")
labels = {"one": "1 core, fused", "blocks": "2 instances fanned out by blocks", "spread": "2 cores, spread",
          "flows": "2 instances fanned out by flow", "auto": "auto (by flow), 2 cores"}
for what in kinds:
    label = labels[what]
    o = [rate(f"old-{what}", r) for r in rs]
    n = [rate(f"new-{what}", r) for r in rs]
    print(f"  {label}: old {med(o):.2f} ({med([a / b for a, b in zip(o, anchor)]):.3f}x the loop), "
          f"new {med(n):.2f} ({med([a / b for a, b in zip(n, anchor)]):.3f}x the loop); "
          f"new/old {med([a / b for a, b in zip(n, o)]):.3f}x; per CPU-second old "
          f"{med([per_cpu(f'old-{what}', r) for r in rs]):.2f}, new {med([per_cpu(f'new-{what}', r) for r in rs]):.2f}, "
          f"new/old {med([per_cpu(f'new-{what}', r) / per_cpu(f'old-{what}', r) for r in rs]):.3f}x")
fixed = [k for k in ("one", "spread", "flows") if k in kinds]
if "auto" in kinds and fixed:
    for build in ("old", "new"):
        vs = [rate(f"{build}-auto", r) / max(rate(f"{build}-{k}", r) for k in fixed) for r in rs]
        measuring = [(load(f"{build}-auto", r)[0].get("fanout") or {}).get("measuringNs") for r in rs]
        measuring = [m / 1e6 for m in measuring if m]
        shapes = [str(load(f"{build}-auto", r)[0].get("placement")) for r in rs]
        print(f"  {build} auto against the best of its {', '.join(fixed)} each round: {med(vs):.3f}x "
              f"(rounds {min(vs):.3f}-{max(vs):.3f}); measuring {f'{med(measuring):.1f} ms' if measuring else 'not reported'}; "
              f"placements {dict((s, shapes.count(s)) for s in set(shapes))}")
PY
