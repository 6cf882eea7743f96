//! Finding 1: AdminService was unauthenticated, on by default on the same port as
//! TokenService, and RefreshIssuer caused one discovery and one JWKS fetch per call
//! (skipping the failure backoff); its answers handed out URLs and raw error chains.

use std::time::Duration;

use axum::http::Method;
use introspectd::grpc::pb::{
    self, KeyEventType, admin_service_client::AdminServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{common::*, serve, victim_validates};

const DISCOVERY: &str = "/.well-known/openid-configuration";

fn admin(channel: &Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel.clone())
}

async fn refresh(channel: &Channel) -> Result<pb::RefreshIssuerResponse, tonic::Status> {
    admin(channel)
        .refresh_issuer(pb::RefreshIssuerRequest {
            tenant: "demo".into(),
            policy: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn fetches(idp: &FakeIdp) -> (usize, usize) {
    (idp.count(DISCOVERY), idp.count("/jwks"))
}

#[tokio::test]
async fn by_default_nothing_on_the_main_listener_lets_a_caller_trigger_a_fetch() {
    let (idp, key, h) = serve("", "").await;
    let before = fetches(&idp);
    for _ in 0..20 {
        let err = refresh(&h.channel).await.expect_err("AdminService is off");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
    let err = admin(&h.channel)
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect_err("ListIssuers is off too");
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(fetches(&idp), before, "no fetch was caused");
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn refresh_issuer_fetches_at_most_once_per_cooldown_and_says_so() {
    // The main listener is loopback here, so no authorization is required.
    let (idp, key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 30s\n").await;
    let before = fetches(&idp);
    let first = refresh(&h.channel).await.expect("first RefreshIssuer");
    assert!(first.refreshed, "{first:?}");
    assert!(!first.throttled, "the first call fetches");
    let after_first = fetches(&idp);
    assert_eq!(
        after_first,
        (before.0 + 1, before.1 + 1),
        "one discovery, one JWKS"
    );
    for _ in 0..30 {
        let again = refresh(&h.channel).await.expect("RefreshIssuer");
        assert!(
            again.throttled,
            "inside the cooldown the last result is returned"
        );
        assert!(again.refreshed, "the last result was a success");
        assert!(
            again.retry_after.is_some(),
            "the answer says when a fetch is allowed again"
        );
    }
    assert_eq!(
        fetches(&idp),
        after_first,
        "no further fetch inside the cooldown"
    );
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn refresh_issuer_does_not_bypass_the_failure_backoff() {
    let (idp, _key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 30s\n").await;
    idp.set(Method::GET, "/jwks", Behaviour::Status(503));
    idp.set(Method::GET, DISCOVERY, Behaviour::Status(503));
    let before = fetches(&idp);
    let first = refresh(&h.channel).await.expect("RefreshIssuer");
    assert!(!first.refreshed);
    for _ in 0..20 {
        let again = refresh(&h.channel).await.expect("RefreshIssuer");
        assert!(!again.refreshed && again.throttled, "{again:?}");
    }
    // One forced fetch; the refresher's own backoff (from 1 s) may add one retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = fetches(&idp);
    assert!(
        after.0 - before.0 <= 2,
        "discovery fetched {} times",
        after.0 - before.0
    );
}

#[tokio::test]
async fn callers_see_a_failure_category_never_urls_paths_or_error_chains() {
    let (idp, _key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 0s\n").await;
    let mut events = TokenServiceClient::new(h.channel.clone())
        .watch_keys(pb::WatchKeysRequest::default())
        .await
        .expect("watch")
        .into_inner();
    idp.set(Method::GET, "/jwks", Behaviour::Status(503));
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert!(!answer.refreshed);
    assert_eq!(answer.error, "http 503");
    let listed = admin(&h.channel)
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect("ListIssuers")
        .into_inner()
        .issuers
        .remove(0);
    assert_eq!(listed.last_error, "http 503");
    let failed = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type == KeyEventType::RefreshFailed as i32 {
            break e;
        }
    };
    assert_eq!(failed.message, "http 503");

    // A body that is not JSON.
    idp.set(
        Method::GET,
        "/jwks",
        Behaviour::Raw(200, b"<html>".to_vec()),
    );
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert_eq!(answer.error, "invalid json");

    // A discovery document for another issuer.
    idp.set_json(
        DISCOVERY,
        idp.discovery("https://elsewhere.example", "/jwks"),
    );
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert_eq!(answer.error, "issuer mismatch");
    for text in [&answer.error, &answer.issuer.expect("status").last_error] {
        assert!(!text.contains("http://"), "{text}");
        assert!(!text.contains("elsewhere"), "{text}");
    }
}

#[tokio::test]
async fn a_jwks_file_failure_shows_no_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("secret-location.json");
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin: true\ntenants:\n  - id: file\n    issuer: https://f.example\n    audiences: [x]\n    jwks_file: {}\n",
        path.display()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health(crate::TOKEN_SERVICE, crate::SERVING).await;
    let listed = admin(&h.channel)
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect("ListIssuers")
        .into_inner()
        .issuers
        .remove(0);
    assert!(listed.last_failed);
    assert_eq!(listed.last_error, "file unreadable");
    assert!(!listed.last_error.contains("secret-location"));
}
