"""Waits until Envoy's admin endpoint says /ready is LIVE.

Usage: python wait_ready.py ENVOY_ENV_JSON SECONDS PID
Exit 0 when ready, 1 when the time ran out or the process exited.
"""

import json
import os
import sys
import time
import urllib.request

with open(sys.argv[1], encoding="utf-8") as f:
    admin = json.load(f)["ports"]["admin"]
deadline = time.monotonic() + float(sys.argv[2])
pid = int(sys.argv[3])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
            if r.read().strip() == b"LIVE":
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
