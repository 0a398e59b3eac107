#!/usr/bin/env bash
# Path: scripts/gen-etcd-grpc.sh — how Sources/SluiceEtcd/Generated/*.swift were made, once, and committed.
# Nothing is generated at build time: building Sluice needs neither protoc nor the plugins.
#
# Inputs: scripts/etcd-protos/rpc.proto and kv.proto, the subset of etcd 3.4's etcdserverpb and mvccpb
# that SluiceEtcd calls (copied from etcd v3.4.23 with etcd's own package, service and method names and
# field numbers; see their headers).
# Tools: protoc from Debian's protobuf-compiler (/usr/bin/protoc, libprotoc 3.21.12 was used), and the
# plugins protoc-gen-swift (apple/swift-protobuf 1.39.0) and protoc-gen-grpc-swift-2
# (grpc/grpc-swift-protobuf 2.4.1), built in a scratch clone of grpc-swift-protobuf 2.4.1:
#   git clone --branch 2.4.1 https://github.com/grpc/grpc-swift-protobuf /tmp/gsp
#   (cd /tmp/gsp && swift build -c release --product protoc-gen-grpc-swift-2 \
#                 && swift build -c release --product protoc-gen-swift)
#   PLUGINS=/tmp/gsp/.build/release scripts/gen-etcd-grpc.sh
# Everything is generated with internal visibility: only SluiceEtcd's own types are public.
# Run from anywhere; rewrites the generated files in place.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
plugins="${PLUGINS:?set PLUGINS to the folder holding protoc-gen-swift and protoc-gen-grpc-swift-2}"
out="$root/Sources/SluiceEtcd/Generated"
mkdir -p "$out"
rm -f "$out"/*.pb.swift "$out"/*.grpc.swift
cd "$root/scripts/etcd-protos"
protoc --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
       --swift_out="$out" --swift_opt=Visibility=Internal \
       kv.proto rpc.proto
protoc --plugin=protoc-gen-grpc-swift-2="$plugins/protoc-gen-grpc-swift-2" \
       --grpc-swift-2_out="$out" \
       --grpc-swift-2_opt=Visibility=Internal,Client=true,Server=false \
       rpc.proto
ls -l "$out"
