#!/bin/sh
# Revoke to cut through the whole system (issue 15): a real etcd (one member, data dir on this machine's
# disk), a `sluice overlay agent` process, and a consumer host (`sluice overlay bench-revoke`: OverlayHost's
# forwarding thread on AF_PACKET ports in a namespace made here, its etcd watch, its agent client). Each
# round grants a lease of a service the host serves (installed as the redirect), then times its revoke from
# the call to the forwarding thread having applied the end (the redirect gone, the lease's flows cut: from
# then on no packet of the lease is forwarded; there is no traffic here, so no flow to cut). The floor beside it, same run: etcd's own WAL fsync
# and backend commit means over the bench (from etcd's /metrics), since every revoke waits for one commit.
#
# usage (root): scripts/bench-overlay-revoke.sh [SLUICE] [ROUNDS] [RUNS]
#   SLUICE: a release build (default .build/release/sluice); RUNS runs of ROUNDS revokes each.
set -eu
SLUICE=${1:-.build/release/sluice}; ROUNDS=${2:-50}; RUNS=${3:-3}
[ "$(id -u)" = 0 ] || { echo "bench-overlay-revoke: needs root (namespaces, AF_PACKET)" >&2; exit 2; }
[ -x "$SLUICE" ] || { echo "bench-overlay-revoke: $SLUICE not built (make build)" >&2; exit 2; }
command -v etcd >/dev/null || { echo "bench-overlay-revoke: etcd missing (make deps)" >&2; exit 2; }
P=ovr$$; NS=${P}ch; DIR=$(mktemp -d /tmp/sluice-revoke.XXXXXX)
EPID=""; APID=""
cleanup() {
  [ -n "$APID" ] && kill "$APID" 2>/dev/null || true
  [ -n "$EPID" ] && kill "$EPID" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CP=$(freeport); PP=$(freeport)
etcd --name bench --data-dir "$DIR/etcd" --listen-client-urls "http://127.0.0.1:$CP" \
  --advertise-client-urls "http://127.0.0.1:$CP" --listen-peer-urls "http://127.0.0.1:$PP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PP" --initial-cluster "bench=http://127.0.0.1:$PP" \
  > "$DIR/etcd.log" 2>&1 &
EPID=$!
up=0
for _ in $(seq 100); do curl -s "http://127.0.0.1:$CP/health" | grep -q true && { up=1; break; }; sleep 0.1; done
[ "$up" = 1 ] || { echo "bench-overlay-revoke: etcd did not come up:" >&2; tail -5 "$DIR/etcd.log" >&2; exit 1; }
echo "etcd data dir on $(stat -f -c %T "$DIR") ($DIR)"
URL=http://127.0.0.1:$CP
"$SLUICE" overlay agent --etcd "$URL" --prefix /bench-revoke/ --name a1 --listen 127.0.0.1:0 --ttl 10 > "$DIR/agent.out" 2>&1 &
APID=$!
for _ in $(seq 100); do grep -q ':[0-9]' "$DIR/agent.out" 2>/dev/null && break; sleep 0.1; done
AP=$(head -1 "$DIR/agent.out" | sed 's/.*://')
case "$AP" in ''|*[!0-9]*) echo "bench-overlay-revoke: the agent did not start:" >&2; cat "$DIR/agent.out" >&2; exit 1;; esac
# The consumer host's ports: a VM veth and an underlay veth, both ends in the namespace (no traffic).
ip netns add "$NS"
ip -n "$NS" link add chv type veth peer name chvp
ip -n "$NS" link add chu type veth peer name chup
for dev in chv chvp chu chup; do ip -n "$NS" link set "$dev" up; done
UMAC=$(ip netns exec "$NS" cat /sys/class/net/chu/address); VMAC=$(ip netns exec "$NS" cat /sys/class/net/chv/address)
cat > "$DIR/host.json" <<EOF
{ "name": "bench-host", "namespace": "$NS", "vni": 42,
  "underlay": { "interface": "chu", "ipv4": "198.18.0.1", "mac": "$UMAC" },
  "vms": [ { "name": "c1", "interface": "chv", "role": "consumer", "hostMAC": "$VMAC" } ],
  "services": [ { "name": "web", "ipv4": "198.19.100.1", "port": 80, "protocol": "tcp" } ] }
EOF
metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1==m {print $2}'; }
for run in $(seq "$RUNS"); do
  f0=$(metric etcd_disk_wal_fsync_duration_seconds_sum); n0=$(metric etcd_disk_wal_fsync_duration_seconds_count)
  c0=$(metric etcd_disk_backend_commit_duration_seconds_sum); m0=$(metric etcd_disk_backend_commit_duration_seconds_count)
  if ! "$SLUICE" overlay bench-revoke --config "$DIR/host.json" --etcd "$URL" --agents "127.0.0.1:$AP" \
      --prefix /bench-revoke/ --rounds "$ROUNDS" > "$DIR/run.out" 2>&1; then
    echo "bench-overlay-revoke: run $run failed:" >&2; cat "$DIR/run.out" >&2; exit 1
  fi
  sed "s/^/run $run: /" "$DIR/run.out"
  f1=$(metric etcd_disk_wal_fsync_duration_seconds_sum); n1=$(metric etcd_disk_wal_fsync_duration_seconds_count)
  c1=$(metric etcd_disk_backend_commit_duration_seconds_sum); m1=$(metric etcd_disk_backend_commit_duration_seconds_count)
  echo "$f0 $f1 $n0 $n1 $c0 $c1 $m0 $m1" | awk -v r="$run" '{
    printf "run %s: etcd WAL fsync mean %.2f ms over %d fsyncs, backend commit mean %.2f ms over %d\n",
      r, ($4>$3 ? ($2-$1)/($4-$3)*1e3 : 0), $4-$3, ($8>$7 ? ($6-$5)/($8-$7)*1e3 : 0), $8-$7 }'
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
