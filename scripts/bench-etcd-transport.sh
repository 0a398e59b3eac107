#!/usr/bin/env bash
# etcd v3 transport (issue 10): Sluice's etcd client (SluiceEtcd.EtcdClient: etcd's gRPC API through
# grpc-swift-2, HTTP/2 plaintext, code generated once and committed) against etcd's JSON gateway (the
# bench's GatewayClient, Sluice's former client: async-http-client, HTTP/1.1), through `etcd-transport`
# (Benchmarks/EtcdTransport, a package of its own).
# Starts one etcd (/usr/bin/etcd, default durability: fsync on) on 127.0.0.1 with free ports and a
# fresh data dir under ${DIR:-out/}, runs the interleaved rounds, stops etcd and removes the dir.
# Usage: scripts/bench-etcd-transport.sh [extra etcd-transport arguments, e.g. --rounds 5 --calls 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not found: apt-get install -y etcd-server" >&2; exit 1; }
(cd Benchmarks/EtcdTransport && swift build -c release -j 2 --product etcd-transport >&2)
binary="$(cd Benchmarks/EtcdTransport && swift build -c release --show-bin-path)/etcd-transport"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port=$(free_port)
peer_port=$(free_port)
while [ "$peer_port" = "$client_port" ]; do peer_port=$(free_port); done
mkdir -p "${DIR:-$PWD/out}"
work=$(mktemp -d "${DIR:-$PWD/out}/bench-etcd-transport.XXXXXX")
etcd_pid=""
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

etcd --name bench --data-dir "$work/data" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" --initial-cluster-state new \
  --log-level warn >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$client_port/health" >/dev/null 2>&1 && break
  kill -0 "$etcd_pid" 2>/dev/null || { cat "$work/etcd.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$client_port/health" >/dev/null || { echo "etcd did not become healthy" >&2; exit 1; }
echo "etcd $(etcd --version | head -1 | awk '{print $3}') pid $etcd_pid on 127.0.0.1:$client_port, data in $work; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$binary" --endpoint "127.0.0.1:$client_port" --etcd-pid "$etcd_pid" "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
