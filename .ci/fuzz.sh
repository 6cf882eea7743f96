#!/usr/bin/env bash
# Builds every fuzz target (fuzz/, cargo-fuzz layout) and runs each for a bounded time,
# two at a time (the CI machine has 2 cores). A crash or a violated property fails the
# step, and the input is copied to tests/fuzz_regressions/<target>/ so that plain
# `cargo test` (tests/fuzz_regressions.rs) replays it from then on: commit it with the fix.
#
# cargo-fuzz is installed from crates.io into the git-ignored .ci/.tools/. The stable
# toolchain is the only one here; cargo-fuzz passes nightly-only flags (-Z...), which
# RUSTC_BOOTSTRAP=1 lets stable rustc and cargo accept. Targets are built with
# optimisations plus debug assertions and overflow checks, without a sanitizer: the
# crate forbids unsafe code, and the bugs looked for are panics, overflows and broken
# properties, which ASan would only make slower to find.
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (default: all),
# FUZZ_JOBS (targets at once, default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
TOOLS="$PWD/.ci/.tools"
WORK="$PWD/.ci/.fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
JOBS="${FUZZ_JOBS:-2}"
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
BUILD_FLAGS=(--release --debug-assertions --sanitizer none)

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    cargo install --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

started=$(date +%s)
# The targets' bodies (fuzz/src/lib.rs) are linted with the tests that include them;
# the crate's own files are formatted here.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "building the fuzz targets"
cargo fuzz build "${BUILD_FLAGS[@]}"
echo "built in $(($(date +%s) - started))s"

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
mkdir -p "$WORK"

run_one() {
    local t="$1"
    local corpus="$WORK/corpus/$t" artifacts="$WORK/artifacts/$t/"
    rm -rf "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    # New inputs go to the first (git-ignored) corpus; the committed seeds are read only.
    if cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts" \
        >"$WORK/$t.log" 2>&1; then
        echo "fuzz $t: no crash in ${SECONDS_PER_TARGET}s ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$') runs)"
        return 0
    fi
    echo "fuzz $t: FAILED; the end of its log:"
    tail -n 40 "$WORK/$t.log"
    mkdir -p "tests/fuzz_regressions/$t"
    for f in "$artifacts"*; do
        [ -f "$f" ] || continue
        cp "$f" "tests/fuzz_regressions/$t/"
        echo "kept $f as tests/fuzz_regressions/$t/$(basename "$f"); reproduce with:"
        echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD_FLAGS[*]} $t tests/fuzz_regressions/$t/$(basename "$f")"
    done
    return 1
}

failed=0
pids=()
names=()
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        sleep 1
    done
    run_one "$t" &
    pids+=($!)
    names+=("$t")
done
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        failed=1
        echo "fuzz target ${names[$i]} failed"
    fi
done
echo "fuzzing took $(($(date +%s) - started))s in all"
exit "$failed"
