#!/usr/bin/env bash
# Replicated log on etcd (issue 10): conditional writes/s and p50/p99 of the write at 1 and 16 clients
# through a storage node on the embedded log, on a 1-member and on a 3-member etcd cluster, against the
# anchor on the same clusters in the same run: per write, range the key (value + mod_revision) then one
# etcd transaction comparing the mod_revision and putting the value, through the same client stack
# (SluiceReplication.EtcdClient, pooled keep-alive connections, concurrent tasks). Interleaved rounds,
# medians, CPU per write (this process by getrusage, the etcd members by /proc/PID/stat). Then the
# fail-over: 16 clients writing through a node on a fresh 3-member cluster, kill -9 of the etcd leader,
# time to the first acknowledged write issued after the kill; FAILOVERS repetitions.
# etcd members: /usr/bin/etcd on 127.0.0.1, free ports, --election-timeout=500 --heartbeat-interval=100,
# data dirs under DIR (default ./out; put it on a disk, not tmpfs: etcd fsyncs every commit).
# Usage: [MODES="embedded etcd1 etcd3 anchor1 anchor3"] [EXTRA_ARGS="--flag value"] \
#        scripts/bench-replication.sh [RUNS] [SECONDS] [FAILOVERS]
# MODES picks the rows (order reversed every other round); EXTRA_ARGS go to every replication-bench run.
# The anchor's read half: anchorN a linearizable range per cycle, anchorNs a serializable one (the
# answering member's copy, like a node's local read), anchorNc none after the first (the revision of its
# own last put: one etcd call per write, the strongest form by hand). batchMxN: no node, etcd alone on the
# M-member cluster: concurrent put-if-absent of fresh keys holding N page payloads each (what etcd costs
# per record when records come N to a key, as the log's batches do).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-3}
failovers=${3:-5}
command -v /usr/bin/etcd >/dev/null || { echo "needs /usr/bin/etcd (apt-get install etcd-server etcd-client)" >&2; exit 1; }
(cd Benchmarks && swift build -c release -j 2 --product replication-bench >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/replication-bench"
mkdir -p "${DIR:-$PWD/out}"
work=$(mktemp -d "${DIR:-$PWD/out}/bench-replication.XXXXXX")
all_pids=()
cleanup() {
  for pid in "${all_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# free_ports N: N ports the kernel hands out now (free until something binds them).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start_cluster NAME MEMBERS: starts the members, waits until every one is healthy; sets
# cluster_endpoints (comma-separated client URLs) and cluster_pids (comma-separated).
start_cluster() {
  local name=$1 members=$2 ports initial="" i
  read -r -a ports <<<"$(free_ports $((2 * members)))"
  for i in $(seq 0 $((members - 1))); do
    initial+="${initial:+,}$name-m$i=http://127.0.0.1:${ports[$((2 * i + 1))]}"
  done
  cluster_endpoints="" cluster_pids=""
  for i in $(seq 0 $((members - 1))); do
    local client="http://127.0.0.1:${ports[$((2 * i))]}" peer="http://127.0.0.1:${ports[$((2 * i + 1))]}"
    /usr/bin/etcd --name "$name-m$i" --data-dir "$work/$name/m$i.etcd" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "$name-$$" \
      --election-timeout=500 --heartbeat-interval=100 --quota-backend-bytes=$((8 << 30)) \
      --log-level warn >"$work/$name-m$i.log" 2>&1 &
    all_pids+=($!)
    cluster_endpoints+="${cluster_endpoints:+,}$client"
    cluster_pids+="${cluster_pids:+,}$!"
  done
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints="$cluster_endpoints" --command-timeout=1s endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "etcd cluster $name did not become healthy:" >&2
  tail -n 20 "$work/$name"-m*.log >&2
  exit 1
}

stop_cluster() {  # stop_cluster NAME PIDS
  local pid
  for pid in ${2//,/ }; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "${work:?}/$1"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; data on $(df -T "$work" | awk 'NR==2 {print $2}')" | tee "$work/machine.txt" >&2
start_cluster c1 1; c1_endpoints=$cluster_endpoints c1_pids=$cluster_pids
start_cluster c3 3; c3_endpoints=$cluster_endpoints c3_pids=$cluster_pids

run() {  # run MODE-LABEL CLIENTS ARGS...
  local label=$1 clients=$2
  shift 2
  echo "round $r: $label, $clients clients" >&2
  "$binary" --clients "$clients" --seconds "$seconds" "$@" ${EXTRA_ARGS:-} | sed "s/^mode=[a-z0-9]*/mode=$label/" | tee -a "$work/results.txt" >&2 ||
    echo "  ($label, $clients clients: exit $?)" >&2
}

for r in $(seq 1 "$runs"); do
  for clients in 1 16; do
    modes=${MODES:-"embedded etcd1 etcd3 anchor1 anchor3"}
    [ $((r % 2)) = 1 ] || modes=$(echo "$modes" | tr ' ' '\n' | tac | tr '\n' ' ')  # alternate who goes first
    for mode in $modes; do
      case $mode in
        embedded) run embedded "$clients" --mode embedded --data "$work/node-embedded" ;;
        etcd1) run etcd1 "$clients" --mode etcd --data "$work/node-etcd1" --endpoints "$c1_endpoints" --etcd-pids "$c1_pids" ;;
        etcd3) run etcd3 "$clients" --mode etcd --data "$work/node-etcd3" --endpoints "$c3_endpoints" --etcd-pids "$c3_pids" ;;
        anchor1) run anchor1 "$clients" --mode anchor --endpoints "$c1_endpoints" --etcd-pids "$c1_pids" ;;
        anchor3) run anchor3 "$clients" --mode anchor --endpoints "$c3_endpoints" --etcd-pids "$c3_pids" ;;
        anchor1s) run anchor1s "$clients" --mode anchor --anchor-read serializable --endpoints "$c1_endpoints" --etcd-pids "$c1_pids" ;;
        anchor3s) run anchor3s "$clients" --mode anchor --anchor-read serializable --endpoints "$c3_endpoints" --etcd-pids "$c3_pids" ;;
        anchor1c) run anchor1c "$clients" --mode anchor --anchor-read cached --endpoints "$c1_endpoints" --etcd-pids "$c1_pids" ;;
        anchor3c) run anchor3c "$clients" --mode anchor --anchor-read cached --endpoints "$c3_endpoints" --etcd-pids "$c3_pids" ;;
        batch1x*) run "$mode" "$clients" --mode batchcost --batch-records "${mode#batch1x}" --endpoints "$c1_endpoints" --etcd-pids "$c1_pids" ;;
        batch3x*) run "$mode" "$clients" --mode batchcost --batch-records "${mode#batch3x}" --endpoints "$c3_endpoints" --etcd-pids "$c3_pids" ;;
      esac
    done
  done
done
stop_cluster c1 "$c1_pids"
stop_cluster c3 "$c3_pids"

# The node's etcd calls at the log's default deadline (1000 ms), and at FAILOVER_TIMEOUT_MS (default 2000).
for f in $(seq 1 "$failovers"); do
  for timeout in 1000 "${FAILOVER_TIMEOUT_MS:-2000}"; do
    echo "fail-over $f, etcd call deadline $timeout ms" >&2
    start_cluster fo 3
    sleep 1  # a settled leader
    "$binary" --mode failover --clients 16 --data "$work/node-failover" --endpoints "$cluster_endpoints" \
      --etcd-pids "$cluster_pids" --call-timeout-ms "$timeout" | tee -a "$work/failover.txt" >&2 ||
      echo "  (fail-over $f: exit $?)" >&2
    stop_cluster fo "$cluster_pids"
    rm -rf "$work/node-failover"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$work/machine.txt" >&2

python3 - "$work" "$runs" "$seconds" <<'PY'
import os, statistics, sys
work, runs, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for line in (open(os.path.join(work, "results.txt")) if os.path.exists(os.path.join(work, "results.txt")) else []):
    fields = dict(f.split("=", 1) for f in line.split())
    rows.setdefault((fields["mode"], int(fields["clients"])), []).append(fields)
def med(mode, clients, key):
    values = [float(x[key]) for x in rows.get((mode, clients), [])]
    return statistics.median(values) if values else float("nan")
def ratio(a, b, clients):
    # Paired by round (same position in the file), then the median.
    xs, ys = rows.get((a, clients), []), rows.get((b, clients), [])
    values = [float(x["ops_per_s"]) / float(y["ops_per_s"]) for x, y in zip(xs, ys) if float(y["ops_per_s"]) > 0]
    return statistics.median(values) if values else float("nan")
print("".join(open(os.path.join(work, "machine.txt"))).strip())
print(f"\n{runs} interleaved rounds of {seconds} s each, medians; latency is of the write (node: the conditional "
      "write; anchor: the txn), the cycle also holds a read (node: local; anchor: a linearizable range, a "
      "serializable one (s), or the revision of its own last put (c))\n")
print("| log | clients | writes/s | p50 µs | p99 µs | records/txn | bench CPU µs/write | etcd CPU µs/write | errors (sum) | conflicts (sum) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"embedded": "Sluice, embedded log", "etcd1": "Sluice, etcd 1 member", "etcd3": "Sluice, etcd 3 members",
         "anchor1": "anchor: txn by hand, etcd 1 member", "anchor3": "anchor: txn by hand, etcd 3 members",
         "anchor1s": "anchor, serializable read, etcd 1 member", "anchor3s": "anchor, serializable read, etcd 3 members",
         "anchor1c": "anchor, own last revision, etcd 1 member", "anchor3c": "anchor, own last revision, etcd 3 members"}
anchors = [a for a in ("anchor3", "anchor3s", "anchor3c") if any(k[0] == a for k in rows)]
batches = sorted({k[0] for k in rows if k[0].startswith("batch")}, key=lambda m: (m[5], int(m[7:])))
for mode in batches:
    names[mode] = f"etcd alone, {mode[7:]} records per key, {mode[5]} member{'s' if mode[5] != '1' else ''}"
for clients in (1, 16):
    for mode in ["embedded", "etcd1", "etcd3", "anchor1", "anchor3", "anchor1s", "anchor3s", "anchor1c", "anchor3c"] + batches:
        if (mode, clients) not in rows: continue
        errors = sum(int(x["errors"]) for x in rows[(mode, clients)])
        etcd_cpu = "-" if mode == "embedded" else f"{med(mode, clients, 'etcd_cpu_us_per_write'):.0f}"
        print(f"| {names[mode]} | {clients} | {med(mode, clients, 'ops_per_s'):.0f} | {med(mode, clients, 'p50_us'):.0f} "
              f"| {med(mode, clients, 'p99_us'):.0f} | {med(mode, clients, 'records_per_batch'):.1f} "
              f"| {med(mode, clients, 'self_cpu_us_per_write'):.0f} | {etcd_cpu} | {errors} "
              f"| {sum(int(x['conflicts']) for x in rows[(mode, clients)])} |")
print()
for clients in (1, 16):
    print(f"- {clients} clients: Sluice etcd3 / anchor3 {ratio('etcd3', 'anchor3', clients):.2f}x, "
          f"etcd1 / anchor1 {ratio('etcd1', 'anchor1', clients):.2f}x, "
          f"etcd3 / embedded {ratio('etcd3', 'embedded', clients):.3f}x, etcd1 / embedded {ratio('etcd1', 'embedded', clients):.3f}x")
for anchor in anchors:
    goal = ratio("etcd3", anchor, 16)
    print(f"- goal (etcd mode at 16 clients >= 3x the anchor, 3 members) against {names[anchor]}: {goal:.2f}x -> "
          f"{'met' if goal >= 3 else 'NOT met'} (1 member: {ratio('etcd1', anchor.replace('3', '1'), 16):.2f}x)")
path = os.path.join(work, "failover.txt")
if os.path.exists(path):
  every = [dict(f.split("=", 1) for f in line.split()) for line in open(path) if line.startswith("mode=failover")]
  for deadline in sorted({x["call_timeout_ms"] for x in every}, key=int, reverse=True):
    lines = [x for x in every if x["call_timeout_ms"] == deadline]
    def times(key):
        return [float(x[key]) for x in lines if x.get(key, "none") != "none"]
    new, anyack = times("first_new_write_ack_ms"), times("first_ack_ms")
    print(f"\nfail-over, 3 members, 16 clients, kill -9 of the leader, node's etcd call deadline {deadline} ms, {len(lines)} runs:")
    if new:
        print(f"- kill -> first acknowledged write issued after the kill: median {statistics.median(new):.0f} ms, "
              f"max {max(new):.0f} ms ({len(new)}/{len(lines)} recovered); goal < 1500 ms: "
              f"{'met' if max(new) < 1500 else ('met at the median' if statistics.median(new) < 1500 else 'NOT met')}")
    if anyack:
        print(f"- kill -> first acknowledgement of any write: median {statistics.median(anyack):.0f} ms, max {max(anyack):.0f} ms")
    for x in lines:
        print(f"  - run: new-write ack {x['first_new_write_ack_ms']} ms, any ack {x['first_ack_ms']} ms, "
              f"answers other than success: {x['errors'] or 'none'}; log unknown outcomes {x['log_unknown_outcomes']} "
              f"(settled applied {x['settled_applied']}, not applied {x['settled_not_applied']})")
PY
