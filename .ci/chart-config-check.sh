#!/usr/bin/env bash
# The chart and the binary agree: the configuration the chart renders (default,
# all-features and the ext_authz example values) passes `introspectd check-config`. Needs .ci/helm.sh to have
# installed helm and `cargo build` to have built the binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM="${HELM_CI_TOOLS:-$ROOT/.ci/.tools}/bin/helm"
BIN="${INTROSPECTD_BIN:-$ROOT/target/debug/introspectd}"
CHART="$ROOT/helm/introspectd"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for values in "" "$CHART/ci/all-features-values.yaml" "$CHART/examples/ext-authz-values.yaml"; do
    name="${values:-default}"
    args=()
    [ -n "$values" ] && args=(-f "$values")
    "$HELM" template t "$CHART" "${args[@]}" --show-only templates/configmap.yaml > "$work/cm.yaml"
    python3 - "$work/cm.yaml" "$work/config.yaml" <<'PY'
import sys, json, re
text = open(sys.argv[1]).read()
# The ConfigMap's data holds config.yaml as a literal block; take it verbatim.
m = re.search(r"^  config\.yaml: \|-?\n((?:    .*\n|\n)*)", text, re.M)
if not m:
    sys.exit("no config.yaml in the rendered ConfigMap")
body = "".join(line[4:] if line.startswith("    ") else line for line in m.group(1).splitlines(True))
open(sys.argv[2], "w").write(body)
PY
    # Every secret variable the configuration names gets a long enough dummy value.
    envs=()
    while IFS= read -r var; do
        [ -n "$var" ] && envs+=("$var=$(printf 'x%.0s' $(seq 1 64))")
    done < <(grep -oE '(hmac_secret_env|client_secret_env|redis_password_env|integrity_key_env): *[A-Za-z_][A-Za-z0-9_]*' "$work/config.yaml" | awk '{print $2}' | sort -u)
    if env "${envs[@]}" "$BIN" check-config --config "$work/config.yaml"; then
        echo "PASS  check-config accepts the rendered config ($name)"
        passed=$((passed + 1))
    else
        echo "FAIL  check-config rejects the rendered config ($name):"
        sed 's/^/      /' "$work/config.yaml"
        failed=$((failed + 1))
    fi
done
echo "chart-config: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
