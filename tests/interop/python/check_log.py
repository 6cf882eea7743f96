"""Reads introspectd's log, written with --log-format json: every line must be one
JSON object, and no line may carry a token (a JWT's first two segments, or a
`Bearer` credential).

Usage: python check_log.py LOG_FILE
"""

import json
import re
import sys

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
BEARER = re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{16,}")
problems = []
lines = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        lines += 1
        try:
            if not isinstance(json.loads(line), dict):
                problems.append(f"line {n} is JSON but not an object")
        except ValueError:
            problems.append(f"line {n} is not JSON: {line[:120]!r}")
        if JWT.search(line) or BEARER.search(line):
            problems.append(f"line {n} carries a token")
if lines == 0:
    problems.append("the log is empty")
if problems:
    print(f"{len(problems)} problem(s) in {lines} lines; first: " + "; ".join(problems[:3]))
    sys.exit(1)
