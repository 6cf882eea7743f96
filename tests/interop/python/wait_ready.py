"""Waits, bounded, for introspectd's health: "" SERVING (the server is up), then
"introspect.v1.TokenService" SERVING (every tenant's first key fetch is done).

Usage: python wait_ready.py ADDRESS SECONDS PID
Exits 0 when both are SERVING, 1 on time-out, 2 when the process PID died.
"""

import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, seconds, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + seconds
channel = grpc.insecure_channel(address)
health = health_pb2_grpc.HealthStub(channel)
last = "no answer yet"


def alive() -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie (exited, not yet reaped by the shell) counts as dead.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


for service in ("", "introspect.v1.TokenService"):
    shown = service or '""'
    while True:
        if not alive():
            print(f"introspectd (pid {pid}) exited before it was ready; last health answer: {last}")
            sys.exit(2)
        try:
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            last = f"{shown}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError as err:
            last = f"{shown}: {err.code().name} {err.details()}"
        if time.monotonic() > deadline:
            print(f"introspectd not ready within {seconds:.0f} s; last health answer: {last}")
            sys.exit(1)
        time.sleep(0.2)
print("introspectd ready")
