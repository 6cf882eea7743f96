#!/usr/bin/env bash
# Makes sure redis-server and redis-cli are on PATH for the fleet suite (tests/fleet),
# which starts its own servers on free loopback ports: Debian's redis-server package
# (it brings redis-tools), installed with apt when missing. Stale package lists (a
# 404 on an old version, or no candidate at all) are refreshed once and the install
# retried. A system service the package may start is never used by the tests.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    echo "redis: $(redis-server --version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
install() {
    $SUDO apt-get install -y --no-install-recommends redis-server
}
if ! install; then
    echo "redis: install failed; refreshing the package lists and retrying"
    $SUDO apt-get update
    install
fi
echo "redis: $(redis-server --version)"
