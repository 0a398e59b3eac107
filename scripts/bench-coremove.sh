#!/usr/bin/env bash
# Cores between pipelines (issue 18): a busy pipeline and a quiet one share a 2-core service with
# `rebalance:` on; what the busy one gets done when it is placed by measured cost (the default with
# move_cores) against the two fixed ways it could be placed, in the same run, on the same capture.
#
#   quiet  the bundled sample at 2,000 packets/s, LOOPS_QUIET times, `placement: spread` over cores 0,1
#   busy   a 64-byte UDP capture at top speed, LOOPS times, on core 0 (which quiet's source shares)
# Variants (only busy's placement and the core moves differ):
#   auto     busy `placement: auto` (the default), move_cores: true: busy asks for core 1 only when its
#            planner predicts a gain from it, and its planner places its stages over what it holds
#   spread   busy `placement: spread`, move_cores: true: busy takes core 1 when its load fills core 0,
#            and the stage rebalance spreads its stages onto it (what every pipeline did before)
#   one      move_cores: false: busy stays on core 0, run to completion (fused)
# Each round runs the three in a rotating order, each `sluice run --config` with exit_when_drained.
# Measured: busy's packets / its seconds from its launch to its drain (the run summary's pps), and the
# process's CPU (every thread, /proc/PID/stat) from its start to the moment busy's drain is logged
# (polled every 2 ms): it covers busy's span and what came before it (auto's hand-off calibration
# among it), and whatever quiet did meanwhile (2,000 packets/s). Reported: medians, busy's packets per
# CPU-second, and the medians of per-round ratios auto / best fixed (spread or one).
# Usage: scripts/bench-coremove.sh [ROUNDS] [PACKETS] [LOOPS]   (defaults 7, 1000000, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
packets=${2:-1000000}
loops=${3:-10}
loops_quiet=${LOOPS_QUIET:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# SLUICE_BIN: an already built release binary (skips the build).
sluice=${SLUICE_BIN:-.build/release/sluice}
[ -n "${SLUICE_BIN:-}" ] || swift build -c release --product sluice >&2
python3 scripts/anchors/write_udp_capture.py "$work/udp.pcap" "$packets"
cat "$work/udp.pcap" >/dev/null

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: ${model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r), load average" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run."
echo "busy: $packets x 64-byte UDP x $loops at top speed; quiet: sample x $loops_quiet at 2000/s; $rounds rounds"

config() {  # variant -> YAML
  local busy_placement=auto move=true
  case "$1" in
    spread) busy_placement=spread ;;
    one) move=false ;;
  esac
  cat <<YAML
cores: [0, 1]
log_level: info
rebalance: {interval_ms: 50, move_cores: $move}
shutdown: {exit_when_drained: true}
pipelines:
  - name: quiet
    source: {pcap: "Tests/Fixtures/sample.pcap", rate: 2000, loop: $loops_quiet}
    sink: {discard: true}
    cores: [0, 1]
    placement: spread
  - name: busy
    source: {pcap: "$work/udp.pcap", top_speed: true, loop: $loops}
    sink: {discard: true}
    cores: [0]
    placement: $busy_placement
YAML
}

# One run: prints "<busy pps> <CPU s to busy's drain> <busy packets>"; keeps its log for the summary of moves.
run_one() {  # variant round
  config "$1" >"$work/$1.yaml"
  python3 - "$sluice" "$work/$1.yaml" "$work/$1.$2.out" "$work/$1.$2.log" <<'PY'
import os, subprocess, sys, time
binary, config, out, log = sys.argv[1:5]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):  # utime + stime of every thread, seconds
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
with open(out, "w") as o, open(log, "w") as e:
    child = subprocess.Popen([binary, "run", "--config", config], stdout=o, stderr=e)
    at_drain = None
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        if at_drain is None and any("pipeline drained, sink flushed" in line and "pipeline=busy" in line
                                    for line in open(log)):
            at_drain = cpu(child.pid)
        time.sleep(0.002)
    status = child.wait(timeout=30)
if status != 0 or at_drain is None:
    sys.exit(f"sluice run exited {status} (busy's drain seen: {at_drain is not None}): see {log}")
busy = [line.split() for line in open(out) if line.startswith("busy ")]
if not busy or busy[0][-1] != "ok":
    sys.exit(f"no clean busy line in {out}")
print(busy[0][6], f"{at_drain:.3f}", busy[0][1])
PY
}

variants=(auto spread one)
declare -A pps cpu
for round in $(seq "$rounds"); do
  shift_by=$(( (round - 1) % ${#variants[@]} ))
  order=("${variants[@]:$shift_by}" "${variants[@]:0:$shift_by}")
  line="round $round:"
  for variant in "${order[@]}"; do
    read -r p c n < <(run_one "$variant" "$round")
    pps[$variant.$round]=$p
    cpu[$variant.$round]=$(python3 -c "print($n / $c)")
    line+=" $variant ${p} pps (CPU to busy's drain ${c} s: $(python3 -c "print(f'{$n / $c / 1e6:.2f}')") M busy packets per CPU-second);"
  done
  echo "$line"
done

python3 - "$rounds" "$work" <<PY "$(for v in "${variants[@]}"; do for r in $(seq "$rounds"); do echo -n "$v.$r=${pps[$v.$r]}:${cpu[$v.$r]} "; done; done)"
import statistics, sys, glob, re
rounds, work, data = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
pps, cpu = {}, {}
for item in data:
    key, value = item.split("=")
    p, c = value.split(":")
    pps[key], cpu[key] = float(p), float(c)
for v in ("auto", "spread", "one"):
    print(f"{v:7s} busy median {statistics.median(pps[f'{v}.{r}'] for r in range(1, rounds + 1)) / 1e6:.2f} Mpps, "
          f"{statistics.median(cpu[f'{v}.{r}'] for r in range(1, rounds + 1)) / 1e6:.2f} M busy packets per CPU-second")
ratios = [pps[f"auto.{r}"] / max(pps[f"spread.{r}"], pps[f"one.{r}"]) for r in range(1, rounds + 1)]
print(f"auto / best fixed (per round): median {statistics.median(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}")
for v in ("spread", "one"):
    r = [pps[f"auto.{k}"] / pps[f"{v}.{k}"] for k in range(1, rounds + 1)]
    c = [cpu[f"auto.{k}"] / cpu[f"{v}.{k}"] for k in range(1, rounds + 1)]
    print(f"auto / {v}: median {statistics.median(r):.3f}x the rate, {statistics.median(c):.3f}x the packets per CPU-second")
moves = {v: sum("core moved between pipelines" in open(f).read() for f in glob.glob(f"{work}/{v}.*.log"))
         for v in ("auto", "spread", "one")}
print("runs in which a core moved to busy:", ", ".join(f"{v} {n}/{rounds}" for v, n in moves.items()))
for r in range(1, rounds + 1):
    text = open(f"{work}/auto.{r}.log").read()
    handoff = re.search(r'hand-off ([0-9.]+) ns/item per side pipeline=busy', text)
    moves = re.findall(r'toCores=(\[[0-9, ]*\]) why=(its workers changed|moved back|[a-z]+)', text)
    print(f"auto round {r}: {pps[f'auto.{r}'] / 1e6:.2f} Mpps; hand-off {handoff.group(1) if handoff else '?'} ns; "
          + "busy's placements: " + ("; ".join(f"{to} ({why})" for to, why in moves) or "none"))
for line in open(f"{work}/auto.1.log"):
    if "stages placed by measured cost" in line or "core moved" in line or "hand-off measured" in line:
        print("auto round 1:", line.strip()[:420])
PY
