//! Finding 5: the introspection upstream could be amplified. With no usable client token
//! every Introspect call started a token request, and a persistent 401 cost one
//! client-credentials grant per call.

use std::time::Duration;

use axum::http::Method;
use introspectd::grpc::pb;
use serde_json::json;
use tonic::Code;

use crate::{common::*, victim_validates};

async fn setup() -> (FakeIdp, TestKey, Harness) {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let yaml = format!(
        "tenants:\n  - id: demo\n    issuer: \"{}\"\n    audiences: [\"api://demo\"]\n    require_https: false\n    introspection:\n      client_id: introspectd\n      client_secret_env: SECRET\n      auth: bearer\n",
        idp.issuer()
    );
    let h = start(settings_with_env(&yaml, &[("SECRET", "s3cret")])).await;
    h.wait_health(crate::TOKEN_SERVICE, crate::SERVING).await;
    (idp, key, h)
}

async fn introspect(h: &Harness, token: String) -> Result<pb::IntrospectResponse, tonic::Status> {
    h.client
        .clone()
        .introspect(pb::IntrospectRequest {
            token,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn random_opaque() -> String {
    format!("opaque-{:016x}", fastrand::u64(..))
}

fn token_endpoint_answers(idp: &FakeIdp, status: u16, headers: Vec<(String, String)>) {
    idp.set(
        Method::POST,
        "/token",
        Behaviour::Dynamic(std::sync::Arc::new(move |_| {
            (
                status,
                headers.clone(),
                br#"{"error":"temporarily_unavailable"}"#.to_vec(),
            )
        })),
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_not_asked_once_per_call() {
    let (idp, key, h) = setup().await;
    token_endpoint_answers(&idp, 503, vec![]);
    for _ in 0..30 {
        let err = introspect(&h, random_opaque())
            .await
            .expect_err("no client token");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    let asked = idp.count("/token");
    assert!(
        asked <= 2,
        "30 calls asked the failing token endpoint {asked} times"
    );
    assert_eq!(idp.count("/introspect"), 0);
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn retry_after_from_the_token_endpoint_is_honoured() {
    let (idp, _key, h) = setup().await;
    token_endpoint_answers(
        &idp,
        503,
        vec![("retry-after".to_string(), "3".to_string())],
    );
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2200) {
        let err = introspect(&h, random_opaque())
            .await
            .expect_err("backing off");
        assert_eq!(err.code(), Code::Unavailable);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        idp.count("/token"),
        1,
        "no second request before Retry-After"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _ = introspect(&h, random_opaque()).await;
    assert_eq!(
        idp.count("/token"),
        2,
        "asked again once Retry-After passed"
    );
}

#[tokio::test]
async fn a_persistent_401_costs_one_grant_per_cooldown_not_one_per_call() {
    let (idp, key, h) = setup().await;
    idp.set(
        Method::POST,
        "/token",
        Behaviour::Json(json!({"access_token": "cc", "token_type": "Bearer", "expires_in": 3600})),
    );
    idp.set(Method::POST, "/introspect", Behaviour::Status(401));
    for _ in 0..30 {
        let err = introspect(&h, random_opaque()).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    let grants = idp.count("/token");
    assert!(
        grants <= 2,
        "30 calls cost {grants} client-credentials grants"
    );
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}
