"""Validate a bearer token with introspectd from Python.

    pip install grpcio==1.85.1 grpcio-tools==1.85.1
    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/introspect/v1/introspect.proto
    PYTHONPATH=gen INTROSPECTD_ADDR=localhost:50051 python examples/python/validate.py "$TOKEN"

Prints one line and exits 0 for a valid token, 1 for an invalid one.
"""

import os
import sys

import grpc

from introspect.v1 import introspect_pb2, introspect_pb2_grpc


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: validate.py TOKEN", file=sys.stderr)
        return 2
    target = os.environ.get("INTROSPECTD_ADDR", "localhost:50051")
    with grpc.insecure_channel(target) as channel:
        stub = introspect_pb2_grpc.TokenServiceStub(channel)
        # An invalid token is an answer (valid=false), not an RPC error.
        resp = stub.Validate(introspect_pb2.ValidateRequest(token=sys.argv[1]), timeout=5)
    if resp.valid:
        print(f"valid: tenant={resp.tenant} subject={resp.subject} scopes={' '.join(resp.scopes)}")
        return 0
    print(f"invalid: {introspect_pb2.ErrorCode.Name(resp.error.code)}: {resp.error.message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
