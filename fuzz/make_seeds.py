"""Writes the committed seed corpora, fuzz/corpus/<target>/<sha1>, from the test
fixtures and the Wycheproof JOSE vectors. Run from the repository root:

    python3 fuzz/make_seeds.py

Each file is one input in the target's own format (see fuzz/src/lib.rs). The script is
deterministic; rerunning it rewrites the same files. Inputs a fuzzer later finds
interesting stay in the git-ignored working corpus (.ci/.fuzz/), not here.
"""

import hashlib
import json
import os
import sys
import calendar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WYCHEPROOF = os.path.join(ROOT, "tests", "conformance", "wycheproof")
OUT = os.path.join(ROOT, "fuzz", "corpus")

# Far-future and recent times, so that signed seeds reach the checks after `exp`.
FUTURE = 4102444800  # 2100-01-01
NOW = calendar.timegm((2026, 1, 1, 0, 0, 0))


def write(target: str, data: bytes) -> None:
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def wycheproof(name: str) -> dict:
    with open(os.path.join(WYCHEPROOF, name)) as f:
        return json.load(f)


def validate_seeds() -> None:
    # Mode 0: every Wycheproof JWS as a raw token (the first of each group also with a
    # Bearer prefix).
    for group in wycheproof("json_web_signature_test.json")["testGroups"]:
        cases = [c["jws"] for c in group["tests"] if isinstance(c.get("jws"), str)]
        for i, jws in enumerate(cases):
            write("validate", b"\x00" + jws.encode())
            if i == 0:
                write("validate", b"\x40" + jws.encode())
    for raw in ["", "a.b.c", "..", "Bearer ", "e30.e30.", "eyJhbGciOiJub25lIn0.e30."]:
        write("validate", b"\x00" + raw.encode())
    # Modes 1-3: header and payload JSON that the target signs, one per claim shape.
    base = {"iss": "https://fuzz.example", "sub": "u", "aud": "api", "iat": NOW, "nbf": NOW,
            "exp": NOW + 3600, "jti": "j1"}
    far = dict(base, exp=FUTURE, iat=FUTURE - 3600, nbf=FUTURE - 3600)
    shapes = [
        ({"alg": "HS256", "typ": "JWT"}, base),
        ({"alg": "HS256", "typ": "JWT"}, far),
        ({"alg": "HS256", "typ": "at+jwt "}, dict(far, iss="https://typed.example")),
        ({"alg": "HS256", "typ": "application/AT+JWT"}, dict(far, iss="https://typed.example")),
        ({"alg": "HS256"}, dict(far, aud=["api", "account"], azp="frontend-app")),
        ({"alg": "HS256"}, dict(far, aud=["api", "other"], nonce="n-1")),
        ({"alg": "HS256"}, dict(far, aud=["api", "other"], nonce="n-1", azp="api")),
        ({"alg": "HS256"}, dict(far, exp=1e300)),
        ({"alg": "HS256"}, dict(far, exp=253402300799, iat=-62135596800)),
        ({"alg": "HS256"}, dict(far, exp=253402300800)),
        ({"alg": "HS256"}, dict(far, nbf=-1e19)),
        ({"alg": "HS256"}, dict(far, scp="read write", client_id="c")),
        ({"alg": "HS256", "crit": ["exp"]}, far),
        ({"alg": "HS256", "kid": 7}, far),
        ({"alg": "none"}, far),
        ({"alg": "HS256"}, dict(far, iss="https://fuzz.example", aud="shared-api")),
        ({"alg": "HS256"}, {"iss": 1}),
        ({"alg": "HS256"}, {"aud": ["a", 1]}),
        ({"alg": "HS512"}, far),
        ({"alg": "ES256", "kid": "ec1"}, dict(far, iss="https://ec.fuzz.example")),
        ({"alg": "ES256"}, dict(far, iss="https://ec.fuzz.example")),
        ({"alg": "ES256", "kid": "other"}, dict(far, iss="https://ec.fuzz.example")),
    ]
    for header, payload in shapes:
        alg = header["alg"]
        mode = {"HS512": 3, "ES256": 2}.get(alg, 1)
        body = compact(header) + b"\x00" + compact(payload)
        for flags in (0, 4, 8 | 32, 16 | 128):
            write("validate", bytes([mode | flags]) + body)
    write("validate", b"\x01" + b'{"alg":"HS256","alg":"none"}\x00{}')
    write("validate", b"\x01" + b'{"alg":"HS256"}\x00{"a":1,"a":2}')


def jwks_seeds() -> None:
    for group in wycheproof("json_web_key_test.json")["testGroups"]:
        for key in ("private", "public"):
            if key in group:
                doc = group[key] if "keys" in group[key] else {"keys": [group[key]]}
                write("jwks", compact(doc))
    for group in wycheproof("json_web_signature_test.json")["testGroups"]:
        for key in ("private", "public"):
            if key in group:
                doc = group[key] if "keys" in group[key] else {"keys": [group[key]]}
                write("jwks", compact(doc))
    ec = {"kty": "EC", "crv": "P-256", "kid": "e1", "x": "04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY",
          "y": "UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw"}
    for doc in [
        {"keys": []},
        {"keys": [ec, ec]},
        {"keys": [ec, dict(ec, use="enc", kid="enc")]},
        {"keys": [dict(ec, d="AAAA")]},
        {"keys": [{"kty": "RSA", "kid": "r", "n": "", "e": "AQAB"}]},
        {"keys": [{"kty": "RSA", "kid": "r", "n": "AAAA", "e": "AQAB"}]},
        {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]},
        {"keys": [dict(ec, key_ops=["sign"])]},
        {"keys": [dict(ec, alg="ES384")]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]},
        {"nokeys": 1},
    ]:
        write("jwks", compact(doc))


def discovery_seeds() -> None:
    iss = "https://idp.example.com/tenant"
    tfp = "https://idp.example.com/tfp/775527ff-9a37-4307-8b3d-cc311f58d925/B2C_1_signin/v2.0/"
    docs = [
        {"issuer": iss, "jwks_uri": iss + "/keys"},
        {"issuer": iss, "jwks_uri": "http://idp.example.com/keys"},
        {"issuer": iss + "/", "jwks_uri": iss + "/keys"},
        {"issuer": tfp, "jwks_uri": iss + "/keys"},
        {"issuer": tfp.replace("idp.", "evil."), "jwks_uri": iss + "/keys"},
        {"issuer": iss, "jwks_uri": "file:///etc/passwd"},
        {"issuer": iss, "jwks_uri": iss + "/keys", "introspection_endpoint": iss + "/i",
         "token_endpoint": iss + "/t"},
        {"jwks_uri": iss + "/keys"},
        {"issuer": iss},
    ]
    for doc in docs:
        for flags in (0, 1, 2, 3):
            write("discovery", bytes([flags]) + compact(doc))


def introspect_answer_seeds() -> None:
    token = b"opaque-token-0123456789abcdef"
    answers = [
        {"active": True, "scope": "a b", "client_id": "c", "username": "u", "token_type": "Bearer",
         "exp": FUTURE, "iat": NOW, "nbf": NOW, "sub": "s", "aud": ["x", "y"], "iss": "i", "jti": "j",
         "ext": {"k": [1, 2]}},
        {"active": False, "sub": "s"},
        {"active": True, "sub": token.decode(), "echo": {"t": "Bearer " + token.decode()}},
        {"active": True, "exp": 1e300, "iat": "soon", "aud": "one"},
        {"active": "true"},
        {"sub": "s"},
        {"error": token.decode()},
        {"error": "invalid_client"},
    ]
    for status in (200, 400, 401, 403, 500, 307):
        for answer in answers:
            write("introspect_answer", status.to_bytes(2, "big") + token + b"\x00" + compact(answer))
    write("introspect_answer", (200).to_bytes(2, "big") + b"ab\x00" + compact({"active": True, "sub": "ab"}))
    write("introspect_answer", (200).to_bytes(2, "big") + token + b"\x00<html>")


def config_seeds() -> None:
    with open(os.path.join(ROOT, "tests", "fixtures", "config.example.yaml"), "rb") as f:
        example = f.read()
    write("config", example)
    write("config", example + b"\x00SERVER__LISTEN=127.0.0.1:1\nTENANTS__0__CLOCK_SKEW=5s\n")
    write("config", example + b"\x00DEFAULTS__ALGORITHMS=[RS256]\nTENANTS__9__ID=x\n")
    small = [
        "",
        "tenants:\n  - id: a\n    issuer: https://a\n",
        "tenants:\n  - id: a\n    issuer: https://a\n    unknown_kid_cooldown: 0s\n",
        "tenants:\n  - id: a\n    issuer: https://a\n    refresh_interval: 100000000y\n",
        "tenants:\n  - id: a\n    issuer: https://a\n    replay_detection: true\n",
        "defaults:\n  replay_cache_entries: 0\n  token_kind: id_token\ntenants:\n  - id: a\n"
        "    issuer: https://a\n    replay_detection: true\n    replay_cache_entries: 100000000\n",
        "tenants:\n  - id: a\n    issuer: https://a\n    types: [\"at+jwt \"]\n",
        "tenants:\n  - id: e\n    issuer: \"https://login.example/{tenantid}/v2.0\"\n"
        "    metadata_url: https://login.example/common/v2.0/.well-known/openid-configuration\n",
        "tenants:\n  - id: e\n    issuer: \"https://login.example/{tenantid}/v2.0\"\n"
        "    metadata_url: https://login.example/common/v2.0/.well-known/openid-configuration\n"
        "    allowed_tenant_ids: [\"*\"]\n",
        "tenants:\n  - id: h\n    issuer: https://h\n    algorithms: [HS256]\n    hmac_secret_env: S\n"
        "    hmac_secret_encoding: base64\n",
        "server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    reload_interval: 0s\n",
        "defaults:\n  fetch_timeout: 1000000000000000000s\n",
        "server:\n  max_connection_age: 18446744073709551615s\n",
    ]
    for text in small:
        write("config", text.encode())
        write("config", text.encode() + b"\x00DEFAULTS__UNKNOWN_KID_COOLDOWN=0s\n")


def main() -> int:
    validate_seeds()
    jwks_seeds()
    discovery_seeds()
    introspect_answer_seeds()
    config_seeds()
    for target in sorted(os.listdir(OUT)):
        print(f"{target}: {len(os.listdir(os.path.join(OUT, target)))} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
