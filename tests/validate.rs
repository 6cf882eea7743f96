//! Validate end to end: the real server on port 0, a fake OpenID Connect provider over
//! real HTTP with request counters and programmable faults.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use axum::http::Method;
use common::*;
use introspectd::grpc::pb::{self, ErrorCode as E};
use serde_json::json;

const DISCOVERY: &str = "/.well-known/openid-configuration";
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

async fn setup(extra: &str) -> (FakeIdp, TestKey, Harness) {
    start_oidc(extra, |_| {}).await
}

#[tokio::test]
async fn valid_token_returns_claims_and_normalised_fields() {
    let (idp, key, mut h) = setup("").await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["scp"] = json!("read write");
    c["custom"] = json!({"nested": [1, 2]});
    let r = h.validate_token(&format!("Bearer {}", key.token(&c))).await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(r.tenant, "demo");
    assert_eq!(r.issuer, idp.issuer());
    assert_eq!(r.subject, "user-1");
    assert_eq!(r.audiences, vec!["api://demo"]);
    assert_eq!(r.scopes, vec!["read", "write"]);
    assert_eq!(r.key_id, "k1");
    assert_eq!(r.algorithm, "RS256");
    assert_eq!(r.expires_at.as_ref().map(|t| t.seconds), c["exp"].as_i64());
    let claims = r.claims.expect("claims");
    assert!(claims.fields.contains_key("custom"));
    assert!(r.error.is_none());
}

#[tokio::test]
async fn ec_and_pss_tokens_validate() {
    let idp = FakeIdp::start().await;
    let rsa = TestKey::rsa("r", "PS256");
    let ec = TestKey::ec("e");
    idp.serve_oidc(&[&rsa, &ec]);
    let mut h = start(settings(&oidc_tenant(&idp, ""))).await;
    for k in [&rsa, &ec] {
        let r = h
            .validate_token(&k.token(&claims(&idp.issuer(), "api://demo")))
            .await;
        assert!(r.valid, "{}: {:?}", k.alg, r.error);
    }
}

#[tokio::test]
async fn every_cheap_rejection_has_its_code_and_causes_no_traffic() {
    let (idp, key, mut h) =
        setup("    types: [JWT, at+jwt]\n    max_lifetime: 2h\n    required_claims: [exp, sub]\n")
            .await;
    let iss = idp.issuer();
    let base = claims(&iss, "api://demo");
    let n = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let before = idp.total();
    let cases: Vec<(&str, String, E)> = vec![
        ("garbage", "not.a.jwt".into(), E::Malformed),
        ("two segments", "abc.def".into(), E::Malformed),
        (
            "iss not a string",
            key.token(&with(&|c| c["iss"] = json!(5))),
            E::Malformed,
        ),
        (
            "aud a number",
            key.token(&with(&|c| c["aud"] = json!(5))),
            E::Malformed,
        ),
        (
            "exp a string",
            key.token(&with(&|c| c["exp"] = json!("soon"))),
            E::Malformed,
        ),
        (
            "no iss",
            key.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
            E::MissingClaim,
        ),
        (
            "unknown issuer",
            key.token(&with(&|c| c["iss"] = json!("https://evil.example"))),
            E::UnknownIssuer,
        ),
        (
            "trailing slash matters",
            key.token(&with(&|c| c["iss"] = json!(format!("{iss}/")))),
            E::UnknownIssuer,
        ),
        (
            "alg none",
            key.token_with(json!({"alg": "none"}), &base),
            E::AlgorithmNotAllowed,
        ),
        (
            "alg HS256 not allowed",
            key.token_with(json!({"alg": "HS256"}), &base),
            E::AlgorithmNotAllowed,
        ),
        (
            "crit header",
            key.token_with(json!({"crit": ["exp"]}), &base),
            E::Malformed,
        ),
        (
            "zip header",
            key.token_with(json!({"zip": "DEF"}), &base),
            E::Malformed,
        ),
        (
            "wrong typ",
            key.token_with(json!({"typ": "id+jwt"}), &base),
            E::InvalidType,
        ),
        (
            "expired",
            key.token(&with(&|c| c["exp"] = json!(n - 120))),
            E::Expired,
        ),
        (
            "nbf future",
            key.token(&with(&|c| c["nbf"] = json!(n + 600))),
            E::NotYetValid,
        ),
        (
            "iat future",
            key.token(&with(&|c| c["iat"] = json!(n + 600))),
            E::NotYetValid,
        ),
        (
            "no exp",
            key.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            E::MissingClaim,
        ),
        (
            "no sub",
            key.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            E::MissingClaim,
        ),
        (
            "too long",
            key.token(&with(&|c| c["exp"] = json!(n + 3 * 3600))),
            E::LifetimeTooLong,
        ),
        (
            "wrong audience",
            key.token(&with(&|c| c["aud"] = json!("api://other"))),
            E::InvalidAudience,
        ),
        (
            "no audience",
            key.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            E::InvalidAudience,
        ),
        (
            "two audiences, none accepted",
            key.token(&with(&|c| c["aud"] = json!(["x", "y"]))),
            E::InvalidAudience,
        ),
        (
            "exp past 9999",
            key.token(&with(&|c| c["exp"] = json!(1e300))),
            E::Malformed,
        ),
    ];
    for (name, token, want) in cases {
        let r = h.validate_token(&token).await;
        assert!(!r.valid, "{name}");
        assert_eq!(code(&r), want, "{name}: {:?}", r.error);
        let msg = &r.error.as_ref().expect("error").message;
        assert!(!msg.contains(&token), "{name}: message echoes the token");
        assert!(r.claims.is_none(), "{name}: no claims on rejection");
    }
    let scopes = h
        .validate(pb::ValidateRequest {
            token: key.token(&base),
            required_scopes: vec!["admin".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(code(&scopes), E::InsufficientScope);
    assert_eq!(
        idp.total(),
        before,
        "cheap rejections made network requests"
    );
}

#[tokio::test]
async fn request_audiences_override_the_tenant_and_none_at_all_rejects() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let yaml = format!(
        "tenants:\n  - id: demo\n    issuer: \"{}\"\n    require_https: false\n",
        idp.issuer()
    );
    let mut h = start(settings(&yaml)).await;
    let t = key.token(&claims(&idp.issuer(), "api://x"));
    assert_eq!(
        code(&h.validate_token(&t).await),
        E::InvalidAudience,
        "no audience configured or requested"
    );
    let ok = h
        .validate(pb::ValidateRequest {
            token: t.clone(),
            audiences: vec!["api://y".into(), "api://x".into()],
            ..Default::default()
        })
        .await;
    assert!(ok.valid, "{:?}", ok.error);
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let (idp, key, mut h) = setup("").await;
    for token in ["", "Bearer ", "   "] {
        let err = h
            .client
            .validate(pb::ValidateRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{token:?}");
    }
    let big = "a".repeat(16 * 1024 + 1);
    let err = h
        .client
        .validate(pb::ValidateRequest {
            token: big,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = h
        .client
        .validate(pb::ValidateRequest {
            token: key.token(&claims(&idp.issuer(), "api://demo")),
            tenant: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn token_of_exactly_the_limit_is_accepted_for_parsing() {
    let (_idp, _key, mut h) = setup("").await;
    let token = "a".repeat(16 * 1024);
    let r = h.validate_token(&token).await;
    assert_eq!(
        code(&r),
        E::Malformed,
        "parsed, not refused at the boundary"
    );
}

#[tokio::test]
async fn signature_and_key_binding_failures() {
    let (idp, key, mut h) = setup("").await;
    let good = key.token(&claims(&idp.issuer(), "api://demo"));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let other = TestKey::rsa("k1", "RS256");
    parts[2] = other
        .token(&claims(&idp.issuer(), "api://demo"))
        .split('.')
        .nth(2)
        .expect("sig")
        .to_string();
    assert_eq!(
        code(&h.validate_token(&parts.join(".")).await),
        E::InvalidSignature
    );
    // PS256 is allowed for the tenant, but k1 is bound to RS256.
    let ps = key.token_with(
        json!({"alg": "PS256"}),
        &claims(&idp.issuer(), "api://demo"),
    );
    assert_eq!(code(&h.validate_token(&ps).await), E::AlgorithmNotAllowed);
}

#[tokio::test]
async fn kidless_tokens_try_the_keys_of_their_algorithm() {
    let (idp, key, mut h) = setup("").await;
    let t = key.token_with(json!({"kid": null}), &claims(&idp.issuer(), "api://demo"));
    let r = h.validate_token(&t).await;
    assert!(r.valid, "{:?}", r.error);
}

#[tokio::test]
async fn rotation_new_kid_is_fetched_in_the_same_call_once() {
    let (idp, old, mut h) = setup("").await;
    let jwks_before = idp.count("/jwks");
    let discovery_before = idp.count(DISCOVERY);
    let new = TestKey::rsa("k2", "RS256");
    idp.publish("/jwks", &[&old, &new]);
    let r = h
        .validate_token(&new.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert!(
        r.valid,
        "a token signed with a freshly published key fails: {:?}",
        r.error
    );
    assert_eq!(idp.count("/jwks"), jwks_before + 1, "one JWKS fetch");
    assert_eq!(
        idp.count(DISCOVERY),
        discovery_before,
        "kid miss fetches the JWKS only"
    );
    assert!(
        h.validate_token(&old.token(&claims(&idp.issuer(), "api://demo")))
            .await
            .valid
    );

    // Another unknown kid inside the cooldown: no fetch, UNKNOWN_KEY.
    let stranger = TestKey::rsa("k3", "RS256");
    let r = h
        .validate_token(&stranger.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert_eq!(code(&r), E::UnknownKey);
    assert_eq!(idp.count("/jwks"), jwks_before + 1, "cooldown holds");
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let (idp, old, h) = setup("").await;
    let jwks_before = idp.count("/jwks");
    let new = TestKey::rsa("k2", "RS256");
    idp.publish("/jwks", &[&old, &new]);
    idp.set_delay("/jwks", Some(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut c = h.client.clone();
        let t = new.token(&claims(&idp.issuer(), "api://demo"));
        tasks.push(tokio::spawn(async move {
            c.validate(pb::ValidateRequest {
                token: t,
                ..Default::default()
            })
            .await
        }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("rpc").into_inner();
        assert!(r.valid, "{:?}", r.error);
    }
    assert_eq!(idp.count("/jwks"), jwks_before + 1, "single flight");
}

#[tokio::test]
async fn outage_keeps_last_good_keys() {
    let (idp, key, mut h) = setup("    refresh_interval: 1s\n").await;
    for path in [DISCOVERY, "/jwks"] {
        idp.set(Method::GET, path, Behaviour::Status(503));
    }
    let fetches = idp.count(DISCOVERY);
    assert!(
        eventually(Duration::from_secs(5), || idp.count(DISCOVERY)
            >= fetches + 2)
        .await,
        "refreshes go on"
    );
    let r = h
        .validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert!(
        r.valid,
        "valid token failed during an outage: {:?}",
        r.error
    );
    assert_eq!(h.health("introspect.v1.TokenService").await, SERVING);
}

#[tokio::test]
async fn malformed_oversized_and_slow_documents_keep_last_good_keys() {
    let (idp, key, mut h) = setup("    fetch_timeout: 300ms\n    unknown_kid_cooldown: 1s\n").await;
    let iss = idp.issuer();
    let bad: Vec<Behaviour> = vec![
        Behaviour::Raw(200, b"{not json".to_vec()),
        Behaviour::Raw(200, vec![b' '; 2 * 1024 * 1024]),
        Behaviour::Json(json!({"keys": "nope"})),
    ];
    let stranger = TestKey::rsa("zz", "RS256");
    for b in bad {
        idp.set(Method::GET, "/jwks", b);
        let before = idp.count("/jwks");
        // An unknown kid forces a fetch of the broken document.
        let r = h
            .validate_token(&stranger.token(&claims(&iss, "api://demo")))
            .await;
        assert_eq!(code(&r), E::UnknownKey);
        assert_eq!(idp.count("/jwks"), before + 1);
        assert!(
            h.validate_token(&key.token(&claims(&iss, "api://demo")))
                .await
                .valid
        );
        // The next kid miss may refresh once the cooldown (at least 1 s) has passed.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    idp.publish("/jwks", &[&key]);
    idp.set_delay("/jwks", Some(Duration::from_secs(2)));
    let started = std::time::Instant::now();
    let r = h
        .validate_token(&stranger.token(&claims(&iss, "api://demo")))
        .await;
    assert_eq!(code(&r), E::UnknownKey);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "caller waited past fetch_timeout"
    );
    assert!(
        h.validate_token(&key.token(&claims(&iss, "api://demo")))
            .await
            .valid
    );
}

#[tokio::test]
async fn provider_down_at_start_then_recovers_without_restart() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.set(Method::GET, DISCOVERY, Behaviour::Status(500));
    let mut h = start(settings(&oidc_tenant(
        &idp,
        "    unknown_kid_cooldown: 60s\n",
    )))
    .await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    let t = key.token(&claims(&idp.issuer(), "api://demo"));
    assert_eq!(code(&h.validate_token(&t).await), E::KeysUnavailable);
    idp.serve_oidc(&[&key]);
    // Backoff retries (1 s, 2 s, ...) pick the provider up by themselves.
    let mut ok = false;
    for _ in 0..40 {
        if h.validate_token(&t).await.valid {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "did not recover after the provider came back");
}

#[tokio::test]
async fn cold_start_many_validations_make_one_discovery_and_one_jwks_fetch() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    idp.set_delay(DISCOVERY, Some(Duration::from_millis(400)));
    let h = start(settings(&oidc_tenant(&idp, ""))).await;
    assert_eq!(
        h.health("introspect.v1.TokenService").await,
        NOT_SERVING,
        "not ready before the first fetch"
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = h.client.clone();
        let t = key.token(&claims(&idp.issuer(), "api://demo"));
        tasks.push(tokio::spawn(async move {
            c.validate(pb::ValidateRequest {
                token: t,
                ..Default::default()
            })
            .await
        }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("rpc").into_inner();
        assert!(r.valid, "{:?}", r.error);
    }
    assert_eq!(idp.count(DISCOVERY), 1);
    assert_eq!(idp.count("/jwks"), 1);
    h.wait_health("introspect.v1.TokenService", SERVING).await;
}

#[tokio::test]
async fn discovery_issuer_must_match_and_jwks_uri_must_be_https_when_required() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    idp.set_json(
        DISCOVERY,
        idp.discovery("https://someone-else.example", "/jwks"),
    );
    let mut h = start(settings(&oidc_tenant(&idp, ""))).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    assert_eq!(
        idp.count("/jwks"),
        0,
        "keys of a mismatched issuer are never fetched"
    );
    let r = h
        .validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert_eq!(code(&r), E::KeysUnavailable);
}

#[tokio::test]
async fn periodic_refresh_runs_on_schedule() {
    let (idp, _key, _h) = setup("    refresh_interval: 1s\n").await;
    let before = idp.count(DISCOVERY);
    assert!(
        eventually(Duration::from_secs(4), || idp.count(DISCOVERY)
            >= before + 2)
        .await
    );
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_finishes() {
    let (_idp, _key, h) = setup("").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "introspect.v1.TokenService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.message().await.expect("msg").expect("some").status,
        SERVING
    );
    h.server.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("in time");
    if let Ok(Some(m)) = next {
        assert_eq!(m.status, NOT_SERVING);
    }
    tokio::time::timeout(Duration::from_secs(10), h.server.join())
        .await
        .expect("stops within 10 s")
        .expect("clean");
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let (_idp, _key, h) = setup("").await;
    let mut client = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = stream.message().await.expect("msg").expect("some");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"introspect.v1.TokenService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}
