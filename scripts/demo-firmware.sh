#!/usr/bin/env bash
# `make demo`, firmware part (issue 12): a real TPM 2.0 simulator (swtpm, a plain process on 127.0.0.1),
# three devices provisioned through `sluice firmware update` (counter in the TPM), the boot check passing,
# an update attempt on nic1 that nobody confirms (tpm2_nvincrement on its counter, as a tampered flash
# tool would leave it), the check isolating nic1 only, `sluice run` holding back nic1's pipeline with
# /healthz naming it, then the operator's readmission. Every step is bounded; swtpm and the service are
# stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release/sluice}
W=out/firmware
rm -rf "$W"
mkdir -p "$W/tpm"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Two adjacent free ports: the swtpm TCTI talks to the control channel at the server port + 1.
port=$(python3 - <<'PY'
import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()
PY
)
swtpm socket --tpm2 --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
  --tpmstate "dir=$W/tpm" --flags not-need-init,startup-clear &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
echo "== swtpm on 127.0.0.1:$port (state in $W/tpm)"

"$BIN" firmware keygen --out "$W/node.key" >/dev/null
"$BIN" firmware keygen --out "$W/vendor.key" >/dev/null
"$BIN" firmware keygen --out "$W/operator.key" >/dev/null
head -c 65536 /dev/urandom >"$W/image.bin"
"$BIN" firmware sign "$W/image.bin" --vendor-key-private "$W/vendor.key" --out "$W/image.sig"
node=(--store "$W/store" --node-key "$W/node.key" --vendor-key "$W/vendor.key.pub" --operator-key "$W/operator.key.pub"
      --counter tpm --tpm "127.0.0.1:$port" --tpm-index nic0=0x01500100 --tpm-index nic1=0x01500101 --tpm-index disk0=0x01500102)

echo
echo "== provisioning: sluice firmware update (verify, advance the TPM counter, write, validate, activate, confirm)"
for device in nic0 nic1 disk0; do "$BIN" firmware update "${node[@]}" "$device" "$W/image.bin" --sig "$W/image.sig"; done
echo
echo "== boot check: every device passes"
"$BIN" firmware check "${node[@]}"

echo
echo "== an update attempt on nic1 that is never confirmed (tpm2_nvincrement on NV index 0x01500101)"
TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" tpm2_nvincrement -C o 0x01500101
status=0
"$BIN" firmware check "${node[@]}" || status=$?
[ "$status" = 3 ] || { echo "check exited $status, want 3 (a device isolated)"; exit 1; }

echo
echo "== sluice run with a firmware: section: nic1's pipeline is held back, the rest runs"
cat >"$W/run.yaml" <<YAML
pipelines:
  - name: sample
    source: {pcap: Tests/Fixtures/sample.pcap, speed: 1}
    sink: {discard: true}
  - name: held
    source: {pcap: Tests/Fixtures/sample.pcap, speed: 1}
    sink: {pcap: $W/held.pcap}
storage: {data: $W/storage, listen: "127.0.0.1:0"}
metrics: {listen: "127.0.0.1:0"}
firmware:
  store: $W/store
  counter: tpm
  tpm: "127.0.0.1:$port"
  node_key: $W/node.key
  vendor_key: $W/vendor.key.pub
  operator_key: $W/operator.key.pub
  devices:
    - {name: nic0, pipelines: [sample], tpm_index: "0x01500100"}
    - {name: nic1, pipelines: [held], tpm_index: "0x01500101"}
    - {name: disk0, storage: true, tpm_index: "0x01500102"}
YAML
"$BIN" run --config "$W/run.yaml" >"$W/run.stdout" 2>"$W/run.log" &
service=$!
pids+=($service)
for _ in $(seq 300); do
  grep -q '^sluice: ready' "$W/run.stdout" && break
  kill -0 $service 2>/dev/null || { echo "sluice run exited:"; cat "$W/run.log"; exit 1; }
  sleep 0.1
done
ready=$(grep '^sluice: ready' "$W/run.stdout") || { echo "sluice run did not get ready in 30 s"; cat "$W/run.log"; exit 1; }
echo "$ready"
metrics=$(echo "$ready" | sed -n 's/.*metrics=\([^ ]*\).*/\1/p')
echo "GET /healthz:"
curl -s -w ' (HTTP %{http_code})\n' "http://$metrics/healthz"
curl -s "http://$metrics/metrics" | grep '^sluice_firmware' || true
grep -E 'firmware|not started' "$W/run.log" | sed 's/^/  log: /'
kill -TERM $service
wait $service || true
[ ! -e "$W/held.pcap" ] || { echo "nic1's pipeline ran"; exit 1; }

echo
echo "== the operator readmits nic1 (signing the node's view of it); the check passes again"
"$BIN" firmware readmit "${node[@]}" nic1 --operator-key-private "$W/operator.key"
"$BIN" firmware check "${node[@]}"
"$BIN" firmware status "${node[@]}" nic1 | head -20
