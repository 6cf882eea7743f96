"""introspectd as Envoy's external authorizer, checked through a real Envoy with plain
HTTP requests: the allowed answer (identity headers, token stripped, spoofed identity
headers removed, dynamic metadata), every row of the deny table, per-route tenant,
audiences and scopes, allow_anonymous, an opaque token through Introspect, a key
rotation under traffic, reflection and health; then one corpus through ext_authz and
through Envoy's own jwt_authn, with every difference either explained or failed.

Usage: python envoy_suite.py ENV_JSON ENVOY_ENV_JSON
"""

from __future__ import annotations

import base64
import http.client as httpc
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from interop import (  # noqa: E402
    Fields, Report, access_token, b2c_mint, b64url_decode, jwt_parts, load_env, revoke, rotate_keys, tamper,
)

env = load_env(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    envoy = json.load(f)
PORTS = envoy["ports"]
IDP, ROT, B2C = env["idp"], env["rotating"], env["b2c"]
T = env["tenants"]
report = Report("envoy")
BARE = 'Bearer realm="introspectd"'
INVALID_REQUEST = 'Bearer realm="introspectd", error="invalid_request"'


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def get(path, headers=(), listener="ext_authz"):
    """GET through Envoy; `headers` is a list of pairs (repeats allowed)."""
    conn = httpc.HTTPConnection("127.0.0.1", PORTS[listener], timeout=15)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return resp.status, hdrs, body
    finally:
        conn.close()


def upstream_headers(body) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for k, v in body["headers"]:
        seen.setdefault(k, []).append(v)
    return seen


def allowed(path, token, listener="ext_authz", extra=()):
    status, hdrs, body = get(path, [("authorization", f"Bearer {token}"), *extra], listener)
    if status != 200 or not isinstance(body, dict) or "headers" not in body:
        raise AssertionError(f"{path}: HTTP {status} {body}, want 200 from the upstream")
    return upstream_headers(body)


def denied(path, headers, want_status, want_challenge, want_description, listener="ext_authz"):
    status, hdrs, body = get(path, headers, listener)
    f = Fields(f"{path} denied")
    f.eq("status", status, want_status)
    f.eq("www-authenticate", hdrs.get("www-authenticate"), want_challenge)
    f.eq("cache-control", hdrs.get("cache-control"), "no-store")
    f.eq("content-type", hdrs.get("content-type"), "application/json")
    f.true("body", isinstance(body, dict), f"not JSON: {body!r}")
    if isinstance(body, dict):
        f.eq("body.error_description", body.get("error_description"), want_description)
        f.true("body.error", isinstance(body.get("error"), str), "no error")
        f.true("body", "headers" not in body, "the upstream answered")
    f.done()


def invalid_token(code):
    return f'Bearer realm="introspectd", error="invalid_token", error_description="{code}"'


# --- tokens ------------------------------------------------------------------------

rs_token = access_token(IDP, "https://rs256.api.test", "api:read")
es_token = access_token(IDP, "https://es256.api.test", "api:read api:write")
short_token = access_token(IDP, "https://short.api.test")
short_minted = time.monotonic()
other_aud = access_token(IDP, "https://other.api.test")
rot_token = access_token(ROT, "https://rot.api.test")
DOWN = T["down"]
now = int(time.time())
# Well-formed for the down tenant, signed by nobody: its keys never came, so the key
# lookup is what fails (KEYS_UNAVAILABLE), before any signature is checked.
down_jwt = f"{b64({'alg': 'RS256', 'kid': 'k'})}.{b64({'iss': DOWN['issuer'], 'aud': DOWN['audience'], 'exp': now + 600})}.c2ln"


def expect_identity(seen, token, tenant):
    _, p = jwt_parts(token)
    f = Fields("upstream headers")
    one = lambda name: seen.get(name, [None])[0] if len(seen.get(name, [])) <= 1 else seen[name]  # noqa: E731
    f.eq("x-auth-subject", one("x-auth-subject"), p["sub"])
    f.eq("x-auth-tenant", one("x-auth-tenant"), tenant)
    f.eq("x-auth-scope", one("x-auth-scope"), p.get("scope"))
    f.eq("x-auth-client-id", one("x-auth-client-id"), p.get("client_id"))
    claims = one("x-auth-claims")
    f.true("x-auth-claims", claims is not None, "absent")
    if claims:
        f.eq("x-auth-claims (decoded)", json.loads(b64url_decode(claims)), p)
    f.eq("authorization (strip_token: true)", seen.get("authorization"), None)
    f.eq("x-md-tenant (dynamic metadata)", one("x-md-tenant"), tenant)
    f.eq("x-md-sub (dynamic metadata)", one("x-md-sub"), p["sub"])
    f.eq("x-md-iss (dynamic metadata)", one("x-md-iss"), p["iss"])
    f.eq("x-md-exp (dynamic metadata)", one("x-md-exp"), str(p["exp"]))
    f.done()


def allowed_with_identity(listener):
    expect_identity(allowed("/", rs_token, listener), rs_token, T["oidc"]["id"])


def spoofing_removed(listener):
    spoof = [("x-auth-subject", "evil"), ("x-auth-subject", "evil2"), ("x-auth-claims", "e30"),
             ("x-auth-email", "evil@example.com"), ("x_auth_tenant", "evil")]
    seen = allowed("/", rs_token, listener, spoof)
    expect_identity(seen, rs_token, T["oidc"]["id"])
    f = Fields("spoofed headers")
    f.eq("x-auth-email (the token has no email: removed)", seen.get("x-auth-email"), None)
    f.eq("x_auth_tenant (underscore twin of x-auth-tenant: removed)", seen.get("x_auth_tenant"), None)
    f.done()


for name in ("ext_authz", "ext_authz_raw"):
    report.check(f"{name}: a valid token is allowed with the identity headers and metadata, token stripped",
                 allowed_with_identity, name)
    report.check(f"{name}: spoofed identity headers never reach the upstream", spoofing_removed, name)
    report.check(f"{name}: no token is 401 with a bare Bearer challenge", denied, "/", [], 401, BARE,
                 "missing_token", name)
    report.check(f"{name}: two Authorization headers are 400 invalid_request", denied, "/",
                 [("authorization", f"Bearer {rs_token}"), ("authorization", f"Bearer {rs_token}")],
                 400, INVALID_REQUEST, "malformed_token_header", name)

# --- the deny table --------------------------------------------------------------------

report.check("deny: a tampered signature is 401 invalid_token", denied, "/",
             [("authorization", f"Bearer {tamper(rs_token)}")], 401, invalid_token("invalid_signature"),
             "invalid_signature")
report.check("deny: a token for another audience is 401 invalid_audience", denied, "/",
             [("authorization", f"Bearer {other_aud}")], 401, invalid_token("invalid_audience"), "invalid_audience")
report.check("deny: a missing scope is 403 insufficient_scope with the required scopes", denied, "/scoped",
             [("authorization", f"Bearer {rs_token}")], 403,
             'Bearer realm="introspectd", error="insufficient_scope", scope="api:read api:write"',
             "insufficient_scope")
report.check("deny: Basic is 400 invalid_request", denied, "/", [("authorization", "Basic dTpw")], 400,
             INVALID_REQUEST, "unsupported_scheme")
report.check("deny: an empty Bearer is 400 invalid_request", denied, "/", [("authorization", "Bearer ")], 400,
             INVALID_REQUEST, "empty_token")
report.check("deny: a token over max_token_bytes is 400 invalid_request", denied, "/",
             [("authorization", "Bearer " + "a" * 16385)], 400, INVALID_REQUEST, "token_too_large")
report.check("deny: KEYS_UNAVAILABLE is 503 without a challenge", denied, "/down",
             [("authorization", f"Bearer {down_jwt}")], 503, None, "keys_unavailable")
report.check("deny: an introspection provider that cannot answer is 503", denied, "/down",
             [("authorization", "Bearer opaque-for-a-dead-provider")], 503, None, "introspection_unavailable")
report.check("deny: a route naming an unknown tenant is 500, never allowed", denied, "/unknown-tenant",
             [("authorization", f"Bearer {rs_token}")], 500, None, "configuration_error")


def expired():
    time.sleep(max(0.0, short_minted + 2 + T["oidc"]["clock_skew_seconds"] + 1.2 - time.monotonic()))
    denied("/", [("authorization", f"Bearer {short_token}")], 401, invalid_token("expired"), "expired")


report.check("deny: an expired token is 401 invalid_token expired", expired)

# --- per-route settings ----------------------------------------------------------------


def per_route_audiences():
    allowed("/es256", es_token)
    denied("/es256", [("authorization", f"Bearer {rs_token}")], 401, invalid_token("invalid_audience"),
           "invalid_audience")


def per_route_tenant():
    allowed("/rot", rot_token)
    denied("/oidc", [("authorization", f"Bearer {rot_token}")], 401, invalid_token("unknown_issuer"),
           "unknown_issuer")


def per_route_scopes():
    seen = allowed("/scoped", es_token)
    if seen.get("x-auth-scope") != ["api:read api:write"]:
        raise AssertionError(f"x-auth-scope {seen.get('x-auth-scope')}")


def anonymous():
    status, _, body = get("/anon", [("x-auth-subject", "evil"), ("x-auth-claims", "e30")])
    if status != 200:
        raise AssertionError(f"HTTP {status} {body}")
    seen = upstream_headers(body)
    leaked = {k: v for k, v in seen.items() if k.startswith("x-auth-")}
    if leaked:
        raise AssertionError(f"identity headers reached the upstream of an anonymous request: {leaked}")
    denied("/anon", [("authorization", f"Bearer {tamper(rs_token)}")], 401, invalid_token("invalid_signature"),
           "invalid_signature")
    allowed("/anon", rs_token)


report.check("route: audiences from context_extensions replace the tenant's", per_route_audiences)
report.check("route: tenant from context_extensions", per_route_tenant)
report.check("route: required_scopes from context_extensions", per_route_scopes)
report.check("route: allow_anonymous lets a request without a token through, without identity; "
             "an invalid token is still denied", anonymous)

# --- opaque tokens through Introspect --------------------------------------------------


def opaque():
    token = access_token(IDP, "https://opaque.api.test")
    if token.count(".") == 2:
        raise AssertionError("the provider issued a JWT, want an opaque token")
    seen = allowed("/oidc", token)
    f = Fields("opaque token upstream headers")
    f.eq("x-auth-client-id", seen.get("x-auth-client-id"), [IDP["clients"]["app"]["id"]])
    f.eq("x-auth-tenant", seen.get("x-auth-tenant"), [T["oidc"]["id"]])
    f.done()
    revoke(IDP, token)
    time.sleep(T["oidc"]["cache_ttl_seconds"] + 0.5)
    denied("/oidc", [("authorization", f"Bearer {token}")], 401, invalid_token("inactive"), "inactive")


report.check("opaque: an opaque token is allowed through Introspect; once revoked it is 401", opaque)

# --- reflection and health -------------------------------------------------------------


def grpcurl(*args):
    out = subprocess.run([env["grpcurl"], "-plaintext", "-max-time", "10", *args], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"grpcurl {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[:300]}")
    return out.stdout


def reflection_and_health():
    listed = grpcurl(env["service"], "list").split()
    if "envoy.service.auth.v3.Authorization" not in listed:
        raise AssertionError(f"reflection lists {listed}")
    described = grpcurl(env["service"], "describe", "envoy.service.auth.v3.Authorization.Check")
    if "CheckRequest" not in described:
        raise AssertionError(described)
    health = grpcurl("-d", '{"service": "envoy.service.auth.v3.Authorization"}', env["service"],
                     "grpc.health.v1.Health/Check")
    if '"SERVING"' not in health:
        raise AssertionError(health)


report.check("reflection and health list envoy.service.auth.v3.Authorization", reflection_and_health)

# --- key rotation under traffic ----------------------------------------------------------------

rotation = {"results": [], "errors": []}


def rotation_traffic(stop):
    while not stop.is_set():
        try:
            token = access_token(ROT, "https://rot.api.test")
            kid = jwt_parts(token)[0].get("kid")
            for _ in range(3):
                status, _, body = get("/rot", [("authorization", f"Bearer {token}")])
                rotation["results"].append((kid, status, body if status != 200 else None))
        except Exception as exc:  # noqa: BLE001 - recorded and reported by the check
            rotation["errors"].append(str(exc))
            time.sleep(0.05)


def rotate(step):
    return rotate_keys(ROT, step)


def key_rotation():
    stop = threading.Event()
    worker = threading.Thread(target=rotation_traffic, args=(stop,), daemon=True)
    worker.start()
    try:
        time.sleep(1.0)
        new_kid = rotate("rotate")[0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r[0] == new_kid for r in rotation["results"]):
            time.sleep(0.1)
        time.sleep(1.0)
        rotate("retire")
        # Past two refreshes of the rotating tenant: the old key is gone from introspectd too.
        time.sleep(2.5 * T["rotating"]["refresh_interval_seconds"] + 0.5)
    finally:
        stop.set()
        worker.join(timeout=20)
    results = rotation["results"]
    bad = [r for r in results if r[1] != 200]
    if rotation["errors"]:
        raise AssertionError(f"traffic errors: {rotation['errors'][:3]}")
    if bad:
        raise AssertionError(f"{len(bad)} of {len(results)} requests with valid tokens denied; first: {bad[0]}")
    under_new = sum(1 for r in results if r[0] == new_kid)
    if under_new < 10 or len(results) - under_new < 5:
        raise AssertionError(f"too few requests to tell: {len(results)} in all, {under_new} under the new kid")


report.check("rotation: the provider rotates and retires its key under traffic; no false 401", key_rotation)

# --- decision parity with jwt_authn ------------------------------------------------------------


def alg_none(token):
    _, p = jwt_parts(token)
    return f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(p)}."


def unknown_kid(token):
    h, s = token.split(".")[0], token.split(".", 1)[1]
    header = json.loads(b64url_decode(h))
    header["kid"] = "no-such-kid"
    return f"{b64(header)}.{s}"


def mint(claims):
    return b2c_mint(B2C, envoy["b2c_policy"], claims)


B2C_POLICY_CLAIM = {"tfp": envoy["b2c_policy"]}
opaque_token = access_token(IDP, "https://opaque.api.test")

# (name, path, Authorization value or None, reason when the two filters differ on purpose)
CORPUS = [
    ("valid RS256", "/oidc", f"Bearer {rs_token}", None),
    ("valid ES256", "/oidc", f"Bearer {es_token}", None),
    ("expired", "/oidc", f"Bearer {short_token}", None),
    ("tampered signature", "/oidc", f"Bearer {tamper(rs_token)}", None),
    ("unknown kid", "/oidc", f"Bearer {unknown_kid(rs_token)}", None),
    ("alg none", "/oidc", f"Bearer {alg_none(rs_token)}", None),
    ("another issuer", "/oidc", f"Bearer {rot_token}", None),
    ("not a JWT", "/oidc", "Bearer not-a-jwt", None),
    ("no token", "/oidc", None, None),
    ("wrong audience", "/oidc", f"Bearer {other_aud}", "audience"),
    ("Basic scheme", "/oidc", "Basic dTpw", "scheme"),
    ("lower-case bearer scheme", "/oidc", f"bearer {rs_token}", "scheme-case"),
    ("opaque token", "/oidc", f"Bearer {opaque_token}", "opaque"),
    ("B2C valid", "/b2c", f"Bearer {mint(B2C_POLICY_CLAIM)}", None),
    ("B2C nbf in the future", "/b2c", f"Bearer {mint({**B2C_POLICY_CLAIM, 'nbf': now + 600})}", None),
    ("B2C without exp", "/b2c", f"Bearer {mint({**B2C_POLICY_CLAIM, 'exp': None})}", "exp"),
    ("B2C iat in the future", "/b2c", f"Bearer {mint({**B2C_POLICY_CLAIM, 'iat': now + 600})}", "iat"),
    ("B2C without a policy claim", "/b2c", f"Bearer {mint({})}", "b2c-policy"),
]
# Each is a row of the README's "Decisions compared with jwt_authn" table.
EXPLAINED = {
    "audience": (401, 403),
    "scheme": (400, 401),
    "scheme-case": (200, 401),
    "opaque": (None, 401),
    "exp": (401, 200),
    "iat": (401, 200),
    "b2c-policy": (401, 200),
}
parity_rows = []


def parity(name, path, authorization, reason):
    headers = [("authorization", authorization)] if authorization else []
    a, _, a_body = get(path, headers, "ext_authz")
    b, _, _ = get(path, headers, "jwt_authn")
    desc = a_body.get("error_description", "") if isinstance(a_body, dict) else ""
    parity_rows.append((name, a, desc, b))
    if a == b and reason is None:
        return
    if reason is None:
        raise AssertionError(f"ext_authz {a} ({desc}), jwt_authn {b}: an unexplained difference")
    want_a, want_b = EXPLAINED[reason]
    if b != want_b or (want_a is not None and a != want_a):
        raise AssertionError(f"ext_authz {a} ({desc}), jwt_authn {b}; the README explains {want_a}/{want_b}")


time.sleep(max(0.0, short_minted + 2 + T["oidc"]["clock_skew_seconds"] + 1.2 - time.monotonic()))
for case in CORPUS:
    report.check(f"parity with jwt_authn: {case[0]}", parity, *case)
for name, a, desc, b in parity_rows:
    mark = "same" if (a == b) else "differs"
    print(f"# parity: {name:<28} ext_authz {a} {desc:<22} jwt_authn {b}  {mark}", flush=True)

report.finish()
