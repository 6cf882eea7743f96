//! Handler tests: the Authorization service trait called directly with the CheckRequests
//! Envoy sends, one per row of EXT_AUTHZ.md's tables.

use std::{collections::HashMap, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_types::value::Kind;
use serde_json::{Value, json};
use tonic::{Code, Request};

use super::{
    pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::{
            CheckRequest, CheckResponse, OkHttpResponse, authorization_server::Authorization,
            check_response::HttpResponse,
        },
    },
    *,
};
use crate::{
    config::{self, ExtAuthzSettings, HeaderMapping},
    grpc::testing::{SECRET, hs256},
    metrics::{GrpcMethods, Metrics},
};

const ISS: &str = "https://fp.example";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn good_claims() -> Value {
    let n = now();
    json!({"iss": ISS, "aud": "api", "sub": "user-1", "exp": n + 300, "iat": n,
           "scope": "read write", "client_id": "app-7", "roles": ["a", "b"]})
}

fn registry() -> Registry {
    crate::install_crypto();
    let yaml = format!(
        "tenants:\n  - id: fp\n    issuer: {ISS}\n    audiences: [api]\n    algorithms: [HS256]\n    hmac_secret_env: S\n  - id: nokeys\n    issuer: https://nokeys.example\n    audiences: [api]\n    fetch_timeout: 100ms\n"
    );
    let settings = config::load_str(&yaml, &|_| Some(SECRET.to_string()), &[]).expect("config");
    Registry::new(&settings).expect("registry")
}

fn service_with(settings: ExtAuthzSettings) -> ExtAuthzService {
    let registry = registry();
    let introspection = Introspection::local_only(registry.clone());
    ExtAuthzService::new(registry, introspection, settings, 4096)
}

fn service() -> ExtAuthzService {
    service_with(ExtAuthzSettings::default())
}

fn check_request(headers: &[(&str, &str)], ext: &[(&str, &str)]) -> CheckRequest {
    request::http_check_request(headers, ext)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn check(svc: &ExtAuthzService, req: CheckRequest) -> CheckResponse {
    svc.check(Request::new(req))
        .await
        .expect("Check always answers")
        .into_inner()
}

fn grpc_code(r: &CheckResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(-1, |s| s.code))
}

fn ok(r: &CheckResponse) -> &OkHttpResponse {
    match &r.http_response {
        Some(HttpResponse::OkResponse(o)) => o,
        other => panic!("not allowed: {other:?}"),
    }
}

fn set_headers(o: &OkHttpResponse) -> HashMap<String, String> {
    o.headers
        .iter()
        .map(|h| {
            assert_eq!(
                h.append_action, 2,
                "every header is set with OVERWRITE_IF_EXISTS_OR_ADD"
            );
            let h = h.header.as_ref().expect("header");
            (h.key.clone(), h.value.clone())
        })
        .collect()
}

/// (HTTP status, headers, parsed body) of a denied answer.
fn denied(r: &CheckResponse) -> (i32, HashMap<String, String>, Value) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            let headers: HashMap<String, String> = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            let body = serde_json::from_str(&d.body).expect("JSON body");
            (d.status.as_ref().map_or(0, |s| s.code), headers, body)
        }
        other => panic!("not denied: {other:?}"),
    }
}

#[tokio::test]
async fn allowed_sets_identity_headers_and_metadata() {
    let svc = service();
    let claims = good_claims();
    let token = hs256(&claims);
    let r = check(
        &svc,
        check_request(&[("authorization", &bearer(&token))], &[]),
    )
    .await;
    assert_eq!(grpc_code(&r), Code::Ok);
    let o = ok(&r);
    let h = set_headers(o);
    assert_eq!(h["x-auth-subject"], "user-1");
    assert_eq!(h["x-auth-tenant"], "fp");
    assert_eq!(h["x-auth-scope"], "read write");
    assert_eq!(h["x-auth-client-id"], "app-7");
    let decoded = URL_SAFE_NO_PAD
        .decode(&h["x-auth-claims"])
        .expect("base64url");
    let sent: Value = serde_json::from_slice(&decoded).expect("json");
    assert_eq!(
        sent, claims,
        "the claims header carries the verified payload"
    );
    assert!(o.headers_to_remove.is_empty(), "{:?}", o.headers_to_remove);
    assert!(!h.contains_key("authorization"));

    let md = &r.dynamic_metadata.as_ref().expect("metadata").fields;
    let s = |k: &str| match md.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(
        (s("tenant"), s("iss"), s("sub"), s("client_id"), s("scope")),
        (
            "fp".into(),
            ISS.into(),
            "user-1".into(),
            "app-7".into(),
            "read write".into()
        )
    );
    match md.get("aud").and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(l)) => assert_eq!(l.values.len(), 1),
        other => panic!("aud: {other:?}"),
    }
    match md.get("exp").and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) => assert_eq!(*n as i64, claims["exp"].as_i64().unwrap_or(0)),
        other => panic!("exp: {other:?}"),
    }
}

#[tokio::test]
async fn absent_values_are_removed_so_clients_cannot_supply_them() {
    let svc = service();
    let mut claims = good_claims();
    claims.as_object_mut().map(|o| o.remove("client_id"));
    claims["sub"] = json!("evil\r\nx-injected: 1");
    let token = hs256(&claims);
    let r = check(
        &svc,
        check_request(
            &[
                ("authorization", &bearer(&token)),
                ("x-auth-client-id", "spoofed"),
                ("x_auth_subject", "spoofed"),
                ("x_unrelated", "kept"),
            ],
            &[],
        ),
    )
    .await;
    let o = ok(&r);
    let h = set_headers(o);
    assert!(!h.contains_key("x-auth-client-id"));
    assert!(
        !h.contains_key("x-auth-subject"),
        "a CRLF claim is never a header"
    );
    let mut removed = o.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["x-auth-client-id", "x-auth-subject", "x_auth_subject"]
    );
}

#[tokio::test]
async fn strip_token_and_custom_headers() {
    let svc = service_with(ExtAuthzSettings {
        strip_token: true,
        token_header: "x-token".into(),
        headers: vec![
            HeaderMapping {
                source: "roles".into(),
                header: "x-roles".into(),
            },
            HeaderMapping {
                source: "exp".into(),
                header: "x-exp".into(),
            },
        ],
        claims_header: None,
        ..Default::default()
    });
    let claims = good_claims();
    let token = hs256(&claims);
    let r = check(&svc, check_request(&[("x-token", &bearer(&token))], &[])).await;
    let o = ok(&r);
    let h = set_headers(o);
    assert_eq!(h["x-roles"], "a,b");
    assert_eq!(h["x-exp"], claims["exp"].to_string());
    assert!(!h.contains_key("x-auth-claims"), "claims header turned off");
    assert_eq!(o.headers_to_remove, ["x-token"]);
}

#[tokio::test]
async fn raw_header_map_is_read_too() {
    let svc = service();
    let token = hs256(&good_claims());
    let mut req = check_request(&[], &[]);
    let raw = |k: &str, v: &str| HeaderValue {
        key: k.into(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    };
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.header_map = Some(HeaderMap {
            headers: vec![
                raw("authorization", &bearer(&token)),
                raw("x_auth_scope", "x"),
            ],
        });
    }
    let r = check(&svc, req.clone()).await;
    assert_eq!(ok(&r).headers_to_remove, ["x_auth_scope"]);

    if let Some(map) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .and_then(|h| h.header_map.as_mut())
    {
        map.headers.push(raw("authorization", &bearer(&token)));
    }
    let r = check(&svc, req).await;
    let (status, _, body) = denied(&r);
    assert_eq!((status, grpc_code(&r)), (400, Code::InvalidArgument));
    assert_eq!(body["error_description"], "repeated_token_header");
}

/// One row of the deny table: the token header, the route, the statuses, the challenge
/// and the body's `error_description`.
type Row<'a> = (
    Option<String>,
    &'a [(&'a str, &'a str)],
    (i32, Code),
    Option<&'a str>,
    &'a str,
);

/// Every denied answer: no-store, JSON, the body's fields, the status and challenge.
fn expect_denied(r: &CheckResponse, http: i32, code: Code, challenge: Option<&str>, desc: &str) {
    let (status, headers, body) = denied(r);
    assert_eq!((status, grpc_code(r)), (http, code), "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers.get("www-authenticate").map(String::as_str),
        challenge
    );
    assert_eq!(body["error_description"], desc, "{body}");
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn the_deny_table() {
    let svc = service();
    let n = now();
    let expired = hs256(&json!({"iss": ISS, "aud": "api", "exp": n - 3600}));
    let valid = hs256(&good_claims());
    // RS256 header, junk signature: the key lookup fails first, as the keys never came.
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let no_keys = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "kid": "k"})),
        b64(&json!({"iss": "https://nokeys.example", "aud": "api", "exp": n + 60}))
    );
    let long = "a".repeat(4097);
    let bare = Some(r#"Bearer realm="introspectd""#);
    let bad_request = Some(r#"Bearer realm="introspectd", error="invalid_request""#);
    let unauthenticated = (401, Code::Unauthenticated);
    let rows: [Row; 10] = [
        (None, &[], unauthenticated, bare, "missing_token"),
        (
            Some(bearer(&expired)),
            &[],
            unauthenticated,
            Some(
                r#"Bearer realm="introspectd", error="invalid_token", error_description="expired""#,
            ),
            "expired",
        ),
        (
            Some(bearer(&valid)),
            &[("required_scopes", "read admin")],
            (403, Code::PermissionDenied),
            Some(r#"Bearer realm="introspectd", error="insufficient_scope", scope="read admin""#),
            "insufficient_scope",
        ),
        (
            Some("Basic dTpw".into()),
            &[],
            (400, Code::InvalidArgument),
            bad_request,
            "unsupported_scheme",
        ),
        (
            Some("Bearer ".into()),
            &[],
            (400, Code::InvalidArgument),
            bad_request,
            "empty_token",
        ),
        (
            Some(bearer(&long)),
            &[],
            (400, Code::InvalidArgument),
            bad_request,
            "token_too_large",
        ),
        (
            Some(format!("{},{}", bearer(&valid), bearer(&valid))),
            &[],
            (400, Code::InvalidArgument),
            bad_request,
            "malformed_token_header",
        ),
        (
            Some(bearer(&no_keys)),
            &[],
            (503, Code::Unavailable),
            None,
            "keys_unavailable",
        ),
        (
            Some(bearer(&valid)),
            &[("tenant", "nope")],
            (500, Code::Internal),
            None,
            "configuration_error",
        ),
        (
            Some(bearer("opaque-token-123")),
            &[],
            unauthenticated,
            Some(
                r#"Bearer realm="introspectd", error="invalid_token", error_description="malformed""#,
            ),
            "malformed",
        ),
    ];
    for (header, ext, (http, code), challenge, desc) in rows {
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|v| ("authorization", v.as_str()))
            .collect();
        let r = check(&svc, check_request(&headers, ext)).await;
        expect_denied(&r, http, code, challenge, desc);
        if let Some(HttpResponse::DeniedResponse(d)) = &r.http_response {
            assert!(
                !d.body.contains(&valid) && !d.body.contains(&expired),
                "never the token"
            );
        }
    }
}

#[tokio::test]
async fn routes_choose_tenant_audiences_and_scopes() {
    let svc = service();
    let n = now();
    let other_aud = hs256(
        &json!({"iss": ISS, "aud": "orders", "sub": "u", "exp": n + 60, "scope": "orders:read"}),
    );
    let header = bearer(&other_aud);
    let r = check(&svc, check_request(&[("authorization", &header)], &[])).await;
    expect_denied(
        &r,
        401,
        Code::Unauthenticated,
        Some(
            r#"Bearer realm="introspectd", error="invalid_token", error_description="invalid_audience""#,
        ),
        "invalid_audience",
    );
    let route = [
        ("tenant", "fp"),
        ("audiences", "billing, orders"),
        ("required_scopes", "orders:read"),
    ];
    let r = check(&svc, check_request(&[("authorization", &header)], &route)).await;
    assert_eq!(grpc_code(&r), Code::Ok);
    let r = check(
        &svc,
        check_request(&[("authorization", &header)], &[("tenant", "nokeys")]),
    )
    .await;
    expect_denied(
        &r,
        401,
        Code::Unauthenticated,
        Some(
            r#"Bearer realm="introspectd", error="invalid_token", error_description="unknown_issuer""#,
        ),
        "unknown_issuer",
    );
}

#[tokio::test]
async fn anonymous_routes() {
    let svc = service();
    let anon = [("allow_anonymous", "true")];
    let r = check(&svc, check_request(&[("x-auth-subject", "spoofed")], &anon)).await;
    assert_eq!(grpc_code(&r), Code::Ok);
    let o = ok(&r);
    assert!(o.headers.is_empty(), "no identity on anonymous requests");
    let mut removed = o.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "x-auth-claims",
            "x-auth-client-id",
            "x-auth-scope",
            "x-auth-subject",
            "x-auth-tenant"
        ]
    );
    let expired = hs256(&json!({"iss": ISS, "aud": "api", "exp": now() - 3600}));
    let r = check(
        &svc,
        check_request(&[("authorization", &bearer(&expired))], &anon),
    )
    .await;
    assert_eq!(
        grpc_code(&r),
        Code::Unauthenticated,
        "an invalid token is still denied"
    );
    let r = check(
        &svc,
        check_request(&[("authorization", "Basic dTpw")], &anon),
    )
    .await;
    assert_eq!(grpc_code(&r), Code::InvalidArgument);
    let r = check(&svc, check_request(&[], &[("allow_anonymous", "maybe")])).await;
    assert_eq!(grpc_code(&r), Code::Internal, "a bad route never allows");
}

#[tokio::test]
async fn a_request_without_http_attributes_has_no_token() {
    let r = check(&service(), CheckRequest::default()).await;
    expect_denied(
        &r,
        401,
        Code::Unauthenticated,
        Some(r#"Bearer realm="introspectd""#),
        "missing_token",
    );
}

#[tokio::test]
async fn checks_are_counted_by_tenant_and_decision() {
    let registry = registry();
    let methods = GrpcMethods::default();
    let metrics = Arc::new(Metrics::new(&registry, &methods));
    let svc = ExtAuthzService::new(
        registry.clone(),
        Introspection::local_only(registry),
        ExtAuthzSettings::default(),
        4096,
    )
    .with_metrics(metrics.clone());
    let before = metrics.encode();
    assert!(
        before.contains(
            r#"introspectd_ext_authz_checks_total{tenant="nokeys",decision="misconfigured"} 0"#
        ),
        "{before}"
    );
    let token = hs256(&good_claims());
    check(
        &svc,
        check_request(&[("authorization", &bearer(&token))], &[]),
    )
    .await;
    check(&svc, check_request(&[], &[])).await;
    let text = metrics.encode();
    assert!(
        text.contains(r#"introspectd_ext_authz_checks_total{tenant="fp",decision="allowed"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"introspectd_ext_authz_checks_total{tenant="none",decision="unauthenticated"} 1"#
    ));
    assert!(text.contains(r#"introspectd_validations_total{tenant="fp",result="valid"} 1"#));
}

#[tokio::test]
async fn a_revoked_token_is_denied_as_validate_refuses_it() {
    let registry = registry();
    let svc = ExtAuthzService::new(
        registry.clone(),
        Introspection::local_only(registry.clone()),
        ExtAuthzSettings::default(),
        4096,
    );
    let token = hs256(&good_claims());
    let req = || check_request(&[("authorization", &bearer(&token))], &[]);
    assert_eq!(grpc_code(&check(&svc, req()).await), Code::Ok);
    let done = registry
        .revoke(&crate::registry::RevokeInput {
            target: crate::registry::RevokeTarget::Token(token.clone()),
            expires_at: None,
        })
        .await
        .expect("revoke");
    assert!(!done.fleet_wide, "no shared_state: this replica only");
    expect_denied(
        &check(&svc, req()).await,
        401,
        Code::Unauthenticated,
        Some(r#"Bearer realm="introspectd", error="invalid_token", error_description="revoked""#),
        "revoked",
    );
}

#[test]
fn state_unavailable_is_the_servers_fault_like_keys_unavailable() {
    for code in [ErrorCode::KeysUnavailable, ErrorCode::StateUnavailable] {
        let d = Denial::Rejected(code);
        assert_eq!(d.statuses(), (503, Code::Unavailable), "{code}");
        assert_eq!(d.decision(), Decision::Unavailable);
        assert_eq!(d.body_fields(), ("temporarily_unavailable", code.as_str()));
        assert_eq!(
            d.challenge(&[], None),
            None,
            "nothing for the client to fix"
        );
    }
    let revoked = Denial::Rejected(ErrorCode::Revoked);
    assert_eq!(revoked.statuses(), (401, Code::Unauthenticated));
    assert_eq!(revoked.body_fields(), ("invalid_token", "revoked"));
}
