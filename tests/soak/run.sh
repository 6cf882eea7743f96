#!/usr/bin/env bash
# The soak test: the introspectd binary under mixed load (valid, invalid and kid-miss
# tokens, Introspect of JWTs and opaque tokens, WatchKeys churn) against a provider that
# rotates keys every 30 s and fails now and then. Prints false rejections (must be 0),
# the service's RSS after the warm-up and at the end, and fetch counts; exits 1 when a
# check fails.
#
#   tests/soak/run.sh            ten minutes, release build, RSS must stay within 10 %
#   tests/soak/run.sh --ci       60 s on the debug build (what .ci/run runs); RSS is
#                                reported and bounded only against runaway growth
#   tests/soak/run.sh --duration 120 [driver options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

profile=release
driver_args=(--duration 600 --max-rss-growth 10)
if [ "${1:-}" = "--ci" ]; then
    shift
    profile=dev
    # 60 s is too short for RSS to settle (allocator arenas and caches still grow over the
    # first minutes), so the CI run only catches runaway growth; the 10 % bound is the
    # ten-minute run's.
    driver_args=(--duration 60 --max-rss-growth 100)
fi

if [ "$profile" = release ]; then
    cargo build --locked --release --bin introspectd --example soak
    dir=target/release
else
    cargo build --locked --bin introspectd --example soak
    dir=target/debug
fi
exec "$dir/examples/soak" --binary "$dir/introspectd" "${driver_args[@]}" "$@"
