"""Writes the Envoy configuration of the interop suite and the ports it uses.

Usage: python envoy_config.py RUN_DIR UPSTREAM_PORT
Reads RUN_DIR/env.json (introspectd's address, the providers); writes
RUN_DIR/envoy.yaml (JSON, which is YAML) and RUN_DIR/envoy-env.json.

Three listeners, all on loopback:
  ext_authz      envoy.filters.http.ext_authz -> introspectd (request headers in `headers`)
  ext_authz_raw  the same with encode_raw_headers: true (headers in `header_map`)
  jwt_authn      envoy.filters.http.jwt_authn for the same issuers and JWKS (parity)
Routes of the ext_authz listeners carry context_extensions (EXT_AUTHZ.md); every route
copies the ext_authz dynamic metadata into x-md-* request headers, so the echoing
upstream shows it.
"""

import json
import socket
import sys
from urllib.parse import urlparse

run_dir, upstream_port = sys.argv[1], int(sys.argv[2])
with open(f"{run_dir}/env.json", encoding="utf-8") as f:
    env = json.load(f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ports = {"admin": free_port(), "ext_authz": free_port(), "ext_authz_raw": free_port(),
         "jwt_authn": free_port()}
service_host, service_port = env["service"].rsplit(":", 1)
idp, b2c = env["idp"], env["b2c"]
B2C_POLICY = env["tenants"]["b2c"]["policies"][0]
CLOCK_SKEW = env["tenants"]["oidc"]["clock_skew_seconds"]


def cluster(name, port, http2=False):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}}}]}]},
    }
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def ext(**context_extensions):
    return {"envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"context_extensions": context_extensions}}}


def route(prefix, per_filter=None):
    r = {"match": {"prefix": prefix}, "route": {"cluster": "upstream"}}
    if per_filter:
        r["typed_per_filter_config"] = per_filter
    return r


METADATA_HEADERS = [
    {"header": {"key": f"x-md-{k}", "value": f"%DYNAMIC_METADATA(envoy.filters.http.ext_authz:{k})%"},
     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    for k in ("tenant", "iss", "sub", "client_id", "scope", "aud", "exp")
]

EXT_AUTHZ_ROUTES = [
    route("/anon", ext(allow_anonymous="true")),
    route("/scoped", ext(required_scopes="api:read api:write")),
    route("/es256", ext(tenant="oidc", audiences="https://es256.api.test")),
    route("/unknown-tenant", ext(tenant="no-such-tenant")),
    route("/down", ext(tenant="down")),
    route("/rot", ext(tenant="rotating")),
    route("/oidc", ext(tenant="oidc")),
    route("/b2c", ext(tenant="b2c")),
    route("/"),
]


def hcm(stat_prefix, http_filters, routes):
    return {"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"], "routes": routes,
                "request_headers_to_add": METADATA_HEADERS if stat_prefix != "jwt_authn" else []}]},
            "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}


def ext_authz_filter(raw):
    return {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": "introspectd"}, "timeout": "5s"},
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "encode_raw_headers": raw,
    }}


def jwks_provider(issuer, audiences, jwks_uri, cluster_name):
    return {
        "issuer": issuer,
        "audiences": audiences,
        "remote_jwks": {"http_uri": {"uri": jwks_uri, "cluster": cluster_name, "timeout": "5s"},
                        "cache_duration": "600s"},
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": True,
        "clock_skew_seconds": CLOCK_SKEW,
    }


b2c_base = urlparse(b2c["metadata_url_template"])
b2c_jwks = f"{b2c_base.scheme}://{b2c_base.netloc}/{b2c['tenant_name']}/{B2C_POLICY}/discovery/v2.0/keys"
jwt_authn = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "providers": {
        "oidc": jwks_provider(idp["issuer"], ["https://rs256.api.test", "https://es256.api.test",
                                              "https://short.api.test"], idp["jwks_uri"], "idp"),
        "b2c": jwks_provider(b2c["issuer"], [b2c["client_id"]], b2c_jwks, "b2c"),
    },
    "rules": [
        {"match": {"prefix": "/b2c"}, "requires": {"provider_name": "b2c"}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "oidc"}},
    ],
}}


def listener(name, chain):
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [chain]}


config = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["admin"]}}},
    "static_resources": {
        "listeners": [
            listener("ext_authz", hcm("ext_authz", [ext_authz_filter(False)], EXT_AUTHZ_ROUTES)),
            listener("ext_authz_raw", hcm("ext_authz_raw", [ext_authz_filter(True)], EXT_AUTHZ_ROUTES)),
            listener("jwt_authn", hcm("jwt_authn", [jwt_authn], [route("/")])),
        ],
        "clusters": [
            cluster("introspectd", service_port, http2=True),
            cluster("upstream", upstream_port),
            cluster("idp", idp["port"]),
            cluster("b2c", b2c["port"]),
        ],
    },
}

with open(f"{run_dir}/envoy.yaml", "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
with open(f"{run_dir}/envoy-env.json", "w", encoding="utf-8") as f:
    json.dump({"ports": ports, "b2c_policy": B2C_POLICY}, f)
