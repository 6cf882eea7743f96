//! Envoy's Authorization service over real gRPC: the server on port 0, a fake identity
//! provider over real HTTP (JWKS, RFC 7662 introspection), the generated Envoy client.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;

use axum::http::Method;
use common::*;
use introspectd::{
    config,
    grpc::ext_authz::{
        SERVICE_NAME,
        pb::envoy::service::auth::v3::{
            CheckRequest, CheckResponse, authorization_client::AuthorizationClient,
            check_response::HttpResponse,
        },
        request::http_check_request,
    },
};
use serde_json::json;
use tonic::Code;

/// A request with a spoofed identity header and, when given, an Authorization header.
fn check_request(authorization: Option<&str>, ext: &[(&str, &str)]) -> CheckRequest {
    let mut headers = vec![("x-auth-subject", "spoofed")];
    headers.extend(authorization.map(|a| ("authorization", a)));
    http_check_request(&headers, ext)
}

async fn check(h: &Harness, req: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    AuthorizationClient::new(h.channel.clone())
        .check(req)
        .await
        .map(|r| r.into_inner())
}

fn code(r: &CheckResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(-1, |s| s.code))
}

fn http_status(r: &CheckResponse) -> i32 {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        Some(HttpResponse::OkResponse(_)) => 200,
        _ => 0,
    }
}

fn upstream_header(r: &CheckResponse, name: &str) -> Option<String> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(o)) => o
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn check_over_grpc_is_listed_in_health_and_counts_in_metrics() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let mut s = settings(&oidc_tenant(&idp, ""));
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let h = start(s).await;
    h.wait_health(SERVICE_NAME, 1).await;

    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    let r = check(&h, check_request(Some(&format!("Bearer {token}")), &[]))
        .await
        .expect("Check");
    assert_eq!(code(&r), Code::Ok);
    assert_eq!(
        upstream_header(&r, "x-auth-subject").as_deref(),
        Some("user-1")
    );
    assert_eq!(
        upstream_header(&r, "x-auth-tenant").as_deref(),
        Some("demo")
    );

    let r = check(&h, check_request(None, &[])).await.expect("Check");
    assert_eq!((code(&r), http_status(&r)), (Code::Unauthenticated, 401));

    let addr = h.server.metrics_addr.expect("metrics");
    let text = scrape_metrics(addr).await;
    assert_eq!(
        metric(
            &text,
            r#"introspectd_ext_authz_checks_total{tenant="demo",decision="allowed"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_code="OK"}"#
        ),
        2.0,
        "a denial is an answer, not an RPC error"
    );
}

#[tokio::test]
async fn disabled_means_not_served() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let h = start(settings(&oidc_tenant(
        &idp,
        "ext_authz:\n  enabled: false\n",
    )))
    .await;
    let err = check(&h, check_request(None, &[])).await.expect_err("off");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn configuration_and_environment_overrides() {
    let yaml = "tenants:\n  - id: demo\n    issuer: https://demo.example\n    audiences: [api]\next_authz:\n  tenant: demo\n  headers: {sub: x-user}\n";
    let overrides = vec![
        (
            "INTROSPECTD_EXT_AUTHZ__STRIP_TOKEN".to_string(),
            "true".to_string(),
        ),
        (
            "INTROSPECTD_EXT_AUTHZ__CLAIMS_HEADER".to_string(),
            String::new(),
        ),
    ];
    let s = config::load_str(yaml, &|_| None, &overrides).expect("config");
    assert!(s.ext_authz.strip_token);
    assert_eq!(s.ext_authz.tenant.as_deref(), Some("demo"));
    assert_eq!(s.ext_authz.claims_header, None);
    assert_eq!(s.ext_authz.headers.len(), 1);
    let bad = config::load_str("tenants: []\next_authz:\n  tenant: ghost\n", &|_| None, &[])
        .expect_err("unknown tenant");
    assert_eq!(bad.key, "ext_authz.tenant");
}

/// An introspection endpoint answering `active-*` tokens as active with scope `read`.
fn serve_introspection(idp: &FakeIdp) {
    idp.set(
        Method::POST,
        "/introspect",
        Behaviour::Dynamic(Arc::new(|seen: &Seen| {
            let body = String::from_utf8_lossy(&seen.body).to_string();
            let answer = if body.contains("token=active") {
                json!({"active": true, "sub": "opaque-user", "client_id": "svc", "scope": "read",
                       "aud": ["api://demo"], "exp": now() + 600, "iss": "as"})
            } else {
                json!({"active": false})
            };
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                answer.to_string().into_bytes(),
            )
        })),
    );
}

#[tokio::test]
async fn opaque_tokens_go_through_introspect() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    serve_introspection(&idp);
    let extra = format!(
        "    introspection:\n      endpoint: \"{}\"\n      client_id: c\n      client_secret_env: S\n      auth: client_secret_post\n",
        idp.url("/introspect")
    );
    let h = start(settings_with_env(
        &oidc_tenant(&idp, &extra),
        &[("S", "secret")],
    ))
    .await;

    let r = check(&h, check_request(Some("Bearer active-1"), &[]))
        .await
        .expect("Check");
    assert_eq!(code(&r), Code::Ok, "{r:?}");
    assert_eq!(
        upstream_header(&r, "x-auth-subject").as_deref(),
        Some("opaque-user")
    );
    assert_eq!(
        upstream_header(&r, "x-auth-client-id").as_deref(),
        Some("svc")
    );
    assert_eq!(
        upstream_header(&r, "x-auth-tenant").as_deref(),
        Some("demo")
    );

    let r = check(&h, check_request(Some("Bearer gone-2"), &[]))
        .await
        .expect("Check");
    assert_eq!((code(&r), http_status(&r)), (Code::Unauthenticated, 401));

    let r = check(
        &h,
        check_request(Some("Bearer active-3"), &[("required_scopes", "write")]),
    )
    .await
    .expect("Check");
    assert_eq!((code(&r), http_status(&r)), (Code::PermissionDenied, 403));
    let r = check(
        &h,
        check_request(Some("Bearer active-4"), &[("audiences", "api://other")]),
    )
    .await
    .expect("Check");
    assert_eq!((code(&r), http_status(&r)), (Code::Unauthenticated, 401));

    idp.set(Method::POST, "/introspect", Behaviour::Status(503));
    let r = check(&h, check_request(Some("Bearer active-5"), &[]))
        .await
        .expect("Check");
    assert_eq!(
        (code(&r), http_status(&r)),
        (Code::Unavailable, 503),
        "never a 401"
    );
}
