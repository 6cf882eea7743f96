"""Shared helpers for the Python checks of the interop suite.

Every check prints one line, `ok - NAME` or `not ok - NAME: REASON`; run.sh counts
them. Nothing here depends on introspectd's internals: only on the proto, the
providers' published answers, and the run's environment file (written by run.sh).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

RPC_TIMEOUT = 10.0


def load_env(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        env = json.load(f)
    sys.path.insert(0, env["python_gen_dir"])
    return env


# --- reporting -------------------------------------------------------------------

class Mismatches(AssertionError):
    pass


class Fields:
    """Collects every field mismatch of one answer, so a failure lists them all."""

    def __init__(self, what: str):
        self.what = what
        self.problems: list[str] = []

    def eq(self, field: str, got, want):
        if got != want:
            self.problems.append(f"{field}: got {short(got)}, want {short(want)}")

    def true(self, field: str, cond: bool, detail: str = ""):
        if not cond:
            self.problems.append(f"{field}: {detail or 'condition failed'}")

    def done(self):
        if self.problems:
            raise Mismatches(f"{self.what}: " + "; ".join(self.problems))


def short(v, n: int = 160) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


class Report:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn, *args, **kwargs):
        """Runs one check; any exception is a failure with a one-line reason."""
        full = f"{self.prefix}: {name}"
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a check reports, never crashes the suite
            self.failed += 1
            reason = describe(exc)
            print(f"not ok - {full}: {reason}", flush=True)
            if os.environ.get("INTEROP_VERBOSE"):
                traceback.print_exc()
            return False
        self.passed += 1
        print(f"ok - {full}", flush=True)
        return True

    def finish(self):
        print(f"# {self.prefix}: {self.passed} passed, {self.failed} failed", flush=True)
        print("# runner-done", flush=True)


def describe(exc: BaseException) -> str:
    try:
        import grpc  # noqa: PLC0415

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return f"RPC failed: {exc.code().name}: {exc.details()}"
    except ImportError:
        pass
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())[:1500]


# --- HTTP to the providers ---------------------------------------------------------

def http(method: str, url: str, *, form=None, body=None, basic=None, timeout=10.0):
    headers = {}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    if basic is not None:
        # RFC 6749 2.3.1: form-urlencode id and secret before Basic.
        user, pw = (urllib.parse.quote_plus(x) for x in basic)
        headers["authorization"] = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def client_credentials(idp: dict, resource: str, scope: str = "api:read") -> dict:
    """A token from oidc-provider's token endpoint (client credentials, resource indicator)."""
    app = idp["clients"]["app"]
    status, body = http(
        "POST",
        idp["token_endpoint"],
        form={"grant_type": "client_credentials", "resource": resource, "scope": scope},
        basic=(app["id"], app["secret"]),
    )
    if status != 200:
        raise AssertionError(f"token endpoint answered {status}: {body}")
    return body


def access_token(idp: dict, resource: str, scope: str = "api:read") -> str:
    return client_credentials(idp, resource, scope)["access_token"]


def provider_introspect(idp: dict, token: str) -> dict:
    """The provider's own RFC 7662 answer, asked with introspectd's credentials."""
    c = idp["clients"]["introspectd"]
    status, body = http("POST", idp["introspection_endpoint"], form={"token": token}, basic=(c["id"], c["secret"]))
    if status != 200:
        raise AssertionError(f"introspection endpoint answered {status}: {body}")
    return body


def revoke(idp: dict, token: str):
    app = idp["clients"]["app"]
    status, body = http(
        "POST", idp["revocation_endpoint"], form={"token": token, "token_type_hint": "access_token"},
        basic=(app["id"], app["secret"]),
    )
    if status != 200:
        raise AssertionError(f"revocation endpoint answered {status}: {body}")


def b2c_mint(b2c: dict, sign_with: str, claims: dict, kid: str | None = None) -> str:
    body = {"sign_with": sign_with, "claims": claims}
    if kid:
        body["kid"] = kid
    status, answer = http("POST", f"http://127.0.0.1:{b2c['port']}/__admin/mint", body=body)
    if status != 200:
        raise AssertionError(f"b2c mint answered {status}: {answer}")
    return answer["token"]


def rotate_keys(issuer: dict, step: str) -> list[str]:
    """Rotates an idp.mjs issuer's signing key (`rotate`: new key signing, old kept;
    `retire`: old removed); returns the kids it publishes now."""
    status, body = http("POST", f"http://127.0.0.1:{issuer['port']}/__admin/rotate?step={step}")
    if status != 200:
        raise AssertionError(f"provider rotate {step}: {status} {body}")
    return body["kids"]


def fetch_jwks(url: str) -> list[dict]:
    status, body = http("GET", url)
    if status != 200:
        raise AssertionError(f"{url} answered {status}")
    return body["keys"]


# --- JOSE, just enough to check answers ----------------------------------------

def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(token: str) -> tuple[dict, dict]:
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url without padding."""
    members = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }[jwk["kty"]]
    canon = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()


def public_members(jwk: dict) -> dict:
    keep = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}[jwk["kty"]]
    return {k: jwk[k] for k in keep}


def tamper(token: str) -> str:
    """Same header and payload, a signature with one bit flipped in its first byte."""
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[0] ^= 0x01
    return f"{h}.{p}." + base64.urlsafe_b64encode(bytes(sig)).rstrip(b"=").decode()


def wait_until(pred, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
