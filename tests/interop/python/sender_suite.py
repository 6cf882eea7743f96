"""Certificate-bound tokens with a real provider: oidc-provider's
mTLS.certificateBoundAccessTokens feature binds a token to the TLS client
certificate of the token request (RFC 8705 section 3), made over real mutual TLS;
introspectd checks the binding through Validate and Introspect, given the
certificate as DER or as its SHA-256.

Usage: python sender_suite.py ENV_JSON
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import sys
import urllib.parse
import urllib.request

import grpc

from interop import RPC_TIMEOUT, Fields, Report, jwt_parts, load_env

env = load_env(sys.argv[1])

from introspect.v1 import introspect_pb2 as pb  # noqa: E402  (generated into env's dir)
from introspect.v1 import introspect_pb2_grpc as pb_grpc  # noqa: E402

IDP = env["idp"]
CERTS = env["certs"]
TENANT = env["tenants"]["oidc"]["id"]
E = pb.ErrorCode
stub = pb_grpc.TokenServiceStub(grpc.insecure_channel(env["service"]))
report = Report("python-mtls")


def der(stem: str) -> bytes:
    with open(f"{CERTS}/{stem}.pem", encoding="ascii") as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def mtls_token(resource: str, client_cert: str) -> dict:
    """Client credentials over mutual TLS to the provider's TLS listener."""
    ctx = ssl.create_default_context(cafile=f"{CERTS}/ca.pem")
    ctx.load_cert_chain(f"{CERTS}/{client_cert}.pem", f"{CERTS}/{client_cert}.key")
    c = IDP["clients"]["mtls"]
    auth = base64.b64encode(f"{urllib.parse.quote_plus(c['id'])}:{urllib.parse.quote_plus(c['secret'])}".encode())
    req = urllib.request.Request(
        IDP["mtls_token_endpoint"], method="POST",
        data=urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource,
                                     "scope": "api:read"}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded", "authorization": "Basic " + auth.decode()},
    )
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return json.loads(resp.read())


def validate(token, **kw):
    return stub.Validate(pb.ValidateRequest(token=token, tenant=TENANT, **kw), timeout=RPC_TIMEOUT)


bound_der, other_der = der("client-bound"), der("client-other")
state = {}


def issued():
    body = mtls_token("https://mtls.api.test", "client-bound")
    state["token"] = body["access_token"]
    _, payload = jwt_parts(state["token"])
    f = Fields("token")
    f.eq("cnf", payload.get("cnf"), {"x5t#S256": b64_sha256(bound_der)})
    f.done()


def valid_with(**kw):
    r = validate(state["token"], **kw)
    f = Fields("Validate")
    f.eq("valid", r.valid, True)
    f.eq("error", E.Name(r.error.code) if r.HasField("error") else "", "")
    f.eq("binding.kind", pb.BindingKind.Name(r.binding.kind), "BINDING_KIND_MTLS")
    f.eq("binding.x5t_s256", r.binding.x5t_s256, b64_sha256(bound_der))
    f.done()


def refused_with(**kw):
    r = validate(state["token"], **kw)
    f = Fields("Validate")
    f.eq("valid", r.valid, False)
    f.eq("code", E.Name(r.error.code), "ERROR_CODE_BINDING_MISMATCH")
    f.true("www_authenticate", r.www_authenticate.startswith('Bearer realm="introspectd"')
           and 'error="invalid_token"' in r.www_authenticate, repr(r.www_authenticate))
    f.done()


def hex_is_a_bad_request():
    try:
        validate(state["token"], client_certificate_sha256=hashlib.sha256(bound_der).hexdigest())
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return
        raise
    raise AssertionError("a hex thumbprint was accepted")


def introspect_active(expected, **kw):
    r = stub.Introspect(pb.IntrospectRequest(token=state["token"], tenant=TENANT, **kw), timeout=RPC_TIMEOUT)
    if r.active != expected:
        raise AssertionError(f"active {r.active}, want {expected}")


if report.check("oidc-provider binds a token to the TLS client certificate of the token request (cnf x5t#S256)", issued):
    report.check("Validate: the bound certificate as DER is valid, binding MTLS", valid_with,
                 client_certificate=bound_der)
    report.check("Validate: the bound certificate as base64url SHA-256 is valid", valid_with,
                 client_certificate_sha256=b64_sha256(bound_der))
    report.check("Validate: no certificate is BINDING_MISMATCH with a Bearer challenge", refused_with)
    report.check("Validate: another certificate is BINDING_MISMATCH", refused_with, client_certificate=other_der)
    report.check("Validate: a hex thumbprint from the caller is INVALID_ARGUMENT", hex_is_a_bad_request)
    report.check("Introspect: active with the bound certificate", introspect_active, True,
                 client_certificate=bound_der)
    report.check("Introspect: inactive with another certificate", introspect_active, False,
                 client_certificate=other_der)
report.finish()
