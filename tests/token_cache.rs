//! The verified-token cache end to end: the real server on port 0, a fake OpenID Connect
//! provider over real HTTP, and the cache's counters scraped from `/metrics`. What is
//! checked is behaviour (a hit answers as a verification would, every per-call check
//! still runs, keys that leave their set take their tokens with them, bounds hold),
//! never timing.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::*;
use introspectd::grpc::{
    ext_authz::{
        pb::envoy::service::auth::v3::{
            authorization_client::AuthorizationClient, check_response::HttpResponse,
        },
        request::http_check_request,
    },
    pb::{self, ErrorCode as E, admin_service_client::AdminServiceClient},
};
use serde_json::json;
use tonic::Code;

const SERVING: i32 = 1;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A server with metrics on, trusting `idp` (tenant `demo`, plus `extra` YAML).
async fn server(idp: &FakeIdp, extra: &str) -> Harness {
    let mut s = settings_with_env(&oidc_tenant(idp, extra), &[("OTHER_SECRET", SECRET)]);
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    // RefreshIssuer rotates keys here: AdminService on the loopback listener.
    s.server.admin = true;
    // RefreshIssuer fetches at most once per unknown_kid_cooldown, which a configuration
    // keeps at 1 s or more; zero on the loaded settings rotates without waiting.
    s.tenants[0].refresh.unknown_kid_cooldown = Duration::ZERO;
    let h = start(s).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    h
}

async fn setup(extra: &str) -> (FakeIdp, TestKey, Harness) {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let h = server(&idp, extra).await;
    (idp, key, h)
}

/// The cache's counters: (hits, forged hits, misses, entries).
async fn counters(h: &Harness) -> (f64, f64, f64, f64) {
    let text = scrape_metrics(h.server.metrics_addr.expect("metrics on")).await;
    let m = |series: &str| metric(&text, series);
    (
        m(r#"introspectd_token_cache_requests_total{result="hit"}"#),
        m(r#"introspectd_token_cache_requests_total{result="forged_hit"}"#),
        m(r#"introspectd_token_cache_requests_total{result="miss"}"#),
        m("introspectd_token_cache_entries"),
    )
}

fn request(token: &str) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        ..Default::default()
    }
}

/// Publishes `keys` as the provider's only keys and has the server fetch them now.
async fn rotate_to(idp: &FakeIdp, h: &Harness, keys: &[&TestKey]) {
    idp.publish("/jwks", keys);
    let r = AdminServiceClient::new(h.channel.clone())
        .refresh_issuer(pb::RefreshIssuerRequest {
            tenant: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("RefreshIssuer")
        .into_inner();
    assert!(r.refreshed, "{}", r.error);
}

#[tokio::test]
async fn a_repeated_token_is_answered_from_the_cache_exactly_as_verified() {
    let (idp, key, mut h) = setup("").await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["scp"] = json!(["read", "write"]);
    c["custom"] = json!({"nested": [1, 2.5, null, true], "s": "x".repeat(300)});
    let token = key.token(&c);
    let first = h.validate_token(&token).await;
    assert!(first.valid, "{:?}", first.error);
    assert_eq!(counters(&h).await, (0.0, 0.0, 1.0, 1.0));
    let second = h.validate_token(&format!("Bearer {token}")).await;
    assert_eq!(first, second, "the cached answer is the verified answer");
    let claims = second.claims.expect("claims");
    assert_eq!(claims.fields.len(), c.as_object().expect("object").len());
    assert_eq!(counters(&h).await, (1.0, 0.0, 1.0, 1.0));
}

#[tokio::test]
async fn every_per_call_check_runs_on_a_hit() {
    let (idp, key, mut h) = setup(
        "  - id: other\n    issuer: https://elsewhere.example\n    audiences: [\"api://demo\"]\n    algorithms: [HS256]\n    hmac_secret_env: OTHER_SECRET\n",
    )
    .await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["scope"] = json!("read");
    c["nonce"] = json!("n-1");
    let token = key.token(&c);
    assert!(h.validate_token(&token).await.valid);
    let with = |f: &dyn Fn(&mut pb::ValidateRequest)| {
        let mut r = request(&token);
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::ValidateRequest, E)> = vec![
        (
            "audience",
            with(&|r| r.audiences = vec!["api://other".into()]),
            E::InvalidAudience,
        ),
        (
            "scope",
            with(&|r| r.required_scopes = vec!["write".into()]),
            E::InsufficientScope,
        ),
        ("nonce", with(&|r| r.nonce = "n-2".into()), E::InvalidNonce),
        (
            "tenant",
            with(&|r| r.tenant = "other".into()),
            E::UnknownIssuer,
        ),
    ];
    for (name, req, want) in cases {
        let r = h.validate(req).await;
        assert!(!r.valid, "{name}");
        assert_eq!(code(&r), want, "{name}: {:?}", r.error);
    }
    let unknown = h
        .client
        .validate(with(&|r| r.tenant = "nope".into()))
        .await
        .expect_err("unknown tenant");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    let ok = h
        .validate(with(&|r| {
            r.required_scopes = vec!["read".into()];
            r.nonce = "n-1".into();
        }))
        .await;
    assert!(ok.valid, "{:?}", ok.error);
    let (hits, _, misses, _) = counters(&h).await;
    assert_eq!(
        (hits, misses),
        (6.0, 1.0),
        "every call after the first was a hit"
    );
}

#[tokio::test]
async fn a_cached_token_expires_on_time() {
    let (idp, key, mut h) = setup("    clock_skew: 0s\n").await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["exp"] = json!(now() + 2);
    let token = key.token(&c);
    assert!(h.validate_token(&token).await.valid);
    assert!(h.validate_token(&token).await.valid, "a hit");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = h.validate_token(&token).await;
    assert_eq!(code(&r), E::Expired, "{:?}", r.error);
}

#[tokio::test]
async fn a_replayed_token_is_refused_on_a_hit() {
    let (idp, key, mut h) = setup("    replay_detection: true\n").await;
    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    let introspect = |h: &mut Harness| {
        let mut client = pb::token_service_client::TokenServiceClient::new(h.channel.clone());
        let token = token.clone();
        async move {
            client
                .introspect(pb::IntrospectRequest {
                    token,
                    ..Default::default()
                })
                .await
                .expect("Introspect")
                .into_inner()
                .active
        }
    };
    // Introspect only asks: it neither uses the token up nor is refused for asking twice.
    assert!(introspect(&mut h).await);
    assert!(introspect(&mut h).await);
    assert!(h.validate_token(&token).await.valid);
    let again = h.validate_token(&token).await;
    assert_eq!(code(&again), E::Replayed, "{:?}", again.error);
    assert!(!introspect(&mut h).await, "used up");
    let (hits, _, misses, _) = counters(&h).await;
    assert_eq!(
        (hits, misses),
        (4.0, 1.0),
        "the replay was refused on a hit"
    );
}

#[tokio::test]
async fn a_token_whose_key_left_the_set_is_not_answered_from_the_cache() {
    let (idp, old, mut h) = setup("").await;
    let token = old.token(&claims(&idp.issuer(), "api://demo"));
    assert!(h.validate_token(&token).await.valid);
    assert_eq!(counters(&h).await.3, 1.0);
    let new = TestKey::rsa("k2", "RS256");
    rotate_to(&idp, &h, &[&new]).await;
    assert_eq!(counters(&h).await.3, 0.0, "purged with its key");
    let r = h.validate_token(&token).await;
    assert!(!r.valid);
    assert_eq!(code(&r), E::UnknownKey, "{:?}", r.error);
    assert!(
        h.validate_token(&new.token(&claims(&idp.issuer(), "api://demo")))
            .await
            .valid
    );
}

#[tokio::test]
async fn a_forged_token_costs_one_verification_while_the_keys_stay_the_same() {
    let (idp, key, mut h) = setup("").await;
    // Signed by another key under the published key's kid.
    let forger = TestKey::rsa("k1", "RS256");
    let forged = forger.token(&claims(&idp.issuer(), "api://demo"));
    for _ in 0..3 {
        assert_eq!(code(&h.validate_token(&forged).await), E::InvalidSignature);
    }
    let text = scrape_metrics(h.server.metrics_addr.expect("metrics")).await;
    assert_eq!(metric(&text, "introspectd_token_cache_forged_entries"), 1.0);
    assert_eq!(counters(&h).await.1, 2.0, "verified once, then remembered");
    // Once the keys change, the verdict is not reused: here the forger's key becomes
    // the published k1, and the very same token is valid.
    rotate_to(&idp, &h, &[&forger]).await;
    let r = h.validate_token(&forged).await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(
        code(
            &h.validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
                .await
        ),
        E::InvalidSignature
    );
}

#[tokio::test]
async fn the_cache_is_bounded_and_can_be_turned_off() {
    let (idp, key, mut h) = setup("token_cache:\n  max_bytes: 64KiB\n  max_entries: 10\n").await;
    for _ in 0..40 {
        let r = h
            .validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
            .await;
        assert!(r.valid);
    }
    let text = scrape_metrics(h.server.metrics_addr.expect("metrics")).await;
    assert!(
        metric(&text, "introspectd_token_cache_entries") <= 10.0,
        "{text}"
    );
    assert!(metric(&text, "introspectd_token_cache_bytes") <= 65536.0);
    assert!(metric(&text, "introspectd_token_cache_evictions_total") >= 30.0);

    let mut off = server(&idp, "token_cache:\n  enabled: false\n").await;
    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    assert!(off.validate_token(&token).await.valid);
    assert!(off.validate_token(&token).await.valid);
    let text = scrape_metrics(off.server.metrics_addr.expect("metrics")).await;
    assert!(!text.contains("introspectd_token_cache"), "{text}");
}

#[tokio::test]
async fn envoy_check_shares_the_cache_and_still_checks_each_route() {
    let (idp, key, h) = setup("").await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["scope"] = json!("read");
    let bearer = format!("Bearer {}", key.token(&c));
    let check = |scopes: &'static str| {
        let mut client = AuthorizationClient::new(h.channel.clone());
        let req = http_check_request(
            &[("authorization", &bearer)],
            &[("required_scopes", scopes)],
        );
        async move {
            let r = client.check(req).await.expect("Check").into_inner();
            match r.http_response {
                Some(HttpResponse::OkResponse(_)) => 200,
                Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
                _ => 0,
            }
        }
    };
    assert_eq!(check("read").await, 200);
    assert_eq!(check("read").await, 200, "a hit");
    assert_eq!(
        check("write").await,
        403,
        "the route's scopes are checked on a hit"
    );
    // Validate over TokenService finds what Check verified.
    let mut h = h;
    let token = bearer.trim_start_matches("Bearer ").to_string();
    assert!(h.validate_token(&token).await.valid);
    let (hits, _, misses, entries) = counters(&h).await;
    assert_eq!((hits, misses, entries), (3.0, 1.0, 1.0));
}
