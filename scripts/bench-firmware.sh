#!/usr/bin/env bash
# Firmware-update attempt counter (issue 12): a TPMCounter increment and read through ESAPI (one
# connection kept open) against tpm2_nvincrement / tpm2_nvread spawned per operation on the same swtpm
# (what a shell-script implementation would do; goal: ESAPI at least 5x faster), and the boot check of
# N devices (FirmwareNode.check: counter, signed record, image hash and vendor signature) with TPM and
# software counters. swtpm runs as a plain process on 127.0.0.1, on a free pair of adjacent ports (the
# swtpm TCTI finds the control channel at PORT + 1), state in a temp directory. All kinds interleave in
# every round; the table gives per-operation medians and p90s over all rounds.
# Usage: [EXTRA_ARGS="--devices 8"] scripts/bench-firmware.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
for tool in /usr/bin/swtpm /usr/bin/tpm2_nvincrement /usr/bin/tpm2_nvread; do
  [ -x "$tool" ] || { echo "needs $tool (make deps: swtpm swtpm-tools tpm2-tools libtss2-dev)" >&2; exit 1; }
done
[ -n "${NO_BUILD:-}" ] || (cd Benchmarks && swift build -c release -j 2 --product firmware-bench >&2)
binary="$(cd Benchmarks && swift build -c release --show-bin-path)/firmware-bench"
export TSS2_LOG=${TSS2_LOG:-all+none}  # ESAPI logs the expected "not defined" look-ups before a counter is defined
state=$(mktemp -d /tmp/bench-firmware.XXXXXX)
swtpm_pid=""
cleanup() {
  [ -z "$swtpm_pid" ] || { kill -9 "$swtpm_pid"; wait "$swtpm_pid"; } 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

# A port P such that P and P + 1 are both free now.
adjacent_ports() {
  python3 - <<'PY'
import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    if port >= 65535: a.close(); continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 1))
    except OSError:
        a.close(); continue
    a.close(); b.close(); print(port); break
PY
}
port=$(adjacent_ports)
/usr/bin/swtpm socket --tpm2 --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
  --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" --tpmstate "dir=$state" \
  --flags not-need-init,startup-clear --log "file=$state/swtpm.log,level=1" </dev/null >/dev/null 2>&1 &
swtpm_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done

echo "## firmware-bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) before"
echo "swtpm $(/usr/bin/swtpm --version 2>&1 | head -1 | sed 's/.*version //'), tpm2-tools $(/usr/bin/tpm2_nvread --version 2>&1 | sed -n 's/.*version="\([^"]*\)".*/\1/p')"
echo
# shellcheck disable=SC2086
"$binary" --port "$port" --rounds "$rounds" --scratch "$state/stores" ${EXTRA_ARGS:-}
echo
echo "load $(cut -d' ' -f1-3 /proc/loadavg) after"
