#!/usr/bin/env bash
# `make demo`: `sluice run` with its embedded default (the bundled sample capture through the full
# pipeline to out/run.pcap, the storage node on 127.0.0.1:7000, metrics on 127.0.0.1:9464), then a
# storage round trip with an OSN conflict, the service's counters (`sluice stats`), and a graceful
# stop with SIGTERM. Every step is bounded; the service is stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release/sluice}
mkdir -p out
rm -rf out/storage out/run.pcap out/run.stdout out/run.log

"$BIN" run >out/run.stdout 2>out/run.log &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT

for _ in $(seq 300); do
  grep -q '^sluice: ready' out/run.stdout && break
  kill -0 $PID 2>/dev/null || { echo "sluice run exited:"; cat out/run.log; exit 1; }
  sleep 0.1
done
grep '^sluice: ready' out/run.stdout || { echo "sluice run did not get ready in 30 s"; cat out/run.log; exit 1; }

echo
echo "== storage: write page 0 of object 1, overwrite it on its OSN, then try a write on the stale OSN"
# `put` prints "object O page P osn N": the OSN is the last word.
first=$("$BIN" storage put --port 7000 1 0 --value "first version" | awk '{print $NF}')
echo "write -> OSN $first"
second=$("$BIN" storage put --port 7000 1 0 --value "second version" --if-osn "$first" | awk '{print $NF}')
echo "write if unmodified since OSN $first -> OSN $second"
if "$BIN" storage put --port 7000 1 0 --value "stale" --if-osn "$first"; then
  echo "a write on a stale OSN was accepted"; exit 1
fi
echo "(rejected with the current OSN, as it must be)"
"$BIN" storage get --port 7000 1 0 | head -3
"$BIN" storage stat --port 7000

echo
echo "== waiting for the sample's 2000 packets to reach out/run.pcap (real-time pacing, ~1 s)"
for _ in $(seq 300); do
  grep -q 'pipeline drained, sink flushed' out/run.log && break
  sleep 0.1
done
grep 'pipeline drained' out/run.log || { echo "pipeline did not drain in 30 s"; cat out/run.log; exit 1; }

echo
echo "== sluice stats (GET http://127.0.0.1:9464/metrics)"
"$BIN" stats

echo
echo "== SIGTERM: stop sources, drain rings, flush sinks, checkpoint the log"
kill -TERM $PID
wait $PID
trap - EXIT
tail -n +2 out/run.stdout
echo
echo "log (out/run.log):"
cat out/run.log

echo
echo "================ firmware (issue 12): scripts/demo-firmware.sh"
BIN="$BIN" scripts/demo-firmware.sh
