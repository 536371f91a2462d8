#!/usr/bin/env bash
# Regenerates frcnn_tf/proto/*_pb2.py from the .proto schema (needs grpcio-tools:
# `pip install -e '.[test]'`). Run from anywhere; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I . --python_out=. frcnn_tf/proto/*.proto
echo "regenerated: $(ls frcnn_tf/proto/*_pb2.py | wc -l) modules"
