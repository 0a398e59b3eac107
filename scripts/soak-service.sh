#!/usr/bin/env bash
# Service soak (issue 6): `sluice run` for SOAK_SECONDS (default 600) with everything on at once:
#   - an interface pipeline (AF_PACKET RX on a test-made veth, peer in a namespace of its own, no
#     addresses) fed by `sluice replay` loops of the sample (198.18.0.0/15 frames) from the namespace,
#     classified by source MAC and divided 1:1:2:4 by a traffic controller (file output);
#   - a capture pipeline looping the sample at 5000 packets/s to a discard sink;
#   - the storage node, with a writer doing read-then-conditional-write cycles on 8 pages;
#   - rebalancing, and /metrics scraped every 5 s.
# Checks, every scrape: no drop of any reason, no lost wake-up (a sleep's safety-net timeout that
# found input waiting), RSS not growing past its first
# sample + 16 MiB. At the end: SIGTERM exits 0 with nothing left on a ring, every frame the senders
# put on the wire was received, every acknowledged write is on disk after a restart. Needs root.
# Usage: scripts/soak-service.sh  (env: SOAK_SECONDS, BIN: the sluice binary, default release build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/veth-lib.sh
seconds=${SOAK_SECONDS:-600}
if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then echo "soak-service: CI=true needs root (veth, AF_PACKET)" >&2; exit 1; fi
  echo "soak-service: skipped: needs root (veth, AF_PACKET); CI runs it"; exit 0
fi
if [ -z "${BIN:-}" ]; then swift build -c release --product sluice >&2; BIN=.build/release/sluice; fi
work=$(mktemp -d /var/tmp/sluice-soak.XXXXXX)  # not tmpfs: the storage node uses O_DIRECT
ns="sluice-soak-$$"; inside="sk$$i"; outside="sk$$o"
pid=""; sender=""; writer=""
cleanup() {
  for p in $sender $writer; do kill "$p" 2>/dev/null || true; done
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  veth_down "$ns" "$outside"
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "soak-service: FAILED: $*" >&2; tail -20 "$work/run.log" >&2 || true; exit 1; }

veth_up "$ns" "$inside" "$outside"

cat >"$work/soak.yaml" <<YAML
wait_mode: adaptive
log_level: info
metrics: {listen: "127.0.0.1:0"}
rebalance: {interval_ms: 1000}
pipelines:
  - name: wire
    source: {interface: "$outside"}
    classify:
      by: source-mac
      sources: {"02:00:00:00:01:00": 0, "02:00:00:00:01:01": 1, "02:00:00:00:01:02": 2, "02:00:00:00:01:03": 3}
    traffic: {weights: [1, 1, 2, 4]}
    sink: {pcap: "$work/wire.pcap"}
  - name: replay
    source: {pcap: "Tests/Fixtures/sample.pcap", rate: 5000, loop: 1000000}
    sink: {discard: true}
storage: {data: "$work/storage", listen: "127.0.0.1:0"}
shutdown: {drain_timeout_ms: 10000}
YAML
"$BIN" run --config "$work/soak.yaml" >"$work/run.out" 2>"$work/run.log" &
pid=$!
for _ in $(seq 300); do grep -q '^sluice: ready' "$work/run.out" && break; sleep 0.1; done
grep -q '^sluice: ready' "$work/run.out" || fail "not ready in 30 s"
mport=$(sed -n 's/^sluice: ready metrics=127.0.0.1:\([0-9]*\).*/\1/p' "$work/run.out")
sport=$(sed -n 's/.*storage=127.0.0.1:\([0-9]*\).*/\1/p' "$work/run.out")

# Sender: replays of the sample into the veth until the soak ends; each prints its frame count.
( end=$((SECONDS + seconds))
  while [ $SECONDS -lt $end ]; do
    ip netns exec "$ns" "$BIN" replay Tests/Fixtures/sample.pcap --iface "$inside" --rate 20000 --json 2>/dev/null \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["delivered"])' >>"$work/sent"
  done ) &
sender=$!
# Writer: page p of object 1 read, then written on the OSN it read; the last acknowledged value per page.
( end=$((SECONDS + seconds)); n=0
  while [ $SECONDS -lt $end ]; do
    page=$((n % 8)); n=$((n + 1))
    osn=$("$BIN" storage get --port "$sport" 1 "$page" 2>/dev/null | sed -n 's/.* pageOSN \([0-9]*\).*/\1/p' || true)
    value="soak $page $n"
    if [ -n "$osn" ] && [ "$osn" != 0 ]; then
      "$BIN" storage put --port "$sport" 1 "$page" --value "$value" --if-osn "$osn" >/dev/null 2>&1 || continue
    else
      "$BIN" storage put --port "$sport" 1 "$page" --value "$value" >/dev/null 2>&1 || continue
    fi
    echo "$page $value" >>"$work/acked"
  done ) &
writer=$!

first_rss=""; scrapes=0
end=$((SECONDS + seconds))
while [ $SECONDS -lt $end ]; do
  sleep 5
  kill -0 "$pid" 2>/dev/null || fail "sluice run died"
  curl -s "http://127.0.0.1:$mport/metrics" >"$work/metrics" || fail "scrape failed"
  scrapes=$((scrapes + 1))
  drops=$(awk '$1 ~ /^sluice_pipeline_drops_total/ && $2 > 0' "$work/metrics")
  [ -z "$drops" ] || fail "drops: $drops"
  lost=$(awk '$1 ~ /^sluice_worker_lost_wakeups_total/ && $2 > 0' "$work/metrics")
  [ -z "$lost" ] || fail "lost wake-ups: $lost"
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  [ -n "$first_rss" ] || first_rss=$rss
  [ "$rss" -le $((first_rss + 16384)) ] || fail "RSS grew from $first_rss kB to $rss kB"
done
wait $sender || true; sender=""
wait $writer || true; writer=""
sleep 1
curl -s "http://127.0.0.1:$mport/metrics" >"$work/metrics"
received=$(awk '$1 ~ /^sluice_pipeline_packets_in_total\{pipeline="wire"\}/ {print $2}' "$work/metrics")
sent=$(awk '{s += $1} END {print s + 0}' "$work/sent")
kill -TERM "$pid"; status=0; wait "$pid" || status=$?; pid=""
[ "$status" = 0 ] || fail "exit status $status"
awk '$1 == "wire" || $1 == "replay"' "$work/run.out" | grep -v ' ok$' && fail "a pipeline did not end clean"
[ "$received" = "$sent" ] || fail "sent $sent frames, received $received"

# Every acknowledged write is on disk: restart a node on the directory and read the last values.
"$BIN" storage serve --data "$work/storage" --port 0 >"$work/serve.out" &
serve=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
rport=$(sed -n 's/.*listening on [^:]*:\([0-9]*\).*/\1/p' "$work/serve.out" | head -1)
checked=0
for page in $(seq 0 7); do
  last=$(awk -v p="$page" '$1 == p {v = $2 " " $3 " " $4} END {print v}' "$work/acked")
  [ -n "$last" ] || continue
  hex=$("$BIN" storage get --port "$rport" 1 "$page" | sed -n 2p)
  want=$(printf '%s' "$last" | od -An -tx1 | tr -d ' \n')
  [ "${hex:0:${#want}}" = "$want" ] || { kill "$serve"; fail "page $page: last acknowledged '$last' not on disk"; }
  checked=$((checked + 1))
done
kill "$serve"; wait "$serve" 2>/dev/null || true
writes=$(wc -l <"$work/acked")
echo "soak-service: ${seconds}s clean: $sent frames sent and received, $writes conditional writes ($checked pages checked after restart), $scrapes scrapes, RSS ${first_rss} -> ${rss} kB, no drops"
