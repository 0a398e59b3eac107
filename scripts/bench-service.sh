#!/usr/bin/env bash
# Service benchmark (issue 6): what `sluice run` costs over `sluice replay` on the same pipeline.
# 20M 64-byte UDP packets (a 1M-packet capture looped 20 times, about a second) through RX -> parse/classify -> action -> discard on 2 busy-polling cores:
#   anchor  : a plain C pcap_next_ex loop (scripts/anchors/pcap_next_loop.c, one thread) reading the
#             same 20M packets: the same file 20 times, reopened for each pass as sluice does
#   replay  : `sluice replay --topspeed` (no service around it)
#   service : `sluice run` with the same pipeline (exit_when_drained, control thread running), with
#             the metrics endpoint off, and with /metrics scraped every 100 ms over a kept-alive
#             connection (a Python http.client loop, as Prometheus would) while it runs
# interleaved, medians of RUNS rounds. Then the cost of one scrape of a running service (a paced
# pipeline plus the storage node), median and p99 of 200 scrapes.
# Usage: scripts/bench-service.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$(mktemp -d)
service_pid=""
trap '[ -n "$service_pid" ] && kill -TERM $service_pid 2>/dev/null; rm -rf "$work"' EXIT
swift build -c release --product sluice >&2
cc -O2 -o "$work/pcap_next_loop" scripts/anchors/pcap_next_loop.c -lpcap
scripts/anchors/check_pcap_next_loop.sh "$work/pcap_next_loop" >&2  # the anchor counts and clocks right
python3 scripts/anchors/write_udp_capture.py "$work/udp1m.pcap" 1000000
cat "$work/udp1m.pcap" >/dev/null  # every side reads from the page cache

model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: ${model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r), load average" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg) before the run; $(swift --version 2>/dev/null | head -n 1)."
echo

cat >"$work/service.yaml" <<YAML
wait_mode: busy-poll
log_level: warning
metrics: {listen: "127.0.0.1:0"}
pipelines:
  - name: bench
    source: {pcap: "$work/udp1m.pcap", top_speed: true, loop: 20}
    stages: classify-and-act
    sink: {discard: true}
shutdown: {exit_when_drained: true}
YAML

# Scrapes the service's /metrics every 100 ms over one kept-alive connection (as Prometheus does;
# no process started per scrape) until the service exits; prints how many scrapes it made.
cat >"$work/scraper.py" <<'PY'
import http.client, re, sys, time
out = sys.argv[1]
port = None
for _ in range(2000):
    try:
        match = re.search(r"^sluice: ready metrics=127\.0\.0\.1:(\d+)", open(out).read(), re.M)
    except FileNotFoundError:
        match = None
    if match:
        port = int(match.group(1))
        break
    time.sleep(0.005)
scrapes = 0
if port:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while True:
        try:
            connection.request("GET", "/metrics")
            connection.getresponse().read()
            scrapes += 1
        except Exception:
            break
        time.sleep(0.1)
print(scrapes)
PY

for r in $(seq 1 "$runs"); do
  "$work/pcap_next_loop" "$work/udp1m.pcap" 20 >>"$work/anchor.jsonl"  # the same 20M packets
  .build/release/sluice replay "$work/udp1m.pcap" --topspeed --loop 20 --json --wait-mode busy-poll --stages 4 >>"$work/replay.jsonl"
  .build/release/sluice run --config "$work/service.yaml" --set metrics.enabled=false >"$work/quiet.out"
  awk '$1 == "bench" {print $7}' "$work/quiet.out" >>"$work/quiet.pps"
  : >"$work/service.out"
  python3 "$work/scraper.py" "$work/service.out" >>"$work/scrape-counts" & scraper=$!
  sleep 0.5  # the scraper's interpreter has started and waits for the ready line
  .build/release/sluice run --config "$work/service.yaml" >"$work/service.out"
  wait $scraper || true
  awk '$1 == "bench" {print $7}' "$work/service.out" >>"$work/service.pps"
done

# One scrape of a live service: a pipeline paced at 10k packets/s and the storage node, both live.
mkdir -p out
rm -rf out/bench-service-storage
.build/release/sluice run --set "pipelines[0].source.pcap=$work/udp1m.pcap" --set "pipelines[0].source.speed=" \
  --set "pipelines[0].source.rate=10000" --set "pipelines[0].sink.pcap=" --set "pipelines[0].sink.discard=true" \
  --set "pipelines[0].traffic.weights=[1,1,2,4]" --set storage.data=out/bench-service-storage \
  --set storage.listen=127.0.0.1:0 --set metrics.listen=127.0.0.1:0 --set log_level=warning >"$work/live.out" &
service_pid=$!
for _ in $(seq 300); do grep -q '^sluice: ready' "$work/live.out" && break; sleep 0.1; done
port=$(sed -n 's/^sluice: ready metrics=127.0.0.1:\([0-9]*\).*/\1/p' "$work/live.out")
sport=$(sed -n 's/.*storage=127.0.0.1:\([0-9]*\).*/\1/p' "$work/live.out")
for page in $(seq 0 19); do  # storage counters and latency histograms with something in them
  .build/release/sluice storage put --port "$sport" 1 "$page" --value "page $page" >/dev/null
  .build/release/sluice storage get --port "$sport" 1 "$page" >/dev/null
done
for _ in $(seq 200); do curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:$port/metrics"; done >"$work/scrapes"
kill -TERM $service_pid; wait $service_pid || true; service_pid=""
rm -rf out/bench-service-storage

python3 - "$work" "$runs" <<'PY'
import json, os, statistics, sys
work, runs = sys.argv[1], sys.argv[2]
def rows(name): return [json.loads(l) for l in open(os.path.join(work, name))]
for a in rows("anchor.jsonl"): assert a["packets"] == 20_000_000, f"anchor read {a['packets']} packets, not 20M"
for r in rows("replay.jsonl"): assert r["delivered"] == 20_000_000, f"replay delivered {r['delivered']}, not 20M"
anchor = [a["packetsPerSecond"] for a in rows("anchor.jsonl")]
replay = [r["packetsPerSecond"] for r in rows("replay.jsonl")]
service = [float(l) for l in open(os.path.join(work, "service.pps")) if l.strip()]
quiet = [float(l) for l in open(os.path.join(work, "quiet.pps")) if l.strip()]
assert len(service) == len(anchor) == len(quiet), f"{len(service)}/{len(quiet)} service runs for {len(anchor)} rounds"
scrapes = [int(l) for l in open(os.path.join(work, "scrape-counts")) if l.strip()]
print(f"20M 64-byte UDP packets (1M-packet capture x 20, reopened for each pass) for every row, the anchor included; "
      f"sluice: 4 stages on 2 busy-polling cores, the anchor: one thread. Medians of {runs} interleaved rounds, "
      "ratios = median of per-round ratios.\n")
print("| what | M packets/s | vs pcap_next_ex loop | vs sluice replay |")
print("|---|---:|---:|---:|")
print(f"| C pcap_next_ex loop, 1 thread (anchor) | {statistics.median(anchor)/1e6:.2f} | 1.00x | |")
print(f"| sluice replay | {statistics.median(replay)/1e6:.2f} | "
      f"{statistics.median(r/a for r, a in zip(replay, anchor)):.2f}x | 1.00x |")
print(f"| sluice run, metrics endpoint off | {statistics.median(quiet)/1e6:.2f} | "
      f"{statistics.median(q/a for q, a in zip(quiet, anchor)):.2f}x | "
      f"{statistics.median(q/r for q, r in zip(quiet, replay)):.2f}x |")
print(f"| sluice run, /metrics scraped every 100 ms ({statistics.median(scrapes)} scrapes per run) | {statistics.median(service)/1e6:.2f} | "
      f"{statistics.median(s/a for s, a in zip(service, anchor)):.2f}x | "
      f"{statistics.median(s/r for s, r in zip(service, replay)):.2f}x |")
scrapes = [line.split() for line in open(os.path.join(work, "scrapes"))]
times = sorted(float(t) * 1e3 for t, _ in scrapes)
size = statistics.median(int(s) for _, s in scrapes)
print(f"\nOne scrape of a live service (1 pipeline with a 4-source traffic controller, storage node): "
      f"median {times[len(times)//2]:.2f} ms, p99 {times[int(len(times)*0.99)-1]:.2f} ms over {len(times)} scrapes, "
      f"{size/1024:.1f} KiB of text.")
PY
