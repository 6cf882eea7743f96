"""The Python client's checks: health, Validate, Introspect and WatchKeys against
oidc-provider and the B2C-shaped provider, a key rotation under load, and the
Python example. Stubs are generated from proto/ by run.sh before this runs.

Usage: python suite.py ENV_JSON
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interop import (
    RPC_TIMEOUT, Fields, Report, access_token, b2c_mint, fetch_jwks, http, jwt_parts, load_env,
    provider_introspect, public_members, revoke, rotate_keys, tamper, thumbprint, wait_until,
)

env = load_env(sys.argv[1])

from introspect.v1 import introspect_pb2 as pb  # noqa: E402  (generated into env's dir)
from introspect.v1 import introspect_pb2_grpc as pb_grpc  # noqa: E402

IDP = env["idp"]
ROT = env["rotating"]
B2C = env["b2c"]
T = env["tenants"]  # tenant ids and the settings the checks depend on

channel = grpc.insecure_channel(env["service"])
stub = pb_grpc.TokenServiceStub(channel)
health = health_pb2_grpc.HealthStub(channel)
report = Report("python")

E = pb.ErrorCode
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def validate(token, **kw):
    return stub.Validate(pb.ValidateRequest(token=token, **kw), timeout=RPC_TIMEOUT)


def introspect(token, **kw):
    return stub.Introspect(pb.IntrospectRequest(token=token, **kw), timeout=RPC_TIMEOUT)


def ts(resp, field):
    return getattr(resp, field).seconds if resp.HasField(field) else None


def as_list(aud):
    return aud if isinstance(aud, list) else [aud]


def scopes_of(payload):
    v = payload.get("scope", payload.get("scp", []))
    return v.split() if isinstance(v, str) else list(v)


def expect_valid(resp, token, tenant, policy=""):
    h, p = jwt_parts(token)
    f = Fields("Validate")
    f.eq("valid", resp.valid, True)
    f.true("error", not resp.HasField("error"),
           f"set on a valid answer: {E.Name(resp.error.code)} {resp.error.message!r}")
    f.eq("tenant", resp.tenant, tenant)
    if policy:
        f.eq("policy (case-insensitive)", resp.policy.lower(), policy.lower())
    else:
        f.eq("policy", resp.policy, "")
    f.eq("issuer", resp.issuer, p["iss"])
    f.eq("subject", resp.subject, p["sub"])
    f.eq("audiences", list(resp.audiences), as_list(p["aud"]))
    f.eq("scopes", list(resp.scopes), scopes_of(p))
    f.eq("expires_at", ts(resp, "expires_at"), p.get("exp"))
    f.eq("issued_at", ts(resp, "issued_at"), p.get("iat"))
    f.eq("not_before", ts(resp, "not_before"), p.get("nbf"))
    f.eq("key_id", resp.key_id, h.get("kid", ""))
    f.eq("algorithm", resp.algorithm, h["alg"])
    f.eq("claims", MessageToDict(resp.claims), p)
    f.done()


def expect_invalid(resp, code, tenant=None, token=None):
    f = Fields("Validate")
    f.eq("valid", resp.valid, False)
    f.eq("error.code", E.Name(resp.error.code), E.Name(code))
    f.true("error.message", bool(resp.error.message), "empty")
    if token:
        f.true("error.message", token not in resp.error.message, "echoes the token")
    if tenant is not None:
        f.eq("tenant", resp.tenant, tenant)
    f.eq("claims", MessageToDict(resp.claims), {})
    f.done()


def expect_rpc_error(fn, code):
    try:
        fn()
    except grpc.RpcError as err:
        if err.code() != code:
            raise AssertionError(f"RPC status {err.code().name} ({err.details()}), want {code.name}") from None
        return
    raise AssertionError(f"RPC succeeded, want status {code.name}")


# --- health --------------------------------------------------------------------

def health_is(service, want):
    resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    if resp.status != want:
        raise AssertionError(f"status {name(resp.status)}, want {name(want)}")


SERVING = health_pb2.HealthCheckResponse.SERVING
report.check('health "" is SERVING', health_is, "", SERVING)
report.check('health "introspect.v1.TokenService" is SERVING', health_is, "introspect.v1.TokenService", SERVING)
report.check("health of an unknown service is NOT_FOUND", expect_rpc_error,
             lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT),
             grpc.StatusCode.NOT_FOUND)

# Minted now, checked once it has expired (after the checks below).
short_token = None


def mint_short():
    global short_token
    short_token = access_token(IDP, "https://short.api.test")
    _, p = jwt_parts(short_token)
    if p["exp"] - p["iat"] > 5:
        raise AssertionError(f"provider gave a {p['exp'] - p['iat']} s token, want 2 s")
    # Still valid right now: the later EXPIRED answer is about time, not the token.
    expect_valid(validate(short_token), short_token, T["oidc"]["id"])


report.check("oidc-provider short-lived at+jwt validates before it expires", mint_short)

# --- Validate: oidc-provider ---------------------------------------------------------

def check_alg(resource, alg):
    token = access_token(IDP, resource)
    h, _ = jwt_parts(token)
    if h.get("typ") != "at+jwt" or h.get("alg") != alg:
        raise AssertionError(f"provider header {h}, want typ at+jwt alg {alg}")
    expect_valid(validate(token), token, T["oidc"]["id"])


report.check("Validate oidc-provider at+jwt RS256, field by field", check_alg, "https://rs256.api.test", "RS256")
report.check("Validate oidc-provider at+jwt ES256, field by field", check_alg, "https://es256.api.test", "ES256")

rs_token = access_token(IDP, "https://rs256.api.test", "api:read")


def bearer_prefix():
    expect_valid(validate("Bearer " + rs_token), rs_token, T["oidc"]["id"])


report.check('Validate accepts a leading "Bearer "', bearer_prefix)


def with_tenant():
    expect_valid(validate(rs_token, tenant=T["oidc"]["id"]), rs_token, T["oidc"]["id"])
    expect_invalid(validate(rs_token, tenant=T["b2c"]["id"]), E.ERROR_CODE_UNKNOWN_ISSUER)
    expect_rpc_error(lambda: validate(rs_token, tenant="no-such-tenant"), grpc.StatusCode.INVALID_ARGUMENT)


report.check("Validate with request tenant: right one valid, other UNKNOWN_ISSUER, unknown INVALID_ARGUMENT",
             with_tenant)


def wrong_audience():
    token = access_token(IDP, "https://other.api.test")
    expect_invalid(validate(token), E.ERROR_CODE_INVALID_AUDIENCE, T["oidc"]["id"], token)


report.check("Validate oidc-provider token for another resource is INVALID_AUDIENCE", wrong_audience)


def request_audiences():
    expect_invalid(validate(rs_token, audiences=["https://es256.api.test"]), E.ERROR_CODE_INVALID_AUDIENCE,
                   T["oidc"]["id"])
    expect_valid(validate(rs_token, audiences=["https://nope.test", "https://rs256.api.test"]), rs_token,
                 T["oidc"]["id"])


report.check("Validate with request audiences overrides the tenant's", request_audiences)


def scopes():
    expect_valid(validate(rs_token, required_scopes=["api:read"]), rs_token, T["oidc"]["id"])
    expect_invalid(validate(rs_token, required_scopes=["api:read", "api:write"]), E.ERROR_CODE_INSUFFICIENT_SCOPE,
                   T["oidc"]["id"])


report.check("Validate required_scopes: granted valid, missing INSUFFICIENT_SCOPE", scopes)


def tampered():
    bad = tamper(rs_token)
    expect_invalid(validate(bad), E.ERROR_CODE_INVALID_SIGNATURE, T["oidc"]["id"], bad)


report.check("Validate oidc-provider token with a flipped signature bit is INVALID_SIGNATURE", tampered)


def bad_requests():
    expect_rpc_error(lambda: validate(""), grpc.StatusCode.INVALID_ARGUMENT)
    expect_invalid(validate("not-a-jwt"), E.ERROR_CODE_MALFORMED)


report.check("Validate empty token INVALID_ARGUMENT, garbage MALFORMED", bad_requests)

# --- Introspect ----------------------------------------------------------------------

MAPPED = {"active", "scope", "scp", "client_id", "username", "token_type", "exp", "iat", "nbf", "sub", "aud",
          "iss", "jti"}


def expect_inactive(resp):
    f = Fields("Introspect")
    f.eq("active", resp.active, False)
    for field in ("scope", "client_id", "username", "token_type", "sub", "iss", "jti"):
        f.eq(field, getattr(resp, field), "")
    for field in ("exp", "iat", "nbf"):
        f.eq(field, getattr(resp, field), 0)
    f.eq("aud", list(resp.aud), [])
    f.eq("claims", MessageToDict(resp.claims), {})
    f.done()


def expect_claims_rest(f, resp, source):
    claims = MessageToDict(resp.claims)
    for k, v in source.items():
        if k not in MAPPED:
            f.eq(f"claims[{k}]", claims.get(k), v)
    for k, v in claims.items():
        if k in source:
            f.eq(f"claims[{k}]", v, source[k])


def introspect_jwt():
    _, p = jwt_parts(rs_token)
    resp = introspect(rs_token, token_type_hint="access_token")
    f = Fields("Introspect")
    f.eq("active", resp.active, True)
    f.eq("scope", resp.scope, p["scope"])
    f.eq("client_id", resp.client_id, p["client_id"])
    f.eq("username", resp.username, "")
    f.eq("token_type", resp.token_type, "Bearer")
    f.eq("exp", resp.exp, p["exp"])
    f.eq("iat", resp.iat, p["iat"])
    f.eq("nbf", resp.nbf, p.get("nbf", 0))
    f.eq("sub", resp.sub, p["sub"])
    f.eq("aud", list(resp.aud), as_list(p["aud"]))
    f.eq("iss", resp.iss, p["iss"])
    f.eq("jti", resp.jti, p["jti"])
    f.eq("tenant", resp.tenant, T["oidc"]["id"])
    expect_claims_rest(f, resp, p)
    f.done()


report.check("Introspect oidc-provider at+jwt locally: RFC 7662 fields", introspect_jwt)


def expect_matches_upstream(resp, upstream):
    f = Fields("Introspect")
    f.eq("upstream active", upstream.get("active"), True)
    f.eq("active", resp.active, True)
    f.eq("scope", resp.scope, upstream.get("scope", ""))
    f.eq("client_id", resp.client_id, upstream.get("client_id", ""))
    f.eq("username", resp.username, upstream.get("username", ""))
    f.eq("token_type", resp.token_type, upstream.get("token_type", ""))
    f.eq("exp", resp.exp, upstream.get("exp", 0))
    f.eq("iat", resp.iat, upstream.get("iat", 0))
    f.eq("nbf", resp.nbf, upstream.get("nbf", 0))
    f.eq("sub", resp.sub, upstream.get("sub", ""))
    f.eq("aud", list(resp.aud), as_list(upstream["aud"]) if "aud" in upstream else [])
    f.eq("iss", resp.iss, upstream.get("iss", ""))
    f.eq("jti", resp.jti, upstream.get("jti", ""))
    f.eq("tenant", resp.tenant, T["oidc"]["id"])
    expect_claims_rest(f, resp, upstream)
    f.done()


opaque = {}


def introspect_opaque():
    token = access_token(IDP, "https://opaque.api.test", "api:read api:write")
    if token.count(".") == 2:
        raise AssertionError("provider issued a JWT, want an opaque token")
    opaque["token"] = token
    upstream = provider_introspect(IDP, token)
    expect_matches_upstream(introspect(token, token_type_hint="access_token", tenant=T["oidc"]["id"]), upstream)


report.check("Introspect oidc-provider opaque token (client_secret_basic, secret needing form-urlencoding): "
             "active, fields as the provider's RFC 7662 answer",
             introspect_opaque)


def introspect_opaque_no_tenant():
    # Two tenants have an introspection endpoint (oidc and down): the request must say which.
    token = access_token(IDP, "https://opaque.api.test")
    expect_rpc_error(lambda: introspect(token), grpc.StatusCode.INVALID_ARGUMENT)


report.check("Introspect opaque token without request tenant, two tenants with endpoints: INVALID_ARGUMENT",
             introspect_opaque_no_tenant)


def introspect_revoked():
    token = opaque.get("token")
    if not token:
        raise AssertionError("no opaque token from the previous check")
    revoke(IDP, token)
    if provider_introspect(IDP, token).get("active") is not False:
        raise AssertionError("the provider still calls the revoked token active")
    # Answers may be cached for cache_ttl: wait it out, then one call must say inactive.
    time.sleep(T["oidc"]["cache_ttl_seconds"] + 0.5)
    expect_inactive(introspect(token, token_type_hint="access_token", tenant=T["oidc"]["id"]))


report.check("Introspect opaque token revoked at the provider's revocation endpoint is inactive",
             introspect_revoked)


def introspect_unknown():
    expect_inactive(introspect("i-am-not-a-token-the-provider-issued", tenant=T["oidc"]["id"]))


report.check("Introspect unknown opaque token is inactive, nothing disclosed", introspect_unknown)


def introspect_wrong_aud():
    token = access_token(IDP, "https://other.api.test")
    expect_inactive(introspect(token))


report.check("Introspect at+jwt for another resource is inactive, nothing disclosed", introspect_wrong_aud)

# --- WatchKeys: the keys known now ------------------------------------------------------

def expected_keys():
    """(tenant, policy, kid) -> (issuer, jwk) from what the providers publish."""
    out = {}
    for tenant, info in ((T["oidc"]["id"], IDP), (T["rotating"]["id"], ROT)):
        for jwk in fetch_jwks(info["jwks_uri"]):
            out[(tenant, "", jwk["kid"])] = (info["issuer"], jwk)
    for policy in T["b2c"]["policies"]:
        url = B2C["metadata_url_template"].replace("{policy}", policy)
        _, meta = http("GET", url)
        for jwk in fetch_jwks(meta["jwks_uri"]):
            out[(T["b2c"]["id"], policy.lower(), jwk["kid"])] = (meta["issuer"], jwk)
    return out


def check_key_event(f, ev, issuer, jwk, label):
    f.eq(f"{label} issuer", ev.issuer, issuer)
    if "alg" in jwk:
        f.eq(f"{label} algorithm", ev.algorithm, jwk["alg"])
    else:  # B2C's keys carry no alg; the only one this tenant allows, or none, are both fair
        f.true(f"{label} algorithm", ev.algorithm in ("", "RS256"), f"got {ev.algorithm!r}")
    f.eq(f"{label} key_type", ev.key_type, jwk["kty"])
    f.eq(f"{label} thumbprint", ev.thumbprint, thumbprint(jwk))
    f.true(f"{label} observed_at", ev.HasField("observed_at") and ev.observed_at.seconds > 0, "unset")
    try:
        import json  # noqa: PLC0415
        streamed = json.loads(ev.jwk)
    except ValueError as err:
        f.problems.append(f"{label} jwk: not JSON ({err})")
        return
    f.true(f"{label} jwk", not (PRIVATE_MEMBERS & set(streamed)), f"private members {PRIVATE_MEMBERS & set(streamed)}")
    f.eq(f"{label} jwk public members", {k: streamed.get(k) for k in public_members(jwk)}, public_members(jwk))
    if "kid" in streamed:
        f.eq(f"{label} jwk kid", streamed["kid"], jwk["kid"])


def read_until_synced(request, deadline_s=10.0):
    call = stub.WatchKeys(request, timeout=deadline_s)
    events = []
    try:
        for ev in call:
            events.append(ev)
            if ev.type == pb.KEY_EVENT_TYPE_SYNCED:
                break
    finally:
        call.cancel()
    return events


def watch_existing(tenants, want_tenants):
    events = read_until_synced(pb.WatchKeysRequest(tenants=tenants))
    want = {k: v for k, v in expected_keys().items() if k[0] in want_tenants}
    f = Fields("WatchKeys")
    types = [pb.KeyEventType.Name(e.type) for e in events]
    f.true("stream", bool(events) and events[-1].type == pb.KEY_EVENT_TYPE_SYNCED,
           f"ended before SYNCED: {types}")
    existing = [e for e in events if e.type == pb.KEY_EVENT_TYPE_EXISTING]
    f.eq("event types before SYNCED", set(types[:-1]), {"KEY_EVENT_TYPE_EXISTING"} if want else set())
    got = {}
    for e in existing:
        key = (e.tenant, e.policy.lower(), e.key_id)
        f.true("duplicate", key not in got, f"{key} streamed twice")
        got[key] = e
    f.eq("keys (tenant, policy, kid)", sorted(got), sorted(want))
    for key, e in got.items():
        if key in want:
            check_key_event(f, e, *want[key], label=f"{key[0]}/{key[1] or '-'}/{key[2]}")
    f.done()


report.check("WatchKeys {}: EXISTING for every key of every tenant, then SYNCED, field by field",
             watch_existing, [], {T["oidc"]["id"], T["rotating"]["id"], T["b2c"]["id"], T["down"]["id"]})
report.check("WatchKeys {tenants: [b2c]}: only that tenant's keys, each with its policy",
             watch_existing, [T["b2c"]["id"]], {T["b2c"]["id"]})

# --- B2C ---------------------------------------------------------------------------

P_A, P_B = T["b2c"]["policies"]  # B2C_1_signupsignin (user flow), B2C_1A_signup_signin (custom)
P_UNLISTED = "B2C_1_passwordreset"
B2C_ID = T["b2c"]["id"]


def b2c_tfp():
    token = b2c_mint(B2C, P_A, {"tfp": P_A})
    expect_valid(validate(token), token, B2C_ID, P_A)


def b2c_acr():
    token = b2c_mint(B2C, P_B, {"acr": P_B.lower()})
    expect_valid(validate(token), token, B2C_ID, P_B)


def b2c_tfp_first():
    token = b2c_mint(B2C, P_A, {"tfp": P_A, "acr": P_B.lower()})
    expect_valid(validate(token), token, B2C_ID, P_A)


def b2c_cross_key():
    token = b2c_mint(B2C, P_A, {"tfp": P_B})
    expect_invalid(validate(token), E.ERROR_CODE_UNKNOWN_KEY, B2C_ID, token)


def b2c_cross_kid():
    token = b2c_mint(B2C, P_A, {"tfp": P_B}, kid=P_B)
    expect_invalid(validate(token), E.ERROR_CODE_INVALID_SIGNATURE, B2C_ID, token)


def b2c_unlisted():
    token = b2c_mint(B2C, P_UNLISTED, {"tfp": P_UNLISTED})
    expect_invalid(validate(token), E.ERROR_CODE_UNKNOWN_POLICY, B2C_ID, token)


def b2c_no_policy():
    token = b2c_mint(B2C, P_A, {})
    expect_invalid(validate(token), E.ERROR_CODE_UNKNOWN_POLICY, B2C_ID, token)


report.check("B2C token of policy A (tfp) validates with policy A, field by field", b2c_tfp)
report.check("B2C token of policy B (acr, lower-case) validates with policy B", b2c_acr)
report.check("B2C tfp wins over acr (policy_claims order)", b2c_tfp_first)
report.check("B2C token signed with A's key claiming policy B is UNKNOWN_KEY", b2c_cross_key)
report.check("B2C token signed with A's key, B's kid, claiming policy B is INVALID_SIGNATURE", b2c_cross_kid)
report.check("B2C token of an unlisted policy is UNKNOWN_POLICY", b2c_unlisted)
report.check("B2C token without tfp or acr is UNKNOWN_POLICY", b2c_no_policy)

# --- a tenant whose provider is down ----------------------------------------------------

DOWN = T["down"]


def down_token():
    # The b2c mock signs whatever it is asked to: here a token claiming the dead issuer.
    return b2c_mint(B2C, P_A, {"iss": DOWN["issuer"], "aud": DOWN["audience"]})


def down_keys_unavailable():
    token = down_token()
    expect_invalid(validate(token), E.ERROR_CODE_KEYS_UNAVAILABLE, DOWN["id"], token)


def down_refresh_failed():
    token = down_token()
    events, failed = [], []
    call = stub.WatchKeys(pb.WatchKeysRequest(tenants=[DOWN["id"]]), timeout=20)
    errors = []

    def read():
        try:
            for ev in call:
                events.append(ev)
                if ev.type == pb.KEY_EVENT_TYPE_REFRESH_FAILED:
                    failed.append(ev)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                errors.append(f"{err.code().name}: {err.details()}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not wait_until(lambda: errors or any(e.type == pb.KEY_EVENT_TYPE_SYNCED for e in events), 10):
            raise AssertionError(f"WatchKeys sent no SYNCED within 10 s: {events}")
        if errors:
            raise AssertionError(f"WatchKeys failed: {errors[0]}")
        # The previous check's Validate started a kid-miss fetch; one more is allowed only
        # once unknown_kid_cooldown has passed.
        time.sleep(DOWN["unknown_kid_cooldown_seconds"] + 0.3)
        validate(token)  # needs keys: a fetch, which fails
        wait_until(lambda: failed, DOWN["fetch_timeout_seconds"] + 3)
    finally:
        call.cancel()
        reader.join(5)
    f = Fields("WatchKeys {tenants: [down]}")
    f.eq("EXISTING events", [e.key_id for e in events if e.type == pb.KEY_EVENT_TYPE_EXISTING], [])
    f.true("REFRESH_FAILED", bool(failed), "none within fetch_timeout + 3 s of a Validate that needed keys")
    for e in failed[:1]:
        f.eq("REFRESH_FAILED tenant", e.tenant, DOWN["id"])
        f.eq("REFRESH_FAILED issuer", e.issuer, DOWN["issuer"])
        f.true("REFRESH_FAILED message", bool(e.message), "empty")
    f.done()


def down_introspect_unavailable():
    expect_rpc_error(lambda: introspect("an-opaque-token", tenant=DOWN["id"]), grpc.StatusCode.UNAVAILABLE)


report.check("provider down: Validate of its token is KEYS_UNAVAILABLE", down_keys_unavailable)
report.check("provider down: WatchKeys streams REFRESH_FAILED when a Validate needs its keys", down_refresh_failed)
report.check("provider down: Introspect of an opaque token is UNAVAILABLE, never inactive",
             down_introspect_unavailable)

# --- expiry (the short token minted at the start) ---------------------------------------


def wait_expired():
    if not short_token:
        raise AssertionError("no short-lived token was minted")
    _, p = jwt_parts(short_token)
    wait = p["exp"] + T["oidc"]["clock_skew_seconds"] + 1.0 - time.time()
    if wait > 0:
        time.sleep(wait)


def expired_validate():
    wait_expired()
    expect_invalid(validate(short_token), E.ERROR_CODE_EXPIRED, T["oidc"]["id"], short_token)


def expired_introspect():
    wait_expired()
    expect_inactive(introspect(short_token))


report.check("Validate oidc-provider at+jwt past exp + clock_skew is EXPIRED", expired_validate)
report.check("Introspect oidc-provider at+jwt past exp + clock_skew is inactive", expired_introspect)

# --- key rotation under load --------------------------------------------------------------

ROT_ID = T["rotating"]["id"]
ROT_RESOURCE = "https://rot.api.test"
rotation = {"results": [], "events": [], "stream_error": None}


def watch_rotation(stop):
    call = stub.WatchKeys(pb.WatchKeysRequest(tenants=[ROT_ID]), timeout=120)
    stop["call"] = call
    try:
        for ev in call:
            rotation["events"].append((time.monotonic(), ev))
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            rotation["stream_error"] = f"{err.code().name}: {err.details()}"


def validate_continuously(stop):
    deadline = time.monotonic() + 90
    while not stop["validator"].is_set() and time.monotonic() < deadline:
        try:
            token = access_token(ROT, ROT_RESOURCE)
        except Exception:  # noqa: BLE001 - the provider's hiccup is not the service's rejection
            time.sleep(0.05)
            continue
        kid = jwt_parts(token)[0].get("kid")
        try:
            r = validate(token)
            rotation["results"].append((kid, r.valid, E.Name(r.error.code), r.error.message))
        except grpc.RpcError as err:
            rotation["results"].append((kid, False, f"RPC {err.code().name}", err.details()))
        time.sleep(0.03)


def rotate(step):
    return rotate_keys(ROT, step)


def synced():
    return any(e.type == pb.KEY_EVENT_TYPE_SYNCED for _, e in rotation["events"])


def after_synced():
    out, seen = [], False
    for _, e in rotation["events"]:
        if seen:
            out.append(e)
        seen = seen or e.type == pb.KEY_EVENT_TYPE_SYNCED
    return out


def run_rotation():
    old_token = access_token(ROT, ROT_RESOURCE)
    old_kid = jwt_parts(old_token)[0]["kid"]
    rotation["old_kid"], rotation["old_token"] = old_kid, old_token
    rotation["old_jwk"] = next(k for k in fetch_jwks(ROT["jwks_uri"]) if k["kid"] == old_kid)
    stop = {"validator": threading.Event()}
    watcher = threading.Thread(target=watch_rotation, args=(stop,), daemon=True)
    watcher.start()
    # Without a stream the rotation still runs: the Validate checks below stand alone.
    wait_until(lambda: synced() or rotation["stream_error"], 10)
    validator = threading.Thread(target=validate_continuously, args=(stop,), daemon=True)
    validator.start()
    try:
        time.sleep(1.0)
        kids = rotate("rotate")  # new key published and signing; old key still published
        new_kid = kids[0]
        rotation["new_kid"] = new_kid
        rotation["new_jwk"] = next(k for k in fetch_jwks(ROT["jwks_uri"]) if k["kid"] == new_kid)
        # The first token under the new kid, straight away: the service has not refreshed
        # yet (unless its periodic refresh happened to land in these milliseconds), so it
        # must fetch the keys on the unknown kid within this call.
        first = access_token(ROT, ROT_RESOURCE)
        rotation["first_new"] = (jwt_parts(first)[0]["kid"], validate(first))
        time.sleep(2.5 * T["rotating"]["refresh_interval_seconds"] + 1.0)
        rotate("retire")  # old key removed
        interval = T["rotating"]["refresh_interval_seconds"]
        if synced() and not rotation["stream_error"]:
            removed = wait_until(lambda: any(e.type == pb.KEY_EVENT_TYPE_REMOVED for e in after_synced()),
                                 4 * interval + 5)
            time.sleep(1.0 if removed else 0)
        else:  # no stream to tell: give the periodic refresh time to see the removal
            time.sleep(2.5 * interval + 1.0)
    finally:
        stop["validator"].set()
        validator.join(10)
        rotation["old_after"] = validate(old_token)
        time.sleep(0.5)
        if "call" in stop:
            stop["call"].cancel()
        watcher.join(5)


def rotation_no_false_rejections():
    results = rotation["results"]
    rejected = [r for r in results if not r[1]]
    old = sum(1 for r in results if r[0] == rotation.get("old_kid"))
    new = sum(1 for r in results if r[0] == rotation.get("new_kid"))
    if rejected:
        raise AssertionError(f"{len(rejected)} of {len(results)} valid tokens rejected, first: {rejected[0]}")
    if old < 5 or new < 20:
        raise AssertionError(f"too few validations to tell: {old} under the old kid, {new} under the new")


def rotation_first_new_kid():
    if "first_new" not in rotation:
        raise AssertionError("the rotation did not get as far as a token under the new kid")
    kid, resp = rotation["first_new"]
    if kid != rotation["new_kid"]:
        raise AssertionError(f"provider signed with {kid}, want {rotation['new_kid']}")
    if not resp.valid:
        raise AssertionError(f"rejected: {E.Name(resp.error.code)}: {resp.error.message}")


def rotation_events():
    if "new_kid" not in rotation:
        raise AssertionError("the rotation did not run")
    if not synced():
        raise AssertionError(f"WatchKeys sent no SYNCED ({rotation['stream_error']})")
    evs = after_synced()
    names = [f"{pb.KeyEventType.Name(e.type)}({e.key_id})" for e in evs]
    f = Fields("WatchKeys during rotation")
    f.true("stream", rotation["stream_error"] is None, f"ended with {rotation['stream_error']}")
    f.eq("events after SYNCED", names, [f"KEY_EVENT_TYPE_ADDED({rotation['new_kid']})",
                                        f"KEY_EVENT_TYPE_REMOVED({rotation['old_kid']})"])
    for e in evs:
        f.eq("tenant", e.tenant, ROT_ID)
        f.eq("policy", e.policy, "")
        if e.type == pb.KEY_EVENT_TYPE_ADDED and e.key_id == rotation["new_kid"]:
            check_key_event(f, e, ROT["issuer"], rotation["new_jwk"], "ADDED")
        if e.type == pb.KEY_EVENT_TYPE_REMOVED and e.key_id == rotation["old_kid"]:
            check_key_event(f, e, ROT["issuer"], rotation["old_jwk"], "REMOVED")
    f.done()


def rotation_old_key_gone():
    if "old_after" not in rotation:
        raise AssertionError("the rotation did not run")
    expect_invalid(rotation["old_after"], E.ERROR_CODE_UNKNOWN_KEY, ROT_ID, rotation["old_token"])


report.check("rotation: the provider rotates its key while a client validates continuously", run_rotation)
report.check("rotation: zero false rejections while the key rotates", rotation_no_false_rejections)
report.check("rotation: the first token under the new kid validates (unknown-kid refresh)",
             rotation_first_new_kid)
report.check("rotation: WatchKeys shows one ADDED (new key) then one REMOVED (old key)", rotation_events)
report.check("rotation: a token signed with the removed key is UNKNOWN_KEY", rotation_old_key_gone)

# --- what the providers saw ------------------------------------------------------------------


def unlisted_never_fetched():
    _, stats = http("GET", f"http://127.0.0.1:{B2C['port']}/__admin/stats")
    hits = {p: n for p, n in stats.items() if P_UNLISTED.lower() in p and not p.startswith("/__admin")}
    if hits:
        raise AssertionError(f"introspectd fetched an unlisted policy: {hits}")
    listed = [p for p in stats if P_A.lower() in p or P_B.lower() in p]
    if not listed:
        raise AssertionError(f"introspectd fetched no listed policy either: {stats}")


report.check("B2C: the unlisted policy's metadata and keys were never fetched", unlisted_never_fetched)

# --- the Python example ----------------------------------------------------------------


def example():
    script = os.path.join(env["repo_root"], "examples", "python", "validate.py")
    run_env = dict(os.environ, PYTHONPATH=env["python_gen_dir"], INTROSPECTD_ADDR=env["service"])
    token = access_token(IDP, "https://rs256.api.test")
    ok = subprocess.run([sys.executable, script, token], env=run_env, capture_output=True, text=True, timeout=30)
    want = f"valid: tenant={T['oidc']['id']} subject={IDP['clients']['app']['id']} scopes=api:read"
    if ok.returncode != 0 or ok.stdout.strip() != want:
        raise AssertionError(f"valid token: exit {ok.returncode}, stdout {ok.stdout!r}, stderr {ok.stderr[-300:]!r}")
    other = access_token(IDP, "https://other.api.test")
    bad = subprocess.run([sys.executable, script, other], env=run_env, capture_output=True, text=True, timeout=30)
    if bad.returncode != 1 or not bad.stdout.startswith("invalid: ERROR_CODE_INVALID_AUDIENCE"):
        raise AssertionError(f"wrong audience: exit {bad.returncode}, stdout {bad.stdout!r}")


report.check("examples/python/validate.py: valid and invalid token", example)

channel.close()
report.finish()
