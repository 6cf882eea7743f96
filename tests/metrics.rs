//! Metrics end to end: real calls against the real server, then the exposition scraped
//! over HTTP from `server.metrics_listen`.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use axum::http::Method;
use common::*;
use introspectd::grpc::pb;
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

const SERVING: i32 = 1;

async fn scrape(h: &Harness) -> String {
    let addr = h.server.metrics_addr.expect("metrics enabled");
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    resp.text().await.expect("body")
}

use common::{metric as must, metric_sample as sample};

fn method(kind: &str, service: &str, m: &str) -> String {
    format!(r#"grpc_type="{kind}",grpc_service="{service}",grpc_method="{m}""#)
}

fn handled(labels: &str, code: &str) -> String {
    format!(r#"grpc_server_handled_total{{{labels},grpc_code="{code}"}}"#)
}

async fn setup() -> (FakeIdp, FakeIdp, TestKey, Harness) {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let broken = FakeIdp::start().await;
    broken.set(
        Method::GET,
        "/.well-known/openid-configuration",
        Behaviour::Status(500),
    );
    let yaml = format!(
        "{}  - id: broken\n    issuer: \"{}\"\n    audiences: [\"api://broken\"]\n    require_https: false\n",
        oidc_tenant(&idp, ""),
        broken.issuer()
    );
    let mut s = settings(&yaml);
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let h = start(s).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    (idp, broken, key, h)
}

#[tokio::test]
async fn calls_validations_and_key_fetches_are_counted() {
    let (idp, _broken, key, mut h) = setup().await;
    let iss = idp.issuer();

    let ok = h
        .validate_token(&key.token(&claims(&iss, "api://demo")))
        .await;
    assert!(ok.valid, "{:?}", ok.error);
    let mut c = claims(&iss, "api://demo");
    c["exp"] = json!(now() - 3600);
    let expired = h.validate_token(&key.token(&c)).await;
    assert_eq!(code(&expired), pb::ErrorCode::Expired);
    let garbage = h.validate_token("not-a-token").await;
    assert_eq!(code(&garbage), pb::ErrorCode::Malformed);
    let err = h
        .client
        .validate(pb::ValidateRequest::default())
        .await
        .expect_err("empty token is INVALID_ARGUMENT");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = h
        .client
        .validate(pb::ValidateRequest {
            token: key.token(&claims(&iss, "api://demo")),
            tenant: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown tenant is INVALID_ARGUMENT");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let text = scrape(&h).await;
    let validate = method("unary", "introspect.v1.TokenService", "Validate");
    assert_eq!(
        must(&text, &format!("grpc_server_started_total{{{validate}}}")),
        5.0
    );
    assert_eq!(must(&text, &handled(&validate, "OK")), 3.0);
    assert_eq!(must(&text, &handled(&validate, "InvalidArgument")), 2.0);
    assert_eq!(must(&text, &handled(&validate, "Unavailable")), 0.0);
    assert_eq!(
        must(
            &text,
            &format!("grpc_server_handling_seconds_count{{{validate}}}")
        ),
        5.0
    );

    assert_eq!(
        must(
            &text,
            r#"introspectd_validations_total{tenant="demo",result="valid"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_validations_total{tenant="demo",result="expired"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_validations_total{tenant="none",result="malformed"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_validations_total{tenant="broken",result="valid"}"#
        ),
        0.0
    );

    assert_eq!(
        must(
            &text,
            r#"introspectd_key_fetches_total{tenant="demo",policy="",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_key_fetches_total{tenant="demo",policy="",outcome="failure"}"#
        ),
        0.0
    );
    assert!(
        must(
            &text,
            r#"introspectd_key_fetches_total{tenant="broken",policy="",outcome="failure"}"#
        ) >= 1.0
    );
    assert_eq!(
        must(&text, r#"introspectd_keys{tenant="demo",policy=""}"#),
        1.0
    );
    assert_eq!(
        must(&text, r#"introspectd_keys{tenant="broken",policy=""}"#),
        0.0
    );
    let age = must(
        &text,
        r#"introspectd_key_set_last_success_age_seconds{tenant="demo",policy=""}"#,
    );
    assert!((0.0..600.0).contains(&age), "{age}");
    assert!(
        sample(
            &text,
            r#"introspectd_key_set_last_success_age_seconds{tenant="broken",policy=""}"#
        )
        .is_none()
    );
    assert_eq!(must(&text, "introspectd_watchers"), 0.0);
    assert!(must(&text, "introspectd_grpc_connections") >= 1.0);
    assert!(text.trim_end().ends_with("# EOF"));

    // A new key under a new kid: the kid miss fetches again, and the gauge follows.
    let k2 = TestKey::rsa("k2", "RS256");
    idp.publish("/jwks", &[&key, &k2]);
    let r = h
        .validate_token(&k2.token(&claims(&iss, "api://demo")))
        .await;
    assert!(r.valid, "{:?}", r.error);
    let text = scrape(&h).await;
    assert_eq!(
        must(
            &text,
            r#"introspectd_key_fetches_total{tenant="demo",policy="",outcome="success"}"#
        ),
        2.0
    );
    assert_eq!(
        must(&text, r#"introspectd_keys{tenant="demo",policy=""}"#),
        2.0
    );

    let addr = h.server.metrics_addr.expect("metrics");
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    h.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn streams_are_counted_by_how_they_end() {
    let (_idp, _broken, _key, h) = setup().await;
    let mut health = HealthClient::new(h.channel.clone());
    let watch = method("server_stream", "grpc.health.v1.Health", "Watch");

    // Trailers-only failure of a streaming method.
    let err = health
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A stream the client abandons has not succeeded, and its time runs until then.
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("some");
    assert_eq!(first.status, SERVING);
    let held = Duration::from_millis(300);
    tokio::time::sleep(held).await;
    drop(stream);

    // A bidirectional stream that ends normally: OK from its trailers.
    let mut reflection = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let mut n = 0;
    while answers
        .message()
        .await
        .expect("reflection stream ends OK")
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, 1);

    // A path that is not ours: counted under "unknown", never under its own name.
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<pb::ValidateRequest, pb::ValidateResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/attacker.Chosen/Name");
    let err = grpc
        .unary(
            tonic::Request::new(pb::ValidateRequest::default()),
            path,
            codec,
        )
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let mut text = scrape(&h).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut settled = false;
    while !settled && tokio::time::Instant::now() < deadline {
        text = scrape(&h).await;
        settled = sample(&text, &handled(&watch, "Canceled")) == Some(1.0);
        if !settled {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(settled, "the abandoned stream was never counted:\n{text}");
    assert_eq!(must(&text, &handled(&watch, "OK")), 0.0);
    assert_eq!(must(&text, &handled(&watch, "NotFound")), 1.0);
    assert_eq!(
        must(&text, &format!("grpc_server_started_total{{{watch}}}")),
        2.0
    );
    let sum = must(
        &text,
        &format!("grpc_server_handling_seconds_sum{{{watch}}}"),
    );
    assert!(
        sum >= held.as_secs_f64(),
        "the stream's time runs to its end: {sum}"
    );

    let refl = method(
        "bidi_stream",
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    );
    assert_eq!(must(&text, &handled(&refl, "OK")), 1.0);

    let unknown = method("unary", "unknown", "unknown");
    assert_eq!(must(&text, &handled(&unknown, "Unimplemented")), 1.0);
    assert!(!text.contains("attacker") && !text.contains("Chosen"));
}

#[tokio::test]
async fn introspection_cache_hits_and_misses_are_reported_per_tenant() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    idp.set(
        Method::POST,
        "/introspect",
        Behaviour::Json(json!({"active": true, "sub": "u1", "exp": now() + 3600})),
    );
    let yaml = format!(
        "tenants:\n  - id: opaque\n    issuer: \"{}\"\n    require_https: false\n    introspection:\n      endpoint: \"{}\"\n      client_id: c\n      client_secret_env: SECRET\n",
        idp.issuer(),
        idp.url("/introspect")
    );
    let mut s = settings_with_env(&yaml, &[("SECRET", "s3cret")]);
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let h = start(s).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    for _ in 0..2 {
        let r = h
            .client
            .clone()
            .introspect(pb::IntrospectRequest {
                token: "opaque-token-1".into(),
                ..Default::default()
            })
            .await
            .expect("Introspect")
            .into_inner();
        assert!(r.active);
    }
    assert_eq!(
        idp.count("/introspect"),
        1,
        "the second answer came from the cache"
    );
    let text = scrape(&h).await;
    assert_eq!(
        must(
            &text,
            r#"introspectd_introspection_cache_requests_total{tenant="opaque",result="miss"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_introspection_cache_requests_total{tenant="opaque",result="hit"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_introspection_cache_entries{tenant="opaque"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"introspectd_introspection_cache_evictions_total{tenant="opaque"}"#
        ),
        0.0
    );
    assert!(!text.contains("opaque-token-1"));
}

#[tokio::test]
async fn watchers_gauge_follows_open_watchkeys_streams() {
    let (_idp, _broken, _key, h) = setup().await;
    assert_eq!(must(&scrape(&h).await, "introspectd_watchers"), 0.0);
    let mut c = h.client.clone();
    let mut stream = c
        .watch_keys(pb::WatchKeysRequest::default())
        .await
        .expect("WatchKeys")
        .into_inner();
    // Read up to SYNCED so the stream is surely registered.
    loop {
        let e = stream.message().await.expect("event").expect("open");
        if e.r#type == pb::KeyEventType::Synced as i32 {
            break;
        }
    }
    assert_eq!(must(&scrape(&h).await, "introspectd_watchers"), 1.0);
    drop(stream);
    let mut zero = false;
    for _ in 0..100 {
        if sample(&scrape(&h).await, "introspectd_watchers") == Some(0.0) {
            zero = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(zero, "a closed stream still counted as a watcher");
}

#[tokio::test]
async fn shutdown_closes_the_side_listeners_before_it_returns() {
    let mut s = settings("tenants: []\n");
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.server.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = introspectd::app::spawn(s).await.expect("starts");
    let metrics = server.metrics_addr.expect("metrics listener bound");
    let health = server.health_addr.expect("health listener bound");
    let up = reqwest::get(format!("http://{metrics}/healthz"))
        .await
        .expect("metrics listener answers");
    assert_eq!(up.status(), 200);
    tokio::net::TcpStream::connect(health)
        .await
        .expect("health listener accepts");
    server.shutdown().await.expect("clean shutdown");
    // Both are tracked tasks drained by the shutdown sequence, not left running.
    assert!(tokio::net::TcpStream::connect(metrics).await.is_err());
    assert!(tokio::net::TcpStream::connect(health).await.is_err());
}
