#!/usr/bin/env bash
# Regenerates the committed gRPC stubs in src/surge/protocol/grpc_gen/ from grpc_service.proto.
set -euo pipefail
cd "$(dirname "$0")/../src/surge/protocol"
PY=${PYTHON:-../../../.venv/bin/python}
"$PY" -m grpc_tools.protoc -I. --python_out=grpc_gen --pyi_out=grpc_gen \
  --grpc_python_out=grpc_gen grpc_service.proto
# protoc writes a top-level import; the stubs live inside the package.
sed -i 's/^import grpc_service_pb2 as/from . import grpc_service_pb2 as/' grpc_gen/grpc_service_pb2_grpc.py
