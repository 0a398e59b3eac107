#!/bin/sh
# usage: docs/bench/overlay-bench-build.sh OUT (OUT relative to the package root): the overlay bench
# driver (CPU-only loops, and OverlayHost for docs/bench/overlay-pipeline-bench.sh) built from this checkout's SluiceOverlay sources against this checkout's release modules (`make build`) (docs/BENCHMARKS.md).
set -e
cd "$(dirname "$0")/../.."  # the package root; the driver main.swift is copied from docs/bench/overlay-bench-driver.swift.txt
mkdir -p .bench && cp docs/bench/overlay-bench-driver.swift.txt .bench/main.swift
R=${RELEASE:-$PWD/.build/release}; W=Sources/SluiceOverlay  # `make build` (release sluice) made these modules
swiftc -O -wmo -g -module-name OverlayBenchDriver -I $R/Modules \
  -Xcc -fmodule-map-file=$R/CShims.build/module.modulemap -Xcc -ICShims/include \
  -Xcc -fmodule-map-file=.build/checkouts/swift-system/Sources/CSystem/include/module.modulemap \
  $W/OverlayLease.swift $W/OverlayVXLAN.swift $W/OverlayFlowTable.swift $W/OverlayRedirect.swift \
  $W/OverlayDataplaneBench.swift $W/OverlayFastParse.swift $W/OverlayHost.swift .bench/main.swift \
  $R/SluiceCore.build/*.o $R/SluicePacket.build/*.o $R/SluicePacketIO.build/*.o $R/CShims.build/*.o $R/SystemPackage.build/*.o \
  $R/CSystem.build/*.o -lnuma -luring -lpcap -lxdp -lbpf -ltss2-esys -ltss2-tctildr -ltss2-rc -o "$1"  # CShims's libraries (Package.swift)
rm -f OverlayBenchDriver-1.swiftdoc OverlayBenchDriver-1.swiftmodule OverlayBenchDriver-1.swiftsourceinfo  # left by swiftc -g
