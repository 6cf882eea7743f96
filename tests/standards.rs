//! Real providers' valid tokens accepted, forged ones refused (issue 12), end to end: the
//! real server on port 0 and a fake identity provider over real HTTP. One test (or more)
//! per finding: `azp` only for ID tokens, `typ` never trimmed, JWT-shaped garbage in
//! Introspect is `active: false`, an empty RSA modulus is a skipped key (not a dead
//! refresher), time claims outside protobuf's range are MALFORMED, and a replay-detecting
//! tenant refuses tokens without `exp`.

// Tests: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use axum::http::Method;
use common::*;
use introspectd::grpc::pb::{self, ErrorCode as E};
use serde_json::{Value, json};

const SERVING: i32 = 1;
/// 9999-12-31T23:59:59Z, the last second protobuf's Timestamp can hold.
const MAX_TIMESTAMP: i64 = 253_402_300_799;
/// 0001-01-01T00:00:00Z, the first.
const MIN_TIMESTAMP: i64 = -62_135_596_800;

async fn setup(extra: &str) -> (FakeIdp, TestKey, Harness) {
    start_oidc(extra, |_| {}).await
}

fn with(base: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut c = base.clone();
    f(&mut c);
    c
}

// ---- Finding 1: the azp rule is OpenID Connect's rule for ID tokens only ----------------

#[tokio::test]
async fn multi_audience_access_tokens_need_no_azp() {
    let (idp, key, mut h) = setup("").await;
    let base = claims(&idp.issuer(), "api://demo");
    // Keycloak: azp is the client the token was issued to, not an audience.
    let keycloak = with(&base, |c| {
        c["aud"] = json!(["api://demo", "account"]);
        c["azp"] = json!("frontend-app");
    });
    let r = h.validate_token(&key.token(&keycloak)).await;
    assert!(r.valid, "Keycloak-style access token: {:?}", r.error);
    assert_eq!(r.audiences, vec!["api://demo", "account"]);
    // RFC 9068: client_id, no azp at all.
    let rfc9068 = with(&base, |c| {
        c["aud"] = json!(["api://demo", "https://other.example"]);
        c["client_id"] = json!("s6BhdRkqt3");
    });
    let r = h
        .validate_token(&key.token_with(json!({"typ": "at+jwt"}), &rfc9068))
        .await;
    assert!(r.valid, "RFC 9068 access token: {:?}", r.error);
    // One accepted audience is still required.
    let none_accepted = with(&base, |c| c["aud"] = json!(["account", "other"]));
    assert_eq!(
        code(&h.validate_token(&key.token(&none_accepted)).await),
        E::InvalidAudience
    );
}

#[tokio::test]
async fn a_request_nonce_makes_it_an_id_token_check_with_the_azp_rule() {
    let (idp, key, mut h) = setup("").await;
    let id_token = with(&claims(&idp.issuer(), "api://demo"), |c| {
        c["aud"] = json!(["api://demo", "other"]);
        c["nonce"] = json!("n-1");
    });
    let validate = |c: &Value| pb::ValidateRequest {
        token: key.token(c),
        nonce: "n-1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(&h.validate(validate(&id_token)).await),
        E::InvalidAudience,
        "several audiences and no azp"
    );
    let foreign_azp = with(&id_token, |c| c["azp"] = json!("frontend-app"));
    assert_eq!(
        code(&h.validate(validate(&foreign_azp)).await),
        E::InvalidAudience,
        "azp not an accepted audience"
    );
    let good = with(&id_token, |c| c["azp"] = json!("api://demo"));
    let r = h.validate(validate(&good)).await;
    assert!(r.valid, "{:?}", r.error);
    // The same token without a request nonce is checked as an access token.
    let r = h.validate_token(&key.token(&foreign_azp)).await;
    assert!(r.valid, "{:?}", r.error);
}

// ---- Finding 2: typ is compared without trimming ------------------------------------------

#[tokio::test]
async fn typ_with_surrounding_whitespace_is_not_the_configured_type() {
    let (idp, key, mut h) = setup("    types: [at+jwt]\n").await;
    let c = claims(&idp.issuer(), "api://demo");
    for ok in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+Jwt",
    ] {
        let r = h
            .validate_token(&key.token_with(json!({"typ": ok}), &c))
            .await;
        assert!(r.valid, "{ok:?}: {:?}", r.error);
    }
    for bad in [
        "at+jwt ",
        " at+jwt",
        "at+jwt\t",
        "application/ at+jwt",
        "at+jwt\n",
    ] {
        let r = h
            .validate_token(&key.token_with(json!({"typ": bad}), &c))
            .await;
        assert_eq!(code(&r), E::InvalidType, "{bad:?}");
    }
}

// ---- Finding 3: Introspect of JWT-shaped garbage is active: false ------------------------

async fn introspect(
    h: &Harness,
    token: &str,
    tenant: &str,
) -> Result<pb::IntrospectResponse, tonic::Status> {
    h.client
        .clone()
        .introspect(pb::IntrospectRequest {
            token: token.into(),
            tenant: tenant.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn jwt_shaped_tokens_that_do_not_parse_are_inactive() {
    let (idp, key, h) = setup("").await;
    let good = key.token(&claims(&idp.issuer(), "api://demo"));
    let (head, rest) = good.split_once('.').expect("three segments");
    let garbage = [
        "aaa.bbb.ccc".to_string(),
        "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln".to_string(),
        format!("{head}.!!!.{}", rest.split_once('.').expect("sig").1),
        "..".to_string(),
        format!("{head}.{rest}x=="),
    ];
    for token in &garbage {
        for tenant in ["", "demo"] {
            let r = introspect(&h, token, tenant)
                .await
                .unwrap_or_else(|s| panic!("{token:?} at {tenant:?}: {s}"));
            assert_eq!(
                r,
                pb::IntrospectResponse::default(),
                "{token:?}: active: false and nothing else"
            );
        }
    }
    // An opaque token the routed tenant cannot introspect is not recognised either.
    let r = introspect(&h, "2YotnFZFEjr1zCsicMWpAA", "demo")
        .await
        .expect("answered");
    assert!(!r.active);
    let r = introspect(&h, "2YotnFZFEjr1zCsicMWpAA", "")
        .await
        .expect("answered");
    assert!(!r.active);
    // Requests that are themselves bad stay INVALID_ARGUMENT.
    for (token, tenant) in [("", ""), ("aaa.bbb.ccc", "nope")] {
        let err = introspect(&h, token, tenant)
            .await
            .expect_err("bad request");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{token:?}");
    }
}

fn introspection_tenant(idp: &FakeIdp, id: &str) -> String {
    format!(
        "  - id: {id}\n    issuer: \"{iss}/{id}\"\n    metadata_url: \"{iss}/.well-known/openid-configuration\"\n    require_https: false\n    explicit: true\n    introspection:\n      endpoint: \"{iss}/introspect\"\n      client_id: c\n      client_secret_env: SECRET\n",
        iss = idp.issuer()
    )
}

#[tokio::test]
async fn jwt_shaped_garbage_is_never_sent_upstream_and_ambiguous_opaque_tokens_stay_invalid() {
    let (idp, _key) = oidc_idp().await;
    idp.set(
        Method::POST,
        "/introspect",
        Behaviour::Json(json!({"active": true, "sub": "u"})),
    );
    let yaml = format!(
        "tenants:\n{}{}",
        introspection_tenant(&idp, "a"),
        introspection_tenant(&idp, "b")
    );
    let h = start(settings_with_env(&yaml, &[("SECRET", "s")])).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    for tenant in ["", "a"] {
        let r = introspect(&h, "aaa.bbb.ccc", tenant)
            .await
            .expect("answered");
        assert!(!r.active, "{tenant:?}");
    }
    assert_eq!(
        idp.count("/introspect"),
        0,
        "garbage is not a provider's token"
    );
    let r = introspect(&h, "opaque-1", "a").await.expect("answered");
    assert!(r.active);
    assert_eq!(idp.count("/introspect"), 1);
    let err = introspect(&h, "opaque-1", "").await.expect_err("ambiguous");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_provider_answer_never_echoes_the_token() {
    let idp = FakeIdp::start().await;
    idp.serve_oidc(&[]);
    let token = "opaque-SECRET-token-0123456789";
    idp.set(
        Method::POST,
        "/introspect",
        Behaviour::Json(json!({
            "active": true, "sub": "u", "token": token, "username": token,
            "nested": {"authorization": format!("Bearer {token}"), "keep": "me"},
            "list": [token, "other"]
        })),
    );
    let h = start(settings_with_env(
        &format!("tenants:\n{}", introspection_tenant(&idp, "a")),
        &[("SECRET", "s")],
    ))
    .await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    let r = introspect(&h, token, "a").await.expect("answered");
    assert!(r.active);
    assert_eq!(r.sub, "u");
    assert_eq!(r.username, "", "a field holding the token is dropped");
    let shown = format!("{r:?}");
    assert!(!shown.contains(token), "{shown}");
    assert!(shown.contains("keep"), "other members stay: {shown}");
}

// ---- Finding 4: an empty or all-zero RSA modulus is a skipped key -------------------------

#[tokio::test]
async fn an_empty_rsa_modulus_is_skipped_and_the_other_keys_work() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("good", "RS256");
    let mut keys = vec![key.jwk.clone()];
    for (kid, n) in [("empty", ""), ("zeros", "AAAA"), ("one-zero", "AA")] {
        keys.push(json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": n, "e": "AQAB"}));
    }
    idp.set_json(
        "/.well-known/openid-configuration",
        idp.discovery(&idp.issuer(), "/jwks"),
    );
    idp.set_json("/jwks", json!({"keys": keys}));
    let mut h = start(settings(&oidc_tenant(&idp, ""))).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    let r = h
        .validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert!(r.valid, "the good key of the set is in use: {:?}", r.error);
    // The refresher is alive: a rotation is still picked up.
    let next = TestKey::rsa("next", "RS256");
    idp.publish("/jwks", &[&key, &next]);
    let t = next.token(&claims(&idp.issuer(), "api://demo"));
    let r = h.validate_token(&t).await;
    assert!(r.valid, "a kid miss refreshes: {:?}", r.error);
}

// ---- Finding 5: time claims outside protobuf's Timestamp range ---------------------------

#[tokio::test]
async fn time_claims_outside_the_protobuf_range_are_malformed() {
    let (idp, key, mut h) = setup("    required_claims: []\n").await;
    let base = claims(&idp.issuer(), "api://demo");
    for (name, value) in [
        ("exp", json!(1e300)),
        ("exp", json!(MAX_TIMESTAMP + 1)),
        ("exp", json!(9.3e18)),
        ("iat", json!(MIN_TIMESTAMP - 1)),
        ("iat", json!(-1e300)),
        ("nbf", json!(-1e19)),
        ("nbf", json!(i64::MIN)),
    ] {
        let c = with(&base, |c| c[name] = value.clone());
        let t = key.token(&c);
        let r = h.validate_token(&t).await;
        assert_eq!(code(&r), E::Malformed, "{name}: {value}");
        let i = introspect(&h, &t, "").await.expect("answered");
        assert!(!i.active, "{name}: {value}");
    }
    // The edges of the range are valid, and come back as valid Timestamps.
    let c = with(&base, |c| {
        c["exp"] = json!(MAX_TIMESTAMP);
        c["iat"] = json!(MIN_TIMESTAMP);
        c["nbf"] = json!(MIN_TIMESTAMP as f64 + 0.5);
    });
    let r = h.validate_token(&key.token(&c)).await;
    assert!(r.valid, "{:?}", r.error);
    for t in [&r.expires_at, &r.issued_at, &r.not_before] {
        let t = t.as_ref().expect("timestamp");
        assert!(
            (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&t.seconds),
            "{t:?}"
        );
        assert!((0..1_000_000_000).contains(&t.nanos), "{t:?}");
    }
    assert_eq!(
        r.expires_at.as_ref().map(|t| t.seconds),
        Some(MAX_TIMESTAMP)
    );
    assert_eq!(
        r.not_before.as_ref().map(|t| (t.seconds, t.nanos)),
        Some((MIN_TIMESTAMP, 500_000_000))
    );
}

// ---- Finding 7: replay detection refuses tokens it could not remember ---------------------

#[tokio::test]
async fn a_replay_detecting_tenant_refuses_tokens_without_exp() {
    let (idp, key, mut h) = setup("    replay_detection: true\n    required_claims: []\n").await;
    let no_exp = with(&claims(&idp.issuer(), "api://demo"), |c| {
        c.as_object_mut().expect("obj").remove("exp");
    });
    let r = h.validate_token(&key.token(&no_exp)).await;
    assert_eq!(code(&r), E::MissingClaim, "{:?}", r.error);
    let msg = r.error.expect("error").message;
    assert!(msg.contains("exp"), "{msg}");
    // With exp it is remembered, and a second use is a replay.
    let t = key.token(&claims(&idp.issuer(), "api://demo"));
    assert!(h.validate_token(&t).await.valid);
    assert_eq!(code(&h.validate_token(&t).await), E::Replayed);
}

/// `replay_cache_entries` is the capacity: once it holds that many live entries, new
/// tokens are refused (REPLAYED, they could not be remembered), and `/metrics` shows the
/// size, the capacity and the refusals.
#[tokio::test]
async fn replay_cache_entries_bounds_the_cache_and_its_refusals_are_metrics() {
    let (idp, key, mut h) = start_oidc(
        "    replay_detection: true\n    replay_cache_entries: 2\n",
        |s| s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr")),
    )
    .await;
    for _ in 0..2 {
        let t = key.token(&claims(&idp.issuer(), "api://demo"));
        assert!(h.validate_token(&t).await.valid);
    }
    let third = key.token(&claims(&idp.issuer(), "api://demo"));
    let r = h.validate_token(&third).await;
    assert_eq!(code(&r), E::Replayed, "{:?}", r.error);
    assert!(r.error.expect("error").message.contains("full"));
    let text = scrape_metrics(h.server.metrics_addr.expect("metrics")).await;
    assert_eq!(
        metric(&text, r#"introspectd_replay_cache_entries{tenant="demo"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"introspectd_replay_cache_capacity{tenant="demo"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            r#"introspectd_replay_cache_refusals_total{tenant="demo"}"#
        ),
        1.0
    );
}

// ---- Finding 1, configured: `token_kind: id_token` ----------------------------------------

#[tokio::test]
async fn token_kind_id_token_applies_the_azp_rule_without_a_nonce() {
    let (idp, key, mut h) = setup("    token_kind: id_token\n").await;
    let keycloak = with(&claims(&idp.issuer(), "api://demo"), |c| {
        c["aud"] = json!(["api://demo", "account"]);
        c["azp"] = json!("frontend-app");
    });
    let r = h.validate_token(&key.token(&keycloak)).await;
    assert_eq!(code(&r), E::InvalidAudience, "{:?}", r.error);
    let no_azp = with(&keycloak, |c| {
        c.as_object_mut().expect("obj").remove("azp");
    });
    assert_eq!(
        code(&h.validate_token(&key.token(&no_azp)).await),
        E::InvalidAudience
    );
    let good = with(&keycloak, |c| c["azp"] = json!("api://demo"));
    let r = h.validate_token(&key.token(&good)).await;
    assert!(r.valid, "{:?}", r.error);
    // One audience needs no azp, as OpenID Connect Core 3.1.3.7 says.
    let single = claims(&idp.issuer(), "api://demo");
    assert!(h.validate_token(&key.token(&single)).await.valid);
}
