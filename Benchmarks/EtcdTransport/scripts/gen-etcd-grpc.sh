#!/usr/bin/env bash
# Path: Benchmarks/EtcdTransport/scripts/gen-etcd-grpc.sh — how Sources/EtcdGRPC/*.pb.swift and
# *.grpc.swift were made, once, and committed (nothing is generated at build time).
#
# Inputs: protos/rpc.proto and protos/kv.proto, a hand-written subset of etcd 3.4's etcdserverpb KV
# API and mvccpb.KeyValue with etcd's own package names and field numbers.
# Tools: protoc from Debian's protobuf-compiler (libprotoc 3.21.12 was used), and the plugins
# protoc-gen-swift (apple/swift-protobuf 1.39.0) and protoc-gen-grpc-swift-2 (grpc/grpc-swift-protobuf
# 2.4.1), both built in a scratch clone of grpc-swift-protobuf 2.4.1:
#   git clone --branch 2.4.1 https://github.com/grpc/grpc-swift-protobuf /tmp/gsp
#   (cd /tmp/gsp && swift build -c release --product protoc-gen-grpc-swift-2 \
#                 && swift build -c release --product protoc-gen-swift)
#   PLUGINS=/tmp/gsp/.build/release scripts/gen-etcd-grpc.sh
# Run from anywhere; rewrites the generated files in place.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
plugins="${PLUGINS:?set PLUGINS to the folder holding protoc-gen-swift and protoc-gen-grpc-swift-2}"
out="$here/Sources/EtcdGRPC"
mkdir -p "$out"
cd "$here/protos"
protoc --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
       --swift_out="$out" --swift_opt=Visibility=Public \
       kv.proto rpc.proto
protoc --plugin=protoc-gen-grpc-swift-2="$plugins/protoc-gen-grpc-swift-2" \
       --grpc-swift-2_out="$out" \
       --grpc-swift-2_opt=Visibility=Public,Client=true,Server=false \
       rpc.proto
ls -l "$out"
